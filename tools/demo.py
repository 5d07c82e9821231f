"""The main job: start ComfyUI with this pack, make concepts, generate images with them.

    python tools/demo.py [--checkpoint PATH] [--out DIR]

What it does, in a real (unmodified) ComfyUI server started as a subprocess
with all its folders in a throw-away directory:

1. installs the checkpoint into the server's models folder: yours
   (``--checkpoint``, SD1.x / SD2.x / SDXL single-file) or, by default, the
   built-in demo model: the world model of ``world/`` (a small SD1.5-layout
   UNet and VAE this project pretrained on a procedural world of teddies,
   cats, chairs and cups; assembled once under ``.cache/``);
2. makes the demo concepts by running ``example_workflows/make_demo_concepts.json``
   (training-free word edits: "cat" rendered as "cup", "chair" as "teddy");
3. runs ``example_workflows/concept_txt2img.json`` (one concept) and
   ``example_workflows/beta_sweep.json`` (a labelled grid over the gate bias);
4. runs ``example_workflows/train_concept.json``: TrainPerfusion on the bundled
   images of one particular teddy (``example_workflows/images``: white dots, top hat;
   a look the demo model never saw), then generates it on the beach, a
   setting none of its images shows;
5. copies the images (and the concept files) to ``--out`` (default ``out/``), and
   puts the training images, the base model's pictures of the superclass and the
   trained concept's pictures side by side in ``contact_sheet.png`` there.

The shipped workflows are the same files you load in the ComfyUI web UI,
with the settings for a real SD1.5 checkpoint (512 px, training at the
paper's recipe). The demo re-points them at the checkpoint and, for the demo
model, applies its world settings (``DEMO_WORLD`` in
``tools/make_workflows.py``: 64 px pictures, 200 training steps); with
``--checkpoint`` it keeps the shipped settings (raise ``--size`` to 1024 for
SDXL). A real checkpoint does not know the trained teddy's world, so with
``--checkpoint`` the demo shows that the pipeline runs on your model, not a
good concept (and at the paper's recipe, training takes hours on a CPU).

To add a step, add a ``Step`` to ``STEPS``: each names a workflow and says what it produces.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping

if __package__ in (None, ""):  # run as a script: make `tools.*` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools import make_workflows as wf  # noqa: E402
from harness.comfy_server import ComfyServer, ServerError  # noqa: E402
from harness.workflow_format import WorkflowFormatError  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "out"
# The count applies to TrainPerfusion too, whose statistics_captions input starts at 100.
MIN_STATISTICS_CAPTIONS = 100
# Text-encoder statistics survive between demo runs here (git-ignored); keyed by encoder weights and corpus.
DEFAULT_STATISTICS_CACHE = REPO_ROOT / ".cache" / "perfusion_statistics"
CONTACT_SHEET = "contact_sheet.png"


class DemoError(RuntimeError):
    """A failure with a message meant for the user (printed without a traceback)."""


@dataclass(frozen=True)
class Step:
    """One workflow run of the demo.

    ``makes_concepts``: the step writes concept files (checked and copied to
    ``<out>/concepts``); otherwise its images are copied to ``<out>``.
    """

    workflow: str
    what: str
    makes_concepts: bool = False


STEPS: tuple[Step, ...] = (
    Step("make_demo_concepts", f"make the demo concepts (word edits: {wf.CAT_LABEL}, {wf.CHAIR_LABEL})",
         makes_concepts=True),
    Step("concept_txt2img", "text to image with one concept (prompt 'a photo of a cat on the beach')"),
    Step("beta_sweep", "the same prompt at gate bias beta 0.4 ... 0.8 as one labelled grid"),
    Step("train_concept", f"train '{wf.TRIGGER}' ({wf.SUPERCLASS}) on the bundled images in example_workflows/images, "
                          f"then generate '{wf.NEW_SETTINGS[0].format(wf.TRIGGER)}' and more, and the same "
                          f"with '{wf.SUPERCLASS}' on the base model"),
)


@dataclass
class StepResult:
    """What one step took and the files it left in the output folder."""

    step: Step
    seconds: float
    files: list[Path]


def install_file(src: Path, dest: Path) -> Path:
    """Make ``src`` available as ``dest``: a symlink (no copy of a multi-GB file), or a copy where links fail."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists() or dest.is_symlink():
        dest.unlink()
    try:
        dest.symlink_to(src.resolve())
    except OSError:
        shutil.copy2(src, dest)
    return dest


