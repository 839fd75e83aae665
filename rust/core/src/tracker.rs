//! One click, start to end: validate, look up the link, check the client's address, classify, choose, render,
//! record. No Python here.
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use percent_encoding::percent_decode_str;

use crate::cache::{CacheConfig, CacheStats, Follower, LinkCache, Lookup};
use crate::clickid::{ClickIdCodec, FLAG_BLOCKED, FLAG_BOT};
use crate::error::CoreError;
use crate::event::{pack, ClickEvent, EventBuffer, PushError};
use crate::geoip::{GeoIp, GeoIpConfig, GeoIpStats};
use crate::ipblock::{IpBlockConfig, IpBlockStats, IpBlocklist, IPBLOCK_KEY};
use crate::link::{valid_slug, CompiledLink};
use crate::replica::{Replica, ReplicaConfig, ReplicaLookup, ReplicaStats, State as ReplicaState};
use crate::targeting::{choose, client_addr, country_from, ip_text, Choice};
use crate::template::MacroValues;
use crate::ua::{classify, UaInfo};

/// Longest query string we read; longer ones are refused rather than truncated.
pub const MAX_QUERY_PARAMS: usize = 64;
pub const MAX_QUERY_VALUE_BYTES: usize = 1024;
pub const MAX_QUERY_KEY_BYTES: usize = 64;
pub const MAX_HEADER_BYTES: usize = 2048;
/// Distinct User-Agents whose classification is remembered per process.
pub const UA_CACHE_ENTRIES: u64 = 20_000;

/// Everything the tracker needs that does not change per request.
pub struct TrackerConfig {
    pub cache: CacheConfig,
    pub key_id: u8,
    pub secret: Vec<u8>,
    pub previous: Option<(u8, Vec<u8>)>,
    pub trusted_proxies: usize,
    pub anonymize_ip: bool,
    pub cookie_name: String,
    pub cookie_max_age: Duration,
    pub cookie_domain: Option<String>,
    pub cookie_secure: bool,
    pub buffer_max_events: usize,
    /// The link replica's byte budget (0: no replica) and its backstop re-read interval.
    pub replica_max_bytes: u64,
    pub replica_resync: Duration,
    /// Niceness of the replica's loader thread (and the IP blocklist's; the binding gives the country database's too).
    pub replica_nice: i32,
    /// What a click from an address on the IP blocklist gets.
    pub blocked_action: BlockedAction,
    /// The country database for clicks without a trusted country header (None: such clicks have no country).
    pub geoip: Option<GeoIpConfig>,
}

/// The answer to a click from an address on the IP blocklist (`ADCLICK_BLOCKED_ACTION`). Either way the click
/// is recorded, marked blocked, so it is counted and never paid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BlockedAction {
    /// The link's fallback URL (its ClickID flagged blocked), or 403 for a link without one.
    #[default]
    Fallback,
    /// 403, whatever the link.
    Forbidden,
}

impl std::str::FromStr for BlockedAction {
    type Err = CoreError;

    fn from_str(s: &str) -> Result<Self, CoreError> {
        match s {
            "fallback" => Ok(Self::Fallback),
            "403" => Ok(Self::Forbidden),
            other => Err(CoreError::Config(format!(
                "blocked action {other:?} is neither \"fallback\" nor \"403\""
            ))),
        }
    }
}

/// The request fields a click uses; borrowed from the HTTP layer, nothing copied up front.
pub struct ClickRequest<'a, Q> {
    pub head: bool,
    pub slug: &'a str,
    /// Raw (still percent-encoded) query pairs, as the HTTP layer split them.
    pub query: Q,
    pub user_agent: Option<&'a str>,
    pub referer: Option<&'a str>,
    pub forwarded_for: Option<&'a str>,
    pub peer_ip: Option<&'a str>,
    pub country: Option<&'a str>,
}

/// What the HTTP layer sends back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClickResponse {
    pub status: u16,
    pub location: Option<String>,
    pub set_cookie: Option<String>,
    pub outcome: Outcome,
}

/// Why a request ended as it did; one counter each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Outcome {
    Redirect = 0,
    Fallback,
    Bot,
    Head,
    NotFound,
    NoRoute,
    BadRequest,
    Unavailable,
    Closed,
    Overloaded,
    /// The client address is on the IP blocklist (fallback or 403, recorded either way).
    Blocked,
    /// A full cap of the link's offer sent the click to the cap fallback.
    Capped,
}

impl Outcome {
    pub const ALL: [Outcome; 12] = [
        Outcome::Redirect,
        Outcome::Fallback,
        Outcome::Bot,
        Outcome::Head,
        Outcome::NotFound,
        Outcome::NoRoute,
        Outcome::BadRequest,
        Outcome::Unavailable,
        Outcome::Closed,
        Outcome::Overloaded,
        Outcome::Blocked,
        Outcome::Capped,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Outcome::Redirect => "redirect",
            Outcome::Fallback => "fallback",
            Outcome::Bot => "bot",
            Outcome::Head => "head",
            Outcome::NotFound => "not_found",
            Outcome::NoRoute => "no_route",
            Outcome::BadRequest => "bad_request",
            Outcome::Unavailable => "unavailable",
            Outcome::Closed => "closed",
            Outcome::Overloaded => "overloaded",
            Outcome::Blocked => "blocked",
            Outcome::Capped => "capped",
        }
    }
}

/// Upper bounds, in microseconds, of the handler latency histogram.
pub const LATENCY_BUCKETS_US: [u64; 14] = [5, 10, 20, 35, 50, 75, 100, 150, 250, 500, 1000, 2500, 5000, 25000];

/// Counters read by `/metrics`; plain atomics so the hot path never locks for them.
#[derive(Default)]
pub struct TrackerStats {
    outcomes: [AtomicU64; Outcome::ALL.len()],
    latency_buckets: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
    latency_sum_ns: AtomicU64,
    events_buffered: AtomicU64,
    events_dropped: AtomicU64,
}

