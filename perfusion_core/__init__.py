"""Perfusion math, concept format and statistics; plain torch, no ComfyUI imports."""
