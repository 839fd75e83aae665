//! The shipping loop, the replay loop and the final flush, on the shipper thread's own Tokio runtime.
//!
//! Every body taken from the buffer stays in `pending` until SQS or the Redis spill list has it, so a cycle
//! cut short (by the final flush) loses nothing; it may send a body twice, and the worker is idempotent.
use std::cell::{Cell, RefCell};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::log::Level;
use crate::spill::{Spill, SPILL_CHUNK};
use crate::sqs::{SendOutcome, Sqs};
use crate::{BodySource, FlushResult, ShipConfig, ShipStats};

/// Flush before the interval once the buffer is this full.
const EARLY_FLUSH_FRACTION: f64 = 0.1;
/// How often the buffer's depth is checked between flushes.
const POLL: Duration = Duration::from_millis(100);
const BACKOFF_BASE: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// While SQS is down, try it again this often.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Bodies per replay round (each up to 256 KiB).
const REPLAY_CHUNK: usize = 50;
const REPLAY_IDLE: Duration = Duration::from_secs(1);

pub(crate) struct Engine {
    cfg: ShipConfig,
    source: Arc<dyn BodySource>,
    stats: Arc<ShipStats>,
    sqs: Sqs,
    spill: Spill,
    pending: RefCell<Vec<String>>,
    redis_down: Cell<bool>,
    next_probe: Cell<Instant>,
    stopping: Cell<bool>,
    instance_id: String,
    /// The replay lock's token while this process holds it, so a flush that cuts a replay short releases it.
    replay_token: RefCell<Option<String>>,
}

impl Engine {
    pub(crate) async fn new(cfg: ShipConfig, source: Arc<dyn BodySource>, stats: Arc<ShipStats>) -> Self {
        let sqs = Sqs::new(cfg.sqs.clone()).await;
        // A URL that does not parse fails here and at every spill alike: fall back to one that never connects.
        let spill = Spill::new(&cfg.redis_url, cfg.redis_connect_timeout, cfg.redis_timeout).unwrap_or_else(|e| {
            cfg.log
                .log(Level::Error, format_args!("bad Redis URL for the spill list ({e})"));
            Spill::new("redis://0.0.0.0:1/", cfg.redis_connect_timeout, cfg.redis_timeout).expect("a valid URL")
        });
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let instance_id = format!("{}:{}:{:08x}", host.trim(), std::process::id(), fastrand::u32(..));
        Engine {
            cfg,
            source,
            stats,
            sqs,
            spill,
            pending: RefCell::new(Vec::new()),
            redis_down: Cell::new(false),
            next_probe: Cell::new(Instant::now()),
            stopping: Cell::new(false),
            instance_id,
            replay_token: RefCell::new(None),
        }
    }

    #[cfg(test)]
    pub(crate) fn sqs(&self) -> &Sqs {
        &self.sqs
    }

    #[cfg(test)]
    pub(crate) fn pending(&self) -> usize {
        self.pending.borrow().len()
    }

    pub(crate) fn sqs_down(&self) -> bool {
        self.stats.sqs_down.load(Relaxed)
    }

    fn mark_sqs(&self, ok: bool, error: &str) {
        let log = &self.cfg.log;
        if ok {
            if self.stats.sqs_down.swap(false, Relaxed) {
                log.log(
                    Level::Warning,
                    format_args!("SQS is back; replaying spilled click messages"),
                );
            }
            return;
        }
        if !self.stats.sqs_down.swap(true, Relaxed) {
            log.log(
                Level::Warning,
                format_args!("SQS is failing ({error}); spilling click messages to Redis"),
            );
        }
        self.next_probe.set(Instant::now() + PROBE_INTERVAL);
    }

    fn sync_pending(&self) {
        self.stats.pending.store(self.pending.borrow().len() as u64, Relaxed);
    }

    // -- sending --

    fn count(&self, outcome: &SendOutcome) {
        let s = &self.stats;
        s.requests.fetch_add(outcome.requests, Relaxed);
        s.failures.fetch_add(outcome.failed_requests, Relaxed);
        s.messages_sent.fetch_add(outcome.sent as u64, Relaxed);
        for (len, reason) in &outcome.rejected {
            s.dropped_rejected.fetch_add(1, Relaxed);
            self.cfg.log.log(
                Level::Error,
                format_args!("dropped a click message of {len} bytes that SQS refused: {reason}"),
            );
        }
    }

    /// One attempt at every body; SQS state and counters updated.
    async fn send_once(&self, bodies: &[String]) -> SendOutcome {
        let outcome = self.sqs.send(bodies, self.cfg.max_body_bytes).await;
        self.count(&outcome);
        if !outcome.retry.is_empty() && outcome.sent == 0 {
            let reason = outcome
                .error
                .clone()
                .unwrap_or_else(|| format!("{} of {} requests failed", outcome.failed_requests, outcome.requests));
            self.mark_sqs(false, &reason);
        } else if outcome.sent > 0 || !outcome.rejected.is_empty() {
            self.mark_sqs(true, "");
        }
        outcome
    }

