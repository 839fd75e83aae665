"""The run's report (markdown) and chart (PNG)."""

from __future__ import annotations

import argparse
from pathlib import Path

from trust import OK

from .steps import ServerResult, fmt, within
from .worker import WorkerResult


def trust_cell(trust: str, why: str) -> str:
    return "ok" if trust == OK else f"**{trust}**: {why}"


def no_target(what: str, refusal: str | None, capacity: float | None, note: str) -> str | None:
    """The verdict of a phase or queue (`what`) that gets no target, or None when it has a capacity."""
    if refusal:
        return f"**No target: {what} cannot be trusted.** {refusal}."
    if capacity is None:
        return f"**No capacity**: {note}."
    return None


def pod_share(scale: float) -> str:
    """Where a pod's CPU limit could not be enforced, the share of the pinned core its capacity was scaled to."""
    return f"a pod's share {scale:.0%} (its CPU limit could not be enforced here); " if scale < 1 else ""


TRUST_TEXT = (
    "Every step is checked before it counts. **busy**: processes this run did not start used more than "
    "{busy:g}% of a core before (the step's settle seconds) or during it (the *others* column; interrupt time "
    "excluded): the step measured the machine. **generator-bound**: the load generator's cores were at least "
    "{sat:g}% busy, one of its processes used that much of its core, or it answered less than {keep:.0%} of the "
    "offered rate while the server's core had room: the step measured the generator. Neither is ever the capacity, "
    "and a run whose capacity would depend on one writes no target."
)


def server_section(args: argparse.Namespace, res: ServerResult) -> list[str]:
    role = res.role
    if role == "tracker":
        title = "## Tracker: one process, one core"
        what = (
            f"`adclick tracker --processes 1 --workers 1` pinned to core {args.tracker_cpu}, CPU limit "
            f"{res.cpu_limit}. "
            "Server p99 is the tracker's own `adclick_click_seconds` (inside the Rust engine, no HTTP); clicks per "
            "message are its `adclick_events_buffered_total` over `adclick_sqs_messages_sent_total`."
        )
    else:
        title = "## Postback: one process, SQS included"
        what = (
            f"`adclick postback --workers 1` pinned to core {args.tracker_cpu}, CPU limit {res.cpu_limit}, every "
            "request a valid postback (an advertiser token, a ClickID of a bench link, a new txid) that it sends to "
            "the bench SQS endpoint before answering 200. Server p99 is its own `adclick_postback_latency_seconds`."
        )
    if res.generator == "locust":
        gen = (
            f"Locust (bench/locustfile.py `TrackerUser` with bench/locust_steps.py, {args.user_rps:g} req/s per user, "
            f"{res.locust_processes} process(es)"
            + (", one master and its workers" if res.locust_processes > 1 else "")
            + ")"
        )
    else:
        gen = (
            f"bench/loadgen at a constant rate over {args.connections} keep-alive connections, latency measured from "
            "when each request was due"
        )
    lines = [title, "", what, ""]
    if res.peak is not None and res.peak.source != "wrk":
        first = f"Load: the peak given with {res.peak.source} ({res.peak.rps:,.0f} req/s), then"
    else:
        first = (
            f"Load: first wrk in a closed loop ({args.connections} connections, {args.threads} threads, "
            f"{args.peak_seconds:g} s) for the peak, then"
        )
    lines += [
        f"{first} {gen}, from 1/{args.steps} to all of the peak, each step "
        f"{args.step_seconds:g} s of which the last {args.step_seconds - args.settle_seconds:g} s are measured; "
        f"generators, Redis and the SQS endpoint on core(s) {args.client_cpu}. SLO: p99 <= {res.slo_ms:g} ms at the "
        f"client, errors < {args.max_error_rate:.1%}, and at least {args.keep_up:.0%} of the offered rate answered.",
        "",
        f"Other processes before the phase: {fmt(res.others_before_pct, '% of a core', 0)}.",
        "",
    ]
    p = res.peak
    if p is not None:
        lines += [
            "| peak | req/s | p50 | p99 | errors | server CPU | generator CPU | client cores | others before | others "
            "| trust |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
            f"| {p.source} | {p.rps:,.0f} | {fmt(p.p50_ms, ' ms')} | {fmt(p.p99_ms, ' ms')} | {p.errors} | "
            f"{fmt(p.server_cpu_pct, '%', 0)} | {fmt(p.generator_cpu_pct, '%', 0)} | {fmt(p.client_cores_pct, '%', 0)} "
            f"| {fmt(p.others_before_pct, '%', 0)} | {fmt(p.others_pct, '%', 0)} | {trust_cell(p.trust, p.why)} |",
            "",
        ]
    head = "| step | share | " + ("users | " if res.generator == "locust" else "") + "offered | answered | p50 | p95 "
    head += "| p99 | errors | server CPU | server p99 | " + ("clicks/msg | " if role == "tracker" else "")
    head += "generator CPU | client cores | others before | others | within SLO | trust |"
    lines += [head, "| " + " | ".join(["---"] * (head.count("|") - 1)) + " |"]
    rows = list(res.steps) + ([res.at_target] if res.at_target else [])
    for s in rows:
        name = "target" if s is res.at_target else str(s.step)
        err = "-" if s.error_rate is None else f"{s.failures} ({s.error_rate:.2%})"
        cells = [name, f"{s.share:.0%}"] + ([fmt(s.users, "", 0)] if res.generator == "locust" else [])
        cells += [f"{s.offered_rps:,.0f}", f"{s.rps:,.0f}", fmt(s.p50_ms, " ms"), fmt(s.p95_ms, " ms")]
        cells += [fmt(s.p99_ms, " ms"), err, fmt(s.server_cpu_pct, "%", 0), fmt(s.server_p99_ms, " ms", 3)]
        cells += [fmt(s.clicks_per_message, "", 0)] if role == "tracker" else []
        cells += [fmt(s.generator_cpu_pct, "%", 0), fmt(s.client_cores_pct, "%", 0), fmt(s.others_before_pct, "%", 0)]
        ok = within(args, res.slo_ms)(s)
        cells += [fmt(s.others_pct, "%", 0), "yes" if ok else "no", trust_cell(s.trust, s.why)]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if missing := no_target("this phase", res.refusal, res.capacity_rps, res.note):
        lines.append(missing)
    else:
        peak = res.peak.rps if res.peak else 0
        lines.append(
            f"**Peak {peak:,.0f} req/s** ({p.source if p else '-'}); **capacity at the SLO {res.capacity_rps:,.0f} "
            f"req/s** (step {res.capacity_step}), **{res.capacity_rps / peak:.0%} of the peak**; "
            + pod_share(res.scale)
            + f"**HPA target: {res.target_rps:,} req/s per pod** ({args.fraction:.0%})."
        )
        if res.note:
            lines += ["", res.note[0].upper() + res.note[1:] + "."]
    if role == "tracker" and res.clicks_per_message and not res.refusal:
        lines += ["", f"Clicks per SQS message at the target rate: **{res.clicks_per_message:,.0f}** "
                      f"({res.clicks_per_message_from}); the worker's click messages hold that many."]  # fmt: skip
    if res.at_target is not None and not within(args, res.slo_ms)(res.at_target):
        lines += ["", "At the target rate the SLO did not hold: the capacity step was close; a longer "
                      "`--step-seconds` gives steadier steps."]  # fmt: skip
    if res.cpu_target_pct is not None and res.cpu_at_target_pct is not None and not res.refusal:
        lines += ["", f"CPU at the target rate: {res.cpu_at_target_pct:.0f}% of a core ({res.cpu_at_target_from}), "
                      f"so **HPA CPU target: {res.cpu_target_pct}%** of the pod's {res.cpu_request_cores:g} core "
                      "request: CPU and requests per second scale out at the same load (the HPA follows whichever "
                      "asks for more pods)."]  # fmt: skip
    if role == "postback" and res.accepted is not None:
        lines += ["", f"Postbacks queued over the phase: {res.accepted:,.0f}; refused: {res.rejected or 0:,.0f}."]
    if res.generator == "locust":
        lines += [
            "",
            "Locust is the user-facing load tool: Python spends far more CPU per request than the tracker's Rust path, "
            "so a step where a Locust process filled its core, or where Locust sent less than it offered, is marked "
            "generator-bound. Give it more processes (`--locust-processes N`, one master and N workers, on more "
            "client cores) or run it distributed (README, Load tests); `--generator loadgen` needs one core.",
        ]
    lines.append("")
    return lines


