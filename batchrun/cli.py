"""The `batchrun` command: parses arguments, calls the library, maps errors to exit codes."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .errors import BatchrunError, ExitCode, UserError
from .redact import scrub

if TYPE_CHECKING:
    from .jobs import Job
    from .lifecycle import RunOptions


def _plan(args: argparse.Namespace) -> int:
    from .jobs import load_job
    from .plan import make_plan
    from .plan_format import format_plan

    job = load_job(args.job)
    plan = make_plan(job)
    if args.json:
        print(json.dumps(plan.to_dict(), indent=2))
    else:
        print(format_plan(plan))
    return 0


def _options(args: argparse.Namespace, **kw: object) -> RunOptions:
    from .lifecycle import RunOptions, process_started
    from .results import RETRYABLE_BY_FLAG

    retry = frozenset(x.strip() for x in (getattr(args, "retry", None) or "").split(",") if x.strip())
    bad = sorted(retry - RETRYABLE_BY_FLAG)
    if bad:
        raise UserError(
            f"--retry: {', '.join(bad)} cannot be retried; choose from {', '.join(sorted(RETRYABLE_BY_FLAG))}"
        )
    accept = tuple(x.strip() for x in (getattr(args, "accept", None) or "").split(",") if x.strip())
    cache = "off" if getattr(args, "no_cache", False) else "refresh" if getattr(args, "refresh", False) else "use"
    return RunOptions(
        progress=not args.quiet, cache=cache, wait=args.wait, retry=retry, accept=accept,
        wait_lock=args.wait_lock, started=process_started(), over_budget=getattr(args, "over_budget", False),
        verbose=getattr(args, "verbose", False), one_run=True,
        ray=getattr(args, "ray", None) is not None, ray_address=getattr(args, "ray", None) or None,
        **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def _load(args: argparse.Namespace) -> Job:
    from pathlib import Path

    from .jobs import load_job

    job = load_job(args.job)
    if getattr(args, "output", None):
        job = job.model_copy(update={"output": job.output.model_copy(update={"path": Path(args.output).resolve()})})
    if getattr(args, "mode", None):
        job = job.model_copy(update={"mode": args.mode})
    return job


def _execute(job: Job, options: RunOptions) -> int:
    import asyncio

    from .lifecycle import run_job
    from .results import format_summary
    from .sinks import skip_pandas_probe

    if not options.ray:  # Ray Data hands pyarrow pandas frames in this process
        skip_pandas_probe()
    try:
        result = asyncio.run(run_job(job, options))
    except BatchrunError as exc:
        partial = getattr(exc, "result", None)
        if partial is not None:
            print(format_summary(partial))
        raise
    print(format_summary(result))
    return result.exit_code


def _run(args: argparse.Namespace) -> int:
    job = _load(args)
    _build_tokenizer(job)
    return _execute(job, _options(args))


def _build_tokenizer(job: Job) -> None:
    """The job's tokenizer, built before the run's big imports (polars, pyarrow, aiohttp): the ~30 MB of
    Python objects tiktoken builds its tables from are then freed into memory those imports reuse, not
    on top of them (peak RSS of a 5,000-row run: ~28 MB less). The run would build it anyway (cached)."""
    from .tokens import encoding_for_model

    encoding_for_model(job.request.model, warn=False)


def _collect(args: argparse.Namespace) -> int:
    return _execute(_load(args), _options(args, start=False))


def _cancel(args: argparse.Namespace) -> int:
    import asyncio

    from .lifecycle import cancel_job

    print(asyncio.run(cancel_job(_load(args), wait_lock=args.wait_lock)))
    return 0


def _status(args: argparse.Namespace) -> int:
    from .ledger import Ledger

    job = _load(args)
    path = job.ledger_file
    if not path.exists():
        print(f"{job.name}: no runs yet (no ledger at {path})")
        return 0
    ledger = Ledger(path, job=job.name)
    try:
        st = ledger.stats()
        spend = ledger.spend_by_job()
    finally:
        ledger.close()
    statuses = "   ".join(f"{k} {n:,}" for k, n in sorted(st.by_status.items()))
    modes = ", ".join(f"{n} {k}" for k, n in sorted(st.runs_by_mode.items()))
    print(f"{job.name}: ledger {path}")
    print(f"  answers kept   {st.results:,}   {statuses}" + ("   (every job on this ledger)" if len(spend) > 1 else ""))
    print(
        f"  spent          ${st.cost_usd:,.4f} by this job in {st.runs} invocation(s)"
        + (f" ({modes})" if modes else "")
    )
    for name, (n, usd) in spend.items():
        label = name or "(before 0.2, unattributed)"
        print(f"    {label:<20} ${usd:,.4f} for {n:,} paid request(s)")
    if st.last_run and st.last_run.get("summary"):
        last = st.last_run["summary"]
        done = "finished" if st.last_run.get("finished_at") else "did not finish (killed?)"
        rows = "   ".join(f"{k} {n:,}" for k, n in (last.get("by_status") or {}).items())
        print(f"  last run       {done}: {st.last_run.get('rows') or 0:,} rows   {rows}")
        if last.get("stopped"):
            print(f"  stopped        {last['stopped']}")
    elif st.last_run:
        print("  last run       did not finish (killed?): run the job again to resume")
    print(f"  output         {job.output_path} ({'present' if job.output_path.exists() else 'not written yet'})")
    from .batch_book import describe_batches

    for line in describe_batches(path):
        print(line)
    return 0


def _report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .report import write_report

    path = write_report(_load(args), run_id=args.run, out=Path(args.out) if args.out else None)
    print(f"run report written to {path}")
    return 0


def _init(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .starter import write_starter

    source = Path(args.input)
    out = Path(args.out) if args.out else Path("jobs") / f"{source.stem}.toml"
    path = write_starter(source, out, force=args.force)
    print(f"wrote {path}: edit its prompt and schema, then `batchrun plan {path}`")
    return 0


def _show(args: argparse.Namespace) -> int:
    from .viewer import show

    status = tuple(x.strip() for x in (args.status or "").split(",") if x.strip())
    columns = tuple(x.strip() for x in (args.columns or "").split(",") if x.strip())
    print(show(_load(args), status=status, n=None if args.n == 0 else args.n, columns=columns))
    return 0


def _export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .viewer import export

    path = export(_load(args), Path(args.out))
    print(f"exported to {path}")
    return 0


def _version() -> str:
    from .version import installed

    return installed() or "unknown (not installed)"


class _ShowVersion(argparse.Action):
    """`--version`, looked up only when asked: argparse's own action takes the text when the parser is
    built, and the lookup (importlib.metadata and a scan of site-packages, ~25 ms) was in every command."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs: object) -> None:
        super().__init__(
            option_strings, dest=dest, default=argparse.SUPPRESS, nargs=0, help="show the version and exit"
        )

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        print(f"batchrun {_version()}")
        parser.exit()


