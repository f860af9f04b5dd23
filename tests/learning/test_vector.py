"""Model <-> vector round trips, layout, and buffer handling."""

import numpy as np
import pytest
import torch
from torch import nn

from p2pfl.learning import (
    digits_model,
    model_to_vector,
    num_params,
    vector_layout,
    vector_to_model,
)


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_round_trip(name):
    src = digits_model(name, seed=1)
    dst = digits_model(name, seed=2)
    vec = model_to_vector(src)
    assert vec.dtype == np.float32 and vec.shape == (num_params(src),)
    assert not np.array_equal(vec, model_to_vector(dst))
    assert vector_to_model(dst, vec) is dst
    assert np.array_equal(model_to_vector(dst), vec)
    for (k, a), (_, b) in zip(src.state_dict().items(), dst.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


def test_order_is_state_dict_order():
    model = digits_model("mlp", seed=0)
    vec = model_to_vector(model)
    expected = np.concatenate([t.reshape(-1).numpy() for t in model.state_dict().values()])
    assert np.array_equal(vec, expected)
    assert vector_layout(model) == [
        ("layers.0.weight", (64, 64)),
        ("layers.0.bias", (64,)),
        ("layers.1.weight", (10, 64)),
        ("layers.1.bias", (10,)),
    ]
    assert num_params(model) == 4810
    assert num_params(digits_model("cnn", 0)) == 38282


def test_vector_does_not_alias_model():
    model = digits_model("mlp", seed=0)
    vec = model_to_vector(model)
    before = vec.copy()
    with torch.no_grad():
        model.layers[0].weight.add_(1.0)
    assert np.array_equal(vec, before)
    vec[:] = 0
    assert float(model.layers[0].bias.detach().abs().sum()) > 0


def test_batchnorm_float_buffers_in_vector_int_buffers_local():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    model.train()
    model(torch.randn(8, 3, generator=torch.Generator().manual_seed(0)))  # moves running stats
    layout = dict(vector_layout(model))
    assert "1.running_mean" in layout and "1.running_var" in layout
    assert "1.num_batches_tracked" not in layout
    assert num_params(model) == 12 + 4 + 4 + 4 + 4 + 4

    other = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    vector_to_model(other, model_to_vector(model))
    assert torch.equal(other[1].running_mean, model[1].running_mean)
    assert torch.equal(other[1].running_var, model[1].running_var)
    assert int(other[1].num_batches_tracked) == 0  # stays local
    assert int(model[1].num_batches_tracked) == 1


def test_other_float_dtypes_convert():
    model = nn.Linear(4, 2).to(torch.float64)
    vec = model_to_vector(model)
    assert vec.dtype == np.float32
    vector_to_model(model, vec + np.float32(1))
    assert model.weight.dtype == torch.float64
    assert np.array_equal(model_to_vector(model), vec + np.float32(1))


def test_bad_vectors_rejected():
    model = digits_model("mlp", 0)
    n = num_params(model)
    with pytest.raises(ValueError, match="4810"):
        vector_to_model(model, np.zeros(n - 1, dtype=np.float32))
    with pytest.raises(ValueError):
        vector_to_model(model, np.zeros((1, n), dtype=np.float32))
    with pytest.raises(TypeError):
        vector_to_model(model, np.zeros(n, dtype=np.int32))
