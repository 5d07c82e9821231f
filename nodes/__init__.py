"""ComfyUI glue: node classes, MODEL/CLIP patches, model-folder registration."""

from __future__ import annotations

from . import folders, host_compat, nodes_apply, nodes_concept, nodes_grid, nodes_train, nodes_word_edit

folders.register()
host_compat.log_host_version()

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
for _module in (nodes_concept, nodes_apply, nodes_word_edit, nodes_grid, nodes_train):
    NODE_CLASS_MAPPINGS.update(_module.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_module.NODE_DISPLAY_NAME_MAPPINGS)
