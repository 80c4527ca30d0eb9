"""TrainConfig: every field is checked for type and range, naming the field and its value."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

import dit_core as dit
from dit_core.errors import ConfigError


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(epochs=0), "TrainConfig.epochs=0: must be a positive integer"),
        (dict(epochs=True), "TrainConfig.epochs=True: must be an integer"),
        (dict(epochs=2.5), "TrainConfig.epochs=2.5: must be an integer"),
        (dict(batch_size="32"), "TrainConfig.batch_size='32': must be an integer"),
        (dict(step_every="a"), "TrainConfig.step_every='a': must be an integer"),
        (dict(lr=float("nan")), "TrainConfig.lr=nan: must be a finite number"),
        (dict(lr=-0.1), "TrainConfig.lr=-0.1: must be a positive finite number"),
        (dict(weight_decay="x"), "TrainConfig.weight_decay='x': must be a finite number"),
        (dict(weight_decay=-1), "TrainConfig.weight_decay=-1.0: must be >= 0"),
        (dict(momentum=1.0), "TrainConfig.momentum=1.0: must lie in [0, 1)"),
        (dict(nesterov="yes"), "TrainConfig.nesterov='yes': must be True or False"),
        (dict(nesterov=True), "TrainConfig.nesterov=True: needs momentum > 0"),
        (dict(betas=0.9), "TrainConfig.betas=0.9: must be two numbers in [0, 1)"),
        (dict(betas=(0.9, 1.0)), "TrainConfig.betas=(0.9, 1.0): must be two numbers in [0, 1)"),
        (dict(betas=("a", 0.9)), "TrainConfig.betas=('a', 0.9): must be two numbers in [0, 1)"),
        (dict(device=None), "TrainConfig.device=None: must be a string"),
        (dict(device="tpu"), "TrainConfig.device='tpu': must be 'cpu', 'cuda' or 'cuda:N'"),
        (dict(schedule="linear"), "TrainConfig.schedule='linear': must be one of constant, step, cosine"),
        (dict(checkpoint_every=0), "TrainConfig.checkpoint_every=0: must be >= 1 or None"),
        (dict(optimizer="adam", momentum=0.9), "momentum/nesterov/dampening apply to sgd only"),
    ],
)
def test_bad_fields_are_refused_by_name(kwargs, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        dit.TrainConfig(**kwargs)


def test_numpy_scalars_are_accepted_and_stored_as_plain_json_numbers():
    c = dit.TrainConfig(epochs=np.int64(3), batch_size=np.int32(8), lr=np.float32(0.5), seed=np.int64(7), betas=[0.8, 0.9])
    d = c.to_dict()
    assert (d["epochs"], d["batch_size"], d["seed"], d["lr"], d["betas"]) == (3, 8, 7, 0.5, [0.8, 0.9])
    assert type(d["epochs"]) is int and type(d["lr"]) is float
    assert dit.TrainConfig.from_dict(json.loads(json.dumps(d))) == c
    with pytest.raises(ConfigError, match="unknown TrainConfig fields: learning_rate"):
        dit.TrainConfig.from_dict({**d, "learning_rate": 0.1})
