//! `sen tokenize`: captions exactly as the text encoder receives them.

use anyhow::{Context, Result};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct TokenizeArgs {
    /// The texts to tokenise (each one argument; quote sentences).
    #[arg(required = true)]
    texts: Vec<String>,
    /// Print `[{"text", "ids", "eot_index"}]` as JSON.
    #[arg(long)]
    json: bool,
    /// Use this bundle's tokenizer.json instead of the CLIP vocabulary from `make deps`.
    #[arg(long, value_name = "DIR")]
    bundle: Option<PathBuf>,
}

#[derive(serde::Serialize)]
struct TokenizedJson<'a> {
    text: &'a str,
    ids: &'a [i64],
    eot_index: usize,
}

pub fn run(a: TokenizeArgs) -> Result<()> {
    let TokenizeArgs {
        texts,
        json,
        bundle,
    } = a;
    let tok = sen_runtime::load_tokenizer(bundle.as_deref()).context("loading the tokenizer")?;
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
    Ok(())
}
