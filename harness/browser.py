"""Drive the real ComfyUI web UI of a ``ComfyServer`` in headless chromium.

Used by ``tests/e2e/test_browser.py`` and ``tools/screenshots.py``. Everything
goes through what a user does: the workflow file is given to the UI's own
"open workflow" file input, widgets are edited on the loaded nodes, and the
prompt is queued by clicking the Run button; the page's ``window.app`` is only
read, to check what the UI shows.

The browser is Debian's ``chromium`` with its matching ``chromium-driver``
(``tools/setup.sh`` installs both); Selenium gets both paths explicitly, so it
never tries to download a browser or driver.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from harness.comfy_server import ComfyServer

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# Without the background-networking flags chromium keeps dialing Google services, and on a
# machine without internet those refused connections stall start-up.
CHROMIUM_FLAGS: tuple[str, ...] = (
    "--headless",
    "--no-sandbox",  # CI runs as root, where the sandbox cannot start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
VIEWPORT = (1280, 800)
# Frontend state (1.32) that would cover the canvas on a fresh profile: the template browser
# opened for a new user, and the "Nodes 2.0" banner.
SETTINGS: dict[str, Any] = {"Comfy.TutorialCompleted": True}
# For pictures of whole graphs: no minimap over the canvas, and node text drawn at any zoom
# (by default the canvas drops text below a font size, which a fitted graph falls under).
SCREENSHOT_SETTINGS: dict[str, Any] = {"Comfy.Minimap.Visible": False, "LiteGraph.Canvas.MinFontSizeForLOD": 0}
LOCAL_STORAGE = {"vueNodesBannerDismissed": "true"}

# Where the UI reports problems: dialogs (1.32), the canvas's error overlay (1.48).
DIALOG_CSS = ".p-dialog"
ERROR_OVERLAY_CSS = "[data-testid='error-overlay']"

# Left, top, right, bottom pixels of the canvas under the UI's bars (side bar, tabs, Run button).
CANVAS_INSETS = (60, 130, 0, 30)

T = TypeVar("T")

# JavaScript run in the page. Reads only; the one write wraps api.queuePrompt to record the
# prompt ids the UI gets back, so the test can follow them in the server's /history.
_READY_JS = """
return !!(window.app && app.graph && window.LiteGraph && window.comfyAPI?.api
          && Object.keys(LiteGraph.registered_node_types).length > 0
          && document.querySelector("[data-testid='queue-button']"));
