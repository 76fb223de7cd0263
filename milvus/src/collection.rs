//! The collection sen writes and searches: its schema, its index, the identity it
//! records (encoder sha256, dimension, schema version as collection properties), and
//! every call sen makes on it.
//!
//! Schema (one row per store row): `key` (VARCHAR primary key, `STORE_UUID:ID`, so an
//! upsert of the same row from any retry replaces it), `store`, `box`, `id`,
//! `camera`, `time` (Unix ms), `path`, `pid` (nullable), `attrs` (JSON, nullable),
//! `track`, `source` (nullable strings) and `bbox` (JSON, nullable; schema 2: SPEC §12),
//! `embedding` (FLOAT_VECTOR of the encoder's dimension, inner product: the rows are
//! unit length, so it is the cosine the local store ranks by). Consistency: Strong,
//! so a search sees every acknowledged write.

use crate::expr::Filter;
use crate::{CallKind, MilvusError, Settings, Target};
use milvus::v2::prelude::{
    ClientV2, CollectionSchema, ConnectConfig, ConsistencyLevel, CreateCollectionRequest, DataType,
    DeleteRequest, DescribeCollectionRequest, DropCollectionRequest, FieldData, FieldSchema,
    FlushRequest, HasCollectionRequest, IndexParam, IndexType, InsertRequest,
    LoadCollectionRequest, MetricType, QueryRequest, ResultRow, RetryConfig, SearchRequest,
    SearchVectors, UpsertRequest,
};
use sen_store::Found;
use std::collections::HashMap;
use std::time::Duration;

pub type SearchFilter = Filter;

/// The schema version sen writes (`sen.schema`); a collection of another is refused.
/// 2 added tracks (`track`, `bbox`, `source`).
pub const SCHEMA_VERSION: &str = "2";
const P_SCHEMA: &str = "sen.schema";
const P_ENCODER: &str = "sen.encoder_sha256";
const P_DIM: &str = "sen.dim";
const P_INDEX: &str = "sen.index";
/// Every field of the schema (a collection without one of them is not sen's).
const FIELDS: [&str; 13] = [
    "key",
    "store",
    "box",
    "id",
    "camera",
    "time",
    "path",
    "pid",
    "attrs",
    "track",
    "bbox",
    "source",
    "embedding",
];
/// The fields every result reads.
const OUTPUT: [&str; 11] = [
    "store", "box", "id", "camera", "time", "path", "pid", "attrs", "track", "bbox", "source",
];
/// Longest values (bytes): a box name, a camera (the store allows 128), a path.
const MAX_BOX: u32 = 128;
const MAX_CAMERA: u32 = 512;
const MAX_PATH: u32 = 65_535;
/// A track id (the store allows 128 bytes).
const MAX_TRACK: u32 = 512;
/// Milvus answers at most this many rows per query.
const QUERY_WINDOW: i64 = 16_384;

/// The image encoder a collection's embeddings come from.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoder {
    pub sha256: String,
    pub dim: usize,
}

/// The vector index built at collection creation.
#[derive(Debug, Clone, PartialEq)]
pub enum IndexSpec {
    /// Exact: the same ranking as the local store.
    Flat,
    Hnsw {
        m: u32,
        ef_construction: u32,
    },
    IvfFlat {
        nlist: u32,
    },
}

