"""How the engine's requests reach the server: the SDK's own `post`, or straight through aiohttp.

The SDK stays the authority on what a request looks like: its URL (base URL, Azure's deployment
routing and api-version), its headers (auth, user agent) and its errors (status → exception class,
body parsing). What `DirectTransport` drops is the SDK's per-request machinery: options models,
header merging, URL parsing, and httpx's request and response objects over its aiohttp transport —
56 % of a ceiling run's CPU in a profile (benchmarks/RESULTS.md, issue 12). It builds one request
through the SDK per (path, model) to learn the URL and headers, then sends every request of that
shape with one aiohttp session; an error reply is handed back to the SDK to become its exception.

Only for a static API key: a client whose credentials can change (workload identity, a token
provider, Azure AD) keeps the SDK path, which refreshes them. `BATCHRUN_HTTP_CLIENT=sdk` forces it.
"""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import openai

from . import fastjson

try:  # the HTTP library under the openai SDK: httpx2 in current releases, httpx before
    import httpx2 as httpx
except ImportError:  # pragma: no cover
    import httpx  # type: ignore[no-redef]

HTTP_RESPONSE = httpx.Response
# set by aiohttp for each request (or meaningless on a reused connection): never copied from the SDK's
_PER_REQUEST_HEADERS = frozenset({"host", "content-length", "connection", "transfer-encoding"})


@dataclass(frozen=True, slots=True)
class Reply:
    """A 2xx answer's status and headers (a case-insensitive mapping), all the engine reads of it."""

    status_code: int
    headers: Mapping[str, str]


class Transport(Protocol):
    async def post(self, path: str, body: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        """The reply's response (status_code, headers) and its JSON object; SDK exceptions on failure."""
        ...

    async def aclose(self) -> None: ...


def _json_object(content: bytes, response: Callable[[], Any]) -> dict[str, Any]:
    """A 2xx reply's JSON object; else the SDK's validation error, with the response (made only then)."""
    try:
        data = fastjson.loads_api(content)
    except ValueError as exc:
        raise openai.APIResponseValidationError(
            response=response(), body=None, message=f"reply is not JSON: {exc}"
        ) from exc
    if not isinstance(data, dict):
        raise openai.APIResponseValidationError(response=response(), body=data, message="reply is not an object")
    return data


class SdkTransport:
    """The SDK's `post` with the raw HTTP response (its typed `create()` costs ~1 ms more a request)."""

    def __init__(self, client: openai.AsyncOpenAI) -> None:
        self.client = client

    async def post(self, path: str, body: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        response = await self.client.post(path, body=body, cast_to=HTTP_RESPONSE)
        return response, _json_object(response.content, lambda: response)

    async def aclose(self) -> None:
        pass  # the client is the endpoint's, closed with it


class DirectTransport:
    """POSTs with the SDK's URL and headers through one aiohttp session (see the module docstring)."""

    def __init__(self, client: openai.AsyncOpenAI) -> None:
        self.client = client
        self._shapes: dict[tuple[str, str], tuple[str, dict[str, str], str | None]] = {}
        self._session: aiohttp.ClientSession | None = None
        timeout = client.timeout
        if isinstance(timeout, openai.Timeout):
            # httpx's read timeout is the longest wait between bytes, as aiohttp's sock_read is
            self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout.connect, sock_read=timeout.read)
        else:
            self._timeout = aiohttp.ClientTimeout(total=float(timeout) if timeout else None)

    @staticmethod
    def usable(client: openai.AsyncOpenAI) -> bool:
        if getattr(client, "workload_identity", None) is not None or getattr(client, "_provider_runtime", None):
            return False
        azure_token = getattr(client, "_azure_ad_token", None) or getattr(client, "_azure_ad_token_provider", None)
        return isinstance(client.api_key, str) and bool(client.api_key) and not azure_token

    def _shape(self, path: str, model: str) -> tuple[str, dict[str, str], str | None]:
        """The URL and headers the SDK would send a request of this path and model with, and the
        proxy the environment names for it (HTTPS_PROXY, NO_PROXY …), as httpx would use."""
        key = (path, model)
        shape = self._shapes.get(key)
        if shape is None:
            from openai._models import FinalRequestOptions

            options = FinalRequestOptions.construct(method="post", url=path, json_data={"model": model})
            request = self.client._build_request(options)
            headers = {k: v for k, v in request.headers.items() if k.lower() not in _PER_REQUEST_HEADERS}
            url = str(request.url)
            proxy = urllib.request.getproxies().get(request.url.scheme)
            if proxy and urllib.request.proxy_bypass(request.url.host):
                proxy = None
            shape = self._shapes[key] = (url, headers, proxy)
        return shape

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:  # here, inside the running loop: a session belongs to one loop
            # no connection limit of its own: the engine's in-flight gate is the limit. The proxy is
            # looked up once per URL (_shape), not by trust_env, which reads the environment and
            # ~/.netrc (in a thread) for every request: 17 % of a ceiling run's CPU
            connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
        return self._session

    async def post(self, path: str, body: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        url, headers, proxy = self._shape(path, str(body.get("model", "")))
        data = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        try:
            async with self._open().post(url, data=data, headers=headers, proxy=proxy) as resp:
                content = await resp.read()
                status, reply_headers = resp.status, resp.headers
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise openai.APITimeoutError(request=httpx.Request("POST", url)) from exc
        except aiohttp.ClientError as exc:
            raise openai.APIConnectionError(request=httpx.Request("POST", url)) from exc
        if status >= 400:
            raise self._status_error(url, status, reply_headers, content)
        parsed = _json_object(content, lambda: self._response(url, status, reply_headers, content))
        return Reply(status, reply_headers), parsed

    @staticmethod
    def _response(url: str, status: int, headers: Mapping[str, str], content: bytes) -> Any:
        return httpx.Response(
            status, headers=list(headers.items()), content=content, request=httpx.Request("POST", url)
        )

    def _status_error(self, url: str, status: int, headers: Mapping[str, str], content: bytes) -> Exception:
        """The SDK's own exception for an error reply (RateLimitError for a 429, with its parsed body …)."""
        response = self._response(url, status, headers, content)
        make = getattr(self.client, "_make_status_error_from_response", None)
        if make is not None:
            return make(response)
        return openai.APIStatusError(f"Error code: {status}", response=response, body=None)  # pragma: no cover

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def for_client(client: openai.AsyncOpenAI) -> Transport:
    """The transport for a client: direct where it is safe, else the SDK's (see the module docstring)."""
    if os.environ.get("BATCHRUN_HTTP_CLIENT") in ("sdk", "httpx") or not DirectTransport.usable(client):
        return SdkTransport(client)
    return DirectTransport(client)
