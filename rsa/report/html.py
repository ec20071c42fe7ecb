"""Self-contained HTML rendering of a report document (figures as base64 PNG, inline CSS)."""

from __future__ import annotations

import base64
from html import escape

from rsa.report.doc import Bullets, Document, Figure, Heading, Para, Table

_CSS = """
body{font-family:"DejaVu Sans",Helvetica,Arial,sans-serif;font-size:13px;color:#222;
 max-width:1150px;margin:24px auto;padding:0 16px;line-height:1.4}
h1{font-size:22px;margin-bottom:2px}h2{font-size:17px;border-bottom:1px solid #bbb;
 margin-top:28px}h3{font-size:14px;margin-top:18px}.subtitle{color:#555;margin-top:0}
table{border-collapse:collapse;margin:6px 0 4px 0;font-size:12px}
th,td{border:1px solid #ccc;padding:2px 6px;text-align:right;vertical-align:top}
th{background:#eef1f5}td:first-child,th:first-child{text-align:left}
td.t,th.t{text-align:left}caption{caption-side:bottom;text-align:left;color:#555;
 font-size:11px;padding-top:3px}
.pass,.documented{color:#1e7b34;font-weight:bold}.FAIL,.missing{color:#b03a2e;font-weight:bold}
.partial{color:#9a6700;font-weight:bold}
p.note{color:#555;font-size:12px}p.warn{color:#b03a2e}p.ok{color:#1e7b34}
p.banner{background:#fdecea;border:1px solid #b03a2e;padding:6px;font-weight:bold}
figure{margin:10px 0}figure img{max-width:100%}figcaption{color:#555;font-size:11px}
footer{margin-top:30px;color:#777;font-size:11px;border-top:1px solid #ccc}
@media print{body{max-width:none;margin:0}.newpage{break-before:page}
 table,figure{break-inside:avoid}}
"""


def _text_col(table: Table, j: int) -> bool:
    """Left-align columns whose cells are not numbers."""
    for row in table.rows:
        cell = row[j].rstrip("*").replace("—", "")
        if cell:
            try:
                float(cell)
            except ValueError:
                return True
    return False


def _table(t: Table) -> str:
    left = [_text_col(t, j) for j in range(len(t.columns))]
    head = "".join(f'<th class="{"t" if left[j] else ""}">{escape(c)}</th>'
                   for j, c in enumerate(t.columns))
    body = []
    for row in t.rows:
        cells = []
        for j, c in enumerate(row):
            cls = ["t"] if left[j] else []
            if j in t.status_columns:
                cls.append(escape(c.split()[0] if c else ""))
            cells.append(f'<td class="{" ".join(cls)}">{escape(c)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    cap = f"<caption>{escape(t.caption)}</caption>" if t.caption else ""
    return (f'<table id="{escape(t.key)}">{cap}<thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>')


def render_html(doc: Document) -> str:
    """The document as one HTML page with no external references."""
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{escape(doc.title)}</title><style>{_CSS}</style></head><body>",
           f"<h1>{escape(doc.title)}</h1>", f'<p class="subtitle">{escape(doc.subtitle)}</p>']
    for b in doc.blocks:
        if isinstance(b, Heading):
            n = min(b.level + 1, 4)
            cls = ' class="newpage"' if b.new_page else ""
            out.append(f"<h{n}{cls}>{escape(b.text)}</h{n}>")
        elif isinstance(b, Para):
            out.append(f'<p class="{b.style}">{escape(b.text)}</p>')
        elif isinstance(b, Bullets):
            out.append("<ul>" + "".join(f"<li>{escape(i)}</li>" for i in b.items) + "</ul>")
        elif isinstance(b, Table):
            out.append(_table(b))
        elif isinstance(b, Figure):
            data = base64.b64encode(b.png).decode("ascii")
            out.append(f'<figure id="{escape(b.key)}"><img alt="{escape(b.caption)}" '
                       f'style="width:{b.width * 100:.0f}%" src="data:image/png;base64,{data}">'
                       f"<figcaption>{escape(b.caption)}</figcaption></figure>")
    out.append(f"<footer>{escape(doc.footer)}</footer></body></html>")
    return "\n".join(out)
