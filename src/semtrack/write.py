"""Writers for the output contract. Every file is written to a temporary name and renamed.

Output folder layout (see README "Output files" for the columns):

- ``frames.csv``, ``grains.csv``, ``islands.csv``, ``events.csv``, ``intervals.csv``
- ``transforms.json``, ``kinetics.json``, ``run.json``
- ``labels/phases_NNN.tif``, ``labels/islands_NNN.tif``
- ``previews/frame_NNN.png``, ``event_maps/events_NNN_MMM.png``
- ``lineage.geff`` (when the ``geff`` package is installed)
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import tifffile

from ._atomic import atomic_path, atomic_write_text
from .errors import OutputError

__all__ = [
    "phase_map_path",
    "island_map_path",
    "preview_path",
    "event_map_path",
    "write_table",
    "write_json",
    "write_label_map",
    "read_label_map",
    "write_png",
    "png_bytes",
    "png_pixels",
    "ensure_writable",
]


def phase_map_path(out_dir: Path, frame: int) -> Path:
    return Path(out_dir) / "labels" / f"phases_{frame:03d}.tif"


def island_map_path(out_dir: Path, frame: int) -> Path:
    return Path(out_dir) / "labels" / f"islands_{frame:03d}.tif"


def preview_path(out_dir: Path, frame: int) -> Path:
    return Path(out_dir) / "previews" / f"frame_{frame:03d}.png"


def event_map_path(out_dir: Path, frame_from: int, frame_to: int) -> Path:
    return Path(out_dir) / "event_maps" / f"events_{frame_from:03d}_{frame_to:03d}.png"


def ensure_writable(out_dir: str | Path) -> Path:
    """Create ``out_dir`` if needed and check that files can be written in it.

    Raises
    ------
    OutputError
        The folder cannot be created or written to.
    """
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(out_dir / ".write-test") as tmp:
            tmp.write_bytes(b"")
        (out_dir / ".write-test").unlink()
    except OSError as exc:
        raise OutputError(f"cannot write to the output folder ({exc.strerror or exc})", path=out_dir) from exc
    return out_dir


def write_table(table: pd.DataFrame, path: str | Path) -> Path:
    """Write a DataFrame as CSV (no index), atomically.

    Floats are written with their shortest round-trip representation, so the
    same numbers always give the same bytes (resumed runs are byte-identical).
    """
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            table.to_csv(tmp, index=False, lineterminator="\n")
    except OSError as exc:
        raise OutputError(f"cannot write table ({exc.strerror or exc})", path=path) from exc
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return None if not math.isfinite(value) else float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _finite(obj: Any) -> Any:
    # JSON has no NaN/inf; write null so every reader accepts the file.
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_json(obj: Any, path: str | Path) -> Path:
    """Write ``obj`` as indented JSON (NaN/inf become null), atomically."""
    path = Path(path)
    text = json.dumps(_finite(obj), indent=2, default=_json_default, allow_nan=False)
    try:
        atomic_write_text(path, text + "\n")
    except OSError as exc:
        raise OutputError(f"cannot write JSON ({exc.strerror or exc})", path=path) from exc
    return path


def write_label_map(array: np.ndarray, path: str | Path) -> Path:
    """Write a 2-D label map as a deflate-compressed TIFF, atomically."""
    path = Path(path)
    array = np.asarray(array)
    try:
        with atomic_path(path) as tmp:
            strips = _deflated_strips(array)
            if strips is None:
                tifffile.imwrite(tmp, array, compression="zlib", compressionargs={"level": 2}, photometric="minisblack")
            else:
                rows_per_strip, data = strips
                tifffile.imwrite(
                    tmp,
                    data,
                    shape=array.shape,
                    dtype=array.dtype,
                    compression="zlib",
                    rowsperstrip=rows_per_strip,
                    photometric="minisblack",
                )
    except OSError as exc:
        raise OutputError(f"cannot write label map ({exc.strerror or exc})", path=path) from exc
    return path


#: Uncompressed bytes per TIFF strip of a label map.
_STRIP_BYTES = 1 << 20


def _deflated_strips(array: np.ndarray):
    """(rows per strip, iterator of zlib streams of the strips) of a 2-D label map, or None.

    Deflate (readable everywhere, Fiji included) by zlib-ng at level 2: label maps are long runs,
    which zlib-ng codes several times faster than libdeflate (tifffile's own encoder): 2048x1536
    int32 islands in 3 ms instead of 18 ms, phases in 5 ms instead of 8 ms, files within 12 % of
    the size. None (tifffile then compresses) where zlib-ng is missing or the map is not a
    non-empty 2-D array.
    """
    import imagecodecs

    zlibng = getattr(imagecodecs, "ZLIBNG", None)  # imagecodecs builds may leave a codec out
    if array.ndim != 2 or array.size == 0 or not getattr(zlibng, "available", False):
        return None
    # TIFF strips hold the pixels in the file's byte order, which tifffile makes little-endian.
    array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    rows_per_strip = max(1, _STRIP_BYTES // array[0].nbytes)
    strips = (
        imagecodecs.zlibng_encode(array[r : r + rows_per_strip], level=2)
        for r in range(0, array.shape[0], rows_per_strip)
    )
    return rows_per_strip, strips


def read_label_map(path: str | Path) -> np.ndarray:
    """Read a label map written by :func:`write_label_map`."""
    return tifffile.imread(path)


def write_png(image: np.ndarray, path: str | Path, *, level: int = 1, palette: np.ndarray | None = None) -> Path:
    """Write an 8-bit grey ``(H, W)`` or RGB ``(H, W, 3)`` image as PNG, atomically.

    Every row is stored with the PNG "up" filter and deflated by libdeflate at level 1
    (:func:`png_bytes`): on noisy SEM frames that is as small as OpenCV's PNG and, on RGB
    event maps, half the time and 40 % fewer bytes. ``level=0`` stores the pixels
    uncompressed; with ``palette`` the ``(H, W)`` image holds palette indices (see :func:`png_bytes`).
    """
    path = Path(path)
    data = png_bytes(image, level=level, palette=palette)
    try:
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
    except OSError as exc:
        raise OutputError(f"cannot write image ({exc.strerror or exc})", path=path) from exc
    return path


def png_bytes(image: np.ndarray, *, level: int = 1, palette: np.ndarray | None = None) -> bytes:
    """PNG file bytes of an 8-bit grey ``(H, W)`` or RGB ``(H, W, 3)`` image, or of a palette image.

    Parameters
    ----------
    image : ndarray of uint8
    level : int
        Deflate level, 1 (fastest) to 12 (smallest); 0 stores the rows uncompressed and
        unfiltered: a noisy 2048x1536 SEM frame takes 1 ms instead of 24 ms and 3.1 MB
        instead of 2.3 MB.
    palette : (N, 3) ndarray of uint8, optional
        RGB colours, 1 <= N <= 256: the file is a palette PNG (colour type 3) and ``image``,
        ``(H, W)``, holds indices below N. One byte per pixel: a 2048x1536 event map takes
        ~22 ms and ~2.0 MB at level 1 where its RGB image takes ~39 ms and ~3.6 MB (stored:
        ~4 ms and 3.1 MB).

    Returns
    -------
    bytes

    Examples
    --------
    >>> import cv2
    >>> image = np.arange(12, dtype=np.uint8).reshape(3, 4)
    >>> data = png_bytes(image)
    >>> np.array_equal(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED), image)
    True
    """
    import imagecodecs

    image = np.asarray(image)
    if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(f"`image` must be uint8 (H, W) or (H, W, 3), got {image.dtype} {image.shape}")
    rows, cols = image.shape[:2]
    if rows == 0 or cols == 0:
        raise ValueError(f"`image` is empty: shape {image.shape}")
    chunks = []
    if palette is not None:
        palette = np.asarray(palette)
        if palette.dtype != np.uint8 or palette.ndim != 2 or palette.shape[1] != 3 or not 1 <= len(palette) <= 256:
            raise ValueError(f"`palette` must be uint8 (N, 3) with 1 <= N <= 256, got {palette.dtype} {palette.shape}")
        if image.ndim != 2 or int(image.max()) >= len(palette):
            raise ValueError(f"a palette `image` must be (H, W) with indices below {len(palette)}")
        chunks.append(_png_chunk(b"PLTE", np.ascontiguousarray(palette).tobytes()))
    lines = image.reshape(rows, -1)
    filtered = np.empty((rows, lines.shape[1] + 1), np.uint8)
    if level == 0:
        # Stored blocks: a filter cannot make them smaller, and readers need not undo one.
        filtered[:, 0] = 0
        filtered[:, 1:] = lines
    else:
        # Filter type 2 ("up", each byte minus the byte above it) before every row: one pass of
        # numpy and the best ratio of the five filters on BSE images at deflate level 1.
        filtered[:, 0] = 2
        filtered[0, 1:] = lines[0]
        np.subtract(lines[1:], lines[:-1], out=filtered[1:, 1:])
    colour_type = 3 if palette is not None else 0 if image.ndim == 2 else 2
    header = struct.pack(">IIBBBBB", cols, rows, 8, colour_type, 0, 0, 0)
    return b"".join(
        (
            _PNG_SIGNATURE,
            _png_chunk(b"IHDR", header),
            *chunks,
            _png_chunk(b"IDAT", imagecodecs.deflate_encode(filtered, level=level)),
            _png_chunk(b"IEND", b""),
        )
    )


def png_pixels(data: bytes) -> np.ndarray | None:
    """The pixels of a PNG as :func:`png_bytes` writes it, or None for any other PNG.

    The inverse of :func:`png_bytes`, for the report reading back previews and event maps:
    one inflate and (unless stored unfiltered) one add per row, five to seven times faster than a general PNG decoder
    on 2048x1536 frames. Palette PNGs are expanded to RGB. PNGs of another layout (other bit depths,
    colour types, filters, interlacing) or damaged files give None; decode those with a general reader.

    Parameters
    ----------
    data : bytes
        The PNG file's bytes.

    Returns
    -------
    ndarray of uint8, shape (H, W) or (H, W, 3), or None
        Grey or RGB pixels (RGB for palette PNGs).

    Examples
    --------
    >>> image = np.arange(12, dtype=np.uint8).reshape(3, 4)
    >>> np.array_equal(png_pixels(png_bytes(image)), image)
    True
    """
    import imagecodecs

    if not data.startswith(_PNG_SIGNATURE):
        return None
    header, palette, idat, pos = None, None, [], len(_PNG_SIGNATURE)
    while pos + 8 <= len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = body
        elif kind == b"PLTE":
            palette = body
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    if header is None or len(header) != 13 or not idat:
        return None
    cols, rows, depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", header)
    if depth != 8 or colour_type not in (0, 2, 3) or interlace != 0 or rows == 0 or cols == 0:
        return None
    if colour_type == 3:
        if palette is None or len(palette) % 3 or not 3 <= len(palette) <= 768:
            return None
        # Indices past the palette's end are an error in a PNG; they read as black here.
        colours = np.frombuffer(palette, np.uint8).reshape(-1, 3)
    channels = 3 if colour_type == 2 else 1
    try:
        raw = imagecodecs.deflate_decode(b"".join(idat), out=rows * (cols * channels + 1))
    except Exception:  # noqa: BLE001 - a damaged stream: let the general decoder report it
        return None
    filtered = np.frombuffer(raw, np.uint8)
    if filtered.size != rows * (cols * channels + 1):
        return None
    filtered = filtered.reshape(rows, cols * channels + 1)
    if not np.any(filtered[:, 0]):  # no row filtered (png_bytes at level 0)
        lines = filtered[:, 1:].copy()  # writable and contiguous, as below
    # png_bytes filters every row with "up" (type 2; on the first row the same as "none").
    elif filtered[0, 0] not in (0, 2) or np.any(filtered[1:, 0] != 2):
        return None
    else:
        lines = np.empty((rows, cols * channels), np.uint8)
        lines[0] = filtered[0, 1:]
        # Undo "up" row by row: np.cumsum along axis 0 is fifteen times slower on these shapes.
        for r in range(1, rows):
            np.add(lines[r - 1], filtered[r, 1:], out=lines[r])
    if colour_type == 3:
        return _expand_palette(lines.reshape(rows, cols), colours)
    return lines.reshape(rows, cols) if channels == 1 else lines.reshape(rows, cols, 3)


def _expand_palette(indices: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """RGB ``(H, W, 3)`` of palette ``indices``: ``palette[indices]`` by one table lookup per channel,
    a tenth of the time of numpy's fancy indexing on a 2048x1536 image."""
    import cv2

    table = np.zeros((256, 3), np.uint8)
    table[: len(palette)] = palette
    return cv2.merge([cv2.LUT(indices, np.ascontiguousarray(table[:, c])) for c in range(3)])


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))
