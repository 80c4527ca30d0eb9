"""Tests for dit_core.models: shapes, parameter counts, seeding and manifests."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from dit_core.data import BUILTIN_DATASETS, load_dataset
from dit_core.errors import ConfigError, ModelError
from dit_core.models import BUILTIN_MODELS, build_model, count_parameters, describe_model

# (model, input_shape, n_classes, options) -> exact parameter count
PARAM_COUNTS = [
    ("logreg", (64,), 10, {}, 64 * 10 + 10),
    ("logreg", (1, 8, 8), 10, {}, 64 * 10 + 10),
    ("mlp", (30,), 2, {}, (30 * 32 + 32) + (32 * 2 + 2)),
    ("mlp", (4,), 3, {"hidden": (16, 8)}, (4 * 16 + 16) + (16 * 8 + 8) + (8 * 3 + 3)),
    ("mlp", (4,), 3, {"hidden": ()}, 4 * 3 + 3),
    # cnn on 8x8: conv 1->8 (80), conv 8->16 (1168), pool to 4x4, linear 256->10 (2570)
    ("cnn", (1, 8, 8), 10, {}, 80 + 1168 + 2570),
    # 28x28: pool 7x7 -> 4x4
    ("cnn", (1, 28, 28), 10, {}, 80 + 1168 + 2570),
    ("cnn", (3, 5, 5), 4, {"channels": (4, 6)}, (3 * 4 * 9 + 4) + (4 * 6 * 9 + 6) + (6 * 25 * 4 + 4)),
]


@pytest.mark.parametrize(("name", "shape", "n_classes", "options", "expected"), PARAM_COUNTS)
def test_parameter_counts(name, shape, n_classes, options, expected) -> None:
    model = build_model(name, shape, n_classes, seed=0, **options)
    assert count_parameters(model) == expected


@pytest.mark.parametrize(("name", "shape", "n_classes", "options", "expected"), PARAM_COUNTS)
def test_output_is_logits_of_shape_batch_by_classes(name, shape, n_classes, options, expected) -> None:
    model = build_model(name, shape, n_classes, seed=0, **options)
    x = torch.randn(5, *shape)
    out = model(x)
    assert out.shape == (5, n_classes)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_cnn_is_small_on_digits() -> None:
    assert 1000 <= count_parameters(build_model("cnn", (1, 8, 8), 10)) <= 5000


@pytest.mark.parametrize("dataset", BUILTIN_DATASETS)
@pytest.mark.parametrize("name", BUILTIN_MODELS)
def test_every_model_on_every_dataset(dataset: str, name: str) -> None:
    split = load_dataset(dataset)
    if name == "cnn" and len(split.input_shape) != 3:
        with pytest.raises(ModelError):
            build_model(name, split.input_shape, split.n_classes, seed=0)
        return
    model = build_model(name, split.input_shape, split.n_classes, seed=0)
    out = model(torch.from_numpy(split.X_val[:7]))
    assert out.shape == (7, split.n_classes)


@pytest.mark.parametrize("name", BUILTIN_MODELS)
def test_same_seed_gives_identical_parameters(name: str) -> None:
    a = build_model(name, (1, 8, 8), 10, seed=123)
    b = build_model(name, (1, 8, 8), 10, seed=123)
    c = build_model(name, (1, 8, 8), 10, seed=124)
    for (na, pa), (nb, pb), (_, pc) in zip(a.named_parameters(), b.named_parameters(), c.named_parameters()):
        assert na == nb
        assert torch.equal(pa, pb), na
        assert not torch.equal(pa, pc), na


@pytest.mark.parametrize("name", BUILTIN_MODELS)
def test_seeded_build_leaves_global_rng_untouched(name: str) -> None:
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    build_model(name, (1, 8, 8), 10, seed=5)
    assert torch.equal(torch.rand(3), expected)


def test_seeded_init_matches_torch_default_scale() -> None:
    model = build_model("logreg", (100,), 3, seed=0)
    linear = model[1]
    bound = 1.0 / 100**0.5
    assert linear.weight.abs().max() <= bound
    assert linear.bias.abs().max() <= bound
    assert linear.weight.abs().max() > 0.9 * bound


def test_unseeded_build_follows_global_rng() -> None:
    torch.manual_seed(42)
    a = build_model("mlp", (4,), 3)
    torch.manual_seed(42)
    b = build_model("mlp", (4,), 3)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


@pytest.mark.parametrize("name", BUILTIN_MODELS)
def test_no_batch_dependent_or_random_layers(name: str) -> None:
    model = build_model(name, (1, 8, 8), 10, seed=0)
    for module in model.modules():
        assert not isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.Dropout))
    # a sample's logits do not depend on the rest of its batch
    x = torch.randn(6, 1, 8, 8)
    torch.testing.assert_close(model(x)[2:3], model(x[2:3]))


def test_mlp_activation_option() -> None:
    relu = build_model("mlp", (4,), 3, hidden=(8, 8), seed=0, activation="relu")
    tanh = build_model("mlp", (4,), 3, hidden=(8, 8), seed=0)
    assert sum(isinstance(m, nn.ReLU) for m in relu.modules()) == 2
    assert sum(isinstance(m, nn.Tanh) for m in tanh.modules()) == 2
    assert not any(isinstance(m, nn.ReLU) for m in tanh.modules())


@pytest.mark.parametrize(
    ("name", "shape", "options", "keys"),
    [
        ("logreg", (30,), {"hidden": (64,)}, {"name", "input_shape", "n_classes", "seed"}),
        ("mlp", (30,), {"hidden": (16, 8), "activation": "tanh"},
         {"name", "input_shape", "n_classes", "seed", "hidden", "activation"}),
        ("cnn", (1, 8, 8), {"channels": (4, 8)},
         {"name", "input_shape", "n_classes", "seed", "channels", "activation"}),
    ],
)
def test_describe_model_round_trips_through_json(name, shape, options, keys) -> None:
    desc = describe_model(name, shape, 3, seed=9, **options)
    assert set(desc) == keys
    restored = json.loads(json.dumps(desc))
    assert restored == desc
    original = build_model(name, shape, 3, seed=9, **options)
    rebuilt = build_model(**restored)
    assert str(rebuilt) == str(original)
    for pa, pb in zip(original.parameters(), rebuilt.parameters()):
        assert torch.equal(pa, pb)


def test_describe_model_fills_defaults() -> None:
    assert describe_model("mlp", (64,), 10) == {
        "name": "mlp", "input_shape": [64], "n_classes": 10, "seed": None,
        "hidden": [32], "activation": "tanh",
    }


# --------------------------------------------------------------------------- #
# Errors
# --------------------------------------------------------------------------- #


def test_unknown_model_lists_valid_names() -> None:
    with pytest.raises(ModelError) as err:
        build_model("resnet", (4,), 3)
    msg = str(err.value)
    assert "resnet" in msg
    for name in BUILTIN_MODELS:
        assert name in msg


@pytest.mark.parametrize("shape", [(30,), (8, 8), (1, 1, 8, 8)])
def test_cnn_rejects_non_image_input(shape) -> None:
    with pytest.raises(ModelError, match=r"\(C_in, H, W\)") as err:
        build_model("cnn", shape, 3)
    assert str(shape) in str(err.value)
    with pytest.raises(ModelError):
        describe_model("cnn", shape, 3)


def test_unknown_option_is_an_error() -> None:
    with pytest.raises(ConfigError, match="dropout"):
        build_model("mlp", (4,), 3, dropout=0.5)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"n_classes": 1}, "n_classes"),
        ({"input_shape": ()}, "input_shape"),
        ({"input_shape": (0,)}, "input_shape"),
        ({"hidden": (8, -1)}, "hidden"),
        ({"hidden": 8}, "hidden"),
        ({"activation": "gelu"}, "activation"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_option_values_name_the_field(kwargs, field) -> None:
    args = {"name": "mlp", "input_shape": (4,), "n_classes": 3}
    args.update(kwargs)
    with pytest.raises(ConfigError, match=field):
        build_model(**args)