impl IndexSpec {
    /// `--index flat|hnsw|ivf_flat` with `--index-param KEY=VALUE` (hnsw: `M`,
    /// `efConstruction`; ivf_flat: `nlist`).
    pub fn parse(kind: &str, params: &[String]) -> Result<IndexSpec, MilvusError> {
        let mut kv: HashMap<String, u32> = HashMap::new();
        for p in params {
            let (k, v) = p.split_once('=').ok_or_else(|| {
                MilvusError::Input(format!("--index-param {p:?}: write KEY=VALUE"))
            })?;
            let n: u32 = v.parse().ok().filter(|&n| n > 0).ok_or_else(|| {
                MilvusError::Input(format!(
                    "--index-param {p:?}: {v:?} is not a positive integer"
                ))
            })?;
            kv.insert(k.to_string(), n);
        }
        let mut take = |k: &str, default: u32, range: std::ops::RangeInclusive<u32>| {
            let v = kv.remove(k).unwrap_or(default);
            if range.contains(&v) {
                Ok(v)
            } else {
                Err(MilvusError::Input(format!(
                    "--index-param {k}={v}: must be {} to {}",
                    range.start(),
                    range.end()
                )))
            }
        };
        let spec = match kind {
            "flat" => IndexSpec::Flat,
            "hnsw" => IndexSpec::Hnsw {
                m: take("M", 16, 2..=2048)?,
                ef_construction: take("efConstruction", 200, 1..=100_000)?,
            },
            "ivf_flat" => IndexSpec::IvfFlat {
                nlist: take("nlist", 1024, 1..=65_536)?,
            },
            other => {
                return Err(MilvusError::Input(format!(
                    "--index {other:?}: choose flat, hnsw or ivf_flat"
                )));
            }
        };
        if let Some(k) = kv.keys().next() {
            return Err(MilvusError::Input(format!(
                "--index-param {k}: not a parameter of --index {kind} (hnsw: M, efConstruction; ivf_flat: nlist; flat: none)"
            )));
        }
        Ok(spec)
    }

    /// How it is recorded in the collection's `sen.index` property.
    pub fn describe(&self) -> String {
        match self {
            IndexSpec::Flat => "flat".into(),
            IndexSpec::Hnsw { m, ef_construction } => {
                format!("hnsw M={m} efConstruction={ef_construction}")
            }
            IndexSpec::IvfFlat { nlist } => format!("ivf_flat nlist={nlist}"),
        }
    }

    fn param(&self) -> IndexParam {
        let p = IndexParam::new()
            .field_name("embedding")
            .metric_type(MetricType::Ip);
        match self {
            IndexSpec::Flat => p.index_type(IndexType::Flat),
            IndexSpec::Hnsw { m, ef_construction } => {
                p.index_type(IndexType::Hnsw).extra_params(HashMap::from([
                    ("M".to_string(), m.to_string()),
                    ("efConstruction".to_string(), ef_construction.to_string()),
                ]))
            }
            IndexSpec::IvfFlat { nlist } => p
                .index_type(IndexType::IvfFlat)
                .extra_params(HashMap::from([("nlist".to_string(), nlist.to_string())])),
        }
    }
}

/// Search parameters for the index a collection records (its `sen.index`), unless
/// given: HNSW `ef` = max(k, 128), IVF `nprobe` = 32.
pub fn search_params(
    index: &str,
    k: usize,
    given: &[String],
) -> Result<HashMap<String, String>, MilvusError> {
    let mut out = HashMap::new();
    if index.starts_with("hnsw") {
        out.insert("ef".to_string(), k.max(128).to_string());
    } else if index.starts_with("ivf_flat") {
        out.insert("nprobe".to_string(), "32".to_string());
    }
    for p in given {
        let (key, v) = p.split_once('=').ok_or_else(|| {
            MilvusError::Input(format!(
                "--search-param {p:?}: write KEY=VALUE (ef=256, nprobe=64)"
            ))
        })?;
        if !matches!(key, "ef" | "nprobe") || v.parse::<u32>().map_or(true, |n| n == 0) {
            return Err(MilvusError::Input(format!(
                "--search-param {p:?}: give ef=N (hnsw) or nprobe=N (ivf_flat), N a positive integer"
            )));
        }
        out.insert(key.to_string(), v.to_string());
    }
    Ok(out)
}

/// One row of a store, as replicated.
#[derive(Debug, Clone)]
pub struct Replica {
    pub found: Found,
    pub embedding: Vec<f32>,
}

/// One search result from a replicated collection: the row, its box and its store.
#[derive(Debug, Clone, PartialEq)]
pub struct BoxHit {
    pub found: Found,
    pub box_name: String,
    pub store: String,
}

/// A connection to one collection.
pub struct Collection {
    client: ClientV2,
    pub target: Target,
    /// The collection's properties once opened (`sen.*`).
    pub properties: HashMap<String, String>,
}

