"""Registry readiness: pyproject.toml as the Comfy registry reads it, the ruff rules its
validation runs, and the minimum ComfyUI version the pack declares and enforces."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
from PIL import Image

from perfusion_core.host_version import (MIN_COMFYUI_VERSION, comfyui_version_problem, host_comfyui_version,
                                         parse_version)

REPO = Path(__file__).resolve().parents[2]
# The registry's node-id rule: starts with a letter, then letters/digits with single - _ . separators, < 100 chars.
NODE_ID = re.compile(r"^[A-Za-z][A-Za-z0-9]*(?:[-_.][A-Za-z0-9]+)*$")
SEMVER = re.compile(r"^\d+\.\d+\.\d+$")
# What `comfy node validate` checks with ruff: exec (S102), eval (S307), `a; b` on one line (E702).
REGISTRY_RUFF_RULES = "S102,S307,E702"


@pytest.fixture(scope="module")
def config():
    """pyproject.toml parsed by the parser ComfyUI ships for the registry's format (comfy_config)."""
    from comfy_config import config_parser

    return config_parser.extract_node_configuration(str(REPO))


def test_project_fields_meet_the_registry_rules(config) -> None:
    project = config.project
    assert NODE_ID.match(project.name) and len(project.name) < 100, project.name
    assert "comfyui" not in project.name.lower()
    assert SEMVER.match(project.version), project.version
    assert project.description.strip()
    assert project.license.file and (REPO / project.license.file).is_file()
    assert re.match(r"^https://github\.com/[\w.-]+/[\w.-]+$", project.urls.repository), project.urls.repository
    assert project.supported_os == ["OS Independent"]


def test_comfy_section_is_complete(config) -> None:
    comfy = config.tool_comfy
    assert re.match(r"^[a-z0-9][a-z0-9-]*$", comfy.publisher_id), comfy.publisher_id
    assert comfy.display_name.strip()
    # The icon is a URL to docs/icon.png in the repository: the file must ship, square and small.
    repo = config.project.urls.repository.removeprefix("https://github.com/")
    prefix = f"https://raw.githubusercontent.com/{repo}/main/"
    assert comfy.icon.startswith(prefix), comfy.icon
    icon = REPO / comfy.icon.removeprefix(prefix)
    with Image.open(icon) as img:
        assert img.format == "PNG" and img.size[0] == img.size[1] <= 400


def test_minimum_comfyui_is_declared_where_the_registry_reads_it(config) -> None:
    assert config.project.supported_comfyui_version == f">={MIN_COMFYUI_VERSION}"
    assert f"ComfyUI {MIN_COMFYUI_VERSION} or newer" in (REPO / "README.md").read_text(encoding="utf-8")


def test_icon_file_is_what_the_script_draws() -> None:
    from tools.make_icon import ICON_PATH, draw_icon

    with Image.open(ICON_PATH) as shipped:
        assert shipped.convert("RGB").tobytes() == draw_icon().tobytes()


def project_python_paths() -> list[str]:
    """Top-level entries of the checkout that hold our Python code (hidden folders such as the
    virtual environment and the ComfyUI host are never ours)."""
    entries = sorted(p for p in REPO.iterdir() if not p.name.startswith(".") and not p.is_symlink())
    return [p.name for p in entries if (p.is_file() and p.suffix == ".py") or (p.is_dir() and any(p.rglob("*.py")))]