    /// Up to `attempts` tries with exponential backoff; `retry` of the result holds what is still unsent.
    async fn send_with_retries(&self, bodies: &[String], attempts: u32, deadline: Option<Instant>) -> SendOutcome {
        let mut total = SendOutcome::default();
        let mut remaining = bodies.to_vec();
        for attempt in 0..attempts {
            let outcome = self.send_once(&remaining).await;
            total.sent += outcome.sent;
            total.rejected.extend(outcome.rejected);
            remaining = outcome.retry;
            if remaining.is_empty() {
                break;
            }
            let delay = BACKOFF_MAX
                .min(BACKOFF_BASE * 2u32.saturating_pow(attempt))
                .mul_f64(0.5 + fastrand::f64() / 2.0);
            if attempt + 1 == attempts || deadline.is_some_and(|d| Instant::now() + delay >= d) {
                break;
            }
            tokio::time::sleep(delay).await;
        }
        total.retry = remaining;
        total
    }

    /// RPUSH bodies to the spill list; returns those Redis did not take.
    async fn spill(&self, bodies: &[String]) -> Vec<String> {
        let log = &self.cfg.log;
        for (i, chunk) in bodies.chunks(SPILL_CHUNK).enumerate() {
            match self.spill.push(chunk).await {
                Ok(backlog) => {
                    if self.redis_down.replace(false) {
                        log.log(Level::Warning, format_args!("Redis takes spilled click messages again"));
                    }
                    self.stats.spilled.fetch_add(chunk.len() as u64, Relaxed);
                    self.stats.spill_backlog.store(backlog, Relaxed);
                    log.log(
                        Level::Debug,
                        format_args!("spilled {} click messages to Redis (backlog {backlog})", chunk.len()),
                    );
                }
                Err(e) => {
                    if !self.redis_down.replace(true) {
                        log.log(
                            Level::Error,
                            format_args!("Redis spill failed ({e}); holding click messages in memory"),
                        );
                    }
                    return bodies[i * SPILL_CHUNK..].to_vec();
                }
            }
        }
        Vec::new()
    }

    fn take(&self) {
        let bodies = self.source.take_bodies(self.cfg.max_body_bytes);
        if !bodies.is_empty() {
            self.pending.borrow_mut().extend(bodies);
        }
    }

    fn enforce_bound(&self) {
        let mut pending = self.pending.borrow_mut();
        let mut size: usize = pending.iter().map(String::len).sum();
        let mut dropped = 0;
        while dropped < pending.len() && size > self.cfg.max_pending_bytes {
            size -= pending[dropped].len();
            dropped += 1;
        }
        if dropped > 0 {
            pending.drain(..dropped);
            self.stats.dropped_overflow.fetch_add(dropped as u64, Relaxed);
            self.cfg.log.log(
                Level::Error,
                format_args!(
                    "dropped {dropped} click messages: SQS and Redis both unavailable and {} bytes already held",
                    self.cfg.max_pending_bytes
                ),
            );
        }
    }

    /// One cycle: take what is buffered, send it to SQS (or straight to Redis when SQS is down or the buffer
    /// is past its high-water mark), and keep in memory only what neither would take.
    pub(crate) async fn ship_once(&self) {
        let high_water = self.source.buffered() as f64 > self.cfg.spill_high_water * self.source.capacity() as f64;
        self.take();
        let snapshot = self.pending.borrow().clone();
        self.sync_pending();
        if snapshot.is_empty() {
            return;
        }
        let sqs_down = self.sqs_down();
        // While SQS is down, the replay loop probes it with spilled messages; we probe from here only when
        // Redis is down too, since then nothing is spilled.
        let use_sqs = !high_water && (!sqs_down || (self.redis_down.get() && Instant::now() >= self.next_probe.get()));
        let taken = snapshot.len();
        let mut rest = if use_sqs {
            let attempts = if sqs_down { 1 } else { self.cfg.retry_attempts };
            self.send_with_retries(&snapshot, attempts, None).await.retry
        } else {
            snapshot
        };
        if !rest.is_empty() {
            rest = self.spill(&rest).await;
        }
        // Only this loop appends to `pending`, and only in `take` above: the snapshot is still its prefix.
        self.pending.borrow_mut().splice(..taken, rest);
        self.enforce_bound();
        self.sync_pending();
    }

    // -- replay --

