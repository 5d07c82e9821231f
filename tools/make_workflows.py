"""Generate the example workflows shipped in ``example_workflows/``.

The workflows are authored here as API-format prompts (readable, diffable,
easy to vary in tests) and written as UI-format files that open in the
ComfyUI web UI. The UI format stores widget values by position, and the
positions depend on the node definitions, so the conversion asks a real
server for ``/object_info``: the script starts one with this pack loaded.

    python tools/make_workflows.py           # (re)write example_workflows/*.json
    python tools/make_workflows.py --check   # exit 1 if a file is stale

Output is deterministic (node ids, layout and the workflow id derive from the
prompt), so re-running it on an unchanged tree changes nothing.

Every workflow ships with the settings for a real SD1.5 checkpoint
(``REAL_MODEL``: 512 px, TrainPerfusion at the paper's recipe of
docs/method.md section 6); for SDXL raise the image size and the training
resolution to 1024. The settings that depend on the model are one
``Settings`` value: ``tools/demo.py`` applies ``DEMO_WORLD`` (the built-in
demo model, the world model of ``world/``: 64 px, 200 training steps; its
words: teddy, cat, chair, cup; grass, beach, snow, night, room) to the
shipped files before it runs them, and the tests apply small settings of
their own for their tiny random-weight models.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

if __package__ in (None, ""):  # run as a script: make `tools.*` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.workflow_format import api_to_ui, ui_to_api, widget_value_problems  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
WORKFLOW_DIR = REPO_ROOT / "example_workflows"
# The ComfyUI release the shipped files are written with (the one CI runs). Newer hosts describe
# some stock nodes differently (0.33's SaveImage has an IMAGE output), which changes a UI file's
# text but not what it runs.
GENERATED_WITH = "0.3.75"

# Model file names the workflows reference (what tests and the demo install).
CHECKPOINT = "perfusion_demo_sd15.safetensors"
LORA = "perfusion_demo_lora.safetensors"
CONTROLNET = "perfusion_demo_controlnet.safetensors"
# Concepts made by make_demo_concepts: (file stem, trigger word, target word); words the demo model knows.
DEMO_CONCEPTS: tuple[tuple[str, str, str], ...] = (
    ("demo_cat_to_cup", "cat", "cup"),
    ("demo_chair_to_teddy", "chair", "teddy"),
)
CAT_CONCEPT = DEMO_CONCEPTS[0][0] + ".safetensors"
CHAIR_CONCEPT = DEMO_CONCEPTS[1][0] + ".safetensors"
CAT_LABEL, CHAIR_LABEL = (f"{trigger} -> {target}" for _, trigger, target in DEMO_CONCEPTS)

# The bundled training images (tools/sample_images.py) and the concept trained from them.
TRAIN_IMAGES: tuple[str, ...] = tuple(f"teddy_{n}.png" for n in range(4))
TRAINED_CONCEPT = "demo_teddy"
TRIGGER = "mytoy"
SUPERCLASS = "teddy"
# Where train_concept shows the trained concept, and the base model with the superclass word:
# settings none of the training images shows ("{}" is the word).
NEW_SETTINGS: tuple[str, ...] = ("a photo of a {} on the beach", "a photo of a {} and a cup on the beach")


Prompt = dict[str, dict[str, Any]]
Link = list[Any]


@dataclass(frozen=True)
class Settings:
    """The node inputs whose right value depends on the model a workflow runs on.

    Everything else in a workflow (prompts, seeds, gates, file names) is the
    same for every model. ``widgets`` says which input of which node type
    each value sets; ``apply`` writes them into an API prompt.
    """

    size: int  # pixels: the empty latent, the control image and TrainPerfusion's resolution
    sampler_steps: int
    # Every node with a statistics_captions input: one count, so a server estimates C once
    # (the estimate is cached per text encoder and caption count).
    statistics_captions: int
    train_steps: int
    train_batch_size: int
    train_grad_accumulation: int
    train_lr_values: float
    train_gradient_checkpointing: bool

    def widgets(self) -> dict[str, dict[str, Any]]:
        """{node type: {input: value}}: the form the web-UI helpers set widgets in."""
        size = {"width": self.size, "height": self.size}
        steps = {"steps": self.sampler_steps}
        widgets: dict[str, dict[str, Any]] = {
            "EmptyLatentImage": size, "EmptyImage": size, "KSampler": steps, "KSamplerAdvanced": steps,
            "TrainPerfusion": {"resolution": self.size, "steps": self.train_steps,
                               "batch_size": self.train_batch_size,
                               "grad_accumulation": self.train_grad_accumulation,
                               "lr_values": self.train_lr_values,
                               "gradient_checkpointing": self.train_gradient_checkpointing},
        }
        for node_type in STATISTICS_NODES:
            widgets.setdefault(node_type, {})["statistics_captions"] = self.statistics_captions
        return widgets

    def apply(self, prompt: Mapping[str, Mapping[str, Any]]) -> Prompt:
        """A copy of an API prompt with these settings. Inputs fed by a link stay linked; the
        caption count goes to every node that has a statistics_captions input, listed or not."""
        widgets = self.widgets()
        out: Prompt = {}
        for key, entry in prompt.items():
            inputs = dict(entry["inputs"])
            values = {**widgets.get(entry["class_type"], {}), "statistics_captions": self.statistics_captions}
            for name, value in values.items():
                if name in inputs and not isinstance(inputs[name], list):
                    inputs[name] = value
            out[key] = {**entry, "inputs": inputs}
        return out


# The node types with a statistics_captions input (a test compares this with the server's node list).
STATISTICS_NODES: tuple[str, ...] = ("PerfusionWordEdit", "TrainPerfusion")

# What the shipped files hold: a real SD1.5 checkpoint, TrainPerfusion at the paper's recipe
# (docs/method.md section 6; the node's own defaults): 400 steps, effective batch 16 = 4 x 4,
# value-target learning rate 0.03. The caption count is TrainPerfusion's default, for both nodes.
REAL_MODEL = Settings(size=512, sampler_steps=25, statistics_captions=20000, train_steps=400,
                      train_batch_size=4, train_grad_accumulation=4, train_lr_values=0.03,
                      train_gradient_checkpointing=True)
# The built-in demo model (tools/demo.py): 64 px pictures of its world. It learns its teddy in
# 200 steps of batch 2 with a value-target learning rate of 0.1: the paper's 0.03 needs more than
# 200 steps on it (docs/evidence.md: fidelity near 0 at 0.03, most samples right at 0.1). A model
# this small trains fastest without gradient checkpointing.
DEMO_WORLD = Settings(size=64, sampler_steps=20, statistics_captions=500, train_steps=200,
                      train_batch_size=2, train_grad_accumulation=1, train_lr_values=0.1,
                      train_gradient_checkpointing=False)

SEED = 42
CFG = 5.0
# TrainPerfusion's preview samples: the node's default interval (two previews on the demo model,
# four at the paper's 400 steps), the same on every model.
PREVIEW_EVERY = 100
BETAS: tuple[float, ...] = (0.4, 0.5, 0.6, 0.7, 0.8)
TAU = 0.15
NEGATIVE = "blurry, low quality, watermark"
# Output file prefixes (a sub-folder of ComfyUI's output folder per workflow).
OUTPUT_PREFIX = "perfusion"


class Graph:
    """A tiny API-prompt builder: nodes get readable keys and titles.

    The keys are not numeric, so ``api_to_ui`` renumbers nodes 1..n in
    insertion order; titles travel in ``_meta`` and show in the UI.
    """

    def __init__(self) -> None:
        self.prompt: Prompt = {}

    def add(self, key: str, class_type: str, title: str | None = None, **inputs: Any) -> str:
        """Add node ``key``; link inputs are written as ``graph.out(key, index)``."""
        if key in self.prompt:
            raise ValueError(f"duplicate node key {key!r}")
        entry: dict[str, Any] = {"class_type": class_type, "inputs": inputs}
        if title:
            entry["_meta"] = {"title": title}
        self.prompt[key] = entry
        return key

    @staticmethod
    def out(key: str, index: int = 0) -> Link:
        """A link to output ``index`` of node ``key``."""
        return [key, index]


# ----------------------------------------------------------------------------- building blocks
def _checkpoint(g: Graph) -> tuple[Link, Link, Link]:
    """CheckpointLoaderSimple; returns (model, clip, vae) links."""
    g.add("ckpt", "CheckpointLoaderSimple", "Checkpoint (SD1.x, SD2.x or SDXL)", ckpt_name=CHECKPOINT)
    return g.out("ckpt", 0), g.out("ckpt", 1), g.out("ckpt", 2)


def _gate(g: Graph, key: str, concept: Link, beta: float, title: str, strength: float = 1.0) -> Link:
    g.add(key, "ConceptGate", title, concept=concept, beta=beta, tau=TAU, strength=strength,
          start_percent=0.0, end_percent=1.0, lock_mode="concept default")
    return g.out(key)


def _apply(g: Graph, key: str, model: Link, clip: Link, concept: Link, title: str) -> tuple[Link, Link]:
    g.add(key, "ApplyKeyLockedEdit", title, model=model, clip=clip, concept=concept, trigger_word="")
    return g.out(key, 0), g.out(key, 1)


def _sample_and_decode(g: Graph, suffix: str, model: Link, clip: Link, vae: Link, text: str,
                       latent: Link, label: str = "") -> tuple[Link, Link, Link]:
    """Positive and negative prompt with ``clip``, KSampler, VAEDecode; returns (image, positive, negative)."""
    tag = f" ({label})" if label else ""
    g.add(f"pos{suffix}", "CLIPTextEncode", f"Prompt{tag}", text=text, clip=clip)
    g.add(f"neg{suffix}", "CLIPTextEncode", f"Negative prompt{tag}", text=NEGATIVE, clip=clip)
    positive, negative = g.out(f"pos{suffix}"), g.out(f"neg{suffix}")
    g.add(f"sampler{suffix}", "KSampler", f"KSampler{tag}", model=model, seed=SEED,
          steps=REAL_MODEL.sampler_steps, cfg=CFG, sampler_name="euler", scheduler="normal", positive=positive,
          negative=negative, latent_image=latent, denoise=1.0)
    g.add(f"decode{suffix}", "VAEDecode", f"VAE Decode{tag}", samples=g.out(f"sampler{suffix}"), vae=vae)
    return g.out(f"decode{suffix}"), positive, negative


def _latent(g: Graph) -> Link:
    g.add("latent", "EmptyLatentImage", "Empty latent (512 px for SD1.x; 1024 for SDXL)",
          width=REAL_MODEL.size, height=REAL_MODEL.size, batch_size=1)
    return g.out("latent")


def _save(g: Graph, images: Link, name: str) -> None:
    g.add("save", "SaveImage", "Save image", images=images, filename_prefix=f"{OUTPUT_PREFIX}/{name}")


# ----------------------------------------------------------------------------- the workflows
def make_demo_concepts() -> Prompt:
    """Two training-free word-edit concepts (DEMO_CONCEPTS) saved to models/perfusion."""
    g = Graph()
    model, clip, _vae = _checkpoint(g)
    for stem, trigger, target in DEMO_CONCEPTS:
        g.add(f"edit_{trigger}", "PerfusionWordEdit", f"Word edit: {trigger} -> {target}", model=model, clip=clip,
              trigger_word=trigger, target_word=target, template="a photo of a {}",
              statistics_captions=REAL_MODEL.statistics_captions)
        g.add(f"save_{trigger}", "SavePerfusionConcept", f"Save {stem}", concept=g.out(f"edit_{trigger}"),
              filename_prefix=stem)
    return g.prompt


def concept_txt2img() -> Prompt:
    """(a) One concept: load, gate, apply to MODEL and CLIP, sample with the trigger in the prompt."""
    g = Graph()
    model, clip, vae = _checkpoint(g)
    g.add("concept", "LoadPerfusionConcept", f"Load concept ({CAT_LABEL})", concept_name=CAT_CONCEPT)
    gated = _gate(g, "gate", g.out("concept"), 0.7, "Concept gate")
    model, clip = _apply(g, "apply", model, clip, gated, "Apply concept")
    image, _, _ = _sample_and_decode(g, "", model, clip, vae, "a photo of a cat on the beach", _latent(g))
    _save(g, image, "concept_txt2img")
    return g.prompt


def two_concepts() -> Prompt:
    """(b) Two concepts chained through two ApplyKeyLockedEdit nodes: one joint edit, both triggers in one prompt."""
    g = Graph()
    model, clip, vae = _checkpoint(g)
    for key, name, label in (("cat", CAT_CONCEPT, CAT_LABEL), ("chair", CHAIR_CONCEPT, CHAIR_LABEL)):
        g.add(f"concept_{key}", "LoadPerfusionConcept", f"Load concept ({label})", concept_name=name)
        # beta 0.6 is the paper's multi-concept inference default.
        gated = _gate(g, f"gate_{key}", g.out(f"concept_{key}"), 0.6, f"Concept gate ({key})")
        model, clip = _apply(g, f"apply_{key}", model, clip, gated, f"Apply concept ({key})")
    image, _, _ = _sample_and_decode(g, "", model, clip, vae, "a photo of a cat and a chair on the grass", _latent(g))
    _save(g, image, "two_concepts")
    return g.prompt


def concept_lora_controlnet() -> Prompt:
    """(c) A concept on top of a LoRA, with a ControlNet guiding the layout (control image made in-graph)."""
    g = Graph()
    model, clip, vae = _checkpoint(g)
    g.add("lora", "LoraLoader", "LoRA", model=model, clip=clip, lora_name=LORA, strength_model=1.0,
          strength_clip=1.0)
    g.add("concept", "LoadPerfusionConcept", f"Load concept ({CAT_LABEL})", concept_name=CAT_CONCEPT)
    gated = _gate(g, "gate", g.out("concept"), 0.7, "Concept gate")
    model, clip = _apply(g, "apply", g.out("lora", 0), g.out("lora", 1), gated, "Apply concept (after the LoRA)")
    latent = _latent(g)
    g.add("pos", "CLIPTextEncode", "Prompt", text="a photo of a cat on the grass", clip=clip)
    g.add("neg", "CLIPTextEncode", "Negative prompt", text=NEGATIVE, clip=clip)
    # A plain coloured image stands in for a pose/depth/edge map, so the workflow needs no input file.
    g.add("control_image", "EmptyImage", "Control image (replace with LoadImage)", width=REAL_MODEL.size,
          height=REAL_MODEL.size, batch_size=1, color=0x4080C0)
    g.add("controlnet", "ControlNetLoader", "ControlNet", control_net_name=CONTROLNET)
    g.add("apply_cn", "ControlNetApplyAdvanced", "Apply ControlNet", positive=g.out("pos"), negative=g.out("neg"),
          control_net=g.out("controlnet"), image=g.out("control_image"), strength=0.8, start_percent=0.0,
          end_percent=1.0)
    g.add("sampler", "KSampler", "KSampler", model=model, seed=SEED, steps=REAL_MODEL.sampler_steps, cfg=CFG,
          sampler_name="euler", scheduler="normal", positive=g.out("apply_cn", 0), negative=g.out("apply_cn", 1),
          latent_image=latent, denoise=1.0)
    g.add("decode", "VAEDecode", "VAE Decode", samples=g.out("sampler"), vae=vae)
    _save(g, g.out("decode"), "concept_lora_controlnet")
    return g.prompt


def beta_label(beta: float) -> str:
    """The grid label of one sweep cell."""
    return f"beta {beta:g}"


def beta_sweep() -> Prompt:
    """(d) One concept at several gate biases (same seed), laid out as a labelled grid."""
    g = Graph()
    model, clip, vae = _checkpoint(g)
    g.add("concept", "LoadPerfusionConcept", f"Load concept ({CAT_LABEL})", concept_name=CAT_CONCEPT)
    latent = _latent(g)
    batch: Link | None = None
    for i, beta in enumerate(BETAS):
        label = beta_label(beta)
        gated = _gate(g, f"gate{i}", g.out("concept"), beta, f"Concept gate ({label})")
        m, c = _apply(g, f"apply{i}", model, clip, gated, f"Apply concept ({label})")
        image, _, _ = _sample_and_decode(g, str(i), m, c, vae, "a photo of a cat on the beach", latent, label)
        if batch is None:
            batch = image
        else:
            g.add(f"batch{i}", "ImageBatch", f"Batch images (+ {label})", image1=batch, image2=image)
            batch = g.out(f"batch{i}")
    assert batch is not None
    g.add("grid", "PerfusionLabelledGrid", "Labelled grid", images=batch,
          labels=", ".join(beta_label(b) for b in BETAS), columns=len(BETAS))
    _save(g, g.out("grid"), "beta_sweep")
    return g.prompt


def train_concept() -> Prompt:
    """(e) Train a concept on the bundled teddy images, then generate it, and the base model with the
    superclass word, in settings the images do not show."""
    g = Graph()
    model, clip, vae = _checkpoint(g)
    images: Link | None = None
    for n, name in enumerate(TRAIN_IMAGES):
        g.add(f"image{n}", "LoadImage", f"Training image {n + 1}", image=name)
        if images is None:
            images = g.out(f"image{n}")
        else:
            g.add(f"batch{n}", "ImageBatch", f"Images 1-{n + 1}", image1=images, image2=g.out(f"image{n}"))
            images = g.out(f"batch{n}")
    g.add("train", "TrainPerfusion", f"Train '{TRIGGER}' ({SUPERCLASS})", model=model, clip=clip, vae=vae,
          images=images, trigger_word=TRIGGER, superclass=SUPERCLASS, steps=REAL_MODEL.train_steps,
          batch_size=REAL_MODEL.train_batch_size, grad_accumulation=REAL_MODEL.train_grad_accumulation,
          lr_values=REAL_MODEL.train_lr_values, lr_embedding=0.006, train_beta=0.75, train_tau=0.1, seed=SEED,
          resolution=REAL_MODEL.size, timestep_sets=1, gradient_checkpointing=REAL_MODEL.train_gradient_checkpointing,
          mask_source="mask input if connected", checkpoint_every=50, output_name=TRAINED_CONCEPT,
          statistics_captions=REAL_MODEL.statistics_captions, resume_from="none", preview_every=PREVIEW_EVERY,
          preview_prompt=NEW_SETTINGS[0], captions="", start_percent=0.0, end_percent=1.0)
    g.add("loss", "SaveImage", "Save loss graph", images=g.out("train", 1), filename_prefix=f"{OUTPUT_PREFIX}/train_loss")
    g.add("previews", "SaveImage", "Save training previews", images=g.out("train", 3),
          filename_prefix=f"{OUTPUT_PREFIX}/train_previews")
    latent = _latent(g)
    trained = _apply(g, "apply", model, clip, g.out("train", 0), "Apply trained concept")
    # The same seed and latent with and without the concept: what training changed, side by side.
    for variant, (m, c), word, who, short in (("", trained, TRIGGER, "trained concept", "concept"),
                                              ("_base", (model, clip), SUPERCLASS, "base model", "base")):
        # Short titles: the web UI widens a node to its title, over the next column.
        shots = [_sample_and_decode(g, f"{variant}{n}", m, c, vae, setting.format(word), latent,
                                    f"{short} {n + 1}")[0] for n, setting in enumerate(NEW_SETTINGS)]
        g.add(f"batch{variant}", "ImageBatch", f"Batch images ({who})", image1=shots[0], image2=shots[1])
        g.add(f"save{variant}", "SaveImage", f"Save images ({who})", images=g.out(f"batch{variant}"),
              filename_prefix=f"{OUTPUT_PREFIX}/train_concept{variant}")
    return g.prompt


WORKFLOWS: dict[str, Callable[[], Prompt]] = {
    "make_demo_concepts": make_demo_concepts,
    "concept_txt2img": concept_txt2img,
    "two_concepts": two_concepts,
    "concept_lora_controlnet": concept_lora_controlnet,
    "beta_sweep": beta_sweep,
    "train_concept": train_concept,
}


# ----------------------------------------------------------------------------- files
def workflow_path(name: str) -> Path:
    """Where workflow ``name`` is shipped."""
    return WORKFLOW_DIR / f"{name}.json"


def render(name: str, object_info: Mapping[str, Any]) -> str:
    """The UI-format JSON text of workflow ``name`` (checked against the node definitions)."""
    prompt = WORKFLOWS[name]()
    problems = widget_value_problems(prompt, object_info, check_combo_options=False)
    if problems:
        raise ValueError(f"workflow {name}: " + "; ".join(problems))
    return json.dumps(api_to_ui(prompt, object_info), indent=2) + "\n"


def load_api(name_or_path: str | Path, object_info: Mapping[str, Any], older_files: bool = False) -> Prompt:
    """Read a shipped UI-format workflow and convert it to an API prompt for POST /prompt.
    ``older_files``: a file saved before a node gained inputs (they get their defaults, as in the UI)."""
    path = Path(name_or_path)
    if path.suffix != ".json":
        path = workflow_path(str(name_or_path))
    return ui_to_api(json.loads(path.read_text(encoding="utf-8")), object_info, older_files=older_files)


def write_all(object_info: Mapping[str, Any], check: bool = False) -> list[str]:
    """Write every workflow (or, with ``check``, only compare); returns the names that changed."""
    changed = []
    WORKFLOW_DIR.mkdir(exist_ok=True)
    for name in WORKFLOWS:
        text = render(name, object_info)
        path = workflow_path(name)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            changed.append(name)
            if not check:
                path.write_text(text, encoding="utf-8")
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only report stale files (exit 1 if any)")
    args = parser.parse_args(argv)

    from harness.comfy_server import ComfyServer

    with ComfyServer() as server:
        if not server.pack_loaded():
            print(f"the node pack failed to import:\n{server.pack_error()}", file=sys.stderr)
            return 1
        object_info = server.object_info()
    changed = write_all(object_info, check=args.check)
    for name in WORKFLOWS:
        state = ("stale" if args.check else "written") if name in changed else "unchanged"
        print(f"{workflow_path(name).relative_to(REPO_ROOT)}: {state}")
    return 1 if (args.check and changed) else 0


if __name__ == "__main__":
    sys.exit(main())
