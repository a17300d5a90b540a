"""The "what adapts" table (issue 16): for each of the five learners in the given run folders, what it adapts, how many numbers
that is, its result at the val-chosen step, how fast it adapts and what an episode costs. Reads the runs' own
report tables (the numbers of ``bench report``), joins them per suite setting and learner, prints Markdown.

usage: python benchmarks/what_adapts.py RUN_DIR [RUN_DIR ...] > what-adapts.md
"""
from __future__ import annotations

import sys
from pathlib import Path

from tabulate import tabulate

from bench.report import Report, Table
from bench.store import RunStore

WHAT_ADAPTS = {
    "maml": "every weight (SGD from the meta-learned initialisation)",
    "adaptation-layer": "a context vector (CAVIA)",
    "anil": "the head only",
    "metasgd": "every weight, with meta-learned per-weight rates",
    "protonet": "nothing (class prototypes)",
}
KEY = ["suite", "setting", "learner"]


def _rows(table: Table, wanted: list[str]) -> dict[tuple[str, ...], dict[str, str]]:
    index = {column: position for position, column in enumerate(table.columns)}
    return {tuple(row[index[column]] for column in KEY): {column: row[index[column]] for column in wanted}
            for row in table.rows}


def what_adapts(run_dirs: list[Path]) -> str:
    """One Markdown table over every run's groups, then each run's command and budget."""
    rows, sources = [], []
    for run_dir in run_dirs:
        store = RunStore(run_dir)
        report = Report(store.records(), store.cells(), store.run_info(), store.validation())
        accuracy = _rows(report.accuracy_table, ["mean ± 95% CI", "val-chosen step", "± 95% CI over seeds"])
        speed = _rows(report.speed_table, ["steps to 90%", "adapt ms/episode", "adapted params"])
        for key, values in accuracy.items():
            if key[2] not in WHAT_ADAPTS:  # a run with more learners (e.g. every one on omniglot→digits)
                continue
            rows.append([*key, WHAT_ADAPTS[key[2]], speed[key]["adapted params"], *values.values(),
                         speed[key]["steps to 90%"], speed[key]["adapt ms/episode"]])
        command = store.run_info().get("environment", {}).get("command", "?")
        sources.append(f"- `{run_dir}`: `{' '.join(command) if isinstance(command, list) else command}`")
    headers = [*KEY, "what adapts", "adapted numbers", "result (mean ± 95% CI over episodes)", "val-chosen step",
               "± 95% CI over seeds", "steps to 90% of the gain", "adapt ms/episode"]
    return "\n".join([tabulate(rows, headers=headers, tablefmt="github"), "", "Runs:", *sources, ""])


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__.strip().splitlines()[-1])
    print(what_adapts([Path(argument) for argument in sys.argv[1:]]))
