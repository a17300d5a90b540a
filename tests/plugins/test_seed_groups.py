"""Seeds as a batch dimension: the gradient learners meta-train several seeds (or tuning trials differing in their
learning rates) as one vectorised model, with each member's numbers those of training it alone (float64: to 1e-12),
its own checkpoints (a group resumes as a group, a seed alone resumes from a group's checkpoint, members may resume
from different points), and a group that cannot train together falls back to one by one."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import cells_of, interrupt_once_saved, records_of

from bench import cli
from bench.api import Episode, SeedsApart
from bench.config import learner_config
from bench.grid import Cell
from bench.plugins import load_plugins
from bench.runner import Checkpoints, HostContext, seed_groups

REGISTRY = load_plugins()
SUITE = REGISTRY.suites["sinusoid"].cls()
SETTING = SUITE.settings()[0]
SEED_GROUP_LEARNERS = ["maml", "fomaml", "anil", "metasgd", "adaptation-layer"]


class Float64Context(HostContext):
    """The host context with float64 episodes (the backbone is float64 under ``torch.set_default_dtype``)."""

    def batches(self, meta_batch: int) -> Iterator[Episode]:
        for batch in super().batches(meta_batch):
            yield Episode(*(field.double() if field.is_floating_point() else field for field in batch))


@pytest.fixture
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _learner(name: str):
    cls = REGISTRY.learners[name].cls
    return cls(learner_config(name, cls.Config, cls.suite_defaults(SUITE, SETTING)))


def _context(seed: int, tasks: int, checkpoint: Path | None = None) -> Float64Context:
    plan = Checkpoints(checkpoint, 50) if checkpoint else None
    return Float64Context(SUITE, SETTING, seed, tasks, torch.device("cpu"), lambda tasks, loss: None, plan)


def _weights(learner) -> list[torch.Tensor]:
    return [tensor.detach().clone() for tensor in (*learner.fast.values(), *learner.slow.values())]


def _largest_difference(first: list[torch.Tensor], second: list[torch.Tensor]) -> float:
    return max(float((a - b).abs().max()) for a, b in zip(first, second, strict=True))


@pytest.mark.parametrize("name", SEED_GROUP_LEARNERS)
def test_a_seed_group_trains_each_seed_as_alone_in_float64(name, float64):
    """Three seeds, 200 tasks each (8 Adam steps): every weight within 1e-12 of the seed trained alone, while the
    seeds' weights differ by far more (each its own initialisation and episodes)."""
    seeds = [0, 1, 2]
    alone = []
    for seed in seeds:
        learner = _learner(name)
        learner.meta_train(_context(seed, 200))
        alone.append(_weights(learner))
    group = [_learner(name) for _ in seeds]
    type(group[0]).meta_train_seeds(group, [_context(seed, 200) for seed in seeds])
    for seed in seeds:
        assert _largest_difference(_weights(group[seed]), alone[seed]) < 1e-12, f"seed {seed}"
    assert _largest_difference(alone[0], alone[1]) > 1e-3
    episode = Episode(*(field.double() if field.is_floating_point() else field
                        for field in SUITE.sample_episode("test", SETTING, 0, 0)))
    support = episode.support
    for seed in seeds:  # adapt reads each seed's own slice
        alone_learner = _learner(name)
        alone_learner.build(_context(seed, 0))
        alone_learner.load_state_dict({"fast": dict(zip(alone_learner.fast, alone[seed])),
                                       "slow": dict(zip(alone_learner.slow, alone[seed][len(alone_learner.fast):]))})
        with torch.no_grad():
            *_, grouped = (predict(episode.query_x) for predict in group[seed].adapt(support, 2))
            *_, single = (predict(episode.query_x) for predict in alone_learner.adapt(support, 2))
        assert float((grouped - single).abs().max()) < 1e-10


