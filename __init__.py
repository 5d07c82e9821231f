"""Perfusion for ComfyUI: key-locked rank-1 editing of cross-attention.

ComfyUI imports this package from custom_nodes/. The math lives in
perfusion_core/ (no ComfyUI imports); nodes/ holds the glue.
"""

import logging

try:
    import folder_paths  # noqa: F401  (exists only where ComfyUI's source tree is importable)
except ModuleNotFoundError:
    folder_paths = None

_log = logging.getLogger(__name__)


def _register() -> bool:
    """Whether this host gets the nodes; logs why not (too old) or what is unknown (no version)."""
    # Relative imports only: the pack adds nothing to the import path, so none of its folder names
    # (perfusion_core, tools, world, bench) becomes a global module name in the user's ComfyUI.
    from .perfusion_core.host_version import MIN_COMFYUI_VERSION, comfyui_version_problem, host_comfyui_version

    found = host_comfyui_version()
    problem = comfyui_version_problem(found)
    if problem is not None:
        # Too old a host: say so once and register nothing, rather than crash ComfyUI's start-up
        # or offer nodes that fail in the middle of a workflow.
        _log.error("Perfusion: %s. No Perfusion nodes were registered.", problem)
        return False
    if found is None:
        _log.warning("Perfusion: cannot read this ComfyUI's version (no comfyui_version.py); "
                     "the pack needs ComfyUI %s or newer", MIN_COMFYUI_VERSION)
    return True


if folder_paths is not None and __package__ and _register():
    # V3 registration: ComfyUI reads comfy_entrypoint only when the module has no
    # NODE_CLASS_MAPPINGS, so this branch defines none.
    from .nodes import comfy_entrypoint  # noqa: F401
else:
    # Imported outside ComfyUI, as a loose file rather than a package (pytest collecting a
    # checkout whose folder name is not a valid module name, e.g. "tmp.x1Y"), or on too old a
    # host: an empty classic mapping, so that ComfyUI loads the folder quietly.
    NODE_CLASS_MAPPINGS: dict = {}

WEB_DIRECTORY = None
