"""Phase segmentation of SEM micrographs: unsupervised intensity classes and a trainable pixel classifier.

Unsupervised mode (:func:`fit_phase_model`, :func:`segment_frame`)
    1. Edge-preserving denoising (bilateral filter scaled to the measured noise).
    2. Intensity classes, one per phase in the known brightness order (phases other than the two
       anchors may be absent: they then get an empty class, see :func:`fit_phase_model`). Class boundaries are the
       valleys of the (log) histogram of off-edge pixels when the phases form separate peaks (so a
       1 % phase keeps its class and a dominant phase with grain-to-grain orientation contrast is
       not split); a valley counts only with enough pixels on both sides (stray pixels in the gap
       between two peaks make no class), with class medians more than the denoised noise apart on
       both sides, and with some frame showing both sides (else it is a dip inside one peak, e.g.
       pores of frames with different black levels). Where too few valleys are found, the most
       prominent faint one is added, then a minimum-error (Kittler-Illingworth) split, multi-Otsu
       only when the phases overlap into one peak. The candidate sets of present phases are checked
       against the known order (glass is not near-black beside a darker phase; all frames share a
       similar glass-NaSICON contrast; neighbouring classes occur together in some frame); of two
       ways to start the fit, the one under which the frames are most likely (a Gaussian mixture of
       the shared classes in image units) wins, and a frame is mapped onto a fitted model by the
       better-fitting (minimum-error) of two starts, its own valleys and the series' usual map.
       Boundaries are stored in
       *normalised* units in which two stable "anchor" phases (by default glass and NaSICON) have
       medians 0 and 1; each frame gets its own affine map (brightness, contrast), re-estimated
       against the shared boundaries, so a phase that grows a lot between frames (Na3PO4) does not
       shift the class definitions the way percentiles would.
    3. Spatial regularisation: the most typical off-edge pixels of each class, class interiors
       (farther than ``boundary_band_px`` from a class change) and compact dark blobs (their darkest
       point for blobs a few pixels across, classed on the raw image) seed a marker watershed on the
       gradient magnitude, which assigns the band along the boundaries. The
       blur-induced mid-grey rim between bright grains and dark phases has a high gradient, so it
       never seeds the intermediate class; it is split at the gradient ridge, i.e. at the true
       edge, instead of being called glass. Bright edge halos are likewise high-gradient and go to
       the phase whose edge they belong to. Thin dark lines inside the brightest phase (glass films
       between touching grains) are given to the next darker phase.
    4. Regions of the intermediate dark class (Na3PO4) nowhere thicker than ~5 px (cracks, pore rims
       blurred into its grey) become the darkest phase; phase specks smaller than
       ``min_object_area_um2`` are merged into their surroundings.

Trainable mode (:class:`PixelClassifier`)
    A random forest on multi-scale features (smoothed intensity, gradient magnitude, Hessian
    eigenvalues, local standard deviation, difference of Gaussians) computed from a robustly
    standardised image, so a model trained on one frame transfers to frames of different brightness
    and contrast. It is also trained on the scribbled image shrunk 2x (noise restored), so phases are
    recognised in objects smaller than any scribbled one; it classifies a grid of every second pixel
    (probabilities interpolated), and a marker watershed from its confident pixels puts the
    boundaries on the intensity edges.

References
----------
J. Immerkaer, "Fast noise variance estimation", Computer Vision and Image Understanding 64 (1996)
300-302, doi:10.1006/cviu.1996.0060.
"""

from __future__ import annotations

import io as _io
import itertools
import pickle
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from scipy import ndimage as ndi
from scipy.signal import find_peaks
from skimage.filters import threshold_multiotsu
from skimage.measure import label
from skimage.segmentation import watershed

from ._atomic import atomic_write_bytes
from .config import OUTSIDE, PHASE_NAMES
from .errors import ReadError, SegmentationError

__all__ = [
    "PhaseModel",
    "fit_phase_model",
    "segment_frame",
    "PixelClassifier",
    "estimate_noise",
    "simulate_scribbles",
]

DEFAULT_BRIGHTNESS_ORDER: tuple[str, ...] = ("pore", "na3po4", "glass", "nasicon")
_CLASSIFIER_FORMAT = "semtrack-pixel-classifier"
#: 2: features normalised on the stable phases; 3: trained on shrunk copies too; 4: scales >= 4 px at half size
_CLASSIFIER_VERSION = 4
#: Depth (log-count units) a histogram valley needs to count as a phase boundary (about 7x fewer
#: pixels than the smaller neighbouring peak).
_MIN_VALLEY = 2.0
#: Depth of the faint valleys tried next, before a minimum-error split, when too few valleys are found.
_FAINT_VALLEY = 0.5


# --------------------------------------------------------------------------------------------------
# Phase model
# --------------------------------------------------------------------------------------------------


@dataclass
class PhaseModel:
    """Class definitions shared by all frames of a series (unsupervised mode).

    Intensities are expressed in normalised units in which the mean of ``anchor_phases[0]`` is 0 and
    that of ``anchor_phases[1]`` is 1; each frame is mapped to these units by its own affine fit.

    Attributes
    ----------
    phase_names : tuple of str
        Phase names in code order (the output code is the index).
    brightness_order : tuple of str
        The same names from darkest to brightest.
    thresholds : tuple of float
        The ``P - 1`` class boundaries in normalised units, in brightness order.
    medians : tuple of float
        Median normalised intensity of each class, in brightness order (anchors are 0 and 1).
    weights : tuple of float
        Pooled area fractions of the fitted frames by intensity class, in brightness order (for the
        record: every frame has its own).
    anchor_phases : tuple of str
        The two phases that define the normalised scale (darker one first).
    intensity_offset, intensity_scale : float
        Typical median of the darker anchor phase and distance between the anchor medians in the
        fitted frames (image units): a hint for mapping frames that lack a phase. Scale 0 = unknown.
    n_frames : int
        Number of frames the model was fitted on.
    """

    phase_names: tuple[str, ...]
    brightness_order: tuple[str, ...]
    thresholds: tuple[float, ...]
    medians: tuple[float, ...]
    weights: tuple[float, ...]
    anchor_phases: tuple[str, str]
    intensity_offset: float = 0.0
    intensity_scale: float = 0.0
    n_frames: int = 1
    version: int = 1

    @property
    def n_phases(self) -> int:
        return len(self.phase_names)

    @property
    def order_codes(self) -> np.ndarray:
        """Phase code of each brightness rank (darkest first)."""
        return np.array([self.phase_names.index(n) for n in self.brightness_order], dtype=np.uint8)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (for ``run.json``)."""
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PhaseModel:
        """Rebuild a model from :meth:`to_dict` output.

        Raises
        ------
        SegmentationError
            A key is missing or the lengths do not match.
        """
        try:
            model = cls(
                phase_names=tuple(data["phase_names"]),
                brightness_order=tuple(data["brightness_order"]),
                thresholds=tuple(float(v) for v in data["thresholds"]),
                medians=tuple(float(v) for v in data["medians"]),
                weights=tuple(float(v) for v in data["weights"]),
                anchor_phases=tuple(data["anchor_phases"]),
                intensity_offset=float(data.get("intensity_offset", 0.0)),
                intensity_scale=float(data.get("intensity_scale", 0.0)),
                n_frames=int(data.get("n_frames", 1)),
                version=int(data.get("version", 1)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SegmentationError(f"invalid phase model description ({exc!r})") from exc
        n = len(model.phase_names)
        if not (len(model.thresholds) + 1 == len(model.medians) == len(model.weights) == n):
            raise SegmentationError(
                f"invalid phase model: {n} phases but {len(model.thresholds)} thresholds, "
                f"{len(model.medians)} medians, {len(model.weights)} weights"
            )
        _check_names(model.phase_names, model.brightness_order)
        return model


def _check_names(phase_names: Sequence[str], brightness_order: Sequence[str]) -> None:
    if len(phase_names) < 2:
        raise ValueError(f"`phase_names` needs at least two phases, got {tuple(phase_names)!r}")
    if len(set(phase_names)) != len(phase_names):
        raise ValueError(f"`phase_names` has duplicates: {tuple(phase_names)!r}")
    if sorted(brightness_order) != sorted(phase_names):
        raise ValueError(
            f"`brightness_order` {tuple(brightness_order)!r} must list exactly the phases of "
            f"`phase_names` {tuple(phase_names)!r}, darkest first"
        )


# --------------------------------------------------------------------------------------------------
# Input checks and preprocessing
# --------------------------------------------------------------------------------------------------


def _as_image(image: Any, name: str = "image") -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim != 2:
        raise ValueError(f"`{name}` must be a 2-D greyscale array, got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise TypeError(f"`{name}` must be numeric, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.integer):
        info = np.iinfo(arr.dtype)
        return arr.astype(np.float32) / np.float32(info.max)
    return arr.astype(np.float32, copy=False)


def _valid_mask(image: np.ndarray, valid: Any, name: str = "valid") -> np.ndarray:
    finite = np.isfinite(image)
    if valid is None:
        mask = finite
    else:
        mask = np.asarray(valid)
        if mask.shape != image.shape:
            raise ValueError(f"`{name}` has shape {mask.shape}, the image {image.shape}; pass a matching mask")
        mask = mask.astype(bool) & finite
    if mask.sum() < 16:
        raise SegmentationError(
            f"only {int(mask.sum())} valid pixels to segment; check the `{name}` mask and NaNs in the image"
        )
    return mask


def estimate_noise(image: np.ndarray, *, valid: np.ndarray | None = None) -> float:
    """Standard deviation of additive white noise, by Immerkaer's Laplacian-difference method.

    Parameters
    ----------
    image : (M, N) array
        Greyscale image.
    valid : (M, N) bool array, optional
        Pixels to use (NaN pixels are always excluded).

    Returns
    -------
    float
        Noise standard deviation in image units.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> img = 0.5 + 0.02 * rng.standard_normal((256, 256))
    >>> round(estimate_noise(img), 2)
    0.02
    """
    img = _as_image(image)
    mask = np.isfinite(img) if valid is None else (np.asarray(valid, bool) & np.isfinite(img))
    kernel = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
    # no need to fill invalid pixels (NaN): only pixels whose whole 3x3 neighbourhood is valid are used
    resp = cv2.filter2D(img, -1, kernel, borderType=cv2.BORDER_REFLECT)
    inner = cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    if inner.sum() < 16:
        return 0.0
    # the median of |response| resists edges better than the mean of the original method
    mad = float(np.median(np.abs(resp.reshape(-1)[_sample_index(inner, 500_000)])))
    return mad / 0.6745 / 6.0


def _denoise(img: np.ndarray, mask: np.ndarray, noise: float, sigma_px: float, *, levels8: bool = False) -> np.ndarray:
    """Bilateral filter whose range kernel follows the measured noise (keeps phase edges sharp).

    ``levels8`` filters 256 grey levels instead of floats when they are finer than half the noise
    (twice as fast, differences far below the noise).
    """
    fill = float(np.median(img.reshape(-1)[_sample_index(mask)]))
    filled = np.where(mask, img, np.float32(fill)).astype(np.float32, copy=False)
    if sigma_px <= 0:
        return filled
    d = int(2 * np.ceil(1.5 * sigma_px) + 1)
    sigma_color = max(3.0 * noise, 1e-4)
    lo, hi, _, _ = cv2.minMaxLoc(filled)
    scale = 255.0 / max(hi - lo, 1e-12)
    if levels8 and noise * scale >= 2.0:
        # OpenCV's 8-bit bilateral filter uses a lookup table per grey level
        grey = cv2.convertScaleAbs(filled, alpha=scale, beta=-lo * scale)
        grey = cv2.bilateralFilter(grey, d, sigma_color * scale, sigma_px, borderType=cv2.BORDER_REFLECT)
        # the Gaussian below, the way back to image units folded into its kernel and offset (one pass)
        gauss = cv2.getGaussianKernel(_gaussian_size(1.0), 1.0, cv2.CV_32F)
        return cv2.sepFilter2D(
            grey, cv2.CV_32F, gauss / np.float32(scale), gauss, delta=lo, borderType=cv2.BORDER_REFLECT
        )
    else:
        out = cv2.bilateralFilter(filled, d, sigma_color, sigma_px, borderType=cv2.BORDER_REFLECT)
    return cv2.GaussianBlur(out, (0, 0), 1.0, dst=out, borderType=cv2.BORDER_REFLECT)


def _gaussian_size(sigma_px: float) -> int:
    """Kernel size OpenCV's GaussianBlur picks for float images at ``sigma_px``."""
    return int(round(sigma_px * 8 + 1)) | 1


def _gradient(img: np.ndarray, sigma_px: float) -> np.ndarray:
    sm = cv2.GaussianBlur(img, (0, 0), sigma_px, borderType=cv2.BORDER_REFLECT)
    gx = cv2.Sobel(sm, cv2.CV_32F, 1, 0, ksize=3, borderType=cv2.BORDER_REFLECT)
    gy = cv2.Sobel(sm, cv2.CV_32F, 0, 1, ksize=3, borderType=cv2.BORDER_REFLECT)
    del sm
    return cv2.magnitude(gx, gy, gx)


@dataclass
class _Prepared:
    image: np.ndarray  # input (float32; any value, NaN included, outside the mask)
    smooth: np.ndarray  # denoised
    mask: np.ndarray  # analysed pixels
    calm: np.ndarray  # analysed pixels off the edges (the lower half of the gradient magnitude)
    noise: float  # noise standard deviation of the input


def _prepare(image: Any, valid: Any, denoise_sigma_px: float, name: str = "image", levels8: bool = False) -> _Prepared:
    img = _as_image(image, name)
    mask = _valid_mask(img, valid)
    # NaNs lie outside the mask, so the masked extremes are finite
    lo, hi, _, _ = cv2.minMaxLoc(img, mask.view(np.uint8))
    if hi - lo < 1e-6:
        raise SegmentationError(f"`{name}` is constant ({lo:.4g}) in the valid region: there are no phases to separate")
    noise = estimate_noise(img, valid=mask)
    smooth = _denoise(img, mask, noise, denoise_sigma_px, levels8=levels8)
    grad = _gradient(smooth, 1.0)
    calm = grad <= np.float32(np.quantile(grad.reshape(-1)[_sample_index(mask)], 0.5))
    del grad
    calm &= mask
    return _Prepared(img, smooth, mask, calm, noise)


def _sample(values: np.ndarray, n_max: int = 200_000) -> np.ndarray:
    """Deterministic subsample: class statistics need no more pixels than this."""
    if values.size <= n_max:
        return values
    step = values.size // n_max
    return values[::step]


