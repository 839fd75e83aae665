"""The tracker process: Robyn routes over the Rust click engine, the Rust shipper thread, and our own SIGTERM drain."""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from adclick import _native
from adclick.core.settings import TrackerSettings
from adclick.tracker.reaper import ConnectionReaper, name_os_thread

log = logging.getLogger("adclick.tracker")

PLAIN = {"Content-Type": "text/plain; charset=utf-8", "Cache-Control": "no-store"}
ERROR_TEXT = {
    400: "bad request\n",
    403: "forbidden\n",
    404: "unknown link\n",
    503: "temporarily unavailable\n",
}
SHUTDOWN_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Held click messages beyond which the shipper drops the oldest while neither SQS nor Redis takes any.
MAX_PENDING_BYTES = 64 * 1024 * 1024
DROP_REASONS = ("rejected", "overflow", "shutdown")
# At startup a process waits this long for its first read of the IP blocklist before it reports ready.
BLOCKLIST_WAIT_S = 2.0

# Longest time a Python thread (the reaper, a /metrics scrape) may hold the GIL while an actix thread waits to
# answer a click. CPython's default is 5 ms, which shows up directly in the click p99.
GIL_SWITCH_INTERVAL_S = 0.0005


def settle_heap() -> None:
    """Move everything alive after startup (Robyn, prometheus_client, our modules) into the collector's permanent
    generation, so that a full collection never walks it again while a click waits for the GIL. Also bounds how
    long another Python thread keeps the GIL from a waiting click handler."""
    gc.collect()
    gc.freeze()
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)


class SignalWatcher:
    """Takes SIGTERM and SIGINT from every thread of the process, before the port opens, and hands them to us.

    Actix (through tokio) installs handlers of its own that stop accepting at once, and Robyn then runs no shutdown
    handler (Robyn #1324), which would drop buffered clicks. Replacing actix's handler after it is installed leaves
    a window in which a SIGTERM reaches actix. Instead both signals are blocked in the main thread before any other
    thread exists, so every thread (actix's, the shipper's, the reaper's) inherits the block, and one thread takes
    them with sigwait(2): no handler of anyone's ever runs for them.
    """

    def __init__(self, on_signal: Callable[[int], None]) -> None:
        self.on_signal = on_signal
        self._thread = threading.Thread(target=self._run, name="adclick-signals", daemon=True)

    def start(self) -> None:
        """Call from the main thread before any other thread starts: the mask is inherited at thread creation."""
        signal.pthread_sigmask(signal.SIG_BLOCK, SHUTDOWN_SIGNALS)
        self._thread.start()

    def _run(self) -> None:
        name_os_thread("adclick-signals")
        while True:
            # While it waits, the kernel lets exactly these signals through to this thread, and to no other.
            self.on_signal(signal.sigwait(SHUTDOWN_SIGNALS))


def lower_thread_priority(nice: int) -> None:
    """Gives the calling thread (only it: Linux takes a thread id for PRIO_PROCESS) a lower CPU priority.

    The event-loop thread's bursts (packing a flush's events in Rust, aiobotocore's request in Python) and the
    reaper's sweeps share the core with the actix thread answering clicks; at equal priority the scheduler lets a
    burst run for its whole slice while clicks queue behind it, which set the tracker's p99. At a lower priority
    a click that arrives preempts the burst at once. The thread still gets its share when the core is saturated
    (nice 10 weighs 110 against 1024: about 10%, twice what shipping needs at peak), so events never pile up.
    """
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    tid = threading.get_native_id()
    try:
        current = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, max(current, nice))
    except OSError as error:  # a sandbox that forbids it: run at normal priority
        log.warning("could not lower the priority of thread %d: %s", tid, error)


