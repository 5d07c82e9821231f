"""Core's TrainLoraNode as a baseline, called the same way on every tested host.

The benchmark and the LoRA-size test compare Perfusion with ComfyUI's own LoRA
trainer, whose interface grows between releases (0.33 added quantized_backward,
checkpoint_depth, offloading, bucket_mode, bypass_mode and dropped the MODEL
output). Inputs we do not choose take the node's own defaults, read from its
schema, and the LoRA is found among the outputs by its type, so a newer host
needs no change here unless a default changes what is trained.
"""

from __future__ import annotations

from typing import Any

import torch


def _schema(node: type) -> Any:
    getter = getattr(node, "GET_SCHEMA", None) or node.define_schema
    return getter()


def train_lora_node(model: Any, latents: list[torch.Tensor], positive: list, **chosen: Any) -> dict[str, torch.Tensor]:
    """Run TrainLoraNode on ``model`` and return the LoRA it trained (key -> tensor).

    ``latents``: one (1, C, h, w) latent per image (with a single latent dict, 0.3.75's node
    trips over an unset variable); ``positive``: one conditioning for all of them; ``chosen``:
    any other inputs by their node names (rank, steps, learning_rate, ...)."""
    from comfy_extras.nodes_train import TrainLoraNode

    schema = _schema(TrainLoraNode)
    given = {"model": model, "latents": [{"samples": x} for x in latents], "positive": positive} | chosen
    unknown = set(given) - {i.id for i in schema.inputs}
    if unknown:
        raise TypeError(f"TrainLoraNode of this host has no input(s) {sorted(unknown)}")
    inputs = {}
    for spec in schema.inputs:
        if spec.id == "latents":
            inputs[spec.id] = given[spec.id]  # already a list: one entry per image
        elif spec.id in given:
            inputs[spec.id] = [given[spec.id]]
        else:
            inputs[spec.id] = [spec.default]
    if len(latents) > 1:  # one conditioning per latent, as the node pairs them
        inputs["positive"] = [positive] * len(latents)
    outputs = TrainLoraNode.execute(**inputs).args
    lora_index = next(i for i, out in enumerate(schema.outputs) if out.io_type == "LORA_MODEL")
    return outputs[lora_index]
