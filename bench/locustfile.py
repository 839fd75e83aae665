"""Locust load for adclick: tracker clicks and advertiser postbacks, stepped up by `StepShape`.

Users:
- `TrackerUser` clicks `GET|HEAD /c/{slug}` on `--host` without following redirects: a 302 with a `Location` is a
  success, anything else a failure. Slugs `bench-0` .. `bench-{N-1}` (the links bench/compare.py and
  bench/hpa_tune.py write) are drawn with a popularity skew; User-Agents, `CF-IPCountry`, sub ids, click ids of
  ad networks and referers are mixed the way ad traffic looks, with a share of HEAD requests and of bots.
- `PostbackUser` sends `GET|POST /postback` to `--postback-host`: valid postbacks (a fresh ClickID minted with the
  click secret, a valid advertiser token) and duplicates of them expect 200; forged ones (bad or missing token,
  a ClickID signed with another key, garbage) count as a success only when refused with 401 or 400.

`StepShape` starts `--step-start-users`, adds `--step-users` every `--step-seconds` up to `--step-max-users`, then
stops. Every option below also reads a `LOCUST_*` variable; a master passes them on to its workers.
Besides Locust's own CSV files (`--csv PREFIX --csv-full-history`), the master writes `PREFIX_steps.csv`: one row
per step (users, requests per second, p50/p95/p99 in ms, errors), from each step's last `step_seconds -
step_settle_seconds` seconds, with latencies kept at 1% resolution rather than Locust's whole milliseconds.

    locust -f bench/locustfile.py --headless --host http://127.0.0.1:8000 --csv out/run --csv-full-history \
        --step-start-users 10 --step-users 10 --step-seconds 20 --step-max-users 100 TrackerUser

See the README's "Load tests" section for distributed runs (a master and workers) against a cluster.
"""

from __future__ import annotations

import bisect
import collections
import csv
import itertools
import json
import logging
import math
import os
import random
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

from locust import FastHttpUser, LoadTestShape, events, task
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner

log = logging.getLogger("adclick.locust")

DEFAULT_CLICK_SECRET = "dev-only-click-secret-change-me"
# Response times are kept in buckets 1% wide (bucket k holds about 1.01**k microseconds).
_LOG_STEP = math.log(1.01)

# ---------------------------------------------------------------- traffic mix

BROWSERS = [
    (30, "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
     "Version/17.4 Mobile/15E148 Safari/604.1"),
    (26, "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 "
     "Mobile Safari/537.36"),
    (6, "Mozilla/5.0 (Linux; Android 13; SM-A546B) AppleWebKit/537.36 (KHTML, like Gecko) "
     "SamsungBrowser/24.0 Chrome/117.0.0.0 Mobile Safari/537.36"),
    (16, "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 "
     "Safari/537.36"),
    (7, "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 "
     "Safari/605.1.15"),
    (3, "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0"),
    (4, "Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 "
     "Mobile/15E148 Safari/604.1"),
    (5, "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
     "Mobile/15E148 [FBAN/FBIOS;FBAV/460.0.0.38.108;FBBV/574567770;FBDV/iPhone15,2;FBMD/iPhone;FBSN/iOS]"),
    (3, "Mozilla/5.0 (Linux; Android 14; Pixel 7 Build/UQ1A.240205.004; wv) AppleWebKit/537.36 (KHTML, like Gecko) "
     "Version/4.0 Chrome/124.0.0.0 Mobile Safari/537.36 Instagram 327.0.0.36.89 Android"),
]  # fmt: skip
BOTS = [
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "AdsBot-Google (+http://www.google.com/adsbot.html)",
    "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
    "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
    "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/124.0.0.0 Safari/537.36",
    "curl/8.5.0",
    "python-requests/2.31.0",
]
# None: no country header at all (a direct hit, no CDN in front).
COUNTRIES = [
    (34, "US"), (10, "IN"), (8, "GB"), (8, "BR"), (7, "DE"), (6, "FR"), (5, "CA"), (4, "JP"), (4, "MX"),
    (3, "ES"), (3, "IT"), (3, "AU"), (2, "ID"), (3, None),
]  # fmt: skip
LANGUAGES = ["en-US,en;q=0.9", "en-GB,en;q=0.8", "de-DE,de;q=0.9,en;q=0.5", "pt-BR,pt;q=0.9", "hi-IN,en;q=0.7"]
REFERERS = [
    None,
    None,
    "https://www.facebook.com/",
    "https://www.google.com/",
    "https://t.co/",
    "https://news.example/a",
]
CURRENCIES = ["USD", "USD", "USD", "EUR", "GBP", "BRL"]


