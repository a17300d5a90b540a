"""The comparison report as users read it: best in bold with tests against it, every output format,
`bench compare` (and its refusals) and `bench runs`, on run folders written here with known numbers."""
from __future__ import annotations

import csv
import dataclasses
import json
import io
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import bench.report
from bench import plots, render
from bench.cells import CellMetadata, CellStatus
from bench.cli import main
from bench.compare import NotComparableError, Run, compare
from bench.report import Report
from bench.stats import Comparison, paired_comparison
from bench.store import RunStore
from helpers import finished_cell

STEPS = 2
EPISODES = 12


def toy_cell(learner: str, values: list[float], fingerprint: str = "same-episodes", steps: int = STEPS,
             setting: str = "K=5") -> tuple[CellMetadata, pd.DataFrame]:
    """A finished cell and its records: the given final MSE per episode; step s scores final + (steps - s)."""
    records = pd.DataFrame([
        {"suite": "toy", "setting": setting, "learner": learner, "seed": 0, "episode": episode, "step": step,
         "metric": value + (steps - step)}
        for episode, value in enumerate(values) for step in range(steps + 1)])
    cell = finished_cell("toy", setting, learner, test_episodes=len(values), test_steps=steps, metric_name="MSE",
                         lower_is_better=True, test_episodes_sha256=fingerprint, adapt_ms_per_episode=2.0,
                         meta_train_seconds=10.0, tasks_seen=500, peak_rss_mib=700.0)
    return cell, records


def write_run(path: Path, finals: dict[str, list[float]], fingerprint: str = "same-episodes", steps: int = STEPS,
              setting: str = "K=5") -> Path:
    """A finished run folder of ``toy_cell``s, one per learner."""
    store = RunStore(path)
    store.open({"profile": "smoke", "seeds": 1, "suites": ["toy"]},
               {"command": ["bench", "run"], "started": "2026-11-27T12:00:00+00:00", "git_revision": "abc123",
                "libraries": {"torch": "2.14.1"}, "plugins": {"learners": "metabench 0.1.0"}, "device_name": "test CPU"})
    for learner, values in finals.items():
        cell, records = toy_cell(learner, values, fingerprint, steps, setting)
        store.write_cell(cell.cell_id, cell, records)
    store.write_run_file({"profile": "smoke", "seeds": 1, "suites": ["toy"]}, store.run_info()["environment"], "finished")
    return path


RNG = np.random.default_rng(0)
BEST = list(RNG.uniform(1.0, 2.0, EPISODES))
FINALS = {
    "good": BEST,
    "tied": [value + RNG.normal(0, 0.01) for value in BEST],  # indistinguishable from the best
    "worse": [value + 1.0 for value in BEST],  # worse on every episode: p = 2 / 2**12
}


def report_of(path: Path) -> Report:
    store = RunStore(path)
    return Report(store.records(), store.cells(), store.run_info())


def rows_of(table) -> dict[str, dict[str, str]]:
    """A table's rows by learner, each by column name."""
    return {row[2]: dict(zip(table.columns, row)) for row in table.rows}


VERSUS = "vs best (Wilcoxon, Holm)"


def test_best_is_bold_and_every_other_learner_is_tested_against_it(tmp_path):
    table = report_of(write_run(tmp_path / "run", FINALS)).accuracy_table
    rows = rows_of(table)
    best = "good" if np.mean(FINALS["good"]) < np.mean(FINALS["tied"]) else "tied"
    assert rows[best][VERSUS] == "best" and table.bold == {([row[2] for row in table.rows].index(best), 3)}
    assert rows["worse"][VERSUS] == "p=0.00098"  # exact Wilcoxon 2 / 2**12, Holm: the smallest of 2 tests, x 2
    assert rows["tied" if best == "good" else "good"][VERSUS].startswith("n.s. (p=")
    assert rows["worse"]["± 95% CI over seeds"] == "–"  # one seed: no interval over seeds
    assert rows["worse"]["mean ± 95% CI"] == \
        f"MSE ↓ {np.mean(FINALS['worse']):.3g} ± {1.96 * np.std(FINALS['worse'], ddof=1) / np.sqrt(EPISODES):.2g}"
    # cells without a selected step (written before meta-validation) are read at their last step, as before
    assert rows["worse"]["val-chosen step"] == "2" and rows["worse"]["at step S"] == f"{np.mean(FINALS['worse']):.3g} (S=2)"
    assert table.note.startswith("Metric after the final adaptation step")


