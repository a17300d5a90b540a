"""Conformance checks of a task suite: deterministic episodes, disjoint splits, declared shapes, loss and metric."""
from __future__ import annotations

import dataclasses
import hashlib
from typing import TYPE_CHECKING

from bench.api import SPLITS, Episode, Setting, TaskKind, TaskSuite

if TYPE_CHECKING:
    import torch


@dataclasses.dataclass(frozen=True)
class SuiteCheck:
    episodes: int = 20
    """Episodes per split and setting compared for disjointness."""
    seed: int = 0


def _same(first: Episode, second: Episode) -> bool:
    import torch

    return all(a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b) for a, b in zip(first, second))


def _rows(episode: Episode) -> set[bytes]:
    """A hash of every input example (support and query) of an episode."""
    return {hashlib.blake2b(row.contiguous().numpy().tobytes(), digest_size=16).digest()
            for inputs in (episode.support_x, episode.query_x) for row in inputs}


def _shape_problems(suite: TaskSuite, split: str, setting: Setting, episode: Episode) -> list[str]:
    import torch

    where = f"{split} episode of setting '{setting.name}'"
    ways = setting.ways or 1
    problems = []
    for field, count in (("support_x", setting.shots * ways), ("support_y", setting.shots * ways),
                         ("query_y", None), ("query_x", None)):
        tensor = getattr(episode, field)
        if not isinstance(tensor, torch.Tensor):
            return [f"{where}: {field} is a {type(tensor).__name__}, not a tensor"]
        if count is not None and tensor.shape[0] != count:
            problems.append(f"{where}: {field} has {tensor.shape[0]} examples; {setting.shots} shots x {ways} ways = {count}")
    if episode.query_x.shape[0] != episode.query_y.shape[0]:
        problems.append(f"{where}: query_x has {episode.query_x.shape[0]} examples but query_y {episode.query_y.shape[0]}")
    if suite.kind is TaskKind.CLASSIFICATION:
        if not setting.ways:
            return [f"setting '{setting.name}' of a classification suite must set ways"]
        for field in ("support_y", "query_y"):
            labels = getattr(episode, field)
            if labels.dtype != torch.long or labels.dim() != 1:
                problems.append(f"{where}: {field} must be a 1-d long tensor of labels, got {labels.dtype} {tuple(labels.shape)}")
            elif torch.bincount(labels, minlength=ways).tolist() != [labels.numel() // ways] * ways:
                problems.append(f"{where}: {field} must hold every label 0..{ways - 1} equally often, got {labels.tolist()}")
        if episode.support_y.dtype == torch.long and torch.bincount(episode.support_y, minlength=ways).tolist() != [setting.shots] * ways:
            problems.append(f"{where}: each of the {ways} classes needs {setting.shots} support examples")
        classes = episode.classes
        if classes.shape != (ways,) or len(set(classes.tolist())) != ways:
            problems.append(f"{where}: classes must be {ways} distinct class indices of the split, got {classes.tolist()}")
        elif not 0 <= int(classes.min()) <= int(classes.max()) < suite.num_classes(split):
            problems.append(f"{where}: classes {classes.tolist()} are outside 0..{suite.num_classes(split) - 1}")
    for field in Episode._fields[:4]:
        tensor = getattr(episode, field)
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            problems.append(f"{where}: {field} has non-finite values")
    return problems


def _model_problems(suite: TaskSuite, setting: Setting, episode: Episode) -> list[str]:
    import torch

    where = f"setting '{setting.name}'"
    backbone = suite.backbone(setting)
    prediction = backbone(episode.query_x)
    if suite.kind is TaskKind.CLASSIFICATION:
        expected = (episode.query_x.shape[0], setting.ways)
    else:
        expected = tuple(episode.query_y.shape)
    if tuple(prediction.shape) != expected:
        return [f"{where}: the backbone maps the query inputs to shape {tuple(prediction.shape)}; expected {expected}"]
    loss = suite.loss(prediction, episode.query_y)
    if not (isinstance(loss, torch.Tensor) and loss.dim() == 0 and torch.isfinite(loss) and loss.requires_grad):
        return [f"{where}: loss() must return a finite, differentiable 0-d tensor, got {loss!r}"]
    metric = suite.metric(prediction.detach(), episode.query_y)
    if not (isinstance(metric, torch.Tensor) and metric.dim() == 0 and torch.isfinite(metric)):
        return [f"{where}: metric() must return a finite 0-d tensor, got {metric!r}"]
    perfect = suite.metric(_perfect(suite, setting, episode), episode.query_y)
    if (perfect > metric if suite.lower_is_better else perfect < metric):
        return [f"{where}: the metric of perfect predictions ({float(perfect):.4g}) is worse than that of an untrained "
                f"network ({float(metric):.4g}); check lower_is_better"]
    return []


def _perfect(suite: TaskSuite, setting: Setting, episode: Episode) -> "torch.Tensor":
    from torch.nn import functional as F

    if suite.kind is TaskKind.CLASSIFICATION:
        return 10.0 * F.one_hot(episode.query_y, setting.ways).float()
    return episode.query_y.clone()


def suite_problems(suite: TaskSuite, check: SuiteCheck = SuiteCheck()) -> list[str]:
    """Every way ``suite`` (an instance, with its data) breaks the contract, one message each; empty when it conforms."""
    import torch

    from bench.plugins import class_problem

    why = class_problem("suite", suite.name, type(suite))
    if why:
        return [why]
    problems = []
    if not isinstance(suite.kind, TaskKind) or not isinstance(suite.lower_is_better, bool) or not suite.metric_name:
        problems.append("kind (TaskKind), metric_name and lower_is_better (bool) must be set")
    settings = suite.settings()
    if not settings or len({setting.name for setting in settings}) != len(settings):
        return [*problems, f"settings() must return settings with distinct names, got {settings!r}"]
    seed = check.seed
    for setting in settings:
        seen: dict[str, set[bytes]] = {}
        for split in SPLITS:
            first = suite.sample_episode(split, setting, seed, 0)
            if not _same(first, suite.sample_episode(split, setting, seed, 0)):
                problems.append(f"{split} episode 0 of '{setting.name}' differs between two calls: episodes must be "
                                "a pure function of (split, setting, seed, index); use bench.api.episode_rng")
            if _same(first, suite.sample_episode(split, setting, seed, 1)) or _same(first, suite.sample_episode(split, setting, seed + 1, 0)):
                problems.append(f"{split} episodes of '{setting.name}' do not change with the index or the seed")
            problems += _shape_problems(suite, split, setting, first)
            batch = suite.sample_batch(split, setting, seed, range(3))
            stacked = Episode(*(torch.stack(field) for field in zip(*(suite.sample_episode(split, setting, seed, i) for i in range(3)))))
            if not _same(batch, stacked):
                problems.append(f"sample_batch() of '{setting.name}' ({split}) differs from stacking sample_episode()")
            seen[split] = set().union(*(_rows(suite.sample_episode(split, setting, seed, i)) for i in range(check.episodes)))
        for index, split in enumerate(SPLITS):
            for other in SPLITS[index + 1:]:
                shared = len(seen[split] & seen[other])
                if shared:
                    problems.append(f"'{setting.name}': {shared} input examples appear in both the {split} and the "
                                    f"{other} split (among {check.episodes} episodes each); splits must be disjoint")
        problems += _model_problems(suite, setting, suite.sample_episode("test", setting, seed, 0))
    return problems
