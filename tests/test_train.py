"""Training building blocks that need no data on disk: config layering, schedule, loss, sampler, AUC,
augmentation, gathering of validation predictions."""

from __future__ import annotations

import argparse
import itertools
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from medclass.errors import ConfigError
from medclass.train.config import (
    TrainConfig,
    apply_overrides,
    check_resumable,
    read_saved,
    resolve_config,
    save_config,
)

# --- config ------------------------------------------------------------------------------------------


def test_config_layering_defaults_yaml_flags(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("manifest: m.csv\nout: runs/a\nepochs: 7\nlr: 0.01\nmode: linear\naux-weight: 0.2\n")
    c = resolve_config(cfg, {"lr": 0.5, "out": "runs/b"})
    assert c.epochs == 7  # from YAML
    assert c.lr == 0.5  # flag beats YAML
    assert c.out == "runs/b"
    assert c.mode == "linear" and c.aux_weight == 0.2  # YAML, dash spelling accepted
    assert c.batch_size == TrainConfig.batch_size  # default
    assert c.label_smoothing == 0.1 and c.aux_weight != TrainConfig.aux_weight


def test_config_unknown_yaml_key_lists_valid_keys(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("manifest: m.csv\nout: o\nlearning_rate: 0.1\n")
    with pytest.raises(ConfigError) as exc:
        resolve_config(cfg)
    msg = str(exc.value)
    assert "learning_rate" in msg and "valid keys" in msg and "lr" in msg and str(cfg) in msg


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ({"epochs": "many"}, "epochs"),
        ({"mode": "half"}, "unknown mode 'half'; valid: linear, partial, full"),
        ({"aux_weight": -1}, "aux_weight"),
        ({"label_smoothing": 1.0}, "label_smoothing"),
        ({"image_size": 32}, "image_size"),
        ({"epochs": 2.5}, "epochs"),
    ],
)
def test_config_bad_values(values, needle):
    with pytest.raises(ConfigError, match=needle):
        apply_overrides(TrainConfig(manifest="m", out="o"), values).validate()


def test_config_requires_manifest_and_out():
    with pytest.raises(ConfigError, match="manifest is required"):
        resolve_config(None, {"out": "o"})


def test_saved_config_roundtrip_and_resume_checks(tmp_path):
    c = resolve_config(None, {"manifest": "m.csv", "out": str(tmp_path), "seed": 3})
    path = tmp_path / "config.yaml"
    save_config(c, path, manifest_sha256="a" * 64)
    saved = read_saved(path)
    assert saved["manifest_sha256"] == "a" * 64 and saved["seed"] == 3
    assert set(saved["versions"]) >= {"medclass", "torch", "timm"}
    assert "host" not in path.read_text().lower()
    # the saved file is itself a valid --config
    again = resolve_config(path)
    assert again == c
    check_resumable(saved, c, "a" * 64, path)  # same: fine
    with pytest.raises(ConfigError, match="manifest changed"):
        check_resumable(saved, c, "b" * 64, path)
    with pytest.raises(ConfigError, match="lr"):
        check_resumable(saved, apply_overrides(c, {"lr": 0.1}), "a" * 64, path)
    check_resumable(saved, apply_overrides(c, {"epochs": 50}), "a" * 64, path)  # may extend a run


def test_cli_only_given_flags_override(tmp_path):
    from medclass.cli import train as cli_train

    parser = argparse.ArgumentParser()
    cli_train.add_arguments(parser)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("manifest: m.csv\nout: o\nepochs: 9\nchannels_last: false\n")
    args = parser.parse_args(["--config", str(cfg), "--lr", "0.02"])
    assert cli_train.flags_given(args) == {"lr": 0.02}
    c = cli_train.resolve(args)
    assert (c.epochs, c.lr, c.channels_last) == (9, 0.02, False)
    args = parser.parse_args(["--config", str(cfg), "--channels-last", "--no-augment"])
    c = cli_train.resolve(args)
    assert c.channels_last is True and c.augment is False


# --- schedule, loss, sampler, AUC ---------------------------------------------------------------------


