//! Thin PyO3 layer over adclick-core and adclick-ship: type conversion, GIL release, one error adapter.
use std::sync::Arc;
use std::time::Duration;

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString};

use adclick_core::cache::CacheConfig;
use adclick_core::clickid::ClickIdCodec;
use adclick_core::event::unpack;
use adclick_core::geoip::GeoIpConfig;
use adclick_core::link::CompiledLink;
use adclick_core::tracker::{BlockedAction, Blocking, ClickRequest, Tracker, TrackerConfig};
use adclick_core::CoreError;
use adclick_ship::{Level, Logger, ShipConfig, Shipper, SqsConfig};

create_exception!(
    _native,
    AdclickError,
    PyException,
    "Base class of errors raised by adclick's Rust core."
);
create_exception!(
    _native,
    InvalidClickId,
    AdclickError,
    "A ClickID that is malformed, forged or signed by an unknown key."
);
create_exception!(
    _native,
    InvalidLink,
    AdclickError,
    "A link config that cannot be decoded or is unsafe."
);
create_exception!(
    _native,
    InvalidTemplate,
    AdclickError,
    "A destination URL template that is malformed or unsafe."
);
create_exception!(
    _native,
    ConfigError,
    AdclickError,
    "Settings the core cannot work with."
);
create_exception!(
    _native,
    RedisUnavailable,
    AdclickError,
    "Redis could not be reached in time."
);
create_exception!(
    _native,
    InvalidMessage,
    AdclickError,
    "An SQS message body that is not a packed batch of events."
);
create_exception!(
    _native,
    EntropyError,
    AdclickError,
    "The OS could not supply random bytes."
);

/// The one place core errors become Python exceptions.
struct PyCoreError(CoreError);

impl From<CoreError> for PyCoreError {
    fn from(e: CoreError) -> Self {
        PyCoreError(e)
    }
}

impl From<PyCoreError> for PyErr {
    fn from(e: PyCoreError) -> PyErr {
        let msg = e.0.to_string();
        match e.0 {
            CoreError::InvalidClickId(_) => InvalidClickId::new_err(msg),
            CoreError::InvalidLink(_) => InvalidLink::new_err(msg),
            CoreError::InvalidTemplate(_) => InvalidTemplate::new_err(msg),
            CoreError::Config(_) => ConfigError::new_err(msg),
            CoreError::Redis(_) => RedisUnavailable::new_err(msg),
            CoreError::InvalidMessage(_) => InvalidMessage::new_err(msg),
            CoreError::Entropy(_) => EntropyError::new_err(msg),
        }
    }
}

/// Releases the GIL while the core waits on Redis.
struct Detach<'py>(Python<'py>);

impl Blocking for Detach<'_> {
    fn run<R: Send, F: FnOnce() -> R + Send>(&self, f: F) -> R {
        self.0.detach(f)
    }
}

