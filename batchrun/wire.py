"""What batchrun's own HTTP path (`transport.DirectTransport`) hands back: a 2xx reply's status and headers
(`Reply`), or why there was no usable reply (`PlainFailure` and its kinds).

The failures are those of a plain server (`DirectTransport.plain`), described without the openai SDK:
what `retries.classify` reads of the SDK's exception for the same failure — status, body, message,
headers — made the way the SDK makes it (`_make_status_error_from_response`), so a failure means the
same whichever path it took (tests/test_transport.py classifies both). Importing the SDK to build its
exception cost ~0.35 s and ~22 MB at a plain run's first failure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import fastjson


@dataclass(frozen=True, slots=True)
class Reply:
    """A reply's status and headers (a case-insensitive mapping), all the engine reads of it."""

    status_code: int
    headers: Mapping[str, str]


class PlainFailure(Exception):
    """A request on the plain path that got no usable answer."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class PlainTimeout(PlainFailure):
    """No reply, or no byte of one, within the timeout (the SDK's APITimeoutError)."""

    def __init__(self) -> None:
        super().__init__("Request timed out.")


class PlainConnectionError(PlainFailure):
    """The connection failed or was reset (the SDK's APIConnectionError); the cause is chained."""

    def __init__(self) -> None:
        super().__init__("Connection error.")


class PlainMalformedReply(PlainFailure):
    """A 2xx reply that is not a JSON object (the SDK's APIResponseValidationError)."""


class PlainStatusError(PlainFailure):
    """A 4xx/5xx reply (the SDK's APIStatusError): `body` is the reply's `error` object when it has one,
    else its JSON, else its text; `message` "Error code: N", with the error's message when there is one."""

    def __init__(self, status: int, headers: Mapping[str, str], content: bytes) -> None:
        text = content.decode("utf-8", errors="replace").strip()
        try:
            body: Any = fastjson.loads_api(text)
        except ValueError:
            body = text
        self.body = body.get("error", body) if isinstance(body, dict) else body
        said = self.body.get("message") if isinstance(self.body, dict) else None
        super().__init__(f"Error code: {status}" + (f" - {said}" if isinstance(said, str) and said else ""))
        self.status_code = status
        self.response = Reply(status, headers)