fn call_err(target: &Target, what: &str) -> impl Fn(milvus::v2::error::Error) -> MilvusError {
    let (target, what) = (target.to_string(), what.to_string());
    move |e| MilvusError::Call {
        target: target.clone(),
        what: what.clone(),
        kind: CallKind::of(&e),
        error: e.to_string(),
    }
}

/// A request that names only the collection, built (or an error naming the target).
macro_rules! on_collection {
    ($self:ident, $req:ident) => {
        $req::builder()
            .collection_name(&$self.target.collection)
            .build()
            .map_err(build_err(&$self.target))?
    };
}

fn build_err(target: &Target) -> impl Fn(milvus::v2::error::Error) -> MilvusError {
    let target = target.to_string();
    move |e| MilvusError::Input(format!("{target}: {e}"))
}

impl Collection {
    /// Connect (waiting at most the connect timeout for the server to answer).
    pub async fn connect(target: &Target, s: &Settings) -> Result<Collection, MilvusError> {
        let mut cfg = ConnectConfig::new()
            .uri(target.endpoint())
            .connect_timeout(s.connect_timeout)
            .rpc_timeout(s.rpc_timeout)
            .retry(
                RetryConfig::new()
                    .max_attempts(s.attempts)
                    .initial_backoff(Duration::from_millis(200))
                    .max_backoff(Duration::from_secs(5))
                    .backoff_multiplier(2.0),
            );
        if target.tls {
            cfg = cfg.secure(true);
            if let Some(ca) = &s.ca_cert {
                cfg = cfg.ca_certificate(ca.display().to_string());
            }
            if let Some(n) = &s.tls_server_name {
                cfg = cfg.tls_server_name(n.clone());
            }
        }
        if let Some(t) = &s.token {
            cfg = cfg.token(t.0.clone());
        }
        if let Some((u, p)) = &s.user {
            cfg = cfg.username_password(u, &p.0);
        }
        if let Some(d) = &s.database {
            cfg = cfg.database(d.clone());
        }
        let client = tokio::time::timeout(
            s.connect_timeout + Duration::from_secs(1),
            ClientV2::new(&cfg),
        )
        .await
        .map_err(|_| MilvusError::Call {
            target: target.to_string(),
            what: "connecting".into(),
            kind: CallKind::Unreachable,
            error: format!(
                "no answer within {:.0} s (SEN_MILVUS_CONNECT_TIMEOUT); is the server up and the port right?",
                s.connect_timeout.as_secs_f64()
            ),
        })?
        .map_err(call_err(target, "connecting"))?;
        Ok(Collection {
            client,
            target: target.clone(),
            properties: HashMap::new(),
        })
    }

    async fn exists(&self) -> Result<bool, MilvusError> {
        let r = self
            .client
            .has_collection(on_collection!(self, HasCollectionRequest))
            .await
            .map_err(call_err(&self.target, "looking the collection up"))?;
        Ok(r.exists())
    }

    /// Open the collection to write `encoder`'s rows into, creating it (schema, index,
    /// identity properties, Strong consistency) when missing; refuse one made for
    /// another encoder, dimension or schema. Loads it.
    pub async fn open_for_writing(
        &mut self,
        encoder: &Encoder,
        index: &IndexSpec,
    ) -> Result<(), MilvusError> {
        if !self.exists().await? {
            let r = self.create(encoder, index).await;
            // Another box may have created it meanwhile: then check theirs.
            if let Err(e) = r
                && !self.exists().await?
            {
                return Err(e);
            }
        }
        self.open_existing(Some(encoder)).await
    }

    /// Open an existing collection (to search it), checking its identity; `encoder`:
    /// refuse one whose rows come from another encoder. Loads it.
    pub async fn open(&mut self, encoder: Option<&Encoder>) -> Result<(), MilvusError> {
        if !self.exists().await? {
            return Err(MilvusError::Input(format!(
                "{}: no such collection; a box creates it when it replicates (sen serve --replicate, sen store replicate)",
                self.target
            )));
        }
        self.open_existing(encoder).await
    }