def test_registry_ruff_rules_pass() -> None:
    paths = project_python_paths()
    assert {"__init__.py", "nodes", "perfusion_core", "tools", "tests"} <= set(paths)
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--isolated",
                           "--select", REGISTRY_RUFF_RULES, *paths],
                          cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_would_catch_what_the_registry_rejects(tmp_path: Path) -> None:
    """The rule selection is live: a file with exec, eval and `a; b` fails it."""
    bad = tmp_path / "bad.py"
    bad.write_text("exec('x = 1')\ny = eval('2')\na = 1; b = 2\n", encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--isolated",
                           "--select", REGISTRY_RUFF_RULES, str(bad)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 1
    assert {"S102", "S307", "E702"} <= set(re.findall(r"\b(S102|S307|E702)\b", proc.stdout))


# ---------------------------------------------------------------------------- minimum host version

@pytest.mark.parametrize("found, too_old", [
    ("0.3.75", False), ("0.3.76", False), ("0.4.0", False), ("1.0", False), ("v0.3.80", False),
    ("0.3.75rc1", False), ("0.3.74", True), ("0.3.9", True), ("0.2.99", True), ("v0.3.10", True),
])
def test_version_check(found: str, too_old: bool) -> None:
    problem = comfyui_version_problem(found)
    assert (problem is not None) == too_old
    if too_old:
        assert f"ComfyUI {found} is too old" in problem and f"needs ComfyUI {MIN_COMFYUI_VERSION} or newer" in problem


@pytest.mark.parametrize("found", [None, "", "unknown", "main"])
def test_unknown_version_is_not_refused(found) -> None:
    assert comfyui_version_problem(found) is None


def test_versions_compare_numerically() -> None:
    assert parse_version("0.3.100") > parse_version("0.3.75") > parse_version("0.3.9")
    assert parse_version("0.10") == (0, 10, 0)


def test_the_tested_host_passes(pack) -> None:
    found = host_comfyui_version()
    assert found is not None and parse_version(found) >= parse_version(MIN_COMFYUI_VERSION)
    assert comfyui_version_problem(found) is None
    # V3 registration: ComfyUI calls comfy_entrypoint only when the module has no NODE_CLASS_MAPPINGS.
    assert not hasattr(pack, "NODE_CLASS_MAPPINGS")
    extension = asyncio.run(pack.comfy_entrypoint())
    nodes = asyncio.run(extension.get_node_list())
    assert {node.GET_SCHEMA().node_id for node in nodes} == set(pack.nodes.NODE_CLASS_MAPPINGS)
    assert "ApplyKeyLockedEdit" in pack.nodes.NODE_CLASS_MAPPINGS


def test_too_old_host_gets_a_clear_error_and_no_nodes(monkeypatch, caplog) -> None:
    """The root package imported as ComfyUI would, on a host that says it is 0.3.40."""
    monkeypatch.setitem(sys.modules, "comfyui_version", types.SimpleNamespace(__version__="0.3.40"))
    name = "perfusion_pack_on_old_host"
    spec = importlib.util.spec_from_file_location(name, REPO / "__init__.py", submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    path_before = list(sys.path)
    with caplog.at_level(logging.ERROR):
        spec.loader.exec_module(module)
    assert sys.path == path_before
    assert module.NODE_CLASS_MAPPINGS == {} and not hasattr(module, "comfy_entrypoint")
    assert f"{name}.nodes" not in sys.modules  # the node modules were not even imported
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("ComfyUI 0.3.40 is too old" in m and f"needs ComfyUI {MIN_COMFYUI_VERSION} or newer" in m
               for m in errors), errors


def test_the_pack_imports_itself_relatively() -> None:
    """What ComfyUI imports (the root package, nodes/, perfusion_core/) never edits sys.path and
    never imports its own folders by absolute name: another pack's ``import tools`` or
    ``import perfusion_core`` must not get ours."""
    runtime = [REPO / "__init__.py", *sorted((REPO / "nodes").glob("*.py")), *sorted((REPO / "perfusion_core").glob("*.py"))]
    absolute = re.compile(r"^\s*(from|import)\s+(perfusion_core|harness|tools|world|bench)\b", re.MULTILINE)
    for path in runtime:
        text = path.read_text(encoding="utf-8")
        assert "sys.path" not in text, path.name
        assert not absolute.search(text), f"{path.relative_to(REPO)}: {absolute.search(text).group(0).strip()}"
