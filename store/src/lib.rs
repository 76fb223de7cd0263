//! `sen-store`: the gallery an edge box keeps, with no ONNX Runtime and no HTTP
//! (SPEC §10, §11).
//!
//! - [`store`]: the store directory ([`Store`]): rows with camera, capture time,
//!   path, pid, attributes, embedding and crop; durable group commits; filtered
//!   exact search on snapshots; deletion, retention, compaction; verification;
//! - [`segment`]: immutable memory-mapped segment files (the index file's version 2);
//! - [`db`]: the SQLite database (every statement of the store);
//! - [`index`]: the single-file gallery index (version 1) of `sen index` / `sen search`;
//! - [`search`]: exact top-k kernels (SIMD paths chosen at run time, batched queries,
//!   row filters);
//! - [`results`]: the SPEC §11 result and stats JSON every entry point answers;
//! - [`time`]: SPEC §11 times; [`io`]: durable file writes and the fault-injecting layer
//!   tests use.

pub mod db;
pub mod error;
pub mod format;
pub mod index;
pub mod io;
pub mod migrate;
pub mod results;
pub mod search;
pub mod segment;
pub mod store;
pub mod time;
pub mod verify;
pub mod watch;

pub use error::StoreError;
pub use store::{
    Added, CameraSummary, Change, CompactReport, Crop, Finished, Found, Group, Idempotency,
    InboxEntry, InboxMessage, MAX_TRACK_BYTES, Mode, NewRow, Options, Query, Resolve, Resolved,
    RowLimits, SOURCES, Selector, Skip, Snapshot, Stats, Store, StoreConfig, StoreInfo, camera,
    check_bbox, check_track, group_rows,
};

use serde::{Deserialize, Serialize};

/// How embeddings are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    F32,
    F16,
}

impl Storage {
    pub fn bytes(self) -> usize {
        match self {
            Storage::F32 => 4,
            Storage::F16 => 2,
        }
    }
}