    /// Describe a collection known to exist, check its identity, load it.
    async fn open_existing(&mut self, encoder: Option<&Encoder>) -> Result<(), MilvusError> {
        let d = self
            .client
            .describe_collection(on_collection!(self, DescribeCollectionRequest))
            .await
            .map_err(call_err(&self.target, "describing the collection"))?;
        let props = d.description().get_properties().clone();
        let fields: Vec<String> = d
            .description()
            .get_schema()
            .get_fields()
            .iter()
            .map(|f| f.get_name().to_string())
            .collect();
        check_identity(&self.target, &props, &fields, encoder)?;
        self.properties = props;
        self.load().await
    }

    /// Load the collection into memory (a restarted server holds it released).
    pub async fn load(&self) -> Result<(), MilvusError> {
        self.client
            .load_collection(on_collection!(self, LoadCollectionRequest))
            .await
            .map_err(call_err(&self.target, "loading the collection"))
    }

    async fn create(&self, encoder: &Encoder, index: &IndexSpec) -> Result<(), MilvusError> {
        let var = |name: &str, len: u32| {
            FieldSchema::new()
                .name(name)
                .data_type(DataType::VarChar)
                .max_length(len)
        };
        let int = |name: &str| FieldSchema::new().name(name).data_type(DataType::Int64);
        let schema = CollectionSchema::new()
            .add_field(var("key", 64).primary_key(true))
            .add_field(var("store", 36))
            .add_field(var("box", MAX_BOX))
            .add_field(int("id"))
            .add_field(var("camera", MAX_CAMERA))
            .add_field(int("time"))
            .add_field(var("path", MAX_PATH))
            .add_field(int("pid").nullable(true))
            .add_field(
                FieldSchema::new()
                    .name("attrs")
                    .data_type(DataType::Json)
                    .nullable(true),
            )
            .add_field(var("track", MAX_TRACK).nullable(true))
            .add_field(
                FieldSchema::new()
                    .name("bbox")
                    .data_type(DataType::Json)
                    .nullable(true),
            )
            .add_field(var("source", 16).nullable(true))
            .add_field(
                FieldSchema::new()
                    .name("embedding")
                    .data_type(DataType::FloatVector)
                    .dimension(encoder.dim as u32),
            );
        tracing::info!(
            "{}: creating the collection ({}-dim, index {})",
            self.target,
            encoder.dim,
            index.describe()
        );
        self.client
            .create_collection(
                CreateCollectionRequest::builder()
                    .collection_name(&self.target.collection)
                    .schema(schema)
                    .index_params(vec![index.param()])
                    .properties(HashMap::from([
                        (P_SCHEMA.to_string(), SCHEMA_VERSION.to_string()),
                        (P_ENCODER.to_string(), encoder.sha256.clone()),
                        (P_DIM.to_string(), encoder.dim.to_string()),
                        (P_INDEX.to_string(), index.describe()),
                    ]))
                    .consistency_level(ConsistencyLevel::Strong)
                    .build()
                    .map_err(build_err(&self.target))?,
            )
            .await
            .map_err(call_err(&self.target, "creating the collection"))
    }

    /// The index the collection records (`flat`, `hnsw M=.. efConstruction=..`, ...).
    pub fn index(&self) -> &str {
        self.properties.get(P_INDEX).map_or("flat", String::as_str)
    }

    /// The encoder the collection records.
    pub fn encoder(&self) -> Encoder {
        Encoder {
            sha256: self.properties.get(P_ENCODER).cloned().unwrap_or_default(),
            dim: self
                .properties
                .get(P_DIM)
                .and_then(|d| d.parse().ok())
                .unwrap_or(0),
        }
    }

