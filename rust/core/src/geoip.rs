//! Country from the client's address, for clicks that arrive without a trusted CDN country header.
//!
//! The database is an MMDB file (`ADCLICK_GEOIP_DB`), read whole into memory: a lookup is a walk of its search
//! tree and the decoding of one small record, under a read lock, and never touches Redis or the disk. Records
//! carry the country as `country_code` (ip-location-db's country databases) or `country.iso_code` (MaxMind's).
//!
//! A thread of its own (`adclick-geoip`) looks at the file every `reload` and reads it again when its device, inode,
//! size or modification time changed, then swaps the new reader in whole. A file that cannot be read or is no
//! MMDB leaves the reader in force, and is counted (`reload_errors`) and logged once per version of the file.
//! Replacing the file by a rename is the safe way to update it; a file written in place is read once it has
//! stopped changing during a read.
use std::fs;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use maxminddb::Reader;
use parking_lot::{Mutex, RwLock};
use serde::Deserialize;

use crate::cache::{bump, Follower};
use crate::loader::Loader;
use crate::targeting::country_from;
use crate::CoreError;

#[derive(Debug, Clone)]
pub struct GeoIpConfig {
    /// The MMDB file.
    pub path: PathBuf,
    /// How often the file is looked at for a change.
    pub reload: Duration,
    /// Niceness of the reloading thread.
    pub nice: i32,
}

/// Counters for /metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GeoIpStats {
    /// Addresses looked up (clicks without a trusted country header).
    pub lookups: u64,
    /// Lookups that found a country.
    pub hits: u64,
    /// Times a changed file was read and swapped in (the first read at start not counted).
    pub reloads: u64,
    /// Versions of the file that could not be read or were no MMDB (the reader in force stayed).
    pub reload_errors: u64,
    /// When the database in force was built (seconds since the epoch, from its metadata); 0 without one.
    pub build_epoch: u64,
}

/// What the tracker reads of a record; any other field is skipped.
#[derive(Deserialize)]
struct Record<'a> {
    #[serde(borrow)]
    country_code: Option<&'a str>,
    #[serde(borrow)]
    country: Option<MaxMindCountry<'a>>,
}

#[derive(Deserialize)]
struct MaxMindCountry<'a> {
    iso_code: Option<&'a str>,
}

/// What identifies one version of the file on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Signature {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
}

fn signature(path: &Path) -> std::io::Result<Signature> {
    let m = fs::metadata(path)?;
    Ok(Signature {
        dev: m.dev(),
        ino: m.ino(),
        size: m.size(),
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
    })
}

/// The whole file in memory, and which version of it that is.
struct Opened {
    sig: Signature,
    reader: Reader<Vec<u8>>,
}

