"""The whole analysis of one time series, in order. The only module that knows the order of stages.

``run`` reads, registers, segments, measures, tracks and (with ``out_dir``) writes
the output contract and the report. Frames are streamed: only the reference
frame, the frame at hand and the previous frame's island map are in memory, so
long series of large frames fit in a few hundred MB. The decoded pixels of the
frames (8 or 16 bits, up to 512 MB in all) are kept in the :class:`Series` from
the reading (which decodes them to find the info bars) through the three passes
that read them (registration, model fit, frame analysis), so each is decoded once.

With ``out_dir``, work already done by an interrupted run with the same inputs
and parameters is reused from ``out_dir/.cache`` (keyed by input hashes,
parameters and version), so rerunning the same command resumes it and gives
byte-identical tables.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import platform
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import grains as grains_mod
from . import quantify, register, segment, track
from ._atomic import atomic_path
from ._version import __version__
from .config import PHASE_CODES, Config
from .errors import SemtrackError
from .io import read_series
from .series import Series
from .write import (
    ensure_writable,
    event_map_path,
    island_map_path,
    phase_map_path,
    preview_path,
    write_json,
    write_label_map,
    write_png,
    write_table,
)

__all__ = [
    "Result",
    "HEADLINE_COLUMNS",
    "FrameAnalysis",
    "analyse_frame",
    "fit_model",
    "segment_options",
    "measure_frame_grains",
    "label_frame_islands",
    "run",
    "ProgressCallback",
]

log = logging.getLogger(__name__)

#: ``progress(stage, done, total)``; stages: read, register, model, frames, track, write, report.
ProgressCallback = Callable[[str, int, int], None]

_CACHE_DIR = ".cache"


@dataclass
class FrameAnalysis:
    """What one registered frame yields.

    Attributes
    ----------
    phases : ndarray of uint8, shape (H, W)
        Phase codes in the reference grid, 255 outside the analysed region.
    islands : ndarray of int32, shape (H, W)
        Na3PO4 island labels of this frame alone (not yet persistent ids).
    fractions : dict
        :func:`semtrack.quantify.phase_fractions` of ``phases``.
    grains : DataFrame
        Per-grain table of :func:`semtrack.grains.measure_grains`.
    grain_summary : dict
        :func:`semtrack.grains.grain_summary` of ``grains``.
    preview : ndarray of uint8, shape (H, W)
        The registered frame as 8-bit grey (0 where not imaged), for previews and event maps.
    """

    phases: np.ndarray
    islands: np.ndarray
    fractions: dict[str, float]
    grains: pd.DataFrame
    grain_summary: dict[str, float]
    preview: np.ndarray


@dataclass
class Result:
    """Everything a run produced.

    Attributes
    ----------
    series : Series
        The input series (times, pixel size, files, hashes).
    config : Config
        Parameters used.
    registration : semtrack.register.Registration
        Per-frame transforms and quality.
    region : ndarray of bool, shape (H, W)
        The analysed region in the reference grid (imaged by every frame, info bar excluded).
    frames : DataFrame
        One row per frame: the columns of ``frames.csv``.
    grains : DataFrame
        One row per grain per frame (``grains.csv``).
    islands : DataFrame
        One row per island per frame with persistent ids (``islands.csv``).
    events : DataFrame
        One row per formation / coalescence / split / dissolution (``events.csv``).
    intervals : DataFrame
        Per interval between consecutive frames: event counts, rates, areas (``intervals.csv``).
    kinetics : dict
        Fits over the series (``kinetics.json``).
    lineage : semtrack.track.Lineage
        Islands, events and the parent graph.
    phase_model : object
        The unsupervised class definition or trained classifier used for every frame.
    phase_maps, island_maps : list of ndarray or None
        Per-frame maps in the reference grid, kept when ``keep_maps`` (default when no ``out_dir``).
    warnings : list of str
    provenance : dict
        What ``run.json`` holds.
    out_dir : Path or None
    """

    series: Series
    config: Config
    registration: Any
    region: np.ndarray
    frames: pd.DataFrame
    grains: pd.DataFrame
    islands: pd.DataFrame
    events: pd.DataFrame
    intervals: pd.DataFrame
    kinetics: dict[str, Any]
    lineage: Any
    phase_model: Any
    phase_maps: list[np.ndarray] | None
    island_maps: list[np.ndarray] | None
    warnings: list[str] = field(default_factory=list)
    provenance: dict[str, Any] = field(default_factory=dict)
    out_dir: Path | None = None

    def headline(self) -> pd.DataFrame:
        """The columns of `frames` a run is summarised by (:data:`HEADLINE_COLUMNS` present, in that order)."""
        return self.frames[[c for c in HEADLINE_COLUMNS if c in self.frames]]


#: Per-frame numbers that summarise a run: the CLI prints them, the napari Run widget shows them.
HEADLINE_COLUMNS = (
    "frame",
    "time_h",
    "reg_score",
    "frac_glass",
    "glass_fraction",
    "frac_na3po4",
    "n_islands",
    "grain_count",
    "grain_ecd_mean_um",
    "astm_g_planimetric",
)


def analyse_frame(
    image: np.ndarray,
    *,
    region: np.ndarray,
    phase_model: Any,
    pixel_size_um: float | None,
    config: Config | None = None,
) -> FrameAnalysis:
    """Segment, measure and label the islands of one frame already in the reference grid.

    Parameters
    ----------
    image : ndarray of float32, shape (H, W)
        Registered frame (NaN where not imaged).
    region : ndarray of bool, shape (H, W)
        Analysed region.
    phase_model : PhaseModel or PixelClassifier
        From :func:`semtrack.segment.fit_phase_model` or a trained classifier.
    pixel_size_um : float or None
        None: lengths in px.
    config : Config, optional

    Returns
    -------
    FrameAnalysis
    """
    config = config or Config()
    valid = region & np.isfinite(image)
    if isinstance(phase_model, segment.PixelClassifier):
        phases = phase_model.predict(image, valid=valid)
    else:
        phases = segment.segment_frame(
            image, model=phase_model, valid=valid, pixel_size_um=pixel_size_um, **segment_options(config)
        )
    del valid
    phase_names = tuple(config.segment.phase_names)
    fractions = quantify.phase_fractions(
        phases,
        phase_names=phase_names,
        pixel_size_um=pixel_size_um,
        confidence=config.quantify.confidence,
        tile_um=config.quantify.tile_um,
    )
    _, grain_table, summary = measure_frame_grains(
        phases, region=region, pixel_size_um=pixel_size_um, config=config, image=image
    )
    islands = label_frame_islands(phases, region=region, pixel_size_um=pixel_size_um, config=config)
    return FrameAnalysis(phases, islands, fractions, grain_table, summary, _preview(image))


def measure_frame_grains(
    phases: np.ndarray,
    *,
    region: np.ndarray,
    pixel_size_um: float | None,
    config: Config | None = None,
    image: np.ndarray | None = None,
) -> tuple[np.ndarray, pd.DataFrame, dict[str, float]]:
    """Grain labels, per-grain table and per-frame summary of one phase map, as :func:`run` makes them.

    ``image`` (the registered frame) is used to split touching grains when ``config.grains.use_image``.

    Returns
    -------
    labels : ndarray of int32
    table : DataFrame
        :func:`semtrack.grains.measure_grains` columns.
    summary : dict
        :func:`semtrack.grains.grain_summary` (count, ECD statistics, ASTM E112 G-numbers).
    """
    config = config or Config()
    code = PHASE_CODES["nasicon"]
    labels, table = grains_mod.measure_grains(
        phases,
        pixel_size_um=pixel_size_um,
        grain_code=code,
        min_grain_area_um2=config.grains.min_grain_area_um2,
        split_touching=config.grains.split_touching,
        valid=region,
        image=image if config.grains.use_image else None,
    )
    summary = grains_mod.grain_summary(table, phases, pixel_size_um=pixel_size_um, grain_code=code, labels=labels)
    return labels, table, summary


def label_frame_islands(
    phases: np.ndarray, *, region: np.ndarray, pixel_size_um: float | None, config: Config | None = None
) -> np.ndarray:
    """Na3PO4 island labels of one phase map (not yet persistent ids), as :func:`run` makes them."""
    config = config or Config()
    return track.label_islands(
        phases,
        pixel_size_um=pixel_size_um,
        island_code=PHASE_CODES["na3po4"],
        min_island_area_um2=config.track.min_island_area_um2,
        smooth_um=config.track.smooth_um,
        valid=region,
    )


#: SegmentConfig fields that are not keywords of ``segment.segment_frame``.
_NOT_SEGMENT_KEYWORDS = {"method", "classifier_path"}


def segment_options(config: Config) -> dict[str, Any]:
    """The keywords of :func:`semtrack.segment.segment_frame` that ``config.segment`` sets."""
    return {k: v for k, v in config.segment.model_dump().items() if k not in _NOT_SEGMENT_KEYWORDS}


def run(
    source: str | Path | Sequence[str | Path] | Series,
    *,
    config: Config | None = None,
    out_dir: str | Path | None = None,
    progress: ProgressCallback | None = None,
    frame_workers: int = 1,
    keep_maps: bool | None = None,
    report: bool | None = None,
) -> Result:
    """Analyse one SEM time series end to end.

    Parameters
    ----------
    source : folder, glob pattern, list of files, or Series
        The frames of one area at several exposure times.
    config : Config, optional
        Every parameter; defaults when omitted.
    out_dir : str or Path, optional
        Write the output contract (and, unless ``report=False``, ``report.html``) here.
    progress : callable, optional
        ``progress(stage, done, total)``.
    frame_workers : int
        Processes that analyse frames in parallel (reading, resampling,
        segmentation, grains); 1 runs everything in this process.
    keep_maps : bool, optional
        Keep every frame's phase and island maps in the result (default: only
        when there is no ``out_dir`` to write them to).
    report : bool, optional
        Render the HTML report (default: ``config.report.html``; needs ``out_dir``).

    Returns
    -------
    Result

    Raises
    ------
    SemtrackError
        A file cannot be read, a frame cannot be registered, results cannot be written.

    Examples
    --------
    >>> import semtrack
    >>> result = semtrack.run(semtrack.data.sample_series_path())  # doctest: +SKIP
    >>> result.frames[["time_h", "frac_na3po4", "n_islands"]]  # doctest: +SKIP
    """
    config = config or Config()
    notify = progress or (lambda stage, done, total: None)
    if frame_workers < 1:
        raise ValueError(f"frame_workers must be >= 1, got {frame_workers}")
    out = ensure_writable(out_dir) if out_dir is not None else None
    if out is not None:
        _remove_stale_temporaries(out)
    keep = (out is None) if keep_maps is None else keep_maps
    cache = _Cache(out / _CACHE_DIR) if out is not None else None

    # Registration, the model fit and the frame analysis each read every frame: decoded once
    # (the frames the reading decodes to find their info bars are kept from there on).
    if isinstance(source, Series):
        series, budget = source, source.keep_pixels(_KEPT_FRAMES_BYTES)
    else:
        series, budget = _read(source, config, notify), 0
    warnings = list(series.warnings)
    pixel_size_um = series.pixel_size_um
    if pixel_size_um is None:
        warnings.append("uncalibrated: no pixel size in the metadata or options; lengths are in px")

    try:
        registration, region, phase_model, analyses = _register_and_analyse(
            series, config, cache, out, frame_workers, notify, warnings
        )
    finally:
        series.keep_pixels(budget)  # the decoded frames are not needed any more

    tracker = track.IslandTracker(
        pixel_size_um=pixel_size_um,
        link_tolerance_um=config.track.link_tolerance_um,
        min_overlap_fraction=config.track.min_overlap_fraction,
        region=region,
    )
    phase_maps: list[np.ndarray] | None = [] if keep else None
    island_maps: list[np.ndarray] | None = [] if keep else None
    # Event maps are drawn as the series streams, from the maps and preview at hand: reading
    # them back from the output folder afterwards cost more than drawing them.
    draw_events = out is not None and config.report.event_maps
    previous = None
    for i, info in enumerate(series.frames):
        analysis = analyses.load(i)
        persistent = tracker.add(analysis.islands, info.time_h)
        if keep:
            phase_maps.append(analysis.phases)
            island_maps.append(persistent)
        preview = analysis.preview
        del analysis
        if out is not None:
            write_label_map(persistent, island_map_path(out, i))
        if draw_events and i > 0:
            indices, palette = track.event_map_indexed(
                np.where(region, preview, np.uint8(0)),
                previous,
                persistent,
                tracker.last_events(),
                pixel_size_um=pixel_size_um,
            )
            write_png(indices, event_map_path(out, i - 1, i), level=_EVENT_MAP_LEVEL, palette=palette)
            del indices
        previous = persistent if draw_events else None
        notify("track", i + 1, len(series))
    lineage = tracker.result()
    # The last frame's maps and the tracker's copy of them are not needed for the tables and the
    # report: on large frames they are the largest things left in memory.
    del tracker, preview, persistent, previous

    tables = [analyses.load_tables(i) for i in range(len(series))]
    frames = _frames_table(series, registration, tables, lineage, pixel_size_um)
    grains_table = pd.concat([grains.assign(frame=i) for i, (_, grains, _) in enumerate(tables)], ignore_index=True)
    grains_table = grains_table[["frame"] + [c for c in grains_table.columns if c != "frame"]]
    region_area = float(region.sum()) * (pixel_size_um or 1.0) ** 2
    intervals = track.interval_statistics(lineage, region_area_um2=region_area)
    kinetics = track.fit_kinetics(
        series.times_h, frames["frac_na3po4"].to_numpy(), frames["island_area_mean_um2"].to_numpy()
    )

    provenance = _provenance(series, config, registration, phase_model, warnings)
    result = Result(
        series=series,
        config=config,
        registration=registration,
        region=region,
        frames=frames,
        grains=grains_table,
        islands=lineage.islands,
        events=lineage.events,
        intervals=intervals,
        kinetics=kinetics,
        lineage=lineage,
        phase_model=phase_model,
        phase_maps=phase_maps,
        island_maps=island_maps,
        warnings=warnings,
        provenance=provenance,
        out_dir=out,
    )
    if out is not None:
        _write_outputs(result, out, notify)
        if config.report.html if report is None else report:
            from .report import render

            notify("report", 0, 1)
            render(out)
            notify("report", 1, 1)
    return result


def _register_and_analyse(series: Series, config: Config, cache, out, frame_workers, notify, warnings: list[str]):
    """The passes of :func:`run` that read the frames: registration, model fit, frame analysis.

    Returns the registration, the analysed region, the phase model and the :class:`_Analyses`;
    registration warnings are appended to ``warnings``.
    """
    inputs_key = [f.sha256 for f in series.frames] + [repr(series.times_h.tolist())]
    registration_key = [inputs_key, config.registration.model_dump(mode="json"), config.io.model_dump(mode="json")]
    registration = _cached(
        cache,
        "registration",
        registration_key,
        lambda: register.register_series(
            series,
            marker=config.registration.marker,
            model=config.registration.model,
            reference=config.registration.reference,
            min_score=config.registration.min_score,
            fail_score=config.registration.fail_score,
            progress=lambda d, t: notify("register", d, t),
        ),
    )
    warnings += [
        f"{info.path.name}: {fr.warning}" for info, fr in zip(series.frames, registration.frames) if fr.warning
    ]
    region = register.analysed_region(
        registration, [f.shape for f in series.frames], [f.valid_rows for f in series.frames]
    )
    if config.registration.exclude_marker and registration.marker_source == "user":
        x0, y0, x1, y1 = registration.marker
        region[max(y0, 0) : y1, max(x0, 0) : x1] = False
    if not region.any():
        raise SemtrackError("no area is imaged by every frame; nothing to analyse")

    model_key = [inputs_key, registration.matrices.round(6).tolist(), config.segment.model_dump(mode="json")]
    phase_model = _cached(
        cache,
        "phase_model",
        model_key,
        lambda: fit_model(series, registration, region, config, lambda d, t: notify("model", d, t)),
    )

    frame_key = [
        model_key,
        config.quantify.model_dump(mode="json"),
        config.grains.model_dump(mode="json"),
        config.track.model_dump(mode="json"),
        _digest(np.packbits(region).tobytes()),
    ]
    analyses = _analyse_frames(
        series, registration, region, phase_model, config, cache, frame_key, out, frame_workers, notify
    )
    return registration, region, phase_model, analyses


def _remove_stale_temporaries(out: Path) -> None:
    """Delete temporary files a killed run left behind (``.name.XXXX.tmp.ext``, see ``atomic_path``)."""
    for path in out.rglob(".*.tmp*"):
        if path.is_file():
            path.unlink(missing_ok=True)


def _read(source, config: Config, notify: ProgressCallback) -> Series:
    io_cfg = config.io
    return read_series(
        source,
        pixel_size_um=io_cfg.pixel_size_um,
        crop_bottom_px=io_cfg.crop_bottom_px,
        times_h=io_cfg.times_h,
        times_csv=io_cfg.times_csv,
        t0=io_cfg.t0,
        progress=lambda d, t: notify("read", d, t),
        keep_pixels_bytes=_KEPT_FRAMES_BYTES,
    )


#: Decoded frames kept for the later passes over a series (as stored: 8 or 16 bits per pixel).
#: Beyond this the remaining frames are decoded again in every pass, so long series still stream.
_KEPT_FRAMES_BYTES = 512 * 2**20


def _registered_image(series: Series, registration, index: int) -> np.ndarray:
    ref_shape = series.frames[registration.reference].shape
    return register.resample(series.image(index), registration.frames[index].matrix, ref_shape)


#: Pixels of all frames together that the unsupervised phase model is fitted on. It samples
#: about 2e5 values in all, so a window per frame is enough and keeps long series out of memory.
_MODEL_FIT_PIXELS = 4_000_000


def _fit_window(region: np.ndarray, n_frames: int) -> tuple[int, int, int, int]:
    """The centred window (x0, y0, x1, y1) of the analysed region each frame contributes to the fit."""
    ys, xs = np.nonzero(region)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    side = int(np.sqrt(max(_MODEL_FIT_PIXELS // n_frames, 512 * 512)))
    h, w = min(side, y1 - y0), min(side, x1 - x0)
    top, left = y0 + (y1 - y0 - h) // 2, x0 + (x1 - x0 - w) // 2
    return left, top, left + w, top + h


def fit_model(
    series: Series,
    registration,
    region: np.ndarray,
    config: Config | None = None,
    progress: Callable[[int, int], None] | None = None,
):
    """The phase model every frame of a series is segmented with, as :func:`run` makes it.

    Unsupervised: :func:`semtrack.segment.fit_phase_model` on a centred window of every
    registered frame (windows keep long series out of memory; the fit samples ~2e5
    pixels in all). Classifier: the trained :class:`~semtrack.segment.PixelClassifier`
    named by ``config.segment.classifier_path``.

    Parameters
    ----------
    series : Series
    registration : semtrack.register.Registration
    region : ndarray of bool, shape (H, W)
        Analysed region in the reference grid.
    config : Config, optional
    progress : callable, optional
        ``progress(done, total)`` over frames.

    Returns
    -------
    PhaseModel or PixelClassifier
    """
    config = config or Config()
    notify = progress or (lambda done, total: None)
    seg = config.segment
    if seg.method == "classifier":
        if not seg.classifier_path:
            raise SemtrackError("segment.method is 'classifier' but no segment.classifier_path is given")
        return segment.PixelClassifier.load(seg.classifier_path)
    x0, y0, x1, y1 = _fit_window(region, len(series))
    shift = np.array([[1.0, 0, x0], [0, 1, y0], [0, 0, 1]])
    images, valids = [], []
    for i in range(len(series)):
        window = register.resample(series.image(i), registration.frames[i].matrix @ shift, (y1 - y0, x1 - x0))
        images.append(window)
        valids.append(region[y0:y1, x0:x1] & np.isfinite(window))
        notify(i + 1, len(series))
    return segment.fit_phase_model(
        images,
        valid=valids,
        phase_names=tuple(seg.phase_names),
        brightness_order=tuple(seg.brightness_order),
        pixel_size_um=series.pixel_size_um,
        denoise_sigma_px=seg.denoise_sigma_px,
    )


def _frame_task(path_index: int, series: Series, registration, region, phase_model, config: Config) -> FrameAnalysis:
    image = _registered_image(series, registration, path_index)
    return analyse_frame(
        image, region=region, phase_model=phase_model, pixel_size_um=series.pixel_size_um, config=config
    )


#: Deflate level of the previews: 0 stores them uncompressed. Noisy BSE frames deflate only to ~70 %,
#: at 24 ms a 2048x1536 frame (a tenth of a frame's share of the whole run) against 1 ms stored; the
#: report reads them back faster too.
_PREVIEW_LEVEL = 0
#: Deflate level of the event maps, stored as palette PNGs (one byte per pixel): 0 stores them
#: uncompressed. A 2048x1536 map then takes ~4 ms and 3.1 MB; level 1 takes ~22 ms and ~2.0 MB
#: (the RGB maps before took ~38 ms and 3.2-3.6 MB), most of it coding the noisy frame under the marks.
_EVENT_MAP_LEVEL = 0


def _preview(image: np.ndarray) -> np.ndarray:
    # clip(image, 0, 1) * 255 == clip(image * 255, 0, 255) exactly; done in place on one buffer.
    scaled = np.multiply(image, np.float32(255), dtype=np.float32)
    # fmax takes 0 for NaN (not imaged): one pass where clip and nan_to_num took four times as long.
    np.fmax(scaled, 0, out=scaled)
    np.minimum(scaled, 255, out=scaled)
    return scaled.astype(np.uint8)


class _Analyses:
    """Per-frame analyses, in memory or in the cache folder (so long series stream)."""

    def __init__(self, cache: _Cache | None, keys: list[str]):
        self._cache = cache
        self._keys = keys
        # The tables are stored apart too: building frames.csv and grains.csv then reads kilobytes
        # per frame, not the maps.
        self._table_keys = [_digest(f"{key}/tables") for key in keys]
        self._memory: dict[int, FrameAnalysis] = {}

    def store(self, index: int, analysis: FrameAnalysis) -> None:
        if self._cache is None:
            self._memory[index] = analysis
        else:
            self._cache.put(self._table_keys[index], (analysis.fractions, analysis.grains, analysis.grain_summary))
            # Island labels in the smallest type that holds them (a few hundred islands: 8 or 16 bits, not
            # 32): the largest map of the entry, and writing and reading it back is the entry's cost.
            narrow = np.min_scalar_type(max(int(analysis.islands.max(initial=0)), 0))
            self._cache.put(self._keys[index], replace(analysis, islands=analysis.islands.astype(narrow)))

    def has(self, index: int) -> bool:
        if index in self._memory:
            return True
        return self._cache is not None and all(
            self._cache.has(key) for key in (self._keys[index], self._table_keys[index])
        )

    def load(self, index: int) -> FrameAnalysis:
        if index in self._memory:
            return self._memory[index]
        analysis = self._cache.get(self._keys[index])
        return replace(analysis, islands=analysis.islands.astype(np.int32, copy=False))

    def load_tables(self, index: int) -> tuple[dict[str, float], pd.DataFrame, dict[str, float]]:
        """(fractions, grains, grain_summary) of frame ``index``."""
        if index in self._memory:
            analysis = self._memory[index]
            return analysis.fractions, analysis.grains, analysis.grain_summary
        return self._cache.get(self._table_keys[index])


def _analyse_frames(series, registration, region, phase_model, config, cache, frame_key, out, workers, notify):
    """Analyse the frames not in the cache (worker processes read the files themselves)."""
    keys = [
        _digest(json.dumps([frame_key, series.frames[i].sha256, registration.frames[i].matrix.round(6).tolist()]))
        for i in range(len(series))
    ]
    analyses = _Analyses(cache, keys)
    todo = [i for i in range(len(series)) if not analyses.has(i)]
    done = len(series) - len(todo)
    notify("frames", done, len(series))

    def finish(i: int, analysis: FrameAnalysis) -> None:
        nonlocal done
        if out is not None:
            write_label_map(analysis.phases, phase_map_path(out, i))
            write_png(analysis.preview, preview_path(out, i), level=_PREVIEW_LEVEL)
        analyses.store(i, analysis)
        done += 1
        notify("frames", done, len(series))

    if workers > 1 and len(todo) > 1:
        with ProcessPoolExecutor(max_workers=min(workers, len(todo))) as pool:
            futures = {i: pool.submit(_frame_task, i, series, registration, region, phase_model, config) for i in todo}
            for i in todo:
                finish(i, futures[i].result())
    else:
        for i in todo:
            finish(i, _frame_task(i, series, registration, region, phase_model, config))
    if out is not None:
        for i in range(len(series)):
            if not (phase_map_path(out, i).exists() and preview_path(out, i).exists()):
                analysis = analyses.load(i)
                write_label_map(analysis.phases, phase_map_path(out, i))
                write_png(analysis.preview, preview_path(out, i), level=_PREVIEW_LEVEL)
    return analyses


def _frames_table(series: Series, registration, tables, lineage, pixel_size_um) -> pd.DataFrame:
    """One row per frame; ``tables`` holds each frame's ``_Analyses.load_tables``."""
    islands = lineage.islands
    rows = []
    for i, info in enumerate(series.frames):
        fractions, _, grain_summary = tables[i]
        frame_islands = islands[islands["frame"] == i]
        areas = frame_islands["area_um2"].to_numpy(dtype=float)
        params = register.transform_parameters(registration.frames[i].matrix)
        row: dict[str, Any] = {
            "frame": i,
            "file": info.path.name,
            "time_h": info.time_h,
            "dx_px": params["dx_px"],
            "dy_px": params["dy_px"],
            "rotation_deg": params["rotation_deg"],
            "scale": params["scale"],
            "reg_score": registration.frames[i].score,
            "reg_ok": registration.frames[i].ok,
        }
        row.update(fractions)
        row.update(
            {
                "n_islands": len(frame_islands),
                "na3po4_area_um2": float(areas.sum()),
                "island_area_mean_um2": float(areas.mean()) if len(areas) else 0.0,
                "island_area_median_um2": float(np.median(areas)) if len(areas) else 0.0,
            }
        )
        row.update(grain_summary)
        row["pixel_size_um"] = pixel_size_um if pixel_size_um is not None else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def _length_unit_columns(table: pd.DataFrame) -> pd.DataFrame:
    """Rename µm columns to px for an uncalibrated series: never label px as µm."""
    renamed = {}
    for col in table.columns:
        if col == "pixel_size_um":
            continue
        for um, px in (("_um2", "_px2"), ("_um", "_px"), ("_per_mm2", "_per_px2_x1e6")):
            if col.endswith(um) or f"{um}_" in col:
                renamed[col] = col.replace(um, px, 1)
                break
    return table.rename(columns=renamed)


