"""The oldest ComfyUI this pack supports, and the check the pack runs when it is loaded.

The nodes rely on host APIs that old releases lack (model wrappers, object
patches on MODEL clones, the classic node API's hidden inputs), and 0.3.75 is
the release the tests run against. An older host gets one clear log line
naming both versions and no nodes, instead of nodes that fail mid-workflow.
Plain Python: no ComfyUI imports, so the check is testable on its own.
"""

from __future__ import annotations

import re

MIN_COMFYUI_VERSION = "0.3.75"
_VERSION = re.compile(r"^\s*v?(\d+)\.(\d+)(?:\.(\d+))?")


def parse_version(text: str) -> tuple[int, int, int] | None:
    """(major, minor, patch) from "0.3.75", "v0.4", "0.3.75rc1", ...; None if it does not start like a version."""
    match = _VERSION.match(text) if isinstance(text, str) else None
    if match is None:
        return None
    major, minor, patch = match.groups()
    return int(major), int(minor), int(patch or 0)


def comfyui_version_problem(found: str | None, minimum: str = MIN_COMFYUI_VERSION) -> str | None:
    """Why the host ComfyUI ``found`` is too old for this pack, or None when it is new enough.

    An unknown or unreadable version is not reported here: forks and source
    checkouts may lack the version file, and refusing them would be worse than
    trying (the caller logs a warning instead).
    """
    have, need = parse_version(found or ""), parse_version(minimum)
    if need is None:
        raise ValueError(f"minimum ComfyUI version {minimum!r} is not a version")
    if have is None or have >= need:
        return None
    return (f"ComfyUI {found.strip()} is too old for this pack: it needs ComfyUI {minimum} or newer "
            "(update ComfyUI, then restart it)")


def host_comfyui_version() -> str | None:
    """``__version__`` of the running ComfyUI (its comfyui_version.py), or None if it has none."""
    try:
        import comfyui_version
    except ImportError:
        return None
    version = getattr(comfyui_version, "__version__", None)
    return version if isinstance(version, str) else None