def _sim(args: argparse.Namespace) -> int:
    from .sim import SimConfig, SimServer

    changes = json.loads(args.config) if args.config else {}
    for key in ("rpm", "tpm", "latency_ms", "jitter", "seed", "batch_run_seconds"):
        value = getattr(args, key)
        if value is not None:
            changes[key] = value
    if args.insufficient_quota:
        changes["insufficient_quota"] = True
    config = SimConfig().updated(changes)
    server = SimServer(config, port=args.port).start()
    print(f"batchrun simulator listening on {server.base_url}", flush=True)
    print(
        "  point a job at it with [endpoint] base_url, or OPENAI_BASE_URL; stats at "
        f"{server.url}/sim/stats; Ctrl+C stops",
        flush=True,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with contextlib.suppress(KeyboardInterrupt):
        stop.wait()
    server.stop()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="batchrun", description="Bulk LLM prompts: plan, run, resume.")
    parser.add_argument("--version", action=_ShowVersion)
    sub = parser.add_subparsers(dest="command", required=True)

    i = sub.add_parser(
        "init", help="write a commented job file from an input file (CSV, Parquet, JSONL, Excel, txt/md/epub)"
    )
    i.add_argument("input", help="the input file the job reads")
    i.add_argument("-o", "--out", help="where to write the job file (default: jobs/<input name>.toml)")
    i.add_argument("--force", action="store_true", help="replace the job file if it exists")
    i.set_defaults(func=_init)

    p = sub.add_parser("plan", help="count tokens, price and time a job; sends nothing")
    p.add_argument("job", help="path to a job file (jobs/*.toml)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=_plan)

    def lock_flag(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--wait-lock", type=float, default=0.0, metavar="SECONDS",
            help=f"if another run of this job is going, wait up to SECONDS for it (default: exit {ExitCode.LOCKED} at once)",
        )  # fmt: skip

    def run_flags(p: argparse.ArgumentParser) -> None:
        """The flags `run` and `resume` share."""
        p.add_argument("job", help="path to a job file (jobs/*.toml)")
        p.add_argument(
            "-o", "--output", help="output path (default: the job's [output] path); the ledger stays the job's"
        )
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
        p.add_argument("-v", "--verbose", action="store_true", help="print each request as it is answered or fails")
        p.add_argument(
            "--wait", action="store_true", help="batch mode: poll until every batch is collected and the output written"
        )
        p.add_argument(
            "--accept", metavar="STATUSES", help="count these statuses as answered for the exit code, e.g. truncated"
        )
        lock_flag(p)

    r = sub.add_parser("run", help="run a job and write its output (exit codes: see the README)")
    run_flags(r)
    r.add_argument("--refresh", action="store_true", help="send every row again, replacing the ledger's answers")
    r.add_argument("--no-cache", action="store_true", help="neither reuse nor keep answers (spend is still recorded)")
    r.add_argument(
        "--retry", metavar="STATUSES", help="send rows again whose answer has these statuses, e.g. failed,truncated"
    )
    r.add_argument("--mode", choices=["online", "batch", "auto"], help="override the job's mode")
    r.add_argument(
        "--over-budget", action="store_true", help="start even if the plan expects the budget to run out first"
    )
    r.add_argument(
        "--ray", nargs="?", const="", metavar="ADDRESS",
        help='send from actors on a Ray cluster ("auto", "ray://host:10001"; none: the job\'s [ray] address, '
        'else a local Ray instance); needs pip install "batchrun[ray]"',
    )  # fmt: skip
    r.set_defaults(func=_run)

    rs = sub.add_parser("resume", help="continue a stopped or killed run (the same as run)")
    run_flags(rs)
    rs.set_defaults(func=_run, refresh=False, no_cache=False)

    co = sub.add_parser(
        "collect", help="batch mode: collect finished batches, resubmit what needs it; submits no new job"
    )
    co.add_argument("job", help="path to a job file (jobs/*.toml)")
    co.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    co.add_argument("--wait", action="store_true", help="poll until the output is written")
    co.add_argument("--accept", metavar="STATUSES", help="count these statuses as answered for the exit code")
    lock_flag(co)
    co.set_defaults(func=_collect)

    ca = sub.add_parser("cancel", help="batch mode: cancel the job's pending batches and keep what they finished")
    ca.add_argument("job", help="path to a job file (jobs/*.toml)")
    lock_flag(ca)
    ca.set_defaults(func=_cancel)

    st = sub.add_parser("status", help="what the ledger holds for a job, and its batches; sends nothing")
    st.add_argument("job", help="path to a job file (jobs/*.toml)")
    st.set_defaults(func=_status)

    rp = sub.add_parser("report", help="write the HTML run report of the job's last run (also written after each run)")
    rp.add_argument("job", help="path to a job file (jobs/*.toml)")
    rp.add_argument("-o", "--out", help="where to write it (default: <output>.report.html beside the output)")
    rp.add_argument("--run", type=int, help="the run's number in the ledger (default: the last finished one)")
    rp.set_defaults(func=_report)

    sh = sub.add_parser("show", help="print a job's results as a table in the terminal")
    sh.add_argument("job", help="path to a job file (jobs/*.toml)")
    sh.add_argument("--status", metavar="STATUSES", help="only rows with these statuses, e.g. failed,truncated")
    sh.add_argument("-n", type=int, default=20, help="rows to print (default 20; 0: all)")
    sh.add_argument("--columns", metavar="COLS", help="the columns to print, e.g. review_id,sentiment,error")
    sh.set_defaults(func=_show)

    ex = sub.add_parser("export", help="write a job's results as .csv, .jsonl, .xlsx or .parquet")
    ex.add_argument("job", help="path to a job file (jobs/*.toml)")
    ex.add_argument("out", help="the file to write; its suffix picks the format")
    ex.set_defaults(func=_export)

    s = sub.add_parser("sim", help="run the OpenAI-compatible simulator on 127.0.0.1")
    s.add_argument("--port", type=int, default=8089, help="port on 127.0.0.1 (default 8089)")
    s.add_argument("--rpm", type=int, help="requests per minute it allows (429 beyond, with x-ratelimit-* headers)")
    s.add_argument("--tpm", type=int, help="tokens per minute it allows")
    s.add_argument("--latency-ms", dest="latency_ms", type=float, help="base reply latency in ms")
    s.add_argument("--jitter", type=float, help="latency jitter, a fraction of the base")
    s.add_argument("--seed", type=int, help="seed for faults, latency and replies")
    s.add_argument("--batch-run-seconds", dest="batch_run_seconds", type=float,
                   help="how long a Batch API batch takes to finish")  # fmt: skip
    s.add_argument("--insufficient-quota", action="store_true", help="answer every request 429 insufficient_quota")
    s.add_argument("--config", help="other settings as JSON, e.g. '{\"error_500_rate\": 0.05}'")
    s.set_defaults(func=_sim)
    return parser


def _one_line_warnings() -> None:
    """Warnings reach the user as one clear line each, once — not Python's `path:line: Category:` form."""
    seen: set[str] = set()

    def show(message: Warning | str, *_: object, **__: object) -> None:
        text = f"batchrun: warning: {scrub(str(message))}"
        if text not in seen:
            seen.add(text)
            print(text, file=sys.stderr)

    warnings.showwarning = show  # type: ignore[assignment]


ARROW_POOL = "system"
"""The allocator Arrow uses in a `batchrun` process (unless ARROW_DEFAULT_MEMORY_POOL says otherwise):
its default, mimalloc, keeps the pages a row group was built in — a 5,000-row run peaked 13 MB higher
with it, at the same CPU (benchmarks/RESULTS.md, issue 12 part 5). Set here, not on import: a program
using batchrun as a library keeps the allocator it chose."""


def main(argv: Sequence[str] | None = None) -> None:
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", ARROW_POOL)  # read when pyarrow first allocates
    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.simplefilter("default")
    _one_line_warnings()
    try:
        code = args.func(args)
        sys.stdout.flush()
    except BatchrunError as exc:
        print(f"batchrun: {scrub(str(exc))}", file=sys.stderr)
        code = exc.exit_code
    except KeyboardInterrupt:  # before the run's own handlers were installed (or after they were removed)
        print("batchrun: interrupted", file=sys.stderr)
        code = ExitCode.SIGINT
    except BrokenPipeError:
        # the reader went away (`batchrun plan JOB | head`): end quietly, as other tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = ExitCode.DONE
    sys.exit(int(code))


def console() -> None:
    """The `batchrun` command (and `python -m batchrun`): `main`, then an exit that skips the
    interpreter's teardown — freeing every module, the tokenizer's Rust tables, polars' and aiohttp's
    state took ~0.1 s of every command after its work was done (benchmarks/RESULTS.md, issue 12).

    By then the run has committed, closed its files and stopped its servers; the exit handlers still
    run (atexit: Ray's shutdown, logging), output is flushed, and a command that left a thread of its
    own running exits the ordinary way. `main()` called from Python raises SystemExit as before."""
    try:
        main()
        code: int | str | None = 0
    except SystemExit as exc:
        code = exc.code
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.exit(code)
    if not isinstance(code, int):  # sys.exit's own rules: None is success, anything else is printed
        if code is not None:
            print(code, file=sys.stderr)
        code = 0 if code is None else 1
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)
