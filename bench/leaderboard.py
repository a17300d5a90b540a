"""``bench leaderboard``: a static site of every learner's best result per suite setting and budget across the
runs of a results folder.

The numbers are the runs' own reports' (``bench.headline``): the mean at the val-chosen steps with its 95% interval
over episodes, and the t interval over the seeds' means. Results are ranked only against results of the same budget
(``Budget``: meta-training tasks and test episodes per cell), one table each, largest budget first within a suite
setting. A learner's best run in a table is the one with the best mean (lower or higher as the suite's metric has it;
non-finite means last). Each row shows its seeds, whether it was tuned, when it ran, and links to that run's
report.html, copied into the site (its figures are inside it, as data URIs): the site needs no network and works when
moved.

Layout of the site::

    index.html                 the leaderboard, then every run read
    runs/<run path>/report.html  each run's report (rendered here where the run folder has none)
"""
from __future__ import annotations

import dataclasses
import html
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import quote

from bench import render
from bench.db import find_folders
from bench.errors import BenchError
from bench.grid import home_suite
from bench.headline import Headline, headlines
from bench.report import Report, format_number, format_steps
from bench.store import RunStore, atomic_write_bytes, atomic_write_text

GENERATOR = '<meta name="generator" content="bench leaderboard">'
"""Marks a folder as a site this command wrote (and may rewrite)."""
REPORTS = "runs"
SettingKey = tuple[str, str]


class Budget(NamedTuple):
    """What makes two results of a suite setting comparable: the cells' meta-training tasks and test episodes."""

    tasks: int
    test_episodes: int

    @classmethod
    def of(cls, headline: Headline) -> Budget:
        """The budget ``headline``'s cells had."""
        return cls(headline.task_budget, headline.test_episodes)

    def __str__(self) -> str:
        return f"{self.tasks:,} meta-training tasks, {self.test_episodes:,} test episodes per cell"


@dataclasses.dataclass(frozen=True)
class RunPage:
    """One run folder read for the leaderboard."""

    path: str
    """The folder relative to the results folder."""
    info: dict[str, Any]
    headlines: list[Headline]

    @property
    def report_href(self) -> str:
        """Where its report lies in the site, relative to index.html."""
        return quote(str(Path(REPORTS, self.path, "report.html").as_posix()))

    @property
    def date(self) -> str:
        return str(self.info.get("environment", {}).get("started", "–"))[:10]

    def tuning(self, headline: Headline) -> str:
        """How the run chose a learner's hyper-parameters on a setting: tuned (the ``tuned`` table of ``bench tune``,
        keyed as ``bench.grid.tuned_key`` names settings), or its defaults with any ``--set``."""
        config = self.info.get("config", {})
        tuned = config.get("tuned") or {}
        key = f"{home_suite(headline.suite)} {headline.setting}"  # a cross-domain model was tuned on its home suite
        if key in tuned.get("hyperparameters", {}).get(headline.learner, {}):
            return f"tuned: {tuned.get('trials')} trials x {tuned.get('trial_tasks')} tasks"
        overrides = (config.get("set") or {}).get(headline.learner)
        return "defaults" + (", " + ", ".join(f"{key}={value}" for key, value in overrides.items()) if overrides else "")


@dataclasses.dataclass(frozen=True)
class Entry:
    run: RunPage
    headline: Headline


Board = dict[SettingKey, dict[Budget, list[Entry]]]
"""Per suite setting, per budget (largest first), each learner's best entry, best first."""


def _rank_key(headline: Headline) -> tuple[bool, float]:
    """Best first: finite means before the others, then lower or higher as the metric has it."""
    finite = math.isfinite(headline.mean)
    return not finite, (headline.mean if headline.lower_is_better else -headline.mean) if finite else 0.0


def read_runs(results: Path, warn: Callable[[str], None]) -> tuple[list[RunPage], dict[str, str]]:
    """Every readable run folder under ``results`` with its headline results, and the HTML of each one's report;
    ``warn`` gets one line per folder that cannot be read."""
    if not results.is_dir():
        raise BenchError(f"no results folder at {results}")
    runs, pages = [], {}
    for path, (kind, folder) in find_folders(results).items():
        if kind != "run":
            continue
        try:
            store = RunStore(folder)
            report = Report(store.records(), store.cells(), store.run_info())
            rows = headlines(report)
        except BenchError as error:
            warn(f"skipped {folder}: {error}")
            continue
        runs.append(RunPage(path, report.run_info, rows))
        pages[path] = _report_html(folder, report)
    return runs, pages


def _report_html(folder: Path, report: Report) -> str:
    """The run's report.html, or the report rendered now where the folder has none (a run killed before its end)."""
    existing = folder / "report.html"
    if existing.exists():
        return existing.read_text()
    from bench import plots, render

    return render.html_document(report, plots.figures(report))


def _setting_order(budgets: dict[Budget, dict[str, Entry]]) -> tuple[str, int, str]:
    headline = next(iter(next(iter(budgets.values())).values())).headline
    return headline.suite, headline.setting_index, headline.setting


