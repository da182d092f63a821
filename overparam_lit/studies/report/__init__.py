"""``overparam-lit report DIR``: one self-contained HTML page of a sweep, to read and to share.

Draws every figure that applies to the runs under ``DIR`` (and the sweep's own figure) into
``DIR/figures/``, then writes ``DIR/report.html``: a title and a setup paragraph taken from the
study config (data, label noise, model, widths, seeds, optimizer, epochs, and the commands that
reproduce the page), the study's key results as a table, each figure with a caption that states
its finding in numbers, and the fits and members folded away. Pictures are embedded, so the page
needs no other file and no network; it reads well on a laptop and on a phone.

    overparam-lit report runs/dd [--out runs/dd/report.html] [--no-figures]
"""

from overparam_lit.studies.report.captions import CAPTIONS, Table, caption, key_table
from overparam_lit.studies.report.command import build_parser, main
from overparam_lit.studies.report.numbers import fmt, numbers_html, pct, table_html
from overparam_lit.studies.report.page import MAX_ROWS, STYLE, write_report
from overparam_lit.studies.report.setup_section import reproduce_commands, setup_html

# One module per job: numbers (numbers and tables as text), captions (each figure's finding and key
# table), setup_section (what was trained and how to reproduce it), page (the folder read and the page
# written) and command (the parser and main).
__all__ = [
    "CAPTIONS", "MAX_ROWS", "STYLE", "build_parser", "caption", "fmt", "key_table", "main", "numbers_html",
    "pct", "reproduce_commands", "setup_html", "table_html", "Table", "write_report",
]
