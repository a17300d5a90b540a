"""Runs that survive, in this process: failing and NaN cells, a cell timeout, Ctrl-C, a full disk, corrupt,
stale and newer run folders, bad flags, a cell resumed from its checkpoint. ``bench.cli.main`` runs each
command as the ``bench`` script would and returns its exit status; what needs real processes (SIGKILL,
worker processes) is in tests/e2e/test_long_runs.py."""
from __future__ import annotations

import errno
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from helpers import TROUBLE, cells_of, interrupt_once_saved, records_of, three_learner_run, trouble_run

from bench import cli, store
from bench.store import RunStore

RUN = three_learner_run(tasks=100)
SMOKE = trouble_run(tasks=20)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    assert cli.main(["run", *RUN, "--out", str(out)]) == 0
    return out


@pytest.fixture
def trouble(install) -> Callable[[str], None]:
    """``trouble(source)``: the plugin module ``source`` installed as the package of the learner ``trouble``."""
    return lambda source: install("trouble", {"trouble_plugin": source}, {"trouble": "trouble_plugin"})


def copy_of(run: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(run, out)
    return out


def test_failing_cells_are_recorded_and_the_rest_are_intact(tmp_path, capsys, trouble):
    trouble(TROUBLE.replace("SLEEP", "0"))
    out = tmp_path / "run"
    assert cli.main(["run", "--learners", "trouble,finetune", *SMOKE, "--out", str(out)]) == 1
    cells = cells_of(out)
    trouble = {(cell["setting"], cell["seed"]): cell for cell in cells.values() if cell["learner"] == "trouble"}
    assert trouble[("K=5", 1)]["status"] == "failed" and trouble[("K=5", 1)]["error"] == "RuntimeError: exploded on purpose"
    assert "Traceback" in trouble[("K=5", 1)]["traceback"] and "meta_train" in trouble[("K=5", 1)]["traceback"]
    assert trouble[("K=10", 0)]["status"] == "failed" and "training loss became nan" in trouble[("K=10", 0)]["error"]
    assert {key for key, cell in trouble.items() if cell["status"] == "ok"} == {("K=5", 0), ("K=10", 1)}
    assert all(cell["status"] == "ok" for cell in cells.values() if cell["learner"] == "finetune")
    records = records_of(out)
    assert len(records) == 6 * 3 * 3  # the six finished cells x 3 episodes x steps 0..2
    report = (out / "report.md").read_text()  # partial failures are listed, each with its error
    failures = report[report.index("## Failed cells"):report.index("## Figures")]
    assert "RuntimeError: exploded on purpose" in failures and "training loss became nan" in failures
    assert json.loads((out / "run.json").read_text())["status"] == "finished with failed cells"
    capsys.readouterr()

    assert cli.main(["run", "--resume", str(out)]) == 1  # failed cells run again, the rest are kept
    assert "8 cells (6 already finished)" in capsys.readouterr().err
    pd.testing.assert_frame_equal(records_of(out), records)


def test_cell_timeout_fails_only_the_slow_cell(tmp_path, trouble):
    """The inline executor; worker processes: tests/e2e/test_long_runs.py."""
    trouble(TROUBLE.replace("SLEEP", "60"))
    out = tmp_path / "run"
    started = time.monotonic()
    assert cli.main(["run", "--learners", "trouble", *SMOKE, "--cell-timeout", "2", "--executor", "inline",
                     "--workers", "2", "--out", str(out)]) == 1
    assert time.monotonic() - started < 55
    slow = next(cell for cell in cells_of(out).values() if (cell["setting"], cell["seed"]) == ("K=10", 1))
    assert slow["status"] == "failed" and slow["error"] == "CellTimeoutError: the cell ran longer than --cell-timeout 2 s"
    assert sum(cell["status"] == "ok" for cell in cells_of(out).values()) == 1  # K=5 seed 0


def test_ctrl_c_keeps_finished_cells_and_says_how_to_resume(tmp_path, capsys, trouble):
    trouble(TROUBLE.replace("SLEEP", "0").replace('raise RuntimeError("exploded on purpose")', "raise KeyboardInterrupt"))
    out = tmp_path / "run"
    assert cli.main(["run", "--learners", "trouble", *SMOKE, "--out", str(out)]) == 130
    assert (f"interrupted: finished cells are kept in {out}; resume with: bench run --resume {out}"
            in capsys.readouterr().err)
    assert len(cells_of(out)) == 1 and json.loads((out / "run.json").read_text())["status"] == "interrupted"


def test_a_cell_interrupted_mid_way_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    """One maml cell, checkpointed every 50 tasks, interrupted right after its first checkpoint (after one
    meta-validation point, before the next): the resumed cell goes on from there and ends with exactly the numbers
    and the validation curve of an uninterrupted cell. (A SIGKILL at any moment, and a resume in a fresh process:
    tests/e2e/test_long_runs.py.)"""
    cell = ("--learners", "maml", "--suites", "sinusoid", "--shots", "5", "--profile", "smoke", "--tasks", "200",
            "--episodes", "5", "--steps", "2", "--val-every", "25", "--no-progress")
    whole = tmp_path / "whole"
    assert cli.main(["run", *cell, "--out", str(whole)]) == 0
    out = tmp_path / "interrupted"
    checkpoint = out / "cells" / "sinusoid__K=5__maml__seed0.checkpoint.pt"
    save_normally = interrupt_once_saved(monkeypatch, checkpoint)
    assert cli.main(["run", *cell, "--checkpoint-every", "50", "--out", str(out)]) == 130
    assert checkpoint.exists() and not cells_of(out), "interrupted before the first checkpoint or after the cell"

    save_normally()
    assert cli.main(["run", "--resume", str(out), "--checkpoint-every", "50"]) == 0
    (metadata,) = cells_of(out).values()
    assert metadata["resumed_from_tasks"] >= 50 and metadata["tasks_seen"] == 200
    assert not checkpoint.exists()  # removed once the cell finished
    pd.testing.assert_frame_equal(records_of(out), records_of(whole))
    resumed, uninterrupted = RunStore(out).validation(), RunStore(whole).validation()
    assert sorted(set(resumed.tasks_seen)) == list(range(25, 201, 25))
    pd.testing.assert_frame_equal(resumed, uninterrupted)


def test_corrupt_and_truncated_cells_are_moved_aside_and_run_again(tmp_path, capsys, uninterrupted):
    out = copy_of(uninterrupted, tmp_path)
    names = sorted(cells_of(out))
    (out / "cells" / f"{names[0]}.json").write_text('{"status": "ok", "cell_')  # cut mid-write by another tool
    records = out / "cells" / f"{names[1]}.csv"
    records.write_text("\n".join(records.read_text().splitlines()[:4]) + "\n")  # truncated
    assert cli.main(["run", "--resume", str(out)]) == 0
    stderr = capsys.readouterr().err
    warnings = [line for line in stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2
    assert f"{names[0]}.json: unreadable or corrupt" in warnings[0] and "the cell runs again" in warnings[0]
    assert f"{names[1]}.json: its records {names[1]}.csv are truncated (3 of 15 rows)" in warnings[1]
    assert "6 cells (4 already finished)" in stderr
    assert len(list((out / "cells" / "corrupt").rglob("*"))) == 1 + 8  # a dated folder, all 4 files of 2 cells
    pd.testing.assert_frame_equal(records_of(out), records_of(uninterrupted))


def test_a_finished_cell_from_another_configuration_is_never_mixed_in(tmp_path, capsys, uninterrupted):
    out = copy_of(uninterrupted, tmp_path)
    path = next((out / "cells").glob("*.json"))
    metadata = json.loads(path.read_text())
    path.write_text(json.dumps({**metadata, "cell_fingerprint": "from-an-older-plugin"}))
    assert cli.main(["run", "--resume", str(out)]) == 2
    stderr = capsys.readouterr().err
    assert "finished cells were run with another configuration or plugin version" in stderr
    assert path.stem in stderr


@pytest.mark.parametrize(("args", "message"), [
    (("--resume", "{out}", "--seeds", "3"), "--resume takes the configuration from {out}/run.json; drop --seeds"),
    (("--resume", "{missing}"), "is not a metabench run folder (no run.json)"),
    (("--executor", "spark"), "unknown executor 'spark'; valid executors: all, inline, processes, ray"),
])
def test_bad_resume_and_executor_flags(tmp_path, capsys, uninterrupted, args, message):
    values = {"out": str(uninterrupted), "missing": str(tmp_path / "nothing")}
    assert cli.main(["run", *[arg.format(**values) for arg in args]]) == 2
    stderr = capsys.readouterr().err
    assert message.format(**values) in stderr and len(stderr.strip().splitlines()) == 1


def test_newer_run_folder_is_refused(tmp_path, capsys, uninterrupted):
    out = copy_of(uninterrupted, tmp_path)
    run_file = out / "run.json"
    run_file.write_text(json.dumps({**json.loads(run_file.read_text()), "format_version": 99}))
    assert cli.main(["run", "--resume", str(out)]) == 2
    assert "was written by a newer metabench (format 99)" in capsys.readouterr().err


def test_full_disk_keeps_finished_cells_and_says_how_to_resume(tmp_path, monkeypatch, capsys, uninterrupted):
    out = tmp_path / "run"
    real_write, writes = store.atomic_write_text, []

    def filling_disk(path, text):
        writes.append(path)
        if len(writes) > 9:  # run.json and two cells (training curve, validation, records, metadata) fit; then full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_write(path, text)

    monkeypatch.setattr(store, "atomic_write_text", filling_disk)
    assert cli.main(["run", *RUN, "--out", str(out)]) == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert "cannot write cell" in message and "No space left on device" in message
    assert f"bench run --resume {out}" in message
    assert len(cells_of(out)) == 2
    monkeypatch.setattr(store, "atomic_write_text", real_write)
    assert cli.main(["run", "--resume", str(out)]) == 0
    pd.testing.assert_frame_equal(records_of(out), records_of(uninterrupted))
