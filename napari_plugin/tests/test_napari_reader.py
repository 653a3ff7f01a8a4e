"""The reader and the sample data: one (T, Y, X) layer with µm scale and exposure times."""

from __future__ import annotations

import numpy as np
import pytest
from napari_semtrack import napari_get_reader, read_semtrack_series

from semtrack.io import read_series


def test_reader_opens_folder_with_scale_and_times(series_folder, synthetic):
    reader = napari_get_reader(str(series_folder))
    assert callable(reader)
    [(data, kwargs, kind)] = reader(str(series_folder))
    assert kind == "image"
    rows, cols = synthetic.images[0].shape
    assert data.shape == (len(synthetic.times_h), rows, cols)
    assert data.dtype == np.float32
    assert kwargs["scale"] == pytest.approx((1.0, synthetic.pixel_size_um, synthetic.pixel_size_um), rel=1e-6)
    assert kwargs["metadata"]["times_h"] == pytest.approx(list(synthetic.times_h))
    info = kwargs["metadata"]["semtrack"]
    assert info["calibrated"] is True
    assert info["length_unit"] == "µm"
    series = info["series"]
    for i in range(len(series)):
        np.testing.assert_array_equal(data[i], series.image(i))
    # 16-bit or 8-bit frames are scaled to [0, 1] and equal the synthetic pixels
    scale = np.iinfo(synthetic.images[0].dtype).max
    np.testing.assert_allclose(data[1], synthetic.images[1] / scale, atol=1e-6)


def test_reader_uncalibrated_series_has_unit_scale(uncalibrated_folder):
    [(data, kwargs, _)] = read_semtrack_series(uncalibrated_folder)
    assert kwargs["scale"] == (1.0, 1.0, 1.0)
    info = kwargs["metadata"]["semtrack"]
    assert info["calibrated"] is False
    assert info["length_unit"] == "px"
    assert info["pixel_size_um"] is None


def test_reader_takes_a_list_of_files_in_any_order(series_folder, synthetic):
    files = sorted(str(p) for p in series_folder.glob("*.tif"))[::-1]
    reader = napari_get_reader(files)
    assert reader is not None
    [(data, kwargs, _)] = reader(files)
    assert kwargs["metadata"]["times_h"] == pytest.approx(sorted(synthetic.times_h))
    assert data.shape[0] == len(files)


@pytest.mark.parametrize("kind", ["text file", "empty folder", "single tiff", "folder without tiffs", "list with text"])
def test_reader_declines_what_is_not_a_series(kind, tmp_path, series_folder):
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    path = {
        "text file": str(text),
        "empty folder": str(tmp_path / "empty"),
        "single tiff": str(next(series_folder.glob("*.tif"))),
        "folder without tiffs": str(tmp_path),
        "list with text": [str(next(series_folder.glob("*.tif"))), str(text)],
    }[kind]
    (tmp_path / "empty").mkdir()
    assert napari_get_reader(path) is None


def test_reader_error_names_the_file(tmp_path):
    from semtrack.errors import SemtrackError

    (tmp_path / "frame_24h.tif").write_bytes(b"II*\x00garbage")
    (tmp_path / "frame_96h.tif").write_bytes(b"II*\x00garbage")
    reader = napari_get_reader(str(tmp_path))
    with pytest.raises(SemtrackError, match="frame_(24|96)h.tif"):
        reader(str(tmp_path))


def test_viewer_opens_series_through_the_manifest(viewer, series_folder, synthetic):
    layers = viewer.open(str(series_folder), plugin="napari-semtrack")
    assert len(layers) == 1
    layer = layers[0]
    assert layer.data.shape[0] == len(synthetic.times_h)
    np.testing.assert_allclose(layer.scale, [1.0, synthetic.pixel_size_um, synthetic.pixel_size_um], rtol=1e-6)
    assert layer.metadata["times_h"] == pytest.approx(list(synthetic.times_h))


def test_sample_data_is_the_bundled_series(viewer):
    data = pytest.importorskip("semtrack.data")
    layers = viewer.open_sample("napari-semtrack", "nasicon_demo")
    series = read_series(data.sample_series_path())
    assert len(layers) == 1
    assert layers[0].data.shape[0] == len(series)
    assert layers[0].metadata["times_h"] == pytest.approx(series.times_h.tolist())
    expected = series.pixel_size_um or 1.0
    np.testing.assert_allclose(layers[0].scale[-2:], [expected, expected])
