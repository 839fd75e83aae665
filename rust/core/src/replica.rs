//! A replica of every live link config in this process's memory, where they fit a byte budget, so that a click
//! on a link the cache has not seen costs no Redis round trip on the request thread.
//!
//! A thread of its own (`adclick-replica`) loads the configs with SCAN and MGET when the cache's invalidation
//! listener subscribes, and follows the same channel afterwards (see [`Follower`]): a changed slug is marked
//! pending at once, under the write lock, and re-read by the thread; a pending slug is answered by the cache
//! (so by Redis) until then, which keeps the contract's one-second invalidation. A full re-read every
//! `resync` is the backstop for an invalidation lost in transit, as `fresh_ttl` is the cache's.
//!
//! The replica answers only while it is authoritative: loaded since the current subscription began, with
//! nothing missed. Otherwise (loading, subscription lost, over budget) every lookup goes to the cache as
//! before; while Redis is down, a link the replica holds is still served as stale, up to `stale_ttl`.
//!
//! A slug the replica does not hold is still the cache's to answer: a link created a moment ago may not have
//! reached the replica yet (its invalidation is in flight), and the cache's negative caching keeps floods of
//! unknown slugs at one Redis read per slug and `negative_ttl`, as before the replica.
//!
//! A link takes about 60 bytes here, plus its slug: its ids and flags, an `Arc` of its interned routes, an
//! index slot. Links live in one `Vec`, slugs in one byte arena, and a `hashbrown::HashTable` of `u32`
//! indexes finds them, so a million links cost about 80 MB rather than the cache's 550 bytes each.
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use hashbrown::HashTable;
use parking_lot::RwLock;

use crate::cache::{bump, connect_with, Follower};
use crate::link::{valid_slug, CompiledLink, Routes};
use crate::loader::Loader;

/// A Redis round trip of the loader carries this many keys (SCAN COUNT, then one MGET).
const BATCH: usize = 1000;
/// After a Redis failure the loader waits this long before trying again.
const RETRY: Duration = Duration::from_secs(1);

const NONE: u64 = u64::MAX;
/// Changed since it was read: the cache answers for it until the loader re-reads it.
const PENDING: u8 = 1;
const ACTIVE: u8 = 2;
const COOKIE: u8 = 4;
/// Read by the load in progress (records a load did not see are deleted links).
const SEEN: u8 = 8;
/// A slot on the free list.
const VACANT: u8 = 16;

/// The replica's state, as /metrics reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    /// Not loaded: not started, disabled, or the links did not fit the budget.
    Off = 0,
    /// Loading, or reloading after a subscription gap or a `*` invalidation: the cache answers.
    Loading = 1,
    /// Authoritative: every lookup is answered from memory.
    Ready = 2,
    /// The subscription broke: the cache answers, and the replica only serves stale while Redis is down.
    Stale = 3,
}

impl State {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Loading,
            2 => Self::Ready,
            3 => Self::Stale,
            _ => Self::Off,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    pub redis_url: String,
    pub key_prefix: String,
    /// The replica turns itself off when the links would take more than this (0: never on).
    pub max_bytes: u64,
    /// A full re-read this often, the backstop for a lost invalidation.
    pub resync: Duration,
    /// While Redis is down and the subscription lost, a link read this recently is still served.
    pub stale_ttl: Duration,
    pub connect_timeout: Duration,
    /// Read and write timeout of the loader's commands (a SCAN or an MGET of [`BATCH`] keys).
    pub io_timeout: Duration,
    /// Niceness of the loader thread, so that a load competes little with the clicks.
    pub nice: i32,
}

