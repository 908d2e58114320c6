"""Build a bigger, varied English corpus for pretraining evidence (issue 29, item 1).

The embedded corpus (State of the Union speeches) is 2.4M tokens of one register. This script
assembles ~26.5M words in several registers from freely licensed text that Debian packages ship:

    python bench/build_corpus.py                      # -> ~/.cache/electra-kit-corpus (about 6 minutes)
    electra-kit run gin/electra_cpu.gin --gin "build_data.corpus = '~/.cache/electra-kit-corpus'"

It is evidence tooling, not a runtime dependency of the kit. Each package is fetched with
``apt-get download`` (kept in ``--work``/debs and reused on the next run unless ``--refresh``),
unpacked with ``dpkg-deb -x`` into a temporary folder (nothing is installed), its text extracted
and cleaned (markup, format codes, headword syntax, fortune separators, code blocks), each
paragraph reflowed to one line, paragraphs of fewer than 3 words or mostly non-letters dropped,
and every paragraph kept once across the whole corpus (exact duplicates after whitespace
normalisation; the first in source order wins).

Output (the layout ``electra_kit/data/corpus.py`` reads: every ``*.txt`` is one document, blank
lines separate paragraphs): ``OUT/<source>/<nnnnn>-<name>.txt``, one file per natural document
(a book, a manual page, a help page, a chunk of 1000 dictionary entries, a fortune file), and
``OUT/MANIFEST.json``: per source its package, version, licence (our reading of the copyright
file, plus the file's own ``License:`` fields), the SHA-256 of the downloaded .deb, register,
documents, paragraphs, words and bytes. The same package versions give the same bytes: files are
read in sorted order and nothing time-dependent is written. OUT is replaced as a whole (built in a
temporary sibling, then swapped in); a folder this script did not make is never replaced.

The source list and the texts rejected (and why) are in bench/README.md ("A bigger corpus").
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import html
import json
import re
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from electra_kit.rundir.atomic import staged_dir

MANIFEST_FORMAT = "electra-kit-corpus/1"
DICT_ENTRIES_PER_DOC = 1000


class BuildError(Exception):
    """One line naming the culprit; the script exits 2."""


# ---------------------------------------------------------------- paragraphs, shared by every source

def paragraphs(text: str) -> list[str]:
    """Blank-line separated paragraphs, each reflowed to one line (runs of whitespace -> one space)."""
    return [" ".join(p.split()) for p in re.split(r"\n\s*\n", text) if p.strip()]


def keep_paragraph(p: str) -> bool:
    """At least 3 words, and letters make up at least half of the non-space characters."""
    chars = p.replace(" ", "")
    return len(p.split()) >= 3 and sum(c.isalpha() for c in chars) >= 0.5 * len(chars)


# ---------------------------------------------------------------- dictionaries (dictd .index + .dict.dz)

_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def dictd_number(s: str) -> int:
    """dictd's base-64 numbers (most significant digit first)."""
    n = 0
    for c in s:
        n = n * 64 + _B64.index(c)
    return n


def dictd_entries(index: Path, data: Path) -> Iterator[str]:
    """Each entry once (several headwords may point at one), in file order; the 00-database-* info skipped."""
    spans = set()
    for line in index.read_text(encoding="utf-8", errors="replace").splitlines():
        head, off, size = line.split("\t")[:3]
        if not head.startswith("00database") and not head.startswith("00-database"):
            spans.add((dictd_number(off), dictd_number(size)))
    raw = gzip.decompress(data.read_bytes())  # dictzip is gzip with an index in the header
    for off, size in sorted(spans):
        yield raw[off:off + size].decode("utf-8", errors="replace")


_GCIDE_SOURCE_TAG = re.compile(r"\[(?:[^\]\n]*Webster[^\]\n]*|WordNet[^\]\n]*|PJC|RH|Century Dict\.|MW\d*|DOE|NRCD|Chambers[^\]\n]*)\]")
_GCIDE_ACCENT = re.compile(r"\[[`'\"^~=]?([a-zA-Z])(?:acute|grave|uml|circ|tilde|macr|mac|cced|cedil|ring|breve|dot|[`'\"^~=])?\]")
_GCIDE_LIGATURE = re.compile(r"\[(ae|oe|AE|OE)\]")


