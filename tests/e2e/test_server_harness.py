"""The real-server harness and the UI/API workflow converter, against stock ComfyUI.

Nothing here depends on this pack's nodes: the pack is loaded as it will be
in later tests, but whether it imports is only checked for consistency
between the log and /object_info. Later end-to-end tests build on these
tools, so their failure modes (validation errors, execution errors,
timeouts, interrupts) are tested here with stock nodes that need no model.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any, Iterator

import comfyui_frontend_package as frontend_package  # installed with the host's requirements
import comfyui_workflow_templates as templates  # installed with the host's requirements
import pytest

from harness.comfy_server import ComfyServer, PromptExecutionError, PromptValidationError, ServerError
from harness.node_inputs import widget_slots
from harness.workflow_format import WorkflowFormatError, api_to_ui, ui_to_api, widget_value_problems


@pytest.fixture(scope="module")
def server() -> Iterator[ComfyServer]:
    with ComfyServer() as srv:
        print(f"\nComfyUI server start: {srv.start_seconds:.1f} s (pack loaded: {srv.pack_loaded()})")
        yield srv


@pytest.fixture(scope="module")
def object_info(server: ComfyServer) -> dict[str, Any]:
    return server.object_info()


def template(template_id: str) -> dict[str, Any]:
    """A stock UI-format template shipped with the frontend."""
    path = templates.get_asset_path(template_id, f"{template_id}.json")
    return json.loads(Path(path).read_text(encoding="utf-8"))


def image_prompt(color: int = 0x3366CC, invert: bool = True) -> dict[str, Any]:
    """EmptyImage -> (ImageInvert) -> SaveImage; no model needed."""
    prompt: dict[str, Any] = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 32, "batch_size": 1, "color": color}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2" if invert else "1", 0], "filename_prefix": "harness"}},
    }
    if invert:
        prompt["2"] = {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}}
    return prompt


def near(pixel: Any, expected: tuple[int, int, int]) -> bool:
    """Equal up to one step: SaveImage truncates 255 * float to uint8."""
    return all(abs(int(a) - b) <= 1 for a, b in zip(pixel, expected))


# ---------------------------------------------------------------------- server
def test_server_is_isolated_and_lists_stock_nodes(server: ComfyServer, object_info: dict[str, Any]) -> None:
    assert server.start_seconds is not None and server.start_seconds < server.start_timeout
    for stock in ("KSampler", "CheckpointLoaderSimple", "LoraLoader", "EmptyImage", "SaveImage", "CLIPTextEncode"):
        assert stock in object_info, stock
    log = server.log_text()
    assert f"Setting output directory to: {server.output_dir}" in log
    assert f"Adding extra search path checkpoints {server.models_dir / 'checkpoints'}" in log
    assert "Adding extra search path perfusion" in log
    # API nodes (which call paid web services) are not loaded, and the
    # frontend comes from the installed package, not from a GitHub release.
    # The web root line is read because both hosts print it; the frontend
    # version line is not (0.3.75 prints "ComfyUI frontend version:", 0.33 does not).
    assert not any(d.get("api_node") for d in object_info.values())
    roots = [line.split("web root:", 1)[1].strip() for line in log.splitlines() if "[Prompt Server] web root:" in line]
    assert len(roots) == 1, roots
    assert Path(roots[0]).resolve() == (Path(frontend_package.__file__).parent / "static").resolve()
    assert "GitHub" not in log


def test_failed_start_reports_the_log_and_cleans_up() -> None:
    srv = ComfyServer(load_pack=False, extra_args=["--no-such-flag"])
    with pytest.raises(ServerError, match="unrecognized arguments: --no-such-flag"):
        with srv:
            pass
    assert not srv.running
    assert not srv.work_dir.exists()


def test_pack_import_status_agrees_with_object_info(server: ComfyServer, object_info: dict[str, Any]) -> None:
    """pack_loaded() reads the log; the nodes the server lists must agree with it."""
    ours = [k for k, d in object_info.items() if d.get("python_module") == f"custom_nodes.{server.pack_name}"]
    assert str(server.pack_path) in server.custom_node_imports()
    if server.pack_loaded():
        assert server.pack_error() is None
        assert ours, "pack imported but registered no nodes"
        # The pack says once which ComfyUI it runs on (the version the server itself reports).
        version = server.system_stats()["system"]["comfyui_version"]
        lines = [line for line in server.log_text().splitlines() if "Perfusion: running on ComfyUI" in line]
        assert len(lines) == 1 and f"ComfyUI {version} " in lines[0], lines
    else:
        assert not ours
        assert server.pack_error()


def test_stock_workflow_returns_images(server: ComfyServer) -> None:
    prompt = image_prompt(0x3366CC, invert=False)
    prompt["4"] = {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}}
    prompt["5"] = {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "harness_inv"}}
    entry = server.run(prompt, timeout=60)
    plain, inverted = server.images(entry, node_id="3"), server.images(entry, node_id="5")
    assert len(plain) == 1 and len(inverted) == 1
    assert plain[0].size == (64, 32) and inverted[0].size == (64, 32)
    assert plain[0].convert("RGB").getpixel((10, 10)) == (0x33, 0x66, 0xCC)
    assert near(inverted[0].convert("RGB").getpixel((63, 31)), (0xCC, 0x99, 0x33))
    assert len(server.images(entry)) == 2
    saved = entry["outputs"]["3"]["images"][0]
    assert (server.output_dir / saved["subfolder"] / saved["filename"]).is_file()


def test_validation_error_names_node_and_input(server: ComfyServer) -> None:
    prompt = image_prompt()
    prompt["1"]["inputs"]["width"] = 0  # below the definition's min of 1
    with pytest.raises(PromptValidationError) as err:
        server.queue(prompt)
    assert "1" in err.value.node_errors
    assert "width" in str(err.value)
    assert "EmptyImage" in str(err.value)


def test_execution_error_carries_message_and_traceback(server: ComfyServer) -> None:
    # A stock node that passes validation and fails while running, on every tested host:
    # SaveImage checks where its prefix points only when it saves (both hosts raise a plain
    # Exception). Node ids and the prefix are checked as they come back.
    prompt = image_prompt(invert=False)
    prompt["3"]["inputs"]["filename_prefix"] = "../escaped_harness"
    with pytest.raises(PromptExecutionError) as err:
        server.run(prompt, timeout=60)
    assert err.value.node_id == "3"
    assert err.value.exception_type == "Exception"
    assert "outside the output folder" in err.value.exception_message
    assert not (server.output_dir.parent / "escaped_harness_00001_.png").exists()
    assert "Traceback" in str(err.value) or "File " in str(err.value)


def test_timeout_interrupts_the_prompt(server: ComfyServer) -> None:
    """wait() times out, interrupts, and the prompt then reports the interruption."""
    prompt: dict[str, Any] = {"1": {"class_type": "EmptyImage", "inputs": {"width": 768, "height": 768, "batch_size": 1, "color": 7}}}
    prev = "1"
    for i in range(2, 6):  # a chain of slow nodes; interrupts act between nodes
        prompt[str(i)] = {"class_type": "ImageBlur", "inputs": {"image": [prev, 0], "blur_radius": 31, "sigma": 3.0 + i}}
        prev = str(i)
    prompt["9"] = {"class_type": "PreviewImage", "inputs": {"images": [prev, 0]}}
    prompt_id = server.queue(prompt)
    deadline = time.monotonic() + 30
    while not any(item[1] == prompt_id for item in server.queue_state()["queue_running"]):
        assert time.monotonic() < deadline, "prompt never started"
        time.sleep(0.05)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        server.wait(prompt_id, timeout=0.3)
    with pytest.raises(PromptExecutionError, match="interrupted"):
        server.wait(prompt_id, timeout=60)
    # The server is usable afterwards.
    assert server.images(server.run(image_prompt(), timeout=60))
    print(f"\ninterrupt took effect after {time.monotonic() - t0:.1f} s")


# ---------------------------------------------------------------------- converter: stock templates
# The templates below are in the stock template packages of both tested hosts, with the same
# nodes, values and links (0.33's package dropped older ones such as image2image and lora).
WIDGET_TEMPLATE = "sd3.5_large_blur"  # checkpoint -> KSampler -> VAEDecode, a LoadImage and two notes


def test_ui_to_api_maps_widgets_by_name(object_info: dict[str, Any]) -> None:
    api = ui_to_api(template(WIDGET_TEMPLATE), object_info)
    assert api["3"]["class_type"] == "KSampler"
    # [seed, control_after_generate, steps, cfg, sampler, scheduler, denoise]: the control value is dropped.
    assert api["3"]["inputs"] == {
        "seed": 268264726798396, "steps": 30, "cfg": 4, "sampler_name": "euler",
        "scheduler": "simple", "denoise": 1,
        "model": ["4", 0], "positive": ["58", 0], "negative": ["58", 1], "latent_image": ["33", 0],
    }
    # LoadImage saves [file, upload-button value]; only the file is an input.
    assert api["57"]["inputs"] == {"image": "sd3.5_large_blur_input_image.png"}
    assert api["3"]["_meta"] == {"title": "KSampler"}
    # Markdown notes (62, 63) are UI-only.
    assert {"62", "63"}.isdisjoint(api)
    assert {e["class_type"] for e in api.values()}.isdisjoint({"MarkdownNote", "Note"})


def test_bypassed_node_passes_matching_input_through(object_info: dict[str, Any]) -> None:
    wf = template("video_wan2.1_alpha_t2v_14B")  # UNETLoader 37 -> LoraLoaderModelOnly 59 (bypassed) -> 65
    assert next(n for n in wf["nodes"] if n["id"] == 59)["mode"] == 4
    api = ui_to_api(wf, object_info)
    assert "59" not in api
    assert api["65"]["inputs"]["model"] == ["37", 0]  # MODEL through 59's model input
    assert api["48"]["inputs"]["model"] == ["65", 0]


def test_reroute_and_primitive_nodes_resolve(object_info: dict[str, Any]) -> None:
    api = ui_to_api(template("hidream_e1_full"), object_info)  # Reroute 48 carries MODEL from 41
    assert api["53"]["inputs"]["model"] == ["41", 0]
    assert api["49"]["inputs"]["model"] == ["41", 0]
    assert "48" not in api

    api = ui_to_api(template("sdxl_simple_example"), object_info)  # PrimitiveNodes feed converted widgets
    assert api["10"]["inputs"]["steps"] == 25 and api["10"]["inputs"]["end_at_step"] == 20
    assert api["11"]["inputs"]["steps"] == 25 and api["11"]["inputs"]["start_at_step"] == 20
    assert api["10"]["inputs"]["noise_seed"] == 721897303308196
    assert api["6"]["inputs"]["text"].startswith("evening sunset scenery")
    assert api["16"]["inputs"]["text"] == "text, watermark"
    assert not any(e["class_type"] == "PrimitiveNode" for e in api.values())


def test_muted_node_is_dropped(object_info: dict[str, Any]) -> None:
    # VAEDecode 8 is muted; its CreateVideo was saved before 0.33 gave the node a bit_depth widget.
    api = ui_to_api(template("hunyuan_video_text_to_video"), object_info, older_files=True)
    assert "8" not in api and "73" in api


def test_stock_templates_convert_and_round_trip(object_info: dict[str, Any]) -> None:
    """Every template whose nodes this server has converts to type-correct inputs and round-trips.

    Templates are read as the frontend reads them (``older_files``): 0.33's package holds lists
    saved before their node gained widgets. Our own workflow files are converted strictly."""
    converted, skipped = 0, []
    for entry in templates.iter_templates():
        try:
            wf = template(entry.template_id)
        except (FileNotFoundError, ValueError):
            continue
        if "nodes" not in wf:
            continue
        try:
            api = ui_to_api(wf, object_info, older_files=True)
        except WorkflowFormatError as e:
            # Only API/audio nodes absent from this server and subgraphs are acceptable reasons.
            assert "unknown node type" in str(e) or "subgraph" in str(e), (entry.template_id, str(e))
            skipped.append(entry.template_id)
            continue
        problems = widget_value_problems(api, object_info, check_combo_options=False)
        assert not problems, (entry.template_id, problems)
        ui = api_to_ui(api, object_info)
        assert_frontend_schema(ui)
        assert ui_to_api(ui, object_info) == api, entry.template_id
        assert ui_to_api(json.loads(json.dumps(ui)), object_info) == api  # survives JSON as a file would
        converted += 1
    print(f"\n{converted} templates converted and round-tripped, {len(skipped)} skipped")
    assert converted >= 50


# ---------------------------------------------------------------------- converter: authored prompts
def assert_frontend_schema(wf: dict[str, Any]) -> None:
    """The required fields and shapes of the frontend's workflow schema (zComfyWorkflow, 1.32 bundle)."""
    def num(x: Any) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool)

    assert isinstance(wf["id"], str) and len(wf["id"]) == 36 and num(wf["revision"])
    assert num(wf["last_node_id"]) and num(wf["last_link_id"]) and num(wf["version"])
    assert isinstance(wf["groups"], list) and isinstance(wf["config"], dict)
    assert num(wf["extra"]["ds"]["scale"]) and len(wf["extra"]["ds"]["offset"]) == 2
    for node in wf["nodes"]:
        assert isinstance(node["id"], int) and isinstance(node["type"], str)
        assert len(node["pos"]) == 2 and len(node["size"]) == 2 and all(map(num, node["pos"] + node["size"]))
        assert isinstance(node["flags"], dict) and num(node["order"]) and num(node["mode"])
        assert isinstance(node["properties"], dict) and isinstance(node["widgets_values"], list)
        for slot in node["inputs"]:
            assert isinstance(slot["name"], str) and isinstance(slot["type"], str)
            assert slot["link"] is None or isinstance(slot["link"], int)
        for slot in node["outputs"]:
            assert isinstance(slot["name"], str) and isinstance(slot["type"], str)
            assert slot["links"] is None or all(isinstance(x, int) for x in slot["links"])
    for link in wf["links"]:
        assert len(link) == 6 and all(isinstance(x, int) for x in link[:5]) and isinstance(link[5], str)