/// A snapshot of the counters.
#[derive(Debug, Clone, Default)]
pub struct StatsSnapshot {
    pub outcomes: Vec<(&'static str, u64)>,
    pub latency_buckets: Vec<(u64, u64)>,
    pub latency_count: u64,
    pub latency_sum_seconds: f64,
    pub events_buffered_total: u64,
    pub events_dropped_total: u64,
    pub buffer_depth: u64,
    pub cache: CacheStats,
    pub replica: ReplicaStats,
    pub ipblock: IpBlockStats,
    pub geoip: GeoIpStats,
}

/// Runs work that may wait (a Redis round trip) so the caller can let others run meanwhile
/// (the Python binding releases the GIL here). The hot path, a cache hit, never calls it.
pub trait Blocking {
    fn run<R: Send, F: FnOnce() -> R + Send>(&self, f: F) -> R;
}

/// Runs blocking work in place, for callers with nothing to release.
pub struct InPlace;

impl Blocking for InPlace {
    fn run<R: Send, F: FnOnce() -> R + Send>(&self, f: F) -> R {
        f()
    }
}

/// The click engine of one tracker process.
pub struct Tracker {
    codec: ClickIdCodec,
    cache: LinkCache<CompiledLink>,
    /// Every link in memory where they fit `replica_max_bytes`; `None` when that is 0.
    replica: Option<Arc<Replica>>,
    /// Addresses whose clicks are refused, kept current by the invalidation listener.
    blocklist: Arc<IpBlocklist>,
    blocked_action: BlockedAction,
    /// Country of the client's address, read in memory, for clicks without a trusted country header.
    geoip: Option<Arc<GeoIp>>,
    buffer: EventBuffer,
    trusted_proxies: usize,
    anonymize_ip: bool,
    cookie_prefix: String,
    cookie_suffix: String,
    capacity: usize,
    stats: Arc<TrackerStats>,
    /// User-Agents repeat a lot and classifying one is the dearest step of a click: remember the answers.
    ua_cache: moka::sync::Cache<String, Arc<UaInfo>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn decode_link(bytes: &[u8]) -> Result<CompiledLink, CoreError> {
    CompiledLink::decode(bytes)
}

/// Percent-decodes one query component (`+` is a space); `None` on bad escapes, bad UTF-8 or control characters.
fn decode_component(raw: &str, max: usize) -> Option<String> {
    if raw.len() > max * 3 {
        return None;
    }
    let bytes = raw.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            if i + 2 >= bytes.len() {
                return None;
            }
            if !(bytes[i + 1].is_ascii_hexdigit() && bytes[i + 2].is_ascii_hexdigit()) {
                return None;
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    let plus_free;
    let src = if raw.contains('+') {
        plus_free = raw.replace('+', " ");
        plus_free.as_str()
    } else {
        raw
    };
    let text = percent_decode_str(src).decode_utf8().ok()?;
    if text.len() > max || text.chars().any(char::is_control) {
        return None;
    }
    Some(text.into_owned())
}

fn clean_header(value: Option<&str>) -> Result<Option<&str>, ()> {
    match value {
        None => Ok(None),
        Some(v) if v.len() > MAX_HEADER_BYTES || v.chars().any(char::is_control) => Err(()),
        Some("") => Ok(None),
        Some(v) => Ok(Some(v)),
    }
}

struct Query {
    subs: [Option<String>; 5],
    params: std::collections::BTreeMap<String, String>,
}

fn parse_query<'q, Q>(query: Q) -> Option<Query>
where
    Q: IntoIterator<Item = (&'q str, &'q str)>,
{
    let mut out = Query {
        subs: Default::default(),
        params: Default::default(),
    };
    for (n, (raw_key, raw_value)) in query.into_iter().enumerate() {
        if n >= MAX_QUERY_PARAMS {
            return None;
        }
        let key = decode_component(raw_key, MAX_QUERY_KEY_BYTES)?;
        let value = decode_component(raw_value, MAX_QUERY_VALUE_BYTES)?;
        let sub = match key.as_str() {
            "sub1" => Some(0),
            "sub2" => Some(1),
            "sub3" => Some(2),
            "sub4" => Some(3),
            "sub5" => Some(4),
            _ => None,
        };
        match sub {
            Some(i) => out.subs[i] = Some(value),
            None if key.is_empty() => {}
            None => {
                out.params.insert(key, value);
            }
        }
    }
    Some(out)
}

impl Tracker {
    pub fn new(cfg: TrackerConfig) -> Result<Self, CoreError> {
        let previous = cfg.previous.as_ref().map(|(kid, key)| (*kid, key.as_slice()));
        let codec = ClickIdCodec::new(cfg.key_id, &cfg.secret, previous)?;
        let replica = if cfg.replica_max_bytes > 0 {
            let replica = Arc::new(Replica::new(ReplicaConfig {
                redis_url: cfg.cache.redis_url.clone(),
                key_prefix: cfg.cache.key_prefix.clone(),
                max_bytes: cfg.replica_max_bytes,
                resync: cfg.replica_resync,
                stale_ttl: cfg.cache.stale_ttl,
                connect_timeout: cfg.cache.connect_timeout,
                io_timeout: cfg.cache.io_timeout.max(Duration::from_secs(2)),
                nice: cfg.replica_nice,
            })?);
            Some(replica)
        } else {
            None
        };
        let blocklist = Arc::new(IpBlocklist::new(IpBlockConfig {
            redis_url: cfg.cache.redis_url.clone(),
            key: IPBLOCK_KEY.to_owned(),
            resync: cfg.replica_resync,
            connect_timeout: cfg.cache.connect_timeout,
            io_timeout: cfg.cache.io_timeout.max(Duration::from_secs(2)),
            nice: cfg.replica_nice,
        })?);
        let geoip = cfg.geoip.map(GeoIp::open).transpose()?.map(Arc::new);
        let cache = LinkCache::new(cfg.cache, decode_link)?;
        if let Some(r) = &replica {
            cache.follow(Arc::clone(r) as Arc<dyn Follower>);
        }
        cache.follow(Arc::clone(&blocklist) as Arc<dyn Follower>);
        if let Some(g) = &geoip {
            cache.follow(Arc::clone(g) as Arc<dyn Follower>);
        }
        crate::ua::warm_up();
        if cfg.cookie_name.is_empty() || !cfg.cookie_name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(CoreError::Config("cookie name must be [A-Za-z0-9_]+".into()));
        }
        let mut suffix = format!(
            "; Path=/; Max-Age={}; HttpOnly; SameSite=Lax",
            cfg.cookie_max_age.as_secs()
        );
        if let Some(domain) = &cfg.cookie_domain {
            if !domain
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
            {
                return Err(CoreError::Config("cookie domain must be a host name".into()));
            }
            suffix.push_str("; Domain=");
            suffix.push_str(domain);
        }
        if cfg.cookie_secure {
            suffix.push_str("; Secure");
        }
        Ok(Tracker {
            codec,
            cache,
            replica,
            blocklist,
            blocked_action: cfg.blocked_action,
            geoip,
            buffer: EventBuffer::new(cfg.buffer_max_events),
            trusted_proxies: cfg.trusted_proxies,
            anonymize_ip: cfg.anonymize_ip,
            cookie_prefix: format!("{}=", cfg.cookie_name),
            cookie_suffix: suffix,
            capacity: cfg.buffer_max_events,
            stats: Arc::new(TrackerStats::default()),
            ua_cache: moka::sync::Cache::new(UA_CACHE_ENTRIES),
        })
    }

    /// Answers one click; records its event unless it is a HEAD or ends without a redirect.
    pub fn click<'q, Q, B>(&self, req: ClickRequest<'_, Q>, blocking: &B) -> ClickResponse
    where
        Q: IntoIterator<Item = (&'q str, &'q str)>,
        B: Blocking,
    {
        let started = Instant::now();
        let resp = self.click_inner(req, blocking);
        self.stats.outcomes[resp.outcome as usize].fetch_add(1, Relaxed);
        self.observe(started.elapsed());
        resp
    }

