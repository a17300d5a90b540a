"""``bench tune``: the same trial budget for every learner on meta-validation, resumable, deterministic; its
tuned.toml read by ``bench run --config``; never a test episode."""
from __future__ import annotations

import json
import math
import sys
import tomllib
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from bench.cli import main
from bench.config import ConfigError, resolve_run_config
from bench.grid import plan
from bench.tune import toml_value
from bench.tune_study import INDEX, ValidationPruner, storage_url
from helpers import TINY


BUDGET = ("--suites", "sinusoid", "--shots", "5", "--trial-tasks", "120", "--val-every", "30", "--val-episodes", "5",
          "--no-progress")


@pytest.fixture
def tiny(install):
    install("metabench-tiny", {"tiny_plugin": TINY}, {"tiny": "tiny_plugin"})


def tune(out: Path, *flags: str, trials: int = 6, learners: str = "tiny") -> int:
    return main(["tune", "--learners", learners, *BUDGET, "--trials", str(trials), "--out", str(out), *flags])


def study(folder: Path, name: str = "tiny @ sinusoid K=5") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage_url(folder))


def trials_of(folder: Path, name: str = "tiny @ sinusoid K=5") -> list[tuple[int, str, float | None, dict]]:
    """The counted trials of a study: (index, state, value, params), by index."""
    trials = [trial for trial in study(folder, name).get_trials() if not trial.user_attrs.get("interrupted")]
    return sorted((trial.user_attrs[INDEX], trial.state.name, trial.value, trial.params) for trial in trials)


def test_tune_writes_a_report_and_a_tuned_toml_that_bench_run_reads_as_it_is(tiny, tmp_path, capsys):
    folder = tmp_path / "tune"
    assert tune(folder, learners="tiny,fixed") == 0
    stdout, stderr = capsys.readouterr()
    assert f"bench run --config {folder / 'tuned.toml'}" in stdout
    assert "fixed @ sinusoid K=5: nothing to tune: defaults kept" in stderr
    trials = trials_of(folder)
    assert [index for index, *_ in trials] == list(range(6))
    best = study(folder).best_trial
    tuned = tomllib.loads((folder / "tuned.toml").read_text())
    assert tuned["learners"] == ["tiny", "fixed"] and tuned["suites"] == ["sinusoid"] and tuned["shots"] == [5]
    assert tuned["tuned"] == {"study": str(folder), "trials": 6, "trial_tasks": 120, "hyperparameters": {
        "tiny": {"sinusoid K=5": best.params}, "fixed": {"sinusoid K=5": {}}}}
    assert "fixed @ sinusoid K=5" not in optuna.study.get_all_study_names(storage_url(folder))  # 0 trials, no study

    report = (folder / "tuning.md").read_text()
    assert "## Best configuration per learner and suite setting" in report and "6 trials x 120" in report
    assert report.count("| complete ") + report.count("| pruned ") == 6  # every trial, one row each
    assert "nothing to tune: defaults kept" in report and "## Parameter importances" in report
    assert {path.name for path in (folder / "figures").iterdir()} == {
        "tiny---sinusoid-K-5-trials.png", "tiny---sinusoid-K-5-importance.png"}
    assert (folder / "tuning.html").read_text().count("<img") == 2
    assert json.loads((folder / "tune.json").read_text())["status"] == "finished"

    run = tmp_path / "run"
    assert main(["run", "--config", str(folder / "tuned.toml"), "--profile", "smoke", "--tasks", "60",
                 "--episodes", "3", "--steps", "2", "--no-progress", "--out", str(run)]) == 0
    hyperparameters = json.loads((run / "run.json").read_text())["config"]["hyperparameters"]
    assert {key: hyperparameters["tiny @ sinusoid K=5"][key] for key in best.params} == best.params
    assert hyperparameters["fixed @ sinusoid K=5"] == {"lr": 0.1, "step_size": 0.5, "meta_batch": 10, "shrink": False}


def test_the_same_seed_asks_the_same_parameters(tiny, tmp_path):
    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        assert tune(tmp_path / name, "--seed", seed, trials=5) == 0
    assert trials_of(tmp_path / "a") == trials_of(tmp_path / "b")
    assert [p for *_, p in trials_of(tmp_path / "a")] != [p for *_, p in trials_of(tmp_path / "c")]


