"""Reading SEM image series: pixels, calibration, acquisition times and the info bar.

Everything that touches image files lives here; the analysis stages only see
arrays. The public functions are:

- :func:`read_image` -- one frame as float32 in [0, 1];
- :func:`read_metadata` -- shape, pixel size (with its source) and acquisition time from the header;
- :func:`detect_info_bar` -- rows of the SEM data bar at the bottom of a frame;
- :func:`parse_time_h` -- exposure time in hours from a file name;
- :func:`read_series` -- a whole time series as a :class:`~semtrack.series.Series`;
- :func:`write_sem_tiff` -- write a TIFF the way a Zeiss or FEI/Thermo SEM does (tests, synthetic data);
- :func:`sha256_file` -- provenance hash of a file.

Every file problem is a :class:`~semtrack.errors.ReadError`,
:class:`~semtrack.errors.MetadataError` or :class:`~semtrack.errors.TimeParseError`
whose message starts with the file name.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import logging
import math
import re
import warnings
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from ._atomic import atomic_path
from .errors import MetadataError, ReadError, SemtrackError, TimeParseError
from .series import FrameInfo, Series

__all__ = [
    "read_image",
    "read_metadata",
    "detect_info_bar",
    "parse_time_h",
    "read_series",
    "write_sem_tiff",
    "sha256_file",
    "MAX_PIXELS",
    "IMAGE_SUFFIXES",
]

logger = logging.getLogger(__name__)

#: Largest frame semtrack reads (rows * cols). 2**28 pixels is 16384 x 16384, 1 GiB as
#: float32; a header claiming more is treated as corrupt rather than allocated.
MAX_PIXELS: int = 2**28

#: File name endings taken as images when a folder is read (other files are skipped).
IMAGE_SUFFIXES: tuple[str, ...] = (".tif", ".tiff", ".png", ".jpg", ".jpeg")

#: Pixel sizes outside this range (µm) are not believed when they come from generic
#: TIFF resolution tags: 72/96/300 dpi defaults written by image editors give
#: 85-350 µm, which no SEM micrograph has.
_PLAUSIBLE_PIXEL_UM = (1e-5, 50.0)

#: Largest believable ratio of decoded to compressed bytes. Deflate cannot exceed
#: ~1032:1 and real micrographs (noisy) compress far less; a header claiming more
#: is corrupt.
_MAX_COMPRESSION_RATIO = 4096

#: Vendors :func:`write_sem_tiff` can imitate.
_WRITE_VENDORS = ("zeiss", "fei", "tiff", None)

_ZEISS_TAG = 34118
_FEI_HELIOS_TAG = 34682


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 digest of a file's bytes, read in 1 MiB chunks.

    Parameters
    ----------
    path : str or Path
        The file.

    Returns
    -------
    str
        64 hexadecimal characters.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.bin"
    >>> _ = p.write_bytes(b"abc")
    >>> sha256_file(p)[:16]
    'ba7816bf8f01cfea'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------- writing


def write_sem_tiff(
    path: str | Path,
    image: np.ndarray,
    *,
    pixel_size_um: float | None = None,
    vendor: str | None = "zeiss",
    acquired: datetime | None = None,
    compression: str | None = None,
    info_bar_px: int | None = None,
) -> Path:
    """Write an image as a TIFF laid out the way an SEM's software writes it.

    Used to build test files and synthetic series that exercise the same
    metadata paths as real microscope files:

    - ``"zeiss"``: Zeiss SmartSEM text in tag 34118 (``CZ_SEM``): pairs of lines
      ``AP_PIXEL_SIZE`` / ``Pixel Size = 24.41 nm``, ``AP_DATE`` /
      ``Date :25 Nov 2026``, ``AP_TIME`` / ``Time :14:03:12`` ... separated by CR LF,
      as parsed by :func:`tifffile.read_cz_sem`.
    - ``"fei"``: FEI/Thermo xT INI text in tag 34682 (``FEI_HELIOS``) with
      ``[User] Date=11/25/2026 Time=02:03:12 PM``, ``[Scan] PixelWidth=2.441e-08``
      (metres), ``[Image] ResolutionX/ResolutionY`` and ``[PrivateFei] DatabarHeight``.
    - ``"tiff"``: plain TIFF resolution tags (pixels per centimetre,
      ``ResolutionUnit`` = centimetre) and the ``DateTime`` tag.
    - ``None``: no calibration and no date at all.

    The file is written to a temporary name and renamed, so a crash never
    leaves a half-written file under ``path``.

    Parameters
    ----------
    path : str or Path
        Output file (``.tif``).
    image : (rows, cols) or (rows, cols, 3|4) ndarray
        ``uint8`` or ``uint16`` pixels are written as they are; floating-point
        images must lie in [0, 1] and are written as ``uint16`` (value * 65535, rounded).
    pixel_size_um : float, optional
        Pixel size in µm. None writes the vendor header without a pixel size
        (an uncalibrated file).
    vendor : {"zeiss", "fei", "tiff", None}
        Which metadata layout to imitate.
    acquired : datetime, optional
        Acquisition date-time to record (seconds resolution).
    compression : {None, "lzw", "zlib", "deflate"}
        TIFF compression (through imagecodecs).
    info_bar_px : int, optional
        Height of the data bar included at the bottom of ``image``; FEI files record
        it (``DatabarHeight``, and ``ResolutionY`` = rows without the bar). Ignored
        by the other layouts, which do not store it.

    Returns
    -------
    Path
        ``path``.

    Examples
    --------
    >>> import tempfile, pathlib, numpy as np
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "t0024h.tif"
    >>> img = np.zeros((64, 80), dtype=np.uint8)
    >>> write_sem_tiff(p, img, pixel_size_um=0.02441, vendor="zeiss").name
    't0024h.tif'
    >>> round(read_metadata(p)["pixel_size_um"], 5)
    0.02441
    """
    if vendor not in _WRITE_VENDORS:
        raise ValueError(f"`vendor` must be one of {_WRITE_VENDORS}, got {vendor!r}")
    if pixel_size_um is not None and not (np.isfinite(pixel_size_um) and pixel_size_um > 0):
        raise ValueError(f"`pixel_size_um` must be a positive finite number, got {pixel_size_um!r}")
    if compression not in (None, "lzw", "zlib", "deflate"):
        raise ValueError(f"`compression` must be None, 'lzw', 'zlib' or 'deflate', got {compression!r}")
    data = _pixels_for_writing(image)
    rows, cols = data.shape[:2]
    if info_bar_px is not None and not (0 <= int(info_bar_px) < rows):
        raise ValueError(f"`info_bar_px` must be in [0, {rows}), got {info_bar_px!r}")

    extratags = []
    kwargs: dict = {}
    if vendor == "zeiss":
        text = _zeiss_header(pixel_size_um, acquired, rows=rows, cols=cols)
        extratags.append((_ZEISS_TAG, "s", 0, text, True))
    elif vendor == "fei":
        text = _fei_header(pixel_size_um, acquired, rows=rows, cols=cols, info_bar_px=info_bar_px or 0)
        extratags.append((_FEI_HELIOS_TAG, "s", 0, text, True))
    elif vendor == "tiff":
        if pixel_size_um is not None:
            per_cm = 1e4 / pixel_size_um
            kwargs["resolution"] = (per_cm, per_cm)
            kwargs["resolutionunit"] = "CENTIMETER"
        if acquired is not None:
            kwargs["datetime"] = acquired
    if data.ndim == 3:
        kwargs["photometric"] = "rgb"
        if data.shape[2] == 4:
            kwargs["extrasamples"] = ("unassalpha",)
    else:
        kwargs["photometric"] = "minisblack"
    if compression is not None:
        kwargs["compression"] = "zlib" if compression == "deflate" else compression

    with atomic_path(path) as tmp:
        # No ImageJ/shaped-JSON description: SEM software writes none, and the
        # reader must not depend on one.
        tifffile.imwrite(tmp, data, extratags=extratags, metadata=None, **kwargs)
    return Path(path)


def _pixels_for_writing(image: np.ndarray) -> np.ndarray:
    data = np.asarray(image)
    if not (data.ndim == 2 or (data.ndim == 3 and data.shape[2] in (3, 4))):
        raise ValueError(f"`image` must be (rows, cols) or (rows, cols, 3|4), got shape {data.shape}")
    if data.shape[0] == 0 or data.shape[1] == 0:
        raise ValueError(f"`image` is empty (shape {data.shape})")
    if data.dtype in (np.uint8, np.uint16):
        return data
    if np.issubdtype(data.dtype, np.floating):
        if not np.all(np.isfinite(data)) or data.min() < 0 or data.max() > 1:
            raise ValueError("floating-point `image` must be finite and within [0, 1]; scale it first")
        return np.round(data * 65535.0).astype(np.uint16)
    raise TypeError(f"`image` must be uint8, uint16 or float in [0, 1], got dtype {data.dtype}")


def _zeiss_header(pixel_size_um, acquired, *, rows: int, cols: int) -> bytes:
    # SmartSEM stores a block of unnamed numbers first, then NAME / "Label = value unit"
    # line pairs, CR LF separated, in the Windows code page (µ is byte 0xB5).
    lines = ["0", "0", "0"]
    lines += ["SV_VERSION", "Version = V06.03.00.00 : 19-Jun-18"]
    lines += ["DP_DETECTOR_CHANNEL", "Signal A = QBSD"]
    lines += ["AP_MAG", "Mag = 5.00 K X"]
    lines += ["AP_ACTUALKV", "EHT = 15.00 kV"]
    lines += ["AP_WD", "WD = 8.5 mm"]
    lines += ["DP_IMAGE_STORE", f"Store resolution = {cols} * {rows}"]
    if pixel_size_um is not None:
        value, unit = _zeiss_length(pixel_size_um)
        # SmartSEM V05 writes AP_PIXEL_SIZE, V06 adds AP_IMAGE_PIXEL_SIZE; write both.
        lines += ["AP_PIXEL_SIZE", f"Pixel Size = {value} {unit}"]
        lines += ["AP_IMAGE_PIXEL_SIZE", f"Image Pixel Size = {value} {unit}"]
    if acquired is not None:
        lines += ["AP_DATE", f"Date :{acquired.strftime('%d %b %Y')}"]
        lines += ["AP_TIME", f"Time :{acquired.strftime('%H:%M:%S')}"]
    lines += ["END", ""]
    return "\r\n".join(lines).encode("cp1252")


def _zeiss_length(pixel_size_um: float) -> tuple[str, str]:
    # Enough significant digits that synthetic ground truth survives the round trip.
    if pixel_size_um < 1.0:
        return f"{pixel_size_um * 1000.0:.7g}", "nm"
    return f"{pixel_size_um:.7g}", "\u00b5m"


def _fei_header(pixel_size_um, acquired, *, rows: int, cols: int, info_bar_px: int) -> bytes:
    sections: dict[str, dict[str, str]] = {
        "User": {},
        "System": {"Type": "SEM", "SystemType": "Quanta FEG 250", "Dnumber": "D0000"},
        "Beam": {"HV": "15000", "Spot": "4"},
        "EBeam": {"WD": "0.0085", "HV": "15000"},
        "Scan": {"Dwelltime": "1e-05"},
        "Detectors": {"Number": "1", "Name": "CBS", "Mode": "All"},
        "Image": {"ResolutionX": str(cols), "ResolutionY": str(rows - info_bar_px)},
        "PrivateFei": {"DatabarHeight": str(info_bar_px), "DataBarSelected": "DataBar"},
    }
    if acquired is not None:
        sections["User"]["Date"] = acquired.strftime("%m/%d/%Y")
        sections["User"]["Time"] = acquired.strftime("%I:%M:%S %p")
    sections["User"]["User"] = "user"
    if pixel_size_um is not None:
        metres = f"{pixel_size_um * 1e-6:.9g}"
        sections["Scan"]["PixelWidth"] = metres
        sections["Scan"]["PixelHeight"] = metres
        sections["Scan"]["HorFieldsize"] = f"{pixel_size_um * 1e-6 * cols:.9g}"
        sections["EBeam"]["HFW"] = sections["Scan"]["HorFieldsize"]
    lines: list[str] = []
    for name, entries in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{key}={value}" for key, value in entries.items()]
        lines.append("")
    return "\r\n".join(lines).encode("ascii")


# --------------------------------------------------------------------------- pixels


def read_image(path: str | Path) -> np.ndarray:
    """Read one SEM frame as a float32 grey image in [0, 1].

    Integer pixels are divided by the largest value their bit depth can hold:
    255 for 8-bit, 65535 for 16-bit. A 16-bit file whose detector only fills 12
    bits (values up to 4095) is therefore *not* stretched: its image looks dark
    but keeps the grey levels comparable between frames, which matters more for a
    time series than using the full range. (TIFFs that declare 12 bits per sample
    are divided by 4095.) Colour images become grey: when all colour channels are
    equal (the usual "grey saved as RGB") the first channel is used exactly, else
    the Rec. 709 luminance 0.2125 R + 0.7154 G + 0.0721 B (as
    :func:`skimage.color.rgb2gray`); an alpha channel is ignored. Floating-point
    files must already hold values in [0, 1].

    TIFF (uncompressed, LZW, deflate and the other codecs of imagecodecs), PNG
    and JPEG are read; the format is recognised from the file's first bytes,
    not its name.

    Parameters
    ----------
    path : str or Path
        The image file.

    Returns
    -------
    (rows, cols) ndarray of float32
        The full frame as stored, info bar included.

    Raises
    ------
    ReadError
        The file is missing or empty, is not a TIFF/PNG/JPEG image, is truncated
        or corrupt, holds several images (a stack or multi-page file) or a volume,
        claims more than :data:`MAX_PIXELS` pixels, has zero rows or columns, has
        signed-integer pixels, or has floating-point pixels that are NaN, infinite
        or outside [0, 1].

    Examples
    --------
    >>> import tempfile, pathlib, numpy as np
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "frame.tif"
    >>> _ = write_sem_tiff(p, np.array([[0, 255], [51, 102]], dtype=np.uint8), vendor=None)
    >>> read_image(p)
    array([[0. , 1. ],
           [0.2, 0.4]], dtype=float32)
    """
    return unit_image(*read_pixels(path))


def read_pixels(path: str | Path) -> tuple[np.ndarray, int, bool, Path]:
    """The pixels of one frame as stored, for :func:`unit_image`; ``read_image`` is the two in turn.

    Decoding is most of the cost of reading a frame; a caller that reads the same frame
    again can keep these (8 or 16 bits per pixel: a quarter or half of the float image).

    Returns
    -------
    data : ndarray
        The decoded pixels, in the file's data type.
    bits : int
        Bits per sample the file declares.
    miniswhite : bool
        Whether 0 means white.
    path : Path

    Raises
    ------
    ReadError
        As :func:`read_image`.
    """
    path = Path(path)
    fmt = _check_file(path)
    if fmt == "tiff":
        data, bits, miniswhite = _read_tiff_pixels(path)
    else:
        data, bits = _read_pil_pixels(path)
        miniswhite = False
    return data, bits, miniswhite, path


def unit_image(data: np.ndarray, bits: int, miniswhite: bool, path: Path) -> np.ndarray:
    """The float32 grey image in [0, 1] of pixels from :func:`read_pixels` (see :func:`read_image`)."""
    image = _to_unit_float(data, bits, path)
    if miniswhite:
        # Photometric "min is white": 0 means white; semtrack's images are always min-is-black.
        image = 1.0 - image
    return image


def _check_file(path: Path) -> str:
    """Return the format of ``path`` ('tiff', 'png', 'jpeg') or raise ReadError."""
    try:
        if not path.exists():
            raise ReadError("file not found; check the path and the file name", path=path)
        if path.is_dir():
            raise ReadError("is a folder, not an image file", path=path)
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        raise ReadError(f"cannot open the file ({exc.strerror or exc})", path=path) from exc
    if size == 0:
        raise ReadError("the file is empty (0 bytes); copy it again from the microscope", path=path)
    fmt = _sniff(head)
    if fmt is None:
        raise ReadError(
            f"not an image file semtrack can read (first bytes {head[:8]!r}); expected TIFF, PNG or JPEG",
            path=path,
        )
    return fmt


def _sniff(head: bytes) -> str | None:
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    return None


def _read_tiff_pixels(path: Path) -> tuple[np.ndarray, int, bool]:
    try:
        with tifffile.TiffFile(path) as tif:
            page = _checked_page(tif, path)
            bits = int(page.bitspersample)
            miniswhite = page.photometric == tifffile.PHOTOMETRIC.MINISWHITE
            data = page.asarray()
            if page.planarconfig == tifffile.PLANARCONFIG.SEPARATE and data.ndim == 3:
                data = np.moveaxis(data, 0, -1)
    except SemtrackError:
        raise
    except Exception as exc:  # tifffile/imagecodecs raise many types on corrupt input
        raise ReadError(
            f"cannot decode the TIFF ({type(exc).__name__}: {exc}); the file is probably "
            "truncated or corrupt -- copy it again from the microscope",
            path=path,
        ) from exc
    return data, bits, miniswhite


def _checked_page(tif: tifffile.TiffFile, path: Path):
    """The file's one image page, after checks that need only the header."""
    pages = tif.pages
    n_pages = len(pages)
    if n_pages == 0:
        raise ReadError("the TIFF contains no image", path=path)
    page = pages.first
    extra = 0
    for index in range(1, n_pages):
        other = pages[index]
        # Reduced-resolution previews (thumbnails) are not extra frames.
        if not getattr(other, "is_reduced", False):
            extra += 1
    if extra:
        raise ReadError(
            f"the TIFF holds {extra + 1} images (a stack or multi-page file); semtrack expects one "
            "2-D frame per file -- save each time point as its own file",
            path=path,
        )
    if tif.is_imagej:
        meta = tif.imagej_metadata or {}
        images = meta.get("images", 1)
        if isinstance(images, int) and images > 1:
            raise ReadError(
                f"the ImageJ TIFF is a stack of {images} images; semtrack expects one 2-D frame per "
                "file -- save each slice as its own file",
                path=path,
            )
    if page.imagedepth > 1:
        raise ReadError(
            f"the TIFF holds a 3-D volume (depth {page.imagedepth}); semtrack expects a 2-D frame",
            path=path,
        )
    rows, cols, samples = int(page.imagelength), int(page.imagewidth), int(page.samplesperpixel)
    if rows == 0 or cols == 0:
        raise ReadError(f"the image is empty ({rows} x {cols} pixels)", path=path)
    if rows * cols > MAX_PIXELS:
        raise ReadError(
            f"the header claims {rows} x {cols} pixels, more than semtrack's limit of "
            f"{MAX_PIXELS} pixels per frame; the file is corrupt or not a single SEM frame",
            path=path,
        )
    if samples not in (1, 2, 3, 4):
        raise ReadError(
            f"{samples} samples per pixel are not supported (expected grey, grey+alpha, RGB or RGBA)",
            path=path,
        )
    if page.sampleformat == tifffile.SAMPLEFORMAT.INT:
        raise ReadError(
            "signed-integer pixels are not supported; save the image as unsigned 8- or 16-bit",
            path=path,
        )
    if page.photometric == tifffile.PHOTOMETRIC.PALETTE:
        raise ReadError("palette (indexed-colour) images are not supported; save it as greyscale", path=path)
    size = tif.filehandle.size
    offsets, counts = page.dataoffsets, page.databytecounts
    if not offsets or not counts:
        raise ReadError("the TIFF has no image data (no strip or tile offsets)", path=path)
    end = max(int(o) + int(c) for o, c in zip(offsets, counts, strict=False))
    if end > size:
        raise ReadError(
            f"the image data should end at byte {end} but the file has only {size} bytes: "
            "the file is truncated -- copy it again from the microscope",
            path=path,
        )
    expected = rows * cols * samples * max(1, int(page.bitspersample)) // 8
    stored = sum(int(c) for c in counts)
    if page.compression == tifffile.COMPRESSION.NONE:
        if stored < expected:
            raise ReadError(
                f"the uncompressed image needs {expected} bytes but the file stores only "
                f"{stored}: the file is truncated or corrupt",
                path=path,
            )
    elif expected > _MAX_COMPRESSION_RATIO * max(stored, 1):
        # Checked before decoding so a damaged header cannot make us allocate gigabytes.
        raise ReadError(
            f"the header claims {rows} x {cols} pixels but holds only {stored} bytes of compressed "
            "data, far too little for an SEM image: the file is corrupt",
            path=path,
        )
    return page


