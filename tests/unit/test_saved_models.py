"""``bench run --save-models`` and ``bench eval``: saved models change no number, a re-evaluation at more steps and
episodes repeats the run's numbers on the episodes they share, and a bad model or run folder is one line, exit 2,
with nothing touched."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import TROUBLE, cells_of, records_of

from bench import cli

MAML = "sinusoid__K=5__maml__seed0"
RUN = ("run", "--learners", "maml,finetune", "--suites", "sinusoid", "--shots", "5", "--seeds", "1", "--profile",
       "smoke", "--tasks", "50", "--episodes", "5", "--steps", "2", "--executor", "inline", "--no-progress")
KEYS = ["suite", "setting", "learner", "seed", "episode", "step"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """The same run with and without ``--save-models``."""
    root = tmp_path_factory.mktemp("runs")
    assert cli.main([*RUN, "--save-models", "--out", str(root / "saved")]) == 0
    assert cli.main([*RUN, "--out", str(root / "plain")]) == 0
    return {"saved": root / "saved", "plain": root / "plain"}


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` by relative path, with its bytes."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_saved_models_change_no_number_and_hold_the_cell_they_belong_to(runs):
    saved, plain = runs["saved"], runs["plain"]
    pd.testing.assert_frame_equal(records_of(saved), records_of(plain))
    cells = cells_of(saved)
    assert {cell: data["cell_fingerprint"] for cell, data in cells.items()} == {
        cell: data["cell_fingerprint"] for cell, data in cells_of(plain).items()}
    run_json = {name: json.loads((folder / "run.json").read_text()) for name, folder in runs.items()}
    assert run_json["saved"]["config"]["save_models"] is True and run_json["plain"]["config"]["save_models"] is False
    assert run_json["saved"]["config_hash"] == run_json["plain"]["config_hash"]  # not part of the run's identity
    assert not list((plain / "cells").glob("*.model.pt"))
    for cell_id, metadata in cells.items():
        model = torch.load(saved / "cells" / f"{cell_id}.model.pt", weights_only=True)
        info = model["info"]
        assert info["cell_fingerprint"] == metadata["cell_fingerprint"] and info["cell_id"] == cell_id
        assert info["learner"]["name"] == metadata["learner"]
        assert info["learner"]["version"] == metadata["learner_plugin"]["version"]
        assert info["hyperparameters"] == metadata["hyperparameters"]
        assert info["setting"]["shots"] == 5 and info["selection"]["step"] == metadata["selected_step"]
        assert all(isinstance(tensor, torch.Tensor) for tensor in _tensors(model["state"])) and _tensors(model["state"])


def _tensors(state: object) -> list:
    if isinstance(state, dict):
        return [tensor for value in state.values() for tensor in _tensors(value)]
    if isinstance(state, (list, tuple)):
        return [tensor for value in state for tensor in _tensors(value)]
    return [state] if isinstance(state, torch.Tensor) else []


def test_eval_at_more_steps_and_episodes_repeats_the_run_on_the_episodes_they_share(runs, tmp_path, capsys):
    saved, out = runs["saved"], tmp_path / "eval"
    before = snapshot(saved)
    assert cli.main(["eval", str(saved), "--out", str(out), "--steps", "4", "--episodes", "8", "--no-progress"]) == 0
    assert snapshot(saved) == before
    original, again = records_of(saved), records_of(out)
    assert len(again) == 2 * 8 * 5 and again["episode"].max() == 7 and again["step"].max() == 4
    shared = original.merge(again, on=KEYS, suffixes=("", "_again"))
    assert len(shared) == len(original) == 2 * 5 * 3
    assert (shared["metric"] == shared["metric_again"]).all()  # exactly: the same model, the same episodes
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "finished" and info["config"]["steps"] == 4 and info["config"]["episodes"] == 8
    source = info["config"]["evaluated_from"]
    assert source["run"] == str(saved)
    assert source["models"] == {cell_id: {"file": f"cells/{cell_id}.model.pt",
                                          "sha256": hashlib.sha256(before[f"cells/{cell_id}.model.pt"]).hexdigest()}
                                for cell_id in cells_of(saved)}
    for cell_id, cell in cells_of(out).items():  # read at the run's val-chosen step
        assert cell["selected_step"] == cells_of(saved)[cell_id]["selected_step"]
        assert cell["test_steps"] == 4 and cell["test_episodes"] == 8 and "bench eval" in cell["notes"][-1]
    assert (out / "report.md").exists()
    capsys.readouterr()
    assert cli.main(["runs", "--results", str(tmp_path)]) == 0
    assert "eval" in capsys.readouterr().out
    records = records_of(out)
    assert cli.main(["eval", str(saved), "--out", str(out), "--steps", "4", "--episodes", "8", "--no-progress"]) == 0
    assert "(2 already finished)" in capsys.readouterr().err  # the same command again goes on from what is written
    pd.testing.assert_frame_equal(records_of(out), records)
    assert cli.main(["compare", str(saved), str(out)]) == 2  # other steps: not comparable, as any two such runs
    assert "adaptation steps" in capsys.readouterr().err


def _truncate(run: Path) -> str:
    path = run / "cells" / f"{MAML}.model.pt"
    path.write_bytes(path.read_bytes()[:200])
    return f"{path} is truncated or corrupt"


def _other_version(run: Path) -> str:
    path = run / "cells" / f"{MAML}.model.pt"
    model = torch.load(path, weights_only=True)
    installed = model["info"]["learner"]["version"]
    model["info"]["learner"]["version"] = "0.0.1-other"
    torch.save(model, path)
    return (f"cell {MAML}: its saved model is refused: its learner plugin 'maml' was "
            f"{model['info']['learner']['distribution']} 0.0.1-other, {model['info']['learner']['distribution']} "
            f"{installed} is installed")


def _other_hyperparameters(run: Path) -> str:
    path = run / "cells" / f"{MAML}.model.pt"
    model = torch.load(path, weights_only=True)
    model["info"]["hyperparameters"]["inner_lr"] *= 2
    torch.save(model, path)
    return f"cell {MAML}: its saved model is refused: its hyper-parameters differ now in inner_lr"


def _other_fingerprint(run: Path) -> str:
    path = run / "cells" / f"{MAML}.model.pt"
    model = torch.load(path, weights_only=True)
    now, model["info"]["cell_fingerprint"] = model["info"]["cell_fingerprint"], "0" * 16
    torch.save(model, path)
    return (f"cell {MAML}: its saved model is refused: its cell fingerprint was {'0' * 16}, the run's configuration "
            f"now gives {now} (budget, selection, data folder or backbone)")


@pytest.mark.parametrize("damage", [_truncate, _other_version, _other_hyperparameters, _other_fingerprint])
def test_a_bad_model_is_one_line_and_touches_nothing(runs, tmp_path, capsys, damage):
    run, out = tmp_path / "run", tmp_path / "eval"
    shutil.copytree(runs["saved"], run)
    expected = damage(run)
    before = snapshot(run)
    capsys.readouterr()
    assert cli.main(["eval", str(run), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"bench eval: error: {expected}") and err.count("\n") == 1
    assert snapshot(run) == before and not out.exists()


def test_fewer_steps_than_a_cells_val_chosen_step_are_refused(runs, tmp_path, capsys):
    """The re-evaluation's curves must reach the step each cell is read at (chosen on meta-validation in the run)."""
    run, out = tmp_path / "run", tmp_path / "eval"
    shutil.copytree(runs["saved"], run)
    meta = run / "cells" / f"{MAML}.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "selected_step": 2}))
    assert cli.main(["eval", str(run), "--out", str(out), "--steps", "1", "--no-progress"]) == 2
    assert capsys.readouterr().err == (f"bench eval: error: --steps 1: cell {MAML} was chosen on meta-validation at "
                                       "step 2, which its curve would not reach; use --steps 2 or more\n")
    assert not out.exists()


