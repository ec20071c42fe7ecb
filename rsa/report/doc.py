"""A tiny document model shared by the HTML and PDF renderers (same content in both).

A report is a list of blocks; each renderer turns every block into its format. Table cells are
plain strings already formatted to their printed precision, so both formats show identical
numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 1          # 1 = section (starts a new PDF page when `new_page`), 2 = subsection
    new_page: bool = False


@dataclass(frozen=True)
class Para:
    text: str
    style: str = "body"     # "body" | "note" | "warn" | "ok" | "banner"


@dataclass(frozen=True)
class Bullets:
    items: tuple[str, ...]


@dataclass(frozen=True)
class Table:
    """Columns and rows of formatted cells; `key` identifies the table (HTML id, tests)."""

    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    key: str = ""
    caption: str = ""
    status_columns: tuple[int, ...] = ()     # cells coloured by their text (pass/FAIL/missing)
    widths: tuple[float, ...] | None = None  # relative column widths (PDF)


@dataclass(frozen=True)
class Figure:
    png: bytes = field(repr=False)
    caption: str
    key: str = ""
    width: float = 1.0      # fraction of the text width


@dataclass(frozen=True)
class Document:
    title: str
    subtitle: str
    blocks: tuple = ()
    footer: str = ""
