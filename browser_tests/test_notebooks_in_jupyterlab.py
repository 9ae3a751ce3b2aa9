"""The notebooks in a real browser: JupyterLab + headless Chromium, driven by Playwright.

Every notebook runs top to bottom (Run All) and must show no error output and no widget
error; the dashboard's buttons are then clicked for real, and the counts it shows must
change, a cell must still run while a Drain works, and a click while the kernel is busy
must show at once. Screenshots go to ``browser-screenshots/`` (git-ignored).

Outside CI a missing browser, JupyterLab or Playwright skips this tier with the reason;
under ``CI=true`` it is a failure.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from lab import CHROMIUM_ARGS, ROOT, SHOTS, Lab, chromium_path, jupyterlab, unavailable

REASON = unavailable()
if REASON is not None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"browser tier unavailable under CI: {REASON}", pytrace=False)
    pytest.skip(f"browser tier skipped: {REASON}", allow_module_level=True)

from playwright.sync_api import Browser, Locator, Page, sync_playwright  # noqa: E402

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
TIMEOUT_MS = 120_000

# -- JupyterLab, through the app object it exposes (--LabApp.expose_app_in_browser) -----
READY = """() => {
  const app = window.jupyterapp;
  const panel = app && app.shell.currentWidget;
  const kernel = panel && panel.sessionContext && panel.sessionContext.session
                 && panel.sessionContext.session.kernel;
  return !!(kernel && kernel.connectionStatus === 'connected' && kernel.status === 'idle'
            && panel.content.widgets.length > 0);
}"""

RUN_ALL = """async () => {
  const app = window.jupyterapp;
  await app.commands.execute('notebook:run-all-cells');
  return true;
}"""

ALL_DONE = """() => {
  const panel = window.jupyterapp.shell.currentWidget;
  const kernel = panel.sessionContext.session.kernel;
  const code = panel.content.widgets.filter(c => c.model.type === 'code');
  return kernel.status === 'idle' && code.every(c => c.model.executionCount !== null);
}"""

OUTPUTS = """() => {
  const panel = window.jupyterapp.shell.currentWidget;
  return panel.content.widgets.filter(c => c.model.type === 'code').map((c, i) => ({
    index: i, count: c.model.executionCount, source: c.model.sharedModel.getSource(),
    outputs: c.model.outputs.toJSON()}));
}"""

RUN_CELL = """async (code) => {
  const app = window.jupyterapp;
  const nb = app.shell.currentWidget.content;
  nb.activeCellIndex = nb.widgets.length - 1;
  await app.commands.execute('notebook:insert-cell-below');
  nb.activeCell.model.sharedModel.setSource(code);
  const t0 = performance.now();
  await app.commands.execute('notebook:run-cell');
  const cell = nb.widgets[nb.widgets.length - 1];
  return {seconds: (performance.now() - t0) / 1000, outputs: cell.model.outputs.toJSON()};
}"""

START_CELL = """(code) => {
  const app = window.jupyterapp;
  const nb = app.shell.currentWidget.content;
  nb.activeCellIndex = nb.widgets.length - 1;
  return app.commands.execute('notebook:insert-cell-below').then(() => {
    nb.activeCell.model.sharedModel.setSource(code);
    window.__jobkitCell = app.commands.execute('notebook:run-cell');
    return true;
  });
}"""

CONTRAST = """(el) => {
  const rgb = s => (s.match(/[\\d.]+/g) || []).map(Number);
  const lum = ([r, g, b]) => { const f = v => { v /= 255;
      return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b); };
  const fg = rgb(getComputedStyle(el).color);
  let node = el, bg = null;
  while (node && node.nodeType === 1) {
    const c = rgb(getComputedStyle(node).backgroundColor);
    if (c.length === 3 || (c.length === 4 && c[3] > 0.5)) { bg = c.slice(0, 3); break; }
    node = node.parentElement;
  }
  bg = bg || [255, 255, 255];
  const [a, b] = [lum(fg), lum(bg)].sort((x, y) => y - x);
  return {fg, bg, ratio: (a + 0.05) / (b + 0.05)};
}"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with jupyterlab(tmp_path_factory.mktemp("lab"), NOTEBOOKS) as server:
        yield server


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    SHOTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS,
                                     headless=True)
        yield chromium
        chromium.close()


