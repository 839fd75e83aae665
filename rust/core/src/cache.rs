//! The in-process link cache in front of Redis: moka for the hot path, a circuit breaker so a dead Redis
//! costs one timeout per `retry_after` instead of one per click, and a pub/sub listener that drops entries
//! the manager changed. Generic over the decoded value so it knows nothing of the link format.
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use moka::ops::compute::{CompResult, Op};
use moka::sync::Cache;
use parking_lot::{Mutex, RwLock};

use crate::CoreError;

/// Idle pooled connections kept per cache; more are opened under load and closed when returned.
const POOL_MAX_IDLE: usize = 32;
/// How often the listener wakes from a silent subscription to check its stop flag.
const LISTEN_POLL: Duration = Duration::from_millis(250);
/// A silently dropped TCP connection never errors on read, so a quiet subscription is pinged this often.
const KEEPALIVE_EVERY: Duration = Duration::from_secs(5);
/// How long a keepalive PING may take before the subscription is considered broken.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(1);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// The Redis key of a link config is this prefix and its slug (docs/contracts.md).
pub const LINK_KEY_PREFIX: &str = "adclick:link:";
/// The pub/sub channel of changed slugs (`*`: all of them), and of other invalidations (`!ipblock`).
pub const INVALIDATE_CHANNEL: &str = "adclick:invalidate";

/// Where Redis is and how long cached answers stay good.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub redis_url: String,
    /// Prepended to the slug to form the Redis key, `adclick:link:`.
    pub key_prefix: String,
    /// Pub/sub channel carrying changed slugs (`*`: all), `adclick:invalidate`.
    pub channel: String,
    /// Upper bound on cached slugs, found and absent together.
    pub max_entries: u64,
    /// Upper bound on the bytes cached entries take, as [`Weigh`] and [`ENTRY_OVERHEAD`] estimate them.
    pub max_bytes: u64,
    /// After this an entry is re-read from Redis on next use: the backstop for a missed invalidation.
    pub fresh_ttl: Duration,
    /// While Redis is unreachable, an entry older than `fresh_ttl` is still served up to this age.
    pub stale_ttl: Duration,
    /// Unknown slugs (and undecodable values) are remembered as absent this long.
    pub negative_ttl: Duration,
    /// Time allowed to open a connection, handshake included.
    pub connect_timeout: Duration,
    /// Read and write timeout of each command.
    pub io_timeout: Duration,
    /// After a Redis failure, Redis is left alone this long (stale answers or `Unavailable` meanwhile).
    pub retry_after: Duration,
}

impl CacheConfig {
    /// The defaults the tracker uses, for the given Redis URL.
    pub fn new(redis_url: impl Into<String>) -> Self {
        Self {
            redis_url: redis_url.into(),
            key_prefix: LINK_KEY_PREFIX.to_owned(),
            channel: INVALIDATE_CHANNEL.to_owned(),
            max_entries: 100_000,
            max_bytes: 64 << 20,
            fresh_ttl: Duration::from_secs(60),
            stale_ttl: Duration::from_secs(3600),
            negative_ttl: Duration::from_secs(5),
            connect_timeout: Duration::from_millis(200),
            io_timeout: Duration::from_millis(50),
            retry_after: Duration::from_secs(1),
        }
    }
}

/// What a cached entry costs beyond its value: moka's bookkeeping (its hash table slot, the access and
/// write order queues, the entry's timestamps), the key `String`, the entry struct and allocator slack.
/// Measured (bench/longtail.py, docs/capacity/2026-12-02-link-cache-long-tail.md): 100,000 cached links
/// grew a tracker's RSS by 555 bytes each, of which their own [`Weigh::weight`] estimates about 150.
pub const ENTRY_OVERHEAD: usize = 400;

/// A cached value's own size in bytes, for the weigher that bounds the cache by `max_bytes`.
pub trait Weigh {
    fn weight(&self) -> usize;
}

/// Told what the invalidation listener hears, from its thread, so a structure beside the cache (the link
/// replica, the IP blocklist) can follow the same channel. Calls must be quick: the listener waits for them.
pub trait Follower: Send + Sync {
    /// A subscription was just established: invalidations published before it may have been missed.
    fn subscribed(&self);
    /// The subscription broke: invalidations are being missed until the next `subscribed`.
    fn lost(&self);
    /// `slug` changed (or was created or deleted). Any payload other than `*` comes here as it was published,
    /// so a message that is no valid slug (`!ipblock`) reaches the follower it is meant for.
    fn changed(&self, slug: &str);
    /// Anything may have changed.
    fn changed_all(&self);
    /// The listener thread is starting: the follower may start threads of its own now (never before, since
    /// the process may fork between construction and the first click).
    fn start(&self);
}

/// The answer for one slug.
#[derive(Debug)]
pub enum Lookup<V> {
    /// Cached and fresh.
    Hit(Arc<V>),
    /// Cached, past `fresh_ttl`, served because Redis is unavailable.
    Stale(Arc<V>),
    /// Fetched from Redis by this call.
    Miss(Arc<V>),
    /// Known not to exist.
    Absent,
    /// Redis holds a value that does not decode; treat as absent.
    Invalid,
    /// Not cached and Redis is unavailable.
    Unavailable,
}

