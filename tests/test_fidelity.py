"""Fidelity of the first-order influence estimates against exact counterfactual replay.

Every test records a small seeded float64 run (20% injected label noise), computes its
influence at every epoch end (query: mean validation loss) and compares the estimates
with exact replay through :func:`dit_core.validate.validate` on three windows:

- ``full``: removal during the whole run, measured at the end;
- ``last_epoch``: removal during the last epoch, measured at the end;
- ``accrued``: the paper's windowed influence I(c_b) - I(c_a) between the first checkpoint
  at or after the first quarter of training and the end.

Samples are chosen by stratified random choice over each window's estimated influence,
so the comparison covers the whole range (most helpful to most harmful), not only the
bulk near zero. Targets (Pearson on every window): >= 0.99 for logistic regression and
MLPs trained with SGD (plain, momentum + weight decay, Nesterov), >= 0.95 for the CNN and
for Adam/AdamW (whose step is non-linear in the gradient and is linearised by the sweep).
Rank agreement (Spearman, Kendall τ) is checked too.

The sizes were chosen so that every target holds with a margin at these seeds and at
other seeds tried (see each case's comment for the measured values); they are not at
the edge. Timing (replay cost against one training run) is measured by
``benchmarks/bench_fidelity.py``, not here; :func:`test_one_replay_takes_at_most_one_training_run`
checks the step count it rests on.
"""

from __future__ import annotations

import pytest

import dit_core as dit
from dit_core.data import load_dataset
from dit_core.models import build_model, describe_model
from dit_core.replay import replay
from dit_core.validate import validate

WINDOWS = ("full", "last_epoch", "accrued")


def _record(path, data, kind, *, n=None, epochs, batch_size=32, seed=0, hidden=(32,), **cfg):
    ds = load_dataset(data, corruption_rate=0.2, corruption_seed=seed)
    kw = {"hidden": hidden} if kind == "mlp" else {}
    desc = describe_model(kind, ds.input_shape, ds.n_classes, seed=seed, **kw)
    config = dit.TrainConfig(**{"epochs": epochs, "batch_size": batch_size, "lr": 0.1, "dtype": "float64", "seed": seed, **cfg})
    sl = slice(0, n)
    dit.record(
        build_model(**desc),
        (ds.X_train[sl], ds.y_train[sl]),
        (ds.X_val, ds.y_val),
        config,
        path,
        model_description={"kind": "builtin", **desc},
        dataset_description=ds.describe(),
        original_labels=ds.original_y_train[sl],
        is_corrupted=ds.is_corrupted[sl],
        progress=False,
    )
    return dit.compute(path, checkpoints="epochs", progress=False)


def _check(run, *, samples, pearson, spearman, kendall, windows=WINDOWS, min_accuracy=0.5):
    """Validate ``run`` and assert the targets on every window; returns {window: (r, rho, tau)}."""
    assert float(run.epochs["val_accuracy"].iloc[-1]) >= min_accuracy  # the run learned something
    rep = validate(run, n_samples=samples, windows=windows, seed=0, progress=False, out_dir=run.path / "validation")
    assert rep.reproduces_recording and rep.trajectory_deviation < 1e-9
    got = {w: (rep[w].pearson, rep[w].spearman, rep[w].kendall) for w in windows}
    for w, (r, rho, tau) in got.items():
        assert len(rep[w].sample_ids) == min(samples, run.n_train)
        assert r is not None and r >= pearson, (w, got)
        assert rho >= spearman, (w, got)
        assert tau >= kendall, (w, got)
        # the estimate has the right sign and scale, not only the right order
        assert 0.8 < rep[w].slope < 1.25, (w, rep[w].slope)
    print({w: tuple(round(x, 4) for x in v) for w, v in got.items()})
    return got


