"""Tests for medclass.model: aux head at any size, MainLogits, weight loading, transfer modes, precision."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from medclass.errors import CheckpointError, ConfigError
from medclass.model import (
    MainLogits,
    apply_mode,
    autocast_context,
    create_model,
    forward_train,
    frozen_batchnorms,
    probabilities,
    read_state_dict,
    to_device,
)
from medclass.model.predictor import TorchPredictor

SIZES = [75, 128, 160, pytest.param(224, marks=pytest.mark.slow), pytest.param(299, marks=pytest.mark.slow)]


def _bn_stats(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "running_" in k}


def _calibrated(model: nn.Module, size: int = 75) -> nn.Module:
    """Set BN running stats from one batch, as in a pretrained model (random-init stats of 0/1 explode)."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.momentum = 1.0
    torch.manual_seed(9)
    with torch.no_grad():
        model.train()(torch.randn(4, 3, size, size))
    for bn in bns:
        bn.momentum = 0.1
    return model


def _params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


@pytest.fixture(scope="module")
def imagenet_sd(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A random 1000-class timm Inception V3 (with aux head) saved as a plain state dict: our 'pretrained'."""
    torch.manual_seed(0)
    sd = timm.create_model("inception_v3", pretrained=False, aux_logits=True).state_dict()
    for k, v in sd.items():  # make running stats distinguishable from a fresh model's 0/1
        if "running_mean" in k:
            v.normal_()
    path = tmp_path_factory.mktemp("weights") / "inception_v3_in1k.pth"
    torch.save(sd, path)
    return path, sd


# --- aux head at any size --------------------------------------------------------------------------
def test_stock_timm_aux_head_crashes_below_299() -> None:
    """The sharp edge we work around: timm's own aux head cannot run on a 128 px input."""
    stock = timm.create_model("inception_v3", pretrained=False, num_classes=2, aux_logits=True)
    stock.train()
    with pytest.raises(RuntimeError, match="Kernel size"):
        stock(torch.randn(2, 3, 128, 128))


@pytest.mark.parametrize("size", SIZES)
def test_forward_train_and_eval_at_any_size(size: int) -> None:
    torch.manual_seed(0)
    model = create_model(3, image_size=size)
    x = torch.randn(2, 3, size, size)
    main, aux = forward_train(model, x)
    assert main.shape == (2, 3) and aux is not None and aux.shape == (2, 3)
    assert torch.isfinite(main).all() and torch.isfinite(aux).all()
    model.eval()
    with torch.no_grad():
        out = model(x)
        only_main = MainLogits(model)(x)
    assert isinstance(out, tuple), "timm returns (main, aux) in eval mode too when aux_logits=True"
    assert isinstance(only_main, torch.Tensor) and only_main.shape == (2, 3)
    torch.testing.assert_close(only_main, out[0], rtol=1e-4, atol=1e-5)
    assert model.pretrained_cfg["input_size"] == (3, size, size)


def test_adapted_aux_head_matches_timm_at_299_and_keeps_param_names() -> None:
    torch.manual_seed(1)
    ours = create_model(4)
    stock = timm.create_model("inception_v3", pretrained=False, num_classes=4, aux_logits=True)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in stock.state_dict().items()
    }
    stock.load_state_dict(ours.state_dict(), strict=True)
    ours.eval()
    stock.eval()
    x = torch.randn(1, 3, 299, 299)
    with torch.no_grad():
        a, b = ours(x), stock(x)
    torch.testing.assert_close(a[1], b[1])
    torch.testing.assert_close(a[0], b[0])


def test_main_logits_and_forward_train_without_aux() -> None:
    model = create_model(2, aux_logits=False).eval()
    x = torch.randn(1, 3, 75, 75)
    with torch.no_grad():
        plain = model(x)
        assert isinstance(plain, torch.Tensor)
        torch.testing.assert_close(MainLogits(model)(x), plain)
        main, aux = forward_train(model, x)
    assert aux is None and main.shape == (1, 2)
    # a generic module returning a tuple is unwrapped too; nesting MainLogits does not stack wrappers
    wrapped = MainLogits(MainLogits(model))
    assert wrapped.model is model
    assert MainLogits(nn.DataParallel(model)).model is model, "eval bypasses (D)DP wrappers"