def leaderboard(runs: list[RunPage]) -> Board:
    """Per suite setting (by suite, then in the suite's order of settings), per budget (largest first), each learner's
    best entry across the runs of that budget, best first."""
    best: dict[SettingKey, dict[Budget, dict[str, Entry]]] = {}
    for run in runs:
        for headline in run.headlines:
            learners = best.setdefault((headline.suite, headline.setting), {}).setdefault(Budget.of(headline), {})
            held = learners.get(headline.learner)
            if held is None or _rank_key(headline) < _rank_key(held.headline):
                learners[headline.learner] = Entry(run, headline)
    return {key: {budget: sorted(budgets[budget].values(), key=lambda entry: _rank_key(entry.headline))
                  for budget in sorted(budgets, reverse=True)}
            for key, budgets in sorted(best.items(), key=lambda item: _setting_order(item[1]))}


STYLE = render.STYLE + """
body { max-width: 80rem; }
tbody tr:first-child td { font-weight: 700; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
p.note { max-width: 64rem; }
a { color: #0b57d0; }
"""
"""The reports' style, with the best row of each table in bold and numbers right-aligned."""

COLUMNS = ("#", "learner", "mean ± 95% CI", "± 95% CI over seeds", "val-chosen step", "seeds", "tuning", "date",
           "run")
NOTE = ("One table per suite setting and budget (meta-training tasks and test episodes per cell, named in its "
        "heading; largest budget first): a result is ranked only against results of the same budget. Each row is a "
        "learner's best result in the table across the runs read: the metric at the adaptation step chosen on "
        "meta-validation (never on test episodes), over every test episode and seed, with the 95% interval over "
        "episodes; then the t interval over the seeds' means. The numbers are the runs' own reports'. Rows may still "
        "differ in seeds and tuning: compare those columns before the numbers. Best first, in bold; the run link opens "
        "that run's full report.")


def _cell(text: str, numeric: bool = False) -> str:
    attribute = ' class="num"' if numeric else ""
    return f"<td{attribute}>{html.escape(text)}</td>"


def _entry_row(place: int, entry: Entry) -> str:
    headline, run = entry.headline, entry.run
    seeds = f"{headline.seeds}" if headline.seeds == headline.planned_seeds else f"{headline.seeds} of {headline.planned_seeds}"
    seed_ci = "–" if headline.seed_ci95 is None else f"± {format_number(headline.seed_ci95, 2)}"
    return "<tr>" + "".join([
        _cell(str(place), True), _cell(headline.learner),
        _cell(f"{format_number(headline.mean)} ± {format_number(headline.ci95, 2)}", True), _cell(seed_ci, True),
        _cell(format_steps(headline.selected_steps), True), _cell(seeds, True), _cell(run.tuning(headline)),
        _cell(run.date, True), f'<td><a href="{run.report_href}">{html.escape(run.path)}</a></td>']) + "</tr>"


def _table_section(key: SettingKey, budget: Budget, entries: list[Entry]) -> str:
    first = entries[0].headline
    title = (f"{key[0]} {key[1]}, {budget}: {first.metric_name} "
             f"{'↓ lower' if first.lower_is_better else '↑ higher'} is better")
    head = "".join(f"<th>{html.escape(column)}</th>" for column in COLUMNS)
    rows = "".join(_entry_row(place, entry) for place, entry in enumerate(entries, start=1))
    return f"<h2>{html.escape(title)}</h2>\n<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _runs_section(runs: list[RunPage]) -> str:
    rows = "".join(
        "<tr>" + "".join([f'<td><a href="{run.report_href}">{html.escape(run.path)}</a></td>', _cell(run.date),
                          _cell(str(run.info.get("status", "–"))), _cell(str(run.info.get("config", {}).get("profile", "–"))),
                          _cell(", ".join(sorted({row.learner for row in run.headlines})) or "no results")]) + "</tr>"
        for run in runs)
    return ("<h2>Runs read</h2>\n<table><thead><tr><th>run</th><th>date</th><th>status</th><th>profile</th>"
            f"<th>learners with results</th></tr></thead><tbody>{rows}</tbody></table>")


def index_html(results: Path, runs: list[RunPage], board: Board) -> str:
    """The site's index page: one table per suite setting and budget, then the runs read."""
    sections = [_table_section(key, budget, entries) for key, budgets in board.items()
                for budget, entries in budgets.items()] or ["<p>No run has results yet.</p>"]
    body = [f"<h1>metabench leaderboard: {html.escape(results.name or str(results))}</h1>",
            (f'<p class="note">{html.escape(NOTE)} Built {time.strftime("%Y-%m-%d %H:%M")} from {len(runs)} run '
             f"folder(s).</p>"), *sections, _runs_section(runs)]
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">{GENERATOR}'
            f"<title>metabench leaderboard</title><style>{STYLE}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def _prepare(out: Path) -> None:
    """An empty folder, or a site this command wrote earlier (its copied reports removed)."""
    index = out / "index.html"
    if index.exists() and GENERATOR in index.read_text(errors="replace"):
        shutil.rmtree(out / REPORTS, ignore_errors=True)
    elif out.exists() and any(out.iterdir()):
        raise BenchError(f"{out} exists and is not a leaderboard site; choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise BenchError(f"cannot create {out}: {error.strerror}") from None


def write_site(results: Path, out: Path, warn: Callable[[str], None]) -> Board:
    """Write the leaderboard of the runs under ``results`` into ``out``; return it."""
    runs, pages = read_runs(results, warn)
    board = leaderboard(runs)
    _prepare(out)
    for path, page in pages.items():
        target = out / REPORTS / path / "report.html"
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, page.encode())
    atomic_write_text(out / "index.html", index_html(results, runs, board))
    return board
