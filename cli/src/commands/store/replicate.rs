//! `sen store replicate`, and the replication flags `sen serve --replicate` shares.

use anyhow::{Context, Result, bail};
use sen_store::{Mode, Store};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct ReplicateArgs {
    dir: PathBuf,
    /// The collection: milvus://HOST:PORT/COLLECTION (milvus+tls:// for TLS;
    /// credentials and timeouts from SEN_MILVUS_* variables).
    #[arg(long, value_name = "URI")]
    to: String,
    #[command(flatten)]
    replica: ReplicaArgs,
    #[arg(long)]
    json: bool,
}

/// How a box replicates (`sen store replicate`, `sen serve --replicate`).
#[derive(clap::Args, Debug, Clone)]
pub struct ReplicaArgs {
    /// This box's name in the collection (default: the host name).
    #[arg(long)]
    pub box_name: Option<String>,
    /// The vector index a new collection gets: flat (exact), hnsw or ivf_flat.
    #[arg(long, default_value = "flat")]
    pub index: String,
    /// An index parameter, KEY=VALUE (hnsw: M, efConstruction; ivf_flat: nlist); repeat.
    #[arg(long = "index-param", value_name = "KEY=VALUE")]
    pub index_params: Vec<String>,
    /// Rows per upsert call.
    #[arg(long, default_value_t = 512)]
    pub replicate_batch: usize,
}

impl ReplicaArgs {
    /// The replication these flags describe, to `uri`.
    pub fn replication(&self, uri: &str) -> Result<sen_milvus::Replication> {
        let target = sen_milvus::Target::parse(uri)?;
        let box_name = self.box_name.clone().unwrap_or_else(sen_milvus::host_name);
        sen_milvus::check_box_name(&box_name)?;
        if self.replicate_batch == 0 || self.replicate_batch > 10_000 {
            bail!(
                "--replicate-batch {}: give 1 to 10000 rows",
                self.replicate_batch
            );
        }
        Ok(sen_milvus::Replication {
            target,
            settings: sen_milvus::Settings::from_env()?,
            box_name,
            index: sen_milvus::IndexSpec::parse(&self.index, &self.index_params)?,
            batch: self.replicate_batch,
        })
    }
}

/// A runtime for the Milvus calls of one command.
pub(super) fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

pub fn run(a: ReplicateArgs) -> Result<()> {
    let r = a.replica.replication(&a.to)?;
    let store = Store::open(&a.dir, Mode::Writer).with_context(|| {
        format!(
            "replicating {} (sen serve --replicate replicates a store it serves)",
            a.dir.display()
        )
    })?;
    let status = sen_milvus::Status::default();
    let sp = crate::common::spinner(format!("replicating {} to {}", a.dir.display(), r.target));
    let report = runtime()?.block_on(r.catch_up(&store, &status));
    sp.finish_and_clear();
    let report = report?;
    let rate = report.rows_upserted as f64 / report.seconds.max(1e-9);
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "target": r.target.to_string(),
                "box": r.box_name,
                "rows_upserted": report.rows_upserted,
                "rows_deleted": report.rows_deleted,
                "cursor": report.cursor,
                "seconds": report.seconds,
                "rows_per_second": rate,
            })
        );
    } else {
        println!(
            "{} -> {} (box {:?}): {} rows upserted, {} deleted, cursor at change {}, {:.1} s ({rate:.0} rows/s)",
            a.dir.display(),
            r.target,
            r.box_name,
            report.rows_upserted,
            report.rows_deleted,
            report.cursor,
            report.seconds
        );
    }
    Ok(())
}
