"""The postback phase: one `adclick postback` process held to its pod's CPU limit, fed valid postbacks; the
secrets every role of the run shares."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from benchkit import PROCS, VENV_BIN, delta, free_port, http_get, pinned, scrape, wait_http
from trust import Recorder

from .machine import cpu_limit_text, limit_cpu, release_cpu, wait_idle
from .ramp import cpu_at_target, ramp
from .steps import Server, ServerResult

POSTBACK_QUEUE = "hpa-tune-postbacks"  # apart from the worker's, so the worker phase never drains postbacks
# One set of secrets for every role of the run, so the ClickIDs and tokens made here verify wherever they go.
BENCH_CLICK_SECRET = "hpa-tune-click-secret-0123456789abcdef"
BENCH_POSTBACK_SECRET = "hpa-tune-postback-secret-0123456789abcdef"
BENCH_ADVERTISER = 1


def postback_env(env: dict[str, str]) -> dict[str, str]:
    out = {k: v for k, v in env.items() if k != "ADCLICK_CLICK_PREVIOUS_SECRET"}
    return {
        **out,
        "ADCLICK_CLICK_SECRET": BENCH_CLICK_SECRET,
        "ADCLICK_CLICK_KEY_ID": "1",
        "ADCLICK_POSTBACK_SECRET": BENCH_POSTBACK_SECRET,
        "ADCLICK_CONVERSIONS_QUEUE": POSTBACK_QUEUE,
        "ADCLICK_LOG_LEVEL": "WARNING",  # every refused postback is logged at INFO
    }


def write_postback_paths(path: Path, slugs: int, count: int = 1024) -> None:
    """`count` valid GET postbacks: a token of the bench advertiser, a ClickID of a bench link each, unique txids."""
    from adclick import _native
    from adclick.core.tokens import make_token

    codec = _native.ClickIdCodec(1, BENCH_CLICK_SECRET.encode())
    token = make_token(BENCH_POSTBACK_SECRET, BENCH_ADVERTISER)
    now = int(time.time() * 1000)
    lines = []
    for k in range(count):
        click_id = codec.generate(1000 + k % slugs, now - 1000 * k)
        amount = f"{10 + k % 90}.{k % 100:02d}"
        lines.append(
            f"/postback?click_id={click_id}&txid=HT-{k}&amount={amount}&currency=USD&status=approved&token={token}"
        )
    path.write_text("\n".join(lines) + "\n")


def tune_postback(args: argparse.Namespace, env: dict[str, str]) -> ServerResult:
    res = ServerResult(role="postback", generator="loadgen", slo_ms=args.postback_slo_ms)
    res.others_before_pct = wait_idle(args).others_pct
    port = free_port()
    logs = args.out_dir / "logs"
    paths = args.out_dir / "postback-paths.txt"
    write_postback_paths(paths, args.slugs)
    cmd = [str(VENV_BIN / "adclick"), "postback", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    proc = PROCS.start("postback", pinned(args.tracker_cpu, cmd), logs / "postback.log", env=postback_env(env))
    group = limit_cpu(proc.pid, args.postback_cpu_limit) if args.postback_cpu_limit < 1 else None
    res.limit_cores, res.enforced = args.postback_cpu_limit, group is not None or args.postback_cpu_limit >= 1
    res.cpu_limit = cpu_limit_text(args.postback_cpu_limit, group)
    recorder = Recorder({"server": proc.pid}, extra=lambda: scrape(port))
    try:
        wait_http(port, "/health", proc)
        first = paths.read_text().splitlines()[0]
        status, _, body = http_get(port, first)
        if status != 200:
            raise RuntimeError(f"a valid postback answered {status}: {body[:300]!r}; see {logs / 'postback.log'}")
        print(f"  postback on 127.0.0.1:{port} (core {args.tracker_cpu}, {res.cpu_limit}); a valid postback -> 200")
        before = scrape(port)
        limit_pct = 100 * args.postback_cpu_limit if group else 100.0
        loadgen_args = ["--paths", str(paths), "--ok", "2"]
        srv = Server("postback", port, recorder, limit_pct, "paths.lua", {"BENCH_PATHS": str(paths)}, loadgen_args)
        try:
            ramp(args, srv, res, args.postback_peak_rps)
        finally:
            recorder.stop()
        after = scrape(port)
        res.accepted = delta(before, after, "adclick_postbacks_accepted_total")
        # A labelled counter shows no series before its first refusal.
        res.rejected = delta(before, after, "adclick_postbacks_rejected_total") or 0.0
        if proc.poll() is not None:
            raise RuntimeError(f"the postback role exited with {proc.returncode} during the load")
    finally:
        PROCS.stop(proc, grace=15.0)
        release_cpu(group)
    cpu_at_target(args, res)
    return res