def clean_gcide(entry: str) -> str:
    """GCIDE (Webster 1913): pronunciation ``\\Vir*tu"\\``, source tags ``[1913 Webster]``, cross-reference
    braces ``{Virtue}`` and accent codes ``virt[`u]`` / ``p[imac]ka`` go; the definitions stay."""
    text = re.sub(r"\s*\\[^\\]{0,200}?\\", "", entry)  # "Virtu \\Vir*tu"\\, n." -> "Virtu, n." (may wrap a line)
    text = re.sub(r"\s*\(\?[^)]*\)", "", text)
    text = _GCIDE_SOURCE_TAG.sub("", text)
    text = _GCIDE_ACCENT.sub(r"\1", text)
    text = _GCIDE_LIGATURE.sub(r"\1", text)
    return text.replace("{", "").replace("}", "")


def clean_wordnet(entry: str) -> str:
    """WordNet: ``head\\n    n 1: gloss [syn: {a}, {b}]`` -> one paragraph per sense, ``head (n): gloss``."""
    head, _, body = entry.partition("\n")
    body = re.sub(r"\[(?:syn|ant|also|see also):[^\]]*\]", "", body, flags=re.S)
    senses, pos = [], ""
    for m in re.finditer(r"(?:^|\s)(?:(n|v|adj|adv)\s+)?(\d+):\s+(.*?)(?=\s+(?:(?:n|v|adj|adv)\s+)?\d+:\s|\Z)", body, re.S):
        pos = m.group(1) or pos
        senses.append(f"{head.strip()} ({pos}): {' '.join(m.group(3).split())}")
    return "\n\n".join(senses).replace("{", "").replace("}", "")


def clean_glossary(entry: str) -> str:
    """FOLDOC, the Jargon File, the Devil's Dictionary: headword lines up to the first blank line (with
    their pronunciation) become ``headword:``; a leading ``<category>`` and cross-reference braces go."""
    head, sep, body = entry.strip("\n").partition("\n\n")
    if not sep:  # one block: the headword opens the text (the Devil's Dictionary)
        return entry.replace("{", "").replace("}", "")
    body = re.sub(r"^\s*<[^<>\n]*>\s*", "", body)
    return f"{head.splitlines()[0].strip()}: {body}".replace("{", "").replace("}", "")


def read_dictd(name: str, clean: Callable[[str], str]):
    def read(root: Path) -> Iterator[tuple[str, str]]:
        base = root / "usr/share/dictd" / name
        entries = [clean(e) for e in dictd_entries(base.with_suffix(".index"), base.with_suffix(".dict.dz"))]
        for i in range(0, len(entries), DICT_ENTRIES_PER_DOC):
            yield f"{name}-{i // DICT_ENTRIES_PER_DOC:04d}", "\n\n".join(entries[i:i + DICT_ENTRIES_PER_DOC])
    return read


# ---------------------------------------------------------------- fortunes

FORTUNE_FILES_SKIPPED = {"ascii-art"}  # pictures, not text


def clean_fortunes(text: str) -> str:
    """A strfile database: cookies separated by ``%`` lines -> one paragraph per cookie."""
    cookies = re.split(r"^%\s*$", text, flags=re.M)
    return "\n\n".join(" ".join(c.split()) for c in cookies if c.strip())


def read_fortunes(root: Path) -> Iterator[tuple[str, str]]:
    folder = root / "usr/share/games/fortunes"
    for path in sorted(folder.iterdir()):
        if path.suffix == "" and path.with_suffix(".dat").exists() and path.name not in FORTUNE_FILES_SKIPPED:
            yield path.name, clean_fortunes(path.read_text(encoding="utf-8", errors="replace"))


# ---------------------------------------------------------------- SWORD modules (zText / zCom)

