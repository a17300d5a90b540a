"""Reptile (Nichol et al. 2018, "On first-order meta-learning algorithms")."""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

from bench.api import FloatRange, Learner, MetaTrainContext, Predictor, SearchRange, Setting, Support, TaskKind, TaskSuite

if TYPE_CHECKING:
    import torch

    from bench.nn.functional import Params

ADAM_BETA2, ADAM_EPS = 0.999, 1e-8
OPTIMIZERS = ("sgd", "adam")


class AdamState(NamedTuple):
    """Adam's state with beta1 = 0 (its first moment is the gradient itself): each weight's second moment, and the
    steps taken, for the bias correction."""

    second_moment: "Params"
    steps: int


FRESH = AdamState({}, 0)


def adam_direction(grads: "Params", state: AdamState) -> tuple["Params", AdamState]:
    """The direction of one Adam step (beta1 = 0) before the learning rate, in the form of TensorFlow's AdamOptimizer
    that the reference uses, ``g * sqrt(1 - beta2^t) / (sqrt(v_t) + epsilon)``; and the state after the step. A
    state without a task dimension broadcasts over the tasks of batched gradients."""
    steps = state.steps + 1
    second = {name: ADAM_BETA2 * state.second_moment.get(name, 0.0) + (1 - ADAM_BETA2) * gradient.square()
              for name, gradient in grads.items()}
    correction = math.sqrt(1 - ADAM_BETA2**steps)
    direction = {name: correction * gradient / (second[name].sqrt() + ADAM_EPS) for name, gradient in grads.items()}
    return direction, AdamState(second, steps)


@dataclasses.dataclass
class ReptileConfig:
    """Where each default comes from (Nichol et al. 2018, "On first-order meta-learning algorithms").

    Regression (sinusoid; other regression suites: ``SCALE_FREE_REGRESSION``): the authors' sine script, published
    with the OpenAI blog post on Reptile (gist
    joschu/f503500cda64f2ce87c8288906b09e2d, "reptile-sinewaves-demo.py"; read in public copies of it, the same
    values in each, not in the gist itself): inner SGD lr 0.02 (innerstepsize) on minibatches of 10 (ntrain), one
    pass over the task's 50 points (innerepochs 1: 5 steps), one task per outer step (meta_batch 1) with outer
    step 0.1 annealed linearly to 0 (outerstepsize0); test-time SGD at the same 0.02. Departure for the shared
    protocol: a task has K support + K query points, pooled (2K), so 5 steps of 10 make 1 to 2.5 passes.

    Classification (``PAPER_DEFAULTS``): the commands of github.com/openai/supervised-reptile's README ("the
    commands used for the paper"): Adam (``inner_optimizer``) at --learning-rate 1e-3 (Omniglot 20-way: 5e-4),
    --inner-batch 10 (20), --inner-iters 5 (Omniglot 20-way: 10, mini-ImageNet: 8), --meta-batch 5, --meta-step 1
    annealed to --meta-step-final 0; the test at the training learning rate. Adam's state is carried across tasks
    (``adam_per_task`` False) as in the reference's reptile.py: its one ``AdamOptimizer`` (models.py, beta1 = 0)
    keeps its slots while ``train_step`` restores only the trainable weights after each task of a meta-batch, so
    the tasks run one after another, each going on from the state the last left; ``evaluate`` starts every test
    task from the state training ended with and restores it afterwards. A classification suite the paper did not
    run: the Omniglot 5-way values. Not tuned.
    """

    inner_optimizer: str = "sgd"
    """``sgd``, or ``adam``: Adam with beta1 = 0, as the paper."""
    adam_per_task: bool = False
    """With ``adam``. False (the reference): one Adam state carried through every inner step of every task, a
    meta-batch's tasks one after another, and every test task adapting from the state meta-training ended with.
    True: a fresh state for every task, in meta-training and at test time, so that a meta-batch's tasks run at once,
    in one ``vmap`` (faster)."""
    inner_lr: float = 0.02
    inner_steps: int = 5
    inner_batch: int = 10
    """Examples per inner step, drawn without replacement from the task's pooled examples (0: all of them)."""
    meta_batch: int = 1
    outer_lr: float = 0.1
    """The outer step epsilon at the start, annealed linearly to 0 over the task budget."""
    eval_lr: float = 0.02
    """The learning rate of ``inner_optimizer``'s full-batch steps on the support set at test time."""

    def __post_init__(self) -> None:
        if self.inner_steps < 1:
            raise ValueError(f"inner_steps must be at least 1, got {self.inner_steps}")
        if self.inner_optimizer not in OPTIMIZERS:
            raise ValueError(f"inner_optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.inner_optimizer!r}")

    @property
    def carries_adam_state(self) -> bool:
        """Whether one Adam state goes on from task to task (and into the test)."""
        return self.inner_optimizer == "adam" and not self.adam_per_task


