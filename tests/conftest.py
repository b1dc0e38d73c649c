from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from batchrun.sim import SimConfig, SimServer

REPO = Path(__file__).resolve().parents[1]


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