def _route_direct(app: Any, method: str, endpoint: str, handler: Any) -> None:
    """Registers a sync route whose handler Robyn calls with the Request and nothing else.

    Robyn wraps every handler in a dependency-injection layer that, on each request, reads every part of
    the Request (body, form data, files, headers, ...) into a dict, even for a handler that takes only the
    request (its fast-path check compares a parameter name with the Request class, so it never matches).
    For the click route that costs more than our whole click engine, so we register the route through
    Robyn as usual and then hand Robyn's Rust executor our function directly: with one parameter and no
    injected dependencies it calls `handler(request)`.
    """
    from robyn.robyn import FunctionInfo

    getattr(app, method)(endpoint)(handler)
    routes = app.router.routes
    for i, route in enumerate(routes):
        if route.route == endpoint and str(route.route_type).lower().endswith(method):
            params = dict(inspect.signature(handler).parameters)
            if len(params) != 1:
                raise TypeError(f"{handler!r} must take exactly the request")
            routes[i] = route._replace(function=FunctionInfo(handler, False, 1, params, {}))
            return
    raise LookupError(f"route {method.upper()} {endpoint} was not registered")


class PortBusyError(RuntimeError):
    """The port is taken by another process; Robyn would otherwise prompt on stdin."""


def check_port_free(host: str, port: int) -> None:
    """Fails fast when something listens on the port (Robyn would prompt on stdin instead).

    A bind without SO_REUSEPORT fails even against Robyn's own sockets. SO_REUSEADDR, which Robyn sets too,
    lets connections a previous tracker left in TIME_WAIT pass: a tracker restarted on its port after SIGTERM
    under load must start, as Robyn itself would.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise PortBusyError(f"port {port} on {host} is already in use ({e.strerror})") from e


def build_tracker(settings: TrackerSettings) -> Any:
    """The Rust click engine for one process, configured from settings (it connects lazily)."""
    previous = settings.click_previous_secret
    return _native.Tracker(
        redis_url=settings.redis_url,
        secret=settings.click_secret.get_secret_value().encode(),
        key_id=settings.click_key_id,
        previous_secret=previous.get_secret_value().encode() if previous else None,
        previous_key_id=settings.click_previous_key_id,
        trusted_proxies=settings.trusted_proxies,
        anonymize_ip=settings.anonymize_ip,
        cookie_name=settings.cookie_name,
        cookie_max_age_s=settings.cookie_max_age_days * 86_400,
        cookie_domain=settings.cookie_domain,
        cookie_secure=settings.secure_cookie,
        cache_max_entries=settings.cache_max_entries,
        cache_max_bytes=settings.cache_max_bytes,
        replica_max_bytes=settings.replica_max_bytes,
        replica_resync_s=settings.replica_resync_seconds,
        replica_nice=settings.background_nice,
        cache_ttl_s=settings.cache_ttl_seconds,
        cache_stale_s=settings.cache_stale_seconds,
        negative_ttl_s=settings.negative_ttl_seconds,
        redis_connect_timeout_ms=settings.redis_connect_timeout_ms,
        redis_timeout_ms=settings.redis_timeout_ms,
        redis_retry_after_ms=settings.redis_retry_after_ms,
        buffer_max_events=settings.buffer_max_events,
        blocked_action=settings.blocked_action,
        geoip_db=settings.geoip_db or None,
        geoip_reload_s=settings.geoip_reload_seconds,
    )


def start_shipper(tracker: Any, settings: TrackerSettings) -> Any:
    """Starts the Rust thread that ships `tracker`'s click events to SQS and spills them to Redis."""
    return _native.Shipper(
        tracker,
        queue_name=settings.clicks_queue,
        region=settings.aws_region,
        endpoint_url=settings.sqs_endpoint_url,
        sqs_timeout_s=settings.sqs_timeout_seconds,
        max_receives=settings.sqs_max_receives,
        redis_url=settings.redis_url,
        redis_connect_timeout_ms=settings.redis_connect_timeout_ms,
        # Spilling writes up to 100 bodies of 256 KiB at once: the click path's 50 ms would be too tight.
        redis_timeout_ms=max(1, int(settings.sqs_timeout_seconds * 1000)),
        max_body_bytes=settings.sqs_max_body_bytes,
        retry_attempts=settings.sqs_retry_attempts,
        flush_interval_ms=settings.flush_interval_ms,
        spill_high_water=settings.spill_high_water,
        max_pending_bytes=MAX_PENDING_BYTES,
        nice=settings.background_nice,
        log_level=logging.getLogger("adclick.tracker.shipper").getEffectiveLevel(),
        log_role="tracker",
    )