    fn observe(&self, elapsed: Duration) {
        let us = elapsed.as_micros() as u64;
        let idx = LATENCY_BUCKETS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(LATENCY_BUCKETS_US.len());
        self.stats.latency_buckets[idx].fetch_add(1, Relaxed);
        self.stats.latency_sum_ns.fetch_add(elapsed.as_nanos() as u64, Relaxed);
    }

    fn reply(status: u16, outcome: Outcome) -> ClickResponse {
        ClickResponse {
            status,
            location: None,
            set_cookie: None,
            outcome,
        }
    }

    fn click_inner<'q, Q, B>(&self, req: ClickRequest<'_, Q>, blocking: &B) -> ClickResponse
    where
        Q: IntoIterator<Item = (&'q str, &'q str)>,
        B: Blocking,
    {
        if !valid_slug(req.slug) {
            return Self::reply(400, Outcome::BadRequest);
        }
        let Ok(user_agent) = clean_header(req.user_agent) else {
            return Self::reply(400, Outcome::BadRequest);
        };
        let Ok(referer) = clean_header(req.referer) else {
            return Self::reply(400, Outcome::BadRequest);
        };
        let Some(query) = parse_query(req.query) else {
            return Self::reply(400, Outcome::BadRequest);
        };
        if self.buffer.is_closed() && !req.head {
            return Self::reply(503, Outcome::Closed);
        }
        let slug = req.slug;
        // The listener (and the replica's loader with it) starts with the first click, never before a fork.
        self.cache.start();
        let from_replica: CompiledLink;
        let from_cache: Arc<CompiledLink>;
        let link: &CompiledLink = match self.replica.as_deref().map(|r| r.get(slug)) {
            Some(ReplicaLookup::Link(l)) => {
                from_replica = l;
                &from_replica
            }
            // Not in the replica: a link created a moment ago may be, so the cache (whose negative caching
            // keeps unknown slugs off Redis) answers, exactly as without a replica.
            Some(ReplicaLookup::Absent | ReplicaLookup::Unknown) | None => {
                let lookup = match self.cache.get_cached(slug) {
                    Some(hit) => hit,
                    None => blocking.run(|| self.cache.fetch(slug)),
                };
                match lookup {
                    Lookup::Hit(l) | Lookup::Stale(l) | Lookup::Miss(l) => {
                        from_cache = l;
                        &from_cache
                    }
                    Lookup::Absent | Lookup::Invalid => return Self::reply(404, Outcome::NotFound),
                    // Redis cannot be asked: the replica's copy, if recent enough, beats a 503.
                    Lookup::Unavailable => match self.replica.as_deref().and_then(|r| r.stale(slug)) {
                        Some(l) => {
                            from_replica = l;
                            &from_replica
                        }
                        None => return Self::reply(503, Outcome::Unavailable),
                    },
                }
            }
        };

        // The blocklist is in memory (a read lock and a bisection): a click never waits on Redis for it.
        let addr = client_addr(req.forwarded_for, req.peer_ip, self.trusted_proxies);
        let blocked = addr.is_some_and(|ip| self.blocklist.contains(ip));
        let ua = self.classify(user_agent);
        // A trusted CDN header wins; without one (behind a plain load balancer) the address's country, from memory.
        let country =
            country_from(req.country).or_else(|| self.geoip.as_deref().zip(addr).and_then(|(g, ip)| g.country(ip)));
        let ts = now_ms();
        // A blocked click goes where no route would send it: the link's fallback, or nowhere (403).
        let (template, dest, fallback, capped) = if blocked {
            match (self.blocked_action, link.routes.fallback.as_ref()) {
                (BlockedAction::Fallback, Some(t)) => (Some(t), 0, true, false),
                _ => (None, 0, false, false),
            }
        } else {
            match choose(
                link,
                ts / 1000,
                country.as_deref(),
                ua.device,
                &ua.os,
                fastrand::u32(..),
            ) {
                Choice::Dest { index, template, .. } => (Some(template), index, false, false),
                Choice::Fallback(t) => (Some(t), 0, true, false),
                Choice::Capped(t) => (Some(t), 0, false, true),
                Choice::NoRoute => return Self::reply(404, Outcome::NoRoute),
            }
        };

        // Sealed into the ClickID, so a conversion on this click can be told apart (and refused) without the click.
        let flags = if ua.bot { FLAG_BOT } else { 0 } | if blocked { FLAG_BLOCKED } else { 0 };
        let click_id = match self.codec.generate_flagged(link.id, ts, flags) {
            Ok(id) => id,
            // Link ids are checked when the config is decoded, so only the OS's randomness can fail here.
            Err(_) => return Self::reply(503, Outcome::Unavailable),
        };
        let location = template.map(|template| {
            let subs = [
                query.subs[0].as_deref(),
                query.subs[1].as_deref(),
                query.subs[2].as_deref(),
                query.subs[3].as_deref(),
                query.subs[4].as_deref(),
            ];
            let values = MacroValues {
                click_id: &click_id,
                link_id: link.id,
                offer_id: link.offer_id,
                aff_id: link.affiliate_id,
                subs,
                country: country.as_deref(),
                device: ua.device,
                os: &ua.os,
                ts_ms: ts,
                params: Some(&query.params),
            };
            let mut location = String::with_capacity(256);
            template.render(&values, &mut location);
            location
        });
        let status = if location.is_some() { 302 } else { 403 };

        let outcome = if blocked {
            Outcome::Blocked
        } else if fallback {
            Outcome::Fallback
        } else if capped {
            Outcome::Capped
        } else if ua.bot {
            Outcome::Bot
        } else {
            Outcome::Redirect
        };
        if req.head {
            return ClickResponse {
                status,
                location,
                set_cookie: None,
                outcome: Outcome::Head,
            };
        }

        let Query {
            subs: [s1, s2, s3, s4, s5],
            params,
        } = query;
        let event = ClickEvent {
            v: 1,
            click_id,
            ts,
            link_id: link.id,
            offer_id: link.offer_id,
            aff_id: link.affiliate_id,
            slug: req.slug.to_owned(),
            method: "GET".to_owned(),
            ip: addr.map(|ip| ip_text(ip, self.anonymize_ip)),
            ua: user_agent.map(str::to_owned),
            referer: referer.map(str::to_owned),
            country,
            device: ua.device.to_owned(),
            os: ua.os.clone(),
            bot: ua.bot,
            sub1: s1,
            sub2: s2,
            sub3: s3,
            sub4: s4,
            sub5: s5,
            params,
            dest,
            fallback,
            blocked,
            capped,
        };
        match self.buffer.push(&event) {
            Ok(()) => {
                self.stats.events_buffered.fetch_add(1, Relaxed);
            }
            Err(PushError::Closed) => return Self::reply(503, Outcome::Closed),
            Err(PushError::Full) => {
                // The shipper spills long before this; a full buffer means SQS and Redis are both gone.
                self.stats.events_dropped.fetch_add(1, Relaxed);
                return Self::reply(503, Outcome::Overloaded);
            }
        }
        // A blocked client gets no ClickID to keep: nothing it does later should lead back to this click.
        let set_cookie = (link.cookie && !blocked).then(|| {
            let mut c = String::with_capacity(self.cookie_prefix.len() + 40 + self.cookie_suffix.len());
            c.push_str(&self.cookie_prefix);
            c.push_str(&event.click_id);
            c.push_str(&self.cookie_suffix);
            c
        });
        ClickResponse {
            status,
            location,
            set_cookie,
            outcome,
        }
    }

