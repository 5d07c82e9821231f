"""A node definition's inputs as the web UI lays them out, and a saved ``widgets_values`` list
mapped back onto them.

The positional widget list is mapped to input names with the node definitions from
``/object_info``, replaying the frontend's rules (read from the comfyui-frontend-package
bundles 1.32 and 1.48):

* widgets are created for widget-typed inputs in ``input_order`` order, required first, then
  optional, then inputs the frontend adds itself;
* an INT whose spec has ``control_after_generate`` (or, lacking that key, is named
  ``seed``/``noise_seed``) gets an extra "control after generate" widget right after it; a
  COMBO with ``control_after_generate`` gets that and a "control filter list" string widget;
* a COMBO with ``image_upload``/``video_upload``/``animated_image_upload``/``audio_upload``
  makes the frontend add an "upload" button widget after all other widgets; its value
  ("image", or null) is saved in the list too;
* a few bundled frontend extensions add display widgets to specific core nodes (3D preview,
  audio player, progress text, text preview); ``FRONTEND_EXTRA_WIDGETS`` lists them;
* V3 dynamic inputs (newer hosts): a dynamic combo (``COMFY_DYNAMICCOMBO_V3``) is a combo
  whose chosen option brings its own inputs, laid out right after it and named
  ``<combo>.<input>`` in the API prompt (options nest); an autogrow input
  (``COMFY_AUTOGROW_V3``) is a row of sockets ``<name>.<prefix><i>`` or ``<name>.<a|b|...>``,
  never widgets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Mapping

# Input types the frontend draws as widgets (its core widget registry).
# Everything else is a socket that only takes links.
WIDGET_TYPES = frozenset(
    {
        "INT", "FLOAT", "STRING", "BOOLEAN", "COMBO", "MARKDOWN", "COLOR",
        "IMAGECOMPARE", "CHART", "GALLERIA", "TEXTAREA", "BOUNDING_BOXES", "COLORS",
        # Added by bundled frontend extensions for specific core nodes.
        "WEBCAM", "LOAD_3D", "LOAD_3D_ANIMATION", "LOAD3D_CAMERA", "PREVIEW_3D",
    }
)
DYNAMIC_COMBO = "COMFY_DYNAMICCOMBO_V3"
AUTOGROW = "COMFY_AUTOGROW_V3"
CONTROL_VALUES = frozenset({"fixed", "increment", "decrement", "randomize", "increment-wrap"})
UPLOAD_FLAGS = ("image_upload", "video_upload", "animated_image_upload", "audio_upload")
CONTROL_DEFAULT = "fixed"  # what api_to_ui writes: reproducible, unlike the UI's "randomize"
UPLOAD_VALUE = "image"  # the upload button's constant value as the frontend saves it


@dataclass(frozen=True)
class ExtraWidget:
    """A display widget a bundled frontend extension adds to one core node.

    ``saved`` is the value the frontend saves for it; a non-empty string is a button's
    constant name, so only that exact value can be this widget's. ``after`` names the input
    it follows (None: after all the definition's widgets). It may be absent in files saved
    by other frontend versions, and never reaches the API prompt.
    """

    name: str
    saved: Any = None
    after: str | None = None


_AUDIO_UI = (ExtraWidget("audioUI"),)
FRONTEND_EXTRA_WIDGETS: dict[str, tuple[ExtraWidget, ...]] = {
    "SaveGLB": (ExtraWidget("image", ""),),  # Comfy.SaveGLB: PREVIEW_3D
    "Preview3D": (ExtraWidget("image", ""),),  # Comfy.Preview3D: PREVIEW_3D
    "LoadAudio": _AUDIO_UI,
    "SaveAudio": _AUDIO_UI,
    "SaveAudioMP3": _AUDIO_UI,
    "SaveAudioOpus": _AUDIO_UI,
    "PreviewAudio": _AUDIO_UI,
    "GetImageSize": (ExtraWidget("progress_text", ""),),  # text the node sends with send_progress_text
    # 1.48: the preview's markdown and plain-text views and its copy button.
    "PreviewAny": (ExtraWidget("preview_markdown"), ExtraWidget("preview_text"), ExtraWidget("copy")),
    # 1.48: three buttons right after the file combo.
    "Load3D": tuple(
        ExtraWidget(name, name, after="model_file") for name in ("upload3dmodel", "uploadExtraResources", "clear")
    ),
}


@dataclass(frozen=True)
class InputSpec:
    """One input of a node definition, in the order the frontend builds them.

    ``name`` is the input's name in the API prompt (``<combo>.<input>`` inside a dynamic
    combo's option, ``<input>.<slot>`` for an autogrow socket).
    """

    name: str
    type: str
    options: Mapping[str, Any]
    optional: bool
    grown: bool = False  # one of an autogrow input's sockets: shown only while in use

    @property
    def is_widget(self) -> bool:
        widget_type = self.type in WIDGET_TYPES or self.type == DYNAMIC_COMBO
        return widget_type and not self.options.get("forceInput", False)

    @property
    def is_combo(self) -> bool:
        return self.type in ("COMBO", DYNAMIC_COMBO)

    @property
    def has_control(self) -> bool:
        if self.type == "INT":
            if "control_after_generate" in self.options:
                return bool(self.options["control_after_generate"])
            return self.name in ("seed", "noise_seed")
        if self.type == "COMBO":
            return bool(self.options.get("control_after_generate"))
        return False

    @property
    def has_upload(self) -> bool:
        return self.type == "COMBO" and any(self.options.get(flag) is True for flag in UPLOAD_FLAGS)

    def choices(self) -> list[Any]:
        """A combo's values (a dynamic combo's option keys)."""
        if self.type == DYNAMIC_COMBO:
            return [option["key"] for option in self.options.get("options") or []]
        return list(self.options.get("options") or [])

    def default(self) -> Any:
        """The value the frontend starts a fresh widget with."""
        if "default" in self.options:
            return self.options["default"]
        if self.is_combo:
            choices = self.choices()
            return choices[0] if choices else ""
        return {"INT": 0, "FLOAT": 0.0, "BOOLEAN": False}.get(self.type, "")

    def option_inputs(self, key: Any) -> list[InputSpec]:
        """The inputs a dynamic combo's option ``key`` brings (none for an unknown key)."""
        for option in self.options.get("options") or []:
            if option.get("key") == key:
                return _section_specs(option.get("inputs") or {}, {}, prefix=f"{self.name}.")
        return []

    def autogrow_sockets(self) -> list[InputSpec]:
        """Every socket an autogrow input can grow (the frontend shows those in use)."""
        template = self.options.get("template") or {}
        names = template.get("names") or [f"{template.get('prefix', '')}{i}" for i in range(int(template.get("max", 0)))]
        inner = _section_specs(template.get("input") or {}, {}, prefix="")
        if not inner:
            return []
        typ = inner[0].type
        return [InputSpec(f"{self.name}.{name}", typ, {"forceInput": True}, True, grown=True) for name in names]


