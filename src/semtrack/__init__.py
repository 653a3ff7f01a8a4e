"""semtrack: quantitative analysis of SEM-BSE time series.

Read a series of SEM micrographs of the same area, register the frames through a
fixed marker, segment the phases (pore, glass, NaSICON, Na3PO4), measure phase
fractions with confidence intervals and grain size (ASTM E112), and track Na3PO4
islands through formation, growth, coalescence, splitting and dissolution.

The public API is re-exported here and loaded on first use, so ``import semtrack``
(and the CLI's start-up) stays fast.

Examples
--------
>>> import semtrack
>>> result = semtrack.run(semtrack.data.sample_series_path(), out_dir="results")  # doctest: +SKIP
>>> result.frames[["time_h", "glass_fraction", "n_islands"]]  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

from ._version import __version__

_EXPORTS = {
    # reading
    "read_series": "io",
    "read_image": "io",
    "read_metadata": "io",
    "parse_time_h": "io",
    "detect_info_bar": "io",
    "write_sem_tiff": "io",
    "Series": "series",
    "FrameInfo": "series",
    # registration
    "register_series": "register",
    "register_frame": "register",
    "resample": "register",
    "analysed_region": "register",
    "choose_marker": "register",
    "Registration": "register",
    # segmentation and measurement
    "fit_phase_model": "segment",
    "segment_frame": "segment",
    "PixelClassifier": "segment",
    "PhaseModel": "segment",
    "phase_fractions": "quantify",
    "measure_grains": "grains",
    "grain_summary": "grains",
    # tracking
    "label_islands": "track",
    "link_islands": "track",
    "IslandTracker": "track",
    "Lineage": "track",
    "event_map": "track",
    "to_napari_tracks": "track",
    "write_geff": "track",
    "fit_kinetics": "track",
    "interval_statistics": "track",
    # whole runs
    "run": "pipeline",
    "Result": "pipeline",
    "analyse_frame": "pipeline",
    "run_batch": "batch",
    "render_report": ("report", "render"),
    "Config": "config",
    "load_config": "config",
    "SemtrackError": "errors",
}
_SUBMODULES = {
    "io",
    "register",
    "segment",
    "quantify",
    "grains",
    "track",
    "pipeline",
    "batch",
    "report",
    "config",
    "errors",
    "synth",
    "data",
    "series",
    "write",
}

__all__ = ["__version__", *_EXPORTS, *sorted(_SUBMODULES)]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    target = _EXPORTS.get(name)
    if target is None:
        raise AttributeError(f"module 'semtrack' has no attribute {name!r}")
    module_name, attr = target if isinstance(target, tuple) else (target, name)
    value = getattr(importlib.import_module(f".{module_name}", __name__), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
