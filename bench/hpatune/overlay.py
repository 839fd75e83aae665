"""The prod overlay: its objects, the entries a run sets (HPA metrics, KEDA triggers, a pod's CPU), and the JSON
6902 patches and kustomization entries that set them."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from benchkit import ROOT

from .steps import ServerResult
from .worker import WorkerResult

TRACKER_PATCH = "capacity-tracker-patch.yaml"
POSTBACK_PATCH = "capacity-postback-patch.yaml"
WORKER_PATCH = "capacity-worker-patch.yaml"


def pod_cpu(objects: list[dict[str, Any]], role: str, kind: str = "limits") -> float | None:
    """The CPU `limits` or `requests` (in cores) of the role's Deployment in the overlay, if it sets one."""
    for obj in objects:
        if obj.get("kind") == "Deployment" and role in _name(obj):
            for container in obj.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
                value = str(container.get("resources", {}).get(kind, {}).get("cpu", ""))
                if value:
                    return float(value[:-1]) / 1000 if value.endswith("m") else float(value)
    return None


def render(overlay: Path) -> list[dict[str, Any]]:
    """The overlay's objects: `kubectl kustomize` (or `kustomize build`), else its and its bases' YAML files."""
    for cmd in (["kubectl", "kustomize", str(overlay)], ["kustomize", "build", str(overlay)]):
        if shutil.which(cmd[0]):
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
            if out.returncode == 0:
                return [d for d in yaml.safe_load_all(out.stdout) if isinstance(d, dict)]
            raise RuntimeError(f"`{' '.join(cmd)}` failed: {out.stderr.strip()[-500:]}")
    return list(_files_of(overlay))


def _files_of(path: Path) -> Any:
    """Objects of a kustomization's resources, followed through bases, patches not applied (no kustomize here)."""
    if path.is_dir():
        kfile = next((path / n for n in ("kustomization.yaml", "kustomization.yml", "Kustomization")), None)
        if kfile is None or not kfile.exists():
            return
        k = yaml.safe_load(kfile.read_text()) or {}
        for res in k.get("resources", []) + k.get("bases", []):
            yield from _files_of((path / res).resolve())
    elif path.exists():
        yield from (d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict))


@dataclass
class Target:
    kind: str
    name: str
    index: int
    guard_path: str
    guard_value: Any
    path: str
    current: Any


def locate_hpa(objects: list[dict[str, Any]], role: str) -> Target:
    """The Pods metric (requests per second per pod) of the role's HorizontalPodAutoscaler."""
    hpas = [o for o in objects if o.get("kind") == "HorizontalPodAutoscaler"]
    hpa = next((h for h in hpas if role in _names(h)), None)
    if hpa is None:
        raise RuntimeError(f"no {role} HorizontalPodAutoscaler in the overlay (found {[_name(h) for h in hpas]})")
    for i, metric in enumerate(hpa.get("spec", {}).get("metrics", [])):
        if metric.get("type") == "Pods":
            name = metric["pods"]["metric"]["name"]
            return Target(
                "HorizontalPodAutoscaler",
                _name(hpa),
                i,
                f"/spec/metrics/{i}/pods/metric/name",
                name,
                f"/spec/metrics/{i}/pods/target/averageValue",
                metric["pods"].get("target", {}).get("averageValue"),
            )
    raise RuntimeError(f"HorizontalPodAutoscaler {_name(hpa)} has no Pods metric (requests per second) to set")


def locate_cpu_metric(objects: list[dict[str, Any]], role: str) -> Target | None:
    """The CPU Utilization metric of the role's HorizontalPodAutoscaler, if it has one."""
    hpa = next((o for o in objects if o.get("kind") == "HorizontalPodAutoscaler" and role in _names(o)), None)
    for i, metric in enumerate((hpa or {}).get("spec", {}).get("metrics", [])):
        resource = metric.get("resource", {})
        if metric.get("type") == "Resource" and resource.get("name") == "cpu":
            target = resource.get("target", {})
            if target.get("type") == "Utilization":
                return Target(
                    "HorizontalPodAutoscaler",
                    _name(hpa or {}),
                    i,
                    f"/spec/metrics/{i}/resource/name",
                    "cpu",
                    f"/spec/metrics/{i}/resource/target/averageUtilization",
                    target.get("averageUtilization"),
                )
    return None


def locate_tracker_hpa(objects: list[dict[str, Any]]) -> Target:
    return locate_hpa(objects, "tracker")


