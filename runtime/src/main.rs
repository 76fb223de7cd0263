//! `sen`: text-to-image person retrieval on the edge.

mod cli;
mod store_cli;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use sen_core::data::{Dataset, DatasetFormat, Split};
use sen_core::preprocess::{Preprocessor, load_rgb8};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "sen",
    version,
    about = "SEN text-to-image person retrieval on ONNX Runtime (TensorRT, CUDA, CPU)",
    long_about = "SEN text-to-image person retrieval on ONNX Runtime (TensorRT, CUDA, CPU).\n\n\
        `sen index` embeds a gallery of person crops with a bundle's image encoder; \
        `sen search` ranks it for a text description; `sen eval` scores a bundle on a \
        benchmark. `sen tokenize` and `sen preprocess` show exactly what the encoders \
        receive, for when a Python pipeline and sen disagree."
)]
struct Cli {
    /// The libonnxruntime.so to load (a GPU build for --provider cuda/tensorrt);
    /// default: ORT_DYLIB_PATH, else the CPU build `make deps` fetched.
    #[arg(long, global = true, value_name = "FILE")]
    ort_lib: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A bundle's manifest, and which execution providers can start here (and why not).
    Info(cli::InfoArgs),
    /// Embed a gallery (a folder of images, or a dataset split) into an index file.
    Index(cli::IndexArgs),
    /// Rank an index's images for a text description (or many, one per line).
    Search(cli::SearchArgs),
    /// R@1/5/10, mAP and mINP of a bundle on a dataset split (SPEC §7).
    Eval(cli::EvalArgs),
    /// Build (and cache) the TensorRT engines of a bundle ahead of serving.
    BuildEngines(cli::BuildEnginesArgs),
    /// Latency percentiles and throughput of a bundle's encoders (or of the search) on this machine.
    Bench(cli::BenchArgs),
    /// Serve retrieval over HTTP: ingest crops, search, delete; metrics, keys, limits.
    Serve(Box<cli::ServeArgs>),
    /// The gallery store: create, add, search, delete, compact, stats, verify, snapshot, import.
    Store {
        #[command(subcommand)]
        command: store_cli::StoreCommand,
    },
    /// Tokenise captions exactly as the text encoder receives them (CLIP BPE, 77 ids).
    Tokenize {
        /// The texts to tokenise (each one argument; quote sentences).
        #[arg(required = true)]
        texts: Vec<String>,
        /// Print `[{"text", "ids", "eot_index"}]` as JSON.
        #[arg(long)]
        json: bool,
        /// Use this bundle's tokenizer.json instead of the CLIP vocabulary from `make deps`.
        #[arg(long, value_name = "DIR")]
        bundle: Option<PathBuf>,
    },
    /// Write the exact float32 NCHW tensor [1, 3, H, W] the image encoder gets for IMAGE.
    Preprocess {
        /// JPEG, PNG, BMP or WebP file.
        image: PathBuf,
        /// Output .npy file (written atomically).
        #[arg(long, value_name = "FILE.npy")]
        out: PathBuf,
        /// Model preset whose input size to use.
        #[arg(long, default_value = "vit-b16", value_parser = ["vit-b16", "tiny"], conflicts_with = "bundle")]
        preset: String,
        /// Take size and normalisation from this bundle's manifest instead.
        #[arg(long, value_name = "DIR")]
        bundle: Option<PathBuf>,
    },
    /// Generate the synthetic pedestrian benchmark (CUHK-PEDES format) into DIR.
    Synth {
        /// Output folder: gets reid_raw.json and imgs/synth/*.jpg.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Total identities, split 10:1:2 into train/val/test (650 -> 500/50/100).
        #[arg(long, default_value_t = 650)]
        ids: usize,
        /// Images rendered per identity (each gets two captions).
        #[arg(long, default_value_t = 4)]
        images_per_id: usize,
        /// Seed; the output is byte-for-byte identical for a seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Print the generation report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Inspect a benchmark dataset.
    Dataset {
        #[command(subcommand)]
        command: DatasetCommand,
    },
    /// Print the pruned form of a caption (its nouns, adjectives and pronouns), as
    /// training's text augmentation uses it.
    Prune {
        /// The caption.
        text: String,
        /// Also print every word with its part-of-speech tag.
        #[arg(long)]
        tags: bool,
    },
}

#[derive(Subcommand)]
enum DatasetCommand {
    /// Identities, images, captions, mean caption words and missing files per split.
    Stats {
        /// Dataset root (the folder holding the annotation file and imgs/).
        root: PathBuf,
        /// cuhk-pedes, icfg-pedes or rstpreid (detected from the annotation file if omitted).
        #[arg(long)]
        format: Option<DatasetFormat>,
        /// Print JSON: {"format", "splits": {split: {identities, images, captions, mean_caption_words, missing_files}}}.
        #[arg(long)]
        json: bool,
    },
}

#[derive(serde::Serialize)]
struct TokenizedJson<'a> {
    text: &'a str,
    ids: &'a [i64],
    eot_index: usize,
}

