"""One run per job at a time: an exclusive OS lock on a file beside the job's ledger.

`fcntl.flock` is released by the kernel when the process ends, however it ends
(kill -9 included), so a stale lock file never blocks a later run: only a live
process holds the lock. The file keeps the holder's PID and command line so the
refused run can say who holds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import time
from pathlib import Path
from types import TracebackType

from .errors import LockHeld

POLL_SECONDS = 0.1


class JobLock:
    """Held for the whole of `batchrun run` / `collect` / `cancel` of one ledger."""

    def __init__(self, ledger_file: Path) -> None:
        self.path = ledger_file.with_name(ledger_file.name + ".lock")
        self.fd: int | None = None

    def acquire(self, wait_seconds: float = 0.0) -> JobLock:
        """Take the lock, waiting up to `wait_seconds` for another holder to finish; else LockHeld."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = _read_holder(fd)
                    os.close(fd)
                    waited = f" (waited {wait_seconds:g} s)" if wait_seconds else ""
                    raise LockHeld(
                        f"this job is already running{waited}: {holder} holds {self.path}. Nothing was read or "
                        "sent. Wait for it (or pass --wait-lock SECONDS); a killed run never leaves this lock behind"
                    ) from None
                time.sleep(POLL_SECONDS)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {' '.join(sys.argv)[:500]}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> JobLock:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"<JobLock {self.path} {'held' if self.fd is not None else 'free'}>"


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 600, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    if not text:
        return "another process"
    pid, _, cmd = text.partition(" ")
    return f"PID {pid}" + (f" ({cmd})" if cmd else "")