def _weighted(pairs: list[tuple[int, Any]]) -> tuple[list[Any], list[int]]:
    values = [value for _, value in pairs]
    cum = list(itertools.accumulate(weight for weight, _ in pairs))
    return values, cum


_BROWSER_VALUES, _BROWSER_CUM = _weighted(BROWSERS)
_COUNTRY_VALUES, _COUNTRY_CUM = _weighted(COUNTRIES)


class SlugPicker:
    """Slugs `{prefix}0` .. `{prefix}{n-1}`, Zipf-skewed: a few links take most clicks, as in real campaigns."""

    def __init__(self, prefix: str, n: int, skew: float = 0.8) -> None:
        self.slugs = [f"{prefix}{i}" for i in range(n)]
        self.cum = list(itertools.accumulate(1 / (i + 1) ** skew for i in range(n)))

    def pick(self, rng: random.Random) -> str:
        return rng.choices(self.slugs, cum_weights=self.cum)[0]


def click_request(rng: random.Random, slugs: SlugPicker, bot_share: float) -> tuple[str, dict[str, str], bool]:
    """(path and query, headers, is a bot) of one click."""
    bot = rng.random() < bot_share
    headers = {"User-Agent": rng.choice(BOTS) if bot else rng.choices(_BROWSER_VALUES, cum_weights=_BROWSER_CUM)[0]}
    country = rng.choices(_COUNTRY_VALUES, cum_weights=_COUNTRY_CUM)[0]
    if country is not None:
        headers["CF-IPCountry"] = country
    if not bot:
        headers["Accept-Language"] = rng.choice(LANGUAGES)
        referer = rng.choice(REFERERS)
        if referer:
            headers["Referer"] = referer
    # Publishers and creatives: a long tail of sub1 values, sub2 with characters that must be percent-encoded.
    query = [f"sub1=pub{int(rng.paretovariate(1.2)) % 500}", f"sub2=ad%20{rng.randint(1, 20)}"]
    if rng.random() < 0.3:
        query.append(f"sub3=placement-{rng.choice(['feed', 'story', 'search', 'banner'])}")
    r = rng.random()
    if r < 0.25:
        query.append(f"gclid=Cj0K{uuid.UUID(int=rng.getrandbits(128)).hex[:22]}")
    elif r < 0.45:
        query.append(f"fbclid=IwAR{uuid.UUID(int=rng.getrandbits(128)).hex[:24]}")
    return f"/c/{slugs.pick(rng)}?{'&'.join(query)}", headers, bot


