//! `--retention`: delete rows older than the period, then compact in the background.

use crate::state::App;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Delete rows older than the retention period, at start and then every tenth of the
/// period (at most every 10 minutes, at least every minute); compact in the
/// background once a tenth of the rows (or 100,000) are deleted awaiting compaction.
pub(crate) async fn retention_loop(app: Arc<App>, ms: i64) {
    let every = Duration::from_millis((ms / 10).clamp(60_000, 600_000) as u64);
    loop {
        if app.stopping.load(Ordering::SeqCst) {
            return;
        }
        if let Some(l) = app.loaded.get() {
            let Some(store) = l.store.clone() else {
                return;
            };
            let app2 = app.clone();
            let r = tokio::task::spawn_blocking(move || -> Result<(), sen_store::StoreError> {
                let cutoff = sen_store::time::now_ms() - ms;
                let n = store.delete(sen_store::Selector::Before(cutoff))?;
                if n > 0 {
                    app2.metrics.retention_deleted.inc_by(n as u64);
                    tracing::info!(
                        "retention: deleted {n} rows captured before {}",
                        sen_store::time::format(cutoff)
                    );
                }
                let s = store.stats()?;
                if s.deleted_pending > 0
                    && (s.deleted_pending >= 100_000 || s.deleted_pending * 10 >= s.rows.max(1))
                {
                    let c = store.compact()?;
                    tracing::info!(
                        "compaction: {} deleted rows rewritten away in {:.1} s",
                        c.rows_removed,
                        c.seconds
                    );
                }
                Ok(())
            })
            .await;
            match r {
                Ok(Err(e)) => tracing::warn!("retention: {e}"),
                Err(e) => tracing::warn!("retention: {e}"),
                Ok(Ok(())) => {}
            }
            tokio::time::sleep(every).await;
        } else {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
