"""Na3PO4 islands: labelling, tracking between frames, events, statistics and exports.

An *island* is a connected region (4-connectivity) of the island phase in one
registered frame, in reference-grid pixel coordinates. Consecutive frames are
linked through a bipartite overlap graph between their islands; every island
of the later frame is then one of

- a **continuation** of exactly one island (1:1, it keeps its id),
- a **coalescence** product of several islands (n:1, new id, parents recorded),
- a **split** child of an island that became several (1:n, new id, parent recorded),
- a **formation** (0:1, new id),

and every island of the earlier frame that links to nothing is a
**dissolution** (1:0). An n:m component is reported as its coalescences (every
later island with several parents) and splits (every earlier island with several
children). An island whose place is mostly *not observed* in the other frame
(it left, or came into, the analysed region) is recorded as ``left_region`` /
``entered_region`` instead of a dissolution / formation: nothing is known about
what happened to it.

Lengths given in µm are converted with ``pixel_size_um``; when that is None
(an uncalibrated series) every ``*_um`` parameter is read in pixels and every
``*_um2`` area in px².

Coordinates: ``x_px`` is the column and ``y_px`` the row of a centroid, origin at
the centre of the top-left pixel. Arrays are indexed ``[row, col]``.

Examples
--------
>>> import numpy as np
>>> a = np.zeros((20, 20), np.int32); a[2:6, 2:6] = 1; a[2:6, 8:12] = 2
>>> b = np.zeros((20, 20), np.int32); b[2:6, 2:12] = 1           # the two islands merged
>>> lineage, maps = link_islands([a, b], [0.0, 24.0])
>>> lineage.events[["event", "islands_before", "islands_after"]].to_dict("records")
[{'event': 'coalescence', 'islands_before': '1;2', 'islands_after': '3'}]
>>> lineage.graph
{3: [1, 2]}
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from scipy import optimize, sparse
from scipy.sparse import csgraph

from .config import OUTSIDE, PHASE_CODES
from .errors import OutputError

__all__ = [
    "EVENT_TYPES",
    "REGION_EVENT_TYPES",
    "ISLAND_COLUMNS",
    "EVENT_COLUMNS",
    "Lineage",
    "IslandTracker",
    "label_islands",
    "link_islands",
    "interval_statistics",
    "frame_statistics",
    "size_distribution",
    "fit_kinetics",
    "event_map",
    "event_map_indexed",
    "to_napari_tracks",
    "write_geff",
    "score_events",
    "area_balance",
    "linking_metrics",
]

#: The island events the scientists count, in the order reports list them.
EVENT_TYPES: tuple[str, ...] = ("formation", "coalescence", "split", "dissolution")
#: Islands that came into / went out of the observed area: not formations or dissolutions.
REGION_EVENT_TYPES: tuple[str, ...] = ("entered_region", "left_region")

#: Columns of :attr:`Lineage.islands`, one row per island per frame.
ISLAND_COLUMNS: dict[str, str] = {
    "frame": "frame index (time order)",
    "time_h": "exposure time in hours",
    "island_id": "persistent island id (same id = same island, continued 1:1)",
    "area_px": "area in pixels",
    "area_um2": "area in µm² (px² when uncalibrated)",
    "ecd_um": "equivalent circular diameter in µm (px when uncalibrated)",
    "x_px": "centroid column in reference-grid pixels",
    "y_px": "centroid row in reference-grid pixels",
    "touches_border": "the island touches the edge of the observed region (it may extend beyond it)",
    "origin": "first_frame, continued, formed, entered_region, coalesced or split",
    "fate": "continued, coalesced, split, dissolved, left_region, or last_frame",
    "parents": "';'-joined ids of the islands it came from by coalescence or split, on every row of the island",
}

#: Columns of :attr:`Lineage.events`, one row per event.
EVENT_COLUMNS: dict[str, str] = {
    "frame_from": "earlier frame index",
    "frame_to": "later frame index",
    "time_from_h": "earlier frame's time in hours",
    "time_to_h": "later frame's time in hours",
    "event": "formation, coalescence, split, dissolution, entered_region or left_region",
    "x_px": "centroid column of the island produced (formation, coalescence) or ended (dissolution, split)",
    "y_px": "centroid row, same island as x_px",
    "islands_before": "';'-joined ids in the earlier frame",
    "islands_after": "';'-joined ids in the later frame",
    "area_um2": "area of the island at x_px, y_px",
    "area_before_um2": "total area of islands_before",
    "area_after_um2": "total area of islands_after",
    "touches_border": "an island involved touches the edge of the observed region",
    "reorganisation": "part of an n:m component (several islands in and out)",
}

# An island counts as dissolved (formed) only when at least this fraction of its
# footprint is observed in the later (earlier) frame; otherwise the area it sat
# on was not imaged and nothing is known about it.
_MIN_OBSERVED_FRACTION = 0.5

_CROSS = ndi.generate_binary_structure(2, 1)


# ---------------------------------------------------------------------------
# input checks


def _length_scale(pixel_size_um: float | None) -> float:
    if pixel_size_um is None:
        return 1.0
    if not np.isfinite(pixel_size_um) or pixel_size_um <= 0:
        raise ValueError(f"`pixel_size_um` must be a positive number or None (uncalibrated), got {pixel_size_um!r}")
    return float(pixel_size_um)


def _check_non_negative(value: float, name: str) -> float:
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"`{name}` must be a finite number >= 0, got {value!r}")
    return float(value)


def _check_label_image(labels, name: str = "labels") -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"`{name}` must be a 2-D label image (rows, cols), got shape {labels.shape}")
    if labels.dtype == bool or not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(
            f"`{name}` must hold integer labels (0 background), got dtype {labels.dtype}; "
            "use label_islands(phases) to label a phase map"
        )
    if labels.size and labels.min() < 0:
        raise ValueError(f"`{name}` has negative labels; labels must be >= 0 (0 = background)")
    return labels


def _check_mask(mask, shape: tuple[int, ...], name: str) -> np.ndarray | None:
    if mask is None:
        return None
    mask = np.asarray(mask)
    if mask.shape != tuple(shape):
        raise ValueError(f"`{name}` must have the image's shape {tuple(shape)}, got {mask.shape}")
    if mask.dtype != bool:
        raise TypeError(f"`{name}` must be a boolean mask (True = analysed), got dtype {mask.dtype}")
    return mask


# ---------------------------------------------------------------------------
# labelling


def label_islands(
    phases: np.ndarray,
    *,
    pixel_size_um: float | None = None,
    island_code: int = PHASE_CODES["na3po4"],
    min_island_area_um2: float = 0.1,
    smooth_um: float = 0.0,
    valid: np.ndarray | None = None,
) -> np.ndarray:
    """Label the islands (connected regions of one phase) of a phase map.

    Parameters
    ----------
    phases : (rows, cols) ndarray of int
        Phase codes; ``OUTSIDE`` (255) marks pixels outside the analysed region,
        which are never part of an island.
    pixel_size_um : float, optional
        Pixel size in µm. None: lengths in px, areas in px².
    island_code : int
        Phase code of the islands (default: Na3PO4).
    min_island_area_um2 : float
        Islands smaller than this are dropped.
    smooth_um : float
        Gaussian sigma (µm) of an outline smoothing applied to the phase mask
        before labelling (0: none). It is normalised by the analysed region, so
        islands at its edge do not shrink.
    valid : (rows, cols) ndarray of bool, optional
        Pixels to analyse (True); combined with ``phases != 255``.

    Returns
    -------
    labels : (rows, cols) ndarray of int32
        0 background, islands numbered 1..n in raster order of their first pixel.

    Examples
    --------
    >>> phases = np.full((6, 8), 2, np.uint8)
    >>> phases[1:3, 1:3] = 3; phases[4, 6] = 3; phases[0, 7] = 255
    >>> label_islands(phases, min_island_area_um2=2).max()
    np.int32(1)
    """
    phases = np.asarray(phases)
    if phases.ndim != 2:
        raise ValueError(f"`phases` must be a 2-D phase map (rows, cols), got shape {phases.shape}")
    if not np.issubdtype(phases.dtype, np.integer):
        raise TypeError(f"`phases` must hold integer phase codes, got dtype {phases.dtype}")
    if island_code == OUTSIDE or not 0 <= int(island_code) < OUTSIDE:
        raise ValueError(f"`island_code` must be a phase code in 0..{OUTSIDE - 1}, got {island_code!r}")
    scale = _length_scale(pixel_size_um)
    min_area_px = _check_non_negative(min_island_area_um2, "min_island_area_um2") / scale**2
    sigma_px = _check_non_negative(smooth_um, "smooth_um") / scale
    valid = _check_mask(valid, phases.shape, "valid")

    inside = phases != OUTSIDE
    if valid is not None:
        inside &= valid
    mask = (phases == island_code) & inside
    if sigma_px > 0:
        # Normalised convolution: the mean of the island indicator over analysed
        # pixels only, so the region's edge does not erode islands touching it.
        num = ndi.gaussian_filter(mask.astype(np.float32), sigma_px, mode="constant")
        den = ndi.gaussian_filter(inside.astype(np.float32), sigma_px, mode="constant")
        mask = (num > 0.5 * den) & inside
    import cv2

    # OpenCV labels 4-connected regions in half the time of scipy.ndimage.label; it does not document
    # its numbering (raster order in every version tried), so the islands are renumbered below.
    n, labels = cv2.connectedComponents(mask.view(np.uint8), connectivity=4, ltype=cv2.CV_32S)
    if n == 1:
        return labels
    # Islands are a few per cent of the frame: only their pixels are counted and renumbered.
    # factorize numbers the labels in order of first appearance along the raster.
    island, _ = pd.factorize(labels[mask])
    area = np.bincount(island, minlength=n - 1)
    keep = area >= min_area_px
    lut = np.zeros(n - 1, np.int32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    labels[mask] = lut[island]  # in place: background is already 0
    return labels


# ---------------------------------------------------------------------------
# per-frame measurement


@dataclass
class _Frame:
    """One frame's islands in consecutive numbering (internal)."""

    index: int
    time_h: float
    labels: np.ndarray  # int32, 1..n, 0 background and unobserved
    observed: np.ndarray | None  # bool, None = whole frame
    area_px: np.ndarray  # (n+1,)
    x_px: np.ndarray
    y_px: np.ndarray
    bbox: np.ndarray  # (4, n+1): first row, last row, first col, last col
    touches: np.ndarray  # bool (n+1,)
    ids: np.ndarray  # persistent ids (n+1,), ids[0] = 0
    parents: np.ndarray | None = None  # ';'-joined parent ids (n+1,), object

    @property
    def n(self) -> int:
        return self.area_px.size - 1


