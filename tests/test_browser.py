"""A lesson in a real browser: JupyterLab + headless Chromium, driven by Playwright.

What a learner does, checked end to end: open ``notebooks/05_ul2_denoisers.ipynb`` in JupyterLab,
choose Run → Run All Cells, wait for the kernel, and look. The tests check that

* no cell ends with an error (a traceback in the notebook),
* the denoiser explorer (an ipywidgets slider panel) renders, and moving its ``seed`` slider
  changes what it shows (so the browser, the widget manager and the kernel talk to each other),
* opening the lesson and closing it without touching it does not mark it modified (no dot on
  the tab, no "Save your work?" question on close).

Each check is also shown to catch the fault it looks for, on small notebooks made to fail.

Screenshots are written to ``$PALI3_EDU_BROWSER_ARTIFACTS`` (default: a pytest temporary folder,
printed with ``-s``); look at them when a test fails.

What it needs: the ``playwright`` Python package (``pip install playwright``; its own browser
download is *not* needed) and a Chromium on the machine: ``/usr/bin/chromium`` (Debian/Ubuntu:
``apt-get install chromium``), or the program named by ``$PALI3_EDU_CHROMIUM``. Without them the
tests are skipped, except in CI (``CI=true``), where they fail: CI must really run them.

Everything stays on 127.0.0.1: JupyterLab listens there with a random token, and the browser
is refused any other address. JupyterLab and the browser are stopped when the tests end.
"""

from __future__ import annotations

import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LESSON = REPO / "notebooks" / "05_ul2_denoisers.ipynb"

ARTIFACTS_ENV = "PALI3_EDU_BROWSER_ARTIFACTS"
CHROMIUM_ENV = "PALI3_EDU_CHROMIUM"
DEFAULT_CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
IN_CI = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}

# Every wait is bounded (seconds). The whole module takes well under a minute on a free laptop;
# these limits leave room for a busy 2-core CI machine and keep the total under 3 minutes.
SERVER_START_S = 60
PAGE_OPEN_S = 60
KERNEL_IDLE_S = 60
RUN_ALL_S = 120
WIDGET_RESPONSE_S = 20


def _missing(reason: str):
    """Skip on a learner's machine; fail in CI, where the browser tests must really run."""
    if IN_CI:
        pytest.fail(f"{reason} CI=true, so this is a failure, not a skip: CI must run the browser "
                    "tests (.ci/run installs Chromium; `pip install -e '.[test]'` brings playwright).")
    pytest.skip(reason)


# --------------------------------------------------------------------------------------------
# Fixtures: Playwright, Chromium, a JupyterLab server, the browser, the screenshot folder
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sync_playwright():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("The Python package `playwright` is not installed (`pip install playwright`; "
                 "no `playwright install` needed, the system Chromium is used).")
    return sync_playwright


def find_chromium(sync_playwright) -> str:
    """The Chromium to drive: ``$PALI3_EDU_CHROMIUM``, else the system one (``/usr/bin/chromium``
    or ``chromium`` on PATH), else one that ``playwright install chromium`` downloaded."""
    wanted = os.environ.get(CHROMIUM_ENV)
    if wanted:
        found = shutil.which(wanted)
        if not found:
            _missing(f"${CHROMIUM_ENV}={wanted!r} is not an executable program.")
        return found
    for candidate in (DEFAULT_CHROMIUM, shutil.which("chromium")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    with sync_playwright() as pw:
        own = pw.chromium.executable_path
    if own and os.access(own, os.X_OK):
        return own
    _missing(f"No Chromium found at {DEFAULT_CHROMIUM} or on PATH (Debian/Ubuntu: "
             f"`apt-get install chromium`; or point ${CHROMIUM_ENV} at a Chromium/Chrome).")


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    folder = os.environ.get(ARTIFACTS_ENV)
    path = Path(folder) if folder else tmp_path_factory.mktemp("browser_screenshots")
    path.mkdir(parents=True, exist_ok=True)
    print(f"\n[browser tests] screenshots in {path}")
    return path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1), encoding="utf-8")


