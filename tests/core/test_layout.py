"""The folders import each other in one direction only.

``harness/`` (host import, server, browser, random-weight models, workflow
format) is what tests, scripts, benchmarks and the world share; it imports
none of them. ``world/`` uses the harness but no script of ``tools/``;
scripts may use the world. The pack itself (the root package, ``nodes/``,
``perfusion_core/``) imports none of the development folders.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Not "nodes": that top-level name is ComfyUI's own module; our nodes/ is reached only through the
# imported pack (``<pack>.nodes``), never by absolute name.
FOLDERS = ("perfusion_core", "harness", "world", "tools", "bench", "tests")
# Which folders each one may import by absolute name; anything else is a wrong-way arrow.
ALLOWED: dict[str, set[str]] = {
    "perfusion_core": set(),
    "nodes": set(),  # uses perfusion_core relatively, as part of the pack
    "harness": {"perfusion_core"},
    "world": {"harness", "perfusion_core"},
    "tools": {"harness", "world", "perfusion_core"},
    "bench": {"harness", "world", "tools", "perfusion_core"},
    "tests": {"harness", "world", "tools", "bench", "perfusion_core"},
}


def imported_folders(path: Path) -> set[str]:
    """Our top-level folders that ``path`` imports by absolute name (anywhere in the file)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found |= {name.split(".")[0] for name in names} & set(FOLDERS)
    return found


def folder_imports() -> dict[str, dict[str, set[str]]]:
    """folder -> {file: folders it imports, other than its own}."""
    return {folder: {str(p.relative_to(REPO)): imported_folders(p) - {folder}
                     for p in sorted((REPO / folder).rglob("*.py"))} for folder in (*FOLDERS, "nodes")}


def test_every_folder_imports_only_downstream() -> None:
    wrong = [f"{file} imports {sorted(found - ALLOWED[folder])}"
             for folder, files in folder_imports().items() for file, found in files.items()
             if found - ALLOWED[folder]]
    assert not wrong, wrong


def test_the_allowed_arrows_have_no_circle() -> None:
    """The rule itself is a one-way order (so obeying it leaves no import circle between folders)."""
    order: list[str] = []
    remaining = dict(ALLOWED)
    while remaining:
        ready = [f for f, deps in remaining.items() if deps <= set(order)]
        assert ready, f"circle among {sorted(remaining)}"
        order += sorted(ready)
        for f in ready:
            del remaining[f]


def test_the_check_sees_a_wrong_way_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from tools.demo import run_demo\n    import world.model\n", encoding="utf-8")
    assert imported_folders(bad) == {"tools", "world"}
