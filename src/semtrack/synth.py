"""Synthetic SEM-BSE time series of a NaSICON glass-ceramic, with full ground truth.

:func:`make_series` builds a "world" (the sample surface) in reference-frame
coordinates plus a margin, and images it once per exposure time:

* NaSICON grains: bright, polygonal or rounded-square cells of a power (Laguerre)
  tessellation with log-normal sizes, each with its own orientation contrast,
  a slight intra-grain shading and a bright edge halo; some neighbours touch
  without glass between them.
* Glass channels between the grains, their total area set so that
  glass / (glass + NaSICON) equals ``glass_fraction`` over the world.
* Pores: near-black small irregular holes, mostly at grain boundaries.
* Na3PO4 islands: dark-grey irregular blobs on top of the surface that form,
  grow, coalesce, split and dissolve between frames with exact identity truth.
* A fixed marker: a partially detached ceramic piece in a corner (tilted, with
  a bright raised edge, a dark shadowed gap and cracks) that never changes.

Each frame then sees the world through its own stage transform (translation,
rotation, scale), beam blur, vignetting, a gain/offset change, shot noise,
scan-line noise, and carries an SEM info bar at the bottom.

Coordinates are pixel ``(x = column, y = row)``; a frame's matrix maps
reference pixel coordinates to that frame's pixel coordinates.

Examples
--------
>>> from semtrack.synth import make_series
>>> s = make_series(shape=(128, 160), n_frames=2, seed=1)
>>> len(s.images), s.images[0].shape, s.images[0].dtype
(2, (128, 160), dtype('uint8'))
>>> s.matrices[0].tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
from scipy import ndimage, special
from skimage import measure

from .config import OUTSIDE, PHASE_CODES

__all__ = ["SynthSeries", "make_series", "write_series", "DEFAULT_TIMES_H"]

#: Exposure times (h) of the scientists' series; `make_series` uses the first n.
DEFAULT_TIMES_H: tuple[float, ...] = (24.0, 96.0, 845.0, 1055.0)

_PORE, _GLASS, _NASICON, _NA3PO4 = (PHASE_CODES[n] for n in ("pore", "glass", "nasicon", "na3po4"))

#: Mean BSE signal of each phase before gain/offset (mean atomic number order).
_SIGNAL = {_PORE: 0.05, _NA3PO4: 0.30, _GLASS: 0.50, _NASICON: 0.80}

#: Area fraction of a grain cell covered by its packing disk (sets disk size from the wanted cell size).
_PACKING = 0.6

#: Relative amplitude bound of an island outline's harmonics (shape irregularity).
_BLOB_IRREGULARITY = 0.2


# --------------------------------------------------------------------------- result type


@dataclass
class SynthSeries:
    """A synthetic SEM time series and everything true about it.

    Attributes
    ----------
    images : list of (H, W) ndarray
        The frames as imaged (``uint8`` or ``uint16``), info bar included.
    times_h : (n,) ndarray
        Exposure times in hours, increasing.
    pixel_size_um : float
        Pixel size in µm (the same in every frame up to the small scale change).
    matrices : (n, 3, 3) ndarray of float64
        Reference pixel ``(x, y, 1)`` -> frame pixel coordinates; ``matrices[0]`` is the identity.
    info_bar_rows : int
        Height of the info bar at the bottom of every frame (0 without one).
    marker_rect : tuple of int
        ``(x0, y0, x1, y1)`` (end exclusive) of the fixed marker, reference coordinates.
    phases_ref : list of (H, W) uint8 ndarray
        True phase map per frame in reference coordinates: 0 pore, 1 glass,
        2 NaSICON, 3 Na3PO4; 255 where that frame did not image the point and in
        the info-bar rows.
    phases : list of (H, W) uint8 ndarray
        True phase map per frame in that frame's own pixel grid (255 in the info bar).
    grain_labels_ref : (H, W) int32 ndarray
        NaSICON grain instances (0 = not a grain) of the microstructure under the
        islands, reference coordinates.
    islands_ref : list of (H, W) int32 ndarray
        Island identity per frame (0 = no island), reference coordinates; ids are
        persistent and match ``islands``. Islands lie inside the analysed region.
    islands : pandas.DataFrame
        One row per island per frame: ``frame``, ``time_h``, ``island_id``,
        ``area_um2``, ``x_px``, ``y_px`` (centroid, reference coordinates),
        ``parents`` (``;``-joined ids of the islands it came from by coalescence
        or split, on every row of the island; ``''`` if none).
    events : pandas.DataFrame
        One row per event between consecutive frames: ``frame_from``, ``frame_to``,
        ``time_from_h``, ``time_to_h``, ``event`` (``formation``, ``coalescence``,
        ``split``, ``dissolution``), ``x_px``, ``y_px`` (centroid of the island the
        event produces -- formation, coalescence -- or ends -- dissolution,
        split), ``islands_before``, ``islands_after`` (``;``-joined ids) and
        ``area_um2`` (area of that same island).
    params : dict
        Every generation parameter (JSON-serialisable), seed included, plus
        derived values (``margin_px``, ``n_island_groups`` ...).
    """

    images: list[np.ndarray]
    times_h: np.ndarray
    pixel_size_um: float
    matrices: np.ndarray
    info_bar_rows: int
    marker_rect: tuple[int, int, int, int]
    phases_ref: list[np.ndarray]
    phases: list[np.ndarray]
    grain_labels_ref: np.ndarray
    islands_ref: list[np.ndarray]
    islands: pd.DataFrame
    events: pd.DataFrame
    params: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, cols)`` of every frame, info bar included."""
        return self.images[0].shape

    def analysed_region(self) -> np.ndarray:
        """Reference pixels imaged by every frame, above the info bar.

        Returns
        -------
        (H, W) bool ndarray
        """
        region = np.ones(self.shape, dtype=bool)
        for phases in self.phases_ref:
            region &= phases != OUTSIDE
        return region

    def truth_frame_table(self) -> pd.DataFrame:
        """True per-frame numbers, with the columns of ``frames.csv``.

        Fractions are over :meth:`analysed_region`. Grain columns describe the
        microstructure under the islands (``grain_labels_ref``): grains wholly
        inside the analysed region and not touching its border. The
        ``*_visible`` grain columns count only the part of each such grain that
        the frame's islands leave uncovered (what a perfect segmentation of that
        frame could measure).

        Returns
        -------
        pandas.DataFrame
            Columns ``frame``, ``time_h``, ``frac_pore``, ``frac_glass``,
            ``frac_nasicon``, ``frac_na3po4``, ``glass_fraction``, ``n_islands``,
            ``na3po4_area_um2``, ``grain_count``, ``grain_ecd_mean_um``,
            ``grain_ecd_median_um``, ``grain_count_visible``,
            ``grain_ecd_mean_visible_um``, ``grain_ecd_median_visible_um``,
            ``pixel_size_um``.

        Examples
        --------
        >>> s = make_series(shape=(128, 160), n_frames=2, seed=1)
        >>> t = s.truth_frame_table()
        >>> bool(abs(t[["frac_pore", "frac_glass", "frac_nasicon", "frac_na3po4"]].sum(axis=1) - 1).max() < 1e-9)
        True
        """
        region = self.analysed_region()
        n_region = int(region.sum())
        px_area = self.pixel_size_um**2
        inside = _grains_inside(self.grain_labels_ref, region)
        ecd_all = _ecd_um(self.grain_labels_ref, inside, px_area)
        rows = []
        for i, (phases, ids) in enumerate(zip(self.phases_ref, self.islands_ref)):
            counts = np.bincount(phases[region], minlength=4)[:4].astype(float)
            fr = counts / max(n_region, 1)
            solid = counts[_GLASS] + counts[_NASICON]
            uncovered = np.where(ids == 0, self.grain_labels_ref, 0)
            ecd_vis = _ecd_um(uncovered, inside, px_area)
            rows.append(
                {
                    "frame": i,
                    "time_h": float(self.times_h[i]),
                    "frac_pore": fr[_PORE],
                    "frac_glass": fr[_GLASS],
                    "frac_nasicon": fr[_NASICON],
                    "frac_na3po4": fr[_NA3PO4],
                    "glass_fraction": counts[_GLASS] / solid if solid else float("nan"),
                    "n_islands": int(np.unique(ids[region & (ids > 0)]).size),
                    "na3po4_area_um2": counts[_NA3PO4] * px_area,
                    "grain_count": int(ecd_all.size),
                    "grain_ecd_mean_um": _mean(ecd_all),
                    "grain_ecd_median_um": _median(ecd_all),
                    "grain_count_visible": int(ecd_vis.size),
                    "grain_ecd_mean_visible_um": _mean(ecd_vis),
                    "grain_ecd_median_visible_um": _median(ecd_vis),
                    "pixel_size_um": self.pixel_size_um,
                }
            )
        return pd.DataFrame(rows)