    fn classify(&self, user_agent: Option<&str>) -> Arc<UaInfo> {
        let key = user_agent.unwrap_or("");
        if key.len() > crate::ua::MAX_UA_LEN {
            // Rare and possibly hostile: not worth memory in the cache.
            return Arc::new(classify(user_agent));
        }
        if let Some(info) = self.ua_cache.get(key) {
            return info;
        }
        let info = Arc::new(classify(user_agent));
        self.ua_cache.insert(key.to_owned(), Arc::clone(&info));
        info
    }

    /// Every buffered event, packed into SQS message bodies; the buffer is left empty.
    pub fn take_bodies(&self, max_body_bytes: usize) -> Vec<String> {
        let lines = self.buffer.take();
        if lines.is_empty() {
            return Vec::new();
        }
        pack(&lines, max_body_bytes)
    }

    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Refuses further clicks (503) so that a final flush covers every click that got a 302.
    pub fn close(&self) {
        self.buffer.close();
    }

    pub fn is_closed(&self) -> bool {
        self.buffer.is_closed()
    }

    pub fn ping(&self) -> Result<(), CoreError> {
        self.cache.ping()
    }

    /// Starts the invalidation listener and its followers (which a first click or ping would otherwise do) and
    /// waits up to `wait` for the first read of the IP blocklist, so that a process that reports ready checks
    /// its first click against the list. False if the list could not be read in time (Redis down): clicks are
    /// then served unchecked until it is, which the loader keeps trying.
    pub fn start(&self, wait: Duration) -> bool {
        self.cache.start();
        self.blocklist.wait_loaded(wait)
    }

    /// The IP blocklist in force.
    pub fn blocklist(&self) -> &IpBlocklist {
        &self.blocklist
    }

    pub fn invalidate(&self, slug: &str) {
        self.cache.invalidate(slug);
        if let Some(r) = &self.replica {
            r.changed(slug);
        }
    }

    /// The link replica's state (None without one).
    pub fn replica_state(&self) -> Option<ReplicaState> {
        self.replica.as_deref().map(Replica::state)
    }

    pub fn codec(&self) -> &ClickIdCodec {
        &self.codec
    }

