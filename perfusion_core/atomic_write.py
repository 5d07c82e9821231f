"""Writing a file so that a reader finds its old content or the complete new one, never a part.

Concept files, statistics and training checkpoints are all written this way:
an interrupted save (full disk, crash, Ctrl-C) must not leave a truncated file
that a later run would take for a good one, nor a temporary file behind.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


class DestinationExists(FileExistsError):
    """``overwrite`` was False and the destination exists (or was taken during the write)."""


def write_atomic(path: str | os.PathLike[str], data: bytes, *, overwrite: bool) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, renamed into place.

    Missing parent folders are created. The temporary file (``.<name>.XXXXXXXX.tmp``,
    which folder listings hide) is fsynced before the rename and removed on every way
    out, exceptions and interrupts included. Without ``overwrite`` the existing file
    is kept and DestinationExists raised. Any other failure raises its own OSError
    (or ValueError, for a name with a NUL byte) and leaves ``path`` as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            _link_if_free(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # after a link the temporary name is still there; after a replace it is not
    _fsync_dir(path.parent)


def _link_if_free(tmp: Path, path: Path) -> None:
    """Give ``tmp`` the name ``path`` unless that name is taken.

    A hard link fails if the name was taken meanwhile, so there is no window between
    checking and renaming in which another writer's file could be replaced. File
    systems without hard links fall back to a checked os.replace.
    """
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise DestinationExists(f"{path.name}: already exists") from None
    except OSError:
        if path.exists():
            raise DestinationExists(f"{path.name}: already exists") from None
        os.replace(tmp, path)


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable where the OS allows it (not on Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def unique_path(path: str | Path) -> Path:
    """``path`` if nothing exists there yet, else ``<stem>_00001<suffix>``, ``_00002``, ...

    For callers that want "never overwrite, pick a new name". Another writer
    may still take the name before we do; a write without ``overwrite`` then
    refuses instead of clobbering, so the caller can simply ask again.
    """
    path = Path(path)
    if not path.exists():
        return path
    for counter in range(1, 100_000):
        candidate = path.with_name(f"{path.stem}_{counter:05d}{path.suffix}")
        if not candidate.exists():
            return candidate
    raise DestinationExists(f"{path.name}: no free name left (tried {path.stem}_00001 to _99999)")
