//! The route handlers, by concern: [`ingest`] (adding crops), [`images`] (crops,
//! thumbnails, deletes), [`search`] (search and embeddings), [`status`] (health,
//! readiness, metrics, stats, cameras) and [`page`] (the operator's page).

pub mod images;
pub mod ingest;
pub mod page;
pub mod search;
pub mod status;
pub mod watches;

/// The state every handler gets.
type S = std::sync::Arc<crate::state::App>;

/// Run `inputs` through a queue in room reserved for all of them (they batch
/// together), recording each one's queue and inference time: their embeddings, in
/// order, or the first failure.
pub(crate) async fn encode_reserved<I: Send + 'static>(
    app: &S,
    room: &crate::batch::Reservation<'_, I, Vec<f32>, sen_runtime::RuntimeError>,
    inputs: impl IntoIterator<Item = I>,
) -> Result<Vec<Vec<f32>>, crate::error::ApiError> {
    let outs = futures::future::join_all(inputs.into_iter().map(|x| room.submit(x))).await;
    let mut embeddings = Vec::with_capacity(outs.len());
    for o in outs {
        let (v, tm) = o?;
        ingest::observe_encoder(app, &tm);
        embeddings.push(v);
    }
    Ok(embeddings)
}