fn millis(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

/// Signs and verifies ClickIDs (current key signs; current and previous verify).
#[pyclass(name = "ClickIdCodec", module = "adclick._native", frozen)]
struct PyClickIdCodec {
    inner: ClickIdCodec,
}

#[pymethods]
impl PyClickIdCodec {
    #[new]
    #[pyo3(signature = (key_id, secret, previous_key_id=None, previous_secret=None))]
    fn new(key_id: u8, secret: &[u8], previous_key_id: Option<u8>, previous_secret: Option<&[u8]>) -> PyResult<Self> {
        let previous = match (previous_key_id, previous_secret) {
            (Some(kid), Some(key)) => Some((kid, key)),
            _ => None,
        };
        Ok(PyClickIdCodec {
            inner: ClickIdCodec::new(key_id, secret, previous).map_err(PyCoreError)?,
        })
    }

    /// A ClickID for a click on `link_id` at `ts_ms`; with `flags` (FLAG_BOT, FLAG_BLOCKED), a version 2 one.
    #[pyo3(signature = (link_id, ts_ms, flags=0))]
    fn generate(&self, link_id: u64, ts_ms: u64, flags: u8) -> PyResult<String> {
        Ok(self
            .inner
            .generate_flagged(link_id, ts_ms, flags)
            .map_err(PyCoreError)?)
    }

    /// Returns (version, key_id, ts_ms, link_id, flags) or raises InvalidClickId.
    fn verify(&self, click_id: &str) -> PyResult<(u8, u8, u64, u64, u8)> {
        let info = self.inner.verify(click_id).map_err(PyCoreError)?;
        Ok((info.version, info.key_id, info.ts_ms, info.link_id, info.flags))
    }
}

/// The click engine of one tracker process: one call per request.
#[pyclass(name = "Tracker", module = "adclick._native", frozen)]
struct PyTracker {
    inner: Arc<Tracker>,
}

#[pymethods]
impl PyTracker {
    #[new]
    #[pyo3(signature = (
        *, redis_url, secret, key_id, previous_secret=None, previous_key_id=0,
        trusted_proxies=0, anonymize_ip=false,
        cookie_name="adclick_cid".to_owned(), cookie_max_age_s=2_592_000, cookie_domain=None, cookie_secure=false,
        cache_max_entries=100_000, cache_max_bytes=67_108_864, cache_ttl_s=60.0, cache_stale_s=600.0, negative_ttl_s=5.0,
        redis_connect_timeout_ms=200, redis_timeout_ms=50, redis_retry_after_ms=1000,
        buffer_max_events=500_000, replica_max_bytes=83_886_080, replica_resync_s=300.0, replica_nice=10,
        blocked_action="fallback", geoip_db=None, geoip_reload_s=60.0,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        redis_url: String,
        secret: Vec<u8>,
        key_id: u8,
        previous_secret: Option<Vec<u8>>,
        previous_key_id: u8,
        trusted_proxies: usize,
        anonymize_ip: bool,
        cookie_name: String,
        cookie_max_age_s: u64,
        cookie_domain: Option<String>,
        cookie_secure: bool,
        cache_max_entries: u64,
        cache_max_bytes: u64,
        cache_ttl_s: f64,
        cache_stale_s: f64,
        negative_ttl_s: f64,
        redis_connect_timeout_ms: u64,
        redis_timeout_ms: u64,
        redis_retry_after_ms: u64,
        buffer_max_events: usize,
        replica_max_bytes: u64,
        replica_resync_s: f64,
        replica_nice: i32,
        blocked_action: &str,
        geoip_db: Option<std::path::PathBuf>,
        geoip_reload_s: f64,
    ) -> PyResult<Self> {
        let cfg = TrackerConfig {
            cache: CacheConfig {
                redis_url,
                key_prefix: adclick_core::cache::LINK_KEY_PREFIX.to_owned(),
                channel: adclick_core::cache::INVALIDATE_CHANNEL.to_owned(),
                max_entries: cache_max_entries,
                max_bytes: cache_max_bytes,
                fresh_ttl: secs(cache_ttl_s),
                stale_ttl: secs(cache_stale_s),
                negative_ttl: secs(negative_ttl_s),
                connect_timeout: millis(redis_connect_timeout_ms),
                io_timeout: millis(redis_timeout_ms),
                retry_after: millis(redis_retry_after_ms),
            },
            key_id,
            secret,
            previous: previous_secret.map(|s| (previous_key_id, s)),
            trusted_proxies,
            anonymize_ip,
            cookie_name,
            cookie_max_age: Duration::from_secs(cookie_max_age_s),
            cookie_domain,
            cookie_secure,
            buffer_max_events,
            replica_max_bytes,
            replica_resync: secs(replica_resync_s),
            replica_nice,
            blocked_action: blocked_action.parse::<BlockedAction>().map_err(PyCoreError)?,
            geoip: geoip_db.map(|path| GeoIpConfig {
                path,
                reload: secs(geoip_reload_s),
                nice: replica_nice,
            }),
        };
        Ok(PyTracker {
            inner: Arc::new(Tracker::new(cfg).map_err(PyCoreError)?),
        })
    }

    /// Answers one click: (status, Location or None, Set-Cookie or None).
    ///
    /// `query` is the raw (still percent-encoded) mapping of name to values, as Robyn splits it.
    #[pyo3(signature = (head, slug, query, user_agent, referer, forwarded_for, peer_ip, country))]
    #[allow(clippy::too_many_arguments)]
    fn click(
        &self,
        py: Python<'_>,
        head: bool,
        slug: &str,
        query: Option<&Bound<'_, PyDict>>,
        user_agent: Option<&str>,
        referer: Option<&str>,
        forwarded_for: Option<&str>,
        peer_ip: Option<&str>,
        country: Option<&str>,
    ) -> PyResult<(u16, Option<String>, Option<String>)> {
        let mut owned: Vec<(Bound<'_, PyString>, Bound<'_, PyString>)> = Vec::new();
        if let Some(q) = query {
            for (k, v) in q.iter() {
                let key = k.cast_into::<PyString>()?;
                // Robyn keeps every value of a repeated name; like Robyn's own `get`, the last one wins.
                let value = match v.cast::<PyList>() {
                    Ok(list) => match list.iter().last() {
                        Some(last) => last.cast_into::<PyString>()?,
                        None => continue,
                    },
                    Err(_) => v.cast_into::<PyString>()?,
                };
                owned.push((key, value));
            }
        }
        let mut pairs: Vec<(&str, &str)> = Vec::with_capacity(owned.len());
        for (k, v) in &owned {
            pairs.push((k.to_str()?, v.to_str()?));
        }
        let req = ClickRequest {
            head,
            slug,
            query: pairs,
            user_agent,
            referer,
            forwarded_for,
            peer_ip,
            country,
        };
        let r = self.inner.click(req, &Detach(py));
        Ok((r.status, r.location, r.set_cookie))
    }

    /// Every buffered event packed into SQS message bodies; the buffer is left empty.
    fn take_bodies(&self, py: Python<'_>, max_body_bytes: usize) -> Vec<String> {
        py.detach(|| self.inner.take_bodies(max_body_bytes))
    }

    fn buffered(&self) -> usize {
        self.inner.buffered()
    }

    #[getter]
    fn capacity(&self) -> usize {
        self.inner.capacity()
    }

    /// Refuses further clicks (503) so a final flush covers every click answered with a 302.
    fn close(&self) {
        self.inner.close();
    }

    #[getter]
    fn closed(&self) -> bool {
        self.inner.is_closed()
    }

    /// Starts the invalidation listener and waits up to `wait_s` for the first read of the IP blocklist; False if
    /// it could not be read in time (the loader keeps trying). Call after any fork.
    #[pyo3(signature = (wait_s=2.0))]
    fn start(&self, py: Python<'_>, wait_s: f64) -> bool {
        py.detach(|| self.inner.start(secs(wait_s)))
    }

    /// Redis PING with the tracker's own timeouts; raises RedisUnavailable.
    fn ping(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.inner.ping()).map_err(PyCoreError)?;
        Ok(())
    }

    fn invalidate(&self, slug: &str) {
        self.inner.invalidate(slug);
    }

    fn generate_click_id(&self, link_id: u64, ts_ms: u64) -> PyResult<String> {
        Ok(self.inner.codec().generate(link_id, ts_ms).map_err(PyCoreError)?)
    }

    /// Counters for /metrics, as one dict.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        /// `d[prefix + field] = value.field` for each field.
        macro_rules! put {
            ($d:ident, $prefix:literal, $value:expr, [$($field:ident),+ $(,)?]) => {{
                $( $d.set_item(concat!($prefix, stringify!($field)), $value.$field)?; )+
            }};
        }
        let s = self.inner.stats();
        let d = PyDict::new(py);
        d.set_item("outcomes", s.outcomes.into_iter().collect::<Vec<_>>())?;
        d.set_item("latency_buckets_us", s.latency_buckets)?;
        put! { d, "", s, [latency_count, latency_sum_seconds, events_buffered_total, events_dropped_total,
        buffer_depth] }
        put! { d, "cache_", s.cache, [hits, stale_hits, misses, negative_hits, invalid, entries, bytes, max_entries,
        max_bytes] }
        let (routes, routes_bytes) = adclick_core::link::interned();
        d.set_item("link_routes", routes)?;
        d.set_item("link_routes_bytes", routes_bytes)?;
        d.set_item("redis_errors", s.cache.redis_errors)?;
        d.set_item("cache_invalidations", s.cache.invalidations)?;
        d.set_item("redis_reconnects", s.cache.reconnects)?;
        put! { d, "replica_", s.replica, [state, links, bytes, max_bytes, over_budget, hits, absent, passed, loads,
        refreshes, invalid, redis_errors] }
        put! { d, "ipblock_", s.ipblock, [entries, ranges, loaded, loads, invalid, redis_errors] }
        put! { d, "geoip_", s.geoip, [lookups, hits, reloads, reload_errors, build_epoch] }
        Ok(d)
    }
}

