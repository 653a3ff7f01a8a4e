"""NaSICON grain size: grain instances, per-grain shape, and ASTM E112 G-numbers.

`measure_grains` turns a phase map into grain labels and a per-grain table;
`grain_summary` reduces the table (and the labels, for the intercept method)
to per-frame numbers: count, ECD statistics and the ASTM E112-13 G-numbers.
"""

from __future__ import annotations

import heapq
import math

import cv2
import numpy as np
import pandas as pd
from skimage.segmentation import watershed

from .config import OUTSIDE, PHASE_CODES

__all__ = [
    "measure_grains",
    "grain_summary",
    "astm_g_from_na",
    "astm_g_from_intercept",
    "GRAIN_COLUMNS",
]

#: Columns of the per-grain table returned by :func:`measure_grains`, with their meaning.
GRAIN_COLUMNS: dict[str, str] = {
    "grain_id": "label of the grain in the returned label image (1..n)",
    "area_um2": "area in µm² (px² when pixel_size_um is None)",
    "ecd_um": "equivalent circle diameter sqrt(4 area / pi) in µm (px)",
    "feret_max_um": "largest caliper width of the grain's pixel outline in µm (px)",
    "feret_min_um": "smallest caliper width in µm (px)",
    "aspect_ratio": "feret_max_um / feret_min_um (>= 1)",
    "perimeter_um": "Crofton perimeter (4 directions) in µm (px)",
    "x_px": "centroid column in pixels (origin: centre of the top-left pixel)",
    "y_px": "centroid row in pixels",
    "touches_border": "cut by the analysed region's border or the image edge: excluded from statistics",
    "occluded": "touches an occluding phase (Na3PO4 island): part of the grain may be hidden",
}

#: A dip of the distance map between two seeds must be deeper than this many
#: pixels, and deeper than _SPLIT_DEPTH times the smaller seed's height, to split
#: a grain: a neck narrower than (1 - _SPLIT_DEPTH) of the smaller grain's
#: inscribed radius. Pixel noise on outlines makes dips of about 1 px. Tuned on
#: semtrack.synth microstructures (glass 5-35 %, a quarter of grain pairs
#: touching, grains ~50 px): 1.0 px over-splits grains bitten by pores at 35 %
#: glass (count +10 %); 2.0 px, or a relative depth of 0.25, under-splits
#: touching polygons at 5-20 % glass.
_SPLIT_MIN_DEPTH_PX = 1.5
_SPLIT_DEPTH = 0.05
#: The watershed runs on a grid coarse enough to put about this many pixels
#: across a mean chord of the grain phase (never coarser than _MAX_COARSE): it
#: costs ~1 µs per pixel, and boundaries between grains move by < 1 coarse pixel.
_COARSE_CHORD_PX = 10
_MAX_COARSE = 6
#: With an image: watershed seeds are the grain cells whose gradient is in
#: this lowest quantile (flat interiors), and neighbouring pieces stay apart
#: when their mean brightness differs by more than _BRIGHTNESS_STEP times the
#: robust spread of cells inside pieces (noise plus shading); pieces of matching
#: brightness (a fraction c of that step apart) merge across necks up to
#: 1 + _SAME_BRIGHTNESS_DEPTH * (1 - c) times deeper than the shape rule allows:
#: a false neck of a rough outline (or of glass channels meeting at a corner)
#: lies inside one grain of one orientation contrast. Pieces smaller than
#: _MIN_PIECE_CELLS coarse cells merge by shape alone, in every frame: such a
#: piece is often a cell shared with a pore, island or glass, whose brightness
#: is not the grain's. At 35 % glass, judging pieces of any size kept them
#: apart (median ECD -0.5..-5.4 %, segmented, seeds 0-4); with 20 cells
#: -0.2..-3.9 % (judging only cells wholly inside the grain phase does the
#: same), while counts at 10-20 % glass drop by 1-2 points, all within the
#: targets. Necks are kept where grains fill
#: more than 1 - _KEEP_NECKS_BELOW of the non-island region; there islands also
#: bound grains (no grain is inferred under them).
#: Tuned on bench_grains.py frames (glass 5-35 %, 3 seeds, segmented):
#: 40 cells under-split 5 % glass (count -17 %), 10 cells over-split 10 % glass
#: (median ECD -9 %, when 10 % glass still kept necks); bridging 1.0 or 2.0
#: instead of 0.5 under-splits 5 % glass (count -19..-21 %), 0 over-splits
#: 10 % glass (ECD -6..-8 %). Necks are kept above 90 % grain, not 85 %: at
#: 10 % glass (grains fill ~88 %) islands bounding grains over-split (count
#: +1..+7 %, median ECD -2..-7 % on segmented and true maps, 3 seeds), while
#: inferring grain under islands meets the targets on all six maps (count
#: -2..-5 %, mean and median ECD within 2.3 %).
_FLAT_QUANTILE = 0.3
_BRIGHTNESS_STEP = 1.6
_SAME_BRIGHTNESS_DEPTH = 0.5
_MIN_PIECE_CELLS = 20
_KEEP_NECKS_BELOW = 0.10
#: Glass is scarce where the grain phase fills more than 1 - _SCARCE_BELOW of the
#: non-island region: brightness is then the main evidence between touching
#: grains. Elsewhere the shape evidence is good and brightness, blurred by
#: shading, keeps pieces apart only beyond _PLENTIFUL_STEP times the step, with
#: no bridging of necks. Measured on bench_grains.py frames (segmented, 3 seeds):
#: at 20-35 % glass the full image rule under-splits (count -7..-12 %), shape
#: alone meets the targets, and this strong-step rule meets them too (count
#: -3..+2 %) while still splitting touching grains of clearly different brightness.
_SCARCE_BELOW = 0.10
_PLENTIFUL_STEP = 4.0
#: Where glass is scarce, segmentation misses thin glass films between grains (a 1-2 px film blurred by
#: the beam), but the image still shows them as dark lines: the black top-hat (square of
#: _GROOVE_WIDTH_PX, on the image smoothed by _GROOVE_BLUR_PX) on coarse cells the phase map calls all
#: grain. Two pieces (both of _MIN_PIECE_CELLS or more) stay apart when the mean of that groove
#: signal along their common border exceeds the median inside pieces by _GROOVE_Z standard errors
#: (robust spread of the edges inside pieces over sqrt(edges on the border)); cells holding any
#: glass, pore or island pixel are left out, as the phase map already shows that boundary to the
#: shape rule. Measured on bench_grains.py frames (5 %
#: glass, segmented, seeds 0-4): count -15.1..-4.9 % -> -13.4..-3.5 % at 3, true maps unchanged
#: (z = 2: segmented -11..-2 %, but true maps over-split, median ECD down to -8.6 %, 3 of 5 beyond
#: -5 %); with cells that hold some other phase included, a small pore or film end makes a whole
#: border a "groove" (true maps: median ECD -7.5..-10.4 % on 3 of 5).
_GROOVE_Z = 3.0
_GROOVE_BLUR_PX = 1.0
_GROOVE_WIDTH_PX = 5
#: Where glass is scarce, such films are also cut into the grain phase at full resolution before the
#: distance map (`_film_lines`): dark lines by the Hessian's larger eigenvalue (image smoothed by
#: _FILM_SIGMA_PX), hysteresis at _FILM_Z = (high, low) robust standard deviations of that curvature
#: inside grains, lines spanning >= _FILM_MIN_LENGTH_PX and reaching >= _FILM_REACH_PX into the grain,
#: darker than the local grain level (normalised convolution over grain pixels, scale _FILM_LEVEL_PX)
#: by >= _FILM_DARK robust standard deviations, and more than _FILM_RIM_PX from wide dark objects.
#: A 1-px cut that reconnects a broken film makes a real dip in the distance map; the shape rule does
#: the rest. Measured on bench_grains.py frames (5 % glass, segmented, seeds 0-4): count
#: -12.9/-4.5/-9.0/-14.0/-10.1 % -> -9.0/-2.3/-5.2/-11.9/-7.1 %, median ECD -4.6..+1.0 %; true maps
#: (which already show the films) move by < 1 point. Without the darkness test, the blurred edges of
#: glass the map shows and the foot of the edge halo count as lines too: true maps over-split (count
#: up to +5.7 %, median ECD -5.4..-8.8 % on 3 of 5), segmented seed 1 median ECD -6.2 %. Without the
#: rim test, pore and island rims cut pieces off grains (segmented seed 1: median ECD -5.2 %).
#: Hysteresis at (3.5, 1.5) gains 1-2 more points on segmented maps (seed 3: -9.8 %) but over-splits
#: true maps (median ECD -8.1 and -5.6 % at seeds 1 and 2). Also tried and
#: dropped: a brightness-step test along borders (differences of the coarse cells on either side, 3
#: standard errors) split grains inside (true maps: count +2..+10 %, median ECD down to -10 %), and
#: merging pieces beside islands when their brightness matches joined real grains (count -15..-35 %).
#: At 5 % glass every pair of grains the segmented map still joins touches with no glass between them, and
#: continuing films from their loose ends or bridging their gaps did not pay; benchmarks/RESULTS.md (Grains,
#: session 5) records what was measured.
_FILM_SIGMA_PX = 1.5
_FILM_Z = (4.0, 1.5)
_FILM_MIN_LENGTH_PX = 8
_FILM_REACH_PX = 3
_FILM_LEVEL_PX = 8.0
_FILM_DARK = 1.5
_FILM_RIM_PX = 2
_FILM_STRIP_ROWS = 256


