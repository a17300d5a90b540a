"""The report's figures (matplotlib, PNG): per suite setting, the adaptation curves with 95% CI bands,
the metric against wall-clock adaptation time, and the final metric as bars with CI whiskers."""
from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402

from bench.report import Report  # noqa: E402

DPI = 110


def _png(figure: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def _color(report: Report, learner: str) -> str:
    """One colour per learner across every figure of a report."""
    learners = sorted({cell.learner for cell in report.cells})
    return f"C{learners.index(learner) % 10}"


def _axis_label(report: Report, suite: str) -> str:
    metric_name, lower_is_better = report.orientation(suite)
    return f"{metric_name} ({'lower' if lower_is_better else 'higher'} is better)"


LOG_SCALE_RANGE = 100.0
"""Positive values spanning more than this factor (e.g. a diverging learner beside converged ones) get a log axis."""


def _line_chart(figure: plt.Figure, axes: plt.Axes, title: str, xlabel: str, ylabel: str) -> bytes:
    values = np.concatenate([np.asarray(line.get_ydata(), dtype=float) for line in axes.get_lines()] or [np.empty(0)])
    finite = values[np.isfinite(values)]
    if finite.size and finite.min() > 0 and finite.max() > LOG_SCALE_RANGE * finite.min():
        axes.set_yscale("log")
    axes.set(title=title, xlabel=xlabel, ylabel=ylabel)
    axes.grid(alpha=0.3)
    axes.legend(frameon=False)
    return _png(figure)


def _single_point(axes: plt.Axes, x: float, curve, label: str, color: str) -> None:
    """A learner with no test-time adaptation: one marker with its 95% CI as a whisker."""
    axes.errorbar([x], curve["mean"].to_numpy(), yerr=curve["ci95"].to_numpy(), marker="D", markersize=7,
                  capsize=4, linestyle="none", label=f"{label} (no adaptation)", color=color)


def adaptation_curves(report: Report, suite: str, setting: str) -> bytes:
    figure, axes = plt.subplots(figsize=(6, 3.8))
    for group in report.rankings[suite, setting]:
        curve, color = group.curve, _color(report, group.learner)
        if len(curve) == 1:
            _single_point(axes, 0, curve, group.learner, color)
            continue
        axes.plot(curve["step"], curve["mean"], marker="o", markersize=3, label=group.learner, color=color)
        axes.fill_between(curve["step"], curve["mean"] - curve["ci95"], curve["mean"] + curve["ci95"],
                          color=color, alpha=0.15, linewidth=0)
    return _line_chart(figure, axes, f"{suite} {setting}: adaptation (mean, 95% CI)", "adaptation steps",
                       _axis_label(report, suite))


def metric_versus_time(report: Report, suite: str, setting: str) -> bytes:
    """Step k of a learner is placed at k/K of its measured time to adapt one episode through all K steps; a
    learner with no test-time adaptation (a single point) at its whole measured time, its prediction's cost."""
    figure, axes = plt.subplots(figsize=(6, 3.8))
    for group in report.rankings[suite, setting]:
        curve, milliseconds, color = group.curve, group.adapt_ms_per_episode, _color(report, group.learner)
        if len(curve) == 1:
            _single_point(axes, milliseconds, curve, group.learner, color)
            continue
        steps = curve["step"].to_numpy()
        axes.plot(steps / max(steps.max(), 1) * milliseconds, curve["mean"], marker="o", markersize=3,
                  label=group.learner, color=color)
    return _line_chart(figure, axes, f"{suite} {setting}: metric vs. adaptation time",
                       "ms per episode (steps spread evenly)", _axis_label(report, suite))


def final_bars(report: Report, suite: str, setting: str) -> bytes:
    ranked = report.rankings[suite, setting]
    finals = [group.curve.iloc[-1] for group in ranked]
    figure, axes = plt.subplots(figsize=(6, 3.2))
    positions = np.arange(len(ranked))
    axes.bar(positions, [row["mean"] for row in finals], yerr=[row["ci95"] for row in finals], capsize=4,
             color=[_color(report, group.learner) for group in ranked])
    axes.set_xticks(positions, [group.learner for group in ranked])
    axes.set(title=f"{suite} {setting}: after the final step (mean, 95% CI)", ylabel=_axis_label(report, suite))
    axes.grid(axis="y", alpha=0.3)
    return _png(figure)


def figures(report: Report) -> dict[str, bytes]:
    """PNG bytes by file name, for every suite setting with at least one learner's results."""
    charts = {"curves": adaptation_curves, "time": metric_versus_time, "bars": final_bars}
    result = {}
    for suite, setting in report.settings:
        if not report.rankings[suite, setting]:
            continue
        stem = "".join(character if character.isalnum() else "-" for character in f"{suite}-{setting}")
        for kind, chart in charts.items():
            result[f"{stem}-{kind}.png"] = chart(report, suite, setting)
    return result