/// Ships a tracker's click events to SQS from a Rust thread that never takes the GIL (see adclick-ship).
#[pyclass(name = "Shipper", module = "adclick._native", frozen)]
struct PyShipper {
    inner: Shipper,
}

#[pymethods]
impl PyShipper {
    /// Starts the shipping thread for `tracker`'s event buffer.
    #[new]
    #[pyo3(signature = (
        tracker, *, queue_name, region, endpoint_url=None, sqs_timeout_s=2.0, max_receives=5,
        redis_url, redis_connect_timeout_ms=200, redis_timeout_ms=2000,
        max_body_bytes=262_144, retry_attempts=3, flush_interval_ms=100, spill_high_water=0.5,
        max_pending_bytes=64 * 1024 * 1024, nice=0, log_level=20, log_role="tracker".to_owned(),
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        tracker: &PyTracker,
        queue_name: String,
        region: String,
        endpoint_url: Option<String>,
        sqs_timeout_s: f64,
        max_receives: u32,
        redis_url: String,
        redis_connect_timeout_ms: u64,
        redis_timeout_ms: u64,
        max_body_bytes: usize,
        retry_attempts: u32,
        flush_interval_ms: u64,
        spill_high_water: f64,
        max_pending_bytes: usize,
        nice: i32,
        log_level: u32,
        log_role: String,
    ) -> PyResult<Self> {
        if retry_attempts == 0 || max_body_bytes == 0 || flush_interval_ms == 0 {
            return Err(ConfigError::new_err(
                "retry_attempts, max_body_bytes and flush_interval_ms must be positive",
            ));
        }
        let cfg = ShipConfig {
            sqs: SqsConfig {
                queue_name,
                region,
                endpoint_url,
                timeout: secs(sqs_timeout_s),
                max_receives,
            },
            redis_url,
            redis_connect_timeout: millis(redis_connect_timeout_ms),
            redis_timeout: millis(redis_timeout_ms),
            max_body_bytes,
            retry_attempts,
            flush_interval: millis(flush_interval_ms),
            spill_high_water,
            max_pending_bytes,
            nice,
            log: Logger::new(log_role, Level::from_python(log_level)),
        };
        let source: Arc<Tracker> = Arc::clone(&tracker.inner);
        let inner = Shipper::start(cfg, source).map_err(|e| AdclickError::new_err(e.to_string()))?;
        Ok(PyShipper { inner })
    }

    /// Stops shipping, sends everything buffered or held (SQS, then Redis) within `deadline_s`, and joins the
    /// thread: (sent, spilled, rejected, dropped) message counts. Close the tracker first so nothing follows.
    fn stop(&self, py: Python<'_>, deadline_s: f64) -> (usize, usize, usize, usize) {
        let r = py.detach(|| self.inner.stop(secs(deadline_s)));
        (r.sent, r.spilled, r.rejected, r.dropped)
    }

    #[getter]
    fn running(&self) -> bool {
        self.inner.is_running()
    }

    /// Counters for /metrics, as one dict.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.inner.stats();
        let d = PyDict::new(py);
        d.set_item("messages_sent", s.messages_sent)?;
        d.set_item("requests", s.requests)?;
        d.set_item("failures", s.failures)?;
        d.set_item("spilled", s.spilled)?;
        d.set_item("replayed", s.replayed)?;
        d.set_item(
            "dropped",
            vec![
                ("rejected", s.dropped_rejected),
                ("overflow", s.dropped_overflow),
                ("shutdown", s.dropped_shutdown),
            ],
        )?;
        d.set_item("spill_backlog", s.spill_backlog)?;
        d.set_item("pending", s.pending)?;
        d.set_item("sqs_down", s.sqs_down)?;
        Ok(d)
    }
}

