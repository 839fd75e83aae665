"""`bench/hpa_tune.py` end to end on a tiny load: it writes readable kustomize patches, a report and a chart.

The run is seconds long with a generous SLO, so that steps pass on any machine; no timing figure is asserted,
only that the tuner turns a run into a patch a reviewer and kustomize can both read.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
TUNER = ROOT / "bench" / "hpa_tune.py"

BASE = """\
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: tracker
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: tracker}
  minReplicas: 2
  maxReplicas: 20
  metrics:
    - type: Resource
      resource: {name: cpu, target: {type: Utilization, averageUtilization: 70}}
    - type: Pods
      pods:
        metric: {name: adclick_click_requests_per_second}
        target: {type: AverageValue, averageValue: "1000"}
---
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata:
  name: worker
spec:
  scaleTargetRef: {name: worker}
  triggers:
    - type: cpu
      metricType: Utilization
      metadata: {value: "80"}
    - type: aws-sqs-queue
      name: clicks-backlog
      metadata:
        queueURL: https://sqs.us-east-1.amazonaws.com/1/adclick-clicks
        queueLength: "5"
        awsRegion: us-east-1
"""

OVERLAY = """\
# prod: more replicas
resources:
  - ../../base
patches:
  - path: replicas.yaml
    target:
      kind: HorizontalPodAutoscaler
      name: tracker
