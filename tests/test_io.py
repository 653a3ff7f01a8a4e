"""Tests of semtrack.io: pixels, metadata, info bar, times and whole series."""

from __future__ import annotations

import hashlib
import json
import struct
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from semtrack.errors import MetadataError, ReadError, SemtrackError, TimeParseError
from semtrack.io import (
    detect_info_bar,
    parse_time_h,
    read_image,
    read_metadata,
    read_series,
    sha256_file,
    write_sem_tiff,
)

WHEN = datetime(2026, 11, 25, 14, 3, 12)


def _grey(shape=(48, 64), dtype=np.uint8, seed=0):
    rng = np.random.default_rng(seed)
    top = np.iinfo(dtype).max
    return rng.integers(0, top + 1, size=shape, dtype=np.int64).astype(dtype)


def _micrograph(shape=(256, 320), *, noise=0.03, seed=0):
    """Blobby three-phase texture with noise, like a BSE micrograph."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    base = ndi.gaussian_filter(rng.random(shape), 4)
    base = (base - base.min()) / np.ptp(base)
    img = np.select([base < 0.35, base < 0.6], [0.1, 0.45], 0.85) + rng.normal(0, noise, shape)
    return np.clip(img, 0, 1).astype(np.float32)


def _with_bar(img, height, *, background=0.0, ink=1.0, separator=None, seed=0):
    """Burn an SEM-like data bar into the bottom rows: glyph rows of text plus a scale bar."""
    rng = np.random.default_rng(seed)
    out = img.copy()
    rows, cols = out.shape
    top = rows - height
    out[top:] = background
    glyph_h = max(2, min(7, height // 2 - 3))
    for line in range(2):
        y = top + 2 + line * (height // 2)
        for x in range(8, cols // 2, 7):  # characters 5 px wide, 2 px apart
            glyph = rng.random((glyph_h, 5)) > 0.5
            out[y : y + glyph_h, x : x + 5][glyph] = ink
    out[top + height // 2 : top + height // 2 + 3, cols - 120 : cols - 20] = ink  # scale bar
    if separator is not None:
        out[top] = separator
    return out


def _set_long_tag(path: Path, code: int, value: int) -> None:
    """Overwrite a classic-TIFF tag's value in place with one LONG (for corrupt headers)."""
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages.first.tags[code].offset
    data = bytearray(path.read_bytes())
    struct.pack_into("<HI", data, offset + 2, 4, 1)  # type LONG, count 1
    struct.pack_into("<I", data, offset + 8, value)
    path.write_bytes(bytes(data))


# --------------------------------------------------------------------------- pixels


@pytest.mark.parametrize("compression", [None, "lzw", "deflate"])
@pytest.mark.parametrize("dtype, full", [(np.uint8, 255.0), (np.uint16, 65535.0)])
def test_grey_tiff_scaled_by_dtype_range(tmp_path, compression, dtype, full):
    raw = _grey(dtype=dtype)
    path = write_sem_tiff(tmp_path / "f.tif", raw, vendor=None, compression=compression)
    img = read_image(path)
    assert img.dtype == np.float32 and img.shape == raw.shape
    np.testing.assert_allclose(img, raw / full, rtol=0, atol=1e-7)
    with tifffile.TiffFile(path) as tif:
        expected = {None: 1, "lzw": 5, "deflate": 8}[compression]
        assert tif.pages.first.compression == expected


def test_16bit_file_with_12bit_data_is_not_stretched(tmp_path):
    raw = np.array([[0, 4095], [2048, 100]], dtype=np.uint16)
    img = read_image(write_sem_tiff(tmp_path / "d12.tif", raw, vendor=None))
    np.testing.assert_allclose(img, raw / 65535.0, atol=1e-7)
    assert img.max() < 0.07


@pytest.mark.parametrize("alpha", [False, True])
def test_rgb_with_equal_channels_is_channel_zero(tmp_path, alpha):
    grey = _grey()
    channels = [grey, grey, grey] + ([np.full_like(grey, 200)] if alpha else [])
    img = read_image(write_sem_tiff(tmp_path / "rgb.tif", np.dstack(channels), vendor=None))
    np.testing.assert_array_equal(img, grey.astype(np.float32) / np.float32(255))


@pytest.mark.parametrize("dtype, full", [(np.uint8, 255.0), (np.uint16, 65535.0)])
def test_colour_rgb_becomes_rec709_luminance(tmp_path, dtype, full):
    rgb = np.stack([_grey(dtype=dtype, seed=s) for s in (1, 2, 3)], axis=-1)
    img = read_image(write_sem_tiff(tmp_path / "c.tif", rgb, vendor=None, compression="lzw"))
    expected = (rgb / full) @ np.array([0.2125, 0.7154, 0.0721])
    np.testing.assert_allclose(img, expected, atol=2e-6)


