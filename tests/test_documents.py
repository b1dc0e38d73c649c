"""Long documents: reading, chunking (properties), glossary, reply checks, job-file rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchrun.chunks import Glossary, check_reply, load_glossary, plan_chunks, segments_of
from batchrun.document_input import open_document
from batchrun.documents import Document, Paragraph, Rendering, read_markdown, render_text
from batchrun.errors import InputError, JobFileError
from batchrun.jobs import DocumentSpec, parse_job
from batchrun.tokens import TokenCounter

DATA = Path(__file__).resolve().parent.parent / "data"
COUNTER = TokenCounter("gpt-4o-mini")


def test_text_chapters_verse_and_scene_breaks() -> None:
    doc = open_document(DATA / "alice.txt", DocumentSpec(), "txt")
    assert [c.title for c in doc.chapters] == [
        "(front matter)",
        "CHAPTER I. Down the Rabbit-Hole",
        "CHAPTER II. The Pool of Tears",
    ]
    first = doc.chapters[1].paragraphs
    assert first[0].kind == "heading" and first[0].id == "1.0"
    assert first[1].text.startswith("Alice was beginning to get very tired of sitting by her sister on the bank,")
    assert "\n" not in first[1].text  # hard-wrapped prose unwrapped
    kinds = {p.text[:20]: p.kind for p in doc.paragraphs()}
    assert kinds["*      *      *     "] == "verbatim"
    verse = next(p for p in doc.paragraphs() if p.text.startswith("“How doth"))
    assert verse.kind == "verse" and verse.text.count("\n") == 3
    assert doc.wrap is not None and 60 <= doc.wrap <= 80
    ids = [p.id for p in doc.paragraphs()]
    assert len(ids) == len(set(ids))


def test_markdown_chapters_code_and_front_matter(tmp_path: Path) -> None:
    text = (
        "---\ntitle: x\n---\n# The Book\n\nIntro words.\n\n## One\n\nFirst *para*.\n\n```\ncode here\n\nmore code\n```\n\n"
        "- a list\n- of things\n\n---\n\n## Two\n\nSecond para.\n"
    )
    doc = read_markdown(tmp_path / "b.md", text, None)
    assert doc.title == "The Book"
    assert [c.title for c in doc.chapters] == ["The Book", "One", "Two"]  # "##" is the level used twice
    one = doc.chapters[1].paragraphs
    assert [(p.kind, p.prefix, p.text) for p in one] == [
        ("heading", "## ", "One"),
        ("text", "", "First *para*."),
        ("verbatim", "", "```\ncode here\n\nmore code\n```"),
        ("text", "", "- a list\n- of things"),
        ("verbatim", "", "---"),
    ]
    assert doc.chapters[0].paragraphs[0].kind == "verbatim"  # front matter kept as is
    results = {p.id: Rendering(p.text.upper()) for p in doc.paragraphs() if p.translatable}
    out = render_text(doc, results, bilingual=False, fmt="md")
    assert "## ONE" in out and "```\ncode here\n\nmore code\n```" in out and "FIRST *PARA*." in out


def test_document_input_errors(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text("\n\n* * *\n\n", encoding="utf-8")
    with pytest.raises(InputError, match="no text to translate"):
        open_document(tmp_path / "empty.txt", DocumentSpec(), "txt")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(InputError, match="line 1, byte 4: not valid UTF-8"):
        open_document(tmp_path / "latin1.txt", DocumentSpec(), "txt")
    (tmp_path / "bad.epub").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="cannot read as EPUB"):
        open_document(tmp_path / "bad.epub", DocumentSpec(), "epub")


# -- chunking ----------------------------------------------------------------------------------

WORD = st.sampled_from(["the", "rabbit", "Alice", "watch", "garden", "curious", "très", "久しぶり", "…", "x" * 40])
SENTENCE = st.lists(WORD, min_size=1, max_size=30).map(lambda ws: " ".join(ws)).map(lambda s: s + ".")
PARAGRAPH = st.lists(SENTENCE, min_size=1, max_size=12).map(lambda ss: " ".join(ss))


def make_doc(chapters: list[list[str]]) -> Document:
    from batchrun.documents import Chapter

    built = []
    for c, paras in enumerate(chapters):
        ps = tuple(Paragraph(f"{c}.{i}", c, i, "text", text) for i, text in enumerate(paras))
        built.append(Chapter(c, f"ch {c}", ps))
    return Document(Path("x.txt"), "txt", "x", tuple(built))


@settings(max_examples=60, deadline=None)
@given(
    chapters=st.lists(st.lists(PARAGRAPH, min_size=1, max_size=8), min_size=1, max_size=4), limit=st.integers(16, 200)
)
def test_chunker_properties(chapters: list[list[str]], limit: int) -> None:
    doc = make_doc(chapters)
    chunks = plan_chunks(doc, COUNTER, limit)
    flat = [s for c in chunks for s in c.segments]
    # every paragraph in exactly one chunk (its pieces in order, in consecutive chunks), order kept
    assert [s.paragraph for s in flat] == [
        p.id for p in doc.paragraphs() for _ in range(sum(1 for s in flat if s.paragraph == p.id))
    ]
    assert len({s.id for s in flat}) == len(flat)
    for p in doc.paragraphs():
        pieces = [s for s in flat if s.paragraph == p.id]
        assert "".join(s.text + s.sep for s in pieces) == p.text  # nothing lost, nothing added
        if COUNTER.count_text(p.text) <= limit:
            assert len(pieces) == 1 and pieces[0].id == p.id  # never split unless it alone is too long
    for c in chunks:
        assert c.tokens <= limit  # the bound holds
        assert {s.chapter for s in c.segments} == {c.chapter}  # never crosses a chapter
        assert all(s.tokens == COUNTER.count_text(s.text) for s in c.segments)
    assert [c.number for c in chunks] == list(range(len(chunks)))


def test_long_paragraph_cut_at_sentence_ends() -> None:
    text = " ".join(f"Sentence number {i} is here and it goes on a little." for i in range(40))
    p = Paragraph("0.0", 0, 0, "text", text)
    segs = segments_of(p, COUNTER, 50)
    assert len(segs) > 1
    assert all(s.text.endswith(".") for s in segs)  # whole sentences
    assert [s.id for s in segs] == [f"0.0#{i}" for i in range(len(segs))]
    assert "".join(s.text + s.sep for s in segs) == text


# -- replies -----------------------------------------------------------------------------------


def _segs(n: int) -> tuple:
    return tuple(s for i in range(n) for s in segments_of(Paragraph(f"0.{i}", 0, i, "text", f"text {i}"), COUNTER, 100))


def _reply(*pairs: tuple[str, str]) -> dict:
    return {"items": [{"id": i, "translation": t} for i, t in pairs]}


def test_check_reply() -> None:
    segs = _segs(3)
    ok, why = check_reply(segs, _reply(("0.0", "a"), ("0.1", "b"), ("0.2", "c")))
    assert ok == {"0.0": "a", "0.1": "b", "0.2": "c"} and why == ""
    ok, _ = check_reply(segs, _reply(("0.2", "c"), ("0.0", "a"), ("0.1", "b")))
    assert ok == {"0.0": "a", "0.1": "b", "0.2": "c"}  # reordered: each translation keeps its id
    for reply, reason in [
        (_reply(("0.0", "a"), ("0.1", "b")), "2 item(s) for 3 sent"),
        (_reply(("0.0", "a"), ("0.1", "b"), ("0.1", "b")), "repeats id(s) 0.1"),
        (_reply(("0.0", "a"), ("0.1", "b"), ("0.9", "c")), "lacks id(s) 0.2"),
        (_reply(("0.0", "a"), ("0.1", " "), ("0.2", "c")), "translation of 0.1 is empty"),
        ({"answer": "x"}, "no items list"),
    ]:
        got, why = check_reply(segs, reply)
        assert got is None and reason in why


# -- glossary ----------------------------------------------------------------------------------


def test_glossary_files_and_matching(tmp_path: Path) -> None:
    csv = tmp_path / "g.csv"
    csv.write_text("term,translation\nWhite Rabbit,Lapin Blanc\nDinah,Dinah\n", encoding="utf-8")
    g = load_glossary(csv)
    assert g.entries == (("White Rabbit", "Lapin Blanc"), ("Dinah", "Dinah"))
    assert g.matching(["the white rabbit ran"]) == [("White Rabbit", "Lapin Blanc")]
    assert g.matching(["Dinahs"]) == []  # whole words only
    toml = tmp_path / "g.toml"
    toml.write_text('[terms]\n"Mock Turtle" = "Fausse Tortue"\n', encoding="utf-8")
    assert load_glossary(toml).entries == (("Mock Turtle", "Fausse Tortue"),)
    bad = tmp_path / "bad.csv"
    bad.write_text("term,translation\nonly one column\n", encoding="utf-8")
    with pytest.raises(InputError, match="line 2: expected two columns"):
        load_glossary(bad)
    assert Glossary().matching(["anything"]) == []


# -- job files ---------------------------------------------------------------------------------

DOC_JOB = {
    "input": {"path": "book.txt"},
    "prompt": {"system": "Translate into French."},
    "request": {"model": "gpt-4o-mini", "max_tokens": 2000},
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"prompt": {"system": "x", "template": "{{ text }}"}}, "remove prompt.template"),
        ({"prompt": {}}, "needs prompt.system"),
        ({"output_schema": {"schema": {"type": "object", "properties": {}}}}, "remove [output_schema]"),
        ({"input": {"path": "book.txt", "id_column": "id"}}, "id_column apply to tables"),
        ({"mode": "batch", "document": {"context_paragraphs": 2}}, "cannot do"),
        ({"mode": "batch"}, "document jobs run online"),
        ({"document": {"chapter_pattern": "("}}, "not a valid regular expression"),
        ({"document": {"glossary": "missing.csv"}}, "glossary file not found"),
    ],
)
def test_document_job_rules(tmp_path: Path, change: dict, message: str) -> None:
    with pytest.raises(JobFileError) as err:
        parse_job({**DOC_JOB, **change}, tmp_path / "job.toml")
    assert message in str(err.value)


def test_document_job_defaults(tmp_path: Path) -> None:
    (tmp_path / "g.csv").write_text("a,b\n")
    job = parse_job({**DOC_JOB, "document": {"glossary": "g.csv"}}, tmp_path / "job.toml")
    assert job.input.is_document and job.input.resolved_format == "txt"
    assert job.document.glossary == (tmp_path / "g.csv").resolve()
    assert json.loads(job.document.model_dump_json())["context_paragraphs"] == 0
