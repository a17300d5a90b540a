"""The conformance kit (bench.testing): every built-in passes it, and each kind of contract breach is caught."""
from __future__ import annotations

import pytest
import torch
from bench_plugins.learners.anil import ANIL
from bench_plugins.learners.maml import MAML
from bench_plugins.learners.metasgd import MetaSGD
from bench_plugins.suites.sinusoid import Sinusoid

from bench.api import Choice, Episode, FloatRange, IntRange, Setting
from bench.plugins import load_plugins
from bench.testing import (
    ConformanceError,
    LearnerCheck,
    TinyBlobs,
    TinyWaves,
    assert_learner_conforms,
    assert_suite_conforms,
    learner_problems,
    suite_problems,
)

BUILT_IN_LEARNERS = sorted(name for name, registration in load_plugins().learners.items()
                           if registration.source.distribution == "metabench" and not registration.unavailable_reason)
QUICK = LearnerCheck(tasks=500, short_tasks=50, episodes=10, steps=3)


def _reference_wrappers_are_slow(name: str) -> object:
    """learn2learn's own MAML / Meta-SGD, wrapped (``in_all = False``): one task at a time, about 10 s each here. Their
    meta-gradients and seeded scores equal the built-ins' (tests/plugins/test_l2l_plugins.py, default run); the kit
    checks them in the slow job."""
    registration = load_plugins().learners[name]
    return pytest.param(name, marks=pytest.mark.slow) if not registration.cls.in_all else name


KIT_OVERRIDES = {
    # The kit meta-trains for 2,000 tasks, the papers for hundreds of thousands: where a learner's paper defaults
    # need more than the kit gives, the kit runs it at a faster rate (its defaults stay the paper's).
    ("reptile", "tiny-blobs"): {"inner_lr": 0.01, "eval_lr": 0.01},  # Adam 1e-3 for 100,000 meta-steps in the paper
    # Chen's batches of 16 images and 100 epochs of head steps (200-700 a task): 20x the kit's time for the same checks
    ("finetune", "tiny-blobs"): {"pretrain_batch": 256, "epochs": 10},
    # MAML's Omniglot 5-way step, 0.4 on its class-sum inner loss (2.0 on the mean cross-entropy), is too large for
    # the kit's small MLP without batch norm (accuracy 0.30 after 2,000 tasks, 0.37 untrained): the kit runs them at
    # 0.08, a step of 0.4 on the mean, as it did before the class-sum loss.
    # learn2learn's MAML wrapper takes the built-in's configuration, so the same.
    **{(name, "tiny-blobs"): {"inner_lr": 0.08} for name in ("maml", "fomaml", "l2l-maml")},
    # Meta-Dataset's ProtoMAML takes one episode an Adam step at 1e-4: 2,000 steps of the kit, which compile=auto
    # compiles (on a busy machine: 210 s, 160 s eager). Batches of 25 at 1e-3: 30 s there, and it learns (0.41 -> 0.87).
    ("protomaml", "tiny-blobs"): {"meta_batch": 25, "outer_lr": 1e-3},
    # MetaOptNet's 15 interior-point iterations per meta-training solve: the kit took 86 s on a busy machine (a fresh
    # process, imports included), 67 s with the 3 its test.py solves with; it learns either way (0.41 -> 0.98, 0.99).
    ("metaoptnet", "tiny-blobs"): {"max_iter": 3},
}


@pytest.mark.parametrize("name", [_reference_wrappers_are_slow(name) for name in BUILT_IN_LEARNERS])
def test_every_built_in_learner_conforms(registry, name):
    """On both tiny suites (those it supports), with the kit's default budget and margins."""
    learner = registry.learners[name].cls
    for suite in (TinyWaves(), TinyBlobs()):
        if not learner.unsupported_reason(suite):
            assert_learner_conforms(learner, suites=[suite], overrides=KIT_OVERRIDES.get((name, suite.name)))


@pytest.mark.parametrize("suite", [TinyWaves(), TinyBlobs(), Sinusoid()], ids=lambda suite: suite.name)
def test_built_in_suites_conform(suite):
    assert_suite_conforms(suite)


# -- learners that break the contract, one way each ------------------------------------------------------


class PeeksAtTestEpisodes(MAML):
    """Reads a test episode (with its query labels) from the suite while adapting."""

    def meta_train(self, ctx):
        self.suite, self.setting = ctx.suite, ctx.setting
        super().meta_train(ctx)

    def adapt(self, support, steps, *, batched=False):
        self.suite.sample_episode("test", self.setting, 0, 0)
        return super().adapt(support, steps, batched=batched)


class ReadsValidationSplit(MAML):
    """Samples meta-validation episodes while meta-training."""

    def meta_train(self, ctx):
        ctx.suite.sample_batch("val", ctx.setting, 0, range(4))
        super().meta_train(ctx)