def test_a_group_resumes_from_its_checkpoints_and_a_seed_alone_from_its_own(tmp_path, float64):
    """A group checkpointed at 100 of 200 tasks: resumed as a group it ends where the uninterrupted group ends
    (exactly); seed 1 resumed alone from its file in the group's checkpoints ends as seed 1 trained alone (to 1e-12)."""
    seeds = [0, 1]
    whole = [_learner("maml") for _ in seeds]
    type(whole[0]).meta_train_seeds(whole, [_context(seed, 200) for seed in seeds])

    files = [tmp_path / f"seed{seed}.pt" for seed in seeds]
    half = [_learner("maml") for _ in seeds]
    type(half[0]).meta_train_seeds(half, [_context(seed, 120, file) for seed, file in zip(seeds, files)])
    assert all(file.exists() for file in files)  # saved at 50 and 100 tasks; 120 is the (shortened) end
    alone_file = tmp_path / "seed1-alone.pt"
    alone_file.write_bytes(files[1].read_bytes())
    resumed = [_learner("maml") for _ in seeds]
    contexts = [_context(seed, 200, file) for seed, file in zip(seeds, files)]
    type(resumed[0]).meta_train_seeds(resumed, contexts)
    assert [context.resumed_from for context in contexts] == [100, 100]
    for seed in seeds:
        assert _largest_difference(_weights(resumed[seed]), _weights(whole[seed])) == 0.0

    alone = _learner("maml")
    context = _context(1, 200, alone_file)
    alone.meta_train(context)
    assert context.resumed_from == 100
    assert _largest_difference(_weights(alone), _weights(whole[1])) < 1e-12


def test_seeds_at_different_checkpoints_train_together_each_to_its_own_end(tmp_path, float64):
    """Seed 0 checkpointed at 50 tasks, seed 1 at 100, seed 2 never: the group goes on from each, each seed leaves
    when its budget is spent, and each ends as it would alone from the same point (to 1e-12)."""
    files = [tmp_path / f"seed{seed}.pt" for seed in range(3)]
    _learner("maml").meta_train(_context(0, 60, files[0]))
    _learner("maml").meta_train(_context(1, 110, files[1]))
    copies = [tmp_path / f"alone{seed}.pt" for seed in range(3)]
    for file, copy in zip(files, copies):
        if file.exists():
            copy.write_bytes(file.read_bytes())
    group = [_learner("maml") for _ in files]
    contexts = [_context(seed, 200, file) for seed, file in enumerate(files)]
    type(group[0]).meta_train_seeds(group, contexts)
    assert [context.resumed_from for context in contexts] == [50, 100, 0]
    assert [context.tasks_seen for context in contexts] == [200, 200, 200]
    for seed, copy in enumerate(copies):
        alone = _learner("maml")
        alone.meta_train(_context(seed, 200, copy))
        assert _largest_difference(_weights(group[seed]), _weights(alone)) < 1e-12, seed


def test_a_population_of_trials_differing_in_learning_rates_trains_each_as_alone(float64):
    """Tuning trials as one population: one seed, three (inner_lr, outer_lr) pairs; each ends as alone (to 1e-12)."""
    rates = [(0.005, 1e-3), (0.01, 3e-3), (0.02, 1e-4)]

    def learner(inner_lr: float, outer_lr: float):
        cls = REGISTRY.learners["maml"].cls
        return cls(learner_config("maml", cls.Config, {"inner_lr": inner_lr, "outer_lr": outer_lr}))

    population = [learner(*pair) for pair in rates]
    type(population[0]).meta_train_seeds(population, [_context(0, 200) for _ in rates])
    for pair, member in zip(rates, population):
        alone = learner(*pair)
        alone.meta_train(_context(0, 200))
        assert _largest_difference(_weights(member), _weights(alone)) < 1e-12, pair
    assert _largest_difference(_weights(population[0]), _weights(population[1])) > 1e-3


def test_learners_differing_in_what_cannot_be_vectorised_stay_apart(float64):
    cls = REGISTRY.learners["maml"].cls
    learners = [cls(learner_config("maml", cls.Config, {"inner_steps": steps})) for steps in (1, 2)]
    with pytest.raises(SeedsApart, match="the learners differ in inner_steps, which cannot be vectorised"):
        cls.meta_train_seeds(learners, [_context(0, 100), _context(0, 100)])


