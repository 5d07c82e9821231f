"""Perfusion for ComfyUI: key-locked rank-1 editing of cross-attention.

ComfyUI imports this package from custom_nodes/. The math lives in
perfusion_core/ (no ComfyUI imports); nodes/ holds the glue.
"""

import logging
import os
import sys

# perfusion_core is imported by absolute name, as in the tests and tools. Appended,
# not prepended: our folder also holds `nodes/`, which must never shadow ComfyUI's
# own `nodes` module.
_here = os.path.dirname(os.path.abspath(__file__))
if _here not in sys.path:
    sys.path.append(_here)

try:
    import folder_paths  # noqa: F401  (exists only where ComfyUI's source tree is importable)
except ModuleNotFoundError:
    folder_paths = None

from perfusion_core.host_version import MIN_COMFYUI_VERSION, comfyui_version_problem, host_comfyui_version  # noqa: E402

_log = logging.getLogger(__name__)
NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}

if folder_paths is None or not __package__:
    # Imported outside ComfyUI, or as a loose file rather than a package (pytest collecting a
    # checkout whose folder name is not a valid module name, e.g. "tmp.x1Y"): nothing to register.
    pass
elif (_problem := comfyui_version_problem(host_comfyui_version())) is not None:
    # Too old a host: say so once and register nothing, rather than crash ComfyUI's start-up
    # or offer nodes that fail in the middle of a workflow.
    _log.error("Perfusion: %s. No Perfusion nodes were registered.", _problem)
else:
    if host_comfyui_version() is None:
        _log.warning("Perfusion: cannot read this ComfyUI's version (no comfyui_version.py); "
                     "the pack needs ComfyUI %s or newer", MIN_COMFYUI_VERSION)
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

WEB_DIRECTORY = None
__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