class YieldsTooFewPredictors(MAML):
    """Skips the predictor of the last step."""

    def adapt(self, support, steps, *, batched=False):
        return iter(list(super().adapt(support, steps, batched=batched))[:-1])


class UnseededNoise(MAML):
    """Adds noise from torch's global generator: not reproducible under a seed."""

    def adapt(self, support, steps, *, batched=False):
        for predictor in super().adapt(support, steps, batched=batched):
            noise = torch.randn(())
            yield lambda x, predictor=predictor, noise=noise: predictor(x) + noise


class NeverMetaTrains(MAML):
    """Builds its network and stops."""

    def meta_train(self, ctx):
        self.build(ctx)


class BatchedDisagrees(MAML):
    """Its batched path predicts something else than one episode at a time."""

    def adapt(self, support, steps, *, batched=False):
        for predictor in super().adapt(support, steps, batched=batched):
            yield (lambda x, predictor=predictor: predictor(x) + 1.0) if batched else predictor


class DropsTheBatchedKeyword(MAML):
    """Overrides a batched learner's adapt without the keyword its batched = True promises."""

    def adapt(self, support, steps):
        return super().adapt(support, steps)


class DefinesAdaptBatch(MAML):
    """Written for the old contract: batches in a second method, adapt_batch."""

    def adapt_batch(self, supports, steps):
        return super().adapt(supports, steps, batched=True)


class WrongShape(MAML):
    """Predicts one value per query set instead of one per query point."""

    def adapt(self, support, steps, *, batched=False):
        for predictor in super().adapt(support, steps, batched=batched):
            yield lambda x, predictor=predictor: predictor(x).mean(dim=-2)


class NoConfig(MAML):
    """Has no Config dataclass."""

    Config = dict


class ForgetsTheBody(ANIL):
    """Hands over the head it adapts but not the body it meta-learns: loading a state leaves the body as it is."""

    def state_dict(self):
        return {"fast": self.fast}

    def load_state_dict(self, state):
        with torch.no_grad():
            for name, tensor in self.fast.items():
                tensor.copy_(state["fast"][name])


class HandsOverNoState(MAML):
    """Cannot hand over its state (the default): the host scores its last state, and the kit says nothing."""

    def state_dict(self):
        return None


class GroupsOnTheFirstSeed(MAML):
    """Meta-trains every seed of a group on the first seed's episodes and initialisation."""

    @classmethod
    def meta_train_seeds(cls, learners, contexts):
        for learner in learners:
            learner.meta_train(type(contexts[0])(contexts[0].suite, contexts[0].setting, contexts[0].seed,
                                                 contexts[0].task_budget, contexts[0].device, lambda tasks, loss: None))


@pytest.mark.parametrize(("learner", "message"), [
    (PeeksAtTestEpisodes, "adapt() sampled a 'test' episode from the suite"),
    (ReadsValidationSplit, "meta_train() sampled a 'val' episode (only the training split is allowed)"),
    (YieldsTooFewPredictors, "yielded 3 predictors, not steps + 1 = 4"),
    (UnseededNoise, "two runs with seed 0 differ"),
    (NeverMetaTrains, "on 'tiny-waves': did not learn: final"),
    (BatchedDisagrees, "on 'tiny-waves': adapt(batched=True) and adapt() disagree: "),
    (DropsTheBatchedKeyword, "sets batched = True, but its adapt() takes no batched keyword: accept "
                             "adapt(support, steps, *, batched=False), or set batched = False"),
    (DefinesAdaptBatch, "defines adapt_batch(), which metabench no longer calls: implement "
                        "adapt(support, steps, *, batched=False) with its batched path and drop adapt_batch"),
    (WrongShape, "returned shape (1,) for 20 query inputs; expected (20, 1)"),
    (NoConfig, "needs a Config dataclass"),
    (GroupsOnTheFirstSeed, "on 'tiny-waves': meta_train_seeds and meta_train disagree for seed 1: largest prediction "
                           "difference"),
    (ForgetsTheBody, "after load_state_dict() of a copy of state_dict() taken after 25 tasks, adapt() predicts "
                     "otherwise than it did then (test episode 0, step 0"),
], ids=lambda value: value.__name__ if isinstance(value, type) else "")
def test_each_contract_breach_is_named(learner, message):
    problems = learner_problems(learner, suites=[TinyWaves()], check=QUICK)
    assert any(message in problem for problem in problems), problems


def test_a_learner_that_hands_over_no_state_conforms():
    assert learner_problems(HandsOverNoState, suites=[TinyWaves()], check=QUICK) == []


def _searches(space: dict, base: type = MAML) -> type:
    """A learner with this search space that declines every suite, so that the kit checks only its search space."""
    return type(f"Searches{base.__name__}", (base,), {
        "search_space": classmethod(lambda cls, kind: space),
        "unsupported_reason": classmethod(lambda cls, suite: "checked for its search space only"),
    })


