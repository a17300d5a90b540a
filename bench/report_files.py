"""A run folder's report files: ``records.csv``, ``report.md``, ``report.html``, ``summary.csv`` and ``figures/``
(written at the end of ``bench run`` and again by ``bench report``)."""
from __future__ import annotations

from bench import plots, render
from bench.report import Report
from bench.store import RunStore


def write_report(store: RunStore) -> tuple[Report, dict[str, bytes]]:
    """Aggregate a run folder's cells (also a partial run's), write the report files into it; return the
    report and its figures (PNG by file name)."""
    records = store.records()
    report = Report(records, store.cells(), store.run_info(), store.validation(), store.training())
    figures = plots.figures(report)
    store.write_report(records, {
        "report.md": render.markdown(report, list(figures)),
        "report.html": render.html_document(report, figures),
        "summary.csv": render.csv(report),
        **{f"figures/{name}": png for name, png in figures.items()},
    })
    return report, figures