"""
_RECORD_QUEUED_JS = """
const api = window.comfyAPI.api.api;
if (!api.__queuedIds) {
  api.__queuedIds = [];
  const queue = api.queuePrompt.bind(api);
  api.queuePrompt = async (...args) => {
    const res = await queue(...args);
    if (res && res.prompt_id) api.__queuedIds.push(res.prompt_id);
    return res;
  };
}
return api.__queuedIds.length;
"""
_GRAPH_JS = """
const registered = LiteGraph.registered_node_types;
return {
  name: app.extensionManager?.workflow?.activeWorkflow?.filename ?? null,
  // Newer frontends (1.48) hold node ids as strings in the live graph; files and serialize() use numbers.
  nodes: app.graph.nodes.map(n => ({
    id: /^[0-9]+$/.test(String(n.id)) ? Number(n.id) : n.id, type: n.type, title: n.title, registered: n.type in registered, has_errors: !!n.has_errors,
    widgets: Object.fromEntries((n.widgets ?? []).map(w => [w.name, w.value])),
    choices: Object.fromEntries((n.widgets ?? []).filter(w => Array.isArray(w.options?.values))
                                .map(w => [w.name, w.options.values])),
  })),
  // The graph as the UI would save it: widget values by position, like the workflow files.
  saved: app.graph.serialize().nodes.map(n => ({id: n.id, type: n.type, widgets_values: n.widgets_values ?? []})),
  node_errors: app.lastNodeErrors ?? null,
  execution_error: app.lastExecutionError ?? null,
};
"""
_SET_WIDGET_JS = """
const [id, name, value] = arguments;
const node = app.graph.getNodeById(id);
const widget = node?.widgets?.find(w => w.name === name);
if (!widget) return false;
widget.value = value;
widget.callback?.(widget.value, app.canvas, node);
app.graph.setDirtyCanvas(true, true);
return [widget.value];
"""
_FOCUS_JS = """
// Centre the given nodes in the part of the canvas no toolbar covers, at the largest zoom
// (at most 1) that shows them all. Screen position = (graph position + offset) * scale.
const [ids, [left, top, right, bottom], margin] = arguments;
const nodes = ids.map(id => app.graph.getNodeById(id)).filter(n => n);
if (!nodes.length) return false;
const x0 = Math.min(...nodes.map(n => n.pos[0]));
const y0 = Math.min(...nodes.map(n => n.pos[1] - LiteGraph.NODE_TITLE_HEIGHT));
const x1 = Math.max(...nodes.map(n => n.pos[0] + n.size[0]));
const y1 = Math.max(...nodes.map(n => n.pos[1] + n.size[1]));
const el = app.canvas.canvas, ds = app.canvas.ds;
const w = el.clientWidth - left - right, h = el.clientHeight - top - bottom;
const scale = Math.min(1, (w - 2 * margin) / (x1 - x0), (h - 2 * margin) / (y1 - y0));
ds.scale = scale;
ds.offset = [(left + w / 2) / scale - (x0 + x1) / 2, (top + h / 2) / scale - (y0 + y1) / 2];
app.graph.setDirtyCanvas(true, true);
return true;
"""
_SHOWN_IMAGES_JS = """
const node = app.graph.getNodeById(arguments[0]);
return (node?.imgs ?? []).filter(img => img.complete && img.naturalWidth > 0).length;
"""


class BrowserError(RuntimeError):
    """The UI did not reach an expected state in time."""


@dataclass
class GraphState:
    """What the UI shows for the loaded workflow."""

    name: str | None
    nodes: list[dict[str, Any]]
    saved: list[dict[str, Any]]
    node_errors: Any
    execution_error: Any
    dialogs: list[str] = field(default_factory=list)

    def unregistered(self) -> list[str]:
        """Node types the frontend has no definition for (it draws them red)."""
        return [n["type"] for n in self.nodes if not n["registered"]]

    def flagged(self) -> list[str]:
        """Nodes the canvas marks as having errors."""
        return [f'{n["id"]} {n["type"]}' for n in self.nodes if n["has_errors"]]

    def nodes_of(self, node_type: str) -> list[dict[str, Any]]:
        return [n for n in self.nodes if n["type"] == node_type]


def browser_available() -> bool:
    """Whether chromium and chromedriver are installed where ``tools/setup.sh`` puts them."""
    return CHROMIUM.is_file() and CHROMEDRIVER.is_file()


def prepare_server_user(server: ComfyServer, settings: dict[str, Any] | None = None) -> None:
    """Store the UI settings of an existing user in the server's user folder (before the page opens)."""
    folder = server.user_dir / "default"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "comfy.settings.json").write_text(json.dumps({**SETTINGS, **(settings or {})}), encoding="utf-8")


