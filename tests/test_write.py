import json
import os

import numpy as np
import pandas as pd
import pytest
import tifffile

from semtrack._atomic import atomic_path
from semtrack.errors import OutputError
from semtrack.write import (
    ensure_writable,
    png_bytes,
    png_pixels,
    read_label_map,
    write_json,
    write_label_map,
    write_png,
    write_table,
)


def test_failed_write_leaves_neither_final_nor_temp_file(tmp_path):
    target = tmp_path / "table.csv"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_rewrite_replaces_content(tmp_path):
    target = tmp_path / "t.csv"
    write_table(pd.DataFrame({"a": [1]}), target)
    write_table(pd.DataFrame({"a": [2, 3]}), target)
    assert pd.read_csv(target)["a"].tolist() == [2, 3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv"]


def test_tables_are_byte_identical_for_identical_data(tmp_path):
    df = pd.DataFrame({"x": np.linspace(0, 1, 7) / 3, "name": list("abcdefg")})
    write_table(df, tmp_path / "a.csv")
    write_table(df.copy(), tmp_path / "b.csv")
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    back = pd.read_csv(tmp_path / "a.csv")
    np.testing.assert_array_equal(back["x"].to_numpy(), df["x"].to_numpy())


def test_json_turns_nan_into_null_and_numpy_into_python(tmp_path):
    write_json({"a": np.float32(1.5), "b": float("nan"), "c": np.arange(3), "d": [np.inf]}, tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": 1.5, "b": None, "c": [0, 1, 2], "d": [None]}


@pytest.mark.parametrize("shape", [(40, 50), (1, 1), (3000, 700)])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, ">i4"])
def test_label_maps_round_trip(tmp_path, dtype, shape):
    from PIL import Image

    labels = np.random.default_rng(0).integers(0, 200, shape).astype(dtype)
    labels[: shape[0] // 2] = 3  # long runs as well as noise
    write_label_map(labels[:, ::-1], tmp_path / "l.tif")  # not contiguous: written all the same
    back = read_label_map(tmp_path / "l.tif")
    assert back.dtype == np.dtype(dtype).newbyteorder("=")
    np.testing.assert_array_equal(back, labels[:, ::-1])
    with tifffile.TiffFile(tmp_path / "l.tif") as tif:
        page = tif.pages[0]
        assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        assert len(page.dataoffsets) == -(-shape[0] // page.rowsperstrip)  # several strips when large
    # Other readers (here libtiff through Pillow) decode it too.
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "l.tif")), labels[:, ::-1])


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_folder_is_reported_nonroot(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    with pytest.raises(OutputError, match="ro"):
        ensure_writable(folder)


def test_output_folder_under_a_file_is_reported(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="cannot write to the output folder"):
        ensure_writable(blocker / "out")


def test_written_files_get_ordinary_permissions(tmp_path):
    from semtrack._atomic import _UMASK

    path = write_table(pd.DataFrame({"a": [1]}), tmp_path / "p.csv")
    assert path.stat().st_mode & 0o777 == 0o666 & ~_UMASK


@pytest.mark.parametrize("level", [1, 0])
@pytest.mark.parametrize("shape", [(37, 53), (37, 53, 3), (1, 1), (1, 9, 3)])
def test_png_round_trips_through_opencv_and_pillow(tmp_path, shape, level):
    import cv2
    from PIL import Image

    image = np.random.default_rng(1).integers(0, 256, shape).astype(np.uint8)
    image[: shape[0] // 2] = 7  # flat rows compress, noisy rows do not: both must survive
    path = write_png(image, tmp_path / "i.png", level=level)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), image)
    back = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(back if image.ndim == 2 else cv2.cvtColor(back, cv2.COLOR_BGR2RGB), image)


@pytest.mark.parametrize(
    "image", [np.zeros((4, 4), np.uint16), np.zeros((4, 4, 4), np.uint8), np.zeros((0, 4), np.uint8)]
)
def test_png_rejects_what_it_cannot_store(image):
    with pytest.raises(ValueError, match="image"):
        png_bytes(image)


