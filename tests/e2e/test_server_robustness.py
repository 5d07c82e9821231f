"""One real ComfyUI server against a corpus of bad inputs, then isolation checks.

Setup: the server makes a good concept (PerfusionWordEdit, saved), renders one
image with it (the reference), and the test writes every broken concept file
of the corpus into models/perfusion. Then each corpus case is POSTed to
/prompt and must fail at the expected node with a clear message and change
no file. After the whole corpus the same server must still render the
reference image bit for bit, and no file under models/ or output/ may have
changed. Last, isolation: prompts queued together match their solo runs, and
a training run cancelled with /interrupt leaves the server usable and the
existing concept files intact.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest

import graphs as g
from corpus_cases import CASES, CORPUS_DIR, Bait, Case, GoodFile
from harness.comfy_server import ComfyServer, PromptExecutionError, PromptValidationError
from tools.demo import install_file, install_training_images
from harness.random_models import cached_checkpoint
from harness.node_inputs import combo_choices

TIMEOUT = 300.0
# Python's generic exceptions: a node failing with one of these is a crash, not a checked input.
CRASH_TYPES = ("KeyError", "IndexError", "AttributeError", "TypeError", "RuntimeError", "AssertionError",
               "ZeroDivisionError", "UnboundLocalError", "NameError", "OSError", "FileNotFoundError")

Snapshot = dict[str, tuple[int, int, str]]


def snapshot(*roots: Path, digest: bool = True) -> Snapshot:
    """relative path -> (size, mtime_ns, sha256) of every file under ``roots`` (links followed)."""
    out: Snapshot = {}
    for root in roots:
        for folder, _, files in os.walk(root):
            for name in files:
                path = Path(folder) / name
                st = path.stat()
                sha = hashlib.sha256(path.read_bytes()).hexdigest() if digest else ""
                out[str(path.relative_to(root.parent))] = (st.st_size, st.st_mtime_ns, sha)
    return out


def changes(before: Snapshot, after: Snapshot) -> dict[str, list[str]]:
    return {"removed": sorted(set(before) - set(after)), "added": sorted(set(after) - set(before)),
            "modified": sorted(k for k in before.keys() & after.keys() if before[k] != after[k])}


def pixels(server: ComfyServer, history: dict[str, Any]) -> np.ndarray:
    images = server.images(history)
    assert len(images) == 1
    return np.asarray(images[0].convert("RGB"))


def fresh_caches(server: ComfyServer) -> None:
    """Drop the server's node caches: the worker applies the flags after its current item,
    so once a trivial prompt queued after them has finished, the next prompt runs from scratch."""
    server.free(unload_models=False, free_memory=True)
    server.run(g.trivial(), timeout=60)


def failure(server: ComfyServer, prompt: g.Prompt) -> tuple[str, str, str]:
    """(node class, exception type or 'validation', message) of a prompt that must fail."""
    try:
        history = server.run(prompt, timeout=TIMEOUT)
    except PromptValidationError as err:
        found = [(info.get("class_type", "?"), f"{e.get('message', '')}: {e.get('details', '')}")
                 for info in err.node_errors.values() for e in info.get("errors", [])]
        assert found, f"rejected without node errors: {err}"
        return found[0][0], "validation", found[0][1]
    except PromptExecutionError as err:
        return str(err.node_type), err.exception_type, err.exception_message
    pytest.fail(f"the prompt succeeded: {history.get('outputs')}")


@dataclass
class Lab:
    server: ComfyServer
    good: GoodFile
    reference: np.ndarray  # the good render, solo, before the corpus
    baseline: Snapshot  # models/ and output/ once the corpus files are in place

    @property
    def watched(self) -> tuple[Path, Path]:
        return self.server.models_dir, self.server.output_dir

    def markers(self) -> list[Path]:
        return sorted(self.good.marker_dir.glob("UNPICKLED_*"))


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with ComfyServer() as srv:
        assert srv.pack_loaded(), srv.pack_error()
        install_file(cached_checkpoint("sd1", "tiny", seed=0), srv.models_dir / "checkpoints" / g.wf.CHECKPOINT)
        install_training_images(srv.input_dir)
        history = srv.run(g.word_edit(save_as=Path(g.GOOD_CONCEPT).stem), timeout=TIMEOUT)
        saved = [name for out in history["outputs"].values() for name in out.get("text", [])]
        assert saved == [g.GOOD_CONCEPT]
        perfusion = srv.models_dir / "perfusion"
        good = GoodFile((perfusion / g.GOOD_CONCEPT).read_bytes(), srv.work_dir)
        for case in CASES:
            if case.writer is not None:
                path = perfusion / case.path
                path.parent.mkdir(parents=True, exist_ok=True)
                case.writer(path, good)
        reference = pixels(srv, srv.run(g.render(save="reference"), timeout=TIMEOUT))
        yield Lab(srv, good, reference, snapshot(srv.models_dir, srv.output_dir))


# ---------------------------------------------------------------------------- the corpus

def test_corpus_is_large_and_well_formed() -> None:
    assert len(CASES) >= 30
    names = [c.name for c in CASES]
    assert len(names) == len(set(names))
    assert all((c.graph is None) != (c.writer is None) or c.file for c in CASES)


def test_pickle_bait_really_runs_when_unpickled(tmp_path: Path) -> None:
    """The corpus's pickles are live: unpickling one creates its marker file."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(Bait(marker), protocol=4))  # noqa: S301 (our own bait, on purpose)
    assert marker.exists()


