"""Make the README's screenshots: the main workflows, run in the real web UI.

    python tools/screenshots.py [--out docs/screenshots]

Starts ComfyUI with this pack and the demo model of ``tools/demo.py`` (the
world model), opens each workflow in headless chromium (``harness/browser.py``),
runs it from the Run button with the demo model's settings typed into the
widgets (``DEMO_WORLD``, as the demo runs them, but fewer statistics captions;
training keeps the demo's step count, so the trained concept is real), and
saves a 1280x800 PNG centred on the pack's nodes. Needs ``tools/setup.sh`` (chromium).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from PIL import Image

if __package__ in (None, ""):  # run as a script: make `tools.*` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools import make_workflows as wf  # noqa: E402
from harness.browser import SCREENSHOT_SETTINGS, ComfyUI, run_in_ui  # noqa: E402
from harness.comfy_server import ComfyServer  # noqa: E402
from tools.demo import built_in_checkpoint, install_file  # noqa: E402
from tools.demo_models import install_demo_models  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "docs" / "screenshots"
# The workflows pictured, and the node types each picture shows besides the pack's own
# (None: the whole graph). Whole graphs of the wider workflows would be too small to read.
SHOTS: dict[str, tuple[str, ...] | None] = {
    "concept_txt2img": None,
    "two_concepts": (),
    "train_concept": ("SaveImage",),
}
# Widget values set before a run: the files hold the settings for a real checkpoint, the demo
# model draws 64 px pictures; fewer captions for the statistics (a faster, cruder C).
WIDGETS: dict[str, dict[str, Any]] = replace(wf.DEMO_WORLD, statistics_captions=100).widgets()


def pack_node_types(server: ComfyServer) -> set[str]:
    """Node types this pack registers (its nodes report python_module custom_nodes.<pack>)."""
    return {name for name, info in server.object_info().items()
            if str(info.get("python_module", "")).endswith(server.pack_name)}


def save_small_png(src: Path, dest: Path) -> Path:
    """Re-save a screenshot with an adaptive 256-colour palette: UI pictures stay sharp at a third of the size."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    Image.open(src).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(dest, optimize=True)
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the PNGs")
    args = parser.parse_args(argv)
    with ComfyServer() as server:
        if not server.pack_loaded():
            print(f"the node pack failed to import:\n{server.pack_error()}", file=sys.stderr)
            return 1
        install_demo_models(server)  # the LoRA, ControlNet and training images; then the world checkpoint
        install_file(built_in_checkpoint(), server.models_dir / "checkpoints" / wf.CHECKPOINT)
        ours = pack_node_types(server)
        with ComfyUI(server, settings=SCREENSHOT_SETTINGS) as ui:
            run_in_ui(ui, wf.workflow_path("make_demo_concepts"), WIDGETS)
            ui.refresh_model_lists()
            for name, extra in SHOTS.items():
                state, _ = run_in_ui(ui, wf.workflow_path(name), WIDGETS)
                for save in state.nodes_of("SaveImage"):
                    ui.wait_for_images(save["id"])
                ui.focus([n["id"] for n in state.nodes if extra is None or n["type"] in ours or n["type"] in extra])
                raw = ui.screenshot(server.work_dir / f"{name}.png")
                print(save_small_png(raw, args.out / f"{name}.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