def test_float_tiff_in_unit_range_is_kept(tmp_path):
    raw = np.linspace(0, 1, 48 * 64, dtype=np.float32).reshape(48, 64)
    path = tmp_path / "f32.tif"
    tifffile.imwrite(path, raw)
    np.testing.assert_array_equal(read_image(path), raw)


def test_min_is_white_is_inverted(tmp_path):
    raw = np.array([[0, 255], [51, 204]], dtype=np.uint8)
    path = tmp_path / "mw.tif"
    tifffile.imwrite(path, raw, photometric="miniswhite")
    np.testing.assert_allclose(read_image(path), 1 - raw / 255.0, atol=1e-7)


@pytest.mark.parametrize("mode, dtype, full", [("L", np.uint8, 255.0), ("I;16", np.uint16, 65535.0)])
def test_png(tmp_path, mode, dtype, full):
    raw = _grey(dtype=dtype)
    path = tmp_path / "f.png"
    Image.fromarray(raw).save(path)
    np.testing.assert_allclose(read_image(path), raw / full, atol=1e-7)


def test_png_rgb_and_jpeg(tmp_path):
    grey = _grey()
    Image.fromarray(np.dstack([grey] * 3)).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(read_image(tmp_path / "rgb.png"), grey / np.float32(255))
    Image.fromarray(np.dstack([grey, np.full_like(grey, 128)]), mode="LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(read_image(tmp_path / "la.png"), grey / np.float32(255))
    smooth = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (48, 1))
    Image.fromarray(smooth).save(tmp_path / "f.jpg", quality=95)
    np.testing.assert_allclose(read_image(tmp_path / "f.jpg"), smooth / 255.0, atol=0.03)


def test_format_is_sniffed_not_taken_from_the_name(tmp_path):
    raw = _grey()
    Image.fromarray(raw).save(tmp_path / "really_png.tif", format="PNG")
    np.testing.assert_allclose(read_image(tmp_path / "really_png.tif"), raw / 255.0, atol=1e-7)


@pytest.mark.real_data
def test_real_rgb_tiffs_equal_channel_zero(real_sem):
    files = sorted(real_sem.glob("*/*/images/*.tif"))
    if not files:
        pytest.skip("no real SEM TIFFs found")
    for path in files[:4]:
        raw = tifffile.imread(path)
        assert raw.ndim == 3 and raw.shape[2] == 3
        assert np.array_equal(raw[..., 0], raw[..., 1]) and np.array_equal(raw[..., 0], raw[..., 2])
        img = read_image(path)
        np.testing.assert_array_equal(img, raw[..., 0].astype(np.float32) / np.float32(255))
        meta = read_metadata(path)
        assert meta["pixel_size_source"] == "uncalibrated" and meta["pixel_size_um"] is None
        assert meta["shape"] == raw.shape[:2] and meta["samples"] == 3


# --------------------------------------------------------------------------- read errors


