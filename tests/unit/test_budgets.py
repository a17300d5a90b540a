"""Budgets per profile, suite setting and learner: the `paper` profile gives each published setting and each
learner's paper its own budget; every other profile gives all learners of a setting one budget."""
from __future__ import annotations

import pytest

from bench.config import PROFILES, RunConfig
from bench.grid import plan


def budgets(registry, **config) -> dict[tuple[str, str, str], int]:
    cells = plan(RunConfig(seeds=1, **config), registry)
    return {(cell.suite.name, cell.setting.name, cell.learner.name): cell.budget.meta_train_tasks for cell in cells}


def test_paper_profile_has_each_published_setting_and_paper_budget(registry):
    found = budgets(registry, profile="paper", learners=["maml", "reptile", "adaptation-layer"],
                    suites=["sinusoid", "omniglot", "miniimagenet"])
    # MAML: 70,000 x 25 on sinusoid; 60,000 iterations at meta-batch 32 (5-way) / 16 (20-way) on Omniglot and
    # 4 (1-shot) / 2 (5-shot) on mini-ImageNet.
    assert found[("sinusoid", "K=10", "maml")] == 70_000 * 25
    assert found[("omniglot", "5-way 1-shot", "maml")] == 60_000 * 32
    assert found[("omniglot", "20-way 1-shot", "maml")] == 60_000 * 16
    assert found[("miniimagenet", "5-way 1-shot", "maml")] == 60_000 * 4
    assert found[("miniimagenet", "5-way 5-shot", "maml")] == 60_000 * 2
    # Learners whose papers used other budgets: Reptile's sine script and README commands, CAVIA's regression code.
    assert found[("sinusoid", "K=10", "reptile")] == 30_000
    assert found[("omniglot", "20-way 1-shot", "reptile")] == 200_000 * 5
    assert found[("miniimagenet", "5-way 1-shot", "reptile")] == 100_000 * 5
    assert found[("sinusoid", "K=10", "adaptation-layer")] == 50_000 * 25
    assert found[("omniglot", "5-way 1-shot", "adaptation-layer")] == 60_000 * 32


@pytest.mark.parametrize("profile", ["smoke", "quick"])
def test_other_profiles_give_every_learner_of_a_setting_one_budget(registry, profile):
    found = budgets(registry, profile=profile, learners=["maml", "reptile", "adaptation-layer"],
                    suites=["sinusoid", "omniglot"])
    for suite, setting in {(suite, setting) for suite, setting, _ in found}:
        assert len({tasks for (s, t, _), tasks in found.items() if (s, t) == (suite, setting)}) == 1
    assert found[("sinusoid", "K=10", "reptile")] == PROFILES[profile].meta_train_tasks


def test_tasks_flag_overrides_every_budget(registry):
    found = budgets(registry, profile="paper", tasks=1234, learners=["maml", "reptile"], suites=["sinusoid"])
    assert set(found.values()) == {1234}


def test_run_json_records_each_cells_budget(registry, tmp_path):
    from bench.session import resolved_config

    config = RunConfig(seeds=1, profile="paper", learners=["maml", "reptile"], suites=["sinusoid"], shots=[10])
    resolved = resolved_config(config, tmp_path, plan(config, registry))
    assert resolved["budgets"]["reptile @ sinusoid K=10"]["meta_train_tasks"] == 30_000
    assert resolved["budgets"]["maml @ sinusoid K=10"]["meta_train_tasks"] == 1_750_000
