"""Concept files in and out of the graph, and the inference gate."""

from __future__ import annotations

import hashlib
import math
import os
import time

import folder_paths
from comfy_api.latest import io

from ..perfusion_core.concept import GATE_RANGES, Concept, ConceptError
from ..perfusion_core.atomic_write import unique_path
from ..perfusion_core.concept_file import MAX_FILE_BYTES, load_concept, save_concept
from ..perfusion_core.lock_modes import DEFAULT_LOCK_MODE, LOCK_MODE_TABLE, LOCK_MODES

from . import folders
from .choices import choice_problem, validate_choices

# The socket type workflows store on every concept link: part of the public contract.
CONCEPT = "PERFUSION_CONCEPT"
ConceptSocket = io.Custom(CONCEPT)
CATEGORY = "perfusion"
FROM_CONCEPT = "concept default"
LOCK_CHOICES = (FROM_CONCEPT, *LOCK_MODES)
GATE_NODE = "ConceptGate"
SAVE_NODE = "SavePerfusionConcept"
MAX_NAME_CHARS = folders.MAX_NAME_CHARS


def load_concept_file(concept_name: str) -> Concept:
    """The concept named in the models/perfusion list (a name the list does not offer is refused,
    whatever the file system would make of it: '../checkpoints/x')."""
    problem = choice_problem("concept_name", concept_name, folders.concept_files())
    if problem:
        raise ConceptError(f"LoadPerfusionConcept: {problem}")
    return load_concept(folder_paths.get_full_path_or_raise(folders.FOLDER, concept_name))


class LoadPerfusionConcept(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoadPerfusionConcept", display_name="Load Perfusion Concept", category=CATEGORY,
            description="Load a Perfusion concept (.safetensors) from models/perfusion.",
            inputs=[io.Combo.Input("concept_name", options=folders.concept_files(), tooltip=(
                "A concept file in models/perfusion (or a 'perfusion:' path of extra_model_paths.yaml). "
                "Press R in the UI to refresh the list after adding files."))],
            outputs=[ConceptSocket.Output("concept", display_name="concept", tooltip=(
                "The concept with its stored gate defaults; feed ConceptGate or ApplyKeyLockedEdit."))],
        )

    @classmethod
    def validate_inputs(cls, concept_name: str | None = None) -> bool | str:
        return validate_choices(concept_name=(concept_name, folders.concept_files()))

    @classmethod
    def fingerprint_inputs(cls, concept_name: str) -> str:
        path = folder_paths.get_full_path(folders.FOLDER, concept_name)
        return "" if path is None else file_version(path)

    @classmethod
    def execute(cls, concept_name: str) -> io.NodeOutput:
        return io.NodeOutput(load_concept_file(concept_name))


def file_version(path: str) -> str:
    """What ComfyUI's cache keys a loaded concept file on: a digest of its bytes. Size and mtime
    miss a file replaced by one of the same size with its mtime kept (cp -p, rsync -t, an archive),
    and a concept file is small enough (at most 64 MiB, usually ~40 KB) to hash on every prompt."""
    try:
        st = os.stat(path)
        if not os.path.isfile(path) or not 0 < st.st_size <= MAX_FILE_BYTES:
            # The loader refuses these without reading them (a kernel pseudo-file may block): so do we.
            return f"unhashed:{st.st_ino}:{st.st_ctime_ns}:{st.st_size}"
        with open(path, "rb") as handle:
            return hashlib.sha256(handle.read(MAX_FILE_BYTES + 1)).hexdigest()
    except OSError:
        return f"unreadable:{time.time_ns()}"  # always "changed": the load then reports why


class ConceptGate(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=GATE_NODE, display_name="Perfusion Concept Gate", category=CATEGORY,
            description=("Set how strongly and where a concept acts: the sigmoid gate (beta, tau), its strength, "
                         "the part of denoising it is active in, and local or global key-locking."),
            inputs=[
                ConceptSocket.Input("concept", tooltip="The concept to configure."),
                io.Float.Input("beta", default=-1.0, min=-1.0, max=GATE_RANGES["beta"][1], step=0.01, tooltip=(
                    "Gate bias, 0 to 2. Lower spreads the concept onto more tokens (more likeness, less prompt "
                    "following); higher confines it. Typical 0.6-0.75 with local or context lock, 0.4-0.6 with "
                    "global. -1 = the concept's stored default (0.7 if it has none).")),
                io.Float.Input("tau", default=-1.0, min=-1.0, max=GATE_RANGES["tau"][1], step=0.01, tooltip=(
                    "Gate temperature, up to 1 (0.15 is the paper's inference value); smaller = sharper on/off. "
                    "Default -1 (any value <= 0): the concept's stored temperature.")),
                io.Float.Input("strength", default=1.0, min=GATE_RANGES["strength"][0],
                               max=GATE_RANGES["strength"][1], step=0.05, tooltip=(
                    "Scales the concept's whole contribution to the cross-attention edit: 0 = no edit (the "
                    "trigger word keeps its learned embedding), 1 = as trained, up to 2. Default 1.")),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.01, tooltip=(
                    "Denoising progress (0 = first step, 1 = last) at which the concept starts acting. Default 0.")),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.01, tooltip=(
                    "Denoising progress (0 = first step, 1 = last) after which the concept stops acting. Default 1.")),
                io.Combo.Input("lock_mode", options=list(LOCK_CHOICES), default=FROM_CONCEPT, tooltip=(
                    " ".join(f"{m.name}: {m.summary}." for m in LOCK_MODE_TABLE)
                    + f" Default '{FROM_CONCEPT}': the concept's stored mode ({DEFAULT_LOCK_MODE}).")),
            ],
            outputs=[ConceptSocket.Output("gated_concept", display_name="concept",
                                          tooltip="The same concept with these inference settings.")],
        )

    @classmethod
    def validate_inputs(cls, lock_mode: str | None = None) -> bool | str:
        return validate_choices(lock_mode=(lock_mode, LOCK_CHOICES))

    @classmethod
    def execute(cls, concept: Concept, beta: float, tau: float, strength: float, start_percent: float,
                end_percent: float, lock_mode: str) -> io.NodeOutput:
        return io.NodeOutput(gate_concept(concept, beta, tau, strength, start_percent, end_percent, lock_mode))