/// Reads and checks the whole file: `Ok(None)` when it changed while it was read (it is being written).
fn open(path: &Path) -> Result<Option<Opened>, String> {
    let before = signature(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let bytes = fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let after = signature(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if before != after || after.size != bytes.len() as u64 {
        return Ok(None);
    }
    // Its metadata and the bounds of its search tree are checked here; `Reader::verify` would also walk every
    // record, but refuses ip-location-db's files for their empty description. A damaged record answers "unknown".
    let reader = Reader::from_source(bytes).map_err(|e| format!("{}: not an MMDB file: {e}", path.display()))?;
    Ok(Some(Opened { sig: after, reader }))
}

#[derive(Default)]
struct Counters {
    lookups: AtomicU64,
    hits: AtomicU64,
    reloads: AtomicU64,
    reload_errors: AtomicU64,
}

struct Inner {
    cfg: GeoIpConfig,
    reader: RwLock<Reader<Vec<u8>>>,
    /// The version of the file last read, whether it was swapped in or refused: it is not read again until it changes.
    seen: Mutex<Option<Signature>>,
    stop: AtomicBool,
    counters: Counters,
}

/// The country database of one tracker process; see the module docs.
pub struct GeoIp {
    inner: Arc<Inner>,
    loader: Loader<()>,
}

impl GeoIp {
    /// Reads the file now (an error if it cannot be read: a tracker told to use a database does not start without
    /// one); the reloading thread starts with [`GeoIp::start`].
    pub fn open(cfg: GeoIpConfig) -> Result<Self, CoreError> {
        if cfg.reload.is_zero() {
            return Err(CoreError::Config("geoip: the reload interval must be positive".into()));
        }
        let mut tries = 0;
        let Opened { sig, reader } = loop {
            match open(&cfg.path) {
                Ok(Some(opened)) => break opened,
                // Being written as we start: read it again, for a few seconds at most.
                Ok(None) if tries < 100 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Ok(None) => {
                    return Err(CoreError::Config(format!(
                        "geoip: {} kept changing while it was read",
                        cfg.path.display()
                    )))
                }
                Err(e) => return Err(CoreError::Config(format!("geoip: {e}"))),
            }
        };
        Ok(Self {
            inner: Arc::new(Inner {
                cfg,
                reader: RwLock::new(reader),
                seen: Mutex::new(Some(sig)),
                stop: AtomicBool::new(false),
                counters: Counters::default(),
            }),
            loader: Loader::new(),
        })
    }

    /// The click path's question: the country of `ip`, as [`country_from`] spells one (two upper-case letters).
    pub fn country(&self, ip: IpAddr) -> Option<String> {
        bump(&self.inner.counters.lookups);
        let ip = ip.to_canonical();
        if !is_public(ip) {
            return None;
        }
        let found = lookup(&self.inner.reader.read(), ip);
        if found.is_some() {
            bump(&self.inner.counters.hits);
        }
        found
    }

    /// Starts the reloading thread, unless it runs already or the database was shut down. Call after any fork.
    pub fn start(&self) {
        if self.inner.stop.load(Ordering::Acquire) {
            return;
        }
        let inner = Arc::clone(&self.inner);
        self.loader.start("adclick-geoip", move |rx| inner.run(&rx));
    }

    /// Looks at the file once, as the thread does every `reload`: true when a new version was swapped in.
    pub fn check(&self) -> bool {
        self.inner.check()
    }

    pub fn stats(&self) -> GeoIpStats {
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        GeoIpStats {
            lookups: get(&c.lookups),
            hits: get(&c.hits),
            reloads: get(&c.reloads),
            reload_errors: get(&c.reload_errors),
            build_epoch: self.inner.reader.read().metadata().build_epoch,
        }
    }

    /// Stops the reloading thread and waits for it. Idempotent.
    pub fn shutdown(&self) {
        self.loader.stop(&self.inner.stop);
    }
}

impl Drop for GeoIp {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Whether `ip` is a public unicast address, the only kind a country can be known of. The databases answer for
/// some others too (ip-location-db's puts 192.168.0.0/16 and 203.0.113.0/24 in Australia): a click from a private
/// network or a documentation address must not take the country of whoever registered a neighbouring block.
fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            !(a == 0
                || a == 10
                || a == 127
                || a >= 224 // multicast, reserved, broadcast
                || (a == 100 && (64..128).contains(&b)) // shared address space (carrier-grade NAT)
                || (a == 169 && b == 254)
                || (a == 172 && (16..32).contains(&b))
                || (a == 192 && b == 168)
                || (a == 192 && b == 0 && (c == 0 || c == 2))
                || (a == 198 && (b == 18 || b == 19)) // benchmarking
                || (a == 198 && b == 51 && c == 100)
                || (a == 203 && b == 0 && c == 113))
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            // Global unicast is 2000::/3; of it, 2001:db8::/32 and 3fff::/20 are for documentation.
            s[0] & 0xe000 == 0x2000 && !(s[0] == 0x2001 && s[1] == 0x0db8) && !(s[0] == 0x3fff && s[1] < 0x1000)
        }
    }
}

