"""A report in each output format: Markdown (with PNG figures beside it), one self-contained HTML
file (figures embedded), LaTeX table snippets (booktabs) and CSV (the machine-readable summary)."""
from __future__ import annotations

import base64
import html
import re

from tabulate import tabulate

from bench.report import Report, Table

def text_tables(tables: list[Table]) -> str:
    """Tables for a terminal."""
    return "\n\n".join(f"{table.title}\n{tabulate(table.rows, headers=table.columns, tablefmt='simple')}" for table in tables) + "\n"


def text(report: Report) -> str:
    return text_tables(report.tables) + f"\nCells: {report.cell_counts()}.\n"


def _emphasised(table: Table, bold: str) -> list[list[str]]:
    return [[bold.format(cell) if (row_index, column) in table.bold else cell for column, cell in enumerate(row)]
            for row_index, row in enumerate(table.rows)]


def _title(report: Report) -> str:
    suites = ", ".join(dict.fromkeys(suite for suite, _ in report.settings))
    return f"metabench report: {suites}"


def markdown_table(table: Table) -> str:
    cells = [[cell.replace("|", "\\|") for cell in row] for row in _emphasised(table, "**{}**")]
    return "\n".join([f"## {table.title}", "", table.note, "", tabulate(cells, headers=table.columns, tablefmt="github"), ""])


def markdown(report: Report, figure_names: list[str], figure_dir: str = "figures") -> str:
    """Markdown (GitHub tables); ``figure_names`` are linked from ``figure_dir``."""
    parts = [f"# {_title(report)}", ""] + [markdown_table(table) for table in report.tables]
    if figure_names:
        parts += ["## Figures", ""] + [f"![{name}]({figure_dir}/{name})" for name in figure_names] + [""]
    parts += ["## Provenance", ""] + [f"- **{key}**: `{value}`" if key == "command" else f"- **{key}**: {value}"
                                      for key, value in report.provenance()]
    return "\n".join(parts) + "\n"


STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 72rem;
       padding: 0 1rem; color: #1d1d1f; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; font-size: 0.92rem; }
th, td { padding: 0.3rem 0.7rem; text-align: left; border-bottom: 1px solid #ddd; }
thead th { border-bottom: 2px solid #333; }
td.best { font-weight: 700; }
p.note { color: #555; font-size: 0.9rem; max-width: 60rem; }
figure { display: inline-block; margin: 0.5rem 1rem 1rem 0; }
dl { display: grid; grid-template-columns: max-content auto; gap: 0.2rem 1rem; font-size: 0.9rem; }
dt { font-weight: 600; } dd { margin: 0; word-break: break-word; }
"""


def html_document(report: Report, figures: dict[str, bytes]) -> str:
    """One HTML file that needs nothing else: styles inline, figures as data URIs."""
    escape = html.escape
    body = [f"<h1>{escape(_title(report))}</h1>"]
    for table in report.tables:
        head = "".join(f"<th>{escape(column)}</th>" for column in table.columns)
        best = ' class="best"'
        rows = "".join(
            "<tr>" + "".join(f"<td{best if (r, c) in table.bold else ''}>{escape(cell)}</td>" for c, cell in enumerate(row))
            + "</tr>"
            for r, row in enumerate(table.rows))
        body += [f"<h2>{escape(table.title)}</h2>", f"<p class=\"note\">{escape(table.note)}</p>",
                 f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"]
    if figures:
        body.append("<h2>Figures</h2>")
        for name, png in figures.items():
            data = base64.b64encode(png).decode("ascii")
            body.append(f"<figure><img alt=\"{escape(name)}\" src=\"data:image/png;base64,{data}\"></figure>")
    body.append("<h2>Provenance</h2><dl>" + "".join(
        f"<dt>{escape(key)}</dt><dd>{escape(value)}</dd>" for key, value in report.provenance()) + "</dl>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{escape(_title(report))}</title><style>{STYLE}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "±": r"$\pm$", "↑": r"$\uparrow$", "↓": r"$\downarrow$", "–": "--", "<": r"$<$"}
_LATEX_PATTERN = re.compile("|".join(re.escape(character) for character in _LATEX_SPECIAL))


def latex_escape(text: str) -> str:
    return _LATEX_PATTERN.sub(lambda match: _LATEX_SPECIAL[match.group()], text)


def latex_table(table: Table) -> str:
    """One ``table`` environment (needs ``\\usepackage{booktabs}``)."""
    rows = [[latex_escape(cell) for cell in row] for row in table.rows]
    rows = [[rf"\textbf{{{cell}}}" if (r, c) in table.bold else cell for c, cell in enumerate(row)]
            for r, row in enumerate(rows)]
    lines = [r"\begin{table}[t]", r"\centering", r"\small",
             rf"\caption{{{latex_escape(table.title)}. {latex_escape(table.note)}}}",
             r"\begin{tabular}{" + "l" * len(table.columns) + "}", r"\toprule",
             " & ".join(latex_escape(column) for column in table.columns) + r" \\", r"\midrule"]
    lines += [" & ".join(row) + r" \\" for row in rows]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def latex(report: Report) -> str:
    """The report's tables, ready to ``\\input``."""
    return "\n".join(latex_table(table) for table in report.tables)


def csv(report: Report) -> str:
    return report.summary_frame.to_csv(index=False)
