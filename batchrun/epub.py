"""EPUB documents through ebooklib: spine documents are chapters, leaf block elements paragraphs.

Reading and writing select blocks the same way, so the n-th paragraph of a
chapter is the n-th block of its content file both times. A translated EPUB is
the original book with block contents replaced (metadata, spine, table of
contents, styles and images untouched); inline markup inside a translated
block (emphasis, links) is not carried over.
"""

from __future__ import annotations

import copy
import hashlib
import html
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lxml import etree

from .documents import Chapter, Document, Paragraph, Rendering, _failed, _has_letters, write_atomically
from .errors import InputError

XHTML = "http://www.w3.org/1999/xhtml"
BLOCKS = {"p", "h1", "h2", "h3", "h4", "h5", "h6", "li", "dt", "dd", "blockquote", "figcaption", "caption", "td",
          "th", "pre", "div"}  # fmt: skip
HEADINGS = {"h1", "h2", "h3", "h4", "h5", "h6"}


def _ebooklib() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ebooklib imports six.moves, which warns on new Pythons
        import ebooklib
        from ebooklib import epub
    return ebooklib, epub


def _local(el: Any) -> str:
    tag = el.tag
    return tag.rsplit("}", 1)[-1].lower() if isinstance(tag, str) else ""


def _collect(el: Any, parts: list[str]) -> None:
    if _local(el) == "br":
        parts.append("\n")
    if isinstance(el.tag, str) and el.text:
        parts.append(el.text)
    for child in el:
        _collect(child, parts)
        if child.tail:
            parts.append(child.tail)


def _text(el: Any) -> str:
    """The block's text, whitespace collapsed; <br/> line breaks kept as newlines."""
    parts: list[str] = []
    _collect(el, parts)
    lines = (" ".join(line.split()) for line in "".join(parts).split("\n"))
    return "\n".join(line for line in lines if line)


def _parse(content: bytes) -> Any:
    parser = etree.XMLParser(recover=True, resolve_entities=False, no_network=True, huge_tree=True)
    root = etree.fromstring(content, parser=parser)
    if root is None:
        raise ValueError("empty content document")
    return root


def _block_elements(root: Any) -> list[Any]:
    """Leaf block elements with text, in reading order (the same on read and on write)."""
    out = []
    for el in root.iter():
        name = _local(el)
        if name not in BLOCKS:
            continue
        if any(_local(d) in BLOCKS for d in el.iterdescendants()):
            continue
        if _text(el):
            out.append(el)
    return out


def _read_book(path: Path) -> Any:
    _, epub = _ebooklib()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return epub.read_epub(str(path), options={"ignore_ncx": True})
    except Exception as exc:  # ebooklib raises bare zipfile/KeyError/lxml errors for a broken book
        raise InputError(f"{path}: cannot read as EPUB: {exc}") from exc


def _documents(book: Any) -> list[Any]:
    ebooklib, _ = _ebooklib()
    items = []
    for idref, *_ in book.spine:
        item = book.get_item_with_id(idref)
        if item is not None and item.get_type() == ebooklib.ITEM_DOCUMENT:
            items.append(item)
    return items


def read_epub(path: Path) -> Document:
    """Chapters are the spine's content documents that hold text; the chapter title is its first heading."""
    book = _read_book(path)
    chapters: list[Chapter] = []
    for item in _documents(book):
        try:
            root = _parse(item.get_content())
        except (etree.XMLSyntaxError, ValueError) as exc:
            raise InputError(f"{path}: content file {item.file_name!r} is not valid XHTML: {exc}") from exc
        blocks = _block_elements(root)
        if not any(_has_letters(_text(el)) for el in blocks):
            continue
        ch = len(chapters)
        paragraphs = []
        title = ""
        for i, el in enumerate(blocks):
            name = _local(el)
            text = _text(el)
            if name == "pre" or not _has_letters(text):
                kind = "verbatim"
            elif name in HEADINGS:
                kind = "heading"
                title = title or text
            else:
                kind = "text"
            paragraphs.append(Paragraph(f"{ch}.{i}", ch, i, kind, text, anchor=item.file_name))
        chapters.append(Chapter(ch, title or Path(item.file_name).stem, tuple(paragraphs), anchor=item.file_name))
    titles = book.get_metadata("DC", "title")
    title = titles[0][0] if titles else path.stem
    return Document(path, "epub", title, tuple(chapters))


def _fill(el: Any, text: str) -> None:
    """Replace an element's content with plain text (newlines as <br/>), keeping its tail and attributes."""
    for child in list(el):
        el.remove(child)
    first, *rest = text.split("\n")
    el.text = first
    ns = el.tag.split("}", 1)[0] + "}" if el.tag.startswith("{") else ""
    for line in rest:
        br = etree.SubElement(el, f"{ns}br")
        br.tail = line


