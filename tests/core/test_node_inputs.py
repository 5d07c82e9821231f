"""The saved widget list of a node mapped onto its inputs, for the V3 dynamic inputs newer
hosts save (dynamic combos, autogrow sockets) and for files saved before a node gained a
widget. Node definitions are written here in ``/object_info`` form, so no server is needed;
the server-harness tests run the same code on every stock template of the host at hand."""

from __future__ import annotations

from typing import Any

import pytest

from harness.node_inputs import WidgetMismatch, align_widget_values, expanded_specs, widget_slots
from harness.workflow_format import WorkflowFormatError, api_to_ui, ui_to_api, widget_value_problems

RESIZE = {  # a dynamic combo between two plain widgets; one option nests another dynamic combo
    "name": "Resize",
    "input": {
        "required": {
            "image": ["IMAGE", {}],
            "mode": ["COMFY_DYNAMICCOMBO_V3", {"options": [
                {"key": "dimensions", "inputs": {"required": {
                    "width": ["INT", {"default": 512, "min": 0, "max": 4096}],
                    "crop": ["COMBO", {"options": ["disabled", "center"]}],
                }}},
                {"key": "factor", "inputs": {"required": {"factor": ["FLOAT", {"default": 1.0, "min": 0.1, "max": 8.0}]}}},
                {"key": "codec", "inputs": {"required": {}, "optional": {
                    "encoding": ["COMFY_DYNAMICCOMBO_V3", {"options": [
                        {"key": "auto", "inputs": {"required": {}}},
                        {"key": "re-encode", "inputs": {"required": {"crf": ["FLOAT", {"default": 23.0, "min": 0.0, "max": 51.0}]}}},
                    ]}],
                }}},
            ]}],
            "method": ["COMBO", {"options": ["area", "lanczos"]}],
        },
    },
    "input_order": {"required": ["image", "mode", "method"]},
    "output": ["IMAGE"],
}
BATCH = {  # an autogrow row of image sockets
    "name": "Batch",
    "input": {"required": {"images": ["COMFY_AUTOGROW_V3", {"template": {
        "input": {"required": {"image": ["IMAGE", {}]}}, "prefix": "image", "min": 1, "max": 4}}]}},
    "input_order": {"required": ["images"]},
    "output": ["IMAGE"],
}
SOURCE = {"name": "Source", "input": {"required": {}}, "output": ["IMAGE"]}
GROWN = {  # a node that gained an optional widget after files were saved
    "name": "Video",
    "input": {"required": {"fps": ["FLOAT", {"default": 30.0, "min": 1.0, "max": 120.0}]},
              "optional": {"bit_depth": ["INT", {"default": 8, "min": 8, "max": 10}]}},
    "input_order": {"required": ["fps"], "optional": ["bit_depth"]},
    "output": ["VIDEO"],
}
LOAD3D = {  # the 1.48 frontend saves three buttons right after the file combo
    "name": "Load3D",
    "input": {"required": {
        "model_file": ["COMBO", {"options": ["none", "a.glb"], "file_upload": True}],
        "width": ["INT", {"default": 1024, "min": 1, "max": 4096}],
    }},
    "input_order": {"required": ["model_file", "width"]},
    "output": ["IMAGE"],
}
OBJECT_INFO: dict[str, Any] = {d["name"]: d for d in (RESIZE, BATCH, SOURCE, GROWN, LOAD3D)}


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["dimensions", 640, "center", "lanczos"],
         {"mode": "dimensions", "mode.width": 640, "mode.crop": "center", "method": "lanczos"}),
        (["factor", 2.0, "area"], {"mode": "factor", "mode.factor": 2.0, "method": "area"}),
        (["codec", "re-encode", 18.0, "area"],
         {"mode": "codec", "mode.encoding": "re-encode", "mode.encoding.crf": 18.0, "method": "area"}),
        (["codec", "auto", "area"], {"mode": "codec", "mode.encoding": "auto", "method": "area"}),
    ],
)
def test_a_dynamic_combos_option_brings_its_own_widgets_after_it(values: list[Any], expected: dict[str, Any]) -> None:
    assert align_widget_values(RESIZE, values) == expected
    # The layout the values were read with is the one the chosen options give.
    assert [s.name for s in widget_slots(RESIZE, expected)] == list(expected)


