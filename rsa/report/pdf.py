"""PDF rendering of a report document with ReportLab (platypus), A4 landscape.

ReportLab is pure PyPI (wheels for every platform; no system libraries such as cairo/pango that
HTML-to-PDF converters need), actively maintained since 2000, and lays out flowing tables with
repeated header rows, which matplotlib's PdfPages cannot. Text uses the DejaVu fonts that ship
with matplotlib (full Unicode: ±, °, ≤, −), embedded as subsets with a ToUnicode map, so the text
of the PDF can be extracted and searched.

References
----------
.. [1] ReportLab PDF Library User Guide, version 4 (platypus, TableStyle, TTFont).
"""

from __future__ import annotations

import io
from pathlib import Path
from xml.sax.saxutils import escape

from rsa.report.doc import Bullets, Document, Figure, Heading, Para, Table

_FONTS = {"Sans": "DejaVuSans.ttf", "Sans-Bold": "DejaVuSans-Bold.ttf",
          "Mono": "DejaVuSansMono.ttf"}
_COLORS = {"pass": "#1e7b34", "documented": "#1e7b34", "FAIL": "#b03a2e", "missing": "#b03a2e",
           "partial": "#9a6700"}


def _register_fonts() -> None:
    import matplotlib
    from reportlab.lib.fonts import addMapping
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.ttfonts import TTFont

    if "Sans" in pdfmetrics.getRegisteredFontNames():
        return
    root = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    for name, file in _FONTS.items():
        pdfmetrics.registerFont(TTFont(name, str(root / file)))
    addMapping("Sans", 0, 0, "Sans")
    addMapping("Sans", 1, 0, "Sans-Bold")
    addMapping("Sans", 0, 1, "Sans")
    addMapping("Sans", 1, 1, "Sans-Bold")


def _styles():
    from reportlab.lib import colors
    from reportlab.lib.styles import ParagraphStyle

    base = ParagraphStyle("body", fontName="Sans", fontSize=9, leading=11.5, spaceAfter=4)
    return {
        "title": ParagraphStyle("title", parent=base, fontName="Sans-Bold", fontSize=16,
                                leading=19, spaceAfter=2),
        "subtitle": ParagraphStyle("subtitle", parent=base, textColor=colors.HexColor("#555555"),
                                   spaceAfter=8),
        "h1": ParagraphStyle("h1", parent=base, fontName="Sans-Bold", fontSize=13, leading=16,
                             spaceBefore=8, spaceAfter=5, keepWithNext=1),
        "h2": ParagraphStyle("h2", parent=base, fontName="Sans-Bold", fontSize=10.5,
                             leading=13, spaceBefore=6, spaceAfter=3, keepWithNext=1),
        "body": base,
        "note": ParagraphStyle("note", parent=base, fontSize=8,
                               textColor=colors.HexColor("#555555")),
        "warn": ParagraphStyle("warn", parent=base, textColor=colors.HexColor("#b03a2e")),
        "ok": ParagraphStyle("ok", parent=base, textColor=colors.HexColor("#1e7b34")),
        "banner": ParagraphStyle("banner", parent=base, fontName="Sans-Bold",
                                 textColor=colors.HexColor("#b03a2e"),
                                 borderColor=colors.HexColor("#b03a2e"), borderWidth=0.8,
                                 borderPadding=4, spaceBefore=4, spaceAfter=8),
        "cell": ParagraphStyle("cell", parent=base, fontSize=7, leading=8.4, spaceAfter=0),
        "cellhead": ParagraphStyle("cellhead", parent=base, fontName="Sans-Bold", fontSize=7,
                                   leading=8.4, spaceAfter=0),
        "caption": ParagraphStyle("caption", parent=base, fontSize=7.5, leading=9,
                                  textColor=colors.HexColor("#555555"), spaceBefore=2,
                                  spaceAfter=8),
    }


