//! Accepting connections, with the limits SPEC §11 sets (mini-redis's semaphore is
//! the model): at most `max_connections` open at once (a permit is taken before
//! `accept`, so past the cap new connections wait in the kernel's backlog instead of
//! costing a file descriptor each), a TLS handshake and the first request's header
//! within `header_timeout`, the next request on a kept-alive connection within
//! `idle_timeout` of the last response and its header within `header_timeout` of its
//! first byte. A connection that breaks a limit is closed; an idle one is closed
//! gracefully. On shutdown every connection is told to finish what it is serving and
//! close (idle ones close at once); the server waits for them at most the grace period.
//!
//! hyper's own header timeout is not used: under the protocol-detecting builder it
//! does not run until the first byte arrives, so a connection that sends nothing was
//! never closed (what axum-server left open), and on kept-alive connections it would
//! also cut the idle wait to the header timeout.

use crate::metrics::Metrics;
use axum::Router;
use axum::body::Body;
use axum::extract::connect_info::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Semaphore, watch};
use tower::ServiceExt;

/// The connection limits (`--header-timeout`, `--idle-timeout`, `--max-connections`).
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

/// File descriptors kept back from the connection cap for everything else the process
/// opens (the store's files, segments, ONNX Runtime, logs).
const FD_RESERVE: u64 = 64;

/// The connection cap this process can honour: `--max-connections`, lowered to fit
/// `RLIMIT_NOFILE` less [`FD_RESERVE`] (logged when lowered), at least 1.
pub fn effective_cap(requested: usize) -> usize {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } == 0 {
        r.rlim_cur
    } else {
        u64::MAX
    };
    let fit = soft.saturating_sub(FD_RESERVE).max(1);
    if (requested as u64) > fit {
        tracing::warn!(
            "--max-connections {requested}: the open-file limit is {soft}, so at most {fit} \
             connections are accepted at once (raise `ulimit -n` / LimitNOFILE for more)"
        );
        fit as usize
    } else {
        requested.max(1)
    }
}

/// What the watchdog knows of one connection.
struct Activity {
    /// Requests whose response has not been sent in full.
    in_flight: AtomicUsize,
    /// Requests seen (their header arrived).
    served: AtomicUsize,
    /// HTTP/2 (idle frames such as PING are not the start of a request).
    h2: AtomicBool,
    times: Mutex<Times>,
}

struct Times {
    /// Accepted, or the last response finished.
    idle_since: Instant,
    /// The first byte read while no request was in flight (a header arriving).
    first_byte: Option<Instant>,
}

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Activity {
            in_flight: AtomicUsize::new(0),
            served: AtomicUsize::new(0),
            h2: AtomicBool::new(false),
            times: Mutex::new(Times {
                idle_since: Instant::now(),
                first_byte: None,
            }),
        })
    }

    fn times(&self) -> std::sync::MutexGuard<'_, Times> {
        self.times.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self) {
        if self.in_flight.load(Ordering::SeqCst) == 0 {
            let mut t = self.times();
            if t.first_byte.is_none() {
                t.first_byte = Some(Instant::now());
            }
        }
    }

    /// A request's header arrived.
    fn start(self: &Arc<Self>, h2: bool) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.served.fetch_add(1, Ordering::SeqCst);
        if h2 {
            self.h2.store(true, Ordering::SeqCst);
        }
        self.times().first_byte = None;
        InFlight(self.clone())
    }

    /// What to do with the connection now.
    fn verdict(&self, l: &ConnLimits, now: Instant) -> Verdict {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return Verdict::Keep;
        }
        let t = self.times();
        if self.served.load(Ordering::SeqCst) == 0 {
            // The first request's header is due within the header timeout of accept.
            return if now - t.idle_since > l.header_timeout {
                Verdict::Close("header")
            } else {
                Verdict::Keep
            };
        }
        if !self.h2.load(Ordering::SeqCst)
            && let Some(b) = t.first_byte
            && now - b > l.header_timeout
        {
            return Verdict::Close("header");
        }
        if now - t.idle_since > l.idle_timeout {
            Verdict::Idle
        } else {
            Verdict::Keep
        }
    }
}

enum Verdict {
    Keep,
    /// Broke a limit: close now.
    Close(&'static str),
    /// Idle past the keep-alive timeout: close gracefully.
    Idle,
}

/// One request in flight; dropped when its response body is done (or abandoned).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut t = self.0.times();
        t.idle_since = Instant::now();
        t.first_byte = None;
        drop(t);
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body that marks its request done when it is dropped.
struct Tracked {
    inner: Body,
    _guard: InFlight,
}

impl hyper::body::Body for Tracked {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// A connection's byte stream, noting reads for the watchdog.
struct Watched<T> {
    io: T,
    activity: Arc<Activity>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.read();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Accept and serve connections until `shutdown` turns true, then give those open
/// `grace` to finish. Returns when every connection is closed or the grace is over.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    router: Router,
    limits: ConnLimits,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) {
    let cap = effective_cap(limits.max_connections);
    let permits = Arc::new(Semaphore::new(cap));
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            _ = shutdown.wait_for(|s| *s) => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: the connection stays in the backlog; retry
                    // shortly instead of spinning.
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.wait_for(|s| *s) => break,
        };
        let _ = stream.set_nodelay(true);
        let (tls, router, metrics, shutdown) = (
            tls.clone(),
            router.clone(),
            metrics.clone(),
            shutdown.clone(),
        );
        tokio::spawn(async move {
            metrics.connections.inc();
            let closed = connection(stream, peer, tls, router, limits, shutdown).await;
            metrics.connections.dec();
            metrics
                .connections_closed
                .with_label_values(&[closed])
                .inc();
            drop(permit);
        });
    }
    drop(listener);
    // Every permit back means every connection closed.
    let _ = tokio::time::timeout(grace, permits.acquire_many(cap as u32)).await;
}