def astm_g_from_na(n_per_mm2: float) -> float:
    """ASTM E112-13 grain size number from the number of grains per mm² (planimetric).

    ``G = 3.321928 log10(N_A) - 2.954`` (E112-13, Eq. 11 of §11 / Table 6),
    with ``N_A`` the number of grains per mm² at 1x.

    Parameters
    ----------
    n_per_mm2 : float
        Grains per square millimetre, > 0.

    Returns
    -------
    float

    Examples
    --------
    >>> round(astm_g_from_na(15.50), 2)  # E112 Table 4: G = 1 at 15.50 grains/mm²
    1.0
    """
    n = float(n_per_mm2)
    if not (math.isfinite(n) and n > 0):
        raise ValueError(f"`n_per_mm2` must be a positive number of grains per mm², got {n_per_mm2!r}")
    return 3.321928 * math.log10(n) - 2.954


def astm_g_from_intercept(mean_intercept_um: float) -> float:
    """ASTM E112-13 grain size number from the mean lineal intercept (Heyn).

    ``G = -6.643856 log10(l) - 3.288`` with ``l`` in mm (E112-13 §13, Eq. 15).

    Parameters
    ----------
    mean_intercept_um : float
        Mean lineal intercept length in µm, > 0.

    Returns
    -------
    float

    Examples
    --------
    >>> round(astm_g_from_intercept(20.0), 2)  # E112 Table 4: G = 8 at 20.0 µm
    8.0
    """
    length = float(mean_intercept_um)
    if not (math.isfinite(length) and length > 0):
        raise ValueError(f"`mean_intercept_um` must be a positive length in µm, got {mean_intercept_um!r}")
    return -6.643856 * math.log10(length / 1000.0) - 3.288


def measure_grains(
    phases: np.ndarray,
    *,
    pixel_size_um: float | None,
    grain_code: int = PHASE_CODES["nasicon"],
    min_grain_area_um2: float = 0.2,
    split_touching: bool = True,
    valid: np.ndarray | None = None,
    occluder_code: int | None = PHASE_CODES["na3po4"],
    image: np.ndarray | None = None,
) -> tuple[np.ndarray, pd.DataFrame]:
    """Separate the grains of one phase and measure each.

    Parameters
    ----------
    phases : (rows, cols) ndarray of int
        Phase codes; ``OUTSIDE`` (255) marks pixels outside the analysed region.
    pixel_size_um : float or None
        Pixel size in µm. None: every length and area in the table is in pixels
        (the column names keep their ``_um`` suffix).
    grain_code : int
        Phase code of the grains (NaSICON = 2).
    min_grain_area_um2 : float
        Smaller grain pieces are merged into the grain they touch most, or
        dropped (label 0) when they touch none (µm², px² when uncalibrated).
    split_touching : bool
        Separate touching grains (see Notes). False: one grain per 8-connected
        component of the grain phase.
    valid : (rows, cols) ndarray of bool, optional
        False marks further pixels outside the analysed region (an info bar).
    occluder_code : int or None
        Phase that may lie on top of grains (Na3PO4 islands, 3): its pixels are
        unknown, not grain, and grains touching it are flagged ``occluded``.
    image : (rows, cols) ndarray, optional
        The registered BSE image the phase map came from (NaN where not imaged). With it, grains that
        touch without glass between them are also told apart by their
        brightness (orientation contrast), and false necks of a rough
        segmented outline are bridged (see Notes). None: shape alone
        separates grains.

    Returns
    -------
    labels : (rows, cols) ndarray of int32
        Grain labels 1..n matching ``grain_id``; 0 is not a grain.
    table : pandas.DataFrame
        One row per grain with the columns of :data:`GRAIN_COLUMNS`
        (``grain_id, area_um2, ecd_um, feret_max_um, feret_min_um,
        aspect_ratio, perimeter_um, x_px, y_px, touches_border, occluded``).

    Notes
    -----
    Touching grains are separated by a marker-controlled watershed of the
    Euclidean distance to the nearest non-grain pixel (glass, pores and the
    region border bound grains). An occluding island lies on top of the
    microstructure: under it, the phase of the nearest visible pixel is
    assumed, so an island on a grain neither bites a false neck into it nor
    cuts it into pieces counted apart (the grain keeps one label around the
    island), and an island across a glass channel continues the channel.
    Where grains fill more than 90 % of the non-island region (little glass),
    that guess is grain almost everywhere and would join grains whose contact
    an island covers, so there the island outline bounds grains as glass
    does. Seeds are the regional maxima of
    the distance map; two neighbouring basins are kept apart only if the
    distance map dips between them (the neck) by more than 1.5 px and by more
    than 5 % of the smaller basin's peak (its inscribed radius). Basins are
    merged greedily, shallowest dip first (marker suppression by dynamics),
    so a convex grain (cube section, elongated prism) is not split - its
    distance map has one maximum up to pixel noise - while two polygons that
    touch along part of a facet are. Basin pieces below `min_grain_area_um2`
    join the neighbour with the highest saddle; isolated grain specks below it
    are dropped (label 0). Grains that touch along a whole straight facet,
    with no glass and no notch at its ends, cannot be told apart from one
    grain on a phase map, and the cut between touching grains follows the
    neck, not necessarily the true facet.

    With `image`, the distance basins are further cut along the basins of a
    watershed of the image's gradient magnitude (block means on the coarse
    grid, seeded in the flattest 30 % of grain cells), so cuts can follow
    brightness steps and grooves, and two neighbouring pieces merge only when
    the shape rule allows it and their mean brightness differs by less than
    1.6 times the robust spread of cells around their piece's mean. Where the
    grain phase fills more than 90 % of the non-island region (glass too
    scarce to separate grains), pieces of matching brightness (the same
    orientation contrast) also merge across necks up to 1.5 times deeper than
    the shape rule alone allows, scaled down as their contrast nears that
    step: the false necks of a rough segmented outline lie inside one grain.
    With more glass, where the shape evidence is good and brightness is
    blurred by shading, only steps 4 times larger keep pieces apart, and
    brightness bridges no neck. Pieces under 20 coarse cells (slivers, cells
    shared with pores or islands) merge by shape alone. Where glass is
    scarce, the segmentation misses thin glass films that the image still
    shows as dark lines: two larger pieces whose common border runs along
    such a groove (the black top-hat of the image, on cells the phase map
    calls all grain, 3 standard errors above its level inside pieces) stay
    apart. Thin dark lines of the image inside the grain phase (glass films
    of 1-2 px the phase map missed: a Hessian line detector, hysteresis
    against the noise inside grains, kept where long, darker than the grain
    around them and away from pores and islands) are cut into the grain mask
    before the distance map, so the necks they make split grains by shape.
    Measured on synthetic frames (see benchmarks/bench_grains.py), the image
    mainly helps at 5 % glass, where it takes the count error of segmented
    frames from -13..-23 % to -2..-12 %.

    The watershed runs on a grid coarsened so that a mean chord of the grain
    phase spans about 10 cells (it costs ~1 µs per cell); the full-resolution
    distance map is sampled at block centres, so thin glass films still
    separate grains, and the full-resolution outline is restored from the
    grain mask. Cuts between touching grains are placed to within one coarse
    cell; outlines against glass, pores and islands are exact.

    Feret widths are taken over the corners of the grain's pixels, so an
    ``a x b`` pixel rectangle has ``feret_min = min(a, b)`` and
    ``feret_max = hypot(a, b)``.

    Examples
    --------
    >>> import numpy as np
    >>> phases = np.ones((40, 60), dtype=np.uint8)   # glass
    >>> phases[10:30, 5:25] = 2                       # a 20 x 20 px grain
    >>> phases[10:30, 25:45] = 2                      # touching it: a 20 x 40 bar
    >>> labels, table = measure_grains(phases, pixel_size_um=0.5)
    >>> table[["grain_id", "area_um2", "feret_min_um"]].round(6).to_dict("list")
    {'grain_id': [1], 'area_um2': [200.0], 'feret_min_um': [10.0]}
    """
    phases = np.asarray(phases)
    if phases.ndim != 2:
        raise ValueError(f"`phases` must be a 2-D phase map (rows, cols), got shape {phases.shape}")
    if not np.issubdtype(phases.dtype, np.integer):
        raise TypeError(f"`phases` must hold integer phase codes, got dtype {phases.dtype}; use .astype(np.uint8)")
    scale = _check_pixel_size(pixel_size_um)
    if not (math.isfinite(min_grain_area_um2) and min_grain_area_um2 >= 0):
        raise ValueError(f"`min_grain_area_um2` must be >= 0, got {min_grain_area_um2!r}")
    region = phases != OUTSIDE
    if valid is not None:
        valid = np.asarray(valid)
        if valid.shape != phases.shape or valid.dtype != bool:
            raise ValueError(
                f"`valid` must be a boolean mask of the phase map's shape {phases.shape}, "
                f"got {valid.dtype} {valid.shape}"
            )
        region &= valid
    grain = region & (phases == grain_code)
    if image is not None:
        image = np.asarray(image)
        if image.shape != phases.shape or not (
            np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)
        ):
            raise ValueError(
                f"`image` must be a numeric image of the phase map's shape {phases.shape}, "
                f"got {image.dtype} {image.shape}; pass the registered frame the phases came from"
            )
    min_area_px = min_grain_area_um2 / scale**2

    occluder = region & (phases == occluder_code) if occluder_code is not None else None
    if split_touching:
        # How much of the non-island region the grains fill decides which evidence to trust.
        space = np.count_nonzero(region) - (np.count_nonzero(occluder) if occluder is not None else 0)
        filled = np.count_nonzero(grain)
        keep_necks = filled >= (1.0 - _KEEP_NECKS_BELOW) * space
        scarce = filled >= (1.0 - _SCARCE_BELOW) * space
        labels = _split_grains(grain, min_area_px, image, keep_necks, occluder, scarce)
    else:
        labels = cv2.connectedComponents(grain.view(np.uint8), connectivity=8, ltype=cv2.CV_32S)[1]
    labels, runs = _drop_small(labels, min_area_px)
    table = _grain_table(labels, runs, region, occluder, scale)
    return labels, table