def _bad_file(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"bad_{kind}.tif"
    good = write_sem_tiff(tmp_path / "good.tif", _grey((64, 80)), vendor=None)
    data = good.read_bytes()
    if kind == "missing":
        return tmp_path / "bad_missing.tif"
    if kind == "zero":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "not_image":
        path.write_text("EHT = 15 kV\nthis is a text file\n")
    elif kind == "stack":
        tifffile.imwrite(path, np.zeros((5, 20, 30), np.uint8))
    elif kind == "imagej_stack":
        tifffile.imwrite(path, np.zeros((4, 20, 30), np.uint8), imagej=True)
    elif kind == "volume":
        tifffile.imwrite(path, np.zeros((5, 32, 32), np.uint8), volumetric=True, tile=(16, 16))
    elif kind == "nan":
        raw = np.full((20, 30), 0.5, np.float32)
        raw[3, 4] = np.nan
        raw[5, 6] = np.inf
        tifffile.imwrite(path, raw)
    elif kind == "float_range":
        tifffile.imwrite(path, np.full((20, 30), 200.0, np.float32))
    elif kind == "huge":
        path.write_bytes(data)
        _set_long_tag(path, 256, 200_000)
        _set_long_tag(path, 257, 150_000)
    elif kind == "huge_compressed":
        write_sem_tiff(path, _grey((64, 80)), vendor=None, compression="deflate")
        _set_long_tag(path, 256, 12_000)
        _set_long_tag(path, 257, 12_000)
    elif kind == "empty":
        path.write_bytes(data)
        _set_long_tag(path, 257, 0)
    elif kind == "signed":
        tifffile.imwrite(path, np.zeros((20, 30), np.int16))
    elif kind == "folder":
        path.mkdir()
    return path


@pytest.mark.parametrize(
    "kind, message",
    [
        ("missing", "not found"),
        ("zero", "empty \\(0 bytes\\)"),
        ("truncated", "truncated"),
        ("not_image", "not an image file"),
        ("stack", "holds 5 images"),
        ("imagej_stack", "holds 4 images"),
        ("volume", "3-D volume"),
        ("nan", "2 pixels are NaN or infinite"),
        ("float_range", "expects \\[0, 1\\]"),
        ("huge", "200000 pixels"),
        ("huge_compressed", "corrupt"),
        ("empty", "empty"),
        ("signed", "signed-integer"),
        ("folder", "is a folder"),
    ],
)
def test_read_image_errors_name_the_file(tmp_path, kind, message):
    path = _bad_file(tmp_path, kind)
    with pytest.raises(ReadError, match=message) as info:
        read_image(path)
    assert str(info.value).startswith(str(path))
    assert info.value.path == path


@pytest.mark.parametrize("kind", ["missing", "zero", "truncated", "not_image", "stack", "huge", "empty"])
def test_read_metadata_sees_header_problems(tmp_path, kind):
    path = _bad_file(tmp_path, kind)
    with pytest.raises(ReadError, match=path.name):
        read_metadata(path)


def test_truncated_png_is_a_read_error(tmp_path):
    Image.fromarray(_grey()).save(tmp_path / "t.png")
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ReadError, match="t.png.*truncated"):
        read_image(tmp_path / "t.png")


def test_errors_are_one_family():
    for cls in (ReadError, MetadataError, TimeParseError):
        assert issubclass(cls, SemtrackError) and issubclass(cls, ValueError)


# --------------------------------------------------------------------------- metadata


@pytest.mark.parametrize(
    "vendor, source, pixel_um",
    [
        ("zeiss", "zeiss", 0.02441),
        ("zeiss", "zeiss", 1.25),
        ("fei", "fei", 0.0732),
        ("tiff", "tiff-resolution", 0.05),
    ],
)
def test_written_calibration_round_trips(tmp_path, vendor, source, pixel_um):
    path = write_sem_tiff(tmp_path / "a.tif", _grey(), pixel_size_um=pixel_um, vendor=vendor, acquired=WHEN)
    meta = read_metadata(path)
    assert meta["pixel_size_source"] == source
    assert meta["pixel_size_um"] == pytest.approx(pixel_um, rel=1e-6)
    assert meta["acquired"] == WHEN
    assert meta["shape"] == (48, 64) and meta["dtype"] == "uint8"
    json.dumps(meta["vendor_fields"])  # must be JSON-serialisable


def test_uncalibrated_file_says_so(tmp_path):
    meta = read_metadata(write_sem_tiff(tmp_path / "a.tif", _grey(), vendor=None))
    assert meta["pixel_size_um"] is None and meta["pixel_size_source"] == "uncalibrated"
    assert meta["acquired"] is None


def test_hand_built_zeiss_v05_header(tmp_path):
    """A SmartSEM V05-style header built directly with tifffile, not with write_sem_tiff."""
    text = "\r\n".join(
        [
            "0", "0", "1",
            "DP_SCANRATE", "Scan Speed = 7",
            "SV_VERSION", "Version = V05.06.00.00 : 01-Jan-14",
            "AP_PIXEL_SIZE", "Pixel Size = 1.221 \u00b5m",
            "AP_MAG", "Mag = 250 X",
            "AP_DATE", "Date :03 Mar 2025",
            "AP_TIME", "Time :09:15:40",
            "DP_IMAGE_STORE", "Store resolution = 64 * 48",
            "END",
        ]
    ).encode("cp1252")  # fmt: skip
    path = tmp_path / "zeiss_v05.tif"
    tifffile.imwrite(path, _grey(), extratags=[(34118, "s", 0, text, True)], metadata=None)
    meta = read_metadata(path)
    assert meta["vendor"] == "zeiss" and meta["pixel_size_source"] == "zeiss"
    assert meta["pixel_size_um"] == pytest.approx(1.221)
    assert meta["acquired"] == datetime(2025, 3, 3, 9, 15, 40)
    assert meta["vendor_fields"]["ap_mag"] == "250 X"
    assert meta["notes"] == []


