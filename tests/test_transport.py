"""The direct transport sends what the SDK would send and fails the way the SDK would fail."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest
from aiohttp import web

from batchrun.transport import DirectTransport, SdkTransport, Transport, for_client

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "héllo"}], "max_tokens": 5}
REPLY = {"id": "x", "object": "chat.completion", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1}}


class Echo:
    """A loopback server that records each request and answers as told."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.answer: str = "ok"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append({
            "path": request.path, "query": dict(request.query), "headers": dict(request.headers),
            "body": json.loads(await request.read()),
        })  # fmt: skip
        if self.answer == "429":
            return web.json_response(
                {"error": {"message": "Rate limit reached", "type": "tokens", "code": "rate_limit_exceeded"}},
                status=429, headers={"retry-after": "2", "x-ratelimit-remaining-tokens": "0"},
            )  # fmt: skip
        if self.answer == "500":
            return web.json_response({"error": {"message": "boom", "type": "server_error"}}, status=500)
        if self.answer == "reset":
            assert request.transport is not None
            request.transport.abort()
            return web.Response()
        if self.answer == "slow":
            await asyncio.sleep(2)
        if self.answer == "list":
            return web.json_response([1, 2])
        return web.json_response(REPLY, headers={"x-request-id": "req_1", "x-ratelimit-limit-requests": "100"})


@pytest.fixture
async def echo() -> AsyncIterator[tuple[Echo, str]]:
    server = Echo()
    app = web.Application()
    app.router.add_route("POST", "/{tail:.*}", server.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield server, f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def failures(*transports: Transport, expected: type[BaseException] = Exception) -> list[BaseException]:
    """What each transport raised for the same request (each closed after)."""
    seen = []
    for t in transports:
        with pytest.raises(expected) as info:
            await t.post("/chat/completions", dict(BODY))
        seen.append(info.value)
        await t.aclose()
    return seen


def clients(url: str, timeout: float = 30.0) -> list[openai.AsyncOpenAI]:
    plain = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="sk-test", max_retries=0, timeout=timeout)
    azure = openai.AsyncAzureOpenAI(
        azure_endpoint=url, api_version="2024-10-21", api_key="az-test", max_retries=0, timeout=timeout
    )
    return [plain, azure]


async def test_the_direct_transport_sends_the_sdks_url_headers_and_body(echo: tuple[Echo, str]) -> None:
    server, url = echo
    for client in clients(url):
        direct = for_client(client)
        assert isinstance(direct, DirectTransport)
        transports: list[Transport] = [SdkTransport(client), direct]
        for t in transports:
            response, data = await t.post("/chat/completions", dict(BODY))
            assert data == REPLY and response.status_code == 200
            assert response.headers.get("X-Request-Id") == "req_1"  # case-insensitive, as httpx's
        sdk, ours = server.seen[-2:]
        assert ours["path"] == sdk["path"] and ours["query"] == sdk["query"] and ours["body"] == sdk["body"] == BODY
        for name in ("Authorization", "api-key", "User-Agent", "Content-Type", "Accept", "X-Stainless-Lang"):
            assert ours["headers"].get(name) == sdk["headers"].get(name), name
        await direct.aclose()
        await client.close()
    assert server.seen[-1]["path"] == "/openai/deployments/gpt-4o-mini/chat/completions"  # Azure's routing


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        ("429", openai.RateLimitError),
        ("500", openai.InternalServerError),
        ("reset", openai.APIConnectionError),
        ("slow", openai.APITimeoutError),
        ("list", openai.APIResponseValidationError),
    ],
)
async def test_failures_are_the_sdks_exceptions(echo: tuple[Echo, str], answer: str, error: type) -> None:
    server, url = echo
    server.answer = answer
    client = clients(url, timeout=0.5)[0]
    sdk, ours = await failures(SdkTransport(client), DirectTransport(client), expected=error)
    await client.close()
    assert type(ours) is type(sdk)
    if isinstance(sdk, openai.APIStatusError):
        assert isinstance(ours, openai.APIStatusError)
        assert ours.status_code == sdk.status_code and ours.body == sdk.body and ours.message == sdk.message
        assert ours.response.headers.get("retry-after") == sdk.response.headers.get("retry-after")