class NativeCollector:
    """Exposes the Rust engine's and shipper's atomic counters as Prometheus metrics at scrape time."""

    def __init__(self, tracker: Any, shipper: Callable[[], Any] = lambda: None) -> None:
        self.tracker = tracker
        self.shipper = shipper

    def collect(self) -> Any:
        s = self.tracker.stats()
        requests = CounterMetricFamily("adclick_click_requests", "Click requests by outcome", labels=["outcome"])
        for outcome, n in s["outcomes"]:
            requests.add_metric([outcome], n)
        yield requests
        buckets = [(str(us / 1e6), n) for us, n in s["latency_buckets_us"]]
        buckets.append(("+Inf", s["latency_count"]))
        yield HistogramMetricFamily(
            "adclick_click_seconds",
            "Time spent in the Rust click engine per request",
            buckets=buckets,
            sum_value=s["latency_sum_seconds"],
        )
        for name, key, doc in (
            ("adclick_cache_hits", "cache_hits", "Link cache hits"),
            ("adclick_cache_stale_hits", "cache_stale_hits", "Stale link cache hits served while Redis was down"),
            ("adclick_cache_misses", "cache_misses", "Link cache misses read from Redis"),
            ("adclick_cache_negative_hits", "cache_negative_hits", "Unknown slugs answered from the negative cache"),
            ("adclick_cache_invalid", "cache_invalid", "Link configs in Redis that failed to decode"),
            ("adclick_cache_invalidations", "cache_invalidations", "Invalidations received over pub/sub"),
            ("adclick_redis_errors", "redis_errors", "Redis errors and timeouts seen by the link cache"),
            ("adclick_redis_reconnects", "redis_reconnects", "Pub/sub resubscriptions after a Redis outage"),
            ("adclick_events_buffered", "events_buffered_total", "Click events accepted into the buffer"),
            ("adclick_events_dropped", "events_dropped_total", "Click events refused because the buffer was full"),
            ("adclick_replica_hits", "replica_hits", "Clicks whose link the replica answered from memory"),
            ("adclick_replica_absent", "replica_absent", "Slugs not in the replica, passed to the cache"),
            ("adclick_replica_passed", "replica_passed", "Lookups the replica passed to the cache"),
            ("adclick_replica_loads", "replica_loads", "Full loads of every link config into the replica"),
            ("adclick_replica_refreshes", "replica_refreshes", "Links the replica re-read after an invalidation"),
            ("adclick_replica_invalid", "replica_invalid", "Link configs the replica found undecodable"),
            ("adclick_replica_redis_errors", "replica_redis_errors", "Failed Redis commands of the replica's loader"),
            ("adclick_ipblock_loads", "ipblock_loads", "Reads of the IP blocklist that Redis answered"),
            ("adclick_ipblock_invalid", "ipblock_invalid", "IP blocklist values that did not decode (previous kept)"),
            ("adclick_ipblock_redis_errors", "ipblock_redis_errors", "Failed Redis reads of the IP blocklist"),
            ("adclick_geoip_lookups", "geoip_lookups", "Client addresses looked up in the country database"),
            ("adclick_geoip_hits", "geoip_hits", "Country database lookups that found a country"),
            ("adclick_geoip_reloads", "geoip_reloads", "Changed country database files read and swapped in"),
            ("adclick_geoip_reload_errors", "geoip_reload_errors", "Country database files refused (previous kept)"),
        ):
            yield CounterMetricFamily(name, doc, value=s[key])
        yield GaugeMetricFamily("adclick_event_buffer_depth", "Click events waiting to ship", value=s["buffer_depth"])
        for name, key, doc in (
            ("adclick_cache_entries", "cache_entries", "Entries in the link cache"),
            ("adclick_cache_bytes", "cache_bytes", "Estimated bytes of the link cache's entries"),
            ("adclick_cache_max_entries", "cache_max_entries", "ADCLICK_CACHE_MAX_ENTRIES: the cache's entry bound"),
            ("adclick_cache_max_bytes", "cache_max_bytes", "ADCLICK_CACHE_MAX_BYTES: the cache's byte bound"),
            ("adclick_link_routes", "link_routes", "Distinct link routes in memory, shared by links that route alike"),
            ("adclick_link_routes_bytes", "link_routes_bytes", "Bytes of the shared link routes"),
            ("adclick_replica_state", "replica_state", "Link replica: 0 off, 1 loading, 2 serving, 3 stale"),
            ("adclick_replica_links", "replica_links", "Links held by the replica"),
            ("adclick_replica_bytes", "replica_bytes", "Bytes of the replica's table (routes apart)"),
            ("adclick_replica_max_bytes", "replica_max_bytes", "ADCLICK_REPLICA_MAX_BYTES"),
            ("adclick_replica_over_budget", "replica_over_budget", "1 when the links did not fit the replica's budget"),
            ("adclick_ipblock_entries", "ipblock_entries", "Addresses and networks on the IP blocklist in force"),
            ("adclick_ipblock_ranges", "ipblock_ranges", "Disjoint address ranges of the IP blocklist after merging"),
            ("adclick_ipblock_loaded", "ipblock_loaded", "1 once the IP blocklist has been read from Redis"),
            ("adclick_geoip_build_timestamp", "geoip_build_epoch", "When the country database in force was built"),
        ):
            yield GaugeMetricFamily(name, doc, value=s[key])
        yield from self.collect_shipping()

    def collect_shipping(self) -> Any:
        shipper = self.shipper()
        s = shipper.stats() if shipper is not None else {}
        for name, key, doc in (
            ("adclick_sqs_messages_sent", "messages_sent", "Click messages (packed bodies) SQS accepted"),
            ("adclick_sqs_requests", "requests", "SendMessageBatch calls made"),
            ("adclick_sqs_failures", "failures", "SQS calls that failed in whole or in part"),
            ("adclick_spilled_messages", "spilled", "Click messages written to the Redis spill list"),
            ("adclick_replayed_messages", "replayed", "Click messages moved from the Redis spill list to SQS"),
        ):
            yield CounterMetricFamily(name, doc, value=s.get(key, 0))
        dropped = CounterMetricFamily(
            "adclick_dropped_messages",
            "Click messages given up: refused by SQS, over the in-memory bound, or unsent at exit",
            labels=["reason"],
        )
        counts = dict(s.get("dropped", ()))
        for reason in DROP_REASONS:
            dropped.add_metric([reason], counts.get(reason, 0))
        yield dropped
        yield GaugeMetricFamily(
            "adclick_spill_backlog", "Click messages waiting in the Redis spill list", value=s.get("spill_backlog", 0)
        )