def _table(t: Table, st, width: float):
    from reportlab.lib import colors
    from reportlab.platypus import KeepTogether, Paragraph, TableStyle
    from reportlab.platypus import Table as RLTable

    rel = t.widths or (1.0,) * len(t.columns)
    widths = [width * w / sum(rel) for w in rel]
    data = [[Paragraph(escape(c), st["cellhead"]) for c in t.columns]]
    style = [("GRID", (0, 0), (-1, -1), 0.4, colors.HexColor("#bbbbbb")),
             ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#eef1f5")),
             ("VALIGN", (0, 0), (-1, -1), "TOP"),
             ("TOPPADDING", (0, 0), (-1, -1), 1.5), ("BOTTOMPADDING", (0, 0), (-1, -1), 1.5),
             ("LEFTPADDING", (0, 0), (-1, -1), 3), ("RIGHTPADDING", (0, 0), (-1, -1), 3)]
    for i, row in enumerate(t.rows, start=1):
        cells = []
        for j, c in enumerate(row):
            text = escape(c)
            if j in t.status_columns and c:
                col = _COLORS.get(c.split()[0])
                if col:
                    text = f'<font color="{col}"><b>{text}</b></font>'
            cells.append(Paragraph(text, st["cell"]))
        data.append(cells)
        if i % 2 == 0:
            style.append(("BACKGROUND", (0, i), (-1, i), colors.HexColor("#f7f8fa")))
    table = RLTable(data, colWidths=widths, repeatRows=1, hAlign="LEFT")
    table.setStyle(TableStyle(style))
    cap = Paragraph(escape(t.caption), st["caption"]) if t.caption else None
    if len(t.rows) <= 12 and cap is not None:
        return [KeepTogether([table, cap])]
    return [table, cap] if cap is not None else [table]


def _figure(f: Figure, st, width: float, height: float):
    from reportlab.lib.utils import ImageReader
    from reportlab.platypus import Image, KeepTogether, Paragraph

    iw, ih = ImageReader(io.BytesIO(f.png)).getSize()
    w = width * f.width
    h = w * ih / iw
    if h > height:
        w, h = w * height / h, height
    img = Image(io.BytesIO(f.png), width=w, height=h, hAlign="LEFT")
    return [KeepTogether([img, Paragraph(escape(f.caption), st["caption"])])]


def render_pdf(doc: Document) -> bytes:
    """The document as PDF bytes (A4 landscape, page numbers 'page i of n' in the footer)."""
    from reportlab.lib.pagesizes import A4, landscape
    from reportlab.lib.units import cm
    from reportlab.pdfgen.canvas import Canvas
    from reportlab.platypus import (
        KeepTogether,
        ListFlowable,
        ListItem,
        PageBreak,
        Paragraph,
        SimpleDocTemplate,
    )

    _register_fonts()
    st = _styles()
    footer = doc.footer

    class _NumberedCanvas(Canvas):
        """Two-pass page numbering: remember each page, stamp 'page i of n' at save."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._pages: list[dict] = []

        def showPage(self):  # noqa: N802 - ReportLab API
            self._pages.append(dict(self.__dict__))
            self._startPage()

        def save(self):
            n = len(self._pages)
            for state in self._pages:
                self.__dict__.update(state)
                self.setFont("Sans", 7)
                self.setFillColorRGB(0.45, 0.45, 0.45)
                self.drawString(1.5 * cm, 0.8 * cm, footer)
                self.drawRightString(self._pagesize[0] - 1.5 * cm, 0.8 * cm,
                                     f"page {self._pageNumber} of {n}")
                super().showPage()
            super().save()

    buf = io.BytesIO()
    page = landscape(A4)
    tmpl = SimpleDocTemplate(buf, pagesize=page, leftMargin=1.5 * cm, rightMargin=1.5 * cm,
                             topMargin=1.3 * cm, bottomMargin=1.4 * cm, title=doc.title,
                             author="rsa", subject=doc.subtitle, creator="rsa report",
                             invariant=1)
    width, height = tmpl.width, tmpl.height - 2.6 * cm  # room for a heading + caption
    story = [Paragraph(escape(doc.title), st["title"]),
             Paragraph(escape(doc.subtitle), st["subtitle"])]
    pending: list = []   # headings waiting for the block they introduce (kept together)
    for b in doc.blocks:
        if isinstance(b, Heading):
            if b.new_page:
                story.extend(pending)
                story.append(PageBreak())
                pending = []
            pending.append(Paragraph(escape(b.text), st["h1" if b.level == 1 else "h2"]))
            continue
        if isinstance(b, Para):
            flow = [Paragraph(escape(b.text), st.get(b.style, st["body"]))]
        elif isinstance(b, Bullets):
            flow = [ListFlowable([ListItem(Paragraph(escape(i), st["body"]), leftIndent=10)
                                  for i in b.items], bulletType="bullet", start="•",
                                 leftIndent=10, bulletFontName="Sans")]
        elif isinstance(b, Table):
            flow = _table(b, st, width)
        elif isinstance(b, Figure):
            flow = _figure(b, st, width, height)
        else:
            continue
        if pending:
            first = flow[0]._content if isinstance(flow[0], KeepTogether) else [flow[0]]
            flow = [KeepTogether([*pending, *first]), *flow[1:]]
            pending = []
        story.extend(flow)
    story.extend(pending)
    tmpl.build(story, canvasmaker=_NumberedCanvas)
    return buf.getvalue()
