"""Concept file format v1: round trip, atomic no-clobber writes, a corpus of bad
files (each must be refused with a message naming the file and the problem),
compatibility checks and on-disk size budgets."""

from __future__ import annotations

import dataclasses
import json
import pickle
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as st_save

from perfusion_core import concept_file as cf
from perfusion_core.concept import Concept, ConceptError, Gate, TextEncoderId
from perfusion_core.concept_checks import check_compatible
from perfusion_core.atomic_write import unique_path
from perfusion_core.concept_file import load_concept, save_concept

# ----------------------------------------------------------------------------- synthetic concepts

SD15_LAYERS: dict[str, int] = {
    **{f"input_blocks.{b}.1.transformer_blocks.0.attn2": w for b, w in ((1, 320), (2, 320), (4, 640), (5, 640),
                                                                       (7, 1280), (8, 1280))},
    "middle_block.1.transformer_blocks.0.attn2": 1280,
    **{f"output_blocks.{b}.1.transformer_blocks.0.attn2": w
       for b, w in zip(range(3, 12), (1280,) * 3 + (640,) * 3 + (320,) * 3)},
}


def _sdxl_layers() -> dict[str, int]:
    """SDXL: 70 attn2 layers (blocks with 2 or 10 transformer blocks), widths 640/1280."""
    blocks = [("input_blocks.4.1", 640, 2), ("input_blocks.5.1", 640, 2), ("input_blocks.7.1", 1280, 10),
              ("input_blocks.8.1", 1280, 10), ("middle_block.1", 1280, 10)]
    blocks += [(f"output_blocks.{b}.1", 1280, 10) for b in range(3)]
    blocks += [(f"output_blocks.{b}.1", 640, 2) for b in range(3, 6)]
    return {f"{blk}.transformer_blocks.{t}.attn2": w for blk, w, n in blocks for t in range(n)}


SDXL_LAYERS = _sdxl_layers()


def make_concept(layers: dict[str, int] | None = None, dim: int = 64, family: str = "sd1",
                 embeddings: dict[str, int] | None = None, sets: int = 1, seed: int = 0) -> Concept:
    g = torch.Generator().manual_seed(seed)
    layers = layers if layers is not None else {"down.attn2": 32, "mid.attn2": 48}
    embeddings = embeddings if embeddings is not None else {"l": 24}
    i_star = torch.randn(dim, generator=g)
    u = i_star * 0.5 + 0.01 * torch.randn(dim, generator=g)  # E = u.i* clearly positive
    return Concept(
        trigger="sks", superclass="teddy bear", family=family, text_encoder=TextEncoderId("clip-l", -2),
        i_star=i_star, u=u, i_super=torch.randn(dim, generator=g),
        v_targets={k: torch.randn(sets, w, generator=g) for k, w in layers.items()},
        embeddings={k: torch.randn(d, generator=g) for k, d in embeddings.items()},
        gate=Gate(beta=0.65, tau=0.2, strength=0.9, start_percent=0.1, end_percent=0.8, lock="global"),
        statistics="sd15-clip-l-skip2-v1", training={"steps": 400, "lr": {"v": 0.03}, "note": "unit test"})


def assert_same(a: Concept, b: Concept, atol: float) -> None:
    for field in ("trigger", "superclass", "family", "text_encoder", "gate", "statistics", "training"):
        assert getattr(a, field) == getattr(b, field), field
    for key in ("i_star", "u", "i_super"):
        assert torch.equal(getattr(a, key), getattr(b, key)), key  # always stored in float32
    for group in ("v_targets", "embeddings"):
        ga, gb = getattr(a, group), getattr(b, group)
        assert list(ga) == list(gb)
        for key in ga:
            assert gb[key].dtype == torch.float32 and gb[key].device.type == "cpu"
            torch.testing.assert_close(gb[key], ga[key], atol=atol, rtol=atol)


# ----------------------------------------------------------------------------- round trip

def test_round_trip_float32_is_exact(tmp_path: Path) -> None:
    concept = make_concept(sets=2)
    path = save_concept(concept, tmp_path / "c.safetensors", dtype=torch.float32)
    assert_same(concept, load_concept(path), atol=0.0)


