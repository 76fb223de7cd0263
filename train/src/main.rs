//! `sen-train`: train, import and evaluate SEN checkpoints.

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "sen-train",
    version,
    about = "Train SEN (CLIP ViT-B/16 + TIR) with libtorch"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show the libtorch build and the devices it can use here.
    Info {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Info { json } => {
            let info = sen_train::torch_info()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                println!("libtorch {}", info.libtorch);
                println!("threads  {}", info.threads);
                println!(
                    "cuda     {}",
                    if info.cuda_available {
                        format!(
                            "{} device(s), cuDNN {}",
                            info.cuda_devices, info.cudnn_available
                        )
                    } else {
                        "not available (CPU only; build with --features cuda on a GPU machine)"
                            .into()
                    }
                );
            }
        }
    }
    Ok(())
}
