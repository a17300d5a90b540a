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
    """What is wrong with one episode's fields (the caller says where it comes from)."""
    import torch

    if setting.variable is not None:
        return _variable_problems(suite, split, setting, episode)
    ways = setting.ways or 1
    problems = []
    for field, count in (("support_x", setting.shots * ways), ("support_y", setting.shots * ways),
                         ("query_y", None), ("query_x", None)):
        tensor = getattr(episode, field)
        if not isinstance(tensor, torch.Tensor):
            return [f"{field} is a {type(tensor).__name__}, not a tensor"]
        if count is not None and tensor.shape[0] != count:
            problems.append(f"{field} has {tensor.shape[0]} examples; {setting.shots} shots x {ways} ways = {count}")
    if episode.query_x.shape[0] != episode.query_y.shape[0]:
        problems.append(f"query_x has {episode.query_x.shape[0]} examples but query_y {episode.query_y.shape[0]}")
    if suite.kind is TaskKind.CLASSIFICATION:
        if not setting.ways:
            return [f"setting '{setting.name}' of a classification suite must set ways"]
        for field in ("support_y", "query_y"):
            labels = getattr(episode, field)
            if labels.dtype != torch.long or labels.dim() != 1:
                problems.append(f"{field} must be a 1-d long tensor of labels, got {labels.dtype} {tuple(labels.shape)}")
            elif torch.bincount(labels, minlength=ways).tolist() != [labels.numel() // ways] * ways:
                problems.append(f"{field} must hold every label 0..{ways - 1} equally often, got {labels.tolist()}")
        if episode.support_y.dtype == torch.long and torch.bincount(episode.support_y, minlength=ways).tolist() != [setting.shots] * ways:
            problems.append(f"each of the {ways} classes needs {setting.shots} support examples")
        classes = episode.classes
        if classes.shape != (ways,) or len(set(classes.tolist())) != ways:
            problems.append(f"classes must be {ways} distinct class indices of the split, got {classes.tolist()}")
        elif not 0 <= int(classes.min()) <= int(classes.max()) < suite.num_classes(split):
            problems.append(f"classes {classes.tolist()} are outside 0..{suite.num_classes(split) - 1}")
    for field in Episode._fields[:4]:
        tensor = getattr(episode, field)
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            problems.append(f"{field} has non-finite values")
    return problems


def _variable_problems(suite: TaskSuite, split: str, setting: Setting, episode: Episode) -> list[str]:
    """What is wrong with one episode of a ``variable`` setting: its n ways within the sampler's bounds, labels
    0..n-1, each class 1..``shots`` support examples and the same number of queries, n distinct classes."""
    import torch

    sampler, problems = setting.variable, []
    assert sampler is not None
    support, query = torch.bincount(episode.support_y), torch.bincount(episode.query_y)
    ways = len(support)
    if not sampler.min_ways <= ways <= (setting.ways or sampler.max_ways):
        problems.append(f"an episode has {ways} ways; expected {sampler.min_ways}..{setting.ways}")
    if len(query) != ways or int(support.min()) < 1 or len(set(query.tolist())) != 1:
        problems.append(f"labels must be 0..n-1, each with support examples and as many queries, got support "
                        f"{support.tolist()} and query {query.tolist()}")
    if int(support.max()) > setting.shots or int(query.max()) > setting.query:
        problems.append(f"more than {setting.shots} support or {setting.query} query examples of a class")
    if episode.support_x.shape[0] != episode.support_y.shape[0] or episode.query_x.shape[0] != episode.query_y.shape[0]:
        problems.append("inputs and labels differ in number")
    if episode.classes.shape != (ways,) or len(set(episode.classes.tolist())) != ways:
        problems.append(f"classes must be {ways} distinct class indices of the split, got {episode.classes.tolist()}")
    return problems


def _model_problems(suite: TaskSuite, setting: Setting, episode: Episode) -> list[str]:
    import torch

    backbone = suite.backbone(setting)
    prediction = backbone(episode.query_x)
    if suite.kind is TaskKind.CLASSIFICATION:
        expected = (episode.query_x.shape[0], setting.ways)
    else:
        expected = tuple(episode.query_y.shape)
    if tuple(prediction.shape) != expected:
        return [f"the backbone maps the query inputs to shape {tuple(prediction.shape)}; expected {expected}"]
    loss = suite.loss(prediction, episode.query_y)
    if not (isinstance(loss, torch.Tensor) and loss.dim() == 0 and torch.isfinite(loss) and loss.requires_grad):
        return [f"loss() must return a finite, differentiable 0-d tensor, got {loss!r}"]
    metric = suite.metric(prediction.detach(), episode.query_y)
    if not (isinstance(metric, torch.Tensor) and metric.dim() == 0 and torch.isfinite(metric)):
        return [f"metric() must return a finite 0-d tensor, got {metric!r}"]
    perfect = suite.metric(_perfect(suite, setting, episode), episode.query_y)
    if (perfect > metric if suite.lower_is_better else perfect < metric):
        return [f"the metric of perfect predictions ({float(perfect):.4g}) is worse than that of an untrained "
                f"network ({float(metric):.4g}); check lower_is_better"]
    return []


def _perfect(suite: TaskSuite, setting: Setting, episode: Episode) -> "torch.Tensor":
    from torch.nn import functional as F

    if suite.kind is TaskKind.CLASSIFICATION:
        return 10.0 * F.one_hot(episode.query_y, setting.ways).float()
    return episode.query_y.clone()


class _Problems:
    """Problems by what is wrong, each with the places it was seen: one line a problem, with its count, however
    many settings and splits show it."""

    SHOWN_PLACES = 3

    def __init__(self) -> None:
        self.places: dict[str, list[str]] = {}

    def add(self, problem: str, where: str = "") -> None:
        self.places.setdefault(problem, []).append(where)

    def lines(self) -> list[str]:
        lines = []
        for problem, places in self.places.items():
            named = [place for place in places if place]
            if not named:
                lines.append(problem)
                continue
            shown = ", ".join(named[:self.SHOWN_PLACES]) + (", ..." if len(named) > self.SHOWN_PLACES else "")
            lines.append(f"{problem} ({len(named)} {'time' if len(named) == 1 else 'times'}: {shown})")
        return lines


def suite_problems(suite: TaskSuite, check: SuiteCheck = SuiteCheck()) -> list[str]:
    """Every way ``suite`` (an instance, with its data) breaks the contract, one message each; empty when it conforms."""
    import torch

    from bench.plugins import class_problem

    why = class_problem("suite", suite.name, type(suite))
    if why:
        return [why]
    problems = _Problems()
    if not isinstance(suite.kind, TaskKind) or not isinstance(suite.lower_is_better, bool) or not suite.metric_name:
        problems.add("kind (TaskKind), metric_name and lower_is_better (bool) must be set")
    settings = suite.settings()
    if not settings or len({setting.name for setting in settings}) != len(settings):
        return [*problems.lines(), f"settings() must return settings with distinct names, got {settings!r}"]
    seed = check.seed
    splits = ("test",) if suite.test_only else SPLITS
    for setting in settings:
        seen: dict[str, set[bytes]] = {}
        for split in splits:
            where = f"{split} episodes of '{setting.name}'"
            first = suite.sample_episode(split, setting, seed, 0)
            if not _same(first, suite.sample_episode(split, setting, seed, 0)):
                problems.add("episode 0 differs between two calls: episodes must be a pure function of (split, "
                             "setting, seed, index); use bench.api.episode_rng", where)
            if _same(first, suite.sample_episode(split, setting, seed, 1)) or _same(first, suite.sample_episode(split, setting, seed + 1, 0)):
                problems.add("episodes do not change with the index or the seed", where)
            for problem in _shape_problems(suite, split, setting, first):
                problems.add(problem, where)
            count = 1 if setting.variable is not None else 3  # a variable setting's episodes do not stack
            batch = suite.sample_batch(split, setting, seed, range(count))
            stacked = Episode(*(torch.stack(field) for field in zip(*(suite.sample_episode(split, setting, seed, i) for i in range(count)))))
            if not _same(batch, stacked):
                problems.add("sample_batch() differs from stacking sample_episode()", where)
            seen[split] = set().union(*(_rows(suite.sample_episode(split, setting, seed, i)) for i in range(check.episodes)))
        for index, split in enumerate(splits):
            for other in splits[index + 1:]:
                shared = len(seen[split] & seen[other])
                if shared:
                    problems.add(f"input examples appear in both the {split} and the {other} split (among "
                                 f"{check.episodes} episodes each); splits must be disjoint",
                                 f"{shared} in '{setting.name}'")
        for problem in _model_problems(suite, setting, suite.sample_episode("test", setting, seed, 0)):
            problems.add(problem, f"setting '{setting.name}'")
    return problems.lines()
