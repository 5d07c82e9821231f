"""The `perfusion` model folder (models/perfusion plus any extra_model_paths.yaml entries)."""

from __future__ import annotations

import os
import unicodedata

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


MAX_NAME_CHARS = 150  # file names stay well under the usual 255-byte limit, suffixes included
# Counted in UTF-8 bytes too: 150 four-byte characters would pass the character limit and then
# fail at the final save (ENAMETOOLONG), after a whole training run. 200 leaves room for the
# "_step00000" / "_00001" suffixes, ".safetensors" and the temporary file's ".<name>.XXXXXXXX.tmp".
MAX_NAME_BYTES = 200


def name_problem(name: str, what: str, folders_allowed: bool = False) -> str | None:
    """Why ``name`` (a node input, already stripped) cannot name a file in the perfusion folder, or None.

    Checked before any work starts, so that a training run is never lost to a name the final save
    would refuse. Refused: control characters (NUL makes every file call raise ValueError; a newline
    splits the log and the UI's list), backslashes (a folder separator on Windows, a plain character
    on Linux, where it would slip past the reserved-folder check), empty, hidden or '..' parts, and
    the pack's own sub-folders. ``folders_allowed``: '/' separates sub-folders (the save node).
    """
    for ch in name:
        if unicodedata.category(ch).startswith("C"):
            return f"{what} {name!r} contains control character U+{ord(ch):04X}; use printable characters only"
    if "\\" in name:
        return f"{what} {name!r} contains a backslash; " + (
            "use '/' for sub-folders" if folders_allowed else "use a plain file name")
    parts = name.split("/")
    if not folders_allowed and (len(parts) > 1 or not name or name.startswith(".")):
        return f"{what} must be a plain file name without folders, got {name!r}"
    for part in parts:
        if part in ("", ".", "..") or part.startswith(".") or part != part.strip():
            return (f"{what} {name!r} has an empty, hidden (starting with '.'), '..' or space-padded "
                    "folder or file name")
    stem = parts[-1]
    if len(stem) > MAX_NAME_CHARS:
        return f"the file name in {what} is {len(stem)} characters long (at most {MAX_NAME_CHARS})"
    if len(stem.encode("utf-8")) > MAX_NAME_BYTES:
        return f"the file name in {what} is {len(stem.encode('utf-8'))} bytes long in UTF-8 (at most {MAX_NAME_BYTES})"
    if len(parts) > 1 and parts[0] in (STATISTICS_SUBFOLDER, TRAINING_SUBFOLDER):
        # Files there are hidden from the concept list (and offered as training checkpoints).
        return (f"{what} {name!r} is in the '{parts[0]}' sub-folder, which is reserved for the pack's own "
                "files; choose another name")
    return None


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
