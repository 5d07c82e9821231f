"""The bad-input corpus run against one real ComfyUI server (test_server_robustness.py).

One table, CASES: each case is a name, either a graph builder or a file writer
(a corrupt concept file written into the server's models/perfusion, then
loaded by the standard render graph), the node whose error is expected, and a
regex the error message must match. Messages are read from the /prompt
validation answer or from the execution_error in /history.

File writers start from the bytes of a good concept that the server itself
made (PerfusionWordEdit on the tiny demo model), so every broken file is one
change away from a file that loads and applies.
"""

from __future__ import annotations

import copy
import json
import pickle
import re
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

import graphs as g
from tools.sample_images import IMAGES_DIR

CORPUS_DIR = "corpus"  # sub-folder of models/perfusion holding the broken concept files


class Bait:
    """Pickles to a call of ``open(marker, "w")``: unpickling it creates ``marker``.

    A loader that ever unpickles a concept file would leave the marker behind.
    """

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return open, (self.marker, "w")


@dataclass
class GoodFile:
    """The good concept's bytes, parsed, plus where unpickling markers would appear."""

    data: bytes
    marker_dir: Path

    @property
    def tensors(self) -> dict[str, torch.Tensor]:
        return st_load(self.data)

    @property
    def meta(self) -> dict[str, Any]:
        (n,) = struct.unpack("<Q", self.data[:8])
        return json.loads(json.loads(self.data[8:8 + n])["__metadata__"]["perfusion"])

    def marker(self, case: str) -> Path:
        return self.marker_dir / f"UNPICKLED_{case}"


Writer = Callable[[Path, GoodFile], None]


@dataclass(frozen=True)
class Case:
    name: str
    node: str  # class_type that must report the error
    message: str  # regex searched in the error message
    graph: Callable[[], g.Prompt] | None = None
    writer: Writer | None = None
    file: str | None = None  # path of the written file under models/perfusion (default corpus/<name>)

    @property
    def path(self) -> str:
        return self.file or f"{CORPUS_DIR}/{self.name}.safetensors"

    def prompt(self) -> g.Prompt:
        if self.graph is not None:
            return self.graph()
        return g.render(concept_name=self.path)


# ----------------------------------------------------------------------------- file writers

def raw(make: Callable[[GoodFile], bytes]) -> Writer:
    def write(path: Path, good: GoodFile) -> None:
        path.write_bytes(make(good))
    return write


def mutate(edit: Callable[[dict[str, torch.Tensor], dict[str, Any]], object]) -> Writer:
    """A copy of the good file with tensors/metadata changed by ``edit`` (which may return new metadata text)."""
    def write(path: Path, good: GoodFile) -> None:
        tensors, meta = good.tensors, copy.deepcopy(good.meta)
        text = edit(tensors, meta)
        meta_text = text if isinstance(text, str) else json.dumps(meta)
        path.write_bytes(st_save({k: v.contiguous() for k, v in tensors.items()}, metadata={"perfusion": meta_text}))
    return write


def bait_pickle(case: str, protocol: int) -> Writer:
    return raw(lambda good: pickle.dumps(Bait(good.marker(case)), protocol=protocol))


def bait_torch_zip(case: str) -> Writer:
    """torch.save's layout (a zip holding data.pkl), with the bait as the pickle."""
    def write(path: Path, good: GoodFile) -> None:
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("archive/data.pkl", pickle.dumps(Bait(good.marker(case)), protocol=2))
    return write


def sparse(size: int) -> Writer:
    def write(path: Path, good: GoodFile) -> None:
        with path.open("wb") as handle:
            handle.truncate(size)  # sparse: no disk used
    return write


def first_layer(meta: dict[str, Any]) -> str:
    return next(iter(meta["layers"]))


def drop_layer(t: dict[str, torch.Tensor], m: dict[str, Any]) -> None:
    layer = first_layer(m)
    del m["layers"][layer], t[f"v_target.{layer}"]


def add_layer(t: dict[str, torch.Tensor], m: dict[str, Any]) -> None:
    layer = "output_blocks.11.1.transformer_blocks.7.attn2"
    m["layers"][layer] = 320
    t[f"v_target.{layer}"] = torch.zeros(1, 320, dtype=torch.float16)


