"""The tuning report of a tune folder, ``tuning.md`` and ``tuning.html`` (figures in ``figures/``), read from its
tune.json and study.db: the best configuration per learner and suite setting, every trial, the validation metric
against the trial number, and parameter importances."""
from __future__ import annotations

import base64
import html
import io
import json
import math
import warnings
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402
import optuna  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from bench.render import STYLE, markdown_table  # noqa: E402
from bench.report import Table, format_number  # noqa: E402
from bench.store import atomic_write_bytes, atomic_write_text  # noqa: E402
from bench.tune_study import TUNE_FILE, TUNED_FILE, TrialRow, best_trial, storage_url, trial_rows  # noqa: E402

DPI = 110
MIN_IMPORTANCE_TRIALS = 4
"""Completed trials (with a finite value) needed before parameter importances are estimated."""
IMPORTANCE_NOTE = ("Parameter importances by PED-ANOVA, Optuna's default evaluator (it needs no scikit-learn, unlike "
                   "fANOVA and mean decrease impurity): how differently each parameter is distributed among the best "
                   "10% of a study's completed trials than among all of them, normalised to sum to 1. Pruned and failed "
                   "trials are left out; with few trials the numbers are indicative only.")


def _stem(name: str) -> str:
    return "".join(character if character.isalnum() else "-" for character in name)


def _png(figure: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def _label(study: dict[str, Any]) -> str:
    return f"val {study['metric']} ({'lower' if study['lower_is_better'] else 'higher'} is better)"


def history_figure(study: dict[str, Any], rows: list[TrialRow]) -> bytes:
    """Each trial's objective against its number (completed: dots, pruned: crosses), with the best so far."""
    figure, axes = plt.subplots(figsize=(6, 3.6))
    for state, marker in (("complete", "o"), ("pruned", "x")):
        shown = [(row.index + 1, row.value) for row in rows
                 if row.state == state and row.value is not None and math.isfinite(row.value)]
        if shown:
            axes.plot(*zip(*shown), linestyle="none", marker=marker, label=state)
    best, line = None, []
    for row in rows:
        if row.state == "complete" and row.value is not None and math.isfinite(row.value):
            better = min if study["lower_is_better"] else max
            best = row.value if best is None else better(best, row.value)
        if best is not None:
            line.append((row.index + 1, best))
    if line:
        axes.step(*zip(*line), where="post", color="black", linewidth=1, label="best so far")
    values = np.array([value for _, value in line] + [row.value for row in rows if row.value is not None], dtype=float)
    finite = values[np.isfinite(values)]
    if finite.size and finite.min() > 0 and finite.max() > 100 * finite.min():
        axes.set_yscale("log")
    axes.set(title=f"{study['name']}: trials", xlabel="trial", ylabel=_label(study))
    axes.grid(alpha=0.3)
    axes.legend(frameon=False)
    return _png(figure)


def importance_figure(study: dict[str, Any], importances: dict[str, float]) -> bytes:
    figure, axes = plt.subplots(figsize=(6, 0.5 + 0.4 * len(importances)))
    names = list(importances)[::-1]
    axes.barh(names, [importances[name] for name in names])
    axes.set(title=f"{study['name']}: parameter importances", xlabel="importance (PED-ANOVA)")
    axes.grid(axis="x", alpha=0.3)
    return _png(figure)


def importances(study: optuna.Study) -> tuple[dict[str, float] | None, str]:
    """The study's parameter importances, or None with the reason when too few trials completed."""
    completed = [trial for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                 if math.isfinite(trial.value)]
    if len(completed) < MIN_IMPORTANCE_TRIALS:
        return None, f"too few completed trials ({len(completed)}; {MIN_IMPORTANCE_TRIALS} needed) to estimate them"
    with warnings.catch_warnings():  # Optuna warns that few trials make importances rough: the note says so
        warnings.simplefilter("ignore")
        found = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.PedAnovaImportanceEvaluator())
    return dict(found), f"{len(completed)} completed trials"


def _value(row: TrialRow) -> str:
    return "–" if row.value is None else format_number(row.value, 4)


def _params(params: dict[str, Any]) -> str:
    return ", ".join(f"{key}={format_number(value, 4) if isinstance(value, float) else value}"
                     for key, value in params.items())


def _counts(rows: list[TrialRow]) -> str:
    states = [row.state for row in rows]
    return ", ".join(f"{states.count(state)} {state}" for state in ("complete", "pruned", "failed")
                     if states.count(state))


