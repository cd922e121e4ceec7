from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

DRIVER = """
import ray
ray.init(address="auto", logging_level="ERROR", log_to_driver=False)

@ray.remote
def square(x):
    import ray
    return x * x, ray.get_runtime_context().get_node_id()

results = ray.get([square.remote(i) for i in range(20)])
print("SUM", sum(r[0] for r in results))
print("NODES", len({r[1] for r in results}))
print("CPU", ray.cluster_resources()["CPU"])
"""


def client_env(ray_head) -> dict[str, str]:
    return dict(os.environ) | ray_head.client_env()


def test_ray_task_runs_on_the_head(ray_head):
    out = subprocess.run(
        [sys.executable, "-c", DRIVER],
        env=client_env(ray_head),
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    ).stdout
    assert "SUM 2470" in out
    assert "NODES 1" in out
    assert f"CPU {float(ray_head.config.ray.num_cpus)}" in out


def test_ray_job_submit_runs_a_job(ray_head, tmp_path):
    (tmp_path / "job.py").write_text(
        "import ray\nray.init()\nprint('JOB-RESULT', ray.get(ray.remote(lambda: 6 * 7).remote()))\n"
    )
    ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
    result = subprocess.run(
        [ray_cli, "job", "submit", "--working-dir", str(tmp_path), "--", "python", "job.py"],
        env=client_env(ray_head),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "JOB-RESULT 42" in result.stdout
    assert "succeeded" in result.stdout


def test_a_client_without_the_token_is_refused(ray_head):
    env = client_env(ray_head)
    env.pop("RAY_AUTH_TOKEN_PATH")
    env["RAY_AUTH_TOKEN"] = "0" * 64
    ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
    result = subprocess.run(
        [ray_cli, "job", "list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "auth" in (result.stdout + result.stderr).lower()
