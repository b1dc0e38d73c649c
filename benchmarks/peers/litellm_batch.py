"""Runs inside a separate virtualenv that has litellm (see bench_peer.py): the peer's own batch API.

python peers/litellm_batch.py PROMPTS.json BASE_URL MAX_TOKENS
"""

from __future__ import annotations

import json
import sys
import time

import litellm


def main() -> None:
    with open(sys.argv[1]) as f:
        prompts = json.load(f)
    base_url, max_tokens = sys.argv[2], int(sys.argv[3])
    messages = [[{"role": "user", "content": p}] for p in prompts]
    t = time.perf_counter()
    replies = litellm.batch_completion(
        model="openai/gpt-4o-mini", messages=messages, api_base=base_url, api_key="sk-peer", max_tokens=max_tokens
    )
    wall = time.perf_counter() - t
    ok = sum(1 for r in replies if not isinstance(r, Exception))
    print(json.dumps({"wall_s": wall, "ok": ok, "errors": len(replies) - ok}))


if __name__ == "__main__":
    main()
