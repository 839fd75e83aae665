//! The IP blocklist: addresses and networks whose clicks the tracker refuses, checked in memory on every click.
//!
//! The manager writes the whole list to Redis at [`IPBLOCK_KEY`] as `{"v": 1, "cidrs": ["203.0.113.0/24",
//! "2001:db8::/32", "198.51.100.7"]}` and then publishes [`IPBLOCK_MESSAGE`] on the invalidation channel (see
//! docs/contracts.md). A thread of its own (`adclick-ipblock`) reads the key when it starts, when that message, a
//! `*` or a new subscription (after a gap) comes through the link cache's listener (see [`Follower`]), and every
//! `resync` as a backstop, then swaps the new list in whole. A click never touches Redis for it.
//!
//! The list is two sorted vectors of non-overlapping, non-adjacent inclusive ranges (IPv4 and IPv6 apart, so
//! `::/0` blocks no IPv4 client), searched by bisection: O(log n) per click, whatever the networks look like.
//! While Redis is down the last list read stays in force; a value that does not decode (or a key of another type)
//! leaves the previous list in force too, and is counted (`invalid`) and logged.
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::{IpNet, Ipv4Net};
use parking_lot::{Condvar, Mutex, RwLock};
use serde::Deserialize;

use crate::cache::{bump, connect_with, Follower};
use crate::loader::Loader;
use crate::CoreError;

/// Redis key holding the blocklist (JSON); the manager is its only writer.
pub const IPBLOCK_KEY: &str = "adclick:ipblock";
/// Published on the invalidation channel after each write of [`IPBLOCK_KEY`]. No valid slug starts with `!`, so
/// trackers that predate the blocklist ignore it.
pub const IPBLOCK_MESSAGE: &str = "!ipblock";
/// The format version of the value this build reads.
pub const IPBLOCK_VERSION: u8 = 1;
/// After a failed read the loader tries again this soon: a change may have been missed.
const RETRY: Duration = Duration::from_secs(1);

/// Inclusive ranges of addresses, sorted, merged: what a lookup bisects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ranges {
    /// IPv4 ranges, widened to u128 so one merge and one search serve both families.
    v4: Vec<(u128, u128)>,
    v6: Vec<(u128, u128)>,
    /// Entries of the list as published (before merging).
    entries: usize,
}

#[derive(Deserialize)]
struct Published {
    v: u8,
    cidrs: Vec<String>,
}

/// One entry: a network in CIDR notation (host bits are dropped) or a bare address. An IPv4-mapped IPv6 network
/// (`::ffff:198.51.100.0/120`) is the IPv4 network it maps, since clients are compared in their IPv4 form.
fn parse_entry(text: &str) -> Result<IpNet, CoreError> {
    let text = text.trim();
    let net = text
        .parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| CoreError::Config(format!("ip blocklist: {text:?} is neither an address nor a network")))?
        .trunc();
    if let IpNet::V6(v6) = net {
        if v6.prefix_len() >= 96 {
            if let Some(v4) = v6.addr().to_ipv4_mapped() {
                let v4 = Ipv4Net::new(v4, v6.prefix_len() - 96).expect("a prefix of 96..=128 less 96 fits IPv4");
                return Ok(IpNet::V4(v4));
            }
        }
    }
    Ok(net)
}

/// Sorts and merges overlapping or adjacent ranges, so that at most one range can hold an address.
fn merged(mut ranges: Vec<(u128, u128)>) -> Vec<(u128, u128)> {
    ranges.sort_unstable();
    let mut out: Vec<(u128, u128)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match out.last_mut() {
            Some(last) if start <= last.1.saturating_add(1) => last.1 = last.1.max(end),
            _ => out.push((start, end)),
        }
    }
    out.shrink_to_fit();
    out
}

fn holds(ranges: &[(u128, u128)], x: u128) -> bool {
    // The first range starting after x; the one before it is the only one that can hold x.
    let i = ranges.partition_point(|&(start, _)| start <= x);
    i > 0 && x <= ranges[i - 1].1
}

