"""Convert between ComfyUI's two workflow formats.

* UI format: what the web UI saves and loads (litegraph "nodes"/"links";
  widget values are a positional list per node).
* API format: what POST /prompt takes (``{id: {"class_type", "inputs"}}``
  with inputs by name; a link is ``[source_id, output_index]``).

We author and test workflows in API form and ship a UI-format twin that
opens in the browser, so both directions are needed. How a node's positional
widget list maps to its inputs is ``harness/node_inputs.py``; here:

* Note/MarkdownNote, Reroute and PrimitiveNode exist only in the UI;
  muted nodes (mode 2) are dropped with everything linked from them and
  bypassed nodes (mode 4) pass a matching-typed input through.

Subgraphs and legacy group nodes are not supported (a clear error says so).
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Iterator, Mapping

from .node_inputs import DYNAMIC_COMBO, WidgetMismatch, align_widget_values, expanded_specs, widget_slots

NOTE_TYPES = frozenset({"Note", "MarkdownNote"})
VIRTUAL_TYPES = NOTE_TYPES | {"Reroute", "PrimitiveNode"}
MODE_MUTED = 2
MODE_BYPASS = 4


class WorkflowFormatError(ValueError):
    """A workflow cannot be converted (unknown node, value/widget mismatch, ...)."""


# ---------------------------------------------------------------------- UI -> API
def _links_by_id(workflow: Mapping[str, Any]) -> dict[int, tuple[Any, int, Any, int, str]]:
    """link id -> (origin id, origin slot, target id, target slot, type); both saved shapes."""
    links: dict[int, tuple[Any, int, Any, int, str]] = {}
    for link in workflow.get("links") or []:
        if isinstance(link, dict):
            links[link["id"]] = (link["origin_id"], link["origin_slot"], link["target_id"], link["target_slot"], link.get("type", "*"))
        else:
            lid, oid, oslot, tid, tslot, typ = link[:6]
            links[lid] = (oid, oslot, tid, tslot, typ)
    return links


def _reject_unsupported(workflow: Mapping[str, Any]) -> None:
    subgraphs = {sg.get("id") for sg in (workflow.get("definitions") or {}).get("subgraphs", [])}
    for node in workflow.get("nodes", []):
        t = str(node.get("type", ""))
        if t in subgraphs:
            raise WorkflowFormatError(f"node {node.get('id')} is a subgraph; subgraphs are not supported")
        if t.startswith("workflow>") or t.startswith("workflow/"):
            raise WorkflowFormatError(f"node {node.get('id')} is a legacy group node ({t}); not supported")


def ui_to_api(
    workflow: Mapping[str, Any], object_info: Mapping[str, Any], *, meta: bool = True, older_files: bool = False
) -> dict[str, Any]:
    """Convert a UI-format workflow into an API-format prompt.

    ``meta`` adds ``_meta.title`` per node, as the frontend does. ``older_files`` reads files
    saved before a node gained widgets, as the frontend does (the missing trailing widgets get
    their defaults); our own workflow files must match their nodes exactly, so it is off by
    default. Raises WorkflowFormatError for unknown node types or widget lists that do not
    match the node definition.
    """
    _reject_unsupported(workflow)
    nodes = {node["id"]: node for node in workflow.get("nodes", [])}
    links = _links_by_id(workflow)

    def resolve(link_id: int, want_type: str, seen: frozenset[int] = frozenset()) -> tuple[str, Any] | None:
        """Follow a link through UI-only and bypassed nodes to a real source."""
        if link_id in seen:
            raise WorkflowFormatError(f"link cycle through link {link_id}")
        seen = seen | {link_id}
        if link_id not in links:
            raise WorkflowFormatError(f"dangling link {link_id}")
        origin_id, origin_slot, _tid, _ts, link_type = links[link_id]
        src = nodes.get(origin_id)
        if src is None:
            raise WorkflowFormatError(f"link {link_id} starts at missing node {origin_id}")
        src_type = src.get("type")
        mode = src.get("mode", 0)
        if src_type == "PrimitiveNode":
            values = src.get("widgets_values") or []
            if not values:
                raise WorkflowFormatError(f"PrimitiveNode {origin_id} has no value")
            return ("value", values[0])
        if mode == MODE_MUTED:
            return None
        if src_type == "Reroute" or mode == MODE_BYPASS:
            ins = src.get("inputs") or []
            if src_type == "Reroute":
                candidates = [0] if ins else []
            else:
                match = want_type if want_type not in ("*", "") else link_type
                order = [origin_slot] + list(range(len(ins)))
                candidates = [k for k in order if k < len(ins) and ins[k].get("type") == match][:1]
            for k in candidates:
                up = ins[k].get("link")
                return resolve(up, want_type, seen) if up is not None else None
            return None
        if src_type in NOTE_TYPES:
            raise WorkflowFormatError(f"link {link_id} starts at note node {origin_id}")
        return ("link", [str(origin_id), int(origin_slot)])

    prompt: dict[str, Any] = {}
    for node in sorted(nodes.values(), key=lambda n: (n.get("order", 0), str(n["id"]))):
        ntype = node.get("type")
        if ntype in VIRTUAL_TYPES or node.get("mode", 0) in (MODE_MUTED, MODE_BYPASS):
            continue
        node_def = object_info.get(ntype)
        if node_def is None:
            raise WorkflowFormatError(f"node {node['id']}: unknown node type {ntype!r}")
        raw = node.get("widgets_values")
        if isinstance(raw, dict):  # some nodes save widgets by name
            widgets = {s.name for s in expanded_specs(node_def, raw) if s.is_widget}
            inputs = {k: v for k, v in raw.items() if k in widgets}
        else:
            try:
                inputs = align_widget_values(node_def, list(raw or []), older_files=older_files)
            except WidgetMismatch as e:
                raise WorkflowFormatError(f"node {node['id']} ({ntype}): {e}") from None
        specs = {s.name: s for s in expanded_specs(node_def, inputs)}
        for slot in node.get("inputs") or []:
            name = (slot.get("widget") or {}).get("name") or slot.get("name")
            if name not in specs:
                raise WorkflowFormatError(f"node {node['id']} ({ntype}): no input named {name!r}")
            if slot.get("link") is None:
                continue
            resolved = resolve(slot["link"], str(slot.get("type", "*")))
            if resolved is None:
                if not specs[name].is_widget:
                    inputs.pop(name, None)  # source muted or bypass without match: input left out
                continue
            inputs[name] = resolved[1]
        entry: dict[str, Any] = {"inputs": inputs, "class_type": ntype}
        if meta:
            entry["_meta"] = {"title": node.get("title") or node_def.get("display_name") or ntype}
        prompt[str(node["id"])] = entry
    return prompt


# ---------------------------------------------------------------------- API -> UI
def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def _node_ids(prompt: Mapping[str, Any]) -> dict[str, int]:
    """Keep numeric prompt ids; renumber all ids 1..n if any is not numeric."""
    keys = list(prompt)
    if all(k.isdigit() for k in keys):
        return {k: int(k) for k in keys}
    return {k: i + 1 for i, k in enumerate(keys)}


def _depths(prompt: Mapping[str, Any]) -> dict[str, int]:
    """Longest-path depth of every node from the sources (for a left-to-right layout)."""
    depth: dict[str, int] = {}

    def visit(nid: str, stack: tuple[str, ...]) -> int:
        if nid in depth:
            return depth[nid]
        if nid in stack:
            raise WorkflowFormatError(f"cycle through node {nid}")
        parents = [v[0] for v in prompt[nid]["inputs"].values() if _is_link(v) and v[0] in prompt]
        depth[nid] = 1 + max((visit(p, stack + (nid,)) for p in parents), default=-1)
        return depth[nid]

    for nid in prompt:
        visit(nid, ())
    return depth


def _output_type(node_def: Mapping[str, Any], index: int) -> str:
    typ = node_def.get("output", [])[index]
    return "COMBO" if isinstance(typ, list) else str(typ)


def api_to_ui(prompt: Mapping[str, Any], object_info: Mapping[str, Any]) -> dict[str, Any]:
    """Build a UI-format workflow from an API-format prompt.

    Nodes are laid out in columns by graph depth. Control-after-generate
    widgets are set to "fixed" so the loaded workflow reproduces the prompt.
    Inputs missing from the prompt get their default widget value (the UI
    format cannot express "unset"), so ``ui_to_api(api_to_ui(p))`` equals
    ``p`` for prompts that set every widget input, as UI-made prompts do.
    """
    ids = _node_ids(prompt)
    depth = _depths(prompt)
    ui_nodes: dict[str, dict[str, Any]] = {}
    links: list[list[Any]] = []

    for nid, entry in prompt.items():
        ctype = entry.get("class_type")
        node_def = object_info.get(ctype)
        if node_def is None:
            raise WorkflowFormatError(f"node {nid}: unknown node type {ctype!r}")
        known = {s.name for s in expanded_specs(node_def, entry.get("inputs", {}))}
        unknown = set(entry.get("inputs", {})) - known
        if unknown:
            raise WorkflowFormatError(f"node {nid} ({ctype}): unknown inputs {sorted(unknown)}")
        outputs = [
            {"name": (node_def.get("output_name") or [None] * (i + 1))[i] or _output_type(node_def, i),
             "type": _output_type(node_def, i), "links": [], "slot_index": i}
            for i in range(len(node_def.get("output", [])))
        ]
        node = {
            "id": ids[nid], "type": ctype, "pos": [0, 0], "size": [320, 100], "flags": {},
            "order": 0, "mode": 0, "inputs": [], "outputs": outputs,
            "properties": {"Node name for S&R": ctype}, "widgets_values": [],
        }
        title = (entry.get("_meta") or {}).get("title")
        if title and title != node_def.get("display_name"):
            node["title"] = title
        ui_nodes[nid] = node

    for nid, entry in prompt.items():
        node = ui_nodes[nid]
        node_def = object_info[entry["class_type"]]
        values = entry.get("inputs", {})
        by_name = {s.name: s for s in expanded_specs(node_def, values)}
        for spec in by_name.values():
            value = values.get(spec.name)
            if (spec.is_widget or spec.grown) and not _is_link(value):
                continue
            slot = {"name": spec.name, "type": spec.type, "link": None}
            if spec.is_widget:
                slot["widget"] = {"name": spec.name}
            if _is_link(value):
                src_id, src_slot = value
                if src_id not in ui_nodes:
                    raise WorkflowFormatError(f"node {nid}: input {spec.name} links to missing node {src_id}")
                src_def = object_info[prompt[src_id]["class_type"]]
                if not 0 <= src_slot < len(src_def.get("output", [])):
                    raise WorkflowFormatError(f"node {nid}: input {spec.name} links to missing output {value}")
                link_id = len(links) + 1
                links.append([link_id, ids[src_id], src_slot, node["id"], len(node["inputs"]), _output_type(src_def, src_slot)])
                ui_nodes[src_id]["outputs"][src_slot]["links"].append(link_id)
                slot["link"] = link_id
            elif value is not None:
                raise WorkflowFormatError(f"node {nid}: socket input {spec.name} has a literal value; UI format cannot hold it")
            node["inputs"].append(slot)
        widgets: list[Any] = []
        for ws in widget_slots(node_def, values):
            if ws.kind == "input":
                v = values.get(ws.name)
                widgets.append(by_name[ws.name].default() if v is None or _is_link(v) else v)
            else:
                widgets.append(ws.saved)
        node["widgets_values"] = widgets
        rows = max(len(node["inputs"]), len(node["outputs"])) + len(widgets)
        # Nodes that show their images grow by the image once run: leave room, or they cover the next node.
        room = IMAGE_ROOM if entry["class_type"] in IMAGE_NODES else 0
        node["size"] = [320, 46 + 24 * rows + room]

    for node in ui_nodes.values():
        for out in node["outputs"]:
            if not out["links"]:
                out["links"] = None  # what the frontend saves for an unconnected output

    _layout(ui_nodes, depth)
    ordered = sorted(ui_nodes.items(), key=lambda kv: (depth[kv[0]], kv[1]["id"]))
    for order, (_nid, node) in enumerate(ordered):
        node["order"] = order
    nodes = [node for _nid, node in ordered]
    body = {
        "last_node_id": max((n["id"] for n in nodes), default=0),
        "last_link_id": len(links),
        "nodes": nodes,
        "links": links,
        "groups": [],
        "config": {},
        "extra": {"ds": {"scale": 1.0, "offset": [0, 0]}},
        "version": 0.4,
    }
    # A content-derived id keeps shipped workflow files stable across regenerations.
    wf_id = str(uuid.uuid5(uuid.NAMESPACE_URL, json.dumps(body, sort_keys=True)))
    return {"id": wf_id, "revision": 0, **body}


IMAGE_NODES = ("SaveImage", "PreviewImage")
IMAGE_ROOM = 300


def _layout(ui_nodes: Mapping[str, dict[str, Any]], depth: Mapping[str, int]) -> None:
    """Columns by depth, nodes stacked top to bottom in id order within a column."""
    column_y: dict[int, int] = {}
    for nid, node in sorted(ui_nodes.items(), key=lambda kv: (depth[kv[0]], kv[1]["id"])):
        col = depth[nid]
        y = column_y.get(col, 50)
        node["pos"] = [50 + col * 380, y]
        column_y[col] = y + node["size"][1] + 60


def iter_api_links(prompt: Mapping[str, Any]) -> Iterator[tuple[str, str, str, int]]:
    """(target id, input name, source id, output index) for every link in a prompt."""
    for nid, entry in prompt.items():
        for name, value in entry.get("inputs", {}).items():
            if _is_link(value):
                yield nid, name, value[0], value[1]


def widget_value_problems(
    prompt: Mapping[str, Any], object_info: Mapping[str, Any], *, check_combo_options: bool = True
) -> list[str]:
    """Type/range problems of literal inputs against their node definitions.

    A positional misalignment of widget values almost always puts a string on
    a number or a number outside its range, so this catches conversion bugs
    (and stale shipped workflows) without a model or a server run. Pass
    ``check_combo_options=False`` for workflows naming model files that the
    server at hand does not have (COMBO values are then only type-checked).
    """
    problems: list[str] = []
    for nid, entry in prompt.items():
        node_def = object_info.get(entry.get("class_type"))
        if node_def is None:
            problems.append(f"{nid}: unknown node type {entry.get('class_type')!r}")
            continue
        specs = {s.name: s for s in expanded_specs(node_def, entry.get("inputs", {}))}
        for name, value in entry.get("inputs", {}).items():
            spec = specs.get(name)
            if spec is None:
                problems.append(f"{nid}.{name}: no such input")
                continue
            if _is_link(value):
                continue
            where = f"{nid}.{name} ({spec.type}) = {value!r}"
            if spec.type == "INT" or spec.type == "FLOAT":
                ok_type = (isinstance(value, int) and not isinstance(value, bool)) or (
                    spec.type == "FLOAT" and isinstance(value, float)
                )
                if not ok_type:
                    problems.append(f"{where}: not a number of that type")
                    continue
                lo, hi = spec.options.get("min"), spec.options.get("max")
                if (lo is not None and value < lo) or (hi is not None and value > hi):
                    problems.append(f"{where}: outside [{lo}, {hi}]")
            elif spec.type == "BOOLEAN" and not isinstance(value, bool):
                problems.append(f"{where}: not a boolean")
            elif spec.type == "STRING" and not isinstance(value, str):
                problems.append(f"{where}: not a string")
            elif spec.is_combo:
                options = spec.choices()
                if (check_combo_options or spec.type == DYNAMIC_COMBO) and value not in options:
                    problems.append(f"{where}: not one of the {len(options)} options")
                elif not isinstance(value, (str, int, float)):
                    problems.append(f"{where}: not a combo value")
    return problems