def _check_pixel_size(pixel_size_um) -> float:
    if pixel_size_um is None:
        return 1.0
    number = isinstance(pixel_size_um, (int, float, np.floating)) and not isinstance(pixel_size_um, bool)
    if not (number and math.isfinite(pixel_size_um) and pixel_size_um > 0):
        raise ValueError(f"`pixel_size_um` must be a positive number or None (pixel units), got {pixel_size_um!r}")
    return float(pixel_size_um)


def _split_grains(
    grain: np.ndarray,
    min_area_px: float,
    image: np.ndarray | None = None,
    keep_necks: bool = True,
    hidden: np.ndarray | None = None,
    scarce: bool = True,
) -> np.ndarray:
    """Watershed of the distance map from regional-maximum seeds, shallow dips merged.

    The watershed runs on a grid ``factor`` times coarser than the image (see
    `_coarse_factor`); the distance map is computed at full resolution and
    sampled at block centres, so glass films thinner than a coarse pixel still
    show as deep dips. Full-resolution labels are the coarse ones, with the
    grain mask, its connected components and nearest-label filling restoring
    the exact outline. With `image`, the distance basins are cut further along
    the basins of the image gradient, and merging also weighs brightness: as
    the main evidence where glass is `scarce`, only strong steps otherwise
    (`_merge_basins`). `keep_necks` (little glass): small pieces merge by shape
    alone and islands bound grains.
    """
    mask = grain.view(np.uint8)
    # cv2 treats pixels beyond the image edge as grain, so grains cut by the edge are not split there.
    solid = mask
    if hidden is not None and not keep_necks and hidden.any():
        # What lies under an occluding island: the phase of the nearest visible pixel, so an island on
        # a grain makes no false neck and one on a glass channel continues the channel (found on every
        # second row and column: a guess either way, four times cheaper). Not with little glass
        # (keep_necks): there the guess is grain everywhere and would join grains whose contact an
        # island covers; the island's outline is the better evidence of that contact.
        solid = _fill_hidden(mask, hidden)
    cut = solid
    if image is not None and scarce:
        # Glass films too thin for the phase map (1-2 px, blurred) still show in the image as dark lines:
        # cut them into the grain before the distance map, so the shape rule sees the necks they make.
        cut = solid & ~_film_lines(image, mask).view(np.uint8)
    dist = cv2.distanceTransform(cut, cv2.DIST_L2, cv2.DIST_MASK_5)
    np.minimum(dist, float(max(grain.shape)), out=dist)
    factor = _coarse_factor(grain)
    if factor > 1:
        rows, cols = grain.shape
        pad_r, pad_c = -rows % factor, -cols % factor
        # Sampling block centres keeps the distance map's shape (one maximum per convex grain);
        # a glass film is at most half a block from a centre, so it still makes a deep dip.
        half = factor // 2
        dist_c = dist[half::factor, half::factor]
        dist_c = np.pad(
            dist_c,
            ((0, (rows + pad_r) // factor - dist_c.shape[0]), (0, (cols + pad_c) // factor - dist_c.shape[1])),
            mode="edge",
        )
        coarse_shape = ((cols + pad_c) // factor, (rows + pad_r) // factor)
        grain_c, seen_c = (
            cv2.resize(
                cv2.copyMakeBorder(m, 0, pad_r, 0, pad_c, cv2.BORDER_CONSTANT, value=0) * np.uint8(255),
                coarse_shape,
                interpolation=cv2.INTER_AREA,
            )
            >= 128
            for m in (solid, mask)
        )
    else:
        dist_c, grain_c, seen_c = dist, solid.view(bool), grain
    # The watershed runs over grain and the grain inferred under islands (grain_c), so pieces of a
    # grain around an island stay one grain; brightness is known where grain is seen (seen_c).
    dist_c = np.where(grain_c, dist_c, 0).astype(np.float32)

    peaks = (dist_c == cv2.dilate(dist_c, np.ones((3, 3), np.uint8))) & grain_c
    n_seeds, seeds = cv2.connectedComponents(peaks.view(np.uint8), connectivity=8, ltype=cv2.CV_32S)
    basins = watershed(-dist_c, seeds, mask=grain_c)
    brightness = None
    if image is not None:
        # Distance basins are cut further along brightness steps (gradient basins); the pieces merge
        # back where the shape rule allows it and their brightness matches.
        image_c = _coarse_image(image, factor)
        pieces, n_pieces = _gradient_basins(image_c, grain_c)
        key = np.where(grain_c, basins.astype(np.int64) * (n_pieces + 1) + pieces, 0)
        # Number the (basin, piece) pairs in sorted order (as np.unique would; hashing is ~4x faster).
        codes, uniques = pd.factorize(key.ravel())
        rank = np.empty(uniques.size, np.int32)
        rank[np.argsort(uniques)] = np.arange(uniques.size, dtype=np.int32)
        basins = rank[codes].reshape(key.shape)
        n_seeds = int(basins.max()) + 1
        total, cells, spread = _basin_brightness(image_c, np.where(seen_c, basins, 0), n_seeds)
        # Where glass is plentiful the shape evidence is good: only strong brightness steps keep
        # pieces apart, and matching brightness does not bridge necks.
        brightness = (
            total,
            cells,
            spread * (1.0 if scarce else _PLENTIFUL_STEP),
            _MIN_PIECE_CELLS,  # slivers and cells shared with other phases: unreliable brightness
            _SAME_BRIGHTNESS_DEPTH * scarce,
        )
    peak = _label_maximum(dist_c, basins, n_seeds)
    area = np.bincount(basins.ravel(), minlength=n_seeds).astype(float) * factor**2
    a, b, saddle = _saddles(basins, dist_c)
    groove = None
    if image is not None and scarce:
        # Thin glass films the phase map missed still show in the image as dark lines (grooves).
        grooves = _groove_cells(image, factor, basins.shape)
        groove = _border_grooves(grooves, basins, _whole_cells(mask, factor), a, b)
    root = _merge_basins(n_seeds, a, b, saddle, peak, area, min_area_px, brightness, groove)
    coarse = root.astype(np.int32)[basins]
    if factor == 1:
        coarse *= grain
        return coarse
    labels = cv2.resize(coarse, None, fx=factor, fy=factor, interpolation=cv2.INTER_NEAREST)
    labels = np.ascontiguousarray(labels[: grain.shape[0], : grain.shape[1]])
    labels *= grain
    unlabelled = _fill_from_neighbours(labels, grain, factor)
    return _respect_components(labels, solid.view(bool), unlabelled)


def _film_lines(image: np.ndarray, grain: np.ndarray) -> np.ndarray:
    """Thin dark lines of the image inside the grain phase (`grain`, uint8 0/1): glass films the map missed.

    Line evidence is the larger eigenvalue of the Hessian of the image smoothed by _FILM_SIGMA_PX (the
    curvature across a dark line), in robust standard deviations of its values inside grains (noise).
    Pixels above _FILM_Z[1] form candidate lines, kept when they hold a pixel above _FILM_Z[0]
    (hysteresis), span _FILM_MIN_LENGTH_PX or more, and reach _FILM_REACH_PX or more into the grain (so
    they add to what the phase map shows). Candidates must also be darker than the grain around them
    (smoothed image below the local grain level by _FILM_DARK robust standard deviations: the blurred
    edge of glass the map already shows and the foot of the bright edge halo curve upward too, but are
    not darker than the grain), and lie more than _FILM_RIM_PX from wide dark objects (pores, islands,
    glass pockets), whose blurred rims read as lines. Computed in strips of rows, so the full-size
    float arrays are two (~8 bytes per pixel).
    """
    rows, cols = grain.shape
    if not np.issubdtype(image.dtype, np.integer):
        image = np.nan_to_num(image.astype(np.float32, copy=False))
    # Local grain level: a normalised convolution over grain pixels, on a 4x coarser grid (it is smooth).
    small = (max(cols // 4, 1), max(rows // 4, 1))
    weight = cv2.resize(grain.astype(np.float32), small, interpolation=cv2.INTER_AREA)
    level_map = cv2.resize(image.astype(np.float32) * grain, small, interpolation=cv2.INTER_AREA)
    blur = _FILM_LEVEL_PX / 4.0
    level_map = cv2.GaussianBlur(level_map, (0, 0), blur) / np.maximum(cv2.GaussianBlur(weight, (0, 0), blur), 1e-3)
    darkness = cv2.resize(level_map, (cols, rows), interpolation=cv2.INTER_LINEAR)
    across = np.empty((rows, cols), np.float32)
    halo = int(math.ceil(4 * _FILM_SIGMA_PX)) + 2  # the strips' blur and derivatives see real rows
    for top in range(0, rows, _FILM_STRIP_ROWS):
        bottom = min(top + _FILM_STRIP_ROWS, rows)
        lo, hi = max(top - halo, 0), min(bottom + halo, rows)
        smooth = cv2.GaussianBlur(image[lo:hi].astype(np.float32), (0, 0), _FILM_SIGMA_PX)
        ixx = cv2.Sobel(smooth, cv2.CV_32F, 2, 0, ksize=3)
        iyy = cv2.Sobel(smooth, cv2.CV_32F, 0, 2, ksize=3)
        ixy = cv2.Sobel(smooth, cv2.CV_32F, 1, 1, ksize=3)
        # Larger eigenvalue of [[ixx, ixy], [ixy, iyy]]: (ixx + iyy) / 2 + |(ixx - iyy, 2 ixy)| / 2.
        eig = cv2.addWeighted(cv2.add(ixx, iyy), 0.5, cv2.magnitude(cv2.subtract(ixx, iyy), 2 * ixy), 0.5, 0)
        across[top:bottom] = eig[top - lo : bottom - lo]
        darkness[top:bottom] -= smooth[top - lo : bottom - lo]
    # Noise of both measures, from grain interiors (every fourth row and column: enough, and cheaper).
    inner = cv2.erode(grain, np.ones((9, 9), np.uint8)).view(bool)[::4, ::4]
    if np.count_nonzero(inner) < 100:
        return np.zeros(grain.shape, bool)
    scales = []
    for values in (across[::4, ::4][inner], darkness[::4, ::4][inner]):
        centre = float(np.median(values))
        scales.append((centre, 1.4826 * float(np.median(np.abs(values - centre))) + 1e-6))
    (level, spread), (dark_level, dark_spread) = scales
    strong = across >= level + _FILM_Z[0] * spread
    weak = (across >= level + _FILM_Z[1] * spread).view(np.uint8)
    del across
    weak &= (darkness >= dark_level + _FILM_DARK * dark_spread).view(np.uint8)
    del darkness
    rim = 2 * _FILM_RIM_PX + 1
    wide = cv2.morphologyEx(1 - grain, cv2.MORPH_OPEN, np.ones((5, 5), np.uint8))
    weak &= grain & (1 - cv2.dilate(wide, np.ones((rim, rim), np.uint8)))
    n, comp, stats, _ = cv2.connectedComponentsWithStats(weak, connectivity=8, ltype=cv2.CV_32S)
    keep = np.zeros(n, bool)
    keep[comp[strong]] = True
    keep &= np.maximum(stats[:, cv2.CC_STAT_WIDTH], stats[:, cv2.CC_STAT_HEIGHT]) >= _FILM_MIN_LENGTH_PX
    reach = 2 * _FILM_REACH_PX + 1
    deep = cv2.erode(grain, np.ones((reach, reach), np.uint8)) & weak
    reaches = np.zeros(n, bool)
    reaches[comp[deep.view(bool)]] = True
    keep &= reaches
    keep[0] = False
    return keep[comp]


def _fill_hidden(mask: np.ndarray, hidden: np.ndarray) -> np.ndarray:
    """`mask` (uint8 0/1) with hidden pixels set to the value of the nearest visible pixel, on a 2x grid."""
    sub = np.ascontiguousarray(hidden[::2, ::2])
    seen = ~sub
    if not seen.any():
        return mask
    # Zero pixels of the source (the visible ones) are the sites; each gets its own label.
    _, nearest = cv2.distanceTransformWithLabels(
        sub.view(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_5, labelType=cv2.DIST_LABEL_PIXEL
    )
    value = np.zeros(int(nearest.max()) + 1, np.uint8)
    value[nearest[seen]] = mask[::2, ::2][seen]
    guess = value[nearest]
    guess = cv2.resize(guess, (2 * guess.shape[1], 2 * guess.shape[0]), interpolation=cv2.INTER_NEAREST)
    return np.where(hidden, guess[: mask.shape[0], : mask.shape[1]], mask)


def _label_maximum(values: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """Largest value of each label 0..n-1 (0 where a label is absent); values must be >= 0."""
    flat = labels.ravel()
    order = _stable_argsort(flat, n)
    sorted_labels = flat[order]
    starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
    out = np.zeros(n)
    out[sorted_labels[starts]] = np.maximum.reduceat(values.ravel()[order], starts)
    return out


def _stable_argsort(values: np.ndarray, n: int) -> np.ndarray:
    """Stable argsort of integers in 0..n-1; as uint16 when they fit (numpy then radix-sorts: ~15x faster)."""
    return np.argsort(values.astype(np.uint16) if n <= 65536 else values, kind="stable")


def _fill_from_neighbours(labels: np.ndarray, grain: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Unlabelled grain pixels take the largest label among their 8 neighbours, `steps` times (in place).

    Grain pixels of blocks that were mostly not grain grow in from the nearest labelled pixels; only
    those pixels are visited, not the whole frame. Returns the rows and columns of the grain pixels
    still unlabelled.
    """
    rows, cols = labels.shape
    flat = labels.ravel()
    index = np.flatnonzero(grain & (labels == 0))
    for _ in range(steps):
        if index.size == 0:
            break
        r, c = np.divmod(index, cols)
        # Flat indices of the 3 x 3 neighbourhood, clamped at the image edge (a clamped neighbour lies
        # in the pixel's own neighbourhood, so the maximum is unchanged).
        rows_above_here_below = (np.maximum(r - 1, 0) * cols, r * cols, np.minimum(r + 1, rows - 1) * cols)
        cols_left_here_right = (np.maximum(c - 1, 0), c, np.minimum(c + 1, cols - 1))
        best = np.zeros(index.size, labels.dtype)
        for row in rows_above_here_below:
            for col in cols_left_here_right:
                np.maximum(best, flat.take(row + col), out=best)
        flat[index] = best
        index = index[best == 0]
    return np.divmod(index, cols)


def _coarse_image(image: np.ndarray, factor: int) -> np.ndarray:
    """Block means of the image on the watershed grid (noise averages out over a block).

    Pixels that were not imaged (NaN) count as 0 on the coarse grid; a full-size copy is made
    only when the grid needs no reduction or the frame does not divide into blocks.
    """
    image = np.asarray(image, dtype=np.float32)
    if factor == 1:
        return cv2.GaussianBlur(np.nan_to_num(image), (0, 0), 1.0)
    rows, cols = image.shape
    pad_r, pad_c = -rows % factor, -cols % factor
    padded = np.pad(image, ((0, pad_r), (0, pad_c)), mode="edge") if pad_r or pad_c else image
    coarse = cv2.resize(padded, ((cols + pad_c) // factor, (rows + pad_r) // factor), interpolation=cv2.INTER_AREA)
    return np.nan_to_num(coarse, copy=False)


def _gradient_basins(image_c: np.ndarray, grain_c: np.ndarray) -> tuple[np.ndarray, int]:
    """Watershed of the gradient magnitude, seeded in flat grain interiors (an over-segmentation)."""
    gx = cv2.Sobel(image_c, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(image_c, cv2.CV_32F, 0, 1, ksize=3)
    grad = cv2.magnitude(gx, gy)
    inside = grad[grain_c]
    flat = grain_c & (grad <= (np.quantile(inside, _FLAT_QUANTILE) if inside.size else 0.0))
    n_seeds, seeds = cv2.connectedComponents(flat.view(np.uint8), connectivity=8, ltype=cv2.CV_32S)
    basins = watershed(grad, seeds, mask=grain_c)
    return basins.astype(np.int32), n_seeds


def _basin_brightness(image_c: np.ndarray, basins: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Brightness sum and cell count per basin, and the median spread of cells around their basin mean."""
    flat = basins.ravel()
    values = image_c.ravel().astype(float)
    count = np.bincount(flat, minlength=n).astype(float)
    total = np.bincount(flat, weights=values, minlength=n)
    mean = total / np.maximum(count, 1)
    spread = np.abs(values - mean[flat])[flat > 0]
    scale = float(np.median(spread)) * 1.4826 if spread.size else 0.0
    return total, count, max(scale, 1e-6)


def _coarse_factor(grain: np.ndarray) -> int:
    """Coarsening of the watershed grid: about 10 coarse pixels across a mean chord of the grain phase."""
    runs = np.count_nonzero(grain[:, 1:] & ~grain[:, :-1]) + np.count_nonzero(grain[:, 0])
    if runs == 0:
        return 1
    chord = np.count_nonzero(grain) / runs
    return int(np.clip(chord // _COARSE_CHORD_PX, 1, _MAX_COARSE))


def _respect_components(
    labels: np.ndarray, connected: np.ndarray, unlabelled: tuple[np.ndarray, np.ndarray]
) -> np.ndarray:
    """Make every label lie in one connected component of `connected` (in place).

    `connected` holds the grain plus the grain inferred under islands, so that the visible pieces of
    one grain around an island may keep one label; labels are > 0 only on grain pixels, and
    `unlabelled` gives the rows and columns of the grain pixels without a label.

    A coarse block can carry a label across a glass film thinner than the
    block. Each label keeps its largest piece (ties: the first component);
    other pieces (and unlabelled grain pixels) join the largest label at home
    in their own component (ties: the lowest label), or become grains of their
    own when their component holds no other label. Labels are not made
    consecutive. Works on runs along rows: a run of one label lies in one component.
    """
    n_cc, cc = cv2.connectedComponents(connected.view(np.uint8), connectivity=8, ltype=cv2.CV_32S)
    n_labels = int(labels.max()) + 1
    start, length, lab = _row_runs(labels)
    keep = lab > 0
    start, length, lab = start[keep], length[keep], lab[keep]
    comp = cc.ravel()[start]
    # Pixel counts per (label, component); the largest piece of each label is its home.
    pairs, inverse = np.unique(lab.astype(np.int64) * n_cc + comp, return_inverse=True)
    count = np.bincount(inverse, weights=length)
    pair_label, pair_cc = np.divmod(pairs, n_cc)
    order = np.lexsort((-pair_cc, count, pair_label))
    last = order[np.r_[pair_label[order][1:] != pair_label[order][:-1], True]]
    ids = pair_label[last]  # labels present, ascending
    home = np.full(n_labels, -1, np.int64)
    home[ids] = pair_cc[last]
    size = np.zeros(n_labels)
    size[ids] = count[last]
    # In each component, the label at home there with the most pixels receives the strays.
    receiver = n_labels + np.arange(n_cc, dtype=np.int32)  # a new grain where no label is at home
    order = np.lexsort((-ids, size[ids], home[ids]))
    best = order[np.r_[home[ids][order][1:] != home[ids][order][:-1], True]]
    receiver[home[ids][best]] = ids[best]
    stray = comp != home[lab]
    if stray.any():
        run_start, run_length = start[stray], length[stray]
        # Flat indices of the stray runs' pixels.
        shift = np.repeat(run_start - np.cumsum(run_length) + run_length, run_length)
        labels.ravel()[shift + np.arange(shift.size)] = np.repeat(receiver[comp[stray]], run_length)
    r, c = unlabelled
    labels[r, c] = receiver[cc[r, c]]
    return labels


def _saddles(labels: np.ndarray, dist: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Label pairs that touch (4-connectivity) and the highest distance along their common border."""
    keys, values = [], []
    for la, lb, da, db in (
        (labels[:, :-1], labels[:, 1:], dist[:, :-1], dist[:, 1:]),
        (labels[:-1, :], labels[1:, :], dist[:-1, :], dist[1:, :]),
    ):
        edge = (la != lb) & (la > 0) & (lb > 0)
        x, y = la[edge].astype(np.int64), lb[edge].astype(np.int64)
        keys.append(np.minimum(x, y) << 32 | np.maximum(x, y))
        values.append(np.minimum(da[edge], db[edge]))
    key, value = np.concatenate(keys), np.concatenate(values)
    if key.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0)
    order = np.lexsort((value, key))
    key, value = key[order], value[order]
    last = np.r_[key[1:] != key[:-1], True]
    key, value = key[last], value[last].astype(float)
    return key >> 32, key & 0xFFFFFFFF, value


def _groove_cells(image: np.ndarray, factor: int, shape_c: tuple[int, int]) -> np.ndarray:
    """Dark thin lines of the image on the coarse grid: block means of the black top-hat.

    The top-hat (square of _GROOVE_WIDTH_PX) of the image smoothed by _GROOVE_BLUR_PX: how much
    darker a pixel is than the closing of its surroundings. On uint8 images in uint8 (cheap).
    """
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = np.nan_to_num(image.astype(np.float32))
    smooth = cv2.GaussianBlur(image, (0, 0), _GROOVE_BLUR_PX)
    hat = cv2.morphologyEx(smooth, cv2.MORPH_BLACKHAT, np.ones((_GROOVE_WIDTH_PX, _GROOVE_WIDTH_PX), np.uint8))
    return _coarse_image(hat, factor)[: shape_c[0], : shape_c[1]]


def _whole_cells(mask: np.ndarray, factor: int) -> np.ndarray:
    """Coarse cells whose pixels are all 1 in `mask` (uint8 0/1)."""
    if factor == 1:
        return mask.view(bool)
    rows, cols = mask.shape
    pad_r, pad_c = -rows % factor, -cols % factor
    padded = cv2.copyMakeBorder(mask, 0, pad_r, 0, pad_c, cv2.BORDER_CONSTANT, value=0) * np.uint8(255)
    return cv2.resize(padded, ((cols + pad_c) // factor, (rows + pad_r) // factor), interpolation=cv2.INTER_AREA) == 255


def _border_grooves(
    hat: np.ndarray, basins: np.ndarray, whole: np.ndarray, a: np.ndarray, b: np.ndarray
) -> tuple[np.ndarray, np.ndarray, float]:
    """Dark-line (groove) evidence along the border of each touching basin pair.

    `hat` is `_groove_cells` output; `a`, `b` are the pairs as `_saddles` returns them (a < b,
    sorted). Each edge between 4-neighbour coarse cells of two basins, both wholly grain (`whole`),
    scores the larger top-hat of its two cells (a film lies in one of them). Returns per pair the sum
    of (score - median score of edges inside basins) and the number of edges, and 1 / (robust spread
    of the edges inside basins * _GROOVE_Z): a pair's groove is significant where
    ``sum * that / sqrt(edges) >= 1``.
    """
    n = int(basins.max()) + 1
    keys, values, inside = [], [], []
    for la, lb, ha, hb, wa, wb in (
        (basins[:, :-1], basins[:, 1:], hat[:, :-1], hat[:, 1:], whole[:, :-1], whole[:, 1:]),
        (basins[:-1, :], basins[1:, :], hat[:-1, :], hat[1:, :], whole[:-1, :], whole[1:, :]),
    ):
        both = wa & wb
        score = np.maximum(ha, hb)
        edge = both & (la != lb) & (la > 0) & (lb > 0)  # as in _saddles
        x, y = la[edge].astype(np.int64), lb[edge].astype(np.int64)
        keys.append(np.minimum(x, y) * n + np.maximum(x, y))
        values.append(score[edge])
        inside.append(score[both & (la == lb) & (la > 0)])
    key, value, inside = np.concatenate(keys), np.concatenate(values).astype(float), np.concatenate(inside)
    pair = a.astype(np.int64) * n + b
    if inside.size == 0 or pair.size == 0:
        return np.zeros(pair.size), np.zeros(pair.size), 0.0
    level = float(np.median(inside))
    spread = float(np.median(np.abs(inside - level))) * 1.4826
    # Every border edge belongs to a touching pair (the same cells make the saddles).
    index = np.searchsorted(pair, key)
    total = np.bincount(index, weights=value - level, minlength=pair.size)
    count = np.bincount(index, minlength=pair.size).astype(float)
    return total, count, 1.0 / (max(spread, 1e-6) * _GROOVE_Z)


def _urgencies(i, j, s, peak, area, min_area_px, brightness, inv_step, groove=None):
    """`urgency` of `_merge_basins` for arrays of pairs (the same float operations, so the same values)."""
    pi, pj = peak[i], peak[j]
    low = np.where(pi < pj, pi, pj)
    threshold = _SPLIT_DEPTH * low
    threshold = np.where(threshold < _SPLIT_MIN_DEPTH_PX, _SPLIT_MIN_DEPTH_PX, threshold)
    depth = low - s
    u = threshold - depth
    if brightness is not None:
        total, cells, _, min_cells, bridge = brightness
        ci, cj = cells[i], cells[j]
        judged = (ci >= min_cells) & (cj >= min_cells)
        with np.errstate(invalid="ignore", divide="ignore"):
            contrast = np.abs(total[i] / ci - total[j] / cj) * inv_step
        bridged = np.minimum(threshold * (1.0 + bridge * (1.0 - contrast)) - depth, 1.0 - contrast)
        u = np.where(judged, np.where(contrast >= 1.0, 1.0 - contrast, bridged), u)
        if groove is not None:
            gsum, gcnt, ginv = groove
            with np.errstate(invalid="ignore", divide="ignore"):
                ratio = np.where(gcnt > 0, gsum * ginv / np.sqrt(gcnt), 0.0)
            u = np.where(judged & (ratio >= 1.0), 1.0 - ratio, u)
    small = (area[i] < min_area_px) | (area[j] < min_area_px)
    return np.where(small, 1.0 + s / np.where(low > 1e-9, low, 1e-9), u)


def _merge_basins(n, a, b, saddle, peak, area, min_area_px, brightness=None, groove=None) -> np.ndarray:
    """Union basins whose dip is too shallow to be a grain boundary, shallowest first.

    With `brightness` (per-basin brightness sums and cell counts, the spread
    of brightness inside basins, the piece size below which brightness is
    ignored, and the bridging factor), basins whose brightness differs by more
    than _BRIGHTNESS_STEP spreads are not merged, and basins of matching
    brightness merge across necks up to 1 + bridging times deeper. Returns the
    final root of every basin label (0 stays 0).
    """
    inv_step = 0.0
    if brightness is not None:
        total, cells, spread, min_cells, bridge = brightness
        inv_step = 1.0 / (_BRIGHTNESS_STEP * spread)
    first = _urgencies(a, b, saddle, peak, area, min_area_px, brightness, inv_step, groove)
    # Plain Python lists and floats: this loop runs ~10^4 times per frame, numpy scalars are slow here.
    # Per basin: its peak, area, whether it is small (merges by shape alone), and with brightness its
    # sums, whether it is large enough to judge by brightness, and its mean (kept current on merges).
    parent = list(range(n))
    small = (area < min_area_px).tolist()
    peak = peak.tolist()
    area = area.tolist()
    if brightness is not None:
        judged = (cells >= min_cells).tolist()
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = (total / cells).tolist()
        total, cells = total.tolist(), cells.tolist()
    else:
        judged = [False] * n
        bridge = 0.0
    # Per touching pair: the saddle (highest distance along the border) and, with `groove`, the border's
    # groove sum and edge count (both add up when basins merge).
    neighbours: list[dict[int, tuple[float, float, float]] | None] = [{} for _ in range(n)]
    ginv = 0.0
    if groove is not None and brightness is not None:
        gsum, gcnt, ginv = groove
        gsum, gcnt = gsum.tolist(), gcnt.tolist()
    else:
        gsum = gcnt = [0.0] * a.size
    for i, j, s, gs, gc in zip(a.tolist(), b.tolist(), saddle.tolist(), gsum, gcnt, strict=True):
        neighbours[i][j] = neighbours[j][i] = (s, gs, gc)

    def urgency(i, j, border):
        # > 0: merge. Depth of the dip below the lower peak against the split threshold.
        s, gs, gc = border
        pi = peak[i]
        pj = peak[j]
        low = pi if pi < pj else pj
        if small[i] or small[j]:
            return 1.0 + s / (low if low > 1e-9 else 1e-9)
        threshold = _SPLIT_DEPTH * low
        if threshold < _SPLIT_MIN_DEPTH_PX:
            threshold = _SPLIT_MIN_DEPTH_PX
        if not (judged[i] and judged[j]):
            return threshold - (low - s)
        if gc > 0:
            ratio = gs * ginv / math.sqrt(gc)
            if ratio >= 1.0:
                return 1.0 - ratio
        contrast = abs(mean[i] - mean[j]) * inv_step
        if contrast >= 1.0:
            return 1.0 - contrast
        bridged = threshold * (1.0 + bridge * (1.0 - contrast)) - (low - s)
        return bridged if bridged <= 1.0 - contrast else 1.0 - contrast

    # Only pairs due to merge (urgency > 0) enter the heap: a pair's urgency changes only when one of its
    # basins grows, and then it is pushed again. Entries are re-checked when popped (lazy deletion).
    due = first > 0
    heap = list(zip((-first[due]).tolist(), a[due].tolist(), b[due].tolist(), strict=True))
    heapq.heapify(heap)
    pop, push = heapq.heappop, heapq.heappush
    while heap:
        neg, i, j = pop(heap)
        if parent[i] != i or parent[j] != j:
            continue
        near_i = neighbours[i]
        border = near_i.get(j)
        if border is None:
            continue
        current = urgency(i, j, border)
        if current != -neg:
            if current > 0:
                push(heap, (-current, i, j))
            continue
        # Merge the smaller neighbour list into the larger one.
        near_j = neighbours[j]
        if len(near_i) < len(near_j):
            i, j = j, i
            near_i, near_j = near_j, near_i
        parent[j] = i
        if peak[j] > peak[i]:
            peak[i] = peak[j]
        area[i] += area[j]
        small[i] = area[i] < min_area_px
        if brightness is not None:
            total[i] += total[j]
            cells[i] += cells[j]
            judged[i] = cells[i] >= min_cells
            if judged[i]:
                mean[i] = total[i] / cells[i]
        del near_i[j]
        for k, border in near_j.items():
            if k == i:
                continue
            near_k = neighbours[k]
            del near_k[j]
            other = near_i.get(k)
            if other is not None:
                # The merged basin's border with k is the union of both: the higher saddle, groove sums add.
                s, gs, gc = border
                t, hs, hc = other
                border = (s if s > t else t, gs + hs, gc + hc)
            near_i[k] = near_k[i] = border
        neighbours[j] = None
        for k, border in near_i.items():
            u = urgency(i, k, border)
            if u > 0:
                push(heap, (-u, i, k))
    root = np.array(parent)
    # Parents point to earlier roots only through merges: follow them until they settle.
    while True:
        up = root[root]
        if np.array_equal(up, root):
            return root
        root = up


def _drop_small(labels: np.ndarray, min_area_px: float) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """Labels of fewer than `min_area_px` pixels become 0; the rest are renumbered 1..n in order (in place).

    Also returns the runs of the renumbered labels > 0 along rows (as `_row_runs`), for the table.
    """
    start, length, lab = _row_runs(labels)
    grain = lab > 0
    start, length, lab = start[grain], length[grain], lab[grain]
    area = np.bincount(lab, weights=length, minlength=int(lab.max(initial=0)) + 1)
    keep = area >= min_area_px
    keep[0] = False
    lut = np.cumsum(keep).astype(np.int32)
    lut[~keep] = 0
    lut.take(labels, out=labels, mode="clip")  # in place: no second full-size array
    lab = lut[lab]
    kept = lab > 0
    return labels, (start[kept], length[kept], lab[kept])


def _labels_in(labels: np.ndarray, where: np.ndarray, n: int) -> np.ndarray:
    """Bool per label 0..n: does the label occur where `where` is True."""
    return np.bincount(labels.ravel()[np.flatnonzero(where)], minlength=n + 1)[: n + 1] > 0


def _row_runs(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runs of equal values along the rows of a 2-D array, in row-major order.

    Returns the flat index of each run's first pixel, its length and its value. Run-length
    encoding once lets per-label sums, outlines and intercepts work on ~10^5 runs instead of
    every pixel of the frame.
    """
    rows, cols = values.shape
    flat = np.ascontiguousarray(values).ravel()
    if flat.size == 0:
        empty = np.zeros(0, np.intp)
        return empty, empty, flat[:0]
    change = flat[1:] != flat[:-1]
    change[cols - 1 :: cols] = True  # a run never continues onto the next row
    starts = np.empty(np.count_nonzero(change) + 1, np.intp)
    starts[0] = 0
    starts[1:] = np.flatnonzero(change) + 1
    length = np.diff(starts, append=flat.size)
    return starts, length, flat[starts]


def _grain_table(labels, runs, region, occluder, scale) -> pd.DataFrame:
    """The per-grain table of labels 1..n, from their runs along rows (first pixel, length, label)."""
    start, length, lab = runs
    n = int(lab.max(initial=0))
    ids = np.arange(1, n + 1)
    cols = labels.shape[1]
    row, col = np.divmod(start, cols)
    area = np.bincount(lab, weights=length, minlength=n + 1)[1:]
    # Sums of the row and column indices of each grain's pixels (integers: exact in float64).
    y_sum = np.bincount(lab, weights=row * length, minlength=n + 1)[1:]
    x_sum = np.bincount(lab, weights=(2 * col + length - 1) * length * 0.5, minlength=n + 1)[1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        y = y_sum / area
        x = x_sum / area

    # Grains within one pixel (8-neighbourhood) of the region border or the image edge.
    outside = np.pad(~region, 1, constant_values=True).view(np.uint8)
    near_outside = cv2.dilate(outside, np.ones((3, 3), np.uint8))[1:-1, 1:-1].view(bool)
    touches_border = _labels_in(labels, near_outside, n)
    occluded = np.zeros(n + 1, dtype=bool)
    if occluder is not None and occluder.any():
        near = cv2.dilate(occluder.view(np.uint8), np.ones((3, 3), np.uint8)).view(bool)
        occluded = _labels_in(labels, near, n)

    # Each run along a row enters and leaves its grain once.
    row_crossings = 2.0 * np.bincount(lab, minlength=n + 1)[1:]
    perimeter = _crofton_perimeter(labels, n, row_crossings)
    feret_max, feret_min = _feret(row, col, length, lab, n)
    with np.errstate(invalid="ignore", divide="ignore"):
        aspect = feret_max / feret_min
    return pd.DataFrame(
        {
            "grain_id": ids.astype(np.int32),
            "area_um2": area * scale**2,
            "ecd_um": np.sqrt(4.0 * area / np.pi) * scale,
            "feret_max_um": feret_max * scale,
            "feret_min_um": feret_min * scale,
            "aspect_ratio": aspect,
            "perimeter_um": perimeter * scale,
            "x_px": x,
            "y_px": y,
            "touches_border": touches_border[1:],
            "occluded": occluded[1:],
        }
    )


def _crofton_perimeter(labels: np.ndarray, n: int, row_crossings: np.ndarray) -> np.ndarray:
    """Cauchy-Crofton perimeter from label changes along rows, columns and both diagonals.

    ``P = pi/8 (N_0 + N_90 + (N_45 + N_135) / sqrt(2))`` where ``N_d`` counts
    the entries into and exits from the grain along lines of direction d
    (diagonal lines are 1/sqrt(2) px apart). Exact for discs in the limit.
    `row_crossings` is ``N_0`` per label 1..n. Along any line a grain is
    entered as often as it is left (the image edge counts as not grain), so
    ``N_d`` is twice the number of pixels whose predecessor along d is
    another label or outside the image.
    """
    if n == 0:
        return np.zeros(0)
    cols = labels.shape[1]
    flat = np.ascontiguousarray(labels).ravel()
    first_row = np.bincount(flat[:cols], minlength=n + 1)
    # Pixels below the first row against their predecessors along d, as shifted flat views (contiguous:
    # fast). A diagonal predecessor across the side of the image wraps to another row: those pixels
    # are entries through the side column.
    here = flat[cols:]
    change = here != flat[: flat.size - cols]
    entries_90 = first_row + np.bincount(here[np.flatnonzero(change)], minlength=n + 1)
    change[:1] = True  # 45°, from the upper left: column 0 has no predecessor
    np.not_equal(here[1:], flat[: flat.size - cols - 1], out=change[1:])
    change[::cols] = True
    entries_45 = first_row + np.bincount(here[np.flatnonzero(change)], minlength=n + 1)
    np.not_equal(here, flat[1 : flat.size - cols + 1], out=change)  # 135°, from the upper right
    change[cols - 1 :: cols] = True
    entries_135 = first_row + np.bincount(here[np.flatnonzero(change)], minlength=n + 1)
    diagonal = 2.0 * (entries_45 + entries_135)[1:]
    return (math.pi / 8.0) * (row_crossings + 2.0 * entries_90[1:] + math.sqrt(0.5) * diagonal)


def _feret(row, col, length, lab, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Largest and smallest caliper widths over the pixel corners of each grain's outline.

    From the runs of each grain along rows (first pixel's row and column, length, label 1..n).
    """
    feret_max = np.zeros(n)
    feret_min = np.zeros(n)
    if n == 0:
        return feret_max, feret_min
    # The hull of a grain's pixels is spanned by the first and last pixel of each of its runs along rows
    # (in row-major order; a one-pixel run gives one point).
    r = np.repeat(row, 2)
    c = np.stack([col, col + length - 1], axis=1).ravel()
    lab = np.repeat(lab, 2)
    single = np.ones(r.size, bool)
    single[1::2] = length > 1
    r, c, lab = r[single], c[single], lab[single]
    order = _stable_argsort(lab, n + 1)
    r, c, lab = r[order], c[order], lab[order]
    bounds = np.searchsorted(lab, np.arange(1, n + 2))
    points = np.stack([c, r], axis=1).astype(np.int32)
    hulls = [cv2.convexHull(points[bounds[g] : bounds[g + 1]]).reshape(-1, 2) for g in range(n)]
    sizes = np.array([h.shape[0] for h in hulls])
    offsets = np.r_[0, np.cumsum(sizes)[:-1]]
    hull_px = np.concatenate(hulls)
    vertices = hull_px.astype(np.float64)
    # The pixel corners' hull is the pixel centres' hull P plus the unit square S (Minkowski sum), so
    # its widths are those of P plus |cos| + |sin| of the direction: the largest is the longest
    # (|dx| + 1, |dy| + 1) between two vertices of P; the smallest lies across an edge of P or of S.
    # Grains of similar hull size in batches of padded (batch, k, k) arrays, ~2.5e5 elements each
    # (a few MB of temporaries, not a multiple of the frame).
    order = np.argsort(sizes, kind="stable")
    sorted_sizes = sizes[order].astype(np.int64)
    start = 0
    while start < n:
        cost = np.arange(1, n - start + 1) * sorted_sizes[start:] ** 2  # increasing
        stop = start + max(1, int(np.searchsorted(cost, 250_000, side="right")))
        batch = order[start:stop]
        k = int(sizes[batch].max())
        j = np.arange(k)
        length = sizes[batch][:, None]
        here = offsets[batch][:, None] + np.where(j < length, j, 0)  # pad with the first vertex
        after = offsets[batch][:, None] + np.where(j + 1 < length, j + 1, 0)
        hull, edges = vertices[here], vertices[after] - vertices[here]
        # Integer vertices: squared spans are exact (int32 up to spans of 32767 px).
        span_sq = np.zeros((len(batch), k, k), np.int32 if hull_px.max(initial=0) < 32767 else np.int64)
        for axis in (0, 1):
            coord = hull_px[here, axis]
            span = np.abs(coord[:, :, None] - coord[:, None, :]) + 1
            span_sq += span * span
        feret_max[batch] = np.sqrt(span_sq.max(axis=(1, 2)))
        # Rotating calipers: the smallest width is attained perpendicular to a hull edge.
        norm = np.hypot(edges[..., 0], edges[..., 1])
        real = (j < length) & (norm > 0)
        normals = np.stack([edges[..., 1], -edges[..., 0]], axis=2) / np.where(real, norm, 1.0)[..., None]
        proj = np.einsum("bpd,bed->bpe", hull, normals)
        width = proj.max(axis=1) - proj.min(axis=1) + np.abs(normals).sum(axis=2)
        width = np.where(real, width, np.inf).min(axis=1)
        box = np.minimum(*(hull.max(axis=1) - hull.min(axis=1)).T) + 1.0  # across the square's edges
        feret_min[batch] = np.minimum(width, box)
        start = stop
    return feret_max, feret_min


def grain_summary(
    table: pd.DataFrame,
    phases: np.ndarray | None = None,
    *,
    pixel_size_um: float | None,
    grain_code: int = PHASE_CODES["nasicon"],
    labels: np.ndarray | None = None,
    occluder_code: int | None = PHASE_CODES["na3po4"],
    exclude_occluded: bool = False,
) -> dict:
    """Per-frame grain statistics and ASTM E112-13 grain size numbers.

    Parameters
    ----------
    table : pandas.DataFrame
        Per-grain table from :func:`measure_grains`.
    phases : (rows, cols) ndarray of int, optional
        The phase map the grains came from; needed (with `labels`, or alone)
        for the intercept method.
    pixel_size_um : float or None
        Pixel size in µm (the one given to :func:`measure_grains`). None: the
        table is in pixels, and the G-numbers (which need millimetres) are NaN.
    grain_code : int
        Phase code of the grains in `phases`.
    labels : (rows, cols) ndarray of int, optional
        Grain labels from :func:`measure_grains`. With them, test lines count
        boundaries between touching grains too; without, only phase boundaries
        (an upper bound of the intercept when grains touch).
    occluder_code : int or None
        Phase lying on top of grains (Na3PO4 islands): test lines end there.
    exclude_occluded : bool
        Leave grains flagged ``occluded`` out of the count and ECD statistics
        (they are measured by their visible part only). Default False: every
        grain off the border counts, as synth's ``grain_*_visible`` truth.

    Returns
    -------
    dict
        ``grain_count`` (grains not touching the border), ``grain_ecd_mean_um``,
        ``grain_ecd_median_um``, ``grain_ecd_std_um`` (sample std),
        ``grain_area_mean_um2``, ``grain_na_per_mm2`` and
        ``astm_g_planimetric``, ``mean_intercept_um`` and
        ``astm_g_intercept``. NaN where undefined (no grains, no phase map).

    Notes
    -----
    *Planimetric (Jeffries), ASTM E112-13 §11.* ``N_A = (N_inside + N_intercepted / 2) / A``
    where grains cut by the region border or image edge count one half, and
    ``A`` is the area of the grain phase inside the region (the sum of all
    grain areas): for a grain phase among glass this is the grain size of
    that phase, as E112 §1.3 / E1181 prescribe for two-phase structures.
    ``G = 3.321928 log10(N_A) - 2.954`` with ``N_A`` per mm².

    *Intercept (Heyn), ASTM E112-13 §13.* Every row and column of the map is
    a test line. ``l = L / N``: ``L`` is the test-line length inside grains,
    ``N`` the number of grain intercepts, where a segment that ends at the
    region border, the image edge or an occluding island counts one half
    (E112 line-end rule). For grains among a second phase this is E112's
    ``l_α = L_α / N_α`` of the grain phase. ``G = -6.643856 log10(l_mm) - 3.288``.

    Examples
    --------
    >>> import numpy as np
    >>> phases = np.ones((100, 100), dtype=np.uint8)
    >>> phases[20:40, 20:40] = 2
    >>> phases[60:80, 50:70] = 2
    >>> labels, table = measure_grains(phases, pixel_size_um=1.0)
    >>> out = grain_summary(table, phases, pixel_size_um=1.0, labels=labels)
    >>> out["grain_count"], round(out["mean_intercept_um"], 3), round(out["astm_g_planimetric"], 2)
    (2, 20.0, 8.33)
    """
    missing = [c for c in ("area_um2", "ecd_um", "touches_border") if c not in table.columns]
    if missing:
        raise ValueError(f"`table` lacks columns {missing}; pass the table returned by measure_grains")
    scale = _check_pixel_size(pixel_size_um)
    counted_rows = ~table["touches_border"].astype(bool)
    if exclude_occluded and "occluded" in table.columns:
        counted_rows &= ~table["occluded"].astype(bool)
    inside = table.loc[counted_rows]
    ecd = inside["ecd_um"].to_numpy(float)
    out: dict = {
        "grain_count": int(len(inside)),
        "grain_ecd_mean_um": float(ecd.mean()) if ecd.size else math.nan,
        "grain_ecd_median_um": float(np.median(ecd)) if ecd.size else math.nan,
        "grain_ecd_std_um": float(ecd.std(ddof=1)) if ecd.size > 1 else math.nan,
        "grain_area_mean_um2": float(inside["area_um2"].mean()) if ecd.size else math.nan,
    }
    phase_area = float(table["area_um2"].sum())
    n_border = int(table["touches_border"].astype(bool).sum())
    n_inside = int(len(table) - n_border)
    counted = n_inside + 0.5 * n_border
    na = counted / phase_area if phase_area > 0 else math.nan
    na_mm2 = na * 1e6 if pixel_size_um is not None else math.nan
    out["grain_na_per_mm2"] = na_mm2
    out["astm_g_planimetric"] = astm_g_from_na(na_mm2) if na_mm2 > 0 else math.nan

    intercept = math.nan
    if phases is not None or labels is not None:
        intercept = _mean_intercept_px(phases, labels, grain_code, occluder_code) * scale
    out["mean_intercept_um"] = intercept
    out["astm_g_intercept"] = (
        astm_g_from_intercept(intercept) if pixel_size_um is not None and intercept > 0 else math.nan
    )
    return out


def _mean_intercept_px(phases, labels, grain_code, occluder_code) -> float:
    """Heyn mean intercept along all rows and columns, in pixels.

    Grain segments of the test lines are the runs of one label > 0 (labels are 0 off the grain phase,
    as :func:`measure_grains` returns them), or of the grain phase without labels. A segment is cut
    (counts one half) where the pixel beyond either end lies outside the region, on an occluder, or
    beyond the image edge; the phase map is read only at the segments' ends.
    """
    if labels is not None:
        labels = np.asarray(labels)
        if labels.ndim != 2:
            raise ValueError(f"`labels` must be a 2-D label image, got shape {labels.shape}")
        if phases is not None and np.shape(phases) != labels.shape:
            raise ValueError(f"`labels` shape {labels.shape} differs from `phases` shape {np.shape(phases)}")
        code = labels if labels.dtype == np.int32 else labels.astype(np.int32)
    else:
        phases = np.asarray(phases)
        if phases.ndim != 2:
            raise ValueError(f"`phases` must be a 2-D phase map, got shape {phases.shape}")
        code = (phases == grain_code).view(np.uint8)
    flat_phases = None if phases is None else np.asarray(phases).ravel()
    rows, cols = code.shape

    def stops(index: np.ndarray) -> np.ndarray:
        # Not-grain pixels that end a test line: outside the region, and occluders (the grain
        # continues under them).
        if flat_phases is None:
            return np.zeros(index.size, bool)
        phase = flat_phases[index]
        stop = phase == OUTSIDE
        if occluder_code is not None:
            stop |= phase == occluder_code
        return stop

    length = 0
    count = 0.0
    # Rows of the map, then its columns (rows of the transposed map; `to_map` turns their flat
    # indices into the map's).
    for lines, to_map in (
        (code, lambda index: index),
        (cv2.transpose(code), lambda index: (index % rows) * cols + index // rows),
    ):
        line_length = lines.shape[1]
        start, run_length, value = _row_runs(lines)
        segment = value > 0
        start, run_length = start[segment], run_length[segment]
        stop = start + run_length  # one past the end
        # Beyond both ends of a line lies the region border.
        open_end = start % line_length == 0
        open_end |= stop % line_length == 0
        inner = np.flatnonzero(~open_end)
        open_end[inner] = stops(to_map(start[inner] - 1)) | stops(to_map(stop[inner]))
        length += int(run_length.sum())
        count += start.size - 0.5 * np.count_nonzero(open_end)
    return float(length / count) if count > 0 else math.nan
