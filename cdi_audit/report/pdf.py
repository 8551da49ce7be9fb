"""report.pdf: the ``Document`` laid out with fpdf2 (pure Python, no LaTeX, no system libraries).

report.json and manifest.json are attached inside the PDF, so the document carries its own data. The
creation date is the audit's, and fonts, figures and attachments are fixed by the result, so rendering
the same result twice gives the same bytes. Fonts are the DejaVu faces that matplotlib ships (Unicode,
so paths in any script print as they are).
"""

from __future__ import annotations

import io
from datetime import datetime
from pathlib import Path

from fpdf import FPDF, FontFace

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
from cdi_audit.version import __version__

GREY = (90, 90, 90)
RED = (179, 38, 30)  # the --force warning, in the evidence banner's red
TEXT = 9.5
LINE = 4.6


def _font_folder() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


class ReportPDF(FPDF):
    """A4 pages with a footer that names the audit and numbers the pages."""

    def __init__(self, footer_text: str) -> None:
        super().__init__(format="A4")
        self.footer_text = footer_text
        fonts = _font_folder()
        self.add_font("DejaVu", "", fonts / "DejaVuSans.ttf")
        self.add_font("DejaVu", "B", fonts / "DejaVuSans-Bold.ttf")
        self.add_font("DejaVu", "I", fonts / "DejaVuSans-Oblique.ttf")
        self.add_font("DejaVuMono", "", fonts / "DejaVuSansMono.ttf")
        self.set_margins(16, 16, 16)
        self.set_auto_page_break(True, margin=16)

    def footer(self) -> None:
        self.set_y(-11)
        self.set_font("DejaVu", "", 7)
        self.set_text_color(*GREY)
        self.cell(0, 4, f"{self.footer_text} · page {self.page_no()} of {{nb}}", align="C")
        self.set_text_color(0, 0, 0)


def _paragraph(pdf: ReportPDF, text: str, size: float = TEXT, style: str = "") -> None:
    pdf.set_font("DejaVu", style, size)
    pdf.multi_cell(0, LINE * size / TEXT, text, align="L", new_x="LMARGIN", new_y="NEXT")
    pdf.ln(1.5)


def _table(pdf: ReportPDF, header: tuple[str, ...] | None, rows: tuple[tuple[str, ...], ...],
           widths: tuple[float, ...], monospace: tuple[int, ...], size: float) -> None:
    pdf.set_font("DejaVu", "", size)
    mono = FontFace(family="DejaVuMono", size_pt=size * 0.92)
    label = FontFace(color=GREY)
    with pdf.table(col_widths=widths, text_align="LEFT", first_row_as_headings=header is not None,
                   headings_style=FontFace(emphasis="BOLD"), borders_layout="HORIZONTAL_LINES",
                   line_height=LINE * size / TEXT, padding=(0.6, 1.2), width=pdf.epw) as table:
        for row_index, values in enumerate(((header,) if header else ()) + rows):
            row = table.row()
            for index, value in enumerate(values):
                if header is not None and row_index == 0:
                    row.cell(value)
                elif index in monospace:
                    row.cell(value, style=mono)
                else:
                    row.cell(value, style=label if header is None and index == 0 else None)
    pdf.ln(2)


def render_block(pdf: ReportPDF, block: Block) -> None:
    if isinstance(block, Paragraph):
        _paragraph(pdf, block.text)
    elif isinstance(block, Subheading):
        pdf.ln(1)
        _paragraph(pdf, block.text, TEXT + 0.5, "B")
    elif isinstance(block, Facts):
        _table(pdf, None, block.rows, (1, 2.6), (), TEXT - 0.5)
    elif isinstance(block, Bullets):
        pdf.set_font("DejaVu", "", TEXT)
        for item in block.items:
            pdf.cell(5, LINE, "•")
            pdf.multi_cell(0, LINE, item, align="L", new_x="LMARGIN", new_y="NEXT")
            pdf.ln(0.8)
        pdf.ln(1)
    elif isinstance(block, Figure):
        pdf.image(io.BytesIO(block.png), w=_figure_width(pdf, block.png))
        pdf.set_text_color(*GREY)
        _paragraph(pdf, block.caption, TEXT - 1.5, "I")
        pdf.set_text_color(0, 0, 0)
    elif isinstance(block, Table):
        _table(pdf, block.header, block.rows, block.widths, block.monospace, 6.5 if block.small else TEXT - 0.5)
    else:
        raise TypeError(f"no PDF layout for {type(block).__name__}")


def _figure_width(pdf: ReportPDF, png: bytes) -> float:
    """The page's width, or less for a tall figure (a gallery), so that it fits in 70% of a page's height."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        width, height = image.size
    return min(pdf.epw, 0.7 * pdf.eph * width / height)


def render_section(pdf: ReportPDF, section: Section) -> None:
    if section.new_page and pdf.get_y() > pdf.t_margin + 1:
        pdf.add_page()
    pdf.set_font("DejaVu", "B", 13)
    pdf.cell(0, 8, section.title, new_x="LMARGIN", new_y="NEXT")
    pdf.ln(1)
    for block in section.blocks:
        render_block(pdf, block)
    pdf.ln(3)


def render_pdf(document: Document, created: str, attachments: dict[str, bytes]) -> bytes:
    """The report as PDF bytes; ``created`` is the audit's ISO time, ``attachments`` file name -> content."""
    when = datetime.fromisoformat(created)
    pdf = ReportPDF(f"{document.title} · {document.verdict_label} · audit of {created}")
    pdf.set_creation_date(when)
    pdf.set_title(f"{document.title}: {document.verdict_label}")
    pdf.set_author("cdi-audit")
    pdf.set_creator(f"cdi-audit {__version__}")
    pdf.set_subject(document.headline)
    for name, content in attachments.items():
        pdf.embed_file(bytes=content, basename=name, modification_date=when, mime_type="application/json",
                       desc=f"{name} of this audit")
    pdf.add_page()
    pdf.set_font("DejaVu", "B", 18)
    pdf.cell(0, 9, document.title, new_x="LMARGIN", new_y="NEXT")
    if document.unverified is not None:
        pdf.set_text_color(*RED)
        _paragraph(pdf, document.unverified, TEXT + 0.5, "B")
    pdf.set_text_color(*GREY)
    _paragraph(pdf, document.subtitle, TEXT - 0.5)
    pdf.set_text_color(255, 255, 255)
    pdf.set_fill_color(Verdict(document.verdict).colour)
    pdf.set_font("DejaVu", "B", 16)
    pdf.cell(0, 10, f"  {document.verdict_label}", fill=True, new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("DejaVu", "", TEXT + 0.5)
    pdf.multi_cell(0, LINE + 0.4, document.headline, fill=True, align="L", padding=(0, 3, 3, 3), new_x="LMARGIN",
                   new_y="NEXT")
    pdf.set_text_color(0, 0, 0)
    pdf.set_fill_color(255, 255, 255)
    pdf.ln(4)
    for section in document.sections:
        render_section(pdf, section)
    return bytes(pdf.output())