def _runs(*images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start (flat index) and length of every row run over which all ``images`` are constant.

    Islands are a few hundred runs each at most, so per-run arithmetic replaces
    per-pixel work (sorting, bincounts) on large frames.
    """
    flat0 = images[0].ravel()
    size, width = flat0.size, images[0].shape[1]
    change = np.empty(size, bool)
    if size == 0:
        return np.empty(0, np.intp), np.empty(0, np.intp)
    change[0] = True
    np.not_equal(flat0[1:], flat0[:-1], out=change[1:])
    for img in images[1:]:
        flat = img.ravel()
        change[1:] |= flat[1:] != flat[:-1]
    change[::width] = True
    starts = np.flatnonzero(change)
    lengths = np.diff(starts, append=size)
    return starts, lengths


def _consecutive(labels: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Renumber labels 1..n (keeping order); cheap when they already are. Returns (labels, run values, n)."""
    values = labels.ravel()[starts]
    present = np.unique(values)
    present = present[present > 0]
    n = present.size
    if n == 0 or int(present[-1]) == n:
        return labels.astype(np.int32, copy=False), values.astype(np.int64), n
    if int(present[-1]) <= 4 * labels.size + 1024:
        lut = np.zeros(int(present[-1]) + 1, np.int32)
        lut[present] = np.arange(1, n + 1, dtype=np.int32)
        return lut[labels], lut[values].astype(np.int64), n
    new = np.searchsorted(np.concatenate([[0], present]), labels).astype(np.int32)
    return new, new.ravel()[starts].astype(np.int64), n


def _edge_index(observed: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray:
    """Flat indices of observed pixels 4-adjacent to unobserved pixels or to the image edge."""
    if observed is None:
        zone = np.zeros(shape, bool)
    else:
        zone = observed & ~ndi.binary_erosion(observed, _CROSS, border_value=0)
    zone[0, :] = zone[-1, :] = True
    zone[:, 0] = zone[:, -1] = True
    if observed is not None:
        zone &= observed
    return np.flatnonzero(zone)


def _measure(labels, starts, lengths, values, n, edge_index):
    """Area, centroid, bounding box and border contact of every label, from row runs."""
    width = labels.shape[1]
    keep = values > 0
    lab, st, ln = values[keep], starts[keep], lengths[keep]
    rows, c0 = np.divmod(st, width)
    area = np.bincount(lab, weights=ln, minlength=n + 1).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        x = np.bincount(lab, weights=ln * (c0 + (ln - 1) / 2.0), minlength=n + 1) / area
        y = np.bincount(lab, weights=ln * rows, minlength=n + 1) / area
    big = np.iinfo(np.int64).max
    bbox = np.stack([np.full(n + 1, big), np.full(n + 1, -1), np.full(n + 1, big), np.full(n + 1, -1)])
    np.minimum.at(bbox[0], lab, rows)
    np.maximum.at(bbox[1], lab, rows)
    np.minimum.at(bbox[2], lab, c0)
    np.maximum.at(bbox[3], lab, c0 + ln - 1)
    touches = np.zeros(n + 1, bool)
    touches[labels.ravel()[edge_index]] = True
    touches[0] = False
    return area, x, y, bbox, touches


def _join(ids) -> str:
    return ";".join(str(int(i)) for i in ids)


def _split_ids(text) -> list[int]:
    if text is None or (isinstance(text, float) and math.isnan(text)) or str(text) == "":
        return []
    return [int(t) for t in str(text).split(";") if t != ""]


# ---------------------------------------------------------------------------
# lineage


@dataclass
class Lineage:
    """Everything the tracker learnt about a series' islands.

    Attributes
    ----------
    islands : DataFrame
        One row per island per frame; columns :data:`ISLAND_COLUMNS`.
    events : DataFrame
        One row per event; columns :data:`EVENT_COLUMNS`.
    graph : dict of int to list of int
        Child island id -> parent ids, for every island that got a new id from
        others (coalescence, split): the napari Tracks ``graph`` convention.
    frames : DataFrame
        One row per frame: ``frame``, ``time_h``, ``n_islands``, ``island_area_um2``,
        ``observed_area_um2`` (area analysed in that frame), ``n_touching_border``.
    intervals : DataFrame
        Pixel-level changes per pair of consecutive frames, inside the area
        observed in both: ``frame_from``, ``frame_to``, ``time_from_h``,
        ``time_to_h``, ``common_area_um2``, ``island_area_before_um2``,
        ``island_area_after_um2``, ``persisted_area_um2`` (island in both),
        ``vanished_area_um2`` (island before, not after), ``newly_covered_area_um2``
        (island after, not before).
    pixel_size_um : float or None
        Pixel size the areas were computed with (None: px units).
    """

    islands: pd.DataFrame
    events: pd.DataFrame
    graph: dict[int, list[int]]
    frames: pd.DataFrame = field(default_factory=pd.DataFrame)
    intervals: pd.DataFrame = field(default_factory=pd.DataFrame)
    pixel_size_um: float | None = None


#: Types of the columns of :attr:`Lineage.events` (the text columns are objects).
_EVENT_DTYPES: dict[str, Any] = {c: object for c in EVENT_COLUMNS} | {
    "frame_from": np.int64,
    "frame_to": np.int64,
    "time_from_h": float,
    "time_to_h": float,
    "x_px": float,
    "y_px": float,
    "area_um2": float,
    "area_before_um2": float,
    "area_after_um2": float,
    "touches_border": bool,
    "reorganisation": bool,
}


def _empty_events() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in EVENT_COLUMNS}).astype(_EVENT_DTYPES)


