"""Resumable training checkpoints: one safetensors file per run.

Holds what a run needs to continue bit for bit: the trainables (embeddings,
value targets, i*, i_super) in float32, AdamW's moments and step counts, the
optimizer step reached and the loss history. Per-step randomness is derived
from (seed, step), so no generator state is stored. Metadata (JSON under one
key) records the settings and the data digest that a resume must match.
Safetensors only: a checkpoint never executes code when read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as _load_bytes
from safetensors.torch import save as _save_bytes

from .atomic_write import write_atomic
from .training import ConceptTrainables

STATE_FORMAT = "perfusion-training-state"
STATE_VERSION = 1
METADATA_KEY = "perfusion_training"
MAX_STATE_BYTES = 256 * 1024 * 1024
_ADAM_FIELDS = ("step", "exp_avg", "exp_avg_sq")


class TrainingStateError(ValueError):
    """A training checkpoint cannot be used; the message names the file and the problem."""


def save_training_state(path: str | Path, trainables: ConceptTrainables, optimizer: torch.optim.Optimizer,
                        step: int, losses: list[float], meta: dict[str, Any]) -> Path:
    """Atomically write (or replace) this run's checkpoint at ``path``."""
    path = Path(path)
    tensors = {f"trainable.{k}": v.detach().float().cpu().contiguous() for k, v in trainables.state_dict().items()}
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for index, param in enumerate(params):
        state = optimizer.state.get(param, {})
        for field in _ADAM_FIELDS:
            if field in state:
                value = state[field]
                value = value if torch.is_tensor(value) else torch.tensor(float(value))
                tensors[f"adam.{index}.{field}"] = value.detach().cpu().contiguous()
    header = dict(meta, format=STATE_FORMAT, version=STATE_VERSION, step=int(step), losses=[float(x) for x in losses])
    data = _save_bytes(tensors, metadata={METADATA_KEY: json.dumps(header)})
    write_atomic(path, data, overwrite=True)
    return path


def read_training_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, metadata) of a checkpoint, with the container checked; contents are checked by restore()."""
    path = Path(path)
    name = path.name
    try:
        size = path.stat().st_size
    except OSError as err:
        raise TrainingStateError(f"{name}: cannot read the training checkpoint ({err.strerror})") from None
    if size > MAX_STATE_BYTES:
        raise TrainingStateError(f"{name}: {size} bytes is too large for a training checkpoint")
    data = path.read_bytes()
    try:
        tensors = _load_bytes(data)
        header_len = int.from_bytes(data[:8], "little")
        raw = json.loads(data[8:8 + header_len]).get("__metadata__", {}).get(METADATA_KEY)
        meta = json.loads(raw) if isinstance(raw, str) else None
    except Exception as err:  # safetensors raises several types for corrupt input
        raise TrainingStateError(f"{name}: not a readable safetensors training checkpoint ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != STATE_FORMAT:
        raise TrainingStateError(f"{name}: not a Perfusion training checkpoint (no '{METADATA_KEY}' metadata)")
    if meta.get("version") != STATE_VERSION:
        raise TrainingStateError(f"{name}: training checkpoint version {meta.get('version')!r}; "
                                 f"this pack reads version {STATE_VERSION}")
    return tensors, meta


def restore(name: str, tensors: dict[str, torch.Tensor], trainables: ConceptTrainables,
            optimizer: torch.optim.Optimizer) -> None:
    """Load checkpoint tensors into freshly built ``trainables`` and ``optimizer`` (shapes must match)."""
    own = trainables.state_dict()
    state = {}
    for key, value in own.items():
        stored = tensors.get(f"trainable.{key}")
        if stored is None or stored.shape != value.shape:
            found = "missing" if stored is None else f"shape {tuple(stored.shape)}"
            raise TrainingStateError(f"{name}: '{key}' is {found}; this run needs shape {tuple(value.shape)} "
                                     "(the checkpoint is for another model or settings)")
        if not bool(torch.isfinite(stored).all()):
            raise TrainingStateError(f"{name}: '{key}' holds NaN or Inf")
        state[key] = stored
    trainables.load_state_dict(state)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    adam: dict[int, dict[str, torch.Tensor]] = {}
    for index, param in enumerate(params):
        fields = {f: tensors.get(f"adam.{index}.{f}") for f in _ADAM_FIELDS}
        if all(v is None for v in fields.values()):
            continue  # the checkpoint was written before this parameter's first update
        if any(v is None for v in fields.values()) or fields["exp_avg"].shape != param.shape:
            raise TrainingStateError(f"{name}: optimizer state of parameter {index} is incomplete or misshapen")
        adam[index] = {f: v.clone() for f, v in fields.items()}
    sd = optimizer.state_dict()
    sd["state"] = adam
    optimizer.load_state_dict(sd)
