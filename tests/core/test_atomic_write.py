"""The one atomic file write that concept files, statistics and training checkpoints share."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from perfusion_core.atomic_write import DestinationExists, write_atomic


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("overwrite", [False, True])
def test_writes_new_file_and_creates_missing_folders(tmp_path: Path, overwrite: bool) -> None:
    target = tmp_path / "a" / "b" / "new.bin"
    write_atomic(target, b"payload", overwrite=overwrite)
    assert target.read_bytes() == b"payload"
    assert names(target.parent) == ["new.bin"]  # no temporary file left next to it


def test_overwrite_replaces_the_whole_content(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    target.write_bytes(b"a much longer previous content")
    write_atomic(str(target), b"short", overwrite=True)  # a plain string path works too
    assert target.read_bytes() == b"short"
    assert names(tmp_path) == ["f.bin"]


def test_without_overwrite_an_existing_file_is_kept(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    target.write_bytes(b"someone else's")
    with pytest.raises(DestinationExists, match="f.bin: already exists"):
        write_atomic(target, b"ours", overwrite=False)
    assert target.read_bytes() == b"someone else's"
    assert names(tmp_path) == ["f.bin"]


def test_name_taken_during_the_write_is_not_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check happens at the rename itself: a file that appears after the temporary file was
    written (another writer) survives."""
    target = tmp_path / "f.bin"
    real_fsync = os.fsync

    def other_writer_wins(fd: int) -> None:
        real_fsync(fd)
        if not target.exists():
            target.write_bytes(b"theirs")

    monkeypatch.setattr(os, "fsync", other_writer_wins)
    with pytest.raises(DestinationExists):
        write_atomic(target, b"ours", overwrite=False)
    assert target.read_bytes() == b"theirs"
    assert names(tmp_path) == ["f.bin"]


@pytest.mark.parametrize("taken", [False, True])
def test_file_systems_without_hard_links_fall_back_to_a_checked_replace(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, taken: bool) -> None:
    def no_links(*args: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    target = tmp_path / "f.bin"
    if taken:
        target.write_bytes(b"old")
        with pytest.raises(DestinationExists):
            write_atomic(target, b"new", overwrite=False)
        assert target.read_bytes() == b"old"
    else:
        write_atomic(target, b"new", overwrite=False)
        assert target.read_bytes() == b"new"
    assert names(tmp_path) == ["f.bin"]


@pytest.mark.parametrize("error", [OSError(5, "Input/output error"), KeyboardInterrupt()])
@pytest.mark.parametrize("where", ["write", "fsync", "rename"])
@pytest.mark.parametrize("existed", [False, True])
def test_a_failed_write_leaves_the_old_content_and_no_temporary_file(
        tmp_path: Path, fail_write_at: Callable[[str, BaseException], None], where: str, existed: bool,
        error: BaseException) -> None:
    target = tmp_path / "f.bin"
    if existed:
        target.write_bytes(b"old")
    fail_write_at(where, error)
    # The caller's own error comes through unchanged (callers word their messages from it).
    with pytest.raises(type(error)) as raised:
        write_atomic(target, b"new content", overwrite=True)
    assert raised.value is error
    assert names(tmp_path) == (["f.bin"] if existed else [])
    if existed:
        assert target.read_bytes() == b"old"


def test_a_folder_that_cannot_be_made_is_not_mistaken_for_a_taken_name(tmp_path: Path) -> None:
    """mkdir onto a file raises FileExistsError too; callers refusing to overwrite must not read
    that as 'the destination exists'."""
    (tmp_path / "blocker").write_bytes(b"")
    with pytest.raises(FileExistsError) as raised:
        write_atomic(tmp_path / "blocker" / "f.bin", b"x", overwrite=False)
    assert not isinstance(raised.value, DestinationExists)
    assert names(tmp_path) == ["blocker"]


def test_a_nul_byte_in_the_name_raises_value_error_and_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_atomic(tmp_path / "a\0b.bin", b"x", overwrite=True)
    assert names(tmp_path) == []
