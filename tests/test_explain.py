"""The explain stage's core: Explainer (grad-cam tables, speed path, batches, aux head, model left as found),
overlay geometry, faithfulness and the randomisation check, and Grad-CAM finding a lesion it was trained on."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from medclass.errors import ConfigError, DataError
from medclass.explain import (
    CAM_METHODS,
    TARGET_LAYERS,
    Explainer,
    Overlay,
    faithfulness,
    layer_grid,
    randomisation_check,
    to_original,
    top_region,
)
from medclass.explain.faithfulness import randomised_copy, spearman
from medclass.explain.overlay import outline
from medclass.model import MainLogits, create_model
from medclass.preprocess import letterbox

SIZE = 128


def calibrated(m: torch.nn.Module, size: int = SIZE, seed: int = 0) -> torch.nn.Module:
    """Random-init weights, BatchNorm statistics measured on random inputs (activations O(1), as in a
    trained model, instead of the 1e10 logits of default running statistics); returns ``m`` in eval mode."""
    for bn in m.modules():
        if isinstance(bn, torch.nn.modules.batchnorm._BatchNorm):
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average
    m.train()
    with torch.no_grad():
        MainLogits(m)(torch.randn(8, 3, size, size, generator=torch.Generator().manual_seed(seed)))
    return m.eval()


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return calibrated(create_model(2, image_size=SIZE))


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randn(3, 3, SIZE, SIZE, generator=g)  # N×3×S×S


def _hooks(model: torch.nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._backward_hooks) + len(m._forward_pre_hooks) for m in model.modules()
    )


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


# --- tables and errors -----------------------------------------------------------------------------
def test_tables_and_unknown_names_list_valid_ones(model):
    assert {"gradcam", "gradcam++", "hirescam", "xgradcam", "eigencam", "scorecam", "layercam"} <= set(
        CAM_METHODS
    )
    assert {"Mixed_7c", "Mixed_7b", "Mixed_6e", "Mixed_5d"} <= set(TARGET_LAYERS)
    with pytest.raises(ConfigError, match=r"valid: .*gradcam\+\+"):
        Explainer(model, method="gradcam+++")
    with pytest.raises(ConfigError, match=r"valid: .*Mixed_6e"):
        Explainer(model, layer="Mixed_9z")
    with pytest.raises(DataError, match="N×3×S×S"):
        Explainer(model).explain(torch.zeros(3, SIZE, SIZE))
    with pytest.raises(ConfigError, match="out of range"):
        Explainer(model).explain(torch.zeros(1, 3, SIZE, SIZE), targets=[5])


def test_layer_grid_matches_the_network():
    torch.manual_seed(0)
    m = create_model(2, image_size=299)
    assert layer_grid(m, "Mixed_7c", 299) == (8, 8)
    assert layer_grid(m, "Mixed_6e", 299) == (17, 17)
    assert layer_grid(m, "Mixed_6e", 160) == (8, 8)
    assert layer_grid(m, "Mixed_5d", 160) == (17, 17)
    assert layer_grid(m, "Mixed_7c", 128) == (2, 2)


def test_default_layer_gives_at_least_a_7x7_map():
    """Issue 20: at 128 px Mixed_7c is a 2×2 map; the default layer follows the input size."""
    from medclass.explain import default_layer, layer_grids

    m = create_model(2, image_size=128)
    expected = {299: "Mixed_7c", 224: "Mixed_6e", 160: "Mixed_6e", 128: "Mixed_5d", 75: "Mixed_5d"}
    for size, layer in expected.items():
        assert default_layer(m, size) == layer, size
        assert min(layer_grids(m, size)[layer]) >= 7


# --- the fast path gives plain grad-cam's maps -----------------------------------------------------
@pytest.mark.parametrize("layer", ["Mixed_7c", "Mixed_6e"])
def test_fast_maps_equal_plain_pytorch_grad_cam(model, batch, layer):
    targets = [1, 0, 1]
    ours = Explainer(model, layer=layer, batch_size=3).explain(batch, targets=targets)
    cam = GradCAM(model=MainLogits(model), target_layers=[getattr(model, layer)])
    try:
        same_batch = cam(input_tensor=batch, targets=[ClassifierOutputTarget(t) for t in targets])
        per_image = np.concatenate(
            [
                cam(input_tensor=batch[i : i + 1], targets=[ClassifierOutputTarget(t)])
                for i, t in enumerate(targets)
            ]
        )
    finally:
        cam.activations_and_grads.release()
    assert ours.maps.shape == (3, SIZE, SIZE) and ours.maps.dtype == np.float32
    assert ours.maps.max() > 0.99  # min-max scaled by grad-cam
    assert _rel(ours.maps, same_batch) < 1e-6  # the gradient gate changes nothing (measured: 0.0)
    # against grad-cam one image at a time: only the convolutions' batch-size-dependent summation order
    # differs (~1e-6 relative after 11 Inception blocks)
    assert max(_rel(a, b) for a, b in zip(ours.maps, per_image, strict=True)) < 1e-4
    assert ours.targets == (1, 0, 1)


def test_batch_sizes_give_the_same_maps_and_probabilities(model, batch):
    one = Explainer(model, batch_size=1).explain(batch)
    two = Explainer(model, batch_size=2).explain(batch)  # uneven: 2 + 1
    three = Explainer(model, batch_size=3).explain(batch)
    assert _rel(two.maps, one.maps) < 1e-4 and _rel(three.maps, one.maps) < 1e-4
    assert one.targets == two.targets == three.targets
    np.testing.assert_allclose(three.probabilities.sum(1), 1.0, rtol=1e-5)
    with torch.no_grad():
        expected = torch.softmax(MainLogits(model)(batch), 1).numpy()
    np.testing.assert_allclose(three.probabilities, expected, atol=1e-5)
    assert three.targets == tuple(expected.argmax(1).tolist())


def test_target_changes_the_map(model, batch):
    ex = Explainer(model)
    a = ex.explain(batch[:1], targets=[0]).maps
    b = ex.explain(batch[:1], targets=[1]).maps
    assert _rel(a, b) > 1e-3


# --- the model is left exactly as found --------------------------------------------------------------
def test_model_flags_hooks_and_grads_restored():
    torch.manual_seed(0)
    m = create_model(2, aux_logits=True, image_size=SIZE)
    m.train()
    m.Mixed_5b.eval()  # a mixed state must survive too
    for p in m.Conv2d_1a_3x3.parameters():
        p.requires_grad_(False)
    marker = torch.ones_like(m.fc.weight)
    m.fc.weight.grad = marker
    modes = {n: mod.training for n, mod in m.named_modules()}
    flags = {n: p.requires_grad for n, p in m.named_parameters()}
    x = torch.randn(2, 3, SIZE, SIZE)
    for fast in (True, False):
        for method in ("gradcam", "eigencam"):
            Explainer(m, method=method, fast=fast, batch_size=2).explain(x)
            assert {n: mod.training for n, mod in m.named_modules()} == modes
            assert {n: p.requires_grad for n, p in m.named_parameters()} == flags
            assert m.fc.weight.grad is marker
            assert _hooks(m) == 0


def test_failure_inside_grad_cam_still_restores(model):
    model.train()
    try:
        with pytest.raises(ConfigError):
            Explainer(model).explain(torch.zeros(1, 3, SIZE, SIZE), targets=[7])
        assert model.training and all(p.requires_grad for p in model.parameters()) and _hooks(model) == 0
    finally:
        model.eval()


def test_aux_head_on_in_train_mode():
    torch.manual_seed(0)
    m = create_model(2, aux_logits=True, image_size=SIZE)
    m.train()
    x = torch.randn(2, 3, SIZE, SIZE)
    assert isinstance(m(x), tuple)  # the sharp edge: timm returns (main, aux)
    cam = GradCAM(model=m, target_layers=[m.Mixed_7c])  # plain grad-cam on the raw model fails
    try:
        with pytest.raises((AttributeError, TypeError, ValueError, RuntimeError)):
            cam(input_tensor=x, targets=None)
    finally:
        cam.activations_and_grads.release()
        m.train()
    sal = Explainer(m, batch_size=2).explain(x)
    assert sal.maps.shape == (2, SIZE, SIZE) and np.isfinite(sal.maps).all()
    assert m.training and _hooks(m) == 0


@pytest.mark.parametrize("method", ["gradcam++", "hirescam", "xgradcam", "layercam", "eigencam"])
def test_other_methods_run_batched(model, batch, method):
    sal = Explainer(model, method=method, batch_size=2).explain(batch)
    assert sal.maps.shape == (3, SIZE, SIZE) and np.isfinite(sal.maps).all()
    assert sal.maps.min() >= 0 and sal.maps.max() <= 1 + 1e-6


# --- geometry and overlay ------------------------------------------------------------------------------
def test_map_goes_back_through_the_letterbox():
    geom = letterbox((200, 100), SIZE)  # tall image: padded left and right
    top, left, h, w = geom.content
    smap = np.zeros((SIZE, SIZE), np.float32)
    smap[top : top + h // 4, left : left + w // 2] = 1.0  # top-left quarter-height, left half of the content
    orig = to_original(smap, geom)
    assert orig.shape == (200, 100)
    assert orig[:40, :40].mean() > 0.95  # well inside the block
    assert orig[80:, :].max() < 0.05 and orig[:, 70:].max() < 0.05  # far from it
    with pytest.raises(DataError):
        to_original(np.zeros((2, SIZE, SIZE)), geom)


def test_top_region_outline_and_overlay():
    yy, xx = np.mgrid[:100, :120]
    sal = np.exp(-((yy - 30) ** 2 + (xx - 80) ** 2) / 300.0).astype(np.float32)
    region = top_region(sal, 10)
    assert abs(region.mean() - 0.10) < 0.01
    assert region[30, 80] and not region[90, 10]
    edge = outline(region)
    assert edge.any() and not edge[30, 80] and (edge <= region).all()
    display = np.full((100, 120), 0.5, np.float32)
    plain = Overlay(opacity=0.0, top_percent=None)(display, sal)
    assert plain.dtype == np.uint8 and plain.shape == (100, 120, 3)
    assert (plain == 128).all()  # opacity 0: the grey image untouched
    full = Overlay(colormap="jet", opacity=1.0, top_percent=10)(display, sal)
    assert tuple(full[edge][0]) == (255, 255, 255)
    assert full[90, 10, 2] > full[90, 10, 0]  # low saliency: blue in jet
    assert full[31, 80, 0] > full[31, 80, 2]  # high saliency: red in jet
    with pytest.raises(ConfigError, match="opacity"):
        Overlay(opacity=1.5)
    with pytest.raises(ConfigError, match=r"valid: .*viridis"):
        Overlay(colormap="rainbowz")
    with pytest.raises(ConfigError, match="top-percent"):
        top_region(sal, 0)


# --- faithfulness ----------------------------------------------------------------------------------------
def test_faithfulness_scores_and_restores(model, batch):
    sal = Explainer(model).explain(batch[:2])
    model.train()
    try:
        scores = faithfulness(model, batch[:2], sal.maps, sal.targets, metric="cam-mult")
        assert model.training and _hooks(model) == 0
    finally:
        model.eval()
    assert scores.shape == (2,) and np.isfinite(scores).all()
    with pytest.raises(ConfigError, match=r"valid: .*road-morf"):
        faithfulness(model, batch[:2], sal.maps, sal.targets, metric="nope")


def test_randomised_copy_changes_only_the_top(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    clone = randomised_copy(model)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # original untouched
    cs = clone.state_dict()
    assert not torch.equal(cs["Mixed_7c.branch1x1.conv.weight"], before["Mixed_7c.branch1x1.conv.weight"])
    assert not torch.equal(cs["fc.weight"], before["fc.weight"])
    assert torch.equal(cs["Mixed_6e.branch1x1.conv.weight"], before["Mixed_6e.branch1x1.conv.weight"])
    assert spearman(np.arange(10.0), np.arange(10.0)) == pytest.approx(1.0)
    assert np.isnan(spearman(np.ones(4), np.arange(4.0)))


# --- known location: Grad-CAM of a briefly trained model points at the lesion -------------------------
# Mixed_7c at 160 px is a 3×3 grid (2×2 at 128): too coarse to place a maximum inside a lesion. Mixed_5d at
# 160 px is a 17×17 grid (9.4 px cells; Mixed_6e at 299 px is 17×17 too). Measured while choosing it
# (held-out positives with the maximum strictly inside the lesion, two held-out sets, two model seeds):
# Mixed_5d 0.88-0.98 / 0.83-0.85; Mixed_6a (8×8, 20 px cells) 0.78-0.88 and, with the layers below it left
# random, 0.4-0.9: an 8×8 map puts its maximum on a cell centre that a lesion of 1-2 cells often misses.
LESION_SIZE = 160
LESION_LAYER = "Mixed_5d"
_STEM = (
    "Conv2d_1a_3x3",
    "Conv2d_2a_3x3",
    "Conv2d_2b_3x3",
    "Pool1",
    "Conv2d_3b_1x1",
    "Conv2d_4a_3x3",
    "Pool2",
)
_FROZEN = _STEM
_TRAINED = (
    "Mixed_5b",
    "Mixed_5c",
    "Mixed_5d",
    "Mixed_6a",
    "Mixed_6b",
    "Mixed_6c",
    "Mixed_6d",
    "Mixed_6e",
    "Mixed_7a",
    "Mixed_7b",
    "Mixed_7c",
    "fc",
)


def lesion_images(n: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, list]:
    """Grey images of smooth random texture; odd indices get a bright disc (radius 10–14% of the side: 3–5
    cells of the 17×17 map across) at a random place. Returns (N×3×S×S normalised like the model input, labels, [(cx, cy, r) or None])."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    imgs, labels, lesions = [], [], []
    for i in range(n):
        bg = ndimage.gaussian_filter(rng.normal(0, 1, (size, size)), 8)
        img = (bg - bg.min()) / (np.ptp(bg) + 1e-6) * 0.4 + 0.2 + rng.normal(0, 0.03, (size, size))
        lesion = None
        if i % 2:
            r = rng.uniform(0.10, 0.14) * size
            cx, cy = rng.uniform(r + 4, size - r - 4, 2)
            img = img + 0.35 * ((xx - cx) ** 2 + (yy - cy) ** 2 <= r * r)
            lesion = (cx, cy, r)
        imgs.append(img.astype(np.float32))
        labels.append(int(i % 2))
        lesions.append(lesion)
    x = torch.from_numpy(np.stack(imgs))[:, None].repeat(1, 3, 1, 1)
    return (x - 0.5) / 0.5, torch.tensor(labels), lesions