    pub fn stats(&self) -> StatsSnapshot {
        let s = &self.stats;
        let mut cumulative = 0;
        let mut latency_buckets = Vec::with_capacity(LATENCY_BUCKETS_US.len());
        for (i, bound) in LATENCY_BUCKETS_US.iter().enumerate() {
            cumulative += s.latency_buckets[i].load(Relaxed);
            latency_buckets.push((*bound, cumulative));
        }
        let latency_count = cumulative + s.latency_buckets[LATENCY_BUCKETS_US.len()].load(Relaxed);
        StatsSnapshot {
            outcomes: Outcome::ALL
                .iter()
                .map(|o| (o.name(), s.outcomes[*o as usize].load(Relaxed)))
                .collect(),
            latency_buckets,
            latency_count,
            latency_sum_seconds: s.latency_sum_ns.load(Relaxed) as f64 / 1e9,
            events_buffered_total: s.events_buffered.load(Relaxed),
            events_dropped_total: s.events_dropped.load(Relaxed),
            buffer_depth: self.buffer.len() as u64,
            cache: self.cache.stats(),
            replica: self.replica.as_deref().map(Replica::stats).unwrap_or_default(),
            ipblock: self.blocklist.stats(),
            geoip: self.geoip.as_deref().map(GeoIp::stats).unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::unpack;
    use adclick_testkit::Server;

    const IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 \
                          (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1";

    fn tracker(server: &Server, buffer_max_events: usize) -> Tracker {
        let mut cache = CacheConfig::new(server.url());
        cache.connect_timeout = Duration::from_millis(500);
        cache.io_timeout = Duration::from_millis(300);
        Tracker::new(tracker_config(cache, buffer_max_events)).unwrap()
    }

    fn tracker_config(cache: CacheConfig, buffer_max_events: usize) -> TrackerConfig {
        TrackerConfig {
            cache,
            key_id: 1,
            secret: b"test-secret".to_vec(),
            previous: None,
            trusted_proxies: 0,
            anonymize_ip: false,
            cookie_name: "adclick_cid".into(),
            cookie_max_age: Duration::from_secs(3600),
            cookie_domain: None,
            cookie_secure: true,
            buffer_max_events,
            replica_max_bytes: 0,
            replica_resync: Duration::from_secs(300),
            replica_nice: 0,
            blocked_action: BlockedAction::Fallback,
            geoip: None,
        }
    }

    fn req<'a>(slug: &'a str, query: Vec<(&'a str, &'a str)>) -> ClickRequest<'a, Vec<(&'a str, &'a str)>> {
        ClickRequest {
            head: false,
            slug,
            query,
            user_agent: Some(IPHONE),
            referer: None,
            forwarded_for: None,
            peer_ip: Some("192.0.2.1"),
            country: Some("de"),
        }
    }

    const LINK: &str = r#"{"v":1,"id":42,"slug":"s","offer_id":7,"affiliate_id":3,"cookie":true,
        "url":"https://shop.example/p?cid={click_id}&s1={sub1}&c={country}&d={device}"}"#;

    #[test]
    fn decodes_query_components_strictly() {
        assert_eq!(decode_component("a%20b+c", 64).as_deref(), Some("a b c"));
        assert_eq!(decode_component("%C3%A9", 64).as_deref(), Some("é"));
        assert_eq!(decode_component("", 64).as_deref(), Some(""));
        for bad in ["%", "%Z", "%ZZ", "a%2", "%C3%28", "%0D%0A", "%00", "x%7F"] {
            assert_eq!(decode_component(bad, 64), None, "{bad}");
        }
        assert_eq!(decode_component(&"a".repeat(65), 64), None);
        assert_eq!(decode_component(&"a".repeat(64), 64).map(|s| s.len()), Some(64));
    }

    #[test]
    fn maps_sub_ids_and_keeps_other_params() {
        let q = parse_query(vec![("sub1", "a"), ("sub5", "e"), ("gclid", "G"), ("", "ignored")]).unwrap();
        assert_eq!(q.subs[0].as_deref(), Some("a"));
        assert_eq!(q.subs[4].as_deref(), Some("e"));
        assert_eq!(q.subs[1], None);
        assert_eq!(q.params.get("gclid").map(String::as_str), Some("G"));
        assert_eq!(q.params.len(), 1);
        let many: Vec<(String, String)> = (0..=MAX_QUERY_PARAMS).map(|i| (format!("p{i}"), "v".into())).collect();
        assert!(parse_query(many.iter().map(|(k, v)| (k.as_str(), v.as_str()))).is_none());
    }

    #[test]
    fn forwards_the_clicks_own_parameters_and_still_records_them() {
        let server = Server::start();
        server.set(
            "pp",
            r#"{"v":1,"id":43,"slug":"pp","url":"https://shop.example/p?src={p:clickid}&g={p:gclid}&n={p:none}"}"#,
        );
        let t = tracker(&server, 100);
        let r = t.click(req("pp", vec![("clickid", "abc"), ("gclid", "G%20x%0D%0A")]), &InPlace);
        // A CR or LF in a parameter is refused with the request; a space is re-encoded.
        assert_eq!(r.status, 400);
        let r = t.click(
            req("pp", vec![("clickid", "abc"), ("gclid", "G+x%26y"), ("sub1", "s")]),
            &InPlace,
        );
        assert_eq!(r.status, 302);
        assert_eq!(
            r.location.as_deref(),
            Some("https://shop.example/p?src=abc&g=G%20x%26y&n=")
        );
        let events = unpack(&t.take_bodies(262_144)[0]).unwrap();
        let params = &events[0].params;
        assert_eq!(params.get("clickid").map(String::as_str), Some("abc"));
        assert_eq!(params.get("gclid").map(String::as_str), Some("G x&y"));
    }