def test_the_wrong_count_for_the_chosen_option_is_refused_without_echoing_values() -> None:
    with pytest.raises(WidgetMismatch) as info:
        align_widget_values(RESIZE, ["factor", 2.0, "private text", "area"])  # 'factor' has one widget, not two
    assert "4 widget values" in str(info.value) and "private text" not in str(info.value)
    with pytest.raises(WidgetMismatch):
        align_widget_values(RESIZE, ["dimensions", 640, "area"])  # 'crop' missing in the middle


def test_a_file_saved_before_a_widget_existed_reads_only_when_asked() -> None:
    with pytest.raises(WidgetMismatch):
        align_widget_values(GROWN, [24.0])
    assert align_widget_values(GROWN, [24.0], older_files=True) == {"fps": 24.0, "bit_depth": 8}
    # Too many values are never read as an older file.
    with pytest.raises(WidgetMismatch):
        align_widget_values(GROWN, [24.0, 8, 3], older_files=True)


def test_frontend_buttons_after_a_named_input_are_matched_with_or_without_them() -> None:
    saved_148 = ["a.glb", "upload3dmodel", "uploadExtraResources", "clear", 512]
    assert align_widget_values(LOAD3D, saved_148) == {"model_file": "a.glb", "width": 512}
    # An older frontend saved neither the buttons nor the upload value.
    assert align_widget_values(LOAD3D, ["a.glb", 512]) == {"model_file": "a.glb", "width": 512}
    # A string where a button would be is the button only if it is that button's name.
    with pytest.raises(WidgetMismatch):
        align_widget_values(LOAD3D, ["a.glb", "upload", 512])


def test_autogrow_sockets_and_dynamic_inputs_convert_both_ways() -> None:
    prompt = {
        "1": {"class_type": "Source", "inputs": {}},
        "2": {"class_type": "Source", "inputs": {}},
        "3": {"class_type": "Batch", "inputs": {"images.image0": ["1", 0], "images.image1": ["2", 0]}},
        "4": {"class_type": "Resize", "inputs": {
            "image": ["3", 0], "mode": "codec", "mode.encoding": "re-encode", "mode.encoding.crf": 18.0, "method": "area"}},
    }
    ui = api_to_ui(prompt, OBJECT_INFO)
    batch = next(n for n in ui["nodes"] if n["type"] == "Batch")
    assert [slot["name"] for slot in batch["inputs"]] == ["images.image0", "images.image1"]  # only those in use
    resize = next(n for n in ui["nodes"] if n["type"] == "Resize")
    assert resize["widgets_values"] == ["codec", "re-encode", 18.0, "area"]
    assert ui_to_api(ui, OBJECT_INFO, meta=False) == prompt
    assert widget_value_problems(prompt, OBJECT_INFO) == []


def test_a_socket_beyond_an_autogrow_inputs_names_and_a_bad_option_are_refused() -> None:
    names = [s.name for s in expanded_specs(BATCH, {})]
    assert names == [f"images.image{i}" for i in range(4)]
    ui = api_to_ui({"1": {"class_type": "Source", "inputs": {}},
                    "2": {"class_type": "Batch", "inputs": {"images.image0": ["1", 0]}}}, OBJECT_INFO)
    batch = next(n for n in ui["nodes"] if n["type"] == "Batch")
    batch["inputs"][0]["name"] = "images.image9"
    with pytest.raises(WorkflowFormatError, match="no input named 'images.image9'"):
        ui_to_api(ui, OBJECT_INFO)
    bad = {"1": {"class_type": "Resize", "inputs": {"mode": "stretch", "method": "area"}}}
    assert any("mode" in p for p in widget_value_problems(bad, OBJECT_INFO, check_combo_options=False))
