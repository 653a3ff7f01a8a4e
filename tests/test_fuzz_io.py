"""Fuzz the image-reading path with mutated files: anything but a SemtrackError is a bug.

Each case takes a valid file (written like a Zeiss, an FEI or a plain TIFF, a PNG,
and a real SEM TIFF when ../shared/real_sem is present), damages it in a seeded,
reproducible way, and reads it with :func:`read_image` and :func:`read_metadata`.
Either reading succeeds and gives a finite float32 2-D image in [0, 1], or it
raises a :class:`SemtrackError`. The number of cases is fixed (a few hundred).
"""

from __future__ import annotations

import struct
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from semtrack.errors import SemtrackError
from semtrack.io import read_image, read_metadata, write_sem_tiff

CASES_PER_MUTATION = 12
MUTATIONS = ("header_bytes", "any_bytes", "truncate", "tag_values", "splice")
KINDS = ("zeiss_deflate", "fei_lzw_16bit", "plain_rgb", "png", "real")


def _base_file(kind: str, folder: Path, real_sem: Path | None) -> Path:
    rng = np.random.default_rng(0)
    grey8 = rng.integers(0, 256, (64, 80), dtype=np.uint8)
    when = datetime(2026, 11, 25, 14, 3, 12)
    path = folder / f"base_{kind}.tif"
    if kind == "zeiss_deflate":
        write_sem_tiff(path, grey8, pixel_size_um=0.0244, vendor="zeiss", acquired=when, compression="deflate")
    elif kind == "fei_lzw_16bit":
        grey16 = rng.integers(0, 65536, (64, 80), dtype=np.uint16)
        write_sem_tiff(path, grey16, pixel_size_um=0.05, vendor="fei", acquired=when, compression="lzw",
                       info_bar_px=8)  # fmt: skip
    elif kind == "plain_rgb":
        write_sem_tiff(path, np.dstack([grey8, grey8, grey8]), pixel_size_um=0.1, vendor="tiff")
    elif kind == "png":
        path = folder / "base.png"
        Image.fromarray(grey8).save(path)
    elif kind == "real":
        files = sorted(real_sem.glob("*/Super/images/*.tif")) if real_sem is not None else []
        if not files:
            pytest.skip("../shared/real_sem is not present beside this clone")
        path.write_bytes(files[0].read_bytes())
    return path


def _ifd_value_offsets(data: bytes) -> list[int]:
    """Byte offsets of the 4-byte value fields of the first IFD's entries (classic little-endian TIFF)."""
    if data[:4] != b"II*\x00":
        return []
    (ifd,) = struct.unpack_from("<I", data, 4)
    (count,) = struct.unpack_from("<H", data, ifd)
    return [ifd + 2 + 12 * i + 8 for i in range(count)]


def _mutate(data: bytes, mutation: str, rng: np.random.Generator) -> bytes:
    out = bytearray(data)
    if mutation == "header_bytes":
        for _ in range(int(rng.integers(1, 6))):
            out[int(rng.integers(0, min(len(out), 1024)))] = int(rng.integers(0, 256))
    elif mutation == "any_bytes":
        for _ in range(int(rng.integers(1, 40))):
            out[int(rng.integers(0, len(out)))] = int(rng.integers(0, 256))
    elif mutation == "truncate":
        del out[int(rng.integers(1, len(out))) :]
    elif mutation == "tag_values":
        offsets = _ifd_value_offsets(data)
        extremes = (0, 1, 2, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, len(data), len(data) - 2)
        for _ in range(int(rng.integers(1, 4))):
            if not offsets:
                break
            where = offsets[int(rng.integers(0, len(offsets)))]
            if rng.random() < 0.7:
                value = extremes[int(rng.integers(0, len(extremes)))]
            else:
                value = int(rng.integers(0, 2**32))
            struct.pack_into("<I", out, where, value)
    elif mutation == "splice":
        start = int(rng.integers(0, len(out)))
        stop = min(len(out), start + int(rng.integers(1, 256)))
        if rng.random() < 0.5:
            del out[start:stop]
        else:
            out[start:start] = rng.integers(0, 256, stop - start, dtype=np.uint8).tobytes()
    return bytes(out)


@pytest.mark.parametrize("mutation", MUTATIONS)
@pytest.mark.parametrize("kind", KINDS)
def test_mutated_files_raise_only_semtrack_errors(tmp_path, request, kind, mutation):
    real_sem = request.getfixturevalue("real_sem") if kind == "real" else None
    base = _base_file(kind, tmp_path, real_sem)
    data = base.read_bytes()
    rng = np.random.default_rng(1000 * KINDS.index(kind) + MUTATIONS.index(mutation))
    failures, decoded, refused = [], 0, 0
    for case in range(CASES_PER_MUTATION):
        damaged = tmp_path / f"case{case:03d}{base.suffix}"
        damaged.write_bytes(_mutate(data, mutation, rng))
        for reader in (read_metadata, read_image):
            try:
                result = reader(damaged)
            except SemtrackError as exc:
                refused += 1
                assert str(exc).startswith(str(damaged)), f"message does not name the file: {exc}"
                continue
            except Exception as exc:  # noqa: BLE001 - any other exception is the bug we look for
                failures.append(f"case {case} {reader.__name__}: {type(exc).__name__}: {exc}")
                continue
            if reader is read_image:
                decoded += 1
                assert result.dtype == np.float32 and result.ndim == 2
                assert np.isfinite(result).all() and result.min() >= 0 and result.max() <= 1
    assert not failures, "\n".join(failures)
    assert decoded + refused > 0


def test_fuzz_sanity_undamaged_bases_read(tmp_path):
    """The bases themselves are valid, so refusals above come from the damage."""
    for kind in ("zeiss_deflate", "fei_lzw_16bit", "plain_rgb", "png"):
        path = _base_file(kind, tmp_path, None)
        assert read_image(path).shape == (64, 80)
        assert read_metadata(path)["shape"] == (64, 80)
    with tifffile.TiffFile(tmp_path / "base_fei_lzw_16bit.tif") as tif:
        assert tif.fei_metadata["Scan"]["PixelWidth"] == pytest.approx(5e-8)