class ComfyUI:
    """One headless chromium showing a server's web UI. Use as a context manager."""

    def __init__(self, server: ComfyServer, viewport: tuple[int, int] = VIEWPORT, timeout: float = 90.0,
                 settings: dict[str, Any] | None = None) -> None:
        self.server = server
        self.settings = dict(settings or {})
        self.viewport = viewport
        self.timeout = timeout
        self._profile = Path(tempfile.mkdtemp(prefix="perfusion-chromium-"))
        self.driver: webdriver.Chrome | None = None

    def __enter__(self) -> "ComfyUI":
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def page(self) -> webdriver.Chrome:
        if self.driver is None:
            raise BrowserError("browser not open")
        return self.driver

    def open(self) -> None:
        """Start chromium and open the UI with a fresh profile; blocks until the app is ready."""
        prepare_server_user(self.server, self.settings)
        options = Options()
        options.binary_location = str(CHROMIUM)
        for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={self._profile}",
                     f"--window-size={self.viewport[0]},{self.viewport[1]}"):
            options.add_argument(flag)
        self.driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
        try:
            self._load_page()
        except Exception:
            self.close()  # __exit__ does not run when __enter__ raises
            raise

    def _load_page(self) -> None:
        # --window-size still leaves room for browser chrome in headless mode; the screenshots
        # must have exactly the viewport size.
        self.page.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": self.viewport[0], "height": self.viewport[1], "deviceScaleFactor": 1, "mobile": False})
        self.page.get(self.server.url)
        for key, value in LOCAL_STORAGE.items():
            self.page.execute_script("localStorage.setItem(arguments[0], arguments[1])", key, value)
        self.page.refresh()
        self.wait_for(lambda: self.page.execute_script(_READY_JS), "the ComfyUI app to start")
        self.page.execute_script(_RECORD_QUEUED_JS)

    def close(self) -> None:
        if self.driver is not None:
            self.driver.quit()
            self.driver = None
        shutil.rmtree(self._profile, ignore_errors=True)

    def wait_for(self, check: Callable[[], T], what: str, timeout: float | None = None) -> T:
        """Poll ``check`` until it returns something truthy; raise BrowserError naming ``what``."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"timed out waiting for {what}")
            time.sleep(0.2)

    # ------------------------------------------------------------------ what a user does
    def open_workflow(self, path: Path) -> GraphState:
        """Open a workflow file through the UI's file input (what "Open" and drag-and-drop use)."""
        expected = sorted(node["id"] for node in json.loads(path.read_text(encoding="utf-8"))["nodes"])
        inputs = self.page.find_elements(By.CSS_SELECTOR, "input#comfy-file-input")
        if not inputs:
            raise BrowserError("the UI has no workflow file input (#comfy-file-input)")
        inputs[0].send_keys(str(path.resolve()))
        self.wait_for(lambda: sorted(n["id"] for n in self.graph().nodes) == expected
                      and self.graph().name in (path.stem, path.name), f"the UI to show {path.name}")
        time.sleep(0.5)  # dialogs open after the graph is configured
        # Fit the whole graph in view (the "." key): the canvas loads a node's output images
        # only while it draws the node, so the save nodes must be on screen.
        self.fit_view()
        return self.graph()

    def set_widget(self, node_id: int, name: str, value: Any) -> None:
        """Change a widget value on a node, as typing it in would."""
        result = self.page.execute_script(_SET_WIDGET_JS, node_id, name, value)
        if not result:
            raise BrowserError(f"node {node_id} has no widget {name!r}")
        if result[0] != value:  # the widget rounds to its step and clamps to its range
            raise BrowserError(f"node {node_id}: widget {name!r} took {result[0]!r} instead of {value!r}")

    def refresh_model_lists(self) -> None:
        """Press R on the canvas: the UI re-reads the model/concept file lists."""
        self.page.execute_script("return app.refreshComboInNodes()")

    def run(self) -> str:
        """Click the Run button; return the id of the prompt the server queued."""
        before = len(self.queued_ids())
        button = self.page.find_element(By.CSS_SELECTOR, "[data-testid='queue-button']")
        button.click()
        self.wait_for(lambda: len(self.queued_ids()) > before, "the UI to queue the prompt")
        return self.queued_ids()[-1]

    def queued_ids(self) -> list[str]:
        return list(self.page.execute_script("return window.comfyAPI.api.api.__queuedIds ?? []"))

    def fit_view(self) -> None:
        """Zoom the canvas so the whole graph is visible (the "." key)."""
        self.page.execute_script("return app.extensionManager.command.execute('Comfy.Canvas.FitView')")

    def focus(self, node_ids: list[int], margin: int = 20) -> None:
        """Zoom and pan the canvas onto these nodes (scrolling and zooming by hand does the same)."""
        if not self.page.execute_script(_FOCUS_JS, node_ids, CANVAS_INSETS, margin):
            raise BrowserError(f"none of the nodes {node_ids} is in the graph")
        time.sleep(0.3)  # the canvas redraws on the next animation frame

    # ------------------------------------------------------------------ what the UI shows
    def graph(self) -> GraphState:
        state = self.page.execute_script(_GRAPH_JS)
        return GraphState(dialogs=self.dialogs(), **state)

    def dialogs(self) -> list[str]:
        """Texts of the problem reports on screen (missing nodes, missing models, errors).

        The 1.32 frontend opens a dialog for each; newer ones (1.48) show an error overlay
        over the canvas instead (with its own test id), so both are read."""
        found = self.page.find_elements(By.CSS_SELECTOR, f"{DIALOG_CSS}, {ERROR_OVERLAY_CSS}")
        return [d.text for d in found if d.is_displayed()]

    def wait_for_images(self, node_id: int, timeout: float | None = None) -> int:
        """Wait until node ``node_id`` displays at least one loaded image; return how many."""
        return self.wait_for(lambda: self.page.execute_script(_SHOWN_IMAGES_JS, node_id),
                             f"node {node_id} to show its images", timeout)

    def screenshot(self, path: Path) -> Path:
        """Save a PNG of the viewport."""
        path.parent.mkdir(parents=True, exist_ok=True)
        if not self.page.save_screenshot(str(path)):
            raise BrowserError(f"screenshot to {path} failed")
        return path


def run_in_ui(ui: ComfyUI, path: Path, widgets: dict[str, dict[str, Any]] | None = None,
              timeout: float = 600.0) -> tuple[GraphState, dict[str, Any]]:
    """Open ``path``, set ``widgets`` ({node type: {widget: value}}) on every node of that type,
    click Run and wait for the server to finish; returns the UI state after opening and the history entry."""
    state = ui.open_workflow(path)
    for node_type, values in (widgets or {}).items():
        for node in state.nodes_of(node_type):
            for name, value in values.items():
                ui.set_widget(node["id"], name, value)
    entry = ui.server.wait(ui.run(), timeout=timeout)
    return state, entry
