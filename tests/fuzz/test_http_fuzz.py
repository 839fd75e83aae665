"""Hypothesis-generated requests against the real tracker and postback processes (Redis and SQS up).

Whatever the path, query string, headers or body: never a 5xx, never a crash, never a `Location` outside the
configured destinations' hosts, never a CR or LF inside a header. ADCLICK_FUZZ_EXAMPLES sets how many requests
each property tries (default 150 in `make test`).
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import sys
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from adclick.core.settings import DEFAULT_POSTBACK_SECRET
from adclick.core.tokens import make_token
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from support.procs import ManagedProcess, ProcessGuard, free_port, wait_until
from support.servers import DUMMY_AWS_ENV, RedisServer, SqsServer
from support.tracker import UA_DESKTOP, UA_IPHONE

EXAMPLES = int(os.environ.get("ADCLICK_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    database=None,
)
HOSTS = {"a.example", "b.example", "c.example", "ios.example", "fallback.example"}
CID = "{click_id}"
LINKS = [
    {
        "v": 1, "id": 501, "slug": "fz-a", "offer_id": 7, "affiliate_id": 3, "status": "active", "cookie": True,
        "url": f"https://a.example/lp?cid={CID}&s1={{sub1}}&s2={{sub2}}&c={{country}}&d={{device}}&o={{os}}",
        "destinations": [
            {"url": f"https://b.example/x/{{sub3}}?c={CID}&t={{ts}}&src={{p:clickid}}#{{p:gclid}}", "weight": 70},
            {"url": f"http://c.example:8080/{{sub4}}/{{sub5}}#{CID}", "weight": 30},
        ],
        "rules": [{"countries": ["US"], "devices": ["mobile"], "os": ["iOS"], "url": f"https://ios.example/?c={CID}"}],
        "fallback_url": "https://fallback.example/",
    },
    {"v": 1, "id": 502, "slug": "fz-paused", "status": "paused", "url": "https://a.example/",
     "fallback_url": "https://fallback.example/p?c={click_id}"},
    {"v": 1, "id": 503, "slug": "fz-b", "url": "https://b.example/?s={sub1}{sub2}{sub3}{sub4}{sub5}"},
]  # fmt: skip
TRACKER_HEADERS = {
    "location", "cache-control", "set-cookie", "content-length", "content-type", "date", "server", "connection",
    "keep-alive", "vary", "x-content-type-options", "referrer-policy", "retry-after", "transfer-encoding",
}  # fmt: skip


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    raw_head: bytes

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name]


def send(port: int, method: str, target: str, headers: list[tuple[str, str]], body: bytes = b"") -> Reply:
    """One request written byte for byte (http.client would refuse or rewrite some of what we want to send)."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    raw = b"".join(chunks)
    head, sep, _ = raw.partition(b"\r\n\r\n")
    assert sep, f"no complete response to {method} {target!r}: {raw[:300]!r}"
    status_line, *header_lines = head.split(b"\r\n")
    parsed = []
    for line in header_lines:
        name, colon, value = line.partition(b":")
        assert colon and name and name.strip() == name, f"malformed header line {line!r}"
        parsed.append((name.decode("latin-1"), value.strip().decode("latin-1")))
    return Reply(int(status_line.split()[1]), parsed, head)


def check_common(reply: Reply, allowed_headers: set[str] | None = None) -> None:
    assert reply.status < 500, reply
    for name, value in reply.headers:
        # A CR or LF would have split the line; a bare one inside a value is just as bad.
        assert "\r" not in value and "\n" not in value, (name, value)
        if allowed_headers is not None:
            assert name.lower() in allowed_headers, f"unexpected header {name}: {value}"


