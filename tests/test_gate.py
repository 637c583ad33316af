"""medclass.gate: the Mahalanobis feature model, the header and layout checks, the profile in a checkpoint's
sidecar, and the gate's verdicts (synthetic features and images: fast, no model)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from medclass.errors import CheckpointError, ConfigError, DataError
from medclass.gate import (
    PROFILE_KEY,
    FeatureModel,
    Gate,
    GateProfile,
    ImageFacts,
    LayoutProfile,
    MetaProfile,
)

D = 256


def _features(rng: np.random.Generator, n: int, shift: float = 0.0, basis: np.ndarray | None = None):
    """Two classes on a 16-dimensional subspace of D dims, plus small isotropic noise."""
    basis = basis if basis is not None else np.linalg.qr(rng.normal(size=(D, 16)))[0].T  # 16×D
    y = rng.integers(0, 2, n)
    z = rng.normal(size=(n, 16)) * np.linspace(3, 0.5, 16) + np.where(y[:, None] == 1, 2.0, -2.0)
    x = z @ basis + 0.1 * rng.normal(size=(n, D)) + shift
    return x.astype(np.float32), y, basis


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(0)
    x, y, basis = _features(rng, 400)
    xv, _, _ = _features(rng, 300, basis=basis)
    model = FeatureModel(components=32).fit(x, y).calibrate(xv)
    return model, basis, rng


def test_threshold_is_the_validation_percentile(fitted):
    model, basis, rng = fitted
    assert model.threshold_ is not None and model.threshold_ > 0
    # new in-distribution images: about 1% above the 99th percentile of validation
    xt, _, _ = _features(rng, 2000, basis=basis)
    flagged = float((model.score(xt) > model.threshold_).mean())
    assert flagged < 0.03


def test_shifted_features_are_flagged_inside_and_outside_the_subspace(fitted):
    model, basis, rng = fitted
    xt, _, _ = _features(rng, 500, basis=basis)
    inside = xt + 60.0 * basis[3]  # along a principal direction, 24 s.d. of its spread
    outside = xt + 3.0 * np.linalg.qr(rng.normal(size=(D, 1)))[0].T[0] * np.sqrt(D) * 0.1
    assert (model.score(inside) > model.threshold_).mean() > 0.95
    assert (model.score(outside) > model.threshold_).mean() > 0.95  # the residual term catches it
    assert (model.score(xt) > model.threshold_).mean() < 0.05


def test_feature_model_round_trips_through_json(fitted):
    import json

    model = fitted[0]
    doc = json.loads(json.dumps(model.to_dict()))
    back = FeatureModel.from_dict(doc)
    x = np.random.default_rng(5).normal(size=(20, D))
    np.testing.assert_allclose(back.score(x), model.score(x), rtol=1e-5)
    assert back.threshold_ == model.threshold_
    with pytest.raises(CheckpointError, match="malformed"):
        FeatureModel.from_dict(doc | {"means": {"dtype": "float32", "shape": [3, 3], "b64": "!!"}})
    with pytest.raises(CheckpointError):
        FeatureModel.from_dict(doc | {"method": "energy"})


def test_feature_model_refuses_too_few_images_and_wrong_dimensions(fitted):
    with pytest.raises(DataError, match="at least 4"):
        FeatureModel().fit(np.zeros((3, 8)), np.zeros(3))
    with pytest.raises(DataError, match="dimensions"):
        fitted[0].score(np.zeros((2, 7)))
    with pytest.raises(DataError, match="not calibrated"):
        FeatureModel(components=4).fit(np.random.default_rng(1).normal(size=(10, 8)), np.zeros(10)).to_dict()


def test_meta_profile_names_what_training_never_saw():
    train = [ImageFacts("dicom", "CR", "MONOCHROME2", "CHEST", "PA", 2000, 2000, 0.15)] * 3 + [
        ImageFacts("dicom", "DX", "MONOCHROME1", "CHEST", "AP", 2500, 2048, 0.2)
    ]
    p = MetaProfile().fit(train)
    assert p.reasons(train[0]) == []
    ct = ImageFacts("dicom", "CT", "MONOCHROME2", "ABDOMEN", "", 512, 512, 0.7)
    reasons = p.reasons(ct)
    assert "modality CT not in training data (CR, DX)" in reasons
    assert "body part ABDOMEN not in training data (CHEST)" in reasons
    assert any(r.startswith("rows 512 px far outside training (2000–2500 px)") for r in reasons)
    assert any(r.startswith("pixel spacing 0.7 mm far outside") for r in reasons)
    # a value the image does not record, or training never recorded, is not compared
    assert p.reasons(ImageFacts("png", "", "MONOCHROME2", "", "", 2100, 2100, None)) == []
    jpeg = MetaProfile().fit([ImageFacts("jpeg", "", "MONOCHROME2", "", "", 1000, 1200, None)])
    assert jpeg.reasons(ImageFacts("dicom", "CT", "MONOCHROME2", "", "", 1000, 1000, 0.7)) == []
    back = MetaProfile.from_dict(p.to_dict())
    assert back.reasons(ct) == reasons
    with pytest.raises(CheckpointError, match="metadata part"):
        MetaProfile.from_dict({"modalities": [1, 2]})


def test_facts_from_image_meta():
    from medclass.ingest.types import ImageMeta

    m = ImageMeta("x.dcm", "dicom", modality="ct", original_shape=(3, 512, 400), pixel_spacing=(0.8, 0.6))
    f = ImageFacts.from_meta(m)
    assert (f.modality, f.rows, f.cols, f.spacing) == ("CT", 512, 400, 0.6)
    j = ImageFacts.from_meta(ImageMeta("x.jpeg", "jpeg", original_shape=(900, 1200, 3)))
    assert (j.rows, j.cols, j.spacing) == (900, 1200, None)


def _chest_like(rng: np.random.Generator, n: int, size: int = 32) -> list[np.ndarray]:
    """Bright centre column on a dark background, random brightness and noise: a stand-in layout."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = np.exp(-((xx - 0.5) ** 2) / 0.02) + 0.5 * np.exp(-((yy - 0.2) ** 2) / 0.05)
    out = []
    for _ in range(n):
        img = base * rng.uniform(0.8, 1.2) + 0.1 * rng.normal(size=base.shape) + rng.uniform(-0.2, 0.2)
        out.append(np.repeat(img[None].astype(np.float32), 3, axis=0))
    return out


