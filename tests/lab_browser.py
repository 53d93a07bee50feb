"""Test support: a private JupyterLab server driven by headless Chromium through Selenium.

`lab_session` starts JupyterLab on 127.0.0.1 on a free port with a random token and its own
temporary config, data, runtime, settings and workspace folders, serving copies of the given
notebooks (so nothing the browser does can touch the stored ones), and a headless Chromium
pointed at it. On leaving it always quits the browser, asks the server to shut down (which stops
its kernels), and kills by process id whatever the server started that is still alive.
`LabPage` holds the few page operations a test needs: open a notebook, Run All through the menu,
wait for the kernel, read the notebook's state through JupyterLab's own objects.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

#: Settings overrides: no autosave (the copies stay as they were), every cell in the DOM, no news pop-ups.
LAB_SETTINGS = {
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false", "checkForUpdates": False},
}


def browser_paths() -> tuple[str, str] | None:
    """(chromium, chromedriver) executables, or None when either is missing."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (chromium, driver) if chromium and driver else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _descendants(pid: int) -> list[int]:
    """Process ids started (directly or not) by `pid`, read from /proc."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


class LabPage:
    """A Selenium driver on a JupyterLab page, with the operations the browser tests use."""

    def __init__(self, driver, url: str, token: str, root: Path) -> None:
        self.driver, self.url, self.token, self.root = driver, url, token, root

    def js(self, script: str, *args):
        return self.driver.execute_script(script, *args)

    def wait(self, condition, timeout: float, what: str, poll: float = 0.3):
        """Poll `condition()` until it returns something truthy; a clear error after `timeout` seconds."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            value = condition()
            if value:
                return value
            time.sleep(poll)
        raise TimeoutError(f"waited {timeout:.0f} s for {what}")

    def open(self, name: str, timeout: float = 90) -> None:
        """Open notebook `name` and wait until its kernel is idle (JupyterLab has then written its metadata)."""
        self.driver.get(f"{self.url}lab/tree/{name}?token={self.token}")
        state = """const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
                   const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
                   return k && w.context.isReady && w.context.path.endsWith(arguments[0]) ? k.status : null;"""
        self.wait(lambda: self.js(state, name) == "idle", timeout, f"the kernel of {name} to be idle")
        time.sleep(1.0)  # let JupyterLab apply the kernel info (language_info) it has just received

    def dirty(self) -> bool:
        return bool(self.js("return window.jupyterapp.shell.currentWidget.context.model.dirty"))

    def run_all(self) -> None:
        """Run > Run All Cells, clicked in the menu as a reader would."""
        from selenium.webdriver.common.by import By

        self.driver.find_element(By.XPATH, "//li[contains(@class,'lm-MenuBar-item')][normalize-space()='Run']").click()
        item = self.wait(
            lambda: self.driver.find_elements(
                By.XPATH, "//li[contains(@class,'lm-Menu-item')][.//*[normalize-space()='Run All Cells']]"
            ),
            10,
            "Run All Cells",
        )
        item[0].click()

    def cell_states(self) -> list[dict]:
        """Each code cell's execution count and outputs (nbformat JSON), from JupyterLab's notebook model."""
        return self.js("""return window.jupyterapp.shell.currentWidget.content.widgets
            .filter(c => c.model.type === 'code')
            .map(c => ({count: c.model.executionCount, outputs: c.model.outputs.toJSON()}));""")

    def wait_until_run(self, timeout: float) -> list[dict]:
        """Wait until every code cell has run; fails at once with the traceback of a cell that raised."""

        def finished():
            cells = self.cell_states()
            errors = [o for c in cells for o in c["outputs"] if o.get("output_type") == "error"]
            if errors:
                raise AssertionError(f"a cell raised {errors[0]['ename']}: {errors[0]['evalue']}")
            kernel = self.js("return window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.status")
            return cells if kernel == "idle" and all(c["count"] is not None for c in cells) else None

        return self.wait(finished, timeout, "Run All to finish", poll=0.5)

    def screenshot(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.driver.save_screenshot(str(path))
        return path


def _start_server(root: Path, work: Path, port: int, token: str) -> subprocess.Popen:
    settings = work / "settings"
    for name, values in LAB_SETTINGS.items():
        (settings / name).parent.mkdir(parents=True, exist_ok=True)
        (settings / name).write_text(json.dumps(values))
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}  # Agg would hide every inline figure
    env.update(
        JUPYTER_CONFIG_DIR=str(work / "config"),
        JUPYTER_DATA_DIR=str(work / "data"),
        JUPYTER_RUNTIME_DIR=str(work / "runtime"),
        JUPYTERLAB_SETTINGS_DIR=str(settings),
        JUPYTERLAB_WORKSPACES_DIR=str(work / "workspaces"),
        IPYTHONDIR=str(work / "ipython"),
        OMP_NUM_THREADS="1",
    )  # two cores serve the browser, the server and the kernel
    command = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        "--port-retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        "--LabApp.expose_app_in_browser=True",
        "--ServerApp.open_browser=False",
    ]
    if os.geteuid() == 0:
        command.append("--allow-root")
    log = open(work / "lab.log", "wb")
    return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _stop_server(process: subprocess.Popen, url: str, token: str) -> None:
    started = _descendants(process.pid)
    with contextlib.suppress(OSError):
        request = urllib.request.Request(
            f"{url}api/shutdown", method="POST", headers={"Authorization": f"token {token}"}
        )
        urllib.request.urlopen(request, timeout=10)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)
    if process.poll() is None:
        process.kill()
        process.wait(timeout=10)
    for pid in started:  # kernels the server could not stop
        if _alive(pid):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def lab_session(notebooks: list[Path], work: Path, window: tuple[int, int] = (1400, 1500)) -> Iterator[LabPage]:
    """JupyterLab serving copies of `notebooks` in work/notebooks, and a headless Chromium on it."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    paths = browser_paths()
    if paths is None:
        raise RuntimeError("chromium and chromedriver are needed")
    root = work / "notebooks"
    root.mkdir(parents=True)
    for notebook in notebooks:
        shutil.copy(notebook, root / notebook.name)
    port, token = free_port(), secrets.token_hex(24)
    url = f"http://127.0.0.1:{port}/"
    process = _start_server(root, work, port, token)
    driver = None
    try:
        end = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"JupyterLab exited with {process.returncode}:\n{(work / 'lab.log').read_text()[-3000:]}"
                )
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"{url}api/status?token={token}", timeout=2)
                break
            if time.monotonic() > end:
                raise TimeoutError("JupyterLab did not answer within 120 s")
            time.sleep(0.3)
        options = webdriver.ChromeOptions()
        options.binary_location = paths[0]
        for argument in (
            "--headless=new",
            "--no-sandbox",
            "--disable-dev-shm-usage",
            "--disable-gpu",
            f"--window-size={window[0]},{window[1]}",
            f"--user-data-dir={work / 'chromium'}",
        ):
            options.add_argument(argument)
        driver = webdriver.Chrome(service=Service(paths[1], log_output=str(work / "chromedriver.log")), options=options)
        yield LabPage(driver, url, token, root)
    finally:
        if driver is not None:
            driver.quit()
        _stop_server(process, url, token)
