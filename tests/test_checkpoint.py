"""Tests for medclass.checkpoint: safetensors + JSON sidecar, verification, refusals, training state."""

from __future__ import annotations

import dataclasses
import json
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import medclass.checkpoint as ckpt
from medclass.checkpoint import (
    Checkpoint,
    load,
    load_training_state,
    read_state_dict,
    save,
    save_training_state,
)
from medclass.errors import CheckpointError
from medclass.model import MainLogits, apply_mode, create_model

META = {
    "classes": ["normal", "pneumonia"],
    "task": "multiclass",
    "input": {"size": 128, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bicubic"},
    "window": "auto",
    "fit": "letterbox",
    "seed": 7,
    "metrics": {"auc": 0.91},
}


def _model(seed: int = 0, num_classes: int = 2) -> nn.Module:
    torch.manual_seed(seed)
    model = create_model(num_classes, image_size=128)
    for name, buf in model.named_buffers():  # distinguishable running stats
        if "running_mean" in name:
            buf.normal_()
    return model


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A good checkpoint written once; tests that damage it work on copies."""
    model = _model()
    stem = tmp_path_factory.mktemp("ckpt") / "best"
    save(stem, model, META)
    return stem, {k: v.clone() for k, v in model.state_dict().items()}


def _copy(saved_stem: Path, folder: Path, name: str = "best") -> Path:
    stem = folder / name
    for suffix in (".safetensors", ".json"):
        (folder / (name + suffix)).write_bytes(
            saved_stem.parent.joinpath(saved_stem.name + suffix).read_bytes()
        )
    return stem


def _sidecar(stem: Path) -> Path:
    return stem.parent / (stem.name + ".json")


def _weights(stem: Path) -> Path:
    return stem.parent / (stem.name + ".safetensors")


# --- round trip --------------------------------------------------------------------------------------
def test_round_trip_weights_and_meta(saved) -> None:
    stem, state = saved
    meta = json.loads(_sidecar(stem).read_text())
    assert meta["format_version"] == 1 and meta["architecture"] == "inception_v3"
    assert meta["num_classes"] == 2 and meta["aux_logits"] is True and meta["image_size"] == 128
    assert meta["sha256"] and meta["size"] == _weights(stem).stat().st_size
    for path in (stem, _sidecar(stem), _weights(stem)):
        loaded = load(path)
        assert isinstance(loaded, Checkpoint) and loaded.path == stem
        assert not loaded.model.training
        assert next(loaded.model.parameters()).device.type == "cpu"
        got = loaded.model.state_dict()
        assert got.keys() == state.keys()
        assert all(torch.equal(got[k], state[k]) for k in state)
        assert {k: loaded.meta[k] for k in META} == META
        assert loaded.classes == ["normal", "pneumonia"] and loaded.task == "multiclass"
    out = MainLogits(loaded.model)(torch.randn(1, 3, 128, 128))
    assert out.shape == (1, 2)


@dataclasses.dataclass
class _Spec:
    size: int
    mean: tuple[float, ...]


@pytest.mark.parametrize("wrap", [MainLogits, nn.DataParallel])
def test_save_returns_sidecar_and_accepts_wrapped_models(tmp_path: Path, wrap) -> None:
    model = create_model(3, image_size=299)
    apply_mode(model, "linear")  # the instance train() override must not get in the way
    meta = {"classes": ["a", "b", "c"], "task": "multilabel", "metrics": {"auc": np.float32(0.5)},
            "data": Path("x/y.csv"), "input": _Spec(75, (0.5, 0.5, 0.5))}  # fmt: skip
    path = save(tmp_path / "run" / "last", wrap(model), meta)
    assert path == tmp_path / "run" / "last.json"
    loaded = load(path)
    assert loaded.meta["image_size"] == 75 and loaded.meta["num_classes"] == 3
    assert loaded.meta["input"] == {"size": 75, "mean": [0.5, 0.5, 0.5]}
    assert loaded.meta["metrics"]["auc"] == 0.5 and loaded.meta["data"] == "x/y.csv"
    assert next(iter(loaded.model.state_dict())) == "Conv2d_1a_3x3.conv.weight"
    assert not list((tmp_path / "run").glob("*.tmp")), "no temporary files left behind"


def test_bad_meta_is_refused_before_writing(tmp_path: Path) -> None:
    model = create_model(2, image_size=75)
    with pytest.raises(CheckpointError, match="meta cannot be written as JSON"):
        save(tmp_path / "m", model, {"classes": ["a", "b"], "thing": object()})
    with pytest.raises(CheckpointError, match="3 classes but the model has 2"):
        save(tmp_path / "m", model, {"classes": ["a", "b", "c"]})
    for meta, key in (
        ({"classes": ["a", "a"]}, "'classes' repeats"),
        ({"classes": ["a", ""]}, "'classes'"),
        ({"task": "regression"}, "'task'"),
        ({"input": {"size": 75, "std": [1, 0, 1]}}, "'input.std'"),
    ):
        with pytest.raises(CheckpointError, match=key):  # what load would refuse is never written
            save(tmp_path / "m", model, meta)
    assert not list(tmp_path.iterdir())


def test_sidecar_is_sealed_with_meta_sha256(saved) -> None:
    meta = json.loads(_sidecar(saved[0]).read_text())
    assert meta["meta_sha256"] == ckpt.meta_digest(meta)
    canonical = json.dumps({k: v for k, v in meta.items() if k != "meta_sha256"}, sort_keys=True,
                           separators=(",", ":"))  # fmt: skip
    assert meta["meta_sha256"] == ckpt.hashlib.sha256(canonical.encode()).hexdigest()


def test_checkpoint_as_weights_for_task_to_task_transfer(saved) -> None:
    stem, state = saved
    model = create_model(3, weights=_sidecar(stem), image_size=75)
    assert model.fc.out_features == 3 and model.AuxLogits.fc.out_features == 3
    got = model.state_dict()
    assert torch.equal(got["Mixed_7c.branch_pool.conv.weight"], state["Mixed_7c.branch_pool.conv.weight"])
    assert torch.equal(got["Mixed_5b.branch1x1.bn.running_mean"], state["Mixed_5b.branch1x1.bn.running_mean"])
    sd, meta = read_state_dict(stem)
    assert meta["classes"] == META["classes"] and torch.equal(sd["fc.weight"], state["fc.weight"])


# --- refusals ------------------------------------------------------------------------------------------
def test_truncated_file_is_refused(saved, tmp_path: Path) -> None:
    stem = _copy(saved[0], tmp_path)
    data = _weights(stem).read_bytes()
    _weights(stem).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated") as info:
        load(stem)
    assert str(_weights(stem)) in str(info.value)


def test_flipped_byte_fails_the_checksum(saved, tmp_path: Path) -> None:
    stem = _copy(saved[0], tmp_path)
    data = bytearray(_weights(stem).read_bytes())
    data[len(data) // 2] ^= 0x01
    _weights(stem).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256 mismatch") as info:
        load(stem)
    assert str(_weights(stem)) in str(info.value) and "\n" not in str(info.value)


def _forge_sidecar(stem: Path, **changes) -> None:
    meta = json.loads(_sidecar(stem).read_text())
    data = _weights(stem).read_bytes()
    meta.update(sha256=ckpt.hashlib.sha256(data).hexdigest(), size=len(data))
    meta.update(changes)
    meta["meta_sha256"] = ckpt.meta_digest(meta)  # reseal: these tests are about what comes after
    _sidecar(stem).write_text(json.dumps(meta))


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickles_are_refused_and_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    payload = pickle.dumps({"fc.weight": torch.zeros(2, 2), "x": _Evil(marker)}, protocol=2)
    for name in ("model.pth", "model.pt", "model.ckpt", "bare_pickle"):
        (tmp_path / name).write_bytes(payload)
        with pytest.raises(CheckpointError, match=r"\.safetensors \+ \.json; refusing to unpickle") as info:
            load(tmp_path / name)
        assert str(tmp_path / name) in str(info.value)
    torch.save(torch.nn.Linear(2, 2).state_dict(), tmp_path / "zipped")
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        load(tmp_path / "zipped")
    # a pickle renamed to .safetensors, with a forged sidecar whose checksum matches it
    stem = tmp_path / "disguised"
    _weights(stem).write_bytes(payload)
    _sidecar(stem).write_text(
        json.dumps({"format_version": 1, "architecture": "inception_v3", "num_classes": 2, "image_size": 299})
    )
    _forge_sidecar(stem)
    with pytest.raises(CheckpointError, match="corrupt safetensors"):
        load(stem)
    assert not marker.exists(), "the pickled payload ran"


def test_missing_pieces_are_refused(saved, tmp_path: Path) -> None:
    stem = _copy(saved[0], tmp_path)
    _sidecar(stem).unlink()
    with pytest.raises(CheckpointError, match=r"sidecar \.json is missing"):
        load(_weights(stem))
    stem = _copy(saved[0], tmp_path, "b")
    _weights(stem).unlink()
    with pytest.raises(CheckpointError, match="weights file is missing"):
        load(stem)
    _sidecar(stem).write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load(stem)


def test_unknown_format_and_architecture_are_refused(saved, tmp_path: Path) -> None:
    stem = _copy(saved[0], tmp_path)
    _forge_sidecar(stem, format_version=99)
    with pytest.raises(CheckpointError, match="unknown format_version 99"):
        load(stem)
    _forge_sidecar(stem, format_version=1, architecture="resnet18")
    with pytest.raises(CheckpointError, match="architecture 'resnet18'"):
        load(stem)
    _forge_sidecar(stem, architecture="inception_v3", num_classes=3, classes=["a", "b", "c"])
    with pytest.raises(CheckpointError, match="class-count mismatch: sidecar says 3, weights have 2"):
        load(stem)


def test_weights_of_another_architecture_are_refused(tmp_path: Path) -> None:
    from safetensors.torch import save_file
    from torchvision.models import resnet18

    stem = tmp_path / "resnet"
    save_file(
        {k: v.contiguous() for k, v in resnet18(weights=None).state_dict().items()}, str(_weights(stem))
    )
    _sidecar(stem).write_text(
        json.dumps(
            {"format_version": 1, "architecture": "inception_v3", "num_classes": 1000, "image_size": 299}
        )
    )
    _forge_sidecar(stem)
    with pytest.raises(CheckpointError, match=r"not an Inception V3 state dict \(missing: ") as info:
        load(stem)
    assert "Conv2d_1a_3x3.conv.weight" in str(info.value)


def test_failed_save_leaves_previous_checkpoint_intact(saved, tmp_path: Path, monkeypatch) -> None:
    stem, state = saved
    stem = _copy(stem, tmp_path)

    def boom(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(ckpt, "st_save", boom)
    with pytest.raises(RuntimeError, match="disk on fire"):
        save(stem, _model(seed=1), META)
    loaded = load(stem)
    assert all(torch.equal(loaded.model.state_dict()[k], state[k]) for k in state)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.json", "best.safetensors"]


# --- training state ----------------------------------------------------------------------------------
def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))


OPTIMIZERS = {
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.05),
    "rmsprop": lambda p: torch.optim.RMSprop(p, lr=1e-2, momentum=0.9, centered=True),
}


def _train(model: nn.Module, opt, sched, steps: int) -> None:
    model.train()
    for _ in range(steps):
        x = torch.randn(8, 6) + float(np.random.rand()) + random.random()  # draws from all three RNGs
        loss = nn.functional.cross_entropy(model(x), torch.randint(0, 3, (8,)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()


def _assert_same(a, b) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, list | tuple):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_same(x, y)
    else:
        assert a == b


@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_optimizer_and_scheduler_state_round_trip(opt_name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _net()
    opt = OPTIMIZERS[opt_name](model.parameters())
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=20)
    _train(model, opt, sched, 3)
    path = save_training_state(tmp_path / "last", opt, sched, epoch=4, extra={"best_auc": 0.8, "step": 3})
    assert path.name == "last.state.json" and (tmp_path / "last.state.safetensors").is_file()
    opt2 = OPTIMIZERS[opt_name](model.parameters())
    sched2 = torch.optim.lr_scheduler.OneCycleLR(opt2, max_lr=0.05, total_steps=20)
    info = load_training_state(tmp_path / "last", opt2, sched2)
    assert info.epoch == 4 and info.extra == {"best_auc": 0.8, "step": 3}
    _assert_same(opt.state_dict(), opt2.state_dict())
    _assert_same(sched.state_dict(), sched2.state_dict())


def test_resumed_run_ends_with_the_same_weights(tmp_path: Path) -> None:
    def fresh():
        model = _net()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        return model, opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=6)

    def seed() -> None:
        torch.manual_seed(11)
        np.random.seed(11)
        random.seed(11)

    seed()
    model, opt, sched = fresh()
    _train(model, opt, sched, 6)
    straight = {k: v.clone() for k, v in model.state_dict().items()}

    seed()
    model, opt, sched = fresh()
    _train(model, opt, sched, 3)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    save_training_state(tmp_path / "mid", opt, sched, epoch=3)
    torch.rand(100), np.random.rand(5), random.random()  # the RNGs move on in between
    model, opt, sched = fresh()
    model.load_state_dict(weights)
    load_training_state(tmp_path / "mid.state.json", opt, sched)
    _train(model, opt, sched, 3)
    resumed = model.state_dict()
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)


def test_training_state_refusals(tmp_path: Path) -> None:
    model = _net()
    opt = torch.optim.AdamW(model.parameters())
    with pytest.raises(CheckpointError, match="missing; cannot resume"):
        load_training_state(tmp_path / "none", opt)
    _train(model, opt, torch.optim.lr_scheduler.StepLR(opt, 1), 1)
    save_training_state(tmp_path / "s", opt, epoch=1)
    data = bytearray((tmp_path / "s.state.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (tmp_path / "s.state.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        load_training_state(tmp_path / "s", opt)
    save_training_state(tmp_path / "s", opt, epoch=1)
    other = torch.optim.AdamW(nn.Linear(2, 2).parameters())
    with pytest.raises(CheckpointError, match="does not fit"):
        load_training_state(tmp_path / "s", other)
    with pytest.raises(CheckpointError, match="cannot be stored"):
        save_training_state(tmp_path / "t", opt, epoch=1, extra={"fn": print})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_model_saves_and_loads_on_cpu_and_cuda_rng_round_trips(tmp_path: Path) -> None:
    model = _model(seed=3).to("cuda", memory_format=torch.channels_last)
    save(tmp_path / "gpu", model, META)
    loaded = load(tmp_path / "gpu")
    state = model.state_dict()
    assert all(torch.equal(loaded.model.state_dict()[k], state[k].cpu()) for k in state)
    net = _net().cuda()
    opt = torch.optim.AdamW(net.parameters())
    net(torch.randn(2, 6, device="cuda")).sum().backward()
    opt.step()
    save_training_state(tmp_path / "gpu", opt, epoch=1)
    expected = torch.rand(3, device="cuda")
    torch.rand(10, device="cuda")
    opt2 = torch.optim.AdamW(net.parameters())
    load_training_state(tmp_path / "gpu", opt2)
    # the CUDA RNG is back where it was at save time, and the optimizer state is on the parameters' device
    assert torch.equal(torch.rand(3, device="cuda"), expected)
    assert opt2.state_dict()["state"][0]["exp_avg"].device.type == "cuda"


def test_no_checkpoint_at_a_typo_lists_what_is_there(saved, tmp_path: Path) -> None:
    """A typo'd stem, a missing best.pt or an empty folder say "no checkpoint at X" and list the stems."""
    run = tmp_path / "run"
    run.mkdir()
    _copy(saved[0], run, "best")
    _copy(saved[0], run, "last")
    (run / "last.state.json").write_text("{}")  # training state is not a checkpoint
    (run / "last.state.safetensors").write_bytes(b"")
    for wrong in (run / "bset", run / "best.pt", run / "bset.json"):
        with pytest.raises(CheckpointError, match=r"no checkpoint at .*; .*run has: best, last$"):
            load(wrong)
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        load(tmp_path / "empty_dir")
    with pytest.raises(CheckpointError, match=r"folder .*nowhere does not exist"):
        load(tmp_path / "nowhere" / "best")


def test_a_run_folder_is_taken_as_its_best(saved, tmp_path: Path, caplog) -> None:
    run = tmp_path / "run"
    run.mkdir()
    _copy(saved[0], run, "best")
    with caplog.at_level("INFO", logger="medclass"):
        ck = load(run)
    assert ck.path == run / "best"
    assert "is a run folder; using its checkpoint" in caplog.text
    assert ckpt.resolve(run) == run / "best"


def test_update_meta_reseals_and_keeps_the_weights(saved, tmp_path: Path) -> None:
    stem = _copy(saved[0], tmp_path)
    weights_before = _weights(stem).read_bytes()
    op = {"pneumonia": {"threshold": 0.42, "rule": "youden", "chosen_on": "val"}}
    ckpt.update_meta(stem, {"operating_point": op})
    loaded = load(stem)  # the new seal verifies
    assert loaded.meta["operating_point"] == op and loaded.meta["classes"] == META["classes"]
    assert _weights(stem).read_bytes() == weights_before
    with pytest.raises(CheckpointError, match="refusing to change classes"):
        ckpt.update_meta(stem, {"classes": ["a", "b"]})
    with pytest.raises(CheckpointError, match="'positive_class' is 'cow'"):
        ckpt.update_meta(stem, {"positive_class": "cow"})
    _weights(stem).write_bytes(weights_before[:-1] + b"\0")  # tampered weights: nothing is re-sealed
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        ckpt.update_meta(stem, {"note": "x"})
