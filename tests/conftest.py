import matplotlib
import pytest
import torch

matplotlib.use("Agg")  # unit tests only; notebooks keep the inline backend
torch.set_num_threads(1)  # unit tests use tiny tensors: thread start-up costs more than it saves


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test item (rep_setup, rep_call, rep_teardown) for fixtures that
    act on failure, e.g. the browser test's screenshot of what the reader saw."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture(scope="session")
def _package_registries():
    """Load every method and metric of the package once, before any test snapshots the registries."""
    from cl_explain.explainers import base
    from cl_explain.metrics import registry

    base._load_all_methods()
    registry._load_all_metrics()
    return base._REGISTRY, registry._REGISTRY


@pytest.fixture(autouse=True)
def scoped_registries(_package_registries):
    """Methods and metrics a test registers exist for that test only: both registries are restored after it."""
    saved = [dict(table) for table in _package_registries]
    yield
    for table, before in zip(_package_registries, saved):
        table.clear()
        table.update(before)