@pytest.mark.parametrize("dtype, atol", [(torch.float16, 4e-3), (torch.bfloat16, 3e-2)])
def test_round_trip_half_precision(tmp_path: Path, dtype: torch.dtype, atol: float) -> None:
    concept = make_concept(family="sdxl", embeddings={"l": 16, "g": 24})
    loaded = load_concept(save_concept(concept, tmp_path / "c.safetensors", dtype=dtype))
    assert_same(concept, loaded, atol=atol)
    assert loaded.timestep_sets == 1 and loaded.layer_dims == concept.layer_dims


def test_word_edit_without_embeddings_round_trips(tmp_path: Path) -> None:
    concept = make_concept(embeddings={})
    assert load_concept(save_concept(concept, tmp_path / "w.safetensors")).embeddings == {}


def test_metadata_is_documented_json(tmp_path: Path) -> None:
    path = save_concept(make_concept(), tmp_path / "c.safetensors")
    (header_len,) = struct.unpack("<Q", path.read_bytes()[:8])
    header = json.loads(path.read_bytes()[8:8 + header_len])
    assert set(header["__metadata__"]) == {"perfusion"}
    meta = json.loads(header["__metadata__"]["perfusion"])
    assert meta["format_version"] == 1 and meta["dtype"] == "float16"
    assert meta["defaults"] == {"beta": 0.65, "tau": 0.2, "strength": 0.9, "start_percent": 0.1,
                                "end_percent": 0.8, "lock": "global"}
    assert meta["text_encoder"] == {"name": "clip-l", "layer": -2}
    assert header["i_star"]["dtype"] == header["u"]["dtype"] == "F32"
    assert header["v_target.down.attn2"]["dtype"] == "F16"


# ----------------------------------------------------------------------------- writing safely

def test_refuses_to_overwrite_and_unique_path_picks_new_names(tmp_path: Path) -> None:
    target = tmp_path / "cat.safetensors"
    assert unique_path(target) == target
    save_concept(make_concept(seed=1), target)
    original = target.read_bytes()
    with pytest.raises(ConceptError, match=r"^cat\.safetensors: already exists; refusing to overwrite"):
        save_concept(make_concept(seed=2), target)
    assert target.read_bytes() == original
    second = unique_path(target)
    assert second.name == "cat_00001.safetensors"
    save_concept(make_concept(seed=2), second)
    assert unique_path(target).name == "cat_00002.safetensors"
    save_concept(make_concept(seed=3), target, overwrite=True)
    assert target.read_bytes() != original


def test_no_clobber_holds_even_if_the_name_is_taken_during_the_write(tmp_path: Path) -> None:
    target = tmp_path / "race.safetensors"
    target.write_bytes(b"someone else's file")
    with pytest.raises(ConceptError, match="already exists"):
        cf._write_atomic(target, b"ours", overwrite=False)
    assert target.read_bytes() == b"someone else's file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["race.safetensors"]


@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("where", ["write", "fsync", "rename"])
def test_crash_mid_write_leaves_no_partial_file(tmp_path: Path, fail_write_at: Callable[[str, BaseException], None],
                                                where: str, overwrite: bool) -> None:
    target = tmp_path / "crash.safetensors"
    if overwrite:
        target.write_bytes(b"previous version")
    fail_write_at(where, OSError(28, "No space left on device"))
    with pytest.raises(ConceptError, match=r"^crash\.safetensors: could not write the file"):
        save_concept(make_concept(), target, overwrite=overwrite)
    expected = ["crash.safetensors"] if overwrite else []
    assert sorted(p.name for p in tmp_path.iterdir()) == expected  # no temp file left behind
    if overwrite:
        assert target.read_bytes() == b"previous version"


def test_save_creates_missing_directories(tmp_path: Path) -> None:
    path = save_concept(make_concept(), tmp_path / "a" / "b" / "c.safetensors")
    assert load_concept(path).trigger == "sks"