def _sample_index(mask: np.ndarray, n_max: int = 200_000) -> np.ndarray:
    """Flat indices of a deterministic subsample of the True pixels of ``mask`` (about ``n_max``).

    Strides over the frame before selecting, so no full-frame selection is ever copied.
    """
    flat = mask.reshape(-1)
    step = max(int(np.count_nonzero(flat)) // n_max, 1)
    return np.flatnonzero(flat[::step]) * step


# --------------------------------------------------------------------------------------------------
# Class thresholds and per-frame normalisation
# --------------------------------------------------------------------------------------------------


def _multiotsu(values: np.ndarray, n: int) -> np.ndarray:
    lo, hi = np.quantile(values, [0.001, 0.999])
    if hi <= lo:
        raise SegmentationError("the image has almost no contrast: there are no phases to separate")
    hist, edges = np.histogram(np.clip(values, lo, hi), bins=256, range=(lo, hi))
    centres = 0.5 * (edges[:-1] + edges[1:])
    try:
        return np.asarray(threshold_multiotsu(hist=(hist, centres), classes=n), float)
    except ValueError as exc:
        raise SegmentationError(
            f"cannot find {n} intensity classes in the image ({exc}); use fewer phases or the pixel classifier"
        ) from exc


def _find_thresholds(
    values: np.ndarray, n: int, min_valley: float = _MIN_VALLEY, min_gap: float = 0.0, sizes: Sequence[int] = ()
) -> np.ndarray:
    """Class boundaries: histogram valleys when the phases form separate peaks, else multi-Otsu.

    Valleys of the log-histogram do not depend on the phase fractions, so a 1 % phase (pores,
    young Na3PO4 islands) keeps its own class while a dominant phase with grain-to-grain
    orientation contrast is not split. A class too scarce or too broad to leave a clear valley
    beside a dominant one (glass films at 5 % beside NaSICON) takes the most prominent faint valley
    (its shoulder), else is split off by the minimum-error criterion (a two-Gaussian fit) within a
    segment between the valleys found. When the phases overlap into one peak (no valley at all),
    Otsu's between-class variance decides. Valleys between classes whose medians lie less than
    ``min_gap`` apart (the noise, in the units of ``values``) do not count, nor, when ``values``
    pools several frames (``sizes``: their pixel counts, in order), valleys between two classes that
    no frame shows together.
    """
    hist, centres = _histogram(values)
    width = centres[1] - centres[0]
    frame_cum = None
    if len(sizes) > 1:
        bins = np.clip(((values - (centres[0] - 0.5 * width)) / width).astype(np.intp), 0, hist.size - 1)
        parts = np.split(bins, np.cumsum(sizes)[:-1])
        frame_cum = np.array([np.concatenate([[0], np.cumsum(np.bincount(p, minlength=hist.size))]) for p in parts])
    gap = (min_gap / width, frame_cum)
    # a small phase may leave only a shallow valley: accept it before falling back
    idx = _valley_bins(hist, n, 0.6 * min_valley, gap)
    if idx.size == 0:
        return _multiotsu(values, n)
    if idx.size < n - 1:
        # the most prominent faint valleys (a scarce phase's shoulder on a dominant peak); deeper ones
        # are the valleys already taken, or the same gaps merged with the stray pixels in them
        weak, prom = _valley_candidates(hist, _FAINT_VALLEY, gap)
        weak = weak[prom < 0.6 * min_valley][: n - 1 - idx.size]
        idx = np.sort(np.append(idx, weak)).astype(int)
    while idx.size < n - 1:
        split = _best_split(hist, idx)
        if split is None:
            return _multiotsu(values, n)
        idx = np.sort(np.append(idx, split))
    return centres[idx]


def _histogram(values: np.ndarray, n_bins: int = 256) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = np.quantile(values, [0.001, 0.999])
    if hi <= lo:
        raise SegmentationError("the image has almost no contrast: there are no phases to separate")
    hist, edges = np.histogram(np.clip(values, lo, hi), bins=n_bins, range=(lo, hi))
    return hist.astype(float), 0.5 * (edges[:-1] + edges[1:])


def _valley_bins(hist: np.ndarray, n: int, min_valley: float, gap: tuple = (0.0, None)) -> np.ndarray:
    """Bins of the up to ``n - 1`` deepest valleys of the smoothed log-histogram, sorted."""
    idx, _ = _valley_candidates(hist, min_valley, gap)
    return np.sort(idx[: n - 1])


def _valley_candidates(hist: np.ndarray, min_valley: float, gap: tuple = (0.0, None)) -> tuple[np.ndarray, np.ndarray]:
    """Valleys of the smoothed log-histogram (bins, prominences), most prominent first.

    A valley counts only between classes of at least ``_MIN_SHARE`` of the pixels: the valleys on
    both sides of a few stray pixels in the empty stretch between two phases are one gap (merged
    at its middle), and a valley cutting off a near-empty tail is dropped. ``gap`` is
    ``(min_gap_bins, frame_cum)``: nor does a valley count when the medians of the classes on its two
    sides lie less than ``min_gap_bins`` apart (the noise: a dip inside one phase's peak), or when no
    frame (rows of ``frame_cum``, the frames' cumulative histograms) holds ``_MIN_SHARE`` of its
    pixels in both (one phase seen through frame maps that disagree: the pores of frames with
    different black levels).
    """
    log_hist = ndi.gaussian_filter1d(np.log1p(hist), 2.0)
    idx, props = find_peaks(-log_hist, prominence=min_valley)
    prom = props["prominences"]
    cum = np.concatenate([[0.0], np.cumsum(hist)])
    min_count = max(_MIN_SHARE * cum[-1], 10.0)
    while idx.size:
        bounds = np.concatenate([[0], idx, [hist.size]])
        mass = cum[bounds[1:]] - cum[bounds[:-1]]
        k = int(np.argmin(mass))
        if mass[k] >= min_count:
            break
        if k == 0 or k == idx.size:
            # a near-empty end: drop the valley that cuts it off
            keep = np.ones(idx.size, bool)
            keep[0 if k == 0 else -1] = False
            idx, prom = idx[keep], prom[keep]
        else:
            # a near-empty class between two valleys: one gap, split at its middle
            idx = np.concatenate([idx[: k - 1], [(idx[k - 1] + idx[k]) // 2], idx[k + 1 :]])
            prom = np.concatenate([prom[: k - 1], [max(prom[k - 1], prom[k])], prom[k + 1 :]])
    min_gap_bins, frame_cum = gap
    while idx.size:
        bounds = np.concatenate([[0], idx, [hist.size]])
        bad = np.zeros(idx.size, bool)
        if min_gap_bins > 0:
            medians = [_bin_median(cum, i0, i1) for i0, i1 in zip(bounds[:-1], bounds[1:], strict=True)]
            bad |= np.diff(medians) < min_gap_bins
        if frame_cum is not None:
            mass = frame_cum[:, bounds[1:]] - frame_cum[:, bounds[:-1]]
            held = mass >= np.maximum(_MIN_SHARE * frame_cum[:, -1:], 10.0)
            bad |= ~np.any(held[:, :-1] & held[:, 1:], axis=0)
        if not bad.any():
            break
        # drop the least prominent of the valleys that do not count, then look again
        k = int(np.flatnonzero(bad)[np.argmin(prom[bad])])
        idx, prom = np.delete(idx, k), np.delete(prom, k)
    order = np.argsort(prom, kind="stable")[::-1]
    return idx[order], prom[order]


def _bin_median(cum: np.ndarray, i0: int, i1: int) -> float:
    """Median (fractional bin) of the histogram bins ``i0:i1``, from its cumulative sum ``cum``."""
    half = 0.5 * (cum[i0] + cum[i1])
    return float(np.interp(half, cum[i0 : i1 + 1], np.arange(i0, i1 + 1))) - 0.5


def _best_split(hist: np.ndarray, cuts: np.ndarray) -> int | None:
    """Bin at which splitting one segment of the histogram (between ``cuts``) in two lowers the
    minimum-error criterion the most, or None when no split helps.

    The criterion (J. Kittler and J. Illingworth, "Minimum error thresholding", Pattern Recognition
    19 (1986) 41-47, doi:10.1016/0031-3203(86)90030-0) is the classification error of a Gaussian
    mixture: unlike Otsu's, it places a boundary well beside a small broad class next to a large
    narrow one.
    """
    bins = np.arange(hist.size, dtype=float)
    total = hist.sum()
    bounds = np.concatenate([[0], cuts, [hist.size]]).astype(int)
    best, best_gain = None, 0.0
    for i0, i1 in zip(bounds[:-1], bounds[1:], strict=True):
        h, x = hist[i0:i1], bins[i0:i1]
        if h.size < 4:
            continue
        c0, c1, c2 = np.cumsum(h), np.cumsum(h * x), np.cumsum(h * x * x)
        whole = _error_term(c0[-1], c1[-1], c2[-1], total)
        left = _error_term(c0[:-1], c1[:-1], c2[:-1], total)
        right = _error_term(c0[-1] - c0[:-1], c1[-1] - c1[:-1], c2[-1] - c2[:-1], total)
        gain = whole - left - right
        k = int(np.argmax(gain))
        if gain[k] > best_gain:
            best, best_gain = i0 + k + 1, float(gain[k])
    return best


def _error_term(count, s1, s2, total, min_count=10.0, min_sd_bins=1.0):
    """A class's share of the minimum-error criterion, ``P ln(sigma) - P ln(P)``; classes of fewer
    than ``min_count`` pixels are not allowed (infinite), and the SD has a floor of one bin."""
    count = np.asarray(count, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = s1 / count
        var = np.maximum(s2 / count - mean * mean, min_sd_bins**2)
        share = count / total
        term = share * 0.5 * np.log(var) - share * np.log(share)
    return np.where(count >= min_count, term, np.inf)


def _valleys(values: np.ndarray, n: int, min_valley: float = _MIN_VALLEY) -> np.ndarray:
    """Up to ``n - 1`` deepest valleys of the smoothed log-histogram, sorted."""
    hist, centres = _histogram(values)
    return centres[_valley_bins(hist, n, min_valley)]


def _class_medians(values: np.ndarray, thresholds: np.ndarray, n: int) -> np.ndarray:
    cls = np.digitize(values, thresholds)
    med = np.full(n, np.nan)
    for k in range(n):
        sel = values[cls == k]
        if sel.size >= 10:
            med[k] = np.median(sel)
    return med


def _initial_map(values, thresholds_u, ia, ib, n, hint=None):
    """Start values (a, b) of a frame's map, from its histogram valleys.

    A frame may lack a phase (no Na3PO4 yet) and then shows fewer valleys than the series has
    boundaries: its valleys are matched, in order, to the subset of the shared boundaries that an
    affine map fits best.
    """
    valleys = _valleys(values, n)
    if hint is None or valleys.size == n - 1 or valleys.size < 2:
        med = _class_medians(values, _find_thresholds(values, n), n)
        return med[ia], med[ib] - med[ia]
    best, best_cost = (np.nan, np.nan), np.inf
    for subset in itertools.combinations(range(n - 1), valleys.size):
        t = thresholds_u[list(subset)]
        slope, intercept = np.polyfit(t, valleys, 1)
        if slope <= 0:
            continue
        cost = np.sum((intercept + slope * t - valleys) ** 2) / slope**2
        if hint is not None:
            # two valleys always fit exactly: the series' usual brightness and contrast decide
            cost += ((intercept - hint[0]) / hint[1]) ** 2 + np.log(slope / hint[1]) ** 2
        if cost < best_cost:
            best, best_cost = (intercept, slope), cost
    return best


#: Distance (normalised units) beyond the data at which the thresholds of an absent darkest or
#: brightest class are put (finite, so the model stays valid JSON).
_FAR = 1e3


def _present_classes(thresholds, ia, ib):
    """Thresholds of the classes a model actually has (absent phases have zero-width classes), and
    the anchors' and the number of classes in that reduced list."""
    t = np.asarray(thresholds, float)
    usable = np.unique(t[np.abs(t) < _FAR / 2])

    def reduced(k):
        return 0 if k == 0 else int(np.sum(usable <= t[k - 1]))

    return usable, reduced(ia), reduced(ib), usable.size + 1


def _normalise_frame(values, thresholds_u, ia, ib, n, n_iter=8, hint=None, from_hint=True, near_landmarks=False):
    """Affine map (a, b) with ``u = (x - a) / b`` putting the frame's anchor-class medians at 0 and 1.

    Starts from the frame's own multi-Otsu classes, then alternates classification with the shared
    thresholds and re-estimation of the anchor medians, so that phase fractions (which change between
    frames) do not move the class definitions. An anchor class holding less than ``_SCARCE_ANCHOR``
    of the pixels is not re-estimated from its median: the other anchor and the frame's valleys,
    matched to the shared thresholds, fix the map then; with ``near_landmarks``, only the valleys on
    the scarce anchor class's own boundaries when any are found (see :func:`_landmark_map`). With
    ``hint`` (the series' usual map) and ``from_hint``, the iteration also starts from the hint, and of
    the two maps the one whose classes fit the frame better (:func:`_map_error`) wins.
    """
    if hint is not None:
        lo, hi = np.quantile(values, [0.001, 0.999])
        if hi - lo < 0.5 * hint[1]:
            # (almost) one phase, e.g. a field all Na3PO4: no classes of its own to fit the map to,
            # so the series' usual brightness and contrast apply
            return float(hint[0]), float(hint[1])
    thresholds_u, ia, ib, n = _present_classes(thresholds_u, ia, ib)
    a, b = _initial_map(values, thresholds_u, ia, ib, n, hint)
    if not (np.isfinite(a) and np.isfinite(b) and b > 0):
        a, b = np.quantile(values, 0.5), max(np.quantile(values, 0.9) - np.quantile(values, 0.5), 1e-6)
    a, b = _refine_map(values, thresholds_u, ia, ib, n, a, b, n_iter, near_landmarks)
    # near the hint (within 10 % of the contrast), a start from the hint would end on the same map
    if not from_hint or hint is None or (abs(a - hint[0]) < 0.1 * hint[1] and abs(np.log(b / hint[1])) < 0.1):
        return a, b
    # the frame's valleys may be matched to the wrong boundaries (a valley next to near-black pores),
    # and the iteration then settles on other phases: start from the series' usual map too, and keep
    # the map whose classes fit the frame better
    other = _refine_map(values, thresholds_u, ia, ib, n, float(hint[0]), float(hint[1]), n_iter, near_landmarks)
    few = values[:: max(values.size // _FEW, 1)]
    return min((a, b), other, key=lambda m: _map_error(few, thresholds_u, *m))


def _refine_map(values, thresholds_u, ia, ib, n, a, b, n_iter, near_landmarks=False):
    """Iterate a frame's map (a, b) from a start: classify with the shared thresholds, re-estimate the
    anchors; see :func:`_normalise_frame`."""
    valleys = None
    for _ in range(n_iter):
        cls = np.digitize((values - a) / b, thresholds_u)
        lo_vals, hi_vals = values[cls == ia], values[cls == ib]
        if lo_vals.size < 10 or hi_vals.size < 10:
            break
        if min(lo_vals.size, hi_vals.size) < _SCARCE_ANCHOR * values.size:
            # a scarce anchor class (glass films have few off-edge pixels) has no reliable median: it
            # drifts into the flank of its neighbour, which shifts the map, which feeds it more of the
            # flank. The populous anchor's median and the frame's valleys (on the shared boundaries)
            # set the map instead.
            valleys = _valleys(values, n) if valleys is None else valleys
            scarce_lo = lo_vals.size < hi_vals.size
            anchor = (float(np.median(hi_vals)), 1.0) if scarce_lo else (float(np.median(lo_vals)), 0.0)
            scarce = ia if scarce_lo else ib
            bounds = (scarce - 1, scarce) if near_landmarks else ()
            new_a, new_b = _landmark_map(anchor, valleys, thresholds_u, a, b, bounds)
        else:
            new_a = float(np.median(lo_vals))
            new_b = float(np.median(hi_vals)) - new_a
        if new_b <= 0:
            break
        done = abs(new_a - a) < 1e-4 * b and abs(new_b - b) < 1e-4 * b
        a, b = new_a, new_b
        if done:
            break
    return float(a), float(b)


def _map_error(values, thresholds_u, a, b) -> float:
    """Minimum-error criterion (see :func:`_error_term`) of a frame's classes under the map (a, b), in
    image units: the classification likelihood of a Gaussian mixture, lower for a map whose classes
    are the frame's peaks than for one that cuts through them."""
    if not b > 0:
        return np.inf
    cls = np.digitize((values - a) / b, thresholds_u)
    count = np.bincount(cls, minlength=thresholds_u.size + 1).astype(float)
    s1 = np.bincount(cls, values, minlength=count.size)
    s2 = np.bincount(cls, values * values.astype(float), minlength=count.size)
    # in units of 1e-3 of the grey scale, the error term's SD floor of one unit keeps a spike finite; a
    # unit fixed in image units (not in units of b) keeps maps of different contrast comparable
    term = _error_term(count, s1 / _GREY_UNIT, s2 / _GREY_UNIT**2, count.sum())
    return float(np.sum(term[count >= 10]))


#: Pixels per frame enough to compare maps by their fit (likelihoods to ~1 %).
_FEW = 25_000
#: Grey-level unit of :func:`_map_error` (frames are in [0, 1]); the SD of a class is at least this.
_GREY_UNIT = 1e-3
#: An anchor class with fewer than this share of a frame's off-edge pixels has no reliable median.
_SCARCE_ANCHOR = 0.005
#: Largest distance (normalised units) of a frame's valley from a shared boundary to be matched to it.
_MATCH_TOLERANCE = 0.25


def _landmark_map(anchor, valleys, thresholds_u, a, b, bounds=()):
    """Least-squares map (a, b) through one anchor's (image median, normalised value) and the
    frame's valleys matched to the nearest shared boundaries; the current map when they are too few.

    With ``bounds`` (indices into ``thresholds_u``: the boundaries of the scarce anchor's class), only
    the valleys matched to those are used when there are any. A valley farther off, between two
    phases that are not anchors (pores and Na3PO4), sits where their changing shares and the blur of
    small pores put it: on synthetic series at 5 % glass it moved from 0.56 to 0.37 of the way
    between the two phases' levels from one frame to the next, tilting the map through it (the
    glass level 0.05 units of contrast low, 0.15 point of glass lost), while the valley next to the
    glass class stayed within 0.01 units of its shared boundary. :func:`segment_frame` maps frames this
    way; the model fit does not, while its boundaries are still being found (two landmarks leave no
    check on a valley matched to the wrong boundary: on a 5 % glass series whose valleys sit far from
    the first thresholds the fit then settled on shifted classes, 10 points off).
    """
    x, u, near = [anchor[0]], [anchor[1]], []
    for v in valleys:
        k = int(np.argmin(np.abs(thresholds_u - (v - a) / b)))
        if abs(thresholds_u[k] - (v - a) / b) <= _MATCH_TOLERANCE:
            x.append(float(v))
            u.append(float(thresholds_u[k]))
            near.append(k in bounds)
    if any(near):
        keep = [True, *near]
        x, u = [v for v, k in zip(x, keep, strict=True) if k], [v for v, k in zip(u, keep, strict=True) if k]
    if np.ptp(u) <= 0:
        return a, b
    slope, intercept = np.polyfit(u, x, 1)
    return float(intercept), float(slope)


def fit_phase_model(
    images: Any,
    *,
    valid: Any = None,
    phase_names: Sequence[str] = PHASE_NAMES,
    brightness_order: Sequence[str] = DEFAULT_BRIGHTNESS_ORDER,
    anchor_phases: Sequence[str] | None = None,
    pixel_size_um: float | None = None,
    denoise_sigma_px: float = 1.5,
    n_rounds: int = 3,
) -> PhaseModel:
    """Fit the unsupervised phase classes on one frame or on a whole series.

    Every frame is denoised and mapped to normalised intensity units in which the medians of two
    stable anchor phases are 0 and 1. The class thresholds are found by multi-Otsu on the pooled
    normalised intensities of all frames (every frame weighs the same), then each frame's map is
    re-estimated against them, a few times. Pass every frame of a series, so that a phase absent
    from some frames (Na3PO4 at t = 0) is still defined, and fractions stay comparable over time.

    The two anchor phases must be present; any other phase may be absent from every frame (no
    Na3PO4 before exposure, a dense pellet without pores). Subsets of the other phases are tried
    from the largest down; the first whose every class is populated and stands apart from its
    neighbours (gap between class medians against their robust spreads) wins, and an absent phase
    gets an empty class (two equal thresholds) rather than a split-off part of a neighbour. Fits
    whose class boundaries all lie on valleys of the pooled histogram go first; a fit is rejected
    when the darker anchor is near black while darker phases exist (pores or a shadow taken for
    glass), when the frames' anchor contrasts differ more than 1.6-fold (a frame mapped onto
    other phases), or when two neighbouring classes never occur in the same frame (one phase seen
    through frame maps that disagree). Histogram valleys between classes whose medians lie closer
    than the noise are dips inside one peak, not boundaries. Of the starts of the alternation, the
    one under which the frames are most likely wins. When a
    lone class darker than the anchors could be either of two phases, it is the darkest phase
    (pores) if its image intensity is below half the darker anchor's (near black), else the other.
    Frames showing a single phase (grey levels within the noise) are left out of the fit.

    Parameters
    ----------
    images : (M, N) array or sequence of (M, N) arrays
        Greyscale frames, float in [0, 1] (integers are scaled by their dtype's maximum); NaN marks
        pixels outside the analysed region. Frames may differ in shape.
    valid : (M, N) bool array or sequence of them, optional
        Pixels to use in each frame (True = analysed).
    phase_names : sequence of str
        Phase names in code order.
    brightness_order : sequence of str
        The same names, darkest first.
    anchor_phases : pair of str, optional
        Phases defining the normalised scale (0 and 1); default: the two brightest phases, which are
        the stable matrix phases of a NaSICON ceramic (glass and NaSICON).
    pixel_size_um : float, optional
        Accepted for symmetry with :func:`segment_frame`; the intensity model needs no scale.
    denoise_sigma_px : float
        Spatial sigma of the bilateral denoising in pixels (0 disables it).
    n_rounds : int
        Alternations between the shared thresholds and the per-frame maps.

    Returns
    -------
    PhaseModel

    Raises
    ------
    SegmentationError
        A frame is constant or has too few valid pixels, every frame shows a single phase (no
        contrast beyond the noise), or the anchor classes cannot be separated.

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> img = np.where(np.arange(128)[None, :] < 64, 0.3, 0.7) + 0.02 * rng.standard_normal((128, 128))
    >>> model = fit_phase_model(img, phase_names=("dark", "bright"), brightness_order=("dark", "bright"))
    >>> [round(m, 2) for m in model.medians]
    [0.0, 1.0]
    >>> round(model.thresholds[0], 1)
    0.5
    """
    phase_names = tuple(phase_names)
    brightness_order = tuple(brightness_order)
    _check_names(phase_names, brightness_order)
    n = len(phase_names)
    if anchor_phases is None:
        anchor_phases = brightness_order[-2:]
    anchor_phases = tuple(anchor_phases)
    if len(anchor_phases) != 2 or any(p not in phase_names for p in anchor_phases):
        raise ValueError(f"`anchor_phases` must be two names from `phase_names`, got {anchor_phases!r}")
    ia, ib = sorted(brightness_order.index(p) for p in anchor_phases)
    if ia == ib:
        raise ValueError(f"`anchor_phases` must be two different phases, got {anchor_phases!r}")
    anchor_phases = (brightness_order[ia], brightness_order[ib])
    if pixel_size_um is not None and not pixel_size_um > 0:
        raise ValueError(f"`pixel_size_um` must be positive, got {pixel_size_um!r}")
    if n_rounds < 1:
        raise ValueError(f"`n_rounds` must be >= 1, got {n_rounds!r}")

    frames = [images] if _is_single_image(images) else list(images)
    if not frames:
        raise ValueError("`images` is empty; pass at least one frame")
    if valid is None:
        valids = [None] * len(frames)
    elif _is_single_image(valid):
        if len(frames) != 1:
            raise ValueError("`valid` must be a sequence with one mask per frame when several frames are given")
        valids = [valid]
    else:
        valids = list(valid)
        if len(valids) != len(frames):
            raise ValueError(f"`valid` has {len(valids)} masks for {len(frames)} frames")

    samples, noises = [], []
    for i, (f, v) in enumerate(zip(frames, valids, strict=True)):
        prep = _prepare(f, v, denoise_sigma_px, name=f"images[{i}]" if len(frames) > 1 else "image")
        # a field of one phase only (all Na3PO4, all NaSICON) holds no class boundary: leave it out
        if not _single_phase(prep):
            samples.append(_sample(prep.smooth[prep.calm], 200_000 // len(frames) + 1000))
            noises.append(prep.noise)
    if not samples:
        raise SegmentationError(
            "the image shows a single phase or no contrast between phases (its grey levels vary no more "
            "than the noise); fit the model on frames showing the phases and pass it as `model`"
        )

    fitted = _fit_present(samples, noises, n, ia, ib, n_rounds)
    if fitted is None:
        raise SegmentationError(
            f"cannot separate the anchor phases {anchor_phases}: some class is empty or out of order; "
            "fit on more frames, use fewer phases or the pixel classifier"
        )
    present, (maps, thresholds_p, medians_p, pooled) = fitted
    thresholds, medians = _expand(present, thresholds_p, medians_p, n)
    cls = np.digitize(pooled, thresholds)
    weights = np.bincount(cls, minlength=n) / cls.size
    return PhaseModel(
        phase_names=phase_names,
        brightness_order=brightness_order,
        thresholds=tuple(float(v) for v in thresholds),
        medians=tuple(float(v) for v in medians),
        weights=tuple(float(v) for v in weights),
        anchor_phases=anchor_phases,
        intensity_offset=float(np.median([a for a, _ in maps])),
        intensity_scale=float(np.median([b for _, b in maps])),
        n_frames=len(frames),
    )


#: Smallest separation of a class from its neighbours, (median gap) / (sum of robust SDs), for a
#: non-anchor phase to count as present. A single unimodal class split in two by a threshold gives
#: about 1.4; distinct phases in BSE give 4 and more (overlapping ones about 2).
_MIN_SEPARATION = 1.8
#: The same for the two anchor phases. Higher, because NaSICON's grain-to-grain orientation
#: contrast makes it broad and multimodal: split in two it still reaches ~1.7 (glass/NaSICON >= 4).
_MIN_ANCHOR_SEPARATION = 2.5
#: A frame whose denoised grey levels span (0.1-99.9 %) less than this many noise SDs shows a single phase.
_SINGLE_PHASE_SPREAD = 3.0
#: Smallest distance of a non-anchor class median from its neighbours', in units of the anchor
#: contrast: a tiny, narrow class (the pores of frames with different black levels) may stand apart
#: from its neighbour by its own spread yet be the same phase (distinct BSE phases: >= 0.6).
_MIN_GAP = 0.35
#: Smallest pooled share of a non-anchor class for the phase to count as present.
_MIN_SHARE = 2e-4
#: A lone class darker than the anchors is the near-black darkest phase (pores) when its image
#: intensity is below this share of the darker anchor's.
_NEAR_BLACK = 0.5


def _single_phase(prep: _Prepared) -> bool:
    """True when the frame's denoised grey levels vary no more than its noise (one phase, no boundaries)."""
    lo, hi = np.quantile(prep.smooth.reshape(-1)[_sample_index(prep.mask)], [0.001, 0.999])
    # one phase: ~1.2 noise SDs after denoising; 0.1 % of a second phase already spreads it further
    return bool(hi - lo < _SINGLE_PHASE_SPREAD * prep.noise)


def _fit_classes(samples, noises, n, ia, ib, n_rounds):
    """Best of the two starts of :func:`_fit_series`, or None when no ordered fit exists.

    Two starts: every frame from its own classes, or the frames whose histogram shows every phase
    defining the boundaries and the others mapped onto them (a phase may be missing from some
    frames, e.g. no Na3PO4 yet, or glass only as thin films). A wrong start maps some frame's anchors
    onto other phases, so that frame's peaks miss the shared classes: keep the ordered fit under which
    the frames are most likely (:func:`_series_loglik`; contrast ratios between frames, as in real
    series up to ~1.4, cannot tell).
    """
    fits = []
    for use_complete in (False, True):
        try:
            fit = _fit_series(samples, noises, n, ia, ib, n_rounds, use_complete)
        except SegmentationError:
            continue
        if _ordered(fit[2]):
            fits.append((_series_loglik(samples, fit), use_complete, fit))
    if not fits:
        return None
    return max(fits, key=lambda f: (f[0], not f[1]))[2]


def _series_loglik(samples, fit) -> float:
    """Mean log-likelihood per pixel (image units, frames weighing the same) of the frames under a fit.

    Every frame is a Gaussian mixture of the shared classes: class k at ``a + b * median_k`` with SD
    ``b * sd_k`` (pooled robust SD in normalised units) and the frame's own class shares. Being in
    image units (the ``-ln b`` of the change of variable), it compares fits whose frame maps differ:
    a frame whose anchors sit on the wrong phases puts its peaks where the shared classes are not.
    """
    maps, thresholds, medians, pooled = fit
    n = len(medians)
    cls = np.digitize(pooled, thresholds)
    sd = np.array([_robust_sd(pooled[cls == k]) for k in range(n)])
    total = 0.0
    for vals, (a, b) in zip(samples, maps, strict=True):
        u = (vals[:: max(vals.size // _FEW, 1)] - a) / b
        share = np.bincount(np.digitize(u, thresholds), minlength=n) / u.size
        dens = np.zeros(u.size)
        for k in range(n):
            if share[k] > 0:
                dens += share[k] * np.exp(-0.5 * ((u - medians[k]) / sd[k]) ** 2) / sd[k]
        total += float(np.mean(np.log(np.maximum(dens, 1e-300)))) - np.log(b)
    return total / len(samples)


def _robust_sd(vals: np.ndarray) -> float:
    """SD from the median absolute deviation (at least 1e-3); infinite for fewer than 10 values."""
    if vals.size < 10:
        return np.inf
    return max(1.4826 * float(np.median(np.abs(vals - np.median(vals)))), 1e-3)


def _separation(pooled: np.ndarray, thresholds: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per class: pooled share, and separation from the nearer neighbour (see _MIN_SEPARATION)."""
    cls = np.digitize(pooled, thresholds)
    share = np.bincount(cls, minlength=n) / max(cls.size, 1)
    med = np.full(n, np.nan)
    sd = np.full(n, np.nan)
    for k in range(n):
        vals = pooled[cls == k]
        if vals.size >= 10:
            med[k] = np.median(vals)
            sd[k] = 1.4826 * np.median(np.abs(vals - med[k]))
    gaps = np.diff(med) / np.maximum(sd[:-1] + sd[1:], 1e-9)
    sep = np.full(n, np.inf)
    sep[:-1] = np.minimum(sep[:-1], gaps)
    sep[1:] = np.minimum(sep[1:], gaps)
    return share, np.nan_to_num(sep, nan=0.0)


def _fit_present(samples, noises, n, ia, ib, n_rounds):
    """Fit the classes of the phases that are present: ``(present ranks, fit)`` or None.

    The anchors are always needed; any other phase may be absent from the whole series (no Na3PO4
    before exposure, a dense pellet without pores). Subsets of the optional phases are tried from
    the largest down, and the first whose every optional class is populated and stands apart from
    its neighbours wins; a phase that is not there then gets an empty class instead of splitting a
    neighbouring phase in two. Fits whose every boundary is a valley of the pooled histogram are
    preferred: a boundary put by the minimum-error split (no valley there) may cut a class out of
    the flank of a skewed phase (NaSICON with its edge halos), so it counts only when no subset
    of the phases is separated by valleys alone. See :func:`_stands_apart` for the tests.
    """
    optional = [k for k in range(n) if k not in (ia, ib)]
    fits = {}

    def fitted(subset):
        if subset not in fits:
            ranks = sorted((*subset, ia, ib))
            fit = _fit_classes(samples, noises, len(ranks), ranks.index(ia), ranks.index(ib), n_rounds)
            sizes = [v.size for v in samples]
            fits[subset] = None if fit is None else (ranks, fit, _stands_apart(ranks, fit, optional, ia, ib, sizes))
        return fits[subset]

    for need_valleys in (True, False):
        for size in range(len(optional), -1, -1):
            candidates = [fitted(subset) for subset in itertools.combinations(optional, size)]
            passing = [
                (ranks, fit)
                for ranks, fit, (apart, on_valleys) in filter(None, candidates)
                if apart and (on_valleys or not need_valleys)
            ]
            if len(passing) == 1:
                return passing[0]
            if passing:
                return _resolve_naming(passing, ia)
    # nothing stands apart clearly (heavily overlapping phases, as in noisy SE images): all phases
    return next(((ranks, fit) for ranks, fit, _ in filter(None, fits.values())), None)


#: Largest ratio between the anchor contrasts of two frames of one series in a plausible fit.
_MAX_CONTRAST_RATIO = 1.6
#: Largest distance (normalised units) of a class boundary from a valley of the pooled histogram
#: for the boundary to count as lying on that valley.
_VALLEY_TOLERANCE = 0.1


def _stands_apart(ranks, fit, optional, ia, ib, sizes) -> tuple[bool, bool]:
    """Whether a fit is plausible and every class stands apart from its neighbours, and whether every
    boundary lies on a valley of the pooled histogram.

    Plausible: the darker anchor is not near black when darker phases exist, and the frames' anchor
    contrasts agree within ``_MAX_CONTRAST_RATIO``. Apart: both anchors reach
    ``_MIN_ANCHOR_SEPARATION``; every other class holds ``_MIN_SHARE`` of the pixels, reaches
    ``_MIN_SEPARATION`` and lies ``_MIN_GAP`` from its neighbours, and some frame (``sizes``: the
    frames' pixel counts in the pooled sample) shows it and each neighbour as two classes of
    ``_MIN_SHARE`` with a (faint) valley of its own histogram between their medians.
    """
    maps, thresholds, medians, pooled = fit
    ja, jb = ranks.index(ia), ranks.index(ib)
    share, sep = _separation(pooled, thresholds, len(ranks))
    keep = [j for j, r in enumerate(ranks) if r in optional]
    # anchors split out of one phase (a series of NaSICON and pores only) fail here
    anchors_apart = min(sep[ja], sep[jb]) >= _MIN_ANCHOR_SEPARATION
    gaps = np.diff(medians)  # normalised units: anchors 0 and 1 apart
    gap = np.minimum(np.concatenate([[np.inf], gaps]), np.concatenate([gaps, [np.inf]]))
    # the darker anchor is a matrix phase, not the near-black pores or a shadow: when darker phases
    # exist, a near-black class taken for it means the anchor classes are misplaced
    a, b = np.median([m[0] for m in maps]), np.median([m[1] for m in maps])
    plausible = ia == 0 or a >= _NEAR_BLACK * (a + b)
    # one series, one set of phases: the frames' anchor contrasts agree within the gain changes of a
    # microscope session; a much larger spread means some frame's anchors sit on other phases
    plausible = plausible and float(np.ptp(np.log([m[1] for m in maps]))) <= np.log(_MAX_CONTRAST_RATIO)
    # two neighbouring classes that no frame shows together, as two peaks with a valley between
    # them, are one phase seen through frame maps that disagree (the pores of one frame a class of
    # their own beside those of the other, plus a few stray pixels)
    together = np.zeros(len(ranks) - 1, bool)
    for u in np.split(pooled, np.cumsum(sizes)[:-1]):
        share_f = np.bincount(np.digitize(u, thresholds), minlength=len(ranks)) / max(u.size, 1)
        hist_f, centres_f = _histogram(u)
        valleys_f = centres_f[_valley_candidates(hist_f, _FAINT_VALLEY)[0]]
        between = (valleys_f[:, None] > medians[:-1]) & (valleys_f[:, None] < medians[1:])
        together |= between.any(axis=0) & (share_f[:-1] >= _MIN_SHARE) & (share_f[1:] >= _MIN_SHARE)
    apart = (
        plausible
        and anchors_apart
        and all(share[j] >= _MIN_SHARE and sep[j] >= _MIN_SEPARATION and gap[j] >= _MIN_GAP for j in keep)
        and all(together[j - 1] for j in keep if j > 0)
        and all(together[j] for j in keep if j < len(ranks) - 1)
    )
    hist, centres = _histogram(pooled)
    valleys = centres[_valley_bins(hist, hist.size, 0.6 * _MIN_VALLEY)]
    on_valleys = valleys.size > 0 and all(np.min(np.abs(valleys - t)) <= _VALLEY_TOLERANCE for t in thresholds)
    return apart, bool(on_valleys)


def _resolve_naming(passing, ia):
    """Several subsets fit equally (the classes are the same, only their names differ): a lone class
    darker than the anchors is the darkest phase (pores, near black) only if its image intensity is
    well below the darker anchor's, else the phase next to the anchors."""
    ranks, fit = passing[0]
    maps, _, medians, _ = fit
    ja = ranks.index(ia)
    a, b = np.median([m[0] for m in maps]), np.median([m[1] for m in maps])
    dark_level = a + b * medians[0]
    anchor_level = a + b * medians[ja]
    near_black = anchor_level > 0 and dark_level < _NEAR_BLACK * anchor_level
    # subsets keeping darker ranks sort first
    ordered = sorted(passing, key=lambda rf: rf[0])
    return ordered[0] if near_black else ordered[-1]


def _expand(present, thresholds_p, medians_p, n):
    """Thresholds and medians of all ``n`` classes from those of the ``present`` ones (ranks).

    An absent class gets zero width: two equal thresholds between its present neighbours, or, for
    an absent darkest (brightest) class, thresholds ``_FAR`` below (above) the data. Its median is
    put at that boundary, or at the nearest present class median.
    """
    thresholds = np.empty(n - 1)
    for k in range(n - 1):
        # threshold k separates the classes <= k from those > k
        below = sum(r <= k for r in present)
        if below == 0:
            thresholds[k] = medians_p[0] - _FAR
        elif below == len(present):
            thresholds[k] = medians_p[-1] + _FAR
        else:
            thresholds[k] = thresholds_p[below - 1]
    medians = np.empty(n)
    for k in range(n):
        if k in present:
            medians[k] = medians_p[present.index(k)]
        elif 0 < k < n - 1 and abs(thresholds[k]) < _FAR / 2:
            medians[k] = thresholds[k]
        else:
            medians[k] = medians_p[0] if k < present[0] else medians_p[-1]
    return thresholds, medians


def _ordered(medians: np.ndarray) -> bool:
    return bool(np.all(np.isfinite(medians)) and np.all(np.diff(medians) > 0))


#: Noise SD of the denoised grey levels per noise SD of the input (bilateral filter of 1.5 px; the
#: grey-level SD of off-edge NaSICON, orientation contrast included, is 0.30-0.46 of the input noise).
_DENOISED_NOISE = 0.33


def _fit_series(samples, noises, n, ia, ib, n_rounds, use_complete):
    """Alternate shared thresholds (normalised units) and per-frame maps; see fit_phase_model.

    Two classes count only when their medians lie more than the frames' noise SD apart (``noises``,
    image units): a dip inside one phase's peak is no class boundary.
    """
    complete = [i for i, v in enumerate(samples) if _valleys(v, n).size == n - 1] if use_complete else []
    complete = complete or list(range(len(samples)))
    maps = []
    for i in complete:
        vals = samples[i]
        med = _class_medians(vals, _find_thresholds(vals, n, min_gap=_DENOISED_NOISE * noises[i]), n)
        if not med[ib] > med[ia]:
            raise SegmentationError("the anchor phases have the same brightness; cannot normalise the frame")
        maps.append((med[ia], med[ib] - med[ia]))
    for round_ in range(n_rounds):
        used = complete if round_ == 0 else range(len(samples))
        pooled = np.concatenate([(samples[i] - a) / b for i, (a, b) in zip(used, maps, strict=True)])
        noise_u = _DENOISED_NOISE * float(np.median([noises[i] / b for i, (_, b) in zip(used, maps, strict=True)]))
        sizes = [samples[i].size for i in used]
        thresholds = _find_thresholds(pooled, n, min_gap=noise_u, sizes=sizes)
        medians = _class_medians(pooled, thresholds, n)
        if not medians[ib] > medians[ia]:
            raise SegmentationError("the anchor phases collapsed onto each other; check `brightness_order`")
        span = medians[ib] - medians[ia]
        thresholds = (thresholds - medians[ia]) / span
        hint = None
        if use_complete:
            hint = (
                float(np.median([a + b * medians[ia] for a, b in maps])),
                float(np.median([b for _, b in maps])) * span,
            )
        # the fit compares its own two starts by the series likelihood (see _fit_classes); a second
        # start from the hint here would pull every frame towards the complete frames' map
        maps = [_normalise_frame(v, thresholds, ia, ib, n, hint=hint, from_hint=False) for v in samples]
    pooled = np.concatenate([(v - a) / b for v, (a, b) in zip(samples, maps, strict=True)])
    return maps, thresholds, _class_medians(pooled, thresholds, n), pooled


def _is_single_image(obj: Any) -> bool:
    return isinstance(obj, np.ndarray) and obj.ndim == 2


# --------------------------------------------------------------------------------------------------
# Unsupervised segmentation of one frame
# --------------------------------------------------------------------------------------------------


def segment_frame(
    image: Any,
    *,
    model: PhaseModel | None = None,
    valid: Any = None,
    pixel_size_um: float | None = None,
    return_probabilities: bool = False,
    phase_names: Sequence[str] = PHASE_NAMES,
    brightness_order: Sequence[str] = DEFAULT_BRIGHTNESS_ORDER,
    denoise_sigma_px: float = 1.5,
    gradient_sigma_px: float = 0.0,
    seed_fraction: float = 0.8,
    boundary_band_px: int = 2,
    blob_sigma_px: float = 6.0,
    blob_contrast: float = 3.0,
    film_depth: float = 0.05,
    film_width_px: float = 2.0,
    min_object_area_um2: float = 0.05,
    min_object_area_px: int = 4,
    se_relief: bool = False,
    top_edge_level: float | None = 0.45,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Segment one frame into phases with the unsupervised model.

    The frame is mapped onto the shared class definitions of ``model`` by its own brightness and
    contrast. The most typical pixels of each class in flat areas, and compact dark blobs, seed a
    marker watershed on the gradient magnitude, which places every boundary on the intensity edge:
    the blurred mid-grey rim between a bright grain and a dark phase is split where the edge is
    steepest instead of being called glass, and bright edge halos join the phase they surround. The
    edges of a darkest phase beyond the anchors (pores) are then moved to the midway level on the
    lightly smoothed input, which the watershed on the denoised image puts inside small pores.

    Parameters
    ----------
    image : (M, N) array
        Greyscale frame, float in [0, 1] (integers are scaled by their dtype's maximum); NaN pixels
        are outside the analysed region.
    model : PhaseModel, optional
        Class definitions shared by a series (from :func:`fit_phase_model`). None fits a model on
        this frame alone with ``phase_names`` and ``brightness_order``.
    valid : (M, N) bool array, optional
        Analysed pixels (True). Others get code 255.
    pixel_size_um : float, optional
        Pixel size; converts ``min_object_area_um2`` to pixels. Without it ``min_object_area_px`` is used.
    return_probabilities : bool
        Also return class probabilities (from the intensity model, spatially smoothed).
    phase_names, brightness_order : sequence of str
        Used only when ``model`` is None (see :func:`fit_phase_model`).
    denoise_sigma_px : float
        Spatial sigma of the bilateral denoising in pixels (0 disables it).
    gradient_sigma_px : float
        Extra Gaussian smoothing (pixels) of the denoised image before the watershed floods it in
        order of grey-level steps; 0 = none.
    seed_fraction : float
        Fraction of each class's flat pixels, those farthest from the class boundaries, that seed
        the watershed, in (0, 1]. Smaller is safer on low-contrast images.
    boundary_band_px : int
        How far (pixels) the watershed may move a boundary from where the intensity classes change:
        pixels of a class farther inside it than this seed the watershed even off the flat areas
        (half as far for the darkest class), so the flood covers only a band along the boundaries.
        Widen it for images whose edges are shaded over many pixels (secondary-electron relief);
        0 seeds flat pixels only (slowest).
    blob_sigma_px : float
        Scale (pixels) of the local background against which compact dark blobs (small particles,
        young islands) are detected and seeded even where the image is not flat; 0 disables.
    blob_contrast : float
        How much darker than the local background, in noise standard deviations, a blob must be.
    film_depth : float
        Thin dark lines inside the brightest phase (glass films between touching grains) that are
        darker than their sides by this fraction of the contrast between the brightest phase and the
        next (plus a tenth of the noise SD) are given to that next phase, as wide as their area
        measured through the blur (see :func:`_thin_films`); 0 disables. 0.05 fitted the synthetic
        model selection sweep (seeds 0-3) and its hold-out seeds (0.04 fits them as well but lowers the
        real Super images, which have no films, by 0.001-0.002 IoU).
    film_width_px : float
        Largest half-width, in pixels, of such a film (its area is measured over twice that).
    min_object_area_um2 : float
        Connected regions of one phase smaller than this are merged into their surroundings.
    min_object_area_px : int
        The same in pixels, used when ``pixel_size_um`` is None.
    se_relief : bool
        Secondary-electron relief mode, for etched surfaces imaged with SE (not BSE) contrast, where
        the darkest phase is recessed and relief shading (one side of each object dark, the other
        light) spreads the grey levels of the phases over each other. The darkest phase is then told
        from the others by enclosure instead of by grey level: a pixel whose rays (8 directions) first
        cross a rising intensity edge is inside a darker object, one whose rays first cross a falling
        edge is outside (see :func:`_relief_labels`). Such pixels seed a watershed on the gradient
        magnitude; the frame's intensity classes only name the brighter phases. ``seed_fraction``,
        ``boundary_band_px``, ``gradient_sigma_px`` and the blob options are not used. Measured on
        the seven real Super images (SE, Ni superalloy, island IoU): lshr_15kx_3kv_0 0.43 -> 0.88,
        the others 0.91-0.95 -> 0.945-0.96; 1-1.5 s more CPU per 2048x1600 frame (the watershed
        floods the undecided pixels, up to 40 % of the frame). Off by default (BSE images need none
        of it).
    top_edge_level : float or None
        Where the brightest phase and the next (NaSICON and glass) are split, as a fraction of the way
        from the next phase's median to the brightest's. Near the mid level (0.5) a blurred edge is
        crossed near its true position whatever the phases' shares; 0.45 fitted the synthetic model
        selection sweep (seeds 0-3) and its hold-out seeds best. None uses the model's threshold, the
        likelihood boundary, which sits nearer the level of the rarer phase (0.2-0.55 of the way,
        depending on the glass content) and so gives the mixed pixels along glass edges and faint
        films to the commoner one: on synthetic series at 5 % glass, -0.8 to +0.8 point of glass per
        frame.

    Returns
    -------
    phases : (M, N) uint8 array
        Phase codes (index into ``model.phase_names``), 255 outside the valid region.
    probabilities : (P, M, N) float32 array
        Only when ``return_probabilities``: probability of each phase (code order), 0 outside.

    Raises
    ------
    SegmentationError
        The frame is constant in the valid region or has too few valid pixels; or, without
        ``model``, it shows a single phase (fit the model on the series and pass it).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> img = np.full((96, 96), 0.7, np.float32)
    >>> img[20:60, 20:60] = 0.3
    >>> img += 0.02 * rng.standard_normal(img.shape).astype(np.float32)
    >>> phases = segment_frame(img, phase_names=("dark", "bright"), brightness_order=("dark", "bright"))
    >>> abs(int((phases == 0).sum()) - 1600) <= 10  # a 40 x 40 square
    True
    """
    if not 0 < seed_fraction <= 1:
        raise ValueError(f"`seed_fraction` must be in (0, 1], got {seed_fraction!r}")
    if boundary_band_px < 0:
        raise ValueError(f"`boundary_band_px` must be >= 0, got {boundary_band_px!r}")
    if pixel_size_um is not None and not pixel_size_um > 0:
        raise ValueError(f"`pixel_size_um` must be positive, got {pixel_size_um!r}")
    if min_object_area_um2 < 0 or min_object_area_px < 0:
        raise ValueError("`min_object_area_um2` and `min_object_area_px` must be >= 0")
    if top_edge_level is not None and not 0 < top_edge_level < 1:
        raise ValueError(f"`top_edge_level` must be in (0, 1) or None, got {top_edge_level!r}")
    if model is None:
        model = fit_phase_model(
            image,
            valid=valid,
            phase_names=phase_names,
            brightness_order=brightness_order,
            denoise_sigma_px=denoise_sigma_px,
        )
    elif not isinstance(model, PhaseModel):
        raise TypeError(f"`model` must be a PhaseModel (from fit_phase_model), got {type(model).__name__}")

    # the series model is fitted on float-filtered frames (its fit is sensitive to small changes of
    # the sample); a frame is only mapped onto it, which 8-bit filtering does not disturb
    prep = _prepare(image, valid, denoise_sigma_px, levels8=True)
    n = model.n_phases
    ia, ib = (model.brightness_order.index(p) for p in model.anchor_phases)
    thresholds = np.asarray(model.thresholds)
    a, b = _normalise_frame(
        # two anchor medians and a few valleys: 100,000 pixels pin them to ~0.1 % of the contrast
        prep.smooth.reshape(-1)[_sample_index(prep.calm, 100_000)],
        thresholds,
        ia,
        ib,
        n,
        hint=(model.intensity_offset, model.intensity_scale) if model.intensity_scale > 0 else None,
        near_landmarks=True,
    )
    # Work in image units (thresholds mapped by the frame's a + b u) on uint8 work arrays (ranks,
    # seeds, labels): no normalised float copy of the frame is needed.
    thresholds_img = a + b * thresholds
    if top_edge_level is not None and _both_top_present(thresholds):
        lo, hi = model.medians[n - 2], model.medians[n - 1]
        thresholds_img[n - 2] = a + b * (lo + top_edge_level * (hi - lo))
    ranks = np.zeros(prep.smooth.shape, np.uint8)
    for t in thresholds_img:
        ranks += prep.smooth >= np.float32(t)  # = np.digitize(u, thresholds)

    if se_relief:
        labels = _relief_labels(prep, ranks)
    else:
        seeds = _seeds(
            prep, ranks, n, seed_fraction, blob_sigma_px, blob_contrast, thresholds_img, int(boundary_band_px)
        )
        # tiles are exact only while every unseeded stretch is narrower than their margin: with no
        # band (boundary_band_px=0) whole regions may be unseeded, so flood the frame in one piece
        tile_px = 512 if boundary_band_px > 0 else max(prep.smooth.shape)
        labels = _flood(prep.smooth, prep.mask, seeds, gradient_sigma_px, tile_px=tile_px)
        del seeds
    labels = _assign_lines(labels, prep.smooth, a + b * np.asarray(model.medians), prep.mask)
    # parts of the region that no seed reaches keep their pixel-wise class
    unreached = labels == 0
    labels -= 1
    np.copyto(labels, ranks, where=unreached)
    del unreached, ranks
    if film_depth > 0 and n >= 2:
        labels = _thin_films(prep, labels, model, b, film_depth, film_width_px)
    if n >= 4 and abs(thresholds[0]) < _FAR / 2:  # not when the model has no darkest phase
        labels = _thin_lines_to_darkest(labels, prep.mask, n)
    if ia > 0 and abs(thresholds[0]) < _FAR / 2:
        # a darkest phase darker than both anchors (pores), present: its edges to the midway level. Not
        # when the darkest phase is an anchor itself (two-phase images): on the real Super SE images,
        # whose islands are shaded by relief, that lowered the mean island IoU from 0.864 to 0.839
        labels = _dark_edges_midway(prep, labels, a + b * np.asarray(model.medians), ia)
    codes = model.order_codes
    out = None
    if return_probabilities:
        u = (prep.smooth - np.float32(a)) / np.float32(b)
        probs = _probabilities(u, thresholds, width=max(prep.noise / b, 1e-3))
        del u
        out = np.zeros((n, *labels.shape), np.float32)
        for rank, code in enumerate(codes):
            out[code] = np.where(prep.mask, probs[..., rank], 0)
        del probs
    # the float frames are no longer needed: free them before the labelling below
    mask = prep.mask
    del prep
    min_px = (
        int(round(min_object_area_um2 / pixel_size_um**2)) if pixel_size_um is not None else int(min_object_area_px)
    )
    if min_px > 1:
        labels = _remove_specks(labels, mask, min_px)

    lut = np.full(256, OUTSIDE, np.uint8)
    lut[:n] = codes
    phases = cv2.LUT(labels, lut)
    phases[~mask] = OUTSIDE
    return phases if out is None else (phases, out)


def _both_top_present(thresholds: np.ndarray) -> bool:
    """Whether a model's brightest class and the next both have pixels (an absent class has zero width
    or a threshold ``_FAR`` off the data, see :func:`_expand`)."""
    n = len(thresholds) + 1
    present = abs(thresholds[n - 2]) < _FAR / 2
    return bool(present and (n == 2 or thresholds[n - 2] > thresholds[n - 3]))


def _flood(
    smooth: np.ndarray, mask: np.ndarray, seeds: np.ndarray, sigma_px: float, tile_px: int = 512, margin_px: int = 32
) -> np.ndarray:
    """Marker watershed (OpenCV's, ~10x faster than scikit-image's on large frames), tile by tile.

    OpenCV floods in order of the grey-level step between neighbouring pixels, so boundaries settle
    where the (lightly smoothed) image changes fastest, like a watershed on the gradient magnitude.
    Its cost grows with the number of unseeded pixels (see :func:`_seeds`), and on a whole large frame
    its queues jump across the frame: tiles of ``tile_px`` that fit the CPU cache run ~4x faster. Each
    tile is flooded with a ``margin_px`` border of context and only its core kept; the unseeded pixels
    form bands a few pixels wide, so no flood reaches a core from farther than the margin. Returns
    ``seeds``-style uint8 labels; 0 on the one-pixel watershed lines, where no seed reached and outside
    the valid region.
    """
    sm = cv2.GaussianBlur(smooth, (0, 0), sigma_px, borderType=cv2.BORDER_REFLECT) if sigma_px > 0 else smooth
    # (50,000 pixels put the 0.1 % tails within a grey level or two: only the step order matters)
    lo, hi = np.quantile(sm.reshape(-1)[_sample_index(mask, 50_000)], [0.001, 0.999])
    scale = 255.0 / max(hi - lo, 1e-6)
    outside = int(seeds.max()) + 1
    h, w = seeds.shape
    out = np.empty((h, w), np.uint8)
    # every step tile by tile, so the work arrays stay in cache
    for y0 in range(0, h, tile_px):
        for x0 in range(0, w, tile_px):
            ya, xa = max(y0 - margin_px, 0), max(x0 - margin_px, 0)
            window = np.s_[ya : min(y0 + tile_px + margin_px, h), xa : min(x0 + tile_px + margin_px, w)]
            grey = sm[window] * np.float32(scale)
            grey -= np.float32(lo * scale)
            grey = np.clip(grey, 0, 255, out=grey).astype(np.uint8)
            markers = seeds[window].astype(np.int32)
            markers[~mask[window]] = outside
            cv2.watershed(cv2.merge([grey, grey, grey]), markers)
            core = markers[y0 - ya : y0 - ya + tile_px, x0 - xa : x0 - xa + tile_px]
            # lines (-1) and the outside label become 0
            core[core == outside] = 0
            out[y0 : y0 + tile_px, x0 : x0 + tile_px] = np.clip(core, 0, None)
    return out


def _assign_lines(labels: np.ndarray, image: np.ndarray, medians: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Give each one-pixel watershed line to the darker or brighter adjacent region, whichever
    class median (``medians``, in the units of ``image``, by rank) its intensity is closer to (its own
    intensity class would draw a thin ring of an intermediate phase along every boundary). Works in
    place on the uint8 ``labels``."""
    lines = labels == 0
    lines &= mask
    flat = np.flatnonzero(lines)
    if flat.size == 0:
        return labels
    # the lines are a small share of the frame: read only their 3x3 neighbourhoods (a zero border
    # stands for "no region", like the unlabelled pixels)
    width = labels.shape[1] + 2
    padded = cv2.copyMakeBorder(labels, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0).reshape(-1)
    centre = flat + 2 * (flat // labels.shape[1]) + width + 1
    brighter = np.zeros(flat.size, np.uint8)
    darker = np.full(flat.size, 255, np.uint8)
    for offset in (-width - 1, -width, -width + 1, -1, 1, width - 1, width, width + 1):
        value = padded[centre + offset]
        np.maximum(brighter, value, out=brighter)
        value[value == 0] = 255
        np.minimum(darker, value, out=darker)
    has_dark = darker <= len(medians)
    has_bright = brighter > 0
    med = np.concatenate([[np.nan], medians])
    value = image.reshape(-1)[flat]
    d_dark = np.abs(value - med[np.where(has_dark, darker, 0)])
    d_bright = np.abs(value - med[brighter])
    pick = np.where(has_dark & (~has_bright | (d_dark <= d_bright)), darker, brighter)
    fill = has_dark | has_bright
    labels.reshape(-1)[flat[fill]] = pick[fill]
    return labels


_FLOAT32_LOWEST, _FLOAT32_HIGHEST = float(np.finfo(np.float32).min), float(np.finfo(np.float32).max)


def _seeds(prep, ranks, n, seed_fraction, blob_sigma_px, blob_contrast, thresholds, band_px):
    """Watershed markers (uint8, rank + 1): typical flat pixels of each class, class interiors, and
    compact dark blobs. ``thresholds`` are the class boundaries in image units; see
    :func:`segment_frame` for ``band_px``."""
    smooth = prep.smooth
    idx = _sample_index(prep.calm, 50_000)  # enough for the class quantiles, a quarter of the sorting
    flat_v = smooth.reshape(-1)[idx]
    flat_r = ranks.reshape(-1)[idx]
    inside = np.zeros(smooth.shape, np.uint8)
    for k in range(n):
        vals = flat_v[flat_r == k]
        if vals.size == 0:
            continue
        # keep the part of the class farthest from its neighbours: darkest end of the darkest class,
        # brightest end of the brightest, the middle of the others
        if k == 0:
            lo, hi = -np.inf, np.quantile(vals, seed_fraction)
        elif k == n - 1:
            lo, hi = np.quantile(vals, 1 - seed_fraction), np.inf
        else:
            lo, hi = np.quantile(vals, [0.5 - seed_fraction / 2, 0.5 + seed_fraction / 2])
        # class k is thresholds[k - 1] <= v < thresholds[k]: one interval of grey levels, selected in
        # one pass (inRange is inclusive at both ends; the largest float32 below a threshold stands
        # for "below it")
        if k > 0:
            lo = max(lo, np.float32(thresholds[k - 1]))
        if k < n - 1:
            hi = min(hi, np.nextafter(np.float32(thresholds[k]), np.float32(-np.inf)))
        lo, hi = max(lo, _FLOAT32_LOWEST), min(hi, _FLOAT32_HIGHEST)
        cv2.bitwise_or(inside, cv2.inRange(smooth, float(np.float32(lo)), float(np.float32(hi))), dst=inside)
    inside = cv2.bitwise_and(inside, prep.calm.view(np.uint8)).view(bool)  # 0/1: a valid boolean array
    deep = None
    if blob_sigma_px > 0 and blob_contrast > 0:
        # compact dark blobs: darker than their surroundings by blob_contrast noise SDs
        depth = _blur_large(smooth, blob_sigma_px)
        depth -= smooth
        deep = depth > np.float32(blob_contrast * max(prep.noise, 1e-6))
        del depth
    # Pixels whose whole window has their class are interior, edges or not: seeding them
    # changes little but leaves the watershed (whose cost grows with the unseeded pixels) only a
    # band along boundaries. The darkest class may use half the band: a pore's blurred rim passes
    # through the Na3PO4 grey for a pixel or two, which must not seed it, but is never darkest-class
    # itself (half the band for the brightest classes too shifts glass/NaSICON edges by about
    # 0.5 point of glass). Not inside dark blobs: a small pore is blurred into the Na3PO4 grey all over (its
    # class is decided below).
    pure = np.zeros(smooth.shape, bool)
    if band_px > 0:
        wide = np.ones((2 * band_px + 1,) * 2, np.uint8)
        pure = cv2.dilate(ranks, wide) == cv2.erode(ranks, wide)
        if deep is not None:
            # (where a small pore's blurred interior can lie: the classes between pore and glass)
            pure &= ~(deep & (ranks > 0) & (ranks < n - 2))
        half = (band_px + 1) // 2
        narrow = np.ones((2 * half + 1,) * 2, np.uint8)
        pure_ext = cv2.dilate(ranks, narrow) == cv2.erode(ranks, narrow)
        pure_ext &= ranks == 0
        pure |= pure_ext
        del pure_ext
    inside |= pure
    del pure
    seeds = np.where(inside, ranks + np.uint8(1), np.uint8(0))
    del inside
    if deep is not None:
        # only off-edge blob pixels: the blurred rim of a pore passes through the grey levels of the
        # phases between pore and matrix, and must not seed them
        blobs = prep.calm & deep
        seeds[blobs] = ranks[blobs] + 1
        del blobs
        # A blob a few pixels across may have no flat pixel: seed its darkest point too (a rim pixel
        # always has a darker neighbour, so rims stay unseeded). The denoising blur lifts a small
        # pore's core into the Na3PO4 grey, so the core's class comes from the lightly smoothed raw
        # image, which the beam blur alone leaves near the true level.
        deep &= prep.mask
        flat = np.flatnonzero(deep)
        del deep
        flat = flat[smooth.reshape(-1)[flat] <= cv2.erode(smooth, np.ones((3, 3), np.uint8)).reshape(-1)[flat]]
        rows, cols = np.divmod(flat, smooth.shape[1])
        seeds.reshape(-1)[flat] = np.digitize(_raw_level(prep, rows, cols), thresholds) + 1
    seeds[~prep.mask] = 0
    return seeds


def _raw_level(prep: _Prepared, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Input image at the given pixels, smoothed by a 3x3 Gaussian (sigma 0.6 px) over the valid
    neighbours (invalid ones take the denoised value); computed only there."""
    h, w = prep.image.shape
    weights = cv2.getGaussianKernel(3, 0.6).ravel()
    image, smooth, mask = prep.image.reshape(-1), prep.smooth.reshape(-1), prep.mask.reshape(-1)

    def reflected(idx, size):
        idx = np.abs(idx)
        return np.where(idx >= size, 2 * size - 2 - idx, idx)  # reflect at the border

    # flat indices of the neighbours, read once each from the flat arrays (faster than 2-D indexing)
    starts = [reflected(rows + dy, h) * w for dy in (-1, 0, 1)]
    offsets = [reflected(cols + dx, w) for dx in (-1, 0, 1)]
    total = np.zeros(rows.size, np.float64)
    for start, wy in zip(starts, weights, strict=True):
        for offset, wx in zip(offsets, weights, strict=True):
            flat = start + offset
            value = image.take(flat)
            inside = mask.take(flat)
            if not inside.all():
                value = np.where(inside, value, smooth.take(flat))
            total += wy * wx * value
    return total


def _blur_large(img: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian blur of a smooth background at a large sigma, computed on a 2x-4x smaller image."""
    f = int(np.clip(sigma_px // 2, 1, 4))
    h, w = img.shape
    if f == 1 or min(h, w) < 8 * f:
        return cv2.GaussianBlur(img, (0, 0), sigma_px, borderType=cv2.BORDER_REFLECT)
    small = cv2.resize(img, ((w + f - 1) // f, (h + f - 1) // f), interpolation=cv2.INTER_AREA)
    # the box average of the downsampling already blurs by about f / sqrt(12)
    sigma_small = np.sqrt(max(sigma_px**2 - f**2 / 12, 0.25)) / f
    small = cv2.GaussianBlur(small, (0, 0), sigma_small, borderType=cv2.BORDER_REFLECT)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def _thin_films(prep, labels, model, b, film_depth, film_width_px):
    """Give thin dark lines inside the brightest phase to the next darker phase, as wide as their area.

    A glass film one or two pixels wide between touching grains is blurred into a faint dark line
    that no intensity threshold reaches; a black top-hat measures how much darker than both sides
    it is, in units of the contrast between the two phases. The blur spreads a film over more pixels
    than it covers but keeps its area: a top-hat twice as wide, summed over a window, is the glass
    area there (in pixels, once divided by the contrast), and of the film pixels found, only the
    share that this area fills is kept, the darkest ones (the profile across a film is taken as a
    triangle from its darkest pixel down to the detection level). Measured on a hand-made film
    between haloed grains (:func:`tests.test_segment._film_between_grains`), the excess width per
    image row: 1.5 px film +1.3-1.5 -> +0.35-0.45 px, 2 px +1.3 -> +0.55-0.65 px; a 3 px film, which
    the watershed already finds, still gains a rim (+0.6 -> +0.85 px): the step does not yet subtract
    the glass already labelled beside a film (doing so lost glass on the synthetic sweep, where the
    rim offsets the glass lost at haloed edges).
    """
    n = model.n_phases
    # 16-bit grey levels (far finer than the noise): OpenCV's morphology on them is twice as fast
    lo, hi, _, _ = cv2.minMaxLoc(prep.smooth, prep.mask.view(np.uint8))
    scale = 65535.0 / max(hi - lo, 1e-12)
    grey = cv2.addWeighted(prep.smooth, scale, prep.smooth, 0.0, -lo * scale, dtype=cv2.CV_16U)
    contrast = scale * b * (model.medians[n - 1] - model.medians[n - 2])
    # a tenth of the noise SD on top: on noisy frames (dose 60 e-/px) the top-hat of the denoised noise
    # would otherwise pass for faint films
    level = film_depth * contrast + _FILM_NOISE_SD * scale * prep.noise
    size = 2 * int(round(film_width_px)) + 1
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
    film = cv2.morphologyEx(grey, cv2.MORPH_BLACKHAT, kernel, borderType=cv2.BORDER_REFLECT) > level
    film &= labels == n - 1
    film &= prep.mask
    flat = np.flatnonzero(film)
    if flat.size == 0:
        return labels
    # the area: a top-hat twice as wide takes in the whole blurred profile of a film that narrow
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * size - 1, 2 * size - 1))
    depth = cv2.morphologyEx(grey, cv2.MORPH_BLACKHAT, kernel, borderType=cv2.BORDER_REFLECT)
    del grey
    window = (_FILM_WINDOW_PX, _FILM_WINDOW_PX)
    # (the noise's top-hat, below half the detection level, is no film area)
    _, part = cv2.threshold(depth, level / 2, 0, cv2.THRESH_TOZERO)
    area = cv2.boxFilter(part, cv2.CV_32F, window, normalize=False).reshape(-1)[flat]
    del part
    count = cv2.boxFilter(film.view(np.uint8), -1, window, normalize=False).reshape(-1)[flat]
    share = np.clip(area / (np.float32(contrast) * np.maximum(count, 1)), 0, 1)
    peak = cv2.dilate(depth, np.ones((3, 3), np.uint8)).reshape(-1)[flat].astype(np.float32)
    keep = depth.reshape(-1)[flat] >= peak - share * (peak - np.float32(level))
    labels.reshape(-1)[flat[keep]] = n - 2
    return labels


#: Noise SDs added to the film detection level (see :func:`_thin_films`)
_FILM_NOISE_SD = 0.1
#: Window (pixels) over which a film's area is summed: several pixels along it average its noise
_FILM_WINDOW_PX = 7


def _dark_edges_midway(prep: _Prepared, labels: np.ndarray, levels: np.ndarray, lowest_anchor: int) -> np.ndarray:
    """Move the boundary of the darkest class by up to a pixel to the midway level between it and its
    neighbour, read on the lightly smoothed input (:func:`_raw_level`), in place.

    The watershed puts boundaries where the denoised image is steepest. Around a small convex object
    that line lies inside the true edge, the more so the wider the blur (by about ``sigma**2 / 2R``
    for a disk of radius ``R``): the denoising (about 1.5-2 px in all) shrank pores of 30-100 px on
    synthetic frames by 15-18 % of their area, of 100-300 px by 8 %, about 0.2 point of the frame at
    2 % pores, all given to NaSICON. On the input, blurred only by the beam, the midway level is
    nearer the true edge (shrinkage 11-14 % and 4-5 %). Only between classes whose levels (``levels``,
    image units, by rank) lie ``_MIDWAY_MIN_CONTRAST`` noise SDs apart: pores beside glass or NaSICON
    (6 noise SDs at 60 e-/px), not pores beside Na3PO4 at that dose (2), where one pixel's level
    says little. A dark pixel is given only to an anchor class or a brighter one (rank >=
    ``lowest_anchor``), never to a class between (Na3PO4): the blurred rim of a pore or crack passes
    through that class's level, so such a neighbour is usually the rim, and growing it into the pore
    made flickering false Na3PO4 islands along the marker's crack (a false formation and dissolution
    in bench_track's segmented series, seed 2). Rim pixels of such a class may still go to the pore.
    """
    k = np.ones((3, 3), np.uint8)
    dark = (labels == 0).view(np.uint8)
    ring = cv2.dilate(dark, k) != cv2.erode(dark, k)
    ring &= prep.mask
    flat = np.flatnonzero(ring)
    if flat.size == 0:
        return labels
    # the phase across the boundary: a ring pixel's own class outside the dark region, the brightest
    # class among its neighbours inside it
    own = labels.reshape(-1)[flat]
    other = np.where(own > 0, own, cv2.dilate(labels, k).reshape(-1)[flat])
    sure = np.zeros(256, bool)
    sure[: levels.size] = levels - levels[0] >= _MIDWAY_MIN_CONTRAST * prep.noise
    sure[0] = False
    keep = sure[other] & ((own > 0) | (other >= lowest_anchor))
    flat, other = flat[keep], other[keep]
    midway = np.append(0.5 * (levels[0] + levels), np.zeros(256 - levels.size))
    rows, cols = np.divmod(flat, labels.shape[1])
    other[_raw_level(prep, rows, cols) < midway[other]] = 0
    labels.reshape(-1)[flat] = other
    return labels


#: Smallest contrast, in noise SDs of the input, between the darkest class and a neighbour for
#: :func:`_dark_edges_midway` to move their boundary: a pixel one step off the edge (blur 0.8 px) then
#: differs from the midway level by ~1.6 noise SDs of the 3x3-smoothed input (0.55 of the raw noise).
_MIDWAY_MIN_CONTRAST = 4.0


def _thin_lines_to_darkest(labels: np.ndarray, mask: np.ndarray, n: int, half_width_px: float = 2.5) -> np.ndarray:
    """Give regions of the classes between the darkest and the two brightest (Na3PO4) that are nowhere
    thicker than about ``2 * half_width_px`` to the darkest class, in place.

    A crack or a pore's rim a few pixels wide is blurred into the Na3PO4 grey; islands are compact
    (the smallest the tracker counts, 0.1 µm², are 7 px across at 0.05 µm/px), so a region that
    thin is the darker phase seen through the blur, not an island.
    """
    for rank in range(1, n - 2):
        region = (labels == rank) & mask
        if not region.any():
            continue
        count, comp = cv2.connectedComponents(region.view(np.uint8), connectivity=8)
        thick = cv2.distanceTransform(region.view(np.uint8), cv2.DIST_L2, 3)
        # the class is a small share of the frame: decide only on its pixels
        flat = np.flatnonzero(region)
        comp = comp.reshape(-1)[flat]
        has_thick = np.zeros(count, bool)
        has_thick[comp[thick.reshape(-1)[flat] > half_width_px]] = True
        labels.reshape(-1)[flat[~has_thick[comp]]] = 0
    return labels


def _probabilities(u: np.ndarray, thresholds: np.ndarray, width: float) -> np.ndarray:
    """Ordinal-logistic class probabilities (H, W, P) from the normalised intensity, lightly smoothed."""
    # P(class <= k) = sigmoid((t_k - u) / width)
    cum = 1.0 / (1.0 + np.exp(np.clip((u[..., None] - thresholds) / width, -50, 50)))
    ones = np.ones((*u.shape, 1), np.float32)
    zeros = np.zeros((*u.shape, 1), np.float32)
    cum = np.concatenate([zeros, cum.astype(np.float32), ones], axis=-1)
    probs = np.diff(cum, axis=-1)
    probs = cv2.GaussianBlur(probs, (0, 0), 1.0, borderType=cv2.BORDER_REFLECT)
    if probs.ndim == 2:
        probs = probs[..., None]
    return probs / np.maximum(probs.sum(-1, keepdims=True), 1e-12)


def _remove_specks(labels: np.ndarray, mask: np.ndarray, min_px: int) -> np.ndarray:
    """Merge connected regions of one phase smaller than ``min_px`` into the nearest other phase
    (in place on the uint8 ``labels``)."""
    # one labelling of regions of equal phase (all phases at once); outside pixels are background
    regions = label(np.where(mask, labels, np.uint8(255)), background=255, connectivity=1)
    small = np.bincount(regions.reshape(-1)) < min_px
    small[0] = False
    if not small.any():
        return labels
    flat = np.flatnonzero(small[regions])
    del regions
    if flat.size == np.count_nonzero(mask):
        return labels
    # grow the surrounding phases into the specks (they are a few pixels across)
    filled = labels + np.uint8(1)
    filled[~mask] = 0
    filled_flat = filled.reshape(-1)
    filled_flat[flat] = 0
    kernel = np.ones((3, 3), np.uint8)
    for _ in range(int(np.ceil(np.sqrt(min_px))) + 2):
        todo = flat[filled_flat[flat] == 0]
        if todo.size == 0:
            break
        filled_flat[todo] = cv2.dilate(filled, kernel).reshape(-1)[todo]
    value = filled_flat[flat]
    done = value > 0
    labels.reshape(-1)[flat[done]] = value[done] - 1
    return labels


#: SE relief mode: gradient magnitudes above this quantile start an intensity edge, which continues
#: through those above the lower one (hysteresis, as in Canny's detector)
_RELIEF_EDGE_QUANTILES = (0.7, 0.9)
#: Extra smoothing (px) of the denoised frame before its edges are found: relief texture and noise
#: inside the objects must not break the rays' view of the enclosing edge
_RELIEF_EDGE_SIGMA_PX = 2.0
#: An edge pixel counts for a ray only where the ray crosses it at least this steeply (cosine between
#: the ray and the gradient): along an edge the sign of the step is noise
_RELIEF_MIN_COS = 0.3
#: Share of the rays that must agree (rising first: inside; falling first: outside) for a pixel to seed
_RELIEF_AGREEMENT = 0.8
#: Fewest rays that must meet an edge at all for a pixel to seed
_RELIEF_MIN_RAYS = 4


def _first_steps(step: np.ndarray, shift: int) -> tuple[np.ndarray, np.ndarray]:
    """Value of the first nonzero of ``step`` (int8) met on the ray from each pixel that moves one row
    down and ``shift`` (-1, 0 or 1) columns right per step (forward, the pixel included), and on the
    opposite ray (backward); 0 where the ray leaves the frame first.

    One pass per direction over the rows, each row from its neighbour's answer (a row loop costs a
    fraction of index accumulation over the whole frame)."""
    h, w = step.shape
    forward = np.empty_like(step)
    backward = np.empty_like(step)
    # the answer of the previous row, padded by one "none" on each side for the column shift
    previous = np.zeros(w + 2, step.dtype)
    for out, rows, offset in ((forward, range(h - 1, -1, -1), shift), (backward, range(h), -shift)):
        previous[:] = 0
        ahead = previous[1 + offset : 1 + offset + w]
        for r in rows:
            row = step[r]
            current = np.where(row != 0, row, ahead)
            previous[1:-1] = current
            out[r] = current
    return forward, backward


def _enclosure_votes(smooth: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel, how many of the 8 rays (axes and diagonals) first cross an intensity edge that
    rises along the ray, and how many one that falls (uint8 counts)."""
    g = cv2.GaussianBlur(smooth, (0, 0), _RELIEF_EDGE_SIGMA_PX, borderType=cv2.BORDER_REFLECT)
    gx = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3, borderType=cv2.BORDER_REFLECT)
    gy = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3, borderType=cv2.BORDER_REFLECT)
    del g
    magnitude = cv2.magnitude(gx, gy)
    lo, hi = np.quantile(magnitude.reshape(-1)[_sample_index(mask)], _RELIEF_EDGE_QUANTILES)
    # Canny on the given derivatives (16-bit, the strong edges at 1000; far stronger ones clipped)
    scale = np.float32(1000.0 / max(hi, 1e-12))
    dx16, dy16 = (np.clip(np.round(d * scale), -32767, 32767).astype(np.int16) for d in (gx, gy))
    edges = cv2.Canny(dx16, dy16, lo * scale, hi * scale, L2gradient=True)
    del dx16, dy16
    # edge pixels that a ray along x, y or a diagonal crosses steeply enough (cosine with the gradient)
    edges = ((edges > 0) & mask).view(np.int8)
    steep = np.float32(_RELIEF_MIN_COS) * magnitude
    up = np.zeros(smooth.shape, np.uint8)
    down = np.zeros(smooth.shape, np.uint8)
    diagonal = np.float32(np.sqrt(0.5))
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        along = gx if dy == 0 else gy if dx == 0 else (gx * np.float32(dx) + gy) * diagonal
        step = (along > steep).view(np.int8) - (along < -steep).view(np.int8)
        step *= edges
        if dy == 0:  # along the rows: walk the columns of the transposed frame
            forward, backward = (a.T for a in _first_steps(np.ascontiguousarray(step.T), 0))
        else:
            forward, backward = _first_steps(step, dx)
        # a step met going forward rises by its sign; going backward, by the opposite sign
        up += forward > 0
        up += backward < 0
        down += forward < 0
        down += backward > 0
    return up, down


def _relief_labels(prep: _Prepared, ranks: np.ndarray) -> np.ndarray:
    """Labels (uint8, rank + 1; 0 where no seed reaches) for ``segment_frame(se_relief=True)``: pixels
    enclosed by rising edges seed the darkest class, pixels outside them their intensity class among
    the others, and a watershed on the gradient magnitude settles the pixels in between.

    With secondary electrons an etched, recessed phase shows a dark rim on the side facing away from
    the detector and a light one on the other, so its grey levels overlap the surrounding phase's (on
    the real Super image lshr_15kx_3kv_0 the best single threshold reaches 0.65 island IoU). The step
    across its boundary keeps its sign all round, though: seen from inside, every ray leaving the
    object first crosses an edge where the intensity rises; seen from the surroundings, rays first
    cross an edge where it falls (into a darker object). Pixels on whose rays most agree seed; so do
    pixels none of whose rays meets a rising edge first, even when most leave the frame without
    meeting any (the surroundings of a few, scattered objects).
    """
    up, down = _enclosure_votes(prep.smooth, prep.mask)
    total = up.astype(np.float32) + down
    decided = total >= _RELIEF_MIN_RAYS
    share = up / np.maximum(total, 1)
    decided_outside = decided | (up == 0)
    del up, down
    seeds = np.zeros(ranks.shape, np.int32)
    outside = decided_outside & (share <= 1 - _RELIEF_AGREEMENT)
    del decided_outside
    seeds[outside] = np.maximum(ranks[outside], 1) + 1
    seeds[decided & (share >= _RELIEF_AGREEMENT)] = 1
    seeds[~prep.mask] = 0
    del decided, share, outside
    # Flood only the unseeded pixels and the seeds next to them (the same result as over the whole
    # frame). A watershed on the gradient rather than OpenCV's grey-level flood: its boundaries sit on
    # the steepest edge, which the relief shading leaves in place (island IoU +0.02-0.03 on all seven
    # Super images).
    unseeded = (prep.mask & (seeds == 0)).view(np.uint8)
    region = prep.mask & cv2.dilate(unseeded, np.ones((3, 3), np.uint8)).view(bool)
    flooded = watershed(_gradient(prep.smooth, 1.0), np.where(region, seeds, 0), mask=region)
    np.copyto(seeds, flooded, where=region)
    return seeds.astype(np.uint8)


# --------------------------------------------------------------------------------------------------
# Trainable pixel classifier
# --------------------------------------------------------------------------------------------------


#: Feature scales from this one up are filtered on the image shrunk 2x (see `_pixel_features`).
_HALF_RES_SIGMA_PX = 4.0


def _standardise(img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Robust intensity standardisation: median 0, interquartile range 1 over the valid pixels.

    Makes features of frames with different brightness and contrast comparable, so a forest
    trained on one frame applies to others.
    """
    vals = img[mask]
    q25, q50, q75 = np.quantile(vals, [0.25, 0.5, 0.75])
    scale = q75 - q25
    if scale <= 1e-6:
        scale = float(vals.std())
    if scale <= 1e-6:
        raise SegmentationError("the image is constant in the valid region: there are no phases to classify")
    out = (np.where(mask, img, q50) - q50) / scale
    return out.astype(np.float32)


def _pixel_features(
    img: np.ndarray,
    mask: np.ndarray,
    sigmas: np.ndarray,
    anchors: tuple[float, float] | None = None,
    where: Any = None,
    relief: bool = False,
) -> np.ndarray:
    """(n, F) float32 features (Fortran order) of the pixels ``where`` selects: per scale the smoothed intensity,
    gradient magnitude, both Hessian eigenvalues and the local standard deviation, plus differences
    of Gaussians between scales; with ``relief`` also the enclosure share (:func:`_enclosure_share`).

    ``anchors`` = (offset, scale) maps the image so that two stable phases sit at 0 and 1; without
    it the image is standardised by its median and interquartile range. ``where`` is a bool mask
    (training: the scribbled pixels) or a tuple of slices (prediction: a grid); None = every pixel.
    The filters run on the whole image, the arithmetic after them only on the selected pixels.
    Scales of ``_HALF_RES_SIGMA_PX`` and more are filtered on the image shrunk 2x (cascaded from the
    previous scale, which has removed everything that could alias), at a quarter of the cost.
    """
    if anchors is None:
        z = _standardise(img, mask)
    else:
        offset, scale = anchors
        z = ((np.where(mask, img, offset + 0.5 * scale) - offset) / scale).astype(np.float32)
    if where is None:
        where = (slice(None), slice(None))
    # on the grid of every 2nd pixel a half-size plane holds exactly the selected pixels
    half_grid = isinstance(where, tuple) and all(
        part.start in (None, 0) and part.stop is None and part.step == 2 for part in where
    )

    def at(plane, shrunk):
        if shrunk and half_grid:
            return plane.ravel()
        if shrunk:  # back to full size (bilinear), then select
            plane = _upsample(plane[..., None], z.shape, 2)[0]
        return plane[where].ravel()

    columns = [at(z, False)]
    z2 = z * z
    smoothed = []
    prev = None  # (sigma, blurred image, blurred square) of the previous scale
    for s in sigmas:
        shrunk = s >= _HALF_RES_SIGMA_PX and prev is not None
        if shrunk:
            prev_s, prev_g, prev_g2 = prev
            if prev_g.shape == z.shape:  # first shrunk scale: sample the previous (full-size) one
                prev_g, prev_g2 = (np.ascontiguousarray(p[::2, ::2]) for p in (prev_g, prev_g2))
            extra = float(np.sqrt(s * s - prev_s * prev_s)) / 2  # in half-size pixels
            g = cv2.GaussianBlur(prev_g, (0, 0), extra, borderType=cv2.BORDER_REFLECT)
            g2_plane = cv2.GaussianBlur(prev_g2, (0, 0), extra, borderType=cv2.BORDER_REFLECT)
            spacing = np.float32(2.0)
        else:
            g = cv2.GaussianBlur(z, (0, 0), float(s), borderType=cv2.BORDER_REFLECT)
            g2_plane = cv2.GaussianBlur(z2, (0, 0), float(s), borderType=cv2.BORDER_REFLECT)
            spacing = np.float32(1.0)
        prev = (float(s), g, g2_plane)
        g_at = at(g, shrunk)
        smoothed.append(g_at)
        gx, gy, hxx, hyy, hxy = (
            at(cv2.Sobel(g, cv2.CV_32F, dx, dy, ksize=3, borderType=cv2.BORDER_REFLECT), shrunk)
            for dx, dy in ((1, 0), (0, 1), (2, 0), (0, 2), (1, 1))
        )
        # derivatives per full-size pixel, scale-normalised
        s1 = np.float32(s) / spacing
        s2 = s1 * s1
        trace_half = 0.5 * s2 * (hxx + hyy)
        root = s2 * np.sqrt(0.25 * (hxx - hyy) ** 2 + hxy**2)
        g2 = at(g2_plane, shrunk)
        columns += [
            g_at,
            np.sqrt(gx * gx + gy * gy) * s1,
            trace_half + root,
            trace_half - root,
            np.sqrt(np.maximum(g2 - g_at * g_at, 0)),
        ]
    columns += [smoothed[i] - smoothed[i + 1] for i in range(len(smoothed) - 1)]
    if relief:
        columns.append(at(_enclosure_share(img, mask), False))
    # one contiguous row per feature, returned transposed (Fortran order): filling the columns of a
    # C-ordered (n, F) array one by one costs 8x more (0.1 s per 2048x1600 frame), and the forest
    # reads either layout as fast
    out = np.empty((len(columns), columns[0].size), np.float32)
    for k, column in enumerate(columns):
        out[k] = column
    return out.T


def _downscaled(
    img: np.ndarray, mask: np.ndarray, scribbles: np.ndarray, factor: int, noise: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A copy of a training image, its mask and scribbles at 1/``factor`` of the size, with the noise
    restored to the original level (area averaging lowers white noise by ``factor``).

    Objects appear ``factor`` times smaller, so the forest also learns phases in objects smaller than
    any scribbled one (small precipitates that strokes kept off the boundaries never reach).
    """
    height, width = img.shape
    size = (max(width // factor, 1), max(height // factor, 1))
    fill = float(np.median(img[mask]))
    small = cv2.resize(np.where(mask, img, fill).astype(np.float32), size, interpolation=cv2.INTER_AREA)
    extra_sd = noise * np.sqrt(max(1.0 - 1.0 / factor**2, 0.0))
    small = small + np.float32(extra_sd) * rng.standard_normal(small.shape).astype(np.float32)
    small_mask = cv2.resize(mask.view(np.uint8), size, interpolation=cv2.INTER_NEAREST).view(bool)
    small_scribbles = cv2.resize(scribbles.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
    return small, small_mask, small_scribbles.astype(np.int64)


def _upsample(grid: np.ndarray, shape: tuple[int, int], step: int) -> np.ndarray:
    """Bilinear interpolation of (h, w, C) values sampled at ``[::step, ::step]`` back to ``shape``,
    as (C, M, N) planes."""
    if step == 1:
        return np.ascontiguousarray(np.moveaxis(grid, -1, 0))
    # exact map: output pixel (r, c) reads grid position (r / step, c / step)
    matrix = np.array([[1.0 / step, 0, 0], [0, 1.0 / step, 0]], np.float64)
    out = np.empty((grid.shape[-1], *shape), grid.dtype)
    for k in range(grid.shape[-1]):
        # straight into its plane: stacking separate planes would copy every full-size plane once more
        cv2.warpAffine(
            np.ascontiguousarray(grid[..., k]),
            matrix,
            (shape[1], shape[0]),
            dst=out[k],
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_REPLICATE,
        )
    return out


def _argmax_planes(planes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index (int32) and value of the largest of (P, M, N) planes per pixel, the first on ties.

    A loop over the few planes: numpy's argmax over a short axis is several times slower.
    """
    best = np.zeros(planes.shape[1:], np.int32)
    top = planes[0].copy()
    for k in range(1, planes.shape[0]):
        best[planes[k] > top] = k
        np.maximum(top, planes[k], out=top)
    return best, top


def _blob_cores(smooth: np.ndarray, noise: float, sigma_px: float, contrast: float) -> np.ndarray:
    """Darkest pixel (3x3 minimum) of each compact dark blob: darker than its surroundings (a Gaussian
    of ``sigma_px``) by more than ``contrast`` noise standard deviations."""
    depth = _blur_large(smooth, sigma_px)
    depth -= smooth
    cores = depth > np.float32(contrast * max(noise, 1e-6))
    cores &= smooth <= cv2.erode(smooth, np.ones((3, 3), np.uint8))
    return cores


#: Bilateral denoising (px) before the enclosure share of the classifier's SE relief mode: the relief
#: texture inside objects must not break the rays' view of the enclosing edge (on the real Super image
#: lshr_15kx_3kv_0, 1.5 px: IoU 0.88-0.91 over three scribble seeds; 3 px: 0.91-0.92)
_RELIEF_DENOISE_SIGMA_PX = 3.0


def _enclosure_share(img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Share (float32, 0-1) of each pixel's rays that first cross a rising intensity edge (see
    :func:`_relief_labels`); 0.5 where no ray meets an edge."""
    smooth = _denoise(img, mask, estimate_noise(img, valid=mask), _RELIEF_DENOISE_SIGMA_PX, levels8=True)
    up, down = _enclosure_votes(smooth, mask)
    total = up.astype(np.float32) + down
    return np.where(total > 0, up / np.maximum(total, 1), np.float32(0.5)).astype(np.float32)


def _dark_particles(
    img: np.ndarray,
    smooth: np.ndarray,
    mask: np.ndarray,
    dark: np.ndarray,
    dark_proba: np.ndarray,
    sigma_px: float,
    contrast: float,
    min_proba: float,
) -> np.ndarray:
    """Small dark particles (bool) outside ``dark`` found by a matched filter: peaks of the Laplacian of
    Gaussian of ``img`` at ``sigma_px`` (the scale of a disc of radius ``sigma_px * sqrt(2)``) above
    ``contrast`` times its robust spread over the frame, where ``dark_proba`` exceeds ``min_proba``;
    each grown to the connected pixels of ``smooth`` darker than midway between its core and its
    surroundings (a Gaussian of twice ``sigma_px``) within ``2.5 * sigma_px``.

    The response is divided by its own spread (median absolute deviation), so the threshold is in
    units of the filtered noise and texture of each frame, whatever its contrast.
    """
    log = cv2.Laplacian(cv2.GaussianBlur(img, (0, 0), sigma_px, borderType=cv2.BORDER_REFLECT), cv2.CV_32F)
    sample = log.reshape(-1)[_sample_index(mask)]
    spread = 1.4826 * float(np.median(np.abs(sample - np.median(sample))))
    peaks = log > np.float32(contrast * max(spread, 1e-12))
    peaks &= log >= cv2.dilate(log, np.ones((3, 3), np.uint8))
    peaks &= mask & ~dark & (dark_proba > min_proba)
    surroundings = _blur_large(smooth, 2 * sigma_px)
    out = np.zeros(smooth.shape, bool)
    radius = int(np.ceil(2.5 * sigma_px))
    h, w = smooth.shape
    # a loop over the few peaks (hundreds per megapixel) on windows of a particle's size
    for y, x in zip(*np.nonzero(peaks), strict=True):
        y0, x0 = max(y - radius, 0), max(x - radius, 0)
        window = smooth[y0 : y + radius + 1, x0 : x + radius + 1]
        core = float(smooth[max(y - 1, 0) : y + 2, max(x - 1, 0) : x + 2].min())
        below = (window < core + 0.5 * (surroundings[y, x] - core)).view(np.uint8)
        _, parts = cv2.connectedComponents(below, connectivity=4)
        part = parts[y - y0, x - x0]
        if part:
            out[y0 : y0 + window.shape[0], x0 : x0 + window.shape[1]] |= parts == part
    return out & mask


#: Least probability of the darkest phase at a particle's peak (``PixelClassifier(particle_sigma_px=...)``;
#: on lshr_15kx_3kv_0 0.35 found 10-15 fewer of the tertiary precipitates, 0.15 and 0.25 the same IoU)
_PARTICLE_MIN_PROBA = 0.15

#: Boundary refinement (:func:`_refine_boundaries`): pixels within this distance of a boundary are
#: reassigned; the local levels of the two sides are taken from the pixels 1-5 px from it, weighted
#: by a Gaussian of 4 px (on lshr_15kx_3kv_0, 6 px or sides 2-6 px off: 0.002-0.004 less IoU).
_REFINE_BAND_PX = 3
_REFINE_SIDE_PX = (1.0, 5.0)
_REFINE_SIGMA_PX = 4.0


def _refine_boundaries(smooth: np.ndarray, mask: np.ndarray, dark: np.ndarray) -> np.ndarray:
    """``dark`` (bool) with each pixel near its boundary reassigned to the side whose local level it
    is closer to: darker than midway between the local means of the two sides is dark.

    A watershed puts a boundary on the steepest edge; where relief shading (SE images) tilts the
    intensity step, that is up to 2 px off the midway level on one side of every object.
    """
    inside = cv2.distanceTransform((dark & mask).view(np.uint8), cv2.DIST_L2, 5)
    outside = cv2.distanceTransform((~dark & mask).view(np.uint8), cv2.DIST_L2, 5)
    band = mask & (np.where(dark, inside, outside) <= _REFINE_BAND_PX)
    # the local levels are needed on the band only (a few percent of the frame)
    rows, cols = np.nonzero(band)
    lo, hi = _REFINE_SIDE_PX
    levels = []
    seen = np.ones(rows.size, bool)
    for distance in (inside, outside):
        side = ((distance > lo) & (distance <= hi)).astype(np.float32)
        weight = _blur_large(side, _REFINE_SIGMA_PX)[rows, cols]
        total = _blur_large(side * smooth, _REFINE_SIGMA_PX)[rows, cols]
        levels.append(total / np.maximum(weight, 1e-6))
        # both sides must be seen (a few percent of the Gaussian's weight)
        seen &= weight > 0.02
    out = dark.copy()
    rows, cols = rows[seen], cols[seen]
    out[rows, cols] = smooth[rows, cols] < 0.5 * (levels[0][seen] + levels[1][seen])
    return out


#: Tiles (px) of the classifier's marker watershed and the context flooded around each (:func:`_watershed_tiled`)
_WATERSHED_TILE_PX = 512
_WATERSHED_MARGIN_PX = 32


def _watershed_tiled(
    gradient: np.ndarray,
    seeds: np.ndarray,
    region: np.ndarray,
    tile_px: int = _WATERSHED_TILE_PX,
    margin_px: int = _WATERSHED_MARGIN_PX,
) -> np.ndarray:
    """scikit-image's marker watershed of ``gradient`` from ``seeds`` within ``region``, tile by tile.

    Its priority queue starts with every seed pixel; on a whole 2048x1600 frame it outgrows the CPU
    cache, and tiles of ``tile_px`` run twice as fast (0.58 -> 0.29 s). Each tile is flooded with a
    ``margin_px`` border of context and only its core kept: the unseeded pixels of
    :meth:`PixelClassifier.predict` lie within a few pixels of a seed (at most 12 px on the synthetic
    2048x1600 frame), so no flood reaches a core from beyond the margin (labels identical to the
    whole-frame watershed there). Where an unsure area is wider than the margin (a classifier far from
    its training images), a core pixel may be claimed by another nearby seed than in one whole-frame
    flood, and one no seed in its window reaches stays 0 (the caller keeps the forest's class there).
    Returns int32 labels, 0 outside ``region``.
    """
    h, w = seeds.shape
    out = np.zeros((h, w), np.int32)
    for y0 in range(0, h, tile_px):
        for x0 in range(0, w, tile_px):
            core = np.s_[y0 : y0 + tile_px, x0 : x0 + tile_px]
            if not region[core].any():
                continue
            ya, xa = max(y0 - margin_px, 0), max(x0 - margin_px, 0)
            window = np.s_[ya : y0 + tile_px + margin_px, xa : x0 + tile_px + margin_px]
            labels = watershed(gradient[window], seeds[window], mask=region[window])
            out[core] = labels[y0 - ya : y0 - ya + tile_px, x0 - xa : x0 - xa + tile_px]
    return out


class PixelClassifier:
    """Random-forest pixel classifier on multi-scale features, trained from scribbles.

    Parameters
    ----------
    phase_names : sequence of str
        Phase names in code order; scribble value ``k`` (k > 0) means code ``k - 1``.
    sigma_min, sigma_max : float
        Smallest and largest feature scale in pixels (scales are spaced by factors of two).
    n_estimators : int
        Trees in the forest.
    max_samples_per_phase : int
        Labelled pixels per phase used for training (a random subset when there are more).
    smoothing_sigma_px : float
        Gaussian smoothing of the predicted probabilities (spatial regularisation); 0 (default)
        disables it. Smoothing widens the band of unsure pixels along every boundary, which the
        watershed then floods: on synthetic BSE frames (12 frames, 1 % scribbles) 1 px lowered the
        mean IoU from 0.863 to 0.839 and took 0.25 s more per 2048x1600 frame; on noisy SE images
        (the real Super set) 1 px keeps isolated over-confident pixels from seeding (IoU 0.84 -> 0.91
        on lshr_15kx_3kv_0).
    seed_probability : float
        :meth:`predict` keeps the forest's answer where its probability exceeds this and lets a
        marker watershed on the gradient decide the rest (boundaries go to the intensity edges);
        0 takes the most probable phase everywhere.
    normalise : {'anchors', 'iqr'}
        How each image's intensities are put on a common scale before the features. ``'anchors'``
        (default): the two brightest scribbled phases are located in every image by the unsupervised
        fit and mapped to 0 and 1, which holds across a time series whose brightness, contrast and
        phase mix change (Na3PO4 grows). ``'iqr'``: median and interquartile range, for sets of
        images whose phase mix is stable but whose phases the unsupervised fit cannot separate
        (strong relief shading, SE images). Either way, scribble a frame that shows every phase.
    train_downscale_factors : sequence of int
        The training images are also used shrunk by these factors (noise restored to the original
        level), so that phases are recognised in objects smaller than any scribbled one: strokes
        stay off phase boundaries and never cover small particles. Empty: the images as they are.
    blob_sigma_px, blob_contrast : float
        Small particles of the darkest scribbled phase (about 10 px across, such as tertiary
        precipitates or small pores) are never scribbled and the forest is rarely sure of them;
        without a watershed seed they vanish into the surrounding phase. So the darkest pixel of a
        compact dark blob (darker than a Gaussian of ``blob_sigma_px`` around it by more than
        ``blob_contrast`` noise standard deviations) seeds the darkest phase where that is the
        forest's best guess (with ``seed_probability > 0``). Measured: pore IoU 0.69 -> 0.84 on 12
        synthetic frames, island IoU +0.01-0.02 on the real Super images. ``blob_sigma_px=0``
        disables it.
    se_relief : bool
        Secondary-electron relief mode (see ``segment_frame``'s ``se_relief``): the share of each
        pixel's rays that first cross a rising intensity edge (1 inside a recessed, darker object, 0
        outside) is one more feature. Measured on the seven real Super images (1.5 % scribbles):
        IoU on the scribbled image 0.91-0.96 -> 0.91-0.97, and on lshr_15kx_3kv_0 with two other
        scribble seeds 0.79 / 0.86 -> 0.92 / 0.91; trained on one image and applied to the other six,
        mean 0.895 -> 0.944. Costs about 0.35 s more CPU per 2048x1600 frame in :meth:`predict`.
        Off by default.
    particle_sigma_px, particle_contrast : float
        Small particles of the darkest scribbled phase that the forest leans towards but is unsure of
        (no seed: they fall to the surrounding phase) are found by a matched filter instead: peaks of
        the Laplacian of Gaussian at ``particle_sigma_px`` (about a third of the particle diameter)
        higher than ``particle_contrast`` times the filter's robust spread over the frame, where the
        forest gives the darkest phase a probability of at least 0.15, each grown to the pixels darker
        than midway between its core and its surroundings. Measured on lshr_15kx_3kv_0 (1.5 %
        scribbles, three seeds, with ``se_relief``): 2 px, island IoU +0.004-0.006 (with
        ``refine_boundaries`` 8-10 of its 107 small precipitates stay missed, 49-55 without either).
        0 (default) disables it.
    refine_boundaries : bool
        After the watershed, move every boundary of the darkest scribbled phase (pixels within 3 px) to
        the level midway between the local means of its two sides. The watershed puts boundaries on
        the steepest edge, which relief shading (SE images) shifts by 1-2 px on one side of each
        object. Measured on lshr_15kx_3kv_0 (three scribble seeds): island IoU +0.002, +0.003 after
        the particle search. Both options together on the seven Super images (``se_relief``): IoU on
        the scribbled image 0.909-0.967 -> 0.918-0.969, trained on one and applied to the other six
        mean 0.944 -> 0.949; about 0.15 s more CPU per 2048x1600 frame in :meth:`predict`. Off by
        default.
    predict_step_px : int
        The forest classifies every ``predict_step_px``-th pixel along each axis and the probabilities
        are interpolated in between (4x less work at 2; the boundaries are placed on the intensity
        edges by :meth:`predict` anyway). 1 classifies every pixel.
    random_state : int
        Seed of the forest, of the subsampling and of the noise added to shrunk training images.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> img = np.where(np.arange(64)[None, :] < 32, 0.2, 0.8) * np.ones((64, 1))
    >>> img = (img + 0.05 * rng.standard_normal((64, 64))).astype(np.float32)
    >>> scribbles = np.zeros((64, 64), int)
    >>> scribbles[10:12, 5:20] = 1
    >>> scribbles[10:12, 44:60] = 2
    >>> clf = PixelClassifier(phase_names=("dark", "bright"), n_estimators=20).fit(img, scribbles)
    >>> phases = clf.predict(img)
    >>> float((phases[:, :30] == 0).mean()) > 0.95, float((phases[:, 34:] == 1).mean()) > 0.95
    (True, True)
    """

    def __init__(
        self,
        *,
        phase_names: Sequence[str] = PHASE_NAMES,
        sigma_min: float = 1.0,
        sigma_max: float = 8.0,
        n_estimators: int = 100,
        max_samples_per_phase: int = 20_000,
        smoothing_sigma_px: float = 0.0,
        seed_probability: float = 0.99,
        normalise: str = "anchors",
        train_downscale_factors: Sequence[int] = (2,),
        predict_step_px: int = 2,
        random_state: int = 0,
        blob_sigma_px: float = 4.0,
        blob_contrast: float = 2.5,
        se_relief: bool = False,
        particle_sigma_px: float = 0.0,
        particle_contrast: float = 3.0,
        refine_boundaries: bool = False,
    ):
        phase_names = tuple(phase_names)
        if normalise not in ("anchors", "iqr"):
            raise ValueError(f"`normalise` must be 'anchors' or 'iqr', got {normalise!r}")
        if len(phase_names) < 2 or len(set(phase_names)) != len(phase_names):
            raise ValueError(f"`phase_names` needs at least two distinct names, got {phase_names!r}")
        if not 0 < sigma_min <= sigma_max:
            raise ValueError(f"need 0 < `sigma_min` <= `sigma_max`, got {sigma_min!r}, {sigma_max!r}")
        if n_estimators < 1:
            raise ValueError(f"`n_estimators` must be >= 1, got {n_estimators!r}")
        if max_samples_per_phase < 1:
            raise ValueError(f"`max_samples_per_phase` must be >= 1, got {max_samples_per_phase!r}")
        self.phase_names = phase_names
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self.n_estimators = int(n_estimators)
        self.max_samples_per_phase = int(max_samples_per_phase)
        if not 0 <= seed_probability < 1:
            raise ValueError(f"`seed_probability` must be in [0, 1), got {seed_probability!r}")
        self.smoothing_sigma_px = float(smoothing_sigma_px)
        self.seed_probability = float(seed_probability)
        self.normalise = normalise
        factors = tuple(int(f) for f in train_downscale_factors)
        if any(f < 2 for f in factors):
            raise ValueError(f"`train_downscale_factors` must be integers >= 2, got {tuple(train_downscale_factors)!r}")
        if int(predict_step_px) < 1:
            raise ValueError(f"`predict_step_px` must be >= 1, got {predict_step_px!r}")
        self.train_downscale_factors = factors
        self.predict_step_px = int(predict_step_px)
        self.random_state = int(random_state)
        if blob_sigma_px < 0 or blob_contrast < 0:
            raise ValueError(
                f"`blob_sigma_px` and `blob_contrast` must be >= 0, got {blob_sigma_px!r}, {blob_contrast!r}"
            )
        self.blob_sigma_px = float(blob_sigma_px)
        self.blob_contrast = float(blob_contrast)
        self.se_relief = bool(se_relief)
        if particle_sigma_px < 0 or particle_contrast < 0:
            raise ValueError(
                f"`particle_sigma_px` and `particle_contrast` must be >= 0, got {particle_sigma_px!r}, "
                f"{particle_contrast!r}"
            )
        self.particle_sigma_px = float(particle_sigma_px)
        self.particle_contrast = float(particle_contrast)
        self.refine_boundaries = bool(refine_boundaries)
        self.forest_ = None
        self.brightness_order_: tuple[str, ...] | None = None

    def _scribbled_brightness_order(self, prepared) -> tuple[str, ...] | None:
        """Scribbled phases from darkest to brightest, or None when fewer than two were painted."""
        medians = {}
        for code, name in enumerate(self.phase_names):
            values = np.concatenate([img[labelled & (scr == code + 1)] for img, _, labelled, scr in prepared])
            if values.size:
                medians[name] = float(np.median(values))
        return tuple(sorted(medians, key=medians.get)) if len(medians) >= 2 else None

    def _anchors(self, img: np.ndarray, mask: np.ndarray) -> tuple[float, float] | None:
        """Where the two brightest scribbled phases lie in this image (offset, scale), found unsupervised.

        Frames of a series differ in brightness and contrast and in how much of each phase they show
        (Na3PO4 grows), so quantiles move; the stable phases' levels do not. None (median/IQR
        standardisation instead) when they cannot be found.
        """
        if self.normalise != "anchors" or self.brightness_order_ is None:
            return None
        try:
            model = fit_phase_model(
                img, valid=mask, phase_names=self.brightness_order_, brightness_order=self.brightness_order_
            )
        except SegmentationError:
            return None
        if not model.intensity_scale > 0:
            return None
        return float(model.intensity_offset), float(model.intensity_scale)

    @property
    def sigmas(self) -> np.ndarray:
        n = int(np.floor(np.log2(self.sigma_max / self.sigma_min))) + 1
        return self.sigma_min * 2.0 ** np.arange(n)

    def _params(self) -> dict[str, Any]:
        return {
            "phase_names": self.phase_names,
            "sigma_min": self.sigma_min,
            "sigma_max": self.sigma_max,
            "n_estimators": self.n_estimators,
            "max_samples_per_phase": self.max_samples_per_phase,
            "smoothing_sigma_px": self.smoothing_sigma_px,
            "seed_probability": self.seed_probability,
            "normalise": self.normalise,
            "train_downscale_factors": self.train_downscale_factors,
            "predict_step_px": self.predict_step_px,
            "random_state": self.random_state,
            "blob_sigma_px": self.blob_sigma_px,
            "blob_contrast": self.blob_contrast,
            "se_relief": self.se_relief,
            "particle_sigma_px": self.particle_sigma_px,
            "particle_contrast": self.particle_contrast,
            "refine_boundaries": self.refine_boundaries,
        }

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._params().items())
        return f"PixelClassifier({args})"

    def fit(self, image: Any, scribbles: Any, *, valid: Any = None) -> PixelClassifier:
        """Train on one or several images with their scribbles.

        Parameters
        ----------
        image : (M, N) array or list of (M, N) arrays
            Greyscale training images (float in [0, 1]; NaN = outside).
        scribbles : (M, N) int array or list of them
            0 = unlabelled, ``k > 0`` = phase code ``k - 1``.
        valid : (M, N) bool array or list of them, optional
            Analysed pixels; scribbles outside are ignored.

        Returns
        -------
        PixelClassifier
            ``self``, trained.

        Raises
        ------
        ValueError
            Shapes differ, scribble values are out of range, or fewer than two phases are scribbled.
        """
        from sklearn.ensemble import RandomForestClassifier

        single = not isinstance(image, (list, tuple))
        images = [image] if single else list(image)
        scribble_list = [scribbles] if single else list(scribbles)
        if len(scribble_list) != len(images):
            raise ValueError(f"`scribbles` has {len(scribble_list)} label images for {len(images)} images")
        valids = [valid] * len(images) if (single or valid is None) else list(valid)
        if len(valids) != len(images):
            raise ValueError(f"`valid` has {len(valids)} masks for {len(images)} images")
        n = len(self.phase_names)
        rng = np.random.default_rng(self.random_state)
        xs, ys, prepared = [], [], []
        for i, (img_in, scr, v) in enumerate(zip(images, scribble_list, valids, strict=True)):
            img = _as_image(img_in, f"image[{i}]" if len(images) > 1 else "image")
            scr = np.asarray(scr)
            if scr.shape != img.shape:
                raise ValueError(f"`scribbles` has shape {scr.shape}, the image {img.shape}; they must match")
            if not np.issubdtype(scr.dtype, np.integer):
                raise TypeError(f"`scribbles` must be an integer label image, got dtype {scr.dtype}")
            if scr.min() < 0 or scr.max() > n:
                raise ValueError(
                    f"`scribbles` values must be 0 (unlabelled) or 1..{n} (phase code + 1), "
                    f"got range {scr.min()}..{scr.max()}"
                )
            mask = _valid_mask(img, v)
            labelled = mask & (scr > 0)
            if not labelled.any():
                continue
            prepared.append((img, mask, labelled, scr))
        if not prepared:
            raise ValueError("`scribbles` label no valid pixel; draw some strokes (values 1..n) first")
        self.brightness_order_ = self._scribbled_brightness_order(prepared)
        copies = []
        for img, mask, labelled, scr in prepared:
            copies.append((img, mask, labelled, scr))
            noise = estimate_noise(img, valid=mask)
            for factor in self.train_downscale_factors:
                small, small_mask, small_scr = _downscaled(img, mask, scr, factor, noise, rng)
                small_labelled = small_mask & (small_scr > 0)
                if small_labelled.any() and small_mask.sum() >= 16:
                    copies.append((small, small_mask, small_labelled, small_scr))
        for img, mask, labelled, scr in copies:
            xs.append(_pixel_features(img, mask, self.sigmas, self._anchors(img, mask), labelled, self.se_relief))
            ys.append(scr[labelled].astype(np.int64) - 1)
        x = np.concatenate(xs)
        y = np.concatenate(ys)
        present = np.unique(y)
        if present.size < 2:
            raise ValueError(f"scribbles cover only phase {self.phase_names[present[0]]!r}; label at least two phases")
        keep = []
        for k in present:
            idx = np.flatnonzero(y == k)
            if idx.size > self.max_samples_per_phase:
                idx = rng.choice(idx, self.max_samples_per_phase, replace=False)
            keep.append(idx)
        keep = np.concatenate(keep)
        forest = RandomForestClassifier(
            n_estimators=self.n_estimators,
            min_samples_leaf=2,
            class_weight="balanced",
            n_jobs=1,
            random_state=self.random_state,
        )
        forest.fit(x[keep], y[keep])
        self.forest_ = forest
        return self

    def predict_proba(self, image: Any, *, valid: Any = None) -> np.ndarray:
        """Probability of each phase per pixel.

        Parameters
        ----------
        image : (M, N) array
            Greyscale image (float in [0, 1]; NaN = outside).
        valid : (M, N) bool array, optional
            Analysed pixels.

        Returns
        -------
        (P, M, N) float32 array
            In code order; phases without scribbles get 0; 0 outside the valid region.
        """
        img = _as_image(image)
        return self._proba(img, _valid_mask(img, valid))

    def _proba(self, img: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """(P, M, N) probabilities, 0 outside ``mask``."""
        if self.forest_ is None:
            raise SegmentationError("the pixel classifier is not trained; call fit() or load() first")
        step = self.predict_step_px
        grid = (slice(None, None, step), slice(None, None, step))
        # pixels outside the valid region are classified too (their features are the fill value):
        # interpolation near the border then needs no special case, and they are zeroed below
        feats = _pixel_features(img, mask, self.sigmas, self._anchors(img, mask), grid, self.se_relief)
        predicted = self.forest_.predict_proba(feats).astype(np.float32)
        rows, cols = img[grid].shape
        columns = np.zeros((rows * cols, len(self.phase_names)), np.float32)
        columns[:, self.forest_.classes_] = predicted
        proba = _upsample(columns.reshape(rows, cols, -1), img.shape, step)
        for plane in proba:
            if self.smoothing_sigma_px > 0:
                cv2.GaussianBlur(plane, (0, 0), self.smoothing_sigma_px, dst=plane, borderType=cv2.BORDER_REFLECT)
            np.multiply(plane, mask, out=plane)
        return proba

    def predict(self, image: Any, *, valid: Any = None) -> np.ndarray:
        """Phase codes per pixel.

        Parameters
        ----------
        image : (M, N) array
            Greyscale image (float in [0, 1]; NaN = outside).
        valid : (M, N) bool array, optional
            Analysed pixels.

        Returns
        -------
        (M, N) uint8 array
            Phase codes, 255 outside the valid region.
        """
        img = _as_image(image)
        mask = _valid_mask(img, valid)
        proba = self._proba(img, mask)
        best, top = _argmax_planes(proba)
        if self.seed_probability > 0:
            # Confident pixels seed a watershed on the gradient, which puts the boundaries on the
            # intensity edges; scribbles rarely touch boundaries, so the forest is unsure there.
            noise = estimate_noise(img, valid=mask)
            smooth = _denoise(img, mask, noise, 1.5, levels8=True)
            confident = mask & (top > self.seed_probability)
            # Flood only the unsure pixels and the seeds next to them (4-connected, as the flood: a seed
            # touching them only diagonally floods nothing): the same result as a watershed over the
            # whole frame, at a fraction of the cost. (OpenCV's watershed, which floods by grey-level
            # steps instead of the gradient, lost 0.015 IoU on the real Super images.)
            cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
            region = mask & cv2.dilate((mask & ~confident).view(np.uint8), cross).view(bool)
            seeds = np.where(region & confident, best + 1, 0)
            if self.blob_sigma_px > 0 and self.brightness_order_ is not None:
                dark = self.phase_names.index(self.brightness_order_[0])
                cores = _blob_cores(smooth, noise, self.blob_sigma_px, self.blob_contrast)
                cores &= region & (best == dark)
                seeds[cores] = dark + 1
            labels = _watershed_tiled(_gradient(smooth, 1.0), seeds, region)
            best = np.where(labels > 0, labels - 1, best)
        if (self.particle_sigma_px > 0 or self.refine_boundaries) and self.brightness_order_ is not None:
            best = self._dark_boundaries(img, mask, proba, best)
        out = best.astype(np.uint8)
        out[~mask] = OUTSIDE
        return out

    def _dark_boundaries(self, img: np.ndarray, mask: np.ndarray, proba: np.ndarray, best: np.ndarray) -> np.ndarray:
        """``best`` with the darkest phase's small particles added and its boundaries refined."""
        dark_code = self.phase_names.index(self.brightness_order_[0])
        filled = np.where(mask, img, np.float32(np.median(img.reshape(-1)[_sample_index(mask)])))
        # light smoothing only: the midway levels are local means already, and particles are ~10 px
        smooth = cv2.GaussianBlur(filled, (0, 0), 1.0, borderType=cv2.BORDER_REFLECT)
        dark = mask & (best == dark_code)
        was_dark = dark
        if self.particle_sigma_px > 0:
            dark = dark | _dark_particles(
                filled,
                smooth,
                mask,
                dark,
                proba[dark_code],
                self.particle_sigma_px,
                self.particle_contrast,
                _PARTICLE_MIN_PROBA,
            )
        if self.refine_boundaries:
            dark = _refine_boundaries(smooth, mask, dark)
        out = np.where(dark, dark_code, best)
        # pixels that leave the darkest phase take the most probable of the others
        rows, cols = np.nonzero(was_dark & ~dark)
        others = proba[:, rows, cols]
        others[dark_code] = -1
        out[rows, cols] = np.argmax(others, axis=0)
        return out

    def save(self, path: str | Path) -> None:
        """Write the trained classifier to ``path`` (a pickle with a format tag and version).

        Only load classifier files you trust: like every pickle, loading runs code.
        """
        if self.forest_ is None:
            raise SegmentationError("the pixel classifier is not trained; nothing to save")
        payload = {
            "format": _CLASSIFIER_FORMAT,
            "version": _CLASSIFIER_VERSION,
            "params": self._params(),
            "forest": self.forest_,
            "brightness_order": self.brightness_order_,
        }
        atomic_write_bytes(path, pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL))

    @classmethod
    def load(cls, path: str | Path) -> PixelClassifier:
        """Read a classifier written by :meth:`save`.

        Raises
        ------
        ReadError
            The file is missing, is not a semtrack classifier, or has an unsupported version.
        """
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ReadError(f"cannot read the classifier file ({exc.strerror})", path=path) from exc
        try:
            payload = pickle.load(_io.BytesIO(data))
        except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not our file"
            raise ReadError(
                "not a semtrack pixel-classifier file (cannot unpickle it); train and save one with "
                "PixelClassifier.fit(...).save(path)",
                path=path,
            ) from exc
        if not isinstance(payload, dict) or payload.get("format") != _CLASSIFIER_FORMAT:
            raise ReadError("not a semtrack pixel-classifier file (no format tag)", path=path)
        if payload.get("version") != _CLASSIFIER_VERSION:
            raise ReadError(
                f"pixel-classifier file version {payload.get('version')!r} is not supported "
                f"(this semtrack reads version {_CLASSIFIER_VERSION}); retrain and save it again",
                path=path,
            )
        clf = cls(**payload["params"])
        clf.forest_ = payload["forest"]
        clf.brightness_order_ = payload.get("brightness_order")
        return clf


def simulate_scribbles(
    labels: Any,
    *,
    fraction: float = 0.015,
    stroke_width_px: int = 3,
    stroke_length_px: float = 40.0,
    margin_px: int = 4,
    seed: int = 0,
) -> np.ndarray:
    """Scribbles such as a user would draw, made from a true label image (for benchmarks and tests).

    Straight strokes at random places and angles, kept ``margin_px`` inside each phase (users do not
    paint boundaries), share ``fraction`` of the pixels equally between the phases present.

    Parameters
    ----------
    labels : (M, N) int array
        True phase codes; 255 = outside (never scribbled).
    fraction : float
        Target share of all pixels covered by scribbles, in (0, 1).
    stroke_width_px, stroke_length_px, margin_px : int, float, int
        Stroke width, largest stroke length, and distance kept from phase boundaries, in pixels.
    seed : int
        Random seed.

    Returns
    -------
    (M, N) int32 array
        0 = unlabelled, ``code + 1`` on scribbled pixels (the input of :meth:`PixelClassifier.fit`).

    Examples
    --------
    >>> truth = np.zeros((100, 100), np.uint8); truth[:, 50:] = 1
    >>> scr = simulate_scribbles(truth, fraction=0.02)
    >>> sorted(np.unique(scr).tolist()), float((scr > 0).mean()) <= 0.025
    ([0, 1, 2], True)
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"`labels` must be a 2-D label image, got shape {labels.shape}")
    if not 0 < fraction < 1:
        raise ValueError(f"`fraction` must be in (0, 1), got {fraction!r}")
    rng = np.random.default_rng(seed)
    height, width = labels.shape
    out = np.zeros(labels.shape, np.int32)
    codes = [int(c) for c in np.unique(labels) if c != OUTSIDE]
    per_phase = fraction * labels.size / max(len(codes), 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * margin_px + 1, 2 * margin_px + 1))
    for code in codes:
        inner = cv2.erode((labels == code).astype(np.uint8), kernel).astype(bool)
        ys, xs = np.nonzero(inner)
        if ys.size == 0:
            continue
        drawn = 0
        for _ in range(1000):
            if drawn >= per_phase:
                break
            i = rng.integers(ys.size)
            angle = rng.uniform(0, np.pi)
            length = rng.uniform(0.5, 1.0) * stroke_length_px
            end = (
                int(np.clip(xs[i] + length * np.cos(angle), 0, width - 1)),
                int(np.clip(ys[i] + length * np.sin(angle), 0, height - 1)),
            )
            stroke = np.zeros(labels.shape, np.uint8)
            cv2.line(stroke, (int(xs[i]), int(ys[i])), end, 1, stroke_width_px)
            new = stroke.astype(bool) & inner & (out == 0)
            take = int(min(new.sum(), np.ceil(per_phase - drawn)))
            if take < new.sum():
                idx = np.flatnonzero(new)[:take]
                new = np.zeros(labels.shape, bool)
                new.flat[idx] = True
            out[new] = code + 1
            drawn += int(new.sum())
    return out