impl Ranges {
    /// The ranges of these entries; any entry that is neither an address nor a network refuses the whole list.
    pub fn from_entries<'a>(entries: impl IntoIterator<Item = &'a str>) -> Result<Self, CoreError> {
        let (mut v4, mut v6, mut count) = (Vec::new(), Vec::new(), 0);
        for text in entries {
            count += 1;
            match parse_entry(text)? {
                IpNet::V4(n) => v4.push((u32::from(n.network()).into(), u32::from(n.broadcast()).into())),
                IpNet::V6(n) => v6.push((n.network().into(), n.broadcast().into())),
            }
        }
        Ok(Self {
            v4: merged(v4),
            v6: merged(v6),
            entries: count,
        })
    }

    /// Decodes the value of [`IPBLOCK_KEY`].
    pub fn decode(bytes: &[u8]) -> Result<Self, CoreError> {
        let published: Published =
            serde_json::from_slice(bytes).map_err(|e| CoreError::Config(format!("ip blocklist: {e}")))?;
        if published.v != IPBLOCK_VERSION {
            return Err(CoreError::Config(format!(
                "ip blocklist: version {} is not {IPBLOCK_VERSION}",
                published.v
            )));
        }
        Self::from_entries(published.cidrs.iter().map(String::as_str))
    }

    /// Whether `ip` is in a listed network. IPv4 clients are expected in their IPv4 form (as `client_addr`
    /// gives them); an IPv4-mapped IPv6 address is looked up as the IPv4 address it maps all the same.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip.to_canonical() {
            IpAddr::V4(v4) => holds(&self.v4, u32::from(v4).into()),
            IpAddr::V6(v6) => holds(&self.v6, v6.into()),
        }
    }

    /// Entries of the list as published.
    pub fn entries(&self) -> usize {
        self.entries
    }

    /// Disjoint ranges after merging (what a lookup bisects).
    pub fn ranges(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }
}

#[derive(Debug, Clone)]
pub struct IpBlockConfig {
    pub redis_url: String,
    /// The Redis key, [`IPBLOCK_KEY`].
    pub key: String,
    /// A re-read this often, the backstop for a lost message (the link replica's resync).
    pub resync: Duration,
    pub connect_timeout: Duration,
    /// Read and write timeout of the loader's GET.
    pub io_timeout: Duration,
    /// Niceness of the loader thread.
    pub nice: i32,
}

/// Counters and sizes for /metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IpBlockStats {
    /// Entries of the list in force, as published.
    pub entries: u64,
    /// Its disjoint ranges after merging.
    pub ranges: u64,
    /// Reads of the key that Redis answered, whatever they found.
    pub loads: u64,
    /// Values that did not decode (the previous list stayed in force).
    pub invalid: u64,
    /// Failed Redis connections and commands of the loader.
    pub redis_errors: u64,
    /// Whether the key has been read once at least.
    pub loaded: bool,
}

#[derive(Default)]
struct Counters {
    loads: AtomicU64,
    invalid: AtomicU64,
    redis_errors: AtomicU64,
}

struct Inner {
    cfg: IpBlockConfig,
    client: redis::Client,
    ranges: RwLock<Arc<Ranges>>,
    /// Set (and `read_once` notified) when Redis has answered a read of the key for the first time.
    loaded: Mutex<bool>,
    read_once: Condvar,
    stop: AtomicBool,
    counters: Counters,
}

/// The blocklist of one tracker process; see the module docs.
pub struct IpBlocklist {
    inner: Arc<Inner>,
    loader: Loader<()>,
}