def test_lr_schedule_warmup_then_cosine():
    from medclass.train.loop import lr_lambda

    f = lr_lambda(total_steps=100, warmup_steps=10, min_ratio=0.01)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.01 + 0.99 * 0.5)
    assert f(100) == pytest.approx(0.01)
    values = [f(s) for s in range(10, 101)]
    assert all(a >= b for a, b in itertools.pairwise(values))


def test_inception_loss_combines_main_and_aux():
    from medclass.train.objective import InceptionLoss

    torch.manual_seed(0)
    main, aux, y = torch.randn(6, 3), torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    loss = InceptionLoss("multiclass", aux_weight=0.4, label_smoothing=0.1)
    total, m, a = loss(main, aux, y)
    ref_m = torch.nn.functional.cross_entropy(main, y, label_smoothing=0.1)
    ref_a = torch.nn.functional.cross_entropy(aux, y, label_smoothing=0.1)
    assert torch.allclose(m, ref_m) and torch.allclose(a, ref_a)
    assert torch.allclose(total, ref_m + 0.4 * ref_a)
    total0, _, a0 = InceptionLoss("multiclass", aux_weight=0.0)(main, aux, y)
    assert a0 == 0 and torch.allclose(total0, torch.nn.functional.cross_entropy(main, y))
    ml = InceptionLoss("multilabel", aux_weight=0.4)
    t = torch.tensor([[1.0, 0, 1], [0, 0, 1], [1, 1, 0], [0, 0, 0], [1, 0, 0], [0, 1, 1]])
    total, m, a = ml(main, aux, t)
    assert torch.allclose(m, torch.nn.functional.binary_cross_entropy_with_logits(main, t))


def test_imbalance_weights():
    from medclass.train.objective import loss_weights, sample_weights

    y = torch.tensor([0] * 8 + [1] * 2)
    w = loss_weights(y, 2, "multiclass")
    assert w.tolist() == pytest.approx([10 / 16, 10 / 4])
    s = sample_weights(y, 2, "multiclass")
    assert float(s[y == 0].sum()) == pytest.approx(float(s[y == 1].sum()))
    t = torch.tensor([[1.0, 0], [0, 0], [0, 0], [0, 1]])
    assert loss_weights(t, 2, "multilabel").tolist() == pytest.approx([3.0, 3.0])


def test_epoch_sampler_seeded_sharded_balanced():
    from medclass.train.objective import EpochSampler

    s = EpochSampler(10, seed=1)
    s.set_epoch(0)
    a = list(s)
    assert sorted(a) == list(range(10)) and list(s) == a
    s.set_epoch(1)
    assert list(s) != a
    r0, r1 = EpochSampler(7, seed=1, rank=0, world_size=2), EpochSampler(7, seed=1, rank=1, world_size=2)
    both = list(r0) + list(r1)
    assert len(list(r0)) == len(list(r1)) == 4 and set(both) == set(range(7))
    w = torch.tensor([1.0] * 90 + [9.0] * 10)  # 10 rare samples weigh as much as 90 common ones
    b = EpochSampler(100, seed=0, weights=w)
    drawn = torch.tensor([list(b) for _ in range(1)]).flatten()
    assert 30 < int((drawn >= 90).sum()) < 70


def test_macro_auc_known_values_and_single_class(caplog):
    from medclass.train.objective import macro_auc

    y = np.array([0, 0, 1, 1])
    p = np.array([[0.9, 0.1], [0.6, 0.4], [0.65, 0.35], [0.2, 0.8]])
    assert macro_auc(y, p, "multiclass") == pytest.approx(0.75)
    y3 = np.array([0, 1, 2, 0, 1, 2])
    p3 = np.eye(3)[y3] * 0.8 + 0.1
    assert macro_auc(y3, p3, "multiclass") == pytest.approx(1.0)
    with caplog.at_level(logging.WARNING):
        assert math.isnan(macro_auc(np.array([1, 1]), np.array([[0.2, 0.8], [0.4, 0.6]]), "multiclass"))
    assert "undefined" in caplog.text
    t = np.array([[1, 0], [0, 0], [1, 0]])
    s = np.array([[0.9, 0.1], [0.2, 0.3], [0.8, 0.5]])
    assert macro_auc(t, s, "multilabel") == pytest.approx(1.0)  # finding 2 has no positive: left out