def worker_section(args: argparse.Namespace, worker: WorkerResult) -> list[str]:
    lines = [
        "## Worker: one process, one pod's CPU",
        "",
        f"`adclick worker --concurrency {args.worker_concurrency}` pinned to core {args.tracker_cpu}, CPU limit "
        f"{worker.cpu_limit}, on {worker.database}. Each queue first gets a backlog to drain; its rate scales the "
        f"steps, which offer a share of it for {args.worker_step_seconds:g} s each. The oldest-message age is the "
        "worker's `adclick_worker_oldest_message_age_seconds`. A step keeps up when it processed at least 90% of "
        f"what it was offered with the oldest message under {args.max_age_seconds:g} s. Other processes before the "
        f"phase: {fmt(worker.others_before_pct, '% of a core', 0)}.",
        "",
    ]
    for q in worker.queues():
        if q.queue == "clicks":
            lines += [f"### Clicks: messages of {q.events_per_message} clicks ({worker.events_per_message_from})", ""]
        else:
            lines += ["### Conversions: one conversion per message (as the postback role queues them)", ""]
        lines += [
            f"Drain of {q.drain_messages} messages: {fmt(q.drain_rate, ' messages/s', 1)}, worker CPU "
            f"{fmt(q.drain_cpu_pct, '%', 0)}, others {fmt(q.drain_others_pct, '%', 0)}; "
            f"{trust_cell(q.drain_trust, q.drain_why)}.",
            "",
            "| share of drain | offered msg/s | processed msg/s | oldest message | backlog at end | worker CPU | "
            "client cores | others before | others | kept up | trust |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for w in q.steps:
            lines.append(
                f"| {w.fraction:.0%} | {w.offered:.1f} | {w.processed:.1f} | {fmt(w.max_age_s, ' s', 1)} | {w.backlog} "
                f"| {fmt(w.worker_cpu_pct, '%', 0)} | {fmt(w.client_cores_pct, '%', 0)} | "
                f"{fmt(w.others_before_pct, '%', 0)} | {fmt(w.others_pct, '%', 0)} | {'yes' if w.passed else 'no'} | "
                f"{trust_cell(w.trust, w.why)} |"
            )
        lines.append("")
        if missing := no_target("this queue's figures", q.refusal, q.capacity, q.note):
            lines.append(missing)
        else:
            per = f" ({q.capacity * q.events_per_message:,.0f} clicks/s)" if q.queue == "clicks" else ""
            lines.append(
                f"**Capacity: {q.capacity:.1f} messages/s**{per}; "
                + pod_share(q.scale)
                + f"**KEDA queueLength ({q.queue}): {q.queue_length}** = {args.fraction:.0%} x capacity x "
                f"{args.max_age_seconds:g} s: KEDA runs backlog / queueLength replicas, so each replica's share of "
                f"the backlog is gone within about {args.max_age_seconds:g} s."
                + (f" {q.note[0].upper() + q.note[1:]}." if q.note else "")
            )
        lines.append("")
    return lines


def write_report(
    args: argparse.Namespace,
    tracker: ServerResult | None,
    postback: ServerResult | None,
    worker: WorkerResult | None,
    refusals: list[str],
    written: list[str],
) -> Path:
    lines = [f"# adclick capacity, {args.started:%Y-%m-%d %H:%M}", ""]
    lines += [
        f"Machine: {args.machine}. Command: `{args.command}`. Targets at {args.fraction:.0%} of each measured "
        "capacity.",
        "",
        TRUST_TEXT.format(busy=args.busy_limit, sat=args.saturated, keep=args.keep_up),
        "",
    ]
    if refusals:
        lines += ["**Refused: no target written.** This run cannot be trusted:", ""]
        lines += [f"- {r}" for r in refusals] + [
            "",
            "Run it again on a quiet machine (no tests, builds or other load).",
            "",
        ]
    for res in (tracker, postback):
        if res is not None:
            lines += server_section(args, res)
    if worker is not None:
        lines += worker_section(args, worker)
    lines += ["## Written", ""] + ([f"- {w}" for w in written] or ["- nothing (--no-write, a refusal, or no target)"])
    lines += ["", "![RPS against latency](chart.png)", ""]
    path = args.out_dir / "report.md"
    path.write_text("\n".join(lines))
    return path


def write_chart(
    args: argparse.Namespace, tracker: ServerResult | None, postback: ServerResult | None, worker: WorkerResult | None
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    servers = [r for r in (tracker, postback) if r is not None]
    queues = worker.queues() if worker is not None else []
    panels = len(servers) + len(queues)
    fig, axes = plt.subplots(1, max(1, panels), figsize=(6.5 * max(1, panels), 4.8), squeeze=False)
    col = 0
    for res in servers:
        ax = axes[0][col]
        col += 1
        pts = [s for s in res.steps if s.p99_ms is not None]
        bad = [s for s in pts if s.trust != OK]
        ax.plot([s.rps for s in pts], [s.p50_ms for s in pts], "o-", label="p50")
        ax.plot([s.rps for s in pts], [s.p99_ms for s in pts], "s-", label="p99")
        if bad:
            ax.plot([s.rps for s in bad], [s.p99_ms for s in bad], "rx", markersize=12, label="busy or generator-bound")
        ax.axhline(res.slo_ms, color="grey", linestyle=":", label=f"SLO {res.slo_ms:g} ms")
        if res.peak is not None:
            ax.axvline(res.peak.rps, color="tab:purple", linestyle="-.", label=f"peak {res.peak.rps:,.0f}/s")
        if res.capacity_rps is not None:
            ax.axvline(res.capacity_rps, color="tab:green", linestyle="--", label="capacity")
        if res.target_rps is not None:
            ax.axvline(res.target_rps, color="tab:red", label=f"HPA target {res.target_rps:,}/s")
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_xlabel(f"requests per second (one {res.role} process)")
        ax.set_ylabel("latency at the client (ms)")
        ax.set_title(f"{res.role}: RPS against p50 and p99")
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
    for q in queues:
        ax = axes[0][col]
        col += 1
        ax.plot([w.offered for w in q.steps], [w.processed for w in q.steps], "o-", label="processed")
        ax.plot([w.offered for w in q.steps], [w.offered for w in q.steps], ":", color="grey", label="offered")
        if q.capacity is not None:
            ax.axhline(q.capacity, color="tab:green", linestyle="--", label=f"capacity {q.capacity:.1f}/s")
        ax.set_xlabel(f"{q.queue} messages offered per second")
        ax.set_ylabel("messages processed per second (one worker)")
        ax.set_title(f"worker, {q.queue}" + (f": KEDA queueLength {q.queue_length}" if q.queue_length else ""))
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = args.out_dir / "chart.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
