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
