"""Open an SEM time series (a folder of TIFFs, or several TIFF files) as one (T, Y, X) image layer.

The layer's ``scale`` is the pixel size in µm from the files' metadata (1 when uncalibrated, which
``metadata["semtrack"]["calibrated"]`` says), its ``metadata["times_h"]`` the exposure time of each
frame, and ``metadata["semtrack"]["series"]`` the :class:`semtrack.series.Series` the other widgets
work on. Frames keep the shape they have in the files (info bar included): the reference frame's
pixel grid is the one registration markers are given in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from semtrack.io import read_series
from semtrack.series import Series

from ._common import stack

__all__ = ["napari_get_reader", "read_semtrack_series", "series_layer_data"]

_TIFF_SUFFIXES = (".tif", ".tiff")

LayerData = tuple[Any, dict[str, Any], str]


def _handled(path: str | Sequence[str]) -> str | list[str] | None:
    """The source to read, or None when the path is not an SEM series this reader takes."""
    if isinstance(path, (list, tuple)):
        files = [Path(p) for p in path]
        if len(files) >= 2 and all(p.is_file() and p.suffix.lower() in _TIFF_SUFFIXES for p in files):
            return [str(p) for p in files]
        return None
    folder = Path(path)
    # A single TIFF file stays with napari's own reader: a series needs several frames.
    if folder.is_dir() and any(p.suffix.lower() in _TIFF_SUFFIXES for p in folder.iterdir() if p.is_file()):
        return str(folder)
    return None


def napari_get_reader(path: str | Sequence[str]) -> Callable[[Any], list[LayerData]] | None:
    """npe2 reader contribution: a reader function for ``path``, or None when it is not a series.

    Parameters
    ----------
    path : str or list of str
        A folder holding the TIFF frames of one series, or two or more TIFF files.

    Returns
    -------
    callable or None
    """
    source = _handled(path)
    if source is None:
        return None
    return lambda _path: read_semtrack_series(source)


def read_semtrack_series(source: str | Path | Sequence[str | Path], **options) -> list[LayerData]:
    """Read a series with :func:`semtrack.io.read_series` and return napari layer data.

    Parameters
    ----------
    source : folder, glob pattern or list of files
    **options
        Keyword options of :func:`semtrack.io.read_series` (``pixel_size_um``, ``times_h``, ...).

    Returns
    -------
    list of (data, kwargs, "image")
        One image layer, data ``(T, Y, X)`` float32 in [0, 1].

    Examples
    --------
    >>> import semtrack.data
    >>> [(data, kwargs, kind)] = read_semtrack_series(semtrack.data.sample_series_path())  # doctest: +SKIP
    >>> kwargs["metadata"]["times_h"]  # doctest: +SKIP
    [0.0, 24.0, 96.0]
    """
    series = read_series(source, **options)
    name = Path(source).name if isinstance(source, (str, Path)) else Path(source[0]).parent.name
    return [series_layer_data(series, name=name or "semtrack series")]


def series_layer_data(series: Series, *, name: str) -> LayerData:
    """Layer data of a :class:`~semtrack.series.Series`: every frame read and stacked."""
    frames = [series.image(i) for i in range(len(series))]
    data = stack(frames, 0.0, np.float32)
    pixel_size = series.pixel_size_um if series.calibrated else 1.0
    unit = "µm" if series.calibrated else "px"
    times = [float(t) for t in series.times_h]
    kwargs = {
        "name": name,
        "scale": (1.0, pixel_size, pixel_size),
        "axis_labels": ("frame", "y", "x"),
        "contrast_limits": (0.0, 1.0),
        "colormap": "gray",
        "metadata": {
            "times_h": times,
            "pixel_size_um": series.pixel_size_um,
            "length_unit": unit,
            "semtrack": {
                "series": series,
                "times_h": times,
                "pixel_size_um": series.pixel_size_um,
                "pixel_size_source": series.pixel_size_source,
                "calibrated": series.calibrated,
                "length_unit": unit,
                "files": [str(f.path) for f in series.frames],
                "valid_rows": [f.valid_rows for f in series.frames],
                "warnings": list(series.warnings),
                "config": {},
            },
        },
    }
    return data, kwargs, "image"
