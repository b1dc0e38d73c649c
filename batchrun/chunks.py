"""A document's paragraphs packed into requests, and each reply checked against its request.

A chunk is consecutive paragraphs of one chapter whose text is at most
`chunk_tokens` tokens. A paragraph longer than that alone is cut into pieces at
sentence ends (then words, then tokens), each piece its own item "<id>#<n>",
rejoined with the whitespace that separated them. A reply is accepted only if
it has exactly the request's ids, each once, none empty; anything else is a
misalignment, and the chunk is split in half and asked again (see `book.py`).
"""

from __future__ import annotations

import csv
import json
import re
import tomllib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .documents import Document, Paragraph
from .errors import InputError
from .fingerprints import Fingerprinter
from .jobs import Job
from .prompts import Request
from .tokens import TokenCounter

SCHEMA_NAME = "batchrun_translation"
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "items": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"id": {"type": "string"}, "translation": {"type": "string"}},
                "required": ["id", "translation"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["items"],
    "additionalProperties": False,
}
FORMAT_RULES = """\
The user message is JSON: {"context": [...], "items": [{"id": ..., "text": ...}]}.
"context" is the passage just before the items, with its translation, for continuity only: do not translate it again.
Translate the text of every item. Reply with {"items": [{"id": ..., "translation": ...}]}: exactly one entry
per item, with the same ids in the same order; never merge, split, skip or add items; never leave a translation
empty. Keep Markdown markup, line breaks and punctuation style."""
_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+|(?<=[.!?…][”’\"')\]])\s+")


@dataclass(frozen=True, slots=True)
class Segment:
    """What one request item carries: a whole paragraph, or a piece of a long one."""

    id: str
    paragraph: str
    chapter: int
    text: str
    tokens: int
    sep: str = ""
    """The whitespace that followed this piece in the paragraph ("" for the last or only piece)."""


@dataclass(frozen=True, slots=True)
class Chunk:
    chapter: int
    number: int
    segments: tuple[Segment, ...]

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.segments)


def _pieces(text: str, pattern: re.Pattern[str]) -> list[tuple[str, str]]:
    """(piece, separator after it) such that joining them gives `text` back."""
    out: list[tuple[str, str]] = []
    start = 0
    for m in pattern.finditer(text):
        out.append((text[start : m.start()], m.group(0)))
        start = m.end()
    out.append((text[start:], ""))
    return [(p, s) for p, s in out if p]


def _split(text: str, limit: int, counter: TokenCounter) -> list[tuple[str, str]]:
    """Cut text into (piece, separator) parts of at most `limit` tokens: sentences, then words, then tokens."""
    parts: list[tuple[str, str]] = []
    for level in (_SENTENCE_END, re.compile(r"\s+")):
        units = _pieces(text, level)
        if len(units) > 1 or level.pattern == r"\s+":
            break
    current, current_sep = "", ""
    for unit, sep in units:
        candidate = current + current_sep + unit if current else unit
        if current and counter.count_text(candidate) > limit:
            parts.append((current, current_sep))
            current = unit
        else:
            current = candidate
        current_sep = sep
    if current:
        parts.append((current, current_sep))
    out: list[tuple[str, str]] = []
    for piece, sep in parts:
        if counter.count_text(piece) <= limit:
            out.append((piece, sep))
        elif re.search(r"\s", piece):
            sub = _split(piece, limit, counter)
            out += [*sub[:-1], (sub[-1][0], sep)]
        else:  # one "word" longer than the limit (a URL, a run of CJK text): cut by tokens
            tokens = counter.encoding.encode_ordinary(piece)
            cuts = [counter.encoding.decode(tokens[i : i + limit]) for i in range(0, len(tokens), limit)]
            out += [(c, "") for c in cuts[:-1]] + [(cuts[-1], sep)]
    return out