fn lookup(reader: &Reader<Vec<u8>>, ip: IpAddr) -> Option<String> {
    // An IPv6 address in an IPv4-only database and a record that does not decode are both "unknown".
    let found = reader.lookup(ip).ok()?;
    let record: Record<'_> = found.decode().ok()??;
    let code = record.country_code.or(record.country.and_then(|c| c.iso_code));
    country_from(code)
}

impl Inner {
    fn run(&self, rx: &Receiver<()>) {
        if let Err(e) = crate::lower_thread_priority(self.cfg.nice) {
            log_warning(&format!("could not lower the geoip reloader's priority: {e}"));
        }
        loop {
            match rx.recv_timeout(self.cfg.reload) {
                Ok(()) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            if self.stop.load(Ordering::Acquire) {
                return;
            }
            self.check();
        }
    }

    fn check(&self) -> bool {
        let mut seen = self.seen.lock();
        let now = signature(&self.cfg.path).ok();
        if now == *seen {
            return false;
        }
        match now {
            // Gone (or unreadable): the reader in force stays; said once, until a file is back.
            None => {
                bump(&self.counters.reload_errors);
                log_warning(&format!(
                    "{} is gone; the database read before stays in force",
                    self.cfg.path.display()
                ));
                *seen = None;
                false
            }
            Some(sig) => match open(&self.cfg.path) {
                Ok(Some(Opened { sig, reader })) => {
                    // The old database is freed after the write lock is let go, not while clicks wait on it.
                    let old = std::mem::replace(&mut *self.reader.write(), reader);
                    drop(old);
                    bump(&self.counters.reloads);
                    *seen = Some(sig);
                    true
                }
                // Changed while it was read: looked at again next time, not counted.
                Ok(None) => false,
                Err(e) => {
                    bump(&self.counters.reload_errors);
                    log_warning(&format!("{e}; the database read before stays in force"));
                    *seen = Some(sig);
                    false
                }
            },
        }
    }
}

/// Its thread starts with the link cache's listener (after any fork); invalidations are nothing to it.
impl Follower for GeoIp {
    fn start(&self) {
        GeoIp::start(self);
    }

    fn subscribed(&self) {}

    fn lost(&self) {}

    fn changed(&self, _slug: &str) {}