class IslandTracker:
    """Link the islands of a series frame by frame, keeping only the previous frame.

    Parameters
    ----------
    pixel_size_um : float, optional
        Pixel size in µm (None: px units for every length and area).
    link_tolerance_um : float
        Residual misregistration tolerated: an island that overlaps nothing in
        the other frame is still linked 1:1 to an equally unlinked island within
        this distance. The tolerance is deliberately *not* applied to islands that
        already overlap something, because dilating every island would turn two
        islands lying closer than twice the tolerance into a false coalescence
        (and a small island dissolving beside a growing one into a merge).
    min_overlap_fraction : float
        Overlap needed to link two islands, as a fraction of the smaller one's area.
    region : (rows, cols) ndarray of bool, optional
        The analysed region (True inside) in the reference grid. Islands outside
        are ignored; islands touching its edge are flagged ``touches_border``.
        None: the whole frame.

    Examples
    --------
    >>> tracker = IslandTracker(pixel_size_um=0.1)
    >>> a = np.zeros((10, 10), np.int32); a[1:4, 1:4] = 1
    >>> b = np.zeros((10, 10), np.int32); b[1:5, 1:5] = 7       # grew; raw label irrelevant
    >>> tracker.add(a, 0.0).max(), tracker.add(b, 24.0).max()
    (np.int32(1), np.int32(1))
    >>> tracker.result().islands[["frame", "island_id", "area_um2"]].round(4).to_dict("list")
    {'frame': [0, 1], 'island_id': [1, 1], 'area_um2': [0.09, 0.16]}
    """

    def __init__(
        self,
        *,
        pixel_size_um: float | None = None,
        link_tolerance_um: float = 0.3,
        min_overlap_fraction: float = 0.05,
        region: np.ndarray | None = None,
    ):
        self.pixel_size_um = pixel_size_um
        self._scale = _length_scale(pixel_size_um)
        self._tolerance_px = _check_non_negative(link_tolerance_um, "link_tolerance_um") / self._scale
        if not 0 <= min_overlap_fraction <= 1:
            raise ValueError(f"`min_overlap_fraction` must be in [0, 1], got {min_overlap_fraction!r}")
        self.min_overlap_fraction = float(min_overlap_fraction)
        if region is not None:
            region = np.asarray(region)
            if region.ndim != 2 or region.dtype != bool:
                raise TypeError(
                    f"`region` must be a 2-D boolean mask (True = analysed), got {region.dtype} {region.shape}"
                )
        self.region = region
        self._region_edge = None
        self._prev: _Frame | None = None
        self._next_id = 1
        self._island_rows: list[dict[str, np.ndarray]] = []
        self._event_rows: list[pd.DataFrame] = []
        self._frame_rows: list[dict] = []
        self._interval_rows: list[dict] = []
        self.graph: dict[int, list[int]] = {}

    # -- public --------------------------------------------------------------

    @property
    def n_frames(self) -> int:
        return len(self._frame_rows)

    def add(self, labels: np.ndarray, time_h: float, *, valid: np.ndarray | None = None) -> np.ndarray:
        """Add the next frame's island labels; return them renumbered with persistent ids.

        Parameters
        ----------
        labels : (rows, cols) ndarray of int
            Island labels of this frame (0 background; any positive numbering,
            e.g. from :func:`label_islands`), in the reference grid.
        time_h : float
            Exposure time in hours; must increase from frame to frame.
        valid : (rows, cols) ndarray of bool, optional
            Pixels actually imaged in this frame (True), e.g. ``phases != 255``.
            Combined with ``region``. An island of the previous frame whose place
            is mostly not imaged here is recorded as ``left_region``, not as a
            dissolution.

        Returns
        -------
        (rows, cols) ndarray of int32
            The frame's islands labelled with persistent ids. A continued island
            keeps its id; coalesced, split and new islands get new ids.
        """
        labels = _check_label_image(labels)
        time_h = float(time_h)
        if not np.isfinite(time_h):
            raise ValueError(f"`time_h` must be finite, got {time_h!r}")
        if self.region is not None and self.region.shape != labels.shape:
            raise ValueError(
                f"`labels` shape {labels.shape} differs from `region` shape {self.region.shape}; "
                "resample every frame to the reference grid first"
            )
        prev = self._prev
        if prev is not None:
            if labels.shape != prev.labels.shape:
                raise ValueError(
                    f"frame {prev.index + 1} has shape {labels.shape}, the previous one "
                    f"{prev.labels.shape}; resample every frame to the reference grid first"
                )
            if time_h <= prev.time_h:
                raise ValueError(
                    f"`time_h` must increase: frame {prev.index + 1} at {time_h} h follows "
                    f"{prev.time_h} h; add frames in time order"
                )
        valid = _check_mask(valid, labels.shape, "valid")
        frame = self._make_frame(labels, time_h, valid)

        if prev is None:
            frame.ids[1:] = np.arange(self._next_id, self._next_id + frame.n)
            self._next_id += frame.n
            origin = np.full(frame.n, "first_frame", dtype=object)
            parents = np.full(frame.n, "", dtype=object)
        else:
            origin, parents = self._link(prev, frame)
        self._record_frame(frame, origin, parents)
        frame.parents = np.concatenate([[""], parents]).astype(object)
        self._prev = frame
        # Persistent ids only where there are islands, a few per cent of the frame.
        persistent = np.zeros(frame.labels.shape, np.int32)
        on = frame.labels > 0
        persistent[on] = frame.ids.astype(np.int32)[frame.labels[on]]
        return persistent

    def last_events(self) -> pd.DataFrame:
        """The events between the last two frames added (their rows of :attr:`Lineage.events`).

        Final as soon as the later frame is added, so an event map can be drawn while the
        series streams; empty before the second frame.
        """
        return self._event_rows[-1] if self._event_rows else _empty_events()

    def result(self) -> Lineage:
        """The lineage so far (islands, events, graph, per-frame and per-interval tables)."""
        if self._island_rows:
            islands = pd.DataFrame({k: np.concatenate([r[k] for r in self._island_rows]) for k in ISLAND_COLUMNS})
        else:
            islands = pd.DataFrame({k: pd.Series(dtype=object) for k in ISLAND_COLUMNS})
        islands = islands.astype(
            {"frame": np.int64, "island_id": np.int64, "area_px": np.int64, "touches_border": bool}
        )
        events = pd.concat(self._event_rows, ignore_index=True) if self._event_rows else _empty_events()
        frames = pd.DataFrame(self._frame_rows)
        intervals = pd.DataFrame(self._interval_rows)
        return Lineage(
            islands=islands,
            events=events,
            graph={k: list(v) for k, v in self.graph.items()},
            frames=frames,
            intervals=intervals,
            pixel_size_um=self.pixel_size_um,
        )

    # -- internals -----------------------------------------------------------

    def _make_frame(self, labels: np.ndarray, time_h: float, valid: np.ndarray | None) -> _Frame:
        observed = self.region
        if valid is not None:
            observed = valid if observed is None else (observed & valid)
        if observed is not None:
            labels = np.where(observed, labels, 0)
        starts, lengths = _runs(labels)
        labels, values, n = _consecutive(labels, starts)
        if valid is None:
            if self._region_edge is None:
                self._region_edge = _edge_index(self.region, labels.shape)
            edge = self._region_edge
        else:
            edge = _edge_index(observed, labels.shape)
        area, x, y, bbox, touches = _measure(labels, starts, lengths, values, n, edge)
        return _Frame(
            index=self.n_frames,
            time_h=time_h,
            labels=labels,
            observed=observed,
            area_px=area,
            x_px=x,
            y_px=y,
            bbox=bbox,
            touches=touches,
            ids=np.zeros(n + 1, np.int64),
        )

    def _record_frame(self, frame: _Frame, origin: np.ndarray, parents: np.ndarray) -> None:
        a2 = self._scale**2
        area_um2 = frame.area_px[1:] * a2
        self._island_rows.append(
            {
                "frame": np.full(frame.n, frame.index, np.int64),
                "time_h": np.full(frame.n, frame.time_h),
                "island_id": frame.ids[1:].copy(),
                "area_px": frame.area_px[1:].astype(np.int64),
                "area_um2": area_um2,
                "ecd_um": np.sqrt(4 * area_um2 / np.pi),
                "x_px": frame.x_px[1:],
                "y_px": frame.y_px[1:],
                "touches_border": frame.touches[1:].copy(),
                "origin": origin,
                "fate": np.full(frame.n, "last_frame", dtype=object),
                "parents": parents,
            }
        )
        observed_px = frame.labels.size if frame.observed is None else int(frame.observed.sum())
        self._frame_rows.append(
            {
                "frame": frame.index,
                "time_h": frame.time_h,
                "n_islands": frame.n,
                "island_area_um2": float(area_um2.sum()),
                "observed_area_um2": observed_px * a2,
                "n_touching_border": int(frame.touches.sum()),
            }
        )

    def _overlap_edges(self, prev: _Frame, cur: _Frame) -> tuple[np.ndarray, np.ndarray, int]:
        """Linked (a, b) pairs by direct overlap, plus the tolerance fallback."""
        starts, lengths = _runs(prev.labels, cur.labels)
        a = prev.labels.ravel()[starts]
        b = cur.labels.ravel()[starts]
        both = (a > 0) & (b > 0)
        length = lengths[both]
        persisted = int(length.sum())
        key = a[both].astype(np.int64) * (cur.n + 1) + b[both]
        key, inverse = np.unique(key, return_inverse=True)
        count = np.bincount(inverse, weights=length, minlength=key.size)
        ea, eb = np.divmod(key, cur.n + 1)
        smaller = np.minimum(prev.area_px[ea], cur.area_px[eb])
        keep = count >= self.min_overlap_fraction * smaller
        ea, eb = ea[keep], eb[keep]

        radius = int(math.floor(self._tolerance_px))
        if radius >= 1 and prev.n and cur.n:
            lonely_a = np.bincount(ea, minlength=prev.n + 1) == 0
            lonely_b = np.bincount(eb, minlength=cur.n + 1) == 0
            lonely_a[0] = lonely_b[0] = False
            if lonely_a.any() and lonely_b.any():
                fa, fb = self._tolerance_pairs(prev, cur, lonely_a, lonely_b, radius)
                ea = np.concatenate([ea, fa])
                eb = np.concatenate([eb, fb])
        return ea, eb, persisted

    @staticmethod
    def _tolerance_pairs(prev, cur, lonely_a, lonely_b, radius):
        import cv2

        # Only islands that overlap nothing are searched, each in its own
        # bounding box grown by the radius: cheap however large the frame.
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
        rows, cols = prev.labels.shape
        pa, pb, pc = [], [], []
        for a in np.flatnonzero(lonely_a):
            r0, r1, c0, c1 = prev.bbox[:, a]
            win = (
                slice(max(r0 - radius, 0), min(r1 + radius + 1, rows)),
                slice(max(c0 - radius, 0), min(c1 + radius + 1, cols)),
            )
            grown = cv2.dilate((prev.labels[win] == a).view(np.uint8), kernel).view(bool)
            near = cur.labels[win][grown]
            near = near[lonely_b[near]]
            if near.size:
                ids, count = np.unique(near, return_counts=True)
                pa.extend([a] * ids.size)
                pb.extend(ids.tolist())
                pc.extend(count.tolist())
        # Best-overlap-first one-to-one assignment: the fallback only repairs
        # misregistered 1:1 continuations, it never creates merges or splits.
        used_a, used_b, out_a, out_b = set(), set(), [], []
        for i in np.argsort(-np.asarray(pc), kind="stable"):
            a, b = int(pa[i]), int(pb[i])
            if a in used_a or b in used_b:
                continue
            used_a.add(a)
            used_b.add(b)
            out_a.append(a)
            out_b.append(b)
        return np.array(out_a, np.int64), np.array(out_b, np.int64)

    def _link(self, prev: _Frame, cur: _Frame) -> tuple[np.ndarray, np.ndarray]:
        ea, eb, persisted_px = self._overlap_edges(prev, cur)
        na, nb = prev.n, cur.n
        deg_a = np.bincount(ea, minlength=na + 1)
        deg_b = np.bincount(eb, minlength=nb + 1)

        # Ids: a 1:1 continuation keeps its id, every other island of this frame gets a new one.
        cont = (deg_a[ea] == 1) & (deg_b[eb] == 1)
        cur.ids[eb[cont]] = prev.ids[ea[cont]]
        new = np.flatnonzero(cur.ids[1:] == 0) + 1
        cur.ids[new] = np.arange(self._next_id, self._next_id + new.size)
        self._next_id += new.size

        # Parents of every new-id island: the earlier islands it is linked to; a
        # continued island carries its parents on (as in the output contract).
        parents = np.full(nb, "", dtype=object)
        parents[eb[cont] - 1] = prev.parents[ea[cont]]
        other = ~cont
        oa, ob = ea[other], eb[other]
        order = np.lexsort((prev.ids[oa], ob))
        oa, ob = oa[order], ob[order]
        starts = np.flatnonzero(np.r_[True, ob[1:] != ob[:-1]]) if ob.size else np.empty(0, np.int64)
        groups_b = np.split(oa, starts[1:]) if ob.size else []
        children_parents: dict[int, np.ndarray] = {}
        for s, group in zip(starts, groups_b):
            b = int(ob[s])
            pids = prev.ids[group]
            children_parents[b] = pids
            parents[b - 1] = _join(pids)
            self.graph[int(cur.ids[b])] = [int(p) for p in pids]

        # Fraction of each unlinked island's footprint imaged in the other frame.
        def observed_fraction(frame, other_observed):
            # A frame's labels are 0 outside its own observed pixels: the same mask hides nothing
            # (the pipeline passes one region for every frame).
            if other_observed is None or other_observed is frame.observed:
                return np.ones(frame.n + 1)
            hidden = np.bincount(frame.labels[~other_observed], minlength=frame.n + 1)
            return 1.0 - hidden / np.maximum(frame.area_px, 1)

        frac_prev_seen = observed_fraction(prev, cur.observed)
        frac_cur_seen = observed_fraction(cur, prev.observed)

        # Classification of each island (index 0 is background and ignored).
        b_has_multi_parent = deg_b >= 2
        a_split = deg_a >= 2
        b_from_split = np.zeros(nb + 1, bool)
        b_from_split[eb[a_split[ea]]] = True
        origin = np.full(nb + 1, "continued", dtype=object)
        formed = deg_b == 0
        origin[formed] = np.where(frac_cur_seen[formed] >= _MIN_OBSERVED_FRACTION, "formed", "entered_region")
        origin[b_from_split & ~b_has_multi_parent] = "split"
        origin[b_has_multi_parent] = "coalesced"
        origin[0] = ""

        fate = np.full(na + 1, "continued", dtype=object)
        a_into_merge = np.zeros(na + 1, bool)
        a_into_merge[ea[b_has_multi_parent[eb]]] = True
        gone = deg_a == 0
        fate[gone] = np.where(frac_prev_seen[gone] >= _MIN_OBSERVED_FRACTION, "dissolved", "left_region")
        fate[a_into_merge] = "coalesced"
        fate[a_split] = "split"
        fate[0] = ""
        self._island_rows[-1]["fate"] = fate[1:]

        # n:m components: several islands in and several out.
        reorg_a = np.zeros(na + 1, bool)
        reorg_b = np.zeros(nb + 1, bool)
        if oa.size:
            nodes = na + 1 + nb + 1
            graph = sparse.coo_matrix((np.ones(oa.size), (oa, na + 1 + ob)), shape=(nodes, nodes)).tocsr()
            _, comp = csgraph.connected_components(graph, directed=False)
            ua = np.unique(oa)
            ub = np.unique(ob)
            n_in = np.bincount(comp[ua], minlength=comp.max() + 1)
            n_out = np.bincount(comp[na + 1 + ub], minlength=comp.max() + 1)
            nm = (n_in >= 2) & (n_out >= 2)
            reorg_a[ua] = nm[comp[ua]]
            reorg_b[ub] = nm[comp[na + 1 + ub]]

        self._event_rows.append(self._events(prev, cur, ea, eb, origin, fate, children_parents, reorg_a, reorg_b))
        self._interval_rows.append(self._pixel_changes(prev, cur, persisted_px))
        return origin[1:], parents

    def _events(self, prev, cur, ea, eb, origin, fate, children_parents, reorg_a, reorg_b) -> pd.DataFrame:
        a2 = self._scale**2
        rows: dict[str, list] = {c: [] for c in EVENT_COLUMNS}

        def add(kind, x, y, before, after, area_px, area_before_px, area_after_px, touches, reorg):
            rows["event"].append(kind)
            rows["x_px"].append(float(x))
            rows["y_px"].append(float(y))
            rows["islands_before"].append(before)
            rows["islands_after"].append(after)
            rows["area_um2"].append(area_px * a2)
            rows["area_before_um2"].append(area_before_px * a2)
            rows["area_after_um2"].append(area_after_px * a2)
            rows["touches_border"].append(bool(touches))
            rows["reorganisation"].append(bool(reorg))

        for b in np.flatnonzero((origin == "formed") | (origin == "entered_region")):
            add(
                origin[b] if origin[b] == "entered_region" else "formation",
                cur.x_px[b],
                cur.y_px[b],
                "",
                str(int(cur.ids[b])),
                cur.area_px[b],
                0,
                cur.area_px[b],
                cur.touches[b],
                False,
            )
        lookup_a = {int(i): k for k, i in enumerate(prev.ids)}
        for b in np.flatnonzero(origin == "coalesced"):
            pids = children_parents[int(b)]
            pa = np.array([lookup_a[int(p)] for p in pids])
            add(
                "coalescence",
                cur.x_px[b],
                cur.y_px[b],
                _join(pids),
                str(int(cur.ids[b])),
                cur.area_px[b],
                prev.area_px[pa].sum(),
                cur.area_px[b],
                cur.touches[b] or prev.touches[pa].any(),
                reorg_b[b],
            )
        if ea.size:
            order = np.lexsort((cur.ids[eb], ea))
            sa, sb = ea[order], eb[order]
            for a in np.flatnonzero(fate == "split"):
                kids = sb[sa == a]
                add(
                    "split",
                    prev.x_px[a],
                    prev.y_px[a],
                    str(int(prev.ids[a])),
                    _join(cur.ids[kids]),
                    prev.area_px[a],
                    prev.area_px[a],
                    cur.area_px[kids].sum(),
                    prev.touches[a] or cur.touches[kids].any(),
                    reorg_a[a],
                )
        for a in np.flatnonzero((fate == "dissolved") | (fate == "left_region")):
            add(
                "dissolution" if fate[a] == "dissolved" else "left_region",
                prev.x_px[a],
                prev.y_px[a],
                str(int(prev.ids[a])),
                "",
                prev.area_px[a],
                prev.area_px[a],
                0,
                prev.touches[a],
                False,
            )

        n = len(rows["event"])
        rows["frame_from"] = [prev.index] * n
        rows["frame_to"] = [cur.index] * n
        rows["time_from_h"] = [prev.time_h] * n
        rows["time_to_h"] = [cur.time_h] * n
        if n == 0:
            return _empty_events()
        return pd.DataFrame(rows, columns=list(EVENT_COLUMNS)).astype(_EVENT_DTYPES)

    def _pixel_changes(self, prev: _Frame, cur: _Frame, persisted_px: int) -> dict:
        a2 = self._scale**2
        before = _island_px_within(prev, cur.observed)
        after = _island_px_within(cur, prev.observed)
        if prev.observed is None and cur.observed is None:
            common = prev.labels.size
        elif prev.observed is None:
            common = int(np.count_nonzero(cur.observed))
        elif cur.observed is None or cur.observed is prev.observed:
            common = int(np.count_nonzero(prev.observed))
        else:
            common = int(np.count_nonzero(prev.observed & cur.observed))
        return {
            "frame_from": prev.index,
            "frame_to": cur.index,
            "time_from_h": prev.time_h,
            "time_to_h": cur.time_h,
            "common_area_um2": common * a2,
            "island_area_before_um2": before * a2,
            "island_area_after_um2": after * a2,
            "persisted_area_um2": persisted_px * a2,
            "vanished_area_um2": (before - persisted_px) * a2,
            "newly_covered_area_um2": (after - persisted_px) * a2,
        }