impl<V> Clone for Lookup<V> {
    fn clone(&self) -> Self {
        match self {
            Self::Hit(v) => Self::Hit(v.clone()),
            Self::Stale(v) => Self::Stale(v.clone()),
            Self::Miss(v) => Self::Miss(v.clone()),
            Self::Absent => Self::Absent,
            Self::Invalid => Self::Invalid,
            Self::Unavailable => Self::Unavailable,
        }
    }
}

/// Counters since construction, for metrics and /health.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Fresh answers from the cache (`Hit`).
    pub hits: u64,
    /// `Stale` answers.
    pub stale_hits: u64,
    /// Lookups answered by Redis, whatever the answer.
    pub misses: u64,
    /// `Absent` or `Invalid` answered from the cache.
    pub negative_hits: u64,
    /// Values in Redis that failed to decode.
    pub invalid: u64,
    /// `Unavailable` answers.
    pub unavailable: u64,
    /// Failed Redis connections and commands, the listener's included.
    pub redis_errors: u64,
    /// Invalidation messages received (a slug or `*`).
    pub invalidations: u64,
    /// Subscriptions re-established after a failure.
    pub reconnects: u64,
    /// Cached slugs (approximate, as moka counts them).
    pub entries: u64,
    /// Estimated bytes of the cached entries (what `max_bytes` bounds).
    pub bytes: u64,
    /// The configured bounds, for dashboards that plot use against them.
    pub max_entries: u64,
    pub max_bytes: u64,
    /// Whether the invalidation listener is subscribed right now.
    pub subscribed: bool,
}

enum Slot<V> {
    Found(Arc<V>),
    Absent,
    Invalid,
}

struct Entry<V> {
    /// Taken before the GET was sent, so a value is never thought newer than it is.
    fetched_at: Instant,
    slot: Slot<V>,
}

impl<V> Clone for Entry<V> {
    fn clone(&self) -> Self {
        let slot = match &self.slot {
            Slot::Found(v) => Slot::Found(v.clone()),
            Slot::Absent => Slot::Absent,
            Slot::Invalid => Slot::Invalid,
        };
        Self {
            fetched_at: self.fetched_at,
            slot,
        }
    }
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    stale_hits: AtomicU64,
    misses: AtomicU64,
    negative_hits: AtomicU64,
    invalid: AtomicU64,
    unavailable: AtomicU64,
    redis_errors: AtomicU64,
    invalidations: AtomicU64,
    reconnects: AtomicU64,
}

pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// A connection with our timeouts on connect and on every command, never the crate's defaults.
pub(crate) fn connect_with(
    client: &redis::Client,
    connect_timeout: Duration,
    io_timeout: Duration,
) -> redis::RedisResult<redis::Connection> {
    let conn = client.get_connection_with_timeout(connect_timeout)?;
    conn.set_read_timeout(Some(io_timeout))?;
    conn.set_write_timeout(Some(io_timeout))?;
    Ok(conn)
}

/// What a GET can come back with, short of a Redis failure.
enum Fetched {
    Value(Vec<u8>),
    Absent,
    /// The key holds something other than a string.
    WrongType,
}

struct Shared<V> {
    cfg: CacheConfig,
    client: redis::Client,
    decode: fn(&[u8]) -> Result<V, CoreError>,
    cache: Cache<String, Entry<V>>,
    pool: Mutex<Vec<redis::Connection>>,
    /// Origin of the nanosecond clocks below.
    base: Instant,
    /// Circuit breaker: Redis is not touched before this (nanos since `base`); 0 means up.
    down_until: AtomicU64,
    /// Entries fetched before this (nanos since `base`) are not fresh: set when a subscription is
    /// established, because invalidations may have been missed before it. Unlike a clear, it keeps the
    /// entries as stale fallbacks should Redis fail again.
    valid_from: AtomicU64,
    /// Bumped by every invalidation, so a fetch that raced one does not cache what it read.
    epoch: AtomicU64,
    subscribed: AtomicBool,
    counters: Counters,
    /// Set up before the listener starts; read (never written) by the listener afterwards.
    followers: RwLock<Vec<Arc<dyn Follower>>>,
}