def test_hand_built_fei_header_with_databar(tmp_path):
    """An xT-style INI header (tag 34682) with a 59-row data bar, built with tifffile directly."""
    text = (
        "[User]\r\nDate=03/15/2019\r\nTime=10:37:52 PM\r\nUser=supervisor\r\n\r\n"
        "[Beam]\r\nHV=5000\r\n\r\n[Scan]\r\nPixelWidth=4.8828e-09\r\nPixelHeight=4.8828e-09\r\n"
        "Dwelltime=3e-06\r\n\r\n[Image]\r\nResolutionX=64\r\nResolutionY=41\r\n\r\n"
        "[PrivateFei]\r\nDatabarHeight=7\r\n"
    ).encode("ascii")
    path = tmp_path / "fei.tif"
    tifffile.imwrite(path, _grey((48, 64)), extratags=[(34682, "s", 0, text, True)], metadata=None)
    meta = read_metadata(path)
    assert meta["vendor"] == "fei" and meta["pixel_size_source"] == "fei"
    assert meta["pixel_size_um"] == pytest.approx(0.0048828)
    assert meta["acquired"] == datetime(2019, 3, 15, 22, 37, 52)
    assert meta["info_bar_px"] == 7
    assert meta["vendor_fields"]["Scan.PixelWidth"] == pytest.approx(4.8828e-09)


def test_imagej_calibration(tmp_path):
    path = tmp_path / "ij.tif"
    tifffile.imwrite(path, _grey(), imagej=True, resolution=(1 / 0.125, 1 / 0.125), metadata={"unit": "micron"})
    meta = read_metadata(path)
    assert meta["pixel_size_source"] == "imagej" and meta["pixel_size_um"] == pytest.approx(0.125)


@pytest.mark.parametrize(
    "resolution, unit, expected_um",
    [((1e4 / 0.2, 1e4 / 0.2), "CENTIMETER", 0.2), ((25400 / 0.5, 25400 / 0.5), "INCH", 0.5)],
)
def test_resolution_tags(tmp_path, resolution, unit, expected_um):
    path = tmp_path / "r.tif"
    tifffile.imwrite(path, _grey(), resolution=resolution, resolutionunit=unit, metadata=None)
    meta = read_metadata(path)
    assert meta["pixel_size_source"] == "tiff-resolution"
    assert meta["pixel_size_um"] == pytest.approx(expected_um, rel=1e-6)


def test_editor_default_72_dpi_is_not_a_calibration(tmp_path):
    path = tmp_path / "dpi72.tif"
    tifffile.imwrite(path, _grey(), resolution=(72, 72), resolutionunit="INCH", metadata=None)
    meta = read_metadata(path)
    assert meta["pixel_size_um"] is None and meta["pixel_size_source"] == "uncalibrated"
    assert any("plausible" in note for note in meta["notes"])


def test_zeiss_beats_resolution_tags(tmp_path):
    text = "\r\n".join(["0", "AP_PIXEL_SIZE", "Pixel Size = 40.0 nm", "END"]).encode("ascii")
    path = tmp_path / "both.tif"
    tifffile.imwrite(
        path, _grey(), extratags=[(34118, "s", 0, text, True)], resolution=(1e4 / 0.3, 1e4 / 0.3),
        resolutionunit="CENTIMETER", metadata=None,
    )  # fmt: skip
    meta = read_metadata(path)
    assert (meta["pixel_size_source"], meta["pixel_size_um"]) == ("zeiss", pytest.approx(0.04))


@pytest.mark.parametrize(
    "tag, text, message",
    [
        (34118, "0\r\nAP_PIXEL_SIZE\r\nPixel Size = 24.41 furlong\r\n", "Zeiss pixel size"),
        (34118, "0\r\nAP_PIXEL_SIZE\r\nPixel Size = -3 nm\r\n", "Zeiss pixel size"),
        (34682, "[Scan]\r\nPixelWidth=0\r\n", "PixelWidth"),
        (34682, "[Scan]\r\nPixelWidth=abc\r\n", "PixelWidth"),
    ],
)
def test_unusable_vendor_pixel_size_is_metadata_error(tmp_path, tag, text, message):
    path = tmp_path / "badcal.tif"
    tifffile.imwrite(path, _grey(), extratags=[(tag, "s", 0, text.encode("ascii"), True)], metadata=None)
    with pytest.raises(MetadataError, match=f"badcal.tif.*{message}.*pixel_size_um"):
        read_metadata(path)
    # An explicit pixel size overrides it; the problem is kept as a warning.
    series = read_series([path], pixel_size_um=0.1, times_h=[0], crop_bottom_px=0)
    assert series.pixel_size_um == 0.1 and series.pixel_size_source == "user"
    assert any("badcal.tif" in w for w in series.warnings)
    with pytest.raises(MetadataError, match="badcal.tif"):
        read_series([path], times_h=[0], crop_bottom_px=0)


