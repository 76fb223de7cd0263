//! Start-up after the listener is bound: verify the bundle, open (or create) the
//! store or connect to the central collection, load and warm the encoders, start the
//! queues and replication.

use crate::batch::{BatchConfig, queues};
use crate::central;
use crate::state::{App, Central, CentralConfig, Loaded, Replicating, ServeConfig};
use anyhow::{Context, Result};
use sen_runtime::encoders::Encoders;
use sen_store::{Mode, Store};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

/// Why start-up failed; `fatal` failures stop the process (a store that cannot open:
/// a supervisor's restart may find it free), the others keep it up with `/readyz`
/// saying why.
pub(crate) struct LoadFailure {
    pub fatal: bool,
    pub error: anyhow::Error,
}

impl From<anyhow::Error> for LoadFailure {
    fn from(error: anyhow::Error) -> Self {
        LoadFailure {
            fatal: false,
            error,
        }
    }
}

/// Why results carry no `p` (logged at start, shown in `/v1/stats`).
pub(crate) const NO_SCORE_CALIBRATION: &str = "the bundle carries no score calibration: results have no `p` and watches need min_score; run `sen calibrate-scores BUNDLE --dataset ROOT` to add one";

/// Verify the bundle, open (or create) the store, load the encoders (TensorRT engines
/// built or loaded), warm them up, start the batching queues.
pub(crate) fn load(app: &Arc<App>) -> Result<Loaded, LoadFailure> {
    let cfg = &app.cfg;
    let manifest = sen_core::Manifest::load(&cfg.bundle)
        .with_context(|| format!("--bundle {}", cfg.bundle.display()))?;
    let digest = manifest
        .encoder_digest(&manifest.io.image)
        .map_err(anyhow::Error::from)?;
    // A calibration bound to other encoders is an error (the bundle was edited); none
    // at all serves, without `p`.
    let scores = sen_core::scores::bundle::ScoreCalibration::load(&cfg.bundle, &manifest)
        .map_err(|e| LoadFailure {
            fatal: true,
            error: anyhow::Error::from(e).context(format!("--bundle {}", cfg.bundle.display())),
        })?
        .map(Arc::new);
    match &scores {
        Some(c) => tracing::info!(
            "score calibration: p at prior {:.4} (text) and {:.4} (like) unless a request gives one; fitted on {} {}",
            c.file.text.prior,
            c.file.image.prior,
            c.file.fitted.dataset,
            c.file.fitted.split
        ),
        None => tracing::warn!("{NO_SCORE_CALIBRATION}"),
    }
    let (store, central) = match (&cfg.store, &cfg.central) {
        (Some(dir), None) => {
            let store = open_store(cfg, dir, &manifest, &digest)
                .map_err(|error| LoadFailure { fatal: true, error })?;
            (Some(store), None)
        }
        (None, Some(c)) => (None, Some(open_central(cfg, c, &manifest, &digest)?)),
        _ => {
            return Err(anyhow::anyhow!(
                "give --store DIR (a box) or --search-backend milvus://... (a central node)"
            )
            .into());
        }
    };
    let enc = Encoders::load(&cfg.bundle, &cfg.provider).map_err(anyhow::Error::from)?;
    // One warm-up run per encoder at its optimum, so the first request is not the first run.
    let p = &enc.image.manifest.preprocess;
    enc.image
        .encode(ndarray::Array4::<f32>::zeros((enc.image.profile.opt, 3, p.height, p.width)).view())
        .map_err(anyhow::Error::from)?;
    enc.text
        .encode(&vec!["a person"; enc.text.profile.opt])
        .map_err(anyhow::Error::from)?;
    if let Some(s) = &store {
        // min_p watches are judged with the bundle's calibration.
        s.set_score_calibration(scores.clone())
            .map_err(anyhow::Error::from)?;
    }
    let store = store.map(Arc::new);
    let enc = Arc::new(enc);
    let qcfg = |opt: usize| BatchConfig {
        max_batch: cfg.max_batch.unwrap_or(opt),
        max_delay: cfg.max_delay,
        max_queue: cfg.max_queue,
    };
    let m = &app.metrics;
    let text = queues::text(enc.clone(), qcfg(enc.text.profile.opt), m.clone());
    let image = queues::image(enc.clone(), qcfg(enc.image.profile.opt), m.clone());
    let search = store.clone().map(|store| {
        let batch = BatchConfig {
            max_batch: cfg.max_batch.map_or(64, |b| b.max(1)),
            ..qcfg(64)
        };
        queues::search(store, cfg.search_threads, batch, m.clone())
    });
    let replication = match (&cfg.replicate, &store) {
        (Some(r), Some(store)) => Some(start_replication(r, store.clone())?),
        _ => None,
    };
    app.metrics
        .build_info
        .with_label_values(&[
            env!("CARGO_PKG_VERSION"),
            &digest,
            cfg.provider.kind.name(),
            &manifest.precision.to_string(),
        ])
        .set(1);
    Ok(Loaded {
        store,
        central,
        replication,
        enc,
        text,
        image,
        search,
        bundle_sha256: digest,
        precision: manifest.precision.to_string(),
        scores,
    })
}

