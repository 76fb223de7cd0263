//! Alert delivery (SPEC §12), at least once: each sink follows the store's alerts in id
//! order from its durable cursor, and moves the cursor only once the alert is
//! confirmed (or given up on after `--alert-retry-for`, recorded with why). A crash
//! between an alert's commit and its confirmation sends it again after the restart,
//! with the same id (receivers deduplicate on `X-Sen-Alert-Id`).
//!
//! Webhooks: `POST` of the alert's JSON, signed `X-Sen-Signature: sha256=HEX` (HMAC-
//! SHA256 of the exact body under `--alert-webhook-secret`), retried with exponential
//! backoff and jitter.

use crate::state::App;
use anyhow::{Context, Result};
use hmac::{Hmac, Mac};
use sen_store::Store;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A webhook URL (`--alert-webhook`).
pub use reqwest::Url;

/// `--alert-*`.
#[derive(Debug, Clone)]
pub struct AlertConfig {
    pub webhooks: Vec<reqwest::Url>,
    /// `--alert-mqtt`: publish each alert at QoS 1 on `topic`.
    pub mqtt: Option<(sen_sources::config::MqttConfig, String)>,
    /// The webhook signing secret (bytes of the secret file, trailing newline off).
    pub secret: Option<Vec<u8>>,
    /// How long one alert is retried before it is given up on.
    pub retry_for: Duration,
}

/// Alerts a sink asks for at once.
const BATCH: usize = 64;
/// How often an idle sink looks for new alerts.
const POLL: Duration = Duration::from_millis(200);

/// Start one delivery task per sink (after the store is open).
pub(crate) fn start(app: &Arc<App>) -> Result<()> {
    let Some(cfg) = &app.cfg.alerts else {
        return Ok(());
    };
    let Some(l) = app.loaded.get() else {
        return Ok(());
    };
    let Some(store) = l.store.clone() else {
        anyhow::bail!("--alert-webhook needs a store (a box), not a central search node");
    };
    // https webhooks: the process's TLS provider (as the crop proxy installs it).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .context("the webhook client")?;
    for url in &cfg.webhooks {
        let sink = Sink::Webhook(Webhook {
            name: format!("webhook {}", redact(url)),
            url: url.clone(),
            secret: cfg.secret.clone(),
            client: client.clone(),
        });
        tokio::spawn(follow(store.clone(), sink, cfg.retry_for, app.clone()));
    }
    if let Some((m, topic)) = &cfg.mqtt {
        let opts = sen_sources::mqtt::publisher_options(m)?;
        let (client, events) = rumqttc::AsyncClient::new(opts, 16);
        let sink = Sink::Mqtt(Box::new(MqttSink {
            name: format!("mqtt {} {topic}", m.describe()),
            topic: topic.clone(),
            client,
            events,
        }));
        tokio::spawn(follow(store.clone(), sink, cfg.retry_for, app.clone()));
    }
    Ok(())
}

/// A URL as logs and stats may show it: no user or password.
fn redact(u: &reqwest::Url) -> String {
    let mut u = u.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.to_string()
}

/// HMAC-SHA256 of `body` under `secret`, as lower-case hex.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// Where a sink sends.
enum Sink {
    Webhook(Webhook),
    Mqtt(Box<MqttSink>),
}

impl Sink {
    fn name(&self) -> &str {
        match self {
            Sink::Webhook(w) => &w.name,
            Sink::Mqtt(m) => &m.name,
        }
    }

    async fn send(&mut self, id: u64, body: &[u8]) -> Result<(), String> {
        match self {
            Sink::Webhook(w) => w.send(id, body).await,
            Sink::Mqtt(m) => m.send(body).await,
        }
    }
}

/// An MQTT broker: each alert published at QoS 1 and confirmed by the broker's
/// PUBACK (one in flight; the event loop is driven while waiting, and reconnects on
/// the next send after an error).
struct MqttSink {
    name: String,
    topic: String,
    client: rumqttc::AsyncClient,
    events: rumqttc::EventLoop,
}

