//! The broker side: one persistent MQTT session (fixed client id, clean session off,
//! QoS-1 subscriptions, manual acknowledgements). Every message is written to the
//! store's durable inbox (one group commit for whatever arrived together) and only
//! then acknowledged, in arrival order; a crash before the commit leaves it
//! unacknowledged, so the broker delivers it again.

use crate::config::MqttConfig;
use crate::status::{Metrics, State};
use anyhow::{Context, Result};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS, TlsConfiguration, Transport};
use sen_store::{InboxMessage, Store};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, mpsc, watch};

/// What the connection loop tells the rest of the source.
pub struct Wiring {
    pub source: &'static str,
    /// Topics subscribed at QoS 1.
    pub topics: Vec<String>,
    /// Frigate's `<prefix>/available` (its state is kept, not queued).
    pub available: Option<String>,
    pub store: Arc<Store>,
    pub state: Arc<State>,
    pub metrics: Arc<Metrics>,
    /// Woken when the inbox has new entries.
    pub inbox: Arc<Notify>,
    /// Woken on every (re)connect (the backfill runs then).
    pub connected: Arc<Notify>,
    pub max_payload: usize,
}

/// Options for a client that only publishes (sen's alerts): a clean session and
/// automatic acks; the broker, TLS and credentials as a source's.
pub fn publisher_options(cfg: &MqttConfig) -> Result<MqttOptions> {
    let mut o = options(cfg)?;
    o.set_clean_session(true).set_manual_acks(false);
    Ok(o)
}