def tuning_tables(info: dict[str, Any], studies: dict[str, optuna.Study]) -> tuple[list[Table], dict[str, bytes]]:
    """The report's tables and figures (PNG by file name)."""
    config = info["config"]
    best_rows, trial_tables, importance_rows, notes, figures = [], [], [], [], {}
    for spec in info["studies"]:
        study = studies.get(spec["name"])
        if study is None:
            best_rows.append([spec["key"], spec["learner"], spec["note"] or "not run", "", "0", ""])
            continue
        rows = trial_rows(study)
        top = best_trial(study)
        best_rows.append([spec["key"], spec["learner"], format_number(top.value, 4) if top else "no trial completed",
                          str(top.user_attrs["index"] + 1) if top else "", f"{len(rows)} ({_counts(rows)})",
                          _params(top.params) if top else "defaults kept"])
        names = list(spec["searched"])
        trial_tables.append(Table(
            f"Trials: {spec['name']}", ["trial", "state", _label(spec), "tasks seen", *names],
            [[str(row.index + 1), row.state + (f": {row.error}" if row.error else ""), _value(row),
              "–" if row.tasks_seen is None else str(row.tasks_seen),
              *(format_number(row.params[name], 4) if isinstance(row.params.get(name), float)
                else str(row.params.get(name, "–")) for name in names)] for row in rows],
            note=f"Searched: {', '.join(f'{key} in {value}' for key, value in spec['searched'].items())}. "
                 f"The value of a completed trial is its best validation point's score; of a pruned trial, the score "
                 f"of the point where it stopped."))
        figures[f"{_stem(spec['name'])}-trials.png"] = history_figure(spec, rows)
        found, note = importances(study)
        notes.append(f"{spec['name']}: {note}")
        if found is not None:
            importance_rows += [[spec["name"], name, f"{value:.3f}"] for name, value in found.items()]
            figures[f"{_stem(spec['name'])}-importance.png"] = importance_figure(spec, found)
    budget = (f"Every learner had the same budget per suite setting: {config['trials']} trials x "
              f"{config['trial_tasks']} meta-training tasks (seed {config['seed']}), scored on meta-validation "
              f"episodes only (no test episode is read); a trial's objective is its best validation point's score.")
    tables = [Table("Best configuration per learner and suite setting",
                    ["suite setting", "learner", "best val metric", "trial", "trials", "hyper-parameters"],
                    best_rows, note=budget),
              *trial_tables,
              Table("Parameter importances", ["study", "parameter", "importance"], importance_rows,
                    note=IMPORTANCE_NOTE + " " + "; ".join(notes) + ".")]
    return tables, figures


def provenance(folder: Path, info: dict[str, Any]) -> list[tuple[str, str]]:
    env = info.get("environment", {})
    config = info["config"]
    return [("tune folder", str(folder)), ("use it", f"bench run --config {folder / TUNED_FILE}"),
            ("learners", ", ".join(dict.fromkeys(spec["learner"] for spec in info["studies"]))),
            ("suites", ", ".join(dict.fromkeys(spec["suite"] for spec in info["studies"]))),
            ("budget", f"{config['trials']} trials x {config['trial_tasks']} tasks, validation every "
                       f"{config['val_every'] or 'profile default'} tasks on {config['val_episodes'] or 'the profile default'} "
                       f"episodes, {config['workers']} trial(s) at a time"),
            ("sampler", info.get("sampler", "")), ("pruner", info.get("pruner", "")),
            ("status", info.get("status", "")), ("git revision", str(env.get("git_revision"))),
            ("device", str(env.get("device_name")))]


def markdown(title: str, tables: list[Table], figure_names: list[str], facts: list[tuple[str, str]]) -> str:
    parts = [f"# {title}", "", *(markdown_table(table) for table in tables)]
    if figure_names:
        parts += ["## Figures", "", *(f"![{name}](figures/{name})" for name in figure_names), ""]
    parts += ["## Provenance", "", *(f"- **{key}**: {value}" for key, value in facts)]
    return "\n".join(parts) + "\n"


def html_document(title: str, tables: list[Table], figures: dict[str, bytes], facts: list[tuple[str, str]]) -> str:
    escape = html.escape
    body = [f"<h1>{escape(title)}</h1>"]
    for table in tables:
        head = "".join(f"<th>{escape(column)}</th>" for column in table.columns)
        rows = "".join("<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in row) + "</tr>" for row in table.rows)
        body += [f"<h2>{escape(table.title)}</h2>", f"<p class=\"note\">{escape(table.note)}</p>",
                 f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"]
    if figures:
        body.append("<h2>Figures</h2>")
        body += [f"<figure><img alt=\"{escape(name)}\" src=\"data:image/png;base64,"
                 f"{base64.b64encode(png).decode('ascii')}\"></figure>" for name, png in figures.items()]
    body.append("<h2>Provenance</h2><dl>" + "".join(f"<dt>{escape(key)}</dt><dd>{escape(value)}</dd>"
                                                    for key, value in facts) + "</dl>")
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{escape(title)}</title>"
            f"<style>{STYLE}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n")


def write_tuning_report(folder: Path) -> None:
    """Write tuning.md, tuning.html and figures/ of the tune in ``folder`` (also a partial one)."""
    info = json.loads((folder / TUNE_FILE).read_text())
    storage = storage_url(folder)
    names = set(optuna.study.get_all_study_names(storage))
    studies = {spec["name"]: optuna.load_study(study_name=spec["name"], storage=storage)
               for spec in info["studies"] if spec["name"] in names}
    tables, figures = tuning_tables(info, studies)
    title = f"metabench tuning: {', '.join(info['config']['suites'])}"
    facts = provenance(folder, info)
    (folder / "figures").mkdir(exist_ok=True)
    for name, png in figures.items():
        atomic_write_bytes(folder / "figures" / name, png)
    atomic_write_text(folder / "tuning.md", markdown(title, tables, list(figures), facts))
    atomic_write_text(folder / "tuning.html", html_document(title, tables, figures, facts))