    /// Insert or replace rows (by `STORE:ID`).
    pub async fn upsert(
        &self,
        store: &str,
        box_name: &str,
        rows: &[Replica],
    ) -> Result<(), MilvusError> {
        if rows.is_empty() {
            return Ok(());
        }
        let n = rows.len();
        let strs = |f: &dyn Fn(&Replica) -> String| rows.iter().map(f).collect::<Vec<String>>();
        let pid_valid: Vec<bool> = rows.iter().map(|r| r.found.pid.is_some()).collect();
        let attrs_valid: Vec<bool> = rows.iter().map(|r| r.found.attrs.is_some()).collect();
        let bad = |e: milvus::v2::error::Error| MilvusError::Input(format!("{}: {e}", self.target));
        let columns = vec![
            FieldData::varchar("key", strs(&|r| key(store, r.found.id))),
            FieldData::varchar("store", vec![store.to_string(); n]),
            FieldData::varchar("box", vec![box_name.to_string(); n]),
            FieldData::int64("id", rows.iter().map(|r| r.found.id as i64).collect()),
            FieldData::varchar("camera", strs(&|r| r.found.camera.clone())),
            FieldData::int64("time", rows.iter().map(|r| r.found.time_ms).collect()),
            FieldData::varchar("path", strs(&|r| r.found.path.clone())),
            // Nullable columns carry the values of the valid rows only.
            FieldData::int64("pid", rows.iter().filter_map(|r| r.found.pid).collect())
                .with_validity(pid_valid)
                .map_err(bad)?,
            FieldData::json(
                "attrs",
                rows.iter().filter_map(|r| r.found.attrs.clone()).collect(),
            )
            .with_validity(attrs_valid)
            .map_err(bad)?,
            FieldData::varchar(
                "track",
                rows.iter().filter_map(|r| r.found.track.clone()).collect(),
            )
            .with_validity(rows.iter().map(|r| r.found.track.is_some()).collect())
            .map_err(bad)?,
            FieldData::json(
                "bbox",
                rows.iter()
                    .filter_map(|r| r.found.bbox.map(|b| serde_json::Value::from(b.to_vec())))
                    .collect(),
            )
            .with_validity(rows.iter().map(|r| r.found.bbox.is_some()).collect())
            .map_err(bad)?,
            FieldData::varchar(
                "source",
                rows.iter().filter_map(|r| r.found.source.clone()).collect(),
            )
            .with_validity(rows.iter().map(|r| r.found.source.is_some()).collect())
            .map_err(bad)?,
            FieldData::float_vector(
                "embedding",
                rows.iter().map(|r| r.embedding.clone()).collect(),
            ),
        ];
        self.client
            .upsert(
                UpsertRequest::builder()
                    .insert(
                        InsertRequest::builder()
                            .collection_name(&self.target.collection)
                            .columns(columns)
                            .build()
                            .map_err(build_err(&self.target))?,
                    )
                    .build()
                    .map_err(build_err(&self.target))?,
            )
            .await
            .map_err(call_err(&self.target, &format!("upserting {n} rows")))?;
        Ok(())
    }

    /// Delete rows of a store by id.
    pub async fn delete(&self, store: &str, ids: &[u64]) -> Result<(), MilvusError> {
        for chunk in ids.chunks(1000) {
            let keys: Vec<String> = chunk.iter().map(|&id| key(store, id)).collect();
            let expr = crate::expr::one_of("key", &keys);
            self.client
                .delete(
                    DeleteRequest::builder()
                        .collection_name(&self.target.collection)
                        .filter(expr)
                        .build()
                        .map_err(build_err(&self.target))?,
                )
                .await
                .map_err(call_err(
                    &self.target,
                    &format!("deleting {} rows", chunk.len()),
                ))?;
        }
        Ok(())
    }