@pytest.mark.parametrize(("learner", "message"), [
    (_searches({"learning_rate": FloatRange(1e-3, 0.1, log=True)}),
     "search_space(regression): 'learning_rate' is not a field of MAMLConfig (fields: inner_steps, meta_batch"),
    (_searches({"inner_lr": FloatRange(0.1, 0.01)}), "search_space(classification): 'inner_lr': low 0.1 must be below high 0.01"),
    (_searches({"inner_lr": FloatRange(0.0, 0.1, log=True)}), "'inner_lr': a log-scale range must be positive, got low 0.0"),
    (_searches({"meta_batch": Choice(())}), "'meta_batch': Choice has no options"),
    (_searches({"inner_lr": (1e-3, 0.1)}), "'inner_lr': (0.001, 0.1) is not a FloatRange, IntRange or Choice"),
    (_searches({"inner_steps": IntRange(1, 5.5)}), "'inner_steps': IntRange ends must be integers, got 1 and 5.5"),
    (_searches({"inner_steps": FloatRange(1.0, 5.0)}), "'inner_steps': 1.0, in its range, is rejected by the Config"),
    (_searches({"alpha_high": FloatRange(1e-3, 0.5, log=True)}, MetaSGD),
     "'alpha_high': 0.001, in its range, is rejected by the Config (search_space SearchesMetaSGD: need 0 <= alpha_low <= alpha_high"),
], ids=["unknown-field", "inverted", "log-from-zero", "no-options", "not-a-range", "float-int-range",
        "float-for-int", "rejected-by-post-init"])
def test_each_search_space_breach_is_named(learner, message):
    problems = learner_problems(learner, suites=[TinyWaves()], check=QUICK)
    assert any(message in problem for problem in problems), problems


def test_assert_learner_conforms_lists_every_problem():
    with pytest.raises(ConformanceError) as raised:
        assert_learner_conforms(UnseededNoise, suites=[TinyWaves()], check=QUICK)
    assert "learner UnseededNoise does not conform:\n  - on 'tiny-waves': two runs with seed 0 differ" in str(raised.value)


# -- suites that break the contract ----------------------------------------------------------------------


class IgnoresTheSplit(TinyWaves):
    name = "ignores-the-split"

    def sample_episode(self, split, setting, seed, index):
        return super().sample_episode("train", setting, seed, index)


class UnseededEpisodes(TinyWaves):
    name = "unseeded"

    def sample_episode(self, split, setting, seed, index):
        episode = super().sample_episode(split, setting, seed, index)
        return episode._replace(support_x=episode.support_x + torch.rand(()))


class TooFewSupportExamples(TinyBlobs):
    name = "too-few"

    def sample_episode(self, split, setting, seed, index):
        episode = super().sample_episode(split, setting, seed, index)
        return episode._replace(support_x=episode.support_x[:-1], support_y=episode.support_y[:-1])


class FastBatchDiffers(TinyWaves):
    name = "fast-batch"

    def sample_batch(self, split, setting, seed, indices):
        batch = super().sample_batch(split, setting, seed, indices)
        return Episode(*batch[:4], batch.classes)._replace(query_y=batch.query_y * 2)


class UpsideDownMetric(TinyBlobs):
    name = "upside-down"
    lower_is_better = True


@pytest.mark.parametrize(("suite", "message"), [
    (IgnoresTheSplit(), "appear in both the train and the val split"),
    (UnseededEpisodes(), "differs between two calls"),
    (TooFewSupportExamples(), "support_x has 24 examples; 5 shots x 5 ways = 25"),
    (FastBatchDiffers(), "sample_batch() differs from stacking sample_episode() (3 times: train episodes of 'K=10', "),
    (UpsideDownMetric(), "check lower_is_better"),
], ids=lambda value: value.name if hasattr(value, "name") else "")
def test_each_suite_breach_is_named(suite, message):
    problems = suite_problems(suite)
    assert any(message in problem for problem in problems), problems


class UnseededInTwoSettings(UnseededEpisodes):
    def settings(self):
        return [Setting(name="K=5", shots=5, query=20), Setting(name="K=10", shots=10, query=20)]


def test_a_problem_seen_in_every_setting_and_split_is_one_line_with_its_count():
    """An impure suite breaks purity in each of its settings' splits: one line with the count, not one per place."""
    problems = suite_problems(UnseededInTwoSettings())
    impure = [problem for problem in problems if "differs between two calls" in problem]
    assert impure == ["episode 0 differs between two calls: episodes must be a pure function of (split, setting, seed, "
                      "index); use bench.api.episode_rng (6 times: train episodes of 'K=5', val episodes of 'K=5', "
                      "test episodes of 'K=5', ...)"], problems
