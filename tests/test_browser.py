"""The quick start and the explorer as a reader sees them: JupyterLab in headless Chromium, Run All.

The server, its kernels and the browser are started here and always stopped (lab_browser.lab_session).
Screenshots and a timing report are kept in build/browser/. Skipped, with the reason, where Chromium,
its driver or Selenium is missing (`make test` installs Debian's chromium and chromium-driver when it
runs as root).
"""

from __future__ import annotations

import time

import pytest

from cl_explain.utils import repo_root
from lab_browser import browser_paths, lab_session

pytestmark = [pytest.mark.slow, pytest.mark.browser]

ROOT = repo_root()
ARTEFACTS = ROOT / "build" / "browser"
QUICKSTART, EXPLORER = "00-quickstart.ipynb", "09-explore-pairs.ipynb"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    if browser_paths() is None:
        pytest.skip(
            "no headless browser: install Debian's chromium and chromium-driver "
            "(`make test` does it with apt-get when it runs as root)"
        )
    pytest.importorskip("selenium", reason="selenium is missing: pip install -e '.[test]'")
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTEFACTS.glob("*.png"):
        old.unlink()  # a screenshot from an earlier run must not pass for this one
    start = time.monotonic()
    with lab_session(
        [ROOT / "notebooks" / QUICKSTART, ROOT / "notebooks" / EXPLORER], tmp_path_factory.mktemp("lab")
    ) as page:
        page.timings = {"server and browser start": time.monotonic() - start}
        yield page
        page.timings["total"] = time.monotonic() - start
        (ARTEFACTS / "timings.txt").write_text("".join(f"{k}: {v:.1f} s\n" for k, v in page.timings.items()))


@pytest.fixture
def shot(lab, request):
    """Take a screenshot on failure too, so a failing run leaves a picture of what the reader saw."""
    yield lambda name: lab.screenshot(ARTEFACTS / name)
    report = getattr(request.node, "rep_call", None)  # set by conftest's pytest_runtest_makereport
    if report is not None and report.failed:
        lab.screenshot(ARTEFACTS / f"failed-{request.node.name}.png")


def _open_and_run(lab, name: str, timeout: float) -> list[dict]:
    start = time.monotonic()
    lab.open(name)
    assert not lab.dirty(), f"{name} shows as modified as soon as it is opened: run `make tidy`"
    lab.run_all()
    cells = lab.wait_until_run(timeout)
    lab.timings[f"{name} open + Run All"] = time.monotonic() - start
    return cells


def test_quickstart_shows_its_figures_inline(lab, shot):
    cells = _open_and_run(lab, QUICKSTART, timeout=240)
    shown = [o for c in cells for o in c["outputs"] if "image/png" in o.get("data", {})]
    assert len(shown) >= 2, f"the quick start showed {len(shown)} figures, expected methods and pair"
    images = lab.js("""return [...document.querySelectorAll('.jp-OutputArea-output img')]
                       .map(i => [i.naturalWidth, i.naturalHeight]);""")
    assert len(images) >= 2 and all(w > 100 and h > 100 for w, h in images), f"figures not drawn: {images}"
    texts = lab.js("return [...document.querySelectorAll('.jp-OutputArea-output')].map(o => o.innerText).join('\\n')")
    assert "<Figure size" not in texts
    for index, name in enumerate(("00-quickstart-methods.png", "00-quickstart-pair.png")):
        lab.js(
            "document.querySelectorAll('.jp-OutputArea-output img')[arguments[0]].scrollIntoView({block: 'start'})",
            index,
        )
        time.sleep(0.3)
        shot(name)


def _map(lab) -> str:
    sources = lab.js("return [...document.querySelectorAll('.cle-map img')].map(i => i.src)")
    return sources[0] if len(sources) == 1 else ""


