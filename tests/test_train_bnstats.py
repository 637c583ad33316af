"""BatchNorm statistics re-estimated for the weights that are validated and saved (medclass.train.bnstats)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from test_dataset import make_png_set


def _bn_layers(model: torch.nn.Module) -> list[torch.nn.BatchNorm2d]:
    return [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]


def test_recompute_bn_stats_averages_batches_and_restores_the_model():
    from medclass.model import apply_mode, create_model
    from medclass.train.bnstats import recompute_bn_stats

    torch.manual_seed(0)
    model = create_model(2, aux_logits=True, image_size=75)
    apply_mode(model, "partial", partial_blocks=1)  # everything but Mixed_7c (and the heads) frozen
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = [(torch.randn(4, 3, 75, 75) * 3 + 1, torch.zeros(4)) for _ in range(3)] + [
        (torch.randn(1, 3, 75, 75), torch.zeros(1))  # a batch of one has no statistics: skipped
    ]
    rng = torch.get_rng_state()
    used = recompute_bn_stats(model, batches, device=torch.device("cpu"), max_batches=2, precision="fp32")
    assert used == 2
    assert torch.equal(torch.get_rng_state(), rng)  # dropout draws did not move the training's RNG
    assert not model.training
    after = model.state_dict()
    assert all(m.momentum == 0.1 for m in _bn_layers(model))
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert "Mixed_7c.branch1x1.bn.running_mean" in changed and "AuxLogits.conv0.bn.running_var" in changed
    assert not any(k.startswith(("Conv2d_1a", "Mixed_7b")) for k in changed)  # frozen: untouched
    assert not any("num_batches_tracked" in k or "weight" in k for k in changed)
    # nothing to average over: nothing changes
    assert recompute_bn_stats(model, [], device=torch.device("cpu"), max_batches=4) == 0
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in after.items())


def _eval_and_train_logits(stem: Path, manifest: Path, size: int) -> tuple[float, float]:
    from medclass import checkpoint
    from medclass.manifest import load_manifest
    from medclass.model import MainLogits, create_model, forward_train
    from medclass.preprocess import Preprocessor, input_spec
    from medclass.preprocess.dataset import CachedDataset

    model = create_model(2, aux_logits=True, image_size=size)
    state, _ = checkpoint.read_state_dict(stem)
    model.load_state_dict(state)
    ds = CachedDataset(
        load_manifest(manifest, manifest.parent),
        "train",
        Preprocessor(input_spec("inception_v3", size)),
        cache="memory",
        workers=0,
        progress=False,
    ).load()
    x = torch.stack([ds[i][0] for i in range(len(ds))])  # N×3×S×S, the training images as evaluated
    with torch.no_grad():
        model.eval()
        eval_logits = MainLogits(model)(x)
        model.train()
        train_logits, _ = forward_train(model, x)
    return float(eval_logits.abs().max()), float(train_logits.abs().max())


@pytest.mark.slow
def test_from_scratch_eval_logits_stay_bounded(tmp_path, caplog):
    """11 steps from random init: the running averages (momentum 0.1) still hold ~30% of their initial
    0/1, so without re-estimation eval-mode logits are an order of magnitude beyond train-mode ones."""
    from medclass.train import train
    from medclass.train.config import resolve_config

    manifest = make_png_set(tmp_path / "data", n_train=44, n_val=8, size=64)

    def run(name: str, **kw) -> tuple[float, float, dict]:
        config = resolve_config(
            None,
            dict(
                manifest=str(manifest),
                out=str(tmp_path / name),
                data_root=str(manifest.parent),
                image_size=96,
                batch_size=4,
                epochs=1,
                warmup_epochs=0,
                device="cpu",
                precision="fp32",
                progress=False,
                workers=0,
                **kw,
            ),
        )
        result = train(config)
        return (*_eval_and_train_logits(result.last, manifest, 96), result.history[-1])

    with caplog.at_level(logging.WARNING, logger="medclass.train"):
        eval_fixed, train_fixed, row_fixed = run("fixed")
    assert "exactly 0 or 1" not in caplog.text
    assert eval_fixed < 4 * train_fixed + 5, (eval_fixed, train_fixed)
    assert row_fixed["val_loss"] < 2 and row_fixed["val_saturated"] == 0

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="medclass.train"):
        eval_raw, train_raw, row_raw = run("lagging", bn_batches=0)
    assert train_raw == pytest.approx(train_fixed, rel=1e-4)  # same weights: only the statistics differ
    assert eval_raw > 4 * train_raw + 5, (eval_raw, train_raw)
    assert row_raw["val_loss"] > 5 * row_fixed["val_loss"]