def test_write_sem_tiff_is_atomic_and_checks_input(tmp_path):
    with pytest.raises(ValueError, match="vendor"):
        write_sem_tiff(tmp_path / "x.tif", _grey(), vendor="jeol")
    with pytest.raises(ValueError, match="within \\[0, 1\\]"):
        write_sem_tiff(tmp_path / "x.tif", np.full((4, 4), 2.0))
    with pytest.raises(ValueError, match="pixel_size_um"):
        write_sem_tiff(tmp_path / "x.tif", _grey(), pixel_size_um=-1)
    assert list(tmp_path.iterdir()) == []  # nothing half-written left behind
    path = write_sem_tiff(tmp_path / "x.tif", np.full((4, 4), 0.5))
    assert read_image(path) == pytest.approx(np.full((4, 4), 32768 / 65535), abs=1e-7)


# --------------------------------------------------------------------------- times


@pytest.mark.parametrize(
    "name, hours",
    [
        ("NZSP_t0024h.tif", 24.0),
        ("sample_24h.tif", 24.0),
        ("sample 24 h.png", 24.0),
        ("1d.tif", 24.0),
        ("run_2.5d.tiff", 60.0),
        ("845h", 845.0),
        ("t=1055h.tif", 1055.0),
        ("exp_90min.tif", 1.5),
        ("exp_30 min.tif", 0.5),
        ("0h.tif", 0.0),
        ("day3.tif", 72.0),
        ("Day_10.jpg", 240.0),
        ("t0096h_01.tif", 96.0),
        ("spot1_180d_5.tif", 4320.0),
        ("/data/run1/t0845h.ome.tif", 845.0),
        ("2w.tif", 336.0),
        ("a_1d_24h.tif", 24.0),  # two spellings of the same time
        ("T0024H.TIF", 24.0),
        ("t24hours_01.tif", 24.0),  # "_01" after the unit is a frame index
    ],
)
def test_parse_time_h(name, hours):
    assert parse_time_h(name) == pytest.approx(hours)


@settings(max_examples=100, deadline=None)
@given(
    number=st.decimals(min_value=0, max_value=5000, places=2, allow_nan=False, allow_infinity=False),
    unit=st.sampled_from([("h", 1.0), ("hours", 1.0), ("d", 24.0), ("days", 24.0), ("min", 1 / 60), ("w", 168.0)]),
    prefix=st.sampled_from(["", "t", "t=", "NZSP_", "sample-3_", "run 2 "]),
    separator=st.sampled_from(["", " ", "_"]),
    suffix=st.sampled_from([".tif", ".TIFF", ".png", "_01.tif", ""]),
)
def test_parse_time_h_property(number, unit, prefix, separator, suffix):
    text = format(number, "f")
    name = f"{prefix}{text}{separator}{unit[0]}{suffix}"
    assert parse_time_h(name) == pytest.approx(float(text) * unit[1], rel=1e-12, abs=1e-12)


@pytest.mark.parametrize(
    "name, message",
    [
        ("S879_062216#3-31cyc0030.tif", "no exposure time"),
        ("sample.tif", "no exposure time"),
        ("t24.tif", "no exposure time"),
        ("scan_30m.tif", "no exposure time"),
        ("freq_50hz.tif", "no exposure time"),
        ("a_1d_48h.tif", "several different times"),
    ],
)
def test_parse_time_h_errors(name, message):
    with pytest.raises(TimeParseError, match=message) as info:
        parse_time_h(name)
    assert str(info.value).startswith(name)


# --------------------------------------------------------------------------- info bar


@pytest.mark.parametrize("height", [12, 25, 40, 70])
@pytest.mark.parametrize("background, ink", [(0.0, 1.0), (1.0, 0.0), (0.15, 0.9)])
def test_info_bar_detected(height, background, ink):
    frame = _with_bar(_micrograph(), height, background=background, ink=ink)
    assert detect_info_bar(frame) == height


@pytest.mark.parametrize("noise", [0.003, 0.08])
def test_info_bar_with_separator_line_and_any_noise(noise):
    frame = _with_bar(_micrograph(noise=noise, seed=3), 30, separator=1.0)
    assert detect_info_bar(frame) == 30


def test_info_bar_survives_jpeg(tmp_path):
    frame = _with_bar(_micrograph(seed=5), 32)
    Image.fromarray(np.round(frame * 255).astype(np.uint8)).save(tmp_path / "bar.jpg", quality=90)
    assert abs(detect_info_bar(read_image(tmp_path / "bar.jpg")) - 32) <= 1