def strip_osis(text: str) -> str:
    """OSIS/ThML markup: notes (translators' and cross-reference notes) removed with their content, other
    tags dropped around their text, entities decoded."""
    text = re.sub(r"<note\b[^>]*/>|<note\b.*?</note>", " ", text, flags=re.S)
    text = re.sub(r"</?(?:title|div|p|lb|br|l|lg|chapter)\b[^>]*>", "\n\n", text)
    return html.unescape(re.sub(r"<[^>]*>", "", text))


def _sword_verse_index(raw: bytes, blocks: bytes) -> list[tuple[int, int, int]]:
    """The ``.?zv`` entries (block, start, size): 10 bytes each (zText, zCom) or 12 (the *4 drivers, whose
    ``ModDrv`` a module's .conf does not always tell truly): the width whose every entry fits the blocks."""
    n_blocks = len(blocks) // 12
    sizes = [struct.unpack_from("<III", blocks, 12 * b)[2] for b in range(n_blocks)]
    for fmt in ("<III", "<IIH"):
        if len(raw) % struct.calcsize(fmt) == 0:
            entries = list(struct.iter_unpack(fmt, raw))
            if all(not n or (b < n_blocks and s + n <= sizes[b]) for b, s, n in entries):
                return entries
    raise BuildError("a SWORD verse index matches neither the 10- nor the 12-byte entry layout")


def sword_blocks(stem: Path) -> Iterator[tuple[int, list[str]]]:
    """The entries of one testament (``ot``/``nt``), grouped by compressed block: ``.?zs`` lists the
    blocks (offset, compressed size, size), ``.?zv`` the entries; an entry several verses share is read once."""
    letter = next(p.name[-3] for p in stem.parent.glob(stem.name + ".?zs"))  # b, c or v: the block type
    blocks_raw = (stem.parent / f"{stem.name}.{letter}zs").read_bytes()
    data = (stem.parent / f"{stem.name}.{letter}zz").read_bytes()
    entries: dict[int, set[tuple[int, int]]] = {}
    for block, start, size in _sword_verse_index((stem.parent / f"{stem.name}.{letter}zv").read_bytes(), blocks_raw):
        if size:
            entries.setdefault(block, set()).add((start, size))
    for block in sorted(entries):
        off, csize, _ = struct.unpack_from("<III", blocks_raw, 12 * block)
        raw = zlib.decompress(data[off:off + csize])
        yield block, [raw[s:s + n].decode("utf-8", errors="replace") for s, n in sorted(entries[block])]


def read_sword(root: Path) -> Iterator[tuple[str, str]]:
    for conf in sorted((root / "usr/share/sword/mods.d").glob("*.conf")):
        settings = dict(line.split("=", 1) for line in conf.read_text(errors="replace").splitlines() if "=" in line)
        module = root / "usr/share/sword" / settings["DataPath"].strip().strip("./").rstrip("/")
        for testament in ("ot", "nt"):
            if not any(module.glob(testament + ".?zs")):
                continue
            for block, texts in sword_blocks(module / testament):
                yield f"{conf.stem}-{testament}-{block:04d}", "\n\n".join(strip_osis(t) for t in texts)


# ---------------------------------------------------------------- Jane Austen (an R lazy-load database)

