"""`evaluate` on a Dask cluster: each (method, pair chunk) unit of the grid is one task on a worker.

The model travels once, as the result of a task of its own (`_hold`) that every chunk task depends
on. Its result is replicated to every worker before the chunks run (left alone, Dask would queue all
of them next to the only copy) and stays in the worker's memory, so a worker receives and
deserialises the model once, not once per task; a worker that joins later fetches it with its first
task. Because it is a task result and not scattered data, Dask recomputes it from the graph should
every copy be lost. Each worker moves its copy to its own device (its GPU when it has one).

Workers read and write the on-disk result cache themselves (one JSON file per result, written
atomically), so a killed worker loses only its task in flight, and rerunning an interrupted call
computes nothing that finished. The client gathers the chunk results and builds the same DataFrame
as a serial run. Dask itself is imported only here, so it stays an optional dependency.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from ..data.pairs import Pair
from ..models.similarity import SimilarityModel
from ..utils import default_device
from .scoring import Results

if TYPE_CHECKING:
    from dask.distributed import Client

    from .grid import Chunk, _Grid


@contextmanager
def local_client(n_workers: int = 2) -> Iterator[Client]:
    """A `Client` on a `LocalCluster` of `n_workers` single-threaded worker processes, with the package
    imported on each. Workers start with the thread settings only: Dask's default
    MALLOC_TRIM_THRESHOLD_=65536 made torch's CPU work 1.6-1.8x slower on the machines we measured."""
    import dask
    from dask.distributed import Client, LocalCluster

    environ = {"OMP_NUM_THREADS": 1, "MKL_NUM_THREADS": 1}
    with (
        dask.config.set({"distributed.nanny.pre-spawn-environ": environ}),
        LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            silence_logs=logging.ERROR,
        ) as cluster,
        Client(cluster) as client,
    ):
        client.run(__import__, "cl_explain")  # torch and the package loaded before the first task
        yield client


def _hold(model: SimilarityModel) -> SimilarityModel:
    """The model, as a task result that every chunk task depends on (see the module docstring)."""
    return model


def _score(
    model: SimilarityModel,
    grid: _Grid,
    pairs: list[Pair],
    digests: list[tuple[str, str]],
    name: str,
    explain_kw: dict,
) -> list[Results]:
    """A chunk's results on a worker: `_Grid.score_chunk` with the worker's copy of the model."""
    model.to(default_device())  # in place: only the worker's first task moves anything
    return replace(grid, model=model).score_chunk(pairs, digests, name, explain_kw)


def score_on_cluster(
    client: Client,
    grid: _Grid,
    pairs: list[Pair],
    digests: list[tuple[str, str]],
    chunks: list[Chunk],
    progress: bool,
) -> list[list[Results]]:
    """Each chunk's results, in the order of `chunks`, computed as Dask tasks on `client`'s workers.

    A progress bar counts finished (pair, method) cells; the dashboard link is printed first. On any
    error or interruption (KeyboardInterrupt included) the outstanding tasks are cancelled; what
    finished is in the cache when `grid` has one.
    """
    from dask.distributed import as_completed

    model = grid.model if grid.model.device.type == "cpu" else copy.deepcopy(grid.model).cpu()
    shared = replace(grid, model=None)  # what every task needs besides the model: small
    with warnings.catch_warnings():  # Dask advises against a large graph; this one is the model, sent once on purpose
        warnings.filterwarnings("ignore", "Sending large graph", UserWarning)
        held = client.submit(_hold, model, pure=False)
    client.replicate([held])  # on every worker now: otherwise tasks queue where the one copy is
    futures = [
        client.submit(_score, held, shared, *chunk.inputs(pairs, digests), pure=False, priority=-position)
        for position, chunk in enumerate(chunks)
    ]
    order = {future.key: position for position, future in enumerate(futures)}
    scored: dict[int, list[Results]] = {}
    if progress:
        print(f"Dask dashboard: {client.dashboard_link}")
    try:
        with tqdm(total=sum(len(c.indices) for c in chunks), desc="evaluate (dask)", disable=not progress) as bar:
            for future in as_completed(futures):
                position = order[future.key]
                scored[position] = future.result()
                bar.update(len(chunks[position].indices))
    finally:
        client.cancel([*futures, held])
    return [scored[position] for position in range(len(chunks))]
