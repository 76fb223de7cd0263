//! `sen store watch add|list|delete`: a store's watches (SPEC §12) offline, as
//! `POST/GET/DELETE /v1/watches` do on a running box.

use crate::common::{ProviderArgs, log_sessions};
use anyhow::{Result, bail};
use sen_core::Manifest;
use sen_runtime::encoders::TextEncoder;
use sen_store::watch::{DEFAULT_COOLDOWN_S, Threshold, WatchQuery, WatchSpec};
use sen_store::{Mode, Store};
use std::path::PathBuf;

#[derive(clap::Subcommand, Debug)]
pub enum WatchCommand {
    /// Add a watch: a description (or a row, or a track) that raises alerts on new rows.
    Add(Box<WatchAddArgs>),
    /// List the store's watches.
    List {
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Delete a watch: it raises nothing from then on.
    Delete { dir: PathBuf, id: u64 },
}

#[derive(clap::Args, Debug)]
pub struct WatchAddArgs {
    dir: PathBuf,
    /// The bundle whose encoders the store is bound to (its text encoder embeds the
    /// description; its score calibration, if any, gives --min-p meaning).
    #[arg(long)]
    bundle: PathBuf,
    #[arg(long)]
    name: String,
    /// The description to watch for.
    #[arg(long, conflicts_with_all = ["like", "like_track"])]
    text: Option<String>,
    /// Watch for crops like this stored row.
    #[arg(long, value_name = "ID", conflicts_with = "like_track")]
    like: Option<u64>,
    /// Watch for crops like this track (the mean of its crops).
    #[arg(long, value_name = "TRACK")]
    like_track: Option<String>,
    /// The camera of --like-track (default "default").
    #[arg(long, value_name = "CAMERA", requires = "like_track")]
    like_camera: Option<String>,
    /// Only rows of this camera (repeatable; default: every camera).
    #[arg(long = "camera", value_name = "CAMERA")]
    cameras: Vec<String>,
    /// Alert at this calibrated probability (needs a bundle with score calibration).
    #[arg(long, value_name = "P", conflicts_with = "min_score")]
    min_p: Option<f64>,
    /// Alert at this raw cosine score (for a bundle without score calibration).
    #[arg(long, value_name = "S")]
    min_score: Option<f64>,
    /// The prior p is computed at (default: the calibration's; see the README on
    /// picking it).
    #[arg(long, value_name = "P", requires = "min_p")]
    prior: Option<f64>,
    /// At most one alert per (watch, camera, track) in this many seconds.
    #[arg(long, default_value_t = DEFAULT_COOLDOWN_S, value_name = "S")]
    cooldown_s: u64,
    /// Print the stored watch as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    provider: ProviderArgs,
}

pub fn run(cmd: WatchCommand) -> Result<()> {
    match cmd {
        WatchCommand::Add(a) => add(*a),
        WatchCommand::List { dir, json } => {
            let store = Store::open(&dir, Mode::Reader)?;
            let ws = store.watches()?;
            if json {
                let v: Vec<serde_json::Value> = ws.iter().map(|w| w.json()).collect();
                println!("{}", serde_json::json!({ "watches": v }));
            } else if ws.is_empty() {
                println!("{}: no watches", dir.display());
            } else {
                for w in &ws {
                    println!("{}", w.json());
                }
            }
            Ok(())
        }
        WatchCommand::Delete { dir, id } => {
            let store = Store::open(&dir, Mode::Writer)?;
            if !store.watch_delete(id)? {
                bail!(
                    "{}: no watch {id} (see `sen store watch list`)",
                    dir.display()
                );
            }
            println!("{}: watch {id} deleted", dir.display());
            Ok(())
        }
    }
}

fn add(a: WatchAddArgs) -> Result<()> {
    let threshold = match (a.min_p, a.min_score) {
        (Some(p), None) => Threshold::MinP(p),
        (None, Some(s)) => Threshold::MinScore(s),
        _ => bail!("give --min-p P (a calibrated probability) or --min-score S (a raw cosine)"),
    };
    let manifest = Manifest::load(&a.bundle)?;
    if matches!(threshold, Threshold::MinP(_)) {
        // p needs the calibration, and one bound to these encoders.
        if sen_core::scores::bundle::ScoreCalibration::load(&a.bundle, &manifest)?.is_none() {
            bail!(
                "--min-p: {} carries no score calibration; run `sen calibrate-scores {}` or use --min-score",
                a.bundle.display(),
                a.bundle.display()
            );
        }
    }
    let store = Store::open(&a.dir, Mode::Writer)?;
    store.check_encoder(
        &manifest.encoder_digest(&manifest.io.image)?,
        manifest.model.embed_dim,
        &manifest.preprocess,
        &a.bundle.display().to_string(),
    )?;
    let (query, vector) = match (&a.text, a.like, &a.like_track) {
        (Some(t), None, None) => {
            let enc = TextEncoder::load(&a.bundle, &a.provider.options())?;
            log_sessions(&enc.reports);
            let e = enc.encode(std::slice::from_ref(t))?;
            (WatchQuery::Text(t.clone()), e.row(0).to_vec())
        }
        (None, Some(id), None) => (WatchQuery::Like(id), store.embedding(id)?),
        (None, None, Some(track)) => {
            let camera = sen_store::camera(a.like_camera.clone())?;
            let (v, _) = store.track_embedding(&camera, track)?;
            (
                WatchQuery::LikeTrack {
                    camera,
                    track: track.clone(),
                },
                v,
            )
        }
        _ => bail!("give --text DESCRIPTION, --like ID or --like-track TRACK"),
    };
    let spec = WatchSpec {
        name: a.name,
        query,
        cameras: (!a.cameras.is_empty()).then_some(a.cameras),
        threshold,
        prior: a.prior,
        cooldown_s: a.cooldown_s,
    };
    let id = store.watch_add(spec, vector)?;
    let w = store.watch(id)?.expect("just stored");
    if a.json {
        println!("{}", w.json());
    } else {
        println!("{}: watch {id} added: {}", a.dir.display(), w.json());
    }
    Ok(())
}
