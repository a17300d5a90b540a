"""Aggregation of per-episode records into the summary tables (pandas in, tabulate out).

Statistics, over all episodes of all seeds of a cell group (suite, setting, learner):
mean and 95% confidence interval ``1.96 * std / sqrt(n)``; the median; the count of non-finite
episodes (divergence is reported, not hidden) and, where there are any, the mean over the finite
episodes, labelled as such. Steps to 90% of the final gain are read off the median curve, which one
diverging episode cannot move.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from tabulate import tabulate

GROUP = ["suite", "setting", "learner"]
SPEED_STEPS = (0, 1, 2, 5, 10)
Z_95 = 1.96


def _finite_mean(values: pd.Series) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if len(finite) else math.nan


def summarize(records: pd.DataFrame) -> pd.DataFrame:
    """One row per (suite, setting, learner, step): n, mean, ci95, median, nonfinite, finite_mean."""
    grouped = records.groupby([*GROUP, "step"], sort=False)["metric"]
    with np.errstate(invalid="ignore"):
        summary = grouped.agg(
            n="size",
            mean="mean",
            std=lambda values: values.std(ddof=1),
            median="median",
            nonfinite=lambda values: int((~np.isfinite(values)).sum()),
            finite_mean=_finite_mean,
        ).reset_index()
    summary["ci95"] = Z_95 * summary["std"] / np.sqrt(summary["n"])
    return summary


def steps_to_fraction_of_gain(curve: list[float], fraction: float = 0.9) -> int | None:
    """First step whose improvement over step 0 reaches ``fraction`` of the final step's improvement.

    ``curve`` is oriented so that lower is better. None when the final step improves nothing.
    """
    gains = [curve[0] - value for value in curve]
    final = gains[-1]
    if not np.isfinite(final) or final <= 0:
        return None
    return next(step for step, gain in enumerate(gains) if gain >= fraction * final)


def _format(value: float, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:.3e}"


def _mean_ci(row: pd.Series) -> str:
    return f"{_format(row['mean'])} ± {_format(row['ci95'], 2)}"


class Report:
    """Summary tables of one run, from its records and cell metadata."""

    def __init__(self, records: pd.DataFrame, cells: list[dict[str, Any]]) -> None:
        self.cells = pd.DataFrame(cells).sort_values(["suite", "setting_index", "learner", "seed"])
        self.summary = summarize(records) if len(records) else pd.DataFrame()

    def _cell_info(self, suite: str, setting: str, learner: str) -> pd.DataFrame:
        cells = self.cells
        return cells[(cells["suite"] == suite) & (cells["setting"] == setting) & (cells["learner"] == learner)]

    def _groups(self) -> list[tuple[str, str, str]]:
        return list(dict.fromkeys(zip(self.cells["suite"], self.cells["setting"], self.cells["learner"])))

    def _orientation(self, suite: str) -> tuple[str, bool]:
        ok = self.cells[(self.cells["suite"] == suite) & (self.cells["status"] == "ok")]
        if ok.empty:
            return "metric", True
        return str(ok["metric_name"].iloc[0]), bool(ok["lower_is_better"].iloc[0])

    def _status_note(self, suite: str, setting: str, learner: str) -> str | None:
        """'n/a (reason)' or 'failed (error)' when no cell of the group succeeded."""
        info = self._cell_info(suite, setting, learner)
        if (info["status"] == "ok").any():
            return None
        first = info.iloc[0]
        return f"{first['status']}: {first.get('error', '')}"

    def accuracy_rows(self) -> list[dict[str, Any]]:
        rows = []
        for suite, setting, learner in self._groups():
            metric_name, lower_is_better = self._orientation(suite)
            column = f"{metric_name} {'↓' if lower_is_better else '↑'} (mean ± 95% CI)"
            row: dict[str, Any] = {"suite": suite, "setting": setting, "learner": learner}
            note = self._status_note(suite, setting, learner)
            if note:
                rows.append({**row, column: note})
                continue
            curve = self._curve(suite, setting, learner)
            final = curve.iloc[-1]
            rows.append({
                **row,
                column: _mean_ci(final),
                "median": _format(final["median"]),
                "non-finite": f"{int(final['nonfinite'])}/{int(final['n'])}",
                "mean of finite": _format(final["finite_mean"]) if final["nonfinite"] else "–",
                "step": int(final["step"]),
                "episodes": int(final["n"]),
            })
        return rows

    def _curve(self, suite: str, setting: str, learner: str) -> pd.DataFrame:
        s = self.summary
        return s[(s["suite"] == suite) & (s["setting"] == setting) & (s["learner"] == learner)].sort_values("step")

    def speed_rows(self) -> list[dict[str, Any]]:
        rows = []
        for suite, setting, learner in self._groups():
            row: dict[str, Any] = {"suite": suite, "setting": setting, "learner": learner}
            note = self._status_note(suite, setting, learner)
            if note:
                rows.append({**row, "step 0": note})
                continue
            _, lower_is_better = self._orientation(suite)
            curve = self._curve(suite, setting, learner)
            by_step = curve.set_index("step")
            for step in SPEED_STEPS:
                row[f"step {step}"] = _format(by_step["mean"].get(step, math.nan))
            medians = curve["median"].tolist()
            reached = steps_to_fraction_of_gain(medians if lower_is_better else [-m for m in medians])
            info = self._cell_info(suite, setting, learner)
            info = info[info["status"] == "ok"]
            row.update({
                "steps to 90%": "–" if reached is None else reached,
                "adapt ms/episode": _format(info["adapt_ms_per_episode"].mean()),
                "meta-train s": _format(info["meta_train_seconds"].mean()),
                "tasks seen": int(info["tasks_seen"].mean()),
                "peak RSS MiB": _format(info["peak_rss_mib"].max(), 4),
            })
            rows.append(row)
        return rows

    def tables(self, table_format: str = "github") -> str:
        """Both summary tables, with headings, in ``table_format`` (tabulate's names)."""
        statuses = self.cells["status"].value_counts().to_dict()
        notes = ", ".join(f"{count} {status}" for status, count in sorted(statuses.items()))
        parts = [
            "## Accuracy (metric after the final adaptation step; ↓ lower is better, ↑ higher is better)",
            tabulate(self.accuracy_rows(), headers="keys", tablefmt=table_format),
            "## Adaptation speed (mean metric after each step; steps to 90% of the final gain on the median curve)",
            tabulate(self.speed_rows(), headers="keys", tablefmt=table_format),
            f"Cells: {notes}.",
        ]
        return "\n\n".join(parts) + "\n"