def test_level_fractions_per_row():
    from semtrack.io import _level_fractions

    q = np.array(
        [
            [0, 0, 0, 1, 200, 200, 90, 90],  # background 4/8; ink: 90 and 200 tie, the lower level wins
            [255, 255, 255, 255, 254, 3, 3, 128],  # mode at the top of the range
            [7, 7, 7, 7, 7, 7, 7, 7],
        ],
        np.uint8,
    )
    own, two = _level_fractions(q, background=0, tol=2)
    np.testing.assert_array_equal(own, [4 / 8, 5 / 8, 1.0])
    np.testing.assert_array_equal(two, [6 / 8, 5 / 8, 1.0])  # row 2: 3 is beyond tol of the background


def test_info_bar_on_integer_pixels():
    frame = _with_bar(_micrograph(seed=2), 20)
    assert detect_info_bar(np.round(frame * 65535).astype(np.uint16)) == 20
    assert detect_info_bar(np.round(frame * 255).astype(np.uint8)) == 20


@pytest.mark.parametrize(
    "case",
    ["dark_material", "black_material", "clipped_flat", "gradual", "dark_textured", "constant", "plain"],
)
def test_no_info_bar_on_dark_bottom_micrographs(case):
    rng = np.random.default_rng(7)
    frame = _micrograph(seed=7)
    rows, cols = frame.shape
    if case == "dark_material":  # epoxy/pore region with a straight edge, noisy
        frame[-50:] = np.clip(0.05 + rng.normal(0, 0.03, (50, cols)), 0, 1)
    elif case == "black_material":
        frame[-50:] = np.clip(0.01 + rng.normal(0, 0.01, (50, cols)), 0, 1)
    elif case == "clipped_flat":  # saturated black, no text
        frame[-50:] = 0.0
    elif case == "gradual":
        frame[-100:] *= np.linspace(1, 0.03, 100)[:, None]
    elif case == "dark_textured":
        frame[-60:] = np.clip(frame[-60:] - 0.4, 0, 1)
    elif case == "constant":
        frame[:] = 0.3
    assert detect_info_bar(frame) == 0


@pytest.mark.real_data
def test_info_bar_on_real_micrographs(real_sem):
    files = sorted(real_sem.glob("*/*/images/*.tif"))
    if not files:
        pytest.skip("no real SEM TIFFs found")
    for path in files:
        img = read_image(path)
        assert detect_info_bar(img) == 0, path.name
    img = read_image(files[0])[:400, :500]
    with_bar = np.vstack([img, _with_bar(np.zeros((45, 500), np.float32), 45)])
    assert detect_info_bar(with_bar) == 45


def test_detect_info_bar_checks_input():
    with pytest.raises(ValueError, match="2-D"):
        detect_info_bar(np.zeros((4, 4, 3)))
    with pytest.raises(ValueError, match="max_fraction"):
        detect_info_bar(np.zeros((40, 40)), max_fraction=1.5)


# --------------------------------------------------------------------------- series


def _series_folder(tmp_path, hours=(96, 0, 24, 845), *, shape=(96, 128), vendor="zeiss", bar=0):
    folder = tmp_path / "series"
    folder.mkdir()
    start = datetime(2026, 1, 5, 9, 0, 0)
    paths = []
    for i, h in enumerate(hours):
        img = _micrograph(shape, seed=i)
        if bar:
            img = _with_bar(img, bar, seed=i)
        paths.append(
            write_sem_tiff(
                folder / f"nzsp_t{h:04d}h.tif", img, pixel_size_um=0.05, vendor=vendor,
                acquired=start + timedelta(hours=h), compression="deflate",
            )
        )  # fmt: skip
    return folder, paths


def test_read_series_from_folder(tmp_path):
    folder, paths = _series_folder(tmp_path, bar=14)
    (folder / "notes.txt").write_text("session notes")
    (folder / ".DS_Store").write_bytes(b"\x00\x01")
    (folder / "sub").mkdir()
    calls = []
    series = read_series(folder, progress=lambda done, total: calls.append((done, total)))
    assert series.times_h.tolist() == [0.0, 24.0, 96.0, 845.0]
    assert [f.path.name for f in series.frames] == [
        "nzsp_t0000h.tif", "nzsp_t0024h.tif", "nzsp_t0096h.tif", "nzsp_t0845h.tif"
    ]  # fmt: skip
    assert series.pixel_size_um == pytest.approx(0.05) and series.pixel_size_source == "zeiss"
    assert all(f.crop_bottom_px == 14 and f.metadata["crop_source"] == "detected" for f in series.frames)
    assert all(f.shape == (96, 128) and f.raw_dtype == "uint16" for f in series.frames)
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert [w for w in series.warnings if "notes.txt" in w and "skipped" in w]
    assert not [w for w in series.warnings if "DS_Store" in w]
    for frame in series.frames:
        assert frame.sha256 == hashlib.sha256(frame.path.read_bytes()).hexdigest()
        json.dumps(frame.metadata)
    assert series.valid_mask(0)[:82].all() and not series.valid_mask(0)[82:].any()
    np.testing.assert_array_equal(series.image(1), read_image(folder / "nzsp_t0024h.tif"))


