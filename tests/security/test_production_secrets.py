"""With ADCLICK_ENV=production, every role's `main` refuses to start on a default, empty or short secret.

Each case runs the real command (`python -m adclick.cli <role>`) with nothing else to talk to: a role that got
past its settings would sit waiting for Redis, SQS or the database instead of exiting, and the test would fail.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from adclick.core.settings import (
    DEFAULT_CLICK_SECRET,
    DEFAULT_MANAGER_SECRET,
    DEFAULT_POSTBACK_SECRET,
    ManagerSettings,
    PostbackSettings,
    TrackerSettings,
    WorkerSettings,
)
from support.procs import free_port

GOOD = {
    "ADCLICK_CLICK_SECRET": "c" * 40,
    "ADCLICK_POSTBACK_SECRET": "p" * 40,
    "ADCLICK_MANAGER_SECRET": "m" * 40,
}
ROLES = ["tracker", "worker", "postback", "manager"]

# (what is wrong, the environment that says so, the variable the error must name)
BAD = [
    ("defaults", {}, "ADCLICK_CLICK_SECRET"),
    ("empty click secret", {**GOOD, "ADCLICK_CLICK_SECRET": ""}, "ADCLICK_CLICK_SECRET"),
    ("default click secret", {**GOOD, "ADCLICK_CLICK_SECRET": DEFAULT_CLICK_SECRET}, "ADCLICK_CLICK_SECRET"),
    ("short click secret", {**GOOD, "ADCLICK_CLICK_SECRET": "x" * 31}, "ADCLICK_CLICK_SECRET"),
    ("empty postback secret", {**GOOD, "ADCLICK_POSTBACK_SECRET": ""}, "ADCLICK_POSTBACK_SECRET"),
    (
        "default postback secret",
        {**GOOD, "ADCLICK_POSTBACK_SECRET": DEFAULT_POSTBACK_SECRET},
        "ADCLICK_POSTBACK_SECRET",
    ),
    # A previous ClickID key still verifies ClickIDs: the public development key there would let anyone mint them.
    (
        "default previous click secret",
        {**GOOD, "ADCLICK_CLICK_PREVIOUS_SECRET": DEFAULT_CLICK_SECRET},
        "ADCLICK_CLICK_PREVIOUS_SECRET",
    ),
    ("empty previous click secret", {**GOOD, "ADCLICK_CLICK_PREVIOUS_SECRET": ""}, "ADCLICK_CLICK_PREVIOUS_SECRET"),
]
MANAGER_BAD = [
    ("default manager secret", {**GOOD, "ADCLICK_MANAGER_SECRET": DEFAULT_MANAGER_SECRET}, "ADCLICK_MANAGER_SECRET"),
    ("empty manager secret", {**GOOD, "ADCLICK_MANAGER_SECRET": ""}, "ADCLICK_MANAGER_SECRET"),
]
CASES = [(role, *case) for role in ROLES for case in BAD] + [("manager", *case) for case in MANAGER_BAD]


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADCLICK_")}
    port = str(free_port())
    # Nothing listens at these addresses, so a role that started anyway could not finish starting either.
    env.update(
        {
            "ADCLICK_ENV": "production",
            "ADCLICK_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
            "ADCLICK_SQS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
            "ADCLICK_DATABASE_URL": f"postgresql+asyncpg://nobody@127.0.0.1:{free_port()}/none",
            "ADCLICK_TRACKER_PORT": port,
            "ADCLICK_POSTBACK_PORT": port,
            "ADCLICK_MANAGER_PORT": port,
            "ADCLICK_WORKER_HEALTH_PORT": port,
            "ADCLICK_TRACKER_HOST": "127.0.0.1",
            "ADCLICK_POSTBACK_HOST": "127.0.0.1",
            "ADCLICK_MANAGER_HOST": "127.0.0.1",
            "ADCLICK_WORKER_HEALTH_HOST": "127.0.0.1",
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
    )
    env.update(extra)
    return env


@pytest.mark.parametrize(("role", "what", "extra", "variable"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_role_refuses_to_start(role: str, what: str, extra: dict[str, str], variable: str) -> None:
    try:
        done = subprocess.run(
            [sys.executable, "-m", "adclick.cli", role],
            env=clean_env(extra),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except subprocess.TimeoutExpired as started:
        pytest.fail(f"`adclick {role}` started with a {what} in production:\n{started.stderr!r}")
    assert done.returncode != 0, done.stdout + done.stderr
    assert variable in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr or "ValidationError" in done.stderr, done.stderr[-2000:]


@pytest.mark.parametrize("settings_class", [TrackerSettings, WorkerSettings, PostbackSettings, ManagerSettings])
def test_real_secrets_are_accepted(settings_class: type, monkeypatch: pytest.MonkeyPatch) -> None:
    """The other side: good secrets, and a good previous key mid-rotation, pass the same checks."""
    for name in list(os.environ):
        if name.startswith("ADCLICK_"):
            monkeypatch.delenv(name)
    for name, value in {**GOOD, "ADCLICK_ENV": "production", "ADCLICK_CLICK_PREVIOUS_SECRET": "o" * 40}.items():
        monkeypatch.setenv(name, value)
    settings = settings_class()
    assert settings.env == "production"
    assert settings.click_previous_secret.get_secret_value() == "o" * 40
