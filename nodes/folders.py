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
TRAINING_SUBFOLDER = "training"  # resumable training checkpoints (not concepts)


def _in(subfolder: str, name: str) -> bool:
    return name.replace("\\", "/").startswith(subfolder + "/")


def concept_files() -> list[str]:
    """Concept files for the dropdown: everything in the folder except statistics and checkpoints."""
    import folder_paths

    return [name for name in folder_paths.get_filename_list(FOLDER)
            if not _in(STATISTICS_SUBFOLDER, name) and not _in(TRAINING_SUBFOLDER, name)]


def training_checkpoints() -> list[str]:
    """Resumable training checkpoints, as names relative to the perfusion folder."""
    import folder_paths

    return [name for name in folder_paths.get_filename_list(FOLDER) if _in(TRAINING_SUBFOLDER, name)]


def output_dir() -> str:
    """Where new concepts are written: the first (default) perfusion folder."""
    import folder_paths

    path = folder_paths.get_folder_paths(FOLDER)[0]
    os.makedirs(path, exist_ok=True)
    return path
