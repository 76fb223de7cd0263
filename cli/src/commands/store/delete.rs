//! `sen store delete`.

use anyhow::Result;
use sen_store::time::{self};
use sen_store::{Mode, Selector, Store};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["id", "camera", "before"])))]
pub struct DeleteArgs {
    dir: PathBuf,
    /// Row ids (all must exist, or nothing is deleted).
    #[arg(long, num_args = 1..)]
    id: Vec<u64>,
    #[arg(long)]
    camera: Option<String>,
    /// Delete rows captured before this time (RFC 3339 or Unix ms).
    #[arg(long)]
    before: Option<String>,
    /// Print `{"deleted": N}`.
    #[arg(long)]
    json: bool,
}

pub fn run(a: DeleteArgs) -> Result<()> {
    let sel = if !a.id.is_empty() {
        Selector::Ids(a.id.clone())
    } else if let Some(c) = &a.camera {
        Selector::Camera(c.clone())
    } else {
        let t = a.before.as_deref().expect("clap requires one");
        Selector::Before(time::parse("--before", t)?)
    };
    let store = Store::open(&a.dir, Mode::Writer)?;
    let n = store.delete(sel)?;
    if a.json {
        println!("{}", serde_json::json!({"deleted": n}));
    } else {
        println!(
            "{}: {n} rows deleted (their embeddings leave the files at the next `sen store compact`)",
            a.dir.display()
        );
    }
    Ok(())
}