# ---------------------------------------------------------------- options


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    parser.add_argument("--slugs", type=int, default=64, env_var="LOCUST_SLUGS", help="links bench-0 .. bench-N-1")
    parser.add_argument("--slug-prefix", default="bench-", env_var="LOCUST_SLUG_PREFIX", help="slug prefix")
    parser.add_argument(
        "--user-rps",
        type=float,
        default=0.0,
        env_var="LOCUST_USER_RPS",
        help="requests per second per user (constant throughput); 0 = no wait, a closed loop like wrk",
    )
    parser.add_argument("--head-share", type=float, default=0.05, env_var="LOCUST_HEAD_SHARE", help="share of HEAD")
    parser.add_argument("--bot-share", type=float, default=0.06, env_var="LOCUST_BOT_SHARE", help="share of bot UAs")
    parser.add_argument(
        "--postback-host", default="", env_var="LOCUST_POSTBACK_HOST", help="base URL of the postback role"
    )
    parser.add_argument("--postback-valid", type=float, default=80, env_var="LOCUST_POSTBACK_VALID", help="weight")
    parser.add_argument(
        "--postback-duplicate", type=float, default=15, env_var="LOCUST_POSTBACK_DUPLICATE", help="weight"
    )
    parser.add_argument("--postback-forged", type=float, default=5, env_var="LOCUST_POSTBACK_FORGED", help="weight")
    parser.add_argument(
        "--advertiser-id", type=int, default=5, env_var="LOCUST_ADVERTISER_ID", help="advertiser of the token"
    )
    parser.add_argument(
        "--click-secret",
        default=os.environ.get("ADCLICK_CLICK_SECRET", DEFAULT_CLICK_SECRET),
        env_var="LOCUST_CLICK_SECRET",
        is_secret=True,
        help="ClickID key the postback role verifies with (default: ADCLICK_CLICK_SECRET or the dev key)",
    )
    parser.add_argument("--click-key-id", type=int, default=1, env_var="LOCUST_CLICK_KEY_ID", help="its key id")
    parser.add_argument(
        "--postback-secret",
        default=os.environ.get("ADCLICK_POSTBACK_SECRET", ""),
        env_var="LOCUST_POSTBACK_SECRET",
        is_secret=True,
        help="token secret (default: ADCLICK_POSTBACK_SECRET or the dev secret)",
    )
    parser.add_argument("--step-start-users", type=int, default=10, env_var="LOCUST_STEP_START_USERS")
    parser.add_argument("--step-users", type=int, default=10, env_var="LOCUST_STEP_USERS", help="users added per step")
    parser.add_argument("--step-seconds", type=float, default=30, env_var="LOCUST_STEP_SECONDS", help="step length")
    parser.add_argument("--step-max-users", type=int, default=100, env_var="LOCUST_STEP_MAX_USERS")
    parser.add_argument(
        "--step-settle-seconds",
        type=float,
        default=5,
        env_var="LOCUST_STEP_SETTLE_SECONDS",
        help="seconds at the start of each step left out of its row in PREFIX_steps.csv",
    )
    parser.add_argument(
        "--step-csv", default="", env_var="LOCUST_STEP_CSV", help="where the per-step table goes (PREFIX_steps.csv)"
    )


def _options_of(environment: Environment) -> Any:
    if environment.parsed_options is None:
        raise RuntimeError("bench/locustfile.py needs Locust's command line options")
    return environment.parsed_options


# ---------------------------------------------------------------- users


class AdclickUser(FastHttpUser):
    abstract = True

    def wait_time(self) -> float:
        rate = _options_of(self.environment).user_rps
        if rate <= 0:
            return 0.0
        # constant_throughput, kept on the instance because the rate is an option, not a class attribute.
        now = time.perf_counter()
        last = getattr(self, "_next_run", now)
        self._next_run = max(now, last) + 1.0 / rate
        return max(0.0, self._next_run - 1.0 / rate - now)


class TrackerUser(AdclickUser):
    """One visitor after another clicking ad links: a 302 with a Location is the only success."""

    weight = 20

    def on_start(self) -> None:
        opts = _options_of(self.environment)
        self.rng = random.Random()
        self.slugs = SlugPicker(opts.slug_prefix, opts.slugs)
        self.head_share, self.bot_share = opts.head_share, opts.bot_share

    @task
    def click(self) -> None:
        path, headers, bot = click_request(self.rng, self.slugs, self.bot_share)
        head = self.rng.random() < self.head_share
        method = "HEAD" if head else "GET"
        name = f"{method} /c/[slug]" + (" (bot)" if bot else "")
        with self.client.request(
            method, path, headers=headers, name=name, allow_redirects=False, catch_response=True
        ) as response:
            if response.status_code == 302 and response.headers.get("location"):
                response.success()
            elif response.status_code == 302:
                response.failure("302 without a Location header")
            else:
                response.failure(f"expected 302, got {response.status_code}")