/// Decodes one packed SQS message body into a list of click events (JSON text each).
#[pyfunction]
fn unpack_clicks(py: Python<'_>, body: &str) -> PyResult<Vec<String>> {
    let events = py.detach(|| unpack(body)).map_err(PyCoreError)?;
    events
        .iter()
        .map(|e| serde_json::to_string(e).map_err(|err| AdclickError::new_err(err.to_string())))
        .collect()
}

/// Packs click events (one JSON text each) into `c1:` SQS bodies of at most `max_body_bytes` each, exactly as the
/// tracker's shipper does: the one packing implementation, for tools and tests that write click messages.
#[pyfunction]
fn pack_clicks(py: Python<'_>, lines: Vec<Vec<u8>>, max_body_bytes: usize) -> PyResult<Vec<String>> {
    if max_body_bytes == 0 {
        return Err(ConfigError::new_err("max_body_bytes must be positive"));
    }
    Ok(py.detach(|| adclick_core::event::pack(&lines.iter().collect(), max_body_bytes)))
}

/// Checks a v1 link config (JSON bytes) exactly as the tracker will decode it; raises InvalidLink or InvalidTemplate.
#[pyfunction]
fn validate_link(config: &[u8]) -> PyResult<()> {
    CompiledLink::decode(config).map_err(PyCoreError)?;
    Ok(())
}

