"""Inner loops as pure functions of parameters (``torch.func``), shared by gradient-based learners.

Parameters are split into *fast* weights, which the inner loop adapts (all of them for MAML, a
context vector for the adaptation-layer learner), and *slow* weights, which stay fixed within a
task. ``forward(fast, slow, x)`` is the model as a pure function of both.

The inner learning rate is one number, or (Meta-SGD) a meta-learned tensor per fast weight kept
among the slow weights under ``LR_PREFIX + name``, so that it is meta-trained like them.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator

import torch
from torch.func import grad, vmap

from bench.api import Predictor, Support

Params = dict[str, torch.Tensor]
Forward = Callable[[Params, Params, torch.Tensor], torch.Tensor]
Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

LR_PREFIX = "lr:"
"""With ``InnerLoop(lr=None)``, ``slow[LR_PREFIX + name]`` is the learning rate of fast weight ``name``."""


def _per_task(tensor: torch.Tensor, lead: torch.Size) -> torch.Tensor:
    """``tensor`` with a task dimension inserted after its ``len(lead) - 1`` seed dimensions (``lead``: the leading
    shape of the batch, ``(tasks,)`` or ``(seeds, tasks)``), differentiable per copy."""
    repeated = tensor.unsqueeze(len(lead) - 1).expand(*lead, *tensor.shape[len(lead) - 1:])
    return repeated if repeated.requires_grad else repeated.clone().requires_grad_()


def detached(params: Params) -> Params:
    return {name: tensor.detach() for name, tensor in params.items()}


@dataclasses.dataclass(frozen=True)
class InnerLoop:
    """Plain SGD on the support loss: ``fast <- fast - lr * grad_fast L(fast, slow, support)``.

    ``lr=None``: per-weight meta-learned rates, ``fast[name] <- fast[name] - slow[LR_PREFIX + name] * grad``.
    ``support_scale``: the inner loss is ``support_scale`` x ``loss`` (e.g. the number of classes, for MAML's
    reference loss, the sum over classes of each class's mean); the query loss of the outer loop is ``loss`` as is.
    ``init``: each task's initial fast weights as a differentiable function of the shared ones and its support set,
    ``init(fast, slow, support_x, support_y)`` for one task (ProtoMAML's head from the class prototypes); None: the
    shared ``fast`` weights. First-order meta-gradients only: the inner gradient treats each task's initial weights as
    variables of their own, and the meta-gradient reaches the shared weights through ``init`` and the adapted ones.

    For the episodes of a ``variable`` setting (Meta-Dataset's: each its own n ways among the head's outputs,
    class-imbalanced supports): ``episode_classes`` gives the logits of the classes absent from a task's support set
    -inf, in the support loss, the query loss and the predictions alike (Meta-Dataset's ``MAMLLearner`` slices the
    logits to the episode's ways, ``logits[:, 0:data.way]``: the same, labels being 0..n-1 and every class in the
    support set); ``class_balanced`` makes the inner loss the sum over the classes of each class's mean loss, what
    ``support_scale`` = N times the mean is on balanced N-way supports (``class_balanced_sum``).
    """

    forward: Forward
    loss: Loss
    lr: float | None
    support_scale: float = 1.0
    init: Callable[[Params, Params, torch.Tensor, torch.Tensor], Params] | None = None
    episode_classes: bool = False
    class_balanced: bool = False

    def rate(self, slow: Params, name: str) -> float | torch.Tensor:
        """The learning rate of fast weight ``name``: ``lr``, or the learned one in ``slow`` when ``lr`` is None."""
        return slow[LR_PREFIX + name] if self.lr is None else self.lr

    def predict(self, fast: Params, slow: Params, x: torch.Tensor, support_y: torch.Tensor) -> torch.Tensor:
        """``forward``, with ``episode_classes`` the logits of the classes absent from ``support_y`` at -inf."""
        prediction = self.forward(fast, slow, x)
        return absent_classes_masked(prediction, support_y) if self.episode_classes else prediction

    def support_loss(self, fast: Params, slow: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        prediction = self.predict(fast, slow, x, y)
        if self.class_balanced:
            return class_balanced_sum(self.loss, prediction, y)
        return self.support_scale * self.loss(prediction, y)

    def step(self, fast: Params, slow: Params, x: torch.Tensor, y: torch.Tensor, first_order: bool) -> Params:
        """One SGD step; differentiable through the gradient itself unless ``first_order``."""
        grads = grad(self.support_loss)(fast, slow, x, y)
        if first_order:
            grads = detached(grads)
        return {name: tensor - self.rate(slow, name) * grads[name] for name, tensor in fast.items()}

    def meta_loss(self, fast: Params, slow: Params, batch, steps: int, first_order: bool) -> torch.Tensor:
        """Mean query loss over a batch of episodes after ``steps`` inner steps each, vectorised.

        The fast weights get a leading task dimension, the forward pass is one ``vmap`` over tasks,
        and each task's inner gradient is the gradient of the summed support losses with respect
        to its own copy (plain autograd, no per-task loop; cheaper than ``vmap(grad(...))``).
        """
        return self._query_losses(fast, slow, batch, steps, first_order, seeds=False).mean()

    def seeds_meta_loss(self, fast: Params, slow: Params, batch, steps: int, first_order: bool) -> torch.Tensor:
        """``meta_loss`` of several seeds' models at once, one number per seed: every weight and every field of
        ``batch`` has a leading seed dimension (a batch of shape ``(seeds, tasks, ...)``). The gradient of the
        sum with respect to one seed's weights is that seed's ``meta_loss`` gradient."""
        return self._query_losses(fast, slow, batch, steps, first_order, seeds=True).mean(dim=1)

    def _query_losses(self, fast: Params, slow: Params, batch, steps: int, first_order: bool,
                      seeds: bool) -> torch.Tensor:
        """Each task's query loss after the inner loop: shape ``(tasks,)``, or ``(seeds, tasks)`` with ``seeds``."""
        lead = batch.support_x.shape[:2] if seeds else batch.support_x.shape[:1]
        predict, task_losses = vmap(self.predict, in_dims=(0, None, 0, 0)), vmap(self.loss)
        support_losses = vmap(self.support_loss, in_dims=(0, None, 0, 0))
        if seeds:  # each seed's own slow weights, shared by its tasks
            predict, task_losses = vmap(predict, in_dims=(0, 0, 0, 0)), vmap(task_losses)
            support_losses = vmap(support_losses, in_dims=(0, 0, 0, 0))
        adapted = {name: _per_task(tensor, lead) for name, tensor in fast.items()}
        if self.init is not None:
            self._check_first_order(first_order)
            init = vmap(self.init, in_dims=(0, None, 0, 0))
            if seeds:
                init = vmap(init, in_dims=(0, 0, 0, 0))
            adapted = init(adapted, slow, batch.support_x, batch.support_y)
        for _ in range(steps):
            # With init, the inner gradient is taken at detached copies: there the initial weights are variables of
            # their own (as step's torch.func.grad treats them), and the graph through init is kept for the outer loop.
            inner = adapted if self.init is None else {name: tensor.detach().requires_grad_()
                                                       for name, tensor in adapted.items()}
            support_loss = support_losses(inner, slow, batch.support_x, batch.support_y).sum()
            grads = torch.autograd.grad(support_loss, list(inner.values()), create_graph=not first_order)
            adapted = {name: tensor - self._task_rate(slow, name, seeds) * gradient
                       for (name, tensor), gradient in zip(adapted.items(), grads)}
        return task_losses(predict(adapted, slow, batch.query_x, batch.support_y), batch.query_y)

    @staticmethod
    def _check_first_order(first_order: bool) -> None:
        if not first_order:
            raise ValueError("an InnerLoop with init takes first-order meta-gradients only")

    def _task_rate(self, slow: Params, name: str, seeds: bool) -> float | torch.Tensor:
        """``rate`` shaped for weights with a task dimension (a learned rate of each seed, shared by its tasks)."""
        rate = self.rate(slow, name)
        return rate.unsqueeze(1) if seeds and isinstance(rate, torch.Tensor) else rate

    def pure_meta_loss(self, fast: Params, slow: Params, batch, steps: int, first_order: bool) -> torch.Tensor:
        """``meta_loss`` written with ``torch.func`` transforms only (``vmap`` of a per-task ``grad``), so
        that ``torch.func.grad`` of it is a single forward graph ``torch.compile`` can fuse. Same value."""

        if self.init is not None:
            self._check_first_order(first_order)

        def query_loss(fast: Params, slow: Params, episode) -> torch.Tensor:
            if self.init is not None:
                fast = self.init(fast, slow, episode.support_x, episode.support_y)
            for _ in range(steps):
                fast = self.step(fast, slow, episode.support_x, episode.support_y, first_order)
            return self.loss(self.predict(fast, slow, episode.query_x, episode.support_y), episode.query_y)

        return vmap(query_loss, in_dims=(None, None, 0))(fast, slow, batch).mean()

    def trajectory(self, fast: Params, slow: Params, support: Support, steps: int, *,
                   batched: bool = False) -> Iterator[Predictor]:
        """Test-time adaptation: a predictor after each of 0..steps first-order SGD steps on the support set.

        ``batched``: many tasks at once, ``support`` and the predictors' inputs and outputs with a leading task
        dimension; one ``vmap`` over tasks replaces a per-task loop (same numbers up to float rounding).
        """
        fast, slow = detached(fast), detached(slow)
        step, predict = functools.partial(self.step, first_order=True), self.predict
        if batched:
            fast = {name: tensor.expand(support.x.shape[0], *tensor.shape) for name, tensor in fast.items()}
            step, predict = vmap(step, in_dims=(0, None, 0, 0)), vmap(predict, in_dims=(0, None, 0, 0))
        if self.init is not None:
            init = vmap(self.init, in_dims=(0, None, 0, 0)) if batched else self.init
            fast = detached(init(fast, slow, support.x, support.y))
        yield task_predictor(predict, fast, slow, support.y)
        for _ in range(steps):
            fast = detached(step(fast, slow, support.x, support.y))
            yield task_predictor(predict, fast, slow, support.y)


def task_predictor(predict: Callable[..., torch.Tensor], fast: Params, slow: Params,
                   support_y: torch.Tensor) -> Predictor:
    """``predict`` of the weights ``fast`` and ``slow`` for a task whose support labels are ``support_y``."""
    return lambda x: predict(fast, slow, x, support_y)


def absent_classes_masked(logits: torch.Tensor, support_y: torch.Tensor) -> torch.Tensor:
    """``logits`` (..., classes) with -inf for the classes no label of one task's ``support_y`` names."""
    present = (support_y.unsqueeze(-1) == torch.arange(logits.shape[-1], device=logits.device)).any(dim=0)
    return logits.masked_fill(~present, float("-inf"))


def class_balanced_sum(loss: Loss, prediction: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The sum over the classes of ``y`` of each class's mean ``loss``, for one task: sum_i loss_i / n_(y_i), each
    example's loss (``loss`` of it alone) over the number of examples of its class. N x the mean ``loss`` on a
    balanced N-way support set; on an imbalanced one every class weighs the same."""
    each = vmap(loss)(prediction.unsqueeze(1), y.unsqueeze(1))
    same_class = (y.unsqueeze(0) == y.unsqueeze(1)).sum(dim=1)
    return (each / same_class).sum()
