"""Prices per model from a dated table; an unknown model has an unknown price, never a guess."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from . import local_model
from .errors import JobFileError

if TYPE_CHECKING:
    from .jobs import Job

_REPO_TABLE = Path(__file__).resolve().parents[1] / "data" / "prices.toml"


def money(v: float | None) -> str:
    """Dollars as the plan and its advice print them: 4 decimals under $1, cents above; None: unknown."""
    return "unknown" if v is None else f"${v:,.4f}" if v < 1 else f"${v:,.2f}"


FLEX_MODELS = ("gpt-5", "o3", "o4-mini")
"""Model families OpenAI offers flex processing for (its flex guide, and the SDKs that added it for
them; docs/service-tiers.md). Azure answers 400 for a model without flex, so the plan only recommends
flex for these."""


def flex_offered(model: str) -> bool:
    return model.startswith(FLEX_MODELS)


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """USD per 1M tokens for one model, standard tier."""

    model: str
    input: float
    output: float
    cached_input: float | None = None
    context_window: int | None = None
    flex: ModelPrice | None = None
    """Flex processing's price: the table's `[models.X.flex]`, else the Batch API price."""
    priority: ModelPrice | None = None
    """Priority processing's price, where the table has one (`[models.X.priority]`)."""

    def tier(self, name: str | None) -> ModelPrice:
        """The price of the tier that served a request (the response's `service_tier`): flex and
        priority where known, the standard price for "default" and anything else."""
        if name == "flex" and self.flex is not None:
            return self.flex
        if name == "priority" and self.priority is not None:
            return self.priority
        return self

    def cost(
        self, prompt_tokens: int, completion_tokens: int, *, discount: float = 1.0, cached_tokens: int = 0
    ) -> float:
        """Dollars for a request's usage; `discount` is 0.5 for the Batch API."""
        cached_rate = self.cached_input if self.cached_input is not None else self.input
        uncached = max(prompt_tokens - cached_tokens, 0)
        dollars = (uncached * self.input + cached_tokens * cached_rate + completion_tokens * self.output) / 1_000_000
        return dollars * discount


@dataclass(frozen=True, slots=True)
class PriceTable:
    as_of: str
    batch_discount: float
    models: Mapping[str, ModelPrice]
    source: str = ""
    local: str | None = None
    """Set for your own hardware: "all" prices every model at $0, "unknown" only those the table lacks
    (a local proxy in front of OpenAI, such as LiteLLM on localhost, still costs what OpenAI charges)."""

    def own(self, model: str) -> bool:
        """Whether `model` is priced as a model of your own: $0, tokens still counted."""
        return self.local == "all" or (self.local == "unknown" and self.row(model) is None)

    def lookup(self, model: str) -> ModelPrice | None:
        """The price row for a model: exact name, else the longest table name it starts with."""
        found = self.row(model)
        if self.own(model):
            window = found.context_window if found else None
            return ModelPrice(model=model, input=0.0, output=0.0, cached_input=0.0, context_window=window)
        return found

    def row(self, model: str) -> ModelPrice | None:
        """The table's own row for a model (no local pricing)."""
        if model in self.models:
            return self.models[model]
        best = max((name for name in self.models if model.startswith(name)), key=len, default=None)
        return self.models[best] if best else None

    def merged(self, other: Mapping[str, Any], origin: str) -> PriceTable:
        """This table with rows (and as_of/batch_discount) from a user's table laid over it."""
        table = _parse(other, origin)
        return PriceTable(
            as_of=table.as_of if "as_of" in other else self.as_of,
            batch_discount=table.batch_discount if "batch_discount" in other else self.batch_discount,
            models={**self.models, **table.models},
            source=f"{self.source}; overrides from {origin}",
        )


