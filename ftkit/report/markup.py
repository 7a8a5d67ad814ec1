"""The pieces every ftkit page is made of: the style sheet, escaped text, tables, plots as inline PNG, and executed
notebooks rendered by nbconvert with their code folded. Nothing here loads from outside the page or runs a script."""

from __future__ import annotations

import base64
import html
import io
import re
from pathlib import Path

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#1a1a1a;line-height:1.45}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.8em 0;font-size:.92em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}th{background:#f3f3f3}
td{white-space:pre-wrap}
pre{background:#f6f8fa;padding:.8em;overflow-x:auto;font-size:.85em;white-space:pre-wrap}
img{max-width:100%}.failed{background:#fde8e8;border:1px solid #e0a0a0;padding:.8em;border-radius:4px}
.warning{background:#fff6e0;border:1px solid #e0c070;padding:.6em .8em;border-radius:4px}
.state-done{color:#11772d}.state-failed,.state-interrupted{color:#b00020;font-weight:bold}.muted{color:#666}
.notebook{border:1px solid #e3e3e3;padding:0 1em;margin:1em 0;border-radius:4px}
.jp-OutputPrompt,.jp-InputPrompt{display:none}
details.code>summary{color:#666;font-size:.8em;cursor:pointer}details.code .highlight pre{margin:.2em 0}
@media print{.notebook{break-before:page}details.code{display:none}}
"""


def esc(value) -> str:
    """Text for HTML: every character that could open markup or close an attribute escaped."""
    return html.escape(str(value), quote=True)


def png(fig) -> str:
    """A matplotlib figure as an <img> with the PNG inside (the page loads nothing)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def html_table(header: list[str], rows: list[list]) -> str:
    """An HTML table, every header and cell escaped."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def fmt(value, digits=3) -> str:
    """A table cell: floats to `digits` places, None as nothing, NaN (a table's cell for a figure one model lacks:
    not measured) as a dash.

    >>> fmt(0.12345), fmt(None), fmt(float("nan")), fmt(3)
    ('0.123', '', '–', '3')
    """
    if isinstance(value, float):
        return "–" if value != value else f"{value:.{digits}f}"
    return "" if value is None else str(value)


TEMPLATES = Path(__file__).parent / "templates"


def notebook_html(path: Path) -> str:
    """An executed notebook as HTML: outputs shown, each code cell folded behind a <details> toggle (ftkit's
    template over nbconvert's basic one), the parameters cells left out, no script."""
    import nbformat
    from nbconvert import HTMLExporter
    from nbconvert.preprocessors import TagRemovePreprocessor
    from traitlets.config import Config

    config = Config()
    config.TagRemovePreprocessor.remove_cell_tags = ("injected-parameters", "parameters")
    config.TagRemovePreprocessor.enabled = True
    exporter = HTMLExporter(config=config, template_name="ftkit", extra_template_basedirs=[str(TEMPLATES)],
                            exclude_input_prompt=True, exclude_output_prompt=True)
    exporter.register_preprocessor(TagRemovePreprocessor(config=config), enabled=True)
    body, _ = exporter.from_notebook_node(nbformat.read(path, as_version=4))
    # the report must open offline and run nothing: drop any script element the template adds
    return re.sub(r"<script\b.*?</script>", "", body, flags=re.S | re.I)


def code_css() -> str:
    """Pygments colours for the folded code cells (nbconvert's basic template leaves them out)."""
    from pygments.formatters import HtmlFormatter

    return HtmlFormatter(style="default").get_style_defs(".highlight")