    /// Top-k rows by inner product for each query vector, filtered; ties by lower id
    /// (then box), as the local store orders them.
    pub async fn search(
        &self,
        vectors: Vec<Vec<f32>>,
        k: usize,
        filter: &Filter,
        params: HashMap<String, String>,
    ) -> Result<Vec<Vec<BoxHit>>, MilvusError> {
        let expr = filter.expression();
        let request = || {
            let mut b = SearchRequest::builder()
                .collection_name(&self.target.collection)
                .vector_field("embedding")
                .vectors(SearchVectors::Float(vectors.clone()))
                .output_fields(OUTPUT)
                .limit(k as i64)
                .metric_type(MetricType::Ip)
                .extra_params(params.clone())
                .consistency_level(ConsistencyLevel::Strong);
            if !expr.is_empty() {
                b = b.filter(expr.clone());
            }
            b.build().map_err(build_err(&self.target))
        };
        let mut r = self.client.search(request()?).await;
        if let Err(e) = &r
            && CallKind::of(e) == CallKind::NotLoaded
        {
            // The server restarted and holds the collection released: load, retry once.
            self.load().await?;
            r = self.client.search(request()?).await;
        }
        let r = r.map_err(|e| self.classify(e, &expr, "searching"))?;
        let mut out = vec![];
        for q in r.results().iter() {
            let scores = q.get_scores();
            let mut hits = vec![];
            for (i, row) in q
                .rows()
                .map_err(call_err(&self.target, "reading results"))?
                .enumerate()
            {
                hits.push(read_hit(
                    &self.target,
                    &row,
                    scores.get(i).copied().unwrap_or(0.0),
                )?);
            }
            hits.sort_by(|a, b| {
                b.found
                    .score
                    .total_cmp(&a.found.score)
                    .then(a.found.id.cmp(&b.found.id))
                    .then(a.box_name.cmp(&b.box_name))
            });
            out.push(hits);
        }
        Ok(out)
    }

    fn classify(&self, e: milvus::v2::error::Error, expr: &str, what: &str) -> MilvusError {
        let kind = CallKind::of(&e);
        if !expr.is_empty() && kind == CallKind::BadArgument {
            MilvusError::Expr {
                target: self.target.to_string(),
                expr: expr.to_string(),
                error: e.to_string(),
            }
        } else {
            MilvusError::Call {
                target: self.target.to_string(),
                what: what.to_string(),
                kind,
                error: e.to_string(),
            }
        }
    }

    /// Rows matching `filter` (all rows for an empty one).
    pub async fn count(&self, filter: &str) -> Result<u64, MilvusError> {
        let mut b = QueryRequest::builder()
            .collection_name(&self.target.collection)
            .output_fields(["count(*)"])
            .consistency_level(ConsistencyLevel::Strong);
        if !filter.is_empty() {
            b = b.filter(filter);
        }
        let r = self
            .client
            .query(b.build().map_err(build_err(&self.target))?)
            .await
            .map_err(|e| self.classify(e, filter, "counting rows"))?;
        let err = call_err(&self.target, "counting rows");
        let Some(row) = r.results().rows().map_err(&err)?.next() else {
            return Ok(0);
        };
        Ok(row.get_i64("count(*)").map_err(&err)? as u64)
    }

    /// (box, id) of the rows matching `filter`, sorted; refuses more than Milvus
    /// answers in one query (16,384).
    pub async fn keys(&self, filter: &str) -> Result<Vec<(String, u64)>, MilvusError> {
        let filter = if filter.is_empty() { "id >= 0" } else { filter };
        let r = self
            .client
            .query(
                QueryRequest::builder()
                    .collection_name(&self.target.collection)
                    .filter(filter)
                    .output_fields(["box", "id"])
                    .limit(QUERY_WINDOW)
                    .consistency_level(ConsistencyLevel::Strong)
                    .build()
                    .map_err(build_err(&self.target))?,
            )
            .await
            .map_err(|e| self.classify(e, filter, "listing rows"))?;
        let mut out = vec![];
        for row in r
            .results()
            .rows()
            .map_err(call_err(&self.target, "listing rows"))?
        {
            let get = |e| call_err(&self.target, "listing rows")(e);
            out.push((
                row.get_str("box").map_err(get)?.to_string(),
                row.get_i64("id").map_err(get)? as u64,
            ));
        }
        if out.len() as i64 >= QUERY_WINDOW {
            return Err(MilvusError::Input(format!(
                "{}: more than {QUERY_WINDOW} rows match `{filter}`; narrow the filter",
                self.target
            )));
        }
        out.sort();
        Ok(out)
    }

