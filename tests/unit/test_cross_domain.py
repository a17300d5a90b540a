"""Cross-domain cells (``bench run --test-suites``) and the run-wide ``--backbone``: planned, refused, run, resumed."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from bench_plugins.suites.sinusoid import Sinusoid, SinusoidShift
from helpers import cells_of, records_of

from bench import cli
from bench.config import ConfigError, RunConfig
from bench.errors import DataError
from bench.grid import plan
from bench.plugins import UnknownNameError
from bench.protocol import episodes_fingerprint, evaluate
from bench.runner import HostContext

SMALL = ("--suites", "sinusoid", "--shots", "10", "--tasks", "200", "--episodes", "12", "--steps", "3",
         "--val-episodes", "0", "--seeds", "2", "--no-progress")


def test_each_home_cell_has_a_cross_domain_cell_per_matching_test_suite(registry):
    cells = plan(RunConfig(learners=["maml", "finetune"], suites=["sinusoid"], test_suites=["sinusoid-shift"],
                           profile="smoke", seeds=2), registry)
    homes = [cell for cell in cells if cell.test_suite is None]
    crosses = [cell for cell in cells if cell.test_suite is not None]
    assert len(homes) == len(crosses) == 3 * 2 * 2  # K = 5, 10, 20 x two learners x two seeds
    for cross in crosses:
        assert cross.suite_label == "sinusoid→sinusoid-shift"
        assert cross.cell_id.startswith("sinusoid-to-sinusoid-shift__")
        assert cross.home in homes and cross.test_setting.name == cross.setting.name
        assert cross.hyperparameters == cross.home.hyperparameters and cross.budget == cross.home.budget


@pytest.mark.parametrize(("values", "message"), [
    ({"suites": ["sinusoid-shift"]}, "suite 'sinusoid-shift' is test-only (it has no meta-training split): test on "
                                     "it with --test-suites sinusoid-shift beside --suites SUITE"),
    ({"test_suites": ["sinusoid"]}, "--test-suites sinusoid: it is also meta-trained on (--suites)"),
    ({"test_suites": ["digits"]}, "--test-suites digits: none of its settings (5-way 1-shot, 5-way 5-shot, vary) has the "
                                  "kind, ways and shots of a meta-training suite's: sinusoid (K=5, K=10, K=20)"),
    ({"test_suites": ["nosuch"]}, "unknown suite 'nosuch'"),
    ({"backbone": "resnet12"}, "--backbone resnet12: suite 'sinusoid' does not offer it; it offers: only its "
                               "standard network, no choice"),
])
def test_bad_cross_domain_and_backbone_choices_are_refused_before_any_work(registry, values, message):
    with pytest.raises((ConfigError, UnknownNameError)) as raised:
        plan(RunConfig(learners=["maml"], **{"suites": ["sinusoid"], **values}, profile="smoke"), registry)
    assert message in str(raised.value)


def test_a_test_suite_with_other_input_shapes_is_refused_in_one_line(tmp_path, capsys, install):
    install("wide", {"wide_plugin": '''
        from bench import hookimpl
        from bench_plugins.suites.sinusoid import SinusoidShift

        class Wide(SinusoidShift):
            name = "wide"

            def sample_batch(self, split, setting, seed, indices):
                episode = super().sample_batch(split, setting, seed, indices)
                return episode._replace(support_x=episode.support_x.repeat(1, 1, 2))

        @hookimpl
        def register_suites(register):
            register("wide", Wide)
    '''}, {"wide": "wide_plugin"})
    assert cli.main(["run", "--learners", "maml", *SMALL, "--test-suites", "wide", "--out", str(tmp_path / "r")]) == 2
    error = capsys.readouterr().err
    assert "--test-suites wide: its inputs have shape (2,), the models meta-trained on 'sinusoid' take (1,)" \
        in error
    assert not (tmp_path / "r").exists()


def test_a_cross_domain_cell_scores_its_home_cells_model_on_the_test_suites_episodes(tmp_path):
    out = tmp_path / "run"
    assert cli.main(["run", "--learners", "maml", *SMALL, "--test-suites", "sinusoid-shift", "--out", str(out)]) == 0
    cells, records = cells_of(out), records_of(out)
    cross = cells["sinusoid-to-sinusoid-shift__K=10__maml__seed1"]
    home = cells["sinusoid__K=10__maml__seed1"]
    assert cross["suite"] == "sinusoid→sinusoid-shift" and cross["test_suite"] == "sinusoid-shift"
    assert home["test_suite"] is None and cross["status"] == home["status"] == "ok"
    assert cross["tasks_seen"] == home["tasks_seen"] and cross["selected_step"] == home["selected_step"]
    setting = Sinusoid().settings()[1]
    assert cross["test_episodes_sha256"] == episodes_fingerprint(SinusoidShift(), setting, 1, 12)
    # the same model, meta-trained again here, scored on sinusoid-shift's test episodes: the cell's numbers
    learner_class = cli._load_registry(False).learners["maml"].cls
    learner = learner_class(learner_class.Config())
    learner.meta_train(HostContext(Sinusoid(), setting, 1, 200, torch.device("cpu"), lambda tasks, loss: None))
    expected, _ = evaluate(learner, SinusoidShift(), setting, 1, 12, steps=3, device=torch.device("cpu"))
    shifted = records[(records.suite == "sinusoid→sinusoid-shift") & (records.seed == 1)].sort_values(["episode", "step"])
    np.testing.assert_allclose(shifted.metric.to_numpy().reshape(12, 4), expected, rtol=1e-5)
    own = records[(records.suite == "sinusoid") & (records.seed == 1)]
    assert own.metric.mean() < shifted.metric.mean()  # outside every training range: far worse (amplitudes to 10)
    report = (out / "report.md").read_text()
    assert "| sinusoid→sinusoid-shift | K=10" in report


def test_a_missing_cross_domain_cell_runs_again_and_its_finished_home_cell_is_kept(tmp_path):
    out = tmp_path / "run"
    args = ["run", "--learners", "maml", *SMALL, "--seeds", "1", "--test-suites", "sinusoid-shift", "--out", str(out)]
    assert cli.main(args) == 0
    cells = out / "cells"
    home_file = cells / "sinusoid__K=10__maml__seed0.json"
    home_before, cross_before = home_file.read_text(), records_of(out)
    for suffix in (".json", ".csv"):
        (cells / f"sinusoid-to-sinusoid-shift__K=10__maml__seed0{suffix}").unlink()
    assert cli.main(["run", "--resume", str(out), "--no-progress"]) == 0
    assert home_file.read_text() == home_before  # not rewritten: its model was meta-trained again for the cross cell
    after = records_of(out)
    key = ["suite", "setting", "learner", "seed", "episode", "step"]
    np.testing.assert_allclose(after.sort_values(key).metric, cross_before.sort_values(key).metric, rtol=1e-6)


def test_settings_a_test_suite_has_no_counterpart_of_are_named_in_a_note(registry, staged):
    """omniglot's 20-way settings have no digits counterpart (digits is 5-way): tested on omniglot only."""
    from bench.session import check_cross_domain

    config = RunConfig(learners=["protonet"], suites=["omniglot"], ways=[5, 20], shots=[1], test_suites=["digits"],
                       seeds=1, data_dir=str(staged))
    said: list[str] = []
    check_cross_domain(config, plan(config, registry), said.append)
    assert said == ["note: --test-suites digits has no setting of the kind, ways and shots of omniglot 20-way 1-shot: "
                    "tested on their own suite only"]


def test_a_test_only_suite_refuses_its_other_splits():
    setting = SinusoidShift().settings()[0]
    with pytest.raises(DataError, match="suite 'sinusoid-shift' is test-only: it has no 'train' split"):
        SinusoidShift().sample_episode("train", setting, 0, 0)
    episode = SinusoidShift().sample_batch("test", setting, 0, range(50))
    assert episode.query_x.abs().max() > 5 and episode.query_x.abs().max() <= 10  # x beyond the training [-5, 5]
    amplitude = episode.query_y.abs().amax(dim=(1, 2))
    assert amplitude.max() <= 10 and amplitude.min() > 1  # amplitudes from [5, 10], seen on 100 points each


def test_the_suite_kit_checks_only_the_test_split_of_a_test_only_suite():
    from bench.testing import suite_problems

    assert suite_problems(SinusoidShift()) == []
