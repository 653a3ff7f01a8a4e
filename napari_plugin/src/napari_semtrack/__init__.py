"""napari plugin for semtrack: the SEM-BSE time-series workflow as dock widgets.

Everything scientific happens in :mod:`semtrack`; this package only turns layers into API
arguments and API results into layers.
"""

from ._reader import napari_get_reader, read_semtrack_series
from ._sample_data import sample_series
from ._widgets import ExportWidget, GrainsWidget, RegisterWidget, SegmentWidget, TrackWidget

__version__ = "0.1.0"

__all__ = [
    "napari_get_reader",
    "read_semtrack_series",
    "sample_series",
    "RegisterWidget",
    "SegmentWidget",
    "GrainsWidget",
    "TrackWidget",
    "ExportWidget",
]