class TrackerProcess:
    """One tracker process: the Robyn app, its engine, shipper, reaper and shutdown sequence."""

    def __init__(self, settings: TrackerSettings) -> None:
        self.settings = settings
        self.tracker = build_tracker(settings)
        self.shipper: Any = None
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(NativeCollector(self.tracker, lambda: self.shipper))
        self.draining = False
        self.started = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self._signal_lock = threading.Lock()
        self._early_signal: int | None = None
        self.signals = SignalWatcher(self.signal_received)
        self._tasks: set[asyncio.Task[None]] = set()
        self.reaper = ConnectionReaper(
            settings.tracker_port,
            header_timeout=settings.header_timeout_seconds,
            keepalive_timeout=settings.keepalive_timeout_seconds,
            interval=settings.reaper_interval_seconds,
            on_start=lambda: lower_thread_priority(settings.background_nice),
        )
        self.country_headers = [h.strip().lower() for h in settings.country_headers.split(",") if h.strip()]

    # -- request handlers (sync: they run on an actix thread holding the GIL, faster than async here) --

    def click(self, request: Any, head: bool) -> Any:
        from robyn import Response

        headers = request.headers
        country = None
        for name in self.country_headers:
            country = headers.get(name)
            if country:
                break
        status, location, cookie = self.tracker.click(
            head,
            request.path_params["slug"],
            request.query_params.to_dict(),
            headers.get("user-agent"),
            headers.get("referer"),
            headers.get("x-forwarded-for"),
            request.ip_addr,
            country,
        )
        if status == 302:
            out = {"Location": location, "Cache-Control": "no-store"}
            if cookie is not None:
                out["Set-Cookie"] = cookie
            return Response(302, out, "")
        return Response(status, PLAIN, "" if head else ERROR_TEXT.get(status, "error\n"))

    def health(self, request: Any) -> Any:
        from robyn import Response

        hdrs = {"Content-Type": "application/json", "Cache-Control": "no-store"}
        if self.draining:
            return Response(503, hdrs, '{"status":"draining"}')
        if not self.started:
            return Response(503, hdrs, '{"status":"starting"}')
        try:
            self.tracker.ping()
        except _native.RedisUnavailable:
            return Response(503, hdrs, '{"status":"error","redis":"down"}')
        return Response(200, hdrs, '{"status":"ok"}')

    def live(self, request: Any) -> Any:
        from robyn import Response

        return Response(200, {"Content-Type": "application/json"}, '{"status":"ok"}')

    def metrics(self, request: Any) -> Any:
        from robyn import Response

        return Response(200, {"Content-Type": "text/plain; version=0.0.4"}, generate_latest(self.registry).decode())

    # -- lifecycle --

    async def on_startup(self) -> None:
        # After any fork, before we report ready: the first click is checked against the IP blocklist.
        if not await asyncio.to_thread(self.tracker.start, BLOCKLIST_WAIT_S):
            log.warning(
                "IP blocklist not read within %.0fs (Redis down?): clicks go unchecked until it is", BLOCKLIST_WAIT_S
            )
        self.shipper = start_shipper(self.tracker, self.settings)
        settle_heap()
        lower_thread_priority(self.settings.background_nice)  # this is the event-loop thread
        self.reaper.start()
        with self._signal_lock:
            self.loop = asyncio.get_running_loop()
            early, self._early_signal = self._early_signal, None
        self.started = True
        log.info("tracker process %d ready on port %d", os.getpid(), self.settings.tracker_port)
        if early is not None:
            self.begin_shutdown(early)

    def signal_received(self, sig: int) -> None:
        """Called on the signal thread: hands the signal to the event loop, or keeps it for startup to act on."""
        with self._signal_lock:
            if self.loop is None:
                self._early_signal = sig
                return
            loop = self.loop
        loop.call_soon_threadsafe(self.begin_shutdown, sig)

    def begin_shutdown(self, sig: int) -> None:
        if self.draining:
            return
        self.draining = True
        name = signal.Signals(sig).name
        log.info("%s: draining for %.1fs, then flushing click events", name, self.settings.drain_seconds)
        self._tasks.add(asyncio.get_running_loop().create_task(self._drain_and_exit()))

    async def _drain_and_exit(self) -> None:
        code = 0
        try:
            await asyncio.sleep(self.settings.drain_seconds)
            self.tracker.close()
            deadline = max(5.0, self.settings.sqs_timeout_seconds * 4)
            sent, spilled, rejected, dropped = await asyncio.to_thread(self.shipper.stop, deadline)
            log.info("flushed on shutdown: sent=%d spilled=%d rejected=%d dropped=%d", sent, spilled, rejected, dropped)
            if self.tracker.buffered():
                log.error("%d click events still buffered at exit", self.tracker.buffered())
                code = 1
        except Exception:
            log.exception("shutdown flush failed")
            code = 1
        finally:
            self.reaper.stop()
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            # Robyn has no clean way to stop its actix thread from Python; everything we own is flushed.
            os._exit(code)

    def build_app(self) -> Any:
        from robyn import Robyn
        from robyn.argument_parser import Config

        saved, sys.argv = sys.argv, sys.argv[:1]
        try:
            config = Config()
        finally:
            sys.argv = saved
        config.disable_openapi = True
        config.log_level = "WARN"
        config.processes = 1
        config.workers = self.settings.tracker_workers
        app = Robyn(__file__, config=config)
        click = self.click

        def click_get(request: Any) -> Any:
            return click(request, False)

        def click_head(request: Any) -> Any:
            return click(request, True)

        _route_direct(app, "get", "/c/:slug", click_get)
        _route_direct(app, "head", "/c/:slug", click_head)
        _route_direct(app, "get", "/health", self.health)
        _route_direct(app, "get", "/health/live", self.live)
        _route_direct(app, "get", "/metrics", self.metrics)
        app.startup_handler(self.on_startup)
        return app

    def serve(self, *, check_port: bool = True) -> None:
        s = self.settings
        # Before Robyn binds the port or starts a thread: a SIGTERM from now on is drained, never lost.
        self.signals.start()
        if check_port:
            check_port_free(s.tracker_host, s.tracker_port)
        app = self.build_app()
        app.start(host=s.tracker_host, port=s.tracker_port, _check_port=False)
