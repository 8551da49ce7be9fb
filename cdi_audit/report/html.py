"""report.html: one self-contained file (figures embedded as data URIs, no scripts, no external assets),
laid out for a phone as well as a desk. Every text is escaped: paths and captions come from the user.
"""

from __future__ import annotations

import base64
from html import escape

from cdi_audit.report.content import (
    Block,
    Bullets,
    Document,
    Facts,
    Figure,
    Paragraph,
    Section,
    Subheading,
    Table,
)
from cdi_audit.results.verdict import Verdict

STYLE = """
body { font-family: -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; line-height: 1.45;
       margin: 0 auto; max-width: 60rem; padding: 1rem; color: #1b1b1b; }
h1 { font-size: 1.5rem; margin: 0.2rem 0; }
h3 { font-size: 1rem; margin: 1rem 0 0.3rem; }
h2 { font-size: 1.2rem; border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; margin-top: 2rem; }
.subtitle { color: #555; margin-top: 0; }
.unverified { color: #b3261e; font-weight: 700; border: 2px solid #b3261e; padding: 0.4rem 0.6rem; }
.verdict { color: #fff; border-radius: 0.5rem; padding: 0.8rem 1rem; }
.verdict strong { font-size: 1.4rem; display: block; letter-spacing: 0.05em; }
dl { display: grid; grid-template-columns: minmax(8rem, 14rem) 1fr; gap: 0.25rem 1rem; }
dt { color: #555; }
dd { margin: 0; overflow-wrap: anywhere; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 0.9rem; }
th, td { text-align: left; padding: 0.2rem 0.6rem 0.2rem 0; border-bottom: 1px solid #eee; vertical-align: top; }
table.small { font-size: 0.75rem; }
.mono { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; }
figure { margin: 1rem 0; }
figure img { max-width: 100%; height: auto; }
figcaption { color: #444; font-size: 0.9rem; }
@media (max-width: 36rem) { dl { grid-template-columns: 1fr; } dt { font-weight: 600; } }
"""


def _cell(text: str, monospace: bool, tag: str = "td") -> str:
    css = ' class="mono"' if monospace else ""
    return f"<{tag}{css}>{escape(text)}</{tag}>"


def render_block(block: Block) -> str:
    if isinstance(block, Paragraph):
        return f"<p>{escape(block.text)}</p>"
    if isinstance(block, Subheading):
        return f"<h3>{escape(block.text)}</h3>"
    if isinstance(block, Facts):
        return "<dl>" + "".join(f"<dt>{escape(label)}</dt><dd>{escape(value)}</dd>"
                                for label, value in block.rows) + "</dl>"
    if isinstance(block, Bullets):
        return "<ul>" + "".join(f"<li>{escape(item)}</li>" for item in block.items) + "</ul>"
    if isinstance(block, Figure):
        data = base64.b64encode(block.png).decode("ascii")
        return (f'<figure><img src="data:image/png;base64,{data}" alt="{escape(block.name)}">'
                f"<figcaption>{escape(block.caption)}</figcaption></figure>")
    if isinstance(block, Table):
        head = "".join(_cell(name, False, "th") for name in block.header)
        body = "".join("<tr>" + "".join(_cell(value, index in block.monospace) for index, value in enumerate(row))
                       + "</tr>" for row in block.rows)
        css = ' class="small"' if block.small else ""
        return f'<div class="scroll"><table{css}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'
    raise TypeError(f"no HTML for {type(block).__name__}")


def render_section(section: Section) -> str:
    body = "\n".join(render_block(block) for block in section.blocks)
    if section.folded:
        return f"<section><details><summary><h2 style=\"display:inline\">{escape(section.title)}</h2></summary>" \
               f"\n{body}\n</details></section>"
    return f"<section><h2>{escape(section.title)}</h2>\n{body}\n</section>"


def unverified_line(document: Document) -> str:
    """The warning a --force rendering carries under the title (nothing otherwise, so that a verified
    rendering keeps its bytes)."""
    if document.unverified is None:
        return ""
    return f'<p class="unverified">{escape(document.unverified)}</p>\n'


def render_html(document: Document) -> str:
    sections = "\n".join(render_section(section) for section in document.sections)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(document.title)}: {escape(document.verdict_label)}</title>
<style>{STYLE}</style>
</head>
<body>
<h1>{escape(document.title)}</h1>
{unverified_line(document)}<p class="subtitle">{escape(document.subtitle)}</p>
<div class="verdict" style="background:{Verdict(document.verdict).colour}">
<strong>{escape(document.verdict_label)}</strong>{escape(document.headline)}
</div>
{sections}
</body>
</html>
"""
