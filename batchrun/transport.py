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

A server named by its base URL (the job's `base_url`, the simulator, the embedded model) with a static
key is sent to without loading the SDK at all (`DirectTransport.plain`): its requests are a bearer key
and JSON, the same URL and headers the SDK would build (tests/test_transport.py compares them), and
the SDK — ~0.4 s and ~22 MB of every run's start — is not imported at all: a failure is described
the way the SDK would describe it (wire.py) and classified as the SDK's exception would be. OpenAI
itself (no base_url: the SDK's own default URL, data residency, custom headers from the environment)
and Azure keep the SDK-built shape and the SDK's exceptions.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import aiohttp

from . import fastjson
from .wire import PlainConnectionError, PlainFailure, PlainMalformedReply, PlainStatusError, PlainTimeout, Reply

if TYPE_CHECKING:
    import openai

# set by aiohttp for each request (or meaningless on a reused connection): never copied from the SDK's
_PER_REQUEST_HEADERS = frozenset({"host", "content-length", "connection", "transfer-encoding"})
PLAIN_ENV_BLOCKERS = ("OPENAI_CUSTOM_HEADERS",)
"""Environment the SDK reads into every request's headers: with it set, the SDK builds the shape."""


def __getattr__(name: str) -> Any:
    if name == "HTTP_RESPONSE":  # the response class of the HTTP library under the SDK, loaded when asked for
        return _httpx().Response
    raise AttributeError(name)


def _httpx() -> Any:
    try:  # the HTTP library under the openai SDK: httpx2 in current releases, httpx before
        import httpx2 as httpx
    except ImportError:  # pragma: no cover
        import httpx  # type: ignore[no-redef]
    return httpx


def is_api_error(exc: BaseException) -> bool:
    """Whether `exc` is a failed request: a plain server's (wire.PlainFailure) or one of the SDK's API
    or connection errors — without importing the SDK: when it has not been imported, no exception can
    be one of its."""
    if isinstance(exc, PlainFailure):
        return True
    openai = sys.modules.get("openai")
    return openai is not None and isinstance(exc, (openai.APIError, openai.APIConnectionError))


def is_timeout(exc: BaseException) -> bool:
    """Whether a failed request (is_api_error) timed out."""
    if isinstance(exc, PlainTimeout):
        return True
    openai = sys.modules.get("openai")
    return openai is not None and isinstance(exc, openai.APITimeoutError)


class Transport(Protocol):
    async def post(self, path: str, body: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        """The reply's response (status_code, headers) and its JSON object; SDK exceptions on failure."""
        ...

    async def aclose(self) -> None: ...


def _json_object(content: bytes, invalid: Callable[[str, Any], Exception]) -> dict[str, Any]:
    """A 2xx reply's JSON object; else `invalid(message, body)`: the SDK's validation error, or a plain
    server's wire.PlainMalformedReply, with the same message."""
    try:
        data = fastjson.loads_api(content)
    except ValueError as exc:
        raise invalid(f"reply is not JSON: {exc}", None) from exc
    if not isinstance(data, dict):
        raise invalid("reply is not an object", data)
    return data


def _sdk_invalid(response: Callable[[], Any]) -> Callable[[str, Any], Exception]:
    """The SDK's APIResponseValidationError for a reply, its response made only when one is raised."""

    def invalid(message: str, body: Any) -> Exception:
        import openai

        return openai.APIResponseValidationError(response=response(), body=body, message=message)

    return invalid


class Shape(NamedTuple):
    """What every request of one (path, model) is sent with."""

    url: str
    headers: dict[str, str]
    proxy: str | None
    """The proxy the environment names for the URL (HTTPS_PROXY, NO_PROXY …), as httpx would use."""


def _proxy_for(url: str) -> str | None:
    parts = urllib.parse.urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return proxy


def _user_agent() -> str:
    from .version import installed

    version = installed()
    return f"batchrun/{version}" if version else "batchrun"


def plain_headers(key: str) -> dict[str, str]:
    """The headers the SDK sends a server named by its base URL with a static key — the bearer key, JSON
    both ways, the organization and project the environment names (OPENAI_ORG_ID, OPENAI_PROJECT_ID) —
    with a user agent naming batchrun in place of the SDK's (and none of its X-Stainless-* telemetry)."""
    headers = {
        "Accept": "application/json",
        "Content-Type": "application/json",
        "User-Agent": _user_agent(),
        "Authorization": f"Bearer {key}",
    }
    for name, env in (("OpenAI-Organization", "OPENAI_ORG_ID"), ("OpenAI-Project", "OPENAI_PROJECT_ID")):
        if os.environ.get(env) is not None:
            headers[name] = os.environ[env]
    return headers


class SdkTransport:
    """The SDK's `post` with the raw HTTP response (its typed `create()` costs ~1 ms more a request)."""

    def __init__(self, client: openai.AsyncOpenAI) -> None:
        self.client = client

    async def post(self, path: str, body: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        response = await self.client.post(path, body=body, cast_to=_httpx().Response)
        return response, _json_object(response.content, _sdk_invalid(lambda: response))

    async def aclose(self) -> None:
        pass  # the client is the endpoint's, closed with it


class DirectTransport:
    """POSTs with the SDK's URL and headers through one aiohttp session (see the module docstring).

    `DirectTransport(client)` learns each request's shape from the SDK client and fails with the SDK's
    exceptions; `DirectTransport.plain(...)` (a PlainTransport) knows the shape from the base URL and key
    and fails with wire.PlainFailure. The two differ only in the hooks `post` calls."""

    _plain: tuple[str, dict[str, str]] | None = None
    """(base URL, headers) of a plain server; None: the SDK client builds the shapes."""

    def __init__(self, client: openai.AsyncOpenAI) -> None:
        import openai

        self._client: openai.AsyncOpenAI | None = client
        timeout = client.timeout
        if isinstance(timeout, openai.Timeout):
            # httpx's read timeout is the longest wait between bytes, as aiohttp's sock_read is
            self._setup(aiohttp.ClientTimeout(total=None, sock_connect=timeout.connect, sock_read=timeout.read))
        else:
            self._setup(aiohttp.ClientTimeout(total=float(timeout) if timeout else None))

    def _setup(self, timeout: aiohttp.ClientTimeout) -> None:
        self._timeout = timeout
        self._shapes: dict[tuple[str, str], Shape] = {}
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def plain(cls, base_url: str, key: str, *, read_s: float, connect_s: float) -> DirectTransport:
        """For a server named by its base URL with a static key (see the module docstring): `read_s` and
        `connect_s` as the SDK client's timeout. Its failures are wire.PlainFailure, not the SDK's."""
        return PlainTransport(base_url, key, read_s=read_s, connect_s=connect_s)

    @property
    def client(self) -> openai.AsyncOpenAI:
        """The SDK client this transport learns its request shapes from (not a plain one's)."""
        assert self._client is not None, "a plain transport has no SDK client"
        return self._client

    @staticmethod
    def usable(client: openai.AsyncOpenAI) -> bool:
        if getattr(client, "workload_identity", None) is not None or getattr(client, "_provider_runtime", None):
            return False
        azure_token = getattr(client, "_azure_ad_token", None) or getattr(client, "_azure_ad_token_provider", None)
        return isinstance(client.api_key, str) and bool(client.api_key) and not azure_token

    def _shape(self, path: str, model: str) -> Shape:
        """The URL and headers the SDK would send a request of this path and model with, and its proxy."""
        key = (path, model)
        shape = self._shapes.get(key)
        if shape is None:
            url, headers = self._url_and_headers(path, model)
            shape = self._shapes[key] = Shape(url, headers, _proxy_for(url))
        return shape

    def _url_and_headers(self, path: str, model: str) -> tuple[str, dict[str, str]]:
        from openai._models import FinalRequestOptions

        options = FinalRequestOptions.construct(method="post", url=path, json_data={"model": model})
        request = self.client._build_request(options)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _PER_REQUEST_HEADERS}
        return str(request.url), headers

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
            raise self._timed_out(url) from exc
        except aiohttp.ClientError as exc:
            raise self._unreachable(url) from exc
        if status >= 400:
            raise self._status_error(url, status, reply_headers, content)
        return Reply(status, reply_headers), self._json(url, status, reply_headers, content)

    def _timed_out(self, url: str) -> Exception:
        import openai

        return openai.APITimeoutError(request=_httpx().Request("POST", url))

    def _unreachable(self, url: str) -> Exception:
        import openai

        return openai.APIConnectionError(request=_httpx().Request("POST", url))

    def _json(self, url: str, status: int, headers: Mapping[str, str], content: bytes) -> dict[str, Any]:
        return _json_object(content, _sdk_invalid(lambda: self._response(url, status, headers, content)))

    @staticmethod
    def _response(url: str, status: int, headers: Mapping[str, str], content: bytes) -> Any:
        httpx = _httpx()
        return httpx.Response(
            status, headers=list(headers.items()), content=content, request=httpx.Request("POST", url)
        )

    def _status_error(self, url: str, status: int, headers: Mapping[str, str], content: bytes) -> Exception:
        """The SDK's own exception for an error reply (RateLimitError for a 429, with its parsed body …)."""
        response = self._response(url, status, headers, content)
        make = getattr(self.client, "_make_status_error_from_response", None)
        if make is not None:
            return make(response)
        import openai  # pragma: no cover

        return openai.APIStatusError(f"Error code: {status}", response=response, body=None)  # pragma: no cover

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class PlainTransport(DirectTransport):
    """A server named by its base URL with a static key: the shape from the URL and key (plain_headers),
    the failures as wire.PlainFailure — no SDK (see the module docstring)."""

    def __init__(self, base_url: str, key: str, *, read_s: float, connect_s: float) -> None:
        self._client = None
        self._plain = (base_url.rstrip("/"), plain_headers(key))
        self._setup(aiohttp.ClientTimeout(total=None, sock_connect=connect_s, sock_read=read_s))

    def _url_and_headers(self, path: str, model: str) -> tuple[str, dict[str, str]]:
        assert self._plain is not None
        base, headers = self._plain
        return f"{base}/{path.lstrip('/')}", headers

    def _timed_out(self, url: str) -> Exception:
        return PlainTimeout()

    def _unreachable(self, url: str) -> Exception:
        return PlainConnectionError()

    def _json(self, url: str, status: int, headers: Mapping[str, str], content: bytes) -> dict[str, Any]:
        return _json_object(content, lambda message, _body: PlainMalformedReply(message))

    def _status_error(self, url: str, status: int, headers: Mapping[str, str], content: bytes) -> Exception:
        return PlainStatusError(status, headers, content)


def http_client_forced() -> bool:
    """`BATCHRUN_HTTP_CLIENT=sdk` (or `httpx`): every request through the SDK's own `post`."""
    return os.environ.get("BATCHRUN_HTTP_CLIENT") in ("sdk", "httpx")


def for_client(client: openai.AsyncOpenAI) -> Transport:
    """The transport for a client: direct where it is safe, else the SDK's (see the module docstring)."""
    if http_client_forced() or not DirectTransport.usable(client):
        return SdkTransport(client)
    return DirectTransport(client)
