"""Several seeds' models as one: weights stacked along a leading seed dimension, and the per-seed view of an
optimiser's state, so that a group of seeds checkpoints and resumes exactly like each seed alone."""
from __future__ import annotations

from typing import Any

import torch

Params = dict[str, torch.Tensor]


def stack_seeds(members: list[Params]) -> Params:
    """One leaf tensor per name, the members' tensors stacked along a new leading dimension (a meta-learned one,
    i.e. requiring a gradient in the first member, requires one here)."""
    return {name: torch.stack([member[name].detach() for member in members]).requires_grad_(tensor.requires_grad)
            for name, tensor in members[0].items()}


def seed_views(stacked: Params, seed: int) -> Params:
    """Seed ``seed``'s slice of every stacked tensor: views, so they follow the in-place updates of the stack."""
    return {name: tensor.detach()[seed] for name, tensor in stacked.items()}


def seed_slice(tensors: list[torch.Tensor], seed: int) -> list[torch.Tensor]:
    """Copies of seed ``seed``'s slices (a copy, not a view: saving a view would save the whole stack)."""
    return [tensor.detach()[seed].clone() for tensor in tensors]


def seed_optimizer_state(state: dict[str, Any], seed: int) -> dict[str, Any]:
    """Seed ``seed``'s part of an elementwise optimiser's ``state_dict()`` (Adam's moments) over stacked weights:
    what the same optimiser over that seed's weights alone would hold (its step counts are the group's)."""
    return {"state": {key: {name: value.clone() if name == "step" else value[seed].clone()
                            for name, value in per_weight.items()}
                      for key, per_weight in state["state"].items()},
            "param_groups": state["param_groups"]}


def stack_optimizer_states(states: list[dict[str, Any]]) -> dict[str, Any]:
    """The inverse of ``seed_optimizer_state``: the seeds' optimiser states as one over their stacked weights.
    Raises ValueError when the seeds have taken different numbers of steps."""
    stacked: dict[Any, dict[str, Any]] = {}
    for key, per_weight in states[0]["state"].items():
        stacked[key] = {}
        for name, value in per_weight.items():
            values = [state["state"][key][name] for state in states]
            if name == "step":
                if any(not torch.equal(other, value) for other in values):
                    raise ValueError("the seeds' optimisers have taken different numbers of steps")
                stacked[key][name] = value
            else:
                stacked[key][name] = torch.stack(values)
    if any(len(state["state"]) != len(states[0]["state"]) for state in states):
        raise ValueError("the seeds' optimisers have taken different numbers of steps")
    return {"state": stacked, "param_groups": states[0]["param_groups"]}