def test_each_learner_is_tested_against_the_best_once_whatever_reads_the_report(monkeypatch):
    """Two settings of three learners: four Wilcoxon tests in all, however many formats and figures are made."""
    tested = []

    def counted(reference: pd.Series, other: pd.Series, *, lower_is_better: bool) -> Comparison:
        tested.append((id(reference), id(other)))
        return paired_comparison(reference, other, lower_is_better=lower_is_better)

    monkeypatch.setattr(bench.report, "paired_comparison", counted)
    cells = [toy_cell(learner, values, setting=setting) for setting in ("K=5", "K=10") for learner, values in FINALS.items()]
    report = Report(pd.concat([records for _, records in cells]), [cell for cell, _ in cells])
    renderers = [render.text, render.latex, render.csv, plots.figures, lambda report: render.markdown(report, []),
                 lambda report: render.html_document(report, {})]
    for renderer in renderers * 2:
        renderer(report)
    expected = {(id(ranked[0].final), id(group.final)) for ranked in report.rankings.values() for group in ranked[1:]}
    assert len(tested) == len(expected) == 4 and set(tested) == expected
    assert [row[8] for row in report.accuracy_table.rows if row[2] == "worse"] == ["p=0.00098"] * 2  # 2 / 2**12, Holm x 2


def test_the_accuracy_table_and_csv_give_a_t_interval_over_the_seed_means():
    """Three seeds of one learner whose seed means are 1, 2 and 3: a t interval of 4.303 / sqrt(3) = 2.48."""
    cells, frames = [], []
    for seed in range(3):
        cell, records = toy_cell("maml", [seed + 1.0] * EPISODES)
        cells.append(dataclasses.replace(cell, seed=seed, cell_id=f"{cell.cell_id}-{seed}"))
        frames.append(records.assign(seed=seed))
    report = Report(pd.concat(frames), cells)
    assert rows_of(report.accuracy_table)["maml"]["± 95% CI over seeds"] == "± 2.5 (3 seeds)"
    final = report.summary_frame[report.summary_frame["final_step"]].iloc[0]
    assert json.loads(final["seed_means"]) == [1.0, 2.0, 3.0]
    assert final["seed_ci95"] == pytest.approx(4.302653 / np.sqrt(3), rel=1e-6)


def test_a_run_whose_every_cell_failed_still_has_a_report():
    failed = dataclasses.replace(toy_cell("maml", BEST)[0], status=CellStatus.FAILED, error="RuntimeError: boom")
    report = Report(pd.DataFrame(), [failed])
    assert "failed: RuntimeError: boom" in render.text(report) and plots.figures(report) == {}
    assert render.csv(report).splitlines() == [",".join([
        "suite", "setting", "learner", "step", "final_step", "selected_steps", "selected_tasks", "selection",
        "selection_note", "selected_mean", "selected_ci95", "selected_median", "selected_nonfinite", "seed_means",
        "seed_ci95", "vs_best_test", "vs_best_p_value", "vs_best_p_holm", "vs_best_difference"])]


def test_markdown_tables_parse_and_link_the_figures(tmp_path):
    report = report_of(write_run(tmp_path / "run", FINALS))
    figures = plots.figures(report)
    assert set(figures) == {"toy-K-5-curves.png", "toy-K-5-time.png", "toy-K-5-bars.png"}
    assert all(png.startswith(b"\x89PNG") for png in figures.values())
    text = render.markdown(report, list(figures))
    tables = re.findall(r"((?:^\|.*\|\n)+)", text, flags=re.MULTILINE)
    assert len(tables) == 3
    for table in tables:
        lines = table.strip().splitlines()
        widths = {len(line.strip("|").split("|")) for line in lines}
        assert len(widths) == 1 and re.fullmatch(r"\|[-|: ]+\|", lines[1])
        assert len(lines) == 2 + 3  # header, rule, one row per learner
    assert "**MSE ↓" in text and "![toy-K-5-curves.png](figures/toy-K-5-curves.png)" in text
    assert "- **git**" not in text and "abc123" in text and "`bench run`" in text


def test_html_is_one_self_contained_file(tmp_path):
    report = report_of(write_run(tmp_path / "run", FINALS))
    figures = plots.figures(report)
    page = render.html_document(report, figures)
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == len(figures) and all(source.startswith("data:image/png;base64,") for source in sources)
    assert "http://" not in page and "https://" not in page and "<link" not in page
    assert page.count('<td class="best">') == 1 and page.count("<table>") == 3


