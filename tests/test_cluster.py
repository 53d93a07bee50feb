"""evaluate(client=...) on a 2-worker LocalCluster: equal to a serial run, survives a killed worker, resumes."""

from __future__ import annotations

import os
import signal
import time
import warnings
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import torch

pytest.importorskip("distributed", reason="dask[distributed] is not installed (pip install 'cl-explain[cluster]')")

from dask.distributed import Client  # noqa: E402

import cl_explain  # noqa: E402
from cl_explain.metrics import Pair, cluster  # noqa: E402
from cl_explain.metrics.registry import paper_metrics  # noqa: E402
from cl_explain.utils import cpu_generator  # noqa: E402
from helpers import FAST, TINY_SIDE, tiny_model  # noqa: E402

METHODS = ["occlusion", "smoothgrad", "random"]
N_PAIRS = 4
# batch_size 4 makes one task per pair and method: 12 tasks, enough to interrupt a run part-way
CALL = {"method_params": {name: FAST[name] for name in METHODS[:2]}, "batch_size": 4}


def make_pairs() -> list[Pair]:
    g = cpu_generator(3)
    side = (1, 3, TINY_SIDE, TINY_SIDE)
    return [
        Pair(torch.rand(*side, generator=g), torch.rand(*side, generator=g), pair_id=f"p{i}", seed=i)
        for i in range(N_PAIRS)
    ]


def run(client: Client | None, cache_dir: Path | None = None) -> pd.DataFrame:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*are not applicable")  # max_sensitivity of two methods
        return cl_explain.evaluate(tiny_model(), make_pairs(), METHODS, cache_dir=cache_dir, client=client, **CALL)


def cache_files(folder: Path) -> dict[Path, tuple[int, int]]:
    """Every stored result with its inode and modification time (a rewrite changes both)."""
    return {path: (path.stat().st_ino, path.stat().st_mtime_ns) for path in folder.rglob("*.json")}


def assert_same(df: pd.DataFrame, serial: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(df, serial, check_exact=True)
    assert df.attrs == serial.attrs


def wait_until_idle(client: Client, timeout: float = 60.0) -> None:
    """Until the scheduler holds no task and no worker runs one (cancelled tasks run to their end)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        held = client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks))
        running = client.run(lambda dask_worker: dask_worker.state.executing_count)
        if held == 0 and sum(running.values()) == 0:
            return
        time.sleep(0.1)
    raise TimeoutError("the cluster did not become idle")


@pytest.fixture(scope="module")
def client():
    with cluster.local_client(2) as connected:
        assert len(connected.scheduler_info()["workers"]) == 2
        yield connected


@pytest.fixture(scope="module")
def serial() -> pd.DataFrame:
    started = time.perf_counter()
    df = run(None)  # one torch thread, like a Dask worker (conftest sets it)
    print(f"\n[serial] {N_PAIRS * len(METHODS)} chunks: {time.perf_counter() - started:.2f} s")
    return df


@pytest.fixture
def fresh_client(client: Client) -> Client:
    """The module's client with both workers up and nothing left over from an earlier test."""
    client.wait_for_workers(2, timeout=60)
    wait_until_idle(client)
    return client


def trip_on_first_update(monkeypatch, action) -> None:
    """Make the cluster's progress bar call `action` when the first results land."""

    class Tripping(cluster.tqdm):
        def update(self, n=1):
            if self.n == 0:
                action()
            return super().update(n)

    monkeypatch.setattr(cluster, "tqdm", Tripping)


def arrivals(client: Client) -> Counter:
    """(worker, task kind) -> how many times a task of that kind arrived in the worker's memory so far
    (computed there or copied from another worker), from the workers' transition logs."""
    logs = client.run(lambda dask_worker: [e[0] for e in dask_worker.state.log if e[1] == "put-in-memory"])
    return Counter((worker, key.split("-")[0]) for worker, keys in logs.items() for key in keys)


def test_the_cluster_frame_equals_the_serial_one(fresh_client, serial, capsys):
    before = arrivals(fresh_client)
    started = time.perf_counter()
    df = run(fresh_client)
    took = time.perf_counter() - started
    assert_same(df, serial)
    during = arrivals(fresh_client) - before
    workers = fresh_client.scheduler_info()["workers"]
    assert all(during[(worker, "_hold")] == 1 for worker in workers)  # the model reached each worker once
    assert all(during[(worker, "_score")] > 0 for worker in workers)  # and both workers scored chunks
    assert sum(during[(worker, "_score")] for worker in workers) == N_PAIRS * len(METHODS)
    assert len(df) > N_PAIRS * len(METHODS)
    assert "Dask dashboard: http" in capsys.readouterr().out
    with capsys.disabled():
        print(f"\n[cluster] {N_PAIRS * len(METHODS)} tasks on 2 workers: {took:.2f} s")


def test_a_killed_worker_loses_nothing_and_a_rerun_computes_nothing(fresh_client, serial, tmp_path, monkeypatch):
    victim = next(iter(fresh_client.run(os.getpid).values()))
    trip_on_first_update(monkeypatch, lambda: os.kill(victim, signal.SIGKILL))
    assert_same(run(fresh_client, tmp_path), serial)
    monkeypatch.undo()
    fresh_client.wait_for_workers(2, timeout=60)
    assert victim not in fresh_client.run(os.getpid).values()  # it was killed (and the nanny replaced it)
    wait_until_idle(fresh_client)
    stored = cache_files(tmp_path)
    assert len(stored) == N_PAIRS * len(METHODS) * len(paper_metrics())
    assert_same(run(fresh_client, tmp_path), serial)
    assert cache_files(tmp_path) == stored  # all cache hits: no result was written again


def test_an_interrupted_run_resumes_without_recomputing(fresh_client, serial, tmp_path, monkeypatch):
    def interrupt():
        raise KeyboardInterrupt

    trip_on_first_update(monkeypatch, interrupt)
    with pytest.raises(KeyboardInterrupt):
        run(fresh_client, tmp_path)
    wait_until_idle(fresh_client)  # the tasks were cancelled: nothing is left queued
    finished = cache_files(tmp_path)
    assert 0 < len(finished) < N_PAIRS * len(METHODS) * len(paper_metrics())
    monkeypatch.undo()
    assert_same(run(fresh_client, tmp_path), serial)
    resumed = cache_files(tmp_path)
    assert len(resumed) == N_PAIRS * len(METHODS) * len(paper_metrics())
    assert {path: resumed[path] for path in finished} == finished  # what had finished was not recomputed