def test_changing_credentials_keep_the_sdk_path(monkeypatch: pytest.MonkeyPatch) -> None:
    def token() -> str:
        return "aad-token"

    aad = openai.AsyncAzureOpenAI(
        azure_endpoint="https://x.openai.azure.com", api_version="2024-10-21", azure_ad_token_provider=token
    )
    assert isinstance(for_client(aad), SdkTransport)  # the SDK refreshes the token
    plain = openai.AsyncOpenAI(base_url="http://127.0.0.1:9/v1", api_key="sk-test")
    assert isinstance(for_client(plain), DirectTransport)
    monkeypatch.setenv("BATCHRUN_HTTP_CLIENT", "sdk")
    assert isinstance(for_client(plain), SdkTransport)


def test_the_environments_proxy_is_used_unless_no_proxy_names_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "bypassed.example")
    for host, proxy in (("api.example", "http://proxy.internal:3128"), ("bypassed.example", None)):
        client = openai.AsyncOpenAI(base_url=f"https://{host}/v1", api_key="sk-test")
        transport = for_client(client)
        assert isinstance(transport, DirectTransport)
        assert transport._shape("/chat/completions", "m")[2] == proxy


def plain(url: str, timeout: float = 30.0) -> DirectTransport:
    return DirectTransport.plain(f"{url}/v1", "sk-test", read_s=timeout, connect_s=10.0)


