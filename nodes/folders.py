"""The `perfusion` model folder (models/perfusion plus any extra_model_paths.yaml entries)."""

from __future__ import annotations

import os

FOLDER = "perfusion"
EXTENSIONS = {".safetensors"}


def register() -> None:
    """Add models/perfusion as the default location, keeping paths that
    extra_model_paths.yaml already registered, and list only safetensors."""
    import folder_paths

    folder_paths.add_model_folder_path(FOLDER, os.path.join(folder_paths.models_dir, FOLDER), is_default=True)
    paths, _ = folder_paths.folder_names_and_paths[FOLDER]
    folder_paths.folder_names_and_paths[FOLDER] = (paths, set(EXTENSIONS))


STATISTICS_SUBFOLDER = "statistics"  # cached text-encoder statistics live beside the concepts


def concept_files() -> list[str]:
    """Concept files for the dropdown: everything in the folder except the statistics cache."""
    import folder_paths

    return [name for name in folder_paths.get_filename_list(FOLDER)
            if not name.replace("\\", "/").startswith(STATISTICS_SUBFOLDER + "/")]


def output_dir() -> str:
    """Where new concepts are written: the first (default) perfusion folder."""
    import folder_paths

    path = folder_paths.get_folder_paths(FOLDER)[0]
    os.makedirs(path, exist_ok=True)
    return path