def _price(name: str, row: Mapping[str, Any], origin: str, key: str) -> ModelPrice:
    if not isinstance(row, Mapping) or "input" not in row or "output" not in row:
        raise JobFileError(origin, key, "needs numbers `input` and `output` (USD per 1M tokens)")
    try:
        return ModelPrice(
            model=name,
            input=float(row["input"]),
            output=float(row["output"]),
            cached_input=float(row["cached_input"]) if "cached_input" in row else None,
            context_window=int(row["context_window"]) if "context_window" in row else None,
        )
    except (TypeError, ValueError) as exc:
        raise JobFileError(origin, key, f"prices must be numbers: {exc}") from exc


def _parse(data: Mapping[str, Any], origin: str) -> PriceTable:
    discount = float(data.get("batch_discount", 0.5))
    if not 0 < discount <= 1:
        raise JobFileError(origin, "batch_discount", "must be in (0, 1], e.g. 0.5 for half price")
    models: dict[str, ModelPrice] = {}
    for name, row in (data.get("models") or {}).items():
        base = _price(name, row, origin, f"models.{name}")
        tiers = {t: _price(name, row[t], origin, f"models.{name}.{t}") for t in ("flex", "priority") if t in row}
        # flex is priced at Batch API rates (OpenAI's flex processing guide) unless the table says otherwise
        flex = tiers.get("flex") or ModelPrice(
            model=name,
            input=base.input * discount,
            output=base.output * discount,
            cached_input=None if base.cached_input is None else base.cached_input * discount,
        )
        models[name] = dataclasses.replace(base, flex=flex, priority=tiers.get("priority"))
    return PriceTable(
        as_of=str(data.get("as_of", "unknown")),
        batch_discount=discount,
        models=models,
        source=str(data.get("source", origin)),
    )


def is_local_url(url: str | None) -> bool:
    """Whether a base_url points at this machine or a private network (a server of one's own)."""
    if not url:
        return False
    host = urlsplit(url).hostname or ""
    if host == "localhost" or host.endswith((".local", ".localhost", ".internal", ".lan")):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_private or address.is_link_local


def load_table(path: str | Path) -> PriceTable:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise JobFileError(path, "pricing.table", "price table file not found") from exc
    except tomllib.TOMLDecodeError as exc:
        raise JobFileError(path, "", f"not valid TOML: {exc}") from exc
    return _parse(data, str(path))


def default_table() -> PriceTable:
    """The price table shipped with batchrun (data/prices.toml)."""
    packaged = resources.files("batchrun").joinpath("_data/prices.toml")
    if packaged.is_file():
        return _parse(tomllib.loads(packaged.read_text(encoding="utf-8")), "batchrun/_data/prices.toml")
    return load_table(_REPO_TABLE)


def price_table_for(job: Job) -> PriceTable:
    """The job's price table: the bundled one, its [pricing] table and models over it, and $0 for a model of
    your own (the embedded one, a private address, `[pricing] local = true`)."""
    table = default_table()
    if job.pricing.table is not None:
        custom = load_table(job.pricing.table)
        table = PriceTable(
            as_of=custom.as_of,
            batch_discount=custom.batch_discount,
            models={**table.models, **custom.models},
            source=custom.source,
        )
    if job.pricing.models:
        table = table.merged({"models": job.pricing.models}, f"{job.source_path} [pricing.models]")
    local = job.pricing.local
    if local is None and embedded_model(job) is not None:  # the embedded model runs on this machine: $0
        return dataclasses.replace(table, local="all")
    if local is None and job.endpoint.base_url is not None and is_local_url(job.endpoint.base_url):
        return dataclasses.replace(table, local="unknown")  # a model of your own on your own server: $0
    return dataclasses.replace(table, local="all") if local else table


def embedded_model(job: Job) -> str | None:
    """The embedded model `job` runs on (local_model.embedded_spec), if any."""
    ep = job.endpoint
    return local_model.embedded_spec(
        ep.local, base_url=ep.base_url, azure=ep.azure_endpoint is not None, key=bool(os.environ.get(ep.api_key_env))
    )