"""


@pytest.fixture
def overlay(tmp_path: Path) -> Path:
    """A base with a tracker HPA and a worker ScaledObject, and a prod overlay that already patches something."""
    (tmp_path / "k8s/base").mkdir(parents=True)
    (tmp_path / "k8s/base/autoscaling.yaml").write_text(BASE)
    (tmp_path / "k8s/base/kustomization.yaml").write_text("resources:\n  - autoscaling.yaml\n")
    prod = tmp_path / "k8s/overlays/prod"
    prod.mkdir(parents=True)
    (prod / "kustomization.yaml").write_text(OVERLAY)
    (prod / "replicas.yaml").write_text("- op: replace\n  path: /spec/minReplicas\n  value: 3\n")
    return prod


def apply_json6902(obj: dict, ops: list[dict]) -> dict:
    """The few JSON 6902 operations the tuner writes (test, replace), applied the way kustomize does."""
    for op in ops:
        *parents, leaf = op["path"].strip("/").split("/")
        node = obj
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        key = int(leaf) if isinstance(node, list) else leaf
        if op["op"] == "test":
            assert node[key] == op["value"], f"test failed at {op['path']}"
        else:
            assert op["op"] == "replace", op
            node[key] = op["value"]
    return obj


@pytest.mark.timeout(150)
def test_short_run_writes_patches_report_and_chart(overlay: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    argv = [sys.executable, str(TUNER), "--overlay", str(overlay), "--out", str(out)]
    argv += ["--slo-ms", "10000", "--max-error-rate", "0.5"]  # any machine passes: figures are not what is tested
    argv += ["--start-users", "2", "--step-users", "2", "--step-seconds", "3", "--max-users", "4"]
    argv += ["--settle-seconds", "1", "--user-rps", "20", "--database", "sqlite", "--worker-drain-events", "1000"]
    argv += ["--events-per-message", "50", "--worker-fractions", "0.3,0.5", "--worker-step-seconds", "3"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=140, cwd=ROOT, env={**os.environ})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    # The overlay lists both patches once, next to what it had, and its own patch is untouched.
    kustomization = yaml.safe_load((overlay / "kustomization.yaml").read_text())
    patches = {p["path"]: p for p in kustomization["patches"]}
    assert set(patches) == {"replicas.yaml", "capacity-tracker-patch.yaml", "capacity-worker-patch.yaml"}
    assert patches["capacity-tracker-patch.yaml"]["target"] == {"kind": "HorizontalPodAutoscaler", "name": "tracker"}
    assert patches["capacity-worker-patch.yaml"]["target"] == {"kind": "ScaledObject", "name": "worker"}
    assert kustomization["resources"] == ["../../base"]

    # Each patch is a guarded JSON 6902 patch: a test of the entry it means, then the numeric target as a string.
    hpa_text = (overlay / "capacity-tracker-patch.yaml").read_text()
    assert hpa_text.startswith("# Written by `make hpa-tune`")
    hpa_ops = yaml.safe_load(hpa_text)
    assert hpa_ops[0] == {
        "op": "test",
        "path": "/spec/metrics/1/pods/metric/name",
        "value": "adclick_click_requests_per_second",
    }
    assert hpa_ops[1]["op"] == "replace" and hpa_ops[1]["path"] == "/spec/metrics/1/pods/target/averageValue"
    rps_target = int(hpa_ops[1]["value"])
    assert rps_target > 0
    keda_ops = yaml.safe_load((overlay / "capacity-worker-patch.yaml").read_text())
    # The queue trigger is the second trigger here: the tuner must not patch the CPU one.
    assert keda_ops[0] == {"op": "test", "path": "/spec/triggers/1/name", "value": "clicks-backlog"}
    assert keda_ops[1]["path"] == "/spec/triggers/1/metadata/queueLength"
    queue_length = int(keda_ops[1]["value"])
    assert queue_length > 0

    # Applied to the base, the patches change only the two targets.
    hpa, scaled = yaml.safe_load_all(BASE)
    patched = apply_json6902(hpa, hpa_ops)
    assert patched["spec"]["metrics"][1]["pods"]["target"]["averageValue"] == str(rps_target)
    assert patched["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == 70
    patched = apply_json6902(scaled, keda_ops)
    assert patched["spec"]["triggers"][1]["metadata"]["queueLength"] == str(queue_length)
    assert patched["spec"]["triggers"][1]["metadata"]["queueURL"].endswith("adclick-clicks")

    # The report and its result agree with the patches; the chart is a PNG.
    result = json.loads((out / "result.json").read_text())
    assert result["tracker"]["target_rps"] == rps_target
    assert result["worker"]["queue_length"] == queue_length
    report = (out / "report.md").read_text()
    assert "| step | users | RPS | p50 | p95 | p99 | errors |" in report
    step_rows = [line for line in report.splitlines() if line.startswith("| 0 |") or line.startswith("| 1 |")]
    assert len(step_rows) == 2, report
    assert f"HPA target: {rps_target:,} req/s per pod" in report
    assert f"KEDA queueLength: {queue_length}" in report
    assert "saturates" in report  # the report says Locust's client is the limit on a small machine
    assert (out / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "locust_stats_history.csv").exists()

    # kustomize itself (when kubectl is here) renders the overlay with both targets in place.
    if shutil.which("kubectl"):
        rendered = subprocess.run(["kubectl", "kustomize", str(overlay)], capture_output=True, text=True, timeout=60)
        assert rendered.returncode == 0, rendered.stderr
        docs = {d["kind"]: d for d in yaml.safe_load_all(rendered.stdout)}
        assert docs["HorizontalPodAutoscaler"]["spec"]["minReplicas"] == 3
        assert docs["HorizontalPodAutoscaler"]["spec"]["metrics"][1]["pods"]["target"]["averageValue"] == str(
            rps_target
        )
        assert docs["ScaledObject"]["spec"]["triggers"][1]["metadata"]["queueLength"] == str(queue_length)


@pytest.mark.timeout(150)
def test_loadgen_generator_writes_the_tracker_target_and_stops_at_the_first_failing_step(
    overlay: Path, tmp_path: Path
) -> None:
    """`--generator=loadgen`: the same steps at a constant rate from bench/loadgen (for machines where Locust
    cannot load one tracker core). A generous SLO gives a target; an SLO no step can keep
    ends the ramp at the first step and leaves the overlay alone."""
    out = tmp_path / "report"
    argv = [sys.executable, str(TUNER), "--overlay", str(overlay), "--out", str(out), "--skip-worker"]
    argv += ["--generator", "loadgen", "--connections", "4", "--slo-ms", "10000", "--max-error-rate", "0.5"]
    argv += ["--start-users", "2", "--step-users", "2", "--step-seconds", "2", "--max-users", "6"]
    argv += ["--settle-seconds", "1", "--user-rps", "20"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=140, cwd=ROOT, env={**os.environ})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    result = json.loads((out / "result.json").read_text())
    steps = result["tracker"]["steps"]
    assert [s["users"] for s in steps] == [2, 4, 6]
    assert all(s["requests"] > 0 and s["failures"] == 0 and s["passed"] for s in steps)
    assert [round(s["rps"] / 20) for s in steps] == [2, 4, 6]  # constant rate: users x user_rps answered
    target = result["tracker"]["target_rps"]
    assert target == int(0.7 * max(s["rps"] for s in steps))
    ops = yaml.safe_load((overlay / "capacity-tracker-patch.yaml").read_text())
    assert ops[1]["value"] == str(target)
    report = (out / "report.md").read_text()
    assert "bench/loadgen at a constant rate" in report and "--generator=loadgen" in report
    assert not (overlay / "capacity-worker-patch.yaml").exists()

    # An SLO no step can keep: the first step fails, the ramp stops there and nothing is written.
    before = (overlay / "capacity-tracker-patch.yaml").read_text()
    out2 = tmp_path / "report2"
    argv2 = [a if a != str(out) else str(out2) for a in argv]
    argv2[argv2.index("--slo-ms") + 1] = "0.000001"
    done = subprocess.run(argv2, capture_output=True, text=True, timeout=140, cwd=ROOT, env={**os.environ})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((out2 / "result.json").read_text())
    assert len(result["tracker"]["steps"]) == 1 and result["tracker"]["target_rps"] is None
    assert (overlay / "capacity-tracker-patch.yaml").read_text() == before  # the earlier target stays