def test_read_series_glob_and_list(tmp_path):
    folder, paths = _series_folder(tmp_path, hours=(0, 24, 96))
    by_glob = read_series(str(folder / "*.tif"), crop_bottom_px=3)
    assert by_glob.times_h.tolist() == [0.0, 24.0, 96.0]
    assert all(f.crop_bottom_px == 3 and f.metadata["crop_source"] == "user" for f in by_glob.frames)
    by_list = read_series([paths[2], paths[0]], crop_bottom_px=0)
    assert [f.path for f in by_list.frames] == [paths[0], paths[2]]
    with pytest.raises(ReadError, match="no image files"):
        read_series(str(folder / "*.png"))
    with pytest.raises(ReadError, match="listed twice"):
        read_series([paths[0], paths[0]])


def test_read_series_explicit_times_override_names(tmp_path):
    folder, paths = _series_folder(tmp_path, hours=(0, 24, 96))
    series = read_series(paths, times_h=[5.0, 1.0, 3.0], crop_bottom_px=0)
    assert series.times_h.tolist() == [1.0, 3.0, 5.0]
    assert [f.path for f in series.frames] == [paths[1], paths[2], paths[0]]
    with pytest.raises(TimeParseError, match="times_h has 2 values for 3 image files"):
        read_series(paths, times_h=[1.0, 2.0])
    with pytest.raises(TimeParseError, match="nzsp_t0096h.tif.*not finite"):
        read_series(paths, times_h=[1.0, 2.0, float("nan")])


def test_read_series_times_csv(tmp_path):
    folder, paths = _series_folder(tmp_path, hours=(0, 24, 96))
    table = tmp_path / "times.csv"
    table.write_text("file,time_h\nseries/nzsp_t0000h.tif,10\nnzsp_t0024h.tif,2.5\nnzsp_t0096h.tif,7\n")
    series = read_series(folder, times_csv=table, crop_bottom_px=0)
    assert series.times_h.tolist() == [2.5, 7.0, 10.0]
    table.write_text("file,time_h\nnzsp_t0000h.tif,1\nnzsp_t0024h.tif,2\n")
    with pytest.raises(TimeParseError, match="times.csv.*no time_h row.*nzsp_t0096h.tif"):
        read_series(folder, times_csv=table)
    table.write_text("name,hours\nnzsp_t0000h.tif,1\n")
    with pytest.raises(TimeParseError, match="times.csv.*columns 'file' and 'time_h'"):
        read_series(folder, times_csv=table)
    table.write_text("file,time_h\nnzsp_t0000h.tif,one\n")
    with pytest.raises(TimeParseError, match="times.csv.*line 2.*'one'"):
        read_series(folder, times_csv=table)
    with pytest.raises(TimeParseError, match="missing.csv.*not found"):
        read_series(folder, times_csv=tmp_path / "missing.csv")


def test_times_csv_inside_the_folder_is_not_warned_about(tmp_path):
    folder, _ = _series_folder(tmp_path, hours=(0, 24))
    table = folder / "times.csv"
    table.write_text("file,time_h\nnzsp_t0000h.tif,0\nnzsp_t0024h.tif,30\n")
    series = read_series(folder, times_csv=table, crop_bottom_px=0)
    assert series.times_h.tolist() == [0.0, 30.0] and series.warnings == []


@pytest.mark.parametrize("vendor", ["zeiss", "fei", "tiff"])
def test_read_series_t0_from_acquisition_times(tmp_path, vendor):
    folder, _ = _series_folder(tmp_path, hours=(0, 24, 96), vendor=vendor)
    series = read_series(folder, t0=datetime(2026, 1, 5, 8, 0, 0), crop_bottom_px=0)
    assert series.times_h.tolist() == pytest.approx([1.0, 25.0, 97.0])
    series = read_series(folder, t0="2026-01-05T09:00:00+01:00", crop_bottom_px=0)
    assert series.times_h.tolist() == pytest.approx([0.0, 24.0, 96.0])
    assert any("time zone" in w for w in series.warnings)