class Watch:
    """Browser-side errors seen by the page (uncaught exceptions, widget errors)."""

    def __init__(self, page: Page) -> None:
        self.errors: list[str] = []
        page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))
        page.on("console", self._console)

    def _console(self, msg: Any) -> None:
        if msg.type == "error" and re.search(r"widget|model|comm", msg.text, re.I):
            self.errors.append(f"console: {msg.text}")

    def take(self) -> list[str]:
        found, self.errors = self.errors, []
        return found


@pytest.fixture(scope="module")
def lab_page(browser: Browser, lab: Lab) -> Iterator[tuple[Page, Watch]]:
    """One JupyterLab page for the whole tier (loading JupyterLab is the slow part)."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(TIMEOUT_MS)
    watch = Watch(page)
    page.goto(f"{lab.url}/lab/workspaces/browser-tier?reset&token={lab.token}")
    page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell", timeout=TIMEOUT_MS)
    page.evaluate("async () => { await window.jupyterapp.restored; return true; }")
    yield page, watch
    page.close()


@contextmanager
def notebook(lab_page: tuple[Page, Watch], name: str) -> Iterator[tuple[Page, Watch]]:
    """Open ``name`` with a fresh kernel; shut the kernel and drop the tab afterwards."""
    page, watch = lab_page
    watch.take()
    page.evaluate("async (path) => { await window.jupyterapp.commands.execute("
                  "'docmanager:open', {path, factory: 'Notebook'}); return true; }", name)
    page.wait_for_function(READY.replace("const panel = app && app.shell.currentWidget;",
                                         "const panel = app && app.shell.currentWidget;\n"
                                         f"  if (!panel || !panel.context || panel.context.path "
                                         f"!== {name!r}) return false;"),
                           timeout=TIMEOUT_MS)
    try:
        yield page, watch
    finally:
        page.evaluate("""async () => {
          const panel = window.jupyterapp.shell.currentWidget;
          await panel.sessionContext.shutdown();
          panel.context.model.dirty = false;  // autosave is off: nothing is written back
          panel.dispose();
        }""")


def run_all(page: Page) -> list[dict[str, Any]]:
    page.evaluate(RUN_ALL)
    page.wait_for_function(ALL_DONE, timeout=TIMEOUT_MS)
    cells: list[dict[str, Any]] = page.evaluate(OUTPUTS)
    return cells


def problems(cells: list[dict[str, Any]], page: Page, watch: Watch) -> list[str]:
    found = []
    for cell in cells:
        if cell["count"] is None:
            found.append(f"cell {cell['index']} did not run")
        for out in cell["outputs"]:
            if out["output_type"] == "error":
                found.append(f"cell {cell['index']}: {out['ename']}: {out['evalue']}")
            if out["output_type"] == "stream" and out["name"] == "stderr" \
                    and "Traceback" in "".join(out["text"]):  # log lines may name errors
                found.append(f"cell {cell['index']} stderr: {''.join(out['text'])[:300]}")
    shown = page.locator(".jp-OutputArea-output").all_inner_texts()
    for text in shown:
        if re.search(r"Error displaying widget|Error rendering|model not found", text):
            found.append(f"widget error shown: {text[:200]}")
    widget_outputs = sum(1 for c in cells for o in c["outputs"]
                         if "application/vnd.jupyter.widget-view+json" in o.get("data", {}))
    rendered = page.locator(".jp-OutputArea-output .jupyter-widgets").count()
    if widget_outputs and not rendered:
        found.append(f"{widget_outputs} widget output(s) but no widget rendered")
    return found + watch.errors


def shoot_outputs(page: Page, stem: str) -> list[Path]:
    """The page after Run All, and each image and widget output on its own."""
    paths = [SHOTS / f"{stem}.png"]
    page.screenshot(path=paths[0])
    outs = page.locator(".jp-OutputArea-output:has(img), "
                        ".jp-OutputArea-output:has(.jupyter-widgets)")
    for i in range(min(outs.count(), 12)):
        path = SHOTS / f"{stem}-output{i:02d}.png"
        outs.nth(i).screenshot(path=path)
        paths.append(path)
    return paths


@pytest.mark.parametrize("name", [p.name for p in NOTEBOOKS])
def test_notebook_runs_all_cells_without_errors(lab_page: tuple[Page, Watch],
                                                name: str) -> None:
    with notebook(lab_page, name) as (page, watch):
        cells = run_all(page)
        assert problems(cells, page, watch) == []
        assert all(c["count"] is not None for c in cells)
        images = sum(1 for c in cells for o in c["outputs"] if "image/png" in o.get("data", {}))
        rendered = page.locator(".jp-OutputArea-output img").count()
        assert rendered >= images, "every PNG output is shown"
        shoot_outputs(page, Path(name).stem)


# -- the dashboard, clicked -----------------------------------------------------------------
def counts(dash: Locator) -> dict[str, int]:
    """The counts the dashboard shows, read in one go (the table may change meanwhile)."""
    pairs = dash.locator("td[title]").evaluate_all(
        "els => els.map(e => [e.getAttribute('title'), e.innerText])")
    return {title: int(text) for title, text in pairs}


def wait_counts(page: Page, dash: Locator, check: Any, what: str) -> dict[str, int]:
    deadline = time.monotonic() + 60
    while True:
        now = counts(dash)
        if check(now):
            return now
        if time.monotonic() > deadline:
            raise AssertionError(f"the dashboard never showed {what}; it shows {now}")
        page.wait_for_timeout(100)  # the browser's own polling: the DOM changes on its own


def button(dash: Locator, text: str) -> Locator:
    return dash.locator("button", has_text=re.compile(rf"^\s*{re.escape(text)}\s*$"))


def cell_text(result: dict[str, Any]) -> str:
    return "".join("".join(o.get("text", "")) if o["output_type"] == "stream"
                   else "".join(o.get("data", {}).get("text/plain", ""))
                   for o in result["outputs"])


def test_dashboard_buttons_in_the_browser(lab_page: tuple[Page, Watch]) -> None:
    with notebook(lab_page, "03_dashboard.ipynb") as (page, watch):
        click_through_the_dashboard(page, watch)


def click_through_the_dashboard(page: Page, watch: Watch) -> None:
    shot = 0
    figures: dict[str, Any] = {}

    def snap(label: str) -> None:
        nonlocal shot
        shot += 1
        dash.scroll_into_view_if_needed()
        dash.screenshot(path=SHOTS / f"dashboard-{shot:02d}-{label}.png")

    cells = run_all(page)
    assert problems(cells, page, watch) == []
    dash = page.locator(".jobkit-dashboard").first
    # After Run All the runner is still open: 40 videos wait, the buttons work.
    before = wait_counts(page, dash, lambda c: c.get("pending") == 40, "40 pending")
    snap("after-run-all")

    button(dash, "Step").click()
    after = wait_counts(page, dash, lambda c: c["completed"] == before["completed"] + 1,
                        "one more completed after Step")
    assert after["pending"] == 39
    snap("after-step")

    button(dash, "Run 10").click()
    after = wait_counts(page, dash, lambda c: c["completed"] == before["completed"] + 11,
                        "ten more completed after Run 10")
    assert after["pending"] == 29
    snap("after-run10")

    # Refresh shows work queued elsewhere (here by a cell).
    result = page.evaluate(RUN_CELL, "await runner.upload_video('from_a_cell.mp4', "
                                     "duration_ms=20_000)\n'queued'")
    assert "queued" in cell_text(result)
    assert counts(dash)["pending"] == 29, "not shown before a refresh"
    button(dash, "Refresh").click()
    wait_counts(page, dash, lambda c: c["pending"] == 30, "30 pending after Refresh")
    snap("after-refresh")

    # Auto-refresh: new work shows up with no click; once off, nothing changes any more.
    button(dash, "Auto-refresh").click()
    page.evaluate(RUN_CELL, "for i in range(2):\n"
                            "    await runner.upload_video(f'auto_{i}.mp4', duration_ms=20_000)")
    wait_counts(page, dash, lambda c: c["pending"] == 32, "32 pending by auto-refresh")
    snap("auto-refresh-on")
    button(dash, "Auto-refresh").click()
    result = page.evaluate(RUN_CELL, "import asyncio\nn = dash.auto_refreshes\n"
                                     "await runner.upload_video('quiet.mp4', duration_ms=20_000)\n"
                                     "await asyncio.sleep(5 * dash.refresh_interval)\n"
                                     "print('auto-refreshes after off:', dash.auto_refreshes - n,"
                                     " 'loops left:', len(dash._loops))")
    assert "auto-refreshes after off: 0 loops left: 0" in cell_text(result)
    assert counts(dash)["pending"] == 32, "no refresh after Auto-refresh was turned off"
    snap("auto-refresh-off")

    # A click while the kernel is busy shows at once (the button is pressed), and runs
    # when the kernel is free.
    page.evaluate(START_CELL, "import asyncio\nawait asyncio.sleep(3)")
    page.wait_for_function("() => window.jupyterapp.shell.currentWidget.sessionContext"
                           ".session.kernel.status === 'busy'")
    step = button(dash, "Step")
    step.click()
    assert "mod-active" in (step.get_attribute("class") or ""), "pressed at once"
    snap("step-clicked-while-busy")
    page.evaluate("async () => { await window.__jobkitCell; return true; }")
    base = before["completed"]  # 18: the notebook drained its first 18 videos
    wait_counts(page, dash, lambda c: c["pending"] == 32 and c["completed"] == base + 12,
                "the step clicked during the busy cell (quiet.mp4 made 33, one ran)")
    page.wait_for_function("(el) => !el.classList.contains('mod-active')",
                           arg=step.element_handle())

    # Drain: slow jobs, and a cell that runs while it works.
    page.evaluate(RUN_CELL, "@runner.handler('nap')\nasync def nap(job, db):\n"
                            "    await asyncio.sleep(1.0)\n    return {}\n"
                            "await runner.enqueue_many([('nap', {}) for _ in range(40)])")
    button(dash, "Refresh").click()
    wait_counts(page, dash, lambda c: c["pending"] == 72, "72 pending before Drain")
    snap("before-drain")
    button(dash, "Drain").click()
    wait_counts(page, dash, lambda c: c["completed"] > base + 12 and c["pending"] > 0,
                "progress during the Drain")
    result = page.evaluate(RUN_CELL, "print('busy with:', dash.busy)")
    assert "busy with: drain" in cell_text(result), cell_text(result)
    figures["cell run during the Drain (s)"] = round(result["seconds"], 3)
    # Auto-refresh clicked 40 times while the Drain works: once off, no refresh at all.
    auto = button(dash, "Auto-refresh")
    page.evaluate(RUN_CELL, "toggled = []\n"
                            "dash.auto_refresh.observe(lambda c: toggled.append(dash.busy), "
                            "names='value')\nbefore_clicks = dash.auto_refreshes")
    for _ in range(40):
        auto.click()
        # ipywidgets merges state updates queued behind a busy comm: give each a moment.
        page.wait_for_timeout(100)
    result = page.evaluate(RUN_CELL,
                           "n, busy = dash.auto_refreshes, dash.busy\n"
                           "await asyncio.sleep(5 * dash.refresh_interval)\n"
                           "print('toggles:', len(toggled), 'during drain:', toggled.count('drain'),"
                           " 'auto-refreshes while toggling:', n - before_clicks,"
                           " 'after off:', dash.auto_refreshes - n, 'errors:', len(dash.errors),"
                           " 'on:', dash.auto_refresh.value)")
    text = cell_text(result)
    figures["auto-refresh toggled during the Drain"] = text.strip()
    seen = re.search(r"toggles: (\d+) during drain: (\d+) .* after off: 0 errors: 0 on: False",
                     text)
    assert seen and int(seen[1]) >= 20 and seen[1] == seen[2], text
    snap("during-drain")
    final = wait_counts(page, dash, lambda c: c["pending"] == 0 and c["processing"] == 0,
                        "nothing left after Drain")
    assert final["completed"] == base + 12 + 72 and final["failed"] == 0
    page.wait_for_function("(el) => /drained \\d+ jobs/.test(el.innerText)",
                           arg=dash.locator(".jobkit-message").element_handle())
    snap("after-drain")

    # The dark theme: the message line stays readable.
    page.evaluate("async () => { await window.jupyterapp.commands.execute("
                  "'apputils:change-theme', {theme: 'JupyterLab Dark'}); return true; }")
    page.wait_for_function("() => document.body.dataset.jpThemeLight === 'false'")
    button(dash, "Refresh").click()
    # The message's <span> is replaced on every update: wait on its stable container.
    page.wait_for_function("(el) => /refresh: done/.test(el.innerText)",
                           arg=dash.locator(".jobkit-message").element_handle())
    contrast = dash.locator(".jobkit-message span").evaluate(CONTRAST)
    snap("dark-theme")
    figures["dark theme message contrast"] = contrast
    (SHOTS / "figures.json").write_text(json.dumps(figures, indent=1))
    assert contrast["ratio"] >= 4.5, contrast
    assert problems(page.evaluate(OUTPUTS), page, watch) == []
    page.screenshot(path=SHOTS / "03_dashboard-after-clicks.png")
    page.evaluate("async () => { await window.jupyterapp.commands.execute("
                  "'apputils:change-theme', {theme: 'JupyterLab Light'}); return true; }")