def locate_worker_trigger(objects: list[dict[str, Any]], queue: str = "clicks") -> Target:
    """The worker ScaledObject's aws-sqs-queue trigger on the `clicks` or `conversions` queue."""
    scaled = [o for o in objects if o.get("kind") == "ScaledObject"]
    obj = next((s for s in scaled if "worker" in _names(s)), None)
    if obj is None:
        raise RuntimeError(f"no worker ScaledObject in the overlay (found {[_name(s) for s in scaled]})")
    triggers = [
        (i, t) for i, t in enumerate(obj.get("spec", {}).get("triggers", [])) if t.get("type") == "aws-sqs-queue"
    ]
    word = queue.rstrip("s")  # click, conversion
    found = next(((i, t) for i, t in triggers if word in json.dumps(t.get("metadata", {}))), None)
    if found is None:
        raise RuntimeError(f"ScaledObject {_name(obj)} has no aws-sqs-queue trigger on the {queue} queue")
    i, trigger = found
    # Guard on the trigger's name when it has one: two queue triggers share the type.
    guard = ("name", trigger["name"]) if trigger.get("name") else ("metadata/queueURL", trigger["metadata"]["queueURL"])
    return Target(
        "ScaledObject",
        _name(obj),
        i,
        f"/spec/triggers/{i}/{guard[0]}",
        guard[1],
        f"/spec/triggers/{i}/metadata/queueLength",
        trigger.get("metadata", {}).get("queueLength"),
    )


def _name(obj: dict[str, Any]) -> str:
    return str(obj.get("metadata", {}).get("name", ""))


def _names(obj: dict[str, Any]) -> str:
    return f"{_name(obj)} {obj.get('spec', {}).get('scaleTargetRef', {}).get('name', '')}"


def locate_targets(args: argparse.Namespace, objects: list[dict[str, Any]]) -> dict[str, list[Target]]:
    """Every entry this run will set, found before anything is measured: a base without one fails in seconds."""
    found: dict[str, list[Target]] = {}
    for role in ("tracker", "postback"):
        if not getattr(args, f"skip_{role}"):
            cpu = locate_cpu_metric(objects, role)
            found[role] = [locate_hpa(objects, role)] + ([cpu] if cpu else [])
    if not args.skip_worker:
        found["worker"] = [locate_worker_trigger(objects, "clicks"), locate_worker_trigger(objects, "conversions")]
    return found


def patch_text(changes: list[tuple[Target, int]], why: list[str]) -> str:
    comment = "".join(f"# {line}\n" if line else "#\n" for line in why)
    ops: list[dict[str, Any]] = []
    for target, value in changes:
        ops.append({"op": "test", "path": target.guard_path, "value": target.guard_value})
        # averageUtilization is an integer in the HPA's schema; averageValue and queueLength are strings.
        ops.append(
            {"op": "replace", "path": target.path, "value": value if "Utilization" in target.path else str(value)}
        )
    return comment + yaml.safe_dump(ops, sort_keys=False, default_flow_style=False)


def add_to_kustomization(kfile: Path, entries: list[tuple[str, Target]]) -> bool:
    """Add a `patches` entry per file, keeping the rest of the file as it is; False when all are there already."""
    text = kfile.read_text()
    listed = {p.get("path") for p in (yaml.safe_load(text) or {}).get("patches", []) or [] if isinstance(p, dict)}
    missing = [(f, t) for f, t in entries if f not in listed]
    if not missing:
        return False
    lines = text.splitlines()
    head = next((i for i, line in enumerate(lines) if line.rstrip() == "patches:"), None)
    if head is None:
        indent = "  "
        lines.append("patches:")
        at = len(lines)
    else:
        at = head + 1
        while at < len(lines) and (not lines[at].strip() or lines[at][0] in " -#"):
            at += 1
        while at > head + 1 and not lines[at - 1].strip():
            at -= 1
        first = next((ln for ln in lines[head + 1 : at] if ln.lstrip().startswith("-")), "  -")
        indent = first[: len(first) - len(first.lstrip())]
    new = []
    for f, t in missing:
        new += [
            f"{indent}- path: {f}",
            f"{indent}  target:",
            f"{indent}    kind: {t.kind}",
            f"{indent}    name: {t.name}",
        ]
    lines[at:at] = new
    updated = "\n".join(lines) + "\n"
    parsed = yaml.safe_load(updated) or {}
    if not {f for f, _ in entries} <= {p.get("path") for p in parsed.get("patches", []) if isinstance(p, dict)}:
        raise RuntimeError(f"could not add the patches to {kfile} safely; add them by hand: {[f for f, _ in missing]}")
    kfile.write_text(updated)
    return True