def test_api_to_ui_is_a_well_formed_workflow(object_info: dict[str, Any]) -> None:
    api = ui_to_api(template(WIDGET_TEMPLATE), object_info)
    ui = api_to_ui(api, object_info)
    assert_frontend_schema(ui)
    real = template(WIDGET_TEMPLATE)
    assert set(real) - {"definitions"} <= set(ui) | {"id", "revision"}
    node_keys = {"id", "type", "pos", "size", "flags", "order", "mode", "inputs", "outputs", "properties", "widgets_values"}
    ids = {n["id"] for n in ui["nodes"]}
    assert len(ids) == len(ui["nodes"]) == len(api) and ui["last_node_id"] == max(ids)
    for node in ui["nodes"]:
        assert node_keys <= set(node), node["type"]
        assert len(node["widgets_values"]) == len(widget_slots(object_info[node["type"]]))
    # Every link appears once at its source output and once at its target input.
    by_id = {n["id"]: n for n in ui["nodes"]}
    assert ui["last_link_id"] == len(ui["links"])
    for link_id, src, src_slot, dst, dst_slot, typ in ui["links"]:
        assert link_id in (by_id[src]["outputs"][src_slot]["links"] or [])
        assert by_id[dst]["inputs"][dst_slot]["link"] == link_id
        assert by_id[src]["outputs"][src_slot]["type"] == typ
    # Seeds are pinned so the loaded workflow reproduces the prompt.
    sampler = by_id[3]
    assert sampler["widgets_values"][:2] == [268264726798396, "fixed"]
    # The grid layout does not stack nodes on top of each other, and sources are left of sinks.
    assert len({tuple(n["pos"]) for n in ui["nodes"]}) == len(ui["nodes"])
    assert by_id[4]["pos"][0] < by_id[3]["pos"][0] < by_id[8]["pos"][0]
    assert api_to_ui(api, object_info) == ui  # deterministic, including the workflow id