def test_gather_keeps_each_index_once():
    from medclass.train.distributed import DistContext, gather_predictions

    ctx = DistContext(0, 1, 0, torch.device("cpu"))
    idx = torch.tensor([3, 0, 1, 3, 2, 0])  # padded shards repeat indices
    scores = torch.tensor([[3.0], [0.0], [1.0], [3.0], [2.0], [0.0]])
    sc, tg, _ls = gather_predictions(idx, scores, idx.clone(), idx.float(), ctx)
    assert sc.flatten().tolist() == [0, 1, 2, 3] and tg.tolist() == [0, 1, 2, 3]


# --- augmentation --------------------------------------------------------------------------------------


def test_augment_identity_deterministic_and_no_flip():
    from medclass.train.augment import RandomAffine, RandomIntensity, build_augment

    torch.manual_seed(0)
    x = torch.randn(3, 3, 32, 32)
    ident = RandomAffine(0.0, (1.0, 1.0), 0.0)(x, torch.Generator().manual_seed(0))
    assert torch.allclose(ident, x, atol=1e-5)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    jit = RandomIntensity(0.0, 0.0, mean, std)(x.clamp(-2, 2), torch.Generator().manual_seed(0))
    assert torch.allclose(jit, x.clamp(-2, 2), atol=1e-5)
    aug = build_augment(mean=mean, std=std)
    a = aug(x, torch.Generator().manual_seed(5))
    b = aug(x, torch.Generator().manual_seed(5))
    c = aug(x, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert aug.transforms[0].hflip == 0.0
    assert build_augment(mean=mean, std=std, hflip=True).transforms[0].hflip == 0.5


def test_affine_fills_with_black_and_moves_a_blob():
    from medclass.train.augment import RandomAffine

    x = torch.full((1, 3, 40, 40), -2.0)  # normalised black
    x[..., 18:22, 30:34] = 2.0  # a bright blob on the right
    out = RandomAffine(0.0, (0.5, 0.5), 0.0, fill=(-2.0, -2.0, -2.0))(x, torch.Generator().manual_seed(0))
    assert torch.allclose(out[..., :3, :3], torch.tensor(-2.0))  # moved-in border is black
    cols = torch.nonzero(out[0, 0] > 0)[:, 1]
    assert cols.float().mean() < 31  # zooming out moves the blob toward the centre
    flipped = RandomAffine(0.0, (1.0, 1.0), 0.0, hflip=1.0)(x, torch.Generator().manual_seed(0))
    assert torch.allclose(flipped, x.flip(-1), atol=1e-5)


def test_fast_augment_matches_the_textbook_formulas():
    """The cached-grid affine equals ``F.affine_grid`` + ``grid_sample``; the one-pass intensity jitter
    equals un-normalise → (p - centre)·c + centre + b → clamp → normalise."""
    import math

    import torch.nn.functional as F

    from medclass.train.augment import RandomIntensity, _affine_grid

    torch.manual_seed(0)
    a = torch.tensor([0.3, -0.1])
    s = torch.tensor([1.1, 0.9])
    theta = torch.stack(
        [
            torch.stack([torch.cos(a) / s, -torch.sin(a) / s, torch.tensor([0.05, -0.1])], 1),
            torch.stack([torch.sin(a) / s, torch.cos(a) / s, torch.tensor([0.0, 0.08])], 1),
        ],
        1,
    )
    ref = F.affine_grid(theta, [2, 3, 37, 53], align_corners=False)
    assert torch.allclose(_affine_grid(theta, 37, 53), ref, atol=1e-6)

    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    x = torch.randn(4, 3, 24, 24) * 1.5
    out = RandomIntensity(0.1, 0.2, mean, std)(x, torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)  # the same draws, in the same order
    b = (torch.rand(4, generator=g) * 0.2 - 0.1).view(4, 1, 1, 1)
    c = (torch.rand(4, generator=g) * 0.4 + 0.8).view(4, 1, 1, 1)
    m, sd = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    p = x * sd + m
    centre = p.mean(dim=(1, 2, 3), keepdim=True)
    expected = (((p - centre) * c + centre + b).clamp(0, 1) - m) / sd
    assert torch.allclose(out, expected, atol=1e-5)
    assert not math.isclose(float((out - x).abs().max()), 0.0)


# --- end to end through the loop (tiny: 75 px, 8 train + 4 val images, batch 4) --------------------------

from test_dataset import make_png_set  # noqa: E402


def _config(manifest: Path, out: Path, **kw):
    values = dict(
        manifest=str(manifest),
        out=str(out),
        data_root=str(manifest.parent),
        image_size=75,
        batch_size=4,
        epochs=1,
        lr=1e-3,
        device="cpu",
        progress=False,
        workers=0,
        warmup_epochs=0,
        seed=0,
    )
    values.update(kw)
    return resolve_config(None, values)


def _init_model(seed: int = 0):
    """The random init `train` starts from with this seed (it seeds, then builds the model)."""
    from medclass.model import create_model
    from medclass.train.loop import seed_everything

    seed_everything(seed)
    return create_model(2, aux_logits=True, image_size=75)


def _weights(stem: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(stem) + ".safetensors")


@pytest.fixture(scope="module")
def pngs(tmp_path_factory) -> Path:
    return make_png_set(tmp_path_factory.mktemp("train_pngs"))


def test_aux_head_trains_and_its_loss_falls():
    from medclass.model import apply_mode, create_model
    from medclass.train.objective import InceptionLoss
    from medclass.train.steps import StepRunner

    torch.manual_seed(0)
    model = create_model(2, aux_logits=True, image_size=75)
    groups = apply_mode(model, "full", backbone_lr_scale=1.0)
    before = {k: v.clone() for k, v in model.AuxLogits.state_dict().items()}
    opt = torch.optim.AdamW([{"params": g["params"]} for g in groups], lr=1e-3)
    runner = StepRunner(
        model,
        opt,
        InceptionLoss("multiclass", aux_weight=0.4),
        device=torch.device("cpu"),
        precision="fp32",
        channels_last=True,
    )
    x, y = torch.randn(8, 3, 75, 75), torch.tensor([0, 1] * 4)
    aux_losses = [float(runner.step(x, y)[2]) for _ in range(6)]
    assert aux_losses[-1] < aux_losses[0] * 0.8, aux_losses
    after = model.AuxLogits.state_dict()
    for name in ("conv0.conv.weight", "conv1.conv.weight", "fc.weight"):
        assert not torch.equal(before[name], after[name]), name


def test_aux_weight_zero_leaves_the_aux_head_untouched(pngs, tmp_path):
    from medclass.train import train

    init = _init_model(0).state_dict()
    result = train(_config(pngs, tmp_path / "run", aux_weight=0.0, mode="full"))
    last = _weights(result.last)
    aux = [k for k in last if k.startswith("AuxLogits.")]
    assert aux and all(torch.equal(last[k], init[k]) for k in aux)
    assert not torch.equal(last["Mixed_7c.branch1x1.conv.weight"], init["Mixed_7c.branch1x1.conv.weight"])
    assert result.history[0]["train_aux_loss"] == 0.0


@pytest.mark.parametrize("mode", ["linear", "partial"])
def test_frozen_modes_freeze_what_they_say(pngs, tmp_path, mode):
    from medclass.train import train

    init = _init_model(0).state_dict()
    result = train(_config(pngs, tmp_path / mode, mode=mode, partial_blocks=1, lr=1e-2))
    last = _weights(result.last)
    changed = {k for k in last if not torch.equal(last[k], init[k])}
    assert "fc.weight" in changed and "AuxLogits.fc.weight" in changed
    # frozen layers: weights and BatchNorm statistics exactly as initialised
    assert not any(k.startswith(("Conv2d_1a", "Mixed_5b", "Mixed_7b")) for k in changed)
    if mode == "linear":
        assert all(k.startswith(("fc.", "AuxLogits.fc.")) for k in changed), sorted(changed)[:5]
    else:  # partial_blocks=1: the last block (Mixed_7c), its BatchNorms, the aux head and fc train
        assert "Mixed_7c.branch1x1.conv.weight" in changed and "Mixed_7c.branch1x1.bn.running_mean" in changed
        assert "AuxLogits.conv0.conv.weight" in changed


def test_checkpoints_run_files_and_exact_resume(pngs, tmp_path):
    import yaml

    from medclass import checkpoint
    from medclass.train import train

    full = train(_config(pngs, tmp_path / "full", epochs=2))
    part = train(_config(pngs, tmp_path / "part", epochs=2), max_epochs=1)
    assert part.last_epoch == 1
    resumed = train(_config(pngs, tmp_path / "part", epochs=2), resume=True)
    assert resumed.resumed_from == 1 and resumed.last_epoch == 2
    a, b = _weights(full.last), _weights(resumed.last)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows_a = runfiles_rows(tmp_path / "full")
    rows_b = runfiles_rows(tmp_path / "part")
    assert [r["epoch"] for r in rows_b] == [1, 2]
    assert [r["val_auc"] for r in rows_a] == [r["val_auc"] for r in rows_b]

    run = tmp_path / "full"
    for name in (
        "best.safetensors",
        "best.json",
        "last.safetensors",
        "last.json",
        "last.state.json",
        "metrics.csv",
        "config.yaml",
    ):
        assert (run / name).is_file(), name
    ck = checkpoint.load(run / "best")
    assert ck.meta["classes"] == ["normal", "opacity"] and ck.meta["task"] == "multiclass"
    assert ck.meta["positive_class"] == "opacity"  # "normal" is a negative name
    assert ck.meta["input"]["size"] == 75 and ck.meta["window"] == "auto" and ck.meta["fit"] == "letterbox"
    assert ck.meta["seed"] == 0 and set(ck.meta["versions"]) >= {"medclass", "torch", "timm"}
    assert ck.meta["metrics"]["epoch"] == full.best_epoch
    # best is calibrated on its validation logits after training (4 val images: 2-fold cross-fitting)
    cal = ck.meta["calibration"]
    assert cal["split"] == "val" and cal["n"] == 4 and cal["selection"]["folds"] == 2
    assert cal["method"] in ("none", "temperature", "platt", "isotonic") and full.calibration
    assert resumed.calibration and "calibration" in checkpoint.load(tmp_path / "part" / "best").meta
    # the input gate's training-data profile is fitted into best (only), and survives the sidecar's seal
    assert ck.meta["gate_profile"]["features"]["calibration_n"] == 4
    assert "gate_profile" not in checkpoint.load(run / "last").meta
    saved = yaml.safe_load((run / "config.yaml").read_text())
    from medclass.manifest import load_manifest

    assert saved["manifest_sha256"] == load_manifest(pngs, pngs.parent).sha256 == ck.meta["manifest_sha256"]
    assert saved["config"]["image_size"] == 75 and saved["config"]["epochs"] == 2
    assert len(rows_a) == 2 and rows_a[0]["val_count"] == 4
    assert all(0.0 <= r["val_auc"] <= 1.0 for r in rows_a)
    assert rows_a[1]["train_loss"] == pytest.approx(
        rows_a[1]["train_main_loss"] + 0.4 * rows_a[1]["train_aux_loss"], rel=1e-4
    )

    # a new run refuses an occupied folder; a resume refuses another manifest or other settings
    with pytest.raises(ConfigError, match="already holds a training run"):
        train(_config(pngs, run))
    with pytest.raises(ConfigError, match="lr"):
        train(_config(pngs, run, epochs=3, lr=0.5), resume=True)
    other = pngs.parent / "other.csv"
    other.write_text(pngs.read_text().replace("p00,", "p99,"))
    with pytest.raises(ConfigError, match="manifest changed"):
        train(_config(other, run, epochs=3), resume=True)


def runfiles_rows(run: Path) -> list[dict]:
    from medclass.train.runfiles import read_metrics

    return read_metrics(run / "metrics.csv")


def test_cli_run_skips_a_corrupt_file_and_goes_on(tmp_path, capsys, caplog):
    from medclass.cli import ExitCode, main

    manifest = make_png_set(tmp_path / "data", corrupt=1)
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--manifest",
            str(manifest),
            "--out",
            str(out),
            "--image-size",
            "75",
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--device",
            "cpu",
            "--no-progress",
            "--workers",
            "0",
            "--lr",
            "0.001",
        ]
    )
    assert code == ExitCode.PARTIAL
    text = capsys.readouterr().out
    assert "best epoch 1" in text and "broken0.png" in text and str(out / "best") in text
    assert (out / "best.safetensors").is_file() and (out / "last.json").is_file()