def _mean(a: np.ndarray) -> float:
    return float(a.mean()) if a.size else float("nan")


def _median(a: np.ndarray) -> float:
    return float(np.median(a)) if a.size else float("nan")


def _grains_inside(labels: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Bool per label id: the grain lies in ``region`` without touching its border."""
    n = int(labels.max()) + 1
    border = ~ndimage.binary_erosion(region, structure=np.ones((3, 3), bool), border_value=0)
    ok = np.zeros(n, dtype=bool)
    ok[np.unique(labels)] = True
    ok[np.unique(labels[border])] = False
    ok[0] = False
    return ok


def _ecd_um(labels: np.ndarray, keep: np.ndarray, px_area_um2: float) -> np.ndarray:
    area_px = np.bincount(labels.ravel(), minlength=keep.size)[: keep.size]
    area_px = area_px[keep & (area_px > 0)]
    return np.sqrt(4.0 * area_px * px_area_um2 / np.pi)


def interior_grain_ecd_um(grain_labels: np.ndarray, region: np.ndarray, pixel_size_um: float) -> np.ndarray:
    """Equivalent circle diameters (µm) of the grains lying in ``region`` without touching its border.

    The grain-size truth that measured ``grains.csv`` statistics are compared with.

    Examples
    --------
    >>> labels = np.zeros((20, 20), np.int32); labels[5:9, 5:9] = 1; labels[0:4, 0:4] = 2
    >>> interior_grain_ecd_um(labels, np.ones((20, 20), bool), 0.5).round(3)
    array([2.257])
    """
    inside = _grains_inside(grain_labels, region)
    return _ecd_um(grain_labels, inside, pixel_size_um**2)


# --------------------------------------------------------------------------- generator


def make_series(
    *,
    shape: tuple[int, int] = (512, 512),
    n_frames: int = 4,
    times_h: list[float] | np.ndarray | None = None,
    pixel_size_um: float = 0.05,
    grain_size_um: float = 2.5,
    grain_size_spread: float = 0.35,
    glass_fraction: float = 0.2,
    touching_fraction: float = 0.25,
    pore_fraction: float = 0.02,
    n_islands: int | None = None,
    island_diameter_um: tuple[float, float] = (0.6, 5.0),
    island_events: bool = True,
    max_shift_fraction: float = 0.05,
    max_rotation_deg: float = 1.0,
    max_scale_change: float = 0.005,
    brightness_change: float = 0.2,
    dose_electrons_per_px: float | None = 150.0,
    scan_line_noise: float = 0.01,
    blur_sigma_px: float = 0.8,
    halo: float = 0.08,
    vignetting: float = 0.04,
    info_bar: bool = True,
    marker_corner: str = "top-left",
    dtype: str = "uint8",
    seed: int = 0,
) -> SynthSeries:
    """Generate a synthetic SEM-BSE time series with its ground truth.

    Parameters
    ----------
    shape : (rows, cols)
        Frame size in pixels, info bar included.
    n_frames : int
        Number of exposure times.
    times_h : sequence of float, optional
        Exposure times in hours (increasing, ``n_frames`` of them). Default: the
        first ``n_frames`` of :data:`DEFAULT_TIMES_H` (24, 96, 845, 1055 h),
        continued every 250 h.
    pixel_size_um : float
        Pixel size in µm.
    grain_size_um : float
        Median equivalent circle diameter of the NaSICON grains in µm (sizes are
        log-normal, clipped to 1-10 µm before glass is cut away).
    grain_size_spread : float
        Standard deviation of the log of the grain size.
    glass_fraction : float
        glass / (glass + NaSICON) of the microstructure, in (0, 0.6).
    touching_fraction : float
        Fraction of neighbouring grain pairs with no glass between them.
    pore_fraction : float
        Area fraction of pores.
    n_islands : int, optional
        Number of island groups to place (each a lone island or the islands of
        one coalescence or split). Default: one per 40 µm² of the analysed region.
        Fewer are placed when they do not fit (see ``params["n_island_groups"]``).
    island_diameter_um : (float, float)
        Range of an island's diameter at the last frame, in µm (log-uniform).
    island_events : bool
        If False, islands are all present from the first frame and only grow.
    max_shift_fraction : float
        Largest stage translation between frames, as a fraction of the field.
    max_rotation_deg : float
        Largest rotation between frames, in degrees.
    max_scale_change : float
        Largest relative magnification change between frames.
    brightness_change : float
        Largest relative change of detector gain (contrast); offsets vary by a
        quarter of it.
    dose_electrons_per_px : float or None
        Electrons per pixel at full signal, which sets the shot noise
        (Gaussian approximation of Poisson statistics). None: no shot noise.
    scan_line_noise : float
        Standard deviation of per-row offsets (scan-line noise), fraction of full scale.
    blur_sigma_px : float
        Beam blur (Gaussian sigma) in pixels.
    halo : float
        Brightness of the edge halo on NaSICON grains, fraction of full scale.
    vignetting : float
        Relative signal drop in the frame corners.
    info_bar : bool
        Draw an SEM info bar (black band with text and a scale bar) at the bottom.
    marker_corner : {"top-left", "top-right", "bottom-left", "bottom-right"}
        Where the fixed marker sits.
    dtype : {"uint8", "uint16"}
        Pixel type of the images.
    seed : int
        Seed of the random generator; the same arguments give the same series.

    Returns
    -------
    SynthSeries

    Examples
    --------
    >>> s = make_series(shape=(128, 160), n_frames=3, seed=2)
    >>> s.times_h.tolist()
    [24.0, 96.0, 845.0]
    >>> s.phases_ref[0].dtype, bool(s.grain_labels_ref.max() > 0)
    (dtype('uint8'), True)
    """
    params = dict(
        shape=[int(v) for v in shape] if np.ndim(shape) == 1 else shape,
        n_frames=n_frames,
        times_h=None if times_h is None else [float(t) for t in np.ravel(times_h)],
        pixel_size_um=pixel_size_um,
        grain_size_um=grain_size_um,
        grain_size_spread=grain_size_spread,
        glass_fraction=glass_fraction,
        touching_fraction=touching_fraction,
        pore_fraction=pore_fraction,
        n_islands=n_islands,
        island_diameter_um=[float(v) for v in island_diameter_um]
        if np.ndim(island_diameter_um) == 1
        else island_diameter_um,
        island_events=island_events,
        max_shift_fraction=max_shift_fraction,
        max_rotation_deg=max_rotation_deg,
        max_scale_change=max_scale_change,
        brightness_change=brightness_change,
        dose_electrons_per_px=dose_electrons_per_px,
        scan_line_noise=scan_line_noise,
        blur_sigma_px=blur_sigma_px,
        halo=halo,
        vignetting=vignetting,
        info_bar=info_bar,
        marker_corner=marker_corner,
        dtype=dtype,
        seed=seed,
    )
    _check_params(params)
    H, W = params["shape"]
    times = _times(n_frames, times_h)
    params["times_h"] = times.tolist()
    px = float(pixel_size_um)

    rng_geom, rng_world, rng_islands, rng_frames = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)
    )
    bar = _info_bar_rows(H) if info_bar else 0
    matrices = _frame_matrices(n_frames, H, W, max_shift_fraction, max_rotation_deg, max_scale_change, rng_geom)
    # Margin: the world must cover every frame's field of view plus blur support.
    margin = _margin_px(matrices, H, W) + int(math.ceil(3 * blur_sigma_px)) + 4
    world_shape = (H + 2 * margin, W + 2 * margin)
    imaged = [_imaged_in_ref(m, H, W, bar) for m in matrices]
    region = np.logical_and.reduce(imaged)

    phase_world, grain_world = _microstructure(
        world_shape,
        px,
        grain_size_um=grain_size_um,
        spread=grain_size_spread,
        glass_fraction=glass_fraction,
        touching_fraction=touching_fraction,
        pore_fraction=pore_fraction,
        region=np.pad(region, margin),
        rng=rng_world,
    )
    signal_world = _microstructure_signal(phase_world, grain_world, px, halo, rng_world)
    marker_rect = _marker_rect(H, W, bar, max_shift_fraction, marker_corner)
    _draw_marker(signal_world, phase_world, grain_world, marker_rect, margin, px, rng_world)

    # Islands: exact stories in reference coordinates, kept inside the analysed region and off the marker.
    allowed = region.copy()
    mx0, my0, mx1, my1 = marker_rect
    guard = int(math.ceil(1.5 / px))
    allowed[max(my0 - guard, 0) : my1 + guard, max(mx0 - guard, 0) : mx1 + guard] = False
    n_groups_wanted = int(n_islands) if n_islands is not None else int(round(region.sum() * px * px / 40.0))
    stories = _island_stories(
        n_groups_wanted,
        times,
        px,
        island_diameter_um,
        island_events,
        allowed,
        rng_islands,
    )
    params.update(
        margin_px=margin,
        info_bar_rows=bar,
        n_island_groups=len(stories.groups),
        n_island_groups_requested=n_groups_wanted,
    )

    island_signal = _smooth_noise(world_shape, 0.4 / px, rng_world) * 0.02 + _SIGNAL[_NA3PO4]
    images, phases, phases_ref, islands_ref = [], [], [], []
    frame_rngs = rng_frames.spawn(n_frames)
    for i in range(n_frames):
        ids_world = _rasterize_islands(stories, i, world_shape, margin)
        on = ids_world > 0
        phase_i = np.where(on, np.uint8(_NA3PO4), phase_world)
        signal_i = np.where(on, island_signal, signal_world)
        image, phase_frame = _image_frame(
            signal_i,
            phase_i,
            matrices[i],
            margin,
            (H, W),
            bar,
            blur_sigma_px=blur_sigma_px,
            vignetting=vignetting,
            brightness_change=brightness_change,
            dose=dose_electrons_per_px,
            scan_line_noise=scan_line_noise,
            dtype=dtype,
            rng=frame_rngs[i],
        )
        if bar:
            _draw_info_bar(image, bar, px, times[i], i)
        ref_view = (slice(margin, margin + H), slice(margin, margin + W))
        p_ref = phase_i[ref_view].copy()
        p_ref[~imaged[i]] = OUTSIDE
        ids_ref = ids_world[ref_view].copy()
        ids_ref[~imaged[i]] = 0
        images.append(image)
        phases.append(phase_frame)
        phases_ref.append(p_ref)
        islands_ref.append(ids_ref)

    grain_ref = grain_world[margin : margin + H, margin : margin + W]
    grain_ref = _relabel(grain_ref)
    islands_df = _islands_table(islands_ref, times, px, stories.parents)
    events_df = _events_table(stories.events, islands_df, times)
    return SynthSeries(
        images=images,
        times_h=times,
        pixel_size_um=px,
        matrices=matrices,
        info_bar_rows=bar,
        marker_rect=marker_rect,
        phases_ref=phases_ref,
        phases=phases,
        grain_labels_ref=grain_ref,
        islands_ref=islands_ref,
        islands=islands_df,
        events=events_df,
        params=params,
    )


def _check_params(p: dict[str, Any]) -> None:
    shape = p["shape"]
    if np.ndim(shape) != 1 or len(shape) != 2 or min(int(v) for v in shape) < 64:
        raise ValueError(f"`shape` must be (rows, cols) with both >= 64, got {shape!r}")
    if int(p["n_frames"]) != p["n_frames"] or p["n_frames"] < 1:
        raise ValueError(f"`n_frames` must be a positive integer, got {p['n_frames']!r}")
    for name in ("pixel_size_um", "grain_size_um"):
        if not (np.isfinite(p[name]) and p[name] > 0):
            raise ValueError(f"`{name}` must be a positive number, got {p[name]!r}")
    if not 0.0 < p["glass_fraction"] < 0.6:
        raise ValueError(f"`glass_fraction` must be in (0, 0.6), got {p['glass_fraction']!r}")
    for name, upper in (
        ("touching_fraction", 1.0),
        ("vignetting", 0.5),
        ("brightness_change", 0.5),
        ("max_shift_fraction", 0.3),
    ):
        if not 0.0 <= p[name] <= upper:
            raise ValueError(f"`{name}` must be in [0, {upper}], got {p[name]!r}")
    if not 0.0 <= p["pore_fraction"] < 0.2:
        raise ValueError(f"`pore_fraction` must be in [0, 0.2), got {p['pore_fraction']!r}")
    lo, hi = p["island_diameter_um"]
    if not 0 < lo <= hi:
        raise ValueError(f"`island_diameter_um` must be (low, high) with 0 < low <= high, got {(lo, hi)!r}")
    if p["dtype"] not in ("uint8", "uint16"):
        raise ValueError(f"`dtype` must be 'uint8' or 'uint16', got {p['dtype']!r}")
    corners = ("top-left", "top-right", "bottom-left", "bottom-right")
    if p["marker_corner"] not in corners:
        raise ValueError(f"`marker_corner` must be one of {corners}, got {p['marker_corner']!r}")
    for name in ("max_rotation_deg", "max_scale_change", "scan_line_noise", "blur_sigma_px", "halo"):
        if not (np.isfinite(p[name]) and p[name] >= 0):
            raise ValueError(f"`{name}` must be >= 0, got {p[name]!r}")
    if p["dose_electrons_per_px"] is not None and not p["dose_electrons_per_px"] > 0:
        raise ValueError(f"`dose_electrons_per_px` must be > 0 or None, got {p['dose_electrons_per_px']!r}")
    if p["n_islands"] is not None and p["n_islands"] < 0:
        raise ValueError(f"`n_islands` must be >= 0 or None, got {p['n_islands']!r}")


def _times(n_frames: int, times_h) -> np.ndarray:
    if times_h is None:
        extra = [DEFAULT_TIMES_H[-1] + 250.0 * (k + 1) for k in range(max(0, n_frames - len(DEFAULT_TIMES_H)))]
        return np.array((list(DEFAULT_TIMES_H) + extra)[:n_frames], dtype=float)
    times = np.asarray(times_h, dtype=float).ravel()
    if times.size != n_frames:
        raise ValueError(f"`times_h` has {times.size} values but `n_frames` is {n_frames}; give one time per frame")
    if not (np.all(np.isfinite(times)) and np.all(np.diff(times) > 0)):
        raise ValueError(f"`times_h` must be finite and strictly increasing, got {times.tolist()}")
    return times


# --------------------------------------------------------------------------- geometry


def _info_bar_rows(H: int) -> int:
    return max(16, int(round(0.07 * H)))


def _frame_matrices(n, H, W, max_shift, max_rot_deg, max_scale, rng) -> np.ndarray:
    """Similarity transforms about the field centre; frame 0 is the identity."""
    mats = np.tile(np.eye(3), (n, 1, 1))
    c = np.array([(W - 1) / 2.0, (H - 1) / 2.0])
    for i in range(1, n):
        theta = np.deg2rad(rng.uniform(-max_rot_deg, max_rot_deg))
        s = 1.0 + rng.uniform(-max_scale, max_scale)
        t = rng.uniform(-max_shift, max_shift, 2) * np.array([W, H])
        a = s * np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
        mats[i, :2, :2] = a
        mats[i, :2, 2] = c + t - a @ c
    return mats


def _margin_px(matrices: np.ndarray, H: int, W: int) -> int:
    corners = np.array([[0, 0, 1], [W - 1, 0, 1], [0, H - 1, 1], [W - 1, H - 1, 1]], float).T
    worst = 0.0
    for m in matrices:
        ref = np.linalg.inv(m) @ corners
        worst = max(worst, -ref[0].min(), -ref[1].min(), ref[0].max() - (W - 1), ref[1].max() - (H - 1))
    return int(math.ceil(max(worst, 0.0)))


def _imaged_in_ref(m: np.ndarray, H: int, W: int, bar: int) -> np.ndarray:
    """Reference pixels whose image under ``m`` falls on a frame pixel above the bar."""
    ys, xs = np.ogrid[0:H, 0:W]
    xs, ys = xs.astype(np.float32), ys.astype(np.float32)
    fx = np.float32(m[0, 0]) * xs + (np.float32(m[0, 1]) * ys + np.float32(m[0, 2]))
    fy = np.float32(m[1, 0]) * xs + (np.float32(m[1, 1]) * ys + np.float32(m[1, 2]))
    ok = (fx >= -0.5) & (fx < W - 0.5) & (fy >= -0.5) & (fy < H - bar - 0.5)
    ok[H - bar :] = False
    return ok


# --------------------------------------------------------------------------- microstructure


def _smooth_noise(shape, scale_px: float, rng) -> np.ndarray:
    """Zero-mean, unit-std smooth random field with correlation length ``scale_px``."""
    step = max(scale_px / 2.0, 1.0)
    small = (max(int(shape[0] / step) + 3, 4), max(int(shape[1] / step) + 3, 4))
    noise = ndimage.gaussian_filter(rng.standard_normal(small).astype(np.float32), 1.0)
    noise /= noise.std() + 1e-12
    return cv2.resize(noise, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)


def _microstructure(shape, px, *, grain_size_um, spread, glass_fraction, touching_fraction, pore_fraction, region, rng):
    """Phase map (0 pore, 1 glass, 2 NaSICON) and grain ids (seed index + 1, 0 elsewhere) of the world.

    Grains are cells of the power (Laguerre) diagram of a random packing of
    disks with log-normal sizes -- each disk lies inside its own cell, so no
    sliver grains -- cut by a rotated rounded square (the cubic habit) and
    eroded by a glass channel whose width varies per neighbour pair (zero for
    touching pairs). The channel depth threshold is the quantile that gives
    exactly ``glass_fraction`` over ``region`` outside pores.
    """
    Hw, Ww = shape
    # Grain sizes: log-normal truncated to 1-10 µm, located so that its median is `grain_size_um`.
    lo_um, hi_um = 1.0, 10.0
    mu = _truncated_lognormal_location(min(max(grain_size_um, lo_um * 1.01), hi_um * 0.99), spread, lo_um, hi_um)
    # Cell (pre-glass) ECD exceeds the grain ECD by the glass cut away (calibrated on 1024^2 px,
    # several seeds: glass channels shrink small cells more than big ones).
    to_cell_px = 0.97 * (1.0 - glass_fraction) ** -0.64 / px
    mean_area = math.pi / 4 * (math.exp(mu) * to_cell_px) ** 2 * math.exp(2 * spread**2)
    # Disks are also packed in a border of width `pad` around the world, so edge cells are whole.
    pad = 0.5 * math.sqrt(_PACKING) * min(hi_um, math.exp(mu + 3 * spread)) * to_cell_px
    n_disks = int((Hw + 2 * pad) * (Ww + 2 * pad) / mean_area * 1.15) + 8
    a, b = (special.ndtr((math.log(v) - mu) / spread) for v in (lo_um, hi_um))
    grain_d_um = np.exp(mu + spread * special.ndtri(rng.uniform(a, b, n_disks)))
    cell_d = grain_d_um * to_cell_px
    seeds, radius = _pack_disks(shape, 0.5 * cell_d * math.sqrt(_PACKING), pad, rng)
    n = len(seeds)
    # Cells: nearest disk boundary (an additively weighted Voronoi diagram, close to the power
    # diagram for packed disks) -- by OpenCV's labelled distance transform, which is fast.
    disk_id = np.zeros(shape, np.int32)
    for k, ((x, y), r) in enumerate(zip(seeds, radius)):
        cv2.circle(disk_id, (int(round(x)), int(round(y))), max(int(round(r)), 1), k + 1, -1)
    outside_disks = (disk_id == 0).astype(np.uint8)
    _, nearest = cv2.distanceTransformWithLabels(outside_disks, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL)
    label = disk_id[outside_disks == 0][nearest - 1]  # 1-based disk index per pixel
    del nearest
    # Cell boundaries, and the neighbour across them.
    other = np.zeros(shape, np.int32)
    for a_sl, b_sl in (
        ((slice(None), slice(None, -1)), (slice(None), slice(1, None))),
        ((slice(None, -1), slice(None)), (slice(1, None), slice(None))),
    ):
        la, lb = label[a_sl], label[b_sl]
        diff = la != lb
        other[a_sl][diff] = lb[diff]
        other[b_sl][diff] = la[diff]
    boundary = other > 0
    # Glass channel width per neighbour pair from a symmetric hash of the pair; 0 = touching grains.
    lo = np.minimum(label[boundary], other[boundary]).astype(np.int64)
    hi = np.maximum(label[boundary], other[boundary]).astype(np.int64)
    ha, hb = rng.integers(1, 2**20, 2)
    u = (((lo * ha + hi * hb) % 1_000_003) / 1_000_003.0).astype(np.float32)
    inv_width = np.where(
        u < touching_fraction, 0.0, 1.0 / (0.5 + (u - touching_fraction) / max(1.0 - touching_fraction, 1e-9))
    ).astype(np.float32)
    dist_b, nearest_b = cv2.distanceTransformWithLabels(
        (~boundary).astype(np.uint8), cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL
    )
    inv_here = inv_width[nearest_b - 1]
    depth_bis = np.full(shape, np.inf, np.float32)
    # The bisector lies half a pixel beyond a boundary pixel; a faint smooth field breaks the
    # remaining ties so that the glass quantile below is exact, in coherent stretches of channel.
    dist_b += 0.5 + 0.05 * _smooth_noise(shape, 0.5 / px, rng)
    np.divide(dist_b, inv_here, out=depth_bis, where=inv_here > 0)
    del nearest_b, dist_b
    # Rounded square of random orientation: gives the cubic NaSICON habit.
    phi = rng.uniform(0, np.pi / 2, n + 1).astype(np.float32)
    half = np.r_[0.0, radius / math.sqrt(_PACKING) * rng.uniform(0.85, 1.3, n)].astype(np.float32)
    cx = np.r_[0.0, seeds[:, 0]].astype(np.float32)
    cy = np.r_[0.0, seeds[:, 1]].astype(np.float32)
    ys, xs = np.ogrid[0:Hw, 0:Ww]
    dx, dy = xs.astype(np.float32) - cx[label], ys.astype(np.float32) - cy[label]
    cos, sin = np.cos(phi)[label], np.sin(phi)[label]
    u2 = np.square(cos * dx + sin * dy)
    v2 = np.square(cos * dy - sin * dx)
    depth_sq = half[label] - np.cbrt(np.sqrt(u2 * u2 * u2 + v2 * v2 * v2))
    depth = np.minimum(depth_bis, depth_sq)

    pores = _pores(shape, px, depth, pore_fraction, rng)
    tau = float(np.quantile(depth[region & ~pores], glass_fraction))
    phase = np.full(shape, _NASICON, np.uint8)
    phase[depth < tau] = _GLASS
    phase[pores] = _PORE
    grains = np.where(phase == _NASICON, label, 0).astype(np.int32)
    # A grain is one piece: slivers cut off by a pore or a channel corner become glass.
    pieces = measure.label(grains, background=0, connectivity=1)
    size = np.bincount(pieces.ravel())
    owner = np.zeros(size.size, np.int64)
    owner[pieces.ravel()] = grains.ravel()
    order = np.lexsort((-size[1:], owner[1:])) + 1  # pieces by grain, biggest first
    first = np.r_[True, owner[order][1:] != owner[order][:-1]]
    keep = np.zeros(size.size, bool)
    keep[order[first]] = True
    sliver = (pieces > 0) & ~keep[pieces]
    phase[sliver] = _GLASS
    grains[sliver] = 0
    return phase, grains


def _truncated_lognormal_location(median: float, sigma: float, lo: float, hi: float) -> float:
    """Location ``mu`` of a log-normal truncated to [lo, hi] whose median is ``median`` (bisection)."""
    target = math.log(median)
    a, b = target - 5 * sigma, target + 5 * sigma
    for _ in range(60):
        mu = 0.5 * (a + b)
        flo, fhi = (special.ndtr((math.log(v) - mu) / sigma) for v in (lo, hi))
        if special.ndtr((target - mu) / sigma) > 0.5 * (flo + fhi):
            a = mu  # more than half the mass below the target: move the distribution up
        else:
            b = mu
    return 0.5 * (a + b)


def _pack_disks(shape, radii: np.ndarray, pad: float, rng) -> tuple[np.ndarray, np.ndarray]:
    """Random sequential packing of disks, largest first, each dropped where it fits.

    Candidate centres are drawn from the free space (distance transform of the
    disks placed so far), so the packing gets close to jamming. Disks that find
    no room are left out. Centres may lie up to ``pad`` pixels outside ``shape``.
    Returns centres ``(n, 2)`` as ``(x, y)`` and radii.
    """
    step = max(float(radii.min()) / 1.5, 1.0)
    Hq, Wq = int((shape[0] + 2 * pad) / step) + 2, int((shape[1] + 2 * pad) / step) + 2
    free = np.ones((Hq, Wq), np.uint8)
    free[[0, -1], :] = 0  # a closed frame keeps the distance transform finite
    free[:, [0, -1]] = 0
    order = np.argsort(-radii, kind="stable")
    centres: list[tuple[float, float]] = []
    kept: list[float] = []
    for batch in np.array_split(order, max(1, order.size // 8)):
        dist = cv2.distanceTransform(free, cv2.DIST_L2, 5).ravel() * step
        room = np.flatnonzero(dist >= radii[batch].max())
        if room.size == 0:
            room = np.flatnonzero(dist >= radii[batch].min())
            if room.size == 0:
                continue
        placed_here: list[tuple[float, float, float]] = []
        for k in batch:
            r = float(radii[k])
            for cand in room[rng.integers(0, room.size, 30)]:
                qy, qx = divmod(int(cand), Wq)
                if dist[cand] < r:
                    continue
                x = (qx + rng.uniform(-0.5, 0.5)) * step - pad
                y = (qy + rng.uniform(-0.5, 0.5)) * step - pad
                if any((x - px_) ** 2 + (y - py_) ** 2 < (r + pr) ** 2 for px_, py_, pr in placed_here):
                    continue
                placed_here.append((x, y, r))
                centres.append((x, y))
                kept.append(r)
                cv2.circle(free, (qx, qy), int(math.ceil(r / step)), 0, -1)
                break
    return np.asarray(centres, float).reshape(-1, 2), np.asarray(kept, float)


def _pores(shape, px, depth, pore_fraction, rng) -> np.ndarray:
    """Small irregular pores, mostly where grains meet (low depth)."""
    mask = np.zeros(shape, bool)
    if pore_fraction <= 0:
        return mask
    target = pore_fraction * mask.size
    flat_depth = depth.ravel()
    near = np.flatnonzero(flat_depth < np.quantile(flat_depth, 0.25))
    area = 0
    while area < target:
        y, x = divmod(int(near[rng.integers(near.size)]), shape[1])
        r = max(math.exp(rng.normal(math.log(0.25 / px), 0.45)), 1.5)
        # Every pore adds pixels unless it falls wholly on an earlier one, so this ends.
        area += _stamp_blob(mask, x, y, r, _random_shape(rng, 0.35), True)
    return mask


def _random_shape(rng, amplitude: float) -> np.ndarray:
    """Harmonic amplitudes and phases (k = 2..7) of an irregular closed outline."""
    k = np.arange(2, 8)
    amp = rng.uniform(0, 1, k.size) / k
    amp *= amplitude / max(amp.sum(), 1e-9)
    return np.stack([amp, rng.uniform(0, 2 * np.pi, k.size)])


def _stamp_blob(target: np.ndarray, cx: float, cy: float, r: float, shape_h: np.ndarray, value) -> int:
    """Paint an irregular star-shaped blob; returns the number of newly set pixels (bool targets)."""
    reach = r * (1 + shape_h[0].sum()) + 1
    x0, x1 = max(int(cx - reach), 0), min(int(cx + reach) + 2, target.shape[1])
    y0, y1 = max(int(cy - reach), 0), min(int(cy + reach) + 2, target.shape[0])
    if x0 >= x1 or y0 >= y1:
        return 0
    dy, dx = np.ogrid[y0:y1, x0:x1]
    dx, dy = dx - cx, dy - cy
    theta = np.arctan2(dy, dx)
    k = np.arange(2, 2 + shape_h.shape[1])[:, None, None]
    radius = r * (1 + (shape_h[0][:, None, None] * np.cos(k * theta + shape_h[1][:, None, None])).sum(0))
    inside = dx * dx + dy * dy <= radius * radius
    window = target[y0:y1, x0:x1]
    new = int(np.count_nonzero(inside & (window != value))) if window.dtype == bool else 0
    window[inside] = value
    return new


def _microstructure_signal(phase, grains, px, halo, rng) -> np.ndarray:
    """BSE signal of the static microstructure (before islands, gain and noise)."""
    sig = np.empty(phase.shape, np.float32)
    for code, level in _SIGNAL.items():
        sig[phase == code] = level
    # Orientation (channelling) contrast differs per grain: makes touching grains separable by eye.
    offset = rng.normal(0, 0.025, int(grains.max()) + 1).astype(np.float32)
    offset[0] = 0
    sig += offset[grains]
    sig += 0.015 * _smooth_noise(phase.shape, 1.0 / px, rng)
    glass = phase == _GLASS
    sig[glass] += 0.015 * _smooth_noise(phase.shape, 0.3 / px, rng)[glass]
    if halo > 0:
        # Edge effect: NaSICON is brighter within ~0.1 µm of glass or pores.
        nas = (phase == _NASICON).astype(np.uint8)
        dist = cv2.distanceTransform(nas, cv2.DIST_L2, 3)
        width = max(0.1 / px, 1.0)
        sig += np.where(nas > 0, halo * np.exp(-(dist - 0.5) / width), 0).astype(np.float32)
    return sig


# --------------------------------------------------------------------------- marker


def _marker_rect(H, W, bar, max_shift, corner) -> tuple[int, int, int, int]:
    side = int(round(0.22 * min(H - bar, W)))
    inset = int(round((max_shift + 0.03) * min(H - bar, W))) + 2
    x0 = inset if corner.endswith("left") else W - inset - side
    y0 = inset if corner.startswith("top") else H - bar - inset - side
    return (x0, y0, x0 + side, y0 + side)


def _draw_marker(signal, phase, grains, rect, margin, px, rng) -> None:
    """A partially detached, tilted ceramic piece: bright raised edge, dark shadowed gap, cracks.

    Its phase truth: the piece keeps the microstructure it carries; its gap
    and cracks are dark voids and count as pore. The substrate beside the
    lifted side lies in its shadow (darker, same phases).
    """
    x0, y0, x1, y1 = (v + margin for v in rect)
    side = x1 - x0
    gap_w = max(0.6 / px, 5.0)
    # Piece: an irregular polygon (a broken-off fragment) inside the rectangle, leaving room for the gap.
    centre = np.array([(x0 + x1) / 2.0, (y0 + y1) / 2.0])
    n_vert = int(rng.integers(6, 9))
    ang = (np.arange(n_vert) + rng.uniform(-0.3, 0.3, n_vert)) * 2 * np.pi / n_vert + rng.uniform(0, 2 * np.pi)
    unit = np.c_[np.cos(ang), np.sin(ang)]
    radius = (0.5 * side - 2.0 * gap_w) * rng.uniform(0.8, 1.0, n_vert)
    poly = centre + unit * radius[:, None]
    # The gap is wider on the lifted (lower-right) side.
    lift = 0.5 + 0.9 * np.clip(unit @ np.array([0.7, 0.7]), 0, None)
    outer = centre + unit * (radius + gap_w * lift)[:, None]
    hw = signal.shape
    piece = np.zeros(hw, np.uint8)
    cv2.fillPoly(piece, [np.round(poly).astype(np.int32)], 1)
    shell = np.zeros(hw, np.uint8)
    cv2.fillPoly(shell, [np.round(outer).astype(np.int32)], 1)
    cracks = np.zeros(hw, np.uint8)
    for _ in range(2):
        i, j = rng.choice(n_vert, 2, replace=False)
        t = np.linspace(0.0, 1.0, 6)[:, None]
        path = poly[i] + (poly[j] - poly[i]) * t
        path = centre + (path - centre) * 0.97 + rng.normal(0, 0.03 * side, path.shape) * (t * (1 - t) * 4)
        cv2.polylines(cracks, [np.round(path).astype(np.int32)], False, 1, thickness=max(int(round(0.1 / px)), 2))
    piece_b = piece > 0
    voids = ((shell > 0) & ~piece_b) | ((cracks > 0) & piece_b)
    # Tilt: a brightness ramp across the piece; raised edge: a bright rim (edge effect).
    yy, xx = np.ogrid[0 : hw[0], 0 : hw[1]]
    ramp = (1.04 + 0.15 * ((xx - centre[0]) + 0.6 * (yy - centre[1])) / side).astype(np.float32)
    dist = cv2.distanceTransform(piece, cv2.DIST_L2, 3)
    rim = 0.3 * np.exp(-dist / max(0.1 / px, 1.5))
    signal[piece_b] = (signal * ramp + rim)[piece_b]
    signal[voids] = 0.02 + 0.03 * rng.random(int(voids.sum()), dtype=np.float32)
    # Shadow of the lifted piece on the substrate just outside the gap.
    out = (1 - shell).astype(np.uint8)
    d_out = cv2.distanceTransform(out, cv2.DIST_L2, 3)
    shadow = (1.0 - 0.12 * np.exp(-d_out / max(0.5 / px, 2.0))).astype(np.float32)
    near = (d_out > 0) & (d_out < 3 * max(0.5 / px, 2.0))
    signal[near] *= shadow[near]
    phase[voids] = _PORE
    grains[voids] = 0
    # Cracks cut grains of the piece in two: each part is then a grain of its own (tiny ones are crack).
    x0c, y0c = max(int(x0), 0), max(int(y0), 0)
    window = grains[y0c : int(y1), x0c : int(x1)]
    pieces = measure.label(window, background=0, connectivity=1)
    size = np.bincount(pieces.ravel())
    owner = np.zeros(size.size, np.int64)
    owner[pieces.ravel()] = window.ravel()
    order = np.lexsort((-size[1:], owner[1:])) + 1
    first = np.r_[True, owner[order][1:] != owner[order][:-1]]
    next_id = int(grains.max()) + 1
    tiny = max(int((0.2 / px) ** 2), 4)
    win_phase = phase[y0c : int(y1), x0c : int(x1)]
    win_signal = signal[y0c : int(y1), x0c : int(x1)]
    for piece in order[~first]:
        where = pieces == piece
        if size[piece] < tiny:
            window[where] = 0
            win_phase[where] = _PORE
            win_signal[where] = 0.04
        else:
            window[where] = next_id
            next_id += 1


# --------------------------------------------------------------------------- islands


@dataclass
class _Blob:
    x: float  # reference coordinates
    y: float
    r: float  # px
    shape: np.ndarray


@dataclass
class _Stories:
    groups: list[tuple[float, float, float]]  # centre x, y and footprint radius (px)
    blobs: dict[int, dict[int, list[_Blob]]]  # island id -> frame -> blobs
    parents: dict[int, list[int]]
    events: list[dict[str, Any]]


def _growth(times: np.ndarray, t_form: float) -> np.ndarray:
    """Relative radius over the frames for an island nucleated at ``t_form`` (cube-root coarsening)."""
    tau = 24.0
    g = np.clip((times - t_form + tau) / (times[-1] - t_form + tau), 0, None) ** (1 / 3)
    return g


def _island_stories(n_groups, times, px, diam_um, with_events, allowed, rng) -> _Stories:
    """Plan every island's outline in every frame, and the events that link them.

    Each group is an isolated set of islands with one story: it persists (and
    grows), dissolves, coalesces from 2-3 islands into one, or splits in two;
    islands may also form after the first frame. Groups are placed at least
    ``1.5 µm`` apart so that the planned identities are the true connected components.
    """
    n_frames = times.size
    floor = max(0.25 / px, 3.0)
    gap_groups = 1.5 / px
    a = _BLOB_IRREGULARITY
    stories = _Stories(groups=[], blobs={}, parents={}, events=[])
    if n_groups == 0 or not allowed.any():
        return stories
    dist_allowed = cv2.distanceTransform(allowed.astype(np.uint8), cv2.DIST_L2, 5)
    next_id = [1]

    def new_id() -> int:
        next_id[0] += 1
        return next_id[0] - 1

    def radius_um() -> float:
        return 0.5 * math.exp(rng.uniform(math.log(diam_um[0]), math.log(diam_um[1])))

    def form_frame(last: int) -> int:
        # Most islands appear before the first image (within a day); some later.
        if not with_events or last == 0 or rng.random() > 0.3:
            return 0
        return int(rng.integers(1, last + 1))

    def t_nucleation(f0: int) -> float:
        return 0.0 if f0 == 0 else float(rng.uniform(times[f0 - 1], times[f0]))

    interval_w = np.arange(1, n_frames, dtype=float)
    kinds = ["persist", "dissolve", "coalesce", "split"]
    probs = np.array([0.35, 0.2, 0.3, 0.15])

    groups_local = []
    for _ in range(n_groups):
        kind = "persist" if (not with_events or n_frames < 2) else kinds[rng.choice(4, p=probs)]
        t_ev = int(rng.choice(n_frames - 1, p=interval_w / interval_w.sum())) if kind != "persist" else n_frames - 1
        plan: dict[int, dict[int, list[_Blob]]] = {}
        parents: dict[int, list[int]] = {}
        events: list[dict[str, Any]] = []
        if kind in ("persist", "dissolve"):
            iid = new_id()
            f0 = form_frame(t_ev if kind == "dissolve" else n_frames - 1)
            g = _growth(times, t_nucleation(f0))
            R = radius_um() / px
            shp = _random_shape(rng, a)
            last = n_frames - 1 if kind == "persist" else t_ev
            plan[iid] = {f: [_Blob(0.0, 0.0, max(R * g[f], floor), shp)] for f in range(f0, last + 1)}
            if f0 > 0:
                events.append(dict(event="formation", frame_from=f0 - 1, before=[], after=[iid], at=(iid, f0)))
            if kind == "dissolve":
                events.append(dict(event="dissolution", frame_from=t_ev, before=[iid], after=[], at=(iid, t_ev)))
        elif kind == "coalesce":
            k = 2 if rng.random() < 0.7 else 3
            pids = [new_id() for _ in range(k)]
            f0s = [form_frame(t_ev) for _ in range(k)]
            gs = [_growth(times, t_nucleation(f0)) for f0 in f0s]
            Rs = [max(radius_um() / px * 0.8, 1.5 * floor / g[t_ev]) for g in gs]
            shapes = [_random_shape(rng, a) for _ in range(k)]
            r_at = [max(R * g[t_ev], floor) for R, g in zip(Rs, gs)]
            gap = max(rng.uniform(0.5, 1.0) / px, 4.0)
            # Centres on a circle: every pair separated by `gap` at the last frame before merging.
            worst_pair = max((r_at[i] + r_at[j]) * (1 + a) for i in range(k) for j in range(i + 1, k))
            chord = worst_pair + gap
            rho = chord / (2 * math.sin(math.pi / k))
            ang0 = rng.uniform(0, 2 * np.pi)
            cent = [
                (rho * math.cos(ang0 + 2 * np.pi * j / k), rho * math.sin(ang0 + 2 * np.pi * j / k)) for j in range(k)
            ]
            for pid, f0, g, R, shp, (cx, cy) in zip(pids, f0s, gs, Rs, shapes, cent):
                plan[pid] = {f: [_Blob(cx, cy, max(R * g[f], floor), shp)] for f in range(f0, t_ev + 1)}
                if f0 > 0:
                    events.append(dict(event="formation", frame_from=f0 - 1, before=[], after=[pid], at=(pid, f0)))
            cid = new_id()
            parents[cid] = pids
            g_after = _growth(times, 0.0)
            plan[cid] = {}
            bridge_shape = _random_shape(rng, 0.1)
            for f in range(t_ev + 1, n_frames):
                grow = g_after[f] / g_after[t_ev + 1]
                blobs = [_Blob(cx, cy, r * 1.3 * grow, shp) for (cx, cy), r, shp in zip(cent, r_at, shapes)]
                blobs.append(_Blob(0.0, 0.0, rho * grow, bridge_shape))
                plan[cid][f] = blobs
            events.append(dict(event="coalescence", frame_from=t_ev, before=pids, after=[cid], at=(cid, t_ev + 1)))
        else:  # split
            pid = new_id()
            f0 = form_frame(t_ev)
            g = _growth(times, t_nucleation(f0))
            # Big enough that both halves stay islands after the split.
            R = max(radius_um() / px * 0.7, 3 * floor / g[t_ev])
            ang = rng.uniform(0, np.pi)
            ux, uy = math.cos(ang), math.sin(ang)
            shp = [_random_shape(rng, a) for _ in range(2)]
            neck_shape = _random_shape(rng, 0.1)
            plan[pid] = {}
            for f in range(f0, t_ev + 1):
                r = max(R * g[f], floor)
                rho = 0.8 * r
                plan[pid][f] = [
                    _Blob(rho * ux, rho * uy, r, shp[0]),
                    _Blob(-rho * ux, -rho * uy, r, shp[1]),
                    _Blob(0.0, 0.0, 0.9 * r, neck_shape),
                ]
            r_split = max(R * g[t_ev], floor) * 0.85
            # A gap narrower than a daughter keeps each daughter overlapping its parent.
            gap = float(np.clip(rng.uniform(0.5, 1.0) / px, 4.0, 0.8 * r_split))
            dids = [new_id(), new_id()]
            for d, sign in zip(dids, (1, -1)):
                parents[d] = [pid]
                plan[d] = {}
                for f in range(t_ev + 1, n_frames):
                    r = r_split * g[f] / g[t_ev + 1]
                    rho = r * (1 + a) + gap / 2
                    plan[d][f] = [_Blob(sign * rho * ux, sign * rho * uy, r, shp[0 if sign > 0 else 1])]
            if f0 > 0:
                events.append(dict(event="formation", frame_from=f0 - 1, before=[], after=[pid], at=(pid, f0)))
            events.append(dict(event="split", frame_from=t_ev, before=[pid], after=dids, at=(pid, t_ev)))
        reach = max(
            math.hypot(b.x, b.y) + b.r * (1 + b.shape[0].sum())
            for frames in plan.values()
            for bl in frames.values()
            for b in bl
        )
        groups_local.append((reach, plan, parents, events))

    # Place the biggest groups first: random sequential addition with rejection.
    groups_local.sort(key=lambda g: -g[0])
    centres = np.zeros((0, 3))
    H, W = allowed.shape
    for reach, plan, parents, events in groups_local:
        placed = False
        cys, cxs = rng.integers(0, H, 400), rng.integers(0, W, 400)
        fits = dist_allowed[cys, cxs] > reach + 2
        for cy, cx in zip(cys[fits][:40].tolist(), cxs[fits][:40].tolist()):
            if centres.size:
                dd = np.hypot(centres[:, 0] - cx, centres[:, 1] - cy)
                if np.any(dd < centres[:, 2] + reach + gap_groups):
                    continue
            placed = True
            break
        if not placed:
            continue
        centres = np.vstack([centres, [cx, cy, reach]])
        stories.groups.append((float(cx), float(cy), float(reach)))
        for iid, frames in plan.items():
            stories.blobs[iid] = {f: [_Blob(cx + b.x, cy + b.y, b.r, b.shape) for b in bl] for f, bl in frames.items()}
        stories.parents.update(parents)
        stories.events.extend(events)
    return stories


def _rasterize_islands(stories: _Stories, frame: int, world_shape, margin: int) -> np.ndarray:
    ids = np.zeros(world_shape, np.int32)
    for iid, frames in stories.blobs.items():
        for b in frames.get(frame, ()):
            _stamp_blob(ids, b.x + margin, b.y + margin, b.r, b.shape, iid)
    return ids


def _islands_table(islands_ref, times, px, parents) -> pd.DataFrame:
    rows = []
    for f, ids in enumerate(islands_ref):
        flat = ids.ravel()
        sel = np.flatnonzero(flat)
        lab = flat[sel]
        n = int(lab.max()) + 1 if lab.size else 1
        count = np.bincount(lab, minlength=n)
        ys, xs = np.divmod(sel, ids.shape[1])
        sx = np.bincount(lab, weights=xs, minlength=n)
        sy = np.bincount(lab, weights=ys, minlength=n)
        for iid in np.flatnonzero(count[1:]) + 1:
            rows.append(
                dict(
                    frame=f,
                    time_h=float(times[f]),
                    island_id=int(iid),
                    area_um2=count[iid] * px * px,
                    x_px=sx[iid] / count[iid],
                    y_px=sy[iid] / count[iid],
                    parents=";".join(str(p) for p in parents.get(int(iid), [])),
                )
            )
    cols = ["frame", "time_h", "island_id", "area_um2", "x_px", "y_px", "parents"]
    return pd.DataFrame(rows, columns=cols).astype({"frame": int, "island_id": int})


def _events_table(events, islands: pd.DataFrame, times) -> pd.DataFrame:
    lookup = islands.set_index(["island_id", "frame"])
    rows = []
    for ev in events:
        iid, f = ev["at"]
        where = lookup.loc[(iid, f)]
        rows.append(
            dict(
                frame_from=ev["frame_from"],
                frame_to=ev["frame_from"] + 1,
                time_from_h=float(times[ev["frame_from"]]),
                time_to_h=float(times[ev["frame_from"] + 1]),
                event=ev["event"],
                x_px=float(where["x_px"]),
                y_px=float(where["y_px"]),
                islands_before=";".join(str(i) for i in ev["before"]),
                islands_after=";".join(str(i) for i in ev["after"]),
                area_um2=float(where["area_um2"]),
            )
        )
    cols = [
        "frame_from",
        "frame_to",
        "time_from_h",
        "time_to_h",
        "event",
        "x_px",
        "y_px",
        "islands_before",
        "islands_after",
        "area_um2",
    ]
    df = pd.DataFrame(rows, columns=cols)
    return df.sort_values(["frame_from", "event", "x_px"], ignore_index=True)


def _relabel(labels: np.ndarray) -> np.ndarray:
    """Renumber positive labels 1..n in order of their old value (0 stays 0)."""
    present = np.bincount(labels.ravel()) > 0
    present[0] = False
    lut = np.cumsum(present).astype(np.int32)
    lut[~present] = 0
    return lut[labels]


# --------------------------------------------------------------------------- imaging


#: Detector bandwidth kernel along x (correlation weights at offsets -2..2): a short one-sided smear.
_SMEAR = np.array([0.0, 0.0, 0.72, 0.2, 0.08], np.float32)


def _coverage_majority(phase: np.ndarray, a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Phase map seen through the inverse affine map ``a``: each pixel takes the phase with the largest
    bilinear weight at its sampling point, i.e. the phase that dominates the interpolated image there
    (nearest-neighbour truth disagrees with the image on every warped boundary)."""
    best = np.zeros(size[::-1], np.float32)
    out = np.full(size[::-1], OUTSIDE, np.uint8)
    for code in np.unique(phase):
        weight = cv2.warpAffine(
            (phase == code).astype(np.float32),
            a,
            size,
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=0.0,
        )
        wins = weight > best
        out[wins] = code
        best[wins] = weight[wins]
    return out


def _image_frame(
    signal,
    phase,
    m,
    margin,
    shape,
    bar,
    *,
    blur_sigma_px,
    vignetting,
    brightness_change,
    dose,
    scan_line_noise,
    dtype,
    rng,
):
    """Image the world through frame transform ``m``: returns (image, phase map in frame pixels)."""
    H, W = shape
    to_world = np.array([[1, 0, margin], [0, 1, margin], [0, 0, 1]], float) @ np.linalg.inv(m)
    a = to_world[:2].astype(np.float64)
    # The detector smear below moves the image by its centroid along x; sampling the world that much
    # earlier keeps image and truth in register (a sub-pixel shift of a whole image carries no
    # information a segmentation could recover).
    smear_shift = float(_SMEAR @ np.arange(-2, 3))
    a_img = a.copy()
    a_img[:, 2] -= a[:, 0] * smear_shift
    img = cv2.warpAffine(
        signal, a_img, (W, H), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT
    )
    ph = _coverage_majority(phase, a, (W, H))
    if blur_sigma_px > 0:
        img = cv2.GaussianBlur(img, (0, 0), blur_sigma_px)
    # Detector bandwidth: a short one-sided smear along the fast scan direction.
    img = cv2.filter2D(img, -1, _SMEAR[None, :], borderType=cv2.BORDER_REFLECT)
    if vignetting > 0:
        yy, xx = np.ogrid[0:H, 0:W]
        r2 = ((xx - W / 2) / (W / 2)) ** 2 + ((yy - H / 2) / (H / 2)) ** 2
        img *= (1.0 - vignetting * r2 / 2.0).astype(np.float32)
    gain = 1.0 + rng.uniform(-brightness_change, brightness_change)
    offset = rng.uniform(-brightness_change, brightness_change) * 0.25
    img = (0.5 + gain * (img - 0.5) + offset).astype(np.float32)
    if dose is not None:
        img += np.sqrt(np.clip(img, 0, None) / dose) * rng.standard_normal((H, W), dtype=np.float32)
    if scan_line_noise > 0:
        img += rng.normal(0, scan_line_noise, (H, 1)).astype(np.float32)
        # Occasional streaks: a line segment with a jump, as from charging or a scan glitch.
        for _ in range(rng.poisson(H / 150)):
            y = int(rng.integers(0, H))
            x0 = int(rng.integers(0, W))
            img[y, x0 : x0 + int(rng.integers(W // 20, W // 3))] += rng.choice([-1, 1]) * 4 * scan_line_noise
    img = np.clip(img, 0.0, 1.0)
    top = np.iinfo(dtype).max
    image = np.rint(img * top).astype(dtype)
    if bar:
        image[H - bar :] = 0
        ph[H - bar :] = OUTSIDE
    return image, ph


def _draw_info_bar(image: np.ndarray, bar: int, px_um: float, time_h: float, index: int) -> None:
    """SmartSEM-like data bar: black band, white parameter text and a scale bar."""
    H, W = image.shape
    white = int(np.iinfo(image.dtype).max)
    y0 = H - bar
    image[y0:] = 0
    image[y0, :] = white // 2
    font = cv2.FONT_HERSHEY_SIMPLEX
    line_h = bar / 2.0
    # Crisp (not anti-aliased) glyphs about 40 % of a line high leave most of the band black, as on SEMs.
    scale = max(line_h * 0.4 / 22.0, 0.12)
    thick = 1 if line_h < 40 else 2
    when = datetime(2026, 1, 5, 9, 0, 0) + timedelta(hours=float(time_h))
    mag = 127e3 / (W * px_um)  # magnification referred to a 127 mm wide print, as SmartSEM does
    texts = [
        f"EHT = 15.00 kV   WD = 8.5 mm   Signal A = AsB   Mag = {mag / 1e3:.2f} K X",
        f"Date :{when:%d %b %Y}   Time :{when:%H:%M:%S}   File: t{time_h:04.0f}h_{index:02d}",
    ]
    canvas = np.zeros((bar, W), np.uint8)
    for k, text in enumerate(texts):
        while len(text) > 8 and cv2.getTextSize(text, font, scale, thick)[0][0] > 0.62 * W:
            text = text.rsplit("   ", 1)[0] if "   " in text else text[:-4]
        base = int(round((k + 0.75) * line_h))
        cv2.putText(canvas, text, (4, base), font, scale, 255, thick, cv2.LINE_8)
    # Scale bar: a round length close to 12 % of the field.
    target_um = 0.12 * W * px_um
    nice = min((v for v in (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500)), key=lambda v: abs(v - target_um))
    length = max(int(round(nice / px_um)), 4)
    x1 = W - 6
    xa = max(x1 - length, int(0.66 * W))
    yb = int(round(0.55 * bar))
    cv2.rectangle(canvas, (xa, yb), (x1, yb + max(bar // 10, 2)), 255, -1)
    label = f"{nice:g} um"
    (tw, th), _ = cv2.getTextSize(label, font, scale, thick)
    cv2.putText(canvas, label, (max(xa + (x1 - xa - tw) // 2, 0), max(yb - 3, th)), font, scale, 255, thick, cv2.LINE_8)
    image[y0 + 1 :] = (canvas[1:].astype(np.float64) * (white / 255.0)).astype(image.dtype)


# --------------------------------------------------------------------------- writing


def write_series(
    series: SynthSeries,
    folder: str | Path,
    *,
    vendor: str | None = "zeiss",
    name_template: str = "t{time_h:04.0f}h_{index:02d}.tif",
    compression: str | None = "deflate",
) -> list[Path]:
    """Write every frame of ``series`` as an SEM-like TIFF with calibration metadata.

    Parameters
    ----------
    series : SynthSeries
        From :func:`make_series`.
    folder : str or Path
        Output folder (created if needed).
    vendor : {"zeiss", "fei", "tiff", None}
        Metadata layout (see :func:`semtrack.io.write_sem_tiff`); None writes no calibration.
    name_template : str
        File name, formatted with ``time_h`` (hours) and ``index`` (frame number).
    compression : {"deflate", "lzw", None}
        TIFF compression.

    Returns
    -------
    list of Path
        The files, in frame order.

    Examples
    --------
    >>> import tempfile
    >>> s = make_series(shape=(96, 128), n_frames=2, seed=0)
    >>> [p.name for p in write_series(s, tempfile.mkdtemp())]
    ['t0024h_00.tif', 't0096h_01.tif']
    """
    from .io import write_sem_tiff

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = [name_template.format(time_h=float(t), index=i) for i, t in enumerate(series.times_h)]
    if len(set(names)) != len(names):
        raise ValueError(f"`name_template` {name_template!r} gives duplicate file names {names}; include {{index}}")
    start = datetime(2026, 1, 5, 9, 0, 0)
    paths = []
    for i, (name, image) in enumerate(zip(names, series.images)):
        # The nominal calibration: a re-set magnification is not known to the microscope.
        paths.append(
            write_sem_tiff(
                folder / name,
                image,
                pixel_size_um=series.pixel_size_um,
                vendor=vendor,
                acquired=start + timedelta(hours=float(series.times_h[i])),
                compression=compression,
                info_bar_px=series.info_bar_rows,
            )
        )
    return paths