def _notebook(cells: list[str], display_name: str = "Python 3 (ipykernel)") -> dict:
    """A small nbformat-4 notebook with the given code cells (no outputs)."""
    return {
        "cells": [{"cell_type": "code", "execution_count": None, "id": f"c{i}", "metadata": {},
                   "outputs": [], "source": src} for i, src in enumerate(cells)],
        "metadata": {
            "kernelspec": {"display_name": display_name, "language": "python", "name": "python3"},
            "language_info": {"name": "python", "version": platform.python_version()},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }


# Settings for the test's own (temporary) JupyterLab user-settings folder: no autosave (a run must
# never write the lesson copy), no news/update pop-ups, and every cell kept in the page (not
# virtualised), so what the checks look at is really drawn.
LAB_SETTINGS = {
    "@jupyterlab/docmanager-extension:plugin": {"autosave": False},
    "@jupyterlab/apputils-extension:notification": {"fetchNews": "false",
                                                    "checkForUpdates": False},
    "@jupyterlab/notebook-extension:tracker": {"windowingMode": "none"},
}


class Lab:
    """A JupyterLab server on 127.0.0.1 serving a temporary folder."""

    def __init__(self, root: Path, home: Path):
        self.root, self.home = root, home
        self.token = secrets.token_hex(24)
        self.log_path = home / "jupyterlab.log"
        self.proc: subprocess.Popen | None = None
        self.port = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, notebook: str, workspace: str) -> str:
        """A URL that opens ``notebook`` in its own workspace (no tabs left by other tests)."""
        return f"{self.base}/lab/workspaces/{workspace}/tree/{notebook}?token={self.token}"

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def start(self) -> None:
        env = dict(os.environ)
        env.update(
            JUPYTER_CONFIG_DIR=str(self.home / "config"),  # ignore the user's ~/.jupyter
            JUPYTER_RUNTIME_DIR=str(self.home / "runtime"),
            IPYTHONDIR=str(self.home / "ipython"),  # ignore the user's IPython startup files
            PYDEVD_DISABLE_FILE_VALIDATION="1",
        )
        env.pop("MPLBACKEND", None)  # let the kernel use its inline backend
        settings = self.home / "user-settings"
        for plugin, values in LAB_SETTINGS.items():
            package, name = plugin.split(":")
            _write_json(settings / package / f"{name}.jupyterlab-settings", values)
        for attempt in range(3):  # a free port can be taken between asking and binding
            self.port = _free_port()
            cmd = [
                sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
                "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={self.port}",
                "--ServerApp.port_retries=0", f"--IdentityProvider.token={self.token}",
                f"--ServerApp.root_dir={self.root}", "--ServerApp.terminals_enabled=False",
                "--LabApp.expose_app_in_browser=True",
                f"--LabApp.workspaces_dir={self.home / 'workspaces'}",
                f"--LabApp.user_settings_dir={settings}",
            ]
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(cmd, cwd=self.root, env=env, stdout=log,
                                             stderr=subprocess.STDOUT, start_new_session=True)
            if self._wait_ready():
                return
            self.stop()
        raise RuntimeError(f"JupyterLab did not start. Its log ends with:\n{self.log_tail()}")

    def _wait_ready(self) -> bool:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy
        request = urllib.request.Request(f"{self.base}/api/status",
                                         headers={"Authorization": f"token {self.token}"})
        deadline = time.monotonic() + SERVER_START_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with opener.open(request, timeout=5) as reply:
                    if reply.status == 200:
                        return True
            except OSError:
                pass
            time.sleep(0.3)
        return False

    def stop(self) -> None:
        """Stop the server and its kernels (its own process group)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)  # SIGINT twice = shut down without asking
        time.sleep(0.2)
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
        try:  # anything left in the group it started (kernels), by its group id
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


@pytest.fixture(scope="module")
def lab(tmp_path_factory, browser):
    """JupyterLab serving copies of the lesson and of the small check notebooks."""
    home = tmp_path_factory.mktemp("jupyterlab_home")
    root = tmp_path_factory.mktemp("jupyterlab_root")
    lesson = json.loads(LESSON.read_text(encoding="utf-8"))
    (root / "run_all").mkdir()
    shutil.copy(LESSON, root / "run_all" / LESSON.name)
    # JupyterLab rewrites `language_info` from the kernel it starts, so a lesson saved under
    # another Python version shows as modified on open whatever the lesson does. That part is
    # this machine's, not the lesson's: the open/close copy gets this Python's version.
    lesson["metadata"].setdefault("language_info", {})["version"] = platform.python_version()
    _write_json(root / "open_close" / LESSON.name, lesson)
    checks = root / "checks"
    _write_json(checks / "broken.ipynb",
                _notebook(["x = 1", "1 / 0", "print('never reached')"]))
    _write_json(checks / "stale_kernel_name.ipynb",
                _notebook(["x = 1"], display_name="Python 3 (a name this machine lacks)"))
    _write_json(checks / "slider.ipynb", _notebook([
        "import ipywidgets as w\n"
        "seed = w.IntSlider(value=0, min=0, max=50, description='seed')\n"
        "unused = w.IntSlider(value=0, min=0, max=50, description='unused')  # drives nothing\n"
        "out = w.HTML('value 0')\n"
        "seed.observe(lambda change: setattr(out, 'value', f'value {change.new}'), names='value')\n"
        "w.VBox([seed, unused, out])",
    ]))
    server = Lab(root, home)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser(sync_playwright):
    executable = find_chromium(sync_playwright)
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS,
                               headless=True, timeout=60_000)
        try:
            yield b
        finally:
            b.close()


_LOCAL = re.compile(r"^(https?|wss?)://127\.0\.0\.1[:/]")


@pytest.fixture
def page(browser, lab):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    # only the local JupyterLab: anything else (e.g. the Colab badge image) is refused
    context.route(lambda url: not _LOCAL.match(url) and not url.startswith(("data:", "blob:")),
                  lambda route: route.abort())
    context.set_default_timeout(30_000)
    p = context.new_page()
    try:
        yield p
    finally:
        context.close()


@contextmanager
def screenshot_on_failure(page, artifacts: Path, name: str):
    try:
        yield
    except BaseException:
        try:
            page.screenshot(path=str(artifacts / f"FAILED_{name}.png"), timeout=10_000)
        except Exception:  # noqa: BLE001 - the original error matters more
            pass
        raise


# --------------------------------------------------------------------------------------------
# Talking to the page. `window.jupyterapp` is JupyterLab's application object, exposed with
# --LabApp.expose_app_in_browser (the switch JupyterLab's own browser tests use).
# --------------------------------------------------------------------------------------------

_FIND_PANEL = """
(path) => {
  const app = window.jupyterapp;
  if (!app) return null;
  for (const w of app.shell.widgets('main')) {
    if (w.context && w.context.path === path) return w;
  }
  return null;
}
"""

_PANEL_STATE = f"""
(path) => {{
  const panel = ({_FIND_PANEL})(path);
  if (!panel || !panel.context.isReady || !panel.sessionContext.isReady) return null;
  const tab = document.querySelector(`.lm-TabBar-tab[data-id="${{panel.id}}"]`);
  return {{
    status: panel.sessionContext.kernelDisplayStatus,
    modelDirty: panel.context.model.dirty,
    tabDirty: tab ? tab.classList.contains('jp-mod-dirty') : null,
    tabFound: !!tab,
    indicator: (panel.node.querySelector('.jp-Notebook-ExecutionIndicator') || {{dataset: {{}}}})
                 .dataset.status || null,
  }};
}}
"""


def open_notebook(page, lab: Lab, path: str, workspace: str) -> dict:
    """Open ``path`` in JupyterLab and wait until its kernel is started and idle."""
    page.goto(lab.url(path, workspace), timeout=PAGE_OPEN_S * 1000)
    page.wait_for_function(f"(path) => !!({_FIND_PANEL})(path)", arg=path,
                           timeout=PAGE_OPEN_S * 1000)
    return wait_for_idle(page, path, KERNEL_IDLE_S)


def wait_for_idle(page, path: str, timeout_s: float, stable_s: float = 1.5) -> dict:
    """Wait until the notebook's kernel has been idle for ``stable_s`` seconds in a row."""
    deadline = time.monotonic() + timeout_s
    idle_since, state = None, None
    while time.monotonic() < deadline:
        state = page.evaluate(_PANEL_STATE, path)
        # the toolbar's execution indicator, where this JupyterLab has one, must agree
        if state and state["status"] == "idle" and state["indicator"] in ("idle", None):
            idle_since = idle_since or time.monotonic()
            if time.monotonic() - idle_since >= stable_s:
                return state
        else:
            idle_since = None
        time.sleep(0.25)
    raise AssertionError(f"The kernel of {path} was not idle within {timeout_s:.0f} s "
                         f"(last state: {state}).")


