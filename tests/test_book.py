"""Translating documents end to end against the simulator over loopback HTTP."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

from batchrun import RunResult
from batchrun import arun as run_async
from batchrun.epub import epub_chapters, read_epub
from batchrun.errors import JobFileError
from batchrun.jobs import Job, load_job
from batchrun.ledger import Ledger
from batchrun.plan import make_plan
from batchrun.sim import SimServer
from batchrun.sim.content import sim_translate

from .conftest import start_cli_run, wait_for_ok

ROOT = Path(__file__).resolve().parent.parent
SimFactory = Callable[..., SimServer]


def book_job(
    tmp_path: Path,
    sim: SimServer,
    source: str,
    *,
    document: str = "",
    name: str = "book.txt",
    system: str = "Translate into French.",
    max_tokens: int = 3000,
) -> Job:
    if not (tmp_path / name).exists():
        (tmp_path / name).write_text(textwrap.dedent(source).lstrip(), encoding="utf-8")
    path = tmp_path / "job.toml"
    path.write_text(
        textwrap.dedent(f"""
        [input]
        path = "{name}"
        [prompt]
        system = "{system}"
        [request]
        model = "gpt-4o-mini"
        max_tokens = {max_tokens}
        [endpoint]
        base_url = "{sim.base_url}"
        api_key_env = "BATCHRUN_TEST_KEY"
        [limits]
        max_in_flight = 8
        max_attempts = 3
        [output]
        path = "out/book.parquet"
        [document]
        """)
        + textwrap.dedent(document),
        encoding="utf-8",
    )
    return load_job(path)


def run(job: Job, **kw: object) -> RunResult:
    return asyncio.run(run_async(job, **kw))  # type: ignore[arg-type]


def check_translations(df: pl.DataFrame) -> None:
    """Every ok paragraph carries the translation of its own text: nothing shifted, nothing padded."""
    ok = df.filter(pl.col("status") == "ok")
    for text, translation in zip(ok["text"], ok["translation"], strict=True):
        assert translation == sim_translate(text)


def test_example_job_end_to_end(make_sim: SimFactory, tmp_path: Path) -> None:
    """jobs/translate_book.toml against the simulator: txt, md, epub (read back) and the Parquet."""
    sim = make_sim(latency_ms=5)
    for rel in ("jobs/translate_book.toml", "data/alice.txt", "data/alice_glossary.csv"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, tmp_path / rel)
    toml = (tmp_path / "jobs/translate_book.toml").read_text(encoding="utf-8")
    toml += f'\n[endpoint]\nbase_url = "{sim.base_url}"\napi_key_env = "BATCHRUN_TEST_KEY"\n'
    (tmp_path / "jobs/translate_book.toml").write_text(toml, encoding="utf-8")
    job = load_job(tmp_path / "jobs/translate_book.toml")
    plan = make_plan(job)
    result = run(job)
    out = tmp_path / "out"
    assert result.by_status == {"ok": plan.rows} and result.requests_sent == plan.requests
    assert sorted(p.name for p in result.documents) == ["alice.fr.epub", "alice.fr.md", "alice.fr.txt"]
    df = pl.read_parquet(out / "alice.fr.parquet")
    assert df.height == plan.rows
    assert df["id"].to_list() == sorted(df["id"].to_list(), key=lambda i: tuple(map(int, i.split("."))))
    check_translations(df)
    # the glossary reached the requests that mention its terms, and only those
    system_prompts = [m for m in sim.seen_system_prompts() if "White Rabbit → Lapin Blanc" in m]
    assert system_prompts and len(system_prompts) < plan.requests
    text = (out / "alice.fr.txt").read_text(encoding="utf-8")
    assert sim_translate("Down the Rabbit-Hole") in text and "*      *      *" in text
    md = (out / "alice.fr.md").read_text(encoding="utf-8")
    assert "\n# " + sim_translate("CHAPTER II.") in md  # a chapter heading becomes a Markdown heading
    chapters = epub_chapters(out / "alice.fr.epub")
    source_titles = df.unique("chapter_title", maintain_order=True)["chapter_title"].to_list()
    assert len(chapters) == len(source_titles) == 3
    assert [len(ps) for _, ps in chapters] == [
        df.filter(pl.col("chapter") == c).height + (2 if c == 1 else 0)  # + chapter I's two scene breaks
        for c in range(3)
    ]
    assert chapters[1][0] == sim_translate("CHAPTER I.\nDown the Rabbit-Hole")
    book = read_epub(out / "alice.fr.epub")
    assert book.title == "Alice’s Adventures in Wonderland"


def test_alignment_recovery(make_sim: SimFactory, tmp_path: Path) -> None:
    """Dropped, repeated, merged and reordered items: the chunk is split until each paragraph is answered
    on its own; a paragraph that still fails is failed with the reason, never padded or shifted."""
    sim = make_sim()
    paragraphs = [f"Paragraph {i} says something rather plain about the garden." for i in range(16)]
    paragraphs[2] += " [[sim:drop]]"
    paragraphs[5] += " [[sim:dup]]"
    paragraphs[9] += " [[sim:merge]]"
    paragraphs[12] += " [[sim:swap]]"
    paragraphs[14] += " [[sim:empty]]"
    job = book_job(tmp_path, sim, "\n\n".join(paragraphs), document="chunk_tokens = 200\noutputs = ['txt', 'epub']")
    result = run(job)
    df = result.frame()
    assert df.height == 16
    failed = df.filter(pl.col("status") != "ok")
    assert failed["id"].to_list() == ["0.14"]
    assert failed["status"][0] == "failed" and "translation of 0.14 is empty" in failed["error"][0]
    assert "sent on its own and still failed" in failed["error"][0]
    check_translations(df)  # the drop, the duplicate, the merge and the reorder all ended right
    assert any("split in half" in n for n in result.notes)
    assert any("paragraph 0.14 not translated" in n for n in result.notes)
    text = (tmp_path / "out/book.translated.txt").read_text(encoding="utf-8")
    assert "[not translated: failed: misaligned reply: the reply's translation of 0.14 is empty" in text
    assert paragraphs[14] in text  # the original is kept beside the mark
    blocks = text.strip().split("\n\n")
    assert len(blocks) == 17  # 15 translations + the failed paragraph's mark and original
    assert [t for _, ps in epub_chapters(tmp_path / "out/book.translated.epub") for t in ps][14].startswith(
        "[not translated"
    )
    # a second run re-asks only the paragraph that failed: every other answer comes from the ledger
    before = sim.stats()["ok"]
    again = run(job)
    assert again.by_status == {"ok": 15, "failed": 1} and sim.stats()["ok"] - before == 0
    assert again.cached_rows == 15  # the failed paragraph is not counted as answered
    # a reply in another order is accepted as it is: each translation is tied to its id
    (tmp_path / "swap").mkdir()
    swapped = "\n\n".join(f"Plain line {i}." + (" [[sim:swap]]" if i == 1 else "") for i in range(4))
    r = run(book_job(tmp_path / "swap", sim, swapped))
    assert r.requests_sent == 1 and r.by_status == {"ok": 4}
    check_translations(r.frame())


def test_long_paragraph_pieces_rejoined(make_sim: SimFactory, tmp_path: Path) -> None:
    sim = make_sim()
    long = " ".join(f"This is sentence {i} of a very long paragraph." for i in range(60))
    job = book_job(tmp_path, sim, f"Short one.\n\n{long}\n\nAnother short one.", document="chunk_tokens = 64")
    plan = make_plan(job)
    assert plan.document is not None and plan.document["split_paragraphs"] == 1
    df = run(job).frame()
    assert df["status"].to_list() == ["ok"] * 3
    check_translations(df)  # the pieces' translations joined with the whitespace that separated them


def test_glossary_or_prompt_change_resends_only_what_it_affects(make_sim: SimFactory, tmp_path: Path) -> None:
    sim = make_sim()
    chapters = []
    for c in range(3):
        paras = [f"Paragraph {i} of chapter {c}, which is about nothing much." for i in range(6)]
        if c == 1:
            paras[3] = "Here the Mock Turtle sighs deeply."
        chapters.append(f"CHAPTER {c + 1}\n\n" + "\n\n".join(paras))
    (tmp_path / "glossary.csv").write_text("term,translation\nMock Turtle,Tortue Fantaisie\n", encoding="utf-8")
    doc = "chunk_tokens = 40\ncontext_paragraphs = 2\nglossary = 'glossary.csv'\n"
    job = book_job(tmp_path, sim, "\n\n".join(chapters), document=doc)
    first = run(job)
    assert first.by_status == {"ok": 21}
    (tmp_path / "glossary.csv").write_text("term,translation\nMock Turtle,Simili-Tortue\n", encoding="utf-8")
    second = run(load_job(job.source_path))
    assert second.requests_sent == 1  # the one chunk that mentions the term; later chunks keep their answers
    assert any("Simili-Tortue" in m for m in sim.seen_system_prompts())
    third = run(book_job(tmp_path, sim, "", document=doc, system="Translate into German."))
    assert third.requests_sent == first.requests_sent  # the instructions changed every request


def test_epub_in_epub_out(make_sim: SimFactory, tmp_path: Path) -> None:
    """An EPUB input keeps its chapters, metadata and files; the translation goes into the same blocks."""
    sim = make_sim()
    from batchrun.document_input import open_document
    from batchrun.documents import Rendering
    from batchrun.epub import build_epub
    from batchrun.jobs import DocumentSpec

    source = open_document(ROOT / "data/alice.txt", DocumentSpec(), "txt")
    build_epub(source, {p.id: Rendering(p.text) for p in source.paragraphs()}, tmp_path / "alice.epub",
               bilingual=False, language="en")  # fmt: skip
    job = book_job(
        tmp_path, sim, "", name="alice.epub", document="chunk_tokens = 600\nbilingual = true\nlanguage = 'fr'"
    )
    result = run(job)
    assert set(result.by_status) == {"ok"}
    out = tmp_path / "out/book.fr.epub"
    before, after = epub_chapters(tmp_path / "alice.epub"), epub_chapters(out)
    assert [t for t, _ in after] == [t for t, _ in before]  # same chapters (bilingual: the original heading first)
    for (_, src), (_, both) in zip(before, after, strict=True):
        translatable = [t for t in src if any(c.isalpha() for c in t)]
        assert len(both) == len(src) + len(translatable)
        assert [t for t in both if t in src] == src
    import zipfile

    with zipfile.ZipFile(out) as z, zipfile.ZipFile(tmp_path / "alice.epub") as orig:
        assert sorted(z.namelist()) == sorted(orig.namelist())
        opf = next(n for n in z.namelist() if n.endswith(".opf"))
        assert "<dc:language>fr</dc:language>" in z.read(opf).decode()


def test_resume_after_kill_9_mid_book(make_sim: SimFactory, tmp_path: Path) -> None:
    """kill -9 in the middle of a book with context chains; the rerun sends only the chunks the ledger
    has no answer for, and the result is the same as an uninterrupted run."""
    sim = make_sim(latency_ms=60, jitter=0.3)
    chapters = [
        f"CHAPTER {c + 1}\n\n" + "\n\n".join(f"Line {i} of chapter {c} goes here, plainly." for i in range(24))
        for c in range(4)
    ]
    job = book_job(tmp_path, sim, "\n\n".join(chapters), document="chunk_tokens = 30\ncontext_paragraphs = 2\n")
    chunks = make_plan(job).requests
    env = {**os.environ, "BATCHRUN_TEST_KEY": "sk-test"}
    proc = start_cli_run(job.source_path, env=env)
    wait_for_ok(sim, chunks // 2, proc=proc)
    assert proc.poll() is None, "the run finished before it could be killed"
    killed_at = sim.stats()["ok"] - 8  # at most max_in_flight replies were still on their way back
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not job.output_path.exists()
    time.sleep(0.5)  # requests the killed process left in flight finish at the simulator
    ledger = Ledger(job.ledger_file, job=job.name)
    answered = ledger.stats().results
    ledger.close()
    assert 0 < answered < chunks
    sent_before = sim.stats()["ok"]
    result = run(job)
    # every chunk answered before the kill was committed: none is translated (or paid for) again
    assert answered >= killed_at
    assert result.requests_sent == chunks - answered
    assert result.by_status == {"ok": 100} and result.cached_rows > 0
    assert sim.stats()["ok"] - sent_before == chunks - answered
    check_translations(result.frame())


def test_a_document_job_never_writes_over_its_input(make_sim, tmp_path: Path) -> None:
    # book.txt with no [output] path: the Parquet is book.parquet and the translation book.translated.txt
    sim = make_sim()
    (tmp_path / "book.txt").write_text("Chapter 1\n\nHello there.\n\nSecond paragraph.\n", encoding="utf-8")
    job_file = tmp_path / "book.toml"
    job_file.write_text(
        '[input]\npath = "book.txt"\n[prompt]\nsystem = "Translate into French."\n'
        '[request]\nmodel = "gpt-4o-mini"\nmax_tokens = 500\n'
        f'[endpoint]\nbase_url = "{sim.base_url}"\napi_key_env = "BATCHRUN_TEST_KEY"\n',
        encoding="utf-8",
    )
    before = (tmp_path / "book.txt").read_bytes()
    result = run(load_job(job_file))
    assert (tmp_path / "book.txt").read_bytes() == before
    assert [p.name for p in result.documents] == ["book.translated.txt"]
    clash = job_file.read_text().replace("[request]", '[document]\noutput_stem = "book"\n[request]')
    job_file.write_text(clash)
    with pytest.raises(JobFileError, match=r"document\.output_stem.*destroy"):
        run(load_job(job_file))
    assert (tmp_path / "book.txt").read_bytes() == before
