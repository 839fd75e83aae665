"""Locust load for adclick: tracker clicks and advertiser postbacks.

Users:
- `TrackerUser` clicks `GET|HEAD /c/{slug}` on `--host` without following redirects: a 302 with a `Location` is a
  success, anything else a failure. Slugs `bench-0` .. `bench-{N-1}` (the links `adclick bench-links N` makes, and
  bench/compare.py and bench/hpa_tune.py write) are drawn with a popularity skew; User-Agents, `CF-IPCountry`, sub
  ids, click ids of ad networks and referers are mixed the way ad traffic looks, with a share of HEAD requests and
  of bots.
- `PostbackUser` clicks a link on `--host` first and reports a conversion for the ClickID its 302 carries, with
  `GET|POST /postback` to `--postback-host`: valid postbacks (that ClickID, the `--advertiser-id` token) and
  duplicates of them expect 200; forged ones (bad or missing token, a ClickID signed with another key, garbage)
  count as a success only when refused with 401 or 400. It runs only with `--postback-host`.

Before the first request the master (or the single process) sends HEAD, which is no click, to a sample of the
slugs, and stops the run with one message when they do not all answer 302 (the links are missing: make them with
`adclick bench-links N`). `-u`, `-r`, `-t`, class selection, the web UI and `--html` work as in any Locust project:

    locust -f bench/locustfile.py --headless --host http://127.0.0.1:8000 -u 50 -r 50 -t 20s TrackerUser

The step load (`StepShape` and its per-step table) is opt in, in bench/locust_steps.py. Every option below also
reads a `LOCUST_*` variable; a master passes them on to its workers. See the README's "Load tests" section.
"""

from __future__ import annotations

import collections
import http.client
import itertools
import json
import logging
import os
import random
import time
import urllib.parse
import uuid
from typing import Any

import gevent
from locust import FastHttpUser, events, task
from locust.env import Environment
from locust.runners import WorkerRunner

log = logging.getLogger("adclick.locust")

DEFAULT_CLICK_SECRET = "dev-only-click-secret-change-me"
# How many slugs the check before the run tries, and how long it waits for each answer.
CHECK_SLUGS = 8
CHECK_TIMEOUT_S = 5.0

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
        "--postback-host",
        default="",
        env_var="LOCUST_POSTBACK_HOST",
        help="base URL of the postback role; without it PostbackUser is left out",
    )
    parser.add_argument("--postback-valid", type=float, default=80, env_var="LOCUST_POSTBACK_VALID", help="weight")
    parser.add_argument(
        "--postback-duplicate", type=float, default=15, env_var="LOCUST_POSTBACK_DUPLICATE", help="weight"
    )
    parser.add_argument("--postback-forged", type=float, default=5, env_var="LOCUST_POSTBACK_FORGED", help="weight")
    parser.add_argument(
        "--advertiser-id",
        type=int,
        default=0,
        env_var="LOCUST_ADVERTISER_ID",
        help="advertiser whose token PostbackUser sends: the bench links' advertiser, as `adclick bench-links` prints",
    )
    parser.add_argument(
        "--click-secret",
        default=os.environ.get("ADCLICK_CLICK_SECRET", DEFAULT_CLICK_SECRET),
        env_var="LOCUST_CLICK_SECRET",
        is_secret=True,
        help="the tracker's ClickID key, to read its ClickIDs (default: ADCLICK_CLICK_SECRET or the dev key)",
    )
    parser.add_argument("--click-key-id", type=int, default=1, env_var="LOCUST_CLICK_KEY_ID", help="its key id")
    parser.add_argument(
        "--postback-secret",
        default=os.environ.get("ADCLICK_POSTBACK_SECRET", ""),
        env_var="LOCUST_POSTBACK_SECRET",
        is_secret=True,
        help="token secret (default: ADCLICK_POSTBACK_SECRET or the dev secret)",
    )


def options_of(environment: Environment) -> Any:
    if environment.parsed_options is None:
        raise RuntimeError("bench/locustfile.py needs Locust's command line options")
    return environment.parsed_options


def click_codec(opts: Any) -> Any:
    """The tracker's ClickID codec. The adclick package is needed only here (PostbackUser): the same Rust codec."""
    from adclick import _native

    return _native.ClickIdCodec(opts.click_key_id, opts.click_secret.encode())


def click_id_in(location: str, codec: Any) -> tuple[str, int] | None:
    """(ClickID, link id) of the ClickID a redirect carries: any query value or path segment the codec verifies.

    The links' URL template decides where `{click_id}` goes, so every place is tried rather than one parameter name.
    """
    from adclick import _native

    parts = urllib.parse.urlsplit(location)
    values = [value for _, value in urllib.parse.parse_qsl(parts.query)]
    values += [urllib.parse.unquote(segment) for segment in parts.path.split("/")]
    values += [value for _, value in urllib.parse.parse_qsl(parts.fragment)]
    for value in values:
        if 0 < len(value) <= 40:
            try:
                link_id = codec.verify(value)[3]
            except _native.AdclickError:
                continue
            return value, link_id
    return None


