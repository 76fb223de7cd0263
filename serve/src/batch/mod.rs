//! Dynamic batching, a small queue per model: requests wait in a bounded queue; a
//! worker thread takes the first, every request already waiting behind it, and (with
//! `max_delay` > 0) every request that arrives within `max_delay` of the first, up to
//! `max_batch`, and runs them as one call. With the default `max_delay` of 0 this is
//! continuous batching: a batch is whatever queued while the previous one ran, so a
//! lone request never waits and a busy server still fills its batches (Triton's
//! fixed wait idles the worker for the delay: on two CPU cores that capped a paced
//! search load below half the closed-loop maximum). Past `max_queue` waiting
//! requests a submit fails at once (429), so the queue never grows without bound.
//! A batch of one is `max_batch = 1` (no batching).
//!
//! A queue knows nothing of HTTP: it answers [`QueueError`], and the service maps
//! that to a status ([`crate::error`]). What each queue runs is in [`queues`].

pub mod queues;

use crate::metrics::Metrics;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

/// How long a request waited and how long its batch ran (for the stage histograms).
#[derive(Debug, Clone, Copy, Default)]
pub struct Timing {
    pub queued: Duration,
    pub ran: Duration,
    pub batch: usize,
}

/// Why a queued request got no output.
#[derive(Debug, Clone)]
pub enum QueueError<E> {
    /// `max_queue` requests are already waiting: retry later.
    Full,
    /// The worker has stopped (shutting down).
    Stopped(&'static str),
    /// The batch this request ran in failed (every request of it gets the error).
    Failed(Arc<E>),
    /// The run returned another number of outputs than it was given inputs.
    Miscounted {
        queue: &'static str,
        inputs: usize,
        outputs: usize,
    },
}

impl<E: std::fmt::Display> std::fmt::Display for QueueError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QueueError::Full => write!(f, "the queue is full"),
            QueueError::Stopped(name) => write!(f, "the {name} worker has stopped"),
            QueueError::Failed(e) => write!(f, "{e}"),
            QueueError::Miscounted {
                queue,
                inputs,
                outputs,
            } => write!(f, "{queue}: {outputs} outputs for {inputs} inputs"),
        }
    }
}

type Reply<O, E> = tokio::sync::oneshot::Sender<Result<(O, Timing), QueueError<E>>>;

/// The requests of a running batch: when each was queued, where its answer goes.
type Waiting<O, E> = Vec<(Instant, Reply<O, E>)>;

struct Job<I, O, E> {
    input: I,
    enqueued: Instant,
    reply: Reply<O, E>,
}

/// A batching queue in front of one model (or the search kernel); `E` is the error
/// its run returns.
pub struct Batcher<I, O, E> {
    name: &'static str,
    tx: SyncSender<Job<I, O, E>>,
    depth: Arc<AtomicUsize>,
    max_queue: usize,
}

/// Batching settings.
#[derive(Debug, Clone, Copy)]
pub struct BatchConfig {
    pub max_batch: usize,
    pub max_delay: Duration,
    pub max_queue: usize,
}

impl<I: Send + 'static, O: Send + 'static, E: Send + Sync + 'static> Batcher<I, O, E> {
    /// Start the worker thread; `run` turns a batch of inputs into as many outputs
    /// (an error fails every request of the batch).
    pub fn start(
        name: &'static str,
        cfg: BatchConfig,
        metrics: Arc<Metrics>,
        run: impl Fn(Vec<I>) -> Result<Vec<O>, E> + Send + 'static,
    ) -> Self {
        let (tx, rx) = sync_channel::<Job<I, O, E>>(cfg.max_queue.max(1));
        let depth = Arc::new(AtomicUsize::new(0));
        let d = depth.clone();
        std::thread::Builder::new()
            .name(format!("sen-batch-{name}"))
            .spawn(move || worker(name, cfg, rx, d, metrics, run))
            .expect("spawn batch worker");
        Batcher {
            name,
            tx,
            depth,
            max_queue: cfg.max_queue,
        }
    }

    /// Requests waiting now.
    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::Relaxed)
    }

    /// Queue `input` and wait for its output; [`QueueError::Full`] at once when the
    /// queue is full.
    pub async fn submit(&self, input: I) -> Result<(O, Timing), QueueError<E>> {
        self.reserve(1)?.submit(input).await
    }

    /// Room for `n` requests, taken now as a whole or not at all ([`QueueError::Full`]
    /// when fewer are free): a request of several inputs is admitted entirely, so it
    /// never half-runs. `n` must be at most `max_queue` (a request needing more could
    /// never be admitted: refuse it before asking).
    pub fn reserve(&self, n: usize) -> Result<Reservation<'_, I, O, E>, QueueError<E>> {
        let mut cur = self.depth.load(Ordering::SeqCst);
        loop {
            if cur + n > self.max_queue {
                return Err(QueueError::Full);
            }
            match self
                .depth
                .compare_exchange(cur, cur + n, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => {
                    return Ok(Reservation {
                        batcher: self,
                        left: AtomicUsize::new(n),
                    });
                }
                Err(now) => cur = now,
            }
        }
    }

    /// The most requests the queue holds (`--max-queue`).
    pub fn capacity(&self) -> usize {
        self.max_queue
    }
}