def test_probabilities_and_the_predictor() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    soft = probabilities(logits, "multiclass")
    torch.testing.assert_close(soft.sum(1), torch.ones(2))
    assert soft[1, 0].item() == pytest.approx(1 / 3)
    sig = probabilities(logits, "multilabel")
    assert sig[0, 0].item() == pytest.approx(1 / (1 + torch.exp(torch.tensor(-2.0)).item()))
    assert sig[1].tolist() == [0.5, 0.5, 0.5]
    with pytest.raises(ConfigError, match="multiclass, multilabel"):
        probabilities(logits, "regression")
    model = create_model(2)
    assert model.training
    p = TorchPredictor(model, "multiclass")(torch.randn(1, 3, 75, 75))
    assert model.training, "the predictor restores the training flag"
    assert p.shape == (1, 2) and p.sum().item() == pytest.approx(1.0, abs=1e-5)


def test_bad_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="too small"):
        create_model(2, image_size=64)
    with pytest.raises(ConfigError, match="num_classes"):
        create_model(0)


# --- weights ---------------------------------------------------------------------------------------
def _check_transferred(model: nn.Module, src: dict[str, torch.Tensor], num_classes: int) -> None:
    sd = model.state_dict()
    assert model.fc.out_features == num_classes
    assert model.AuxLogits.fc.out_features == num_classes
    backbone = [k for k in src if not k.startswith(("fc.", "AuxLogits.fc."))]
    assert len(backbone) > 500
    for k in backbone:
        assert torch.equal(sd[k], src[k]), k
    for head in ("fc.weight", "AuxLogits.fc.weight"):
        assert sd[head].shape == (num_classes, src[head].shape[1])
        assert not torch.allclose(sd[head], src[head][:num_classes]), f"{head} is not freshly initialised"


def test_imagenet_state_dict_loads_into_two_class_model(imagenet_sd) -> None:
    path, src = imagenet_sd
    model = create_model(2, weights=path, image_size=128)
    _check_transferred(model, src, 2)
    main, aux = forward_train(model, torch.randn(2, 3, 128, 128))
    assert main.shape == aux.shape == (2, 2)


def test_plain_load_of_imagenet_weights_fails_on_aux_fc(imagenet_sd) -> None:
    """Why we load at the source's class count first: a direct load fails on AuxLogits.fc (and fc)."""
    _, src = imagenet_sd
    direct = timm.create_model("inception_v3", pretrained=False, num_classes=2, aux_logits=True)
    with pytest.raises(RuntimeError, match=r"AuxLogits\.fc\.weight"):
        direct.load_state_dict(src)


def test_safetensors_and_wrapped_state_dicts_load(imagenet_sd, tmp_path: Path) -> None:
    _, src = imagenet_sd
    st = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in src.items()}, str(st))
    _check_transferred(create_model(3, weights=st), src, 3)
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in src.items()}, "epoch": 3}, wrapped)
    _check_transferred(create_model(2, weights=wrapped), src, 2)


def test_torchvision_state_dict_loads(tmp_path: Path) -> None:
    torch.manual_seed(2)
    tv = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False)
    src = tv.state_dict()
    path = tmp_path / "tv_inception.pth"
    torch.save(src, path)
    _check_transferred(create_model(2, weights=path), src, 2)


def test_weights_without_aux_head_get_a_fresh_one(imagenet_sd, tmp_path: Path) -> None:
    _, src = imagenet_sd
    no_aux = {k: v for k, v in src.items() if not k.startswith("AuxLogits.")}
    path = tmp_path / "tf_port.pth"
    torch.save(no_aux, path)
    model = create_model(2, weights=path, image_size=75)
    sd = model.state_dict()
    assert torch.equal(sd["Mixed_7c.branch_pool.conv.weight"], src["Mixed_7c.branch_pool.conv.weight"])
    assert model.AuxLogits.fc.out_features == 2
    assert not torch.equal(sd["AuxLogits.conv0.conv.weight"], src["AuxLogits.conv0.conv.weight"])
    _, aux = forward_train(model, torch.randn(2, 3, 75, 75))
    assert aux is not None and aux.shape == (2, 2)
    # and the other way: weights with an aux head into a model without one
    plain = create_model(2, weights=path, aux_logits=False)
    assert plain.AuxLogits is None


def test_other_architecture_is_refused_with_keys(tmp_path: Path) -> None:
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(CheckpointError) as info:
        create_model(2, weights=path)
    msg = str(info.value)
    assert str(path) in msg and "not an Inception V3 state dict" in msg
    assert "missing: Conv2d_1a_3x3.conv.weight" in msg and "unexpected: conv1.weight" in msg
    assert "\n" not in msg


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "PWNED"
    path = tmp_path / "weights.pth"
    payload = {"fc.weight": torch.zeros(2, 2048), "evil": _Evil(marker)}
    if writer == "pickle":
        with path.open("wb") as fh:
            pickle.dump(payload, fh, protocol=2)
    else:
        torch.save(payload, path)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="refusing to unpickle") as info:
        create_model(2, weights=path)
    assert str(path) in str(info.value)
    assert not marker.exists(), "the pickled payload ran"


