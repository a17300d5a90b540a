"""Write results/reproduction.md: metabench's numbers at the papers' budgets beside the published ones.

usage: python benchmarks/reproduction.py RUN_DIR [RUN_DIR ...] [--published benchmarks/published.toml]
                                         [--out results/reproduction.md] [--note TEXT]

For every row of the published table (benchmarks/published.toml): the run folder that holds the same suite, setting
and learner gives our number — the mean over seeds with the 95% t interval over the seeds' means, at the step chosen
on meta-validation and at the step the paper reports — with its budget, seeds and command; a row no run folder holds
says "not run". The verdict compares our number at the paper's step with the published value and its interval.
Only runs of the ``paper`` profile count: a number from a smaller budget is never put beside a paper's.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shlex
import tomllib
from pathlib import Path

import pandas as pd

from bench.stats import seed_interval


@dataclasses.dataclass(frozen=True)
class Published:
    """One row of benchmarks/published.toml."""

    suite: str
    setting: str
    learner: str
    paper: str
    where: str
    source: str
    value: float | None = None
    interval: float | None = None
    step: int | None = None
    unit: str = ""
    differs: str = ""


@dataclasses.dataclass(frozen=True)
class Ours:
    """Our number for one suite, setting and learner, read from a run folder."""

    run: Path
    tasks: int
    seeds: int
    command: str
    selected: tuple[float, float, str]
    """Mean over seeds, t half-width over seeds, the val-chosen steps."""
    at_step: dict[int, tuple[float, float]]
    """Per test step: mean over seeds and t half-width."""


def read_runs(run_dirs: list[Path]) -> dict[tuple[str, str, str], Ours]:
    """Our numbers, by (suite, setting, learner), from ``paper``-profile run folders (others are refused)."""
    found: dict[tuple[str, str, str], Ours] = {}
    for run in run_dirs:
        meta = json.loads((run / "run.json").read_text())
        config = meta["config"]
        if config["profile"] != "paper":
            raise SystemExit(f"{run}: profile {config['profile']!r}, not 'paper': not a reproduction budget")
        records = pd.read_csv(run / "records.csv")
        summary = pd.read_csv(run / "summary.csv")
        chosen = summary.dropna(subset=["selected_mean"])
        for (suite, setting, learner), group in records.groupby(["suite", "setting", "learner"]):
            row = chosen[(chosen.suite == suite) & (chosen.setting == setting) & (chosen.learner == learner)].iloc[0]
            at_step = {}
            for step, values in group.groupby("step"):
                means, half = seed_interval(values.set_index(["seed", "episode"])["metric"])
                at_step[int(step)] = (sum(means) / len(means), half)
            found[(suite, setting, learner)] = Ours(
                run=run, tasks=config["budgets"][f"{learner} @ {suite} {setting}"]["meta_train_tasks"],
                seeds=group.seed.nunique(), command=shlex.join(["bench", *meta["environment"]["command"][1:]]),
                selected=(row.selected_mean, row.seed_ci95, str(row.selected_steps)), at_step=at_step)
    return found


def number(value: float, half: float | None, scale: float) -> str:
    digits = 2 if scale != 1 else 3
    text = f"{value * scale:.{digits}f}"
    return text if half is None or math.isnan(half) else f"{text} ± {half * scale:.{digits}f}"


def verdict(published: Published, ours: Ours | None, scale: float) -> str:
    if ours is None:
        return "not run"
    if published.value is None:
        return "no published number to compare"
    step = published.step if published.step is not None else max(ours.at_step)
    mean, _ = ours.at_step[min(step, max(ours.at_step))]
    ours_value = mean * scale
    why = f" ({published.differs})" if published.differs else ""
    if published.interval is None:
        return f"no published interval; ours {ours_value - published.value:+.3g} from it{why}"
    low, high = published.value - published.interval, published.value + published.interval
    if low <= ours_value <= high:
        return "within the published interval"
    return f"outside the published interval by {min(abs(ours_value - low), abs(ours_value - high)):.3g}{why}"


def table(rows: list[Published], runs: dict[tuple[str, str, str], Ours]) -> str:
    lines = ["| suite | setting | learner | our budget | ours, val-chosen step | ours at the paper's step | published "
             "| verdict |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        ours = runs.get((row.suite, row.setting, row.learner))
        scale = 100.0 if row.unit == "%" else 1.0
        printed = "" if row.interval is None else f" ± {row.interval:g}"
        published = (f"{row.paper}: **{row.value:g}{printed}**" if row.value is not None
                     else f"{row.paper}: no number") + f" — {row.where}"
        if ours is None:
            budget = chosen = at_step = "not run"
        else:
            budget = f"{ours.tasks:,} tasks, {ours.seeds} seed{'s' if ours.seeds > 1 else ''}"
            mean, half, steps = ours.selected
            chosen = f"{number(mean, half, scale)} (step {steps.strip('[]')})"
            step = min(row.step if row.step is not None else max(ours.at_step), max(ours.at_step))
            at_step = f"{number(*ours.at_step[step], scale)} (step {step})"
        lines.append(f"| {row.suite} | {row.setting} | {row.learner} | {budget} | {chosen} | {at_step} | {published} "
                     f"| {verdict(row, ours, scale)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--published", type=Path, default=Path(__file__).with_name("published.toml"))
    parser.add_argument("--out", type=Path, default=Path("results/reproduction.md"))
    parser.add_argument("--note", default="", help="what the table's readers should know of the rows not run")
    args = parser.parse_args()
    rows = [Published(**row) for row in tomllib.loads(args.published.read_text())["row"]]
    runs = read_runs(args.runs)
    commands = sorted({ours.command for ours in runs.values()})
    sources = "\n".join(f"- {row.paper}, {row.suite} {row.setting}: {row.source}" for row in rows)
    args.out.write_text(
        "# Reproduction: metabench at the papers' budgets beside the published numbers\n\n"
        "Written by `python benchmarks/reproduction.py` from the run folders of `benchmarks/reproduction.sh` "
        "(the `paper` profile: each setting's and each learner's published budget). Ours: mean over seeds ± the 95% t "
        "interval over the seeds' means; the val-chosen step is chosen on meta-validation, the paper's step is the "
        "test step its number is reported at. A published ± is its 95% interval over test tasks, as printed. "
        "Rows without a run say \"not run\": no number from a smaller budget stands in for one. "
        f"{args.note}\n\n"
        f"{table(rows, runs)}\n\nCommands:\n\n" + "\n".join(f"    {command}" for command in commands)
        + f"\n\nSources of the published numbers:\n\n{sources}\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