def test_layout_check_calls_an_inverted_image_inverted():
    rng = np.random.default_rng(1)
    p = LayoutProfile().fit(_chest_like(rng, 200), _chest_like(rng, 50))
    fresh = _chest_like(rng, 100)
    assert sum(bool(p.reasons(a)) for a in fresh) <= 3
    inverted = [-a for a in fresh]
    # called inverted when the negative would have passed (not for the ~1% that would not pass upright)
    assert sum(any(r.startswith("looks inverted") for r in p.reasons(a)) for a in inverted) >= 95
    assert all(p.reasons(a) for a in inverted)
    rotated = [np.rot90(a, axes=(1, 2)).copy() for a in fresh]
    assert all(any("layout unlike" in r for r in p.reasons(a)) for a in rotated)
    assert any("nearly uniform" in r for r in p.reasons(np.zeros((3, 32, 32), np.float32)))
    back = LayoutProfile.from_dict(p.to_dict())
    assert back.reasons(inverted[0]) == p.reasons(inverted[0])


def _profile(rng: np.random.Generator) -> GateProfile:
    x, y, basis = _features(rng, 200)
    xv, _, _ = _features(rng, 100, basis=basis)
    facts = [ImageFacts("dicom", "CR", "MONOCHROME2", "", "", 1000, 1000, 0.2)] * 10
    return GateProfile(
        MetaProfile().fit(facts),
        LayoutProfile().fit(_chest_like(rng, 100)),
        FeatureModel(components=16).fit(x, y).calibrate(xv),
    ), basis


def test_gate_joins_reasons_and_scores(caplog):
    rng = np.random.default_rng(2)
    profile, basis = _profile(rng)
    gate = Gate(profile, "flag")
    feats, _, _ = _features(rng, 3, basis=basis)
    feats[2] += 10.0
    arrays = np.stack(_chest_like(rng, 3))
    cr = ImageFacts("dicom", "CR", "MONOCHROME2", "", "", 1000, 1000, 0.2)
    ct = ImageFacts("dicom", "CT", "MONOCHROME2", "", "", 1000, 1000, 0.2)
    results = gate.judge([cr, ct, None], arrays, feats)
    assert results[0].in_scope is True and results[0].reason == "" and results[0].ood_score < 1.5
    assert results[1].in_scope is False and results[1].reason.startswith(
        "modality CT not in training data (CR)"
    )
    assert results[2].in_scope is False and "feature distance" in results[2].reason
    assert results[2].columns()["ood_score"] > 1
    assert not gate.refuses(results[2]) and Gate(profile, "refuse").refuses(results[2])
    # a backend without features: headers and layout only, said once
    with caplog.at_level(logging.WARNING):
        only_meta = gate.judge([ct, cr], arrays[:2], None)
        gate.judge([ct], arrays[:1], None)
    assert [r.in_scope for r in only_meta] == [False, True] and only_meta[1].ood_score is None
    assert sum("gives no features" in r.message for r in caplog.records) == 1


def test_gate_from_meta_old_checkpoint_off_and_malformed(caplog):
    with caplog.at_level(logging.WARNING):
        gate = Gate.from_meta({"classes": ["a", "b"]}, "flag")
    assert not gate.active and "no input profile" in caplog.text
    assert gate.judge([None], np.zeros((1, 3, 8, 8)))[0].in_scope is None
    profile, _ = _profile(np.random.default_rng(3))
    meta = {PROFILE_KEY: profile.to_dict()}
    assert Gate.from_meta(meta, "refuse").active
    assert not Gate.from_meta(meta, "off").active
    with pytest.raises(ConfigError, match="gate mode"):
        Gate.from_meta(meta, "strict")
    with pytest.raises(CheckpointError, match="version"):
        Gate.from_meta({PROFILE_KEY: {"version": 99}})


def test_facts_travel_to_ray_actors_as_json():
    import json

    from medclass.score.ray_engine import _facts

    facts = ImageFacts("dicom", "CT", "MONOCHROME2", "CHEST", "AP", 512, 512, 0.7)
    assert ImageFacts(**json.loads(json.dumps(_facts(facts)))) == facts
    assert _facts(None) is None
