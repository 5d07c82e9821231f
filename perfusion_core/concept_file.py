"""Concept files, format version 1: one small safetensors file per concept.

Why this layout (docs/method.md §5, §7, §9):
  * Only what inference needs is stored: i*, u = C^-1 i* (so C itself, 2.4 MB
    for SDXL, never travels), i_super (key targets are recomputed as
    W_K i_super on the model in use), one value target per layer and
    timestep set, and the trigger embedding(s). An SD1.5 concept is ~40 KB in fp16.
  * Tensors: ``i_star``, ``u``, ``i_super`` in float32 (u feeds the ratio
    r = u.e / E, which fp16 would coarsen), ``v_target.<layer>`` (S, d_out)
    and ``embedding.<key>`` (dim,) in the file's storage dtype.
  * Metadata: one key ``perfusion`` holding a JSON object (see _metadata).

Loading trusts nothing: files come from strangers. The header length is read
by hand and bounded before anything is parsed, pickles renamed to
.safetensors are recognised and refused, and every field, name, dtype, shape
and value is checked; each failure is a ConceptError that starts with the file
name and says exactly what is wrong. Saving is atomic and never overwrites
unless asked to.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as _safetensors_load
from safetensors.torch import save as _safetensors_save

from .atomic_write import DestinationExists, unique_path, write_atomic
from .concept import LOCK_MODES, Concept, ConceptError, Gate, TextEncoderId, gate_range_problem
from .concept_checks import concept_problem, is_finite_number, listed
from .families import FAMILIES, FAMILY_BY_NAME
from .families import label as family_label
from .trigger_words import trigger_problem, word_problem

FORMAT_VERSION = 1
METADATA_KEY = "perfusion"
MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_HEADER_BYTES = 256 * 1024  # tensor table + metadata; SDXL needs ~20 KiB
MAX_METADATA_BYTES = 64 * 1024

DTYPES: dict[str, torch.dtype] = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
_FILE_DTYPES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32"}  # safetensors names
_META_FIELDS = ("format_version", "family", "context_dim", "text_encoder", "statistics", "trigger",
                "superclass", "layers", "timestep_sets", "embeddings", "defaults", "training", "dtype")
_GATE_FIELDS = ("beta", "tau", "strength", "start_percent", "end_percent", "lock")

_Fail = Callable[[str], ConceptError]
_PICKLE_MAGIC = tuple(bytes([0x80, proto]) for proto in range(2, 6))
_ZIP_MAGIC = b"PK\x03\x04"


# ----------------------------------------------------------------------------- saving

def save_concept(concept: Concept, path: str | Path, dtype: torch.dtype = torch.float16,
                 overwrite: bool = False) -> Path:
    """Write ``concept`` to ``path`` atomically; returns the path written.

    v targets and embeddings are stored in ``dtype`` (float16, bfloat16 or
    float32); i*, u and i_super always in float32. The bytes are validated by
    the loader before they touch the disk, so a file we write always loads.
    Raises ConceptError if the concept is invalid, does not fit ``dtype``, or
    the file exists and ``overwrite`` is False.
    """
    path = Path(path)
    name = path.name
    dtype_name = next((k for k, v in DTYPES.items() if v == dtype), None)
    if dtype_name is None:
        raise ConceptError(f"{name}: cannot save in {dtype}; use one of {', '.join(DTYPES)}")
    problem = concept_problem(concept)
    if problem is not None:
        raise ConceptError(f"{name}: cannot save concept: {problem}")
    if path.exists() and not overwrite:
        raise ConceptError(f"{name}: already exists; refusing to overwrite it "
                           f"(pass overwrite=True, or choose a new name, e.g. {unique_path(path).name})")

    tensors = {"i_star": concept.i_star, "u": concept.u, "i_super": concept.i_super}
    tensors = {k: v.detach().to("cpu", torch.float32).clone().contiguous() for k, v in tensors.items()}
    for prefix, group in (("v_target.", concept.v_targets), ("embedding.", concept.embeddings)):
        for key, value in group.items():
            stored = value.detach().to("cpu", dtype).clone().contiguous()
            if not bool(torch.isfinite(stored).all()):
                raise ConceptError(f"{name}: cannot save concept: {prefix}{key} has values outside the "
                                   f"{dtype_name} range; save as float32 or bfloat16")
            tensors[prefix + key] = stored
    try:
        meta_json = json.dumps(_metadata(concept, dtype_name), allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise ConceptError(f"{name}: cannot save concept: metadata is not plain JSON ({exc})") from exc
    if len(meta_json.encode()) > MAX_METADATA_BYTES:
        raise ConceptError(f"{name}: cannot save concept: metadata is {len(meta_json.encode())} bytes "
                           f"(at most {MAX_METADATA_BYTES}); trim the training info")
    data = _safetensors_save(tensors, metadata={METADATA_KEY: meta_json})
    concept_from_bytes(data, name)  # never write what load_concept would refuse
    _write_atomic(path, data, overwrite)
    return path


def _metadata(concept: Concept, dtype_name: str) -> dict[str, Any]:
    gate = concept.gate
    return {
        "format_version": FORMAT_VERSION,
        "family": concept.family,
        "context_dim": concept.context_dim,
        "text_encoder": {"name": concept.text_encoder.name, "layer": concept.text_encoder.layer},
        "statistics": concept.statistics,
        "trigger": concept.trigger,
        "superclass": concept.superclass,
        "layers": concept.layer_dims,
        "timestep_sets": concept.timestep_sets,
        "embeddings": {k: int(v.shape[0]) for k, v in concept.embeddings.items()},
        "defaults": {f: getattr(gate, f) for f in _GATE_FIELDS},
        "training": concept.training,
        "dtype": dtype_name,
    }


def _write_atomic(path: Path, data: bytes, overwrite: bool) -> None:
    """write_atomic, its failures turned into ConceptErrors that name the file."""
    try:
        write_atomic(path, data, overwrite=overwrite)
    except DestinationExists:
        raise ConceptError(f"{path.name}: already exists; refusing to overwrite it") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte or an unencodable name
        raise ConceptError(f"{path.name}: could not write the file ({exc}); nothing was written") from exc


# ----------------------------------------------------------------------------- loading

def load_concept(path: str | Path) -> Concept:
    """Read and fully validate a concept file; tensors come back float32 on CPU.

    Only regular files are read, and only when the size stat() reports is what reading gives:
    kernel pseudo-files (/proc, /sys) report 0 or 4096 bytes whatever they hold, and some block
    or fail on read. OS errors are reported by their reason alone (no path, no content).
    """
    path = Path(path)
    name = path.name
    try:
        if not path.exists():
            raise ConceptError(f"{name}: file not found")
        if not path.is_file():
            raise ConceptError(f"{name}: not a file (a device, folder or pipe?)")
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ConceptError(f"{name}: file is {size / 2**20:.1f} MiB; a concept file is at most "
                               f"{MAX_FILE_BYTES // 2**20} MiB (is this a model checkpoint or LoRA?)")
        if size == 0:  # also every /proc pseudo-file: never read those
            raise ConceptError(f"{name}: not a safetensors file: only 0 bytes")
        with path.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConceptError(f"{name}: cannot be read ({exc.strerror or type(exc).__name__})") from None
    if len(data) != size:
        raise ConceptError(f"{name}: reading gave {len(data)} bytes but the file system says {size}: a kernel "
                           "pseudo-file or a file being written; not a concept file")
    return concept_from_bytes(data, name)


def concept_from_bytes(data: bytes, name: str) -> Concept:
    """Parse and validate the bytes of a concept file; ``name`` prefixes every error."""
    def fail(problem: str) -> ConceptError:
        return ConceptError(f"{name}: {problem}")

    header = _read_header(data, fail)
    meta = _read_metadata(header, fail)
    fields = _check_metadata(meta, fail)
    tensors = _read_tensors(data, header, fields, fail)
    gate = Gate(**fields["defaults"])
    concept = Concept(
        trigger=fields["trigger"], superclass=fields["superclass"], family=fields["family"],
        text_encoder=TextEncoderId(**fields["text_encoder"]),
        i_star=tensors["i_star"], u=tensors["u"], i_super=tensors["i_super"],
        v_targets={layer: tensors["v_target." + layer] for layer in fields["layers"]},
        embeddings={key: tensors["embedding." + key] for key in fields["embeddings"]},
        gate=gate, statistics=fields["statistics"], training=fields["training"])
    problem = concept_problem(concept)
    if problem is not None:
        raise fail(problem)
    return concept


def _read_header(data: bytes, fail: _Fail) -> dict[str, Any]:
    """The safetensors JSON header, after bounding its length by hand."""
    if data.startswith(_PICKLE_MAGIC) or data.startswith(_ZIP_MAGIC):
        raise fail("is a pickled PyTorch file (.pt/.ckpt/.bin) renamed to .safetensors, not a "
                   "safetensors file; refusing to open it (pickles can run arbitrary code)")
    if len(data) < 8:
        raise fail(f"not a safetensors file: only {len(data)} bytes")
    # The length field is the file's first 8 bytes: never print it (a linked text file, such as
    # the password file, would leak its first characters as a number). Only its verdict is shown.
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > MAX_HEADER_BYTES:
        raise fail(f"not a safetensors file or corrupt header: the header length field exceeds the "
                   f"{MAX_HEADER_BYTES // 1024} KiB limit")
    if 8 + header_len > len(data):
        raise fail(f"truncated: the header length field claims more bytes than the file's {len(data)}")
    try:
        header = json.loads(data[8:8 + header_len].decode("utf-8"))
    except UnicodeDecodeError:  # its message quotes the offending byte
        raise fail("not a safetensors file or corrupt header: header is not UTF-8 text") from None
    except RecursionError:
        raise fail("not a safetensors file or corrupt header: header JSON is nested too deeply") from None
    except ValueError as exc:
        raise fail(f"not a safetensors file or corrupt header: header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise fail("corrupt safetensors header: expected a JSON object")
    return header


def _read_metadata(header: dict[str, Any], fail: _Fail) -> dict[str, Any]:
    extra = header.get("__metadata__")
    if not isinstance(extra, dict) or METADATA_KEY not in extra:
        raise fail(f"no '{METADATA_KEY}' metadata: this safetensors file is not a Perfusion concept "
                   "(a LoRA, an embedding or a checkpoint?)")
    raw = extra[METADATA_KEY]
    if not isinstance(raw, str):
        raise fail(f"'{METADATA_KEY}' metadata must be a JSON string, got {type(raw).__name__}")
    if len(raw.encode("utf-8")) > MAX_METADATA_BYTES:
        raise fail(f"'{METADATA_KEY}' metadata is {len(raw.encode('utf-8'))} bytes; "
                   f"the limit is {MAX_METADATA_BYTES // 1024} KiB")
    try:
        meta = json.loads(raw, parse_constant=_reject_constant)
    except RecursionError:
        raise fail(f"'{METADATA_KEY}' metadata is nested too deeply to be a concept's metadata") from None
    except ValueError as exc:
        raise fail(f"'{METADATA_KEY}' metadata is not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise fail(f"'{METADATA_KEY}' metadata must be a JSON object, got {type(meta).__name__}")
    return meta


def _reject_constant(token: str) -> None:
    raise ValueError(f"{token} is not allowed")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_metadata(meta: dict[str, Any], fail: _Fail) -> dict[str, Any]:
    """Type- and range-check every metadata field; returns them, normalised."""
    if "format_version" not in meta:
        raise fail("metadata field 'format_version' is missing")
    version = meta["format_version"]
    if not _is_int(version):
        raise fail(f"metadata field 'format_version' must be an integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise fail(f"format_version {version} was made by a newer version of this pack "
                   f"(this one reads format {FORMAT_VERSION}); update the node pack")
    if version < 1:
        raise fail(f"format_version {version} is not valid (must be >= 1)")
    missing = [f for f in _META_FIELDS if f not in meta]
    if missing:
        raise fail(f"metadata field(s) missing: {', '.join(missing)}")
    unknown = sorted(set(meta) - set(_META_FIELDS))
    if unknown:
        raise fail(f"unknown metadata field(s): {', '.join(unknown)}")

    def need(ok: bool, field: str, expected: str) -> None:
        if not ok:
            value = _dotted(meta, field)
            raise fail(f"metadata field '{field}' must be {expected}, got {type(value).__name__} {value!r:.60}")

    family = meta["family"]
    need(isinstance(family, str), "family", "a string")
    if family not in FAMILIES:
        raise fail(f"unknown base family {family!r} (known: {', '.join(FAMILIES)})")
    need(_is_int(meta["context_dim"]) and meta["context_dim"] > 0, "context_dim", "a positive integer")
    encoder = meta["text_encoder"]
    need(isinstance(encoder, dict) and set(encoder) == {"name", "layer"}, "text_encoder",
         "an object with exactly 'name' and 'layer'")
    need(isinstance(encoder["name"], str) and encoder["name"].strip() != "", "text_encoder.name",
         "a non-empty string")
    need(encoder["layer"] is None or _is_int(encoder["layer"]), "text_encoder.layer", "an integer or null")
    need(isinstance(meta["statistics"], str) and meta["statistics"].strip() != "", "statistics",
         "a non-empty string")
    problem = trigger_problem(meta["trigger"]) or word_problem(meta["superclass"], "superclass", allow_spaces=True)
    if problem is not None:
        raise fail(problem)
    layers = meta["layers"]
    need(isinstance(layers, dict) and len(layers) > 0, "layers", "a non-empty object {layer: d_out}")
    for layer, d_out in layers.items():
        if not layer.strip():
            raise fail("metadata field 'layers' has an empty layer name")
        if not (_is_int(d_out) and d_out > 0):
            raise fail(f"metadata field 'layers' gives layer {layer!r} width {d_out!r}; must be a positive integer")
    need(_is_int(meta["timestep_sets"]) and meta["timestep_sets"] > 0, "timestep_sets", "a positive integer")
    embeddings = meta["embeddings"]
    need(isinstance(embeddings, dict), "embeddings", "an object {tokenizer key: dim}")
    allowed = FAMILY_BY_NAME[family].tokenizer_keys
    for key, dim in embeddings.items():
        if key not in allowed:
            raise fail(f"embedding key {key!r} does not exist for {family_label(family)} "
                       f"(text encoders: {', '.join(allowed)})")
        if not (_is_int(dim) and dim > 0):
            raise fail(f"metadata field 'embeddings' gives {key!r} dimension {dim!r}; must be a positive integer")
    defaults = meta["defaults"]
    need(isinstance(defaults, dict) and set(defaults) == set(_GATE_FIELDS), "defaults",
         f"an object with exactly {', '.join(_GATE_FIELDS)}")
    for field in _GATE_FIELDS[:-1]:
        need(is_finite_number(defaults[field]), f"defaults.{field}", "a finite number")
    if defaults["lock"] not in LOCK_MODES:
        raise fail(f"default lock must be one of {', '.join(LOCK_MODES)}, got {defaults['lock']!r}")
    try:
        problem = gate_range_problem(Gate(**{f: (float(v) if f != "lock" else v) for f, v in defaults.items()}))
    except ConceptError as exc:
        raise fail(f"default {exc}") from None
    if problem:
        raise fail(f"default {problem}")
    depth = _nesting(meta["training"])
    if depth > MAX_TRAINING_DEPTH:
        raise fail(f"metadata field 'training' is nested {depth} levels deep (at most {MAX_TRAINING_DEPTH})")
    need(isinstance(meta["training"], dict), "training", "an object")
    need(isinstance(meta["dtype"], str) and meta["dtype"] in DTYPES, "dtype", f"one of {', '.join(DTYPES)}")
    out = dict(meta)
    out["defaults"] = {f: (float(v) if f != "lock" else v) for f, v in defaults.items()}
    return out


MAX_TRAINING_DEPTH = 16  # the training summary is flat; deep nesting only serves to exhaust the stack


def _nesting(value: object) -> int:
    """Depth of nested lists/objects, counted without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def _dotted(meta: dict[str, Any], field: str) -> object:
    value: object = meta
    for part in field.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _read_tensors(data: bytes, header: dict[str, Any], fields: dict[str, Any], fail: _Fail) -> dict[str, torch.Tensor]:
    """Check the tensor table against the metadata, then decode to float32."""
    dim, sets = fields["context_dim"], fields["timestep_sets"]
    expected: dict[str, tuple[int, ...]] = {"i_star": (dim,), "u": (dim,), "i_super": (dim,)}
    expected.update({"v_target." + layer: (sets, d_out) for layer, d_out in fields["layers"].items()})
    expected.update({"embedding." + key: (d,) for key, d in fields["embeddings"].items()})
    present = {k: v for k, v in header.items() if k != "__metadata__"}
    missing = [k for k in expected if k not in present]
    if missing:
        raise fail(f"missing tensor(s): {listed(missing)}")
    extra = [k for k in present if k not in expected]
    if extra:
        raise fail(f"unexpected tensor(s): {listed(extra)}")
    end = 0
    for key, entry in present.items():
        if not (isinstance(entry, dict) and isinstance(entry.get("dtype"), str)
                and isinstance(entry.get("shape"), list) and isinstance(entry.get("data_offsets"), list)):
            raise fail(f"corrupt safetensors header: bad entry for tensor '{key}'")
        file_dtype = _FILE_DTYPES.get(entry["dtype"])
        if file_dtype is None:
            raise fail(f"tensor '{key}' has dtype {entry['dtype']}; only float16, bfloat16 and float32 are accepted")
        if file_dtype != fields["dtype"] and key.startswith(("v_target.", "embedding.")):
            raise fail(f"tensor '{key}' is {file_dtype} but the metadata says the file stores {fields['dtype']}")
        if not all(_is_int(n) and n >= 0 for n in entry["shape"]):
            raise fail(f"corrupt safetensors header: bad shape {entry['shape']!r} for tensor '{key}'")
        shape = tuple(entry["shape"])
        if shape != expected[key]:
            why = "context_dim" if key in ("i_star", "u", "i_super") else (
                "timestep_sets, layer width" if key.startswith("v_target.") else "embedding dimension")
            raise fail(f"tensor '{key}' has shape {shape}, expected {expected[key]} ({why} from the metadata)")
        offsets = entry["data_offsets"]
        if len(offsets) == 2 and all(_is_int(o) for o in offsets):
            end = max(end, offsets[1])
    available = len(data) - 8 - struct.unpack("<Q", data[:8])[0]
    if end > available:
        raise fail(f"truncated: tensor data should be {end} bytes but only {available} are present")
    try:
        raw = _safetensors_load(data)
    except Exception as exc:  # safetensors raises several error types; all mean "corrupt"
        raise fail(f"corrupt safetensors file ({exc})") from None
    return {k: v.to(torch.float32).contiguous() for k, v in raw.items()}