def _cells(learners: list[str], seeds: int) -> list[Cell]:
    from bench.config import RunConfig
    from bench.grid import plan

    return plan(RunConfig(learners=learners, suites=["sinusoid"], shots=[5], profile="smoke", seeds=seeds), REGISTRY)


def test_seed_groups_gather_the_seeds_of_each_configuration_whose_learner_can():
    cells = _cells(["maml", "reptile"], 3)
    groups = [[(cell.learner.name, cell.seed) for cell in group] for group in seed_groups(cells, 0)]
    assert groups == [[("maml", 0), ("maml", 1), ("maml", 2)], [("reptile", 0)], [("reptile", 1)], [("reptile", 2)]]
    limited = [[cell.seed for cell in group] for group in seed_groups(cells, 2) if group[0].learner.name == "maml"]
    assert limited == [[0, 1], [2]]
    assert all(len(group) == 1 for group in seed_groups(cells, 1))


RUN = ("run", "--learners", "maml,anil", "--suites", "sinusoid", "--shots", "5", "--profile", "smoke", "--seeds", "3",
       "--tasks", "100", "--episodes", "10", "--steps", "3", "--no-progress")


@pytest.fixture(scope="module")
def one_at_a_time(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("alone") / "run"
    assert cli.main([*RUN, "--seeds-together", "1", "--out", str(out)]) == 0
    return out


def test_bench_run_trains_seeds_together_with_the_numbers_of_one_at_a_time(tmp_path, one_at_a_time):
    """float32, through ``bench run``: the same records to float rounding (relative 1e-4), the cells say which seeds
    trained together."""
    out = tmp_path / "together"
    assert cli.main([*RUN, "--out", str(out)]) == 0
    cells = cells_of(out)
    assert {tuple(metadata["seed_group"]) for metadata in cells.values()} == {(0, 1, 2)}
    assert all(metadata["seed_group"] is None for metadata in cells_of(one_at_a_time).values())
    together, alone = records_of(out), records_of(one_at_a_time)
    pd.testing.assert_frame_equal(together, alone, check_exact=False, rtol=1e-4)


def test_a_group_that_fails_together_runs_each_seed_alone_and_says_why(tmp_path, monkeypatch, one_at_a_time):
    from bench_plugins.learners.maml import MAML

    def broken(cls, learners, contexts):
        raise RuntimeError("out of memory, say")

    monkeypatch.setattr(MAML, "meta_train_seeds", classmethod(broken))
    out = tmp_path / "fallback"
    assert cli.main([*RUN, "--learners", "maml", "--out", str(out)]) == 0
    for metadata in cells_of(out).values():
        assert metadata["status"] == "ok" and metadata["seed_group"] == [metadata["seed"]]
        assert "failed in meta-training together (RuntimeError: out of memory, say)" in metadata["seed_group_note"]
    alone = records_of(one_at_a_time)
    pd.testing.assert_frame_equal(records_of(out), alone[alone.learner == "maml"].reset_index(drop=True))


def test_an_interrupted_group_resumes_as_a_group(tmp_path, monkeypatch):
    """Interrupted once every seed has a checkpoint: the resume goes on from them as a group and ends with the records
    of an uninterrupted group, exactly."""
    cell = (*RUN, "--learners", "maml", "--tasks", "200")
    whole = tmp_path / "whole"
    assert cli.main([*cell, "--out", str(whole)]) == 0
    out = tmp_path / "interrupted"
    save_normally = interrupt_once_saved(monkeypatch, out / "cells" / "sinusoid__K=5__maml__seed2.checkpoint.pt")
    assert cli.main([*cell, "--checkpoint-every", "50", "--out", str(out)]) == 130
    save_normally()
    assert cli.main(["run", "--resume", str(out), "--checkpoint-every", "50", "--no-progress"]) == 0
    cells = cells_of(out)
    assert [metadata["resumed_from_tasks"] for metadata in cells.values()] == [50, 50, 50]
    assert all(metadata["seed_group_note"] is None for metadata in cells.values())
    pd.testing.assert_frame_equal(records_of(out), records_of(whole))


def test_a_subclass_that_overrides_meta_train_only_trains_its_seeds_one_by_one():
    """Else the inherited ``meta_train_seeds`` would bypass its ``meta_train``."""
    from bench.api import trains_seeds_together
    from bench_plugins.learners.maml import MAML

    class WrapsMetaTrain(MAML):
        def meta_train(self, ctx):
            super().meta_train(ctx)

    class GroupsItsOwnWay(WrapsMetaTrain):
        @classmethod
        def meta_train_seeds(cls, learners, contexts):
            raise SeedsApart("never")

    assert trains_seeds_together(MAML) and trains_seeds_together(GroupsItsOwnWay)
    assert not trains_seeds_together(WrapsMetaTrain)
    assert not trains_seeds_together(REGISTRY.learners["reptile"].cls)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["maml", "adaptation-layer"])
