//! The route handlers, by concern: [`ingest`] (adding crops), [`images`] (crops,
//! thumbnails, deletes), [`search`] (search and embeddings), [`status`] (health,
//! readiness, metrics, stats, cameras) and [`page`] (the operator's page).

pub mod images;
pub mod ingest;
pub mod page;
pub mod search;
pub mod status;

/// The state every handler gets.
type S = std::sync::Arc<crate::state::App>;