fn main() {
    sen_runtime::init_logging();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    if let Some(p) = cli.ort_lib {
        sen_runtime::onnxruntime::set_library_path(p)?;
    }
    match cli.command {
        Command::Info(a) => cli::info(a)?,
        Command::Index(a) => cli::index(a)?,
        Command::Search(a) => cli::search(a)?,
        Command::Eval(a) => cli::eval(a)?,
        Command::BuildEngines(a) => cli::build_engines(a)?,
        Command::Bench(a) => cli::bench(a)?,
        Command::Store { command } => store_cli::run(command)?,
        Command::Serve(a) => cli::serve(*a)?,
        Command::Tokenize {
            texts,
            json,
            bundle,
        } => {
            let tok =
                sen_runtime::load_tokenizer(bundle.as_deref()).context("loading the tokenizer")?;
            let encoded = tok.encode_batch(&texts)?;
            for (t, e) in texts.iter().zip(&encoded) {
                if e.truncated {
                    eprintln!(
                        "warning: {t:?} is longer than {} tokens and was cut (the last id is still EOT)",
                        tok.context_length()
                    );
                }
            }
            if json {
                let rows: Vec<_> = texts
                    .iter()
                    .zip(&encoded)
                    .map(|(t, e)| TokenizedJson {
                        text: t,
                        ids: &e.ids,
                        eot_index: e.eot_index,
                    })
                    .collect();
                println!("{}", serde_json::to_string(&rows)?);
            } else {
                for (t, e) in texts.iter().zip(&encoded) {
                    let used = &e.ids[..=e.eot_index];
                    println!("{t:?}");
                    println!("  eot_index: {}", e.eot_index);
                    println!(
                        "  ids: {} (+{} padding zeros)",
                        used.iter()
                            .map(|i| i.to_string())
                            .collect::<Vec<_>>()
                            .join(" "),
                        e.ids.len() - used.len()
                    );
                }
            }
        }
        Command::Preprocess {
            image,
            out,
            preset,
            bundle,
        } => {
            let spec = sen_runtime::preprocess_spec(bundle.as_deref(), &preset)?;
            let p = Preprocessor::new(spec)?;
            let img = load_rgb8(&image)?;
            let t = p.process(&img);
            let (h, w) = (t.shape()[1], t.shape()[2]);
            let data = t.as_standard_layout().iter().copied().collect::<Vec<f32>>();
            sen_core::npy::write_npy(&out, &[1, 3, h, w], &data)
                .with_context(|| format!("writing {}", out.display()))?;
            let (min, max) = data
                .iter()
                .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
            println!(
                "{}: {}x{} -> {} [1, 3, {h}, {w}] float32 (min {min:.4}, max {max:.4}, mean {:.4})",
                image.display(),
                img.width,
                img.height,
                out.display(),
                data.iter().map(|&v| v as f64).sum::<f64>() / data.len() as f64
            );
        }
        Command::Synth {
            out,
            ids,
            images_per_id,
            seed,
            json,
        } => {
            let cfg = sen_core::synth::SynthConfig {
                ids,
                images_per_id,
                seed,
            };
            let bar = indicatif::ProgressBar::new_spinner().with_message(format!(
                "rendering {} images of {ids} identities into {}",
                ids * images_per_id,
                out.display()
            ));
            bar.enable_steady_tick(std::time::Duration::from_millis(200));
            let r = sen_core::synth::generate(&out, &cfg)?;
            bar.finish_and_clear();
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!(
                    "wrote {} images, {} captions of {}/{}/{} train/val/test identities to {} in {:.1}s ({:.0} images/s)",
                    r.images,
                    r.captions,
                    r.identities[0],
                    r.identities[1],
                    r.identities[2],
                    out.display(),
                    r.seconds,
                    r.images as f64 / r.seconds
                );
                println!(
                    "{:.1}% of test identities have another test identity differing in exactly one attribute",
                    100.0 * r.test_one_attribute_share
                );
            }
        }
        Command::Dataset {
            command: DatasetCommand::Stats { root, format, json },
        } => {
            let ds = Dataset::load(&root, format)?;
            let stats = ds.stats();
            if json {
                let splits: serde_json::Map<String, serde_json::Value> = stats
                    .iter()
                    .map(|(s, v)| (s.name().to_string(), serde_json::to_value(v).unwrap()))
                    .collect();
                println!(
                    "{}",
                    serde_json::json!({"format": ds.format.name(), "splits": splits})
                );
            } else {
                println!("{} ({})", root.display(), ds.format);
                println!(
                    "{:<6} {:>10} {:>8} {:>9} {:>11} {:>8}",
                    "split", "identities", "images", "captions", "mean words", "missing"
                );
                for split in Split::ALL {
                    if let Some(s) = stats.get(&split) {
                        println!(
                            "{:<6} {:>10} {:>8} {:>9} {:>11.1} {:>8}",
                            split.name(),
                            s.identities,
                            s.images,
                            s.captions,
                            s.mean_caption_words,
                            s.missing_files
                        );
                    }
                }
            }
        }
        Command::Prune { text, tags } => {
            if tags {
                let tagged = sen_core::text::Tagger::get().tag(&text);
                println!(
                    "{}",
                    tagged
                        .iter()
                        .map(|t| format!("{}/{}", t.word, t.tag))
                        .collect::<Vec<_>>()
                        .join(" ")
                );
            }
            println!("{}", sen_core::text::prune(&text));
        }
    }
    Ok(())
}
