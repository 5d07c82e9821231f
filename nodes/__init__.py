"""ComfyUI glue: node classes (V3 schema), MODEL/CLIP patches, model-folder registration."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from . import folders, host_compat, nodes_apply, nodes_concept, nodes_grid, nodes_train, nodes_word_edit

folders.register()
host_compat.log_host_version()

NODES: list[type[io.ComfyNode]] = [
    nodes_concept.LoadPerfusionConcept, nodes_concept.ConceptGate, nodes_concept.SavePerfusionConcept,
    nodes_apply.ApplyKeyLockedEdit, nodes_word_edit.PerfusionWordEdit, nodes_grid.PerfusionLabelledGrid,
    nodes_train.TrainPerfusion,
]
# By node id, as ComfyUI registers them (tests and tools look nodes up here).
NODE_CLASS_MAPPINGS: dict[str, type[io.ComfyNode]] = {node.define_schema().node_id: node for node in NODES}


class PerfusionExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> PerfusionExtension:
    """What ComfyUI calls to register a V3 node pack."""
    return PerfusionExtension()