def model_json(page, path: str) -> dict:
    return page.evaluate(f"(path) => ({_FIND_PANEL})(path).context.model.toJSON()", path)


def _normalise(value):
    """nbformat stores text as lists of lines or as one string; compare them as one string."""
    if isinstance(value, dict):
        return {k: _normalise(v) for k, v in value.items()}
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return "".join(value)
    if isinstance(value, list):
        return [_normalise(v) for v in value]
    return value


def notebook_changes(on_disk: dict, in_browser: dict) -> list[str]:
    """What JupyterLab's copy of a notebook has that the file does not (metadata, cells)."""
    a, b = _normalise(on_disk), _normalise(in_browser)
    changes = []
    for key in sorted(set(a["metadata"]) | set(b["metadata"])):
        if a["metadata"].get(key) != b["metadata"].get(key):
            changes.append(f"metadata.{key}: file {a['metadata'].get(key)!r} -> "
                           f"JupyterLab {b['metadata'].get(key)!r}")
    if len(a["cells"]) != len(b["cells"]):
        changes.append(f"{len(a['cells'])} cells in the file, {len(b['cells'])} in JupyterLab")
    for i, (x, y) in enumerate(zip(a["cells"], b["cells"])):
        x_meta = {k: v for k, v in x.get("metadata", {}).items() if k != "trusted"}
        y_meta = {k: v for k, v in y.get("metadata", {}).items() if k != "trusted"}
        for key in sorted((set(x) | set(y)) - {"metadata"}):
            if x.get(key) != y.get(key):
                changes.append(f"cell {i} {key} differs")
        if x_meta != y_meta:
            changes.append(f"cell {i} metadata differs")
    return changes


