"""Typed description of an SEM time series.

A :class:`Series` holds what was learnt from the files' headers (times, pixel
size, info-bar height, hashes) but not the pixels: :meth:`Series.image` reads a
frame when a stage needs it, so a long series of large frames never has to sit
in memory at once. Stages that read every frame in turn can ask it to keep the
decoded pixels within a budget (:meth:`Series.keep_pixels`), so each frame is
decoded once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["FrameInfo", "Series"]


@dataclass(frozen=True)
class FrameInfo:
    """One frame of a series, as found in its file.

    Attributes
    ----------
    path : Path
        The image file.
    time_h : float
        Exposure time in hours.
    shape : tuple of int
        ``(rows, cols)`` of the image as read (info bar included).
    raw_dtype : str
        Pixel type in the file (``"uint8"``, ``"uint16"`` ...).
    pixel_size_um : float or None
        Pixel size in µm, None when uncalibrated.
    pixel_size_source : str
        Where the pixel size came from: ``"user"``, ``"zeiss"``, ``"fei"``,
        ``"tiff-resolution"``, ``"imagej"`` or ``"uncalibrated"``.
    crop_bottom_px : int
        Rows at the bottom that belong to the info bar (excluded from analysis).
    acquired : datetime or None
        Acquisition date-time from the metadata, when present.
    sha256 : str
        Hex digest of the file's bytes (provenance).
    metadata : dict
        Selected vendor metadata (JSON-serialisable), for the record.
    """

    path: Path
    time_h: float
    shape: tuple[int, int]
    raw_dtype: str
    pixel_size_um: float | None
    pixel_size_source: str
    crop_bottom_px: int
    acquired: datetime | None
    sha256: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def valid_rows(self) -> int:
        """Number of image rows above the info bar."""
        return self.shape[0] - self.crop_bottom_px


@dataclass
class Series:
    """A time series of SEM frames of the same area, sorted by exposure time.

    Attributes
    ----------
    frames : list of FrameInfo
        In time order.
    pixel_size_um : float or None
        The series' pixel size in µm (that of the reference frame), None when uncalibrated.
    pixel_size_source : str
        Where it came from (see :class:`FrameInfo`).
    warnings : list of str
        Recoverable problems found while reading (each names its file).
    """

    frames: list[FrameInfo]
    pixel_size_um: float | None
    pixel_size_source: str
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Decoded pixels by frame index, as io.read_pixels gives them; none kept by default.
        self._kept: dict[int, tuple] = {}
        self._room = 0

    def __getstate__(self) -> dict[str, Any]:
        # Kept pixels stay in this process: a Series sent to a worker carries only its description.
        return self.__dict__ | {"_kept": {}, "_room": 0}

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def times_h(self) -> np.ndarray:
        """Exposure times in hours, shape ``(n_frames,)``."""
        return np.array([f.time_h for f in self.frames], dtype=float)

    @property
    def files(self) -> list[Path]:
        return [f.path for f in self.frames]

    @property
    def calibrated(self) -> bool:
        return self.pixel_size_um is not None

    def image(self, index: int) -> np.ndarray:
        """Read frame ``index`` as float32 in [0, 1], full shape as read (info bar included).

        A new array on every call; the file is decoded again unless its pixels are kept
        (:meth:`keep_pixels`).
        """
        from .io import read_pixels, unit_image

        pixels = self._kept.get(index)
        if pixels is None:
            pixels = read_pixels(self.frames[index].path)
            self._offer(index, pixels)
        return unit_image(*pixels)

    def keep_pixels(self, budget_bytes: int) -> int:
        """Keep frames decoded by :meth:`image` for its later calls, up to ``budget_bytes`` in all.

        Pixels are kept as stored (8 or 16 bits: a quarter or half of the float image), in
        the order frames are first read; frames beyond the budget are decoded on every call,
        so long series still stream. Decoding a 2048x1536 deflate TIFF costs ~10 ms of CPU.

        Parameters
        ----------
        budget_bytes : int
            0 forgets every kept frame and keeps no more.

        Returns
        -------
        int
            The previous budget, to restore it with.
        """
        previous = self._room + sum(pixels[0].nbytes for pixels in self._kept.values())
        self._kept, self._room = {}, max(int(budget_bytes), 0)
        return previous

    def _offer(self, index: int, pixels: tuple) -> None:
        """Keep the decoded ``pixels`` of frame ``index`` (see :func:`semtrack.io.read_pixels`) if they fit."""
        if index not in self._kept and pixels[0].nbytes <= self._room:
            self._kept[index] = pixels
            self._room -= pixels[0].nbytes

    def valid_mask(self, index: int) -> np.ndarray:
        """Boolean ``(rows, cols)`` mask of frame ``index``: False in the info bar."""
        info = self.frames[index]
        mask = np.zeros(info.shape, dtype=bool)
        mask[: info.valid_rows] = True
        return mask
