"""The suites' backbones as the reference implementations build them (issue: faithful to the papers)."""
from __future__ import annotations

import pytest
import torch
from bench_plugins.suites.sinusoid import Sinusoid
from torch import nn

from bench.nn.backbones import MAML_MLP_STD, mlp


def test_sinusoid_mlp_is_initialised_as_in_maml_reference_code():
    """cbfinn/maml construct_fc_weights: weights tf.truncated_normal(stddev=0.01) (cut at two standard deviations),
    biases zero. PyTorch's default would give the first layer (fan-in 1) weights up to 1 and non-zero biases."""
    suite = Sinusoid()
    torch.manual_seed(0)
    network = suite.backbone(suite.settings()[0])
    linears = [module for module in network if isinstance(module, nn.Linear)]
    assert [(layer.in_features, layer.out_features) for layer in linears] == [(1, 40), (40, 40), (40, 1)]
    weights = torch.cat([layer.weight.detach().flatten() for layer in linears])
    assert weights.abs().max() <= 2 * MAML_MLP_STD
    # a normal of std 0.01 truncated at 2 std has std 0.0088; 1,680 weights pin it within a few percent
    assert weights.std().item() == pytest.approx(0.0088, rel=0.08)
    assert all(torch.equal(layer.bias, torch.zeros_like(layer.bias)) for layer in linears)


def test_unknown_initialisation_is_refused():
    with pytest.raises(ValueError, match="init must be 'torch' or 'maml'"):
        mlp([1, 4, 1], init="xavier")
