"""`bench/hpa_tune.py` end to end on tiny loads: it writes readable kustomize patches that name their run, a report
and a chart; and it refuses to write anything when other work eats the server's core during a step.

The writing runs are seconds long with a generous SLO and the trust checks opened wide (`LOOSE`), so that they
pass on any machine, a CI machine running other tests beside them included: no timing figure is asserted, only
that the tuner turns a run into patches a reviewer and kustomize can both read. The refusal run keeps the checks
as they ship.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
TUNER = ROOT / "bench" / "hpa_tune.py"

pytestmark = pytest.mark.slow  # every test here runs the real tuner against real roles

# The figures are not what these runs test, and a CI machine runs other tests beside them.
LOOSE = ["--busy-limit", "10000", "--saturated", "10000", "--keep-up", "0", "--wait-idle", "0"]
GENEROUS = ["--slo-ms", "10000", "--postback-slo-ms", "10000", "--max-error-rate", "0.5"]

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
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: postback
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: postback}
  minReplicas: 2
  maxReplicas: 10
  metrics:
    - type: Pods
      pods:
        metric: {name: adclick_postback_requests_per_second}
        target: {type: AverageValue, averageValue: "100"}
    - type: Resource
      resource: {name: cpu, target: {type: Utilization, averageUtilization: 60}}
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
    - type: aws-sqs-queue
      name: conversions-backlog
      metadata:
        queueURL: https://sqs.us-east-1.amazonaws.com/1/adclick-conversions
        queueLength: "50"
        awsRegion: us-east-1
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: postback
spec:
  template:
    spec:
      containers:
        - name: postback
          resources: {requests: {cpu: 250m}, limits: {cpu: 500m}}
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
    """A base with tracker and postback HPAs and a worker ScaledObject, and a prod overlay that already patches."""
    (tmp_path / "k8s/base").mkdir(parents=True)
    (tmp_path / "k8s/base/autoscaling.yaml").write_text(BASE)
    (tmp_path / "k8s/base/kustomization.yaml").write_text("resources:\n  - autoscaling.yaml\n")
    prod = tmp_path / "k8s/overlays/prod"
    prod.mkdir(parents=True)
    (prod / "kustomization.yaml").write_text(OVERLAY)
    (prod / "replicas.yaml").write_text("- op: replace\n  path: /spec/minReplicas\n  value: 3\n")
    return prod


def tune(*argv: str, timeout: float = 170) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(TUNER), *argv], capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=os.environ
    )


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


def overlay_files(overlay: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(overlay.iterdir())}


@pytest.mark.timeout(200)
def test_a_run_of_every_role_writes_patches_that_name_it_with_report_and_chart(overlay: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    argv = ["--overlay", str(overlay), "--out", str(out), *GENEROUS, *LOOSE]
    # Locust for the tracker's steps (the distributed set-up's tool); a given peak keeps the rates tiny.
    argv += ["--generator", "locust", "--peak-rps", "80", "--postback-peak-rps", "60", "--steps", "2"]
    argv += ["--step-seconds", "3", "--settle-seconds", "1", "--user-rps", "20", "--connections", "4"]
    argv += ["--database", "sqlite", "--worker-drain-events", "400", "--worker-drain-conversions", "60"]
    argv += ["--worker-fractions", "0.3,0.5", "--worker-step-seconds", "3"]
    done = tune(*argv)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    # The overlay lists the three patches once, next to what it had, and its own patch is untouched.
    kustomization = yaml.safe_load((overlay / "kustomization.yaml").read_text())
    patches = {p["path"]: p for p in kustomization["patches"]}
    assert set(patches) == {
        "replicas.yaml",
        "capacity-tracker-patch.yaml",
        "capacity-postback-patch.yaml",
        "capacity-worker-patch.yaml",
    }
    assert patches["capacity-tracker-patch.yaml"]["target"] == {"kind": "HorizontalPodAutoscaler", "name": "tracker"}
    assert patches["capacity-postback-patch.yaml"]["target"] == {"kind": "HorizontalPodAutoscaler", "name": "postback"}
    assert patches["capacity-worker-patch.yaml"]["target"] == {"kind": "ScaledObject", "name": "worker"}
    assert kustomization["resources"] == ["../../base"]
    assert (overlay / "replicas.yaml").read_text() == "- op: replace\n  path: /spec/minReplicas\n  value: 3\n"

    # Each patch names its run (date, machine, command) and is a guarded JSON 6902 patch: a test of the entry it
    # means, then the numeric target as a string.
    result = json.loads((out / "result.json").read_text())
    texts = {name: (overlay / name).read_text() for name in patches if name.startswith("capacity-")}
    for text in texts.values():
        head = text.splitlines()[:3]
        assert head[0].startswith("# Written by `make hpa-tune` on 20") and " from a run on " in head[0]
        assert f"{os.cpu_count()} cores" in head[0]
        assert head[1].startswith("#   bench/hpa_tune.py --overlay ") and "--generator locust" in head[1]
        assert head[2] == f"# The run's report: {out / 'report.md'}"
    hpa_ops = yaml.safe_load(texts["capacity-tracker-patch.yaml"])
    assert hpa_ops[0] == {
        "op": "test",
        "path": "/spec/metrics/1/pods/metric/name",
        "value": "adclick_click_requests_per_second",
    }
    assert hpa_ops[1]["op"] == "replace" and hpa_ops[1]["path"] == "/spec/metrics/1/pods/target/averageValue"
    rps_target = int(hpa_ops[1]["value"])
    assert rps_target == result["tracker"]["target_rps"] > 0
    postback_ops = yaml.safe_load(texts["capacity-postback-patch.yaml"])
    assert postback_ops[0]["path"] == "/spec/metrics/0/pods/metric/name"  # the Pods metric, wherever it is
    postback_target = int(postback_ops[1]["value"])
    assert postback_target == result["postback"]["target_rps"] > 0
    # Its CPU metric scales out at the same load: the CPU it used at the target rate, as a share of its request
    # (250m). The tracker's base names no Deployment, so no request: its CPU target is left alone.
    postback = result["postback"]
    assert postback["cpu_request_cores"] == 0.25 and postback["cpu_at_target_pct"] > 0
    assert postback_ops[2:] == [
        {"op": "test", "path": "/spec/metrics/1/resource/name", "value": "cpu"},
        {
            "op": "replace",
            "path": "/spec/metrics/1/resource/target/averageUtilization",
            "value": math.ceil(postback["cpu_at_target_pct"] / 0.25),
        },
    ]
    assert postback["cpu_target_pct"] == postback_ops[3]["value"]
    assert "scale out at the same load" in texts["capacity-postback-patch.yaml"]
    assert len(hpa_ops) == 2 and result["tracker"]["cpu_target_pct"] is None
    assert "SQS included" in texts["capacity-postback-patch.yaml"]
    keda_ops = yaml.safe_load(texts["capacity-worker-patch.yaml"])
    # Both queue triggers, by name; the CPU trigger is left alone.
    assert [op["path"] for op in keda_ops] == [
        "/spec/triggers/1/name",
        "/spec/triggers/1/metadata/queueLength",
        "/spec/triggers/2/name",
        "/spec/triggers/2/metadata/queueLength",
    ]
    assert [keda_ops[0]["value"], keda_ops[2]["value"]] == ["clicks-backlog", "conversions-backlog"]
    clicks_length, conversions_length = int(keda_ops[1]["value"]), int(keda_ops[3]["value"])
    assert clicks_length == result["worker"]["clicks"]["queue_length"] > 0
    assert conversions_length == result["worker"]["conversions"]["queue_length"] > 0

    # The click messages hold what the tracker packed at its target rate, measured there, not assumed.
    tracker = result["tracker"]
    assert tracker["at_target"]["offered_rps"] == rps_target
    assert tracker["clicks_per_message"] == tracker["at_target"]["clicks_per_message"] > 0
    assert result["worker"]["clicks"]["events_per_message"] == max(1, round(tracker["clicks_per_message"]))
    assert "measured at the target rate" in result["worker"]["events_per_message_from"]
    # Every step was classified; the postbacks were valid and went to SQS.
    assert [s["users"] for s in tracker["steps"]] == [2, 4]
    assert all(s["trust"] == "ok" and s["others_pct"] is not None for s in tracker["steps"])
    assert result["postback"]["accepted"] > 0 and result["postback"]["rejected"] == 0

    # Applied to the base, the patches change only the targets.
    hpa, postback_hpa, scaled, _ = yaml.safe_load_all(BASE)
    patched = apply_json6902(hpa, hpa_ops)
    assert patched["spec"]["metrics"][1]["pods"]["target"]["averageValue"] == str(rps_target)
    assert patched["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == 70
    patched = apply_json6902(postback_hpa, postback_ops)
    assert patched["spec"]["metrics"][0]["pods"]["target"]["averageValue"] == str(postback_target)
    assert patched["spec"]["metrics"][1]["resource"]["target"]["averageUtilization"] == postback["cpu_target_pct"]
    patched = apply_json6902(scaled, keda_ops)
    assert patched["spec"]["triggers"][1]["metadata"]["queueLength"] == str(clicks_length)
    assert patched["spec"]["triggers"][2]["metadata"]["queueLength"] == str(conversions_length)
    assert patched["spec"]["triggers"][0]["metadata"] == {"value": "80"}

    # The report shows the peak, the capacity and their ratio per role, and every step's trust; the chart is a PNG.
    report = (out / "report.md").read_text()
    assert "| step | share | users | offered | answered |" in report
    assert report.count("| peak | req/s |") == 2
    assert f"HPA target: {rps_target:,} req/s per pod" in report
    assert f"HPA target: {postback_target:,} req/s per pod" in report
    assert f"HPA CPU target: {postback['cpu_target_pct']}%" in report
    assert "of the peak" in report
    assert f"KEDA queueLength (clicks): {clicks_length}" in report
    assert f"KEDA queueLength (conversions): {conversions_length}" in report
    assert "Locust is the user-facing load tool" in report
    assert (out / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "locust_stats_history.csv").exists()

    # kustomize itself (when kubectl is here) renders the overlay with every target in place.
    if shutil.which("kubectl"):
        rendered = subprocess.run(["kubectl", "kustomize", str(overlay)], capture_output=True, text=True, timeout=60)
        assert rendered.returncode == 0, rendered.stderr
        docs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(rendered.stdout)}
        tracker_hpa = docs["HorizontalPodAutoscaler", "tracker"]
        assert tracker_hpa["spec"]["minReplicas"] == 3
        assert tracker_hpa["spec"]["metrics"][1]["pods"]["target"]["averageValue"] == str(rps_target)
        postback_metric = docs["HorizontalPodAutoscaler", "postback"]["spec"]["metrics"][0]
        assert postback_metric["pods"]["target"]["averageValue"] == str(postback_target)
        assert docs["ScaledObject", "worker"]["spec"]["triggers"][2]["metadata"]["queueLength"] == str(
            conversions_length
        )


@pytest.mark.timeout(150)
def test_loadgen_steps_run_from_a_tenth_to_all_of_the_peak_and_stop_at_the_first_failing_step(
    overlay: Path, tmp_path: Path
) -> None:
    """Constant-rate steps from bench/loadgen at shares of the peak: a generous SLO gives a target; an SLO no
    step can keep ends the ramp at the first step and leaves the overlay alone."""
    out = tmp_path / "report"
    argv = ["--overlay", str(overlay), "--out", str(out), "--skip-worker", "--skip-postback", *GENEROUS, *LOOSE]
    argv += ["--peak-rps", "150", "--steps", "3", "--step-seconds", "2", "--settle-seconds", "1"]
    argv += ["--connections", "4"]
    done = tune(*argv)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    result = json.loads((out / "result.json").read_text())
    steps = result["tracker"]["steps"]
    assert [round(s["offered_rps"]) for s in steps] == [50, 100, 150]
    assert [round(s["share"], 2) for s in steps] == [0.33, 0.67, 1.0]
    assert all(s["requests"] > 0 and s["failures"] == 0 and s["passed"] for s in steps)
    assert all(abs(s["rps"] - s["offered_rps"]) < 0.2 * s["offered_rps"] for s in steps)  # a constant rate
    target = result["tracker"]["target_rps"]
    assert target == int(0.7 * max(s["rps"] for s in steps))
    ops = yaml.safe_load((overlay / "capacity-tracker-patch.yaml").read_text())
    assert ops[1]["value"] == str(target)
    report = (out / "report.md").read_text()
    assert "bench/loadgen at a constant rate" in report and "| --peak-rps | 150 |" in report
    assert "Every step kept the SLO: the capacity is at least the last step's rate" in report
    assert not (overlay / "capacity-worker-patch.yaml").exists()
    assert not (overlay / "capacity-postback-patch.yaml").exists()

    # An SLO no step can keep: the first step fails, the ramp stops there and nothing is written.
    before = overlay_files(overlay)
    out2 = tmp_path / "report2"
    argv2 = [a if a != str(out) else str(out2) for a in argv]
    argv2[argv2.index("--slo-ms") + 1] = "0.000001"
    done = tune(*argv2)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((out2 / "result.json").read_text())
    assert len(result["tracker"]["steps"]) == 1 and result["tracker"]["target_rps"] is None
    assert result["refusals"] == []  # a measurement with no capacity, not an untrusted run
    assert overlay_files(overlay) == before  # the earlier target stays


@pytest.mark.timeout(120)
@pytest.mark.skipif(not shutil.which("wrk"), reason="wrk measures the peak (sudo apt-get install -y wrk)")
def test_the_steps_scale_with_the_peak_wrk_measures(tmp_path: Path) -> None:
    out = tmp_path / "report"
    argv = ["--no-write", "--out", str(out), "--skip-worker", "--skip-postback", *GENEROUS, *LOOSE]
    argv += ["--peak-seconds", "2", "--steps", "2", "--step-seconds", "2", "--settle-seconds", "1"]
    done = tune(*argv)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    tracker = json.loads((out / "result.json").read_text())["tracker"]
    peak = tracker["peak"]
    assert peak["source"] == "wrk" and peak["rps"] > 0 and peak["server_cpu_pct"] > 0
    assert tracker["steps"][0]["offered_rps"] == pytest.approx(peak["rps"] / 2, rel=0.01)
    assert "| wrk |" in (out / "report.md").read_text()


@pytest.mark.timeout(90)
@pytest.mark.skipif((os.cpu_count() or 1) < 2 or not shutil.which("taskset"), reason="needs two cores and taskset")
def test_the_tuner_refuses_to_write_when_a_busy_loop_eats_the_servers_core(overlay: Path, tmp_path: Path) -> None:
    """Another process spinning on the server's core during the steps: every figure would be the machine's, so the
    step is marked busy, and the tuner writes nothing, says why, and exits non-zero even though writing was asked."""
    out = tmp_path / "report"
    before = overlay_files(overlay)
    spinner = subprocess.Popen(
        ["taskset", "-c", "1", sys.executable, "-c", "while True: pass"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # The trust checks as they ship; a given peak keeps the run short and needs no wrk.
        argv = ["--overlay", str(overlay), "--out", str(out), "--skip-worker", "--skip-postback", *GENEROUS]
        argv += ["--wait-idle", "0", "--tracker-cpu", "1", "--client-cpu", "0", "--peak-rps", "200", "--steps", "2"]
        argv += ["--step-seconds", "2", "--settle-seconds", "1", "--connections", "4"]
        done = tune(*argv, timeout=80)
    finally:
        spinner.kill()
        spinner.wait()
    assert done.returncode == 3, done.stdout[-3000:] + done.stderr[-3000:]
    assert "refusing to write targets: this run cannot be trusted" in done.stdout
    assert "tracker: step 0 (100 req/s offered) was busy (other processes used" in done.stdout

    result = json.loads((out / "result.json").read_text())
    tracker = result["tracker"]
    [step] = tracker["steps"]  # the ramp stops at the step that cannot count
    assert step["trust"] == "busy" and step["others_pct"] > 10
    assert tracker["target_rps"] is None and tracker["refusal"].startswith("step 0 (100 req/s offered) was busy")
    assert result["refusals"] and result["written"] == []
    report = (out / "report.md").read_text()
    assert "**Refused: no target written.**" in report and "| **busy**: other processes used" in report
    assert overlay_files(overlay) == before
