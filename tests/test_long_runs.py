"""Long runs that survive: SIGKILL and resume, failing cells, timeouts, executors, corrupt folders, full disks."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
from helpers import BENCH, run_bench

from bench import cli, store

RUN = ("--learners", "maml,fomaml,finetune", "--suites", "sinusoid", "--shots", "5", "--seeds", "2", "--profile", "smoke",
       "--tasks", "300", "--episodes", "5", "--steps", "2", "--no-progress")
SMOKE = ("--suites", "sinusoid", "--shots", "5,10", "--seeds", "2", "--profile", "smoke", "--tasks", "50",
         "--episodes", "3", "--steps", "2", "--no-progress")

TROUBLE = '''
    import dataclasses, time
    from bench import hookimpl
    from bench.api import Learner

    @dataclasses.dataclass
    class Config:
        pass

    class Trouble(Learner):
        """Raises on K=5 seed 1, reports a NaN loss on K=10 seed 0, sleeps on K=10 seed 1 when asked to."""
        Config = Config

        def meta_train(self, ctx):
            import torch
            where = (ctx.setting.shots, ctx.seed)
            if where == (5, 1):
                raise RuntimeError("exploded on purpose")
            for _ in ctx.batches(10):
                ctx.log(torch.tensor(float("nan") if where == (10, 0) else 1.0))
            if where == (10, 1) and SLEEP:
                time.sleep(SLEEP)

        def adapt(self, support, steps):
            import torch
            for _ in range(steps + 1):
                yield lambda x: torch.zeros_like(x)

    @hookimpl
    def register_learners(register):
        register("trouble", Trouble)
'''


def cells_of(out: Path) -> dict[str, dict]:
    return {path.stem: json.loads(path.read_text()) for path in (out / "cells").glob("*.json")}


def records_of(out: Path) -> pd.DataFrame:
    records = pd.read_csv(out / "records.csv")
    return records.sort_values(["suite", "setting", "learner", "seed", "episode", "step"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    result = run_bench("run", *RUN, "--out", str(out))
    assert result.returncode == 0, result.stderr
    return out


def test_sigkill_then_resume_gives_exactly_the_uninterrupted_cells(tmp_path, uninterrupted):
    out = tmp_path / "run"
    process = subprocess.Popen([BENCH, "run", *RUN, "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while len(list((out / "cells").glob("*.json"))) < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = len(cells_of(out))
    assert 2 <= finished < 6, f"killed after {finished} of 6 cells"

    resumed = run_bench("run", "--resume", str(out))
    assert resumed.returncode == 0, resumed.stderr
    assert f"6 cells ({finished} already finished)" in resumed.stderr
    assert sorted(cells_of(out)) == sorted(cells_of(uninterrupted))
    assert not list(out.rglob("*.tmp"))
    pd.testing.assert_frame_equal(records_of(out), records_of(uninterrupted))  # no duplicates, none lost, same numbers
    assert json.loads((out / "run.json").read_text())["status"] == "finished"


def test_failing_cells_are_recorded_and_the_rest_are_intact(tmp_path, plugin_dist):
    site = plugin_dist("trouble", {"trouble_plugin": TROUBLE.replace("SLEEP", "0")}, {"trouble": "trouble_plugin"})
    out = tmp_path / "run"
    result = run_bench("run", "--learners", "trouble,finetune", *SMOKE, "--out", str(out), pythonpath=[site])
    assert result.returncode == 1, result.stderr
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

    again = run_bench("run", "--resume", str(out), pythonpath=[site])  # failed cells run again, the rest are kept
    assert again.returncode == 1 and "8 cells (6 already finished)" in again.stderr
    pd.testing.assert_frame_equal(records_of(out), records)


@pytest.mark.parametrize("executor", ["inline", "processes"])
def test_cell_timeout_fails_only_the_slow_cell(tmp_path, plugin_dist, executor):
    site = plugin_dist("sleepy", {"sleepy_plugin": TROUBLE.replace("SLEEP", "60")}, {"sleepy": "sleepy_plugin"})
    out = tmp_path / "run"
    started = time.monotonic()
    result = run_bench("run", "--learners", "trouble", *SMOKE, "--cell-timeout", "3", "--executor", executor,
                       "--workers", "2", "--out", str(out), pythonpath=[site])
    assert time.monotonic() - started < 55
    assert result.returncode == 1, result.stderr
    slow = next(cell for cell in cells_of(out).values() if (cell["setting"], cell["seed"]) == ("K=10", 1))
    assert slow["status"] == "failed" and slow["error"] == "CellTimeoutError: the cell ran longer than --cell-timeout 3 s"
    assert sum(cell["status"] == "ok" for cell in cells_of(out).values()) == 1  # K=5 seed 0


@pytest.mark.parametrize("executor", ["processes", "ray"])
def test_executors_give_identical_results(tmp_path, uninterrupted, executor):
    if executor == "ray":
        pytest.importorskip("ray", reason="the ray extra is not installed")
    out = tmp_path / "run"
    result = run_bench("run", *RUN, "--executor", executor, "--workers", "2", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert f"with the {executor} executor" in result.stderr
    pd.testing.assert_frame_equal(records_of(out), records_of(uninterrupted))
    assert json.loads((out / "run.json").read_text())["environment"]["execution"]["executor"] == executor


def test_corrupt_and_truncated_cells_are_moved_aside_and_run_again(tmp_path, uninterrupted):
    out = tmp_path / "run"
    subprocess.run(["cp", "-r", str(uninterrupted), str(out)], check=True)
    names = sorted(cells_of(out))
    (out / "cells" / f"{names[0]}.json").write_text('{"status": "ok", "cell_')  # cut mid-write by another tool
    records = out / "cells" / f"{names[1]}.csv"
    records.write_text("\n".join(records.read_text().splitlines()[:4]) + "\n")  # truncated
    result = run_bench("run", "--resume", str(out))
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2
    assert f"{names[0]}.json: unreadable or corrupt" in warnings[0] and "the cell runs again" in warnings[0]
    assert f"{names[1]}.json: its records {names[1]}.csv are truncated (3 of 15 rows)" in warnings[1]
    assert "6 cells (4 already finished)" in result.stderr
    assert len(list((out / "cells" / "corrupt").rglob("*"))) == 1 + 4  # a dated folder with both files of both cells
    pd.testing.assert_frame_equal(records_of(out), records_of(uninterrupted))


def test_a_finished_cell_from_another_configuration_is_never_mixed_in(tmp_path, uninterrupted):
    out = tmp_path / "run"
    subprocess.run(["cp", "-r", str(uninterrupted), str(out)], check=True)
    path = next((out / "cells").glob("*.json"))
    metadata = json.loads(path.read_text())
    path.write_text(json.dumps({**metadata, "cell_fingerprint": "from-an-older-plugin"}))
    result = run_bench("run", "--resume", str(out))
    assert result.returncode == 2
    assert "finished cells were run with another configuration or plugin version" in result.stderr
    assert path.stem in result.stderr


@pytest.mark.parametrize(("args", "message"), [
    (("--resume", "{out}", "--seeds", "3"), "--resume takes the configuration from {out}/run.json; drop --seeds"),
    (("--resume", "{missing}"), "is not a metabench run folder (no run.json)"),
    (("--executor", "spark"), "unknown executor 'spark'; valid executors: all, inline, processes, ray"),
])
def test_bad_resume_and_executor_flags(tmp_path, uninterrupted, args, message):
    values = {"out": str(uninterrupted), "missing": str(tmp_path / "nothing")}
    result = run_bench("run", *[arg.format(**values) for arg in args])
    assert result.returncode == 2
    assert message.format(**values) in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_newer_run_folder_is_refused(tmp_path, uninterrupted):
    out = tmp_path / "run"
    subprocess.run(["cp", "-r", str(uninterrupted), str(out)], check=True)
    run_file = out / "run.json"
    run_file.write_text(json.dumps({**json.loads(run_file.read_text()), "format_version": 99}))
    result = run_bench("run", "--resume", str(out))
    assert result.returncode == 2 and "was written by a newer metabench (format 99)" in result.stderr


def test_full_disk_keeps_finished_cells_and_says_how_to_resume(tmp_path, monkeypatch, capsys, uninterrupted):
    out = tmp_path / "run"
    real_write, writes = store.atomic_write_text, []

    def filling_disk(path, text):
        writes.append(path)
        if len(writes) > 5:  # run.json and two cells (records + metadata each) fit, then the disk is full
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


def test_ctrl_c_keeps_finished_cells_and_says_how_to_resume(tmp_path, plugin_dist):
    site = plugin_dist("interrupts", {"interrupts_plugin": TROUBLE.replace("SLEEP", "0").replace(
        'raise RuntimeError("exploded on purpose")', "raise KeyboardInterrupt")}, {"interrupts": "interrupts_plugin"})
    out = tmp_path / "run"
    result = run_bench("run", "--learners", "trouble", *SMOKE, "--out", str(out), pythonpath=[site])
    assert result.returncode == 130
    assert f"interrupted: finished cells are kept in {out}; resume with: bench run --resume {out}" in result.stderr
    assert len(cells_of(out)) == 1 and json.loads((out / "run.json").read_text())["status"] == "interrupted"


def test_a_cell_killed_mid_way_resumes_from_its_checkpoint(tmp_path):
    """One long maml cell, checkpointed every 500 tasks, killed after a checkpoint: the resumed cell goes on
    from there and ends with exactly the numbers of an uninterrupted cell."""
    cell = ("--learners", "maml", "--suites", "sinusoid", "--shots", "5", "--profile", "smoke", "--tasks", "4000",
            "--episodes", "5", "--steps", "2", "--no-progress")
    whole = tmp_path / "whole"
    assert run_bench("run", *cell, "--out", str(whole)).returncode == 0
    out = tmp_path / "killed"
    process = subprocess.Popen([BENCH, "run", *cell, "--checkpoint-every", "500", "--out", str(out)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = out / "cells" / "sinusoid__K=5__maml__seed0.checkpoint.pt"
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert checkpoint.exists() and not cells_of(out), "killed before the first checkpoint or after the cell"

    resumed = run_bench("run", "--resume", str(out), "--checkpoint-every", "500")
    assert resumed.returncode == 0, resumed.stderr
    (metadata,) = cells_of(out).values()
    assert metadata["resumed_from_tasks"] >= 500 and metadata["tasks_seen"] == 4000
    assert not checkpoint.exists()  # removed once the cell finished
    pd.testing.assert_frame_equal(records_of(out), records_of(whole))