/// What the replica says about a slug.
#[derive(Debug)]
pub enum ReplicaLookup {
    Link(CompiledLink),
    /// Not in the replica (or its config does not decode): a new link's invalidation may still be in flight,
    /// so the caller asks the cache, whose negative caching bounds what unknown slugs cost Redis.
    Absent,
    /// Ask the cache: not authoritative now, or this slug changed and is being re-read.
    Unknown,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplicaStats {
    pub state: u8,
    pub links: u64,
    pub bytes: u64,
    pub max_bytes: u64,
    pub over_budget: bool,
    /// Lookups answered with a link, authoritatively or as stale.
    pub hits: u64,
    /// Lookups answered `Absent` (then passed to the cache).
    pub absent: u64,
    /// Lookups passed to the cache.
    pub passed: u64,
    /// Completed full loads.
    pub loads: u64,
    /// Slugs re-read after an invalidation.
    pub refreshes: u64,
    /// Configs that did not decode (they answer 404, as the cache's `Invalid`).
    pub invalid: u64,
    /// Failed loader commands.
    pub redis_errors: u64,
}

struct Rec {
    id: u64,
    offer: u64,
    aff: u64,
    expires: u64,
    routes: Arc<Routes>,
    slug_at: u32,
    slug_len: u8,
    flags: u8,
}

impl Rec {
    fn link(&self) -> CompiledLink {
        let opt = |v: u64| (v != NONE).then_some(v);
        CompiledLink {
            id: self.id,
            offer_id: opt(self.offer),
            affiliate_id: opt(self.aff),
            expires_at: opt(self.expires),
            routes: self.routes.clone(),
            active: self.flags & ACTIVE != 0,
            cookie: self.flags & COOKIE != 0,
        }
    }

    fn set(&mut self, link: &CompiledLink) {
        self.id = link.id;
        self.offer = link.offer_id.unwrap_or(NONE);
        self.aff = link.affiliate_id.unwrap_or(NONE);
        self.expires = link.expires_at.unwrap_or(NONE);
        self.routes = link.routes.clone();
        self.flags = (self.flags & (PENDING | SEEN))
            | if link.active { ACTIVE } else { 0 }
            | if link.cookie { COOKIE } else { 0 };
    }

    /// A slug announced before its config was read: routes nowhere, and `PENDING` keeps it from being served.
    fn placeholder(&self) -> bool {
        self.id == NONE
    }
}

fn no_routes() -> Arc<Routes> {
    static EMPTY: OnceLock<Arc<Routes>> = OnceLock::new();
    EMPTY.get_or_init(|| Arc::new(Routes::default())).clone()
}

/// The links, their slugs and the index; every method takes the hasher so that the table holds none.
#[derive(Default)]
struct Table {
    index: HashTable<u32>,
    recs: Vec<Rec>,
    slugs: Vec<u8>,
    free: Vec<u32>,
}

/// `r`'s slug in the arena.
fn slug_in<'a>(slugs: &'a [u8], r: &Rec) -> &'a [u8] {
    &slugs[r.slug_at as usize..r.slug_at as usize + r.slug_len as usize]
}

impl Table {
    fn find(&self, h: u64, slug: &[u8]) -> Option<usize> {
        self.index
            .find(h, |&i| slug_in(&self.slugs, &self.recs[i as usize]) == slug)
            .map(|&i| i as usize)
    }

    /// The record for `slug`, created (as a placeholder) when missing.
    fn entry(&mut self, hasher: &impl BuildHasher, slug: &[u8]) -> &mut Rec {
        let h = hasher.hash_one(slug);
        let i = match self.find(h, slug) {
            Some(i) => i,
            None => {
                let slug_at = u32::try_from(self.slugs.len()).unwrap_or(u32::MAX);
                self.slugs.extend_from_slice(slug);
                let rec = Rec {
                    id: NONE,
                    offer: NONE,
                    aff: NONE,
                    expires: NONE,
                    routes: no_routes(),
                    slug_at,
                    slug_len: u8::try_from(slug.len()).unwrap_or(u8::MAX),
                    flags: 0,
                };
                let i = match self.free.pop() {
                    Some(i) => {
                        self.recs[i as usize] = rec;
                        i as usize
                    }
                    None => {
                        self.recs.push(rec);
                        self.recs.len() - 1
                    }
                };
                let (recs, slugs) = (&self.recs, &self.slugs);
                let rehash = |&j: &u32| hasher.hash_one(slug_in(slugs, &recs[j as usize]));
                self.index.insert_unique(h, i as u32, rehash);
                i
            }
        };
        &mut self.recs[i]
    }

