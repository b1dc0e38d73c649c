"""Whole documents as chapters of paragraphs with stable ids: read from txt and Markdown, written back.

A paragraph's id is "<chapter>.<index>" (both from 0, in reading order); the
document's name is kept beside it in the output. Blocks that hold no letters
(scene breaks like "* * *", code, rules, images) are kept verbatim and never sent.
EPUB is in `epub.py`; both produce the same `Document`.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from .jobs import DocumentSpec

FAILED_MARK = "[not translated: {reason}]"


@dataclass(frozen=True, slots=True)
class Paragraph:
    """One block of a document: what is translated, and how to put it back."""

    id: str
    chapter: int
    index: int
    kind: str
    """"heading", "text", "verse" (line breaks kept) or "verbatim" (never sent)."""
    text: str
    """The text sent for translation (prose unwrapped to one line)."""
    prefix: str = ""
    """Markdown markup kept outside the translation (e.g. "## ")."""
    anchor: str = ""
    """EPUB: the content file this block lives in."""

    @property
    def translatable(self) -> bool:
        return self.kind != "verbatim"


@dataclass(frozen=True, slots=True)
class Chapter:
    index: int
    title: str
    paragraphs: tuple[Paragraph, ...]
    anchor: str = ""


@dataclass(frozen=True)
class Document:
    path: Path
    format: str
    title: str
    chapters: tuple[Chapter, ...]
    wrap: int | None = None
    """Text files: the line width prose was wrapped at (None: one line per paragraph)."""

    @property
    def name(self) -> str:
        return self.path.name

    def paragraphs(self) -> Iterator[Paragraph]:
        for chapter in self.chapters:
            yield from chapter.paragraphs


@dataclass(frozen=True, slots=True)
class Rendering:
    """What the writers put in place of one paragraph: its translation, or why there is none."""

    translation: str | None
    failure: str | None = None


def _has_letters(text: str) -> bool:
    return any(c.isalpha() for c in text)


def _blocks(text: str) -> list[list[str]]:
    """Blank-line separated blocks, each a list of lines (trailing spaces dropped)."""
    out: list[list[str]] = []
    current: list[str] = []
    for line in text.split("\n"):
        line = line.rstrip()
        if line.strip():
            current.append(line)
        elif current:
            out.append(current)
            current = []
    if current:
        out.append(current)
    return out


class _Builder:
    """Collects paragraphs into chapters, numbering both."""

    def __init__(self) -> None:
        self.chapters: list[Chapter] = []
        self.title = ""
        self.paragraphs: list[Paragraph] = []

    def new_chapter(self, title: str) -> None:
        if any(p.translatable for p in self.paragraphs):
            self.close()
        self.title = title  # blocks with nothing to translate (front matter, a rule) join the next chapter

    def add(self, kind: str, text: str, prefix: str = "") -> None:
        if kind != "verbatim" and not _has_letters(text):
            kind = "verbatim"
        ch = len(self.chapters)
        i = len(self.paragraphs)
        self.paragraphs.append(Paragraph(f"{ch}.{i}", ch, i, kind, text, prefix))

    def close(self) -> None:
        if self.paragraphs:
            title = self.title or ("(front matter)" if not self.chapters else f"Part {len(self.chapters)}")
            self.chapters.append(Chapter(len(self.chapters), title, tuple(self.paragraphs)))
        self.paragraphs = []
        self.title = ""


def read_text(path: Path, text: str, spec: DocumentSpec) -> Document:
    """Paragraphs are blank-line separated blocks; a block whose first line matches the chapter
    pattern is a heading that starts a chapter. Hard-wrapped prose is unwrapped; a block with
    indented continuation lines (verse, letters) keeps its line breaks."""
    pattern = re.compile(spec.chapter_pattern)
    b = _Builder()
    widths: list[int] = []
    for lines in _blocks(text):
        if pattern.search(lines[0]):
            title = " ".join(x.strip() for x in lines)
            b.new_chapter(title)
            b.add("heading", "\n".join(x.strip() for x in lines))
        elif len(lines) > 1 and any(x[:1].isspace() for x in lines):
            b.add("verse", textwrap.dedent("\n".join(lines)))
        else:
            if len(lines) > 1:
                widths += [len(x) for x in lines[:-1]]
            b.add("text", " ".join(x.strip() for x in lines))
    b.close()
    title = b.chapters[0].paragraphs[0].text.split("\n")[0] if b.chapters else path.stem
    wrap = max(widths) if widths else None
    return Document(path, "txt", title, tuple(b.chapters), wrap=wrap)


_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_RULE = re.compile(r"^\s{0,3}([-*_])(\s*\1){2,}\s*$")
_IMAGE_ONLY = re.compile(r"^\s*!\[[^\]]*\]\([^)]*\)\s*$")


def _markdown_blocks(text: str) -> list[tuple[str, str, str]]:
    """(kind, prefix, text) blocks; fenced code and front matter stay whole and verbatim."""
    out: list[tuple[str, str, str]] = []
    lines = text.split("\n")
    i = 0
    para: list[str] = []

    def flush() -> None:
        if para:
            block = "\n".join(para).rstrip()
            if _RULE.match(block) or _IMAGE_ONLY.match(block) or block.lstrip().startswith("<!--"):
                out.append(("verbatim", "", block))
            else:
                out.append(("text", "", block))
            para.clear()

    if lines and lines[0].strip() == "---":  # YAML front matter
        end = next((j for j in range(1, len(lines)) if lines[j].strip() in ("---", "...")), None)
        if end is not None:
            out.append(("verbatim", "", "\n".join(lines[: end + 1])))
            i = end + 1
    while i < len(lines):
        line = lines[i]
        fence = re.match(r"^\s{0,3}(`{3,}|~{3,})", line)
        if fence:
            flush()
            mark = fence.group(1)
            j = i + 1
            while j < len(lines) and not lines[j].lstrip().startswith(mark):
                j += 1
            out.append(("verbatim", "", "\n".join(lines[i : j + 1])))
            i = j + 1
            continue
        heading = _HEADING.match(line)
        if heading:  # a heading ends the paragraph above it, blank line or not
            flush()
            out.append((f"h{len(heading.group(1))}", heading.group(1) + " ", heading.group(2)))
        elif not line.strip():
            flush()
        else:
            para.append(line)
        i += 1
    flush()
    return out


def read_markdown(path: Path, text: str, chapter_level: int | None) -> Document:
    """Blocks are paragraphs (Markdown markup kept for the model to keep); headings at the
    chapter level start chapters. Code, rules and lone images are kept verbatim."""
    blocks = _markdown_blocks(text)
    levels = [int(kind[1]) for kind, _, _ in blocks if kind.startswith("h")]
    if chapter_level is None and levels:
        repeated = sorted(lv for lv in set(levels) if levels.count(lv) > 1)
        chapter_level = repeated[0] if repeated else min(levels)
    b = _Builder()
    title = path.stem
    for kind, prefix, body in blocks:
        if kind.startswith("h"):
            level = int(kind[1])
            if level == 1 and title == path.stem:
                title = body
            if chapter_level is not None and level <= chapter_level:
                b.new_chapter(body)
            b.add("heading", body, prefix)
        else:
            b.add(kind, body)
    b.close()
    return Document(path, "md", title, tuple(b.chapters))


# -- writing ---------------------------------------------------------------------------------


def write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """Write through `<path>.partial` and rename, so a crash never leaves half a document under its name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    write(partial)
    partial.replace(path)