PAPER_OUTER_LOOP = {"inner_optimizer": "adam", "meta_batch": 5, "outer_lr": 1.0}
"""openai/supervised-reptile README, every classification command: Adam, --meta-batch 5, --meta-step 1 (annealed
to 0)."""
SCALE_FREE_REGRESSION = {"inner_optimizer": "adam", "inner_lr": 0.02, "eval_lr": 0.02}
"""A regression suite the paper did not run: the paper's own inner optimizer on its image tasks, Adam with beta1 = 0,
whose step does not grow with the scale of the loss as plain SGD's does, at the sine script's step size 0.02 (inner
and test); the sine script's outer loop. Chosen on meta-validation episodes (``python benchmarks/reptile_scale.py``:
cubic polynomials, 5,000 tasks, seed 0, meta-val MSE at steps 0 / 10 over 200 episodes): on x in [-3, 3] (targets up
to about 90) the sine script's SGD stopped with ``training loss became nan after 220 tasks`` (the issue's failure)
and an untrained network's 10 steps reached NaN; Adam 116.4 / 17.3. On x in [-1, 1] SGD 1.81 / 0.144, Adam 1.81 /
0.076. Not tuned further."""
PAPER_DEFAULTS = {
    # openai/supervised-reptile README, per (suite, ways): --learning-rate (also the test's), --inner-iters,
    # --inner-batch.
    ("omniglot", 5): {"inner_lr": 1e-3, "inner_steps": 5, "inner_batch": 10, "eval_lr": 1e-3},
    ("omniglot", 20): {"inner_lr": 5e-4, "inner_steps": 10, "inner_batch": 20, "eval_lr": 5e-4},
    ("miniimagenet", 5): {"inner_lr": 1e-3, "inner_steps": 8, "inner_batch": 10, "eval_lr": 1e-3},
}


