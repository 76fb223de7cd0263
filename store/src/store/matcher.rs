//! The writer's matcher (SPEC §12): every active watch's vector, with the score
//! calibration when the store was given one. In the transaction that stores new rows,
//! each row is scored against every watch whose cameras include it (one kernel call
//! per row over all watch vectors), and the alerts it raises are written beside it, so
//! an alert exists exactly when its row is acknowledged, whatever the entry point.
//!
//! Cooldown is kept per `(watch, camera, track)` (per row without a track) in the
//! database, on capture time: a row raises no alert when the same key alerted on a
//! row captured less than `cooldown_s` before or after it.

use super::*;
use crate::search::simd::Kernel;
use crate::watch::{Threshold, Watch};
use sen_core::scores::Moments;
use sen_core::scores::bundle::{QueryKind, ScoreCalibration};

struct Active {
    id: u64,
    name: String,
    cameras: Option<Vec<String>>,
    threshold: Threshold,
    prior: Option<f64>,
    cooldown_ms: i64,
    kind: QueryKind,
    /// The watch vector's moments over the calibration's background.
    moments: Option<Moments>,
}

#[derive(Default)]
pub(super) struct Matcher {
    watches: Vec<Active>,
    /// Every watch's vector, row after row (for the kernel).
    vectors: Vec<f32>,
    calibration: Option<Arc<ScoreCalibration>>,
    /// min_p watches were skipped for want of a calibration (logged once).
    warned: bool,
}

/// An alert raised in a commit.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAlert {
    pub watch: u64,
    pub name: String,
    pub row: u64,
    pub camera: String,
    pub track: Option<String>,
    pub time_ms: i64,
    pub score: f32,
    pub p: Option<f64>,
}

impl Matcher {
    /// The store's watches, as the database has them.
    pub(super) fn load(c: &Connection, path: &Path) -> Result<Matcher, StoreError> {
        let mut m = Matcher::default();
        m.reload(c, path)?;
        Ok(m)
    }

    /// Read the watches again (after a commit that changed them failed, say).
    pub(super) fn reload(&mut self, c: &Connection, path: &Path) -> Result<(), StoreError> {
        let ws = db::watches(c, path, None)?;
        self.watches.clear();
        self.vectors.clear();
        for w in &ws {
            self.add(w);
        }
        Ok(())
    }

    pub(super) fn add(&mut self, w: &Watch) {
        let kind = if w.spec.query.is_text() {
            QueryKind::Text
        } else {
            QueryKind::Image
        };
        let moments = self
            .calibration
            .as_ref()
            .and_then(|c| c.moments(&w.vector).ok());
        self.watches.push(Active {
            id: w.id,
            name: w.spec.name.clone(),
            cameras: w.spec.cameras.clone(),
            threshold: w.spec.threshold,
            prior: w.spec.prior,
            cooldown_ms: (w.spec.cooldown_s as i64).saturating_mul(1000),
            kind,
            moments,
        });
        self.vectors.extend_from_slice(&w.vector);
    }

    /// A deleted watch stops at once (before its transaction commits; a failed commit
    /// reloads).
    pub(super) fn remove(&mut self, id: u64) {
        if let Some(i) = self.watches.iter().position(|w| w.id == id) {
            self.watches.remove(i);
            let d = self.vectors.len() / (self.watches.len() + 1);
            self.vectors.drain(i * d..(i + 1) * d);
        }
    }

    /// Give the matcher a score calibration (or take it away): `min_p` watches need
    /// one.
    pub(super) fn set_calibration(
        &mut self,
        c: &Connection,
        path: &Path,
        cal: Option<Arc<ScoreCalibration>>,
    ) -> Result<(), StoreError> {
        self.calibration = cal;
        self.warned = false;
        self.reload(c, path)
    }

    /// Score new rows (ids from `first`) and write the alerts they raise, honouring
    /// and updating cooldowns. Runs inside the rows' transaction.
    pub(super) fn raise(
        &mut self,
        c: &Connection,
        path: &Path,
        first: u64,
        rows: &[NewRow],
        now: i64,
    ) -> Result<Vec<NewAlert>, StoreError> {
        if self.watches.is_empty() || rows.is_empty() {
            return Ok(vec![]);
        }
        let kernel = Kernel::active().map_err(|e| StoreError::Input(e.to_string()))?;
        let d = rows[0].embedding.len();
        if self.vectors.len() != self.watches.len() * d {
            return Err(StoreError::Damaged(format!(
                "{}: watch vectors do not match the rows' {d} values",
                path.display()
            )));
        }
        // The batch's rows stay in cache while each watch vector passes once:
        // scores[w * n + i] = <watch w, row i>.
        let n = rows.len();
        let flat: Vec<f32> = rows
            .iter()
            .flat_map(|r| r.embedding.iter().copied())
            .collect();
        let mut all = vec![0.0f32; self.watches.len() * n];
        for (w, out) in self.vectors.chunks_exact(d).zip(all.chunks_exact_mut(n)) {
            kernel.dots_f32(w, &flat, out);
        }
        let mut out = vec![];
        for (i, r) in rows.iter().enumerate() {
            let scores = (0..self.watches.len()).map(|w| all[w * n + i]);
            let id = first + i as u64;
            for (w, s) in self.watches.iter().zip(scores) {
                if w.cameras.as_ref().is_some_and(|cs| !cs.contains(&r.camera)) {
                    continue;
                }
                let (hit, p) = match w.threshold {
                    Threshold::MinScore(min) => (s as f64 >= min, None),
                    Threshold::MinP(min) => {
                        let (Some(cal), Some(m)) = (&self.calibration, &w.moments) else {
                            if !self.warned {
                                tracing::warn!(
                                    "{}: min_p watches raise nothing: the store was given no score calibration",
                                    path.display()
                                );
                                self.warned = true;
                            }
                            continue;
                        };
                        let p = cal.p(w.kind, m, s as f64, w.prior);
                        (p >= min, Some(p))
                    }
                };
                if !hit {
                    continue;
                }
                let key = r.track.clone().unwrap_or_else(|| format!("#{id}"));
                if let Some(last) = db::cooldown(c, path, w.id, &r.camera, &key)?
                    && (r.time_ms - last).abs() < w.cooldown_ms
                {
                    continue;
                }
                db::set_cooldown(c, path, w.id, &r.camera, &key, r.time_ms)?;
                let a = NewAlert {
                    watch: w.id,
                    name: w.name.clone(),
                    row: id,
                    camera: r.camera.clone(),
                    track: r.track.clone(),
                    time_ms: r.time_ms,
                    score: s,
                    p,
                };
                db::alert_insert(c, path, &a, now)?;
                out.push(a);
            }
        }
        Ok(out)
    }
}