def _failed(reason: str) -> str:
    return FAILED_MARK.format(reason=" ".join(reason.split())[:300])


def _wrap(text: str, width: int | None) -> str:
    if width is None or "\n" in text:
        return text
    return textwrap.fill(text, width=width, break_long_words=False, break_on_hyphens=False)


def render_text(doc: Document, results: Mapping[str, Rendering], *, bilingual: bool, fmt: str) -> str:
    """The translated document as txt or md (from any input format)."""
    out: list[str] = []
    for chapter in doc.chapters:
        for p in chapter.paragraphs:
            if p.kind == "heading" and out:
                out.append("")  # a little more room before a chapter, as the input has
            if not p.translatable:
                out.append(p.text)
                continue
            prefix = p.prefix if fmt == "md" and doc.format == "md" else ""
            if fmt == "md" and doc.format != "md" and p.kind == "heading":
                prefix = "# " if p.index == 0 else "## "
            source = prefix + _wrap(p.text, doc.wrap if fmt == "txt" else None)
            r = results.get(p.id) or Rendering(None, "no result")
            if r.translation is None:
                out.append(prefix + _failed(r.failure or "unknown"))
                out.append(source)
                continue
            if bilingual:
                out.append(source)
            translated = r.translation if p.kind != "text" else _wrap(r.translation, doc.wrap if fmt == "txt" else None)
            if fmt == "md" and p.kind == "heading":
                translated = translated.replace("\n", " ")
            out.append(prefix + translated)
    return "\n\n".join(out).replace("\n\n\n\n", "\n\n\n") + "\n"