def test_round_trip_of_an_authored_prompt_and_renumbering(object_info: dict[str, Any]) -> None:
    api = image_prompt()
    assert ui_to_api(api_to_ui(api, object_info), object_info, meta=False) == api
    named = {"img": api["1"], "inv": {**api["2"], "inputs": {"image": ["img", 0]}},
             "out": {**api["3"], "inputs": {**api["3"]["inputs"], "images": ["inv", 0]}}}
    back = ui_to_api(api_to_ui(named, object_info), object_info, meta=False)
    assert back == {"1": named["img"], "2": {**api["2"], "inputs": {"image": ["1", 0]}},
                    "3": {**api["3"], "inputs": {**api["3"]["inputs"], "images": ["2", 0]}}}


def test_converter_rejects_mismatches(object_info: dict[str, Any]) -> None:
    ui = api_to_ui(image_prompt(), object_info)
    bad = copy.deepcopy(ui)
    next(n for n in bad["nodes"] if n["type"] == "EmptyImage")["widgets_values"].append(5)
    with pytest.raises(WorkflowFormatError, match="EmptyImage"):
        ui_to_api(bad, object_info)
    bad = copy.deepcopy(ui)
    next(n for n in bad["nodes"] if n["type"] == "EmptyImage")["widgets_values"].pop()
    with pytest.raises(WorkflowFormatError):
        ui_to_api(bad, object_info)
    bad = copy.deepcopy(ui)
    bad["nodes"][0]["type"] = "NoSuchNode"
    with pytest.raises(WorkflowFormatError, match="NoSuchNode"):
        ui_to_api(bad, object_info)
    with pytest.raises(WorkflowFormatError, match="unknown inputs"):
        api_to_ui({"1": {"class_type": "EmptyImage", "inputs": {"wdth": 3}}}, object_info)


