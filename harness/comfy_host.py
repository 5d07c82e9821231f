"""Locate the development ComfyUI host and make it importable in-process.

Tests, benchmarks and tooling run real ComfyUI code without starting its
server. ComfyUI is not an installable package: its source tree has to be put
on ``sys.path``, and its device selection has to be forced to CPU *before*
``comfy.model_management`` is imported (that module probes for CUDA at import
time and raises on a machine without a GPU).
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from types import ModuleType

ENV_VAR = "PERFUSION_COMFYUI"
DEVICE_ENV_VAR = "PERFUSION_DEVICE"
REPO_ROOT = Path(__file__).resolve().parent.parent
_DEFAULT_HOST = REPO_ROOT / ".host" / "ComfyUI"

_imported = False


def host_dir() -> Path:
    """Return the ComfyUI source tree to use (``$PERFUSION_COMFYUI`` or ``.host/ComfyUI``).

    Raises FileNotFoundError with a hint when no host is installed, because the
    usual cause is simply that ``tools/setup.sh`` has not been run yet.
    """
    configured = os.environ.get(ENV_VAR)
    path = Path(configured).expanduser().resolve() if configured else _DEFAULT_HOST
    if not (path / "comfy" / "model_management.py").is_file():
        origin = f"${ENV_VAR}" if configured else "the default location"
        raise FileNotFoundError(
            f"No ComfyUI host found at {path} ({origin}). Run tools/setup.sh to install "
            f"one, or point {ENV_VAR} at an existing ComfyUI checkout."
        )
    return path


def _running_inside_host() -> bool:
    """True when ComfyUI itself (its server or another embedding) already owns the import state.

    Then its command line decides the device, and we must not override it.
    """
    if "comfy.model_management" in sys.modules:
        return True
    options = sys.modules.get("comfy.options")
    return bool(options is not None and getattr(options, "args_parsing", False))


def import_host() -> None:
    """Put the host on ``sys.path`` (once) and select CPU execution; idempotent.

    The host goes to the *front* of ``sys.path``: ComfyUI's own modules import
    top-level names such as ``nodes``, ``utils`` and ``server`` and must get the
    host's versions, not same-named folders of whatever project is current.
    Inside a running ComfyUI (or after ``comfy.model_management`` was already
    imported) nothing is changed.
    """
    global _imported
    if _imported:
        return
    if _running_inside_host():
        _imported = True
        return
    root = str(host_dir())
    if root not in sys.path:
        sys.path.insert(0, root)
    import comfy.cli_args  # noqa: E402  (needs the path set up above)

    # Tests and tools run on CPU everywhere; $PERFUSION_DEVICE=auto lets ComfyUI pick a GPU
    # (used to run the world experiments on a GPU machine).
    comfy.cli_args.args.cpu = os.environ.get(DEVICE_ENV_VAR, "cpu") != "auto"
    _imported = True


def host_module(name: str) -> ModuleType:
    """A top-level module of the host (``nodes``: ComfyUI's stock node classes), even when this
    repository's folder of the same name comes before the host on ``sys.path``.

    Why: the pack's glue lives in ``nodes/``, and under pytest the repository root can end up in
    front of the host on ``sys.path`` after ``import_host`` (seen in ``tests/world``). There a plain
    ``import nodes`` gave the host's module on 0.3.75 but the pack's folder on 0.33.
    """
    import_host()
    root = host_dir().resolve()
    module = sys.modules.get(name)
    if module is None:
        saved = list(sys.path)
        sys.path.insert(0, str(root))
        try:
            module = importlib.import_module(name)
        finally:
            sys.path[:] = saved
    where = Path(getattr(module, "__file__", "") or "").resolve()
    if not where.is_relative_to(root):
        raise ImportError(f"module {name!r} was already imported from {where}, not from the host at {root}")
    return module


PACK_MODULE = "perfusion_pack"
CORE_PACKAGE = "perfusion_core"


def _share_core(pack_module: str) -> None:
    """Make ``<pack>.perfusion_core`` (what the nodes import, relatively) the very modules that
    tests and tools import as ``perfusion_core``: one class per name, so that an error the nodes
    raise is the ``ConceptError`` a test catches, and a concept made by a tool is a ``Concept``
    to the nodes."""
    import importlib
    import pkgutil

    core = importlib.import_module(CORE_PACKAGE)
    sys.modules[f"{pack_module}.{CORE_PACKAGE}"] = core
    for info in pkgutil.iter_modules(core.__path__):
        module = importlib.import_module(f"{CORE_PACKAGE}.{info.name}")
        sys.modules[f"{pack_module}.{CORE_PACKAGE}.{info.name}"] = module


def import_pack() -> "ModuleType":
    """Import this repository as ComfyUI imports a custom node folder (a package), once.

    Our node package is ``<pack>.nodes``; it must never be imported as top-level
    ``nodes``, which is ComfyUI's own module.
    """
    import importlib.util

    import_host()
    if PACK_MODULE in sys.modules:
        return sys.modules[PACK_MODULE]
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    _share_core(PACK_MODULE)
    spec = importlib.util.spec_from_file_location(PACK_MODULE, REPO_ROOT / "__init__.py",
                                                  submodule_search_locations=[str(REPO_ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_MODULE] = module
    spec.loader.exec_module(module)
    return module