def test_t0_needs_acquisition_times(tmp_path):
    folder, _ = _series_folder(tmp_path, hours=(0, 24), vendor=None)
    with pytest.raises(TimeParseError, match="nzsp_t0000h.tif.*no acquisition date-time"):
        read_series(folder, t0="2026-01-05T09:00:00")
    with pytest.raises(ValueError, match="`t0`"):
        read_series(folder, t0="next tuesday")


def test_read_series_time_errors(tmp_path):
    folder, paths = _series_folder(tmp_path, hours=(0, 24))
    write_sem_tiff(folder / "nzsp_1d.tif", _micrograph((96, 128)), pixel_size_um=0.05)
    duplicate = "nzsp_(1d|t0024h).tif.*same exposure time \\(24 h\\) as nzsp_(1d|t0024h).tif"
    with pytest.raises(TimeParseError, match=duplicate):
        read_series(folder, crop_bottom_px=0)
    (folder / "nzsp_1d.tif").unlink()
    write_sem_tiff(folder / "overview.tif", _micrograph((96, 128)), pixel_size_um=0.05)
    no_time = "overview.tif.*no exposure time.*files without a time: overview.tif"
    with pytest.raises(TimeParseError, match=no_time):
        read_series(folder, crop_bottom_px=0)


def test_read_series_size_mismatch_states_both_sizes(tmp_path):
    folder, _ = _series_folder(tmp_path, hours=(0, 24))
    write_sem_tiff(folder / "nzsp_t0096h.tif", _micrograph((90, 128)), pixel_size_um=0.05)
    with pytest.raises(ReadError, match="nzsp_t0096h.tif.*90 x 128.*nzsp_t0000h.tif is 96 x 128"):
        read_series(folder)


def test_read_series_mixed_pixel_sizes_warn(tmp_path):
    folder, _ = _series_folder(tmp_path, hours=(0, 24))
    write_sem_tiff(folder / "nzsp_t0096h.tif", _micrograph((96, 128)), pixel_size_um=0.06)
    write_sem_tiff(folder / "nzsp_t0200h.tif", _micrograph((96, 128)), pixel_size_um=0.0502)
    series = read_series(folder, crop_bottom_px=0)
    assert series.pixel_size_um == pytest.approx(0.05)
    flagged = [w for w in series.warnings if "differs" in w]
    assert len(flagged) == 1 and "nzsp_t0096h.tif" in flagged[0] and "+20.0 %" in flagged[0]
    assert series.frames[2].pixel_size_um == pytest.approx(0.06)


def test_read_series_user_pixel_size_and_uncalibrated(tmp_path):
    folder, _ = _series_folder(tmp_path, hours=(0, 24), vendor=None)
    series = read_series(folder, crop_bottom_px=0)
    assert series.pixel_size_um is None and not series.calibrated
    assert series.pixel_size_source == "uncalibrated"
    assert any("uncalibrated" in w for w in series.warnings)
    series = read_series(folder, crop_bottom_px=0, pixel_size_um=0.2)
    assert series.pixel_size_um == 0.2 and {f.pixel_size_source for f in series.frames} == {"user"}


def test_read_series_fei_databar_from_metadata(tmp_path):
    folder = tmp_path / "fei"
    for h in (0, 24):
        write_sem_tiff(folder / f"t{h}h.tif", _with_bar(_micrograph((96, 128)), 16), pixel_size_um=0.05,
                       vendor="fei", info_bar_px=16)  # fmt: skip
    series = read_series(folder)
    assert [(f.crop_bottom_px, f.metadata["crop_source"]) for f in series.frames] == [(16, "metadata")] * 2


def test_read_series_reports_bad_frames(tmp_path):
    folder, _ = _series_folder(tmp_path, hours=(0, 24))
    (folder / "nzsp_t0096h.tif").write_bytes(b"")
    with pytest.raises(ReadError, match="nzsp_t0096h.tif.*empty"):
        read_series(folder)
    with pytest.raises(ReadError, match="no such file"):
        read_series(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="crop_bottom_px"):
        read_series(folder, crop_bottom_px=-1)
    (folder / "nzsp_t0096h.tif").unlink()
    with pytest.raises(ValueError, match="crop_bottom_px.*removes every row"):
        read_series(folder, crop_bottom_px=96)


def test_sha256_file(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"semtrack" * 100_000)
    assert sha256_file(tmp_path / "a.bin") == hashlib.sha256(b"semtrack" * 100_000).hexdigest()


def test_8bit_levels_round_trip_through_the_float_image(tmp_path):
    # read_series finds the info bar on the raw 8-bit pixels: the float image must give the same levels.
    from semtrack.io import _as_levels

    levels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    tifffile.imwrite(tmp_path / "levels.tif", levels)
    np.testing.assert_array_equal(_as_levels(read_image(tmp_path / "levels.tif")), levels)