def _write_outputs(result: Result, out: Path, notify: ProgressCallback) -> None:
    tables = {
        "frames.csv": result.frames,
        "grains.csv": result.grains,
        "islands.csv": result.islands,
        "events.csv": result.events,
        "intervals.csv": result.intervals,
    }
    steps = len(tables) + 4
    calibrated = result.series.calibrated
    for n, (name, table) in enumerate(tables.items()):
        write_table(table if calibrated else _length_unit_columns(table), out / name)
        notify("write", n + 1, steps)
    transforms = {
        "reference": result.registration.reference,
        "convention": "matrix maps reference pixel (x=col, y=row, 1) to the frame's pixel in the file as read",
        "frames": [
            {"frame": i, "file": f.path.name, "matrix": fr.matrix.tolist(), "score": fr.score}
            for i, (f, fr) in enumerate(zip(result.series.frames, result.registration.frames))
        ],
    }
    write_json(transforms, out / "transforms.json")
    write_json(result.kinetics, out / "kinetics.json")
    notify("write", steps - 1, steps)
    try:
        track.write_geff(result.lineage, out / "lineage.geff")
    except ImportError as exc:
        result.warnings.append(f"lineage.geff not written: {exc}")
    # run.json last: its presence marks a complete output folder.
    write_json(result.provenance | {"warnings": result.warnings}, out / "run.json")
    notify("write", steps, steps)


