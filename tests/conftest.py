from __future__ import annotations

import os
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from batchrun.sim import SimConfig, SimServer

REPO = Path(__file__).resolve().parents[1]
# a run with no key and no base_url goes to the simulator in every test, whether or not the local extra
# (which would take it to the embedded model) is installed here; tests/test_local.py asks for that model
os.environ.setdefault("BATCHRUN_NO_LOCAL_MODEL", "1")


@pytest.fixture
def make_sim() -> Iterator[Callable[..., SimServer]]:
    """Start simulators on free loopback ports; all are stopped after the test."""
    servers: list[SimServer] = []

    def start(**settings: object) -> SimServer:
        server = SimServer(SimConfig().updated(dict(settings))).start()
        servers.append(server)
        return server

    yield start
    for s in servers:
        s.stop()


@pytest.fixture
def sim(make_sim: Callable[..., SimServer]) -> SimServer:
    return make_sim()


@pytest.fixture
def write_job(tmp_path: Path) -> Callable[..., Path]:
    """Write a job file (and optionally a CSV input) into tmp_path."""

    def write(toml: str, *, csv: str | None = None, name: str = "job.toml") -> Path:
        if csv is not None:
            (tmp_path / "input.csv").write_text(textwrap.dedent(csv).lstrip(), encoding="utf-8")
        path = tmp_path / name
        path.write_text(textwrap.dedent(toml), encoding="utf-8")
        return path

    return write


BASIC_JOB = """
[input]
path = "input.csv"
id_column = "id"

[prompt]
system = "Classify."
template = "Text: {{ text }}"

[request]
model = "gpt-4o-mini"
max_tokens = 50
"""

BASIC_CSV = """
id,text
a1,hello world
a2,good product
a3,bad product
"""


LABEL_SCHEMA = '{type="object", properties={label={type="string", enum=["a","b"]}}}'

STRUCTURED_JOB = """
[input]
path = "input.csv"
id_column = "id"

[prompt]
system = "Label it."
template = "{{{{ text }}}}"

[request]
model = "gpt-4o-mini"
max_tokens = {max_tokens}

[output_schema]
name = "label"
schema = {schema}

[limits]
{limits}

[endpoint]
base_url = "{base_url}"
api_key_env = "BATCHRUN_TEST_KEY"
{extra}
"""


def structured_job(
    base_url: str, *, max_tokens: int = 100, schema: str = LABEL_SCHEMA, limits: str = "", extra: str = ""
) -> str:
    """A structured-output job file against `base_url`, reading input.csv (id, text)."""
    return STRUCTURED_JOB.format(base_url=base_url, max_tokens=max_tokens, schema=schema, limits=limits, extra=extra)


def start_cli_run(job_path: Path, *, env: dict[str, str] | None = None, capture: bool = False):
    """`batchrun run JOB -q` in a subprocess (for kill / Ctrl+C tests)."""
    import subprocess
    import sys

    pipe = subprocess.PIPE if capture else subprocess.DEVNULL
    return subprocess.Popen(
        [sys.executable, "-m", "batchrun", "run", str(job_path), "-q"], stdout=pipe, stderr=pipe, text=True, env=env
    )


def wait_for_ok(sim: SimServer, n: int, *, timeout: float = 60, proc=None) -> None:
    """Wait until the simulator has answered `n` requests with 200 (or the process ended)."""
    import time

    deadline = time.monotonic() + timeout
    while sim.stats()["ok"] < n and time.monotonic() < deadline and (proc is None or proc.poll() is None):
        time.sleep(0.01)