impl IpBlocklist {
    /// Connects to nothing and starts no thread: [`Follower::start`] does, with the cache's listener.
    pub fn new(cfg: IpBlockConfig) -> Result<Self, CoreError> {
        let client = redis::Client::open(cfg.redis_url.as_str())
            .map_err(|e| CoreError::Config(format!("ip blocklist: bad redis_url: {e}")))?;
        if cfg.resync.is_zero() || cfg.io_timeout.is_zero() || cfg.connect_timeout.is_zero() {
            return Err(CoreError::Config(
                "ip blocklist: resync and timeouts must be positive".into(),
            ));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                cfg,
                client,
                ranges: RwLock::new(Arc::new(Ranges::default())),
                loaded: Mutex::new(false),
                read_once: Condvar::new(),
                stop: AtomicBool::new(false),
                counters: Counters::default(),
            }),
            loader: Loader::new(),
        })
    }

    /// The click path's question: a read lock and a bisection.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.inner.ranges.read().contains(ip)
    }

    /// The list in force.
    pub fn ranges(&self) -> Arc<Ranges> {
        Arc::clone(&self.inner.ranges.read())
    }

    /// Waits up to `limit` for the first read of the key; true once it has happened.
    pub fn wait_loaded(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut loaded = self.inner.loaded.lock();
        while !*loaded {
            if self.inner.read_once.wait_until(&mut loaded, deadline).timed_out() {
                break;
            }
        }
        *loaded
    }

    pub fn stats(&self) -> IpBlockStats {
        let s = &*self.inner;
        let ranges = self.ranges();
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        IpBlockStats {
            entries: ranges.entries() as u64,
            ranges: ranges.ranges() as u64,
            loads: get(&s.counters.loads),
            invalid: get(&s.counters.invalid),
            redis_errors: get(&s.counters.redis_errors),
            loaded: *s.loaded.lock(),
        }
    }

    fn reload(&self) {
        self.loader.send(());
    }

    /// Stops the loader thread and waits for it. Idempotent.
    pub fn shutdown(&self) {
        self.loader.stop(&self.inner.stop);
    }
}

impl Drop for IpBlocklist {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Follower for IpBlocklist {
    fn start(&self) {
        if self.inner.stop.load(Ordering::Acquire) {
            return;
        }
        let inner = Arc::clone(&self.inner);
        self.loader.start("adclick-ipblock", move |rx| inner.run(&rx));
    }

    fn subscribed(&self) {
        // Whatever was published during the gap was missed.
        self.reload();
    }

    fn lost(&self) {
        // The list in force stays: an address blocked a moment ago is still blocked while Redis is away.
    }

    fn changed(&self, slug: &str) {
        if slug == IPBLOCK_MESSAGE {
            self.reload();
        }
    }

