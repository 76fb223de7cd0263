//! `sen prune`: a caption's pruned form, as training's text augmentation uses it.

use anyhow::Result;

#[derive(clap::Args, Debug)]
pub struct PruneArgs {
    /// The caption.
    text: String,
    /// Also print every word with its part-of-speech tag.
    #[arg(long)]
    tags: bool,
}

pub fn run(a: PruneArgs) -> Result<()> {
    let PruneArgs { text, tags } = a;
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
    Ok(())
}