def test_missing_or_non_tensor_weights(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        create_model(2, weights=tmp_path / "nope.pth")
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="does not hold a state dict"):
        read_state_dict(path)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        read_state_dict(bad)


# --- transfer modes --------------------------------------------------------------------------------
def _step(model: nn.Module, groups: list[dict], aux_weight: float = 0.4, size: int = 75) -> None:
    opt = torch.optim.SGD([{"params": g["params"], "lr": 0.1 * g["lr_scale"]} for g in groups], lr=0.1)
    torch.manual_seed(3)
    x, y = torch.randn(2, 3, size, size), torch.tensor([0, 1])
    main, aux = forward_train(model, x)
    loss = nn.functional.cross_entropy(main, y)
    if aux is not None and aux_weight:
        loss = loss + aux_weight * nn.functional.cross_entropy(aux, y)
    opt.zero_grad()
    loss.backward()
    opt.step()


def test_linear_mode_trains_only_both_fc_layers() -> None:
    torch.manual_seed(4)
    model = _calibrated(create_model(2))
    groups = apply_mode(model, "linear")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"fc.weight", "fc.bias", "AuxLogits.fc.weight", "AuxLogits.fc.bias"}
    assert [g["name"] for g in groups] == ["heads"] and len(groups[0]["params"]) == 4
    model.train()  # a later train() call must keep the frozen BNs in eval mode
    assert model.training and all(not bn.training for bn in frozen_batchnorms(model))
    stats, before = _bn_stats(model), _params(model)
    _step(model, groups)
    after = _params(model)
    for k, v in _bn_stats(model).items():
        assert torch.equal(v, stats[k]), f"running stat moved in frozen {k}"
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == trainable
    model.eval()
    assert not any(m.training for m in model.modules())


def test_aux_head_trains_only_with_aux_loss() -> None:
    torch.manual_seed(5)
    model = _calibrated(create_model(2))
    groups = apply_mode(model, "linear")
    w0 = model.AuxLogits.fc.weight.detach().clone()
    _step(model, groups, aux_weight=0.0)
    assert torch.equal(model.AuxLogits.fc.weight, w0)
    _step(model, groups, aux_weight=0.4)
    assert not torch.equal(model.AuxLogits.fc.weight, w0)


def test_partial_mode_trains_last_blocks_and_heads() -> None:
    torch.manual_seed(6)
    model = _calibrated(create_model(2), 128)
    groups = apply_mode(model, "partial")
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"Mixed_7a", "Mixed_7b", "Mixed_7c", "AuxLogits", "fc"}
    assert {g["name"]: g["lr_scale"] for g in groups} == {"heads": 1.0, "backbone": 0.1}
    stats = _bn_stats(model)
    _step(model, groups, size=128)
    new = _bn_stats(model)
    moved = {k.split(".")[0] for k in stats if not torch.equal(stats[k], new[k])}
    assert moved == {"Mixed_7a", "Mixed_7b", "Mixed_7c", "AuxLogits"}
    two = create_model(2)
    apply_mode(two, "partial", partial_blocks=5)
    assert {n.split(".")[0] for n, p in two.named_parameters() if p.requires_grad} >= {"Mixed_6d", "Mixed_6e"}
    with pytest.raises(ConfigError, match="partial_blocks"):
        apply_mode(create_model(2), "partial", partial_blocks=0)


def test_full_mode_and_unknown_mode() -> None:
    model = create_model(2)
    groups = apply_mode(model, "full", backbone_lr_scale=0.2)
    assert all(p.requires_grad for p in model.parameters())
    assert {g["name"]: g["lr_scale"] for g in groups} == {"heads": 1.0, "backbone": 0.2}
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert all(bn.training for bn in model.modules() if isinstance(bn, nn.BatchNorm2d))
    with pytest.raises(ConfigError, match="linear, partial, full"):
        apply_mode(model, "everything")