def segments_of(paragraph: Paragraph, counter: TokenCounter, limit: int) -> list[Segment]:
    n = counter.count_text(paragraph.text)
    if n <= limit:
        return [Segment(paragraph.id, paragraph.id, paragraph.chapter, paragraph.text, n)]
    pieces = _split(paragraph.text, limit, counter)
    counts = counter.count_texts([p for p, _ in pieces])
    return [
        Segment(f"{paragraph.id}#{i}", paragraph.id, paragraph.chapter, piece, k, sep)
        for i, ((piece, sep), k) in enumerate(zip(pieces, counts, strict=True))
    ]


def pack(segments: Sequence[Segment], limit: int, first_number: int = 0) -> list[Chunk]:
    """Greedy, order-keeping packing of one chapter's segments into chunks of at most `limit` tokens."""
    chunks: list[Chunk] = []
    current: list[Segment] = []
    total = 0
    for seg in segments:
        if current and total + seg.tokens > limit:
            chunks.append(Chunk(seg.chapter, first_number + len(chunks), tuple(current)))
            current, total = [], 0
        current.append(seg)
        total += seg.tokens
    if current:
        chunks.append(Chunk(current[0].chapter, first_number + len(chunks), tuple(current)))
    return chunks


def plan_chunks(doc: Document, counter: TokenCounter, limit: int) -> list[Chunk]:
    """Every translatable paragraph of the document in exactly one chunk, in reading order, per chapter."""
    chunks: list[Chunk] = []
    for chapter in doc.chapters:
        segs = [s for p in chapter.paragraphs if p.translatable for s in segments_of(p, counter, limit)]
        chunks += pack(segs, limit, len(chunks))
    return chunks


# -- glossary --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Glossary:
    """Term → translation; each request carries only the entries its items mention."""

    entries: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        patterns = [re.compile(r"(?<!\w)" + re.escape(term) + r"(?!\w)", re.IGNORECASE) for term, _ in self.entries]
        object.__setattr__(self, "_patterns", patterns)

    def matching(self, texts: Iterable[str]) -> list[tuple[str, str]]:
        joined = "\n".join(texts)
        return [entry for entry, pat in zip(self.entries, self._patterns, strict=True) if pat.search(joined)]  # type: ignore[attr-defined]


def load_glossary(path: Path | None) -> Glossary:
    """A glossary file: CSV/TSV with columns term,translation (header optional), or a TOML/JSON table."""
    if path is None:
        return Glossary()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read the glossary: {exc}") from exc
    suffix = path.suffix.lower()
    entries: list[tuple[str, str]] = []
    if suffix in (".toml", ".json"):
        try:
            data = tomllib.loads(text) if suffix == ".toml" else json.loads(text)
        except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"{path}: the glossary is not valid {suffix[1:].upper()}: {exc}") from exc
        if isinstance(data, dict) and isinstance(data.get("terms"), dict):
            data = data["terms"]
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise InputError(f'{path}: the glossary must be a table of "term" = "translation" strings')
        entries = [(str(k), v) for k, v in data.items()]
    else:
        delimiter = "\t" if suffix in (".tsv", ".tab") else ","
        for n, row in enumerate(csv.reader(text.splitlines(), delimiter=delimiter), start=1):
            if not row or not any(c.strip() for c in row):
                continue
            if n == 1 and [c.strip().lower() for c in row[:2]] == ["term", "translation"]:
                continue
            if len(row) != 2 or not row[0].strip() or not row[1].strip():
                raise InputError(
                    f"{path}: line {n}: expected two columns, term and translation, both filled; got {row!r}"
                )
            entries.append((row[0].strip(), row[1].strip()))
    if not entries:
        raise InputError(f"{path}: the glossary is empty; remove document.glossary or add entries")
    return Glossary(tuple(entries))


# -- requests and replies ----------------------------------------------------------------------


def system_message(instructions: str, glossary: Sequence[tuple[str, str]]) -> str:
    text = instructions.strip() + "\n\n" + FORMAT_RULES
    if glossary:
        text += "\n\nGlossary (always translate these terms so):\n" + "\n".join(f"- {t} → {tr}" for t, tr in glossary)
    return text