def close_without_saving_prompt(page, path: str) -> bool:
    """Close the notebook's tab (its x). True if it closed at once; False if JupyterLab asked
    to save first (a dialog), which it only does for a modified notebook."""
    panel_id = page.evaluate(f"(path) => ({_FIND_PANEL})(path).id", path)
    tab = page.locator(f'.lm-TabBar-tab[data-id="{panel_id}"]')
    tab.hover()
    tab.locator(".lm-TabBar-tabCloseIcon").click()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if page.locator(".jp-Dialog").count():
            return False
        if not tab.count():
            return True
        time.sleep(0.2)
    raise AssertionError(f"The tab of {path} neither closed nor asked to save within 10 s.")


def run_all_cells(page, path: str) -> None:
    """Run → Run All Cells, from the menu bar, and wait until every code cell has run (or one
    has failed) and the kernel is idle."""
    # listen to each code cell's execution count: Run All clears it, then the kernel's reply
    # sets it again, so a cell has run when a new count arrives after the click
    page.evaluate(f"""(path) => {{
      const panel = ({_FIND_PANEL})(path);
      const ran = window.__pali3Ran = new Set();
      for (const cell of panel.content.model.cells) {{
        if (cell.type !== 'code') continue;
        cell.stateChanged.connect((model, change) => {{
          if (change.name === 'executionCount' && change.newValue !== null) ran.add(model.id);
        }});
      }}
    }}""", path)
    page.locator(".lm-MenuBar-item", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-item").filter(has=page.locator(
        ".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$"))).click()
    page.wait_for_function(f"""(path) => {{
      const panel = ({_FIND_PANEL})(path);
      const code = Array.from(panel.content.model.cells).filter(c => c.type === 'code');
      const failed = code.some(c => Array.from({{length: c.outputs.length}},
                                               (_, i) => c.outputs.get(i).type)
                                        .includes('error'));
      const allRan = code.every(c => window.__pali3Ran.has(c.id));
      return (allRan || failed) && panel.sessionContext.kernelDisplayStatus === 'idle';
    }}""", arg=path, timeout=RUN_ALL_S * 1000, polling=250)
    wait_for_idle(page, path, KERNEL_IDLE_S)