def test_latex_uses_booktabs_and_has_every_row(tmp_path):
    latex = render.latex(report_of(write_run(tmp_path / "run", FINALS)))
    assert latex.count(r"\toprule") == latex.count(r"\bottomrule") == 3
    accuracy = latex.split(r"\end{table}")[0]
    assert len(re.findall(r"^toy & K=5 & \w+ & .* \\\\$", accuracy, flags=re.MULTILINE)) == 3
    assert r"\textbf{MSE $\downarrow$" in accuracy and r"$\pm$" in accuracy and "_" not in accuracy.replace(r"\_", "")


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="needs pdflatex (texlive-latex-base)")
def test_latex_snippet_compiles(tmp_path):
    (tmp_path / "tables.tex").write_text(render.latex(report_of(write_run(tmp_path / "run", FINALS))))
    (tmp_path / "main.tex").write_text("\\documentclass{article}\n\\usepackage{booktabs}\n\\usepackage[margin=1cm]{geometry}\n"
                                       "\\begin{document}\n\\input{tables}\n\\end{document}\n")
    result = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "main.tex"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-2000:]


def test_csv_holds_the_numbers_and_the_tests(tmp_path):
    frame = pd.read_csv(io.StringIO(render.csv(report_of(write_run(tmp_path / "run", FINALS)))))
    final = frame[frame["final_step"]].set_index("learner")
    assert final.loc["worse", "mean"] == pytest.approx(np.mean(FINALS["worse"]))
    assert final.loc["worse", "vs_best_p_value"] == pytest.approx(2 / 2**12)
    assert final.loc["worse", "vs_best_test"] == "Wilcoxon signed-rank"
    assert len(frame) == 3 * (STEPS + 1)


def test_compare_pairs_runs_that_scored_the_same_episodes(tmp_path):
    before = write_run(tmp_path / "before", {"maml": BEST})
    after = write_run(tmp_path / "after", {"maml": [value - 0.5 for value in BEST]})
    elsewhere = write_run(tmp_path / "elsewhere", {"maml": [value - 0.5 for value in BEST]}, fingerprint="other-data")
    table = compare([Run.load(before), Run.load(after), Run.load(elsewhere)])
    (row,) = table.rows
    assert row[:3] == ["toy", "K=5", "maml"]
    assert row[6] == "-0.5, p=0.00049"  # paired: 12 of 12 episodes better
    assert row[7].endswith(", unpaired") and "Mann-Whitney" in table.note


def test_compare_refuses_runs_with_nothing_comparable(tmp_path, capsys):
    base = write_run(tmp_path / "base", {"maml": BEST})
    other_setting = write_run(tmp_path / "k10", {"maml": BEST}, setting="K=10")
    other_steps = write_run(tmp_path / "steps5", {"maml": BEST}, steps=5)
    with pytest.raises(NotComparableError, match="have no suite setting and learner in common"):
        compare([Run.load(base), Run.load(other_setting)])
    with pytest.raises(NotComparableError, match="measures MSE after 2 adaptation steps, 'steps5' MSE after 5"):
        compare([Run.load(base), Run.load(other_steps)])
    assert main(["compare", str(base), str(other_steps)]) == 2
    stderr = capsys.readouterr().err
    assert stderr.count("\n") == 1 and "not comparable" in stderr


def test_report_command_writes_each_format_and_runs_lists_folders(tmp_path, capsys):
    results = tmp_path / "results"
    run = write_run(results / "20261127-120000-toy-smoke", FINALS)
    (results / "broken").mkdir()
    (results / "broken" / "run.json").write_text("{ not json")
    for fmt, marker in (("md", "| toy "), ("html", "<!DOCTYPE html>"), ("latex", r"\toprule"), ("csv", "vs_best_p_value")):
        out = tmp_path / "out" / f"report.{fmt}"
        assert main(["report", str(run), "--format", fmt, "--out", str(out)]) == 0
        assert marker in out.read_text()
    assert (tmp_path / "out" / "figures" / "toy-K-5-bars.png").exists()
    assert (run / "report.html").exists() and (run / "summary.csv").exists()
    capsys.readouterr()
    assert main(["report", str(run), "--out", "x.md"]) == 2
    assert capsys.readouterr().err.strip() == "bench report: error: --out needs --format (md, html, latex or csv)"
    assert main(["runs", "--results", str(results)]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[2:]}
    assert "smoke" in lines["20261127-120000-toy-smoke"] and "3 ok" in lines["20261127-120000-toy-smoke"]
    assert "unreadable" in lines["broken"]
    assert main(["compare", str(run), str(run), "--format", "csv"]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[0][:3] == ["suite", "setting", "learner"] and len(rows) == 4