/// Room taken in a queue ([`Batcher::reserve`]); what is not used is given back on drop.
pub struct Reservation<'a, I, O, E> {
    batcher: &'a Batcher<I, O, E>,
    left: AtomicUsize,
}

impl<I: Send + 'static, O: Send + 'static, E: Send + Sync + 'static> Reservation<'_, I, O, E> {
    /// Queue `input` in reserved room and wait for its output.
    pub async fn submit(&self, input: I) -> Result<(O, Timing), QueueError<E>> {
        let b = self.batcher;
        if self
            .left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |l| l.checked_sub(1))
            .is_err()
        {
            return Err(QueueError::Miscounted {
                queue: b.name,
                inputs: 0,
                outputs: 1,
            });
        }
        let (reply, rx) = tokio::sync::oneshot::channel();
        let job = Job {
            input,
            enqueued: Instant::now(),
            reply,
        };
        // The reservation counted this job in `depth`, so the channel (as deep as the
        // queue) has room for it.
        match b.tx.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                b.depth.fetch_sub(1, Ordering::SeqCst);
                return Err(QueueError::Full);
            }
            Err(TrySendError::Disconnected(_)) => {
                b.depth.fetch_sub(1, Ordering::SeqCst);
                return Err(QueueError::Stopped(b.name));
            }
        }
        rx.await.map_err(|_| QueueError::Stopped(b.name))?
    }
}

impl<I, O, E> Drop for Reservation<'_, I, O, E> {
    fn drop(&mut self) {
        let left = self.left.load(Ordering::SeqCst);
        if left > 0 {
            self.batcher.depth.fetch_sub(left, Ordering::SeqCst);
        }
    }
}

fn worker<I, O, E>(
    name: &'static str,
    cfg: BatchConfig,
    rx: Receiver<Job<I, O, E>>,
    depth: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
    run: impl Fn(Vec<I>) -> Result<Vec<O>, E>,
) {
    while let Ok(first) = rx.recv() {
        let deadline = first.enqueued + cfg.max_delay;
        let mut jobs = vec![first];
        while jobs.len() < cfg.max_batch.max(1) {
            let now = Instant::now();
            let next = if now >= deadline {
                rx.try_recv().map_err(|_| RecvTimeoutError::Timeout)
            } else {
                rx.recv_timeout(deadline - now)
            };
            match next {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        depth.fetch_sub(jobs.len(), Ordering::SeqCst);
        let started = Instant::now();
        let n = jobs.len();
        metrics
            .batch_size
            .with_label_values(&[name])
            .observe(n as f64);
        let (inputs, rest): (Vec<I>, Waiting<O, E>) = jobs
            .into_iter()
            .map(|j| (j.input, (j.enqueued, j.reply)))
            .unzip();
        let out = run(inputs);
        let ran = started.elapsed();
        match out {
            Ok(outs) if outs.len() == n => {
                for (o, (enq, reply)) in outs.into_iter().zip(rest) {
                    let t = Timing {
                        queued: started - enq,
                        ran,
                        batch: n,
                    };
                    let _ = reply.send(Ok((o, t)));
                }
            }
            Ok(outs) => {
                for (_, reply) in rest {
                    let _ = reply.send(Err(QueueError::Miscounted {
                        queue: name,
                        inputs: n,
                        outputs: outs.len(),
                    }));
                }
            }
            Err(e) => {
                let e = Arc::new(e);
                for (_, reply) in rest {
                    let _ = reply.send(Err(QueueError::Failed(e.clone())));
                }
            }
        }
    }
}