def widen_layer(t: dict[str, torch.Tensor], m: dict[str, Any]) -> None:
    layer = first_layer(m)
    m["layers"][layer] *= 2
    t[f"v_target.{layer}"] = t[f"v_target.{layer}"].repeat(1, 2)


def context_1024(t: dict[str, torch.Tensor], m: dict[str, Any]) -> None:
    m["context_dim"] = 1024
    for key in ("i_star", "u", "i_super"):
        t[key] = torch.cat([t[key], torch.zeros(1024 - t[key].shape[0])])  # u . i* unchanged, still > 0


def poke(key: str, value: float, first: bool = True) -> Callable[[dict[str, torch.Tensor], dict[str, Any]], None]:
    def edit(t: dict[str, torch.Tensor], m: dict[str, Any]) -> None:
        name = key if key in t else next(k for k in t if k.startswith(key))
        t[name].view(-1)[0 if first else -1] = value
    return edit


def setter(*path_and_value: Any) -> Callable[[dict[str, torch.Tensor], dict[str, Any]], None]:
    *path, value = path_and_value

    def edit(t: dict[str, torch.Tensor], m: dict[str, Any]) -> None:
        target = m
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = value
    return edit


def retype(key: str, dtype: torch.dtype) -> Callable[[dict[str, torch.Tensor], dict[str, Any]], None]:
    def edit(t: dict[str, torch.Tensor], m: dict[str, Any]) -> None:
        name = key if key in t else next(k for k in t if k.startswith(key))
        t[name] = t[name].to(dtype)
    return edit


def stack_rows(t: dict[str, torch.Tensor], m: dict[str, Any]) -> None:
    name = next(k for k in t if k.startswith("v_target."))
    t[name] = t[name].repeat(2, 1)


def no_perfusion_metadata(good: GoodFile) -> bytes:
    return st_save({"lora_unet_down.lora_up.weight": torch.zeros(4, 4)}, metadata={"ss_network_module": "lora"})


def deep_header(good: GoodFile) -> bytes:
    body = b"[" * 60_000 + b"]" * 60_000  # inside the header limit, far past Python's recursion limit
    return struct.pack("<Q", len(body)) + body


def chained_twice(trigger_word: str) -> g.Prompt:
    """The good concept through two ConceptGates into two chained Apply nodes."""
    prompt = g.render(gate=g.gate_inputs())
    prompt["gate2"] = g.node("ConceptGate", concept=["load", 0], **g.gate_inputs(beta=0.4))
    prompt["apply2"] = g.node("ApplyKeyLockedEdit", model=["apply", 0], clip=["apply", 1], concept=["gate2", 0],
                              trigger_word=trigger_word)
    for key in ("pos", "neg"):
        prompt[key]["inputs"]["clip"] = ["apply2", 1]
    prompt["sample"]["inputs"]["model"] = ["apply2", 0]
    return prompt


def prompt_text(text: str) -> g.Prompt:
    prompt = g.render()
    prompt["pos"]["inputs"]["text"] = text
    return prompt


# ----------------------------------------------------------------------------- the table

def _file(name: str, writer: Writer, message: str, node: str = "LoadPerfusionConcept", named: bool = True,
          file: str | None = None) -> Case:
    """A broken file case; ``named``: the message must start with the file's name."""
    prefix = re.escape(Path(file or name).stem) + r"\.safetensors: " if named else ""
    return Case(name, node, prefix + message, writer=writer, file=file)


def _graph(name: str, build: Callable[[], g.Prompt], node: str, message: str) -> Case:
    return Case(name, node, message, graph=build)


NAN, INF = float("nan"), float("inf")
APPLY = "ApplyKeyLockedEdit"
TRAIN = "TrainPerfusion"
RESUME_CORRUPT = "training/corpus_corrupt_checkpoint.safetensors"
RESUME_NOT_STATE = "training/corpus_concept_not_state.safetensors"