def _read_pil_pixels(path: Path) -> tuple[np.ndarray, int]:
    from PIL import Image

    try:
        with warnings.catch_warnings():
            # semtrack applies its own size limit (MAX_PIXELS) before decoding.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                cols, rows = im.size
                if rows == 0 or cols == 0:
                    raise ReadError(f"the image is empty ({rows} x {cols} pixels)", path=path)
                if rows * cols > MAX_PIXELS:
                    raise ReadError(
                        f"the header claims {rows} x {cols} pixels, more than semtrack's limit of "
                        f"{MAX_PIXELS} pixels per frame",
                        path=path,
                    )
                if getattr(im, "n_frames", 1) > 1:
                    raise ReadError(
                        f"the file holds {im.n_frames} images (an animation); semtrack expects one frame",
                        path=path,
                    )
                mode = im.mode
                if mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
                    im = im.convert("RGBA" if "A" in mode else "RGB")
                    mode = im.mode
                data = np.asarray(im)
    except SemtrackError:
        raise
    except Exception as exc:
        raise ReadError(
            f"cannot decode the image ({type(exc).__name__}: {exc}); the file is probably truncated or corrupt",
            path=path,
        ) from exc
    if mode in ("I", "I;16", "I;16B", "I;16L") and data.dtype != np.uint16:
        # 16-bit PNGs open as 32-bit integer mode in some Pillow versions.
        if data.size and (data.min() < 0 or data.max() > 65535):
            raise ReadError("32-bit integer pixels are not supported; save as 8- or 16-bit", path=path)
        data = data.astype(np.uint16)
    bits = 1 if data.dtype == bool else data.dtype.itemsize * 8
    return data, bits