def test_multilabel_trains_with_sigmoid_bce(tmp_path):
    from medclass import checkpoint
    from medclass.train import train

    manifest = make_png_set(tmp_path / "data", multilabel=True)
    result = train(_config(manifest, tmp_path / "run"))
    row = result.history[0]
    assert math.isfinite(row["train_main_loss"]) and row["train_main_loss"] > 0
    assert 0.0 <= row["val_auc"] <= 1.0 and row["val_count"] == 4
    meta = checkpoint.load(result.best).meta
    assert meta["task"] == "multilabel" and meta["classes"] == ["blob", "line"]
    assert meta["calibration"]["task"] == "multilabel" and meta["calibration"]["n_classes"] == 2


@pytest.mark.parametrize(("imbalance", "optimizer"), [("weighted", "adamw"), ("balanced", "rmsprop")])
def test_imbalance_options_run(tmp_path, imbalance, optimizer, caplog):
    from medclass.train import train

    manifest = make_png_set(tmp_path / "data", positives=0.25)
    with caplog.at_level(logging.INFO, logger="medclass"):
        result = train(_config(manifest, tmp_path / "run", imbalance=imbalance, optimizer=optimizer))
    assert result.last_epoch == 1 and math.isfinite(result.history[0]["train_loss"])
    if imbalance == "weighted":
        assert "class weights for the loss: [0.667, 2.0]" in caplog.text
    assert "training from scratch (random init)" in caplog.text