fn options(cfg: &MqttConfig) -> Result<MqttOptions> {
    let mut o = MqttOptions::new(&cfg.client_id, &cfg.host, cfg.port);
    o.set_keep_alive(cfg.keep_alive)
        .set_clean_session(false)
        .set_manual_acks(true)
        // The broker's own limit (mosquitto's default); larger payloads than sen takes
        // are dropped after they arrive, so one never wedges the session.
        .set_max_packet_size(256 << 20, 1 << 20);
    if let (Some(u), Some(p)) = (&cfg.user, &cfg.password) {
        o.set_credentials(u, &p.0);
    } else if let Some(u) = &cfg.user {
        o.set_credentials(u, "");
    }
    if cfg.tls {
        let mut roots = rustls::RootCertStore::empty();
        match &cfg.ca {
            Some(ca) => {
                use rustls::pki_types::CertificateDer;
                use rustls::pki_types::pem::PemObject;
                let certs: Vec<_> = CertificateDer::pem_file_iter(ca)
                    .with_context(|| format!("--mqtt-ca {}", ca.display()))?
                    .collect::<Result<_, _>>()
                    .with_context(|| format!("--mqtt-ca {}: not PEM certificates", ca.display()))?;
                if certs.is_empty() {
                    anyhow::bail!("--mqtt-ca {}: no certificate in it", ca.display());
                }
                for c in certs {
                    roots
                        .add(c)
                        .with_context(|| format!("--mqtt-ca {}", ca.display()))?;
                }
            }
            None => {
                for c in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(c);
                }
                if roots.is_empty() {
                    anyhow::bail!(
                        "--mqtt {}: no system CA certificates found; give --mqtt-ca FILE",
                        cfg.describe()
                    );
                }
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS settings")?
            .with_root_certificates(roots)
            .with_no_client_auth();
        o.set_transport(Transport::Tls(TlsConfiguration::Rustls(Arc::new(tls))));
    }
    Ok(o)
}

/// Check the settings (CA file, credentials) before start-up reports ready.
pub fn check(cfg: &MqttConfig) -> Result<()> {
    options(cfg).map(|_| ())
}

/// Run the session until `stop`: reconnect with backoff (0.5 s doubling to 30 s) on
/// every failure, logging it and showing it in the state.
pub async fn run(cfg: MqttConfig, w: Wiring, mut stop: watch::Receiver<bool>) -> Result<()> {
    let (client, mut events) = AsyncClient::new(options(&cfg)?, 1024);
    let (tx, rx) = mpsc::channel::<ToWriter>(4096);
    // Which connection this is: a `Subscribed` mark of an earlier one is stale.
    let session = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let writer = tokio::spawn(write_inbox(
        rx,
        client.clone(),
        WriterCtx::of(&w, session.clone()),
    ));
    let mut backoff = Duration::from_millis(500);
    let broker = cfg.describe();
    loop {
        let ev = tokio::select! {
            ev = events.poll() => ev,
            _ = stop.changed() => break,
        };
        match ev {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                backoff = Duration::from_millis(500);
                session.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tracing::info!(
                    "{}: connected to {broker} as {} (session {})",
                    w.source,
                    cfg.client_id,
                    if ack.session_present {
                        "resumed"
                    } else {
                        "new"
                    }
                );
                w.state.set_connected(true, None);
                w.state
                    .subscribed
                    .store(false, std::sync::atomic::Ordering::SeqCst);
                w.metrics.connected.set(1);
                // The session keeps subscriptions, but a broker that lost it (no
                // persistence) does not: subscribe on every connect.
                let topics = w.topics.iter().chain(w.available.iter());
                let filters =
                    topics.map(|t| rumqttc::SubscribeFilter::new(t.clone(), QoS::AtLeastOnce));
                if let Err(e) = client.subscribe_many(filters).await {
                    tracing::warn!("{}: subscribing to {:?}: {e}", w.source, w.topics);
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if Some(&p.topic) == w.available.as_ref() {
                    let v = String::from_utf8_lossy(&p.payload).trim().to_string();
                    if v == "online" {
                        tracing::info!("{}: {} says {v}", w.source, p.topic);
                    } else {
                        tracing::warn!("{}: {} says {v:?}", w.source, p.topic);
                    }
                    w.state.set_available(&v);
                    if p.qos != QoS::AtMostOnce {
                        let _ = client.ack(&p).await;
                    }
                    continue;
                }
                if tx.send(ToWriter::Message(p)).await.is_err() {
                    break;
                }
            }
            Ok(Event::Incoming(Packet::SubAck(s))) => {
                let refused = s
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure));
                if refused {
                    let e = format!("the broker refused a subscription ({:?})", w.topics);
                    tracing::error!("{}: {e}", w.source);
                    w.state.set_error(e);
                } else {
                    // Subscribed: whatever ends from now on is delivered, so the backfill
                    // (what ended before) runs now, not at the connect (an event that
                    // ended between the two would be in neither). The mark goes through
                    // the inbox writer, so the messages that arrived before it (a resumed
                    // session's queue) are in the inbox first and the backfill finds
                    // them there: their frame times win over the backfill's guess.
                    let mark = session.load(std::sync::atomic::Ordering::SeqCst);
                    if tx.send(ToWriter::Subscribed(mark)).await.is_err() {
                        break;
                    }
                }
            }
            Ok(Event::Incoming(Packet::Disconnect)) => {
                tracing::warn!("{}: the broker closed the session", w.source);
            }
            Ok(_) => {}
            Err(e) => {
                let msg = format!("{broker}: {e}");
                if w.state.connected.load(std::sync::atomic::Ordering::SeqCst) {
                    tracing::warn!("{}: disconnected: {msg}; reconnecting", w.source);
                } else {
                    tracing::debug!("{}: cannot connect: {msg}", w.source);
                }
                w.state.set_connected(false, Some(msg));
                w.metrics.connected.set(0);
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
    w.metrics.connected.set(0);
    drop(tx);
    let _ = writer.await;
    let _ = tokio::time::timeout(Duration::from_secs(1), client.disconnect()).await;
    Ok(())
}

/// What the session hands the inbox writer, in arrival order.
enum ToWriter {
    Message(Publish),
    /// The broker acknowledged the subscription of connection N: once everything
    /// before this is in the inbox, the source is `subscribed` and the backfill runs.
    Subscribed(u64),
}

struct WriterCtx {
    source: &'static str,
    store: Arc<Store>,
    state: Arc<State>,
    metrics: Arc<Metrics>,
    inbox: Arc<Notify>,
    connected: Arc<Notify>,
    session: Arc<std::sync::atomic::AtomicU64>,
    max_payload: usize,
}

impl WriterCtx {
    fn of(w: &Wiring, session: Arc<std::sync::atomic::AtomicU64>) -> WriterCtx {
        WriterCtx {
            source: w.source,
            store: w.store.clone(),
            state: w.state.clone(),
            metrics: w.metrics.clone(),
            inbox: w.inbox.clone(),
            connected: w.connected.clone(),
            session,
            max_payload: w.max_payload,
        }
    }

    /// The subscription of connection `mark` is acknowledged and what came before it
    /// is in the inbox (a mark of an earlier connection is ignored).
    fn subscribed(&self, mark: u64) {
        if self.session.load(std::sync::atomic::Ordering::SeqCst) == mark {
            self.state
                .subscribed
                .store(true, std::sync::atomic::Ordering::SeqCst);
            self.connected.notify_one();
        }
    }
}

/// Group what arrived together into one durable write, then acknowledge each message
/// in arrival order. A write that fails (disk full) is retried; nothing is
/// acknowledged before it is durable.
async fn write_inbox(mut rx: mpsc::Receiver<ToWriter>, client: AsyncClient, c: WriterCtx) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![];
        let mut mark = None;
        match first {
            ToWriter::Message(p) => batch.push(p),
            ToWriter::Subscribed(m) => mark = Some(m),
        }
        while mark.is_none() && batch.len() < 512 {
            match rx.try_recv() {
                Ok(ToWriter::Message(p)) => batch.push(p),
                Ok(ToWriter::Subscribed(m)) => mark = Some(m),
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            write_batch(&batch, &client, &c).await;
        }
        if let Some(m) = mark {
            c.subscribed(m);
        }
    }
}

/// One durable inbox write of `batch`, then each message acknowledged in order.
async fn write_batch(batch: &[Publish], client: &AsyncClient, c: &WriterCtx) {
    let now = now_ms();
    let mut msgs = Vec::with_capacity(batch.len());
    for p in batch {
        if p.qos == QoS::AtMostOnce {
            c.metrics.messages.with_label_values(&["qos0"]).inc();
            if c.state.first_of("qos0") {
                tracing::warn!(
                    "{}: {} arrived at QoS 0: a message lost while sen is down is not \
                         redelivered (set `mqtt: qos: 1` in Frigate's config; backfill \
                         still finds ended events)",
                    c.source,
                    p.topic
                );
            }
        } else {
            c.metrics.messages.with_label_values(&["qos1"]).inc();
        }
        if p.payload.len() > c.max_payload {
            c.metrics.messages.with_label_values(&["oversize"]).inc();
            c.metrics.skipped.with_label_values(&["too_large"]).inc();
            if c.state.first_of("too_large") {
                tracing::warn!(
                    "{}: {}: a {}-byte message is over the {}-byte limit (--max-body-mib); \
                         skipped (logged once)",
                    c.source,
                    p.topic,
                    p.payload.len(),
                    c.max_payload
                );
            }
            continue;
        }
        msgs.push(InboxMessage {
            source: c.source.to_string(),
            topic: p.topic.clone(),
            payload: p.payload.to_vec(),
            received_ms: now,
        });
    }
    let mut wait = Duration::from_millis(200);
    loop {
        let (store, m) = (c.store.clone(), msgs.clone());
        match tokio::task::spawn_blocking(move || store.inbox_push(m)).await {
            Ok(Ok(_)) => break,
            Ok(Err(e)) => {
                tracing::error!(
                    "{}: cannot write {} messages to the inbox: {e}; retrying (they stay \
                         unacknowledged)",
                    c.source,
                    msgs.len()
                );
                c.state.set_error(format!("inbox: {e}"));
            }
            Err(e) => tracing::error!("{}: inbox writer: {e}", c.source),
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(10));
    }
    c.inbox.notify_one();
    for p in batch {
        if p.qos != QoS::AtMostOnce
            && let Err(e) = client.ack(p).await
        {
            tracing::warn!("{}: acknowledging {}: {e}", c.source, p.topic);
        }
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn publish(n: u8) -> Publish {
        let mut p = Publish::new("frigate/events", QoS::AtLeastOnce, vec![b'{', n, b'}']);
        p.pkid = n as u16 + 1;
        p
    }

    /// The SUBACK's mark reaches the writer behind the messages that arrived before
    /// it: when `subscribed` is set and the backfill woken, they are in the inbox (a
    /// resumed session's queue wins over the backfill's copy). A mark of an earlier
    /// connection sets nothing.
    #[tokio::test]
    async fn subscribed_is_set_after_what_came_before_it_is_in_the_inbox() {
        let d = tempfile::tempdir().unwrap();
        let store = Arc::new(
            Store::create(
                &d.path().join("s"),
                &sen_store::StoreConfig {
                    image_encoder_sha256: "ab".repeat(32),
                    preprocess: sen_core::PreprocessSpec::for_model(&sen_core::ModelConfig::tiny()),
                    dim: 4,
                    dtype: sen_store::Storage::F32,
                    crops: false,
                    bundle_precision: "fp32".into(),
                },
            )
            .unwrap(),
        );
        // The client only queues the acks: no broker is needed.
        let (client, _unpolled) = AsyncClient::new(MqttOptions::new("t", "127.0.0.1", 1), 64);
        let state = Arc::new(State::default());
        let connected = Arc::new(Notify::new());
        let session = Arc::new(AtomicU64::new(2));
        let ctx = WriterCtx {
            source: "frigate",
            store: store.clone(),
            state: state.clone(),
            metrics: Arc::new(Metrics::new(&prometheus::Registry::new(), "frigate").unwrap()),
            inbox: Arc::new(Notify::new()),
            connected: connected.clone(),
            session: session.clone(),
            max_payload: 1 << 20,
        };
        let (tx, rx) = mpsc::channel(16);
        // Everything is queued before the writer runs, as a burst would arrive.
        for n in 0..3 {
            tx.send(ToWriter::Message(publish(n))).await.unwrap();
        }
        tx.send(ToWriter::Subscribed(1)).await.unwrap();
        tx.send(ToWriter::Message(publish(3))).await.unwrap();
        tx.send(ToWriter::Subscribed(2)).await.unwrap();
        let writer = tokio::spawn(write_inbox(rx, client, ctx));
        tokio::time::timeout(Duration::from_secs(10), connected.notified())
            .await
            .expect("the current connection's mark wakes the backfill");
        assert!(state.subscribed.load(Ordering::SeqCst));
        assert_eq!(store.inbox_depth("frigate").unwrap(), 4);
        // A stale mark alone: nothing is set or woken.
        state.subscribed.store(false, Ordering::SeqCst);
        session.store(3, Ordering::SeqCst);
        tx.send(ToWriter::Subscribed(2)).await.unwrap();
        drop(tx);
        writer.await.unwrap();
        assert!(!state.subscribed.load(Ordering::SeqCst));
        assert!(
            tokio::time::timeout(Duration::from_millis(200), connected.notified())
                .await
                .is_err()
        );
    }
}