def _island_px_within(frame: _Frame, observed: np.ndarray | None) -> int:
    """Island pixels of ``frame`` inside ``observed`` (its labels are 0 outside its own observed mask)."""
    if observed is None or observed is frame.observed:
        return int(np.count_nonzero(frame.labels))
    return int(np.count_nonzero(frame.labels[observed]))


def link_islands(
    label_maps: Sequence[np.ndarray],
    times_h: Sequence[float],
    *,
    pixel_size_um: float | None = None,
    link_tolerance_um: float = 0.3,
    min_overlap_fraction: float = 0.05,
    region: np.ndarray | None = None,
    valid_masks: Sequence[np.ndarray | None] | None = None,
) -> tuple[Lineage, list[np.ndarray]]:
    """Track the islands of a whole series (convenience over :class:`IslandTracker`).

    Parameters
    ----------
    label_maps : sequence of (rows, cols) ndarray of int
        Island labels per frame, in time order, in the reference grid.
    times_h : sequence of float
        Exposure time of each frame in hours (increasing).
    pixel_size_um, link_tolerance_um, min_overlap_fraction, region
        See :class:`IslandTracker`.
    valid_masks : sequence of (rows, cols) bool ndarray or None, optional
        Pixels imaged in each frame (see :meth:`IslandTracker.add`).

    Returns
    -------
    lineage : Lineage
    maps : list of (rows, cols) ndarray of int32
        Each frame labelled with persistent island ids.

    Examples
    --------
    >>> a = np.zeros((8, 8), np.int32); a[1:3, 1:3] = 1
    >>> lineage, maps = link_islands([a, np.zeros_like(a)], [24, 96])
    >>> lineage.events["event"].tolist()
    ['dissolution']
    """
    label_maps = list(label_maps)
    times_h = [float(t) for t in times_h]
    if len(label_maps) != len(times_h):
        raise ValueError(f"got {len(label_maps)} label maps but {len(times_h)} times; give one time per frame")
    if valid_masks is None:
        valid_masks = [None] * len(label_maps)
    elif len(valid_masks) != len(label_maps):
        raise ValueError(f"got {len(valid_masks)} valid masks for {len(label_maps)} frames")
    tracker = IslandTracker(
        pixel_size_um=pixel_size_um,
        link_tolerance_um=link_tolerance_um,
        min_overlap_fraction=min_overlap_fraction,
        region=region,
    )
    maps = [tracker.add(lab, t, valid=v) for lab, t, v in zip(label_maps, times_h, valid_masks)]
    return tracker.result(), maps


# ---------------------------------------------------------------------------
# statistics


def _positive_area(region_area_um2, name="region_area_um2") -> float | None:
    if region_area_um2 is None:
        return None
    value = float(region_area_um2)
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"`{name}` must be a positive area in µm², got {region_area_um2!r}")
    return value


def interval_statistics(lineage: Lineage, *, region_area_um2: float | None = None) -> pd.DataFrame:
    """Event counts, rates and area changes for every pair of consecutive frames.

    Parameters
    ----------
    lineage : Lineage
        From :meth:`IslandTracker.result` or :func:`link_islands`.
    region_area_um2 : float, optional
        Area the rates are normalised by. None: the area observed in both frames
        (``lineage.intervals.common_area_um2``), the right choice when the
        analysed region is the whole common field.

    Returns
    -------
    DataFrame
        One row per interval: ``frame_from``, ``frame_to``, ``time_from_h``, ``time_to_h``,
        ``duration_h``; ``n_<event>`` for every event type and ``n_continued``;
        ``n_islands_before`` / ``_after``; ``formation_rate_per_mm2_h``,
        ``dissolution_rate_per_mm2_h``, ``coalescence_rate_per_mm2_h``;
        ``formed_area_um2`` and ``dissolved_area_um2`` (whole islands formed /
        dissolved), ``newly_covered_area_um2`` and ``vanished_area_um2`` (pixels that
        became / stopped being island), ``net_area_change_um2``;
        ``reorganisation_index`` (fraction of the island area at t still island at
        t+1; 1 = nothing moved); ``area_fraction_before`` / ``_after``;
        ``mean_island_area_before_um2`` / ``_after``, ``median_island_area_before_um2`` / ``_after``.

    Examples
    --------
    >>> a = np.zeros((100, 100), np.int32); a[10:20, 10:20] = 1
    >>> b = np.zeros_like(a); b[60:70, 60:70] = 1
    >>> lineage, _ = link_islands([a, b], [0, 10], pixel_size_um=1.0)
    >>> s = interval_statistics(lineage)
    >>> s[["n_formation", "n_dissolution", "formation_rate_per_mm2_h"]].to_dict("records")
    [{'n_formation': 1, 'n_dissolution': 1, 'formation_rate_per_mm2_h': 10.0}]
    """
    area = _positive_area(region_area_um2)
    iv = lineage.intervals
    if iv.empty:
        return pd.DataFrame()
    out = iv[["frame_from", "frame_to", "time_from_h", "time_to_h"]].copy()
    out["duration_h"] = out["time_to_h"] - out["time_from_h"]
    ev = lineage.events
    for kind in EVENT_TYPES + REGION_EVENT_TYPES:
        counts = ev.loc[ev["event"] == kind].groupby("frame_from").size()
        out[f"n_{kind}"] = out["frame_from"].map(counts).fillna(0).astype(np.int64).to_numpy()
    isl = lineage.islands
    cont = isl.loc[isl["origin"] == "continued"].groupby("frame").size()
    out["n_continued"] = out["frame_to"].map(cont).fillna(0).astype(np.int64).to_numpy()
    per_frame = lineage.frames.set_index("frame")
    out["n_islands_before"] = out["frame_from"].map(per_frame["n_islands"]).to_numpy()
    out["n_islands_after"] = out["frame_to"].map(per_frame["n_islands"]).to_numpy()
    norm_mm2 = (np.full(len(out), area) if area is not None else iv["common_area_um2"].to_numpy()) * 1e-6
    with np.errstate(invalid="ignore", divide="ignore"):
        for kind in ("formation", "dissolution", "coalescence"):
            out[f"{kind}_rate_per_mm2_h"] = out[f"n_{kind}"] / (norm_mm2 * out["duration_h"])
    for kind, col in (("formation", "formed_area_um2"), ("dissolution", "dissolved_area_um2")):
        sums = ev.loc[ev["event"] == kind].groupby("frame_from")["area_um2"].sum()
        out[col] = out["frame_from"].map(sums).fillna(0.0).to_numpy()
    out["newly_covered_area_um2"] = iv["newly_covered_area_um2"].to_numpy()
    out["vanished_area_um2"] = iv["vanished_area_um2"].to_numpy()
    out["net_area_change_um2"] = (iv["island_area_after_um2"] - iv["island_area_before_um2"]).to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        out["reorganisation_index"] = (iv["persisted_area_um2"] / iv["island_area_before_um2"]).to_numpy()
        common = iv["common_area_um2"].to_numpy()
        out["area_fraction_before"] = iv["island_area_before_um2"].to_numpy() / common
        out["area_fraction_after"] = iv["island_area_after_um2"].to_numpy() / common
    sizes = isl.groupby("frame")["area_um2"]
    for stat in ("mean", "median"):
        values = getattr(sizes, stat)()
        out[f"{stat}_island_area_before_um2"] = out["frame_from"].map(values).to_numpy(dtype=float)
        out[f"{stat}_island_area_after_um2"] = out["frame_to"].map(values).to_numpy(dtype=float)
    return out.reset_index(drop=True)


def frame_statistics(lineage: Lineage, *, region_area_um2: float | None = None) -> pd.DataFrame:
    """Island count, coverage and size statistics per frame.

    Parameters
    ----------
    lineage : Lineage
    region_area_um2 : float, optional
        Area for fractions and densities. None: each frame's observed area.

    Returns
    -------
    DataFrame
        ``frame``, ``time_h``, ``n_islands``, ``n_touching_border``, ``island_area_um2``,
        ``area_fraction``, ``number_density_per_mm2``, ``mean_area_um2``,
        ``median_area_um2``, ``p10_area_um2``, ``p90_area_um2``, ``mean_ecd_um``.

    Examples
    --------
    >>> a = np.zeros((10, 10), np.int32); a[0:2, 0:2] = 1; a[5:9, 5:9] = 2
    >>> lineage, _ = link_islands([a], [0])
    >>> frame_statistics(lineage)[["n_islands", "mean_area_um2", "area_fraction"]].to_dict("records")
    [{'n_islands': 2, 'mean_area_um2': 10.0, 'area_fraction': 0.2}]
    """
    area = _positive_area(region_area_um2)
    fr = lineage.frames
    if fr.empty:
        return pd.DataFrame()
    out = fr[["frame", "time_h", "n_islands", "n_touching_border", "island_area_um2"]].copy()
    norm = np.full(len(out), area) if area is not None else fr["observed_area_um2"].to_numpy()
    out["area_fraction"] = out["island_area_um2"].to_numpy() / norm
    out["number_density_per_mm2"] = out["n_islands"].to_numpy() / (norm * 1e-6)
    g = lineage.islands.groupby("frame")
    for name, values in (
        ("mean_area_um2", g["area_um2"].mean()),
        ("median_area_um2", g["area_um2"].median()),
        ("p10_area_um2", g["area_um2"].quantile(0.1)),
        ("p90_area_um2", g["area_um2"].quantile(0.9)),
        ("mean_ecd_um", g["ecd_um"].mean()),
    ):
        out[name] = out["frame"].map(values).to_numpy(dtype=float)
    return out.reset_index(drop=True)


