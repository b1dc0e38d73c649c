"""Opening a document input: the format's reader (txt / Markdown in `documents`, EPUB in `epub`) and
the checks every format shares. Above both readers, so neither imports the other."""

from __future__ import annotations

from pathlib import Path

from .documents import Document, read_markdown, read_text
from .errors import InputError
from .jobs import DocumentSpec
from .sources import check_input_file, check_utf8


def open_document(path: Path, spec: DocumentSpec, fmt: str) -> Document:
    """Read and check a document input; errors name the file and what to do."""
    check_input_file(path)
    if fmt == "epub":
        from .epub import read_epub  # ebooklib and lxml are loaded only for EPUB inputs

        doc = read_epub(path)
    else:
        check_utf8(path)
        text = path.read_text(encoding="utf-8").replace("\r\n", "\n").replace("\r", "\n").removeprefix("\ufeff")
        doc = read_markdown(path, text, spec.chapter_heading_level) if fmt == "md" else read_text(path, text, spec)
    if not any(p.translatable for p in doc.paragraphs()):
        raise InputError(f"{path}: no text to translate (every block is empty or has no letters)")
    return doc