def install_training_images(input_dir: Path) -> list[Path]:
    """Copy the bundled training images into a server's input folder (where LoadImage looks)."""
    from tools.sample_images import IMAGES_DIR

    input_dir.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy2(IMAGES_DIR / name, input_dir / name)) for name in wf.TRAIN_IMAGES]


def built_in_checkpoint() -> Path:
    """The demo model: the world model's single-file checkpoint, assembled on first use."""
    from world.model import world_checkpoint

    return world_checkpoint()


def demo_settings(built_in: bool, size: int | None = None, steps: int | None = None,
                  statistics_captions: int | None = None) -> wf.Settings:
    """The settings the demo runs the workflows with: the demo world's on the built-in model, the
    shipped (real-model) ones on a user's checkpoint; a value given here replaces its default."""
    settings = wf.DEMO_WORLD if built_in else wf.REAL_MODEL
    changes = {"size": size, "sampler_steps": steps, "statistics_captions": statistics_captions}
    return replace(settings, **{name: value for name, value in changes.items() if value is not None})


def retarget(prompt: Mapping[str, Any], ckpt_name: str, settings: wf.Settings) -> dict[str, Any]:
    """A copy of an API prompt with ``settings``, its checkpoint loaders pointed at ``ckpt_name``."""
    out = settings.apply(prompt)
    for entry in out.values():
        if entry["class_type"] == "CheckpointLoaderSimple":
            entry["inputs"]["ckpt_name"] = ckpt_name
    return out


def saved_files(server: ComfyServer, history: Mapping[str, Any]) -> list[Path]:
    """Files the prompt's SaveImage nodes wrote, in the server's output folder."""
    files = []
    for out in history.get("outputs", {}).values():
        for ref in out.get("images", []):
            if ref.get("type", "output") == "output":
                files.append(server.output_dir / ref.get("subfolder", "") / ref["filename"])
    return sorted(files)


def saved_concepts(server: ComfyServer, history: Mapping[str, Any]) -> list[Path]:
    """Concept files the prompt's SavePerfusionConcept nodes reported."""
    root = server.models_dir / "perfusion"
    return sorted(root / name for out in history.get("outputs", {}).values() for name in out.get("text", []))


def sync_statistics(src: Path, dest: Path) -> list[str]:
    """Copy statistics files from ``src`` that ``dest`` lacks; returns their names."""
    if not src.is_dir():
        return []
    dest.mkdir(parents=True, exist_ok=True)
    copied = []
    for path in sorted(src.glob("*.safetensors")):
        if not (dest / path.name).exists():
            shutil.copy2(path, dest / path.name)
            copied.append(path.name)
    return copied


def save_contact_sheet(out_dir: Path) -> Path:
    """``out_dir/contact_sheet.png`` from the training images and what train_concept saved there."""
    from tools.contact_sheet import contact_sheet
    from tools.sample_images import IMAGES_DIR, SCENES

    def shots(stem: str, word: str) -> list[tuple[Path, str]]:
        return [(out_dir / f"{stem}_{n:05d}_.png", setting.format(word)) for n, setting in enumerate(wf.NEW_SETTINGS, 1)]

    rows = [
        ("What training saw: the bundled images", [(IMAGES_DIR / name, f"training image {n} ({scene[0]})")
                                                    for n, (name, scene) in enumerate(zip(wf.TRAIN_IMAGES, SCENES), 1)]),
        (f"Base model, the superclass word '{wf.SUPERCLASS}', in settings no training image shows",
         shots("train_concept_base", wf.SUPERCLASS)),
        (f"Trained concept '{wf.TRIGGER}' in the same settings, same seeds", shots("train_concept", wf.TRIGGER)),
    ]
    path = out_dir / CONTACT_SHEET
    contact_sheet(rows).save(path)
    return path


