//! `sen-export --checkpoint DIR --out BUNDLE [--fp16] [--opset 17]`.

use clap::Parser;
use sen_export::{ExportOptions, encoders::Fp32Islands};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "sen-export",
    version,
    about = "Export a SEN checkpoint's image and text encoders to an ONNX deployment bundle"
)]
struct Cli {
    /// Checkpoint directory, or a training run directory (its best/).
    #[arg(long, required_unless_present = "random_weights")]
    checkpoint: Option<PathBuf>,
    /// Export seeded random weights of a preset (tiny or vit-b16) instead of a
    /// checkpoint: for timing a box or a graph formulation (speed does not depend on
    /// the weights); the manifest records the random checkpoint's hash like any other.
    #[arg(long, value_name = "PRESET", conflicts_with = "checkpoint", value_parser = ["tiny", "vit-b16"])]
    random_weights: Option<String>,
    /// Bundle directory to create.
    #[arg(long)]
    out: PathBuf,
    /// Float16 weights and compute (float32 inputs and outputs).
    #[arg(long)]
    fp16: bool,
    /// ONNX opset (17 to 23).
    #[arg(long, default_value_t = 17)]
    opset: i64,
    /// How attention is written: `standard` (opset-17 MatMul/Softmax/MatMul, which
    /// TensorRT 10.x and every ONNX Runtime take) or `onnx-attention-23` (ONNX's
    /// Attention op; needs --opset 23 and ONNX Runtime >= 1.23). Recorded in the
    /// manifest.
    #[arg(long, default_value = "standard")]
    attention: sen_export::encoders::Attention,
    /// Bundle format: 2 (the text encoder takes a dynamic sequence, trimmed to each
    /// batch's captions) or 1 (fixed context, for boxes running a sen from before
    /// format 2).
    #[arg(long, default_value_t = 2)]
    format_version: u32,
    /// fp16 only: run LayerNormalization in float16 too (default: float32, measured
    /// to matter; see docs/decisions.md).
    #[arg(long, requires = "fp16")]
    fp16_layer_norm: bool,
    /// fp16 only: run Softmax in float32 (default: float16).
    #[arg(long, requires = "fp16")]
    fp32_softmax: bool,
    /// Move weights to `<model>.onnx.data` when a model's weights exceed this many MiB
    /// (default: protobuf's 2 GiB limit).
    #[arg(long, value_name = "MIB")]
    external_data_mib: Option<u64>,
    /// Replace an existing bundle directory.
    #[arg(long)]
    force: bool,
    /// Print the export report as JSON.
    #[arg(long)]
    json: bool,
}

fn main() {
    let cli = Cli::parse();
    let mut opts = ExportOptions {
        fp16: cli.fp16,
        opset: cli.opset,
        force: cli.force,
        attention: cli.attention,
        format_version: cli.format_version,
        ..Default::default()
    };
    if cli.fp16 {
        opts.fp32_islands = Fp32Islands {
            layer_norm: !cli.fp16_layer_norm,
            softmax: cli.fp32_softmax,
        };
    }
    if let Some(mib) = cli.external_data_mib {
        opts.external_data_threshold = mib * 1024 * 1024;
    }
    let tmp;
    let checkpoint = match (&cli.checkpoint, &cli.random_weights) {
        (Some(c), _) => c.clone(),
        (None, Some(preset)) => {
            let made = tempfile::tempdir()
                .map_err(|e| e.to_string())
                .and_then(|d| {
                    let cfg = sen_core::ModelConfig::preset(preset).map_err(|e| e.to_string())?;
                    sen_export::fixtures::random_checkpoint(&cfg, &d.path().join("ckpt"), 1)
                        .map_err(|e| e.to_string())?;
                    Ok(d)
                });
            match made {
                Ok(d) => {
                    tmp = d;
                    tmp.path().join("ckpt")
                }
                Err(e) => {
                    eprintln!("error: --random-weights {preset}: {e}");
                    std::process::exit(1);
                }
            }
        }
        (None, None) => unreachable!("clap requires --checkpoint or --random-weights"),
    };
    match sen_export::export(&checkpoint, &cli.out, &opts) {
        Ok(r) => {
            if cli.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&r).expect("report serialises")
                );
            } else {
                println!(
                    "exported {} ({}) in {:.1} s: {} bytes",
                    r.bundle.display(),
                    r.precision,
                    r.seconds,
                    r.total_bytes
                );
                for (f, b) in &r.files {
                    println!("  {f:<28} {b:>12}");
                }
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