    #[test]
    fn click_redirects_records_and_sets_cookie() {
        let server = Server::start();
        server.set("s", LINK);
        let t = tracker(&server, 100);
        let r = t.click(req("s", vec![("sub1", "a%26b")]), &InPlace);
        assert_eq!(r.status, 302);
        assert_eq!(r.outcome, Outcome::Redirect);
        let location = r.location.unwrap();
        assert!(location.starts_with("https://shop.example/p?cid="), "{location}");
        assert!(location.ends_with("&s1=a%26b&c=DE&d=smartphone"), "{location}");
        let cid = &location["https://shop.example/p?cid=".len().."https://shop.example/p?cid=".len() + 40];
        let info = t.codec().verify(cid).unwrap();
        assert_eq!(info.link_id, 42);
        let cookie = r.set_cookie.unwrap();
        assert!(cookie.starts_with(&format!("adclick_cid={cid}; Path=/; Max-Age=3600; HttpOnly")));
        assert!(cookie.ends_with("; Secure"));

        let bodies = t.take_bodies(262_144);
        assert_eq!(bodies.len(), 1);
        let events = unpack(&bodies[0]).unwrap();
        assert_eq!(events.len(), 1);
        let e = &events[0];
        assert_eq!(
            (e.click_id.as_str(), e.link_id, e.offer_id, e.aff_id),
            (cid, 42, Some(7), Some(3))
        );
        assert_eq!(
            (e.sub1.as_deref(), e.country.as_deref(), e.ip.as_deref()),
            (Some("a&b"), Some("DE"), Some("192.0.2.1"))
        );
        assert_eq!(t.buffered(), 0);
    }

    #[test]
    fn head_redirects_without_an_event_and_bad_input_is_refused() {
        let server = Server::start();
        server.set("s", LINK);
        let t = tracker(&server, 100);
        let mut head = req("s", vec![]);
        head.head = true;
        let r = t.click(head, &InPlace);
        assert_eq!((r.status, r.outcome, r.set_cookie), (302, Outcome::Head, None));
        assert_eq!(t.buffered(), 0);

        assert_eq!(t.click(req("bad slug", vec![]), &InPlace).status, 400);
        assert_eq!(t.click(req(&"a".repeat(65), vec![]), &InPlace).status, 400);
        assert_eq!(
            t.click(req("s", vec![("sub1", "%0D%0ALocation:x")]), &InPlace).status,
            400
        );
        let mut crlf_ua = req("s", vec![]);
        crlf_ua.user_agent = Some("a\r\nb");
        assert_eq!(t.click(crlf_ua, &InPlace).status, 400);
        assert_eq!(t.click(req("unknown", vec![]), &InPlace).status, 404);
        assert_eq!(t.buffered(), 0);
        let stats = t.stats();
        let count = |name| stats.outcomes.iter().find(|(n, _)| *n == name).unwrap().1;
        assert_eq!((count("head"), count("bad_request"), count("not_found")), (1, 4, 1));
        assert_eq!(stats.latency_count, 6);
    }

    #[test]
    fn full_buffer_and_closed_tracker_answer_503_without_losing_accepted_events() {
        let server = Server::start();
        server.set("s", LINK);
        let t = tracker(&server, 2);
        assert_eq!(t.click(req("s", vec![]), &InPlace).status, 302);
        assert_eq!(t.click(req("s", vec![]), &InPlace).status, 302);
        let full = t.click(req("s", vec![]), &InPlace);
        assert_eq!((full.status, full.outcome), (503, Outcome::Overloaded));
        assert_eq!(t.stats().events_dropped_total, 1);
        t.close();
        let closed = t.click(req("s", vec![]), &InPlace);
        assert_eq!((closed.status, closed.outcome), (503, Outcome::Closed));
        let bodies = t.take_bodies(262_144);
        assert_eq!(bodies.iter().map(|b| unpack(b).unwrap().len()).sum::<usize>(), 2);
    }

    #[test]
    fn paused_link_goes_to_its_fallback_and_is_flagged() {
        let server = Server::start();
        server.set(
            "p",
            r#"{"v":1,"id":5,"slug":"p","status":"paused","url":"https://a.example/","fallback_url":"https://fb.example/?c={click_id}"}"#,
        );
        let t = tracker(&server, 10);
        let r = t.click(req("p", vec![]), &InPlace);
        assert_eq!((r.status, r.outcome), (302, Outcome::Fallback));
        assert!(r.location.unwrap().starts_with("https://fb.example/?c="));
        let events = unpack(&t.take_bodies(262_144)[0]).unwrap();
        assert!(events[0].fallback);
    }

    #[test]
    fn a_capped_link_sends_clicks_to_its_cap_url_and_records_them_capped() {
        let server = Server::start();
        let until = now_ms() / 1000 + 3600;
        server.set(
            "cap",
            &format!(
                r#"{{"v":1,"id":6,"slug":"cap","url":"https://a.example/","capped_until":{until},"cap_url":"https://other.example/c/x?s={{sub1}}"}}"#
            ),
        );
        server.set(
            "was",
            r#"{"v":1,"id":7,"slug":"was","url":"https://a.example/","capped_until":1,"cap_url":"https://other.example/"}"#,
        );
        let t = tracker(&server, 10);
        let r = t.click(req("cap", vec![("sub1", "pub 1")]), &InPlace);
        assert_eq!((r.status, r.outcome), (302, Outcome::Capped));
        assert_eq!(r.location.as_deref(), Some("https://other.example/c/x?s=pub%201"));
        // A cap whose reset has passed is no cap: the tracker's own clock ends it.
        let r = t.click(req("was", vec![]), &InPlace);
        assert_eq!(
            (r.status, r.outcome, r.location.as_deref()),
            (302, Outcome::Redirect, Some("https://a.example/"))
        );
        let events = unpack(&t.take_bodies(262_144)[0]).unwrap();
        let flags: Vec<(bool, bool)> = events.iter().map(|e| (e.capped, e.fallback)).collect();
        assert_eq!(flags, [(true, false), (false, false)]);
    }

    const SLACKBOT: &str = "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)";

    fn block(server: &Server, cidrs: &str) {
        redis::cmd("SET")
            .arg(IPBLOCK_KEY)
            .arg(format!(r#"{{"v":1,"cidrs":{cidrs}}}"#))
            .query::<()>(&mut server.conn())
            .unwrap();
    }

    fn cid_in(location: &str) -> &str {
        let at = location.find("cid=").expect("a cid") + 4;
        &location[at..at + 40]
    }

    /// `r`, from the peer `ip`.
    fn from<'a>(
        ip: &'a str,
        r: ClickRequest<'a, Vec<(&'a str, &'a str)>>,
    ) -> ClickRequest<'a, Vec<(&'a str, &'a str)>> {
        ClickRequest { peer_ip: Some(ip), ..r }
    }

