"""The bundled sample series: present, readable, small, and consistent with its truth and with the generator."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from semtrack import data
from semtrack.config import OUTSIDE
from semtrack.data import SAMPLE_PARAMS, sample_series_path, sample_truth
from semtrack.errors import ReadError


@pytest.fixture(scope="module")
def truth():
    return sample_truth()


def test_sample_folder_is_small_and_complete():
    folder = sample_series_path()
    names = sorted(p.name for p in folder.glob("*.tif"))
    assert names == ["t0024h_00.tif", "t0096h_01.tif", "t0845h_02.tif", "t1055h_03.tif"]
    total = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert total <= 5e6
    readme = folder.parent / "README.md"
    if folder == data._repo_sample():
        assert readme.is_file() and "make_sample.py" in readme.read_text(encoding="utf-8")


def test_sample_reads_as_a_calibrated_series(truth):
    from semtrack.io import read_series

    series = read_series(sample_series_path())
    np.testing.assert_array_equal(series.times_h, [24, 96, 845, 1055])
    assert series.pixel_size_um == pytest.approx(SAMPLE_PARAMS["pixel_size_um"])
    assert series.pixel_size_source == "zeiss"
    assert [f.crop_bottom_px for f in series.frames] == [truth.info_bar_rows] * 4
    assert [f.shape for f in series.frames] == [tuple(SAMPLE_PARAMS["shape"])] * 4


def test_truth_is_consistent(truth):
    assert len(truth.images) == 4 and truth.images[0].shape == tuple(SAMPLE_PARAMS["shape"])
    np.testing.assert_array_equal(truth.matrices[0], np.eye(3))
    for phases, ids in zip(truth.phases_ref, truth.islands_ref):
        defined = phases != OUTSIDE
        np.testing.assert_array_equal((ids > 0)[defined], (phases == 3)[defined])
    table = truth.truth_frame_table()
    assert table["glass_fraction"].between(0.17, 0.23).all()
    assert (table["n_islands"] > 10).all()
    counts = truth.events["event"].value_counts()
    assert {"formation", "coalescence", "split", "dissolution"} <= set(counts.index)
    # Island ids in events exist in the islands table at the right frames.
    isl = truth.islands
    for r in truth.events.itertuples():
        for iid in filter(None, str(r.islands_before).split(";")):
            assert ((isl["island_id"] == int(iid)) & (isl["frame"] == r.frame_from)).any()
        for iid in filter(None, str(r.islands_after).split(";")):
            assert ((isl["island_id"] == int(iid)) & (isl["frame"] == r.frame_to)).any()


def test_bundled_sample_matches_the_generator(truth):
    """The files on disk are what the current generator makes (regenerate them after changing synth)."""
    from semtrack.synth import make_series

    fresh = make_series(**SAMPLE_PARAMS)
    for a, b in zip(fresh.images, truth.images):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(fresh.phases_ref, truth.phases_ref):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(fresh.matrices, truth.matrices)
    assert len(fresh.events) == len(truth.events)
    np.testing.assert_allclose(fresh.events["x_px"], truth.events["x_px"])


def test_regenerated_into_cache_when_not_bundled(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_repo_sample", lambda: tmp_path / "absent")
    monkeypatch.setenv("SEMTRACK_CACHE", str(tmp_path / "cache"))
    folder = sample_series_path()
    assert folder == tmp_path / "cache" / "semtrack" / "sample_images" / data.SAMPLE_NAME
    assert len(list(folder.glob("*.tif"))) == 4
    again = sample_series_path()  # second call reuses the cache
    assert again == folder


def test_missing_truth_is_a_read_error(tmp_path):
    from semtrack.synth import make_series, write_series

    small = make_series(shape=(256, 320), n_frames=3, seed=0)
    write_series(small, tmp_path / "s")
    data.write_truth(small, tmp_path / "s" / "truth")
    back = sample_truth(tmp_path / "s")
    assert len(small.events) > 0
    pd.testing.assert_frame_equal(back.events, small.events)
    pd.testing.assert_frame_equal(back.islands, small.islands)
    pd.testing.assert_frame_equal(back.truth_frame_table(), small.truth_frame_table())
    (tmp_path / "s" / "truth" / "truth.npz").unlink()
    with pytest.raises(ReadError, match="ground truth"):
        sample_truth(tmp_path / "s")