def test_early_stopping_tracker():
    from medclass.train.loop import _Tracker

    t = _Tracker(patience=2)
    assert t.update(1, 0.6, 1.0) and not t.should_stop
    assert t.update(2, 0.7, 1.0)
    assert not t.update(3, 0.7, 0.5) and not t.should_stop  # equal is not better
    assert not t.update(4, 0.65, 0.5) and t.should_stop
    assert (t.best_epoch, t.best_auc) == (2, 0.7)
    u = _Tracker(patience=0)  # off
    u.update(1, 0.9, 1.0)
    for e in range(2, 10):
        u.update(e, 0.1, 1.0)
    assert not u.should_stop
    v = _Tracker(patience=3)  # AUC undefined: falls back on val loss
    v.update(1, float("nan"), 2.0)
    assert v.update(2, float("nan"), 1.0) and v.best_epoch == 2


def test_tensorboard_without_the_package_is_a_clear_error(pngs, tmp_path):
    import importlib.util

    from medclass.train import train

    if importlib.util.find_spec("tensorboard") is not None:
        pytest.skip("tensorboard is installed")
    with pytest.raises(ConfigError, match=r"medclass\[tracking\]"):
        train(_config(pngs, tmp_path / "tb", tensorboard=True))


def test_cli_resume_reads_the_saved_config(tmp_path):
    from medclass.cli import train as cli_train

    parser = argparse.ArgumentParser()
    cli_train.add_arguments(parser)
    c = resolve_config(None, {"manifest": "m.csv", "out": str(tmp_path), "lr": 0.003, "image_size": 96})
    save_config(c, tmp_path / "config.yaml", manifest_sha256="0" * 64)
    again = cli_train.resolve(parser.parse_args(["--out", str(tmp_path), "--resume", "--epochs", "40"]))
    assert again.lr == 0.003 and again.image_size == 96 and again.epochs == 40
    with pytest.raises(ConfigError, match="nothing to resume"):
        cli_train.resolve(parser.parse_args(["--out", str(tmp_path / "none"), "--resume"]))