def _section_specs(sections: Mapping[str, Any], order: Mapping[str, Any], *, prefix: str) -> list[InputSpec]:
    specs: list[InputSpec] = []
    for section in ("required", "optional"):
        entries = sections.get(section) or {}
        names = [n for n in order.get(section, []) if n in entries]
        names += [n for n in entries if n not in names]
        for name in names:
            raw = entries[name]
            typ, opts = raw[0], (raw[1] if len(raw) > 1 and isinstance(raw[1], dict) else {})
            if isinstance(typ, list):  # legacy combo: the option list is the type
                opts = {**opts, "options": typ}
                typ = "COMBO"
            specs.append(InputSpec(prefix + name, str(typ), opts, section == "optional"))
    return specs


def input_specs(node_def: Mapping[str, Any]) -> list[InputSpec]:
    """The top-level inputs of a node definition (no hidden ones) in frontend widget order."""
    return _section_specs(node_def.get("input", {}), node_def.get("input_order") or {}, prefix="")


def expanded_specs(node_def: Mapping[str, Any], values: Mapping[str, Any]) -> list[InputSpec]:
    """All inputs a node has with the given values: each dynamic combo followed by the inputs
    of its chosen option (the default one where ``values`` lacks it), each autogrow input
    replaced by its sockets."""

    def expand(spec: InputSpec) -> Iterator[InputSpec]:
        if spec.type == AUTOGROW:
            yield from spec.autogrow_sockets()
            return
        yield spec
        if spec.type == DYNAMIC_COMBO:
            for inner in spec.option_inputs(values.get(spec.name, spec.default())):
                yield from expand(inner)

    return [s for spec in input_specs(node_def) for s in expand(spec)]


def combo_choices(node_def: Mapping[str, Any], name: str) -> list[Any]:
    """The choices a combo input offers, whether the node is classic (a list as the type) or V3
    ("COMBO" with an ``options`` list)."""
    spec = next((s for s in input_specs(node_def) if s.name == name), None)
    if spec is None or not spec.is_combo:
        raise KeyError(f"{node_def.get('name', '?')} has no combo input {name!r}")
    return spec.choices()


