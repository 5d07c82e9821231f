"""Run a real, unmodified ComfyUI server as a subprocess for end-to-end tests.

Why a subprocess and not in-process: the server's own start-up path (custom
node discovery, extra model paths, prompt validation, the execution queue,
history and /view) is exactly what users hit, and a separate process keeps
ComfyUI's global state (folder_paths, loaded models, interrupt flags) out of
the test process.

Isolation, so a test run never touches the host checkout or the network:

* every writable folder (models, input, output, temp, user, the sqlite
  database) lives in a throw-away work directory (``--base-directory`` plus
  the explicit ``--*-directory`` flags and ``--database-url``);
* this repository is loaded as a custom node pack through the
  ``custom_nodes:`` key of an ``--extra-model-paths-config`` yaml that points
  at a folder holding only a symlink to the repository root, so nothing is
  copied into the host. ComfyUI's loader lists that folder, sees the link as
  a directory and imports ``<link>/__init__.py`` as a package whose
  ``sys.modules`` name is the link's path (dots replaced), so the pack must
  import its own modules relatively or via its own ``sys.path`` entry; its
  nodes report ``python_module`` ``custom_nodes.<pack_name>``;
* ``--disable-api-nodes`` keeps the paid API nodes (and the frontend's calls
  to them) off, the default frontend comes from the installed pip package
  (no GitHub release look-up), and Hugging Face libraries are told to stay
  offline.
"""

from __future__ import annotations

import atexit
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Mapping, Sequence

import requests
import yaml
from PIL import Image

from harness.comfy_host import host_dir

REPO_ROOT = Path(__file__).resolve().parent.parent

# Model folder kinds that a test may fill; all point into <work>/base/models.
MODEL_FOLDERS: tuple[str, ...] = (
    "checkpoints",
    "loras",
    "controlnet",
    "vae",
    "perfusion",
    "embeddings",
    "clip",
    "text_encoders",
    "diffusion_models",
    "clip_vision",
    "upscale_models",
)

# What ComfyUI prints for each custom node folder after importing it:
# "{seconds:6.1f} seconds{ (IMPORT FAILED)}: {module path}".
_IMPORT_LINE = re.compile(r"^\s*[\d.]+ seconds( \(IMPORT FAILED\))?: (?P<path>.+?)\s*$")
# Newer hosts (0.33) colour each log line and put the level in front: "ESC[32m[INFO]ESC[0m message".
_COLOUR = re.compile(r"\x1b\[[0-9;]*m")
_LEVEL_TAG = re.compile(r"^\[(?:DEBUG|DETAIL|INFO|WARNING|ERROR|CRITICAL)\] ", re.MULTILINE)


def plain_log(text: str) -> str:
    """A server log as 0.3.75 prints it: without colour codes and per-line level tags."""
    return _LEVEL_TAG.sub("", _COLOUR.sub("", text))


class ServerError(RuntimeError):
    """The server could not be started or answered with something unexpected."""


class PromptValidationError(ServerError):
    """POST /prompt rejected the prompt; ``node_errors`` is the server's answer."""

    def __init__(self, message: str, error: Any, node_errors: Mapping[str, Any]) -> None:
        super().__init__(message)
        self.error = error
        self.node_errors = dict(node_errors)


class PromptExecutionError(ServerError):
    """A queued prompt failed (or was interrupted) while executing."""

    def __init__(self, message: str, details: Mapping[str, Any]) -> None:
        super().__init__(message)
        self.details = dict(details)
        self.node_id: str | None = details.get("node_id")
        self.node_type: str | None = details.get("node_type")
        self.exception_message: str = str(details.get("exception_message", ""))
        self.exception_type: str = str(details.get("exception_type", ""))


