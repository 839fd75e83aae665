//! Ships the tracker's packed click events to SQS from a thread of its own, with the AWS SDK for Rust.
//!
//! The thread runs a single-threaded Tokio runtime and never touches Python, so a click handler waiting for
//! the GIL never waits for shipping. It takes packed bodies from the core's event buffer every flush interval
//! (sooner when the buffer fills), sends them with SendMessageBatch, retries with backoff, spills what SQS
//! will not take to a Redis list and replays that list, under a lock, once SQS is back. Keys and message
//! format are those of docs/contracts.md, so old and new tracker pods share one spill list.
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

mod engine;
pub mod log;
pub mod spill;
pub mod sqs;
#[cfg(test)]
mod tests;

pub use log::{Level, Logger};
pub use spill::{LOCK_KEY, SPILL_KEY};
pub use sqs::SqsConfig;

/// Where bodies come from: the core's event buffer, packed on demand.
pub trait BodySource: Send + Sync {
    /// Every buffered event packed into bodies of at most `max_body_bytes`; the buffer is left empty.
    fn take_bodies(&self, max_body_bytes: usize) -> Vec<String>;
    /// Events waiting in the buffer.
    fn buffered(&self) -> usize;
    /// Events the buffer holds at most.
    fn capacity(&self) -> usize;
}

impl BodySource for adclick_core::tracker::Tracker {
    fn take_bodies(&self, max_body_bytes: usize) -> Vec<String> {
        adclick_core::tracker::Tracker::take_bodies(self, max_body_bytes)
    }

    fn buffered(&self) -> usize {
        adclick_core::tracker::Tracker::buffered(self)
    }

    fn capacity(&self) -> usize {
        adclick_core::tracker::Tracker::capacity(self)
    }
}

/// Everything the shipper needs, fixed at start.
#[derive(Debug, Clone)]
pub struct ShipConfig {
    pub sqs: SqsConfig,
    pub redis_url: String,
    pub redis_connect_timeout: Duration,
    pub redis_timeout: Duration,
    /// Largest message body, and largest SendMessageBatch.
    pub max_body_bytes: usize,
    /// SQS attempts before bodies spill to Redis.
    pub retry_attempts: u32,
    pub flush_interval: Duration,
    /// Buffer fill (fraction of its capacity) past which a cycle spills to Redis without trying SQS.
    pub spill_high_water: f64,
    /// Bodies held in memory while neither SQS nor Redis takes them; beyond this the oldest are dropped.
    pub max_pending_bytes: usize,
    /// Nice value of the shipper thread, so an arriving click preempts a flush (0: normal priority).
    pub nice: i32,
    pub log: Logger,
}

/// Counters for `/metrics`; the thread writes, anyone reads.
#[derive(Debug, Default)]
pub struct ShipStats {
    pub messages_sent: AtomicU64,
    pub requests: AtomicU64,
    pub failures: AtomicU64,
    pub spilled: AtomicU64,
    pub replayed: AtomicU64,
    pub dropped_rejected: AtomicU64,
    pub dropped_overflow: AtomicU64,
    pub dropped_shutdown: AtomicU64,
    pub spill_backlog: AtomicU64,
    pub pending: AtomicU64,
    pub sqs_down: AtomicBool,
}

/// A copy of the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub messages_sent: u64,
    pub requests: u64,
    pub failures: u64,
    pub spilled: u64,
    pub replayed: u64,
    pub dropped_rejected: u64,
    pub dropped_overflow: u64,
    pub dropped_shutdown: u64,
    pub spill_backlog: u64,
    pub pending: u64,
    pub sqs_down: bool,
}

impl ShipStats {
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            messages_sent: self.messages_sent.load(Relaxed),
            requests: self.requests.load(Relaxed),
            failures: self.failures.load(Relaxed),
            spilled: self.spilled.load(Relaxed),
            replayed: self.replayed.load(Relaxed),
            dropped_rejected: self.dropped_rejected.load(Relaxed),
            dropped_overflow: self.dropped_overflow.load(Relaxed),
            dropped_shutdown: self.dropped_shutdown.load(Relaxed),
            spill_backlog: self.spill_backlog.load(Relaxed),
            pending: self.pending.load(Relaxed),
            sqs_down: self.sqs_down.load(Relaxed),
        }
    }
}

/// Messages (packed bodies) handled by the final flush.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlushResult {
    pub sent: usize,
    pub spilled: usize,
    pub rejected: usize,
    pub dropped: usize,
}

/// A running shipper thread; `stop` flushes and joins it.
pub struct Shipper {
    stats: Arc<ShipStats>,
    stop: tokio::sync::watch::Sender<Option<Duration>>,
    thread: Mutex<Option<JoinHandle<FlushResult>>>,
}

impl Shipper {
    /// Starts the thread (its runtime, SQS client and Redis connection are made there, after any fork).
    pub fn start(cfg: ShipConfig, source: Arc<dyn BodySource>) -> std::io::Result<Shipper> {
        let stats = Arc::new(ShipStats::default());
        let (stop, stopped) = tokio::sync::watch::channel(None);
        let thread_stats = Arc::clone(&stats);
        let thread = std::thread::Builder::new()
            .name("adclick-ship".into())
            .spawn(move || run_thread(cfg, source, thread_stats, stopped))?;
        Ok(Shipper {
            stats,
            stop,
            thread: Mutex::new(Some(thread)),
        })
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// Stops shipping, sends everything still buffered or held (SQS, then Redis) within `deadline`, and joins
    /// the thread. Only the first call flushes; later ones return an empty result.
    pub fn stop(&self, deadline: Duration) -> FlushResult {
        let Some(thread) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return FlushResult::default();
        };
        let _ = self.stop.send(Some(deadline));
        thread.join().unwrap_or_default()
    }

    pub fn is_running(&self) -> bool {
        self.thread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|t| !t.is_finished())
    }
}

fn lower_priority(nice: i32, log: &Logger) {
    if let Err(e) = adclick_core::lower_thread_priority(nice) {
        log.log(
            Level::Warning,
            format_args!("could not lower the shipper thread's priority: {e}"),
        );
    }
}

fn run_thread(
    cfg: ShipConfig,
    source: Arc<dyn BodySource>,
    stats: Arc<ShipStats>,
    mut stopped: tokio::sync::watch::Receiver<Option<Duration>>,
) -> FlushResult {
    let log = cfg.log.clone();
    lower_priority(cfg.nice, &log);
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            log.log(Level::Error, format_args!("cannot start the shipper's runtime: {e}"));
            return FlushResult::default();
        }
    };
    runtime.block_on(async move {
        let engine = engine::Engine::new(cfg, source, stats).await;
        let deadline = tokio::select! {
            () = engine.run() => unreachable!("the shipping loops run until stopped"),
            deadline = stopped.wait_for(Option::is_some) => deadline.map(|d| (*d).unwrap_or_default()).unwrap_or_default(),
        };
        engine.flush(deadline).await
    })
}