/// Open (or create, bound to the bundle) the box's store.
fn open_store(
    cfg: &ServeConfig,
    dir: &std::path::Path,
    manifest: &sen_core::Manifest,
    digest: &str,
) -> Result<Store> {
    let empty = sen_store::io::missing_or_empty(dir)
        .with_context(|| format!("--store {}", dir.display()))?;
    let opts = sen_store::Options {
        row_limits: cfg.row_limits,
        disk_reserve: cfg.disk_reserve,
        ..Default::default()
    };
    let store = if empty {
        tracing::info!(
            "{}: creating a store bound to {}",
            dir.display(),
            cfg.bundle.display()
        );
        Store::create_with(
            dir,
            &sen_store::StoreConfig {
                image_encoder_sha256: digest.to_string(),
                preprocess: manifest.preprocess.clone(),
                dim: manifest.model.embed_dim,
                dtype: if cfg.f16 {
                    sen_store::Storage::F16
                } else {
                    sen_store::Storage::F32
                },
                crops: cfg.crops,
                bundle_precision: manifest.precision.to_string(),
            },
            opts,
        )?
    } else {
        Store::open_with(dir, Mode::Writer, opts)?
    };
    store.check_encoder(
        digest,
        manifest.model.embed_dim,
        &manifest.preprocess,
        &cfg.bundle.display().to_string(),
    )?;
    Ok(store)
}

/// Connect to the replicated collection (refusing one of another encoder) and read
/// `--boxes`.
fn open_central(
    cfg: &ServeConfig,
    c: &CentralConfig,
    manifest: &sen_core::Manifest,
    digest: &str,
) -> Result<Central> {
    let rt = tokio::runtime::Handle::current();
    let mut coll = rt.block_on(sen_milvus::Collection::connect(&c.target, &c.settings))?;
    rt.block_on(coll.open(Some(&sen_milvus::Encoder {
        sha256: digest.to_string(),
        dim: manifest.model.embed_dim,
    })))?;
    sen_milvus::collection::search_params(coll.index(), 1, &c.search_params)?;
    let boxes = match &c.boxes {
        Some(p) => central::read_boxes(p, cfg.request_timeout)?,
        None => Default::default(),
    };
    tracing::info!(
        "central search node on {} (index {}); crops from {} boxes",
        c.target,
        coll.index(),
        boxes.len()
    );
    Ok(Central {
        coll,
        boxes,
        search_params: c.search_params.clone(),
    })
}

/// Start following the store into Milvus on its own thread.
fn start_replication(r: &sen_milvus::Replication, store: Arc<Store>) -> Result<Replicating> {
    let status = Arc::new(sen_milvus::Status::default());
    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let (r, status, stop) = (r.clone(), status.clone(), stop.clone());
        std::thread::Builder::new()
            .name("sen-replicate".into())
            .spawn(move || r.follow(store, status, stop))
            .context("starting the replication thread")?
    };
    tracing::info!(
        "replicating to {} as box {:?} (new collections get index {})",
        r.target,
        r.box_name,
        r.index.describe()
    );
    Ok(Replicating {
        spec: r.clone(),
        status,
        stop,
        thread: Mutex::new(Some(thread)),
    })
}