def size_distribution(lineage: Lineage, *, bins: int | Sequence[float] = 12) -> pd.DataFrame:
    """Island area histograms per frame on shared logarithmic bins.

    Parameters
    ----------
    lineage : Lineage
    bins : int or sequence of float
        Number of log-spaced bins over all frames' island areas, or bin edges in µm².

    Returns
    -------
    DataFrame
        ``frame``, ``time_h``, ``bin_low_um2``, ``bin_high_um2``, ``count``, ``fraction``
        (of that frame's islands).

    Examples
    --------
    >>> a = np.zeros((10, 10), np.int32); a[0, 0] = 1; a[5:9, 5:9] = 2
    >>> lineage, _ = link_islands([a], [0])
    >>> size_distribution(lineage, bins=[0.5, 2, 20])["count"].tolist()
    [1, 1]
    """
    areas = lineage.islands["area_um2"].to_numpy(dtype=float)
    if np.isscalar(bins) or isinstance(bins, int):
        n_bins = int(bins)
        if n_bins < 1:
            raise ValueError(f"`bins` must be >= 1, got {bins!r}")
        if areas.size == 0:
            return pd.DataFrame(columns=["frame", "time_h", "bin_low_um2", "bin_high_um2", "count", "fraction"])
        lo, hi = areas.min(), areas.max()
        edges = np.geomspace(lo, hi * (1 + 1e-9), n_bins + 1) if hi > lo else np.array([lo * 0.999, hi * 1.001])
    else:
        edges = np.asarray(bins, dtype=float)
        if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
            raise ValueError("`bins` edges must be an increasing sequence of at least 2 areas in µm²")
    rows = []
    for frame, time_h in lineage.frames[["frame", "time_h"]].itertuples(index=False):
        a = lineage.islands.loc[lineage.islands["frame"] == frame, "area_um2"].to_numpy(dtype=float)
        counts, _ = np.histogram(a, edges)
        total = max(a.size, 1)
        for k in range(edges.size - 1):
            rows.append((int(frame), float(time_h), edges[k], edges[k + 1], int(counts[k]), counts[k] / total))
    return pd.DataFrame(rows, columns=["frame", "time_h", "bin_low_um2", "bin_high_um2", "count", "fraction"])


# ---------------------------------------------------------------------------
# kinetics


def _jmak(t, k, n, f_max):
    return f_max * (1.0 - np.exp(-np.power(np.maximum(k * t, 0.0), n)))