def user_message(segments: Sequence[Segment], context: Sequence[tuple[str, str]]) -> str:
    payload = {
        "context": [{"text": src, "translation": tr} for src, tr in context],
        "items": [{"id": s.id, "text": s.text} for s in segments],
    }
    return json.dumps(payload, ensure_ascii=False)


def check_reply(segments: Sequence[Segment], output: Any) -> tuple[dict[str, str] | None, str]:
    """The translations by id if the reply matches the request item for item; else None and why.
    A reply in another order is accepted (each translation is tied to its id); a missing, extra,
    repeated or empty item is not."""
    items = output.get("items") if isinstance(output, dict) else None
    if not isinstance(items, list):
        return None, "the reply has no items list"
    want = [s.id for s in segments]
    got = [i.get("id") if isinstance(i, dict) else None for i in items]
    if len(got) != len(want):
        return None, f"the reply has {len(got)} item(s) for {len(want)} sent"
    dupes = sorted({g for g in got if got.count(g) > 1}, key=str)
    if dupes:
        return None, f"the reply repeats id(s) {', '.join(map(str, dupes))}"
    missing = [w for w in want if w not in got]
    if missing:
        extra = [g for g in got if g not in want]
        return None, f"the reply lacks id(s) {', '.join(missing)}" + (f" and has unknown {extra}" if extra else "")
    out: dict[str, str] = {}
    for item in items:
        text = item.get("translation")
        if not isinstance(text, str) or not text.strip():
            return None, f"the reply's translation of {item['id']} is empty"
        out[item["id"]] = text
    return out, ""


def halves(segments: Sequence[Segment]) -> Iterator[tuple[Segment, ...]]:
    mid = len(segments) // 2
    yield tuple(segments[:mid])
    yield tuple(segments[mid:])


class ChunkRenderer:
    """Builds the request for a run of segments (and its context), counted as the server counts it."""

    def __init__(self, job: Job, glossary: Glossary) -> None:
        from .prompts import Renderer

        base = Renderer(job, [], warn_unknown_model=False)
        self.job = job
        self.counter = base.counter
        self.glossary = glossary
        self.params: dict[str, Any] = {
            **base.params,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": SCHEMA_NAME, "schema": SCHEMA, "strict": True},
            },
        }
        self.instructions = job.prompt.system or ""
        self.examples = [m.model_dump(exclude_none=True) for m in job.prompt.examples]
        self.max_output = job.request.max_output_tokens or 0

    def fingerprinter(self, endpoint: str, model: str) -> Fingerprinter:
        """The cache key leaves out the context's translations: they are a hint for continuity, and a
        re-translated chunk must not force every later chunk of its chapter to be paid for again."""
        constant = {**self.params, "model": model, "instructions": self.instructions, "examples": self.examples,
                    "rules": FORMAT_RULES}  # fmt: skip
        return Fingerprinter(endpoint, "document", constant)

    def request(
        self, segments: Sequence[Segment], context: Sequence[tuple[str, str]], number: int
    ) -> tuple[Request, str]:
        """The request, and the text its fingerprint is taken of."""
        terms = self.glossary.matching(s.text for s in segments)
        body = {
            **self.params,
            "messages": [
                {"role": "system", "content": system_message(self.instructions, terms)},
                *self.examples,
                {"role": "user", "content": user_message(segments, context)},
            ],
        }
        key = json.dumps(
            {"glossary": terms, "items": [[s.id, s.text] for s in segments], "context": [src for src, _ in context]},
            ensure_ascii=False,
            separators=(",", ":"),
        )
        first, last = segments[0].id, segments[-1].id
        label = first if first == last else f"{first}–{last}"
        req = Request(number, label, body, self.counter.count_chat_request(body), self.max_output)
        return req, key