    #[test]
    fn bot_clicks_carry_the_bot_flag_and_others_stay_version_1() {
        let server = Server::start();
        server.set("s", LINK);
        let t = tracker(&server, 10);
        let mut bot = req("s", vec![]);
        bot.user_agent = Some(SLACKBOT);
        let r = t.click(bot, &InPlace);
        assert_eq!((r.status, r.outcome), (302, Outcome::Bot));
        let info = t.codec().verify(cid_in(&r.location.unwrap())).unwrap();
        assert_eq!((info.version, info.flags, info.link_id), (2, FLAG_BOT, 42));
        let human = t.click(req("s", vec![]), &InPlace);
        let info = t.codec().verify(cid_in(&human.location.unwrap())).unwrap();
        assert_eq!((info.version, info.flags), (1, 0));
        let events = unpack(&t.take_bodies(262_144)[0]).unwrap();
        assert!(events[0].bot && !events[0].blocked);
        assert!(!events[1].bot && !events[1].blocked);
    }

    #[test]
    fn a_blocked_address_gets_the_fallback_or_403_and_its_click_is_recorded_as_blocked() {
        let server = Server::start();
        server.set(
            "s",
            &LINK.replace(
                r#""cookie":true,"#,
                r#""cookie":true,"fallback_url":"https://fb.example/?cid={click_id}","#,
            ),
        );
        server.set(
            "nofb",
            &LINK.replace(r#""id":42,"slug":"s""#, r#""id":43,"slug":"nofb""#),
        );
        block(&server, r#"["203.0.113.0/24","2001:db8::/32"]"#);
        let t = tracker(&server, 100);
        assert!(t.start(Duration::from_secs(5)), "the blocklist is read at start");

        let r = t.click(from("203.0.113.9", req("s", vec![("sub1", "x")])), &InPlace);
        assert_eq!(
            (r.status, r.outcome, r.set_cookie.as_deref()),
            (302, Outcome::Blocked, None)
        );
        let location = r.location.unwrap();
        assert!(location.starts_with("https://fb.example/?cid="), "{location}");
        let info = t.codec().verify(cid_in(&location)).unwrap();
        assert_eq!((info.version, info.flags), (2, FLAG_BLOCKED));

        // A blocked bot carries both flags.
        let mut bot = from("2001:db8::7", req("s", vec![]));
        bot.user_agent = Some(SLACKBOT);
        let r = t.click(bot, &InPlace);
        assert_eq!((r.status, r.outcome), (302, Outcome::Blocked));
        assert_eq!(
            t.codec().verify(cid_in(&r.location.unwrap())).unwrap().flags,
            FLAG_BOT | FLAG_BLOCKED
        );

        // No fallback: 403, recorded all the same.
        let r = t.click(from("203.0.113.10", req("nofb", vec![])), &InPlace);
        assert_eq!((r.status, r.location, r.outcome), (403, None, Outcome::Blocked));

        // HEAD answers alike and records nothing.
        let mut head = from("203.0.113.9", req("s", vec![]));
        head.head = true;
        let r = t.click(head, &InPlace);
        assert_eq!((r.status, r.outcome), (302, Outcome::Head));
        assert!(r.location.unwrap().starts_with("https://fb.example/"));

        // Neighbours of the blocked network are served as usual.
        let r = t.click(from("203.0.114.1", req("s", vec![])), &InPlace);
        assert_eq!((r.status, r.outcome), (302, Outcome::Redirect));
        assert!(r.location.unwrap().starts_with("https://shop.example/"));
        assert!(r.set_cookie.is_some());

        let events = unpack(&t.take_bodies(262_144)[0]).unwrap();
        let flags: Vec<(bool, bool, bool)> = events.iter().map(|e| (e.blocked, e.fallback, e.bot)).collect();
        assert_eq!(
            flags,
            [
                (true, true, false),
                (true, true, true),
                (true, false, false),
                (false, false, false)
            ]
        );
        assert_eq!(events[0].sub1.as_deref(), Some("x"));
        assert_eq!(events[0].ip.as_deref(), Some("203.0.113.9"));
        assert_eq!(events[2].link_id, 43);
        let stats = t.stats();
        let count = |name| stats.outcomes.iter().find(|(n, _)| *n == name).unwrap().1;
        assert_eq!((count("blocked"), count("head"), count("redirect")), (3, 1, 1));
        assert_eq!((stats.ipblock.entries, stats.ipblock.ranges), (2, 2));
        assert!(stats.ipblock.loaded);
    }

    #[test]
    fn blocked_action_403_refuses_even_with_a_fallback_and_the_forwarded_address_is_the_one_checked() {
        let server = Server::start();
        server.set(
            "s",
            &LINK.replace(r#""cookie":true,"#, r#""fallback_url":"https://fb.example/","#),
        );
        block(&server, r#"["198.51.100.7"]"#);
        let mut cache = CacheConfig::new(server.url());
        cache.connect_timeout = Duration::from_millis(500);
        cache.io_timeout = Duration::from_millis(300);
        let t = Tracker::new(TrackerConfig {
            trusted_proxies: 1,
            anonymize_ip: true,
            blocked_action: "403".parse().unwrap(),
            ..tracker_config(cache, 100)
        })
        .unwrap();
        assert!(t.start(Duration::from_secs(5)));
        let mut proxied = from("10.0.0.1", req("s", vec![]));
        proxied.forwarded_for = Some("198.51.100.7");
        let r = t.click(proxied, &InPlace);
        assert_eq!((r.status, r.location, r.outcome), (403, None, Outcome::Blocked));
        // Behind the proxy, the peer is the proxy: its address is not the client's.
        let mut behind = from("198.51.100.7", req("s", vec![]));
        behind.forwarded_for = Some("192.0.2.5");
        let r = t.click(behind, &InPlace);
        assert_eq!((r.status, r.outcome), (302, Outcome::Redirect));
        let events = unpack(&t.take_bodies(262_144)[0]).unwrap();
        assert!(events[0].blocked && !events[0].fallback);
        // Checked on the full address, recorded anonymised; the ClickID is flagged though no one sees it.
        assert_eq!(events[0].ip.as_deref(), Some("198.51.100.0"));
        assert_eq!(t.codec().verify(&events[0].click_id).unwrap().flags, FLAG_BLOCKED);
        assert!(!events[1].blocked);
        assert!("teapot".parse::<BlockedAction>().is_err());
    }

    #[test]
    fn without_a_country_header_the_address_country_routes_the_click_and_fills_its_macro_and_event() {
        let Some(db) = std::env::var_os("ADCLICK_TEST_GEOIP_DB") else {
            panic!("ADCLICK_TEST_GEOIP_DB: the MMDB file `make install` fetches (run the tests with make test-rust)");
        };
        let server = Server::start();
        server.set(
            "g",
            r#"{"v":1,"id":42,"slug":"g","url":"https://shop.example/p?cid={click_id}&c={country}",
                "rules":[{"countries":["US"],"url":"https://us.example/?c={country}"}]}"#,
        );
        let mut cache = CacheConfig::new(server.url());
        cache.connect_timeout = Duration::from_millis(500);
        cache.io_timeout = Duration::from_millis(300);
        let t = Tracker::new(TrackerConfig {
            trusted_proxies: 1,
            geoip: Some(GeoIpConfig {
                path: db.into(),
                reload: Duration::from_secs(3600),
                nice: 0,
            }),
            ..tracker_config(cache, 100)
        })
        .unwrap();
        let behind_proxy = |xff: &'static str, country: Option<&'static str>| ClickRequest {
            forwarded_for: Some(xff),
            peer_ip: Some("10.0.0.1"),
            country,
            ..req("g", vec![])
        };
        // A US address behind the trusted proxy, no CDN header: the US rule, and "US" in the macro and the event.
        let r = t.click(behind_proxy("8.8.8.8", None), &InPlace);
        assert_eq!(r.location.as_deref(), Some("https://us.example/?c=US"));
        // The CDN header, when there is one, wins over the address.
        let r = t.click(behind_proxy("8.8.8.8", Some("de")), &InPlace);
        assert!(r.location.unwrap().ends_with("&c=DE"));
        // An address the database places elsewhere, or one with no country at all.
        let r = t.click(behind_proxy("81.2.69.142", None), &InPlace);
        assert!(r.location.unwrap().ends_with("&c=GB"));
        let r = t.click(behind_proxy("192.168.1.1", None), &InPlace);
        assert!(r.location.unwrap().ends_with("&c="));
        let events = unpack(&t.take_bodies(262_144)[0]).unwrap();
        let countries: Vec<Option<&str>> = events.iter().map(|e| e.country.as_deref()).collect();
        assert_eq!(countries, [Some("US"), Some("DE"), Some("GB"), None]);
        let st = t.stats().geoip;
        assert_eq!(
            (st.lookups, st.hits),
            (3, 2),
            "the header's click is not looked up: {st:?}"
        );

        // Without a database nothing changes: no header, no country.
        let plain = tracker(&server, 100);
        let mut click = req("g", vec![]);
        click.peer_ip = Some("8.8.8.8");
        click.country = None;
        let r = plain.click(click, &InPlace);
        assert!(r.location.unwrap().ends_with("&c="));
        assert_eq!(plain.stats().geoip, GeoIpStats::default());
    }

    #[test]
    fn with_a_replica_a_link_outside_the_cache_costs_no_redis_round_trip() {
        let mut server = Server::start();
        server.set("s", LINK);
        server.set("t", &LINK.replace(r#""id":42,"slug":"s""#, r#""id":43,"slug":"t""#));
        let mut cache = CacheConfig::new(server.url());
        cache.connect_timeout = Duration::from_millis(500);
        cache.io_timeout = Duration::from_millis(300);
        cache.retry_after = Duration::from_millis(200);
        let t = Tracker::new(TrackerConfig {
            replica_max_bytes: 16 << 20,
            ..tracker_config(cache, 100)
        })
        .unwrap();
        assert_eq!(t.click(req("s", vec![]), &InPlace).status, 302);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while t.replica_state() != Some(ReplicaState::Ready) {
            assert!(std::time::Instant::now() < deadline, "replica never loaded");
            std::thread::sleep(Duration::from_millis(5));
        }
        let misses = t.stats().cache.misses;
        let r = t.click(req("t", vec![]), &InPlace);
        assert_eq!(r.status, 302);
        assert_eq!(t.stats().cache.misses, misses, "answered from the replica");
        // A slug the replica lacks is the cache's: one Redis read, then the negative cache.
        assert_eq!(t.click(req("unknown", vec![]), &InPlace).status, 404);
        assert_eq!(t.click(req("unknown", vec![]), &InPlace).status, 404);
        assert_eq!(t.stats().cache.misses, misses + 1);
        assert_eq!(t.stats().cache.negative_hits, 1);
        assert!(t.stats().replica.hits >= 1 && t.stats().replica.absent >= 2);
        // A link created after the load is served at once, before its invalidation reaches the replica.
        server.set(
            "fresh",
            &LINK.replace(r#""id":42,"slug":"s""#, r#""id":44,"slug":"fresh""#),
        );
        assert_eq!(t.click(req("fresh", vec![]), &InPlace).status, 302);
        // Redis gone for good: the links the replica holds are still served (stale), unknown ones are not.
        server.kill();
        while t.replica_state() != Some(ReplicaState::Stale) {
            assert!(
                std::time::Instant::now() < deadline + Duration::from_secs(10),
                "loss never noticed"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(t.click(req("t", vec![]), &InPlace).status, 302);
        assert_eq!(t.click(req("never-seen", vec![]), &InPlace).status, 503);
    }
}