def run_demo(checkpoint: Path | None, out_dir: Path, *, size: int | None = None, steps: int | None = None,
             statistics_captions: int | None = None, statistics_cache: Path | None = DEFAULT_STATISTICS_CACHE,
             timeout: float = 1800.0, keep_server_dir: bool = False,
             say: Callable[[str], None] = print) -> list[StepResult]:
    """Run every step of ``STEPS`` in a fresh server; copy results to ``out_dir``. Raises DemoError.

    ``size``, ``steps`` and ``statistics_captions`` replace those of the
    model's settings (``demo_settings``); ``statistics_captions`` applies to
    every node that estimates the statistics, so they are computed once.
    ``statistics_cache``: a folder that keeps the text-encoder statistics C
    between runs (the server's folders are temporary, and estimating C is the
    slowest part on a CPU); None recomputes them every time.
    """
    settings = demo_settings(checkpoint is None, size, steps, statistics_captions)
    if checkpoint is not None:
        checkpoint = checkpoint.expanduser()
        if not checkpoint.is_file():
            raise DemoError(f"checkpoint not found: {checkpoint}")
        if checkpoint.suffix not in (".safetensors", ".ckpt", ".pt", ".pth", ".sft"):
            raise DemoError(f"{checkpoint} is not a checkpoint file (.safetensors or .ckpt)")
        ckpt_name = checkpoint.name
    else:
        say("Using the built-in demo model (the world model: 64 px teddies, cats, chairs and cups).")
        checkpoint = built_in_checkpoint()
        ckpt_name = wf.CHECKPOINT

    results: list[StepResult] = []
    server = ComfyServer(keep_work_dir=keep_server_dir)
    say("Starting ComfyUI with the Perfusion node pack ...")
    try:
        server.start()
        say(f"  server up in {server.start_seconds:.0f} s at {server.url} (work folder {server.work_dir})")
        if not server.pack_loaded():
            raise DemoError(f"ComfyUI did not import the Perfusion node pack:\n{server.pack_error()}")
        install_file(checkpoint, server.models_dir / "checkpoints" / ckpt_name)
        say(f"  checkpoint: {checkpoint} -> models/checkpoints/{ckpt_name}")
        install_training_images(server.input_dir)
        server_statistics = server.models_dir / "perfusion" / "statistics"
        have_statistics = statistics_cache is not None and bool(sync_statistics(statistics_cache, server_statistics))
        if have_statistics:
            say(f"  text-encoder statistics cache: {statistics_cache}")
        object_info = server.object_info()
        out_dir.mkdir(parents=True, exist_ok=True)
        for step in STEPS:
            say(f"Running example_workflows/{step.workflow}.json: {step.what} ...")
            if step.makes_concepts and not have_statistics:
                say("  (estimating the text-encoder statistics first: minutes on a CPU, once per text encoder)")
            prompt = retarget(wf.load_api(step.workflow, object_info), ckpt_name, settings)
            t0 = time.perf_counter()
            history = server.run(prompt, timeout=timeout)
            seconds = time.perf_counter() - t0
            if step.makes_concepts:
                made = saved_concepts(server, history)
                missing = [p for p in made if not p.is_file()]
                if not made or missing:
                    raise DemoError(f"{step.workflow}: no concept file was written ({missing or 'none reported'})")
                dest = out_dir / "concepts"
                if statistics_cache is not None:
                    computed = sync_statistics(server_statistics, statistics_cache)
                    say("  text-encoder statistics: " + (f"computed, kept in {statistics_cache} for the next run"
                                                         if computed else "reused from the cache"))
            else:
                made = saved_files(server, history)
                if not made:
                    raise DemoError(f"{step.workflow}: the workflow produced no image")
                dest = out_dir
            dest.mkdir(parents=True, exist_ok=True)
            copied = []
            for path in made:
                shutil.copy2(path, dest / path.name)
                copied.append(dest / path.name)
            results.append(StepResult(step, seconds, copied))
            say(f"  done in {seconds:.1f} s: " + ", ".join(str(p) for p in copied))
        trained = server.models_dir / "perfusion" / f"{wf.TRAINED_CONCEPT}.safetensors"
        if trained.is_file():
            (out_dir / "concepts").mkdir(parents=True, exist_ok=True)
            shutil.copy2(trained, out_dir / "concepts" / trained.name)
            say(f"  trained concept: {out_dir / 'concepts' / trained.name} ({trained.stat().st_size // 1024} KiB)")
            say(f"  contact sheet (training images | base model | trained concept): {save_contact_sheet(out_dir)}")
        for line in server.log_text().splitlines():
            if "Perfusion:" in line and "hooked" in line:
                say(f"  server log: {line.strip()}")
                break
    except ServerError as e:  # validation, execution and start-up failures carry the server's own message
        raise DemoError(str(e)) from e
    except WorkflowFormatError as e:  # a shipped workflow no longer matches the node definitions
        raise DemoError(f"{e} (regenerate the workflows with tools/make_workflows.py)") from e
    finally:
        server.stop()
        if keep_server_dir:
            say(f"Server folder kept: {server.work_dir} (log: {server.log_path})")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Start ComfyUI with the Perfusion pack, make demo concepts and generate images with them.")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="an SD1.x/SD2.x/SDXL single-file checkpoint; default: the small built-in demo model")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to put the images (default: out/)")
    parser.add_argument("--size", type=int, default=None,
                        help=f"image size and training resolution in pixels (default: {wf.DEMO_WORLD.size} "
                             f"for the demo model, {wf.REAL_MODEL.size} for --checkpoint; 1024 for SDXL)")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"sampling steps (default: {wf.DEMO_WORLD.sampler_steps} for the demo model, "
                             f"{wf.REAL_MODEL.sampler_steps} for --checkpoint)")
    parser.add_argument("--statistics-captions", type=int, default=None,
                        help="captions to estimate the text-encoder statistics from, for every node that "
                             f"needs them (default: {wf.DEMO_WORLD.statistics_captions} for the demo model, "
                             f"{wf.REAL_MODEL.statistics_captions} for --checkpoint; fewer is faster and less "
                             f"exact; at least {MIN_STATISTICS_CAPTIONS})")
    parser.add_argument("--statistics-cache", type=Path, default=DEFAULT_STATISTICS_CACHE,
                        help="folder keeping the statistics between runs (default: .cache/perfusion_statistics)")
    parser.add_argument("--no-statistics-cache", action="store_true", help="recompute the statistics every run")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds allowed per workflow (default 1800)")
    parser.add_argument("--keep-server-dir", action="store_true",
                        help="keep the server's temporary folder (models, outputs, server.log) for inspection")
    args = parser.parse_args(argv)
    if args.size is not None and (args.size < 64 or args.size % 8):
        parser.error("--size must be a multiple of 8, at least 64")
    if args.steps is not None and args.steps < 1:
        parser.error("--steps must be at least 1")
    if args.statistics_captions is not None and args.statistics_captions < MIN_STATISTICS_CAPTIONS:
        parser.error(f"--statistics-captions must be at least {MIN_STATISTICS_CAPTIONS} (TrainPerfusion's minimum)")

    t0 = time.perf_counter()
    try:
        results = run_demo(args.checkpoint, args.out, size=args.size, steps=args.steps,
                           statistics_captions=args.statistics_captions,
                           statistics_cache=None if args.no_statistics_cache else args.statistics_cache,
                           timeout=args.timeout, keep_server_dir=args.keep_server_dir)
    except (DemoError, FileNotFoundError, OSError) as e:
        print(f"\ndemo failed: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ndemo interrupted", file=sys.stderr)
        return 130
    images = [p for r in results if not r.step.makes_concepts for p in r.files]
    print(f"\nDone in {time.perf_counter() - t0:.0f} s. Images in {args.out.resolve()}:")
    for path in images:
        print(f"  {path}")
    if (args.out / CONTACT_SHEET).is_file():
        print(f"What training did, side by side: {(args.out / CONTACT_SHEET).resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