@dataclass
class Running:
    tracker: int
    postback: int
    procs: list[ManagedProcess]

    def alive(self) -> None:
        for proc in self.procs:
            assert proc.alive(), proc.output()[-3000:]


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory, _sqs_server_session: SqsServer) -> Iterator[Running]:
    tmp = tmp_path_factory.mktemp("http-fuzz")
    with ProcessGuard(tmp) as guard:
        (tmp / "redis").mkdir()
        redis = RedisServer(guard, tmp / "redis")
        redis.start()
        with redis.client() as client:
            for link in LINKS:
                client.set(f"adclick:link:{link['slug']}", json.dumps(link))
        sqs = _sqs_server_session
        env = {
            **os.environ,
            **DUMMY_AWS_ENV,
            "PYTHONUNBUFFERED": "1",
            "ADCLICK_REDIS_URL": redis.url,
            "ADCLICK_SQS_ENDPOINT_URL": sqs.endpoint_url,
            "ADCLICK_AWS_REGION": sqs.region,
            "ADCLICK_CLICKS_QUEUE": "fuzz-clicks",
            "ADCLICK_CONVERSIONS_QUEUE": "fuzz-conversions",
            "ADCLICK_DRAIN_SECONDS": "0",
        }
        cli = [sys.executable, "-m", "adclick.cli"]
        tracker_port, postback_port = free_port(), free_port()
        tracker = guard.spawn([*cli, "tracker", "--host", "127.0.0.1", "--port", str(tracker_port)], env=env)
        postback = guard.spawn([*cli, "postback", "--host", "127.0.0.1", "--port", str(postback_port)], env=env)
        for port, proc in ((tracker_port, tracker), (postback_port, postback)):
            wait_until(lambda p=port: health(p) == 200, timeout=60, message=f"health on {port}", proc=proc)
        yield Running(tracker_port, postback_port, [tracker, postback])


def health(port: int) -> int | None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/health")
        return conn.getresponse().status
    except OSError:
        return None
    finally:
        conn.close()


# ---------------------------------------------------------------------- strategies

# Text as a browser or a bot might put it in a URL: anything, percent-encoded, plus raw bad escapes and
# characters that are legal in a request line but mean something to a URL parser.
anything = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40)
encoded = anything.map(lambda s: urllib.parse.quote(s, safe=""))
raw_bits = st.text(st.sampled_from(list("%%%0aAfFgZ/?#&=+;@:[]!$'()*,~.-_\\{}|^`\"<>")), max_size=12)
piece = st.one_of(encoded, raw_bits, st.sampled_from(["%0d%0a", "%00", "%", "%E2%80%AE", "%C0%AF", "%FF", ".."]))
token = st.lists(piece, max_size=4).map("".join)
slug = st.one_of(st.sampled_from(["fz-a", "fz-paused", "fz-b", "nope", "x" * 65, ""]), token)
param_name = st.one_of(
    st.sampled_from(["sub1", "sub2", "sub3", "sub4", "sub5", "gclid", "clickid", "sub1[]", "a"]), token
)
query = st.lists(st.tuples(param_name, token), max_size=8).map(lambda kv: "&".join(f"{k}={v}" for k, v in kv))
header_value = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, blacklist_characters="\x7f"), max_size=80)
header_name = st.one_of(
    st.sampled_from(
        ["User-Agent", "Referer", "X-Forwarded-For", "CF-IPCountry", "CloudFront-Viewer-Country", "Cookie",
         "Accept-Language", "Content-Type", "Forwarded", "X-Real-IP"]
    ),
    st.from_regex(r"\A[A-Za-z][A-Za-z0-9-]{0,20}\Z"),
)  # fmt: skip
headers = st.lists(st.tuples(header_name, header_value), max_size=6)


def target_of(path: str, q: str) -> str:
    # Request-line bytes outside visible ASCII are sent percent-encoded, as any client does.
    target = path + (f"?{q}" if q else "")
    return urllib.parse.quote(target, safe="".join(chr(c) for c in range(0x21, 0x7F)))


# ---------------------------------------------------------------------- tracker


