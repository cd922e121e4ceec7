"""Several hosts on one machine, one cut off mid-run: everything completes, and the
outputs equal an undisturbed run's.

`tests/multihost/run.py` builds the hosts as network namespaces joined by veth pairs to
a bridge of their own (10.231.0.0/24, connected to nothing else) and runs
`tests/multihost/scenario.py` on the client host: 3 Kafka brokers (replication factor 3,
min in-sync replicas 2), a Spark master with workers on two other hosts, a Ray head with
a worker on another host, Redis. A batch job that the planner on the client (told it has
50 MiB) sends to the Spark cluster, a `ray job submit` training job and two streaming
daemons run while h3 (a broker, a Spark worker and the Ray worker) is cut off by taking
its switch port down. Here the outputs are compared: the model with the same training run
undisturbed on the session's Ray head.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.multihost.run import run
from tests.support import assert_same_rows, normalise, project_for, read_table
from tierflow.examples.retail import generate

pytestmark = [pytest.mark.multihost, pytest.mark.slow]


@pytest.fixture(scope="module")
def outcome(tmp_path_factory) -> tuple[dict[str, Any], Path]:
    work = tmp_path_factory.mktemp("multihost")
    rc = run(work)
    log = (work / "logs" / "scenario.log").read_text(errors="replace")
    assert rc == 0, log[-8000:]
    return json.loads((work / "result.json").read_text()), work


def test_the_cut_host_had_work_of_every_kind_in_flight(outcome) -> None:
    result, _ = outcome
    assert result["cut"] == "h3"
    assert "10.231.0.3" in result["training_workers_before_cut"], result
    assert "10.231.0.1" in result["training_workers_before_cut"], result
    assert result["spark_executors_before_cut"]["h3"] >= 1, result
    assert result["partitions_led_by_broker_3_before_cut"], result


def test_everything_completes(outcome) -> None:
    result, _ = outcome
    assert result["planner"]["rc"] == 0
    assert result["ray_job_status"] == "SUCCEEDED"
    assert result["daemon_exit_codes"] == [0, 0]
    # Every event in the topic once: the producer's retries across the failover (an
    # idempotent producer) wrote nothing twice.
    assert result["events_sent"] == result["topic_end_offsets"] == 12_000


def test_the_table_equals_an_undisturbed_run(outcome, tmp_path) -> None:
    result, _ = outcome
    data = generate(tmp_path / "data", orders=12_000, files=16)  # the scenario's input
    project = project_for(data)
    record = project.run(project.load_job("orders_clean"), engine="single", echo=False)
    assert record.status == "succeeded"
    table = read_table(result["paths"]["spark_table"])
    ids = table["order_id"].to_pylist()
    assert len(ids) == len(set(ids)), "duplicate rows after the worker host was lost"
    assert_same_rows(
        normalise(table), normalise(read_table(data / "silver" / "orders")),
        "silver/orders planned onto the cluster, with h3 cut off, vs on one machine",
    )  # fmt: skip


def test_the_planner_sends_what_the_client_cannot_hold_to_the_cluster(outcome) -> None:
    result, _ = outcome
    planner = result["planner"]
    assert planner["engine"] == "spark" and planner["address"] == "spark://10.231.0.1:7077"
    spark = planner["estimates"]["spark"]
    assert (spark["workers"], spark["cores"]) == (2, 2) and spark["fits"]
    assert not planner["estimates"]["single"]["fits"] and not planner["estimates"]["dask"]["fits"]
    assert "single, dask cannot hold it" in planner["reason"] or "cannot hold" in planner["reason"]
    assert "succeeded on spark (spark://10.231.0.1:7077" in planner["summary"], planner["summary"]
    # Its table is the one compared with an undisturbed run above.
    assert planner["table"] == result["paths"]["spark_table"]


def test_the_model_equals_the_undisturbed_run(outcome, ddp_reference) -> None:
    """The same data, seed and world size undisturbed on the session's Ray head (one
    host): a worker's host lost mid-run changes no bit of the model."""
    import torch

    result, _ = outcome
    # Cut mid-run: steps were left after the newest checkpoint before the cut.
    assert 0 < result["training_checkpoint_step_before_cut"] < ddp_reference["metrics"]["steps"]
    assert result["training_resumed"], "the training run never lost a worker"
    cut = torch.load(result["paths"]["model_cut"], weights_only=False)["model"]
    reference = ddp_reference["weights"]
    assert cut.keys() == reference.keys()
    for key, weight in reference.items():
        assert cut[key].equal(weight), key  # bit for bit


def test_the_online_store_equals_batch_over_the_same_events(outcome) -> None:
    result, _ = outcome
    store = result["store"]
    assert store["ok"], store
    assert store["entities"] > 5 and store["values"] > 30, store
    assert store["mismatches"] == [] and store["extra"] == 0, store


def test_the_lab_is_gone(outcome) -> None:
    _, work = outcome
    tag = json.loads((work / "lab.json").read_text())["tag"]
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    assert f"tf{tag}-" not in listed.stdout
    assert not Path(f"/tmp/tf{tag}").exists()