def cell_errors(page, path: str) -> list[str]:
    """Every error output in the notebook, as 'cell i: Name: message'."""
    nb = model_json(page, path)
    return [f"cell {i}: {out.get('ename')}: {out.get('evalue')}"
            for i, cell in enumerate(nb["cells"]) if cell["cell_type"] == "code"
            for out in cell.get("outputs", []) if out.get("output_type") == "error"]


def rendered_tracebacks(page) -> list[str]:
    """Error outputs as drawn on the page (JupyterLab renders a traceback as stderr text)."""
    texts = page.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'
                         ).all_inner_texts()
    return [t for t in texts if re.search(r"Traceback|^\w*(Error|Exception)\b", t, re.M)]


def never_ran(page, path: str) -> list[int]:
    nb = model_json(page, path)
    return [i for i, c in enumerate(nb["cells"])
            if c["cell_type"] == "code" and c.get("execution_count") is None]


def slider(page, label: str, within=None):
    """The ipywidgets slider whose description is ``label``."""
    scope = within if within is not None else page
    return scope.locator(".widget-slider").filter(
        has=page.locator(".widget-label", has_text=re.compile(rf"^{re.escape(label)}$")))


def move_slider_right(widget, steps: int = 1) -> None:
    """Move a slider with the keyboard, as a learner can: focus its handle, press →."""
    handle = widget.locator(".noUi-handle")
    handle.scroll_into_view_if_needed()
    handle.focus()
    for _ in range(steps):
        handle.press("ArrowRight")


