"""oaib's `Batch` on the same prompts (run with the interpreter of a virtualenv that has oaib).

    python oaib_runner.py PROMPTS_JSON BASE_URL RPM TPM WORKERS MAX_TOKENS

oaib queues every request, then its workers send them under its RPM/TPM throttle; a failed request
is logged and dropped (oaib has no retries of its own; the SDK client it makes retries twice). Prints one JSON line: {"ok": n, "failed": n}.
"""

from __future__ import annotations

import asyncio
import json
import sys

from oaib import Batch


async def run(prompts: list[str], base_url: str, rpm: int, tpm: int, workers: int, max_tokens: int) -> int:
    batch = Batch(rpm=rpm, tpm=tpm, workers=workers, loglevel=0, api_key="sk-bench", base_url=base_url)
    for i, text in enumerate(prompts):
        await batch.add(
            "chat.completions.create",
            metadata={"row": i},
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": text}],
            max_tokens=max_tokens,
        )
    out = await batch.run()
    return len(out)


def main() -> None:
    path, base_url, rpm, tpm, workers, max_tokens = sys.argv[1:7]
    with open(path) as f:
        prompts = json.load(f)
    ok = asyncio.run(run(prompts, base_url, int(rpm), int(tpm), int(workers), int(max_tokens)))
    print(json.dumps({"ok": ok, "failed": len(prompts) - ok}))


if __name__ == "__main__":
    main()
