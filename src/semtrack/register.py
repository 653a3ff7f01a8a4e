"""Register every frame of a series to a reference frame via a fixed marker.

Between exposures the stage is re-positioned: frames of the same area differ by
a translation (up to ~10 % of the field), a small rotation and scale change, a
different brightness and contrast, and real change in the material. The fixed
marker (e.g. a partially detached ceramic piece) does not change, so the
transform is estimated on the marker only.

Method (coarse to fine):

1. Both images are reduced with a Gaussian pyramid (``cv2.pyrDown``) and
   lightly smoothed at every level (noise, and smooth gradients).
2. Global estimate at a coarse level (longer side <= ~320 px): masked
   normalised cross-correlation (Padfield 2012) of the marker against the whole
   moving frame, for every shift at once by FFT. It survives any shift that
   leaves at least a third of the marker in the field and is invariant to linear
   brightness/contrast changes.
3. Refinement on the marker at every pyramid level down to full resolution:
   inverse-compositional Lucas-Kanade (Baker & Matthews 2004) for the chosen
   model, on the marker's high-gradient pixels, with a per-iteration gain/offset
   fit (brightness/contrast invariance) and Huber weights (changed pixels inside
   the marker lose their pull). The marker is eroded by the filter support at
   every level, so pixels outside it never influence the result.
   At full resolution the frame is sampled with cubic splines (bilinear sampling
   biases the scale).
4. Quality: the normalised cross-correlation (NCC) between the reference marker
   and the aligned frame, over all marker pixels at full resolution, after a
   band-pass (difference of Gaussians, sigma 1 and 4 px). Grain-scale detail
   matches only at the right place: measured on synthetic series, true matches
   score 0.8-0.99 and frames of another area 0.0-0.1 (plain intensity NCC gave
   up to 0.75 for another area).

References
----------
.. [1] D. Padfield, "Masked object registration in the Fourier domain",
   IEEE Trans. Image Process. 21 (2012) 2706-2718. doi:10.1109/TIP.2011.2181402
.. [2] S. Baker, I. Matthews, "Lucas-Kanade 20 years on: a unifying framework",
   Int. J. Comput. Vis. 56 (2004) 221-255. doi:10.1023/B:VISI.0000011205.11775.fd
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import scipy.fft

from .errors import RegistrationError

__all__ = [
    "MODELS",
    "FrameRegistration",
    "Registration",
    "register_frame",
    "register_series",
    "choose_marker",
    "resample",
    "analysed_region",
    "transform_parameters",
]

#: Geometric models, from fewest to most parameters.
MODELS: tuple[str, ...] = ("translation", "rigid", "similarity", "affine")

# Smoothing (in pixels of each pyramid level) applied before gradients are taken.
_SIGMA = 1.0
# Reach of that smoothing (OpenCV's kernel: 4 sigma), +1 gradient stencil, +1 bilinear sampling.
_SUPPORT = int(math.ceil(4 * _SIGMA)) + 2
# Template pixels used per pyramid level; more adds time, not accuracy.
_MAX_POINTS = 24_000
# At full resolution every marker pixel counts against noise (up to this many).
_MAX_POINTS_FULL = 120_000
# The score is the NCC of band-passed images (difference of Gaussians, these sigmas in px):
# grain-scale detail matches only at the right place, while plain intensity NCC of two
# unrelated micrographs can exceed 0.5 on a small overlap.
_SCORE_SIGMAS = (1.0, 4.0)
_SCORE_SUPPORT = int(math.ceil(4 * _SCORE_SIGMAS[1])) + 2
# Marker pixels sampled for the score (a regular grid): enough for a stable NCC, and its
# float64 temporaries stay small.
_MAX_SCORE_POINTS = 200_000
# Side of the automatic marker, as a fraction of the field.
_MARKER_SIZE_FRACTION = 0.5
# Longer side of the level where the global (shift-only) search runs.
_COARSE_SIDE = 320
# Smallest marker side, in pixels of the coarse level, for the global search.
_MIN_COARSE_MARKER = 24
# Fraction of the marker that must stay inside the moving frame.
_MIN_VISIBLE = 0.3
# Beyond these the estimate is taken as a failure, not a stage re-positioning.
_MAX_ROTATION_DEG = 15.0
_MAX_LOG_SCALE = math.log(1.25)


@dataclass
class FrameRegistration:
    """Registration of one frame to the reference.

    Attributes
    ----------
    matrix : ndarray, shape (3, 3), float64
        Maps reference pixel coordinates ``(x=col, y=row, 1)`` to this frame's
        pixel coordinates in the file as read (before any cropping). Identity for
        the reference frame.
    score : float
        Normalised cross-correlation of band-passed images between the reference
        marker and this frame after alignment (1 = identical up to brightness and
        contrast; ~0 for another area).
    ok : bool
        ``score >= min_score``.
    warning : str or None
        Why the registration is doubtful, None when it is not.
    visible_fraction : float
        Fraction of the marker that lies inside this frame's valid area.
    n_iterations : int
        Refinement iterations summed over pyramid levels.
    residual : float
        Robust RMS of the final intensity residual, relative to the marker's
        intensity standard deviation (0 = perfect; noise contributes).
    coarse_score : float
        Peak NCC of the global shift search (at the coarse level).
    """

    matrix: np.ndarray
    score: float
    ok: bool
    warning: str | None = None
    visible_fraction: float = 1.0
    n_iterations: int = 0
    residual: float = 0.0
    coarse_score: float = 1.0


@dataclass
class Registration:
    """Registration of a whole series.

    Attributes
    ----------
    frames : list of FrameRegistration
        One per frame, in series order.
    reference : int
        Index of the reference frame.
    marker : tuple of int
        ``(x0, y0, x1, y1)`` marker rectangle in reference pixels (x1, y1 exclusive).
        For a mask marker: its bounding box.
    marker_source : str
        ``'user'`` or ``'auto'`` (chosen by :func:`choose_marker`).
    model : str
        One of :data:`MODELS`.
    strategy : str
        ``'direct'``: every frame is registered to the reference itself (the
        default). ``'chained'``: frame ``i`` to frame ``i - 1``, transforms composed.
        Direct is the default because the marker does not change while the errors
        of a chain add up: on two synthetic 12-frame series (1024x768, issue-3
        ranges) the RMS error was 0.28 px direct vs 0.35 px chained on average and
        0.34 vs 0.43 px on the last frame, and chaining took twice the time
        (``benchmarks/bench_register.py``). Chaining only helps when the marker
        itself changes slowly over time.
    """

    frames: list[FrameRegistration]
    reference: int
    marker: tuple[int, int, int, int]
    marker_source: str
    model: str
    strategy: str = "direct"

    @property
    def matrices(self) -> np.ndarray:
        """All frames' matrices, shape ``(n_frames, 3, 3)``."""
        return np.stack([f.matrix for f in self.frames])

    @property
    def scores(self) -> np.ndarray:
        """All frames' scores, shape ``(n_frames,)``."""
        return np.array([f.score for f in self.frames], dtype=float)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (the ``transforms.json`` output contract).

        Examples
        --------
        >>> import numpy as np
        >>> reg = Registration([FrameRegistration(np.eye(3), 1.0, True)], 0, (0, 0, 8, 8), "user", "similarity")
        >>> reg.to_json()["frames"][0]["matrix"][0]
        [1.0, 0.0, 0.0]
        """
        frames = []
        for i, f in enumerate(self.frames):
            entry: dict[str, Any] = {
                "frame": i,
                "matrix": [[float(v) for v in row] for row in f.matrix],
                "score": float(f.score),
                "ok": bool(f.ok),
                "warning": f.warning,
                "visible_fraction": float(f.visible_fraction),
                "n_iterations": int(f.n_iterations),
                "residual": float(f.residual),
            }
            entry.update(transform_parameters(f.matrix))
            frames.append(entry)
        return {
            "reference": int(self.reference),
            "model": self.model,
            "strategy": self.strategy,
            "marker": [int(v) for v in self.marker],
            "marker_source": self.marker_source,
            "convention": "matrix maps reference pixel (x=col, y=row, 1) to frame pixel (x, y, 1)",
            "frames": frames,
        }


# --------------------------------------------------------------------------- models


def _increment(model: str, dp: np.ndarray) -> np.ndarray:
    """Warp matrix of a parameter increment (about the origin of the centred frame)."""
    a = np.eye(3)
    if model == "translation":
        a[0, 2], a[1, 2] = dp
    elif model == "rigid":
        c, s = math.cos(dp[0]), math.sin(dp[0])
        a[:2, :2] = [[c, -s], [s, c]]
        a[0, 2], a[1, 2] = dp[1], dp[2]
    elif model == "similarity":
        a[:2, :2] = [[1 + dp[0], -dp[1]], [dp[1], 1 + dp[0]]]
        a[0, 2], a[1, 2] = dp[2], dp[3]
    else:
        a[:2, :2] = [[1 + dp[0], dp[1]], [dp[2], 1 + dp[3]]]
        a[0, 2], a[1, 2] = dp[4], dp[5]
    return a


def _steepest_descent(model: str, gx: np.ndarray, gy: np.ndarray, x: np.ndarray, y: np.ndarray):
    """Template gradient times the warp Jacobian at identity, shape (n_points, n_params)."""
    if model == "translation":
        cols = (gx, gy)
    elif model == "rigid":
        cols = (-y * gx + x * gy, gx, gy)
    elif model == "similarity":
        cols = (x * gx + y * gy, -y * gx + x * gy, gx, gy)
    else:
        cols = (x * gx, y * gx, x * gy, y * gy, gx, gy)
    return np.stack(cols, axis=1).astype(np.float64)


def _project(model: str, matrix: np.ndarray) -> np.ndarray:
    """Closest matrix of ``model`` to an affine matrix (keeps the estimate in the model)."""
    m = np.array(matrix, dtype=float)
    if model == "affine":
        return m
    out = np.eye(3)
    out[:2, 2] = m[:2, 2]
    if model == "translation":
        return out
    a = 0.5 * (m[0, 0] + m[1, 1])
    b = 0.5 * (m[1, 0] - m[0, 1])
    if model == "rigid":
        norm = math.hypot(a, b)
        a, b = a / norm, b / norm
    out[:2, :2] = [[a, -b], [b, a]]
    return out


def _scaled(matrix: np.ndarray, factor: float) -> np.ndarray:
    """Express a full-resolution matrix at a pyramid level (``full = factor * level``)."""
    s = np.diag([factor, factor, 1.0])
    return np.linalg.inv(s) @ matrix @ s


# --------------------------------------------------------------------------- inputs


def _as_image(image, name: str) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] in (3, 4) and arr.shape[0] > 4:
        raise ValueError(
            f"`{name}` has shape {arr.shape}: expected a 2-D greyscale image; "
            "convert colour images first (e.g. take one channel)."
        )
    if arr.ndim != 2:
        raise ValueError(f"`{name}` must be a 2-D image, got shape {arr.shape}.")
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.number)):
        raise TypeError(f"`{name}` must be a numeric image, got dtype {arr.dtype}.")
    if min(arr.shape) < 32:
        raise ValueError(f"`{name}` is {arr.shape}: at least 32x32 pixels are needed to register.")
    return np.ascontiguousarray(arr, dtype=np.float32)


def _as_mask(mask, shape: tuple[int, int], name: str) -> np.ndarray:
    if mask is None:
        return np.ones(shape, dtype=bool)
    arr = np.asarray(mask)
    if arr.shape != shape:
        raise ValueError(f"`{name}` has shape {arr.shape} but its image has shape {shape}.")
    return arr.astype(bool, copy=False)


def _marker_mask(marker, shape: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Marker as a boolean mask plus its bounding box (x0, y0, x1, y1)."""
    rows, cols = shape
    if marker is None:
        return np.ones(shape, dtype=bool), (0, 0, cols, rows)
    arr = np.asarray(marker)
    if arr.dtype == bool or arr.ndim == 2:
        if arr.shape != shape:
            raise ValueError(
                f"`marker` mask has shape {arr.shape}, the reference has {shape}; "
                "give a mask of the reference's shape or a rectangle (x0, y0, x1, y1)."
            )
        mask = arr.astype(bool)
        ys, xs = np.nonzero(mask)
        if ys.size == 0:
            raise ValueError("`marker` mask is empty; mark the marker's pixels with True.")
        return mask, (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    if arr.shape != (4,):
        raise ValueError(f"`marker` must be (x0, y0, x1, y1) or a boolean mask, got {marker!r}.")
    x0, y0, x1, y1 = (int(round(float(v))) for v in arr)
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, cols), min(y1, rows)
    if x1 - x0 < 16 or y1 - y0 < 16:
        raise ValueError(
            f"`marker` {tuple(int(v) for v in arr)} leaves less than 16x16 pixels inside the "
            f"{cols}x{rows} reference; give x0 < x1 <= {cols} and y0 < y1 <= {rows}, "
            "with the marker at least 16 px on each side (bigger is more accurate)."
        )
    mask = np.zeros(shape, dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask, (x0, y0, x1, y1)


def _check_model(model: str) -> None:
    if model not in MODELS:
        raise ValueError(f"`model` must be one of {MODELS}, got {model!r}.")


def _check_scores(min_score: float, fail_score: float) -> None:
    if not -1 <= fail_score <= min_score <= 1:
        raise ValueError(
            f"need -1 <= fail_score <= min_score <= 1, got fail_score={fail_score}, min_score={min_score}."
        )


# --------------------------------------------------------------------------- pyramid


@dataclass
class _Level:
    factor: int  # full-resolution pixel = factor * level pixel (pyrDown keeps pixel 0 at 0)
    image: np.ndarray  # float32, smoothed
    valid: np.ndarray  # bool: pixels whose smoothed value only depends on valid pixels
    raw: np.ndarray | None = None  # level 0 only: the image before smoothing (invalid pixels filled)


def _pyramid(image: np.ndarray, valid: np.ndarray, n_levels: int, first: int = 0) -> list[_Level | None]:
    """Gaussian pyramid, level i at index i; levels below ``first`` are only passed through (None)."""
    levels: list[_Level | None] = []
    raw = image
    if not valid.all():
        # Fill invalid pixels with the valid mean so the info bar's edge does not ring through blurs.
        raw = image.copy()
        raw[~valid] = float(image[valid].mean()) if valid.any() else 0.0
    vmask = valid.astype(np.uint8)
    kernel = np.ones((5, 5), np.uint8)
    for lvl in range(n_levels):
        if lvl:
            raw = cv2.pyrDown(raw)
            vmask = cv2.erode(vmask, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)
            vmask = np.ascontiguousarray(vmask[::2, ::2])
        if lvl < first:
            levels.append(None)
            continue
        r = _SUPPORT
        smooth = cv2.GaussianBlur(raw, (0, 0), _SIGMA, borderType=cv2.BORDER_REFLECT)
        k = np.ones((2 * r + 1, 2 * r + 1), np.uint8)
        v = cv2.erode(vmask, k, borderType=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)
        levels.append(_Level(2**lvl, smooth, v, raw if lvl == 0 else None))
    return levels


def _n_levels(shape: tuple[int, int], marker_box: tuple[int, int, int, int]) -> tuple[int, int]:
    """Number of pyramid levels and the index of the coarse (global search) level."""
    side = max(shape)
    marker_side = min(marker_box[2] - marker_box[0], marker_box[3] - marker_box[1])
    coarse = 0
    while side / 2**coarse > _COARSE_SIDE and marker_side / 2 ** (coarse + 1) >= _MIN_COARSE_MARKER:
        coarse += 1
    return coarse + 1, coarse


def _level_mask(mask: np.ndarray, level: _Level, level_index: int) -> np.ndarray:
    """Marker mask at a level, eroded by the filter support so outside pixels cannot matter."""
    m = mask.astype(np.uint8)
    for _ in range(level_index):
        m = cv2.erode(m, np.ones((5, 5), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0)
        m = m[::2, ::2]
    r = _SUPPORT
    m = cv2.erode(m, np.ones((2 * r + 1, 2 * r + 1), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return m.astype(bool) & level.valid


# --------------------------------------------------------------------------- sampling


def _cells(shape: tuple[int, int], x: np.ndarray, y: np.ndarray):
    """Per float coordinate: whether it is inside the image, the clipped coordinates and the flat
    index of the top-left neighbour of its interpolation cell."""
    rows, cols = shape
    inside = (x >= 0) & (y >= 0) & (x <= cols - 1) & (y <= rows - 1)
    xc = np.clip(x, 0, cols - 1.000001)
    yc = np.clip(y, 0, rows - 1.000001)
    x0 = xc.astype(np.intp)
    y0 = yc.astype(np.intp)
    return inside, xc, yc, x0, y0, y0 * cols + x0


def _valid_cells(valid: np.ndarray, inside: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Inside and all four neighbours valid (see :func:`_cells`)."""
    cols = valid.shape[1]
    vflat = valid.ravel()
    return inside & vflat[idx] & vflat[idx + 1] & vflat[idx + cols] & vflat[idx + cols + 1]


def _bilinear(image: np.ndarray, valid: np.ndarray, x: np.ndarray, y: np.ndarray):
    """Bilinear samples at float coordinates, and whether all four neighbours are valid."""
    cols = image.shape[1]
    inside, xc, yc, x0, y0, idx = _cells(image.shape, x, y)
    fx = (xc - x0).astype(np.float32)
    fy = (yc - y0).astype(np.float32)
    flat = image.ravel()
    a, b = flat[idx], flat[idx + 1]
    c, d = flat[idx + cols], flat[idx + cols + 1]
    top = a + fx * (b - a)
    bottom = c + fx * (d - c)
    values = top + fy * (bottom - top)
    return values, _valid_cells(valid, inside, idx)


# --------------------------------------------------------------------------- global search


def _masked_ncc(template, tmask, image, imask, min_overlap, *, spectra: dict | None = None):
    """Masked NCC of ``template`` against ``image`` for every integer shift (Padfield 2012).

    Returns the best shift ``(dx, dy)`` such that ``image[y + dy, x + dx] ~ template[y, x]``
    (template coordinates relative to its own origin), and the peak NCC. ``spectra`` (a dict
    kept with the template) keeps the template's transforms for the next image of its size.
    """
    th, tw = template.shape
    ih, iw = image.shape
    shape = (scipy.fft.next_fast_len(th + ih - 1, real=True), scipy.fft.next_fast_len(tw + iw - 1, real=True))

    def fft(a):
        return scipy.fft.rfft2(a, shape)

    def corr(fa, fb):
        # sum_x a(x) b(x + s), s indexed modulo the padded shape
        return scipy.fft.irfft2(np.conj(fa) * fb, shape)

    cached = spectra.get(shape) if spectra is not None else None
    if cached is None:
        f = np.where(tmask, template, 0).astype(np.float64)
        # Remove the means first: fewer cancellation errors in the sums below.
        f[tmask] -= f[tmask].mean()
        cached = fft(f), fft(f * f), fft(tmask.astype(np.float64)), float(np.abs(f).max())
        if spectra is not None:
            spectra[shape] = cached
    ff, ff2, fmf, f_max = cached
    g = np.where(imask, image, 0).astype(np.float64)
    g[imask] -= g[imask].mean()
    mg = imask.astype(np.float64)
    fg, fg2, fmg = fft(g), fft(g * g), fft(mg)
    n = np.round(corr(fmf, fmg))
    sf = corr(ff, fmg)
    sg = corr(fmf, fg)
    sfg = corr(ff, fg)
    sf2 = corr(ff2, fmg)
    sg2 = corr(fmf, fg2)
    with np.errstate(divide="ignore", invalid="ignore"):
        nn = np.maximum(n, 1)
        num = sfg - sf * sg / nn
        den = (sf2 - sf * sf / nn) * (sg2 - sg * sg / nn)
        ncc = num / np.sqrt(np.maximum(den, 0))
    eps = 1e-6 * max(f_max, 1e-12) * max(float(np.abs(g).max()), 1e-12)
    bad = (n < min_overlap) | ~np.isfinite(ncc) | (den <= eps * eps * np.maximum(n, 1) ** 2)
    ncc[bad] = -np.inf
    # Shifts outside [-(th-1), ih-1] wrap around; they are excluded by the overlap count anyway.
    k = int(np.argmax(ncc))
    sy, sx = np.unravel_index(k, ncc.shape)
    peak = float(ncc[sy, sx])
    # Indices past the image size are negative shifts (circular correlation).
    if sy > ih - 1:
        sy -= shape[0]
    if sx > iw - 1:
        sx -= shape[1]
    return (int(sx), int(sy)), peak


# --------------------------------------------------------------------------- refinement


@dataclass
class _Template:
    """Reference data for one pyramid level, prepared once per reference."""

    factor: int
    centre: np.ndarray  # (cx, cy) in level pixels
    x: np.ndarray  # level pixel coordinates of the selected points
    y: np.ndarray
    values: np.ndarray  # smoothed template values
    sd: np.ndarray  # steepest-descent images (n_points, n_params)


def _prepare_template(level: _Level, mask: np.ndarray, model: str, limit: int) -> _Template | None:
    ys, xs = np.nonzero(mask)
    if ys.size < 16:
        return None
    img = level.image
    # Gradients of the marker's bounding box only (one pixel wider: the stencil's reach), which
    # equal those of the whole level there.
    y0, x0 = max(int(ys.min()) - 1, 0), max(int(xs.min()) - 1, 0)
    box = img[y0 : int(ys.max()) + 2, x0 : int(xs.max()) + 2]
    gx = cv2.Sobel(box, cv2.CV_32F, 1, 0, ksize=1, scale=0.5, borderType=cv2.BORDER_REFLECT)
    gy = cv2.Sobel(box, cv2.CV_32F, 0, 1, ksize=1, scale=0.5, borderType=cv2.BORDER_REFLECT)
    mag = np.hypot(gx[ys - y0, xs - x0], gy[ys - y0, xs - x0])
    if ys.size > limit:
        # Pixels with the strongest gradient carry the position information; flat ones only noise.
        keep = np.argpartition(mag, ys.size - limit)[-limit:]
        sel_y, sel_x = ys[keep], xs[keep]
    else:
        sel_y, sel_x = ys, xs
    centre = np.array([xs.mean(), ys.mean()])
    x = sel_x.astype(np.float64)
    y = sel_y.astype(np.float64)
    sd = _steepest_descent(model, gx[sel_y - y0, sel_x - x0], gy[sel_y - y0, sel_x - x0], x - centre[0], y - centre[1])
    return _Template(level.factor, centre, x, y, img[sel_y, sel_x].astype(np.float64), sd)


def _cubic_sampler(moving: _Level, tmpl: _Template, matrix: np.ndarray):
    """Cubic-spline sampling of the part of the frame the marker falls on.

    Bilinear interpolation smooths more at half-pixel positions than at whole ones; with
    a scale change those positions drift across the marker and bias the scale estimate
    (measured ~1e-4, i.e. 0.1-0.2 px across a 2048 px field). Cubic splines do not.
    """
    from scipy import ndimage

    rows, cols = moving.image.shape
    mx = matrix[0, 0] * tmpl.x + matrix[0, 1] * tmpl.y + matrix[0, 2]
    my = matrix[1, 0] * tmpl.x + matrix[1, 1] * tmpl.y + matrix[1, 2]
    margin = 16  # room for the last refinement steps
    x0 = int(np.clip(np.floor(mx.min()) - margin, 0, cols - 1))
    x1 = int(np.clip(np.ceil(mx.max()) + margin + 1, x0 + 1, cols))
    y0 = int(np.clip(np.floor(my.min()) - margin, 0, rows - 1))
    y1 = int(np.clip(np.ceil(my.max()) + margin + 1, y0 + 1, rows))
    coeffs = ndimage.spline_filter(moving.image[y0:y1, x0:x1], order=3, mode="mirror")
    # Contiguous once: a window view would be copied by every sampling's ravel.
    valid = np.ascontiguousarray(moving.valid[y0:y1, x0:x1])

    def sample(x, y):
        lx, ly = x - x0, y - y0
        inside, *_, idx = _cells(coeffs.shape, lx, ly)
        vals = ndimage.map_coordinates(coeffs, [ly, lx], order=3, prefilter=False, mode="mirror")
        return vals, _valid_cells(valid, inside, idx)

    return sample


def _refine(
    tmpl: _Template, moving: _Level, matrix: np.ndarray, model: str, *, max_iter: int, tol: float, cubic: bool = False
):
    """Inverse-compositional Lucas-Kanade with gain/offset fit and Huber weights.

    ``matrix`` (level pixels) maps template coordinates to moving coordinates.
    Returns the refined matrix, the iterations used and the robust residual (relative
    to the template's standard deviation).
    """
    # Increments act about the marker's centre: keeps the normal equations well conditioned.
    c = np.array([[1, 0, tmpl.centre[0]], [0, 1, tmpl.centre[1]], [0, 0, 1.0]])
    c_inv = np.linalg.inv(c)
    # Convergence: the last step moves no marker corner by more than `tol`.
    corners = np.array(
        [
            [tmpl.x.min(), tmpl.y.min()],
            [tmpl.x.max(), tmpl.y.min()],
            [tmpl.x.min(), tmpl.y.max()],
            [tmpl.x.max(), tmpl.y.max()],
        ]
    )
    t_sd = float(np.std(tmpl.values)) or 1.0
    sample = _cubic_sampler(moving, tmpl, matrix) if cubic else lambda x, y: _bilinear(moving.image, moving.valid, x, y)
    residual = np.inf
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007 - the count of iterations used is returned
        mx = matrix[0, 0] * tmpl.x + matrix[0, 1] * tmpl.y + matrix[0, 2]
        my = matrix[1, 0] * tmpl.x + matrix[1, 1] * tmpl.y + matrix[1, 2]
        vals, ok = sample(mx, my)
        n_ok = int(np.count_nonzero(ok))
        if n_ok < max(16, 2 * tmpl.sd.shape[1]):
            break
        # Usually every point is inside: then the arrays are used as they are, not copied.
        every = n_ok == ok.size
        t = tmpl.values if every else tmpl.values[ok]
        v = (vals if every else vals[ok]).astype(np.float64)
        # Gain/offset that best explain the frame by the template: brightness/contrast invariance.
        tc = t - t.mean()
        gain = float(np.dot(tc, v - v.mean()) / max(np.dot(tc, tc), 1e-12))
        if not np.isfinite(gain) or abs(gain) < 1e-6:
            break
        err = (v - v.mean()) / gain - tc
        scale = 1.4826 * float(np.median(np.abs(err))) + 1e-9 * t_sd
        huber = 1.345 * scale
        w = np.minimum(1.0, huber / np.maximum(np.abs(err), 1e-12))
        sd = tmpl.sd if every else tmpl.sd[ok]
        sdw = sd * w[:, None]
        hess = sdw.T @ sd
        rhs = sdw.T @ err
        try:
            dp = np.linalg.solve(hess, rhs)
        except np.linalg.LinAlgError:
            break
        step = c @ _increment(model, dp) @ c_inv
        matrix = _project(model, matrix @ np.linalg.inv(step))
        residual = math.sqrt(float(np.sum(w * err * err) / np.sum(w))) / t_sd
        moved = step[:2, :2] @ corners.T + step[:2, 2:3] - corners.T
        if float(np.abs(moved).max()) < tol:
            break
    return matrix, it, residual


@dataclass
class _ScoreSample:
    """Band-passed reference values on a regular sample of the marker (full resolution)."""

    x: np.ndarray
    y: np.ndarray
    values: np.ndarray


def _band_pass(raw: np.ndarray, smooth: np.ndarray) -> np.ndarray:
    return smooth - cv2.GaussianBlur(raw, (0, 0), _SCORE_SIGMAS[1], borderType=cv2.BORDER_REFLECT)


def _score_sample(level: _Level, mask: np.ndarray) -> _ScoreSample:
    r = _SCORE_SUPPORT - _SUPPORT
    # Eroded further so that the wider band-pass filter, too, sees only marker pixels.
    kernel = np.ones((2 * r + 1, 2 * r + 1), np.uint8)
    inner = cv2.erode(mask.astype(np.uint8), kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    ys, xs = np.nonzero(inner if inner.sum() >= 256 else mask)
    step = max(1, math.ceil(math.sqrt(ys.size / _MAX_SCORE_POINTS)))
    keep = (ys % step == 0) & (xs % step == 0)
    ys, xs = ys[keep], xs[keep]
    y0, y1 = max(ys.min() - _SCORE_SUPPORT, 0), ys.max() + _SCORE_SUPPORT + 1
    x0, x1 = max(xs.min() - _SCORE_SUPPORT, 0), xs.max() + _SCORE_SUPPORT + 1
    band = _band_pass(level.raw[y0:y1, x0:x1], level.image[y0:y1, x0:x1])
    return _ScoreSample(xs.astype(np.float64), ys.astype(np.float64), band[ys - y0, xs - x0].astype(np.float64))


def _score(sample: _ScoreSample, moving: _Level, matrix: np.ndarray) -> tuple[float, float]:
    """Band-pass NCC between the reference marker and the aligned frame, and the visible fraction."""
    mx = matrix[0, 0] * sample.x + matrix[0, 1] * sample.y + matrix[0, 2]
    my = matrix[1, 0] * sample.x + matrix[1, 1] * sample.y + matrix[1, 2]
    rows, cols = moving.image.shape
    inside = (mx >= 0) & (my >= 0) & (mx <= cols - 1) & (my <= rows - 1)
    if inside.sum() < 16:
        return float("nan"), float(inside.mean())
    # Band-pass only the part of the frame that the marker falls on.
    y0 = max(int(my[inside].min()) - _SCORE_SUPPORT, 0)
    y1 = min(int(my[inside].max()) + _SCORE_SUPPORT + 2, rows)
    x0 = max(int(mx[inside].min()) - _SCORE_SUPPORT, 0)
    x1 = min(int(mx[inside].max()) + _SCORE_SUPPORT + 2, cols)
    band = _band_pass(moving.raw[y0:y1, x0:x1], moving.image[y0:y1, x0:x1])
    vals, ok = _bilinear(band, moving.valid[y0:y1, x0:x1], mx - x0, my - y0)
    visible = float(ok.mean())
    if ok.sum() < 16:
        return float("nan"), visible
    a = sample.values[ok] - sample.values[ok].mean()
    b = vals[ok].astype(np.float64)
    b -= b.mean()
    den = math.sqrt(float(np.dot(a, a) * np.dot(b, b)))
    return (float(np.dot(a, b) / den) if den > 0 else 0.0), visible


# --------------------------------------------------------------------------- frame registration


class _Reference:
    """Everything about the reference that does not depend on the moving frame."""

    def __init__(self, image, valid, marker, model, *, coarse_only=False):
        self.model = model
        self.mask, self.box = _marker_mask(marker, image.shape)
        self.n_levels, self.coarse = _n_levels(image.shape, self.box)
        # Only the templates and the coarse level are kept: the full-resolution pyramid is the
        # largest thing registration would otherwise hold for the whole series.
        levels = _pyramid(image, valid, self.n_levels, first=self.coarse if coarse_only else 0)
        self.templates: list[_Template | None] = [None] * self.n_levels
        for i in range(self.coarse if coarse_only else 0, self.n_levels):
            m = _level_mask(self.mask, levels[i], i)
            self.templates[i] = _prepare_template(levels[i], m, model, _MAX_POINTS_FULL if i == 0 else _MAX_POINTS)
        if coarse_only:
            self.score_sample = None
        elif self.templates[0] is None:
            raise RegistrationError(
                "the marker holds no valid reference pixels (inside the info bar or the image edge?); "
                "choose a marker inside the imaged area"
            )
        else:
            self.score_sample = _score_sample(levels[0], _level_mask(self.mask, levels[0], 0))
        coarse = self.coarse_level = levels[self.coarse]
        cm = _level_mask(self.mask, coarse, self.coarse)
        ys, xs = np.nonzero(cm)
        if ys.size < 16:
            raise RegistrationError("the marker is too small for the global search; enlarge it")
        self.cbox = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        x0, y0, x1, y1 = self.cbox
        self.ctemplate = coarse.image[y0:y1, x0:x1]
        self.cmask = cm[y0:y1, x0:x1]
        self.ncc_spectra: dict = {}  # the coarse template's transforms, by padded shape (see _masked_ncc)


def _register(ref: _Reference, moving, moving_valid):
    # The global search needs the whole frame, but only at the coarse level.
    levels = _pyramid(moving, moving_valid, ref.n_levels, first=ref.coarse)
    coarse = levels[ref.coarse]
    min_overlap = _MIN_VISIBLE * ref.cmask.sum()
    (dx, dy), cscore = _masked_ncc(
        ref.ctemplate, ref.cmask, coarse.image, coarse.valid, min_overlap, spectra=ref.ncc_spectra
    )
    if not np.isfinite(cscore):
        raise RegistrationError(
            "the marker does not overlap the frame at any shift (less than "
            f"{_MIN_VISIBLE:.0%} of it would be visible); is this frame of the same area?"
        )
    matrix = _coarse_matrix(ref, dx, dy, coarse.factor)
    total_it = 0
    residual = float("nan")
    # Frame pixels -> pixels of the part of the frame the finer levels are built from.
    to_window = np.eye(3)
    for i in range(ref.coarse, -1, -1):
        tmpl = ref.templates[i]
        if tmpl is None:
            continue
        if levels[i] is None:
            # Once the coarse level has placed the marker, the finer levels need only the part of
            # the frame it falls on: the full-resolution pyramid of a whole frame is the largest
            # thing registration would otherwise allocate.
            levels, to_window = _window_pyramid(ref, matrix, moving, moving_valid)
        m = _scaled(to_window @ matrix, tmpl.factor)
        m, it, residual = _refine(
            tmpl,
            levels[i],
            m,
            ref.model,
            max_iter=40 if i == ref.coarse else 20,
            tol=0.02 if i else 0.002,
            cubic=(i == 0),
        )
        total_it += it
        matrix = np.linalg.inv(to_window) @ _scaled(m, 1.0 / tmpl.factor)
    if levels[0] is None:  # no template between the coarse level and full resolution
        levels, to_window = _window_pyramid(ref, matrix, moving, moving_valid)
    score, visible = _score(ref.score_sample, levels[0], to_window @ matrix)
    return matrix, float(score), float(visible), total_it, float(residual), float(cscore)


def _window_pyramid(ref: _Reference, matrix: np.ndarray, moving: np.ndarray, moving_valid: np.ndarray):
    """The levels below the coarse one, built from the part of the frame that holds the marker under
    ``matrix``, and the translation from frame to window pixels.

    The window leaves room for the refinement still to come (a few coarse pixels) and for the
    eroded valid border of every level; its corner is on the coarse level's grid.
    """
    xs = [ref.score_sample.x] + [t.x * t.factor for t in ref.templates if t is not None]
    ys = [ref.score_sample.y] + [t.y * t.factor for t in ref.templates if t is not None]
    x, y = np.concatenate(xs), np.concatenate(ys)
    mx = matrix[0, 0] * x + matrix[0, 1] * y + matrix[0, 2]
    my = matrix[1, 0] * x + matrix[1, 1] * y + matrix[1, 2]
    step = 2**ref.coarse
    margin = 4 * step + (_SUPPORT + 2) * step // 2 + _SCORE_SUPPORT + 16
    rows, cols = moving.shape
    x0 = int(np.clip(np.floor(mx.min()) - margin, 0, cols - 1)) // step * step
    y0 = int(np.clip(np.floor(my.min()) - margin, 0, rows - 1)) // step * step
    x1 = int(np.clip(np.ceil(mx.max()) + margin + 1, x0 + 1, cols))
    y1 = int(np.clip(np.ceil(my.max()) + margin + 1, y0 + 1, rows))
    levels = _pyramid(moving[y0:y1, x0:x1], moving_valid[y0:y1, x0:x1], max(ref.coarse, 1))
    return levels, np.array([[1.0, 0.0, -x0], [0.0, 1.0, -y0], [0.0, 0.0, 1.0]])


def _coarse_matrix(ref: _Reference, dx: int, dy: int, factor: int) -> np.ndarray:
    """Full-resolution translation from a shift of the cropped coarse template."""
    matrix = np.eye(3)
    # The template starts at the coarse bounding-box corner, not at the level origin.
    matrix[0, 2] = (dx - ref.cbox[0]) * factor
    matrix[1, 2] = (dy - ref.cbox[1]) * factor
    return matrix


def _judge(matrix, score, visible, min_score, fail_score):
    """Raise on a failed registration; return (ok, warning) otherwise."""
    params = transform_parameters(matrix)
    if not np.all(np.isfinite(matrix)):
        raise RegistrationError("the estimate diverged (non-finite transform)")
    if visible < _MIN_VISIBLE:
        raise RegistrationError(
            f"only {visible:.0%} of the marker lies inside the frame after alignment: "
            "no usable overlap with the reference; is this frame of the same area?"
        )
    if abs(params["rotation_deg"]) > _MAX_ROTATION_DEG or abs(math.log(max(params["scale"], 1e-9))) > _MAX_LOG_SCALE:
        raise RegistrationError(
            f"inconsistent estimate (rotation {params['rotation_deg']:.1f} deg, scale "
            f"{params['scale']:.3f}); is this frame of the same area?"
        )
    if not np.isfinite(score) or score < fail_score:
        raise RegistrationError(
            f"marker correlation after alignment is {score:.2f} < fail_score={fail_score}; "
            "the frame looks like another area. Check the file, or give a marker that is "
            "visible in every frame."
        )
    if score < min_score:
        return False, (
            f"poor registration: marker correlation {score:.2f} < min_score={min_score}; check this frame's alignment"
        )
    if visible < 0.5:
        return True, f"only {visible:.0%} of the marker is inside this frame; the estimate rests on that part"
    return True, None


def register_frame(
    reference,
    moving,
    *,
    marker=None,
    model: str = "similarity",
    reference_valid=None,
    moving_valid=None,
    min_score: float = 0.5,
    fail_score: float = 0.2,
) -> FrameRegistration:
    """Find the transform from the reference frame to another frame of the same area.

    Parameters
    ----------
    reference, moving : ndarray, shape (rows, cols)
        Greyscale images, any numeric dtype, full frames as read (info bar included;
        mask it with the ``*_valid`` arguments). Their shapes may differ.
    marker : tuple (x0, y0, x1, y1) or ndarray of bool, optional
        The fixed marker in reference pixels (x = column, y = row; x1, y1 exclusive),
        or a boolean mask of the reference's shape. Only these pixels are used: change
        elsewhere does not move the result. None: the whole valid reference (then the
        robust weights must cope with material change; prefer a marker).
    model : {'translation', 'rigid', 'similarity', 'affine'}
        Geometric model. Similarity = translation, rotation and one scale.
    reference_valid, moving_valid : ndarray of bool, optional
        False where a frame holds no image data (info bar, no-data borders).
    min_score : float
        Marker NCC below which the result is flagged (``ok=False`` plus a warning).
    fail_score : float
        Marker NCC below which the frame cannot be registered (error).

    Returns
    -------
    FrameRegistration
        ``matrix`` maps reference pixel coordinates ``(x, y, 1)`` to ``moving`` pixel
        coordinates; ``score`` is the marker NCC after alignment.

    Raises
    ------
    RegistrationError
        No overlap, another area (score below ``fail_score``), or an inconsistent estimate.

    Examples
    --------
    >>> import numpy as np
    >>> from scipy import ndimage
    >>> rng = np.random.default_rng(0)
    >>> ref = ndimage.gaussian_filter(rng.random((200, 240)), 3)
    >>> mov = ndimage.shift(ref, (4.0, -6.5), order=3, mode="nearest")
    >>> reg = register_frame(ref, mov, marker=(40, 40, 200, 160), model="translation")
    >>> np.round(reg.matrix[:2, 2], 1)   # reference (x, y) is found at (x - 6.5, y + 4) in `mov`
    array([-6.5,  4. ])
    """
    _check_model(model)
    _check_scores(min_score, fail_score)
    ref_img = _as_image(reference, "reference")
    mov_img = _as_image(moving, "moving")
    ref_valid = _as_mask(reference_valid, ref_img.shape, "reference_valid") & np.isfinite(ref_img)
    mov_valid = _as_mask(moving_valid, mov_img.shape, "moving_valid") & np.isfinite(mov_img)
    ref = _Reference(_finite(ref_img), ref_valid, marker, model)
    return _frame(ref, _finite(mov_img), mov_valid, min_score=min_score, fail_score=fail_score)


def _finite(img: np.ndarray) -> np.ndarray:
    return np.nan_to_num(img, copy=False) if not np.isfinite(img).all() else img


def _frame(ref: _Reference, moving, moving_valid, *, min_score, fail_score) -> FrameRegistration:
    matrix, score, visible, it, residual, cscore = _register(ref, moving, moving_valid)
    ok, warning = _judge(matrix, score, visible, min_score, fail_score)
    return FrameRegistration(matrix, score, ok, warning, visible, it, residual, cscore)


# --------------------------------------------------------------------------- marker choice


def choose_marker(
    reference,
    *,
    valid=None,
    others: Sequence[np.ndarray] | None = None,
    others_valid: Sequence[np.ndarray | None] | None = None,
    size_fraction: float = _MARKER_SIZE_FRACTION,
) -> tuple[int, int, int, int]:
    """Choose a marker automatically: the most textured region that stays the same.

    The reference is cut into tiles (at a coarse level). Each tile's texture is its
    mean gradient magnitude; its stability is the lowest NCC, over the ``others``
    frames (roughly aligned here), between the reference tile and the other frame.
    The rectangle of the requested size with the largest sum of
    ``texture * max(stability, 0)**2`` wins.

    Parameters
    ----------
    reference : ndarray, shape (rows, cols)
        The reference frame.
    valid : ndarray of bool, optional
        False where the reference holds no image data (info bar).
    others : sequence of ndarray, optional
        A few other frames of the series (e.g. the middle and the last). Without them
        only texture counts.
    others_valid : sequence of (ndarray of bool or None), optional
        Valid masks of ``others``.
    size_fraction : float
        Marker side as a fraction of the valid field's width and height, in (0, 1].
        Bigger markers give more accurate rotation and scale, as long as they stay
        in the unchanging part of the sample.

    Returns
    -------
    tuple of int
        ``(x0, y0, x1, y1)`` in reference pixels, x1 and y1 exclusive.

    Examples
    --------
    >>> import numpy as np
    >>> img = np.zeros((256, 256)); img[:128, :128] = np.random.default_rng(1).random((128, 128))
    >>> x0, y0, x1, y1 = choose_marker(img, size_fraction=0.5)
    >>> (x0 < 64, y0 < 64)
    (True, True)
    """
    img = _as_image(reference, "reference")
    vmask = _as_mask(valid, img.shape, "valid") & np.isfinite(img)
    if not 0 < size_fraction <= 1:
        raise ValueError(f"`size_fraction` must be in (0, 1], got {size_fraction}.")
    others = list(others or [])
    if others_valid is not None and len(others_valid) != len(others):
        raise ValueError(f"`others_valid` has {len(others_valid)} entries for {len(others)} frames.")
    pairs = []
    for k, other in enumerate(others):
        o = _as_image(other, f"others[{k}]")
        ov = others_valid[k] if others_valid is not None else None
        pairs.append((o, _as_mask(ov, o.shape, f"others_valid[{k}]")))
    return _choose_marker(img, vmask, pairs, size_fraction)


def _choose_marker(img, vmask, others, size_fraction):
    """:func:`choose_marker` on checked input; ``others`` is an iterable of (image, valid) pairs,
    used one at a time (a lazy one keeps only one other frame in memory)."""
    rows_valid = np.nonzero(vmask.any(axis=1))[0]
    cols_valid = np.nonzero(vmask.any(axis=0))[0]
    if rows_valid.size == 0:
        raise ValueError("`valid` is all False; nothing to choose a marker from.")
    n_levels, _ = _n_levels(img.shape, (0, 0, img.shape[1], img.shape[0]))
    coarse = n_levels - 1
    lvl = _pyramid(_finite(img), vmask, n_levels, first=coarse)[coarse]
    f = lvl.factor
    gx = cv2.Sobel(lvl.image, cv2.CV_32F, 1, 0, ksize=1, scale=0.5)
    gy = cv2.Sobel(lvl.image, cv2.CV_32F, 0, 1, ksize=1, scale=0.5)
    texture = np.where(lvl.valid, np.hypot(gx, gy), 0)
    stability = np.ones_like(texture)
    ref_full = None
    for other, other_valid in others:
        if ref_full is None:
            ref_full = _Reference(_finite(img), vmask, None, "similarity", coarse_only=True)
        ov = other_valid & np.isfinite(other)
        stability = np.minimum(stability, _local_stability(ref_full, _finite(other), ov))
    tile = max(4, int(round(min(lvl.image.shape) / 24)))
    th, tw = lvl.image.shape[0] // tile, lvl.image.shape[1] // tile
    crop = (slice(0, th * tile), slice(0, tw * tile))
    tex_t = texture[crop].reshape(th, tile, tw, tile).mean(axis=(1, 3))
    stab_t = stability[crop].reshape(th, tile, tw, tile).mean(axis=(1, 3))
    valid_t = lvl.valid[crop].reshape(th, tile, tw, tile).all(axis=(1, 3))
    merit = (tex_t * np.clip(stab_t, 0, 1) ** 2).astype(np.float64)
    # A tile without full valid data costs more than any rectangle can gain elsewhere.
    merit = np.where(valid_t, merit, -(np.abs(merit).sum() + 1.0))
    y_lo, y_hi = rows_valid[0] // f // tile, (rows_valid[-1] + 1) // f // tile
    x_lo, x_hi = cols_valid[0] // f // tile, (cols_valid[-1] + 1) // f // tile
    nh = max(1, int(round(size_fraction * (y_hi - y_lo))))
    nw = max(1, int(round(size_fraction * (x_hi - x_lo))))
    integral = np.pad(merit.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    best, best_pos = -np.inf, (x_lo, y_lo)
    for ty in range(y_lo, max(y_lo, y_hi - nh) + 1):
        for tx in range(x_lo, max(x_lo, x_hi - nw) + 1):
            s = integral[ty + nh, tx + nw] - integral[ty, tx + nw] - integral[ty + nh, tx] + integral[ty, tx]
            if s > best:
                best, best_pos = s, (tx, ty)
    tx, ty = best_pos
    px = tile * f
    x0, y0 = tx * px, ty * px
    return (int(x0), int(y0), int(min(x0 + nw * px, img.shape[1])), int(min(y0 + nh * px, img.shape[0])))


def _local_stability(ref: _Reference, other: np.ndarray, other_valid: np.ndarray) -> np.ndarray:
    """Local NCC (in a window of a few coarse pixels) between the reference and the aligned other frame."""
    level_index = ref.coarse
    lvl = _pyramid(other, other_valid, level_index + 1, first=level_index)[level_index]
    (dx, dy), _ = _masked_ncc(ref.ctemplate, ref.cmask, lvl.image, lvl.valid, _MIN_VISIBLE * ref.cmask.sum())
    matrix = _coarse_matrix(ref, dx, dy, lvl.factor)
    tmpl = ref.templates[level_index]
    if tmpl is not None:
        # Robust weights let the changed parts go: the rest aligns to within a coarse pixel.
        m, _, _ = _refine(tmpl, lvl, _scaled(matrix, tmpl.factor), "similarity", max_iter=40, tol=0.05)
        matrix = _scaled(m, 1.0 / tmpl.factor)
    rl = ref.coarse_level
    warped = resample(lvl.image, _scaled(matrix, lvl.factor), rl.image.shape, order=1, fill=np.nan)
    ok = np.isfinite(warped) & rl.valid
    a = np.where(ok, rl.image, 0).astype(np.float32)
    b = np.where(ok, warped, 0).astype(np.float32)
    w = ok.astype(np.float32)
    k = (5, 5)
    n = cv2.boxFilter(w, -1, k, normalize=False) + 1e-6
    ma = cv2.boxFilter(a, -1, k, normalize=False) / n
    mb = cv2.boxFilter(b, -1, k, normalize=False) / n
    cab = cv2.boxFilter(a * b, -1, k, normalize=False) / n - ma * mb
    caa = cv2.boxFilter(a * a, -1, k, normalize=False) / n - ma * ma
    cbb = cv2.boxFilter(b * b, -1, k, normalize=False) / n - mb * mb
    ncc = cab / np.sqrt(np.maximum(caa * cbb, 1e-12))
    return np.where(ok, ncc, 0.0)


# --------------------------------------------------------------------------- series


def register_series(
    series,
    *,
    marker=None,
    model: str = "similarity",
    reference: int = 0,
    min_score: float = 0.5,
    fail_score: float = 0.2,
    progress: Callable[[int, int], None] | None = None,
    valid_masks: Sequence[np.ndarray | None] | None = None,
    strategy: str = "direct",
) -> Registration:
    """Register every frame of a series to its reference frame.

    Parameters
    ----------
    series : semtrack.series.Series or sequence of ndarray
        A :class:`~semtrack.series.Series` (frames are read one at a time with
        ``series.image(i)``; the info bar is masked with ``series.valid_mask(i)``),
        or a sequence of 2-D arrays.
    marker : tuple (x0, y0, x1, y1) or ndarray of bool, optional
        Marker in reference pixels; None chooses one with :func:`choose_marker`
        (using the middle and last frames to judge stability).
    model : {'translation', 'rigid', 'similarity', 'affine'}
    reference : int
        Index of the reference frame.
    min_score, fail_score : float
        See :func:`register_frame`.
    progress : callable(done, total), optional
        Called after each frame.
    valid_masks : sequence of (ndarray of bool or None), optional
        Valid masks for a sequence of arrays (ignored for a Series).
    strategy : {'direct', 'chained'}
        See :class:`Registration`; 'direct' is more accurate with a fixed marker.

    Returns
    -------
    Registration

    Raises
    ------
    RegistrationError
        A frame cannot be registered; the message names its file (or index).

    Examples
    --------
    >>> import numpy as np
    >>> from scipy import ndimage
    >>> rng = np.random.default_rng(0)
    >>> base = ndimage.gaussian_filter(rng.random((200, 240)), 3)
    >>> frames = [base, ndimage.shift(base, (2.0, 3.0), order=3, mode="nearest")]
    >>> reg = register_series(frames, marker=(40, 40, 200, 160), model="translation")
    >>> np.round(reg.matrices[1][:2, 2], 1)
    array([3., 2.])
    """
    _check_model(model)
    _check_scores(min_score, fail_score)
    if strategy not in ("direct", "chained"):
        raise ValueError(f"`strategy` must be 'direct' or 'chained', got {strategy!r}.")
    get, n, path_of = _frame_source(series, valid_masks)
    if n == 0:
        raise ValueError("`series` holds no frames.")
    if not 0 <= reference < n:
        raise ValueError(f"`reference` is {reference} but the series has {n} frames (0..{n - 1}).")
    ref_img, ref_valid = get(reference)
    if marker is None:
        picks = sorted({i for i in (n // 2, n - 1) if i != reference})
        box = _choose_marker(ref_img, ref_valid, (get(i) for i in picks), _MARKER_SIZE_FRACTION)
        marker_arg, source = box, "auto"
    else:
        marker_arg, source = marker, "user"
    try:
        ref = _Reference(ref_img, ref_valid, marker_arg, model)
    except RegistrationError as exc:
        raise RegistrationError(exc.message, path=path_of(reference)) from exc
    del ref_img, ref_valid  # the reference's templates are all that is needed from here on
    frames: list[FrameRegistration | None] = [None] * n
    frames[reference] = FrameRegistration(np.eye(3), 1.0, True, None)
    done = 1
    if progress is not None:
        progress(done, n)
    order = [*range(reference + 1, n), *range(reference - 1, -1, -1)]
    for i in order:
        img, valid = get(i)
        try:
            if strategy == "direct":
                result = _frame(ref, img, valid, min_score=min_score, fail_score=fail_score)
            else:
                result = _chain_step(ref, get, i, reference, frames, marker_arg, model, min_score, fail_score)
        except RegistrationError as exc:
            raise RegistrationError(f"frame {i}: {exc.message}", path=path_of(i)) from exc
        frames[i] = result
        done += 1
        if progress is not None:
            progress(done, n)
    box = ref.box
    return Registration([f for f in frames if f is not None], reference, box, source, model, strategy)


def _chain_step(ref, get, i, reference, frames, marker_arg, model, min_score, fail_score):
    """Register frame i to its neighbour towards the reference; compose with the neighbour's matrix."""
    j = i - 1 if i > reference else i + 1
    prev_img, prev_valid = get(j)
    prev_m = frames[j].matrix
    # The marker seen in the neighbour's pixels: points of the neighbour that map back into it.
    rows, cols = prev_img.shape
    mask_ref = ref.mask.astype(np.float32)
    inv = np.linalg.inv(prev_m)
    warped = resample(mask_ref, inv, (rows, cols), order=0, fill=0)
    prev_marker = (warped > 0.5) & prev_valid
    if prev_marker.sum() < 256:
        raise RegistrationError("the marker is not visible in the neighbouring frame; use strategy='direct'")
    img, valid = get(i)
    step = register_frame(
        prev_img,
        img,
        marker=prev_marker,
        model=model,
        reference_valid=prev_valid,
        moving_valid=valid,
        min_score=-1,
        fail_score=-1,
    )
    matrix = _project(model, step.matrix @ prev_m)
    score, visible = _score(ref.score_sample, _pyramid(img, valid, 1)[0], matrix)
    ok, warning = _judge(matrix, score, visible, min_score, fail_score)
    return FrameRegistration(matrix, score, ok, warning, visible, step.n_iterations, step.residual, step.coarse_score)


def _frame_source(series, valid_masks):
    """(get(i) -> (image float32, valid bool), n_frames, path_of(i)) for a Series or a sequence."""
    if hasattr(series, "image") and hasattr(series, "valid_mask") and hasattr(series, "frames"):

        def get(i):
            img = _as_image(series.image(i), f"frame {i}")
            finite = np.isfinite(img)
            valid = _as_mask(series.valid_mask(i), img.shape, f"valid mask of frame {i}") & finite
            return (img if finite.all() else np.nan_to_num(img, copy=False)), valid

        return get, len(series), lambda i: series.frames[i].path
    frames = list(series)
    if valid_masks is not None and len(valid_masks) != len(frames):
        raise ValueError(f"`valid_masks` has {len(valid_masks)} entries for {len(frames)} frames.")

    def get(i):
        img = _as_image(frames[i], f"series[{i}]")
        vm = valid_masks[i] if valid_masks is not None else None
        valid = _as_mask(vm, img.shape, f"valid_masks[{i}]") & np.isfinite(img)
        return _finite(img), valid

    return get, len(frames), lambda i: None


# --------------------------------------------------------------------------- outputs


def resample(image, matrix, output_shape, *, order: int = 1, fill: float = np.nan) -> np.ndarray:
    """A frame's pixels in the reference grid.

    ``out[y, x] = image(M @ (x, y, 1))``, interpolated; ``fill`` where that point is
    outside ``image`` (with ``order >= 1``, also where an interpolation neighbour is).

    Parameters
    ----------
    image : ndarray, shape (rows, cols)
        The frame as read (info bar included, so the matrix applies unchanged).
    matrix : ndarray, shape (3, 3)
        Reference pixel -> frame pixel (:attr:`FrameRegistration.matrix`).
    output_shape : tuple of int
        ``(rows, cols)`` of the reference grid.
    order : {0, 1, 3}
        Nearest (labels), bilinear, or bicubic interpolation.
    fill : float
        Value outside the frame.

    Returns
    -------
    ndarray, shape output_shape, float32

    Examples
    --------
    >>> import numpy as np
    >>> img = np.arange(16, dtype=float).reshape(4, 4)
    >>> m = np.array([[1, 0, 1], [0, 1, 0], [0, 0, 1.0]])   # reference x is frame x + 1
    >>> resample(img, m, (4, 4), order=0)[0]
    array([ 1.,  2.,  3., nan], dtype=float32)
    """
    arr = np.asarray(image)
    if arr.ndim != 2:
        raise ValueError(f"`image` must be 2-D, got shape {arr.shape}.")
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (3, 3) or not np.allclose(m[2], [0, 0, 1]):
        raise ValueError(f"`matrix` must be a 3x3 affine matrix with last row (0, 0, 1), got {m!r}.")
    flags = {0: cv2.INTER_NEAREST, 1: cv2.INTER_LINEAR, 3: cv2.INTER_CUBIC}
    if order not in flags:
        raise ValueError(f"`order` must be 0, 1 or 3, got {order}.")
    rows, cols = (int(v) for v in output_shape)
    src = np.ascontiguousarray(arr, dtype=np.float32)
    # WARP_INVERSE_MAP: `m` already maps output (reference) pixels to input (frame) pixels.
    # Replicated borders give exact values up to the last pixel; outside is set below.
    out = cv2.warpAffine(
        src, m[:2], (cols, rows), flags=flags[order] | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE
    )
    # Exact inside test (OpenCV resolves positions to 1/32 px only): one interval of columns per row.
    half = 0.5 if order == 0 else 0.0
    start, stop = _inside_columns(m, rows, cols, (-half, src.shape[1] - 1 + half), (-half, src.shape[0] - 1 + half))
    if not np.isnan(fill):  # NaN in the frame stays NaN: only another fill needs a pass
        out[np.isnan(out)] = fill
    for r in np.flatnonzero((start > 0) | (stop < cols)):
        out[r, : start[r]] = fill
        out[r, max(stop[r], start[r]) :] = fill
    return out


def _inside_columns(
    m: np.ndarray, rows: int, cols: int, x_range: tuple[float, float], y_range: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Per row of a ``rows`` x ``cols`` grid, the columns ``[start, stop)`` that ``m`` maps into a box.

    Grid point (x, y) is inside when ``x_range[0] <= m[0] @ (x, y, 1) <= x_range[1]`` and likewise
    for ``m[1]`` and ``y_range``. Along a row each mapped coordinate is monotone in x, in floating
    point too (every rounding step is), so each bound is crossed once: a binary search per row
    finds it with the expression, and so the rounding, of a test of every pixel, in a fraction
    of its time. Rows without an inside point get ``start >= stop``.
    """
    y = np.arange(rows, dtype=np.float64)
    start = np.zeros(rows, np.int64)
    stop = np.full(rows, cols, np.int64)
    for (a, b, c), (low, high) in ((m[0], x_range), (m[1], y_range)):

        def coordinate(x, a=a, b=b, c=c):
            return a * x + b * y + c

        if a >= 0:  # the coordinate grows along the row (or stays)
            np.maximum(start, _first_true(lambda x, f=coordinate, v=low: f(x) >= v, rows, cols), out=start)
            np.minimum(stop, _first_true(lambda x, f=coordinate, v=high: f(x) > v, rows, cols), out=stop)
        else:
            np.maximum(start, _first_true(lambda x, f=coordinate, v=high: f(x) <= v, rows, cols), out=start)
            np.minimum(stop, _first_true(lambda x, f=coordinate, v=low: f(x) < v, rows, cols), out=stop)
    return start, stop


def _first_true(predicate, rows: int, cols: int) -> np.ndarray:
    """Per row, the first column in [0, cols] where ``predicate`` holds (``cols``: nowhere).

    ``predicate`` maps one float64 column per row to one bool per row and, along a row, is
    False up to some column and True from there on.
    """
    lo = np.zeros(rows, np.int64)
    hi = np.full(rows, cols, np.int64)
    while (searching := lo < hi).any():
        mid = (lo + hi) // 2
        holds = predicate(mid.astype(np.float64))
        hi = np.where(searching & holds, mid, hi)
        lo = np.where(searching & ~holds, mid + 1, lo)
    return lo


def analysed_region(
    registration: Registration, frame_shapes, frame_valid_rows, *, margin_px: float = 2.0
) -> np.ndarray:
    """The part of the reference grid that every frame imaged, above its info bar.

    Parameters
    ----------
    registration : Registration
    frame_shapes : sequence of (rows, cols)
        Each frame's shape as read; the reference grid is the reference frame's shape.
    frame_valid_rows : sequence of int
        Rows above each frame's info bar (``FrameInfo.valid_rows``).
    margin_px : float
        Distance kept from every frame's edge (interpolation needs neighbours).

    Returns
    -------
    ndarray of bool, shape of the reference frame

    Examples
    --------
    >>> import numpy as np
    >>> shift = np.array([[1, 0, 10], [0, 1, 0], [0, 0, 1.0]])
    >>> reg = Registration([FrameRegistration(np.eye(3), 1, True), FrameRegistration(shift, 1, True)],
    ...                    0, (0, 0, 50, 50), "user", "translation")
    >>> region = analysed_region(reg, [(100, 100), (100, 100)], [90, 90], margin_px=0)
    >>> region.shape, int(region[:, :].any(axis=0).sum()), int(region.any(axis=1).sum())
    ((100, 100), 90, 90)
    """
    mats = registration.matrices
    if len(frame_shapes) != len(mats) or len(frame_valid_rows) != len(mats):
        raise ValueError(
            f"`frame_shapes` ({len(frame_shapes)}) and `frame_valid_rows` ({len(frame_valid_rows)}) "
            f"need one entry per registered frame ({len(mats)})."
        )
    rows, cols = (int(v) for v in frame_shapes[registration.reference])
    start = np.zeros(rows, np.int64)
    stop = np.full(rows, cols, np.int64)
    for m, shape, vrows in zip(mats, frame_shapes, frame_valid_rows):
        x_range = (margin_px, shape[1] - 1 - margin_px)
        y_range = (margin_px, min(int(vrows), shape[0]) - 1 - margin_px)
        first, end = _inside_columns(m, rows, cols, x_range, y_range)
        np.maximum(start, first, out=start)
        np.minimum(stop, end, out=stop)
    columns = np.arange(cols)
    return (columns >= start[:, None]) & (columns < stop[:, None])


def transform_parameters(matrix) -> dict[str, float]:
    """Translation, rotation and scale of a matrix (the ``frames.csv`` columns).

    ``dx_px, dy_px`` is where the reference origin (pixel 0, 0) lands in the frame;
    ``rotation_deg`` is counter-clockwise in (x right, y down) pixel axes, i.e.
    clockwise on screen; ``scale`` is the geometric mean of the two axis scales
    (frame pixels per reference pixel).

    Examples
    --------
    >>> import numpy as np
    >>> transform_parameters(np.array([[1, 0, 5], [0, 1, -2], [0, 0, 1.0]]))
    {'dx_px': 5.0, 'dy_px': -2.0, 'rotation_deg': 0.0, 'scale': 1.0}
    """
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (3, 3):
        raise ValueError(f"`matrix` must have shape (3, 3), got {m.shape}.")
    det = float(np.linalg.det(m[:2, :2]))
    return {
        "dx_px": float(m[0, 2]),
        "dy_px": float(m[1, 2]),
        "rotation_deg": float(math.degrees(math.atan2(m[1, 0] - m[0, 1], m[0, 0] + m[1, 1]))),
        "scale": float(math.sqrt(abs(det))),
    }
