"""The shipped workflows in the real ComfyUI web UI, driven in headless chromium.

One ComfyUI server (same models as ``test_workflows.py``) and one browser for
the module. Every file in ``example_workflows/`` is opened through the UI's own file
input, the way "Open" and drag-and-drop load a workflow, and must come up with
no "missing nodes" dialog, no node the frontend does not know (drawn red) and
the widget values of the file unchanged.

Every workflow is then queued from the UI (Run button) and must finish with
its images shown on the save nodes and no node flagged: ``make_demo_concepts``
first (it writes the concepts the others load; the test then presses R so the
UI lists them). The files hold the settings for a real SD1.5 checkpoint, so
before each run the test types the tiny model's settings into the widgets
(``QUICK_UI_WIDGETS``: 64 px, 4 sampling steps, 4 training steps, statistics
from 100 captions). The images themselves are checked in depth by
``test_workflows.py``.

A screenshot of each workflow goes to a temp folder (printed);
``tools/screenshots.py`` makes the README's pictures the same way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from PIL import Image

from perfusion_core.concept_file import load_concept
from tools import make_workflows as wf
from harness.browser import ComfyUI, GraphState, browser_available, run_in_ui
from harness.comfy_server import ComfyServer
from tools.demo_models import QUICK_UI_WIDGETS, install_demo_models

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted(p.stem for p in (REPO / "example_workflows").glob("*.json"))
# Images each queued workflow shows on its SaveImage nodes. train_concept saves each new setting with
# the concept and without, its loss graph and its previews; with the 4 steps set here (preview_every
# 100), only the one after the last step.
SAVED_IMAGES = {"train_concept": 2 + 2 * len(wf.NEW_SETTINGS)}


@pytest.fixture(scope="module")
def ui() -> Iterator[ComfyUI]:
    assert browser_available(), "chromium and chromedriver are missing: run tools/setup.sh"
    with ComfyServer() as server:
        assert server.pack_loaded(), server.pack_error()
        install_demo_models(server)
        with ComfyUI(server) as browser:
            yield browser


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("browser-screenshots")
    print(f"\nscreenshots in {folder}")
    return folder


@pytest.fixture(scope="module")
def concepts(ui: ComfyUI) -> dict[str, Any]:
    """Queue make_demo_concepts from the UI, then refresh the UI's file lists (the R key)."""
    state, entry = run_in_ui(ui, wf.workflow_path("make_demo_concepts"), QUICK_UI_WIDGETS)
    ui.refresh_model_lists()
    return {"state": state, "entry": entry}


def assert_opened_cleanly(state: GraphState, path: Path) -> None:
    """No dialog, every node known and unflagged, the file's nodes and widget values unchanged."""
    assert not state.dialogs, f"{path.name}: dialog on screen: {state.dialogs}"
    assert not state.unregistered(), f"{path.name}: nodes missing in the UI: {state.unregistered()}"
    assert not state.flagged(), f"{path.name}: nodes flagged with errors: {state.flagged()}"
    in_file = {n["id"]: (n["type"], n.get("widgets_values", [])) for n in json.loads(path.read_text())["nodes"]}
    in_ui = {n["id"]: (n["type"], n["widgets_values"]) for n in state.saved}
    assert in_ui == in_file, f"{path.name}: the UI changed nodes or widget values"


def assert_screenshot(path: Path, size: tuple[int, int]) -> None:
    img = Image.open(path)
    assert img.size == size
    assert np.asarray(img.convert("L"), dtype=np.float64).std() > 5.0, "blank screenshot"


@pytest.mark.parametrize("name", SHIPPED)
def test_workflow_in_the_ui(name: str, ui: ComfyUI, concepts: dict[str, Any], shots: Path) -> None:
    path = wf.workflow_path(name)
    if name == "make_demo_concepts":
        state, entry = concepts["state"], concepts["entry"]
    else:
        state, entry = run_in_ui(ui, path, QUICK_UI_WIDGETS)
    assert state.name in (name, path.name)
    assert_opened_cleanly(state, path)
    # The concepts made from the UI are offered by every concept loader after the refresh.
    for loader in state.nodes_of("LoadPerfusionConcept"):
        assert {wf.CAT_CONCEPT, wf.CHAIR_CONCEPT} <= set(loader["choices"]["concept_name"])

    if name == "make_demo_concepts":
        written = sorted(t for out in entry["outputs"].values() for t in out.get("text", []))
        assert written == sorted(f"{stem}.safetensors" for stem, _, _ in wf.DEMO_CONCEPTS)
        for stem in written:  # the caption count set in the UI reached the node
            assert load_concept(ui.server.models_dir / "perfusion" / stem).statistics != "identity"
    else:
        images = ui.server.images(entry)
        assert len(images) == SAVED_IMAGES.get(name, 1)
        assert all(np.asarray(im.convert("RGB"), dtype=np.float64).std() > 2.0 for im in images)
        for save in state.nodes_of("SaveImage"):
            assert ui.wait_for_images(save["id"], timeout=30) >= 1  # the UI shows the result
    after = ui.graph()
    assert not after.flagged() and not after.node_errors and not after.execution_error
    assert not after.dialogs, after.dialogs
    assert_screenshot(ui.screenshot(shots / f"{name}.png"), ui.viewport)


def test_an_unknown_node_is_caught(ui: ComfyUI, tmp_path: Path) -> None:
    """The checks above can fail: a workflow with a node type no pack provides is reported."""
    data = json.loads(wf.workflow_path("concept_txt2img").read_text())
    data["nodes"][1]["type"] = "PerfusionNoSuchNode"
    path = tmp_path / "unknown_node.json"
    path.write_text(json.dumps(data))
    state = ui.open_workflow(path)
    assert state.unregistered() == ["PerfusionNoSuchNode"]
    # The 1.32 frontend's dialog says "missing nodes" and lists the type; 1.48's error overlay
    # says "Missing node: <type>".
    assert any("missing node" in text.lower() and "PerfusionNoSuchNode" in text for text in state.dialogs), state.dialogs
    assert len(state.flagged()) == 1