@dataclass(frozen=True)
class WidgetSlot:
    """One entry of a node's ``widgets_values`` list.

    kind: "input" (a real input), "control" (control after generate),
    "filter" (control filter list), "extra" (an extension's display widget)
    or "upload" (the upload button). ``saved`` is what api_to_ui writes for
    the frontend-only kinds.
    """

    kind: str
    name: str
    saved: Any = None

    @property
    def optional(self) -> bool:
        return self.kind != "input"

    def plausible(self, value: Any) -> bool:
        """Whether a saved value can be this frontend-only widget's value."""
        if self.kind == "control":
            return value in CONTROL_VALUES
        if self.kind == "filter":
            return isinstance(value, str)
        if self.kind == "upload":
            return value is None or value in ("image", "video", "audio", "")
        if self.kind == "extra":
            if isinstance(self.saved, str) and self.saved:
                return value == self.saved
            return value is None or isinstance(value, str)
        return True


def _slot_stream(node_def: Mapping[str, Any], chosen: Mapping[str, Any]) -> Iterator[WidgetSlot]:
    """The widget layout, lazily: a dynamic combo's option is read from ``chosen`` only when
    the slots after it are asked for, so a caller may record the combo's value first."""
    extras = FRONTEND_EXTRA_WIDGETS.get(str(node_def.get("name")), ())

    def slots(spec: InputSpec) -> Iterator[WidgetSlot]:
        if not spec.is_widget:
            return
        yield WidgetSlot("input", spec.name)
        if spec.has_control:
            yield WidgetSlot("control", spec.name, CONTROL_DEFAULT)
            if spec.type == "COMBO":
                yield WidgetSlot("filter", spec.name, "")
        yield from (WidgetSlot("extra", e.name, e.saved) for e in extras if e.after == spec.name)
        if spec.type == DYNAMIC_COMBO:
            for inner in spec.option_inputs(chosen.get(spec.name, spec.default())):
                yield from slots(inner)

    specs = input_specs(node_def)
    for spec in specs:
        yield from slots(spec)
    yield from (WidgetSlot("extra", e.name, e.saved) for e in extras if e.after is None)
    if any(s.has_upload for s in specs):
        audio = any(s.options.get("audio_upload") for s in specs)
        yield WidgetSlot("upload", "upload", None if audio else UPLOAD_VALUE)


def widget_slots(node_def: Mapping[str, Any], chosen: Mapping[str, Any] | None = None) -> list[WidgetSlot]:
    """The positional layout of ``widgets_values`` for a node whose dynamic combos hold
    ``chosen`` (their defaults where absent)."""
    return list(_slot_stream(node_def, chosen or {}))


class WidgetMismatch(ValueError):
    """A saved widget list does not fit the node definition."""


def align_widget_values(node_def: Mapping[str, Any], values: list[Any], *, older_files: bool = False) -> dict[str, Any]:
    """Map a positional ``widgets_values`` list to input names.

    Frontend-only widgets (control, filter, upload, display) may or may not have been saved
    depending on the frontend version; they are matched by count first, and by the shape of
    the value otherwise. Any leftover or missing value is an error: silently shifting values
    onto the wrong inputs is the failure mode this module exists to prevent. With
    ``older_files``, a list that ends early (a file saved before its node gained widgets)
    gets the missing trailing inputs' defaults, as the frontend gives them when it loads it.
    """
    for skip_implausible in (False, True):
        named = _walk(node_def, values, skip_implausible=skip_implausible, older_files=older_files)
        if named is not None:
            return named
    layout = [s.name if s.kind == "input" else s.kind for s in widget_slots(node_def)]
    raise WidgetMismatch(f"{len(values)} widget values do not fit widgets {layout}")


def _walk(node_def: Mapping[str, Any], values: list[Any], *, skip_implausible: bool, older_files: bool) -> dict[str, Any] | None:
    """One pass over the layout: every slot takes the next value, or (``skip_implausible``)
    a frontend-only slot whose shape the value does not have is passed over, and so is one
    left without a value at the end. None if the values and the slots do not come out even."""
    chosen: dict[str, Any] = {}
    i = 0
    for slot in _slot_stream(node_def, chosen):
        if i == len(values):
            if not skip_implausible:
                return None  # the first pass pairs the whole layout with the whole list
            if slot.optional:
                continue
            if not older_files:
                return None
            # Only for older files: the spec under the options chosen so far, looked up when needed.
            chosen[slot.name] = next(sp for sp in expanded_specs(node_def, chosen) if sp.name == slot.name).default()
            continue
        if skip_implausible and slot.optional and not slot.plausible(values[i]):
            continue
        if slot.kind == "input":
            chosen[slot.name] = values[i]
        i += 1
    return chosen if i == len(values) else None