#: Rec. 709 luma weights, as skimage.color.rgb2gray.
_LUMA = np.array([0.2125, 0.7154, 0.0721], dtype=np.float32)


def _to_unit_float(data: np.ndarray, bits: int, path: Path) -> np.ndarray:
    if data.ndim == 3:
        channels = data.shape[2]
        if channels == 1 or channels == 2:  # grey (+ alpha)
            data = data[..., 0]
        elif channels in (3, 4):
            rgb = data[..., :3]
            if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
                data = rgb[..., 0]
            else:
                data = _to_unit_float(rgb[..., 0], bits, path) * _LUMA[0]
                data += _to_unit_float(rgb[..., 1], bits, path) * _LUMA[1]
                data += _to_unit_float(rgb[..., 2], bits, path) * _LUMA[2]
                return np.clip(data, 0.0, 1.0, out=data)
        else:
            raise ReadError(f"{channels} channels are not supported", path=path)
    elif data.ndim != 2:
        raise ReadError(f"expected a 2-D image, got an array of shape {data.shape}", path=path)
    if data.shape[0] == 0 or data.shape[1] == 0:
        raise ReadError(f"the image is empty (shape {data.shape})", path=path)
    if data.dtype == bool:
        return data.astype(np.float32)
    if np.issubdtype(data.dtype, np.unsignedinteger):
        full = float(2 ** min(bits, data.dtype.itemsize * 8) - 1)
        # Divide (not multiply by 1/full) so that v / 255 is the float32 nearest the true ratio.
        return np.divide(data, np.float32(full), dtype=np.float32)
    if np.issubdtype(data.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(data)))
        if bad:
            raise ReadError(
                f"{bad} pixels are NaN or infinite; semtrack needs finite intensities "
                "(re-export the image as 8- or 16-bit)",
                path=path,
            )
        low, high = float(data.min()), float(data.max())
        if low < -1e-6 or high > 1 + 1e-6:
            raise ReadError(
                f"floating-point pixels span [{low:g}, {high:g}] but semtrack expects [0, 1]; "
                "scale them to [0, 1] or save as 8- or 16-bit",
                path=path,
            )
        return np.clip(data.astype(np.float32), 0.0, 1.0)
    raise ReadError(f"pixel type {data.dtype} is not supported; save as 8- or 16-bit", path=path)