def run_lines(args: argparse.Namespace, report: Path) -> list[str]:
    """The head of every patch's comment: the run it came from (date, machine, command) and its report."""
    try:
        shown = report.relative_to(ROOT)
    except ValueError:
        shown = report
    return [
        f"Written by `make hpa-tune` on {args.started:%Y-%m-%d %H:%M} from a run on {args.machine}:",
        f"  {args.command}",
        f"The run's report: {shown}",
    ]


def write_overlay(
    args: argparse.Namespace,
    targets: dict[str, list[Target]],
    tracker: ServerResult | None,
    postback: ServerResult | None,
    worker: WorkerResult | None,
    report: Path,
) -> list[str]:
    """Write the patches that have a measured value and list them in the overlay; what was written, for the report."""
    overlay = args.overlay
    kfile = overlay / "kustomization.yaml"
    head = run_lines(args, report)
    written, entries = [], []

    def put(file: str, changes: list[tuple[Target, int]], why: list[str]) -> None:
        (overlay / file).write_text(patch_text(changes, head + why))
        entries.append((file, changes[0][0]))
        for t, value in changes:
            written.append(f"{overlay / file}: {t.kind}/{t.name} {t.path} {t.current} -> {value}")

    for res, file in ((tracker, TRACKER_PATCH), (postback, POSTBACK_PATCH)):
        if res is None or res.target_rps is None or res.capacity_rps is None:
            continue
        t = targets[res.role][0]
        peak = res.peak.rps if res.peak else 0.0
        slo = f"p99 <= {res.slo_ms:g} ms, errors < {args.max_error_rate:.1%}"
        what = "One tracker process on one core" if res.role == "tracker" else f"One postback process ({res.cpu_limit})"
        why = [
            f"{what} kept {slo} up to {res.capacity_rps:,.0f} req/s"
            + (" (SQS included)" if res.role == "postback" else "")
            + " at constant rates; "
            + (
                f"its closed-loop peak was {peak:,.0f} req/s"
                if res.peak and res.peak.source == "wrk"
                else f"the peak given ({res.peak.source if res.peak else '-'}) was {peak:,.0f} req/s"
            )
            + (f" ({res.capacity_rps / peak:.0%})." if peak else "."),
        ]
        if res.scale < 1:
            why.append(f"A pod's {res.limit_cores:g} core gets {res.scale:.0%} of that (its limit was not enforced).")
        why.append(f"Target per pod = {args.fraction:.0%} of that = {res.target_rps} req/s ({t.guard_value}).")
        changes = [(t, res.target_rps)]
        cpu = targets[res.role][1] if len(targets[res.role]) > 1 else None
        if cpu is not None and res.cpu_target_pct is not None and res.cpu_at_target_pct is not None:
            why.append(
                f"At that rate the server used {res.cpu_at_target_pct:.0f}% of a core ({res.cpu_at_target_from}), "
                f"{res.cpu_target_pct}% of the pod's {res.cpu_request_cores:g} core request: the CPU target, so"
            )
            why.append("that CPU and requests per second scale out at the same load.")
            changes.append((cpu, res.cpu_target_pct))
        put(file, changes, why)
    if worker is not None and worker.clicks and worker.conversions:
        clicks, conversions = worker.clicks, worker.conversions
        if clicks.queue_length is not None and conversions.queue_length is not None:
            t_clicks, t_conversions = targets["worker"]
            why = [
                f"One worker process ({worker.cpu_limit}, {worker.database}) kept up with {clicks.capacity:.1f} click "
                f"messages/s of {clicks.events_per_message} clicks each",
                f"({worker.events_per_message_from}) and {conversions.capacity:.1f} conversions/s, the oldest message "
                f"under {args.max_age_seconds:g} s.",
            ]
            for q in (clicks, conversions):
                if q.scale < 1:
                    why.append(f"A pod's {worker.limit_cores:g} core gets {q.scale:.0%} of the {q.queue} rate.")
            why.append(
                f"queueLength = {args.fraction:.0%} x capacity x {args.max_age_seconds:g} s: clicks "
                f"{clicks.queue_length}, conversions {conversions.queue_length} messages per replica."
            )
            put(WORKER_PATCH, [(t_clicks, clicks.queue_length), (t_conversions, conversions.queue_length)], why)
    if entries and add_to_kustomization(kfile, entries):
        written.append(f"{kfile}: added {', '.join(f for f, _ in entries)} to patches")
    if entries and shutil.which("kubectl"):
        render(overlay)  # the test operations and paths hold, or this raises
    return written