CASES: list[Case] = [
    # -- concept files: container -------------------------------------------------------------
    _file("empty", raw(lambda good: b""), r"not a safetensors file: only 0 bytes"),
    _file("truncated_data", raw(lambda good: good.data[:-100]), r"truncated: tensor data should be \d+ bytes"),
    _file("truncated_header", raw(lambda good: good.data[:30]), r"truncated: the header length field claims more bytes"),
    _file("text_file", raw(lambda good: b"just some text, not tensors\n" * 4),
          r"not a safetensors file or corrupt header: the header length field exceeds the 256 KiB limit"),
    _file("png_renamed", raw(lambda good: (IMAGES_DIR / g.TRAIN_IMAGE).read_bytes()),
          r"not a safetensors file or corrupt header"),
    _file("pickle_renamed", bait_pickle("pickle_renamed", 4),
          r"is a pickled PyTorch file .* refusing to open it \(pickles can run arbitrary code\)"),
    _file("pickle_protocol0_renamed", bait_pickle("pickle_protocol0_renamed", 0),
          r"not a safetensors file or corrupt header"),
    _file("torch_zip_renamed", bait_torch_zip("torch_zip_renamed"), r"is a pickled PyTorch file"),
    _file("lora_not_concept", raw(no_perfusion_metadata), r"no 'perfusion' metadata: .*not a Perfusion concept"),
    _file("gigantic_header_claim", raw(lambda good: struct.pack("<Q", 2**40) + b"{}"),
          r"not a safetensors file or corrupt header: the header length field exceeds the 256 KiB limit$"),
    _file("gigantic_header_real", mutate(setter("training", "log", "x" * 300_000)),
          r"not a safetensors file or corrupt header: the header length field exceeds the 256 KiB limit"),
    _file("gigantic_metadata", mutate(setter("training", "log", "x" * 80_000)),
          r"'perfusion' metadata is \d+ bytes; the limit is 64 KiB"),
    _file("too_large", sparse(65 * 2**20), r"file is 65\.0 MiB; a concept file is at most 64 MiB"),
    # -- concept files: contents --------------------------------------------------------------
    _file("format_from_future", mutate(setter("format_version", 99)),
          r"format_version 99 was made by a newer version of this pack .*update the node pack"),
    _file("nan_value", mutate(poke("v_target.", NAN)), r"tensor 'v_target\.[\w.]+' contains non-finite values"),
    _file("inf_direction", mutate(poke("i_star", INF)), r"tensor 'i_star' contains non-finite values"),
    _file("dtype_float64", mutate(retype("u", torch.float64)),
          r"tensor 'u' has dtype F64; only float16, bfloat16 and float32 are accepted"),
    _file("dtype_int32", mutate(retype("v_target.", torch.int32)), r"tensor 'v_target\.[\w.]+' has dtype I32"),
    _file("shape_rows", mutate(stack_rows), r"tensor 'v_target\.[\w.]+' has shape \(2, \d+\), expected \(1, \d+\)"),
    _file("shape_direction", mutate(lambda t, m: t.__setitem__("i_super", t["i_super"][:-5])),
          r"tensor 'i_super' has shape \(763,\), expected \(768,\) \(context_dim"),
    _file("tensor_missing", mutate(lambda t, m: t.pop("u")), r"missing tensor\(s\): u"),
    _file("tensor_extra", mutate(lambda t, m: t.__setitem__("payload", torch.zeros(8))),
          r"unexpected tensor\(s\): payload"),
    _file("trigger_whitespace", mutate(setter("trigger", "   ")), r"trigger is empty or only whitespace"),
    _file("gate_default_nan_text", mutate(lambda t, m: json.dumps(m).replace('"tau":', '"tau": NaN, "x":', 1)),
          r"'perfusion' metadata is not valid JSON \(NaN is not allowed"),
    # -- concept files that load but do not fit the model --------------------------------------
    _file("layers_missing", mutate(drop_layer),
          r"ApplyKeyLockedEdit \(concept 'cat'\): concept does not fit this model: .*not in the concept: ",
          node=APPLY, named=False),
    _file("layers_extra", mutate(add_layer),
          r"concept does not fit this model: .*not in the model: output_blocks\.11\.1\.transformer_blocks\.7\.attn2",
          node=APPLY, named=False),
    _file("layer_width", mutate(widen_layer), r"value widths differ for 1 layer\(s\)", node=APPLY, named=False),
    _file("family_sdxl", mutate(setter("family", "sdxl")),
          r"ApplyKeyLockedEdit \(concept 'cat'\): this concept was made for SDXL; the model is SD1\.x",
          node=APPLY, named=False),
    _file("context_dim_1024", mutate(context_1024),
          r"text directions have dimension 1024 but the model's cross-attention context has 768",
          node=APPLY, named=False),
    _file("clip_layer_other", mutate(setter("text_encoder", "layer", -2)),
          r"was made with CLIP layer -2 but this CLIP uses the default layer; set CLIPSetLastLayer",
          node=APPLY, named=False),
    # -- LoadPerfusionConcept / ApplyKeyLockedEdit / ConceptGate inputs ----------------------------
    _graph("load_path_traversal", lambda: g.render(concept_name="../checkpoints/" + g.wf.CHECKPOINT),
           "LoadPerfusionConcept", r"Value not in list: concept_name: '\.\./checkpoints/"),
    _graph("apply_trigger_two_words", lambda: g.render(trigger_word="my toy"), APPLY,
           r"ApplyKeyLockedEdit: trigger_word 'my toy' cannot be a prompt word: it contains whitespace"),
    _graph("apply_trigger_syntax", lambda: g.render(trigger_word="(cat:1.5)"), APPLY,
           r"ApplyKeyLockedEdit: trigger_word .* prompt-syntax character '\('"),
    _graph("gate_beta_above_max", lambda: g.gated(beta=5.0), "ConceptGate",
           r"Value 5\.0 bigger than max of 2\.0: beta"),
    _graph("gate_tau_below_min", lambda: g.gated(tau=-3.0), "ConceptGate",
           r"Value -3\.0 smaller than min of -1\.0: tau"),
    _graph("gate_strength_negative", lambda: g.gated(strength=-0.5), "ConceptGate",
           r"Value -0\.5 smaller than min of 0\.0: strength"),
    _graph("gate_window_reversed", lambda: g.gated(start_percent=0.8, end_percent=0.2), "ConceptGate",
           r"ConceptGate: start_percent 0\.8 is after end_percent 0\.2"),
    _graph("gate_beta_nan", lambda: g.gated(beta=NAN), "ConceptGate", r"ConceptGate: beta must be a number, got nan"),
    _graph("gate_strength_nan", lambda: g.gated(strength=NAN), "ConceptGate",
           r"ConceptGate: strength must be a number, got nan"),
    _graph("gate_lock_unknown", lambda: g.gated(lock_mode="both"), "ConceptGate",
           r"Value not in list: lock_mode: 'both'"),
    # -- PerfusionWordEdit / SavePerfusionConcept ---------------------------------------------------
    _graph("word_edit_same_words", lambda: g.word_edit(trigger_word="dog"), "PerfusionWordEdit",
           r"PerfusionWordEdit: trigger_word and target_word are both 'dog'; nothing to edit"),
    _graph("word_edit_empty_target", lambda: g.word_edit(target_word=" "), "PerfusionWordEdit",
           r"PerfusionWordEdit: target_word is empty or only whitespace"),
    _graph("word_edit_template_without_slot", lambda: g.word_edit(template="a photo of a cat"), "PerfusionWordEdit",
           r"PerfusionWordEdit: template must contain '\{\}' exactly once"),
    _graph("save_path_traversal", lambda: g.save_concept("../checkpoints/evil"), "SavePerfusionConcept",
           r"SavePerfusionConcept: filename_prefix '\.\./checkpoints/evil' leaves the perfusion folder"),
    _graph("save_absolute_path", lambda: g.save_concept("/tmp/perfusion_corpus_escape"), "SavePerfusionConcept",
           r"SavePerfusionConcept: filename_prefix '/tmp/perfusion_corpus_escape' leaves the perfusion folder"),
    _graph("save_empty_name", lambda: g.save_concept("  "), "SavePerfusionConcept",
           r"SavePerfusionConcept: filename_prefix '  ' has no file name \(empty"),
    _graph("save_into_training_folder", lambda: g.save_concept("training/fake_checkpoint"), "SavePerfusionConcept",
           r"SavePerfusionConcept: filename_prefix 'training/fake_checkpoint' is in the 'training' sub-folder, "
           r"which is reserved"),
    _graph("save_name_too_long", lambda: g.save_concept("c" * 300), "SavePerfusionConcept",
           r"SavePerfusionConcept: the file name in filename_prefix is 300 characters long \(at most \d+\)"),
    # -- TrainPerfusion ----------------------------------------------------------------------------
    _graph("train_trigger_empty", lambda: g.train(trigger_word=""), TRAIN, r"TrainPerfusion: trigger_word is empty"),
    _graph("train_trigger_whitespace", lambda: g.train(trigger_word=" \t "), TRAIN,
           r"TrainPerfusion: trigger_word is empty or only whitespace"),
    _graph("train_trigger_is_superclass", lambda: g.train(trigger_word="Teddy"), TRAIN,
           r"TrainPerfusion: trigger_word equals the superclass \('Teddy'\)"),
    _graph("train_trigger_several_words", lambda: g.train(trigger_word="my zorb toy"), TRAIN,
           r"TrainPerfusion: trigger_word 'my zorb toy' cannot be a prompt word: it contains whitespace"),
    _graph("train_steps_zero", lambda: g.train(steps=0), TRAIN, r"Value 0 smaller than min of 1: steps"),
    _graph("train_lr_absurd", lambda: g.train(lr_values=50.0), TRAIN,
           r"Value 50\.0 bigger than max of 1\.0: lr_values"),
    _graph("train_lr_nan", lambda: g.train(lr_embedding=NAN), TRAIN,
           r"TrainPerfusion: lr_embedding must be in \(0, 1\], got nan"),
    _graph("train_beta_above_max", lambda: g.train(train_beta=3.0), TRAIN,
           r"Value 3\.0 bigger than max of 2\.0: train_beta"),
    _graph("train_tau_zero", lambda: g.train(train_tau=0.0), TRAIN,
           r"Value 0\.0 smaller than min of 0\.001: train_tau"),
    _graph("train_tau_nan", lambda: g.train(train_tau=NAN), TRAIN,
           r"TrainPerfusion: train_tau must be in \[0\.001, 1\], got nan"),
    _graph("train_resolution_not_multiple", lambda: g.train(resolution=100), TRAIN,
           r"TrainPerfusion: resolution must be a multiple of 64 in \[64, 2048\], got 100"),
    _graph("train_output_traversal", lambda: g.train(output_name="../x"), TRAIN,
           r"TrainPerfusion: output_name must be a plain file name without folders, got '\.\./x'"),
    _graph("train_output_empty", lambda: g.train(output_name=""), TRAIN,
           r"TrainPerfusion: output_name must be a plain file name without folders, got ''"),
    _graph("train_output_too_long", lambda: g.train(output_name="n" * 300), TRAIN,
           r"TrainPerfusion: the file name in output_name is 300 characters long \(at most \d+\)"),
    _graph("train_preview_prompt_without_slot", lambda: g.train(preview_prompt="a teddy on the beach"), TRAIN,
           r"TrainPerfusion: preview_prompt must contain '\{\}' exactly once"),
    _graph("train_mask_size", lambda: g.train(mask=g.node("SolidMask", value=1.0, width=32, height=32),
                                              mask_source="mask input if connected"), TRAIN,
           r"TrainPerfusion: mask: size \(32, 32\) differs from the images' \(128, 128\)"),
    _graph("train_captions_count", lambda: g.train(captions="a photo of a {}\na {} on the beach"), TRAIN,
           r"TrainPerfusion: captions: 2 caption\(s\) for 1 image\(s\)"),
    _graph("train_captions_without_trigger", lambda: g.train(captions="a photo of a teddy"), TRAIN,
           r"TrainPerfusion: captions: line 1 names neither '\{\}' nor the trigger word 'zorbix'"),
    _graph("train_mask_source_unknown", lambda: g.train(mask_source="bogus"), TRAIN,
           r"Value not in list: mask_source: 'bogus'"),
    _graph("train_statistics_too_few", lambda: g.train(statistics_captions=5), TRAIN,
           r"Value 5 smaller than min of 100: statistics_captions"),
    _graph("train_resume_missing", lambda: g.train(resume_from="training/nope.safetensors"), TRAIN,
           r"Value not in list: resume_from: 'training/nope\.safetensors'"),
    Case("train_resume_corrupt", TRAIN,
         r"TrainPerfusion: resume_from 'training/corpus_corrupt_checkpoint\.safetensors': "
         r"corpus_corrupt_checkpoint\.safetensors: not a readable safetensors training checkpoint",
         graph=lambda: g.train(resume_from=RESUME_CORRUPT),
         writer=raw(lambda good: good.data[:-64]), file=RESUME_CORRUPT),
    Case("train_resume_not_a_checkpoint", TRAIN,
         r"TrainPerfusion: resume_from .*corpus_concept_not_state\.safetensors: not a Perfusion training checkpoint",
         graph=lambda: g.train(resume_from=RESUME_NOT_STATE),
         writer=raw(lambda good: good.data), file=RESUME_NOT_STATE),
    # -- round two (issue 18): names, duplicates, case folding, hostile files, bounds, syntax --------
    _graph("train_output_nul", lambda: g.train(output_name="run\x00x"), TRAIN,
           r"TrainPerfusion: output_name 'run\\x00x' contains control character U\+0000"),
    _graph("train_output_newline", lambda: g.train(output_name="run\nsecond"), TRAIN,
           r"TrainPerfusion: output_name 'run\\nsecond' contains control character U\+000A"),
    _graph("train_output_backslash", lambda: g.train(output_name="training\\run"), TRAIN,
           r"TrainPerfusion: output_name .* contains a backslash"),
    _graph("save_nul", lambda: g.save_concept("kept\x00name"), "SavePerfusionConcept",
           r"SavePerfusionConcept: filename_prefix 'kept\\x00name' contains control character U\+0000"),
    _graph("save_backslash_into_reserved", lambda: g.save_concept("statistics\\fake"), "SavePerfusionConcept",
           r"SavePerfusionConcept: filename_prefix .* contains a backslash; use '/' for sub-folders"),
    _graph("apply_same_concept_twice", lambda: chained_twice("kitty"), APPLY,
           r"ApplyKeyLockedEdit: concept 'kitty' and concept 'cat' applied upstream have nearly the same input "
           r"direction i\* \(cosine 1\.0+"),
    _graph("apply_two_concepts_one_trigger", lambda: chained_twice("CAT"), APPLY,
           r"ApplyKeyLockedEdit: concept 'CAT' has the same trigger as concept 'cat' applied upstream"),
    _graph("apply_trigger_stop_word", lambda: g.render(trigger_word="The"), APPLY,
           r"ApplyKeyLockedEdit: trigger_word 'The' is a common word"),
    _graph("prompt_embedding_syntax_on_trigger", lambda: prompt_text("a photo of embedding:cat"), "CLIPTextEncode",
           r"the prompt writes 'embedding:cat', but 'cat' is a Perfusion trigger"),
    _graph("word_edit_multi_token_trigger", lambda: g.word_edit(trigger_word="housecat"), "PerfusionWordEdit",
           r"PerfusionWordEdit: trigger_word 'housecat' is 2 tokens for this CLIP"),
    _graph("word_edit_stop_word_trigger", lambda: g.word_edit(trigger_word="an"), "PerfusionWordEdit",
           r"PerfusionWordEdit: trigger_word 'an' is a common word"),
    _graph("word_edit_template_weighted", lambda: g.word_edit(template="a photo of a ({}:1.3)"), "PerfusionWordEdit",
           r"PerfusionWordEdit: template .* contains the prompt-syntax character '\('"),
    _graph("word_edit_template_embedding", lambda: g.word_edit(template="a photo of embedding:{}"),
           "PerfusionWordEdit", r"PerfusionWordEdit: template .* contains 'embedding:'"),
    _graph("word_edit_template_past_77", lambda: g.word_edit(template="very " * 90 + "{}"), "PerfusionWordEdit",
           r"PerfusionWordEdit: the text before the word 'cat' .* is longer than one 77-token chunk"),
    _file("header_nested_deep", raw(deep_header), r"not a safetensors file or corrupt header: header JSON is nested too deeply"),
    _file("passwd_like_text", raw(lambda good: b"root:x:0:0:root:/root:/bin/bash\n"),
          r"not a safetensors file or corrupt header: the header length field exceeds the 256 KiB limit$"),
    _file("gate_default_strength_huge", mutate(setter("defaults", "strength", 1e6)),
          r"default gate strength is 1e\+06; must be in \[0, 2\]"),
    _file("gate_default_strength_negative", mutate(setter("defaults", "strength", -1.0)),
          r"default gate strength is -1; must be in \[0, 2\]"),
    _file("value_at_fp16_max", mutate(poke("v_target.", 65000.0)),
          r"tensor 'v_target\.[\w.]+' has values up to 6\.5e\+04 \(at most 1000"),
    _file("u_subnormal", mutate(lambda t, m: t.__setitem__("u", t["u"] * 1e-39)), r"tensor 'u' has norm"),
    _file("i_star_near_float32_max", mutate(lambda t, m: t.__setitem__("i_star", t["i_star"] * 1e36)),
          r"tensor 'i_star' has values up to"),
]