def free_port() -> int:
    """Ask the OS for a currently unused TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _format_node_errors(node_errors: Mapping[str, Any]) -> str:
    """Flatten ComfyUI's node_errors mapping into readable lines."""
    lines = []
    for node_id, info in node_errors.items():
        cls = info.get("class_type", "?")
        for err in info.get("errors", []):
            detail = err.get("details") or ""
            lines.append(f"  node {node_id} ({cls}): {err.get('message', '')}: {detail}".rstrip(": "))
    return "\n".join(lines)


def _tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.splitlines()[-lines:])


# Servers still running when the interpreter exits (e.g. a test crashed
# between start and stop) are killed so they do not outlive pytest.
_LIVE: "set[ComfyServer]" = set()


@atexit.register
def _kill_leftovers() -> None:
    for server in list(_LIVE):
        server.stop()


class ComfyServer:
    """A ComfyUI server on a free local port with all state in a temp folder.

    Use as a context manager::

        with ComfyServer() as srv:
            pid = srv.queue(prompt)
            entry = srv.wait(pid, timeout=60)
            images = srv.images(entry)

    Tests drop model files into ``srv.models_dir / "<kind>"`` (kinds in
    ``MODEL_FOLDERS``); ComfyUI rescans a folder when its mtime changes, so
    files added after start are found.
    """

    def __init__(
        self,
        *,
        host: Path | None = None,
        work_dir: Path | None = None,
        load_pack: bool = True,
        pack_name: str = "perfusion",
        cpu: bool = True,
        extra_args: Sequence[str] = (),
        start_timeout: float = 180.0,
        stop_timeout: float = 15.0,
        keep_work_dir: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.host = Path(host) if host is not None else host_dir()
        self.load_pack = load_pack
        self.pack_name = pack_name
        self.cpu = cpu
        self.extra_args = [str(a) for a in extra_args]
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.keep_work_dir = keep_work_dir or work_dir is not None
        self._env_extra = dict(env or {})
        self._own_work_dir = work_dir is None
        self.work_dir = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="perfusion-comfy-"))
        self.base_dir = self.work_dir / "base"
        self.models_dir = self.base_dir / "models"
        self.input_dir = self.base_dir / "input"
        self.output_dir = self.base_dir / "output"
        self.temp_dir = self.base_dir / "temp"  # ComfyUI appends "temp" to --temp-directory
        self.user_dir = self.base_dir / "user"
        self.packs_dir = self.work_dir / "packs"
        self.pack_path = self.packs_dir / pack_name
        self.config_path = self.work_dir / "extra_model_paths.yaml"
        self.log_path = self.work_dir / "server.log"
        self.port: int | None = None
        self.start_seconds: float | None = None
        self.client_id = uuid.uuid4().hex
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: io.BufferedWriter | None = None
        self._http = requests.Session()
        # Never route 127.0.0.1 through a proxy from the environment.
        self._http.trust_env = False

    # ------------------------------------------------------------------ life cycle
    def __enter__(self) -> "ComfyServer":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Base URL of the running server."""
        if self.port is None:
            raise ServerError("server not started")
        return f"http://127.0.0.1:{self.port}"

    def _prepare_dirs(self) -> None:
        for d in (self.input_dir, self.output_dir, self.user_dir, self.base_dir / "custom_nodes", self.packs_dir):
            d.mkdir(parents=True, exist_ok=True)
        for kind in MODEL_FOLDERS:
            (self.models_dir / kind).mkdir(parents=True, exist_ok=True)
        if self.load_pack and not self.pack_path.exists():
            # A symlink, not a copy: edits in the checkout are what gets tested.
            self.pack_path.symlink_to(REPO_ROOT, target_is_directory=True)
        models = {"base_path": str(self.models_dir), "is_default": True}
        models.update({kind: kind for kind in MODEL_FOLDERS})
        config: dict[str, Any] = {"perfusion_test_models": models}
        if self.load_pack:
            config["perfusion_test_pack"] = {"custom_nodes": str(self.packs_dir)}
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")

    def command(self, port: int) -> list[str]:
        """The full command line used to start the server on ``port``."""
        cmd = [
            sys.executable,
            str(self.host / "main.py"),
            "--listen", "127.0.0.1",
            "--port", str(port),
            "--base-directory", str(self.base_dir),
            "--extra-model-paths-config", str(self.config_path),
            "--output-directory", str(self.output_dir),
            "--input-directory", str(self.input_dir),
            "--temp-directory", str(self.temp_dir.parent),
            "--user-directory", str(self.user_dir),
            "--database-url", f"sqlite:///{self.user_dir / 'comfyui.db'}",
            "--disable-api-nodes",
            "--disable-auto-launch",
        ]
        if self.cpu:
            cmd.append("--cpu")
        return cmd + self.extra_args

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            PYTHONUNBUFFERED="1",
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            HF_HUB_DISABLE_TELEMETRY="1",
            DO_NOT_TRACK="1",
            NO_PROXY="127.0.0.1,localhost",
        )
        # The host's own tree must not see an inherited PYTHONPATH that could
        # shadow its top-level modules (utils, app, server, ...).
        env.pop("PYTHONPATH", None)
        env.update(self._env_extra)
        return env

    def start(self) -> None:
        """Start the server and block until it answers HTTP requests."""
        if self._proc is not None:
            return
        if not (self.host / "main.py").is_file():
            raise ServerError(f"no ComfyUI host at {self.host} (run tools/setup.sh)")
        self._prepare_dirs()
        _LIVE.add(self)
        last_error: ServerError | None = None
        for _attempt in range(3):
            try:
                self._start_once(free_port())
                return
            except ServerError as e:
                last_error = e
                # Only a lost race for the port is worth another try.
                if "address already in use" not in self.log_text().lower():
                    break
        # The log tail is in the error; a context manager's __exit__ does not
        # run when __enter__ raises, so clean up here.
        self.stop()
        assert last_error is not None
        raise last_error

    def _start_once(self, port: int) -> None:
        self.port = port
        self._log_file = open(self.log_path, "wb")
        t0 = time.perf_counter()
        self._proc = subprocess.Popen(
            self.command(port),
            cwd=str(self.host),
            env=self._env(),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # our signals only; Ctrl-C goes to pytest, which stops us
        )
        deadline = t0 + self.start_timeout
        while True:
            if self._proc.poll() is not None:
                rc = self._proc.returncode
                self._reap()
                raise ServerError(f"ComfyUI exited with code {rc} during start-up; log tail:\n{_tail(self.log_text())}")
            try:
                r = self._http.get(self.url + "/system_stats", timeout=2)
                if r.status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.perf_counter() > deadline:
                self._kill()
                raise ServerError(
                    f"ComfyUI did not answer within {self.start_timeout:.0f}s; log tail:\n{_tail(self.log_text())}"
                )
            time.sleep(0.2)
        self.start_seconds = time.perf_counter() - t0

    def _reap(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        self._proc = None

    def _kill(self) -> None:
        """End the process: SIGINT (ComfyUI cleans its temp dir), then SIGTERM, then SIGKILL."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            for sig, wait_s in ((signal.SIGINT, self.stop_timeout), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
                try:
                    proc.send_signal(sig)
                    proc.wait(timeout=wait_s)
                    break
                except subprocess.TimeoutExpired:
                    continue
                except ProcessLookupError:
                    break
        if proc is not None:
            self._reap()

    def stop(self) -> None:
        """Stop the server and remove the work dir (unless asked to keep it); idempotent."""
        self._kill()
        _LIVE.discard(self)
        self._http.close()
        if self._own_work_dir and not self.keep_work_dir and self.work_dir.exists():
            shutil.rmtree(self.work_dir, ignore_errors=True)

    @property
    def running(self) -> bool:
        """True while the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    # ------------------------------------------------------------------ logs
    def log_text(self) -> str:
        """Everything the server printed so far (stdout and stderr), as plain text (``plain_log``)."""
        if self._log_file is not None:
            self._log_file.flush()
        try:
            return plain_log(self.log_path.read_text(encoding="utf-8", errors="replace"))
        except FileNotFoundError:
            return ""

    def custom_node_imports(self) -> dict[str, bool]:
        """Custom node folders from ComfyUI's import-times table: path -> imported OK."""
        result: dict[str, bool] = {}
        in_table = False
        for line in self.log_text().splitlines():
            if "Import times for custom nodes:" in line:
                in_table = True
                continue
            if in_table:
                m = _IMPORT_LINE.match(line)
                if m:
                    result[m.group("path")] = m.group(1) is None
                elif line.strip():
                    in_table = False
        return result

    def pack_loaded(self) -> bool:
        """Whether ComfyUI imported this repository as a custom node pack."""
        if not self.load_pack:
            return False
        return self.custom_node_imports().get(str(self.pack_path), False)

    def pack_error(self) -> str | None:
        """The traceback/warning ComfyUI logged when importing the pack failed, if any."""
        if not self.load_pack or self.pack_loaded():
            return None
        lines = self.log_text().splitlines()
        needle = str(self.pack_path)
        for i, line in enumerate(lines):
            if needle in line and ("Cannot import" in line or "Skip " in line):
                start = i
                while start > 0 and not lines[start].startswith("Traceback"):
                    start -= 1
                if not lines[start].startswith("Traceback"):
                    start = i
                return "\n".join(lines[start : i + 1])
        imports = self.custom_node_imports()
        if needle not in imports:
            return f"pack {needle} not found in the custom node import table"
        return "import failed (no message found in the log)"

    # ------------------------------------------------------------------ HTTP API
    def get(self, path: str) -> requests.Response:
        """GET ``path`` (e.g. a template file the server serves); raises ServerError unless 200."""
        return self._get(path)

    def _get(self, path: str, **params: Any) -> requests.Response:
        r = self._http.get(self.url + path, params=params or None, timeout=60)
        if r.status_code != 200:
            raise ServerError(f"GET {path} -> {r.status_code}: {r.text[:500]}")
        return r

    def _post(self, path: str, payload: Mapping[str, Any]) -> requests.Response:
        # Serialised here, not with requests' json=, which refuses NaN/Infinity: the server
        # (Python's json) accepts them, so tests must be able to send them as a client could.
        body = json.dumps(dict(payload), allow_nan=True)
        return self._http.post(self.url + path, data=body.encode("utf-8"),
                               headers={"Content-Type": "application/json"}, timeout=60)

    def system_stats(self) -> dict[str, Any]:
        """GET /system_stats (host version, devices)."""
        return self._get("/system_stats").json()

    def object_info(self, node_class: str | None = None) -> dict[str, Any]:
        """GET /object_info (all node definitions) or /object_info/<class>."""
        path = "/object_info" if node_class is None else f"/object_info/{node_class}"
        return self._get(path).json()

    def queue(self, prompt: Mapping[str, Any], *, strict: bool = True) -> str:
        """POST an API-format prompt; return its prompt_id.

        Raises PromptValidationError with the server's node_errors text when
        the prompt is rejected. With ``strict`` (default) a prompt that the
        server accepted only partially (some outputs invalid) is also an error
        and is removed from the queue again.
        """
        r = self._post("/prompt", {"prompt": dict(prompt), "client_id": self.client_id})
        try:
            body = r.json()
        except ValueError:
            raise ServerError(f"POST /prompt -> {r.status_code}: {r.text[:500]}") from None
        node_errors = body.get("node_errors") or {}
        if r.status_code != 200:
            err = body.get("error", {})
            msg = err.get("message", str(err)) if isinstance(err, dict) else str(err)
            details = err.get("details", "") if isinstance(err, dict) else ""
            text = f"prompt rejected: {msg} {details}".rstrip()
            if node_errors:
                text += "\n" + _format_node_errors(node_errors)
            raise PromptValidationError(text, err, node_errors)
        prompt_id = str(body["prompt_id"])
        if strict and node_errors:
            self._post("/queue", {"delete": [prompt_id]})
            self._post("/interrupt", {"prompt_id": prompt_id})
            raise PromptValidationError(
                "prompt only partially valid:\n" + _format_node_errors(node_errors), None, node_errors
            )
        return prompt_id

    def history(self, prompt_id: str) -> dict[str, Any] | None:
        """The /history entry of a prompt, or None while it is not finished."""
        body = self._get(f"/history/{prompt_id}").json()
        return body.get(prompt_id)

    def wait(self, prompt_id: str, timeout: float = 120.0, poll: float = 0.1) -> dict[str, Any]:
        """Block until the prompt finished; return its history entry.

        Raises PromptExecutionError (with the node, exception message and
        traceback from the history entry) if it failed or was interrupted, and
        TimeoutError (after interrupting it) if it did not finish in time.
        """
        deadline = time.monotonic() + timeout
        while True:
            entry = self.history(prompt_id)
            if entry is not None and entry.get("status", {}).get("completed") is not None:
                break
            if not self.running:
                raise ServerError(f"server died while running {prompt_id}; log tail:\n{_tail(self.log_text())}")
            if time.monotonic() > deadline:
                self.interrupt(prompt_id)
                raise TimeoutError(f"prompt {prompt_id} not finished after {timeout:.0f}s; log tail:\n{_tail(self.log_text())}")
            time.sleep(poll)
        status = entry.get("status", {})
        if status.get("status_str") != "success" or not status.get("completed", False):
            for event, data in status.get("messages", []):
                if event == "execution_error":
                    tb = "".join(data.get("traceback") or [])
                    raise PromptExecutionError(
                        f"node {data.get('node_id')} ({data.get('node_type')}) failed: "
                        f"{data.get('exception_type')}: {data.get('exception_message')}\n{tb}",
                        data,
                    )
                if event == "execution_interrupted":
                    raise PromptExecutionError(f"prompt {prompt_id} was interrupted", data)
            raise PromptExecutionError(f"prompt {prompt_id} failed: {json.dumps(status)[:2000]}", status)
        return entry

    def run(self, prompt: Mapping[str, Any], timeout: float = 120.0) -> dict[str, Any]:
        """queue() then wait(): the history entry of a successful run."""
        return self.wait(self.queue(prompt), timeout=timeout)

    def images(self, history: Mapping[str, Any], node_id: str | None = None) -> list[Image.Image]:
        """Fetch the images a finished prompt produced (optionally of one node) via /view.

        Accepts a history entry as returned by wait() or the raw
        ``{prompt_id: entry}`` mapping of /history.
        """
        outputs = history.get("outputs")
        if outputs is None and len(history) == 1:
            outputs = next(iter(history.values())).get("outputs", {})
        result: list[Image.Image] = []
        for nid, out in (outputs or {}).items():
            if node_id is not None and str(nid) != str(node_id):
                continue
            for ref in out.get("images", []):
                r = self._get("/view", filename=ref["filename"], subfolder=ref.get("subfolder", ""), type=ref.get("type", "output"))
                img = Image.open(io.BytesIO(r.content))
                img.load()
                result.append(img)
        return result

    def interrupt(self, prompt_id: str | None = None) -> None:
        """Interrupt the running prompt (only ``prompt_id`` if given)."""
        payload = {"prompt_id": prompt_id} if prompt_id else {}
        self._post("/interrupt", payload)

    def free(self, unload_models: bool = True, free_memory: bool = True) -> None:
        """Ask the server to unload models / drop caches after the current prompt."""
        self._post("/free", {"unload_models": unload_models, "free_memory": free_memory})

    def queue_state(self) -> dict[str, Any]:
        """GET /queue: running and pending prompts."""
        return self._get("/queue").json()