    fn changed_all(&self) {
        self.reload();
    }
}

impl Inner {
    fn run(&self, rx: &Receiver<()>) {
        if let Err(e) = crate::lower_thread_priority(self.cfg.nice) {
            log_warning(&format!("could not lower the ip blocklist loader's priority: {e}"));
        }
        let mut conn: Option<redis::Connection> = None;
        // Read at once: the thread starts with the listener, before its first subscription.
        let mut due = true;
        let mut next_resync = Instant::now() + self.cfg.resync;
        loop {
            if self.stop.load(Ordering::Acquire) {
                return;
            }
            if due {
                // Requests that queued up meanwhile are all answered by this one read.
                while rx.try_recv().is_ok() {}
                if self.load(&mut conn) {
                    due = false;
                    next_resync = Instant::now() + self.cfg.resync;
                } else {
                    bump(&self.counters.redis_errors);
                    conn = None;
                }
            }
            let wait = if due {
                RETRY
            } else {
                next_resync.saturating_duration_since(Instant::now())
            };
            match rx.recv_timeout(wait) {
                Ok(()) | Err(RecvTimeoutError::Timeout) => due = true,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// Reads the key and swaps its list in; false when Redis did not answer.
    fn load(&self, conn: &mut Option<redis::Connection>) -> bool {
        if conn.is_none() {
            match connect_with(&self.client, self.cfg.connect_timeout, self.cfg.io_timeout) {
                Ok(c) => *conn = Some(c),
                Err(_) => return false,
            }
        }
        let c = conn.as_mut().expect("connected above");
        let decoded = match redis::cmd("GET").arg(&self.cfg.key).query::<Option<Vec<u8>>>(c) {
            // No key: the manager has never written a list, or removed it; nothing is blocked.
            Ok(None) => Ok(Ranges::default()),
            Ok(Some(bytes)) => Ranges::decode(&bytes),
            Err(e) if e.code() == Some("WRONGTYPE") => Err(CoreError::Config(format!(
                "ip blocklist: {} is not a string",
                self.cfg.key
            ))),
            Err(_) => return false,
        };
        match decoded {
            Ok(ranges) => *self.ranges.write() = Arc::new(ranges),
            Err(e) => {
                bump(&self.counters.invalid);
                log_warning(&format!("{e}; the previous list stays in force"));
            }
        }
        bump(&self.counters.loads);
        let mut loaded = self.loaded.lock();
        if !*loaded {
            *loaded = true;
            self.read_once.notify_all();
        }
        true
    }
}

/// A warning on stderr in the tracker's log format (the loader has no Python logger to call).
fn log_warning(message: &str) {
    eprintln!("adclick.tracker.ipblock WARNING {message}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::{CacheConfig, LinkCache};
    use adclick_testkit::{wait_for, Server};
    use std::thread;

    fn ranges(entries: &[&str]) -> Ranges {
        Ranges::from_entries(entries.iter().copied()).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v4_networks_and_addresses_match_exactly_their_span() {
        let r = ranges(&["203.0.113.0/24", "198.51.100.7", "10.0.0.0/8"]);
        for inside in [
            "203.0.113.0",
            "203.0.113.255",
            "203.0.113.77",
            "198.51.100.7",
            "10.0.0.0",
            "10.255.255.255",
        ] {
            assert!(r.contains(ip(inside)), "{inside}");
        }
        for outside in [
            "203.0.112.255",
            "203.0.114.0",
            "198.51.100.6",
            "198.51.100.8",
            "9.255.255.255",
            "11.0.0.0",
        ] {
            assert!(!r.contains(ip(outside)), "{outside}");
        }
        assert_eq!((r.entries(), r.ranges()), (3, 3));
    }

    #[test]
    fn v6_networks_and_addresses_match_exactly_their_span() {
        let r = ranges(&["2001:db8::/32", "2001:db9::1"]);
        assert!(r.contains(ip("2001:db8::")));
        assert!(r.contains(ip("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff")));
        assert!(r.contains(ip("2001:db8:1234::5")));
        assert!(r.contains(ip("2001:db9::1")));
        assert!(!r.contains(ip("2001:db7:ffff:ffff:ffff:ffff:ffff:ffff")));
        assert!(!r.contains(ip("2001:db9::")));
        assert!(!r.contains(ip("2001:db9::2")));
    }

    #[test]
    fn families_stay_apart() {
        let all_v6 = ranges(&["::/0"]);
        assert!(all_v6.contains(ip("2001:db8::1")));
        assert!(
            !all_v6.contains(ip("203.0.113.9")),
            "::/0 blocks every IPv6 client, no IPv4 one"
        );
        let all_v4 = ranges(&["0.0.0.0/0"]);
        assert!(all_v4.contains(ip("0.0.0.0")) && all_v4.contains(ip("255.255.255.255")));
        assert!(!all_v4.contains(ip("::1")));
        // The extremes of each family, where a careless bound overflows.
        let ends = ranges(&["255.255.255.255", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "::"]);
        assert!(ends.contains(ip("255.255.255.255")) && !ends.contains(ip("255.255.255.254")));
        assert!(ends.contains(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")) && ends.contains(ip("::")));
        assert!(!ends.contains(ip("::1")) && !ends.contains(ip("0.0.0.0")));
    }

    #[test]
    fn ipv4_mapped_entries_and_clients_are_ipv4() {
        let r = ranges(&["::ffff:198.51.100.0/120", "::ffff:203.0.113.9"]);
        assert!(r.contains(ip("198.51.100.200")));
        assert!(r.contains(ip("203.0.113.9")));
        assert!(
            r.contains(ip("::ffff:203.0.113.9")),
            "a dual-stack socket's form of an IPv4 client"
        );
        assert!(!r.contains(ip("203.0.113.10")));
        let plain = ranges(&["203.0.113.0/24"]);
        assert!(plain.contains(ip("::ffff:203.0.113.1")));
    }

    #[test]
    fn overlapping_nested_and_adjacent_entries_merge() {
        let r = ranges(&[
            "10.0.0.0/24",
            "10.0.1.0/24",   // adjacent: one range with the first
            "10.0.0.128/25", // nested
            "10.0.0.5",      // nested
            "10.0.3.0/24",   // a gap of one /24 before it
            "10.0.2.255",    // closes the gap but for 10.0.2.0..=10.0.2.254
        ]);
        assert_eq!(r.entries(), 6);
        assert_eq!(r.ranges(), 2, "{r:?}");
        for inside in ["10.0.0.0", "10.0.1.255", "10.0.2.255", "10.0.3.0", "10.0.3.255"] {
            assert!(r.contains(ip(inside)), "{inside}");
        }
        for outside in ["10.0.2.0", "10.0.2.254", "10.0.4.0", "9.255.255.255"] {
            assert!(!r.contains(ip(outside)), "{outside}");
        }
    }

    #[test]
    fn host_bits_are_dropped_and_spaces_trimmed() {
        let r = ranges(&[" 203.0.113.77/24 ", "2001:db8::1/32"]);
        assert!(r.contains(ip("203.0.113.1")) && r.contains(ip("2001:db8:9::")));
    }

    #[test]
    fn decode_takes_the_published_format_only() {
        let r = Ranges::decode(br#"{"v":1,"cidrs":["203.0.113.0/24","2001:db8::/32","198.51.100.7"]}"#).unwrap();
        assert_eq!(r.entries(), 3);
        assert!(r.contains(ip("198.51.100.7")));
        assert!(Ranges::decode(br#"{"v":1,"cidrs":[]}"#).unwrap().is_empty());
        // Fields a newer manager may add are ignored.
        assert!(Ranges::decode(br#"{"v":1,"cidrs":["10.0.0.1"],"updated_at":1}"#).is_ok());
        for bad in [
            &br#"{"v":2,"cidrs":["10.0.0.1"]}"#[..],
            br#"{"v":1,"cidrs":["10.0.0.1","not an ip"]}"#,
            br#"{"v":1,"cidrs":["10.0.0.0/33"]}"#,
            br#"{"v":1,"cidrs":["2001:db8::/129"]}"#,
            br#"{"v":1,"cidrs":["10.0.0.1-10.0.0.9"]}"#,
            br#"{"v":1,"cidrs":[""]}"#,
            br#"{"v":1,"cidrs":[7]}"#,
            br#"{"v":1}"#,
            br#"["10.0.0.1"]"#,
            b"{not json",
            b"",
        ] {
            assert!(Ranges::decode(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn bisection_agrees_with_a_linear_scan() {
        // Random networks of every size, checked against the obvious O(n) answer.
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..50 {
            let nets: Vec<(u32, u8)> = (0..rng.usize(1..40)).map(|_| (rng.u32(..), rng.u8(8..=32))).collect();
            let texts: Vec<String> = nets
                .iter()
                .map(|&(a, p)| format!("{}/{p}", std::net::Ipv4Addr::from(a)))
                .collect();
            let r = Ranges::from_entries(texts.iter().map(String::as_str)).unwrap();
            let linear = |x: u32| {
                nets.iter().any(|&(a, p)| {
                    let mask = if p == 0 { 0 } else { u32::MAX << (32 - p) };
                    x & mask == a & mask
                })
            };
            for &(a, _) in &nets {
                for x in [
                    a,
                    a.wrapping_add(1),
                    a.wrapping_sub(1),
                    a | 0xff,
                    (a | 0xff).wrapping_add(1),
                ] {
                    assert_eq!(r.contains(IpAddr::from(std::net::Ipv4Addr::from(x))), linear(x), "{x}");
                }
            }
            for _ in 0..200 {
                let x = rng.u32(..);
                assert_eq!(r.contains(IpAddr::from(std::net::Ipv4Addr::from(x))), linear(x), "{x}");
            }
        }
    }

    fn set_list(redis: &Server, value: &str) {
        redis::cmd("SET")
            .arg(IPBLOCK_KEY)
            .arg(value)
            .query::<()>(&mut redis.conn())
            .unwrap();
    }

    /// A blocklist following a link cache's listener, as in the tracker.
    fn following(redis: &Server, resync: Duration) -> (LinkCache<crate::link::CompiledLink>, Arc<IpBlocklist>) {
        let list = Arc::new(
            IpBlocklist::new(IpBlockConfig {
                redis_url: redis.url(),
                key: IPBLOCK_KEY.to_owned(),
                resync,
                connect_timeout: Duration::from_millis(500),
                io_timeout: Duration::from_secs(2),
                nice: 0,
            })
            .unwrap(),
        );
        let mut cfg = CacheConfig::new(redis.url());
        cfg.connect_timeout = Duration::from_millis(500);
        cfg.io_timeout = Duration::from_millis(300);
        cfg.retry_after = Duration::from_millis(200);
        let cache = LinkCache::new(cfg, crate::link::CompiledLink::decode).unwrap();
        cache.follow(Arc::clone(&list) as Arc<dyn Follower>);
        (cache, list)
    }

    #[test]
    fn loads_at_start_and_follows_published_changes_within_a_second() {
        let redis = Server::start();
        set_list(&redis, r#"{"v":1,"cidrs":["203.0.113.0/24"]}"#);
        let (cache, list) = following(&redis, Duration::from_secs(300));
        assert!(
            !list.contains(ip("203.0.113.9")),
            "nothing is read before the listener starts"
        );
        cache.start();
        assert!(list.wait_loaded(Duration::from_secs(5)));
        assert!(list.contains(ip("203.0.113.9")));
        wait_for("the subscription", Duration::from_secs(5), || cache.stats().subscribed);

        // A write and its message: applied within a second.
        set_list(&redis, r#"{"v":1,"cidrs":["2001:db8::/32","198.51.100.7"]}"#);
        let published = Instant::now();
        redis.publish(IPBLOCK_MESSAGE);
        wait_for("the new list", Duration::from_secs(1), || {
            list.contains(ip("198.51.100.7")) && !list.contains(ip("203.0.113.9"))
        });
        assert!(published.elapsed() < Duration::from_secs(1));
        assert!(list.contains(ip("2001:db8::42")));

        // A write without its message is not read (the backstop is minutes away); a `*` reads it.
        set_list(&redis, r#"{"v":1,"cidrs":["192.0.2.0/24"]}"#);
        redis.publish("some-slug");
        thread::sleep(Duration::from_millis(300));
        assert!(
            list.contains(ip("198.51.100.7")),
            "a slug's invalidation is not the blocklist's"
        );
        redis.publish("*");
        wait_for("the list after *", Duration::from_secs(1), || {
            list.contains(ip("192.0.2.1"))
        });

        // Removing the key unblocks everything.
        redis::cmd("DEL")
            .arg(IPBLOCK_KEY)
            .query::<i64>(&mut redis.conn())
            .unwrap();
        redis.publish(IPBLOCK_MESSAGE);
        wait_for("the empty list", Duration::from_secs(1), || {
            !list.contains(ip("192.0.2.1"))
        });
        let st = list.stats();
        assert_eq!((st.entries, st.invalid, st.redis_errors), (0, 0, 0), "{st:?}");
        assert!(st.loaded && st.loads >= 4, "{st:?}");
    }

    #[test]
    fn an_undecodable_value_keeps_the_previous_list_and_is_counted() {
        let redis = Server::start();
        set_list(&redis, r#"{"v":1,"cidrs":["203.0.113.0/24"]}"#);
        let (cache, list) = following(&redis, Duration::from_secs(300));
        cache.start();
        assert!(list.wait_loaded(Duration::from_secs(5)));
        wait_for("the subscription", Duration::from_secs(5), || cache.stats().subscribed);
        set_list(&redis, r#"{"v":1,"cidrs":["203.0.113.0/24","nonsense"]}"#);
        redis.publish(IPBLOCK_MESSAGE);
        wait_for("the bad value to be counted", Duration::from_secs(1), || {
            list.stats().invalid == 1
        });
        assert!(list.contains(ip("203.0.113.9")));
        assert_eq!(list.stats().entries, 1);
        // A key of another type is no list either.
        redis::cmd("DEL")
            .arg(IPBLOCK_KEY)
            .query::<i64>(&mut redis.conn())
            .unwrap();
        redis::cmd("RPUSH")
            .arg(IPBLOCK_KEY)
            .arg("10.0.0.1")
            .query::<i64>(&mut redis.conn())
            .unwrap();
        redis.publish(IPBLOCK_MESSAGE);
        wait_for("the wrong type to be counted", Duration::from_secs(1), || {
            list.stats().invalid == 2
        });
        assert!(list.contains(ip("203.0.113.9")));
        assert_eq!(list.stats().redis_errors, 0);
    }

    #[test]
    fn redis_down_keeps_the_list_and_a_change_in_the_gap_is_read_on_resubscribe() {
        let mut redis = Server::start();
        set_list(&redis, r#"{"v":1,"cidrs":["203.0.113.0/24"]}"#);
        let (cache, list) = following(&redis, Duration::from_secs(300));
        cache.start();
        assert!(list.wait_loaded(Duration::from_secs(5)));
        wait_for("the subscription", Duration::from_secs(5), || cache.stats().subscribed);
        redis.kill();
        wait_for("the loss", Duration::from_secs(5), || !cache.stats().subscribed);
        assert!(list.contains(ip("203.0.113.9")), "the last list read stays in force");
        redis.restart();
        // Written with no message, before the listener is back: only the resubscription can show it.
        set_list(&redis, r#"{"v":1,"cidrs":["198.51.100.0/24"]}"#);
        wait_for("the list after the gap", Duration::from_secs(10), || {
            list.contains(ip("198.51.100.1")) && !list.contains(ip("203.0.113.9"))
        });
    }

    #[test]
    fn the_backstop_reads_a_change_whose_message_was_lost() {
        let redis = Server::start();
        let (cache, list) = following(&redis, Duration::from_millis(300));
        cache.start();
        assert!(list.wait_loaded(Duration::from_secs(5)));
        assert!(!list.contains(ip("203.0.113.9")));
        set_list(&redis, r#"{"v":1,"cidrs":["203.0.113.0/24"]}"#);
        wait_for("the periodic re-read", Duration::from_secs(3), || {
            list.contains(ip("203.0.113.9"))
        });
    }

    #[test]
    fn redis_down_at_start_is_waited_for_within_the_limit_and_read_when_it_comes() {
        let mut redis = Server::start();
        set_list(&redis, r#"{"v":1,"cidrs":["203.0.113.0/24"]}"#);
        redis.kill();
        let (cache, list) = following(&redis, Duration::from_secs(300));
        cache.start();
        let started = Instant::now();
        assert!(!list.wait_loaded(Duration::from_millis(300)));
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(!list.stats().loaded);
        redis.restart();
        // Redis came back empty: the manager writes and announces the list again. The loader may read the empty
        // key first (it retries every second); the message, or the subscription if it comes later, reads the list.
        set_list(&redis, r#"{"v":1,"cidrs":["203.0.113.0/24"]}"#);
        redis.publish(IPBLOCK_MESSAGE);
        assert!(list.wait_loaded(Duration::from_secs(10)));
        wait_for("the list", Duration::from_secs(5), || list.contains(ip("203.0.113.9")));
        assert!(list.stats().redis_errors >= 1);
    }
}