# ----------------------------------------------------------------------------- SGD, tabular
# breast_cancer: all 455 training samples, 10 epochs (150 steps), batch 32.
# logreg, lr 0.1: Pearson >= 0.998, Kendall >= 0.99 on every window at seeds 0-4.
# MLP 30-32-2 (tanh): at lr 0.05 Pearson >= 0.998 at seeds 0-4; at lr 0.1 the whole-run
# window drops to 0.990-0.996 at some seeds (Spearman stays 1.0: the largest influences are
# slightly non-linear in the removal), too close to the target for a test.
@pytest.mark.parametrize(
    "kind, lr",
    [("logreg", 0.1), ("mlp", 0.05)],
)
def test_breast_cancer_sgd(tmp_path, kind, lr):
    run = _record(tmp_path / "run", "breast_cancer", kind, epochs=10, lr=lr)
    _check(run, samples=40, pearson=0.99, spearman=0.97, kendall=0.9, min_accuracy=0.85)


# ----------------------------------------------------------------------------- CNN
# digits 8x8, first 400 training samples, built-in CNN (8, 16 channels, tanh), 6 epochs,
# batch 32, lr 0.1: Pearson >= 0.997, Kendall >= 0.97 (seed 0).
@pytest.mark.slow
def test_digits_cnn_sgd(tmp_path):
    run = _record(tmp_path / "run", "digits", "cnn", n=400, epochs=6)
    _check(run, samples=20, pearson=0.95, spearman=0.9, kendall=0.8, min_accuracy=0.6)


# ----------------------------------------------------------------------------- other optimizers
# digits 8x8, first 720 training samples, MLP 64-32-10 (tanh), 8 epochs (184 steps), batch 32.
# Momentum runs use lr 0.01 (effective step lr / (1 - momentum) = 0.1), Adam/AdamW torch's
# default lr 1e-3. Measured at seeds 0-2: momentum + weight decay and Nesterov Pearson >= 0.999,
# Kendall >= 0.99; Adam/AdamW Pearson 0.986-0.994 (full), >= 0.999 (last epoch), 0.984-0.996
# (accrued), Kendall >= 0.90 everywhere.
OPTIMIZERS = {
    "sgd_momentum_wd": (dict(lr=0.01, momentum=0.9, weight_decay=5e-4), 0.99, 0.97, 0.9),
    "sgd_nesterov": (dict(lr=0.01, momentum=0.9, nesterov=True), 0.99, 0.97, 0.9),
    "adam": (dict(optimizer="adam", lr=1e-3), 0.95, 0.95, 0.8),
    "adamw": (dict(optimizer="adamw", lr=1e-3, weight_decay=1e-2), 0.95, 0.95, 0.8),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_digits_mlp_optimizers(tmp_path, name):
    cfg, pearson, spearman, kendall = OPTIMIZERS[name]
    run = _record(tmp_path / "run", "digits", "mlp", n=720, epochs=8, **cfg)
    assert run.optimizer["name"] == cfg.get("optimizer", "sgd")
    _check(run, samples=40, pearson=pearson, spearman=spearman, kendall=kendall, min_accuracy=0.7)


# ----------------------------------------------------------------------------- replay cost
def test_one_replay_steps_through_at_most_the_runs_own_steps(tmp_path):
    """A single un-vectorised replay steps through at most the run's own number of steps, and
    only from the stored step before the sample's first use in the window.

    (Its wall time against a training run is measured in ``benchmarks/bench_fidelity.py``;
    timing assertions do not belong in unit tests.)
    """
    run = _record(tmp_path / "run", "breast_cancer", "logreg", n=128, epochs=3)
    first = int(run.batch(0)[0])  # used at step 0: the longest possible replay
    r = replay(run, [first], chunk=1, progress=False)
    assert r.first_removal.tolist() == [0]
    assert r.replayed_steps == run.n_steps
    # removal late in the run replays only from the stored step before it (full trajectory here)
    assert run.manifest["trajectory"]["mode"] == "full"
    late = int(run.batch(run.n_steps - 1)[0])
    r = replay(run, [late], run.n_steps - 1, run.n_steps, chunk=1, progress=False)
    assert r.replayed_steps == 1
