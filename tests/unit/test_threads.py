"""How a CPU run uses the cores (issue 18): one torch thread for a small network, small cells side by side in worker
processes by default, the machine's load recorded per cell and a busy machine named in the report."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from helpers import finished_cell
from bench_plugins.suites.miniimagenet import MiniImageNet
from bench_plugins.suites.omniglot import Omniglot
from bench_plugins.suites.sinusoid import Sinusoid

from bench import cli, machine_load, session
from bench.cells import CellMetadata, CellStatus
from bench.config import RunConfig
from bench.grid import plan
from bench.report import Report
from bench.runner import CellWork
from bench.session import Execution, resolve_auto_executor
from bench.threads import SMALL_NETWORK_WEIGHTS, cell_threads, network_weights, side_by_side_workers

CPU, K10 = torch.device("cpu"), Sinusoid().settings()[1]


def test_the_sinusoid_mlp_is_small_and_the_conv4s_and_resnet12_are_not():
    omniglot, mini = Omniglot(), MiniImageNet()
    assert network_weights(Sinusoid(), K10) == 1_761 < SMALL_NETWORK_WEIGHTS
    assert network_weights(omniglot, omniglot.settings()[0]) == 112_261
    mini.backbone_name = "conv4-32"
    assert network_weights(mini, mini.settings()[0]) == 32_901 > SMALL_NETWORK_WEIGHTS
    mini.backbone_name = "resnet12"
    assert network_weights(mini, mini.settings()[0]) > 10_000_000


def test_a_small_network_gets_one_thread_a_large_one_all_it_has():
    assert cell_threads(1_761, 8) == 1
    assert cell_threads(112_261, 8) == 8 and cell_threads(112_261, 1) == 1


@pytest.mark.parametrize("networks, groups, cores, workers", [
    ([1_761], 12, 2, 2),            # small cells: one worker per core
    ([1_761], 12, 16, 12),          # no more workers than groups
    ([1_761], 1, 2, 1),             # a single group: nothing to put beside it
    ([1_761, 112_261], 12, 2, 1),  # a Conv-4 gains nothing beside another: it takes the cores itself
    ([1_761], 12, 1, 1),            # one core
])
def test_small_cells_run_side_by_side_one_worker_per_core(networks, groups, cores, workers):
    assert side_by_side_workers(networks, groups, cores) == workers


def test_auto_runs_a_cpu_grid_of_small_cells_in_processes_and_anything_else_inline(registry, monkeypatch):
    monkeypatch.setattr(session, "cpu_cores", lambda: 4)
    cells = plan(RunConfig(seeds=1, learners=["maml", "anil", "finetune"], suites=["sinusoid"], shots=[10]), registry)
    auto = Execution("auto")
    assert resolve_auto_executor(auto, cells, RunConfig(), CPU) == Execution("processes", workers=3)
    assert resolve_auto_executor(Execution("auto", workers=2), cells, RunConfig(), CPU).workers == 2
    assert resolve_auto_executor(auto, cells[:1], RunConfig(), CPU).executor == "inline"
    assert resolve_auto_executor(auto, cells, RunConfig(), torch.device("cuda")).executor == "inline"
    assert resolve_auto_executor(Execution("inline"), cells, RunConfig(), CPU) == Execution("inline")


def test_the_load_is_the_mean_runnable_threads_but_the_sampler(tmp_path, monkeypatch):
    loadavg = tmp_path / "loadavg"
    monkeypatch.setattr(machine_load, "LOADAVG", loadavg)
    loadavg.write_text("0.50 0.40 0.30 4/300 12345\n")
    assert machine_load.runnable_threads() == 3
    with machine_load.MachineLoad(interval=0.01) as load:
        pass
    assert load.samples and load.mean == 3
    assert machine_load.is_busy(3.0, 2, 10.0) and not machine_load.is_busy(2.5, 2, 10.0)
    assert not machine_load.is_busy(None, 2, 10.0) and not machine_load.is_busy(3.0, 2, 1.0)  # too short to judge


def test_a_cell_runs_on_the_threads_its_network_gets_and_records_the_load(registry):
    config = RunConfig(seeds=1, learners=["anil"], suites=["sinusoid"], shots=[10], tasks=50, episodes=5, steps=2,
                       val_episodes=0)
    (cell,) = plan(config, registry)
    threads = torch.get_num_threads()
    ((_, metadata, records, *_),) = CellWork(config, "cpu")([cell])
    assert metadata.status is CellStatus.OK and records is not None
    assert metadata.torch_threads == 1 and torch.get_num_threads() == threads  # restored afterwards
    assert metadata.cpu_cores == machine_load.cpu_cores() and metadata.machine_load >= 0


def cell(seed: int, load: float | None) -> CellMetadata:
    finished = finished_cell("sinusoid", "K=10", "maml", test_episodes=1, test_steps=0, machine_load=load,
                             cpu_cores=2, torch_threads=1, metric_name="MSE", lower_is_better=True,
                             meta_train_seconds=5.0, tasks_seen=10)
    return dataclasses.replace(finished, seed=seed, cell_id=f"maml-sinusoid-K=10-{seed}")


def test_the_report_names_cells_timed_on_a_busy_machine():
    import pandas as pd

    records = pd.DataFrame({"suite": "sinusoid", "setting": "K=10", "learner": "maml", "seed": [0, 1], "episode": 0,
                            "step": 0, "metric": [1.0, 2.0]})
    quiet = Report(records, [cell(0, 1.0), cell(1, 2.4)])
    assert quiet.busy_warning == "" and "WARNING" not in quiet.cost_table.note
    assert quiet.cost_table.rows[0][-2:] == ["1", "2.4 / 2"]
    busy = Report(records, [cell(0, 1.0), cell(1, 3.6)])
    assert busy.busy_warning.startswith("1 cell(s) ran on a busy machine") and "maml sinusoid K=10 seed 1" in \
        busy.busy_warning
    assert "WARNING: 1 cell(s) ran on a busy machine" in busy.cost_table.note


@pytest.mark.skipif(machine_load.cpu_cores() < 2, reason="one core: nothing to run side by side")
def test_bench_run_puts_small_cells_side_by_side_by_default(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(session.EXECUTOR_ENV)  # the tests' inline default off: bench run's own default
    out = tmp_path / "run"
    assert cli.main(["run", "--learners", "anil,fomaml", "--suites", "sinusoid", "--shots", "10", "--seeds", "1",
                     "--tasks", "50", "--episodes", "5", "--steps", "2", "--val-episodes", "0", "--no-progress",
                     "--out", str(out)]) == 0
    assert "with the processes executor" in capsys.readouterr().err
    execution = json.loads((out / "run.json").read_text())["environment"]["execution"]
    assert (execution["executor"], execution["asked"]) == ("processes", "auto")
    cells = [json.loads(path.read_text()) for path in (out / "cells").glob("*.json")]
    assert len(cells) == 2 and all(cell["torch_threads"] == 1 and cell["machine_load"] is not None for cell in cells)