def _mark(el: Any, cls: str) -> None:
    el.set("class", (el.get("class", "") + " " + cls).strip())


def write_translated_epub(
    doc: Document, results: Mapping[str, Rendering], out: Path, *, bilingual: bool, language: str | None
) -> None:
    """The input EPUB with each paragraph's text replaced by its translation (or marked as not translated)."""
    _, epub = _ebooklib()
    book = _read_book(doc.path)
    by_file = {c.anchor: c for c in doc.chapters}
    for item in _documents(book):
        chapter = by_file.get(item.file_name)
        if chapter is None:
            continue
        root = _parse(item.get_content())
        blocks = _block_elements(root)
        if len(blocks) != len(chapter.paragraphs):  # the same book read twice: cannot happen unless it changed
            raise InputError(f"{doc.path}: {item.file_name} changed while it was being translated; run again")
        for el, p in zip(blocks, chapter.paragraphs, strict=True):
            if not p.translatable:
                continue
            r = results.get(p.id) or Rendering(None, "no result")
            if r.translation is None:
                _mark(el, "batchrun-untranslated")
                el.text = _failed(r.failure or "unknown") + " " + (el.text or "")
            elif bilingual:
                twin = copy.deepcopy(el)
                twin.tail = None
                _fill(twin, r.translation)
                _mark(twin, "batchrun-translation")
                el.addnext(twin)
            else:
                _fill(el, r.translation)
        if language:
            root.set("lang", language)
            root.set("{http://www.w3.org/XML/1998/namespace}lang", language)
        item.set_content(etree.tostring(root, encoding="utf-8", xml_declaration=True))
    if language:
        book.language = language
        book.set_unique_metadata("DC", "language", language)
    _write(epub, book, out)


def _name_toc(entries: Any, counter: list[int]) -> None:
    """ebooklib reads table-of-contents links without ids but cannot write them back so."""
    for entry in entries or ():
        if isinstance(entry, tuple | list):
            _name_toc(entry, counter)
        elif hasattr(entry, "uid") and not entry.uid:
            counter[0] += 1
            entry.uid = f"batchrun-nav-{counter[0]}"


def _write(epub: Any, book: Any, out: Path) -> None:
    _name_toc(book.toc, [0])

    def write(partial: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            epub.write_epub(str(partial), book, {})

    write_atomically(out, write)


def _paragraph_html(p: Paragraph, text: str, cls: str = "") -> str:
    attr = f' class="{cls}"' if cls else ""
    body = html.escape(text).replace("\n", "<br/>")
    if p.kind == "heading":
        tag = "h1" if p.index == 0 else "h2"
        return f"<{tag}{attr}>{body}</{tag}>"
    return f"<p{attr}>{body}</p>"


def build_epub(
    doc: Document, results: Mapping[str, Rendering], out: Path, *, bilingual: bool, language: str | None
) -> None:
    """A new EPUB, one content file per chapter, from a txt or Markdown document and its translations."""
    _, epub = _ebooklib()
    book = epub.EpubBook()
    digest = hashlib.sha256(f"{doc.path.name}:{doc.title}:{language}".encode()).hexdigest()[:16]
    book.set_identifier(f"batchrun-{digest}")
    book.set_title(doc.title)
    book.set_language(language or "und")
    items = []
    for chapter in doc.chapters:
        parts = []
        title = chapter.title
        for p in chapter.paragraphs:
            r = results.get(p.id) or Rendering(None, "no result")
            if not p.translatable:
                parts.append(f"<p>{html.escape(p.text)}</p>")
            elif r.translation is None:
                parts.append(_paragraph_html(p, f"{_failed(r.failure or 'unknown')} {p.text}", "batchrun-untranslated"))
            else:
                if bilingual:
                    parts.append(_paragraph_html(p, p.text))
                parts.append(_paragraph_html(p, r.translation, "batchrun-translation" if bilingual else ""))
                if p.kind == "heading" and title == chapter.title and p.index == 0:
                    title = " ".join(r.translation.split())
        item = epub.EpubHtml(
            title=title, file_name=f"chapter_{chapter.index:03d}.xhtml", lang=language or "und", uid=f"c{chapter.index}"
        )
        item.content = "<html><body>" + "\n".join(parts) + "</body></html>"
        book.add_item(item)
        items.append(item)
    book.toc = items
    book.add_item(epub.EpubNcx())
    book.add_item(epub.EpubNav())
    book.spine = items  # the nav document is found through the manifest; in the spine it would read as a chapter
    _write(epub, book, out)


def epub_chapters(path: Path) -> list[tuple[str, list[str]]]:
    """(title, paragraph texts) of each chapter of an EPUB: how tests and users check a written book."""
    doc = read_epub(path)
    return [(c.title, [p.text for p in c.paragraphs]) for c in doc.chapters]