# --------------------------------------------------------------------------- metadata


def read_metadata(path: str | Path) -> dict[str, Any]:
    """Read a frame's header: size, pixel type, pixel size and acquisition time.

    Pixels are not decoded. The pixel size is taken from the first of these that
    is present: Zeiss SmartSEM text (tag 34118, ``AP_IMAGE_PIXEL_SIZE`` or
    ``AP_PIXEL_SIZE``), FEI/Thermo text (tag 34682/34680, ``[Scan] PixelWidth``
    in metres), ImageJ calibration (description ``unit=`` plus resolution tags),
    TIFF resolution tags with an inch or centimetre unit. Otherwise the frame is
    ``"uncalibrated"``; nothing is guessed. Resolution tags giving an implausible
    SEM pixel size (outside 10 pm - 50 µm, e.g. the 72 dpi default of image
    editors) are ignored with a note.

    Parameters
    ----------
    path : str or Path
        The image file.

    Returns
    -------
    dict
        ``shape`` : (rows, cols); ``dtype`` : pixel type in the file (``"uint8"`` ...);
        ``samples`` : channels per pixel; ``format`` : ``"tiff"``, ``"png"`` or ``"jpeg"``;
        ``pixel_size_um`` : float or None; ``pixel_size_source`` : ``"zeiss"``, ``"fei"``,
        ``"imagej"``, ``"tiff-resolution"`` or ``"uncalibrated"``; ``acquired`` :
        datetime or None; ``acquired_source`` : where it came from or None;
        ``info_bar_px`` : data-bar height recorded by the microscope (FEI) or None;
        ``vendor`` : ``"zeiss"``, ``"fei"`` or None; ``vendor_fields`` : selected
        vendor values (JSON-serialisable); ``notes`` : recoverable problems (str).

    Raises
    ------
    ReadError
        As :func:`read_image`, for problems visible in the header.
    MetadataError
        The microscope recorded a pixel size that cannot be used (unparseable,
        unknown unit, zero, negative). Pass ``pixel_size_um`` to
        :func:`read_series` to override it.

    Examples
    --------
    >>> import tempfile, pathlib, numpy as np
    >>> from datetime import datetime
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.tif"
    >>> _ = write_sem_tiff(p, np.zeros((48, 64), np.uint8), pixel_size_um=0.05, vendor="fei",
    ...                    acquired=datetime(2026, 11, 25, 14, 3, 12))
    >>> meta = read_metadata(p)
    >>> meta["shape"], meta["pixel_size_um"], meta["pixel_size_source"], meta["acquired"]
    ((48, 64), 0.05, 'fei', datetime.datetime(2026, 11, 25, 14, 3, 12))
    """
    meta, problems = _inspect(Path(path))
    if problems:
        raise MetadataError("; ".join(problems) + " -- give the pixel size explicitly (pixel_size_um)", path=path)
    return meta


def _inspect(path: Path) -> tuple[dict[str, Any], list[str]]:
    """Header metadata and the calibration problems that make it unusable."""
    fmt = _check_file(path)
    meta: dict[str, Any] = {
        "path": str(path),
        "format": fmt,
        "pixel_size_um": None,
        "pixel_size_source": "uncalibrated",
        "acquired": None,
        "acquired_source": None,
        "info_bar_px": None,
        "vendor": None,
        "vendor_fields": {},
        "notes": [],
    }
    problems: list[str] = []
    if fmt == "tiff":
        try:
            with tifffile.TiffFile(path) as tif:
                page = _checked_page(tif, path)
                _tiff_metadata(tif, page, meta, problems)
        except SemtrackError:
            raise
        except Exception as exc:
            raise ReadError(
                f"cannot read the TIFF header ({type(exc).__name__}: {exc}); the file is probably truncated or corrupt",
                path=path,
            ) from exc
    else:
        _pil_metadata(path, meta)
    return meta, problems


def _pil_metadata(path: Path, meta: dict[str, Any]) -> None:
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                cols, rows = im.size
                mode = im.mode
    except Exception as exc:
        raise ReadError(f"cannot read the image header ({type(exc).__name__}: {exc})", path=path) from exc
    if rows == 0 or cols == 0:
        raise ReadError(f"the image is empty ({rows} x {cols} pixels)", path=path)
    if rows * cols > MAX_PIXELS:
        raise ReadError(f"the header claims {rows} x {cols} pixels, more than {MAX_PIXELS}", path=path)
    meta["shape"] = (rows, cols)
    meta["dtype"] = "uint16" if mode.startswith("I") else ("bool" if mode == "1" else "uint8")
    meta["samples"] = {"L": 1, "1": 1, "LA": 2, "RGB": 3, "RGBA": 4}.get(mode, 3)
    meta["notes"].append(f"{meta['format'].upper()} files carry no SEM calibration: uncalibrated")


def _tiff_metadata(tif: tifffile.TiffFile, page, meta: dict[str, Any], problems: list[str]) -> None:
    meta["shape"] = (int(page.imagelength), int(page.imagewidth))
    meta["dtype"] = str(page.dtype) if page.dtype is not None else f"{page.bitspersample}-bit"
    meta["samples"] = int(page.samplesperpixel)
    notes: list[str] = meta["notes"]
    tags = page.tags

    zeiss = _tag_value(tags, _ZEISS_TAG, notes, "Zeiss")
    fei: dict[str, Any] = {}
    for code in (34680, _FEI_HELIOS_TAG):
        value = _tag_value(tags, code, notes, "FEI")
        if isinstance(value, dict):
            fei.update(value)

    if isinstance(zeiss, dict) and zeiss:
        meta["vendor"] = "zeiss"
        _zeiss_metadata(zeiss, meta, problems)
    elif fei:
        meta["vendor"] = "fei"
        _fei_metadata(fei, meta, problems)

    if meta["pixel_size_um"] is None and not problems:
        _resolution_metadata(tif, tags, meta)
    if meta["acquired"] is None:
        stamp = _tag_value(tags, 306, notes, "DateTime")
        if isinstance(stamp, str) and stamp.strip():
            when = _parse_datetime(stamp.strip(), ("%Y:%m:%d %H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S"))
            if when is None:
                notes.append(f"TIFF DateTime {stamp!r} is not a date-time; acquisition time unknown")
            else:
                meta["acquired"], meta["acquired_source"] = when, "tiff-datetime"


def _tag_value(tags, code: int, notes: list[str], label: str) -> Any:
    tag = tags.get(code)
    if tag is None:
        return None
    try:
        return tag.value
    except Exception as exc:  # a damaged optional tag must not stop reading the pixels
        notes.append(f"{label} tag {code} is unreadable ({type(exc).__name__}); ignored")
        return None


#: Length units in SEM metadata, in µm.
_LENGTH_UM = {
    "pm": 1e-6,
    "nm": 1e-3,
    "um": 1.0,
    "µm": 1.0,  # micro sign U+00B5
    "μm": 1.0,  # Greek mu U+03BC
    "micron": 1.0,
    "microns": 1.0,
    "\\u00b5m": 1.0,  # as ImageJ escapes it in its description
    "mm": 1e3,
    "cm": 1e4,
    "m": 1e6,
}