def test_bypass_mute_and_primitive_run_on_the_server(server: ComfyServer, object_info: dict[str, Any]) -> None:
    """UI-only semantics checked by what the server actually renders."""
    ui = api_to_ui(image_prompt(0x102030), object_info)
    invert = next(n for n in ui["nodes"] if n["type"] == "ImageInvert")

    invert["mode"] = 4  # bypass: the image reaches SaveImage unchanged
    api = ui_to_api(ui, object_info)
    assert "2" not in api and api["3"]["inputs"]["images"] == ["1", 0]
    img = server.images(server.run(api, timeout=60))[0]
    assert img.convert("RGB").getpixel((0, 0)) == (0x10, 0x20, 0x30)

    invert["mode"] = 2  # mute: SaveImage loses its input and the server refuses it
    api = ui_to_api(ui, object_info)
    assert "images" not in api["3"]["inputs"]
    with pytest.raises(PromptValidationError, match="images"):
        server.queue(api)

    # A PrimitiveNode driving EmptyImage's width widget (how the old UI converted widgets).
    invert["mode"] = 0
    empty = next(n for n in ui["nodes"] if n["type"] == "EmptyImage")
    link_id = ui["last_link_id"] + 1
    prim_id = ui["last_node_id"] + 1
    ui["nodes"].append({
        "id": prim_id, "type": "PrimitiveNode", "pos": [0, 400], "size": [300, 80], "flags": {}, "order": 0,
        "mode": 0, "inputs": [], "properties": {"Run widget replace on values": False},
        "outputs": [{"name": "INT", "type": "INT", "links": [link_id], "widget": {"name": "width"}}],
        "widgets_values": [48, "fixed"],
    })
    empty["inputs"].append({"name": "width", "type": "INT", "widget": {"name": "width"}, "link": link_id})
    ui["links"].append([link_id, prim_id, 0, empty["id"], len(empty["inputs"]) - 1, "INT"])
    ui["last_link_id"], ui["last_node_id"] = link_id, prim_id
    api = ui_to_api(ui, object_info)
    assert api["1"]["inputs"]["width"] == 48
    img = server.images(server.run(api, timeout=60))[0]
    assert img.size == (48, 32)
    assert near(img.convert("RGB").getpixel((0, 0)), (0xEF, 0xDF, 0xCF))