def test_val_auc_uses_log_odds_so_saturated_probabilities_do_not_tie():
    from medclass.train.objective import macro_auc
    from medclass.train.steps import log_odds

    logits = torch.tensor([[0.0, 100.0], [0.0, 200.0], [300.0, 0.0], [0.0, 300.0]])  # N×2
    y = np.array([0, 1, 0, 1])
    probs = torch.softmax(logits, 1).numpy()
    assert macro_auc(y, probs, "multiclass") == pytest.approx(0.75)  # p = 1.0 ties
    assert macro_auc(y, log_odds(logits, "multiclass").numpy(), "multiclass") == pytest.approx(1.0)
    lo = log_odds(torch.tensor([[1.0, 2.0, 0.5]]), "multiclass")
    p = torch.softmax(torch.tensor([1.0, 2.0, 0.5]), 0)
    assert torch.allclose(lo[0], torch.log(p / (1 - p)), atol=1e-5)
    multi = torch.tensor([[100.0], [200.0], [-300.0], [300.0]])
    assert macro_auc(y[:, None], log_odds(multi, "multilabel").numpy(), "multilabel") == pytest.approx(1.0)


def test_backbone_lr_scale_defaults_to_full_speed_from_scratch():
    from medclass.train.config import TrainConfig
    from medclass.train.setup import backbone_lr_scale

    assert backbone_lr_scale(TrainConfig(manifest="m.csv", out="o")) == 1.0
    assert backbone_lr_scale(TrainConfig(manifest="m.csv", out="o", weights="w.safetensors")) == 0.1
    assert backbone_lr_scale(TrainConfig(manifest="m.csv", out="o", backbone_lr_scale=0.3)) == 0.3


