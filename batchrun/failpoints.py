"""Crash points for the durability tests: `BATCHRUN_FAILPOINT=name` kills the process right there.

A kill -9 between an API call and the ledger write that records it is the case the
Batch API code must survive; a timer cannot hit that window reliably, a named point can.
Unset (always, outside tests), `reached` costs one dictionary lookup.
"""

from __future__ import annotations

import os
import sys

EXIT_CODE = 86


def reached(name: str) -> None:
    """Exit at once, without cleanup, if the environment names this point."""
    if os.environ.get("BATCHRUN_FAILPOINT") == name:
        print(f"batchrun: failpoint {name!r} reached: exiting as if killed", file=sys.stderr, flush=True)
        os._exit(EXIT_CODE)