    fn remove(&mut self, hasher: &impl BuildHasher, slug: &[u8]) {
        let h = hasher.hash_one(slug);
        let (recs, slugs) = (&self.recs, &self.slugs);
        let found = self.index.find_entry(h, |&i| slug_in(slugs, &recs[i as usize]) == slug);
        if let Ok(entry) = found {
            let (i, _) = entry.remove();
            self.vacate(i);
        }
    }

    fn vacate(&mut self, i: u32) {
        let r = &mut self.recs[i as usize];
        r.flags = VACANT;
        r.routes = no_routes();
        r.id = NONE;
        self.free.push(i);
    }

    fn live(&self) -> usize {
        self.index.len()
    }

    fn bytes(&self) -> usize {
        self.recs.capacity() * std::mem::size_of::<Rec>()
            + self.index.capacity() * (std::mem::size_of::<u32>() + 1)
            + self.slugs.capacity()
            + self.free.capacity() * std::mem::size_of::<u32>()
    }

    /// Drops the records the load just finished did not see (deleted links), except pending ones, whose
    /// re-read decides. Rebuilds the slug arena when most of it belongs to dead records.
    fn sweep_unseen(&mut self) {
        let recs = &self.recs;
        let mut gone = Vec::new();
        self.index.retain(|&mut i| {
            let keep = recs[i as usize].flags & (SEEN | PENDING) != 0;
            if !keep {
                gone.push(i);
            }
            keep
        });
        for i in gone {
            self.vacate(i);
        }
        if self.slugs.len() > 1024 && self.slugs.len() > 2 * self.live() * 24 {
            self.compact_slugs();
        }
    }

    fn compact_slugs(&mut self) {
        let mut slugs = Vec::with_capacity(self.live() * 16);
        for &i in self.index.iter() {
            let r = &mut self.recs[i as usize];
            let at = u32::try_from(slugs.len()).unwrap_or(u32::MAX);
            slugs.extend_from_slice(slug_in(&self.slugs, r));
            r.slug_at = at;
        }
        self.slugs = slugs;
    }
}

enum Cmd {
    Load,
    Refresh(String),
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    absent: AtomicU64,
    passed: AtomicU64,
    loads: AtomicU64,
    refreshes: AtomicU64,
    invalid: AtomicU64,
    redis_errors: AtomicU64,
}

struct Inner {
    cfg: ReplicaConfig,
    client: redis::Client,
    hasher: std::hash::RandomState,
    table: RwLock<Table>,
    state: AtomicU8,
    over_budget: AtomicBool,
    /// Whether the cache's listener is subscribed now, and how many subscriptions it has made.
    subscribed: AtomicBool,
    subscriptions: AtomicU64,
    /// When the last complete load or re-read finished (nanos since `base`), for stale serving.
    base: Instant,
    read_at: AtomicU64,
    stop: AtomicBool,
    counters: Counters,
}

/// The link replica; see the module docs.
pub struct Replica {
    inner: Arc<Inner>,
    loader: Loader<Cmd>,
}