# --- device and precision --------------------------------------------------------------------------
def test_channels_last_and_bf16_autocast() -> None:
    model = to_device(create_model(2).eval(), "cpu", channels_last=True)
    assert model.Conv2d_1a_3x3.conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(1, 3, 75, 75).to(memory_format=torch.channels_last)
    with torch.no_grad(), autocast_context("cpu", "bf16"):
        out = MainLogits(model)(x)
    assert out.dtype == torch.bfloat16
    with torch.no_grad(), autocast_context("cpu", "fp32"):
        assert MainLogits(model)(x).dtype == torch.float32
    with pytest.raises(ConfigError, match="CUDA"):
        autocast_context("cpu", "fp16")
    with pytest.raises(ConfigError, match="unknown precision"):
        autocast_context("cpu", "int4")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bf16_channels_last_training_step() -> None:
    torch.manual_seed(7)
    model = to_device(_calibrated(create_model(2, image_size=128), 128), "cuda")
    groups = apply_mode(model, "partial")
    stats = _bn_stats(model)
    opt = torch.optim.SGD([{"params": g["params"], "lr": 0.1 * g["lr_scale"]} for g in groups])
    x = torch.randn(4, 3, 128, 128, device="cuda").to(memory_format=torch.channels_last)
    y = torch.tensor([0, 1, 0, 1], device="cuda")
    with autocast_context("cuda", "bf16"):
        main, aux = forward_train(model, x)
        assert main.dtype == torch.bfloat16 and aux is not None
        loss = nn.functional.cross_entropy(main, y) + 0.4 * nn.functional.cross_entropy(aux, y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    new = _bn_stats(model)
    assert all(torch.equal(new[k], stats[k]) for k in stats if k.startswith(("Mixed_5", "Mixed_6", "Conv2d")))
    p = TorchPredictor(model, "multiclass", device="cuda")(x)
    assert isinstance(p, np.ndarray) and p.shape == (4, 2) and model.training  # probabilities on the CPU


# --- pretrained weights by name (timm: / hf-hub:), from a local Hugging Face cache ------------------------
def _hf_cache(root: Path, repo: str, sd: dict[str, torch.Tensor]) -> Path:
    """Lay ``sd`` out as huggingface_hub does: blobs/<sha256>, snapshots/<commit>/model.safetensors → blob,
    refs/main = commit. Returns the cache folder (what $HF_HUB_CACHE names)."""
    import hashlib

    base = root / ("models--" + repo.replace("/", "--"))
    (base / "blobs").mkdir(parents=True)
    tmp = base / "blobs" / "incoming"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp))
    blob = base / "blobs" / hashlib.sha256(tmp.read_bytes()).hexdigest()
    tmp.rename(blob)
    commit = "0123456789abcdef0123456789abcdef01234567"
    snap = base / "snapshots" / commit
    snap.mkdir(parents=True)
    (snap / "model.safetensors").symlink_to(Path("..", "..", "blobs", blob.name))
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(commit)
    return root


@pytest.fixture()
def offline_hub(monkeypatch, tmp_path: Path) -> Path:
    """HF_HUB_OFFLINE=1 and an empty cache under tmp_path: nothing can be downloaded."""
    from huggingface_hub import constants

    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


@pytest.mark.parametrize(
    "name", ["timm:inception_v3.tv_in1k", "timm:inception_v3", "hf-hub:timm/inception_v3.tv_in1k"]
)
def test_weights_by_name_come_from_the_hf_cache(imagenet_sd, offline_hub, name) -> None:
    from medclass.weights import hub

    _hf_cache(offline_hub, "timm/inception_v3.tv_in1k", imagenet_sd[1])
    path = hub.resolve(name)
    assert path.name == "model.safetensors" and offline_hub in path.parents
    model = create_model(2, weights=name, image_size=128)
    _check_transferred(model, imagenet_sd[1], 2)


def test_weights_by_name_not_cached_and_offline_is_one_clear_line(offline_hub) -> None:
    with pytest.raises(CheckpointError) as info:
        create_model(2, weights="timm:inception_v3.tf_in1k")
    msg = str(info.value)
    assert "not in the Hugging Face cache" in msg and "HF_HUB_OFFLINE=1" in msg
    assert "timm/inception_v3.tf_in1k" in msg and str(offline_hub) in msg and "\n" not in msg


def test_weights_by_name_of_another_architecture_lists_the_inception_tags(offline_hub) -> None:
    from medclass.weights import hub

    with pytest.raises(CheckpointError, match=r"inception_v3 only; use one of .*timm:inception_v3\.tv_in1k"):
        hub.resolve("timm:resnet50.a1_in1k")
    with pytest.raises(CheckpointError, match="not hf-hub:OWNER/REPO"):
        hub.resolve("hf-hub:inception_v3")
    assert hub.is_name("timm:x") and hub.is_name("hf-hub:a/b") and not hub.is_name("w/timm.pth")
