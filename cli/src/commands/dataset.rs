//! `sen dataset stats`: identities, images, captions and missing files per split.

use anyhow::Result;
use sen_core::data::{Dataset, DatasetFormat, Split};
use std::path::PathBuf;

#[derive(clap::Subcommand, Debug)]
pub enum DatasetCommand {
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

pub fn run(cmd: DatasetCommand) -> Result<()> {
    let DatasetCommand::Stats { root, format, json } = cmd;
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
    Ok(())
}
