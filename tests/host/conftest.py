"""In-process host fixtures: the pack imported the way ComfyUI imports a custom node folder."""

from __future__ import annotations

from types import ModuleType

import pytest

from harness.comfy_host import import_pack


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