    /// A replicated row's embedding ("more like this" on a central node).
    pub async fn embedding(&self, box_name: &str, id: u64) -> Result<Vec<f32>, MilvusError> {
        let filter = format!("box == {} and id == {id}", crate::expr::literal(box_name));
        let r = self
            .client
            .query(
                QueryRequest::builder()
                    .collection_name(&self.target.collection)
                    .filter(filter.clone())
                    .output_fields(["embedding"])
                    .limit(1)
                    .consistency_level(ConsistencyLevel::Strong)
                    .build()
                    .map_err(build_err(&self.target))?,
            )
            .await
            .map_err(|e| self.classify(e, &filter, "reading an embedding"))?;
        let row = r
            .results()
            .rows()
            .map_err(call_err(&self.target, "reading an embedding"))?
            .next()
            .ok_or_else(|| {
                MilvusError::Input(format!("{}: box {box_name:?} has no row {id}", self.target))
            })?;
        Ok(row
            .get_float_vector("embedding")
            .map_err(call_err(&self.target, "reading an embedding"))?
            .to_vec())
    }

    /// Seal what was written into segments. Milvus seals on its own; milvus-lite
    /// searches unsealed rows far slower (100k rows x 512: 1.5 s per query unsealed,
    /// milliseconds sealed), so replication flushes once caught up.
    pub async fn flush(&self) -> Result<(), MilvusError> {
        self.client
            .flush(
                FlushRequest::builder()
                    .collection_names([self.target.collection.as_str()])
                    .build()
                    .map_err(build_err(&self.target))?,
            )
            .await
            .map_err(call_err(&self.target, "flushing"))?;
        Ok(())
    }

    /// Drop the collection (tests, and an operator starting over).
    pub async fn drop_collection(&self) -> Result<(), MilvusError> {
        self.client
            .drop_collection(on_collection!(self, DropCollectionRequest))
            .await
            .map_err(call_err(&self.target, "dropping the collection"))
    }
}

/// The primary key of a store's row.
pub fn key(store: &str, id: u64) -> String {
    format!("{store}:{id}")
}

fn read_hit(target: &Target, row: &ResultRow<'_>, score: f32) -> Result<BoxHit, MilvusError> {
    let e = |err| call_err(target, "reading results")(err);
    let pid = if row.is_null("pid").map_err(e)? {
        None
    } else {
        Some(row.get_i64("pid").map_err(e)?)
    };
    let attrs = if row.is_null("attrs").map_err(e)? {
        None
    } else {
        Some(row.get_json("attrs").map_err(e)?.clone()).filter(|v| !v.is_null())
    };
    let opt_str = |name: &str| -> Result<Option<String>, MilvusError> {
        Ok(if row.is_null(name).map_err(e)? {
            None
        } else {
            Some(row.get_str(name).map_err(e)?.to_string())
        })
    };
    let bbox = if row.is_null("bbox").map_err(e)? {
        None
    } else {
        serde_json::from_value::<[f64; 4]>(row.get_json("bbox").map_err(e)?.clone()).ok()
    };
    Ok(BoxHit {
        found: Found {
            id: row.get_i64("id").map_err(e)? as u64,
            score,
            camera: row.get_str("camera").map_err(e)?.to_string(),
            time_ms: row.get_i64("time").map_err(e)?,
            path: row.get_str("path").map_err(e)?.to_string(),
            pid,
            attrs,
            track: opt_str("track")?,
            bbox,
            source: opt_str("source")?,
            group: None,
        },
        box_name: row.get_str("box").map_err(e)?.to_string(),
        store: row.get_str("store").map_err(e)?.to_string(),
    })
}