# ---------------------------------------------------------------- users


class AdclickUser(FastHttpUser):
    abstract = True

    def wait_time(self) -> float:
        rate = options_of(self.environment).user_rps
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
        opts = options_of(self.environment)
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
    """An advertiser's server reporting conversions of real clicks: valid ones, retries of them, and forgeries.

    Each valid postback follows a click it made on `--host` (a browser's, counted as a click), so its ClickID is one
    the tracker signed for a real link: the conversion attributes to that link as a real one would.
    """

    weight = 1

    def __init__(self, environment: Environment) -> None:
        opts = options_of(environment)
        self.tracker = (environment.host or "").rstrip("/")
        # Every class gets --host from the runner; postbacks go to the postback role instead.
        if opts.postback_host:
            self.host = opts.postback_host.rstrip("/")
        super().__init__(environment)

    def on_start(self) -> None:
        opts = options_of(self.environment)
        from adclick import _native
        from adclick.core.settings import DEFAULT_POSTBACK_SECRET
        from adclick.core.tokens import make_token

        self.rng = random.Random()
        self.slugs = SlugPicker(opts.slug_prefix, opts.slugs)
        self.codec = click_codec(opts)
        self.forger = _native.ClickIdCodec(opts.click_key_id, b"not-our-click-secret-" + os.urandom(8).hex().encode())
        secret = opts.postback_secret or DEFAULT_POSTBACK_SECRET
        self.token = make_token(secret, opts.advertiser_id, 1)
        self.stolen_token = make_token("a-secret-that-is-not-ours", opts.advertiser_id, 1)
        self.clicks: collections.deque[tuple[str, int]] = collections.deque(maxlen=1000)  # (ClickID, link id)
        self.sent: collections.deque[dict[str, str]] = collections.deque(maxlen=1000)
        self.kinds = ["valid", "duplicate", "forged"]
        self.kind_weights = [opts.postback_valid, opts.postback_duplicate, opts.postback_forged]
        if sum(self.kind_weights) <= 0:
            raise RuntimeError("--postback-valid, --postback-duplicate and --postback-forged are all 0")

    def _click(self) -> tuple[str, int] | None:
        """Click a link on the tracker: the ClickID its 302 carries and its link id, or None (a failure)."""
        path, headers, _ = click_request(self.rng, self.slugs, bot_share=0.0)  # a bot's conversion counts for nothing
        found = None
        with self.client.request(
            "GET",
            self.tracker + path,
            headers=headers,
            name="GET /c/[slug] (then a postback)",
            allow_redirects=False,
            catch_response=True,
        ) as response:
            location = response.headers.get("location")
            if response.status_code != 302 or not location:
                response.failure(f"expected 302 with a Location, got {response.status_code}")
            elif (found := click_id_in(location, self.codec)) is None:
                response.failure("no ClickID that --click-secret verifies in the Location")
            else:
                response.success()
                self.clicks.append(found)
        return found

    def _valid_fields(self, click_id: str) -> dict[str, str]:
        return {
            "click_id": click_id,
            "txid": f"ORDER-{uuid.uuid4().hex[:16]}",
            "amount": f"{self.rng.randint(5, 400)}.{self.rng.randint(0, 99):02d}",
            "currency": self.rng.choice(CURRENCIES),
            "status": self.rng.choice(["approved", "approved", "pending"]),
            "token": self.token,
        }

    def _forged_fields(self, click: tuple[str, int]) -> tuple[dict[str, str], str]:
        fields = self._valid_fields(click[0])
        how = self.rng.choice(["bad_mac", "foreign_token", "no_token", "foreign_click_id", "garbage_click_id"])
        if how == "bad_mac":
            fields["token"] = fields["token"][:-4] + ("AAAA" if not fields["token"].endswith("AAAA") else "BBBB")
        elif how == "foreign_token":
            fields["token"] = self.stolen_token
        elif how == "no_token":
            del fields["token"]
        elif how == "foreign_click_id":
            fields["click_id"] = str(self.forger.generate(click[1], int(time.time() * 1000)))  # a real link, wrong key
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
            click = self.rng.choice(self.clicks) if self.clicks else self._click()
            if click is None:
                return
            fields, how = self._forged_fields(click)
            # Refused correctly is the success here: 401 for a token, 400 for a ClickID.
            expect = {400} if how.endswith("click_id") else {401}
            self._send(fields, f"postback forged ({how})", expect)
        else:
            click = self._click()
            if click is None:
                return
            fields = self._valid_fields(click[0])
            self._send(fields, "postback valid", {200})
            self.sent.append(fields)


# ---------------------------------------------------------------- the check before the first request


def sample_slugs(prefix: str, count: int, rng: random.Random) -> list[str]:
    """The first and last slugs and a few between: a run over missing or too few links fails on one of them."""
    picked = {0, count - 1} | set(rng.sample(range(count), min(count, CHECK_SLUGS - 2)))
    return [f"{prefix}{i}" for i in sorted(picked)]


