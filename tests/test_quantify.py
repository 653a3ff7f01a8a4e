"""Tests for semtrack.quantify: exact fractions on hand-made maps and honest confidence intervals."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from semtrack.config import OUTSIDE, PHASE_NAMES
from semtrack.errors import SemtrackError
from semtrack.quantify import microstructure_scale_px, phase_fractions


def _gaussian_field(rng, n, corr_px):
    """Stationary Gaussian random field with unit *theoretical* variance (periodic, n x n)."""
    f = np.fft.fftfreq(n)
    kernel = np.exp(-2 * (np.pi * corr_px) ** 2 * (f[:, None] ** 2 + f[None, :] ** 2))
    field = np.fft.ifft2(np.fft.fft2(rng.standard_normal((n, n))) * kernel).real
    return field / np.sqrt((kernel**2).sum() / n**2)


# Thresholds of a unit Gaussian field giving known population fractions, darkest phase first.
_PROBS = np.array([0.05, 0.10, 0.20, 0.65])  # pore, na3po4, glass, nasicon
_CODES_BY_BRIGHTNESS = np.array([0, 3, 1, 2], dtype=np.uint8)
_THRESHOLDS = stats.norm.ppf(np.cumsum(_PROBS)[:-1])


def _thresholded(field):
    return _CODES_BY_BRIGHTNESS[np.digitize(field, _THRESHOLDS)]


def test_exact_fractions_and_area():
    phases = np.full((100, 120), 2, dtype=np.uint8)
    phases[:, :30] = 1  # glass 30 columns
    phases[:10, 30:40] = 0  # 100 pore pixels
    phases[50:60, 50:60] = 3  # 100 Na3PO4 pixels
    phases[:, 100:] = OUTSIDE  # 20 columns outside
    out = phase_fractions(phases, pixel_size_um=0.5, tile_um=10)
    n = 100 * 100
    assert out["frac_glass"] == pytest.approx(3000 / n)
    assert out["frac_pore"] == pytest.approx(100 / n)
    assert out["frac_na3po4"] == pytest.approx(100 / n)
    assert out["frac_nasicon"] == pytest.approx((n - 3200) / n)
    assert out["glass_fraction"] == pytest.approx(3000 / (3000 + n - 3200))
    assert out["area_um2"] == pytest.approx(n * 0.25)
    assert out["n_fields"] == 25  # 100 x 100 px region, 20 px fields
    assert out["tile_um"] == pytest.approx(10)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fractions_sum_to_one_and_bracket(seed):
    rng = np.random.default_rng(seed)
    phases = _thresholded(_gaussian_field(rng, 256, 3.0))
    phases[:20] = OUTSIDE
    out = phase_fractions(phases, pixel_size_um=0.1)
    total = sum(out[f"frac_{name}"] for name in PHASE_NAMES)
    assert total == pytest.approx(1.0, abs=1e-12)
    for name in PHASE_NAMES:
        assert out[f"frac_{name}_ci_low"] <= out[f"frac_{name}"] <= out[f"frac_{name}_ci_high"]
    assert out["glass_fraction_ci_low"] < out["glass_fraction"] < out["glass_fraction_ci_high"]
    assert out["n_fields"] >= 9


def test_uniform_map_has_zero_width_interval():
    phases = np.full((64, 64), 2, dtype=np.uint8)
    out = phase_fractions(phases, tile_um=16)
    assert out["frac_nasicon"] == out["frac_nasicon_ci_low"] == out["frac_nasicon_ci_high"] == 1.0
    assert out["glass_fraction"] == 0.0


def test_one_field_gives_nan_interval():
    phases = np.ones((32, 32), dtype=np.uint8)
    phases[:, 16:] = 2
    out = phase_fractions(phases, tile_um=64)
    assert out["n_fields"] == 1
    assert out["frac_glass"] == 0.5
    assert np.isnan(out["frac_glass_ci_low"]) and np.isnan(out["frac_glass_ci_high"])


@pytest.mark.parametrize("corr_px", [2.0, 4.0])
def test_interval_covers_population_fraction(corr_px):
    """95 % intervals from 256 x 256 windows cover the population fraction ~95 % of the time.

    Each window is an independent draw of a stationary thresholded Gaussian
    field, whose population fractions are known exactly from the thresholds.
    """
    rng = np.random.default_rng(42)
    glass_fraction = _PROBS[2] / (_PROBS[2] + _PROBS[3])
    trials = 120
    hits = {name: 0 for name in PHASE_NAMES} | {"glass_fraction": 0}
    widths = []
    for _ in range(trials):
        phases = _thresholded(_gaussian_field(rng, 300, corr_px)[:256, :256])
        out = phase_fractions(phases)
        for name, p in zip(("pore", "na3po4", "glass", "nasicon"), _PROBS, strict=True):
            hits[name] += out[f"frac_{name}_ci_low"] <= p <= out[f"frac_{name}_ci_high"]
        hits["glass_fraction"] += out["glass_fraction_ci_low"] <= glass_fraction <= out["glass_fraction_ci_high"]
        widths.append(out["frac_glass_ci_high"] - out["frac_glass_ci_low"])
    coverage = {k: v / trials for k, v in hits.items()}
    # Binomial 95 % band of a true 0.95 coverage over 120 trials is about 0.91-0.99.
    for name, c in coverage.items():
        assert 0.87 <= c <= 1.0, f"{name}: coverage {c:.2f}"
    # And the intervals are not trivially wide.
    assert np.median(widths) < 0.08


def test_interval_width_shrinks_with_area():
    rng = np.random.default_rng(3)
    field = _thresholded(_gaussian_field(rng, 1024, 3.0))
    small = phase_fractions(field[:256, :256])
    large = phase_fractions(field)
    w_small = small["frac_glass_ci_high"] - small["frac_glass_ci_low"]
    w_large = large["frac_glass_ci_high"] - large["frac_glass_ci_low"]
    # Half-width ~ 1/sqrt(area): 16x the area -> about 4x narrower.
    assert 2.5 < w_small / w_large < 6.5


def test_automatic_tile_is_several_structures_wide():
    # 8 px squares on a 16 px pitch. Glass: 2 x 76800 px along rows and columns in
    # 2 x (160 lines x 20 runs + 160 empty lines x 1 run) runs -> mean chord 153600 / 6720.
    phases = np.ones((320, 320), dtype=np.uint8)
    yy, xx = np.mgrid[:320, :320]
    phases[((yy // 8) % 2 == 0) & ((xx // 8) % 2 == 0)] = 2
    assert microstructure_scale_px(phases) == pytest.approx(153600 / 6720, rel=1e-12)
    out = phase_fractions(phases, pixel_size_um=0.1)
    assert out["tile_um"] >= 2.5 * microstructure_scale_px(phases) * 0.1 * 0.999


def test_custom_phase_names():
    phases = np.zeros((40, 40), dtype=np.uint8)
    phases[:, 10:] = 1
    out = phase_fractions(phases, phase_names=("island", "matrix"), glass="island", crystal="matrix", tile_um=10)
    assert out["frac_island"] == pytest.approx(0.25)
    assert out["glass_fraction"] == pytest.approx(0.25)
    assert "frac_glass" not in out


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"confidence": 1.5}, ValueError, "confidence"),
        ({"tile_um": -1}, ValueError, "tile_um"),
        ({"pixel_size_um": 0}, ValueError, "pixel_size_um"),
        ({"glass": "silica"}, ValueError, "glass"),
        ({"phase_names": ("a", "a", "b")}, ValueError, "duplicates"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    phases = np.zeros((8, 8), dtype=np.uint8)
    with pytest.raises(error, match=match):
        phase_fractions(phases, **kwargs)


def test_bad_maps():
    with pytest.raises(ValueError, match="2-D"):
        phase_fractions(np.zeros((2, 3, 4), dtype=np.uint8))
    with pytest.raises(TypeError, match="integer"):
        phase_fractions(np.zeros((4, 4), dtype=float))
    with pytest.raises(ValueError, match=r"codes \[7\]"):
        phase_fractions(np.full((4, 4), 7, dtype=np.uint8))
    with pytest.raises(SemtrackError, match="no analysed pixels"):
        phase_fractions(np.full((4, 4), OUTSIDE, dtype=np.uint8))


@pytest.mark.parametrize("tile_px", [7.0, 23.5, 400.0])
def test_field_counts_are_the_pixels_of_each_code_in_each_field(tile_px):
    from semtrack.quantify import _field_counts

    rng = np.random.default_rng(5)
    codes = rng.integers(0, 4, (97, 131)).astype(np.uint8)
    codes[:5] = OUTSIDE
    codes[40:60, 100:] = OUTSIDE
    region = codes != OUTSIDE
    counts = _field_counts(codes, region, tile_px, 4)  # uint8: a histogram per field
    # Every analysed pixel is counted once, under its own code.
    np.testing.assert_array_equal(counts.sum(axis=0), [np.count_nonzero(codes == c) for c in range(4)])
    # Wider codes take the integral-image path: the same fields, the same counts.
    np.testing.assert_array_equal(_field_counts(codes.astype(np.int32), region, tile_px, 4), counts)
    # The first field of the grid (the region starts at row 5) is counted by hand.
    n_c = max(1, round(131 / tile_px))
    n_r = max(1, round(92 / tile_px))
    rows = slice(5, 5 + -(-92 // n_r) if n_r > 1 else 97)
    cols = slice(0, -(-131 // n_c) if n_c > 1 else 131)
    np.testing.assert_array_equal(counts[0], [np.count_nonzero(codes[rows, cols] == c) for c in range(4)])