def test_a_run_without_saved_models_is_refused(runs, tmp_path, capsys):
    plain, out = runs["plain"], tmp_path / "eval"
    before = snapshot(plain)
    assert cli.main(["eval", str(plain), "--out", str(out)]) == 2
    assert capsys.readouterr().err == (f"bench eval: error: {plain} holds no saved model (cells/*.model.pt) of a "
                                       "finished cell; run it with bench run --save-models\n")
    assert snapshot(plain) == before and not out.exists()


def test_a_learner_without_a_state_is_noted_and_the_run_goes_on(tmp_path, install):
    install("trouble", {"trouble_plugin": TROUBLE.replace("SLEEP", "0")}, {"trouble": "trouble_plugin"})
    out = tmp_path / "run"
    assert cli.main(["run", "--learners", "trouble", *RUN[3:], "--tasks", "20", "--save-models",
                     "--out", str(out)]) == 0
    (cell,) = cells_of(out).values()
    assert cell["status"] == "ok" and any("model not saved" in note and "state_dict() is None" in note
                                          for note in cell["notes"])
    assert not list((out / "cells").glob("*.model.pt"))


def test_eval_on_another_suite_scores_the_saved_models_on_its_episodes(runs, tmp_path, capsys):
    """``--test-suites``: each saved model is also scored on sinusoid-shift's test episodes, as cross-domain cells
    beside the home cells, whose numbers stay the run's; a suite of another kind is one line, nothing written."""
    saved, out = runs["saved"], tmp_path / "shifted"
    assert cli.main(["eval", str(saved), "--out", str(out), "--test-suites", "sinusoid-shift", "--no-progress"]) == 0
    cells = cells_of(out)
    for learner in ("maml", "finetune"):
        cross = cells[f"sinusoid-to-sinusoid-shift__K=5__{learner}__seed0"]
        home = cells_of(saved)[f"sinusoid__K=5__{learner}__seed0"]
        assert cross["status"] == "ok" and cross["test_suite"] == "sinusoid-shift"
        assert cross["selected_step"] == home["selected_step"]  # chosen on the home suite's meta-validation
    records = records_of(out)
    shifted = records[records.suite == "sinusoid→sinusoid-shift"]
    assert len(shifted) == 2 * 5 * 3 and shifted["metric"].notna().all()
    home = records[records.suite == "sinusoid"].reset_index(drop=True)
    pd.testing.assert_frame_equal(home, records_of(saved).reset_index(drop=True))
    assert not (shifted["metric"].to_numpy() == home["metric"].to_numpy()).all()  # other episodes, other numbers
    assert "| sinusoid→sinusoid-shift | K=5" in (out / "report.md").read_text()

    capsys.readouterr()
    refused = tmp_path / "refused"
    assert cli.main(["eval", str(saved), "--out", str(refused), "--test-suites", "digits", "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("bench eval: error: --test-suites digits: "), error
    assert not refused.exists()