def read_austen(root: Path) -> Iterator[tuple[str, str]]:
    try:
        import warnings

        import rdata
    except ImportError:
        raise BuildError("source 'austen' needs the rdata package: pip install rdata (or --skip austen)") from None
    folder = next(root.glob("usr/lib/R/site-library/janeaustenr/data"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Unknown file type: assumed RDS": each item is a bare serialization
        index = rdata.conversion.convert(rdata.parser.parse_data(gzip.decompress((folder / "Rdata.rdx").read_bytes())))
        db = (folder / "Rdata.rdb").read_bytes()
        for name in sorted(index["variables"], key=lambda n: int(index["variables"][n][0])):
            off, size = (int(x) for x in index["variables"][name])
            lines = rdata.conversion.convert(rdata.parser.parse_data(zlib.decompress(db[off + 4:off + size])))
            yield str(name), "\n".join(str(x) for x in lines)


# ---------------------------------------------------------------- reStructuredText (kernel, Python docs)

_RST_DROP_BLOCK = {"code-block", "code", "sourcecode", "literalinclude", "toctree", "kernel-doc", "highlight",
                   "index", "tabularcolumns", "doctest", "testcode", "testsetup", "testoutput", "productionlist",
                   "raw", "csv-table", "list-table", "image", "figure", "include", "only", "c:macro",
                   "flat-table", "kernel-feat", "kernel-abi", "kernel-include", "cssclass", "graphviz", "math"}


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _skip_indented(lines: list[str], i: int, base: int) -> int:
    """The index after the block of lines indented deeper than ``base`` (blank lines inside it included)."""
    while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > base):
        i += 1
    return i


def _rst_inline(line: str) -> str:
    line = re.sub(r":[\w:.+-]+:`~?([^`<]*?)\s*(?:<[^`>]*>)?`", r"\1", line)  # :role:`~title <target>` -> title
    line = re.sub(r"``([^`]+)``", r"\1", line)
    line = re.sub(r"`([^`<]*?)\s*<[^`>]*>`__?", r"\1", line)  # `text <url>`_
    line = re.sub(r"`([^`]+)`_{0,2}", r"\1", line)
    line = re.sub(r"\*\*([^*]+)\*\*|\*([^*\s][^*]*)\*", lambda m: m.group(1) or m.group(2), line)
    return line


def clean_rst(text: str) -> str:
    """reST -> prose: heading adornments, table borders, comments, non-prose directives and literal
    blocks (after ``::``) go; other directives keep their content; inline roles and markup are unwrapped."""
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        line, i = lines[i], i + 1
        s = line.strip()
        if re.fullmatch(r"([=\-~^\"'`#*+:._])\1{2,}|[=\- ]{3,}|\+[-=+]+\+", s):
            out.append("")
            continue
        m = re.match(r"\.\.\s+(?:([\w:.-]+)::)?", s)
        if s.startswith(".. ") or s == "..":
            name = m.group(1) if m else None
            if name is None or name in _RST_DROP_BLOCK or s.startswith(".. _") or s.startswith(".. |"):
                i = _skip_indented(lines, i, _indent(line))
            out.append("")
            continue
        if s.endswith("::"):
            out.append(line.rstrip()[:-2].rstrip() + (":" if s != "::" else ""))
            i = _skip_indented(lines, i, _indent(line))
            out.append("")
            continue
        if s.startswith("|") and s.endswith("|") and len(s) > 1:
            line = s.strip("|")
        out.append(line)
    return _rst_inline("\n".join(out))  # after the lines are joined: a role may wrap a line


def read_files(pattern: str, clean: Callable[[str], str], base: str = "", exclude: str = ""):
    """One document per file matching ``pattern`` under the package root (``.gz`` files decompressed),
    except those whose path below ``base`` matches the regex ``exclude``."""
    def read(root: Path) -> Iterator[tuple[str, str]]:
        for path in sorted(root.glob(pattern)):
            if not path.is_file() or (exclude and re.search(exclude, str(path.relative_to(root / base)))):
                continue
            raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
            name = str(path.relative_to(root / base if base else root))
            yield name, clean(raw.decode("utf-8", errors="replace"))
    return read


# ---------------------------------------------------------------- POD (Perl)

def _pod_code(m: re.Match) -> str:
    code, body = m.group(1), m.group(2)
    if code in "XZ":
        return ""
    if code == "E":
        return {"lt": "<", "gt": ">", "verbar": "|", "sol": "/"}.get(body, html.unescape(f"&{body};"))
    if code == "L":
        body = body.split("|", 1)[0] if "|" in body else body.replace("/", " ").replace('"', "")
    return body


def clean_pod(text: str) -> str:
    """POD -> prose: command paragraphs keep their text (``=head1 NAME`` -> ``NAME``), ``=begin``..``=end``
    and ``=for`` blocks and verbatim (indented, i.e. code) paragraphs go, formatting codes are unwrapped."""
    out, skipping = [], False
    for para in re.split(r"\n\s*\n", text):
        if para.startswith("=begin"):
            skipping = True
        elif para.startswith("=end"):
            skipping = False
        elif skipping or para.startswith(("=for", "=encoding", "=cut", "=pod", "=over", "=back")) or para[:1] in " \t":
            continue
        else:
            out.append(re.sub(r"^=(?:head\d|item)\s*", "", para))
    body = "\n\n".join(out)
    body = re.sub(r"([A-Z])<{2,}\s+(.*?)\s+>{2,}", _pod_code, body, flags=re.S)
    for _ in range(5):  # innermost codes first: B<C<x>> -> B<x> -> x
        body = re.sub(r"([BCEFILSXZ])<([^<>]*)>", _pod_code, body)
    return body


# ---------------------------------------------------------------- HTML

_HTML_BLOCK = {"p", "div", "h1", "h2", "h3", "h4", "h5", "h6", "li", "dt", "dd", "tr", "td", "th", "table",
               "section", "blockquote", "ul", "ol", "dl", "br", "hr", "title", "article", "caption"}
_HTML_SKIP = {"script", "style", "head", "nav", "header", "footer", "aside", "pre", "noscript", "svg", "button"}
_HTML_SKIP_CLASSES = {"navheader", "navfooter", "headerlink", "sphinxsidebar", "related", "footer", "toc",
                      "breadcrumb", "copyright"}
_HTML_VOID = {"br", "hr", "img", "input", "meta", "link", "area", "base", "col", "embed", "source", "wbr"}


class _TextExtractor(HTMLParser):
    """Text outside the skipped elements; a skipped element ends at its matching end tag (same-name
    elements inside it counted), so the unclosed ``<p>`` and ``<li>`` of real pages cost nothing."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip_tag, self.skip_depth = "", 0

    def handle_starttag(self, tag, attrs):
        if tag in _HTML_BLOCK:
            self.parts.append("\n\n")
        if tag in _HTML_VOID:
            return
        if self.skip_depth:
            self.skip_depth += tag == self.skip_tag
        elif tag in _HTML_SKIP or set((dict(attrs).get("class") or "").split()) & _HTML_SKIP_CLASSES:
            self.skip_tag, self.skip_depth = tag, 1

    def handle_endtag(self, tag):
        if tag in _HTML_BLOCK:
            self.parts.append("\n\n")
        if self.skip_depth and tag == self.skip_tag:
            self.skip_depth -= 1

    def handle_data(self, data):
        if not self.skip_depth:
            self.parts.append(data)


def html_to_text(page: str) -> str:
    """Visible prose of an HTML page: head, scripts, navigation, headers/footers and ``<pre>`` (code) go;
    block elements become paragraph breaks."""
    parser = _TextExtractor()
    parser.feed(page)
    parser.close()
    return "".join(parser.parts)


# ---------------------------------------------------------------- Vim help

def clean_vimhelp(text: str) -> str:
    """Vim help: ``*tags*``, ``|links|`` bars, rules, the modeline and example blocks (``>`` .. ``<``) go."""
    out, in_example = [], False
    for line in text.splitlines():
        if in_example:
            if line.strip() and not line[:1].isspace():
                in_example = False
                line = line[1:] if line.startswith("<") else line
            else:
                continue
        if re.fullmatch(r"\s*[=\-~*]{5,}\s*", line) or re.match(r"\s*vim?:.*(?:tw|ft|ts)=", line):
            out.append("")
            continue
        if line.rstrip().endswith(" >") or line.rstrip() == ">":
            in_example = True
            line = line.rstrip()[:-1]
        line = re.sub(r"\*[^*\s]+\*", "", line)
        out.append(re.sub(r"\|([^|\s]+)\|", r"\1", line))
    return "\n".join(out)


# ---------------------------------------------------------------- the sources

@dataclass(frozen=True)
class Source:
    name: str
    package: str
    register: str
    licence: str  # our reading of the package's copyright file
    read: Callable[[Path], Iterable[tuple[str, str]]]  # package root -> (document name, text)


SOURCES = [
    Source("kjv", "sword-text-kjv", "scripture", "public domain (KJV 1611/1769 text; module GPL-2+ packaging)",
           read_sword),
    Source("web", "sword-text-web", "scripture", "public domain (World English Bible)", read_sword),
    Source("tdavid", "sword-comm-tdavid", "religious commentary (19th c. prose)",
           "public domain (Spurgeon, Treasury of David, 1869-1885)", read_sword),
    Source("mhcc", "sword-comm-mhcc", "religious commentary (18th c. prose)",
           "public domain (Matthew Henry's Concise Commentary)", read_sword),
    Source("austen", "r-cran-janeaustenr", "literature (novels)",
           "public domain texts (Project Gutenberg); R package MIT", read_austen),
    Source("gcide", "dict-gcide", "dictionary (Webster 1913 + additions)", "GPL-2+ (GCIDE)",
           read_dictd("gcide", clean_gcide)),
    Source("wordnet", "dict-wn", "dictionary (glosses)", "WordNet 3.0 licence (BSD-like)",
           read_dictd("wn", clean_wordnet)),
    Source("devil", "dict-devil", "humour (satirical dictionary)", "public domain (Bierce, 1911)",
           read_dictd("devil", clean_glossary)),
    Source("foldoc", "dict-foldoc", "technical glossary", "GFDL-1.1+ (no invariant sections)",
           read_dictd("foldoc", clean_glossary)),
    Source("jargon", "dict-jargon", "technical slang glossary", "public domain (Jargon File 4.4.7)",
           read_dictd("jargon", clean_glossary)),
    Source("fortunes", "fortunes", "humour, quotations", "BSD-3-clause (fortune-mod)", read_fortunes),
    Source("fortunes-min", "fortunes-min", "humour, quotations", "BSD-3-clause (fortune-mod)", read_fortunes),
    Source("anarchism", "fortune-anarchism", "quotations (politics)", "GPL-3+ (quotations public domain)",
           read_fortunes),
    Source("linux-doc", "linux-doc-6.1", "technical docs (kernel)", "GPL-2",
           read_files("usr/share/doc/linux-doc-6.1/Documentation/**/*.gz", clean_rst,
                      "usr/share/doc/linux-doc-6.1/Documentation", exclude=r"(?<!\.rst\.gz)(?<!\.txt\.gz)$")),
    Source("python-doc", "python3.11-doc", "technical docs (Python)", "PSF-2.0",
           read_files("usr/share/doc/python3.11/html/_sources/**/*.rst.txt", clean_rst,
                      "usr/share/doc/python3.11/html/_sources")),
    Source("perl-doc", "perl-doc", "technical docs (Perl)", "GPL-1+ or Artistic",
           read_files("usr/share/perl/*/pod/*.pod", clean_pod, "usr/share/perl")),
    Source("postgresql-doc", "postgresql-doc-15", "technical docs (PostgreSQL)", "PostgreSQL licence (BSD-like)",
           read_files("usr/share/doc/postgresql-doc-15/html/*.html", html_to_text,
                      "usr/share/doc/postgresql-doc-15/html")),
    Source("sqlite-doc", "sqlite3-doc", "technical docs (SQLite)", "public domain",
           read_files("usr/share/doc/sqlite3/**/*.html", html_to_text, "usr/share/doc/sqlite3")),
    Source("libreoffice-help", "libreoffice-help-en-us", "user manual (office suite)", "MPL-2.0",
           read_files("usr/share/libreoffice/help/en-US/text/**/*.html", html_to_text,
                      "usr/share/libreoffice/help/en-US/text")),
    Source("vim-doc", "vim-runtime", "user manual (editor)", "OPL-1+ (runtime/doc; Vim licence elsewhere)",
           read_files("usr/share/vim/vim*/doc/*.txt", clean_vimhelp, "usr/share/vim")),
    Source("erlang-doc", "erlang-doc", "technical docs (Erlang/OTP)", "Apache-2.0",
           read_files("usr/share/doc/erlang-doc/**/*.html", html_to_text, "usr/share/doc/erlang-doc")),
    Source("apache-doc", "apache2-doc", "technical docs (web server)", "Apache-2.0",
           read_files("usr/share/doc/apache2-doc/manual/en/**/*.html", html_to_text,
                      "usr/share/doc/apache2-doc/manual/en")),
    Source("nodejs-doc", "nodejs-doc", "technical docs (Node.js)", "Expat (MIT)",
           read_files("usr/share/doc/nodejs/api/*.html", html_to_text, "usr/share/doc/nodejs/api",
                      exclude=r"^all\.html$")),  # all.html repeats every other page
    Source("django-doc", "python-django-doc", "technical docs (Django)", "BSD-3-clause",
           read_files("usr/share/doc/python-django-doc/html/**/*.html", html_to_text,
                      "usr/share/doc/python-django-doc/html", exclude=r"^_")),
    Source("scipy-doc", "python-scipy-doc", "technical docs (SciPy)", "BSD-3-clause",
           read_files("usr/share/doc/python-scipy-doc/html/**/*.html", html_to_text,
                      "usr/share/doc/python-scipy-doc/html", exclude=r"^_")),
    Source("git-doc", "git-doc", "technical docs (git)", "GPL-2",
           read_files("usr/share/doc/git-doc/**/*.html", html_to_text, "usr/share/doc/git-doc")),
    Source("debian-reference", "debian-reference-en", "technical docs (system administration)", "GPL-2+",
           read_files("usr/share/debian-reference/*.en.html", html_to_text, "usr/share/debian-reference")),
    Source("debian-handbook", "debian-handbook", "technical book (system administration)",
           "GPL-2+ or CC-BY-SA-3.0", read_files("usr/share/doc/debian-handbook/html/en-US/*.html", html_to_text,
                                                "usr/share/doc/debian-handbook/html/en-US")),
]


# ---------------------------------------------------------------- download, unpack, write

def run(cmd: list[str], cwd: Path | None = None) -> str:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError:
        raise BuildError(f"{cmd[0]} not found: this script needs a Debian system (apt-get, dpkg-deb)") from None
    if proc.returncode != 0:
        raise BuildError(f"{' '.join(cmd)} failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
    return proc.stdout


def fetch_deb(package: str, debs: Path, refresh: bool) -> Path:
    """The package's .deb in ``debs``: the one already there, else ``apt-get download``."""
    found = sorted(debs.glob(f"{package}_*.deb"))
    if refresh or not found:
        run(["apt-get", "download", package], cwd=debs)
        found = sorted(debs.glob(f"{package}_*.deb"), key=lambda p: p.stat().st_mtime_ns)
        if not found:
            raise BuildError(f"apt-get download {package} left no .deb in {debs}")
        found = found[-1:]
    if len(found) > 1:
        raise BuildError(f"several .deb files for {package} in {debs} ({', '.join(p.name for p in found)}): keep one")
    return found[0]


def copyright_licences(root: Path, package: str) -> list[str]:
    """The ``License:`` short names of a machine-readable (DEP-5) copyright file; [] for free-form ones."""
    path = root / "usr/share/doc" / package / "copyright"
    text = path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
    if not text.startswith("Format:"):
        return []
    return sorted({m.strip() for m in re.findall(r"^License:[ \t]*(\S[^\n]*)", text, flags=re.M)})


def safe_name(name: str) -> str:
    name = re.sub(r"\.(rst\.txt|rst\.gz|rst|html|pod|txt)$", "", name)
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_.")[:80] or "doc"


def build_source(src: Source, deb: Path, out: Path, seen: set[bytes]) -> dict:
    version = run(["dpkg-deb", "-f", str(deb), "Version"]).strip()
    record = {"name": src.name, "package": src.package, "version": version, "register": src.register,
              "licence": src.licence, "deb": deb.name, "deb_sha256": hashlib.sha256(deb.read_bytes()).hexdigest(),
              "documents": 0, "paragraphs": 0, "duplicates_dropped": 0, "words": 0, "bytes": 0}
    with tempfile.TemporaryDirectory(prefix=f"corpus-{src.package}-") as tmp:
        root = Path(tmp)
        run(["dpkg-deb", "-x", str(deb), tmp])
        record["copyright_licences"] = copyright_licences(root, src.package)
        folder = out / src.name
        folder.mkdir()
        for doc_name, text in src.read(root):
            kept = []
            for p in paragraphs(text):
                if not keep_paragraph(p):
                    continue
                key = hashlib.blake2b(p.encode(), digest_size=12).digest()
                if key in seen:
                    record["duplicates_dropped"] += 1
                    continue
                seen.add(key)
                kept.append(p)
            if not kept:
                continue
            body = ("\n\n".join(kept) + "\n").encode("utf-8")
            (folder / f"{record['documents']:05d}-{safe_name(doc_name)}.txt").write_bytes(body)
            record["documents"] += 1
            record["paragraphs"] += len(kept)
            record["words"] += sum(len(p.split()) for p in kept)
            record["bytes"] += len(body)
    if not record["documents"]:
        raise BuildError(f"source {src.name!r} ({deb.name}) gave no text: has the package's layout changed?")
    return record


def build(out: Path, work: Path, sources: list[Source], refresh: bool) -> dict:
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "MANIFEST.json").is_file())):
        raise BuildError(f"{out} exists and is not a corpus this script built (no MANIFEST.json): choose another --out")
    debs = work / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    seen: set[bytes] = set()
    records = []
    with staged_dir(out) as tmp:
        for src in sources:
            t0 = time.perf_counter()
            records.append(build_source(src, fetch_deb(src.package, debs, refresh), tmp, seen))
            r = records[-1]
            print(f"{src.name:18s} {r['words']:>11,d} words {r['bytes']:>12,d} bytes "
                  f"{r['documents']:>6d} docs  {time.perf_counter() - t0:6.1f} s", flush=True)
        manifest = {"format": MANIFEST_FORMAT, "words": sum(r["words"] for r in records),
                    "bytes": sum(r["bytes"] for r in records), "documents": sum(r["documents"] for r in records),
                    "sources": records}
        (tmp / "MANIFEST.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="~/.cache/electra-kit-corpus", help="the corpus folder (replaced as a whole)")
    ap.add_argument("--work", default="~/.cache/electra-kit-corpus-work", help="downloaded .deb files are kept here")
    ap.add_argument("--only", default="", help="comma-separated source names (default: all)")
    ap.add_argument("--skip", default="", help="comma-separated source names to leave out")
    ap.add_argument("--refresh", action="store_true", help="download every package again (a newer version may come)")
    ap.add_argument("--list", action="store_true", help="list the sources and exit")
    args = ap.parse_args(argv)
    if args.list:
        for s in SOURCES:
            print(f"{s.name:18s} {s.package:24s} {s.register:40s} {s.licence}")
        return 0
    names = {s.name for s in SOURCES}
    only, skip = ({n for n in x.split(",") if n} for x in (args.only, args.skip))
    try:
        if unknown := sorted((only | skip) - names):
            raise BuildError(f"unknown source {', '.join(unknown)}; available: {', '.join(sorted(names))}")
        sources = [s for s in SOURCES if (not only or s.name in only) and s.name not in skip]
        t0 = time.perf_counter()
        manifest = build(Path(args.out).expanduser(), Path(args.work).expanduser(), sources, args.refresh)
    except BuildError as e:
        print(f"build_corpus: error: {e}", file=sys.stderr)
        return 2
    print(f"{'total':18s} {manifest['words']:>11,d} words {manifest['bytes']:>12,d} bytes "
          f"{manifest['documents']:>6d} docs  {time.perf_counter() - t0:6.1f} s -> {Path(args.out).expanduser()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