def gate_concept(concept: Concept, beta: float, tau: float, strength: float, start_percent: float,
                 end_percent: float, lock_mode: str) -> Concept:
    """The node's work: ``concept`` with these gate settings (negative beta, tau <= 0 and
    FROM_CONCEPT keep the stored values)."""
    # ComfyUI's min/max check lets NaN through (every comparison with NaN is false).
    for name, value in (("beta", beta), ("tau", tau), ("strength", strength),
                        ("start_percent", start_percent), ("end_percent", end_percent)):
        if not math.isfinite(value):
            raise ConceptError(f"{GATE_NODE}: {name} must be a number, got {value}")
    if start_percent > end_percent:
        raise ConceptError(f"{GATE_NODE}: start_percent {start_percent} is after end_percent {end_percent}; "
                           "the concept would never act (set start_percent <= end_percent)")
    stored = concept.gate
    try:
        return concept.with_gate(
            beta=stored.beta if beta < 0 else beta,
            tau=stored.tau if tau <= 0 else tau,
            strength=strength, start_percent=start_percent, end_percent=end_percent,
            lock=stored.lock if lock_mode == FROM_CONCEPT else lock_mode)
    except ConceptError as err:
        raise ConceptError(f"{GATE_NODE}: {err}") from None


class SavePerfusionConcept(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=SAVE_NODE, display_name="Save Perfusion Concept", category=CATEGORY, is_output_node=True,
            description="Save a concept to models/perfusion. Never overwrites: a counter is added to the name.",
            inputs=[
                ConceptSocket.Input("concept", tooltip="The concept to write."),
                io.String.Input("filename_prefix", default="concept", tooltip=(
                    "File name (without extension) under models/perfusion; sub-folders allowed.")),
            ],
        )

    @classmethod
    def execute(cls, concept: Concept, filename_prefix: str) -> io.NodeOutput:
        return io.NodeOutput(ui={"text": [save_concept_file(concept, filename_prefix)]})


def save_concept_file(concept: Concept, filename_prefix: str) -> str:
    """The node's work: write ``concept`` under models/perfusion, never overwriting; returns its name there."""
    prefix = filename_prefix.strip()
    if not prefix:
        raise ConceptError(f"{SAVE_NODE}: filename_prefix {filename_prefix!r} has no file name "
                           "(empty, or a hidden name starting with '.')")
    if prefix.startswith("/") or ".." in prefix.split("/"):
        raise ConceptError(f"{SAVE_NODE}: filename_prefix {filename_prefix!r} leaves the perfusion folder")
    problem = folders.name_problem(prefix, "filename_prefix", folders_allowed=True)
    if problem:
        raise ConceptError(f"{SAVE_NODE}: {problem}")
    root = os.path.realpath(folders.output_dir())
    target = os.path.realpath(os.path.join(root, prefix + ".safetensors"))
    if not target.startswith(root + os.sep):  # a linked sub-folder pointing outside
        raise ConceptError(f"{SAVE_NODE}: filename_prefix {filename_prefix!r} leaves the perfusion folder")
    first = os.path.relpath(target, root).split(os.sep)[0]
    if first in (folders.STATISTICS_SUBFOLDER, folders.TRAINING_SUBFOLDER):  # reached through a link
        raise ConceptError(f"{SAVE_NODE}: filename_prefix {filename_prefix!r} is in the '{first}' sub-folder, "
                           "which is reserved for the pack's own files; choose another name")
    try:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        path = save_concept(concept, unique_path(target))
    except ConceptError as err:
        raise ConceptError(f"{SAVE_NODE}: {err}") from None
    except (OSError, ValueError) as err:  # e.g. a name the file system refuses
        raise ConceptError(f"{SAVE_NODE}: could not write {os.path.basename(target)!r} ({err}); "
                           "nothing was written") from None
    return os.path.relpath(path, root)