@FUZZ
@given(
    method=st.sampled_from(["GET", "GET", "GET", "HEAD"]),
    prefix=st.sampled_from(["/c/", "/c/", "/c/", "/", "/C/", "//c/", "/c//", "/health", "/metrics/"]),
    slug=slug,
    query=query,
    headers=headers,
)
@example(
    "GET", "/c/", "fz-a", "sub1=%2F%2Fevil.example&sub3=@evil:1", [("User-Agent", UA_IPHONE), ("CF-IPCountry", "US")]
)
@example("GET", "/c/", "fz-a", "sub4=%0d%0aSet-Cookie:x&sub5=..%5C", [("User-Agent", UA_DESKTOP)])
@example("GET", "/c/", "fz-paused", "", [])
@example("HEAD", "/c/", "fz-b", "sub1=%E2%80%AE", [])
def test_tracker_never_5xx_never_escapes_its_destinations(
    running: Running, method: str, prefix: str, slug: str, query: str, headers: list[tuple[str, str]]
) -> None:
    reply = send(running.tracker, method, target_of(prefix + slug, query), headers)
    check_common(reply, TRACKER_HEADERS)
    locations = reply.header("location")
    assert len(locations) <= 1
    if prefix == "/c/" and slug in ("fz-a", "fz-paused", "fz-b") and not query and not headers:
        assert reply.status == 302
    if locations:
        assert reply.status in (301, 302, 303, 307, 308)
        url = urllib.parse.urlsplit(locations[0])
        assert url.scheme in ("http", "https") and url.hostname in HOSTS, locations[0]
        assert all(0x21 <= ord(c) < 0x7F for c in locations[0]), locations[0]
    for cookie in reply.header("set-cookie"):
        assert cookie.partition("=")[0] == "adclick_cid", cookie


@FUZZ
@given(junk=st.binary(max_size=300))
def test_tracker_survives_malformed_requests(running: Running, junk: bytes) -> None:
    """Bytes that are not HTTP at all: any answer (or a closed connection) will do, as long as the process lives."""
    with socket.create_connection(("127.0.0.1", running.tracker), timeout=10) as sock:
        sock.sendall(b"GET /c/fz-a" + junk + b"\r\n\r\n")
        sock.shutdown(socket.SHUT_WR)
        try:
            answer = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            answer = b""
    if answer.startswith(b"HTTP/1."):
        assert not answer[9:10] == b"5", answer[:200]
    running.alive()


# ---------------------------------------------------------------------- postback

TOKEN = make_token(DEFAULT_POSTBACK_SECRET, 5, 1)
known_field = st.sampled_from(["click_id", "txid", "amount", "currency", "status", "event", "token", "other"])
field_value = st.one_of(
    token,
    st.sampled_from([TOKEN, TOKEN[:-1] + "A", "5.1.", "NaN", "1e309", "-0", "49.90", "USD", "usd", "approved", ""]),
)
form = st.lists(st.tuples(known_field, field_value), max_size=8)
content_types = st.sampled_from(
    ["application/x-www-form-urlencoded", "application/json", "text/plain", "multipart/form-data; boundary=x", ""]
)
json_body = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | anything,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(["click_id", "txid", "amount"]), inner),
    max_leaves=8,
).map(lambda v: json.dumps(v).encode())


@FUZZ
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE"]),
    path=st.sampled_from(["/postback", "/pixel.gif", "/postback/", "/health", "/", "/metrics"]),
    pairs=form,
    content_type=content_types,
    body=st.one_of(st.binary(max_size=200), json_body, form.map(lambda kv: urllib.parse.urlencode(kv).encode())),
    extra=headers,
)
def test_postback_never_5xx(
    running: Running,
    method: str,
    path: str,
    pairs: list[tuple[str, str]],
    content_type: str,
    body: bytes,
    extra: list[tuple[str, str]],
) -> None:
    q = "&".join(f"{urllib.parse.quote(k)}={v}" for k, v in pairs)
    hs = [h for h in extra if h[0].lower() not in ("content-length", "transfer-encoding", "host", "connection")]
    if content_type:
        hs.append(("Content-Type", content_type))
    reply = send(running.postback, method, target_of(path, q), hs, body if method == "POST" else b"")
    check_common(reply)
    for location in reply.header("location"):
        # Starlette sends /postback/ to /postback on the host asked for; nothing else redirects.
        url = urllib.parse.urlsplit(location)
        assert (url.scheme, url.netloc, url.path) == ("http", f"127.0.0.1:{running.postback}", "/postback"), reply


def test_processes_outlived_the_fuzzing(running: Running) -> None:
    """Last in the module: nothing above killed either process, and both still report healthy."""
    running.alive()
    assert health(running.tracker) == 200 and health(running.postback) == 200