class Killed(BaseException):
    """Stands for SIGKILL: nothing of the tune runs after it (no clean-up, the trial stays RUNNING)."""


@pytest.mark.parametrize("workers, killed_in", [(1, 5), (2, 6)])  # 2: the second trial of a batch, the first told
def test_a_killed_tune_resumes_to_the_uninterrupted_study(tiny, tmp_path, monkeypatch, capsys, workers, killed_in):
    import bench.tune

    assert tune(tmp_path / "whole", "--workers", str(workers), trials=7) == 0
    real = bench.tune.train_and_validate
    calls = []

    def killed(cell, config, device, *, on_point, **options):
        calls.append(cell)

        def point(validation_point):
            if len(calls) == killed_in and validation_point.tasks_seen >= 60:  # after two points were reported
                raise Killed
            return on_point(validation_point)

        return real(cell, config, device, on_point=point, **options)

    monkeypatch.setattr(bench.tune, "train_and_validate", killed)
    folder = tmp_path / "killed"
    with pytest.raises(Killed):
        tune(folder, "--workers", str(workers), trials=7)
    (left,) = study(folder).get_trials(states=(TrialState.RUNNING,))
    assert left.user_attrs[INDEX] == killed_in - 1 and left.intermediate_values  # killed mid-trial
    monkeypatch.setattr(bench.tune, "train_and_validate", real)
    capsys.readouterr()
    assert main(["tune", "--resume", str(folder)]) == 0
    assert "interrupted trial(s) run again with the same parameters" in capsys.readouterr().err
    assert trials_of(folder) == trials_of(tmp_path / "whole")  # the same count, parameters, states and values
    assert study(folder).best_value == study(tmp_path / "whole").best_value
    assert (tomllib.loads((folder / "tuned.toml").read_text())["tuned"]["hyperparameters"]
            == tomllib.loads((tmp_path / "whole" / "tuned.toml").read_text())["tuned"]["hyperparameters"])


def test_ctrl_c_leaves_a_resumable_tune(tiny, tmp_path, monkeypatch, capsys):
    import bench.tune

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(bench.tune, "train_and_validate", interrupted)
    folder = tmp_path / "tune"
    assert tune(folder, trials=3) == 130
    assert f"resume with: bench tune --resume {folder}" in capsys.readouterr().err
    assert json.loads((folder / "tune.json").read_text())["status"] == "interrupted"


def test_a_failing_trial_counts_and_the_tune_goes_on(tiny, tmp_path, monkeypatch, capsys):
    import bench.tune

    real, calls = bench.tune.train_and_validate, []

    def second_fails(cell, *args, **kwargs):
        calls.append(cell)
        if len(calls) == 2:
            raise RuntimeError("diverged on purpose")
        return real(cell, *args, **kwargs)

    monkeypatch.setattr(bench.tune, "train_and_validate", second_fails)
    assert tune(tmp_path / "tune", trials=3) == 0
    assert [state for _, state, *_ in trials_of(tmp_path / "tune")] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert "RuntimeError: diverged on purpose" in (tmp_path / "tune" / "tuning.md").read_text()


def test_too_few_trials_for_importances_says_so(tiny, tmp_path):
    assert tune(tmp_path / "tune", trials=3) == 0
    assert "too few completed trials (3; 4 needed)" in (tmp_path / "tune" / "tuning.md").read_text()
    assert not list((tmp_path / "tune" / "figures").glob("*importance*"))


def test_tuning_never_samples_a_test_episode(tiny, tmp_path):
    assert main(["tune", "--learners", "tiny", *BUDGET[2:], "--suites", "watched-sinusoid", "--trials", "3",
                 "--out", str(tmp_path / "tune")]) == 0
    sampled = [split for splits in sys.modules["tiny_plugin"].SAMPLED for split in splits]
    assert {"train", "val"} <= set(sampled) and "test" not in sampled