@pytest.mark.parametrize("level", [1, 0])
@pytest.mark.parametrize("shape", [(37, 53), (37, 53, 3), (1, 1), (1, 9, 3)])
def test_png_pixels_reads_back_what_png_bytes_wrote(shape, level):
    image = np.random.default_rng(2).integers(0, 256, shape).astype(np.uint8)
    image[: shape[0] // 2] = 7
    back = png_pixels(png_bytes(image, level=level))
    assert back.dtype == np.uint8 and back.flags.writeable
    np.testing.assert_array_equal(back, image)


def test_png_level_0_stores_the_pixels_uncompressed():
    image = np.random.default_rng(4).integers(0, 256, (40, 60)).astype(np.uint8)
    image[:20] = 7  # would deflate to almost nothing at level 1
    stored, deflated = png_bytes(image, level=0), png_bytes(image, level=1)
    assert len(stored) > image.size > len(deflated)


def test_png_pixels_declines_other_pngs():
    import cv2

    image = np.random.default_rng(3).integers(0, 256, (20, 30)).astype(np.uint8)
    # OpenCV picks a filter per row (not only "up"); 16-bit and alpha PNGs have other layouts.
    for encoded in (image, image.astype(np.uint16) * 257, np.dstack([image] * 4)):
        ok, data = cv2.imencode(".png", encoded)
        assert ok
        back = png_pixels(data.tobytes())
        assert back is None or np.array_equal(back, encoded)
    data = png_bytes(image)
    assert png_pixels(data[:-40]) is None  # truncated stream
    assert png_pixels(b"GIF89a") is None


def test_label_maps_are_deflated_without_zlib_ng_too(tmp_path, monkeypatch):
    import imagecodecs

    monkeypatch.setattr(imagecodecs, "ZLIBNG", None, raising=False)  # a build without zlib-ng
    labels = np.zeros((300, 200), np.int32)
    labels[100:150, 20:90] = 7
    write_label_map(labels, tmp_path / "l.tif")
    np.testing.assert_array_equal(read_label_map(tmp_path / "l.tif"), labels)
    with tifffile.TiffFile(tmp_path / "l.tif") as tif:
        assert tif.pages[0].compression == tifffile.COMPRESSION.ADOBE_DEFLATE


@pytest.mark.parametrize("level", [1, 0])
@pytest.mark.parametrize("n_colours", [256, 5, 1])
def test_palette_png_round_trips_as_rgb_through_every_reader(tmp_path, level, n_colours):
    import cv2
    import imageio.v3 as iio
    from PIL import Image

    rng = np.random.default_rng(5)
    palette = rng.integers(0, 256, (n_colours, 3)).astype(np.uint8)
    indices = rng.integers(0, n_colours, (37, 53)).astype(np.uint8)
    indices[:18] = n_colours - 1  # flat rows and noisy rows
    expected = palette[indices]
    path = write_png(indices, tmp_path / "p.png", level=level, palette=palette)
    data = path.read_bytes()
    assert data[25] == 3  # IHDR colour type: palette
    back = png_pixels(data)
    assert back.dtype == np.uint8 and back.flags.writeable
    np.testing.assert_array_equal(back, expected)
    with Image.open(path) as image:
        assert image.mode == "P"
        np.testing.assert_array_equal(np.asarray(image), indices)
        np.testing.assert_array_equal(np.asarray(image.convert("RGB")), expected)
    np.testing.assert_array_equal(cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB), expected)
    np.testing.assert_array_equal(iio.imread(path, mode="RGB"), expected)


def test_palette_png_is_a_third_of_the_rgb_png():
    rng = np.random.default_rng(6)
    palette = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
    indices = rng.integers(0, 256, (64, 64)).astype(np.uint8)
    stored_rgb, stored = png_bytes(palette[indices], level=0), png_bytes(indices, level=0, palette=palette)
    assert len(stored) - 3 * 256 < len(stored_rgb) / 2.9


@pytest.mark.parametrize(
    "image, palette",
    [
        (np.full((4, 4), 3, np.uint8), np.zeros((3, 3), np.uint8)),  # index past the palette
        (np.zeros((4, 4, 3), np.uint8), np.zeros((3, 3), np.uint8)),  # palette images are (H, W)
        (np.zeros((4, 4), np.uint8), np.zeros((3, 4), np.uint8)),  # not RGB
        (np.zeros((4, 4), np.uint8), np.zeros((257, 3), np.uint8)),  # too many colours
        (np.zeros((4, 4), np.uint8), np.zeros((3, 3), np.int32)),
    ],
)
def test_palette_png_rejects_what_it_cannot_store(image, palette):
    with pytest.raises(ValueError, match="palette"):
        png_bytes(image, palette=palette)
