"""Fixtures shared by the core tests."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest


@pytest.fixture
def fail_write_at(monkeypatch: pytest.MonkeyPatch) -> Callable[[str, BaseException], None]:
    """Arms a failure of every later file write at one stage: "write" (half the bytes reach the
    file, then ``error``, like a full disk), "fsync", or "rename" (os.replace and os.link)."""
    real_fdopen = os.fdopen

    def arm(where: str, error: BaseException) -> None:
        class HalfWriter:
            def __init__(self, fd: int, mode: str) -> None:
                self.handle = real_fdopen(fd, mode)

            def __enter__(self) -> "HalfWriter":
                return self

            def __exit__(self, *exc: object) -> None:
                self.handle.close()

            def write(self, data: bytes) -> int:
                self.handle.write(data[: len(data) // 2])
                self.handle.flush()
                raise error

        def fail(*args: object, **kwargs: object) -> None:
            raise error

        if where == "write":
            monkeypatch.setattr(os, "fdopen", HalfWriter)
        elif where == "fsync":
            monkeypatch.setattr(os, "fsync", fail)
        elif where == "rename":
            monkeypatch.setattr(os, "replace", fail)
            monkeypatch.setattr(os, "link", fail)
        else:
            raise ValueError(f"unknown stage {where!r}")

    return arm
