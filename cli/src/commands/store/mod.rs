//! `sen store ...`: the gallery store from the command line (SPEC §11 JSON), one
//! module per subcommand; compact, stats, verify and snapshot are here.

use anyhow::{Context, Result, bail};
use sen_store::results::stats_json;
use sen_store::time::{self};
use sen_store::{Mode, Store};
use std::path::{Path, PathBuf};

mod add;
mod create;
mod delete;
mod import;
pub mod replicate;
mod search;
mod watch;

use add::AddArgs;
use create::CreateArgs;
use delete::DeleteArgs;
use import::ImportArgs;
use replicate::ReplicateArgs;
use search::StoreSearchArgs;

#[derive(clap::Subcommand, Debug)]
pub enum StoreCommand {
    /// Create a store bound to a bundle's image encoder.
    Create(CreateArgs),
    /// Embed images and add them (camera, capture time, pid, attributes, crop).
    Add(AddArgs),
    /// Rank the store's rows for a description, or like a stored row.
    Search(StoreSearchArgs),
    /// Delete rows by id (all or nothing), by camera, or captured before a time.
    Delete(DeleteArgs),
    /// Merge small segments and rewrite away deleted rows (and erase them from the files).
    Compact {
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Rows, cameras, sizes and identity.
    Stats {
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Check everything: SQLite's integrity check, every segment's and every row's checksum.
    Verify {
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Copy the store consistently (also while a writer runs) into a new folder.
    Snapshot {
        dir: PathBuf,
        #[arg(long, value_name = "DIR2")]
        out: PathBuf,
    },
    /// Bring a store made by an older sen to this sen's format, in place (one
    /// transaction: a crash leaves it at the old format or the new; its writer,
    /// `sen serve` included, does the same when it opens it).
    Migrate { dir: PathBuf },
    /// Add the rows of a `sen index` file (embeddings, paths, pids; no re-encoding).
    Import(ImportArgs),
    /// Copy the store's rows and deletes into a Milvus collection, up to now (resumes
    /// where the last replication to it stopped; `sen serve --replicate` follows).
    Replicate(ReplicateArgs),
    /// Watches: standing descriptions that raise alerts on new rows (add, list, delete).
    Watch {
        #[command(subcommand)]
        command: watch::WatchCommand,
    },
}

pub fn run(cmd: StoreCommand) -> Result<()> {
    match cmd {
        StoreCommand::Create(a) => create::run(a),
        StoreCommand::Add(a) => add::run(a),
        StoreCommand::Search(a) => search::run(a),
        StoreCommand::Watch { command } => watch::run(command),
        StoreCommand::Delete(a) => delete::run(a),
        StoreCommand::Compact { dir, json } => {
            let store = Store::open(&dir, Mode::Writer)?;
            let sp = crate::common::spinner(format!("compacting {}", dir.display()));
            let r = store.compact();
            sp.finish_and_clear();
            let r = r?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!(
                    "{}: {} -> {} segments, {} deleted rows rewritten away, {} -> {} bytes of segments, {:.1} s",
                    dir.display(),
                    r.segments_before,
                    r.segments_after,
                    r.rows_removed,
                    r.bytes_before,
                    r.bytes_after,
                    r.seconds
                );
            }
            Ok(())
        }
        StoreCommand::Stats { dir, json } => stats(&dir, json),
        StoreCommand::Verify { dir, json } => {
            let sp = crate::common::spinner(format!("verifying {}", dir.display()));
            let r = sen_store::verify::verify(&dir);
            sp.finish_and_clear();
            let r = r?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!(
                    "{}: {} rows ({} in {} segments, {} pending), {} deleted awaiting compaction, {} bytes checked",
                    dir.display(),
                    r.rows,
                    r.segment_rows,
                    r.segments,
                    r.pending_rows,
                    r.deleted_pending,
                    r.bytes_checked
                );
                for s in &r.strays {
                    println!("  stray file (the writer removes it at its next open): {s}");
                }
                for p in &r.problems {
                    println!("  PROBLEM: {p}");
                }
            }
            if !r.problems.is_empty() {
                bail!("{}: {} problems found", dir.display(), r.problems.len());
            }
            Ok(())
        }
        StoreCommand::Snapshot { dir, out } => {
            sen_store::verify::snapshot(&dir, &out)?;
            println!("{} -> {} (consistent copy)", dir.display(), out.display());
            Ok(())
        }
        StoreCommand::Migrate { dir } => {
            let path = dir.join(sen_store::db::DB_FILE);
            let before = sen_store::db::open(&dir, false)
                .and_then(|c| sen_store::db::format_version(&c, &path))
                .with_context(|| format!("{}: reading the store's format", dir.display()))?;
            let store = Store::open(&dir, Mode::Writer)?;
            let after = store.info().format_version;
            if before == after {
                println!("{}: already at format {after}", dir.display());
            } else {
                println!("{}: format {before} -> {after}", dir.display());
            }
            Ok(())
        }
        StoreCommand::Import(a) => import::run(a),
        StoreCommand::Replicate(a) => replicate::run(a),
    }
}

fn stats(dir: &Path, json: bool) -> Result<()> {
    let store = Store::open(dir, Mode::Reader)?;
    let s = store.stats()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&stats_json(&s))?);
        return Ok(());
    }
    let i = &s.info;
    println!("store      {} ({})", dir.display(), i.uuid);
    println!(
        "rows       {} ({} not yet in a segment, {} deleted awaiting compaction) in {} segments",
        s.rows, s.unflushed, s.deleted_pending, s.segments
    );
    println!(
        "embeddings {}-dim {:?}{}; image encoder {} ({})",
        i.dim,
        i.storage,
        if i.crops {
            ", crops kept"
        } else {
            ", no crops"
        },
        i.image_encoder_sha256,
        i.bundle_precision
    );
    println!("preprocess {}", i.preprocess.describe());
    println!(
        "bytes      {}",
        s.bytes
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("cameras    {}", s.cameras.len());
    for c in &s.cameras {
        let t = |v: Option<i64>| v.map(time::format).unwrap_or_else(|| "-".into());
        println!(
            "  {:<24} {:>8} rows  {} .. {}  last ingest {}",
            c.camera,
            c.rows,
            t(c.first_ms),
            t(c.last_ms),
            t(c.last_ingest_ms)
        );
    }
    Ok(())
}