impl<V: Weigh + Send + Sync + 'static> Shared<V> {
    fn nanos(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
    }

    fn is_fresh(&self, e: &Entry<V>, now: Instant) -> bool {
        let ttl = match e.slot {
            Slot::Found(_) => self.cfg.fresh_ttl,
            Slot::Absent | Slot::Invalid => self.cfg.negative_ttl,
        };
        now.saturating_duration_since(e.fetched_at) < ttl
            && self.nanos(e.fetched_at) >= self.valid_from.load(Ordering::Acquire)
    }

    fn answer_fresh(&self, e: &Entry<V>) -> Lookup<V> {
        match &e.slot {
            Slot::Found(v) => {
                bump(&self.counters.hits);
                Lookup::Hit(v.clone())
            }
            Slot::Absent => {
                bump(&self.counters.negative_hits);
                Lookup::Absent
            }
            Slot::Invalid => {
                bump(&self.counters.negative_hits);
                Lookup::Invalid
            }
        }
    }

    /// The answer when Redis cannot be asked.
    fn answer_without_redis(&self, e: Option<&Entry<V>>, now: Instant) -> Lookup<V> {
        match e {
            Some(Entry {
                fetched_at,
                slot: Slot::Found(v),
            }) if now.saturating_duration_since(*fetched_at) < self.cfg.stale_ttl => {
                bump(&self.counters.stale_hits);
                Lookup::Stale(v.clone())
            }
            _ => {
                bump(&self.counters.unavailable);
                Lookup::Unavailable
            }
        }
    }

    fn known_down(&self, now: Instant) -> bool {
        let d = self.down_until.load(Ordering::Acquire);
        d != 0 && self.nanos(now) < d
    }

    /// Whether this caller may talk to Redis. Once `retry_after` has passed, exactly one caller gets to
    /// probe; the others keep treating Redis as down until it answers.
    fn may_use_redis(&self) -> bool {
        let d = self.down_until.load(Ordering::Acquire);
        if d == 0 {
            return true;
        }
        let now = self.nanos(Instant::now());
        if now < d {
            return false;
        }
        let next = now.saturating_add(self.retry_nanos());
        self.down_until
            .compare_exchange(d, next, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    fn retry_nanos(&self) -> u64 {
        u64::try_from(self.cfg.retry_after.as_nanos())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    fn redis_failed(&self) {
        bump(&self.counters.redis_errors);
        let until = self.nanos(Instant::now()).saturating_add(self.retry_nanos()).max(1);
        self.down_until.store(until, Ordering::Release);
        // Pooled connections to a Redis that failed are most likely dead too.
        let dead = std::mem::take(&mut *self.pool.lock());
        drop(dead);
    }

    fn redis_answered(&self) {
        if self.down_until.load(Ordering::Relaxed) != 0 {
            self.down_until.store(0, Ordering::Release);
        }
    }

    fn connect(&self) -> redis::RedisResult<redis::Connection> {
        connect_with(&self.client, self.cfg.connect_timeout, self.cfg.io_timeout)
    }

    fn give_back(&self, conn: redis::Connection) {
        let mut pool = self.pool.lock();
        if pool.len() < POOL_MAX_IDLE {
            pool.push(conn);
        }
    }

    /// Runs one command on a pooled connection. A pooled connection the server closed while it sat idle
    /// (its `timeout`, a restart) gets one retry on a fresh connection; a timeout does not, it has spent
    /// the budget.
    fn with_connection<T>(
        &self,
        run: impl Fn(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> redis::RedisResult<T> {
        let pooled = self.pool.lock().pop();
        let reused = pooled.is_some();
        let mut conn = match pooled {
            Some(c) => c,
            None => self.connect()?,
        };
        match run(&mut conn) {
            Ok(v) => {
                self.give_back(conn);
                Ok(v)
            }
            Err(e) if reused && !e.is_timeout() && (e.is_io_error() || e.is_connection_dropped()) => {
                drop(conn);
                let mut conn = self.connect()?;
                let v = run(&mut conn)?;
                self.give_back(conn);
                Ok(v)
            }
            Err(e) => {
                // The connection may hold a late reply or be broken; never reuse it.
                if e.code() == Some("WRONGTYPE") {
                    self.give_back(conn);
                }
                Err(e)
            }
        }
    }

    fn fetch(&self, slug: &str) -> redis::RedisResult<Fetched> {
        let key = format!("{}{}", self.cfg.key_prefix, slug);
        let got = self.with_connection(|c| redis::cmd("GET").arg(&key).query::<Option<Vec<u8>>>(c));
        match got {
            Ok(Some(bytes)) => Ok(Fetched::Value(bytes)),
            Ok(None) => Ok(Fetched::Absent),
            Err(e) if e.code() == Some("WRONGTYPE") => Ok(Fetched::WrongType),
            Err(e) => Err(e),
        }
    }

    fn drop_slug(&self, slug: &str) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.cache.invalidate(slug);
    }

    fn drop_all(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.cache.invalidate_all();
    }

    fn each_follower(&self, tell: impl Fn(&dyn Follower)) {
        for f in self.followers.read().iter() {
            tell(&**f);
        }
    }
}

struct Listener {
    stop: Arc<AtomicBool>,
    handle: Mutex<Option<JoinHandle<()>>>,
}

impl Listener {
    fn stop_and_join(&self) {
        self.stop.store(true, Ordering::Release);
        let handle = self.handle.lock().take();
        if let Some(h) = handle {
            // A panic in the listener has nothing left to tell us at shutdown.
            let _ = h.join();
        }
    }
}

/// The link cache; cheap to share by reference between threads.
pub struct LinkCache<V> {
    shared: Arc<Shared<V>>,
    listener: OnceLock<Listener>,
}

impl<V: Weigh + Send + Sync + 'static> LinkCache<V> {
    /// Checks the settings; connects to nothing and starts no thread, since the process may fork after.
    pub fn new(cfg: CacheConfig, decode: fn(&[u8]) -> Result<V, CoreError>) -> Result<Self, CoreError> {
        let bad = |what: &str| Err(CoreError::Config(format!("link cache: {what}")));
        if cfg.max_entries == 0 {
            return bad("max_entries must be positive");
        }
        let min_weight = cfg.max_bytes.div_ceil(cfg.max_entries);
        if min_weight < ENTRY_OVERHEAD as u64 {
            return bad(&format!(
                "max_bytes must allow at least {ENTRY_OVERHEAD} bytes per entry ({} for {} entries)",
                ENTRY_OVERHEAD as u64 * cfg.max_entries,
                cfg.max_entries
            ));
        }
        if cfg.connect_timeout.is_zero() || cfg.io_timeout.is_zero() {
            return bad("connect_timeout and io_timeout must be positive");
        }
        if cfg.fresh_ttl.is_zero() || cfg.retry_after.is_zero() {
            return bad("fresh_ttl and retry_after must be positive");
        }
        if cfg.stale_ttl < cfg.fresh_ttl {
            return bad("stale_ttl must be at least fresh_ttl");
        }
        if cfg.channel.is_empty() {
            return bad("channel must not be empty");
        }
        let client = redis::Client::open(cfg.redis_url.as_str())
            .map_err(|e| CoreError::Config(format!("link cache: bad redis_url: {e}")))?;
        let hard_ttl = cfg.stale_ttl.max(cfg.negative_ttl).max(cfg.fresh_ttl);
        // One capacity bounds both: every entry weighs at least max_bytes / max_entries, so the weights
        // reach max_bytes no later than the count reaches max_entries.
        let cache = Cache::builder()
            .max_capacity(cfg.max_bytes)
            .weigher(move |key: &String, e: &Entry<V>| -> u32 {
                let own = match &e.slot {
                    Slot::Found(v) => v.weight(),
                    Slot::Absent | Slot::Invalid => 0,
                };
                let bytes = (ENTRY_OVERHEAD + key.len() + own) as u64;
                u32::try_from(bytes.max(min_weight)).unwrap_or(u32::MAX)
            })
            .time_to_live(hard_ttl)
            .build();
        Ok(Self {
            shared: Arc::new(Shared {
                cfg,
                client,
                decode,
                cache,
                pool: Mutex::new(Vec::new()),
                base: Instant::now(),
                down_until: AtomicU64::new(0),
                valid_from: AtomicU64::new(0),
                epoch: AtomicU64::new(0),
                subscribed: AtomicBool::new(false),
                counters: Counters::default(),
                followers: RwLock::new(Vec::new()),
            }),
            listener: OnceLock::new(),
        })
    }

    /// The config for `slug`. A fresh entry costs a moka lookup and a clock read; Redis is asked only
    /// when the entry is missing or past its TTL, and not at all while the circuit breaker is open.
    pub fn get(&self, slug: &str) -> Lookup<V> {
        match self.get_cached(slug) {
            Some(answer) => answer,
            None => self.fetch(slug),
        }
    }

    /// The answer when it needs no Redis round trip (fresh entry, or Redis known to be down), else `None`.
    ///
    /// Split from [`LinkCache::fetch`] so a caller holding a lock of its own (the Python GIL) can release it
    /// only around the part that may wait on Redis.
    pub fn get_cached(&self, slug: &str) -> Option<Lookup<V>> {
        self.start_listener();
        let s = &*self.shared;
        let now = Instant::now();
        let cached = s.cache.get(slug);
        if let Some(e) = &cached {
            if s.is_fresh(e, now) {
                return Some(s.answer_fresh(e));
            }
        }
        if s.known_down(now) {
            return Some(s.answer_without_redis(cached.as_ref(), now));
        }
        None
    }

    /// Reads `slug` from Redis (once per slug however many callers ask at the same time) and caches it.
    pub fn fetch(&self, slug: &str) -> Lookup<V> {
        let s = &*self.shared;
        // Per-slug lock: callers of the same slug wait for one fetch; other slugs are not held up.
        let mut answer = None;
        let epoch = s.epoch.load(Ordering::SeqCst);
        let result = s.cache.entry_by_ref(slug).and_compute_with(|current| {
            let current = current.map(|e| e.into_value());
            let now = Instant::now();
            if let Some(e) = &current {
                if s.is_fresh(e, now) {
                    answer = Some(s.answer_fresh(e));
                    return Op::Nop;
                }
            }
            if !s.may_use_redis() {
                answer = Some(s.answer_without_redis(current.as_ref(), now));
                return Op::Nop;
            }
            let fetched_at = now;
            let slot = match s.fetch(slug) {
                Ok(Fetched::Value(bytes)) => match (s.decode)(&bytes) {
                    Ok(v) => Slot::Found(Arc::new(v)),
                    Err(_) => Slot::Invalid,
                },
                Ok(Fetched::Absent) => Slot::Absent,
                Ok(Fetched::WrongType) => Slot::Invalid,
                Err(_) => {
                    s.redis_failed();
                    answer = Some(s.answer_without_redis(current.as_ref(), now));
                    return Op::Nop;
                }
            };
            s.redis_answered();
            bump(&s.counters.misses);
            answer = Some(match &slot {
                Slot::Found(v) => Lookup::Miss(v.clone()),
                Slot::Absent => Lookup::Absent,
                Slot::Invalid => {
                    bump(&s.counters.invalid);
                    Lookup::Invalid
                }
            });
            Op::Put(Entry { fetched_at, slot })
        });
        // An invalidation that arrived while we fetched may be about what we just cached.
        let cached_now = matches!(result, CompResult::Inserted(_) | CompResult::ReplacedWith(_));
        if cached_now && s.epoch.load(Ordering::SeqCst) != epoch {
            s.cache.invalidate(slug);
        }
        answer.unwrap_or(Lookup::Unavailable)
    }

    /// Has `follower` told what the invalidation listener hears, after those added before it. Add followers
    /// before the first lookup: one added after the listener started is told no `start` and no past `subscribed`.
    pub fn follow(&self, follower: Arc<dyn Follower>) {
        self.shared.followers.write().push(follower);
    }

    /// Starts the invalidation listener (and the follower's threads) if not yet started.
    pub fn start(&self) {
        self.start_listener();
    }

    /// Forgets `slug`; the next `get` asks Redis.
    pub fn invalidate(&self, slug: &str) {
        self.shared.drop_slug(slug);
    }

    /// Forgets everything.
    pub fn clear(&self) {
        self.shared.drop_all();
    }

    /// Redis PING with our timeouts, for /health; it asks Redis even while the circuit breaker is open.
    pub fn ping(&self) -> Result<(), CoreError> {
        self.start_listener();
        let s = &*self.shared;
        match s.with_connection(|c| redis::cmd("PING").query::<String>(c)) {
            Ok(_) => {
                s.redis_answered();
                Ok(())
            }
            Err(e) => {
                s.redis_failed();
                Err(CoreError::Redis(e.to_string()))
            }
        }
    }

    pub fn stats(&self) -> CacheStats {
        let s = &*self.shared;
        let c = &s.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        s.cache.run_pending_tasks();
        CacheStats {
            hits: get(&c.hits),
            stale_hits: get(&c.stale_hits),
            misses: get(&c.misses),
            negative_hits: get(&c.negative_hits),
            invalid: get(&c.invalid),
            unavailable: get(&c.unavailable),
            redis_errors: get(&c.redis_errors),
            invalidations: get(&c.invalidations),
            reconnects: get(&c.reconnects),
            entries: s.cache.entry_count(),
            bytes: s.cache.weighted_size(),
            max_entries: s.cfg.max_entries,
            max_bytes: s.cfg.max_bytes,
            subscribed: s.subscribed.load(Ordering::Relaxed),
        }
    }

    /// False from a Redis failure until Redis answers again.
    pub fn redis_available(&self) -> bool {
        self.shared.down_until.load(Ordering::Acquire) == 0
    }

    /// Stops the invalidation listener and waits for it; entries then live until `fresh_ttl`.
    /// Called by `Drop`; idempotent.
    pub fn shutdown(&self) {
        let listener = self.listener.get_or_init(|| Listener {
            stop: Arc::new(AtomicBool::new(true)),
            handle: Mutex::new(None),
        });
        listener.stop_and_join();
    }

    fn start_listener(&self) {
        self.listener.get_or_init(|| {
            self.shared.each_follower(|f| f.start());
            let stop = Arc::new(AtomicBool::new(false));
            let shared = Arc::clone(&self.shared);
            let flag = Arc::clone(&stop);
            let handle = std::thread::Builder::new()
                .name("adclick-invalidate".to_owned())
                .spawn(move || listen_forever(&shared, &flag))
                .ok();
            Listener {
                stop,
                handle: Mutex::new(handle),
            }
        });
    }
}

impl<V> Drop for LinkCache<V> {
    fn drop(&mut self) {
        if let Some(listener) = self.listener.get() {
            listener.stop_and_join();
        }
    }
}

enum ListenEnd {
    Stopped,
    /// `established`: the subscription had been up, so Redis went away rather than never came.
    Failed {
        established: bool,
    },
}

fn listen_forever<V: Weigh + Send + Sync + 'static>(s: &Shared<V>, stop: &AtomicBool) {
    let mut backoff = BACKOFF_MIN;
    let mut after_failure = false;
    loop {
        match listen_once(s, stop, after_failure) {
            ListenEnd::Stopped => break,
            ListenEnd::Failed { established } => {
                s.subscribed.store(false, Ordering::Release);
                s.each_follower(|f| f.lost());
                bump(&s.counters.redis_errors);
                if established {
                    // Open the breaker now rather than let clicks find out one timeout at a time.
                    s.redis_failed();
                    backoff = BACKOFF_MIN;
                }
                after_failure = true;
            }
        }
        let until = Instant::now() + backoff;
        while Instant::now() < until {
            if stop.load(Ordering::Acquire) {
                s.subscribed.store(false, Ordering::Release);
                return;
            }
            std::thread::sleep(Duration::from_millis(20).min(until.saturating_duration_since(Instant::now())));
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
    s.subscribed.store(false, Ordering::Release);
}

fn listen_once<V: Weigh + Send + Sync + 'static>(s: &Shared<V>, stop: &AtomicBool, after_failure: bool) -> ListenEnd {
    let failed = ListenEnd::Failed { established: false };
    let Ok(mut conn) = s.client.get_connection_with_timeout(s.cfg.connect_timeout) else {
        return failed;
    };
    if conn.set_write_timeout(Some(s.cfg.connect_timeout)).is_err()
        || conn.set_read_timeout(Some(s.cfg.connect_timeout)).is_err()
    {
        return failed;
    }
    let mut sub = conn.as_pubsub();
    if sub.subscribe(&s.cfg.channel).is_err() || sub.set_read_timeout(Some(LISTEN_POLL)).is_err() {
        return failed;
    }
    // Invalidations published before this point were missed: nothing fetched earlier is fresh any more.
    s.valid_from.store(s.nanos(Instant::now()), Ordering::Release);
    s.subscribed.store(true, Ordering::Release);
    s.each_follower(|f| f.subscribed());
    s.redis_answered();
    if after_failure {
        bump(&s.counters.reconnects);
    }
    let broken = ListenEnd::Failed { established: true };
    let mut last_heard = Instant::now();
    loop {
        if stop.load(Ordering::Acquire) {
            return ListenEnd::Stopped;
        }
        match sub.get_message() {
            Ok(msg) => {
                last_heard = Instant::now();
                if msg.get_channel_name() != s.cfg.channel {
                    continue;
                }
                bump(&s.counters.invalidations);
                match std::str::from_utf8(msg.get_payload_bytes()) {
                    Ok("*") | Err(_) => {
                        // Err: not a slug we could have cached; clear rather than guess.
                        s.drop_all();
                        s.each_follower(|f| f.changed_all());
                    }
                    Ok(slug) => {
                        s.drop_slug(slug);
                        s.each_follower(|f| f.changed(slug));
                    }
                }
            }
            Err(e) if e.is_timeout() => {
                if last_heard.elapsed() >= KEEPALIVE_EVERY {
                    let alive = sub.set_read_timeout(Some(KEEPALIVE_TIMEOUT)).is_ok()
                        && sub.ping::<redis::Value>().is_ok()
                        && sub.set_read_timeout(Some(LISTEN_POLL)).is_ok();
                    if !alive {
                        return broken;
                    }
                    last_heard = Instant::now();
                }
            }
            Err(_) => return broken,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use adclick_testkit::{wait_for, Server};
    use std::thread;

    type Json = serde_json::Value;

    impl Weigh for Json {
        fn weight(&self) -> usize {
            self.to_string().len()
        }
    }

    fn decode(b: &[u8]) -> Result<Json, CoreError> {
        serde_json::from_slice(b).map_err(|e| CoreError::InvalidLink(e.to_string()))
    }

    fn config(url: String) -> CacheConfig {
        CacheConfig {
            max_entries: 1000,
            fresh_ttl: Duration::from_secs(60),
            stale_ttl: Duration::from_secs(600),
            negative_ttl: Duration::from_secs(60),
            retry_after: Duration::from_millis(200),
            // Looser than production so a loaded CI machine does not look like a dead Redis.
            connect_timeout: Duration::from_millis(500),
            io_timeout: Duration::from_millis(300),
            ..CacheConfig::new(url)
        }
    }

    /// Waits until the invalidation listener is subscribed; before that, entries are refetched once.
    fn started(cache: &LinkCache<Json>) {
        cache.start_listener();
        wait_for("the invalidation listener to subscribe", Duration::from_secs(5), || {
            cache.stats().subscribed
        });
    }

    fn value(l: &Lookup<Json>) -> Option<&Json> {
        match l {
            Lookup::Hit(v) | Lookup::Stale(v) | Lookup::Miss(v) => Some(v),
            _ => None,
        }
    }

    #[test]
    fn miss_then_hit() {
        let redis = Server::start();
        redis.set("summer", r#"{"id":1}"#);
        let cache = LinkCache::new(config(redis.url()), decode).unwrap();
        started(&cache);
        assert!(matches!(cache.get("summer"), Lookup::Miss(v) if *v == serde_json::json!({"id": 1})));
        assert!(matches!(cache.get("summer"), Lookup::Hit(v) if *v == serde_json::json!({"id": 1})));
        let st = cache.stats();
        assert_eq!((st.misses, st.hits, st.entries), (1, 1, 1));
        assert!(cache.redis_available());
        cache.ping().unwrap();
    }

    #[test]
    fn bytes_and_entries_both_bound_the_cache() {
        let redis = Server::start();
        let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(10_000));
        for i in 0..300 {
            redis.set(&format!("big-{i}"), &big);
            redis.set(&format!("small-{i}"), "{}");
        }
        // 100 entries of at least 1,000 bytes: 300 KB of big values cannot all stay, nor 300 small ones.
        let bounded = || {
            let cfg = CacheConfig {
                max_entries: 100,
                max_bytes: 100_000,
                ..config(redis.url())
            };
            LinkCache::new(cfg, decode).unwrap()
        };
        let cache = bounded();
        for i in 0..300 {
            assert!(matches!(cache.get(&format!("big-{i}")), Lookup::Miss(_)));
        }
        let st = cache.stats();
        assert!(st.bytes <= 100_000 && st.bytes >= 10_000, "{st:?}");
        assert!(st.entries <= 10, "10 KB values in 100 KB: {st:?}");
        assert_eq!((st.max_entries, st.max_bytes), (100, 100_000));
        let cache = bounded();
        for i in 0..300 {
            cache.get(&format!("small-{i}"));
        }
        let st = cache.stats();
        assert!(
            st.entries <= 100 && st.entries >= 50,
            "small values are bound by the count: {st:?}"
        );
        assert!(st.bytes <= 100_000, "{st:?}");
    }

    #[test]
    fn a_byte_bound_too_small_for_the_entry_bound_is_refused() {
        let cfg = CacheConfig {
            max_entries: 1000,
            max_bytes: 1000 * (ENTRY_OVERHEAD as u64 - 1),
            ..CacheConfig::new("redis://127.0.0.1:1/")
        };
        match LinkCache::new(cfg, decode) {
            Err(CoreError::Config(m)) => assert!(m.contains("max_bytes"), "{m}"),
            other => panic!("expected a config error, got {:?}", other.err()),
        }
    }

    #[test]
    fn absent_is_remembered_for_negative_ttl() {
        let redis = Server::start();
        let cfg = CacheConfig {
            negative_ttl: Duration::from_millis(300),
            ..config(redis.url())
        };
        let cache = LinkCache::new(cfg, decode).unwrap();
        started(&cache);
        assert!(matches!(cache.get("later"), Lookup::Absent));
        redis.set("later", r#"{"id":2}"#);
        assert!(
            matches!(cache.get("later"), Lookup::Absent),
            "absence is cached for negative_ttl"
        );
        assert_eq!(cache.stats().negative_hits, 1);
        thread::sleep(Duration::from_millis(400));
        assert!(matches!(cache.get("later"), Lookup::Miss(v) if v["id"] == 2));
        assert_eq!(cache.stats().misses, 2);
    }

    #[test]
    fn published_slug_is_dropped_within_a_second() {
        let redis = Server::start();
        redis.set("a", r#"{"v":1}"#);
        redis.set("b", r#"{"v":1}"#);
        let cache = LinkCache::new(config(redis.url()), decode).unwrap();
        started(&cache);
        assert!(matches!(cache.get("a"), Lookup::Miss(_)));
        assert!(matches!(cache.get("b"), Lookup::Miss(_)));
        redis.set("a", r#"{"v":2}"#);
        redis.set("b", r#"{"v":2}"#);
        redis.publish("a");
        wait_for("the new value of a", Duration::from_secs(1), || {
            value(&cache.get("a")).unwrap()["v"] == 2
        });
        assert!(
            matches!(cache.get("b"), Lookup::Hit(v) if v["v"] == 1),
            "b was not invalidated"
        );
        assert_eq!(cache.stats().invalidations, 1);
    }

    #[test]
    fn star_drops_everything() {
        let redis = Server::start();
        let cache = LinkCache::new(config(redis.url()), decode).unwrap();
        started(&cache);
        for slug in ["a", "b", "c"] {
            redis.set(slug, "1");
            assert!(matches!(cache.get(slug), Lookup::Miss(_)));
            redis.set(slug, "2");
        }
        redis.publish("*");
        wait_for("the star invalidation", Duration::from_secs(1), || {
            cache.stats().invalidations == 1
        });
        for slug in ["a", "b", "c"] {
            assert!(
                matches!(cache.get(slug), Lookup::Miss(v) if *v == 2),
                "{slug} was not refetched"
            );
        }
    }

    #[test]
    fn local_invalidate_and_clear() {
        let redis = Server::start();
        let cache = LinkCache::new(config(redis.url()), decode).unwrap();
        started(&cache);
        redis.set("a", "1");
        redis.set("b", "1");
        assert!(matches!(cache.get("a"), Lookup::Miss(_)));
        assert!(matches!(cache.get("b"), Lookup::Miss(_)));
        cache.invalidate("a");
        assert!(matches!(cache.get("a"), Lookup::Miss(_)));
        assert!(matches!(cache.get("b"), Lookup::Hit(_)));
        cache.clear();
        assert!(matches!(cache.get("a"), Lookup::Miss(_)));
        assert!(matches!(cache.get("b"), Lookup::Miss(_)));
    }

    #[test]
    fn undecodable_value_is_invalid_and_counted() {
        let redis = Server::start();
        redis.set("broken", "{not json");
        redis::cmd("RPUSH")
            .arg("adclick:link:list")
            .arg("x")
            .query::<i64>(&mut redis.conn())
            .unwrap();
        let cache = LinkCache::new(config(redis.url()), decode).unwrap();
        started(&cache);
        assert!(matches!(cache.get("broken"), Lookup::Invalid));
        assert!(matches!(cache.get("broken"), Lookup::Invalid));
        assert!(
            matches!(cache.get("list"), Lookup::Invalid),
            "a key of the wrong type is not a link"
        );
        let st = cache.stats();
        assert_eq!((st.invalid, st.negative_hits, st.misses, st.redis_errors), (2, 1, 2, 0));
        assert!(cache.redis_available());
    }

    #[test]
    fn dead_redis_serves_stale_and_answers_unknown_quickly() {
        let mut redis = Server::start();
        let cfg = CacheConfig {
            fresh_ttl: Duration::from_millis(100),
            retry_after: Duration::from_secs(30),
            ..config(redis.url())
        };
        let cache = LinkCache::new(cfg, decode).unwrap();
        started(&cache);
        redis.set("known", r#"{"id":7}"#);
        assert!(matches!(cache.get("known"), Lookup::Miss(_)));
        redis.kill();
        thread::sleep(Duration::from_millis(150));
        let t = Instant::now();
        assert!(matches!(cache.get("known"), Lookup::Stale(v) if v["id"] == 7));
        assert!(matches!(cache.get("unknown"), Lookup::Unavailable));
        assert!(matches!(cache.get("known"), Lookup::Stale(_)));
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "a dead Redis must not hold clicks up"
        );
        assert!(!cache.redis_available());
        assert!(cache.ping().is_err());
        let st = cache.stats();
        assert_eq!((st.stale_hits, st.unavailable), (2, 1));
        assert!(st.redis_errors >= 1);
    }

    #[test]
    fn hung_redis_costs_one_timeout_then_none() {
        let redis = Server::start();
        let cache = LinkCache::new(config(redis.url()), decode).unwrap();
        started(&cache);
        redis.set("known", "1");
        assert!(matches!(cache.get("known"), Lookup::Miss(_)));
        redis.signal("-STOP");
        let t = Instant::now();
        assert!(matches!(cache.get("unknown"), Lookup::Unavailable));
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "io_timeout must bound a hung Redis"
        );
        let t = Instant::now();
        for _ in 0..100 {
            assert!(matches!(cache.get("other"), Lookup::Unavailable));
        }
        assert!(
            t.elapsed() < Duration::from_millis(100),
            "the breaker keeps clicks off a hung Redis"
        );
        assert!(matches!(cache.get("known"), Lookup::Hit(_)));
        redis.signal("-CONT");
        wait_for("Redis to answer again", Duration::from_secs(5), || {
            matches!(cache.get("other"), Lookup::Absent)
        });
        assert!(cache.redis_available());
    }

    #[test]
    fn restarted_redis_is_picked_up_and_the_cache_refetched() {
        let mut redis = Server::start();
        let cache = LinkCache::new(config(redis.url()), decode).unwrap();
        started(&cache);
        redis.set("a", r#"{"v":1}"#);
        assert!(matches!(cache.get("a"), Lookup::Miss(_)));
        redis.kill();
        wait_for("the listener to notice", Duration::from_secs(3), || {
            !cache.stats().subscribed
        });
        assert!(
            matches!(cache.get("a"), Lookup::Hit(v) if v["v"] == 1),
            "fresh entries outlive Redis"
        );
        assert!(matches!(cache.get("b"), Lookup::Unavailable));
        redis.restart();
        // Written before the listener resubscribes, with no PUBLISH: only the resubscribe clear can show it.
        redis.set("a", r#"{"v":2}"#);
        redis.set("b", r#"{"v":2}"#);
        wait_for("the resubscription", Duration::from_secs(5), || {
            cache.stats().reconnects == 1
        });
        assert!(matches!(cache.get("a"), Lookup::Miss(v) if v["v"] == 2));
        assert!(matches!(cache.get("b"), Lookup::Miss(v) if v["v"] == 2));
        assert!(cache.redis_available());
        redis.set("a", r#"{"v":3}"#);
        redis.publish("a");
        wait_for("invalidations after the restart", Duration::from_secs(1), || {
            value(&cache.get("a")).is_some_and(|v| v["v"] == 3)
        });
    }

    #[test]
    fn redis_down_at_first_use_is_picked_up_later() {
        let mut redis = Server::start();
        redis.kill();
        let cache = LinkCache::new(config(redis.url()), decode).unwrap();
        assert!(matches!(cache.get("a"), Lookup::Unavailable));
        assert!(!cache.redis_available());
        redis.restart();
        redis.set("a", r#"{"v":1}"#);
        wait_for("Redis to be used again", Duration::from_secs(5), || {
            matches!(cache.get("a"), Lookup::Miss(_))
        });
        // Whether the listener's first attempt failed depends on scheduling, so `reconnects` is not checked.
        wait_for("the subscription", Duration::from_secs(5), || cache.stats().subscribed);
        redis.set("a", r#"{"v":2}"#);
        redis.publish("a");
        wait_for("the invalidation", Duration::from_secs(1), || {
            value(&cache.get("a")).is_some_and(|v| v["v"] == 2)
        });
    }

    #[test]
    fn many_threads_share_one_fetch_per_slug() {
        let redis = Server::start();
        for i in 0..40 {
            redis.set(&format!("s{i}"), &format!(r#"{{"id":{i}}}"#));
        }
        let cache = LinkCache::new(config(redis.url()), decode).unwrap();
        started(&cache);
        thread::scope(|scope| {
            for t in 0..8 {
                let cache = &cache;
                scope.spawn(move || {
                    for n in 0..2000 {
                        let i = (n * 7 + t) % 50;
                        match cache.get(&format!("s{i}")) {
                            Lookup::Hit(v) | Lookup::Miss(v) => assert_eq!(v["id"], i, "wrong value for s{i}"),
                            Lookup::Absent => assert!(i >= 40, "s{i} exists"),
                            other => panic!("s{i}: unexpected {other:?}"),
                        }
                    }
                });
            }
        });
        let st = cache.stats();
        assert_eq!(st.misses, 50, "concurrent misses of one slug share one fetch");
        assert_eq!(st.hits + st.negative_hits + st.misses, 8 * 2000);
        assert_eq!(st.redis_errors, 0);
    }

    #[test]
    fn bad_settings_are_refused_without_connecting() {
        let cfg = CacheConfig {
            max_entries: 0,
            ..CacheConfig::new("redis://127.0.0.1:1/")
        };
        assert!(matches!(LinkCache::<Json>::new(cfg, decode), Err(CoreError::Config(_))));
        assert!(matches!(
            LinkCache::<Json>::new(CacheConfig::new("nonsense://"), decode),
            Err(CoreError::Config(_))
        ));
        // Nothing listens on port 1; construction must not notice.
        let cache = LinkCache::<Json>::new(CacheConfig::new("redis://127.0.0.1:1/"), decode).unwrap();
        assert!(cache.listener.get().is_none(), "no thread before first use");
        drop(cache);
    }
}
