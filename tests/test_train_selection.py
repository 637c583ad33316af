"""Model selection criteria (--select) and weight averaging (--ema): medclass.train.loop / .averaging."""

from __future__ import annotations

import json
import math

import pytest
import torch
from test_dataset import make_png_set

from medclass.errors import ConfigError


def test_select_criteria_pick_different_epochs_on_ties():
    from medclass.train.loop import _Tracker

    epochs = [(1.0, 0.9), (1.0, 0.3), (0.95, 0.1), (1.0, 0.5)]  # (val AUC, val NLL): AUC ties at 1.0
    picked = {}
    for select in ("auc", "loss", "auc+loss"):
        t = _Tracker(patience=0, select=select)
        for e, (auc, nll) in enumerate(epochs, 1):
            t.update(e, auc, nll)
        picked[select] = t.best_epoch
    assert picked == {"auc": 1, "loss": 3, "auc+loss": 2}
    # early stopping counts epochs without a better key
    t = _Tracker(patience=2, select="auc+loss")
    assert t.update(1, 1.0, 0.9) and t.update(2, 1.0, 0.5)
    assert not t.update(3, 1.0, 0.6) and not t.update(4, 0.9, 0.1) and t.should_stop
    # undefined AUC: auc+loss still orders by the loss
    u = _Tracker(patience=0, select="auc+loss")
    u.update(1, math.nan, 2.0)
    assert u.update(2, math.nan, 1.0)
    # a saved state (JSON: -inf survives) resumes the comparison
    w = _Tracker(patience=0, select="loss")
    w.load(json.loads(json.dumps(t.state())))
    assert w.select == "auc+loss" and w.best_score == [1.0, -0.5]
    w.load({"best_score": 0.7})  # state written before criteria existed
    assert w.best_score == [0.7]


def test_select_and_ema_are_validated_config():
    from medclass.train.config import resolve_config

    base = dict(manifest="m.csv", out="o")
    with pytest.raises(ConfigError, match="unknown select 'brier'; valid: auc, loss, auc\\+loss"):
        resolve_config(None, base | {"select": "brier"})
    with pytest.raises(ConfigError, match="ema_decay"):
        resolve_config(None, base | {"ema_decay": 1.0})
    assert resolve_config(None, base).select == "auc+loss"


def test_weight_average_follows_the_weights_and_resumes():
    from medclass.train.averaging import WeightAverage

    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ema = WeightAverage(model, decay=0.9)
    w0 = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model[1].running_mean.fill_(5.0)
    ema.update(model)  # step 1: warm-up decay 0 → a copy
    assert torch.allclose(ema.module[0].weight, w0 + 1)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    ema.update(model)  # step 2: decay 1 - 2^(-2/3) ≈ 0.37 → moves part of the way
    d = 1 - 2 ** (-2 / 3)
    assert torch.allclose(ema.module[0].weight, d * (w0 + 1) + (1 - d) * (w0 + 2), atol=1e-6)
    assert torch.equal(ema.module[1].running_mean, torch.full((2,), 5.0))  # buffers copied, not averaged
    again = WeightAverage(model, decay=0.9)
    again.load(ema.state())
    assert again.steps == 2 and torch.equal(again.module[0].weight, ema.module[0].weight)


def test_the_average_gets_its_own_batchnorm_statistics():
    """The averaged copy's trainable BatchNorms are re-estimated (its frozen ones, as the model's, not)."""
    from medclass.model import apply_mode, create_model
    from medclass.train.averaging import WeightAverage
    from medclass.train.bnstats import recompute_bn_stats

    torch.manual_seed(0)
    model = create_model(2, aux_logits=True, image_size=75)
    apply_mode(model, "partial", partial_blocks=1)
    ema = WeightAverage(model, decay=0.9)
    before = {k: v.clone() for k, v in ema.module.state_dict().items()}
    batches = [(torch.randn(4, 3, 75, 75) * 2, torch.zeros(4))]
    assert recompute_bn_stats(ema.module, batches, device=torch.device("cpu"), max_batches=1) == 1
    after = ema.module.state_dict()
    assert not torch.equal(
        after["Mixed_7c.branch1x1.bn.running_mean"], before["Mixed_7c.branch1x1.bn.running_mean"]
    )
    assert torch.equal(
        after["Mixed_7b.branch1x1.bn.running_mean"], before["Mixed_7b.branch1x1.bn.running_mean"]
    )
    assert not ema.module.training


@pytest.mark.slow
def test_ema_run_saves_its_average_as_best_and_resumes_exactly(tmp_path):
    from medclass import checkpoint
    from medclass.train import train
    from medclass.train.config import resolve_config
    from medclass.train.runfiles import read_metrics

    manifest = make_png_set(tmp_path / "data", n_train=8, n_val=4)

    def config(out: str, **kw):
        values = dict(
            manifest=str(manifest),
            out=str(tmp_path / out),
            data_root=str(manifest.parent),
            image_size=75,
            batch_size=4,
            epochs=2,
            warmup_epochs=0,
            device="cpu",
            progress=False,
            workers=0,
            ema=True,
            ema_decay=0.9,
            select="loss",
        )
        return resolve_config(None, values | kw)

    full = train(config("full"))
    best, last = checkpoint.load(full.best), checkpoint.load(full.last)
    assert best.meta["train"]["weights"] == "ema" and last.meta["train"]["weights"] == "raw"
    assert best.meta["train"]["select"] == "loss" and best.meta["train"]["bn_batches"] == 32
    a, _ = checkpoint.read_state_dict(full.best)
    b, _ = checkpoint.read_state_dict(full.last)
    assert not torch.equal(a["fc.weight"], b["fc.weight"])  # the average is not the raw weights
    rows = read_metrics(tmp_path / "full" / "metrics.csv")
    assert all(math.isfinite(r["raw_val_loss"]) and math.isfinite(r["val_loss"]) for r in rows)
    assert rows[full.best_epoch - 1]["val_loss"] == min(r["val_loss"] for r in rows)  # select loss

    train(config("part"), max_epochs=1)
    resumed = train(config("part"), resume=True)
    for stem_a, stem_b in ((full.last, resumed.last), (full.run_dir / "best", resumed.run_dir / "best")):
        x, _ = checkpoint.read_state_dict(stem_a)
        y, _ = checkpoint.read_state_dict(stem_b)
        assert all(torch.equal(x[k], y[k]) for k in x), stem_a
    with pytest.raises(ConfigError, match="ema"):
        train(config("part", epochs=3, ema=False), resume=True)