def test_a_compiled_seed_group_has_the_eager_groups_gradient(name, float64):
    """``compile=true`` in a group: one compiled ``vmap`` over seeds of the meta-gradient, the same per-seed
    gradients and losses as the eager group (float64; a short last chunk eager)."""
    from bench_plugins.learners._gradient import MetaGradientStep

    seeds = [0, 1, 2]
    batch = Episode(*(torch.stack(fields) for fields in zip(*(
        Episode(*(field.double() if field.is_floating_point() else field
                  for field in SUITE.sample_batch("train", SETTING, seed, range(5)))) for seed in seeds))))
    results = []
    for compile_ in ("false", "true"):
        learners = [_learner(name) for _ in seeds]
        for seed, learner in zip(seeds, learners):
            learner.config.compile, learner.config.chunk_tasks = compile_, 2
            learner.build(_context(seed, 0))
        step = MetaGradientStep(learners[0].loop, learners[0].config, False,
                                members=[(learner.fast, learner.slow) for learner in learners])
        losses = step(batch)
        results.append((losses, torch.cat([t.grad.flatten() for learner in learners
                                           for t in learner.meta_parameters()])))
    (eager_losses, eager), (compiled_losses, compiled) = results
    assert eager_losses.shape == (3,)
    assert torch.allclose(eager_losses, compiled_losses, atol=1e-10)
    assert torch.allclose(eager, compiled, atol=1e-10, rtol=1e-8), (eager - compiled).abs().max()


def test_a_member_that_diverges_fails_alone_and_the_others_train_on():
    """A population whose middle member's inner rate makes its loss overflow: the host fails that member with the
    error a lone run gives, and the others end as each alone (float32, through the host: to 1e-5)."""
    import dataclasses

    from bench.config import RunConfig
    from bench.runner import MemberFailure, NonFiniteLossError, train_and_validate, train_together

    config = RunConfig(learners=["maml"], suites=["sinusoid"], shots=[5], profile="smoke", seeds=1, tasks=600,
                       val_episodes=0)
    (cell,) = _cells_of(config)
    rates = [0.01, 1e20, 0.02]
    cells = [dataclasses.replace(cell, hyperparameters=dataclasses.replace(cell.hyperparameters, inner_lr=rate))
             for rate in rates]

    def weights_of(trained) -> list[torch.Tensor]:
        return _weights(trained.learner)

    together = train_together(cells, config, torch.device("cpu"))
    assert isinstance(together[1], MemberFailure) and isinstance(together[1].error, NonFiniteLossError)
    with pytest.raises(NonFiniteLossError):
        train_and_validate(cells[1], config, torch.device("cpu"))  # alone, it fails the same way
    for index in (0, 2):
        alone = train_and_validate(cells[index], config, torch.device("cpu"))
        assert _largest_difference(weights_of(together[index]), weights_of(alone)) < 1e-5


def _cells_of(config) -> list[Cell]:
    from bench.grid import plan

    return plan(config, REGISTRY)
