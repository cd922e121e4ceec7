from __future__ import annotations

import pytest

pytestmark = [pytest.mark.dask]


def test_computation_runs_on_the_distributed_worker(dask_scheduler):
    import dask.array as da
    from distributed import Client, get_worker

    with Client(dask_scheduler, set_as_default=False) as client:
        workers = client.scheduler_info()["workers"]
        assert len(workers) == 1
        (worker_address,) = workers

        x = da.arange(1_000_000, chunks=100_000)
        total = client.compute((x * 2).sum()).result()
        assert total == 2 * sum(range(1_000_000))

        ran_on = client.submit(lambda: get_worker().address, pure=False).result()
        assert ran_on == worker_address
        assert worker_address.startswith("tcp://127.0.0.1:")