class PostbackUser(AdclickUser):
    """An advertiser's server reporting conversions: valid ones, retries of them (duplicates), and forgeries."""

    weight = 1

    def __init__(self, environment: Environment) -> None:
        opts = _options_of(environment)
        # Every class gets --host from the runner; postbacks go to the postback role instead.
        if opts.postback_host:
            self.host = opts.postback_host.rstrip("/")
        super().__init__(environment)

    def on_start(self) -> None:
        opts = _options_of(self.environment)
        # The package is needed only here: ClickIDs come from the same Rust codec the tracker signs with.
        from adclick import _native
        from adclick.core.settings import DEFAULT_POSTBACK_SECRET
        from adclick.core.tokens import make_token

        self.rng = random.Random()
        self.codec = _native.ClickIdCodec(opts.click_key_id, opts.click_secret.encode())
        self.forger = _native.ClickIdCodec(opts.click_key_id, b"not-our-click-secret-" + os.urandom(8).hex().encode())
        secret = opts.postback_secret or DEFAULT_POSTBACK_SECRET
        self.token = make_token(secret, opts.advertiser_id, 1)
        self.stolen_token = make_token("a-secret-that-is-not-ours", opts.advertiser_id, 1)
        self.sent: collections.deque[dict[str, str]] = collections.deque(maxlen=1000)
        self.slugs = opts.slugs
        self.kinds = ["valid", "duplicate", "forged"]
        self.kind_weights = [opts.postback_valid, opts.postback_duplicate, opts.postback_forged]
        if sum(self.kind_weights) <= 0:
            raise RuntimeError("--postback-valid, --postback-duplicate and --postback-forged are all 0")

    def _click_id(self, codec: Any) -> str:
        link_id = 1000 + self.rng.randrange(self.slugs)  # the ids bench links carry
        ts_ms = int(time.time() * 1000) - self.rng.randint(1_000, 3_600_000)  # the click came before the sale
        return str(codec.generate(link_id, ts_ms))

    def _valid_fields(self) -> dict[str, str]:
        return {
            "click_id": self._click_id(self.codec),
            "txid": f"ORDER-{uuid.uuid4().hex[:16]}",
            "amount": f"{self.rng.randint(5, 400)}.{self.rng.randint(0, 99):02d}",
            "currency": self.rng.choice(CURRENCIES),
            "status": self.rng.choice(["approved", "approved", "pending"]),
            "token": self.token,
        }

    def _forged_fields(self) -> tuple[dict[str, str], str]:
        fields = self._valid_fields()
        how = self.rng.choice(["bad_mac", "foreign_token", "no_token", "foreign_click_id", "garbage_click_id"])
        if how == "bad_mac":
            fields["token"] = fields["token"][:-4] + ("AAAA" if not fields["token"].endswith("AAAA") else "BBBB")
        elif how == "foreign_token":
            fields["token"] = self.stolen_token
        elif how == "no_token":
            del fields["token"]
        elif how == "foreign_click_id":
            fields["click_id"] = self._click_id(self.forger)
        else:
            fields["click_id"] = uuid.uuid4().hex + uuid.uuid4().hex[:8]
        return fields, how

    def _send(self, fields: dict[str, str], name: str, expect: set[int]) -> None:
        how = self.rng.random()
        # Advertisers' servers use all three: a GET with a query, a form POST, a JSON POST.
        if how < 0.6:
            method, path, body, headers = "GET", "/postback?" + urllib.parse.urlencode(fields), None, {}
        elif how < 0.85:
            body = urllib.parse.urlencode(fields)
            method, path, headers = "POST", "/postback", {"Content-Type": "application/x-www-form-urlencoded"}
        else:
            method, path, body, headers = "POST", "/postback", json.dumps(fields), {"Content-Type": "application/json"}
        call = self.client.request(
            method, path, data=body, headers=headers, name=name, catch_response=True, allow_redirects=False
        )
        with call as response:
            if response.status_code in expect:
                response.success()
            else:
                response.failure(f"expected {' or '.join(map(str, sorted(expect)))}, got {response.status_code}")

    @task
    def postback(self) -> None:
        kind = self.rng.choices(self.kinds, weights=self.kind_weights)[0]
        if kind == "duplicate" and self.sent:
            # An advertiser retrying: the same ClickID and txid again; the role queues it, the worker deduplicates.
            self._send(dict(self.rng.choice(self.sent)), "postback duplicate", {200})
        elif kind == "forged":
            fields, how = self._forged_fields()
            # Refused correctly is the success here: 401 for a token, 400 for a ClickID.
            expect = {400} if how.endswith("click_id") else {401}
            self._send(fields, f"postback forged ({how})", expect)
        else:
            fields = self._valid_fields()
            self._send(fields, "postback valid", {200})
            self.sent.append(fields)


