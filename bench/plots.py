"""The report's figures (matplotlib, PNG): per suite setting, the adaptation curves with 95% CI bands (the
val-chosen steps marked), the metric against wall-clock adaptation time, the result at the val-chosen steps as
bars with CI whiskers, and, where the run recorded meta-validation or training curves, the learning curves
(meta-training loss and meta-val metric against tasks seen, the selected points marked)."""
from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
from matplotlib.colors import to_hex  # noqa: E402
from matplotlib.ticker import ScalarFormatter  # noqa: E402
import numpy as np  # noqa: E402

from bench.report import Report  # noqa: E402

DPI = 110


def _png(figure: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def _color(report: Report, learner: str) -> str:
    """One colour per learner across every figure of a report: matplotlib's default cycle for up to 10 learners,
    ``tab20`` (20 distinct colours) for more, repeating only beyond 20."""
    learners = sorted({cell.learner for cell in report.cells})
    index = learners.index(learner)
    return f"C{index}" if len(learners) <= 10 else to_hex(plt.get_cmap("tab20")(index % 20))


def _axis_label(report: Report, suite: str) -> str:
    metric_name, lower_is_better = report.orientation(suite)
    return f"{metric_name} ({'lower' if lower_is_better else 'higher'} is better)"


LOG_SCALE_RANGE = 100.0
"""Positive values spanning more than this factor (e.g. a diverging learner beside converged ones) get a log axis."""


ROW_OF_NAMES = 6
"""Learner names that fit side by side under a bar chart, or in a legend over a line chart; more are slanted, or
the legend goes beside the axes."""


def _decorate(axes: plt.Axes, title: str, xlabel: str, ylabel: str) -> None:
    """Labels, grid, legend, and a log axis where the plotted values span more than ``LOG_SCALE_RANGE``."""
    values = np.concatenate([np.asarray(line.get_ydata(), dtype=float) for line in axes.get_lines()] or [np.empty(0)])
    finite = values[np.isfinite(values)]
    if finite.size and finite.min() > 0 and finite.max() > LOG_SCALE_RANGE * finite.min():
        axes.set_yscale("log")
    axes.set(title=title, xlabel=xlabel, ylabel=ylabel)
    axes.grid(alpha=0.3)
    handles = axes.get_legend_handles_labels()[0]
    if len(handles) > ROW_OF_NAMES:  # a legend this long would cover the curves: beside the axes
        axes.legend(frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    elif handles:
        axes.legend(frameon=False)


def _line_chart(figure: plt.Figure, axes: plt.Axes, title: str, xlabel: str, ylabel: str) -> bytes:
    _decorate(axes, title, xlabel, ylabel)
    return _png(figure)


def _single_point(axes: plt.Axes, x: float, curve, label: str, color: str) -> None:
    """A learner with no test-time adaptation: one marker with its 95% CI as a whisker."""
    axes.errorbar([x], curve["mean"].to_numpy(), yerr=curve["ci95"].to_numpy(), marker="D", markersize=7,
                  capsize=4, linestyle="none", label=f"{label} (no adaptation)", color=color)


LONG_CURVE_RATIO = 4
"""Where one curve goes on for more than this factor of the steps of the shortest (not single-point) one, the step axis
is linear up to the shortest's last step and logarithmic beyond (so that both stay readable)."""


def _step_axis(axes: plt.Axes, lasts: list[int]) -> str:
    """A symmetric-log step axis for curves of very different lengths (``LONG_CURVE_RATIO``); its label."""
    lasts = [last for last in lasts if last > 0]
    if not lasts or max(lasts) <= LONG_CURVE_RATIO * min(lasts):
        return "adaptation steps"
    axes.set_xscale("symlog", linthresh=min(lasts), linscale=1.5)
    ticks = [0] + [step * 10**power for power in range(len(str(max(lasts)))) for step in (1, 2, 5)]
    axes.set_xticks([tick for tick in ticks if tick <= max(lasts)])
    axes.xaxis.set_major_formatter(ScalarFormatter())
    return f"adaptation steps (linear to {min(lasts)}, logarithmic beyond)"


def adaptation_curves(report: Report, suite: str, setting: str) -> bytes:
    """Each learner's mean curve with its 95% CI band, a dot at each step it was scored after, the val-chosen steps
    circled; curves of very different lengths on a step axis logarithmic past the shortest (``_step_axis``)."""
    figure, axes = plt.subplots(figsize=(6, 3.8))
    xlabel = _step_axis(axes, [group.last_step for group in report.rankings[suite, setting]])
    for group in report.rankings[suite, setting]:
        curve, color = group.curve, _color(report, group.learner)
        if len(curve) == 1:
            _single_point(axes, 0, curve, group.learner, color)
            continue
        axes.plot(curve["step"], curve["mean"], marker="o", markersize=3, label=group.learner, color=color)
        axes.fill_between(curve["step"], curve["mean"] - curve["ci95"], curve["mean"] + curve["ci95"],
                          color=color, alpha=0.15, linewidth=0)
        chosen = curve[curve["step"].isin(group.selected_steps)]
        axes.plot(chosen["step"], chosen["mean"], marker="o", markersize=9, markerfacecolor="none", linestyle="none",
                  color=color)
    return _line_chart(figure, axes, f"{suite} {setting}: adaptation (mean, 95% CI; ○ val-chosen step)",
                       xlabel, _axis_label(report, suite))


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
    finals = [group.result for group in ranked]
    figure, axes = plt.subplots(figsize=(max(6.0, 0.5 * len(ranked)), 3.2))
    positions = np.arange(len(ranked))
    axes.bar(positions, [row["mean"] for row in finals], yerr=[row["ci95"] for row in finals], capsize=4,
             color=[_color(report, group.learner) for group in ranked])
    slanted = len(ranked) > ROW_OF_NAMES  # more names than fit side by side: slanted, so that none overlaps
    axes.set_xticks(positions, [group.learner for group in ranked], rotation=35 if slanted else 0,
                    ha="right" if slanted else "center", rotation_mode="anchor")
    axes.set(title=f"{suite} {setting}: at the val-chosen step (mean, 95% CI)", ylabel=_axis_label(report, suite))
    axes.grid(axis="y", alpha=0.3)
    return _png(figure)


def learning_curves(report: Report, suite: str, setting: str) -> bytes:
    """Meta-training loss (left: the training curve where the cells recorded one, else the mean loss between
    meta-val points) and, where the run has meta-validation, meta-val metric at each point's best step (right)
    against tasks seen, means over seeds; a star marks each seed's selected point on the meta-val curve."""
    curves = report.learning_curves[suite, setting]
    validated = any(len(curve.points) for curve in curves)
    figure, axes = plt.subplots(1, 1 + validated, figsize=(11 if validated else 6, 3.8), squeeze=False)
    loss_axes = axes[0, 0]
    for curve in curves:
        loss, color = curve.training, _color(report, curve.learner)
        if loss is None:
            loss_axes.plot(curve.points["tasks_seen"], curve.points["train_loss"], marker="o", markersize=3,
                           label=curve.learner, color=color)
        else:
            loss_axes.plot(loss["tasks_seen"], loss["train_loss"], label=curve.learner, color=color)
    _decorate(loss_axes, f"{suite} {setting}: meta-training loss", "tasks seen", "training loss (mean over seeds)")
    if not validated:
        return _png(figure)
    val_axes = axes[0, 1]
    for curve in curves:
        points, color = curve.points, _color(report, curve.learner)
        val_axes.plot(points["tasks_seen"], points["metric"], marker="o", markersize=3, label=curve.learner,
                      color=color)
        selected = points[points["tasks_seen"].isin(curve.selected_tasks)]
        val_axes.plot(selected["tasks_seen"], selected["metric"], marker="*", markersize=14, linestyle="none",
                      color=color, markeredgecolor="black", markeredgewidth=0.6)
    _decorate(val_axes, f"{suite} {setting}: meta-validation (★ selected)", "tasks seen",
              f"{_axis_label(report, suite)}, best step")
    return _png(figure)


def figures(report: Report) -> dict[str, bytes]:
    """PNG bytes by file name, for every suite setting with at least one learner's results; the learning curves
    where the setting has meta-validation rows or training curves."""
    charts = {"curves": adaptation_curves, "time": metric_versus_time, "bars": final_bars}
    result = {}
    for suite, setting in report.settings:
        if not report.rankings[suite, setting]:
            continue
        stem = "".join(character if character.isalnum() else "-" for character in f"{suite}-{setting}")
        for kind, chart in charts.items():
            result[f"{stem}-{kind}.png"] = chart(report, suite, setting)
        if (suite, setting) in report.learning_curves:
            result[f"{stem}-learning.png"] = learning_curves(report, suite, setting)
    return result