async def test_a_server_named_by_its_url_gets_the_sdks_request_without_the_sdk(
    echo: tuple[Echo, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, url = echo
    for org, project in ((None, None), ("org-1", "proj-2")):
        for name, value in (("OPENAI_ORG_ID", org), ("OPENAI_PROJECT_ID", project)):
            if value is None:
                monkeypatch.delenv(name, raising=False)
            else:
                monkeypatch.setenv(name, value)
        client = clients(url)[0]
        ours = DirectTransport.plain(f"{url}/v1/", "sk-test", read_s=30, connect_s=10)
        for t in (SdkTransport(client), ours):
            response, data = await t.post("/chat/completions", dict(BODY))
            assert data == REPLY and response.status_code == 200
            assert response.headers.get("X-Request-Id") == "req_1"
        sdk, sent = server.seen[-2:]
        assert sent["path"] == sdk["path"] == "/v1/chat/completions"
        assert sent["query"] == sdk["query"] and sent["body"] == sdk["body"] == BODY
        theirs = {k.lower(): v for k, v in sdk["headers"].items()}
        mine = {k.lower(): v for k, v in sent["headers"].items()}
        for header in ("authorization", "content-type", "accept", "openai-organization", "openai-project"):
            assert mine.get(header) == theirs.get(header), header
        assert (org is None) == ("openai-organization" not in mine)
        assert sent["headers"]["User-Agent"].startswith("batchrun")
        await ours.aclose()
        await client.close()


@pytest.mark.parametrize("answer", ["429", "500", "reset", "slow", "list"])
async def test_a_plain_servers_failures_mean_what_the_sdks_exceptions_mean(echo: tuple[Echo, str], answer: str) -> None:
    """The plain path's failures are wire.PlainFailure, made without the SDK; each is classified exactly as
    the SDK's exception for the same reply (the engine's only use of either)."""
    from batchrun.retries import classify
    from batchrun.transport import is_api_error, is_timeout
    from batchrun.wire import PlainFailure

    server, url = echo
    server.answer = answer
    client = clients(url, timeout=0.5)[0]
    sdk, ours = await failures(SdkTransport(client), plain(url, timeout=0.5))
    await client.close()
    assert isinstance(ours, PlainFailure) and is_api_error(ours) and is_api_error(sdk)
    assert is_timeout(ours) == is_timeout(sdk) == (answer == "slow")
    theirs, mine = classify(sdk), classify(ours)
    if answer == "reset":  # the cause's text names the library that saw the reset (httpx2 / aiohttp)
        assert mine.action is theirs.action and mine.message.startswith("connection error")
    else:
        assert mine == theirs
    assert getattr(ours, "response", None) is None or ours.response.status_code == sdk.response.status_code


@pytest.mark.parametrize(
    ("status", "body", "headers"),
    [
        (429, {"error": {"message": "Rate limit reached for requests. Please try again in 1.5s.", "type": "requests",
                         "code": "rate_limit_exceeded"}}, {"x-ratelimit-remaining-requests": "0"}),
        (429, {"error": {"message": "You exceeded your current quota", "type": "insufficient_quota"}}, {}),
        (429, {"error": {"message": "Resource unavailable", "code": "resource_unavailable"}}, {"retry-after": "3"}),
        (401, {"error": {"message": "Incorrect API key provided"}}, {}),
        (404, {"error": {"message": "The model `x` does not exist", "code": "model_not_found"}}, {}),
        (400, {"message": "context length exceeded", "object": "error"}, {}),  # vLLM's top-level error
        (498, {"error": {"message": "flex capacity exceeded", "code": "capacity_exceeded"}}, {}),
        (503, "Slow Down", {}),
        (500, "", {}),
        (502, "<html>bad gateway</html>", {}),
    ],
)  # fmt: skip
def test_an_error_reply_is_classified_alike_by_either_path(status: int, body: Any, headers: dict[str, str]) -> None:
    from batchrun.retries import classify
    from batchrun.wire import PlainStatusError

    content = (json.dumps(body) if not isinstance(body, str) else body).encode()
    client = openai.AsyncOpenAI(base_url="http://127.0.0.1:9/v1", api_key="sk-test")
    response = DirectTransport._response("http://127.0.0.1:9/v1/chat/completions", status, headers, content)
    sdk = client._make_status_error_from_response(response)
    ours = PlainStatusError(status, response.headers, content)
    assert ours.body == sdk.body and ours.message == sdk.message
    assert classify(ours) == classify(sdk)


def test_a_run_on_a_server_named_by_its_url_never_loads_the_sdk(tmp_path: Path) -> None:
    """The demo's and a self-hosted server's whole run, answers only: the SDK (~0.4 s, ~22 MB) stays unloaded."""
    script = (
        "import sys, asyncio\n"
        "from batchrun.jobs import load_job\n"
        "from batchrun.lifecycle import run_job\n"
        f"result = asyncio.run(run_job(load_job({str(tmp_path / 'job.toml')!r})))\n"
        "assert sum(result.by_status.values()) == 3 and set(result.by_status) <= {'ok', 'truncated'}\n"
        "print(sorted(m for m in ('openai', 'httpx2', 'httpx') if m in sys.modules))\n"
    )
    (tmp_path / "in.csv").write_text("text\na\nb\nc\n")
    (tmp_path / "job.toml").write_text(
        'name = "plain"\n[input]\npath = "in.csv"\n[prompt]\ntemplate = "{{ text }}"\n'
        '[request]\nmodel = "gpt-4o-mini"\nmax_tokens = 50\n[output]\npath = "out.parquet"\n'
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_CUSTOM_HEADERS")}
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_which_endpoints_are_sent_to_without_the_sdk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A base URL with a static key: plain; a base URL with a query, OPENAI_CUSTOM_HEADERS, OpenAI itself
    and Azure: the SDK builds the request (DirectTransport from its client)."""
    from batchrun.endpoints import open_endpoint
    from batchrun.jobs import load_job

    (tmp_path / "in.csv").write_text("text\na\n")

    def endpoint(section: str) -> Any:
        (tmp_path / "job.toml").write_text(
            'name = "j"\n[input]\npath = "in.csv"\n[prompt]\ntemplate = "{{ text }}"\n'
            f'[request]\nmodel = "gpt-4o-mini"\nmax_tokens = 5\n[endpoint]\n{section}\n[output]\npath = "out.parquet"\n'
        )
        return open_endpoint(load_job(tmp_path / "job.toml"))

    monkeypatch.setenv("BATCHRUN_TEST_KEY", "sk-test")
    monkeypatch.delenv("OPENAI_CUSTOM_HEADERS", raising=False)
    key = 'api_key_env = "BATCHRUN_TEST_KEY"\n'
    plain = endpoint(f'base_url = "http://127.0.0.1:9/v1"\n{key}')
    assert plain.plain is not None and plain.http._plain is not None and plain._client is None
    assert plain.http._shape("/chat/completions", "m").url == "http://127.0.0.1:9/v1/chat/completions"
    asyncio.run(plain.close())
    for section in (
        f'base_url = "http://127.0.0.1:9/v1?tenant=a"\n{key}',
        key,  # OpenAI itself
        f'azure_endpoint = "https://x.openai.azure.com"\nazure_api_version = "2024-10-21"\n{key}',
    ):
        ep = endpoint(section)
        assert ep.plain is None and isinstance(ep.http, DirectTransport) and ep.http._plain is None, section
        asyncio.run(ep.close())
    monkeypatch.setenv("OPENAI_CUSTOM_HEADERS", "X-Team: a")
    custom = endpoint(f'base_url = "http://127.0.0.1:9/v1"\n{key}')
    assert custom.plain is None
    asyncio.run(custom.close())


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8000/v1", "https://API.Example.com:443/v1", "http://Localhost:80/v1/", "HTTP://host/v1",
     "http://host/some path/v1", "http://[::1]:8000/v1", "http://u:p@Host:8080/v1", "http://h:8000"],
)  # fmt: skip
def test_a_base_url_is_kept_and_joined_as_the_sdk_does(url: str) -> None:
    """The job's base URL in the SDK's normal form (so answers kept by runs that went through the SDK are
    found under the same endpoint key), and the plain transport's request URL is the SDK's."""
    from openai._models import FinalRequestOptions

    from batchrun.jobs import EndpointSpec

    client = openai.AsyncOpenAI(base_url=url, api_key="sk-test")
    ours = EndpointSpec(base_url=url).base_url
    assert ours is not None and ours.rstrip("/") == str(client.base_url).rstrip("/")
    options = FinalRequestOptions.construct(method="post", url="/chat/completions", json_data={"model": "m"})
    plain = DirectTransport.plain(ours, "sk-test", read_s=1, connect_s=1)
    assert plain._shape("/chat/completions", "m").url == str(client._build_request(options).url)


def test_a_faulty_server_named_by_its_url_is_retried_without_loading_the_sdk(tmp_path: Path) -> None:
    """500s, resets and malformed replies on a plain server: every row answered in the end, the SDK never
    imported (its import was ~0.35 s at the first failure)."""
    script = (
        "import sys, asyncio\n"
        "from batchrun.jobs import load_job\n"
        "from batchrun.lifecycle import run_job\n"
        "from batchrun.sim import SimConfig, SimServer\n"
        "sim = SimServer(SimConfig(latency_ms=5, error_500_rate=0.2, reset_rate=0.1, seed=3)).start()\n"
        f"path = {str(tmp_path / 'job.toml')!r}\n"
        "open(path, 'a').write(f'[endpoint]\\nbase_url = \"{sim.base_url}\"\\napi_key_env = \"K\"\\n')\n"
        "result = asyncio.run(run_job(load_job(path)))\n"
        "sim.stop()\n"
        "assert result.retries > 0 and sum(result.by_status.values()) == 40, (result.retries, result.by_status)\n"
        "assert set(result.by_status) <= {'ok', 'truncated'}, result.by_status\n"
        "print(sorted(m for m in ('openai', 'httpx2', 'httpx') if m in sys.modules))\n"
    )
    (tmp_path / "in.csv").write_text("text\n" + "".join(f"row {i}\n" for i in range(40)))
    (tmp_path / "job.toml").write_text(
        'name = "faulty"\n[input]\npath = "in.csv"\n[prompt]\ntemplate = "{{ text }}"\n'
        '[request]\nmodel = "gpt-4o-mini"\nmax_tokens = 50\n[output]\npath = "out.parquet"\n'
    )
    env = {**os.environ, "K": "sk-test"}
    env.pop("OPENAI_CUSTOM_HEADERS", None)
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
