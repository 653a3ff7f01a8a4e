"""File > Open Sample > semtrack: the synthetic NaSICON series bundled with semtrack."""

from __future__ import annotations

from ._reader import read_semtrack_series

__all__ = ["sample_series"]


def sample_series():
    """The bundled sample series (``semtrack.data.sample_series_path()``) as one time-stacked layer.

    Returns
    -------
    list of (data, kwargs, "image")
        As :func:`napari_semtrack.read_semtrack_series`.
    """
    # Imported here: napari lists sample data at start-up, the series is only needed when chosen.
    from semtrack.data import sample_series_path

    layers = read_semtrack_series(sample_series_path())
    layers[0][1]["name"] = "semtrack sample"
    return layers
