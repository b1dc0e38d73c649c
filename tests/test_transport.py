"""The direct transport sends what the SDK would send and fails the way the SDK would fail."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
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
    seen = []
    for t in (SdkTransport(client), DirectTransport(client)):
        with pytest.raises(error) as info:
            await t.post("/chat/completions", dict(BODY))
        seen.append(info.value)
        await t.aclose()
    await client.close()
    sdk, ours = seen
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