@pytest.mark.parametrize("flags, message", [
    ((), "--trials is required"),
    (("--trials", "2", "--learners", "misnamed"), "search_space names 'learning_rate'"),
    (("--trials", "2", "--resume", "somewhere"), "drop --learners, --suites, --shots, --trials"),
    (("--trials", "2", "--set", "tiny.lr"), "expected LEARNER.KEY=VALUE"),
])
def test_bad_tune_input_is_one_line_and_exit_status_2(tiny, tmp_path, capsys, flags, message):
    learners = () if "--learners" in flags else ("--learners", "tiny")
    assert main(["tune", *learners, "--suites", "sinusoid", "--shots", "5", "--trial-tasks", "50", *flags,
                 "--out", str(tmp_path / "tune")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("bench tune: error:")


@pytest.mark.parametrize("flags", [("--trials", "0"), ("--trial-tasks", "x"), ("--val-episodes", "0")])
def test_bad_tune_numbers_are_refused_by_the_parser(capsys, flags):
    with pytest.raises(SystemExit) as exit_:
        main(["tune", "--trials", "2", "--trial-tasks", "10", *flags])
    assert exit_.value.code == 2 and capsys.readouterr().err.count("\n") == 1


def test_a_set_key_is_fixed_not_searched(tiny, tmp_path):
    assert tune(tmp_path / "tune", "--set", "tiny.lr=0.05", trials=3) == 0
    assert all("lr" not in params for *_, params in trials_of(tmp_path / "tune"))
    tuned = tomllib.loads((tmp_path / "tune" / "tuned.toml").read_text())
    assert tuned["set"] == {"tiny": {"lr": "0.05"}}


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_the_run_applies_tuned_values_over_suite_defaults_and_under_set(tiny, tmp_path):
    from bench.plugins import load_plugins

    config = _write(tmp_path / "tuned.toml", '''
learners = ["tiny"]
[tuned]
study = "results/tune-x"
trials = 4
trial_tasks = 100
[tuned.hyperparameters.tiny]
"sinusoid K=5" = {lr = 0.25, meta_batch = 7}
''')
    cells = plan(resolve_run_config(config, {}, ["tiny.meta_batch=9"]), load_plugins())
    by_setting = {cell.setting.name: cell.hyperparameters for cell in cells if cell.seed == 0}
    assert (by_setting["K=5"].lr, by_setting["K=5"].meta_batch) == (0.25, 9)  # tuned, then --set on top
    assert (by_setting["K=10"].lr, by_setting["K=10"].meta_batch) == (0.1, 9)  # not tuned for K=10: the default


@pytest.mark.parametrize("table, message", [
    ('[tuned]\nstudy = "x"\ntrials = 4\nhyperparameters = {}', "missing key trial_tasks"),
    ('[tuned]\nstudy = "x"\ntrials = 4\ntrial_tasks = 10\nseed = 1\nhyperparameters = {}', "unknown key seed"),
    ('[tuned]\nstudy = "x"\ntrials = -1\ntrial_tasks = 10\nhyperparameters = {}', "trials: expected an integer"),
    ('tuned = 3', "expected a table"),
    ('[tuned]\nstudy = "x"\ntrials = 4\ntrial_tasks = 10\n[tuned.hyperparameters]\ntiny = 0.1',
     "hyperparameters.tiny: expected a table"),
])
def test_a_malformed_tuned_table_is_a_clear_config_error(tmp_path, table, message):
    with pytest.raises(ConfigError, match="tuned: .*" + message.replace(".", r"\.")):
        resolve_run_config(_write(tmp_path / "c.toml", table), {}, [])


def test_a_tuned_value_the_learner_does_not_have_names_the_tuned_table(tiny, tmp_path):
    from bench.plugins import load_plugins

    config = _write(tmp_path / "tuned.toml", '[tuned]\nstudy = "x"\ntrials = 1\ntrial_tasks = 1\n'
                                             '[tuned.hyperparameters.tiny]\n"sinusoid K=5" = {momentum = 0.9}\n')
    with pytest.raises(ConfigError, match=r"tuned \(sinusoid K=5\) tiny.momentum: learner 'tiny' has no"):
        plan(resolve_run_config(config, {"learners": ["tiny"]}, []), load_plugins())


def test_toml_values_read_back_as_written():
    values = {"a": 1e-05, "b": -3, "c": True, "d": 'quote " and \\ and é', "e": [1, 2], "f": math.inf,
              "sinusoid K=5": {"x": 0.5}}
    text = "\n".join(f"{json.dumps(key)} = {toml_value(value)}" for key, value in values.items())
    assert tomllib.loads(text) == values


def _completed(index: int, values: dict[int, float]) -> optuna.trial.FrozenTrial:
    return optuna.trial.create_trial(value=min(values.values()), intermediate_values=values,
                                     user_attrs={INDEX: index},
                                     distributions={}, params={})


@pytest.mark.parametrize("mine, step, startup, batch, pruned", [
    (5.0, 20, 3, 1, True),     # worse than the median (3.0) of the earlier trials at 20 tasks
    (2.0, 20, 3, 1, False),    # better than it
    (5.0, 20, 4, 1, False),    # fewer completed trials than the start-up number
    (5.0, 5, 3, 1, False),     # before the warm-up
    (5.0, 20, 3, 4, False),    # the three others are in the same batch of 4: not compared with
])
def test_the_pruner_compares_with_the_median_of_earlier_batches(mine, step, startup, batch, pruned):
    study = optuna.create_study(pruner=ValidationPruner(startup, warmup_tasks=10, batch=batch))
    for index, value in enumerate((2.0, 3.0, 4.0)):
        study.add_trial(_completed(index, {10: 9.0, 20: value, 30: value - 1}))
    trial = study.ask()
    trial.set_user_attr(INDEX, 3)
    trial.report(9.0, 10)
    trial.report(mine, step)
    assert trial.should_prune() is pruned


def test_an_interrupted_trial_runs_again_with_its_index_and_parameters():
    from optuna.distributions import FloatDistribution

    from bench.tune import requeue_interrupted

    study, space = optuna.create_study(), {"x": FloatDistribution(0, 1)}
    running = study.ask(space)
    running.set_user_attr(INDEX, 0)
    study.ask(space)  # killed while it was being asked: no index yet, asked anew later
    assert requeue_interrupted(study) == 2
    assert [(trial.state, trial.user_attrs["interrupted"]) for trial in study.trials[:2]] == [(TrialState.FAIL, True)] * 2
    again = study.ask(space)
    assert (again.params, again.user_attrs[INDEX]) == (running.params, 0)
    assert requeue_interrupted(study) == 1 and study.ask(space).params == running.params  # killed again: the same


def test_a_population_gives_the_trials_of_one_trial_at_a_time(tmp_path, capsys):
    """``--population 3`` meta-trains each batch of three maml trials (only the learning rates searched) as one
    vectorised model: the same parameters asked, the same values and states as three workers running them one at a
    time (float rounding)."""
    fixed = ("--learners", "maml", "--set", "maml.inner_steps=1")
    assert main(["tune", *fixed, *BUDGET, "--trials", "6", "--population", "3", "--out", str(tmp_path / "pop")]) == 0
    assert main(["tune", *fixed, *BUDGET, "--trials", "6", "--workers", "3", "--out", str(tmp_path / "one")]) == 0
    together, alone = (trials_of(tmp_path / name, "maml @ sinusoid K=5") for name in ("pop", "one"))
    assert [(index, state, params) for index, state, _, params in together] == [
        (index, state, params) for index, state, _, params in alone]
    assert [value for *_, value, _ in together] == pytest.approx([value for *_, value, _ in alone], rel=1e-4)
    assert json.loads((tmp_path / "pop" / "tune.json").read_text())["config"]["population"] == 3
    populations = [trial.user_attrs.get("population")
                   for trial in study(tmp_path / "pop", "maml @ sinusoid K=5").trials]
    assert populations == [3] * 6  # trained together, not fallen back to one at a time
    assert "one of 3 trained together" in capsys.readouterr().err


def test_populations_share_every_hyperparameter_that_is_not_continuous():
    from optuna.distributions import FloatDistribution, IntDistribution

    from bench.tune import TrialItem, populations

    space = {"lr": FloatDistribution(1e-4, 1e-2, log=True), "steps": IntDistribution(1, 5)}
    items = [TrialItem(None, {"lr": lr, "steps": steps}, "study", index)
             for index, (lr, steps) in enumerate([(1e-3, 1), (2e-3, 2), (3e-3, 1), (4e-3, 1), (5e-3, 2)])]
    groups = [[item.trial_id for item in group] for group in populations(items, space, 2)]
    assert groups == [[0, 2], [3], [1, 4]]