    /// Moves spilled messages to SQS under the spill lock; returns how many SQS accepted.
    pub(crate) async fn replay_once(&self) -> redis::RedisResult<usize> {
        if self.sqs_down() && Instant::now() < self.next_probe.get() {
            return Ok(0);
        }
        let backlog = self.spill.backlog().await?;
        self.stats.spill_backlog.store(backlog, Relaxed);
        if backlog == 0 {
            return Ok(0);
        }
        let token = format!("{}:{:08x}", self.instance_id, fastrand::u32(..));
        if !self.spill.lock(&token).await? {
            return Ok(0);
        }
        *self.replay_token.borrow_mut() = Some(token.clone());
        let mut replayed = 0;
        let result = self.replay_locked(&token, &mut replayed).await;
        self.release_replay_lock().await;
        if replayed > 0 {
            self.cfg.log.log(
                Level::Info,
                format_args!("replayed {replayed} spilled click messages to SQS"),
            );
        }
        result.map(|()| replayed)
    }

    async fn replay_locked(&self, token: &str, replayed: &mut usize) -> redis::RedisResult<()> {
        while !self.stopping.get() {
            let chunk = self.spill.head(if self.sqs_down() { 1 } else { REPLAY_CHUNK }).await?;
            if chunk.is_empty() {
                break;
            }
            let outcome = self.send_once(&chunk).await;
            if outcome.retry.len() == chunk.len() {
                break; // nothing taken: leave the list as it is
            }
            let still_ours = self.spill.trim(token, chunk.len(), &outcome.retry).await?;
            self.stats.replayed.fetch_add(outcome.sent as u64, Relaxed);
            *replayed += outcome.sent;
            if !still_ours {
                self.cfg.log.log(
                    Level::Warning,
                    format_args!("lost the spill lock while replaying; another process carries on"),
                );
                break;
            }
            if !outcome.retry.is_empty() {
                break;
            }
        }
        Ok(())
    }

    async fn release_replay_lock(&self) {
        let token = self.replay_token.borrow_mut().take();
        if let Some(token) = token {
            let _ = self.spill.release(&token).await;
            if let Ok(backlog) = self.spill.backlog().await {
                self.stats.spill_backlog.store(backlog, Relaxed);
            }
        }
    }

    async fn replay_loop(&self) {
        while !self.stopping.get() {
            let replayed = match self.replay_once().await {
                Ok(n) => n,
                Err(e) => {
                    self.cfg
                        .log
                        .log(Level::Debug, format_args!("replay skipped: Redis unavailable ({e})"));
                    0
                }
            };
            if replayed == 0 {
                tokio::time::sleep(REPLAY_IDLE).await;
            }
        }
    }

    // -- lifecycle --

    async fn wait_for_work(&self) {
        let deadline = Instant::now() + self.cfg.flush_interval;
        let early = ((self.source.capacity() as f64 * EARLY_FLUSH_FRACTION) as usize).max(1);
        loop {
            let now = Instant::now();
            if now >= deadline || self.source.buffered() >= early {
                return;
            }
            tokio::time::sleep((deadline - now).min(POLL)).await;
        }
    }

    async fn ship_loop(&self) {
        loop {
            self.wait_for_work().await;
            self.ship_once().await;
        }
    }

    /// Ships every `flush_interval` (sooner when the buffer fills) and replays spills; never returns.
    pub(crate) async fn run(&self) {
        tokio::join!(self.ship_loop(), self.replay_loop());
    }

    /// Sends everything buffered or held (after `run` was dropped): SQS until shortly before the deadline,
    /// Redis for the rest. What neither takes in time is dropped, counted and logged.
    pub(crate) async fn flush(&self, deadline: Duration) -> FlushResult {
        let started = Instant::now();
        let end = started + deadline;
        self.stopping.set(true);
        self.release_replay_lock().await;
        self.take();
        let mut bodies = std::mem::take(&mut *self.pending.borrow_mut());
        let mut result = FlushResult::default();
        // Leave a quarter of the time (at most 2 s) to spill what SQS did not take.
        let sqs_budget = deadline.saturating_sub(Duration::from_secs(2).min(deadline / 4));
        if !bodies.is_empty() && !sqs_budget.is_zero() {
            let send = self.send_with_retries(&bodies, self.cfg.retry_attempts, Some(started + sqs_budget));
            match tokio::time::timeout(sqs_budget, send).await {
                Ok(outcome) => {
                    result.sent = outcome.sent;
                    result.rejected = outcome.rejected.len();
                    bodies = outcome.retry;
                }
                Err(_) => self.cfg.log.log(
                    Level::Warning,
                    format_args!("SQS did not take the final flush in time; spilling it to Redis"),
                ),
            }
        }
        if !bodies.is_empty() {
            let left = end
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(100));
            let rest = tokio::time::timeout(left, self.spill(&bodies))
                .await
                .unwrap_or_else(|_| bodies.clone());
            result.spilled = bodies.len() - rest.len();
            bodies = rest;
        }
        if !bodies.is_empty() {
            result.dropped = bodies.len();
            self.stats.dropped_shutdown.fetch_add(bodies.len() as u64, Relaxed);
            self.cfg.log.log(
                Level::Error,
                format_args!(
                    "dropped {} click messages at shutdown: neither SQS nor Redis took them",
                    bodies.len()
                ),
            );
        }
        self.sync_pending();
        result
    }
}