@pytest.mark.parametrize("change, message", [
    (dict(trigger=" "), "trigger is empty"),
    (dict(trigger="two words"), "contains whitespace"),
    (dict(family="sd3"), "unknown base family 'sd3'"),
    (dict(u=None), "energy E = u . i* is"),
    (dict(v_targets={}), "no value targets"),
    (dict(training={"bad": object()}), "not plain JSON"),
    (dict(training={"blob": "x" * 70_000}), "metadata is"),
])
def test_save_refuses_invalid_concepts(tmp_path: Path, change: dict, message: str) -> None:
    concept = make_concept()
    if "u" in change:
        change = dict(u=-concept.i_star)
    bad = dataclasses.replace(concept, **change)
    with pytest.raises(ConceptError, match=r"^bad\.safetensors: cannot save concept: ") as err:
        save_concept(bad, tmp_path / "bad.safetensors")
    assert message in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_save_refuses_values_past_the_fp16_bound_in_any_dtype_and_unsupported_dtypes(tmp_path: Path) -> None:
    """1e6 fits float32, but would overflow an fp16 model at inference: refused whatever the file dtype."""
    concept = make_concept()
    big = dataclasses.replace(concept, v_targets={"x.attn2": torch.full((1, 8), 1e6)})
    for dtype in (torch.float16, torch.float32):
        with pytest.raises(ConceptError, match=r"tensor 'v_target\.x\.attn2' has values up to 1e\+06 \(at most 1000"):
            save_concept(big, tmp_path / "big.safetensors", dtype=dtype)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ConceptError, match=r"^c\.safetensors: cannot save in torch\.float64"):
        save_concept(concept, tmp_path / "c.safetensors", dtype=torch.float64)


# ----------------------------------------------------------------------------- corpus of bad files