def fetch(base: str, path: str, method: str) -> tuple[int, str | None]:
    """Status and Location of one request, redirects not followed."""
    parts = urllib.parse.urlsplit(base)
    if parts.scheme == "https":
        # Unverified, like FastHttpUser's default (insecure=True): the check must reach what the load will reach.
        import ssl

        context = ssl._create_unverified_context()
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            parts.hostname or "", parts.port, timeout=CHECK_TIMEOUT_S, context=context
        )
    else:
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=CHECK_TIMEOUT_S)
    try:
        conn.request(method, parts.path.rstrip("/") + path, headers={"User-Agent": _BROWSER_VALUES[0]})
        response = conn.getresponse()
        response.read()
        return response.status, response.getheader("Location")
    finally:
        conn.close()


def why_not_ready(environment: Environment) -> str | None:
    """Why this run would fail from its first request (missing links, a role out of reach), or None."""
    opts = options_of(environment)
    users = set(environment.user_classes)
    if not users & {TrackerUser, PostbackUser}:
        return None
    host = (environment.host or "").rstrip("/")
    if not host:
        return "give the tracker's base URL with --host (e.g. http://127.0.0.1:8000)"
    if PostbackUser in users:
        if not opts.postback_host:
            return "PostbackUser needs --postback-host (LOCUST_POSTBACK_HOST), the postback role's base URL"
        if opts.advertiser_id <= 0:
            return (
                "PostbackUser needs --advertiser-id (LOCUST_ADVERTISER_ID): the bench links' advertiser, which "
                "`adclick bench-links` prints"
            )
    answers: dict[str, tuple[int, str | None]] = {}
    for slug in sample_slugs(opts.slug_prefix, opts.slugs, random.Random()):
        try:
            answers[slug] = fetch(host, f"/c/{slug}", "HEAD")  # HEAD is answered like a click, but records none
            if answers[slug][0] in (405, 501):  # a server without HEAD (the FastAPI baseline): there a GET it is
                answers[slug] = fetch(host, f"/c/{slug}", "GET")
        except (OSError, http.client.HTTPException) as error:
            return f"the tracker at {host} does not answer: {error}"
    bad = {slug: status for slug, (status, location) in answers.items() if status != 302 or not location}
    if bad:
        shown = ", ".join(list(bad)[:3]) + (", ..." if len(bad) > 3 else "")
        statuses = " or ".join(sorted({str(status) for status in bad.values()}))
        prefix = "" if opts.slug_prefix == "bench-" else f" --prefix {opts.slug_prefix}"
        return (
            f"{len(bad)} of {len(answers)} sampled links ({shown}) answer {statuses} at {host}, not a 302 with a "
            f"Location. Create the links {opts.slug_prefix}0 .. {opts.slug_prefix}{opts.slugs - 1} first, on the "
            f"database and Redis this tracker uses: `adclick bench-links {opts.slugs}{prefix}` (README, Load tests); "
            "or pass the --slugs and --slug-prefix they were made with"
        )
    if PostbackUser in users:
        codec = click_codec(opts)
        locations = [location for _, location in answers.values() if location]
        if not any(click_id_in(location, codec) for location in locations):
            return (
                f"PostbackUser finds no ClickID that --click-secret verifies in the links' redirects (such as "
                f"{locations[0][:160]}): their URL needs {{click_id}} (`adclick bench-links --url`), and Locust the "
                "tracker's click secret (--click-secret, ADCLICK_CLICK_SECRET)"
            )
        postback = opts.postback_host.rstrip("/")
        try:
            status, _ = fetch(postback, "/health", "GET")
        except (OSError, http.client.HTTPException) as error:
            return f"the postback role at {postback} does not answer: {error}"
        if status != 200:
            return f"the postback role's {postback}/health answers {status}, not 200"
    return None


def stop_run(environment: Environment, message: str) -> None:
    """Stop the run that is starting, before any user: quit when headless, else stop (the web UI stays up)."""
    log.error("%s. Stopping the run.", message)
    runner = environment.runner
    assert runner is not None
    headless = bool(options_of(environment).headless)
    if headless:
        environment.process_exit_code = 1
    # From another greenlet: stopping kills the greenlet that fired test_start, which is this one.
    gevent.spawn(runner.quit if headless else runner.stop)
    # End the start that fired test_start here, quietly (no traceback), so that it dispatches no user.
    raise gevent.GreenletExit


@events.init.add_listener
def _init(environment: Environment, **_kw: Any) -> None:
    if isinstance(environment.runner, WorkerRunner):
        return  # the master checks, and picks the users
    opts = options_of(environment)
    if PostbackUser in environment.user_classes and not opts.postback_host and "PostbackUser" not in opts.user_classes:
        environment.user_classes[:] = [user for user in environment.user_classes if user is not PostbackUser]
        log.info("PostbackUser left out: it runs with --postback-host (LOCUST_POSTBACK_HOST)")

    @environment.events.test_start.add_listener
    def _check(environment: Environment, **_kw: Any) -> None:
        message = why_not_ready(environment)
        if message is not None:
            stop_run(environment, message)
