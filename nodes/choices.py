"""Combo inputs: the value a workflow stores must be one the node offers.

ComfyUI 0.33 checks this itself for V3 nodes; 0.3.75 checks it only for classic
nodes (a V3 combo's type is "COMBO", not the list), so a stale or forged value
would reach the node there. Each node with a combo checks its values in
``validate_inputs``, before anything runs, in the host's own words.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def choice_problem(name: str, value: Any, choices: Sequence[Any]) -> str | None:
    """Why ``value`` is not a valid choice of combo ``name`` (None if it is, or if it is not given:
    a linked input's value is only known when the node runs)."""
    if value is None or value in choices:
        return None
    # Like the host, no gigantic lists (scanned model folders) in the message.
    shown = f"(list of length {len(choices)})" if len(choices) > 20 else str(list(choices))
    return f"Value not in list: {name}: '{value}' not in {shown}"


def validate_choices(**checks: tuple[Any, Sequence[Any]]) -> bool | str:
    """``validate_inputs`` result for several combos: True, or the problems in one message."""
    problems = [p for name, (value, choices) in checks.items() if (p := choice_problem(name, value, choices))]
    return "; ".join(problems) if problems else True