impl Replica {
    /// Connects to nothing and starts no thread: [`Follower::start`] does, with the cache's listener.
    pub fn new(cfg: ReplicaConfig) -> Result<Self, crate::CoreError> {
        let client = redis::Client::open(cfg.redis_url.as_str())
            .map_err(|e| crate::CoreError::Config(format!("link replica: bad redis_url: {e}")))?;
        if cfg.resync.is_zero() || cfg.io_timeout.is_zero() || cfg.connect_timeout.is_zero() {
            return Err(crate::CoreError::Config(
                "link replica: resync and timeouts must be positive".into(),
            ));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                cfg,
                client,
                hasher: std::hash::RandomState::new(),
                table: RwLock::new(Table::default()),
                state: AtomicU8::new(State::Off as u8),
                over_budget: AtomicBool::new(false),
                subscribed: AtomicBool::new(false),
                subscriptions: AtomicU64::new(0),
                base: Instant::now(),
                read_at: AtomicU64::new(0),
                stop: AtomicBool::new(false),
                counters: Counters::default(),
            }),
            loader: Loader::new(),
        })
    }

    pub fn enabled(&self) -> bool {
        self.inner.cfg.max_bytes > 0
    }

    pub fn state(&self) -> State {
        State::from_u8(self.inner.state.load(Ordering::Acquire))
    }

    /// The hot path: a read lock, a hash, a probe. `Unknown` unless authoritative.
    pub fn get(&self, slug: &str) -> ReplicaLookup {
        let s = &*self.inner;
        if s.state.load(Ordering::Acquire) != State::Ready as u8 {
            bump(&s.counters.passed);
            return ReplicaLookup::Unknown;
        }
        let h = s.hasher.hash_one(slug.as_bytes());
        let t = s.table.read();
        match t.find(h, slug.as_bytes()) {
            Some(i) if t.recs[i].flags & PENDING != 0 => {
                bump(&s.counters.passed);
                ReplicaLookup::Unknown
            }
            Some(i) => {
                bump(&s.counters.hits);
                ReplicaLookup::Link(t.recs[i].link())
            }
            None => {
                bump(&s.counters.absent);
                ReplicaLookup::Absent
            }
        }
    }

    /// The link as last read, for when neither the replica nor Redis can answer, up to `stale_ttl` old.
    pub fn stale(&self, slug: &str) -> Option<CompiledLink> {
        let s = &*self.inner;
        let state = s.state.load(Ordering::Acquire);
        if state == State::Off as u8 {
            return None;
        }
        let read_at = s.read_at.load(Ordering::Acquire);
        let age = Duration::from_nanos(s.nanos(Instant::now()).saturating_sub(read_at));
        if read_at == 0 || age >= s.cfg.stale_ttl {
            return None;
        }
        let h = s.hasher.hash_one(slug.as_bytes());
        let t = s.table.read();
        let r = &t.recs[t.find(h, slug.as_bytes())?];
        if r.placeholder() {
            return None;
        }
        bump(&s.counters.hits);
        Some(r.link())
    }

    pub fn stats(&self) -> ReplicaStats {
        let s = &*self.inner;
        let c = &s.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (links, bytes) = {
            let t = s.table.read();
            (t.live() as u64, t.bytes() as u64)
        };
        ReplicaStats {
            state: s.state.load(Ordering::Relaxed),
            links,
            bytes,
            max_bytes: s.cfg.max_bytes,
            over_budget: s.over_budget.load(Ordering::Relaxed),
            hits: get(&c.hits),
            absent: get(&c.absent),
            passed: get(&c.passed),
            loads: get(&c.loads),
            refreshes: get(&c.refreshes),
            invalid: get(&c.invalid),
            redis_errors: get(&c.redis_errors),
        }
    }

    fn send(&self, cmd: Cmd) {
        self.loader.send(cmd);
    }

    /// Stops the loader thread and waits for it. Idempotent.
    pub fn shutdown(&self) {
        self.loader.stop(&self.inner.stop);
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Follower for Replica {
    fn start(&self) {
        if !self.enabled() {
            return;
        }
        let inner = Arc::clone(&self.inner);
        self.loader.start("adclick-replica", move |rx| inner.run(&rx));
    }

    fn subscribed(&self) {
        if !self.enabled() {
            return;
        }
        let s = &*self.inner;
        s.subscriptions.fetch_add(1, Ordering::AcqRel);
        s.subscribed.store(true, Ordering::Release);
        // Whatever changed before (or during a gap) is unknown: load before answering. A replica that went
        // over budget stays off until its periodic retry.
        if !s.over_budget.load(Ordering::Acquire) {
            s.set_state(State::Loading);
            self.send(Cmd::Load);
        }
    }

    fn lost(&self) {
        let s = &*self.inner;
        s.subscribed.store(false, Ordering::Release);
        s.set_state_unless_off(State::Stale);
    }

    fn changed(&self, slug: &str) {
        // A payload that is no valid slug names nothing a click can ask for (clicks on it get a 400), and a
        // placeholder for it would only grow the table; its arena length is a u8 besides.
        if !self.enabled() || self.state() == State::Off || !valid_slug(slug) {
            return;
        }
        let s = &*self.inner;
        s.table.write().entry(&s.hasher, slug.as_bytes()).flags |= PENDING;
        self.send(Cmd::Refresh(slug.to_owned()));
    }

    fn changed_all(&self) {
        if !self.enabled() {
            return;
        }
        self.inner.set_state_unless_off(State::Loading);
        self.send(Cmd::Load);
    }
}

/// What one load found.
enum Loaded {
    Done,
    OverBudget(usize),
    Failed,
    Stopped,
}

impl Inner {
    fn nanos(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
    }

    fn set_state(&self, st: State) {
        self.state.store(st as u8, Ordering::Release);
    }

    fn set_state_unless_off(&self, st: State) {
        let _ = self.state.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
            (v != State::Off as u8).then_some(st as u8)
        });
    }

    fn connect(&self) -> redis::RedisResult<redis::Connection> {
        connect_with(&self.client, self.cfg.connect_timeout, self.cfg.io_timeout)
    }

    fn run(&self, rx: &Receiver<Cmd>) {
        if let Err(e) = crate::lower_thread_priority(self.cfg.nice) {
            log_warning(&format!("could not lower the replica loader's priority: {e}"));
        }
        let mut conn: Option<redis::Connection> = None;
        let mut next_resync: Option<Instant> = None;
        let mut load_due = false;
        while !self.stop.load(Ordering::Acquire) {
            let wait = if load_due {
                RETRY
            } else {
                next_resync.map_or(Duration::from_secs(3600), |t| {
                    t.saturating_duration_since(Instant::now())
                })
            };
            let cmd = match rx.recv_timeout(wait) {
                Ok(cmd) => Some(cmd),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            match cmd {
                Some(Cmd::Refresh(slug)) => {
                    if self.refresh(&mut conn, &slug).is_err() {
                        self.failed(&mut conn);
                        load_due = true;
                    }
                    continue;
                }
                // A timeout is the periodic re-read, or the retry of a failed load.
                Some(Cmd::Load) | None => load_due = true,
            }
            if !self.subscribed.load(Ordering::Acquire) {
                // Without a subscription a load could not be trusted; `subscribed` will ask for one.
                load_due = false;
                next_resync = Some(Instant::now() + self.cfg.resync);
                continue;
            }
            let subscription = self.subscriptions.load(Ordering::Acquire);
            // From off (the first load, or a retry after going over budget), changes are marked from now on.
            let _ = self.state.compare_exchange(
                State::Off as u8,
                State::Loading as u8,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
            match self.load(&mut conn) {
                Loaded::Done => {
                    load_due = false;
                    next_resync = Some(Instant::now() + self.cfg.resync);
                    bump(&self.counters.loads);
                    self.read_at.store(self.nanos(Instant::now()).max(1), Ordering::Release);
                    let same = self.subscriptions.load(Ordering::Acquire) == subscription;
                    if same && self.subscribed.load(Ordering::Acquire) {
                        self.set_state(State::Ready);
                    }
                }
                Loaded::OverBudget(bytes) => {
                    load_due = false;
                    next_resync = Some(Instant::now() + self.cfg.resync);
                    self.over_budget.store(true, Ordering::Release);
                    self.set_state(State::Off);
                    *self.table.write() = Table::default();
                    log_warning(&format!(
                        "link replica off: the links take more than ADCLICK_REPLICA_MAX_BYTES ({} > {}); \
                         clicks on links outside the cache read Redis (tried again in {} s)",
                        bytes,
                        self.cfg.max_bytes,
                        self.cfg.resync.as_secs()
                    ));
                }
                Loaded::Failed => self.failed(&mut conn),
                Loaded::Stopped => return,
            }
        }
    }

    fn failed(&self, conn: &mut Option<redis::Connection>) {
        bump(&self.counters.redis_errors);
        *conn = None;
        // Changes may go unread until a load succeeds: let the cache answer meanwhile.
        self.set_state_unless_off(State::Loading);
    }

    fn key(&self, slug: &str) -> String {
        format!("{}{}", self.cfg.key_prefix, slug)
    }

    fn decode(&self, bytes: Option<&[u8]>) -> Option<CompiledLink> {
        let link = CompiledLink::decode(bytes?);
        if link.is_err() {
            bump(&self.counters.invalid);
        }
        link.ok()
    }

    fn refresh(&self, conn: &mut Option<redis::Connection>, slug: &str) -> redis::RedisResult<()> {
        if conn.is_none() {
            *conn = Some(self.connect()?);
        }
        let c = conn.as_mut().expect("connected above");
        let value: Option<Vec<u8>> = match redis::cmd("GET").arg(self.key(slug)).query(c) {
            Err(e) if e.code() == Some("WRONGTYPE") => None,
            other => other?,
        };
        let link = self.decode(value.as_deref());
        let mut t = self.table.write();
        match link {
            Some(link) => {
                let r = t.entry(&self.hasher, slug.as_bytes());
                r.set(&link);
                r.flags &= !PENDING;
            }
            None => t.remove(&self.hasher, slug.as_bytes()),
        }
        bump(&self.counters.refreshes);
        if self.cfg.max_bytes > 0 && t.bytes() as u64 > self.cfg.max_bytes {
            // Grown past the budget by new links: off until the next re-read finds them fitting.
            drop(t);
            self.over_budget.store(true, Ordering::Release);
            self.set_state(State::Off);
            *self.table.write() = Table::default();
        }
        Ok(())
    }

    /// Reads every link config into the table in place: records are updated as their batch arrives, and those
    /// the scan did not see are dropped at the end. A record marked pending stays pending: only its own
    /// re-read (queued behind this load) clears it, since this scan may have read it before it changed.
    fn load(&self, conn: &mut Option<redis::Connection>) -> Loaded {
        if conn.is_none() {
            match self.connect() {
                Ok(c) => *conn = Some(c),
                Err(_) => return Loaded::Failed,
            }
        }
        let c = conn.as_mut().expect("connected above");
        {
            let mut t = self.table.write();
            for r in &mut t.recs {
                r.flags &= !SEEN;
            }
        }
        let pattern = format!("{}*", self.cfg.key_prefix);
        let mut cursor: u64 = 0;
        let mut routes_seen: std::collections::HashSet<usize> = std::collections::HashSet::new();
        let mut routes_bytes = 0usize;
        loop {
            if self.stop.load(Ordering::Acquire) {
                return Loaded::Stopped;
            }
            let (next, keys): (u64, Vec<String>) = match redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(BATCH)
                .query(c)
            {
                Ok(v) => v,
                Err(_) => return Loaded::Failed,
            };
            if !keys.is_empty() {
                let values: Vec<Option<Vec<u8>>> = match redis::cmd("MGET").arg(&keys).query(c) {
                    Ok(v) => v,
                    Err(_) => return Loaded::Failed,
                };
                let decoded: Vec<(&str, Option<CompiledLink>)> = keys
                    .iter()
                    .zip(values)
                    .map(|(k, v)| (&k[self.cfg.key_prefix.len()..], self.decode(v.as_deref())))
                    .filter(|(slug, _)| crate::link::valid_slug(slug))
                    .collect();
                for (_, link) in &decoded {
                    if let Some(l) = link {
                        if routes_seen.insert(Arc::as_ptr(&l.routes) as usize) {
                            routes_bytes += l.routes.bytes();
                        }
                    }
                }
                let mut t = self.table.write();
                for (slug, link) in decoded {
                    match link {
                        Some(link) => {
                            let r = t.entry(&self.hasher, slug.as_bytes());
                            r.set(&link);
                            r.flags |= SEEN;
                        }
                        None => {
                            if let Some(i) = t.find(self.hasher.hash_one(slug.as_bytes()), slug.as_bytes()) {
                                if t.recs[i].flags & PENDING == 0 {
                                    t.remove(&self.hasher, slug.as_bytes());
                                }
                            }
                        }
                    }
                }
                let bytes = t.bytes() + routes_bytes;
                if bytes as u64 > self.cfg.max_bytes {
                    return Loaded::OverBudget(bytes);
                }
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        self.table.write().sweep_unseen();
        self.over_budget.store(false, Ordering::Release);
        Loaded::Done
    }
}

/// A warning on stderr in the tracker's log format (the replica has no Python logger to call).
fn log_warning(message: &str) {
    eprintln!("adclick.tracker.replica WARNING {message}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::{CacheConfig, LinkCache};
    use adclick_testkit::Server;

    fn link_json(id: u64, slug: &str, host: &str) -> String {
        format!(r#"{{"v":1,"id":{id},"slug":"{slug}","offer_id":7,"url":"https://{host}.example/?c={{click_id}}"}}"#)
    }

    fn config(url: String, max_bytes: u64) -> ReplicaConfig {
        ReplicaConfig {
            redis_url: url,
            key_prefix: "adclick:link:".into(),
            max_bytes,
            resync: Duration::from_secs(300),
            stale_ttl: Duration::from_secs(600),
            connect_timeout: Duration::from_millis(500),
            io_timeout: Duration::from_secs(2),
            nice: 0,
        }
    }

    /// A cache whose listener drives the replica, as in the tracker.
    fn pair(redis: &Server, max_bytes: u64) -> (LinkCache<CompiledLink>, Arc<Replica>) {
        let replica = Arc::new(Replica::new(config(redis.url(), max_bytes)).unwrap());
        let mut cfg = CacheConfig::new(redis.url());
        cfg.connect_timeout = Duration::from_millis(500);
        cfg.io_timeout = Duration::from_millis(300);
        cfg.retry_after = Duration::from_millis(200);
        let cache = LinkCache::new(cfg, CompiledLink::decode).unwrap();
        cache.follow(Arc::clone(&replica) as Arc<dyn Follower>);
        cache.start();
        (cache, replica)
    }

    fn wait_for(what: &str, done: impl FnMut() -> bool) {
        adclick_testkit::wait_for(what, Duration::from_secs(10), done);
    }

    fn id_of(r: &Replica, slug: &str) -> Option<u64> {
        match r.get(slug) {
            ReplicaLookup::Link(l) => Some(l.id),
            _ => None,
        }
    }

    #[test]
    fn loads_every_link_and_answers_with_redis_gone() {
        let mut redis = Server::start();
        for i in 0..2500u64 {
            redis.set(
                &format!("l{i}"),
                &link_json(i + 1, &format!("l{i}"), &format!("o{}", i % 10)),
            );
        }
        redis.set("broken", r#"{"v":1,"id":"#);
        let (_cache, replica) = pair(&redis, 64 << 20);
        wait_for("the replica to load", || replica.state() == State::Ready);
        let st = replica.stats();
        assert_eq!((st.links, st.loads, st.invalid), (2500, 1, 1), "{st:?}");
        assert_eq!(id_of(&replica, "l0"), Some(1));
        assert_eq!(id_of(&replica, "l2499"), Some(2500));
        let link = match replica.get("l13") {
            ReplicaLookup::Link(l) => l,
            other => panic!("{other:?}"),
        };
        assert_eq!((link.offer_id, link.affiliate_id, link.active), (Some(7), None, true));
        assert!(matches!(replica.get("nope"), ReplicaLookup::Absent));
        assert!(matches!(replica.get("broken"), ReplicaLookup::Absent));

        redis.kill();
        // Until the listener notices, answers come from memory; after, the replica is only a stale fallback.
        wait_for("the subscription loss", || replica.state() == State::Stale);
        assert!(matches!(replica.get("l1"), ReplicaLookup::Unknown));
        assert_eq!(replica.stale("l1").map(|l| l.id), Some(2));
        assert!(replica.stale("nope").is_none());
        redis.restart();
        wait_for("the replica to reload after the gap", || {
            replica.state() == State::Ready
        });
        assert!(replica.stats().loads >= 2);
    }

    #[test]
    fn changes_are_followed_within_a_second() {
        let redis = Server::start();
        redis.set("a", &link_json(1, "a", "first"));
        redis.set("gone", &link_json(2, "gone", "first"));
        let (_cache, replica) = pair(&redis, 64 << 20);
        wait_for("the replica to load", || replica.state() == State::Ready);

        let started = Instant::now();
        redis.set("a", &link_json(11, "a", "second"));
        redis.publish("a");
        redis.set("new", &link_json(3, "new", "first"));
        redis.publish("new");
        redis::cmd("DEL")
            .arg("adclick:link:gone")
            .query::<i64>(&mut redis.conn())
            .unwrap();
        redis.publish("gone");
        wait_for("the changes", || {
            id_of(&replica, "a") == Some(11)
                && id_of(&replica, "new") == Some(3)
                && matches!(replica.get("gone"), ReplicaLookup::Absent)
        });
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(replica.stats().refreshes >= 3);
        assert_eq!(replica.stats().links, 2);
    }

    #[test]
    fn a_changed_slug_is_never_answered_from_the_old_copy() {
        let redis = Server::start();
        redis.set("a", &link_json(1, "a", "first"));
        let (_cache, replica) = pair(&redis, 64 << 20);
        wait_for("the replica to load", || replica.state() == State::Ready);
        // The listener marks the slug before the loader re-reads it: in between, the cache answers.
        replica.changed("a");
        match replica.get("a") {
            ReplicaLookup::Unknown => {}
            ReplicaLookup::Link(l) => assert_eq!(l.id, 1, "re-read already, with the same value"),
            ReplicaLookup::Absent => panic!("a changed slug is not absent"),
        }
        // A slug the replica last knew as absent: once marked changed it is never answered absent from that old
        // knowledge. It is in Redis now (not yet announced), so the loader's re-read, if it comes first, finds it.
        assert!(matches!(replica.get("brand-new"), ReplicaLookup::Absent));
        redis.set("brand-new", &link_json(2, "brand-new", "new"));
        replica.changed("brand-new");
        match replica.get("brand-new") {
            ReplicaLookup::Unknown => {}
            ReplicaLookup::Link(l) => assert_eq!(l.id, 2, "re-read already"),
            ReplicaLookup::Absent => panic!("a changed slug is answered absent from the old copy"),
        }
        // A payload no click could name leaves no placeholder behind.
        let links = replica.stats().links;
        replica.changed(&"x/".repeat(200));
        assert_eq!(replica.stats().links, links);
    }

    #[test]
    fn everything_invalidated_reloads() {
        let redis = Server::start();
        redis.set("a", &link_json(1, "a", "first"));
        let (_cache, replica) = pair(&redis, 64 << 20);
        wait_for("the replica to load", || replica.state() == State::Ready);
        redis.set("a", &link_json(21, "a", "second"));
        redis.set("b", &link_json(22, "b", "second"));
        redis.publish("*");
        wait_for("the reload", || {
            id_of(&replica, "a") == Some(21) && id_of(&replica, "b") == Some(22)
        });
        assert!(replica.stats().loads >= 2);
    }

    #[test]
    fn links_over_the_budget_turn_the_replica_off() {
        let redis = Server::start();
        for i in 0..3000u64 {
            redis.set(&format!("l{i}"), &link_json(i + 1, &format!("l{i}"), "o"));
        }
        let (_cache, replica) = pair(&redis, 20_000);
        wait_for("the replica to give up", || replica.stats().over_budget);
        assert_eq!(replica.state(), State::Off);
        assert!(matches!(replica.get("l1"), ReplicaLookup::Unknown));
        assert_eq!(replica.stats().links, 0);
    }
}
