"""A newcomer's path, outside the checkout: the wheel installed alone into a fresh
virtual environment, `tierflow init`, then `plan`, `run` and a feature view's values in
the new project; an engine that is not installed names the extra that brings it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

PROJECT = Path(__file__).resolve().parents[2]
UV = Path(sys.executable).parent / "uv"


def _run(*args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None):
    return subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def fresh_tierflow(tmp_path_factory) -> Path:
    """The ``tierflow`` command of a new venv holding the wheel and its core dependencies."""
    root = tmp_path_factory.mktemp("fresh")
    dist, venv = root / "dist", root / "venv"
    # uv installs offline from its cache (the suite runs without a network); pip cannot.
    assert UV.is_file(), f"{UV} is missing: `make setup` installs uv into the venv"
    # The build backend from this environment: an isolated one would fetch it again.
    built = _run(UV, "build", "--wheel", "--quiet", "--no-build-isolation",
                 "--python", sys.executable, "--out-dir", dist, PROJECT)  # fmt: skip
    assert built.returncode == 0, built.stderr
    made = _run(UV, "venv", "--quiet", "--python", sys.executable, venv)
    assert made.returncode == 0, made.stderr
    (wheel,) = dist.glob("tierflow-*.whl")
    # At the tested versions.
    installed = _run(UV, "pip", "install", "--quiet", "--offline", "--python",
                     venv / "bin/python", "-c", PROJECT / "requirements.lock", wheel)  # fmt: skip
    assert installed.returncode == 0, installed.stderr
    return venv / "bin" / "tierflow"


def test_a_wheel_in_a_fresh_venv_runs_a_new_project(fresh_tierflow, tmp_path):
    # Nothing of the checkout or of the test session's settings may leak in.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TIERFLOW_", "VIRTUAL_ENV"))}
    env["PATH"] = f"{fresh_tierflow.parent}{os.pathsep}{env.get('PATH', '')}"
    version = _run(fresh_tierflow, "--version", env=env)
    assert version.returncode == 0 and version.stdout.startswith("tierflow "), version.stderr
    listed = _run(
        fresh_tierflow.parent / "python", "-c",
        "import importlib.util as u; print([m for m in ('pyspark', 'dask', 'ray', 'duckdb') "
        "if u.find_spec(m)])", env=env,
    )  # fmt: skip
    assert listed.stdout.strip() == "[]", "the core install pulled in an extra"

    project = tmp_path / "shop"
    init = _run(fresh_tierflow, "init", project, env=env)
    assert init.returncode == 0, init.stderr
    work = project / "transforms"  # found from a folder below the project, too
    plan = _run(fresh_tierflow, "plan", "orders_clean", cwd=work, env=env)
    assert plan.returncode == 0, plan.stderr
    assert "planner's choice: single" in plan.stdout
    run = _run(fresh_tierflow, "run", "orders_clean", "--quiet", cwd=project, env=env)
    assert run.returncode == 0, run.stderr
    assert "200 rows in, 2 quarantined, 198 written" in run.stdout
    assert str(project / "data" / "silver" / "orders") in run.stdout
    values = _run(
        fresh_tierflow, "features", "values", "customer_spend",
        "--as-of", "2026-01-08T00:00:00Z", cwd=project, env=env,
    )  # fmt: skip
    assert values.returncode == 0, values.stderr
    assert "20 entities as of 2026-01-08" in values.stdout

    dask = _run(fresh_tierflow, "run", "orders_clean", "--engine", "dask", cwd=project, env=env)
    assert dask.returncode == 2, dask.stderr
    assert 'pip install "tierflow[dask]"' in dask.stderr and "Traceback" not in dask.stderr
    again = _run(fresh_tierflow, "init", project, env=env)
    assert again.returncode == 2 and "already holds a tierflow project" in again.stderr
    shutil.rmtree(project)