def wait_for_change(locator, before: str, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    now = before
    while time.monotonic() < deadline:
        now = locator.inner_text()
        if now != before:
            return now
        time.sleep(0.2)
    raise AssertionError(f"Nothing changed within {timeout_s:.0f} s; still shows:\n{now[:300]}")


# --------------------------------------------------------------------------------------------
# The lesson
# --------------------------------------------------------------------------------------------


def test_lesson_runs_in_jupyterlab_and_its_explorer_responds(page, lab, artifacts):
    path = f"run_all/{LESSON.name}"
    with screenshot_on_failure(page, artifacts, "lesson05_run_all"):
        open_notebook(page, lab, path, workspace="run-all")
        page.screenshot(path=str(artifacts / "lesson05_1_opened.png"))

        run_all_cells(page, path)
        errors = cell_errors(page, path)
        assert not errors, "cells ended with an error:\n" + "\n".join(errors)
        assert not rendered_tracebacks(page), rendered_tracebacks(page)
        assert not never_ran(page, path), f"code cells that never ran: {never_ran(page, path)}"
        page.screenshot(path=str(artifacts / "lesson05_2_ran_all.png"))

        # the matplotlib figures are drawn (decoded images, not broken-image icons)
        figures = page.locator(".jp-RenderedImage img")
        assert figures.count() >= 2, f"expected the lesson's figures, found {figures.count()}"
        assert page.evaluate("""() => Array.from(document.querySelectorAll(
            '.jp-RenderedImage img')).every(img => img.complete && img.naturalWidth > 100)""")
        figures.first.scroll_into_view_if_needed()
        page.screenshot(path=str(artifacts / "lesson05_2b_figure.png"))

        # the denoiser explorer: a dropdown, a seed slider, mean-span/density sliders, an HTML view
        explorer = page.locator(".jp-OutputArea-output .widget-vbox").filter(
            has=slider(page, "seed"))
        assert explorer.count() == 1, f"expected one denoiser explorer, found {explorer.count()}"
        assert not page.get_by_text(re.compile(r"Error displaying widget")).count()
        seed = slider(page, "seed", within=explorer)
        view = explorer.locator(".widget-html-content")
        assert "noise tokens" in view.inner_text()
        explorer.scroll_into_view_if_needed()
        readout = seed.locator(".widget-readout")
        assert readout.inner_text().strip() == "0"
        before = view.inner_text()
        explorer.screenshot(path=str(artifacts / "lesson05_3_explorer_seed0.png"))

        move_slider_right(seed)
        after = wait_for_change(view, before, WIDGET_RESPONSE_S)  # the kernel redrew it
        assert readout.inner_text().strip() == "1"
        assert "noise tokens" in after
        explorer.screenshot(path=str(artifacts / "lesson05_4_explorer_seed1.png"))
        page.screenshot(path=str(artifacts / "lesson05_5_after_slider.png"))


def test_opening_and_closing_the_lesson_leaves_it_unmodified(page, lab, artifacts):
    path = f"open_close/{LESSON.name}"
    with screenshot_on_failure(page, artifacts, "lesson05_open_close"):
        state = open_notebook(page, lab, path, workspace="open-close")
        time.sleep(2)  # let late starters (widget manager, kernel info) finish
        state = wait_for_idle(page, path, KERNEL_IDLE_S)
        page.screenshot(path=str(artifacts / "lesson05_open_close.png"))
        changes = notebook_changes(json.loads((lab.root / path).read_text(encoding="utf-8")),
                                   model_json(page, path))
        why = ("JupyterLab marks the lesson modified as soon as it opens, so a learner who just "
               "reads it is asked to save on close. What JupyterLab changed:\n  "
               + "\n  ".join(changes or ["(nothing in metadata or cells)"]))
        assert state["tabFound"], "the lesson's tab was not found"
        assert not state["tabDirty"] and not state["modelDirty"], why
        assert close_without_saving_prompt(page, path), why


# --------------------------------------------------------------------------------------------
# The checks catch what they look for (small notebooks made to fail)
# --------------------------------------------------------------------------------------------


def test_an_error_in_a_cell_is_caught(page, lab, artifacts):
    path = "checks/broken.ipynb"
    with screenshot_on_failure(page, artifacts, "check_broken"):
        open_notebook(page, lab, path, workspace="check-broken")
        run_all_cells(page, path)
        page.screenshot(path=str(artifacts / "check_broken.png"))
        assert cell_errors(page, path) == ["cell 1: ZeroDivisionError: division by zero"]
        assert any("ZeroDivisionError" in t for t in rendered_tracebacks(page))
        assert never_ran(page, path) == [2]


def test_a_notebook_jupyterlab_rewrites_on_open_is_caught(page, lab, artifacts):
    path = "checks/stale_kernel_name.ipynb"
    with screenshot_on_failure(page, artifacts, "check_stale_kernel_name"):
        state = open_notebook(page, lab, path, workspace="check-stale")
        time.sleep(1)
        state = wait_for_idle(page, path, KERNEL_IDLE_S)
        assert state["tabDirty"] and state["modelDirty"]
        changes = notebook_changes(json.loads((lab.root / path).read_text(encoding="utf-8")),
                                   model_json(page, path))
        assert any(c.startswith("metadata.kernelspec") for c in changes), changes
        assert not close_without_saving_prompt(page, path)  # JupyterLab asks to save
        page.screenshot(path=str(artifacts / "check_stale_kernel_name_asks_to_save.png"))


def test_a_slider_that_changes_nothing_is_caught(page, lab, artifacts):
    path = "checks/slider.ipynb"
    with screenshot_on_failure(page, artifacts, "check_slider"):
        open_notebook(page, lab, path, workspace="check-slider")
        run_all_cells(page, path)
        seed = slider(page, "seed")
        view = page.locator(".jp-OutputArea-output .widget-html-content")
        assert view.inner_text() == "value 0"
        move_slider_right(seed)
        assert wait_for_change(view, "value 0", WIDGET_RESPONSE_S) == "value 1"
        # a slider that drives nothing moves in the page, but the view must not change
        unused = slider(page, "unused")
        move_slider_right(unused)
        assert unused.locator(".widget-readout").inner_text().strip() == "1"
        with pytest.raises(AssertionError, match="Nothing changed"):
            wait_for_change(view, "value 1", 3)