# ---------------------------------------------------------------- per-second latencies and the step table


class Seconds:
    """Requests, failures and response-time buckets by wall-clock second."""

    def __init__(self) -> None:
        self.data: dict[int, list[Any]] = {}

    def record(self, when: float, response_time_ms: float, failed: bool) -> None:
        entry = self.data.get(int(when))
        if entry is None:
            entry = self.data[int(when)] = [0, 0, collections.Counter()]
        entry[0] += 1
        entry[1] += failed
        micros = max(1.0, response_time_ms * 1000)
        entry[2][round(math.log(micros) / _LOG_STEP)] += 1

    def take(self) -> dict[str, list[Any]]:
        """The samples so far as msgpack-friendly data, and forget them (a worker's report to its master)."""
        out = {str(sec): [n, f, list(b.items())] for sec, (n, f, b) in self.data.items()}
        self.data = {}
        return out

    def merge(self, data: dict[str, list[Any]]) -> None:
        for sec, (n, f, buckets) in data.items():
            entry = self.data.get(int(sec))
            if entry is None:
                entry = self.data[int(sec)] = [0, 0, collections.Counter()]
            entry[0] += n
            entry[1] += f
            for key, count in buckets:
                entry[2][int(key)] += count

    def window(self, start: float, end: float) -> tuple[int, int, collections.Counter[int], int]:
        """Requests, failures, buckets and whole seconds in [start, end)."""
        n = f = 0
        buckets: collections.Counter[int] = collections.Counter()
        secs = range(math.ceil(start), math.floor(end))
        for sec in secs:
            entry = self.data.get(sec)
            if entry:
                n += entry[0]
                f += entry[1]
                buckets.update(entry[2])
        return n, f, buckets, len(secs)


def percentile_ms(buckets: collections.Counter[int], q: float) -> float | None:
    total = sum(buckets.values())
    if not total:
        return None
    keys = sorted(buckets)
    cum = list(itertools.accumulate(buckets[k] for k in keys))
    k = keys[min(len(keys) - 1, bisect.bisect_left(cum, q * total))]
    return math.exp(k * _LOG_STEP) / 1000


SECONDS = Seconds()
# (step number, target users, wall-clock start) as StepShape enters each step, and its wall-clock end.
STEPS: list[tuple[int, int, float]] = []
SHAPE_END: list[float] = []