def _r2(y, fit, n_params) -> float:
    if y.size <= n_params:
        return float("nan")
    ss_res = float(np.sum((y - fit) ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    return 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")


def _fit_jmak(t: np.ndarray, f: np.ndarray, free_fmax: bool) -> tuple[float, float, float] | None:
    """Least-squares JMAK fit from several starting exponents; (k, n, f_max) or None."""
    f_top = float(f.max())
    f0 = min(1.0, 1.2 * f_top) if free_fmax else 1.0
    order = np.argsort(f)
    t_half = float(np.interp(0.5 * f0, f[order], t[order])) if free_fmax else 0.0
    t_half = t_half if t_half > 0 else float(np.median(t[t > 0]))
    best = None
    with warnings.catch_warnings():
        # An exact fit (as many frames as parameters) has no covariance; r2 reports that instead.
        warnings.simplefilter("ignore", optimize.OptimizeWarning)
        # Several starting exponents: the Avrami n of real data lies anywhere in 0.5..4.
        for n0 in (0.5, 1.0, 2.0, 3.0):
            try:
                if free_fmax:
                    p, _ = optimize.curve_fit(
                        lambda tt, lk, n, fm: _jmak(tt, np.exp(lk), n, fm),
                        t,
                        f,
                        p0=(-np.log(t_half), n0, f0),
                        bounds=([-30, 0.1, f_top * 0.5], [10, 6, 1.0]),
                        maxfev=5000,
                    )
                    k, n, fm = float(np.exp(p[0])), float(p[1]), float(p[2])
                else:
                    p, _ = optimize.curve_fit(
                        lambda tt, lk, n: _jmak(tt, np.exp(lk), n, 1.0),
                        t,
                        f,
                        p0=(-np.log(t_half) - 3, n0),
                        bounds=([-40, 0.1], [10, 6]),
                        maxfev=5000,
                    )
                    k, n, fm = float(np.exp(p[0])), float(p[1]), 1.0
            except (RuntimeError, ValueError):
                continue
            sse = float(np.sum((_jmak(t, k, n, fm) - f) ** 2))
            if best is None or sse < best[0]:
                best = (sse, k, n, fm)
    return None if best is None else best[1:]


def fit_kinetics(
    times_h: Sequence[float],
    area_fraction: Sequence[float],
    mean_island_area_um2: Sequence[float] | None = None,
) -> dict:
    """Fit island growth kinetics over a series.

    Two fits:

    - JMAK/Avrami on the island area fraction, ``f(t) = f_max (1 - exp(-(k t)^n))``
      (Avrami, J. Chem. Phys. 7, 1103 (1939), doi:10.1063/1.1750380). With at
      least 4 usable frames (3 of them with islands) ``k``, ``n`` and ``f_max``
      are fitted; with 2–3 frames with islands ``f_max`` cannot be told apart from
      ``k`` and is fixed at 1 (the early-stage form, ``f ≈ (k t)^n``); with fewer
      nothing is fitted.
    - A power law of the mean island area, ``A(t) = a t^p`` (log-log least
      squares over frames with t > 0 and islands; needs 2 frames). ``p = 2/3``
      is Ostwald ripening (LSW, r³ ∝ t), ``p = 1`` interface-controlled growth
      in area.

    ``r2`` is NaN when there are no more points than fitted parameters (the fit
    is exact and says nothing about the model).

    Parameters
    ----------
    times_h : sequence of float
        Exposure times in hours (>= 0).
    area_fraction : sequence of float
        Island area fraction (0..1) per frame.
    mean_island_area_um2 : sequence of float, optional
        Mean island area per frame.

    Returns
    -------
    dict
        ``k_per_h``, ``n``, ``f_max``, ``r2``, ``jmak_fitted`` (which parameters
        were free), ``jmak_note``, ``n_points``; ``size_prefactor_um2``,
        ``size_exponent``, ``size_r2``, ``size_note`` (NaN / "not given" when
        no sizes).

    Examples
    --------
    >>> t = np.array([0, 24, 96, 300, 845, 1055.0])
    >>> f = 0.05 * (1 - np.exp(-(t / 200) ** 1.5))
    >>> fit = fit_kinetics(t, f)
    >>> round(fit["k_per_h"] * 200, 3), round(fit["n"], 3), round(fit["f_max"], 4)
    (1.0, 1.5, 0.05)
    """
    t = np.asarray(times_h, dtype=float)
    f = np.asarray(area_fraction, dtype=float)
    if t.ndim != 1 or t.shape != f.shape:
        raise ValueError(f"`times_h` and `area_fraction` must be 1-D of the same length, got {t.shape} and {f.shape}")
    if np.any(t[np.isfinite(t)] < 0):
        raise ValueError("`times_h` must be >= 0 (hours since exposure start)")
    if np.any((f[np.isfinite(f)] < 0) | (f[np.isfinite(f)] > 1)):
        raise ValueError("`area_fraction` must be in [0, 1]; pass a fraction, not a percentage")
    ok = np.isfinite(t) & np.isfinite(f)
    t_ok, f_ok = t[ok], f[ok]
    n_pos = int(np.count_nonzero(f_ok > 0))
    out: dict = {
        "model": "f = f_max * (1 - exp(-(k t)^n))",
        "k_per_h": float("nan"),
        "n": float("nan"),
        "f_max": float("nan"),
        "r2": float("nan"),
        "jmak_fitted": "none",
        "n_points": int(t_ok.size),
    }
    free_fmax = t_ok.size >= 4 and n_pos >= 3
    if n_pos < 2:
        out["jmak_note"] = f"not fitted: {n_pos} frame(s) with islands, at least 2 needed"
    else:
        best = _fit_jmak(t_ok, f_ok, free_fmax)
        if best is None:
            out["jmak_note"] = "not fitted: the least-squares fit did not converge"
        else:
            k, n, fm = best
            n_params = 3 if free_fmax else 2
            out.update(k_per_h=k, n=n, f_max=fm, r2=_r2(f_ok, _jmak(t_ok, k, n, fm), n_params))
            out["jmak_fitted"] = "k, n, f_max" if free_fmax else "k, n (f_max fixed at 1)"
            out["jmak_note"] = (
                "fitted"
                if free_fmax
                else f"f_max fixed at 1: {t_ok.size} frames ({n_pos} with islands) cannot separate saturation from rate"
            )
            if not np.isfinite(out["r2"]):
                out["jmak_note"] += "; exact fit (no more frames than parameters), r2 undefined"

    out.update(
        size_model="A = a * t^p", size_prefactor_um2=float("nan"), size_exponent=float("nan"), size_r2=float("nan")
    )
    if mean_island_area_um2 is None:
        out["size_note"] = "not given"
        return out
    a = np.asarray(mean_island_area_um2, dtype=float)
    if a.shape != t.shape:
        raise ValueError(f"`mean_island_area_um2` must have the length of `times_h` ({t.size}), got {a.shape}")
    use = np.isfinite(t) & np.isfinite(a) & (t > 0) & (a > 0)
    if use.sum() < 2 or np.unique(t[use]).size < 2:
        out["size_note"] = f"not fitted: {int(use.sum())} frame(s) with t > 0 and islands, at least 2 needed"
        return out
    x, y = np.log(t[use]), np.log(a[use])
    slope, intercept = np.polyfit(x, y, 1)
    out.update(
        size_prefactor_um2=float(np.exp(intercept)),
        size_exponent=float(slope),
        size_r2=_r2(y, intercept + slope * x, 2),
    )
    out["size_note"] = "fitted" if use.sum() > 2 else "exact fit through 2 frames, r2 undefined"
    return out


# ---------------------------------------------------------------------------
# event maps

#: Colour (RGB) and cv2 marker of every event type on an event map.
EVENT_STYLE: dict[str, tuple[tuple[int, int, int], str]] = {
    "dissolution": ((255, 40, 40), "circle"),
    "formation": ((40, 220, 40), "square"),
    "coalescence": ((255, 60, 255), "diamond"),
    "split": ((255, 200, 0), "x"),
    "entered_region": ((160, 160, 160), "triangle"),
    "left_region": ((160, 160, 160), "triangle"),
}
_OUTLINE_RGB = (0, 220, 255)
#: The legend's box scales what lies under it by this, keeping the image faintly visible.
_LEGEND_SHADE = 0.35


def _event_palette() -> tuple[np.ndarray, dict[tuple[int, int, int], int], np.ndarray, np.ndarray]:
    """The 256-colour palette of event maps: grey levels, then the overlay colours, then those darkened.

    Returns
    -------
    palette : (256, 3) ndarray of uint8
    colour_index : dict
        Palette index of each overlay colour (outline and event colours).
    grey_index : (256,) ndarray of uint8
        Palette index of each 8-bit grey value (the nearest grey level).
    darken : (256,) ndarray of uint8
        Palette index of each entry under the legend's box.
    """
    colours = [_OUTLINE_RGB, *dict.fromkeys(colour for colour, _ in EVENT_STYLE.values())]
    dark = [tuple(int(v * _LEGEND_SHADE) for v in colour) for colour in colours]
    n_greys = 256 - 2 * len(colours)  # 244: grey values move by at most one level of 255
    greys = np.round(np.arange(n_greys) * (255 / (n_greys - 1))).astype(np.uint8)
    palette = np.vstack([np.repeat(greys[:, None], 3, axis=1), colours, dark]).astype(np.uint8)
    grey_index = np.round(np.arange(256) * ((n_greys - 1) / 255)).astype(np.uint8)
    darken = np.arange(256, dtype=np.uint8)  # the darkened colours occur only under the box
    darken[:n_greys] = grey_index[(greys * _LEGEND_SHADE).astype(np.uint8)]
    darken[n_greys : n_greys + len(colours)] = np.arange(n_greys + len(colours), 256)
    colour_index = {colour: n_greys + i for i, colour in enumerate(colours)}
    return palette, colour_index, grey_index, darken


_PALETTE, _COLOUR_INDEX, _GREY_INDEX, _DARKEN = _event_palette()
_WHITE_INDEX = int(_GREY_INDEX[255])


def _to_grey(image: np.ndarray) -> np.ndarray:
    """``image`` as 8-bit grey: RGB averaged, floats in [0, 1] and integers over their range scaled."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 3:
        grey = image.mean(axis=2)
    elif image.ndim == 2:
        grey = image
    else:
        raise ValueError(f"`image` must be (rows, cols) or (rows, cols, 3), got shape {image.shape}")
    if grey.dtype != np.uint8:
        if np.issubdtype(grey.dtype, np.integer):
            grey = grey / float(np.iinfo(image.dtype).max)
        grey = np.clip(np.nan_to_num(np.asarray(grey, dtype=np.float32)), 0, 1)
        grey = (grey * 255 + 0.5).astype(np.uint8)
    return np.ascontiguousarray(grey)


def _outline(labels: np.ndarray) -> np.ndarray:
    """Flat indices of the pixels of an island that 4-touch another label or background."""
    # Along the flat raster every pass is contiguous (a third faster than comparing column
    # slices); each comparison serves both pixels of a pair.
    cols = labels.shape[1]
    flat = labels.ravel()
    edge = np.zeros(flat.size, bool)
    step = flat[1:] != flat[:-1]
    step[cols - 1 :: cols] = False  # a row's last pixel and the next row's first are not neighbours
    edge[:-1] |= step
    edge[1:] |= step
    del step
    step = flat[cols:] != flat[:-cols]
    edge[:-cols] |= step
    edge[cols:] |= step
    del step
    edge &= flat > 0
    return np.flatnonzero(edge)


def _member(values: np.ndarray, ids: list[int]) -> np.ndarray:
    """``np.isin(values, ids)`` by table lookup (island ids are small positive integers)."""
    table = np.zeros(max(int(values.max(initial=0)), max(ids)) + 1, bool)
    table[ids] = True
    return table[values]


def event_map(
    image: np.ndarray,
    island_labels_before: np.ndarray,
    island_labels_after: np.ndarray,
    events_interval: pd.DataFrame,
    *,
    pixel_size_um: float | None = None,
) -> np.ndarray:
    """Draw one interval's events on the later frame, as scientists circle them by hand.

    The later frame is shown in grey with its islands outlined (cyan); dissolved
    islands get their former outline and a red circle; new islands a green
    square; coalesced islands a magenta outline and diamond; split islands an
    amber cross on the parent and amber outlines on the children; islands that
    left or entered the observed region a grey triangle. A legend with the counts
    sits in the top-left corner.

    The map is drawn in 256 colours (:func:`event_map_indexed`, which the pipeline
    stores as a palette PNG): the grey frame takes 244 levels (each 8-bit value
    moves by at most one), and marks and legend are drawn without anti-aliasing.

    Parameters
    ----------
    image : (rows, cols) ndarray
        The later frame in the reference grid (float in [0, 1] or integer).
    island_labels_before, island_labels_after : (rows, cols) ndarray of int
        Persistent-id island maps of the two frames (as returned by
        :meth:`IslandTracker.add`).
    events_interval : DataFrame
        The interval's rows of :attr:`Lineage.events`.
    pixel_size_um : float, optional
        Pixel size; used to convert event areas to pixels (None: areas in px²).

    Returns
    -------
    (rows, cols, 3) ndarray of uint8
        RGB image.

    Examples
    --------
    >>> a = np.zeros((64, 64), np.int32); a[10:20, 10:20] = 1
    >>> lineage, maps = link_islands([a, np.zeros_like(a)], [0, 1])
    >>> rgb = event_map(np.full((64, 64), 0.5), maps[0], maps[1], lineage.events)
    >>> rgb.shape, rgb.dtype
    ((64, 64, 3), dtype('uint8'))
    """
    from .write import _expand_palette

    indices, palette = event_map_indexed(
        image, island_labels_before, island_labels_after, events_interval, pixel_size_um=pixel_size_um
    )
    return _expand_palette(indices, palette)


def event_map_indexed(
    image: np.ndarray,
    island_labels_before: np.ndarray,
    island_labels_after: np.ndarray,
    events_interval: pd.DataFrame,
    *,
    pixel_size_um: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`event_map` as palette indices: one byte per pixel, a third of the RGB map to store.

    Parameters are those of :func:`event_map`.

    Returns
    -------
    indices : (rows, cols) ndarray of uint8
        Palette index of every pixel.
    palette : (256, 3) ndarray of uint8
        RGB colour of every index: ``palette[indices]`` is :func:`event_map`'s image. The
        first 244 entries are grey levels in increasing order.

    Examples
    --------
    >>> a = np.zeros((64, 64), np.int32); a[10:20, 10:20] = 1
    >>> lineage, maps = link_islands([a, np.zeros_like(a)], [0, 1])
    >>> indices, palette = event_map_indexed(np.full((64, 64), 0.5), maps[0], maps[1], lineage.events)
    >>> indices.shape, indices.dtype, palette.shape
    ((64, 64), dtype('uint8'), (256, 3))
    """
    import cv2

    before = _check_label_image(island_labels_before, "island_labels_before")
    after = _check_label_image(island_labels_after, "island_labels_after")
    grey = _to_grey(image)
    if before.shape != grey.shape or after.shape != grey.shape:
        raise ValueError(
            f"`image` {grey.shape}, `island_labels_before` {before.shape} and "
            f"`island_labels_after` {after.shape} must have the same shape"
        )
    missing = {"event", "x_px", "y_px", "islands_before", "islands_after", "area_um2"} - set(events_interval.columns)
    if missing:
        raise ValueError(f"`events_interval` lacks columns {sorted(missing)}; pass rows of Lineage.events")
    indices = cv2.LUT(grey, _GREY_INDEX)
    scale = _length_scale(pixel_size_um)
    side = min(indices.shape)
    thick = max(1, int(round(side / 600)))
    mark = max(5, int(round(side / 90)))

    # Outlines are a small part of the frame: they are drawn through their flat indices.
    pixels = indices.reshape(-1)
    after_edge = _outline(after)
    pixels[after_edge] = _COLOUR_INDEX[_OUTLINE_RGB]
    # The events as plain arrays: a few dozen rows, where pandas indexing would cost more than the drawing.
    kinds = events_interval["event"].to_numpy()
    ids_of = {
        kind: [i for s in events_interval[col].to_numpy()[kinds == kind] for i in _split_ids(s)]
        for kind, col in (
            ("dissolution", "islands_before"),
            ("coalescence", "islands_after"),
            ("split", "islands_after"),
        )
    }
    # The outline of some islands is their part of the outline of all: a neighbour that is another
    # island is a boundary either way.
    if ids_of["dissolution"]:
        before_edge = _outline(before)
        dissolved = _member(before.ravel()[before_edge], ids_of["dissolution"])
        pixels[before_edge[dissolved]] = _COLOUR_INDEX[EVENT_STYLE["dissolution"][0]]
    for kind in ("coalescence", "split"):
        if ids_of[kind]:
            pixels[after_edge[_member(after.ravel()[after_edge], ids_of[kind])]] = _COLOUR_INDEX[EVENT_STYLE[kind][0]]

    markers = _markers(cv2)
    # Marks are drawn without anti-aliasing: blending palette indices would give unrelated colours.
    xs, ys = events_interval["x_px"].to_numpy(float), events_interval["y_px"].to_numpy(float)
    for kind, x, y, area in zip(kinds, xs, ys, events_interval["area_um2"].to_numpy()):
        if kind not in EVENT_STYLE or not (np.isfinite(x) and np.isfinite(y)):
            continue
        colour, shape = EVENT_STYLE[kind]
        index = _COLOUR_INDEX[colour]
        centre = (int(round(x)), int(round(y)))
        radius_px = math.sqrt(max(float(area), 0.0) / math.pi) / scale
        if shape == "circle":
            cv2.circle(indices, centre, int(round(1.4 * radius_px + mark / 2)), index, thick + 1, cv2.LINE_8)
        else:
            size = int(round(max(2 * radius_px + mark, 2 * mark)))
            cv2.drawMarker(indices, centre, index, markers[shape], size, thick + 1, cv2.LINE_8)
    _legend(indices, kinds, xs, ys, thick, cv2)
    return indices, _PALETTE.copy()


def _markers(cv2) -> dict[str, int]:
    """The cv2 marker of each marker shape of :data:`EVENT_STYLE` (circles are drawn as circles)."""
    return {
        "square": cv2.MARKER_SQUARE,
        "diamond": cv2.MARKER_DIAMOND,
        "x": cv2.MARKER_TILTED_CROSS,
        "triangle": cv2.MARKER_TRIANGLE_UP,
    }


def _legend(indices: np.ndarray, kinds: np.ndarray, xs: np.ndarray, ys: np.ndarray, thick: int, cv2) -> None:
    """Event counts in the corner of the palette-index image that hides the fewest events (at ``xs``, ``ys``)."""
    font_scale = max(0.35, min(indices.shape[:2]) / 1400)
    (_, h), _ = cv2.getTextSize("Xg", cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
    step = int(h * 1.9)
    counts = {k: int(np.count_nonzero(kinds == k)) for k in EVENT_TYPES + REGION_EVENT_TYPES}
    shown = list(EVENT_TYPES) + [k for k in REGION_EVENT_TYPES if counts[k]]
    lines = [(k, f"{k.replace('_', ' ')}: {counts[k]}") for k in shown]
    width = max(cv2.getTextSize(t, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)[0][0] for _, t in lines)
    bw, bh = width + 3 * step // 2 + 6, step * len(lines) + 6
    H, W = indices.shape[:2]
    # The corner hiding the fewest events holds the legend.
    corners = [(4, 4), (W - bw - 4, 4), (4, H - bh - 4), (W - bw - 4, H - bh - 4)]
    hidden = [
        int(np.sum((xs >= cx - step) & (xs < cx + bw + step) & (ys >= cy - step) & (ys < cy + bh + step)))
        for cx, cy in corners
    ]
    x0, y0 = (max(v, 0) for v in corners[int(np.argmin(hidden))])
    box = (x0 + bw, y0 + bh)
    sub = indices[y0 : box[1], x0 : box[0]]
    sub[:] = _DARKEN[sub]
    markers = _markers(cv2)
    for i, (kind, text) in enumerate(lines):
        colour, shape = EVENT_STYLE[kind]
        index = _COLOUR_INDEX[colour]
        cy = y0 + 3 + step * i + step // 2
        cx = x0 + 3 + step // 2
        if shape == "circle":
            cv2.circle(indices, (cx, cy), max(2, step // 3), index, thick, cv2.LINE_8)
        else:
            cv2.drawMarker(indices, (cx, cy), index, markers[shape], max(4, 2 * step // 3), thick, cv2.LINE_8)
        cv2.putText(
            indices,
            text,
            (cx + step // 2 + 4, cy + h // 2),
            cv2.FONT_HERSHEY_SIMPLEX,
            font_scale,
            _WHITE_INDEX,
            1,
            cv2.LINE_8,
        )


# ---------------------------------------------------------------------------
# exports


def to_napari_tracks(lineage: Lineage) -> tuple[np.ndarray, dict[int, list[int]]]:
    """Island tracks as a napari Tracks layer: ``(data, graph)``.

    Returns
    -------
    data : (N, 4) ndarray of float
        ``[track_id, t, y, x]`` rows (t = frame index, positions in pixels),
        sorted by track and time.
    graph : dict of int to list of int
        Track id -> parent track ids; a track with several parents is a
        coalescence, several tracks with the same parent a split.

    Examples
    --------
    >>> a = np.zeros((8, 8), np.int32); a[1:3, 1:3] = 1; a[5:7, 1:3] = 2
    >>> b = np.zeros_like(a); b[1:7, 1:3] = 1
    >>> data, graph = to_napari_tracks(link_islands([a, b], [0, 1])[0])
    >>> data[:, :2].tolist(), graph
    ([[1.0, 0.0], [2.0, 0.0], [3.0, 1.0]], {3: [1, 2]})
    """
    isl = lineage.islands.sort_values(["island_id", "frame"], kind="stable")
    data = isl[["island_id", "frame", "y_px", "x_px"]].to_numpy(dtype=float).reshape(-1, 4)
    return data, {int(k): [int(p) for p in v] for k, v in lineage.graph.items()}


#: Edge ``kind`` codes in the GEFF export.
GEFF_EDGE_KINDS: dict[str, int] = {"continuation": 0, "coalescence": 1, "split": 2}


def write_geff(lineage: Lineage, path: str | Path) -> Path:
    """Write the lineage graph as GEFF (graph exchange file format, a zarr folder).

    Nodes are island observations with properties ``t`` (frame), ``y``, ``x``
    (pixels; the axes' ``scale`` converts to µm when calibrated), ``time_h``,
    ``area_um2``, ``island_id`` (the tracklet id) and ``touches_border``. Edges
    link an island to itself in the next frame (``kind`` 0, continuation) and
    parents to a coalesced (1) or split (2) child. An existing GEFF at ``path``
    is replaced.

    Parameters
    ----------
    lineage : Lineage
    path : str or Path
        Output folder, conventionally ending in ``.geff``.

    Returns
    -------
    Path

    Raises
    ------
    OutputError
        The folder cannot be written.

    Examples
    --------
    >>> import tempfile, geff
    >>> a = np.zeros((8, 8), np.int32); a[1:3, 1:3] = 1
    >>> out = write_geff(link_islands([a, a], [0, 1])[0], Path(tempfile.mkdtemp()) / "islands.geff")
    >>> graph, _ = geff.read(out)
    >>> graph.number_of_nodes(), graph.number_of_edges()
    (2, 1)
    """
    from geff.core_io import write_arrays
    from geff_spec import Axis, GeffMetadata

    path = Path(path)
    isl = lineage.islands.sort_values(["frame", "island_id"], kind="stable").reset_index(drop=True)
    node_ids = np.arange(len(isl), dtype=np.uint64)
    node_of = {(int(f), int(i)): k for k, (f, i) in enumerate(zip(isl["frame"], isl["island_id"]))}
    src, dst, kind = [], [], []
    first_frame: dict[int, int] = {}
    for (f, i), k in node_of.items():
        first_frame.setdefault(i, f)
        nxt = node_of.get((f + 1, i))
        if nxt is not None:
            src.append(k)
            dst.append(nxt)
            kind.append(GEFF_EDGE_KINDS["continuation"])
    for child, parent_ids in lineage.graph.items():
        f = first_frame.get(int(child))
        if f is None:
            continue
        edge_kind = GEFF_EDGE_KINDS["coalescence" if len(parent_ids) > 1 else "split"]
        for p in parent_ids:
            k = node_of.get((f - 1, int(p)))
            if k is not None:
                src.append(k)
                dst.append(node_of[(f, int(child))])
                kind.append(edge_kind)
    edges = np.array([src, dst], dtype=np.uint64).T.reshape(-1, 2)

    def prop(values, dtype):
        return {"values": np.asarray(values, dtype=dtype), "missing": None}

    node_props = {
        "t": prop(isl["frame"], np.int64),
        "y": prop(isl["y_px"], np.float64),
        "x": prop(isl["x_px"], np.float64),
        "time_h": prop(isl["time_h"], np.float64),
        "area_um2": prop(isl["area_um2"], np.float64),
        "island_id": prop(isl["island_id"], np.int64),
        "touches_border": prop(isl["touches_border"], bool),
    }
    edge_props = {"kind": prop(kind, np.int8)}
    scale = lineage.pixel_size_um
    space = {"unit": "pixel"} if scale is None else {"unit": "pixel", "scale": scale, "scaled_unit": "micrometer"}
    metadata = GeffMetadata(
        directed=True,
        axes=[
            Axis(name="t", type="time", unit="frame"),
            Axis(name="y", type="space", **space),
            Axis(name="x", type="space", **space),
        ],
        node_props_metadata={},
        edge_props_metadata={},
        track_node_props={"tracklet": "island_id"},
        extra={
            "semtrack": {
                "edge_kind_codes": GEFF_EDGE_KINDS,
                "frame_times_h": [float(t) for t in lineage.frames.get("time_h", [])],
            }
        },
    )
    try:
        write_arrays(path, node_ids, node_props, edges, edge_props, metadata, overwrite=True)
    except OSError as exc:
        raise OutputError(f"cannot write the GEFF lineage ({exc})", path=path) from exc
    return path


# ---------------------------------------------------------------------------
# scoring against ground truth


def _safe_ratio(num: float, den: float) -> float:
    return num / den if den > 0 else float("nan")


def _prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    p = _safe_ratio(tp, tp + fp)
    r = _safe_ratio(tp, tp + fn)
    f1 = _safe_ratio(2 * tp, 2 * tp + fp + fn)
    return p, r, f1


def score_events(predicted_events: pd.DataFrame, true_events: pd.DataFrame, *, max_distance_px: float) -> pd.DataFrame:
    """Precision, recall and F1 of detected events, per event type.

    A predicted event matches a true one of the same type, the same
    ``(frame_from, frame_to)`` and a position within ``max_distance_px``; the
    matching is one-to-one and maximises the number of matches (then minimises
    distance) by linear assignment.

    Parameters
    ----------
    predicted_events, true_events : DataFrame
        Tables with columns ``frame_from``, ``frame_to``, ``event``, ``x_px``, ``y_px``
        (e.g. :attr:`Lineage.events` and the synthetic truth's ``events``).
    max_distance_px : float
        Largest centroid distance of a match, in pixels (1 µm / pixel size).

    Returns
    -------
    DataFrame
        One row per event type (the four main ones always, others when present)
        and a final ``all`` row over the four main ones: ``event``, ``n_true``,
        ``n_predicted``, ``tp``, ``fp``, ``fn``, ``precision``, ``recall``, ``f1``
        (NaN when undefined, e.g. precision with no predictions).

    Examples
    --------
    >>> true = pd.DataFrame({"frame_from": [0, 0], "frame_to": [1, 1], "event": ["formation"] * 2,
    ...                      "x_px": [10.0, 50.0], "y_px": [10.0, 50.0]})
    >>> pred = true.iloc[:1].assign(x_px=11.0)
    >>> scores = score_events(pred, true, max_distance_px=2)
    >>> scores[["event", "tp", "fp", "fn", "precision", "recall"]].iloc[:1].to_dict("records")[0]
    {'event': 'formation', 'tp': 1, 'fp': 0, 'fn': 1, 'precision': 1.0, 'recall': 0.5}
    """
    needed = {"frame_from", "frame_to", "event", "x_px", "y_px"}
    for name, df in (("predicted_events", predicted_events), ("true_events", true_events)):
        missing = needed - set(df.columns)
        if missing:
            raise ValueError(f"`{name}` lacks columns {sorted(missing)}")
    if not np.isfinite(max_distance_px) or max_distance_px < 0:
        raise ValueError(f"`max_distance_px` must be >= 0, got {max_distance_px!r}")
    extra = sorted((set(predicted_events["event"]) | set(true_events["event"])) - set(EVENT_TYPES))
    rows = []
    for kind in list(EVENT_TYPES) + extra:
        P = predicted_events.loc[predicted_events["event"] == kind]
        T = true_events.loc[true_events["event"] == kind]
        tp = 0
        p_groups = {k: g for k, g in P.groupby(["frame_from", "frame_to"])}
        for key, tg in T.groupby(["frame_from", "frame_to"]):
            pg = p_groups.get(key)
            if pg is None or pg.empty:
                continue
            d = np.hypot(
                tg["x_px"].to_numpy(float)[:, None] - pg["x_px"].to_numpy(float)[None, :],
                tg["y_px"].to_numpy(float)[:, None] - pg["y_px"].to_numpy(float)[None, :],
            )
            allowed = d <= max_distance_px
            if not allowed.any():
                continue
            # Maximise matches first (a large constant per match), then prefer short distances.
            cost = np.where(allowed, d - (max_distance_px + 1.0) * 1e3, 0.0)
            r, c = optimize.linear_sum_assignment(cost)
            tp += int(allowed[r, c].sum())
        fp, fn = len(P) - tp, len(T) - tp
        rows.append((kind, len(T), len(P), tp, fp, fn, *_prf(tp, fp, fn)))
    main = [r for r in rows if r[0] in EVENT_TYPES]
    tp, fp, fn = (sum(r[i] for r in main) for i in (3, 4, 5))
    rows.append(("all", sum(r[1] for r in main), sum(r[2] for r in main), tp, fp, fn, *_prf(tp, fp, fn)))
    return pd.DataFrame(rows, columns=["event", "n_true", "n_predicted", "tp", "fp", "fn", "precision", "recall", "f1"])


def area_balance(islands: pd.DataFrame, events: pd.DataFrame, *, rtol: float = 1e-9) -> pd.DataFrame:
    """Check that island area is conserved through the event bookkeeping.

    For every interval t -> t+1: island area at t = area of islands that go on
    (continue, coalesce, split) + dissolved + left the region; area at t+1 =
    area of islands that came from t (continued, coalesced, split) + formed +
    entered. A non-zero residual means an island was lost or counted twice.
    Works on :class:`Lineage` tables and on a synthetic truth's tables alike.

    Parameters
    ----------
    islands : DataFrame
        ``frame``, ``island_id``, ``area_um2`` and ``parents`` (';'-joined) per island and frame.
    events : DataFrame
        ``frame_from``, ``frame_to``, ``event``, ``islands_before``, ``islands_after``.
    rtol : float
        Relative tolerance of the ``balanced`` flag.

    Returns
    -------
    DataFrame
        Per interval: ``frame_from``, ``frame_to``, ``area_before_um2``, ``continued_before_um2``,
        ``dissolved_um2``, ``left_region_um2``, ``residual_before_um2``, ``area_after_um2``,
        ``continued_after_um2``, ``formed_um2``, ``entered_region_um2``, ``residual_after_um2``,
        ``balanced``.

    Examples
    --------
    >>> a = np.zeros((8, 8), np.int32); a[1:3, 1:3] = 1; a[5:7, 5:7] = 2
    >>> b = np.zeros_like(a); b[1:4, 1:4] = 1
    >>> lin = link_islands([a, b], [0, 1])[0]
    >>> area_balance(lin.islands, lin.events)[["dissolved_um2", "residual_before_um2", "balanced"]].to_dict("records")
    [{'dissolved_um2': 4.0, 'residual_before_um2': 0.0, 'balanced': True}]
    """
    frames = sorted(
        set(islands["frame"].astype(int)) | set(events["frame_from"].astype(int)) | set(events["frame_to"].astype(int))
    )
    area_of = {
        (int(f), int(i)): float(a) for f, i, a in zip(islands["frame"], islands["island_id"], islands["area_um2"])
    }
    rows = []
    for f, g in zip(frames[:-1], frames[1:]):
        before = islands.loc[islands["frame"] == f]
        after = islands.loc[islands["frame"] == g]
        ev = events.loc[(events["frame_from"] == f) & (events["frame_to"] == g)]
        ids_before = set(before["island_id"].astype(int))
        ids_after = set(after["island_id"].astype(int))
        # Only islands that got their id in this interval name parents in the
        # earlier frame; later rows of an island carry the same parents on.
        new_after = ~after["island_id"].astype(int).isin(ids_before).to_numpy()
        parent_lists = [_split_ids(s) for s in after["parents"]]
        parents_after = {p for new, ps in zip(new_after, parent_lists) if new for p in ps}

        def event_area(kind, col, frame):
            ids = [i for s in ev.loc[ev["event"] == kind, col] for i in _split_ids(s)]
            return sum(area_of.get((frame, i), 0.0) for i in ids)

        goes_on = before["island_id"].astype(int).isin(ids_after | parents_after)
        from_parents = np.array([bool(ps) and all(p in ids_before for p in ps) for ps in parent_lists], bool)
        comes_from = ~new_after | (new_after & from_parents)
        row = {
            "frame_from": f,
            "frame_to": g,
            "area_before_um2": float(before["area_um2"].sum()),
            "continued_before_um2": float(before.loc[goes_on, "area_um2"].sum()),
            "dissolved_um2": event_area("dissolution", "islands_before", f),
            "left_region_um2": event_area("left_region", "islands_before", f),
            "area_after_um2": float(after["area_um2"].sum()),
            "continued_after_um2": float(after.loc[comes_from, "area_um2"].sum()),
            "formed_um2": event_area("formation", "islands_after", g),
            "entered_region_um2": event_area("entered_region", "islands_after", g),
        }
        row["residual_before_um2"] = (
            row["area_before_um2"] - row["continued_before_um2"] - row["dissolved_um2"] - row["left_region_um2"]
        )
        row["residual_after_um2"] = (
            row["area_after_um2"] - row["continued_after_um2"] - row["formed_um2"] - row["entered_region_um2"]
        )
        tol = rtol * max(row["area_before_um2"], row["area_after_um2"], 1.0)
        row["balanced"] = abs(row["residual_before_um2"]) <= tol and abs(row["residual_after_um2"]) <= tol
        rows.append(row)
    columns = [
        "frame_from",
        "frame_to",
        "area_before_um2",
        "continued_before_um2",
        "dissolved_um2",
        "left_region_um2",
        "residual_before_um2",
        "area_after_um2",
        "continued_after_um2",
        "formed_um2",
        "entered_region_um2",
        "residual_after_um2",
        "balanced",
    ]
    return pd.DataFrame(rows, columns=columns)


def _ctc_match(true_map: np.ndarray, pred_map: np.ndarray) -> dict[int, int]:
    """CTC rule: a true object matches the predicted one covering > half of it."""
    t = true_map.ravel()
    p = pred_map.ravel()
    idx = np.flatnonzero(t)
    if idx.size == 0:
        return {}
    tt = t[idx].astype(np.int64)
    pp = p[idx].astype(np.int64)
    true_ids, true_area = np.unique(tt, return_counts=True)
    area_of = dict(zip(true_ids.tolist(), true_area.tolist()))
    both = pp > 0
    key = tt[both] * (int(pp.max()) + 1) + pp[both]
    key, count = np.unique(key, return_counts=True)
    ti, pi = np.divmod(key, int(pp.max()) + 1)
    return {int(a): int(b) for a, b, c in zip(ti, pi, count) if 2 * c > area_of[int(a)]}


def linking_metrics(
    predicted_maps: Sequence[np.ndarray],
    true_maps: Sequence[np.ndarray],
    *,
    predicted_graph: dict[int, list[int]] | None = None,
    true_graph: dict[int, list[int]] | None = None,
) -> pd.DataFrame:
    """CTC-style detection and linking scores from persistent-id island maps.

    Objects are matched per frame by the Cell Tracking Challenge rule (a true
    island matches the predicted island covering more than half of it;
    Matula et al., PLoS ONE 10, e0144959 (2015), doi:10.1371/journal.pone.0144959).
    *Continuation* links are an id present in two consecutive frames (1:1,
    where CTC measures apply); *lineage* links are parent -> child edges of the
    graphs (coalescence, split), scored only when both graphs are given.

    Parameters
    ----------
    predicted_maps, true_maps : sequence of (rows, cols) ndarray of int
        Persistent-id maps per frame (same length and shapes).
    predicted_graph, true_graph : dict, optional
        Child id -> parent ids.

    Returns
    -------
    DataFrame
        Rows ``detection``, ``continuation``, (``lineage``,) ``links`` (all links) with
        ``n_true``, ``n_predicted``, ``tp``, ``fp``, ``fn``, ``precision``, ``recall``,
        ``f1`` and ``score``: CTC DET for detection (errors weighted 10 per miss, 1
        per false object) and LNK for links, ``1 - min(AOGM_A, AOGM_A0) / AOGM_A0``
        with 1.5 per missing and 1 per false link.

    Examples
    --------
    >>> a = np.zeros((8, 8), np.int32); a[1:3, 1:3] = 5
    >>> m = linking_metrics([a, a], [a, a])
    >>> m[["kind", "tp", "fp", "fn", "score"]].iloc[1].to_dict()
    {'kind': 'continuation', 'tp': 1, 'fp': 0, 'fn': 0, 'score': 1.0}
    """
    predicted_maps, true_maps = list(predicted_maps), list(true_maps)
    if len(predicted_maps) != len(true_maps):
        raise ValueError(f"{len(predicted_maps)} predicted maps but {len(true_maps)} true maps")
    matches, present_p, present_t = [], [], []
    det = [0, 0, 0, 0, 0]  # n_true, n_pred, tp, fp, fn
    for k, (pm, tm) in enumerate(zip(predicted_maps, true_maps)):
        pm = _check_label_image(pm, f"predicted_maps[{k}]")
        tm = _check_label_image(tm, f"true_maps[{k}]")
        if pm.shape != tm.shape:
            raise ValueError(f"frame {k}: predicted map {pm.shape} and true map {tm.shape} differ in shape")
        m = _ctc_match(tm, pm)
        matches.append(m)
        tids = set(np.unique(tm).tolist()) - {0}
        pids = set(np.unique(pm).tolist()) - {0}
        present_t.append(tids)
        present_p.append(pids)
        hits = pd.Series(list(m.values())).value_counts() if m else pd.Series(dtype=int)
        one_to_one = int((hits == 1).sum())
        det = [
            det[0] + len(tids),
            det[1] + len(pids),
            det[2] + one_to_one,
            det[3] + len(pids) - one_to_one,
            det[4] + len(tids) - one_to_one,
        ]

    def links_from_ids(present):
        return {(k, i, i) for k in range(len(present) - 1) for i in present[k] & present[k + 1]}

    def links_from_graph(graph, present):
        first = {}
        for k, ids in enumerate(present):
            for i in ids:
                first.setdefault(i, k)
        out = set()
        for child, parents in (graph or {}).items():
            k = first.get(int(child))
            if k is None or k == 0:
                continue
            out |= {(k - 1, int(p), int(child)) for p in parents if int(p) in present[k - 1]}
        return out

    def score(true_links, pred_links):
        mapped = {(k, matches[k].get(a), matches[k + 1].get(b)) for k, a, b in true_links}
        tp = len(mapped & pred_links)
        tp_true = sum((k, matches[k].get(a), matches[k + 1].get(b)) in pred_links for k, a, b in true_links)
        fp, fn = len(pred_links) - tp, len(true_links) - tp_true
        aogm0 = 1.5 * len(true_links)
        lnk = 1 - min(1.5 * fn + fp, aogm0) / aogm0 if aogm0 else float("nan")
        return [len(true_links), len(pred_links), tp_true, fp, fn, *_prf(tp_true, fp, fn), lnk]

    rows = []
    n_t, n_p, tp, fp, fn = det
    det_score = 1 - min(10 * fn + fp, 10 * n_t) / (10 * n_t) if n_t else float("nan")
    rows.append(["detection", n_t, n_p, tp, fp, fn, *_prf(tp, fp, fn), det_score])
    cont_t, cont_p = links_from_ids(present_t), links_from_ids(present_p)
    rows.append(["continuation", *score(cont_t, cont_p)])
    all_t, all_p = set(cont_t), set(cont_p)
    if predicted_graph is not None and true_graph is not None:
        lin_t = links_from_graph(true_graph, present_t)
        lin_p = links_from_graph(predicted_graph, present_p)
        rows.append(["lineage", *score(lin_t, lin_p)])
        all_t |= lin_t
        all_p |= lin_p
    rows.append(["links", *score(all_t, all_p)])
    return pd.DataFrame(
        rows, columns=["kind", "n_true", "n_predicted", "tp", "fp", "fn", "precision", "recall", "f1", "score"]
    )