class Reptile(Learner):
    """Reptile: first order, no query split; moves the initialisation toward the task-adapted weights.

    Meta-training: each task of a meta-batch takes ``inner_steps`` steps of ``inner_optimizer`` on
    minibatches of its pooled support and query examples; then ``theta <- theta + epsilon * mean_tasks(phi -
    theta)``, epsilon annealed linearly from ``outer_lr`` to 0 over the task budget. With SGD, or Adam fresh per
    task (``adam_per_task``), a meta-batch's tasks run at once (one ``vmap``); with the reference's Adam, whose
    state goes on from task to task, one after another. Test: full-batch steps of ``inner_optimizer`` at
    ``eval_lr`` on the support set, Adam starting from the state meta-training ended with (fresh with
    ``adam_per_task``).

    Image suites (paper values, ``PAPER_DEFAULTS``): the paper trains on 10 (Omniglot) or 15
    (mini-ImageNet) shots per class and tests with 50 Adam iterations on batches of 5 (15 for
    mini-ImageNet 5-shot); here tasks carry the suite's examples per class and the test takes
    ``--steps`` full-batch Adam steps (``--steps 50`` is the paper's test for 1-shot 5-way, where a batch
    of 5 is the whole support set). Batch norm uses the statistics of each batch, as the paper's
    transductive setting.
    """

    Config = ReptileConfig
    variable_episodes = True  # a head of the setting's most ways; labels 0..n-1, the unused logits learn to lose

    @classmethod
    def suite_defaults(cls, suite: TaskSuite, setting: Setting) -> dict[str, Any]:
        """The paper's values: the sine script's on sinusoid, its image runs' on classification suites
        (``PAPER_DEFAULTS``); on any other regression suite ``SCALE_FREE_REGRESSION``."""
        if suite.kind is not TaskKind.CLASSIFICATION:
            return {} if suite.name == "sinusoid" else dict(SCALE_FREE_REGRESSION)
        return {**PAPER_OUTER_LOOP, **PAPER_DEFAULTS.get((suite.name, setting.ways), PAPER_DEFAULTS[("omniglot", 5)])}

    @classmethod
    def paper_budget(cls, suite: type[TaskSuite], setting: Setting) -> dict[str, int]:
        """The authors' iterations x meta-batch: the sine script's 30,000 single-task iterations (niterations);
        openai/supervised-reptile's README, --meta-iters x --meta-batch 5: 100,000 iterations (Omniglot 20-way:
        200,000). Suites the paper did not run: the suite's budget."""
        if suite.name == "sinusoid":
            return {"meta_train_tasks": 30_000}
        if suite.name in ("omniglot", "miniimagenet"):
            return {"meta_train_tasks": (200_000 if setting.ways == 20 else 100_000) * 5}
        return {}

    @classmethod
    def search_space(cls, kind: TaskKind) -> dict[str, SearchRange]:
        """inner_lr and eval_lr: a decade either side of the authors' value (0.02 SGD on sine; 1e-3 Adam on
        images, whose README also uses 5e-4 and, with SGD, 3e-3); outer_lr: from the sine script's 0.1 to the image
        runs' 1.0 (the README's gradient-combination runs use 0.25). No range is reported."""
        rate = FloatRange(0.002, 0.2, log=True) if kind is TaskKind.REGRESSION else FloatRange(1e-4, 1e-2, log=True)
        return {"inner_lr": rate, "eval_lr": rate, "outer_lr": FloatRange(0.1, 1.0, log=True)}

    def meta_train(self, ctx: MetaTrainContext) -> None:
        import torch

        config = self.config
        self.model, self.loss = ctx.backbone(), ctx.suite.loss
        self.weights = {name: weight.detach() for name, weight in self.model.named_parameters()}
        self.adam = FRESH
        seen = 0
        for batch in ctx.batches(config.meta_batch):
            x = torch.cat([batch.support_x, batch.query_x], dim=1)
            y = torch.cat([batch.support_y, batch.query_y], dim=1)
            tasks = x.shape[0]
            minibatches = list(self._minibatches(x, y, ctx.generator))
            if tasks > 1 and not config.carries_adam_state:  # nothing passes between tasks: all at once
                start = {name: weight.expand(tasks, *weight.shape) for name, weight in self.weights.items()}
                adapted, first_loss, _ = self._train_task(start, minibatches, FRESH, batched=True)
                phi = {name: value.mean(0) for name, value in adapted.items()}
            else:  # one task after another: the sine script's one task a step, or the reference's Adam state carried
                phis, first_losses = [], []
                for task in range(tasks):
                    own = [(bx[task], by[task]) for bx, by in minibatches]
                    adapted, loss, state = self._train_task(self.weights, own, self.adam, batched=False)
                    self.adam = state if config.carries_adam_state else FRESH
                    phis.append(adapted)
                    first_losses.append(loss)
                phi = {name: torch.stack([adapted[name] for adapted in phis]).mean(0) for name in self.weights}
                first_loss = torch.stack(first_losses)
            epsilon = config.outer_lr * (1 - seen / ctx.task_budget)
            self.weights = {name: weight + epsilon * (phi[name] - weight) for name, weight in self.weights.items()}
            seen += tasks
            ctx.log(first_loss.mean())  # the tasks' training loss at the initialisation

    def _train_task(self, weights: "Params", minibatches: "list[tuple[torch.Tensor, torch.Tensor]]", state: AdamState,
                    batched: bool) -> tuple["Params", "torch.Tensor", AdamState]:
        """The weights after the inner loop on ``minibatches`` from ``weights``, the loss before its first step and
        Adam's state after its last."""
        steps = list(self._descend(weights, minibatches, self.config.inner_lr, batched, state))
        adapted, _, state = steps[-1]
        return adapted, steps[0][1], state

    def _minibatches(self, x: "torch.Tensor", y: "torch.Tensor",
                     generator: "torch.Generator") -> Iterator[tuple["torch.Tensor", "torch.Tensor"]]:
        """The ``inner_steps`` minibatches of a batch of tasks, ``inner_batch`` examples each (all with 0): each task
        runs through random permutations of its examples, a minibatch continuing into the next permutation where
        one runs out (as the authors' code)."""
        import itertools

        import torch

        steps, size = self.config.inner_steps, self.config.inner_batch
        if not size:
            return itertools.repeat((x, y), steps)
        tasks, examples = x.shape[:2]
        passes = -(-steps * size // examples)
        order = torch.rand(tasks, passes, examples, generator=generator).argsort(dim=-1).flatten(1)
        indices = order[:, : steps * size].unflatten(1, (steps, size)).to(x.device)
        rows = torch.arange(tasks, device=x.device)[:, None]
        return ((x[rows, step], y[rows, step]) for step in indices.unbind(1))

    def _descend(self, weights: "Params", batches: "Iterable[tuple[torch.Tensor, torch.Tensor]]", lr: float,
                 batched: bool, state: AdamState) -> Iterator[tuple["Params", "torch.Tensor", AdamState]]:
        """Steps of ``inner_optimizer`` from ``weights``, one per ``(x, y)`` in ``batches``, Adam going on from
        ``state``; yields the weights after each step, the loss before it (per task, with a leading task dimension,
        when ``batched``) and Adam's state after it (``state`` itself with SGD)."""
        import torch
        from torch.func import functional_call, vmap

        def task_loss(weights: "Params", x: "torch.Tensor", y: "torch.Tensor") -> "torch.Tensor":
            return self.loss(functional_call(self.model, weights, (x,)), y)

        losses = vmap(task_loss) if batched else task_loss
        for x, y in batches:
            with torch.enable_grad():
                copies = {name: weight.detach().contiguous().requires_grad_() for name, weight in weights.items()}
                loss = losses(copies, x, y)
                grads = dict(zip(copies, torch.autograd.grad(loss.sum(), list(copies.values()))))
            if self.config.inner_optimizer == "adam":
                grads, state = adam_direction(grads, state)
            weights = {name: weight - lr * grads[name] for name, weight in weights.items()}
            yield weights, loss.detach(), state

    def state_dict(self) -> dict[str, Any]:
        """The meta-learned initialisation and Adam's state (each outer step binds new tensors to both)."""
        return {"weights": self.weights, "adam": {"second_moment": self.adam.second_moment, "steps": self.adam.steps}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.weights = {name: weight.clone() for name, weight in state["weights"].items()}
        adam = state["adam"]
        self.adam = AdamState({name: moment.clone() for name, moment in adam["second_moment"].items()}, adam["steps"])

    batched = True

    def adapted_parameter_count(self) -> int:
        """Every weight."""
        return sum(weight.numel() for weight in self.weights.values())

    def adapt(self, support: Support, steps: int, *, batched: bool = False) -> Iterator[Predictor]:
        """Full-batch steps on the support set from the meta-learned weights (and Adam's state); a predictor after
        each of 0..steps."""
        import functools
        import itertools

        from torch.func import functional_call, vmap

        forward = functools.partial(functional_call, self.model)
        weights = self.weights
        if batched:
            forward = vmap(forward)
            weights = {name: weight.expand(support.x.shape[0], *weight.shape) for name, weight in weights.items()}
        yield lambda x, weights=weights: forward(weights, (x,))
        inner = self._descend(weights, itertools.repeat(tuple(support), steps), self.config.eval_lr, batched, self.adam)
        for adapted, _, _ in inner:
            yield lambda x, adapted=adapted: forward(adapted, (x,))
