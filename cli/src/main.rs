//! `sen`: text-to-image person retrieval on the edge. One module per command
//! ([`commands`]); what several share is [`common`]'s.

mod commands;
mod common;

use anyhow::Result;
use clap::{Parser, Subcommand};
use commands::*;
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
    Info(info::InfoArgs),
    /// Embed a gallery (a folder of images, or a dataset split) into an index file.
    Index(index::IndexArgs),
    /// Rank an index's images for a text description (or many, one per line).
    Search(search::SearchArgs),
    /// R@1/5/10, mAP and mINP of a bundle on a dataset split (SPEC §7).
    Eval(eval::EvalArgs),
    /// Fit the bundle's score calibration (a score to a probability, SPEC §12) on a
    /// labelled split, judge it on another and write it into the bundle.
    CalibrateScores(calibrate_scores::CalibrateScoresArgs),
    /// Build (and cache) the TensorRT engines of a bundle ahead of serving.
    BuildEngines(build_engines::BuildEnginesArgs),
    /// Latency percentiles and throughput of a bundle's encoders (or of the search) on this machine.
    Bench(bench::BenchArgs),
    /// Serve retrieval over HTTP: ingest crops, search, delete; metrics, keys, limits.
    Serve(Box<serve::ServeArgs>),
    /// The gallery store: create, add, search, delete, compact, stats, verify, snapshot, import.
    Store {
        #[command(subcommand)]
        command: store::StoreCommand,
    },
    /// Tokenise captions exactly as the text encoder receives them (CLIP BPE, 77 ids).
    Tokenize(tokenize::TokenizeArgs),
    /// Write the exact float32 NCHW tensor [1, 3, H, W] the image encoder gets for IMAGE.
    Preprocess(preprocess::PreprocessArgs),
    /// Generate the synthetic pedestrian benchmark (CUHK-PEDES format) into DIR.
    Synth(synth::SynthArgs),
    /// Inspect a benchmark dataset.
    Dataset {
        #[command(subcommand)]
        command: dataset::DatasetCommand,
    },
    /// Print the pruned form of a caption (its nouns, adjectives and pronouns), as
    /// training's text augmentation uses it.
    Prune(prune::PruneArgs),
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
        Command::Info(a) => info::run(a),
        Command::Index(a) => index::run(a),
        Command::Search(a) => search::run(a),
        Command::Eval(a) => eval::run(a),
        Command::CalibrateScores(a) => calibrate_scores::run(a),
        Command::BuildEngines(a) => build_engines::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Serve(a) => serve::run(*a),
        Command::Store { command } => store::run(command),
        Command::Tokenize(a) => tokenize::run(a),
        Command::Preprocess(a) => preprocess::run(a),
        Command::Synth(a) => synth::run(a),
        Command::Dataset { command } => dataset::run(command),
        Command::Prune(a) => prune::run(a),
    }
}
