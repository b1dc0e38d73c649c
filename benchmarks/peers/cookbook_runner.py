"""Run the OpenAI cookbook's `api_request_parallel_processor.py` against a loopback server, unmodified
but for two functions patched at run time (the script itself is not in this repository):

- `api_endpoint_from_url` only matches `https://host/v1/...`, so a plain-HTTP loopback URL crashed it;
  the patched one also accepts `http://`.
- `tiktoken.get_encoding` is called once per request and, offline, would try to download the
  vocabulary; it is replaced by batchrun's cached, bundled one (the same tokens, no network).

    python cookbook_runner.py SCRIPT REQUESTS_JSONL SAVE_JSONL URL RPM TPM MAX_ATTEMPTS

Prints one JSON line: {"ok": n, "failed": n}.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
import sys

import tiktoken

from batchrun.tokens import get_encoding


def main() -> None:
    script, requests, save, url, rpm, tpm, attempts = sys.argv[1:8]
    tiktoken.get_encoding = get_encoding  # before the script imports it: it calls tiktoken.get_encoding
    spec = importlib.util.spec_from_file_location("api_request_parallel_processor", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def endpoint_from_url(request_url: str) -> str:
        match = re.search(r"^https?://[^/]+/v\d+/(.+)$", request_url)
        assert match is not None, request_url
        return match[1]

    module.api_endpoint_from_url = endpoint_from_url
    asyncio.run(
        module.process_api_requests_from_file(
            requests_filepath=requests,
            save_filepath=save,
            request_url=url,
            api_key="sk-bench",
            max_requests_per_minute=float(rpm),
            max_tokens_per_minute=float(tpm),
            token_encoding_name="o200k_base",
            max_attempts=int(attempts),
            logging_level=40,
        )
    )
    ok = failed = 0
    with open(save) as f:
        for line in f:
            reply = json.loads(line)[1]
            if isinstance(reply, dict) and reply.get("choices"):
                ok += 1
            else:
                failed += 1
    print(json.dumps({"ok": ok, "failed": failed}))


if __name__ == "__main__":
    main()