impl MqttSink {
    async fn send(&mut self, body: &[u8]) -> Result<(), String> {
        use rumqttc::{Event, Outgoing, Packet};
        self.client
            .publish(&self.topic, rumqttc::QoS::AtLeastOnce, false, body.to_vec())
            .await
            .map_err(|e| e.to_string())?;
        // The broker's PUBACK of this publish (its packet id is known once it goes
        // out): a late PUBACK of an earlier try confirms nothing here.
        let wait = async {
            let mut ours = None;
            loop {
                match self.events.poll().await {
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) if ours.is_none() => {
                        ours = Some(pkid)
                    }
                    Ok(Event::Incoming(Packet::PubAck(a))) if Some(a.pkid) == ours => {
                        return Ok(());
                    }
                    Ok(_) => {}
                    Err(e) => return Err(e.to_string()),
                }
            }
        };
        match tokio::time::timeout(Duration::from_secs(10), wait).await {
            Ok(r) => r,
            Err(_) => Err("no PUBACK within 10 s".into()),
        }
    }
}

struct Webhook {
    name: String,
    url: reqwest::Url,
    secret: Option<Vec<u8>>,
    client: reqwest::Client,
}

impl Webhook {
    async fn send(&self, id: u64, body: &[u8]) -> Result<(), String> {
        let mut req = self
            .client
            .post(self.url.clone())
            .header("content-type", "application/json")
            .header("x-sen-alert-id", id.to_string())
            .body(body.to_vec());
        if let Some(s) = &self.secret {
            req = req.header("x-sen-signature", format!("sha256={}", signature(s, body)));
        }
        match req.send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("answered {}", r.status())),
            Err(e) => Err(format!("{e}")),
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, sen_store::StoreError> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

/// Follow the store's alerts from the sink's cursor until the server stops.
async fn follow(store: Arc<Store>, mut sink: Sink, retry_for: Duration, app: Arc<App>) {
    let mut jitter = sen_core::rng::Rng::new(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
    );
    let name = sink.name().to_string();
    let mut cursor = loop {
        let (s, n) = (store.clone(), name.clone());
        match blocking(move || s.alert_cursor(&n)).await {
            Ok(c) => break c,
            Err(e) => {
                tracing::warn!("{name}: reading its cursor: {e}; trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    tracing::info!("{name}: delivering alerts after {cursor}");
    while !app.stopping.load(std::sync::atomic::Ordering::SeqCst) {
        let s = store.clone();
        let next = match blocking(move || s.alerts_after(cursor, BATCH)).await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!("{name}: reading alerts: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if next.is_empty() {
            tokio::time::sleep(POLL).await;
            continue;
        }
        for a in next {
            let body = serde_json::to_vec(&a.json()).expect("an alert serialises");
            let first = Instant::now();
            let mut backoff = Duration::from_millis(500);
            let failed = loop {
                match sink.send(a.id, &body).await {
                    Ok(()) => break None,
                    Err(e) if first.elapsed() >= retry_for => break Some(e),
                    Err(e) => {
                        tracing::debug!("{name}: alert {}: {e}; retrying", a.id);
                        // Exponential backoff with +-25% jitter, capped at 60 s and at
                        // what is left of the retry window.
                        let j = 0.75 + 0.5 * jitter.f64();
                        let wait = backoff
                            .mul_f64(j)
                            .min(retry_for.saturating_sub(first.elapsed()))
                            .max(Duration::from_millis(10));
                        tokio::time::sleep(wait).await;
                        backoff = (backoff * 2).min(Duration::from_secs(60));
                    }
                }
            };
            let counter = if failed.is_some() {
                &app.metrics.alerts_failed
            } else {
                &app.metrics.alerts_delivered
            };
            counter.with_label_values(&[&name]).inc();
            if let Some(e) = &failed {
                tracing::warn!(
                    "{name}: gave up on alert {} after {:.0} s: {e}",
                    a.id,
                    retry_for.as_secs_f64()
                );
            }
            // Confirmed (or given up on) durably before the next one.
            loop {
                let (s, n, f) = (store.clone(), name.clone(), failed.clone());
                match blocking(move || s.alert_delivered(&n, a.id, f)).await {
                    Ok(_) => break,
                    Err(e) => {
                        tracing::warn!("{name}: recording alert {}: {e}; trying again", a.id);
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
            cursor = a.id;
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn signature_is_rfc_4231_hmac_sha256() {
        // RFC 4231, test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            super::signature(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