def _zeiss_metadata(sem: dict[str, Any], meta: dict[str, Any], problems: list[str]) -> None:
    fields: dict[str, Any] = {}
    for key in (
        "ap_image_pixel_size",
        "ap_pixel_size",
        "ap_mag",
        "ap_actualkv",
        "ap_wd",
        "dp_detector_channel",
        "dp_image_store",
        "ap_date",
        "ap_time",
        "sv_version",
    ):
        entry = sem.get(key)
        if isinstance(entry, tuple) and len(entry) >= 2:
            fields[key] = _json_safe(" ".join(str(v) for v in entry[1:]))
    meta["vendor_fields"] = fields
    entry = sem.get("ap_image_pixel_size") or sem.get("ap_pixel_size")
    if entry is not None:
        size = _length_um(entry[1:] if isinstance(entry, tuple) else (entry,))
        if size is None:
            problems.append(f"Zeiss pixel size {_describe(entry)} is not a positive length in pm/nm/µm/mm")
        else:
            meta["pixel_size_um"], meta["pixel_size_source"] = size, "zeiss"
    else:
        meta["notes"].append("Zeiss metadata has no pixel size (AP_IMAGE_PIXEL_SIZE / AP_PIXEL_SIZE)")
    store = fields.get("dp_image_store")
    if isinstance(store, str):
        match = re.match(r"\s*(\d+)\s*\*\s*(\d+)", store)
        if match and int(match.group(1)) != meta["shape"][1]:
            meta["notes"].append(
                f"Zeiss store resolution {store} differs from the image width {meta['shape'][1]}: "
                "the image was resized after acquisition, so its pixel size may be wrong"
            )
    date, time = sem.get("ap_date"), sem.get("ap_time")
    if isinstance(date, tuple) and len(date) >= 2:
        date_text = _german_months(str(date[1]).strip())
        time_text = str(time[1]).strip() if isinstance(time, tuple) and len(time) >= 2 else "00:00:00"
        when = _parse_datetime(
            f"{date_text} {time_text}",
            (
                "%d %b %Y %H:%M:%S",
                "%d %B %Y %H:%M:%S",
                "%d.%m.%Y %H:%M:%S",
                "%d/%m/%Y %H:%M:%S",
                "%Y-%m-%d %H:%M:%S",
                "%d %b %Y %H:%M",
            ),
        )
        if when is None:
            meta["notes"].append(f"Zeiss date/time {date_text!r} {time_text!r} not understood")
        else:
            meta["acquired"], meta["acquired_source"] = when, "zeiss"


def _fei_metadata(fei: dict[str, Any], meta: dict[str, Any], problems: list[str]) -> None:
    def get(section: str, key: str) -> Any:
        value = fei.get(section)
        return value.get(key) if isinstance(value, dict) else None

    fields = {}
    for section, key in (
        ("Scan", "PixelWidth"),
        ("Scan", "PixelHeight"),
        ("EBeam", "HFW"),
        ("Beam", "HV"),
        ("EBeam", "WD"),
        ("Detectors", "Name"),
        ("System", "SystemType"),
        ("Image", "ResolutionX"),
        ("Image", "ResolutionY"),
        ("PrivateFei", "DatabarHeight"),
        ("User", "Date"),
        ("User", "Time"),
    ):
        value = get(section, key)
        if value is not None:
            fields[f"{section}.{key}"] = _json_safe(value)
    meta["vendor_fields"] = fields
    width = get("Scan", "PixelWidth")
    if width is None:
        width = get("EScan", "PixelWidth")
    if width is not None:
        size = _length_um((width, "m"))
        if size is None:
            problems.append(f"FEI [Scan] PixelWidth={width!r} is not a positive length in metres")
        else:
            meta["pixel_size_um"], meta["pixel_size_source"] = size, "fei"
            height = _length_um((get("Scan", "PixelHeight"), "m"))
            if height is not None and abs(height - size) > 0.01 * size:
                meta["notes"].append(
                    f"FEI pixels are not square (width {size:g} µm, height {height:g} µm); using the width"
                )
    else:
        meta["notes"].append("FEI metadata has no [Scan] PixelWidth")
    rows = meta["shape"][0]
    res_y, bar = get("Image", "ResolutionY"), get("PrivateFei", "DatabarHeight")
    if isinstance(res_y, int) and 0 < res_y < rows:
        meta["info_bar_px"] = rows - res_y
    elif isinstance(bar, int) and 0 < bar < rows:
        meta["info_bar_px"] = bar
    date, time = get("User", "Date"), get("User", "Time")
    if date is not None:
        text = f"{date} {time if time is not None else '00:00:00'}".strip()
        when = _parse_datetime(
            text,
            (
                "%m/%d/%Y %I:%M:%S %p",
                "%m/%d/%Y %H:%M:%S",
                "%d.%m.%Y %H:%M:%S",
                "%Y-%m-%d %H:%M:%S",
                "%d/%m/%Y %H:%M:%S",
            ),
        )
        if when is None:
            meta["notes"].append(f"FEI [User] Date/Time {text!r} not understood")
        else:
            meta["acquired"], meta["acquired_source"] = when, "fei"


def _resolution_metadata(tif: tifffile.TiffFile, tags, meta: dict[str, Any]) -> None:
    notes: list[str] = meta["notes"]
    xres = _rational(_tag_value(tags, 282, notes, "XResolution"))
    yres = _rational(_tag_value(tags, 283, notes, "YResolution"))
    unit_value = _tag_value(tags, 296, notes, "ResolutionUnit")
    if xres is None or xres <= 0:
        return
    source, size = None, None
    if tif.is_imagej:
        ij = tif.imagej_metadata or {}
        unit = str(ij.get("unit", "")).strip().lower()
        scale = _LENGTH_UM.get(unit)
        if scale is not None:
            source, size = "imagej", scale / xres
        elif unit and unit not in ("pixel", "pixels"):
            notes.append(f"ImageJ unit {unit!r} is not a length; uncalibrated")
    if source is None:
        try:
            unit_code = int(unit_value) if unit_value is not None else 2  # TIFF default: inch
        except (TypeError, ValueError):
            unit_code = 1
        per_unit_um = {2: 25400.0, 3: 1e4, 4: 1e3, 5: 1.0}.get(unit_code)
        if per_unit_um is None:
            return  # unit NONE: the tags only give an aspect ratio
        source, size = "tiff-resolution", per_unit_um / xres
    low, high = _PLAUSIBLE_PIXEL_UM
    if not (low <= size <= high):
        notes.append(
            f"{source} calibration gives {size:g} µm per pixel, not a plausible SEM pixel size "
            "(an image editor's default dpi?); ignored, uncalibrated"
        )
        return
    if yres is not None and yres > 0 and abs(yres - xres) > 0.01 * xres:
        notes.append("X and Y resolution differ by more than 1 %; using X")
    meta["pixel_size_um"], meta["pixel_size_source"] = float(f"{size:.12g}"), source


def _rational(value: Any) -> float | None:
    try:
        if isinstance(value, tuple) and len(value) == 2:
            return float(value[0]) / float(value[1]) if float(value[1]) else None
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _length_um(parts: tuple) -> float | None:
    """µm from ``(number, unit)`` or ``("number unit",)``; None if unusable."""
    parts = tuple(p for p in parts if p is not None and str(p).strip() != "")
    if len(parts) == 1:
        match = re.fullmatch(r"\s*([-+0-9.eE]+)\s*(\S+)\s*", str(parts[0]))
        if not match:
            return None
        parts = match.groups()
    if len(parts) != 2:
        return None
    try:
        number = float(parts[0])
    except (TypeError, ValueError):
        return None
    scale = _LENGTH_UM.get(str(parts[1]).strip().lower()) or _LENGTH_UM.get(str(parts[1]).strip())
    if scale is None or not math.isfinite(number) or number <= 0:
        return None
    # 12 significant digits drop the binary noise of unit conversion (5e-08 m -> 0.05 µm).
    return float(f"{number * scale:.12g}")


def _describe(entry: Any) -> str:
    if isinstance(entry, tuple):
        return repr(" ".join(str(v) for v in entry))
    return repr(entry)


def _json_safe(value: Any) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    return str(value)


_GERMAN_MONTHS = {"Mär": "Mar", "Mrz": "Mar", "Mai": "May", "Okt": "Oct", "Dez": "Dec"}


def _german_months(text: str) -> str:
    for german, english in _GERMAN_MONTHS.items():
        text = text.replace(german, english)
    return text


def _parse_datetime(text: str, formats: Sequence[str]) -> datetime | None:
    for fmt in formats:
        try:
            return datetime.strptime(text, fmt)
        except ValueError:
            continue
    return None


# --------------------------------------------------------------------------- info bar