def _provenance(series: Series, config: Config, registration, phase_model, warnings) -> dict[str, Any]:
    import cv2
    import skimage

    model_record = phase_model.to_dict() if hasattr(phase_model, "to_dict") else {"type": type(phase_model).__name__}
    return {
        "semtrack_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "semtrack.run",
        "platform": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "scikit-image": skimage.__version__,
            "opencv": cv2.__version__,
            "machine": platform.machine(),
        },
        "inputs": [
            {
                "frame": i,
                "file": str(f.path),
                "sha256": f.sha256,
                "time_h": f.time_h,
                "crop_bottom_px": f.crop_bottom_px,
                "acquired": f.acquired,
            }
            for i, f in enumerate(series.frames)
        ],
        "pixel_size_um": series.pixel_size_um,
        "pixel_size_source": series.pixel_size_source,
        "length_unit": "um" if series.calibrated else "px",
        "config": config.to_dict(),
        "registration": {
            "marker": list(registration.marker),
            "marker_source": registration.marker_source,
            "model": registration.model,
            "strategy": registration.strategy,
            "reference": registration.reference,
        },
        "phase_model": model_record,
        "preview_downsample": 1,
    }


def _digest(data: str | bytes) -> str:
    if isinstance(data, str):
        data = data.encode()
    return hashlib.sha256(data).hexdigest()


class _Cache:
    """Pickled intermediate results under ``out_dir/.cache``, keyed by a digest of their inputs."""

    def __init__(self, folder: Path):
        self.folder = folder

    def _path(self, key: str) -> Path:
        return self.folder / f"{key[:32]}.pkl"

    def has(self, key: str) -> bool:
        return self._path(key).exists()

    def get(self, key: str) -> Any:
        with open(self._path(key), "rb") as fh:
            return pickle.load(fh)

    def put(self, key: str, value: Any) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(self._path(key)) as tmp, open(tmp, "wb") as fh:
            pickle.dump(value, fh, protocol=pickle.HIGHEST_PROTOCOL)


def _cached(cache: _Cache | None, name: str, key_parts: Any, compute: Callable[[], Any]) -> Any:
    if cache is None:
        return compute()
    key = _digest(json.dumps([name, __version__, key_parts], default=str))
    if cache.has(key):
        try:
            return cache.get(key)
        except Exception:  # a cache entry from another version or a torn write: recompute
            log.info("ignoring unreadable cache entry %s", name)
    value = compute()
    cache.put(key, value)
    return value
