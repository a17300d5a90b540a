"""The comparison report of one run: accuracy with significance, adaptation speed, cost, provenance.

Tables are built here as ``Table`` objects (cells as text, with the cells to set in bold); the
formats (Markdown, HTML, LaTeX, CSV) are in ``bench.render`` and the figures in ``bench.plots``.
The best learner of a setting is the one with the best mean at the final step; every other learner
is tested against it on the shared episodes (``bench.stats.paired_comparison``).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pandas as pd

from bench.stats import EPISODE_KEY, Comparison, paired_comparison, steps_to_fraction_of_gain, summarize

GROUP = ["suite", "setting", "learner"]
SPEED_STEPS = (0, 1, 2, 5, 10)


@dataclasses.dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]]
    bold: set[tuple[int, int]] = dataclasses.field(default_factory=set)
    """(row, column) positions of the cells to emphasise."""
    note: str = ""


def format_number(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–" if value is None or math.isnan(value) else str(value)
    if abs(value) < 1e4:
        return f"{value:.{digits}g}"
    return f"{value:,.0f}" if abs(value) < 1e9 else f"{value:.{digits}g}"  # a diverged mean: 4.27e+31, not 32 digits


def format_p(comparison: Comparison) -> str:
    if math.isnan(comparison.p_value):
        return "no shared finite episodes"
    p = f"p={comparison.p_value:.2g}" if comparison.p_value >= 1e-4 else "p<1e-4"
    return p if comparison.significant else f"n.s. ({p})"


class Report:
    """Tables of one run, from its records (one row per episode x step) and cell metadata."""

    def __init__(self, records: pd.DataFrame, cells: list[dict[str, Any]], run_info: dict[str, Any] | None = None) -> None:
        self.cells = pd.DataFrame(cells).sort_values(["suite", "setting_index", "learner", "seed"])
        self.records = records
        self.summary = summarize(records, GROUP) if len(records) else pd.DataFrame(columns=[*GROUP, "step"])
        self.run_info = run_info or {}

    # -- groups and their data -------------------------------------------------------------------

    def settings(self) -> list[tuple[str, str]]:
        return list(dict.fromkeys(zip(self.cells["suite"], self.cells["setting"])))

    def learners(self, suite: str, setting: str) -> list[str]:
        cells = self.cells[(self.cells["suite"] == suite) & (self.cells["setting"] == setting)]
        return list(dict.fromkeys(cells["learner"]))

    def _cell_info(self, suite: str, setting: str, learner: str) -> pd.DataFrame:
        cells = self.cells
        return cells[(cells["suite"] == suite) & (cells["setting"] == setting) & (cells["learner"] == learner)]

    def ok_cells(self, suite: str, setting: str, learner: str) -> pd.DataFrame:
        """The group's finished cells."""
        info = self._cell_info(suite, setting, learner)
        return info[info["status"] == "ok"]

    def orientation(self, suite: str) -> tuple[str, bool]:
        """(metric name, lower is better) of a suite."""
        ok = self.cells[(self.cells["suite"] == suite) & (self.cells["status"] == "ok")]
        if ok.empty:
            return "metric", True
        return str(ok["metric_name"].iloc[0]), bool(ok["lower_is_better"].iloc[0])

    def status_note(self, suite: str, setting: str, learner: str) -> str | None:
        """'n/a: reason' or 'failed: error' when no cell of the group succeeded."""
        info = self._cell_info(suite, setting, learner)
        if (info["status"] == "ok").any():
            return None
        first = info.iloc[0]
        return f"{first['status']}: {first.get('error', '')}"

    def curve(self, suite: str, setting: str, learner: str) -> pd.DataFrame:
        s = self.summary
        return s[(s["suite"] == suite) & (s["setting"] == setting) & (s["learner"] == learner)].sort_values("step")

    def final_metric(self, suite: str, setting: str, learner: str) -> pd.Series:
        """The metric after the group's own last step (step 0 for a learner with nothing to adapt at test
        time), one value per (seed, episode): learners ending at different steps pair on the same episodes."""
        r = self.records
        group = r[(r["suite"] == suite) & (r["setting"] == setting) & (r["learner"] == learner)]
        final = group[group["step"] == group["step"].max()]
        return final.set_index(EPISODE_KEY)["metric"]

    def short_curves(self) -> dict[str, int]:
        """Learners whose curve ends before the protocol's last step (they declare fewer adaptation steps,
        ``max_adaptation_steps``), with the step it ends at: 0 for a learner with no test-time adaptation."""
        ok = self.cells[self.cells["status"] == "ok"]
        if "test_steps" not in ok or self.summary.empty:
            return {}
        last = self.summary.groupby("learner")["step"].max()
        requested = ok.groupby("learner")["test_steps"].max()
        return {learner: int(last[learner]) for learner in requested.index
                if learner in last.index and last[learner] < requested[learner]}

    def _short_curve_note(self) -> str:
        """A sentence naming the learners whose curve ends early, or nothing."""
        short = self.short_curves()
        if not short:
            return ""
        described = [f"{learner} (no test-time adaptation: a single point at step 0)" if last == 0
                     else f"{learner} (at most {last} steps)" for learner, last in short.items()]
        return (" Curves that end before the protocol's last step (that is their final step; – at the steps they lack): "
                f"{', '.join(described)}.")

    def ranked(self, suite: str, setting: str) -> list[str]:
        """The learners with results, best final mean first."""
        _, lower_is_better = self.orientation(suite)
        means = {learner: self.curve(suite, setting, learner)["mean"].iloc[-1]
                 for learner in self.learners(suite, setting) if self.status_note(suite, setting, learner) is None}
        finite = {learner: mean for learner, mean in means.items() if np.isfinite(mean)}
        order = sorted(finite, key=lambda learner: finite[learner], reverse=not lower_is_better)
        return order + [learner for learner in means if learner not in finite]

    def comparisons(self, suite: str, setting: str) -> dict[str, Comparison]:
        """Each learner with results but the best, tested against the best."""
        ranked = self.ranked(suite, setting)
        if not ranked:
            return {}
        best = self.final_metric(suite, setting, ranked[0])
        return {learner: paired_comparison(best, self.final_metric(suite, setting, learner)) for learner in ranked[1:]}

    # -- tables ------------------------------------------------------------------------------------

    def accuracy_table(self) -> Table:
        columns = ["suite", "setting", "learner", "mean ± 95% CI", "median", "vs best (Wilcoxon)", "non-finite", "episodes"]
        table = Table("Accuracy", columns, [], note=(
            "Metric after the final adaptation step over all test episodes and seeds (↑ higher is better, "
            "↓ lower is better). The best learner is in bold; every other learner is compared with it on the "
            "same episodes by Wilcoxon's signed-rank test, n.s. = not significantly different at p < 0.05."
            + self._short_curve_note()))
        for suite, setting in self.settings():
            metric_name, lower_is_better = self.orientation(suite)
            ranked, comparisons = self.ranked(suite, setting), self.comparisons(suite, setting)
            for learner in self.learners(suite, setting):
                row = [suite, setting, learner]
                note = self.status_note(suite, setting, learner)
                if note:
                    table.rows.append(row + [note, "–", "–", "–", "–"])
                    continue
                final = self.curve(suite, setting, learner).iloc[-1]
                if learner == ranked[0]:
                    versus = "best"
                    table.bold.add((len(table.rows), 3))
                else:
                    versus = format_p(comparisons[learner])
                table.rows.append(row + [
                    f"{metric_name} {'↓' if lower_is_better else '↑'} {format_number(final['mean'])} ± {format_number(final['ci95'], 2)}",
                    format_number(final["median"]), versus,
                    f"{int(final['nonfinite'])}/{int(final['n'])}" + (
                        f" (finite mean {format_number(final['finite_mean'])})" if final["nonfinite"] else ""),
                    str(int(final["n"])),
                ])
        return table

    def speed_table(self) -> Table:
        columns = ["suite", "setting", "learner", *(f"step {step}" for step in SPEED_STEPS), "steps to 90%", "adapt ms/episode"]
        table = Table("Adaptation speed", columns, [], note=(
            "Mean metric after each number of adaptation steps; steps to 90% of the final gain over step 0, "
            "read off the median curve (0 for a single-point curve); wall-clock milliseconds to adapt one test "
            "episode through all steps." + self._short_curve_note()))
        for suite, setting, learner in self._groups():
            row = [suite, setting, learner]
            note = self.status_note(suite, setting, learner)
            if note:
                table.rows.append(row + [note] + ["–"] * (len(columns) - 4))
                continue
            _, lower_is_better = self.orientation(suite)
            curve = self.curve(suite, setting, learner)
            by_step = curve.set_index("step")["mean"]
            medians = curve["median"].tolist()
            reached = steps_to_fraction_of_gain(medians if lower_is_better else [-m for m in medians])
            info = self.ok_cells(suite, setting, learner)
            table.rows.append(row + [format_number(by_step.get(step, math.nan)) for step in SPEED_STEPS] + [
                "–" if reached is None else str(reached), format_number(info["adapt_ms_per_episode"].mean())])
        return table

    def cost_table(self) -> Table:
        columns = ["suite", "setting", "learner", "meta-train s", "tasks seen", "peak RSS MiB", "peak CUDA MiB", "device"]
        table = Table("Cost", columns, [], note=(
            "Meta-training wall-clock seconds and tasks (mean over seeds); peak resident memory of the process "
            "and the CUDA allocator's peak during the cell (the largest over seeds)."))
        for suite, setting, learner in self._groups():
            row = [suite, setting, learner]
            note = self.status_note(suite, setting, learner)
            if note:
                table.rows.append(row + [note, "–", "–", "–", "–"])
                continue
            info = self.ok_cells(suite, setting, learner)
            cuda = info["peak_cuda_mib"].dropna() if "peak_cuda_mib" in info else pd.Series(dtype=float)
            table.rows.append(row + [
                format_number(info["meta_train_seconds"].mean()), f"{int(info['tasks_seen'].mean()):,}",
                format_number(info["peak_rss_mib"].max(), 4), format_number(cuda.max(), 4) if len(cuda) else "–",
                ", ".join(sorted(set(info["device"]))),
            ])
        return table

    def failures_table(self) -> Table:
        """Every failed cell with its error, also where other seeds of its group succeeded."""
        failed = self.cells[self.cells["status"] == "failed"]
        rows = [[cell["suite"], cell["setting"], cell["learner"], str(cell["seed"]), str(cell.get("error", ""))]
                for _, cell in failed.iterrows()]
        return Table("Failed cells", ["suite", "setting", "learner", "seed", "error"], rows, note=(
            "Cells that raised, reported a non-finite training loss or ran past the cell timeout; their tracebacks "
            "are in cells/<cell>.json. The tables above summarise the other seeds of each group."))

    def tables(self) -> list[Table]:
        failures = self.failures_table()
        return [self.accuracy_table(), self.speed_table(), self.cost_table(), *([failures] if failures.rows else [])]

    def _groups(self) -> list[tuple[str, str, str]]:
        return [(suite, setting, learner) for suite, setting in self.settings() for learner in self.learners(suite, setting)]

    # -- provenance and machine-readable summary ----------------------------------------------------

    def cell_counts(self) -> str:
        statuses = self.cells["status"].value_counts().to_dict()
        return ", ".join(f"{count} {status}" for status, count in sorted(statuses.items()))

    def provenance(self) -> list[tuple[str, str]]:
        """What produced the run: command, seeds, profile, versions, plugins, git revision, device."""
        config, environment = self.run_info.get("config", {}), self.run_info.get("environment", {})
        libraries = environment.get("libraries", {})
        items = [
            ("command", " ".join(environment.get("command", [])) or "–"),
            ("profile", str(config.get("profile", "–"))),
            ("seeds", f"0..{config['seeds'] - 1}" if "seeds" in config else "–"),
            ("started", str(environment.get("started", "–"))),
            ("status", f"{self.run_info.get('status', '–')} ({self.cell_counts()})"),
            ("metabench", f"{environment.get('metabench', '–')}, git {environment.get('git_revision') or '–'}"),
            ("python", f"{environment.get('python', '–')} on {environment.get('platform', '–')}"),
            ("libraries", ", ".join(f"{name} {version}" for name, version in libraries.items() if version) or "–"),
            ("plugins", ", ".join(f"{name} ({source})" for name, source in environment.get("plugins", {}).items()) or "–"),
            ("device", str(environment.get("device_name", "–"))),
        ]
        return items

    def summary_frame(self) -> pd.DataFrame:
        """Every (suite, setting, learner, step) with n, mean, ci95, median, non-finite count, and at the
        final step the test against the best learner (machine-readable; ``--format csv``)."""
        summary = self.summary.copy()
        summary["final_step"] = summary.groupby(GROUP)["step"].transform("max") == summary["step"]
        summary["vs_best_test"] = summary["vs_best_p_value"] = summary["vs_best_difference"] = None
        for suite, setting in self.settings():
            for learner, comparison in self.comparisons(suite, setting).items():
                where = ((summary["suite"] == suite) & (summary["setting"] == setting)
                         & (summary["learner"] == learner) & summary["final_step"])
                summary.loc[where, ["vs_best_test", "vs_best_p_value", "vs_best_difference"]] = (
                    comparison.test, comparison.p_value, comparison.difference)
        return summary.drop(columns=["std"])