def test_epoch_bar_shows_a_dash_until_the_loss_is_measured():
    """Epochs shorter than the sync interval never report a running loss: the bar says '-', not 'nan'."""
    from medclass.train.runfiles import EpochBar

    bar = EpochBar("epoch 1/1", total=3, last_auc=float("nan"), enabled=True)
    it = bar.wrap([1, 2, 3])
    assert it.postfix == "loss - val AUC -"
    bar.last_auc = 0.91234
    bar.loss(10, 0.5)
    assert it.postfix == "loss 0.5000 val AUC 0.912"
    bar.close()


def _relabel(manifest: Path, out: Path, mapping: dict[str, str], *, line: int | None = None) -> Path:
    """A copy of ``manifest`` with labels renamed (only on CSV ``line`` when given)."""
    lines = manifest.read_text().splitlines()
    for i in range(1, len(lines)):
        if line is None or i + 1 == line:
            head, label = lines[i].rsplit(",", 1)
            lines[i] = f"{head},{mapping.get(label, label)}"
    out.write_text("\n".join(lines) + "\n")
    return out


def test_train_needs_a_positive_class_it_can_tell(pngs, tmp_path, caplog):
    from medclass import checkpoint
    from medclass.train import train

    pets = _relabel(pngs, pngs.parent / "pets.csv", {"normal": "cat", "opacity": "dog"})
    with pytest.raises(ConfigError, match=r"which class is positive\? neither or both of cat, dog"):
        train(_config(pets, tmp_path / "r0"))
    assert not (tmp_path / "r0" / "config.yaml").exists()  # refused before anything was written
    with pytest.raises(ConfigError, match="'cow' is not a class"):
        train(_config(pets, tmp_path / "r1", positive_class="cow"))
    with caplog.at_level(logging.INFO, logger="medclass.train"):
        result = train(_config(pets, tmp_path / "r2", positive_class="cat"))
    assert "positive class: cat (negative: dog; --positive-class)" in caplog.text
    assert checkpoint.load(result.best).meta["positive_class"] == "cat"


def test_train_refuses_a_class_without_training_images(pngs, tmp_path, caplog):
    from medclass.errors import DataError
    from medclass.train import train

    lines = pngs.read_text().splitlines()
    val_line = next(i + 1 for i, row in enumerate(lines) if ",val," in row)
    typo = _relabel(pngs, pngs.parent / "typo.csv", {"normal": "nromal", "opacity": "nromal"}, line=val_line)
    with (
        caplog.at_level(logging.WARNING, logger="medclass.train"),
        pytest.raises(DataError, match=r"class\(es\) 'nromal' have no training images .*--allow-empty-class"),
    ):
        train(_config(typo, tmp_path / "r"))
    assert "class 'nromal' has only 1 images" in caplog.text and "a typo'd label?" in caplog.text


def test_train_with_a_wrong_data_root_is_one_error(pngs, tmp_path):
    from medclass.errors import ManifestError
    from medclass.train import train

    with pytest.raises(
        ManifestError, match=r"only 0 of 12 files found under the data root .*manifest's folder"
    ):
        train(_config(pngs, tmp_path / "r", data_root=str(tmp_path)))