@events.init.add_listener
def _init(environment: Environment, **_kw: Any) -> None:
    runner = environment.runner

    @environment.events.request.add_listener
    def _on_request(response_time: float, exception: BaseException | None, **_kw: Any) -> None:
        SECONDS.record(time.time(), response_time, exception is not None)

    if isinstance(runner, WorkerRunner):

        @environment.events.report_to_master.add_listener
        def _report(data: dict[str, Any], **_kw: Any) -> None:
            data["adclick_seconds"] = SECONDS.take()

    if isinstance(runner, MasterRunner):

        @environment.events.worker_report.add_listener
        def _merge(data: dict[str, Any], **_kw: Any) -> None:
            SECONDS.merge(data.get("adclick_seconds", {}))

    if not isinstance(runner, WorkerRunner):

        @environment.events.test_start.add_listener
        def _check(environment: Environment, **_kw: Any) -> None:
            if PostbackUser in environment.user_classes and not _options_of(environment).postback_host:
                log.error("PostbackUser needs --postback-host (LOCUST_POSTBACK_HOST); name TrackerUser alone otherwise")
                assert environment.runner is not None
                environment.runner.quit()

        @environment.events.quitting.add_listener
        def _write_steps(environment: Environment, **_kw: Any) -> None:
            write_steps(environment)


def step_rows(settle: float) -> list[dict[str, Any]]:
    rows = []
    ends = [start for _, _, start in STEPS[1:]] + [SHAPE_END[0] if SHAPE_END else time.time()]
    for (number, users, start), end in zip(STEPS, ends, strict=True):
        begin = start + settle if end - start - settle >= 1 else start
        n, failed, buckets, seconds = SECONDS.window(begin, end)
        if not seconds:
            continue
        p50, p95, p99 = (percentile_ms(buckets, q) for q in (0.5, 0.95, 0.99))
        rows.append(
            {
                "step": number,
                "users": users,
                "start": round(begin, 3),
                "end": round(end, 3),
                "seconds": seconds,
                "requests": n,
                "failures": failed,
                "rps": round(n / seconds, 1),
                "p50_ms": None if p50 is None else round(p50, 3),
                "p95_ms": None if p95 is None else round(p95, 3),
                "p99_ms": None if p99 is None else round(p99, 3),
                "error_rate": round(failed / n, 6) if n else None,
            }
        )
    return rows


def write_steps(environment: Environment) -> None:
    opts = _options_of(environment)
    path = opts.step_csv or (f"{opts.csv_prefix}_steps.csv" if opts.csv_prefix else "")
    rows = step_rows(opts.step_settle_seconds)
    for row in rows:
        log.info(
            "step %d: %d users, %.0f req/s, p50 %s ms, p95 %s ms, p99 %s ms, %d errors of %d",
            row["step"], row["users"], row["rps"], row["p50_ms"], row["p95_ms"], row["p99_ms"], row["failures"],
            row["requests"],
        )  # fmt: skip
    if not path:
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as out:
        fields = ["step", "users", "start", "end", "seconds", "requests", "failures", "rps"]
        fields += ["p50_ms", "p95_ms", "p99_ms", "error_rate"]
        writer = csv.DictWriter(out, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    log.info("per-step table written to %s", path)


class StepShape(LoadTestShape):
    """Start users, add a step of users every step length, up to the maximum; then stop."""

    def tick(self) -> tuple[int, float] | None:
        assert self.runner is not None
        opts = _options_of(self.runner.environment)
        start, step, length, top = opts.step_start_users, opts.step_users, opts.step_seconds, opts.step_max_users
        steps = (max(0, top - start) // step + 1) if step > 0 else 1
        elapsed = self.get_run_time()
        number = int(elapsed // length)
        if number >= steps:
            if not SHAPE_END:
                SHAPE_END.append(time.time())
            return None
        users = min(top, start + number * step) if step > 0 else start
        if not STEPS or STEPS[-1][0] != number:
            STEPS.append((number, users, time.time()))
        # Spawn a step's users within about a second, so the step's load is there for most of its length.
        return users, float(max(step, start, 1))