/// Serve one connection; returns why it closed (the metric's label).
async fn connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
    router: Router,
    limits: ConnLimits,
    shutdown: watch::Receiver<bool>,
) -> &'static str {
    let activity = Activity::new();
    match tls {
        Some(acceptor) => {
            let io = Watched {
                io: stream,
                activity: activity.clone(),
            };
            let mut stop = shutdown.clone();
            let handshake = tokio::select! {
                r = tokio::time::timeout(limits.header_timeout, acceptor.accept(io)) => r,
                _ = stop.wait_for(|s| *s) => return "shutdown",
            };
            match handshake {
                Ok(Ok(s)) => drive(s, peer, router, limits, shutdown, activity).await,
                Ok(Err(_)) => "tls",
                Err(_) => "header",
            }
        }
        None => {
            let io = Watched {
                io: stream,
                activity: activity.clone(),
            };
            drive(io, peer, router, limits, shutdown, activity).await
        }
    }
}

async fn drive<T>(
    io: T,
    peer: SocketAddr,
    router: Router,
    limits: ConnLimits,
    mut shutdown: watch::Receiver<bool>,
    activity: Arc<Activity>,
) -> &'static str
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let act = activity.clone();
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        let guard = act.start(req.version() == hyper::Version::HTTP_2);
        req.extensions_mut().insert(ConnectInfo(peer));
        let router = router.clone();
        async move {
            let resp = router.oneshot(req.map(Body::new)).await?;
            Ok::<_, std::convert::Infallible>(resp.map(|b| Tracked {
                inner: b,
                _guard: guard,
            }))
        }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut closing = false;
    let mut why = "done";
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if r.is_err() && why == "done" {
                    why = "error";
                }
                return why;
            }
            _ = shutdown.wait_for(|s| *s), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
                why = "shutdown";
            }
            _ = tick.tick() => match activity.verdict(&limits, Instant::now()) {
                Verdict::Keep => {}
                Verdict::Close(reason) => return reason,
                Verdict::Idle if !closing => {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                    why = "idle";
                }
                // Still idle after the graceful close began: the peer holds the
                // socket; drop it.
                Verdict::Idle => return why,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ConnLimits {
        ConnLimits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 4,
        }
    }

    fn at(a: &Activity, idle_ago: u64, first_byte_ago: Option<u64>) -> Instant {
        let now = Instant::now() + Duration::from_secs(1000);
        let mut t = a.times();
        t.idle_since = now - Duration::from_secs(idle_ago);
        t.first_byte = first_byte_ago.map(|s| now - Duration::from_secs(s));
        now
    }

    #[test]
    fn a_silent_new_connection_is_closed_after_the_header_timeout() {
        let a = Activity::new();
        let now = at(&a, 9, None);
        assert!(matches!(a.verdict(&limits(), now), Verdict::Keep));
        let now = at(&a, 11, None);
        assert!(matches!(
            a.verdict(&limits(), now),
            Verdict::Close("header")
        ));
    }

    #[test]
    fn a_kept_alive_connection_waits_the_idle_timeout_and_a_slow_header_is_cut() {
        let a = Activity::new();
        drop(a.start(false));
        // Idle 30 s with nothing sent: kept (the idle timeout is 60 s).
        let now = at(&a, 30, None);
        assert!(matches!(a.verdict(&limits(), now), Verdict::Keep));
        // A header started 11 s ago and not finished: closed.
        let now = at(&a, 30, Some(11));
        assert!(matches!(
            a.verdict(&limits(), now),
            Verdict::Close("header")
        ));
        // Idle 61 s: closed gracefully.
        let now = at(&a, 61, None);
        assert!(matches!(a.verdict(&limits(), now), Verdict::Idle));
    }

    #[test]
    fn a_request_in_flight_is_never_cut_and_h2_frames_are_not_a_header() {
        let a = Activity::new();
        let g = a.start(true);
        let now = at(&a, 500, Some(400));
        assert!(matches!(a.verdict(&limits(), now), Verdict::Keep));
        drop(g);
        // HTTP/2: bytes while idle (PING, WINDOW_UPDATE) do not start a header clock.
        let now = at(&a, 20, Some(15));
        assert!(matches!(a.verdict(&limits(), now), Verdict::Keep));
    }
}