    fn changed_all(&self) {}
}

/// A warning on stderr in the tracker's log format (the reloader has no Python logger to call).
fn log_warning(message: &str) {
    eprintln!("adclick.tracker.geoip WARNING {message}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use adclick_testkit::wait_for;
    use std::sync::atomic::AtomicUsize;

    /// The real database, fetched by `make install` (the Makefile's test-rust target names it).
    fn database() -> PathBuf {
        let path = std::env::var_os("ADCLICK_TEST_GEOIP_DB")
            .map(PathBuf::from)
            .expect("ADCLICK_TEST_GEOIP_DB: the MMDB file `make install` fetches (run the tests with make test-rust)");
        assert!(path.is_file(), "{} is missing: run make install", path.display());
        path
    }

    /// A directory of its own under the target dir, removed at the end.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new() -> Self {
            static N: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "adclick-geoip-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn config(path: &Path) -> GeoIpConfig {
        GeoIpConfig {
            path: path.to_owned(),
            reload: Duration::from_secs(3600),
            nice: 0,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Writes `bytes` beside `path` and renames it over `path`, as an update should.
    fn replace(path: &Path, bytes: &[u8]) {
        let tmp = path.with_extension("tmp");
        fs::write(&tmp, bytes).unwrap();
        fs::rename(&tmp, path).unwrap();
    }

    #[test]
    fn looks_up_well_known_addresses_of_both_families() {
        let geo = GeoIp::open(config(&database())).unwrap();
        for (addr, country) in [
            ("8.8.8.8", "US"),
            ("1.1.1.1", "AU"),
            ("::ffff:8.8.8.8", "US"),
            ("2001:4860:4860::8888", "US"),
            ("193.0.6.139", "NL"),
        ] {
            assert_eq!(geo.country(ip(addr)).as_deref(), Some(country), "{addr}");
        }
        // Private, shared, documentation and other special addresses have no country, whatever the file says.
        let special = [
            "10.0.0.1",
            "127.0.0.1",
            "0.0.0.0",
            "100.64.0.1",
            "169.254.1.1",
            "172.16.0.1",
            "192.168.1.1",
            "192.0.2.1",
            "198.18.0.1",
            "198.51.100.1",
            "203.0.113.1",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "fc00::1",
            "fe80::1",
            "ff02::1",
            "2001:db8::1",
            "3fff::1",
        ];
        for unknown in special {
            assert_eq!(geo.country(ip(unknown)), None, "{unknown}");
        }
        let st = geo.stats();
        assert_eq!(
            (st.lookups, st.hits, st.reloads, st.reload_errors),
            (5 + special.len() as u64, 5, 0, 0)
        );
        assert!(st.build_epoch > 1_600_000_000, "{st:?}");
    }

    #[test]
    fn a_missing_or_broken_file_at_start_is_refused() {
        let dir = Scratch::new();
        let missing = dir.0.join("none.mmdb");
        assert!(matches!(GeoIp::open(config(&missing)), Err(CoreError::Config(_))));
        let broken = dir.0.join("broken.mmdb");
        fs::write(&broken, b"not an mmdb file").unwrap();
        assert!(matches!(GeoIp::open(config(&broken)), Err(CoreError::Config(_))));
        let zero = GeoIpConfig {
            reload: Duration::ZERO,
            ..config(&database())
        };
        assert!(GeoIp::open(zero).is_err());
    }

    #[test]
    fn a_replaced_file_is_swapped_in_and_a_broken_one_keeps_the_reader_in_force() {
        let dir = Scratch::new();
        let path = dir.0.join("country.mmdb");
        let good = fs::read(database()).unwrap();
        replace(&path, &good);
        let geo = GeoIp::open(config(&path)).unwrap();
        assert!(!geo.check(), "an unchanged file is not read again");

        // A new version (here the same bytes under a new inode): read and swapped in.
        replace(&path, &good);
        assert!(geo.check());
        assert_eq!(geo.stats().reloads, 1);
        assert_eq!(geo.country(ip("8.8.8.8")).as_deref(), Some("US"));

        // Truncated (its metadata gone), then garbage, then gone: each counted once, the reader in force answers.
        for bad in [&good[..good.len() / 2], &b"\0garbage"[..]] {
            replace(&path, bad);
            assert!(!geo.check());
            assert!(!geo.check(), "the same broken file is not counted twice");
            assert_eq!(geo.country(ip("8.8.8.8")).as_deref(), Some("US"));
        }
        fs::remove_file(&path).unwrap();
        assert!(!geo.check() && !geo.check());
        assert_eq!(geo.country(ip("1.1.1.1")).as_deref(), Some("AU"));
        let st = geo.stats();
        assert_eq!((st.reloads, st.reload_errors), (1, 3), "{st:?}");

        // A good file back: swapped in.
        replace(&path, &good);
        assert!(geo.check());
        assert_eq!(geo.stats().reloads, 2);
    }

    #[test]
    fn the_thread_picks_up_a_replaced_file() {
        let dir = Scratch::new();
        let path = dir.0.join("country.mmdb");
        let good = fs::read(database()).unwrap();
        replace(&path, &good);
        let geo = GeoIp::open(GeoIpConfig {
            reload: Duration::from_millis(20),
            ..config(&path)
        })
        .unwrap();
        geo.start();
        replace(&path, &good);
        wait_for("the reload", Duration::from_secs(10), || geo.stats().reloads == 1);
        replace(&path, b"garbage");
        wait_for("the refusal", Duration::from_secs(10), || {
            geo.stats().reload_errors == 1
        });
        assert_eq!(geo.country(ip("8.8.8.8")).as_deref(), Some("US"));
        geo.shutdown();
        geo.shutdown();
    }
}
