"""Reptile (Nichol et al. 2018, "On first-order meta-learning algorithms")."""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from bench.api import FloatRange, Learner, MetaTrainContext, Predictor, SearchRange, Setting, Support, TaskKind, TaskSuite

if TYPE_CHECKING:
    import torch

    from bench.nn.functional import Params

ADAM_BETA2, ADAM_EPS = 0.999, 1e-8
OPTIMIZERS = ("sgd", "adam")


@dataclasses.dataclass
class ReptileConfig:
    """Where each default comes from (Nichol et al. 2018, "On first-order meta-learning algorithms").

    Regression: the authors' sine script, published with the OpenAI blog post on Reptile (gist
    joschu/f503500cda64f2ce87c8288906b09e2d, "reptile-sinewaves-demo.py"; read in public copies of it, the same
    values in each, not in the gist itself): inner SGD lr 0.02 (innerstepsize) on minibatches of 10 (ntrain), one
    pass over the task's 50 points (innerepochs 1: 5 steps), one task per outer step (meta_batch 1) with outer
    step 0.1 annealed linearly to 0 (outerstepsize0); test-time SGD at the same 0.02. Departure for the shared
    protocol: a task has K support + K query points, pooled (2K), so 5 steps of 10 make 1 to 2.5 passes.

    Classification (``PAPER_DEFAULTS``): the commands of github.com/openai/supervised-reptile's README ("the
    commands used for the paper"): Adam (``inner_optimizer``) at --learning-rate 1e-3 (Omniglot 20-way: 5e-4),
    --inner-batch 10 (20), --inner-iters 5 (Omniglot 20-way: 10, mini-ImageNet: 8), --meta-batch 5, --meta-step 1
    annealed to --meta-step-final 0; the test at the training learning rate. A classification suite the paper did
    not run: the Omniglot 5-way values. Not tuned.
    """

    inner_optimizer: str = "sgd"
    """``sgd``, or ``adam``: Adam with beta1 = 0 (as the paper), its state fresh for every task."""
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


PAPER_OUTER_LOOP = {"inner_optimizer": "adam", "meta_batch": 5, "outer_lr": 1.0}
"""openai/supervised-reptile README, every classification command: Adam, --meta-batch 5, --meta-step 1 (annealed
to 0)."""
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
    minibatches of its pooled support and query examples (all tasks at once, one ``vmap``); then
    ``theta <- theta + epsilon * mean_tasks(phi - theta)``, epsilon annealed linearly from ``outer_lr`` to
    0 over the task budget. Test: full-batch steps of ``inner_optimizer`` at ``eval_lr`` on the support set.

    Image suites (paper values, ``PAPER_DEFAULTS``): the paper trains on 10 (Omniglot) or 15
    (mini-ImageNet) shots per class and tests with 50 Adam iterations on batches of 5 (15 for
    mini-ImageNet 5-shot); here tasks carry the suite's 2K examples per class and the test takes
    ``--steps`` full-batch Adam steps (``--steps 50`` is the paper's test for 1-shot 5-way, where a batch
    of 5 is the whole support set). Adam's state is fresh per task; the authors' code keeps it across
    tasks. Batch norm uses the statistics of each batch, as the paper's transductive setting.
    """

    Config = ReptileConfig

    @classmethod
    def suite_defaults(cls, suite: TaskSuite, setting: Setting) -> dict[str, Any]:
        if suite.kind is not TaskKind.CLASSIFICATION:
            return {}
        return {**PAPER_OUTER_LOOP, **PAPER_DEFAULTS.get((suite.name, setting.ways), PAPER_DEFAULTS[("omniglot", 5)])}

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
        seen = 0
        for batch in ctx.batches(config.meta_batch):
            x = torch.cat([batch.support_x, batch.query_x], dim=1)
            y = torch.cat([batch.support_y, batch.query_y], dim=1)
            tasks = x.shape[0]
            minibatches = self._minibatches(x, y, ctx.generator)
            if tasks == 1:  # one task at a time (the sine script): no vmap, whose overhead dominates a small MLP's step
                steps = list(self._descend(self.weights, ((bx[0], by[0]) for bx, by in minibatches), config.inner_lr,
                                           batched=False))
                phi = steps[-1][0]
            else:
                start = {name: weight.expand(tasks, *weight.shape) for name, weight in self.weights.items()}
                steps = list(self._descend(start, minibatches, config.inner_lr, batched=True))
                phi = {name: value.mean(0) for name, value in steps[-1][0].items()}
            first_loss = steps[0][1]
            epsilon = config.outer_lr * (1 - seen / ctx.task_budget)
            self.weights = {name: weight + epsilon * (phi[name] - weight) for name, weight in self.weights.items()}
            seen += tasks
            ctx.log(first_loss.mean())  # the tasks' training loss at the initialisation

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
                 batched: bool) -> Iterator[tuple["Params", "torch.Tensor"]]:
        """Steps of ``inner_optimizer`` (fresh state) from ``weights``, one per ``(x, y)`` in ``batches``; yields
        the weights after each step and the loss before it (per task, with a leading task dimension, when ``batched``)."""
        import torch
        from torch.func import functional_call, vmap

        def task_loss(weights: "Params", x: "torch.Tensor", y: "torch.Tensor") -> "torch.Tensor":
            return self.loss(functional_call(self.model, weights, (x,)), y)

        losses = vmap(task_loss) if batched else task_loss
        second_moment: dict[str, Any] = {}
        for step, (x, y) in enumerate(batches, start=1):
            with torch.enable_grad():
                copies = {name: weight.detach().contiguous().requires_grad_() for name, weight in weights.items()}
                loss = losses(copies, x, y)
                grads = dict(zip(copies, torch.autograd.grad(loss.sum(), list(copies.values()))))
            if self.config.inner_optimizer == "adam":  # beta1 = 0: the first moment is the gradient itself
                for name, gradient in grads.items():
                    second_moment[name] = ADAM_BETA2 * second_moment.get(name, 0) + (1 - ADAM_BETA2) * gradient.square()
                    grads[name] = gradient / ((second_moment[name] / (1 - ADAM_BETA2**step)).sqrt() + ADAM_EPS)
            weights = {name: weight - lr * grads[name] for name, weight in weights.items()}
            yield weights, loss.detach()

    def state_dict(self) -> dict[str, "Params"]:
        """The meta-learned initialisation (each outer step binds new tensors to it)."""
        return {"weights": self.weights}

    def load_state_dict(self, state: dict[str, "Params"]) -> None:
        self.weights = {name: weight.clone() for name, weight in state["weights"].items()}

    batched = True

    def adapt(self, support: Support, steps: int, *, batched: bool = False) -> Iterator[Predictor]:
        """Full-batch steps on the support set from the meta-learned weights; a predictor after each of 0..steps."""
        import functools
        import itertools

        from torch.func import functional_call, vmap

        forward = functools.partial(functional_call, self.model)
        weights = self.weights
        if batched:
            forward = vmap(forward)
            weights = {name: weight.expand(support.x.shape[0], *weight.shape) for name, weight in weights.items()}
        yield lambda x, weights=weights: forward(weights, (x,))
        for adapted, _ in self._descend(weights, itertools.repeat(tuple(support), steps), self.config.eval_lr, batched):
            yield lambda x, adapted=adapted: forward(adapted, (x,))
