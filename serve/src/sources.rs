//! `--source`: start the MQTT source once the service is loaded; its crops go
//! through the same bounded decoding pool and image batching queue as HTTP ingest.

use crate::error::ApiError;
use crate::handlers::ingest;
use crate::state::App;
use anyhow::{Context, Result};
use futures::future::BoxFuture;
use sen_sources::{Embed, EmbedError};
use std::sync::Arc;

struct ServeEmbed(Arc<App>);

impl Embed for ServeEmbed {
    fn embed(
        &self,
        image: Vec<u8>,
        what: String,
    ) -> BoxFuture<'static, Result<Vec<f32>, EmbedError>> {
        let app = self.0.clone();
        Box::pin(async move {
            let l = app
                .ready()
                .ok_or_else(|| EmbedError::Failed("the service is not ready".into()))?;
            let r = async {
                ingest::check_size(&app.cfg.image_limits, &image, &what)?;
                let x = ingest::prepare(&app, l, image.into(), what).await?;
                ingest::embed(&app, l, x).await
            };
            r.await.map_err(|e| match e {
                ApiError::BadImage(m) | ApiError::ImageTooLarge(m) => EmbedError::Image(m),
                ApiError::Overloaded(_) => EmbedError::Busy,
                other => EmbedError::Failed(other.to_string()),
            })
        })
    }
}

/// Start `--source` (when given) on the store; called once loaded.
pub(crate) fn start(app: &Arc<App>) -> Result<()> {
    let Some(cfg) = app.cfg.source.clone() else {
        return Ok(());
    };
    let l = app.loaded.get().context("not loaded")?;
    let store = l
        .store
        .clone()
        .context("--source needs --store (a central node holds no store)")?;
    let source = sen_sources::Source::start(
        cfg,
        store,
        Arc::new(ServeEmbed(app.clone())),
        &app.metrics.registry,
    )?;
    let _ = app.source.set(source);
    Ok(())
}
