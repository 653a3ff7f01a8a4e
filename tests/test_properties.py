"""Property-based tests (hypothesis) of the pure functions: transforms, fractions, island bookkeeping, determinism."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from semtrack.config import OUTSIDE, PHASE_NAMES
from semtrack.quantify import phase_fractions
from semtrack.register import resample, transform_parameters
from semtrack.track import area_balance, link_islands

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _affine(dx, dy, angle_deg, scale):
    a = math.radians(angle_deg)
    return np.array(
        [
            [scale * math.cos(a), -scale * math.sin(a), dx],
            [scale * math.sin(a), scale * math.cos(a), dy],
            [0.0, 0.0, 1.0],
        ]
    )


def _smooth_image(rng, shape):
    y, x = np.mgrid[: shape[0], : shape[1]]
    f1, f2 = rng.uniform(0.05, 0.15, 2)
    return (np.sin(f1 * x + rng.uniform(0, 6)) + np.cos(f2 * y + rng.uniform(0, 6))).astype(np.float32)


affines = st.builds(
    _affine,
    st.floats(-6, 6),
    st.floats(-6, 6),
    st.floats(-3, 3),
    st.floats(0.97, 1.03),
)


# -- transforms ------------------------------------------------------------------------------


@FAST
@given(m=affines)
def test_transform_parameters_round_trip(m):
    p = transform_parameters(m)
    back = _affine(p["dx_px"], p["dy_px"], p["rotation_deg"], p["scale"])
    np.testing.assert_allclose(back, m, atol=1e-9)


@FAST
@given(a=affines, b=affines)
def test_transform_parameters_compose(a, b):
    # Similarities compose: angles add, scales multiply (mod 360 near +-180 is out of range here).
    pa, pb, pab = transform_parameters(a), transform_parameters(b), transform_parameters(a @ b)
    assert pab["rotation_deg"] == pytest.approx(pa["rotation_deg"] + pb["rotation_deg"], abs=1e-9)
    assert pab["scale"] == pytest.approx(pa["scale"] * pb["scale"], rel=1e-9)


@FAST
@given(m=affines, seed=st.integers(0, 2**16))
def test_resample_with_m_then_inverse_gives_back_the_image(m, seed):
    rng = np.random.default_rng(seed)
    # A smooth image, so bilinear interpolation is accurate to well below its range.
    image = _smooth_image(rng, (64, 80))
    there = resample(image, m, image.shape, order=1)
    back = resample(there, np.linalg.inv(m), image.shape, order=1)
    ok = np.isfinite(back)
    # Everything but a border of at most max-shift + rotation sweep must come back.
    inner = np.zeros(image.shape, bool)
    inner[12:-12, 12:-12] = True
    assert ok[inner].all()
    np.testing.assert_allclose(back[ok], image[ok], atol=0.02)


@FAST
@given(a=affines, b=affines, seed=st.integers(0, 2**16))
def test_resample_composes(a, b, seed):
    image = _smooth_image(np.random.default_rng(seed), (48, 56))
    # out[y, x] = image(M (x, y)): resampling by b then by a samples the image at b @ a.
    twice = resample(resample(image, b, image.shape), a, image.shape)
    once = resample(image, b @ a, image.shape)
    both = np.isfinite(twice) & np.isfinite(once)
    # Defined wherever the first pass samples inside the image (a p) and the second pass's four
    # neighbours of a p were defined by the first (b a p, give or take b times a pixel diagonal:
    # 2 px); the shifts and rotations can take that region far from a fixed border.
    rows, cols = image.shape
    y, x = np.mgrid[:rows, :cols]
    points = np.stack([x.ravel(), y.ravel(), np.ones(x.size)])

    def inside_by(m, margin):
        px, py, _ = m @ points
        return ((px >= margin) & (px <= cols - 1 - margin) & (py >= margin) & (py <= rows - 1 - margin)).reshape(
            rows, cols
        )

    expected = inside_by(a, 1) & inside_by(b @ a, 2)
    assert expected.mean() > 0.3  # the comparison below covers a real part of the image
    assert both[expected].all()
    # Two bilinear passes smooth a little more than one; the signal varies by ~0.15 per pixel.
    np.testing.assert_allclose(twice[both], once[both], atol=0.02)


# -- phase fractions -------------------------------------------------------------------------


@st.composite
def phase_maps(draw):
    rows, cols = draw(st.integers(24, 96)), draw(st.integers(24, 96))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    block = draw(st.integers(1, 6))
    coarse = rng.integers(0, len(PHASE_NAMES), (rows // block + 1, cols // block + 1))
    phases = np.kron(coarse, np.ones((block, block), int))[:rows, :cols].astype(np.uint8)
    r0, c0 = draw(st.integers(0, rows // 3)), draw(st.integers(0, cols // 3))
    phases[:r0] = OUTSIDE
    phases[:, :c0] = OUTSIDE
    return phases


@FAST
@given(phases=phase_maps(), confidence=st.floats(0.5, 0.99))
def test_phase_fractions_sum_to_one_and_intervals_bracket(phases, confidence):
    res = phase_fractions(phases, confidence=confidence)
    inside = phases != OUTSIDE
    fracs = [res[f"frac_{n}"] for n in PHASE_NAMES]
    assert sum(fracs) == pytest.approx(1.0, abs=1e-12)
    for code, name in enumerate(PHASE_NAMES):
        assert res[f"frac_{name}"] == pytest.approx((phases[inside] == code).mean(), abs=1e-12)
        lo, hi = res[f"frac_{name}_ci_low"], res[f"frac_{name}_ci_high"]
        if not math.isnan(lo):
            assert 0 <= lo <= res[f"frac_{name}"] <= hi <= 1
    assert res["area_um2"] == inside.sum()


# -- island bookkeeping ----------------------------------------------------------------------


@st.composite
def island_sequences(draw):
    """2-4 label maps of rectangles that persist, grow, drift, touch (coalesce), vanish or appear."""
    n_frames = draw(st.integers(2, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    boxes = [list(rng.integers(0, 40, 2)) + list(rng.integers(2, 10, 2)) for _ in range(draw(st.integers(0, 7)))]
    maps = []
    for _ in range(n_frames):
        labels = np.zeros((48, 48), np.int32)
        for k, (r, c, h, w) in enumerate(boxes, start=1):
            labels[r : r + h, c : c + w] = k
        maps.append(labels)
        # Next frame: each box survives with p = 0.7, grows or shrinks by up to 3 px and drifts by
        # up to 2 px; a few new ones appear. Touching boxes share a label map, i.e. coalesce.
        boxes = [
            [
                int(np.clip(r + rng.integers(-2, 3), 0, 46)),
                int(np.clip(c + rng.integers(-2, 3), 0, 46)),
                int(max(1, h + rng.integers(-2, 4))),
                int(max(1, w + rng.integers(-2, 4))),
            ]
            for r, c, h, w in boxes
            if rng.random() < 0.7
        ]
        boxes += [list(rng.integers(0, 40, 2)) + list(rng.integers(2, 10, 2)) for _ in range(rng.integers(0, 3))]
    return maps


ACCOUNTED = {"continued", "coalesced", "split", "dissolved", "left_region"}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(maps=island_sequences(), with_region=st.booleans())
def test_every_island_is_accounted_for_at_the_next_frame(maps, with_region):
    region = None
    if with_region:
        region = np.zeros(maps[0].shape, bool)
        region[4:44, 6:46] = True
    lineage, relabelled = link_islands(maps, [24.0 * (i + 1) for i in range(len(maps))], region=region)
    islands, events = lineage.islands, lineage.events

    balance = area_balance(islands, events)
    assert balance["balanced"].all(), balance

    last = len(maps) - 1
    for f in range(last):
        now = islands[islands["frame"] == f]
        nxt = islands[islands["frame"] == f + 1]
        ev = events[events["frame_from"] == f]
        ids_next = set(nxt["island_id"])
        parents_next = {int(p) for s in nxt["parents"].fillna("").astype(str) for p in s.split(";") if p}
        ended = {
            int(i) for col in ["islands_before"] for s in ev[col].fillna("").astype(str) for i in s.split(";") if i
        }
        for island_id, fate in zip(now["island_id"], now["fate"]):
            assert fate in ACCOUNTED, (f, island_id, fate)
            if fate == "continued":
                assert island_id in ids_next
            elif fate in ("coalesced", "split"):
                assert island_id in parents_next or island_id in ids_next
            else:  # dissolved or left_region: an event names it
                assert island_id in ended, (f, island_id, fate, ev)
    assert set(islands.loc[islands["frame"] == last, "fate"]) <= {"last_frame"}
    # The relabelled maps hold exactly the islands of the table.
    for f, lab in enumerate(relabelled):
        assert set(np.unique(lab[lab > 0])) == set(islands.loc[islands["frame"] == f, "island_id"])


# -- determinism -----------------------------------------------------------------------------


def test_segment_frame_is_deterministic(synth_series):
    from semtrack.segment import segment_frame

    image = synth_series.images[1]
    first = segment_frame(image, pixel_size_um=synth_series.pixel_size_um)
    second = segment_frame(image.copy(), pixel_size_um=synth_series.pixel_size_um)
    np.testing.assert_array_equal(first, second)


def test_pipeline_is_deterministic(tmp_path):
    from semtrack.pipeline import run
    from semtrack.synth import make_series, write_series

    folder = tmp_path / "series"
    write_series(make_series(shape=(192, 256), n_frames=3, seed=5), folder)
    tables = ["frames.csv", "grains.csv", "islands.csv", "events.csv", "intervals.csv"]
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        run(folder, out_dir=out, report=False)
    for table in tables:
        a, b = (pd.read_csv(out / table) for out in outs)
        pd.testing.assert_frame_equal(a, b, check_exact=True, obj=table)
    for label in sorted((outs[0] / "labels").glob("*.tif")):
        np.testing.assert_array_equal(tifffile.imread(label), tifffile.imread(outs[1] / "labels" / label.name))


@FAST
@given(maps=island_sequences())
def test_link_islands_is_deterministic(maps):
    times = [float(i) for i in range(len(maps))]
    a, la = link_islands(maps, times)
    b, lb = link_islands([m.copy() for m in maps], times)
    pd.testing.assert_frame_equal(a.islands, b.islands)
    pd.testing.assert_frame_equal(a.events, b.events)
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(x, y)