def _choose(lab, control: str, label: str, before: str, timeout: float = 120) -> str:
    """Pick `label` in the explorer's `control` dropdown; wait for a finished, different map."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    status = ".cle-status"
    lab.js(f"""const el = document.querySelector('{status}'); window.cleStatusSeen = [];
               new MutationObserver(() => window.cleStatusSeen.push(el.innerText))
                   .observe(el, {{subtree: true, childList: true, characterData: true}});""")
    Select(lab.driver.find_element(By.CSS_SELECTOR, f".cle-{control} select")).select_by_visible_text(label)

    def changed():
        text = lab.js(f"return document.querySelector('{status}').innerText")
        if text.startswith("failed"):
            raise AssertionError(lab.js("return document.querySelector('.cle-map').innerText"))
        now = _map(lab)
        return now if text.startswith("done") and now and now != before else None

    new = lab.wait(changed, timeout, f"a new map after choosing {label!r} as {control}")
    seen = lab.js("return window.cleStatusSeen")
    assert any(text.startswith("computing") for text in seen), f"no busy indicator while computing: {seen}"
    return new


def test_explorer_renders_controls_and_follows_them(lab, shot):
    cells = _open_and_run(lab, EXPLORER, timeout=240)
    widget_output = [
        o for c in cells for o in c["outputs"] if "application/vnd.jupyter.widget-view+json" in o.get("data", {})
    ]
    assert widget_output, "the explorer cell shows no widget"
    page_text = lab.js("return document.querySelector('.jp-Notebook').innerText")
    assert (
        "interactive(children" not in page_text and "VBox(children" not in page_text and "PairExplorer" not in page_text
    )
    counts = lab.js("""const e = document.querySelector('.cle-explorer');
        return e && [e.querySelectorAll('select').length, e.querySelectorAll('.widget-slider').length,
                     e.querySelectorAll('input').length];""")
    assert counts and counts[0] >= 3 and counts[1] >= 2, f"explorer controls not rendered: {counts}"
    lab.js("document.querySelector('.cle-explorer').scrollIntoView({block: 'start'})")
    first = lab.wait(lambda: _map(lab), 60, "the explorer's first map")
    assert lab.js("return document.querySelector('.cle-method select').value") == "interaction_cam"
    shot("09-explorer-interaction_cam.png")

    start = time.monotonic()
    occlusion = _choose(lab, "method", "occlusion", first)
    lab.timings["explorer: method -> occlusion"] = time.monotonic() - start
    values = lab.js("return ['window', 'stride'].map(n => document.querySelector('.cle-param-' + n + ' input').value)")
    assert values == ["27", "3"], f"occlusion should start at explain's 96 px values, got {values}"
    tips = lab.js("""return ['.cle-param-window', '.cle-method', '.cle-image']
        .map(s => document.querySelector(s + ' [title]')).map(e => e ? e.title : '');""")  # hover text on the label
    assert all(tips), f"controls without a tooltip: {tips}"
    shot("09-explorer-occlusion.png")

    start = time.monotonic()
    scene = lab.js(
        "return [...document.querySelectorAll('.cle-image option')].map(o => o.text).find(t => t.startsWith('scene'))"
    )
    _choose(lab, "image", scene, occlusion)
    lab.timings["explorer: image -> scene"] = time.monotonic() - start
    shot("09-explorer-scene.png")

    start = time.monotonic()
    _choose(lab, "method", "pixel_invariance", _map(lab))
    lab.timings["explorer: method -> pixel_invariance"] = time.monotonic() - start
    overflow = lab.js("""const row = document.querySelector('.cle-param-surrogate_side').parentElement;
                         const box = row.getBoundingClientRect();
                         const out = [...row.children].filter(c => c.getBoundingClientRect().right > box.right + 1);
                         return [row.scrollWidth - row.clientWidth, out.length, row.children.length];""")
    assert overflow[0] <= 1 and overflow[1] == 0, f"the Pixel Invariance parameter row overflows: {overflow}"
    assert lab.js("return document.querySelector('.cle-param-surrogate_side input').value") == "27"
    shot("09-explorer-pixel_invariance.png")