def good_parts(dtype: torch.dtype = torch.float16) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and metadata of a valid file, ready to be broken."""
    c = make_concept()
    tensors = {"i_star": c.i_star, "u": c.u, "i_super": c.i_super}
    tensors.update({f"v_target.{k}": v.to(dtype) for k, v in c.v_targets.items()})
    tensors.update({f"embedding.{k}": v.to(dtype) for k, v in c.embeddings.items()})
    return tensors, cf._metadata(c, "float16" if dtype == torch.float16 else "float32")


def write_parts(path: Path, tensors: dict[str, torch.Tensor], meta: object) -> Path:
    text = meta if isinstance(meta, str) else json.dumps(meta)
    path.write_bytes(st_save({k: v.contiguous() for k, v in tensors.items()}, metadata={"perfusion": text}))
    return path


def broken(edit: Callable[[dict[str, torch.Tensor], dict], object]) -> Callable[[Path], Path]:
    """Builder of a file whose parts were changed by ``edit`` (may return replacement metadata)."""
    def build(path: Path) -> Path:
        tensors, meta = good_parts()
        replaced = edit(tensors, meta)
        return write_parts(path, tensors, meta if replaced is None else replaced)
    return build


def raw(data: bytes) -> Callable[[Path], Path]:
    def build(path: Path) -> Path:
        path.write_bytes(data)
        return path
    return build


def good_bytes() -> bytes:
    tensors, meta = good_parts()
    return st_save(tensors, metadata={"perfusion": json.dumps(meta)})


def _torch_zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"state_dict": {}}))
    return path


def _sparse_huge(path: Path) -> Path:
    with path.open("wb") as handle:
        handle.truncate(65 * 1024 * 1024)  # sparse: costs no disk
    return path


def _header_only(header: dict) -> bytes:
    body = json.dumps(header).encode()
    return struct.pack("<Q", len(body)) + body


def _setitem(container: dict, key: str, value: object) -> None:
    container[key] = value


def _pop(container: dict, key: str) -> None:
    del container[key]


BAD_FILES: list[tuple[str, Callable[[Path], Path], str]] = [
    ("missing", lambda p: p, "file not found"),
    ("directory", lambda p: (p.mkdir(), p)[1], "not a file"),
    ("too-large", _sparse_huge, "a concept file is at most 64 MiB"),
    ("empty", raw(b""), "not a safetensors file: only 0 bytes"),
    ("text", raw(b"this is a text file, not tensors at all"), "the header length field exceeds the 256 KiB limit"),
    ("pickle", raw(pickle.dumps({"emb": [1.0, 2.0]}, protocol=4)), "pickled PyTorch file"),
    ("pickle-proto2", raw(pickle.dumps([0.5], protocol=2)), "refusing to open it (pickles can run arbitrary code)"),
    ("torch-zip", _torch_zip, "pickled PyTorch file"),
    ("gigantic-header", raw(struct.pack("<Q", 2**40) + b"{}"), "exceeds the 256 KiB limit"),
    ("truncated-header", lambda p: raw(good_bytes()[:40])(p), "truncated: the header length field claims more bytes than the file's 40"),
    ("truncated-data", lambda p: raw(good_bytes()[:-50])(p), "truncated: tensor data should be"),
    ("header-not-utf8", raw(struct.pack("<Q", 6) + b"\xff{x!]]"), "header is not UTF-8 text"),
    ("header-not-json", raw(struct.pack("<Q", 6) + b"{x!]]]"), "header is not valid JSON"),
    ("header-not-object", raw(_header_only([1, 2])), "expected a JSON object"),  # type: ignore[arg-type]
    ("no-metadata", raw(st_save({"lora_up.weight": torch.zeros(4, 4)})), "no 'perfusion' metadata"),
    ("other-metadata", raw(st_save({"x": torch.zeros(2)}, metadata={"ss_network": "lora"})),
     "not a Perfusion concept"),
    ("metadata-not-json", broken(lambda t, m: "{format_version: 1"), "'perfusion' metadata is not valid JSON"),
    ("metadata-nan", broken(lambda t, m: json.dumps(m).replace("0.65", "NaN")), "NaN is not allowed"),
    ("metadata-list", broken(lambda t, m: [m]), "metadata must be a JSON object, got list"),
    ("metadata-huge", broken(lambda t, m: _setitem(m["training"], "log", "x" * 70_000)),
     "the limit is 64 KiB"),
    ("no-version", broken(lambda t, m: _pop(m, "format_version")), "'format_version' is missing"),
    ("version-string", broken(lambda t, m: _setitem(m, "format_version", "1")),
     "'format_version' must be an integer, got '1'"),
    ("version-future", broken(lambda t, m: _setitem(m, "format_version", 2)),
     "format_version 2 was made by a newer version of this pack"),
    ("version-zero", broken(lambda t, m: _setitem(m, "format_version", 0)), "format_version 0 is not valid"),
    ("field-missing", broken(lambda t, m: _pop(m, "superclass")), "metadata field(s) missing: superclass"),
    ("field-unknown", broken(lambda t, m: _setitem(m, "colour", "red")), "unknown metadata field(s): colour"),
    ("unknown-family", broken(lambda t, m: _setitem(m, "family", "sd3")), "unknown base family 'sd3'"),
    ("context-dim-string", broken(lambda t, m: _setitem(m, "context_dim", "64")),
     "'context_dim' must be a positive integer, got str"),
    ("sets-bool", broken(lambda t, m: _setitem(m, "timestep_sets", True)),
     "'timestep_sets' must be a positive integer"),
    ("encoder-layer-string", broken(lambda t, m: _setitem(m["text_encoder"], "layer", "-2")),
     "'text_encoder.layer' must be an integer or null"),
    ("statistics-empty", broken(lambda t, m: _setitem(m, "statistics", "")), "'statistics' must be a non-empty"),
    ("layers-empty", broken(lambda t, m: _setitem(m, "layers", {})), "'layers' must be a non-empty object"),
    ("layer-width-zero", broken(lambda t, m: _setitem(m["layers"], "mid.attn2", 0)),
     "layer 'mid.attn2' width 0"),
    ("training-list", broken(lambda t, m: _setitem(m, "training", [])), "'training' must be an object"),
    ("dtype-unknown", broken(lambda t, m: _setitem(m, "dtype", "float64")), "'dtype' must be one of"),
    ("trigger-blank", broken(lambda t, m: _setitem(m, "trigger", "   ")), "trigger is empty or only whitespace"),
    ("trigger-spaces", broken(lambda t, m: _setitem(m, "trigger", "my cat")),
     "trigger 'my cat' cannot be a prompt word: it contains whitespace"),
    ("trigger-syntax", broken(lambda t, m: _setitem(m, "trigger", "(sks:1.2)")),
     "prompt-syntax character '('"),
    ("trigger-control", broken(lambda t, m: _setitem(m, "trigger", "sk\x00s")), "control character U+0000"),
    ("trigger-number", broken(lambda t, m: _setitem(m, "trigger", 7)), "trigger must be a string, got int"),
    ("superclass-tab", broken(lambda t, m: _setitem(m, "superclass", "teddy\tbear")),
     "superclass 'teddy\\tbear' cannot be a prompt word"),
    ("embedding-wrong-encoder", broken(lambda t, m: (_setitem(m["embeddings"], "g", 24),
                                                     _setitem(t, "embedding.g", torch.zeros(24)))[-1]),
     "embedding key 'g' does not exist for SD1.x"),
    ("tau-zero", broken(lambda t, m: _setitem(m["defaults"], "tau", 0)), "default gate tau must be > 0, got 0.0"),
    ("window-reversed", broken(lambda t, m: m["defaults"].update(start_percent=0.9, end_percent=0.2)),
     "default gate window must satisfy 0 <= start_percent <= end_percent <= 1"),
    ("window-above-one", broken(lambda t, m: _setitem(m["defaults"], "end_percent", 1.5)),
     "end 1.5"),
    ("lock-unknown", broken(lambda t, m: _setitem(m["defaults"], "lock", "both")),
     "default lock must be one of local, global, context, got 'both'"),
    ("beta-string", broken(lambda t, m: _setitem(m["defaults"], "beta", "0.7")),
     "'defaults.beta' must be a finite number"),
    ("missing-tensor", broken(lambda t, m: _pop(t, "v_target.mid.attn2")),
     "missing tensor(s): v_target.mid.attn2"),
    ("missing-embedding", broken(lambda t, m: _pop(t, "embedding.l")), "missing tensor(s): embedding.l"),
    ("extra-tensor", broken(lambda t, m: _setitem(t, "bonus", torch.zeros(3))), "unexpected tensor(s): bonus"),
    ("extra-layer", broken(lambda t, m: _setitem(t, "v_target.up.attn2", torch.zeros(1, 8, dtype=torch.float16))),
     "unexpected tensor(s): v_target.up.attn2"),
    ("dtype-f64", broken(lambda t, m: _setitem(t, "u", t["u"].double())),
     "tensor 'u' has dtype F64; only float16, bfloat16 and float32 are accepted"),
    ("dtype-int", broken(lambda t, m: _setitem(t, "embedding.l", torch.zeros(24, dtype=torch.int32))),
     "tensor 'embedding.l' has dtype I32"),
    ("dtype-inconsistent", broken(lambda t, m: _setitem(t, "v_target.mid.attn2", t["v_target.mid.attn2"].float())),
     "is float32 but the metadata says the file stores float16"),
    ("i-star-shape", broken(lambda t, m: _setitem(t, "i_star", t["i_star"][:-1])),
     "tensor 'i_star' has shape (63,), expected (64,) (context_dim"),
    ("v-target-shape", broken(lambda t, m: _setitem(t, "v_target.down.attn2", t["v_target.down.attn2"].repeat(2, 1))),
     "tensor 'v_target.down.attn2' has shape (2, 32), expected (1, 32)"),
    ("v-target-width", broken(lambda t, m: _setitem(m["layers"], "down.attn2", 40)),
     "tensor 'v_target.down.attn2' has shape (1, 32), expected (1, 40)"),
    ("nan-value", broken(lambda t, m: t["v_target.mid.attn2"].__setitem__((0, 3), float("nan"))),
     "tensor 'v_target.mid.attn2' contains non-finite values"),
    ("inf-u", broken(lambda t, m: t["u"].__setitem__(0, float("inf"))), "tensor 'u' contains non-finite values"),
    ("energy-negative", broken(lambda t, m: _setitem(t, "u", -t["i_star"])), "energy E = u . i* is -"),
    ("corrupt-offsets", lambda p: raw(_bad_offsets())(p), "corrupt safetensors file"),
]


def _bad_offsets() -> bytes:
    """A header whose offsets overlap: sizes look right, layout is impossible."""
    data = good_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    header["u"]["data_offsets"], header["i_star"]["data_offsets"] = (
        header["i_star"]["data_offsets"], header["u"]["data_offsets"])
    header["i_super"]["data_offsets"] = header["u"]["data_offsets"]
    body = json.dumps(header).encode()
    return struct.pack("<Q", len(body)) + body + data[8 + n:]


def test_corpus_is_large_enough() -> None:
    assert len(BAD_FILES) >= 20


@pytest.mark.parametrize("build, message", [(b, m) for _, b, m in BAD_FILES], ids=[i for i, _, _ in BAD_FILES])
def test_bad_file_is_refused_with_a_precise_message(tmp_path: Path, build: Callable[[Path], Path],
                                                    message: str) -> None:
    path = build(tmp_path / "broken_concept.safetensors")
    with pytest.raises(ConceptError) as err:
        load_concept(path)
    text = str(err.value)
    assert text.startswith("broken_concept.safetensors: "), text
    assert message in text, text


def test_corpus_baseline_is_valid(tmp_path: Path) -> None:
    """Every corpus entry is one change away from this file, which must load."""
    concept = load_concept(broken(lambda t, m: None)(tmp_path / "fine.safetensors"))
    assert concept.trigger == "sks" and concept.superclass == "teddy bear"


# ----------------------------------------------------------------------------- compatibility

def test_compatible_model_passes() -> None:
    concept = make_concept(layers=SD15_LAYERS, dim=768)
    check_compatible(concept, family="sd1", context_dim=768, layer_dims=dict(SD15_LAYERS), source="cat.safetensors")


def test_other_family_is_named_in_plain_words() -> None:
    concept = make_concept(layers=SD15_LAYERS, dim=768)
    with pytest.raises(ConceptError, match=r"^cat\.safetensors: this concept was made for SD1\.x; the model is SDXL"):
        check_compatible(concept, family="sdxl", context_dim=2048, layer_dims=SDXL_LAYERS, source="cat.safetensors")


def test_context_dim_layer_set_and_width_mismatches_are_all_reported() -> None:
    concept = make_concept(layers=SD15_LAYERS, dim=768)
    model = dict(SD15_LAYERS)
    del model["middle_block.1.transformer_blocks.0.attn2"]
    model["input_blocks.1.1.transformer_blocks.0.attn2"] = 640
    model["extra.attn2"] = 320
    with pytest.raises(ConceptError) as err:
        check_compatible(concept, family="sd1", context_dim=1024, layer_dims=model, source="Perfusion Apply")
    text = str(err.value)
    assert text.startswith("Perfusion Apply: ")
    assert "dimension 768 but the model's cross-attention context has 1024" in text
    assert "the concept has 16 cross-attention layers, the model has 16" in text
    assert "not in the model: middle_block.1.transformer_blocks.0.attn2" in text
    assert "not in the concept: extra.attn2" in text
    assert "input_blocks.1.1.transformer_blocks.0.attn2 (concept 320, model 640)" in text


def test_many_missing_layers_are_summarised() -> None:
    concept = make_concept(layers=SDXL_LAYERS, dim=32, family="sdxl", embeddings={})
    model = dict(list(SDXL_LAYERS.items())[:10])
    with pytest.raises(ConceptError, match=r"concept has 70 cross-attention layers, the model has 10; "
                                           r"not in the model: .+ \(and 57 more\)"):
        check_compatible(concept, family="sdxl", context_dim=32, layer_dims=model, source="x")


# ----------------------------------------------------------------------------- size budget

def test_layouts_match_the_method_doc() -> None:
    assert (len(SD15_LAYERS), sum(SD15_LAYERS.values())) == (16, 12_480)
    assert (len(SDXL_LAYERS), sum(SDXL_LAYERS.values())) == (70, 83_200)


def test_sd15_concept_fits_in_64_kb(tmp_path: Path) -> None:
    concept = make_concept(layers=SD15_LAYERS, dim=768, embeddings={"l": 768})
    path = save_concept(concept, tmp_path / "sd15.safetensors")
    assert path.stat().st_size <= 64 * 1000
    assert load_concept(path).layer_dims == SD15_LAYERS


def test_sdxl_concept_fits_in_256_kb(tmp_path: Path) -> None:
    concept = make_concept(layers=SDXL_LAYERS, dim=2048, family="sdxl", embeddings={"l": 768, "g": 1280})
    path = save_concept(concept, tmp_path / "sdxl.safetensors")
    assert path.stat().st_size <= 256 * 1000
    loaded = load_concept(path)
    assert loaded.context_dim == 2048 and len(loaded.v_targets) == 70


@pytest.mark.parametrize("field", ["beta", "tau", "strength"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), "0.7"])
def test_gate_refuses_non_finite_numbers(field: str, value: object) -> None:
    """NaN slips through every range comparison; the gate itself must refuse it."""
    with pytest.raises(ConceptError, match=f"gate {field} must be a finite number"):
        Gate(**{field: value})