/// Refuse a collection sen did not make, or made for another encoder or schema.
fn check_identity(
    target: &Target,
    props: &HashMap<String, String>,
    fields: &[String],
    encoder: Option<&Encoder>,
) -> Result<(), MilvusError> {
    let Some(schema) = props.get(P_SCHEMA) else {
        return Err(MilvusError::Mismatch(format!(
            "{target}: this collection was not made by sen (no {P_SCHEMA} property); give another collection name"
        )));
    };
    if schema == "1" {
        return Err(MilvusError::Mismatch(format!(
            "{target}: the collection was made by an older sen (schema 1, without tracks); this sen \
             writes and reads schema {SCHEMA_VERSION}: replicate into a new collection name (or drop \
             this one and replicate again: the box's store holds every row)"
        )));
    }
    if schema != SCHEMA_VERSION {
        return Err(MilvusError::Mismatch(format!(
            "{target}: the collection has sen schema {schema}, this sen writes and reads {SCHEMA_VERSION}; give another collection name"
        )));
    }
    for f in FIELDS {
        if !fields.iter().any(|x| x == f) {
            return Err(MilvusError::Mismatch(format!(
                "{target}: the collection has no field {f:?}; it is not a sen collection of schema {SCHEMA_VERSION}"
            )));
        }
    }
    if let Some(enc) = encoder {
        let theirs = props.get(P_ENCODER).map_or("", String::as_str);
        let dim = props.get(P_DIM).map_or("", String::as_str);
        if theirs != enc.sha256 || dim != enc.dim.to_string() {
            return Err(MilvusError::Mismatch(format!(
                "{target}: the collection holds embeddings of image encoder {theirs} ({dim}-dim), not of {} ({}-dim): rankings across encoders mean nothing; replicate into (or search) another collection",
                enc.sha256, enc.dim
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_specs_parse_with_their_parameters() {
        assert_eq!(IndexSpec::parse("flat", &[]).unwrap(), IndexSpec::Flat);
        assert_eq!(
            IndexSpec::parse("hnsw", &["M=32".into()]).unwrap(),
            IndexSpec::Hnsw {
                m: 32,
                ef_construction: 200
            }
        );
        assert_eq!(
            IndexSpec::parse("ivf_flat", &["nlist=128".into()])
                .unwrap()
                .describe(),
            "ivf_flat nlist=128"
        );
        for (kind, params, says) in [
            ("diskann", vec![], "choose flat, hnsw or ivf_flat"),
            (
                "flat",
                vec!["M=8".to_string()],
                "not a parameter of --index flat",
            ),
            ("hnsw", vec!["M=1".to_string()], "M=1: must be 2 to 2048"),
            ("hnsw", vec!["M".to_string()], "KEY=VALUE"),
            (
                "ivf_flat",
                vec!["nlist=-3".to_string()],
                "not a positive integer",
            ),
        ] {
            let e = IndexSpec::parse(kind, &params).unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
        }
    }

    #[test]
    fn search_parameters_default_by_index_and_are_checked() {
        assert_eq!(search_params("flat", 10, &[]).unwrap(), HashMap::new());
        assert_eq!(
            search_params("hnsw M=16 efConstruction=200", 10, &[]).unwrap()["ef"],
            "128"
        );
        assert_eq!(
            search_params("hnsw M=16 efConstruction=200", 500, &[]).unwrap()["ef"],
            "500"
        );
        assert_eq!(
            search_params("ivf_flat nlist=128", 10, &["nprobe=64".into()]).unwrap()["nprobe"],
            "64"
        );
        assert!(search_params("flat", 10, &["bogus=1".into()]).is_err());
        assert!(search_params("flat", 10, &["ef=0".into()]).is_err());
    }

    #[test]
    fn identity_mismatches_are_refused_naming_both_encoders() {
        let t = Target::parse("milvus://127.0.0.1:1/c").unwrap();
        let fields: Vec<String> = FIELDS.iter().map(|s| s.to_string()).collect();
        let props = HashMap::from([
            (P_SCHEMA.to_string(), SCHEMA_VERSION.to_string()),
            (P_ENCODER.to_string(), "aaa".to_string()),
            (P_DIM.to_string(), "512".to_string()),
        ]);
        let ours = Encoder {
            sha256: "aaa".into(),
            dim: 512,
        };
        check_identity(&t, &props, &fields, Some(&ours)).unwrap();
        let other = Encoder {
            sha256: "bbb".into(),
            dim: 512,
        };
        let e = check_identity(&t, &props, &fields, Some(&other))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("aaa") && e.contains("bbb") && e.contains("milvus://127.0.0.1:1/c"),
            "{e}"
        );
        let e = check_identity(&t, &HashMap::new(), &fields, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not made by sen"), "{e}");
        let e = check_identity(&t, &props, &fields[..12], None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no field \"embedding\""), "{e}");
        let mut old = props.clone();
        old.insert(P_SCHEMA.to_string(), "1".to_string());
        let e = check_identity(&t, &old, &fields, None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("older sen") && e.contains("new collection"),
            "{e}"
        );
    }
}