def test_corrupt_files_are_listed_for_the_loader(lab: Lab) -> None:
    """ComfyUI rescans models/perfusion: the dropdown offers every file the test wrote."""
    info = lab.server.object_info("LoadPerfusionConcept")["LoadPerfusionConcept"]
    listed = set(combo_choices(info, "concept_name"))
    expected = {c.path for c in CASES if c.writer is not None and c.path.startswith(CORPUS_DIR + "/")}
    assert expected <= listed, sorted(expected - listed)
    resumable = combo_choices(lab.server.object_info("TrainPerfusion")["TrainPerfusion"], "resume_from")
    assert {c.path for c in CASES if c.path.startswith("training/")} <= set(resumable)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_refused_clearly(lab: Lab, case: Case) -> None:
    before = snapshot(*lab.watched, digest=False)
    node, kind, message = failure(lab.server, case.prompt())
    print(f"\n{case.name}: [{node}, {kind}] {message}")
    assert node == case.node, f"failed at {node} ({kind}: {message}), expected {case.node}"
    assert re.search(case.message, message), f"{message!r} does not match {case.message!r}"
    assert not kind.endswith(CRASH_TYPES), f"{case.node} crashed with {kind}: {message}"
    assert "Traceback" not in message
    assert changes(before, snapshot(*lab.watched, digest=False)) == {"removed": [], "added": [], "modified": []}
    assert lab.markers() == [], "a concept file was unpickled"
    assert lab.server.running


def test_after_the_corpus_the_server_is_unchanged(lab: Lab) -> None:
    """Same server: nothing under models/ or output/ touched, and the good render is bit-identical."""
    assert lab.server.running
    assert lab.markers() == []
    assert changes(lab.baseline, snapshot(*lab.watched)) == {"removed": [], "added": [], "modified": []}
    fresh_caches(lab.server)  # recompute everything instead of reusing the cached reference
    history = lab.server.run(g.render(save="after_corpus"), timeout=TIMEOUT)
    np.testing.assert_array_equal(pixels(lab.server, history), lab.reference)
    diff = changes(lab.baseline, snapshot(*lab.watched))
    assert diff["removed"] == [] and diff["modified"] == []
    assert [Path(p).name for p in diff["added"]] == ["after_corpus_00001_.png"]
    assert all(p.startswith("output/") for p in diff["added"])


# ---------------------------------------------------------------------------- isolation

GATES: dict[str, dict[str, Any]] = {
    "beta_low": g.gate_inputs(beta=0.3),
    "beta_high_soft": g.gate_inputs(beta=0.9, tau=0.4),
    "strength_zero": g.gate_inputs(strength=0.0),
    "late_global": g.gate_inputs(start_percent=0.5, lock_mode="global", beta=0.5),
}


def test_queued_prompts_match_their_solo_runs(lab: Lab) -> None:
    server = lab.server
    solo = {name: pixels(server, server.run(g.render(gate=gate), timeout=TIMEOUT)) for name, gate in GATES.items()}
    distinct = {arr.tobytes() for arr in solo.values()}
    assert len(distinct) == len(GATES), "the gate settings must give different images for this test to mean anything"
    fresh_caches(server)
    order = list(reversed(GATES))  # another order than the solo runs, all queued before the first finishes
    ids = {name: server.queue(g.render(gate=GATES[name])) for name in order}
    for name, prompt_id in ids.items():
        np.testing.assert_array_equal(pixels(server, server.wait(prompt_id, timeout=TIMEOUT)), solo[name],
                                      err_msg=f"{name}: queued with others differs from its solo run")


def wait_until(ready: Callable[[], bool], server: ComfyServer, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert server.running, "server died"
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout:.0f} s"
        time.sleep(0.1)


def cancel_training(server: ComfyServer, output_name: str, ready: Callable[[], bool], what: str) -> float:
    """Queue a long TrainPerfusion run, POST /interrupt once ``ready()``; seconds until it stopped."""
    prompt_id = server.queue(g.train(steps=5000, output_name=output_name, checkpoint_every=1))
    wait_until(ready, server, what, timeout=300)
    t0 = time.monotonic()
    server.interrupt()
    with pytest.raises(PromptExecutionError, match="interrupted"):
        server.wait(prompt_id, timeout=120)
    return time.monotonic() - t0


def test_cancelled_training_leaves_server_and_concepts_intact(lab: Lab) -> None:
    server = lab.server
    perfusion = server.models_dir / "perfusion"
    before = snapshot(perfusion)
    # 1. Cancel while the text-encoder statistics are being estimated: stops at the next
    #    encoder call and leaves nothing behind (no half-made statistics, no concept).
    start = len(server.log_text())
    seconds = cancel_training(server, "cancelled_early",
                              lambda: "estimating the text-encoder statistics" in server.log_text()[start:],
                              "the statistics estimate")
    print(f"\ncancel during the statistics estimate took effect after {seconds:.1f} s")
    assert changes(before, snapshot(perfusion)) == {"removed": [], "added": [], "modified": []}
    # 2. Cancel in the training loop, once the first step's checkpoint is written: keeps the
    #    resumable checkpoint and a usable partial concept, by design, and nothing else changes.
    state = perfusion / "training" / "cancelled_run.safetensors"
    cancel_training(server, "cancelled_run", state.exists, "the first training step")
    diff = changes(before, snapshot(perfusion))
    assert diff["removed"] == [] and diff["modified"] == [], diff
    kept = sorted(p for p in diff["added"] if "/statistics/" not in p)
    assert len(kept) == 2, kept
    assert re.fullmatch(r"perfusion/cancelled_run_step\d{5}\.safetensors", kept[0]), kept
    assert kept[1] == "perfusion/training/cancelled_run.safetensors", kept
    # The next prompt runs normally and renders exactly what it rendered before.
    history = server.run(g.render(), timeout=TIMEOUT)
    np.testing.assert_array_equal(pixels(server, history), lab.reference)
