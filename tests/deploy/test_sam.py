"""deploy/sam/template.yaml: the postback role as a Lambda, linted by cfn-lint (which validates SAM resources
against SAM's schemas) and checked against the code it deploys."""

from __future__ import annotations

import importlib
import inspect
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from adclick.core import settings

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "deploy" / "sam" / "template.yaml"


def cfn_lint(path: Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("cfn-lint", path=str(Path(sys.executable).parent)) or shutil.which("cfn-lint")
    assert binary, "cfn-lint comes with the dev dependencies (moto[server])"
    return subprocess.run([binary, str(path)], capture_output=True, text=True, timeout=120, check=False)


def template() -> dict[str, Any]:
    return dict(yaml.safe_load(TEMPLATE.read_text()))


def function() -> dict[str, Any]:
    [fn] = [r for r in template()["Resources"].values() if r["Type"] == "AWS::Serverless::Function"]
    return dict(fn["Properties"])


def test_cfn_lint_passes_the_template_and_would_catch_a_broken_one(tmp_path: Path) -> None:
    done = cfn_lint(TEMPLATE)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")
    broken = tmp_path / "template.yaml"
    broken.write_text(TEMPLATE.read_text().replace("MemorySize: 512", "MemorySize: lots"))
    assert cfn_lint(broken).returncode != 0


def test_the_function_runs_the_postback_lambda_handler() -> None:
    module, _, name = function()["Handler"].rpartition(".")
    handler = getattr(importlib.import_module(module), name)
    assert list(inspect.signature(handler).parameters) == ["event", "context"]
    # The wheel is manylinux_2_34: Lambda's python3.11 runtime (Amazon Linux 2, glibc 2.26) cannot load it.
    runtime = template()["Globals"]["Function"]["Runtime"]
    assert runtime.startswith("python3.") and int(runtime.split(".")[1]) >= 12


def test_it_has_a_function_url_and_may_send_to_the_conversions_queue_only() -> None:
    fn = function()
    assert fn["FunctionUrlConfig"]["AuthType"] == "NONE"  # advertisers authenticate with the postback token
    variables = fn["Environment"]["Variables"]
    queue_parameter = variables["ADCLICK_CONVERSIONS_QUEUE"]["Ref"]
    assert queue_parameter in template()["Parameters"]
    [send] = [p["SQSSendMessagePolicy"] for p in fn["Policies"] if "SQSSendMessagePolicy" in p]
    assert send == {"QueueName": {"Ref": queue_parameter}}
    statements = [s for p in fn["Policies"] if "Statement" in p for s in p["Statement"]]
    assert [s["Action"] for s in statements] == ["sqs:GetQueueUrl"]
    assert f"${{{queue_parameter}}}" in statements[0]["Resource"]["Fn::Sub"]
    assert "PostbackFunctionUrl" in str(template()["Outputs"]["PostbackUrl"]["Value"])


def test_its_environment_is_made_of_real_postback_settings() -> None:
    names = {f"ADCLICK_{name.upper()}" for name in settings.PostbackSettings.model_fields}
    variables = set(function()["Environment"]["Variables"])
    assert variables <= names
    assert {"ADCLICK_ENV", "ADCLICK_CLICK_SECRET", "ADCLICK_POSTBACK_SECRET", "ADCLICK_REDIS_URL"} <= variables