#[pymodule]
mod _native {
    #[pymodule_export]
    use super::{
        pack_clicks, unpack_clicks, validate_link, AdclickError, ConfigError, EntropyError, InvalidClickId,
        InvalidLink, InvalidMessage, InvalidTemplate, PyClickIdCodec, PyShipper, PyTracker, RedisUnavailable,
    };

    #[pymodule_export]
    const VERSION: &str = env!("CARGO_PKG_VERSION");
    /// The Redis list of click messages SQS did not take (docs/contracts.md).
    #[pymodule_export]
    const SPILL_KEY: &str = adclick_ship::SPILL_KEY;
    /// The lock held by the one process replaying that list.
    #[pymodule_export]
    const SPILL_LOCK_KEY: &str = adclick_ship::LOCK_KEY;
    /// The Redis key of a link config is this prefix and its slug (docs/contracts.md).
    #[pymodule_export]
    const LINK_KEY_PREFIX: &str = adclick_core::cache::LINK_KEY_PREFIX;
    /// The pub/sub channel that tells trackers a link (or `*`: every link, `!ipblock`: the blocklist) changed.
    #[pymodule_export]
    const INVALIDATE_CHANNEL: &str = adclick_core::cache::INVALIDATE_CHANNEL;
    /// The prefix of a packed click message body (`c1:`, then base64 of zlib of JSON lines).
    #[pymodule_export]
    const CLICKS_PREFIX: &str = adclick_core::event::BODY_PREFIX;
    /// The Redis key of the IP blocklist, `{"v": 1, "cidrs": [...]}` (docs/contracts.md).
    #[pymodule_export]
    const IPBLOCK_KEY: &str = adclick_core::ipblock::IPBLOCK_KEY;
    /// Published on the invalidation channel after each write of IPBLOCK_KEY.
    #[pymodule_export]
    const IPBLOCK_MESSAGE: &str = adclick_core::ipblock::IPBLOCK_MESSAGE;
    /// ClickID flag (ClickIdCodec.verify's last value): the click's User-Agent is a bot's.
    #[pymodule_export]
    const FLAG_BOT: u8 = adclick_core::clickid::FLAG_BOT;
    /// ClickID flag: the click's address was on the IP blocklist.
    #[pymodule_export]
    const FLAG_BLOCKED: u8 = adclick_core::clickid::FLAG_BLOCKED;
}
