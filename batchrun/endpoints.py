"""Which server a run talks to, and the SDK client for it (retries off: ours talk to the limiter).

With no base_url and no API key in the environment, a run goes to the built-in
simulator and says so: a rehearsal costs nothing and sends nothing anywhere.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from . import local_model, redact
from .jobs import Job
from .ledger import SIMULATOR
from .local_model import LocalModel, ServerFacts, server_facts
from .pricing import is_local_url

if TYPE_CHECKING:  # the SDK and the simulator are loaded when an endpoint is opened, not by `plan` or `status`
    import openai

    from .sim import SimConfig, SimServer
    from .transport import Transport

CONNECT_TIMEOUT_S = 10.0
NO_KEY = "no-key"
"""Sent where a server needs no key (vLLM, Ollama, llama.cpp ignore it; the SDK needs one)."""
SIM_KEY = "sk-simulator"


class PlainServer(NamedTuple):
    """What a request to a server named by its base URL needs besides the URL (Endpoint.plain)."""

    key: str
    read_s: float
    """The longest wait between a reply's bytes (the SDK client's read timeout)."""


def _plain(job: Job, key: str | None, base_url: str) -> PlainServer | None:
    from urllib.parse import urlsplit

    from .transport import PLAIN_ENV_BLOCKERS, http_client_forced

    if http_client_forced():  # BATCHRUN_HTTP_CLIENT=sdk: every request through the SDK
        return None
    if any(os.environ.get(name) is not None for name in PLAIN_ENV_BLOCKERS):
        return None  # the SDK adds headers from the environment: let it build the requests
    parts = urlsplit(base_url)
    if parts.query or parts.fragment:  # (a gateway's ?api-version=…): how it joins a path is the SDK's call
        return None
    return PlainServer(key or NO_KEY, _timeout_seconds(job))


LOCAL_BANNER = (
    "{why}running on the embedded LOCAL model {name} (llama.cpp on this machine, {slots} slots, {ctx:,} tokens of "
    "context each): real answers from a small model, nothing billed."
)
SIM_BANNER = (
    "No {env} in the environment and no [endpoint] base_url: running against batchrun's built-in "
    "SIMULATOR at {url}. Replies are synthetic and nothing is billed. Set {env} to run for real."
)


@dataclass
class Endpoint:
    connect: Callable[[], openai.AsyncOpenAI]
    """Makes the SDK client for this endpoint — called once, when something first needs the SDK (the
    Batch API, Azure's or OpenAI's own request shape): see `client`."""
    base_url: str
    model: str
    """The model name sent in requests (the deployment name on Azure)."""
    simulated: bool = False
    sim: SimServer | None = None
    banner: str = ""
    local: LocalModel | None = None
    """The embedded llama.cpp server this run started ([endpoint] local), stopped at close."""
    facts: ServerFacts | None = None
    """What a server of your own says about itself (llama.cpp /props, vLLM /v1/models), if anything."""
    plain: PlainServer | None = None
    """A server named by its base URL with a static key: sent to without loading the SDK (transport)."""
    http: Transport = field(init=False)
    """How the engines send requests (transport.for_client): one connection pool for the run."""
    _client: openai.AsyncOpenAI | None = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        from .transport import DirectTransport, for_client

        if self.plain is not None:
            p = self.plain
            self.http = DirectTransport.plain(self.base_url, p.key, read_s=p.read_s, connect_s=CONNECT_TIMEOUT_S)
        else:
            self.http = for_client(self.client)

    @property
    def client(self) -> openai.AsyncOpenAI:
        """The SDK client, made on first use (the Batch API, an SDK-shaped request): ~0.4 s of imports
        a run on a plain server never pays."""
        if self._client is None:
            self._client = self.connect()
        return self._client

    @property
    def context_window(self) -> int | None:
        """Tokens a request may use in all, where the server says (llama.cpp's per-slot context, vLLM's
        max_model_len, the embedded model's slots)."""
        if self.local is not None:
            return self.local.context
        return self.facts.context if self.facts is not None else None

    @property
    def max_in_flight(self) -> int | None:
        """A cap on requests in flight the server implies: a llama.cpp server queues past its slots."""
        slots = self.local.slots if self.local is not None else self.facts.slots if self.facts is not None else None
        return 2 * slots if slots else None

    @property
    def cache_key(self) -> str:
        """The endpoint as the ledger keys answers: the simulator's port changes every run, so all
        simulated answers share one key."""
        if self.local is not None:  # its port changes every run: the model file names it
            return f"local:{self.local.path.name}"
        return SIMULATOR if self.simulated else self.base_url.rstrip("/")

    async def close(self) -> None:
        await self.http.aclose()
        if self._client is not None:
            await self._client.close()
        if self.sim is not None:
            self.sim.stop()
        if self.local is not None:
            self.local.stop()


def _http(job: Job) -> openai.DefaultAsyncHttpxClient | None:
    """The SDK's HTTP client over aiohttp (the SDK's own `DefaultAioHttpClient`): httpcore's pool scans
    every connection for every request (~1 ms of CPU per request at a few hundred connections)."""
    import openai

    if os.environ.get("BATCHRUN_HTTP_CLIENT") == "httpx":  # the SDK's default, should aiohttp misbehave
        return None
    return openai.DefaultAioHttpClient(timeout=_timeout(job))


FLEX_TIMEOUT_S = 900.0
"""OpenAI's advice for flex, whose replies are slower and may queue (the flex processing guide)."""


def _timeout_seconds(job: Job) -> float:
    seconds = job.endpoint.timeout_s
    if job.request.service_tier == "flex" and "timeout_s" not in job.endpoint.model_fields_set:
        seconds = FLEX_TIMEOUT_S  # the job did not choose one: flex gets the long timeout it needs
    return seconds


def _timeout(job: Job) -> openai.Timeout:
    import openai

    return openai.Timeout(_timeout_seconds(job), connect=CONNECT_TIMEOUT_S)


def open_endpoint(job: Job, *, sim_config: SimConfig | None = None) -> Endpoint:
    """The client for the job's endpoint; the simulator when there is no key and no base_url."""
    ep = job.endpoint
    key = os.environ.get(ep.api_key_env)
    redact.register(key)
    model = job.request.model
    if ep.azure_endpoint:
        if not key:
            from .errors import JobFileError

            raise JobFileError(
                job.source_path, "endpoint.api_key_env", f"environment variable {ep.api_key_env} is not set"
            )
        client = make_client(job, ep.azure_endpoint, key)
        return Endpoint(lambda: client, ep.azure_endpoint, ep.azure_deployment or model)
    no_key = f"No {ep.api_key_env} in the environment and no [endpoint] base_url: "
    spec = local_model.embedded_spec(
        ep.local, base_url=ep.base_url, azure=False, key=bool(key) or sim_config is not None
    )
    if spec is not None:
        base = job.source_path.parent if job.source_path is not None else None
        server = local_model.start(local_model.model_path(spec, base))
        banner = LOCAL_BANNER.format(
            why="" if ep.local else no_key, name=server.name, slots=server.slots, ctx=server.context
        )
        return _named_by_url(job, server.base_url, None, banner=banner, local=server)
    if ep.base_url is None and not key:
        from .sim import SimConfig, SimServer

        config = sim_config or SimConfig(
            rpm=job.limits.rpm,
            tpm=job.limits.tpm,
            latency_ms=250,
            latency_per_token_ms=2,
            jitter=0.3,
            models=tuple(sorted({model, *SimConfig().models})),
        )
        sim = SimServer(config).start()
        banner = SIM_BANNER.format(env=ep.api_key_env, url=sim.base_url)
        return _named_by_url(job, sim.base_url, SIM_KEY, simulated=True, sim=sim, banner=banner)
    if ep.base_url is None:  # OpenAI itself: the SDK's own URL (OPENAI_BASE_URL, data residency …) and headers
        client = make_client(job, None, key)
        return Endpoint(lambda: client, str(client.base_url), model)
    # a server of your own may say what it has (context, slots): too-long rows are then never sent
    facts = server_facts(ep.base_url, model) if is_local_url(ep.base_url) else None
    return _named_by_url(job, ep.base_url, key, facts=facts)


def _named_by_url(job: Job, base_url: str, key: str | None, **kwargs: Any) -> Endpoint:
    """A server named by its base URL (the job's, the simulator's, the embedded model's): plain where it
    can be (`_plain`), its SDK client made only if something needs one."""
    return Endpoint(
        lambda: make_client(job, base_url, key), base_url, job.request.model, plain=_plain(job, key, base_url), **kwargs
    )


def make_client(job: Job, base_url: str | None, key: str | None) -> openai.AsyncOpenAI:
    """The SDK client for `base_url` (Azure's endpoint when the job names one), retries off, with the
    job's timeouts and HTTP client. Also a cluster worker's, for the endpoint its driver opened: `key`
    is passed in memory, never written anywhere by batchrun."""
    import openai

    redact.register(key)
    ep = job.endpoint
    if ep.azure_endpoint:
        return openai.AsyncAzureOpenAI(
            azure_endpoint=ep.azure_endpoint,
            api_version=ep.azure_api_version,
            api_key=key,
            max_retries=0,
            timeout=_timeout(job),
            http_client=_http(job),
        )
    # local servers (vLLM, Ollama, llama.cpp) ignore the key but the SDK needs one
    return openai.AsyncOpenAI(
        base_url=base_url, api_key=key or NO_KEY, max_retries=0, timeout=_timeout(job), http_client=_http(job)
    )