def detect_info_bar(image: np.ndarray, *, max_fraction: float = 0.3) -> int:
    """Height in rows of the SEM data bar at the bottom of a frame (0 if there is none).

    Zeiss and FEI/Thermo microscopes burn a data bar into the image: a band of
    uniform (usually black, sometimes light) background carrying text and a
    scale bar, whose top edge is one straight image row. A row belongs to the bar
    when at least half its pixels equal the bar's background (within 2/255), when
    it holds only background and one ink level (a thick scale bar), or when it is
    a near-uniform separator line. The band is accepted only if

    - it reaches the bottom row and is at most ``max_fraction`` of the height;
    - the rows just above it are *not* uniform (the micrograph's noise and
      texture), so the boundary is sharp;
    - it contains some high-contrast marks (text, scale bar): a band that is
      only flat, like a saturated dark region of material, is not a bar.

    The last two rules keep a micrograph whose bottom is dark material (pores,
    epoxy) from being cropped.

    Parameters
    ----------
    image : (rows, cols) ndarray
        A frame as from :func:`read_image` (float in [0, 1]), or integer pixels.
    max_fraction : float, optional
        Largest bar height as a fraction of the rows.

    Returns
    -------
    int
        Rows at the bottom to exclude.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> frame = rng.uniform(0.3, 0.7, (200, 300)).astype(np.float32)
    >>> frame[180:] = 0.0                 # black bar ...
    >>> frame[188:192, 20:120] = 1.0      # ... with a white scale bar
    >>> detect_info_bar(frame)
    20
    """
    img = np.asarray(image)
    if img.ndim != 2:
        raise ValueError(f"`image` must be 2-D (rows, cols), got shape {img.shape}")
    if not 0 < max_fraction < 1:
        raise ValueError(f"`max_fraction` must be in (0, 1), got {max_fraction!r}")
    rows, cols = img.shape
    if rows < 20 or cols < 8:
        return 0
    max_height = int(rows * max_fraction)
    guard = max(3, rows // 50)
    start = max(0, rows - max_height - guard)
    q = _as_levels(img[start:])
    tol = 2
    bottom = q[-max(2, (rows - start) // 10) :]
    background = int(np.bincount(bottom.ravel(), minlength=256).argmax())
    near_background = np.abs(q.astype(np.int16) - background) <= tol
    frac_background = near_background.mean(axis=1)
    frac_own, frac_two = _level_fractions(q, background, tol)
    # Text rows are mostly background; a thick scale bar or large lettering may cover more,
    # but such rows still hold just two levels (background and ink), unlike a micrograph.
    on_background = (frac_background >= 0.5) | ((frac_background >= 0.1) & (frac_two >= 0.95))
    # Separator lines and frames are uniform rows of another value; a few in a row at most,
    # so that a low-noise micrograph with one dominant phase is not taken for a bar.
    separator = (frac_own >= 0.9) & ~on_background
    n = len(q)
    if not (on_background[-1] or separator[-1]):
        return 0
    top, gap, separator_run = n - 1, 0, 0
    max_gap = max(2, rows // 100)
    for r in range(n - 1, -1, -1):
        separator_run = separator_run + 1 if separator[r] else 0
        if on_background[r] or (separator[r] and separator_run <= 3):
            top, gap = r, 0
        else:
            gap += 1
            if gap > max_gap:
                break
    height = n - top
    if height < 3 or height > max_height or top < guard:
        return 0
    if frac_background[top - guard : top].mean() >= 0.3:
        return 0  # no sharp edge: a gradual (material) darkening, not a burnt-in band
    marks = np.abs(q[top:].astype(np.int16) - background) > 64
    if not 0.001 <= marks.mean() <= 0.6:
        return 0
    return int(height)


def _as_levels(img: np.ndarray) -> np.ndarray:
    """Pixels as 0..255 integers (uint8)."""
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.uint16:
        return (img >> 8).astype(np.uint8)
    if img.dtype == bool:
        return img.astype(np.uint8) * 255
    data = np.asarray(img, dtype=np.float32)
    if np.issubdtype(img.dtype, np.integer):
        data = data / float(np.iinfo(img.dtype).max)
    return np.round(np.clip(np.nan_to_num(data), 0.0, 1.0) * 255).astype(np.uint8)


def _level_fractions(q: np.ndarray, background: int, tol: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row of the uint8 levels ``q``: the share of pixels within ``tol`` of the row's most
    frequent level, and within ``tol`` of ``background`` or of the most frequent other level (ink).

    One histogram per row, all rows in one ``bincount``; window sums from cumulative counts.
    """
    n, cols = q.shape
    counts = np.bincount((np.arange(n)[:, None] * 256 + q).ravel(), minlength=n * 256).reshape(n, 256)
    rows = np.arange(n)

    def window(hist: np.ndarray, centre: np.ndarray) -> np.ndarray:
        cumulative = np.pad(hist.cumsum(axis=1), ((0, 0), (1, 0)))
        return cumulative[rows, np.minimum(centre + tol + 1, 256)] - cumulative[rows, np.maximum(centre - tol, 0)]

    own = window(counts, counts.argmax(axis=1))
    near_lo, near_hi = max(0, background - tol), background + tol + 1
    near = counts[:, near_lo:near_hi].sum(axis=1)
    others = counts.copy()
    others[:, near_lo:near_hi] = 0
    two = near + window(others, others.argmax(axis=1))
    return own / cols, two / cols


# --------------------------------------------------------------------------- times

_HOURS_PER_UNIT = {
    "min": 1 / 60, "mins": 1 / 60, "minute": 1 / 60, "minutes": 1 / 60,
    "h": 1.0, "hr": 1.0, "hrs": 1.0, "hour": 1.0, "hours": 1.0,
    "d": 24.0, "day": 24.0, "days": 24.0,
    "w": 168.0, "wk": 168.0, "wks": 168.0, "week": 168.0, "weeks": 168.0,
}  # fmt: skip
_NUMBER = r"(\d+(?:\.\d+)?)"
_UNITS = "minutes|minute|mins|min|hours|hour|hrs|hr|h|days|day|d|weeks|week|wks|wk|w"
# "24h", "t0024h", "t=1055h", "24 h", "2.5d", "90min": a number not glued to a
# preceding digit, then a unit not followed by more letters ("24hz" is not a time).
_SUFFIX_RE = re.compile(rf"(?<![\d.]){_NUMBER}[ _-]?({_UNITS})(?![a-z])", re.IGNORECASE)
# "day3", "day_3", "hours 24": a unit word first.
_PREFIX_RE = re.compile(
    r"(?<![a-z])(days|day|hours|hour|hrs|hr|weeks|week|minutes|minute|mins|min)[ _=-]?" + _NUMBER + r"(?![\d.])",
    re.IGNORECASE,
)
_STRIP_SUFFIXES = IMAGE_SUFFIXES + (".ome",)


def parse_time_h(name: str | Path) -> float:
    """Exposure time in hours from a file name.

    A number with a unit, the unit after (``24h``, ``t0024h``, ``_24h``,
    ``24 h``, ``t=1055h``, ``845h``, ``1d``, ``2.5d``, ``90min``, ``30 min``,
    ``2w``) or a unit word before (``day3``, ``day_3``, ``hour24``). Units:
    min/minute(s), h/hr(s)/hour(s), d/day(s), w/wk(s)/week(s), any case (so
    ``3D`` also reads as 3 days). Minutes need ``min``: a bare ``m`` is ambiguous.
    The folder and the image extension are ignored.

    Parameters
    ----------
    name : str or Path
        File name or path.

    Returns
    -------
    float
        Hours.

    Raises
    ------
    TimeParseError
        No time in the name, or several different ones (``1d_48h``).

    Examples
    --------
    >>> parse_time_h("NZSP_t0024h.tif"), parse_time_h("sample_2.5d.tif"), parse_time_h("day3.png")
    (24.0, 60.0, 72.0)
    """
    stem = Path(str(name)).name
    while Path(stem).suffix.lower() in _STRIP_SUFFIXES:
        stem = stem[: -len(Path(stem).suffix)]
    found: list[tuple[str, float]] = []
    units_used: set[int] = set()
    for match in _SUFFIX_RE.finditer(stem):
        found.append((match.group(0), float(match.group(1)) * _HOURS_PER_UNIT[match.group(2).lower()]))
        units_used.add(match.start(2))
    for match in _PREFIX_RE.finditer(stem):
        # In "24hours_01" the unit belongs to 24; "_01" is a frame index, not a second time.
        if match.start(1) not in units_used:
            found.append((match.group(0), float(match.group(2)) * _HOURS_PER_UNIT[match.group(1).lower()]))
    if not found:
        raise TimeParseError(
            "no exposure time in the file name; name frames like 'sample_t0024h.tif', '_24h', "
            "'2.5d' or '90min', or give the times explicitly (times_h, a times CSV, or t0)",
            path=str(name),
        )
    values = {round(hours, 9) for _, hours in found}
    if len(values) > 1:
        listed = ", ".join(repr(text) for text, _ in found)
        raise TimeParseError(
            f"the file name has several different times ({listed}); rename it or give the times "
            "explicitly (times_h or a times CSV)",
            path=str(name),
        )
    return float(found[0][1])


# --------------------------------------------------------------------------- series


def read_series(
    source: str | Path | Sequence[str | Path],
    *,
    pixel_size_um: float | None = None,
    crop_bottom_px: int | None = None,
    times_h: Sequence[float] | None = None,
    times_csv: str | Path | None = None,
    t0: datetime | str | None = None,
    progress: Callable[[int, int], None] | None = None,
    keep_pixels_bytes: int = 0,
) -> Series:
    """Read an SEM time series: headers, times, pixel size and info bars of every frame.

    Pixels are read only to detect the info bar (when ``crop_bottom_px`` is None);
    :meth:`Series.image` reads them again when a stage needs them, unless
    ``keep_pixels_bytes`` lets the series keep them (:meth:`Series.keep_pixels`).

    Exposure times come from the first of: ``times_h``; ``times_csv``; ``t0``
    (each frame's acquisition date-time minus ``t0``); the file names
    (:func:`parse_time_h`). Frames are sorted by time.

    Parameters
    ----------
    source : str, Path or sequence of them
        A folder (every image in it, not recursive), a glob pattern
        (``"run1/*.tif"``) or a list of image files. In a folder or glob, files
        that are not images (by extension and first bytes) are skipped with a
        warning; hidden files are skipped silently.
    pixel_size_um : float, optional
        Pixel size in µm for every frame; overrides the metadata (source ``"user"``).
    crop_bottom_px : int, optional
        Info-bar height in rows for every frame. None: the height recorded by the
        microscope (FEI) or else :func:`detect_info_bar` on each frame.
    times_h : sequence of float, optional
        One time in hours per file, in the order the files are listed (for a folder
        or glob: sorted by name).
    times_csv : str or Path, optional
        CSV with columns ``file`` (file name, or path relative to the CSV) and
        ``time_h``; every frame needs a row.
    t0 : datetime or ISO 8601 str, optional
        Start of exposure. Compared with the (local, time-zone-less) acquisition
        times in the metadata; a time zone on ``t0`` is dropped with a warning.
    progress : callable, optional
        Called as ``progress(done, total)`` after each frame.
    keep_pixels_bytes : int
        Budget of :meth:`Series.keep_pixels`: the frames decoded here, and later by
        :meth:`Series.image`, are kept up to this many bytes (0: none).

    Returns
    -------
    Series
        Frames in time order; recoverable problems in ``Series.warnings`` (also
        logged at INFO level). Each ``FrameInfo.metadata`` holds ``format``,
        ``samples``, ``vendor``, ``acquired_source``, ``crop_source``
        (``"user"``, ``"metadata"`` or ``"detected"``) and the selected vendor
        fields as ``"vendor.<name>"``, all JSON-serialisable.

    Raises
    ------
    ReadError
        No images found, a file cannot be read, or frames differ in size.
    MetadataError
        A frame's recorded pixel size is unusable and ``pixel_size_um`` is not given.
    TimeParseError
        A time is missing or unparseable, or two frames have the same time.

    Examples
    --------
    >>> import tempfile, pathlib, numpy as np
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> for hours in (96, 0, 24):
    ...     _ = write_sem_tiff(folder / f"s_{hours}h.tif", np.zeros((40, 50), np.uint8), pixel_size_um=0.1)
    >>> series = read_series(folder, crop_bottom_px=0)
    >>> series.times_h.tolist(), series.pixel_size_um, series.pixel_size_source
    ([0.0, 24.0, 96.0], 0.1, 'zeiss')
    """
    if pixel_size_um is not None and not (math.isfinite(pixel_size_um) and pixel_size_um > 0):
        raise ValueError(f"`pixel_size_um` must be a positive number of µm, got {pixel_size_um!r}")
    if crop_bottom_px is not None and (
        isinstance(crop_bottom_px, bool) or int(crop_bottom_px) != crop_bottom_px or crop_bottom_px < 0
    ):
        raise ValueError(f"`crop_bottom_px` must be a non-negative integer, got {crop_bottom_px!r}")
    if progress is not None and not callable(progress):
        raise TypeError("`progress` must be callable as progress(done, total)")
    start = _parse_t0(t0)
    series_warnings: list[str] = []
    if start is not None and start.tzinfo is not None:
        series_warnings.append(f"t0 {t0} has a time zone; it was dropped (metadata times are local)")
        start = start.replace(tzinfo=None)
    files = _list_images(source, series_warnings, exclude=times_csv)

    metas: list[dict[str, Any]] = []
    for path in files:
        meta, problems = _inspect(path)
        if problems:
            if pixel_size_um is None:
                raise MetadataError(
                    "; ".join(problems) + " -- give the pixel size explicitly (pixel_size_um)", path=path
                )
            series_warnings.append(f"{path.name}: {'; '.join(problems)} (pixel_size_um given, so ignored)")
        series_warnings.extend(f"{path.name}: {note}" for note in meta["notes"])
        metas.append(meta)
    _check_sizes(files, metas)

    times = _frame_times(files, metas, times_h=times_h, times_csv=times_csv, t0=start)
    order = sorted(range(len(files)), key=lambda i: times[i])
    _check_duplicate_times([files[i] for i in order], [times[i] for i in order])

    frames: list[FrameInfo] = []
    decoded: dict[int, tuple] = {}  # by index in time order: offered to the series once it exists
    total = len(order)
    for done, i in enumerate(order, start=1):
        path, meta = files[i], metas[i]
        rows = meta["shape"][0]
        if crop_bottom_px is not None:
            crop = int(crop_bottom_px)
            if crop >= rows:
                raise ValueError(f"`crop_bottom_px`={crop} removes every row of {path.name} ({rows} rows)")
        elif meta["info_bar_px"] is not None:
            crop = int(meta["info_bar_px"])
        else:
            pixels = read_pixels(path)
            data, bits, miniswhite, _ = pixels
            # Plain 8-bit grey pixels are already the levels the detection works on (the float image
            # rounds back to the same values): no float copy of the frame.
            plain = data.dtype == np.uint8 and data.ndim == 2 and bits == 8 and not miniswhite
            crop = detect_info_bar(data if plain else unit_image(*pixels))
            if pixels[0].nbytes <= keep_pixels_bytes - sum(kept[0].nbytes for kept in decoded.values()):
                decoded[done - 1] = pixels
        if pixel_size_um is not None:
            size, source_name = float(pixel_size_um), "user"
        else:
            size, source_name = meta["pixel_size_um"], meta["pixel_size_source"]
        record = {
            "format": meta["format"],
            "samples": meta["samples"],
            "vendor": meta["vendor"],
            "acquired_source": meta["acquired_source"],
            "crop_source": "user"
            if crop_bottom_px is not None
            else ("metadata" if meta["info_bar_px"] is not None else "detected"),
            **{f"vendor.{k}": v for k, v in meta["vendor_fields"].items()},
        }
        frames.append(
            FrameInfo(
                path=path,
                time_h=float(times[i]),
                shape=tuple(meta["shape"]),
                raw_dtype=meta["dtype"],
                pixel_size_um=size,
                pixel_size_source=source_name,
                crop_bottom_px=crop,
                acquired=meta["acquired"],
                sha256=sha256_file(path),
                metadata=record,
            )
        )
        if progress is not None:
            progress(done, total)

    reference = frames[0]
    series_warnings.extend(_pixel_size_warnings(frames))
    if reference.pixel_size_um is None:
        series_warnings.append(
            "the series is uncalibrated: lengths and areas are in pixels (give pixel_size_um to calibrate)"
        )
    for message in series_warnings:
        logger.info(message)
    series = Series(
        frames=frames,
        pixel_size_um=reference.pixel_size_um,
        pixel_size_source=reference.pixel_size_source,
        warnings=series_warnings,
    )
    series.keep_pixels(keep_pixels_bytes)
    for index, pixels in decoded.items():
        series._offer(index, pixels)
    return series


def _parse_t0(t0: datetime | str | None) -> datetime | None:
    if t0 is None or isinstance(t0, datetime):
        return t0
    if isinstance(t0, str):
        try:
            return datetime.fromisoformat(t0.strip())
        except ValueError as exc:
            raise ValueError(f"`t0` must be an ISO 8601 date-time like '2026-11-25T14:00', got {t0!r}") from exc
    raise TypeError(f"`t0` must be a datetime or an ISO 8601 string, got {type(t0).__name__}")


def _list_images(source, series_warnings: list[str], *, exclude) -> list[Path]:
    excluded = Path(exclude).resolve() if exclude is not None else None
    if isinstance(source, (str, Path)):
        text = str(source)
        path = Path(source)
        if path.is_dir():
            candidates = sorted(p for p in path.iterdir() if p.is_file())
            where = f"folder {path}"
        elif path.exists():
            return [path]
        elif any(ch in text for ch in "*?["):
            candidates = sorted(Path(p) for p in glob.glob(text) if Path(p).is_file())
            where = f"pattern {text!r}"
        else:
            raise ReadError("no such file, folder or glob pattern", path=path)
        files = []
        for candidate in candidates:
            if candidate.name.startswith(".") or candidate.resolve() == excluded:
                continue
            if candidate.suffix.lower() in IMAGE_SUFFIXES or _sniff_file(candidate):
                files.append(candidate)
            else:
                series_warnings.append(
                    f"{candidate.name}: skipped, not an image file (semtrack reads {', '.join(IMAGE_SUFFIXES)})"
                )
        if not files:
            raise ReadError(f"no image files found in {where}", path=path)
        return files
    if isinstance(source, bytes):
        raise TypeError("`source` must be a folder, a glob pattern or a list of files, not bytes")
    files = [Path(p) for p in source]
    if not files:
        raise ReadError("the list of image files is empty")
    seen: dict[Path, Path] = {}
    for path in files:
        key = path.resolve()
        if key in seen:
            raise ReadError(f"listed twice (also as {seen[key]})", path=path)
        seen[key] = path
    return files


def _sniff_file(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return _sniff(fh.read(16)) is not None
    except OSError:
        return False


def _check_sizes(files: list[Path], metas: list[dict[str, Any]]) -> None:
    first_shape = metas[0]["shape"]
    for path, meta in zip(files[1:], metas[1:], strict=True):
        if meta["shape"] != first_shape:
            raise ReadError(
                f"frames differ in size: this file is {meta['shape'][0]} x {meta['shape'][1]} pixels "
                f"(rows x cols) but {files[0].name} is {first_shape[0]} x {first_shape[1]}; a series needs "
                "frames of one size -- export all frames at the same resolution",
                path=path,
            )


def _frame_times(files, metas, *, times_h, times_csv, t0) -> list[float]:
    if times_h is not None:
        values = list(times_h)
        if len(values) != len(files):
            raise TimeParseError(
                f"times_h has {len(values)} values for {len(files)} image files; give one time per file "
                f"(files in order: {', '.join(p.name for p in files[:6])}{' ...' if len(files) > 6 else ''})"
            )
        out = []
        for path, value in zip(files, values, strict=True):
            try:
                hours = float(value)
            except (TypeError, ValueError) as exc:
                raise TimeParseError(f"times_h value {value!r} is not a number", path=path) from exc
            if not math.isfinite(hours):
                raise TimeParseError(f"times_h value {value!r} is not finite", path=path)
            out.append(hours)
        return out
    if times_csv is not None:
        return _times_from_csv(Path(times_csv), files)
    if t0 is not None:
        missing = [p.name for p, m in zip(files, metas, strict=True) if m["acquired"] is None]
        if missing:
            raise TimeParseError(
                f"no acquisition date-time in the metadata of {len(missing)} file(s) "
                f"({', '.join(missing[:5])}); t0 cannot be used -- give times_h or a times CSV",
                path=files[[p.name for p in files].index(missing[0])],
            )
        return [(m["acquired"] - t0).total_seconds() / 3600.0 for m in metas]
    errors, out = [], []
    for path in files:
        try:
            out.append(parse_time_h(path.name))
        except TimeParseError as exc:
            errors.append(exc)
    if errors:
        names = ", ".join(str(e.path.name) for e in errors[:5])
        more = f" and {len(errors) - 5} more" if len(errors) > 5 else ""
        raise TimeParseError(
            f"{errors[0].message} (files without a time: {names}{more})", path=errors[0].path
        ) from errors[0]
    return out


def _times_from_csv(csv_path: Path, files: list[Path]) -> list[float]:
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except FileNotFoundError as exc:
        raise TimeParseError("times CSV not found", path=csv_path) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise TimeParseError(f"cannot read the times CSV ({exc})", path=csv_path) from exc
    reader = csv.DictReader(text.splitlines())
    columns = {name.strip().lower(): name for name in (reader.fieldnames or []) if name}
    if "file" not in columns or "time_h" not in columns:
        raise TimeParseError(
            f"the times CSV needs columns 'file' and 'time_h', found {list(columns) or 'none'}", path=csv_path
        )
    by_path: dict[Path, float] = {}
    by_name: dict[str, list[float]] = {}
    for line, row in enumerate(reader, start=2):
        name = (row.get(columns["file"]) or "").strip()
        value = (row.get(columns["time_h"]) or "").strip()
        if not name and not value:
            continue
        try:
            hours = float(value)
        except ValueError as exc:
            raise TimeParseError(f"line {line}: time_h {value!r} is not a number", path=csv_path) from exc
        if not math.isfinite(hours):
            raise TimeParseError(f"line {line}: time_h {value!r} is not finite", path=csv_path)
        key = (csv_path.parent / name).resolve()
        if key in by_path:
            raise TimeParseError(f"line {line}: {name!r} is listed twice", path=csv_path)
        by_path[key] = hours
        by_name.setdefault(Path(name).name, []).append(hours)
    out, missing = [], []
    for path in files:
        hours = by_path.get(path.resolve())
        if hours is None:
            candidates = by_name.get(path.name, [])
            hours = candidates[0] if len(candidates) == 1 else None
        if hours is None:
            missing.append(path.name)
        out.append(hours)
    if missing:
        raise TimeParseError(
            f"no time_h row for {len(missing)} frame(s): {', '.join(missing[:5])}"
            f"{' ...' if len(missing) > 5 else ''}; add them to the CSV",
            path=csv_path,
        )
    return out


def _check_duplicate_times(files: list[Path], times: list[float]) -> None:
    for a in range(len(times) - 1):
        if abs(times[a + 1] - times[a]) <= 1e-9 * max(1.0, abs(times[a])):
            raise TimeParseError(
                f"has the same exposure time ({times[a]:g} h) as {files[a + 1].name}; each frame needs its "
                "own time -- remove the duplicate or give the times explicitly",
                path=files[a],
            )


def _pixel_size_warnings(frames: list[FrameInfo]) -> list[str]:
    reference = frames[0]
    out = []
    for frame in frames[1:]:
        if reference.pixel_size_um is None and frame.pixel_size_um is not None:
            out.append(
                f"{frame.path.name}: calibrated ({frame.pixel_size_um:g} µm, {frame.pixel_size_source}) "
                f"but the reference frame {reference.path.name} is not; the series is treated as uncalibrated"
            )
        elif reference.pixel_size_um is not None and frame.pixel_size_um is None:
            out.append(
                f"{frame.path.name}: uncalibrated; assuming the reference pixel size "
                f"{reference.pixel_size_um:g} µm of {reference.path.name}"
            )
        elif reference.pixel_size_um is not None and frame.pixel_size_um is not None:
            ratio = frame.pixel_size_um / reference.pixel_size_um
            if abs(ratio - 1.0) > 0.01:
                out.append(
                    f"{frame.path.name}: pixel size {frame.pixel_size_um:g} µm differs by "
                    f"{100 * (ratio - 1):+.1f} % from {reference.pixel_size_um:g} µm of the reference "
                    f"{reference.path.name} (different magnification?); registration must absorb the "
                    "scale change"
                )
    return out