def train_lesion_model(steps: int = 40, n_train: int = 160, seed: int = 0) -> torch.nn.Module:
    """Inception V3 (medclass.model.create_model, random init) whose stem stays random (BatchNorm
    statistics measured on the data) and whose Mixed_5b..fc are trained on cached stem features — the
    whole network is then explained as usual. 40 steps reach 95–100% held-out accuracy."""
    torch.manual_seed(seed)
    model = create_model(2, aux_logits=True, image_size=LESION_SIZE)
    x, y, _ = lesion_images(n_train, LESION_SIZE, seed + 100)
    for bn in model.modules():
        if isinstance(bn, torch.nn.modules.batchnorm._BatchNorm):
            bn.reset_running_stats()
            bn.momentum = None

    def stem(t: torch.Tensor) -> torch.Tensor:
        for name in _FROZEN:
            t = getattr(model, name)(t)
        return t  # N×192×17×17

    model.train()
    with torch.no_grad():
        stem(x)  # BatchNorm statistics of the frozen part
        model.eval()
        feats = torch.cat([stem(x[i : i + 64]) for i in range(0, len(x), 64)])
    params = [p for name in _TRAINED for p in getattr(model, name).parameters()]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4)
    for name in _TRAINED:
        getattr(model, name).train()
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(feats), (32,), generator=g)
        t = feats[idx]
        for name in _TRAINED[:-1]:
            t = getattr(model, name)(t)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model.forward_head(t)
        loss = torch.nn.functional.cross_entropy(logits.float(), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def lesion_model() -> torch.nn.Module:
    # One thread: on a shared 2-core machine two OpenMP threads spin-wait for each other and this took
    # 6-9 min instead of ~1 min; flush denormals: tiny bf16 gradients otherwise crawl.
    threads = torch.get_num_threads()
    torch.set_flush_denormal(True)
    torch.set_num_threads(1)
    try:
        return train_lesion_model()
    finally:
        torch.set_num_threads(threads)
        torch.set_flush_denormal(False)


@pytest.mark.slow
def test_gradcam_maximum_falls_inside_the_lesion(lesion_model):
    x, y, lesions = lesion_images(80, LESION_SIZE, seed=7)  # held out: other seed; 40 positives
    with torch.no_grad():
        acc = (MainLogits(lesion_model)(x).argmax(1) == y).float().mean().item()
    assert acc >= 0.9, f"the briefly trained model did not learn the task (accuracy {acc:.2f})"
    pos = [i for i in range(len(y)) if y[i] == 1]
    grid = layer_grid(lesion_model, LESION_LAYER, LESION_SIZE)
    assert grid == (17, 17)
    cell = LESION_SIZE / grid[0]  # 9.4 px: the map cannot place a maximum more precisely
    sal = Explainer(lesion_model, layer=LESION_LAYER).explain(x[pos], targets=[1] * len(pos))
    inside = within = 0
    for k, i in enumerate(pos):
        cx, cy, r = lesions[i]
        row, col = np.unravel_index(np.argmax(sal.maps[k]), sal.maps[k].shape)
        d = np.hypot(col - cx, row - cy)
        inside += d <= r
        within += d <= r + cell  # the lesion dilated by one cell of the map
    print(f"Grad-CAM maximum inside the lesion for {inside}/{len(pos)}, within one cell for {within}")
    assert inside / len(pos) >= 0.8, f"maximum strictly inside the lesion for {inside}/{len(pos)}"
    assert within / len(pos) >= 0.9, f"maximum within lesion+1 cell for {within}/{len(pos)}"


@pytest.mark.slow
def test_randomisation_check_separates_trained_from_random_maps(lesion_model):
    x, y, _ = lesion_images(8, LESION_SIZE, seed=11)
    rho = randomisation_check(lesion_model, x[y == 1], layer=LESION_LAYER)
    assert rho < 0.5, f"maps of the randomised model correlate {rho:.2f} with the trained model's"


def _lesion_scores(maps: np.ndarray, lesions: list, threshold: float):
    """Regions of each map (input grid = original grid here) against its lesion disc."""
    from medclass.explain.regions import RegionFinder
    from medclass.metrics.localisation import LocalisationCase, localisation_scores

    finder = RegionFinder(threshold, max_regions=3)
    cases = []
    for m, (cx, cy, r) in zip(maps, lesions, strict=True):
        regions = finder(m)
        peak = regions[0].peak_xy if regions else (0.0, 0.0)
        box = regions[0].box if regions else None
        cases.append(LocalisationCase(m.shape[0], m.shape[1], (cx + 0.5, cy + 0.5, r), peak, box))
    return localisation_scores(cases)


def _beats_chance(s) -> bool:
    """The bar a localiser must clear: pointing game and box IoU well above their chance baselines."""
    return (
        s.pointing >= max(0.7, 3 * s.pointing_chance)
        and s.mean_iou >= max(0.25, 3 * s.mean_iou_chance)
        and s.iou_hit_rate[0.3] >= max(0.5, 3 * s.iou_hit_rate_chance[0.3])
    )


@pytest.mark.slow
def test_regions_localise_the_lesion_and_beat_chance(lesion_model):
    """Regions of Grad-CAM (Mixed_5d) on held-out lesions: threshold chosen on validation lesions (one
    seed), measured on another; the same maps paired with the wrong images score at chance and fail."""
    from medclass.explain.regions import choose_region_threshold

    def positives(seed: int):
        x, y, lesions = lesion_images(40, LESION_SIZE, seed=seed)
        pos = [i for i in range(len(y)) if y[i] == 1]
        sal = Explainer(lesion_model, layer=LESION_LAYER).explain(x[pos], targets=[1] * len(pos))
        return sal.maps, [lesions[i] for i in pos]

    val_maps, val_lesions = positives(21)
    boxes = [(cx + 0.5 - r, cy + 0.5 - r, cx + 0.5 + r, cy + 0.5 + r) for cx, cy, r in val_lesions]
    threshold, val_iou = choose_region_threshold(list(val_maps), boxes)
    maps, lesions = positives(7)
    s = _lesion_scores(maps, lesions, threshold)
    print(f"threshold {threshold} (val IoU {val_iou:.2f}); held out: {s.to_dict()}")
    assert _beats_chance(s), s.to_dict()
    shuffled = _lesion_scores(maps, lesions[1:] + lesions[:1], threshold)  # localisation fallen to chance
    print(f"shuffled: {shuffled.to_dict()}")
    assert not _beats_chance(shuffled), shuffled.to_dict()
    assert shuffled.mean_iou < 2 * shuffled.mean_iou_chance + 0.05
