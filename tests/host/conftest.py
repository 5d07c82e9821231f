"""In-process host fixtures: the pack imported the way ComfyUI imports a custom node folder."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
PACK_MODULE = "perfusion_pack"


def import_pack() -> ModuleType:
    """Import the repository as a package (as custom_nodes/<folder>/__init__.py is)."""
    if PACK_MODULE in sys.modules:
        return sys.modules[PACK_MODULE]
    spec = importlib.util.spec_from_file_location(PACK_MODULE, REPO / "__init__.py",
                                                  submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_MODULE] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def pack() -> ModuleType:
    return import_pack()


@pytest.fixture(scope="session", autouse=True)
def perfusion_folder(tmp_path_factory, pack):
    """models/perfusion (concepts, cached statistics) in a temp dir for the whole session."""
    import folder_paths

    path = str(tmp_path_factory.mktemp("perfusion"))
    saved = folder_paths.folder_names_and_paths.get("perfusion")
    folder_paths.folder_names_and_paths["perfusion"] = ([path], {".safetensors"})
    yield path
    if saved is not None:
        folder_paths.folder_names_and_paths["perfusion"] = saved
