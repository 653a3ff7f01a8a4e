"""End to end on a synthetic series: every contract file, values against the generator's truth."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import cv2
import numpy as np
import pandas as pd
import pytest
import tifffile

from semtrack import track
from semtrack.config import OUTSIDE, Config
from semtrack.io import sha256_file
from semtrack.pipeline import HEADLINE_COLUMNS, run

FRAME_COLUMNS = [
    "frame",
    "file",
    "time_h",
    "dx_px",
    "dy_px",
    "rotation_deg",
    "scale",
    "reg_score",
    "frac_pore",
    "frac_glass",
    "frac_nasicon",
    "frac_na3po4",
    "glass_fraction",
    "n_islands",
    "na3po4_area_um2",
    "grain_count",
    "grain_ecd_mean_um",
    "grain_ecd_median_um",
    "pixel_size_um",
    "frac_glass_ci_low",
    "frac_glass_ci_high",
    "glass_fraction_ci_low",
    "glass_fraction_ci_high",
]


def test_every_contract_file_is_written(pipeline_output, synth_series):
    result, out = pipeline_output
    n = len(synth_series.images)
    for name in [
        "frames.csv",
        "transforms.json",
        "grains.csv",
        "islands.csv",
        "events.csv",
        "intervals.csv",
        "kinetics.json",
        "run.json",
        "report.html",
    ]:
        assert (out / name).is_file(), name
    for i in range(n):
        assert (out / "labels" / f"phases_{i:03d}.tif").is_file()
        assert (out / "labels" / f"islands_{i:03d}.tif").is_file()
    for i in range(1, n):
        assert (out / "event_maps" / f"events_{i - 1:03d}_{i:03d}.png").is_file()
    frames = pd.read_csv(out / "frames.csv")
    assert set(FRAME_COLUMNS) <= set(frames.columns)
    assert list(frames["frame"]) == list(range(n))
    assert not list(out.rglob("*.tmp*")), "temporary files left behind"


def test_transforms_match_the_true_stage_motion(pipeline_output, synth_series):
    _, out = pipeline_output
    transforms = json.loads((out / "transforms.json").read_text())
    assert transforms["reference"] == 0
    region = synth_series.analysed_region()
    ys, xs = np.nonzero(region)
    points = np.stack([xs, ys, np.ones_like(xs)]).astype(float)
    for entry, truth in zip(transforms["frames"], synth_series.matrices):
        matrix = np.array(entry["matrix"])
        assert matrix.shape == (3, 3)
        error = (matrix @ points - truth @ points)[:2]
        assert np.sqrt((error**2).sum(axis=0).mean()) < 0.5


def test_phase_maps_follow_the_contract_and_the_truth(pipeline_output, synth_series):
    result, out = pipeline_output
    ref_shape = synth_series.images[0].shape
    frames = pd.read_csv(out / "frames.csv")
    truth = synth_series.truth_frame_table()
    for i in range(len(synth_series.images)):
        phases = tifffile.imread(out / "labels" / f"phases_{i:03d}.tif")
        assert phases.shape == ref_shape and phases.dtype == np.uint8
        assert set(np.unique(phases)) <= {0, 1, 2, 3, OUTSIDE}
        assert (phases[-synth_series.info_bar_rows :] == OUTSIDE).all()
        inside = phases != OUTSIDE
        true = synth_series.phases_ref[i]
        both = inside & (true != OUTSIDE)
        assert (phases[both] == true[both]).mean() > 0.85
    for col in ["frac_pore", "frac_glass", "frac_nasicon", "frac_na3po4", "glass_fraction"]:
        np.testing.assert_allclose(frames[col], truth[col], atol=0.03, err_msg=col)
        assert (frames[f"{col}_ci_low"] <= frames[col]).all() and (frames[col] <= frames[f"{col}_ci_high"]).all()
    fractions = frames[["frac_pore", "frac_glass", "frac_nasicon", "frac_na3po4"]].sum(axis=1)
    np.testing.assert_allclose(fractions, 1.0, atol=1e-9)


def test_islands_and_events_are_consistent_with_the_maps(pipeline_output, synth_series):
    _, out = pipeline_output
    islands = pd.read_csv(out / "islands.csv", keep_default_na=False)
    events = pd.read_csv(out / "events.csv", keep_default_na=False)
    frames = pd.read_csv(out / "frames.csv")
    truth = synth_series.truth_frame_table()
    for i in range(len(frames)):
        labels = tifffile.imread(out / "labels" / f"islands_{i:03d}.tif")
        ids = set(np.unique(labels)) - {0}
        assert ids == set(islands.loc[islands["frame"] == i, "island_id"])
        assert frames.loc[i, "n_islands"] == len(ids)
        assert abs(frames.loc[i, "n_islands"] - truth.loc[i, "n_islands"]) <= max(3, 0.2 * truth.loc[i, "n_islands"])
    assert set(events["event"]) <= {"formation", "coalescence", "split", "dissolution"}
    assert len(events) > 0
    assert set(events["frame_to"] - events["frame_from"]) == {1}


def test_event_maps_draw_each_interval_on_the_written_maps(pipeline_output):
    result, out = pipeline_output
    events = result.events
    for i in range(1, len(result.frames)):
        preview = cv2.imread(str(out / "previews" / f"frame_{i:03d}.png"), cv2.IMREAD_GRAYSCALE)
        expected = track.event_map(
            np.where(result.region, preview, np.uint8(0)),
            tifffile.imread(out / "labels" / f"islands_{i - 1:03d}.tif"),
            tifffile.imread(out / "labels" / f"islands_{i:03d}.tif"),
            events[(events["frame_from"] == i - 1) & (events["frame_to"] == i)],
            pixel_size_um=result.series.pixel_size_um,
        )
        drawn = cv2.imread(str(out / "event_maps" / f"events_{i - 1:03d}_{i:03d}.png"), cv2.IMREAD_COLOR)
        np.testing.assert_array_equal(cv2.cvtColor(drawn, cv2.COLOR_BGR2RGB), expected)


def test_run_json_records_provenance(pipeline_output, synth_folder):
    result, out = pipeline_output
    record = json.loads((out / "run.json").read_text())
    files = sorted(synth_folder.glob("*.tif"))
    assert {i["sha256"] for i in record["inputs"]} == {sha256_file(f) for f in files}
    assert record["pixel_size_source"] == "zeiss"
    assert record["pixel_size_um"] == pytest.approx(result.series.pixel_size_um)
    assert record["config"] == Config().to_dict()
    assert record["semtrack_version"]
    assert len(record["registration"]["marker"]) == 4


def test_in_memory_run_keeps_maps_and_matches_written_run(pipeline_output, synth_folder):
    written, out = pipeline_output
    result = run(synth_folder)
    assert result.out_dir is None and len(result.phase_maps) == len(result.island_maps) == len(result.frames)
    np.testing.assert_array_equal(result.phase_maps[1], tifffile.imread(out / "labels" / "phases_001.tif"))
    pd.testing.assert_frame_equal(result.frames, written.frames)


def test_headline_is_the_frames_table_summary_in_order(pipeline_output):
    result, out = pipeline_output
    headline = result.headline()
    assert list(headline.columns) == list(HEADLINE_COLUMNS)  # a full run has every headline number
    written = pd.read_csv(out / "frames.csv")
    pd.testing.assert_frame_equal(headline.reset_index(drop=True), written[list(HEADLINE_COLUMNS)], check_dtype=False)
    partial = replace(result, frames=result.frames.drop(columns=["grain_count", "reg_score"]))
    assert list(partial.headline().columns) == [c for c in HEADLINE_COLUMNS if c not in ("grain_count", "reg_score")]


def test_resumed_run_reuses_work_and_writes_identical_tables(pipeline_output, synth_folder, tmp_path):
    _, out = pipeline_output
    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    # An interrupted run: tables, a label map and some cached frames missing.
    for name in ["frames.csv", "events.csv", "run.json"]:
        (resumed / name).unlink()
    (resumed / "labels" / "islands_002.tif").unlink()
    cached = sorted((resumed / ".cache").glob("*.pkl"))
    cached[-1].unlink()
    run(synth_folder, out_dir=resumed, report=False)
    for name in ["frames.csv", "grains.csv", "islands.csv", "events.csv", "intervals.csv"]:
        assert (resumed / name).read_bytes() == (out / name).read_bytes(), name


def test_uncalibrated_series_reports_px_units(synth_series, tmp_path):
    from semtrack.synth import write_series

    folder = tmp_path / "nocal"
    write_series(synth_series, folder, vendor=None)
    out = tmp_path / "out"
    result = run(folder, out_dir=out, report=False)
    assert not result.series.calibrated
    frames = pd.read_csv(out / "frames.csv")
    assert "na3po4_area_px2" in frames and "na3po4_area_um2" not in frames
    assert "grain_ecd_mean_px" in frames
    assert frames["pixel_size_um"].isna().all()
    record = json.loads((out / "run.json").read_text())
    assert record["length_unit"] == "px" and record["pixel_size_source"] == "uncalibrated"
    assert any("uncalibrated" in w for w in record["warnings"])


def test_user_marker_is_left_out_of_the_analysed_region(synth_series, synth_folder):
    x0, y0, x1, y1 = synth_series.marker_rect
    config = Config().updated({"registration": {"marker": (x0, y0, x1, y1)}})
    result = run(synth_folder, config=config)
    assert result.registration.marker_source == "user"
    assert not result.region[y0:y1, x0:x1].any()
    assert (result.phase_maps[0][y0:y1, x0:x1] == OUTSIDE).all()
    kept = run(synth_folder, config=config.updated({"registration": {"exclude_marker": False}}))
    assert kept.region[y0:y1, x0:x1].mean() > 0.9


@pytest.mark.parametrize("budget_frames", [0, 1, 100])
def test_series_keeps_decoded_frames_within_their_budget(synth_folder, budget_frames):
    import pickle

    from semtrack.io import read_series

    fresh = read_series(synth_folder)
    rows, cols = fresh.frames[0].shape
    budget_bytes = budget_frames * rows * cols  # 8-bit frames
    series = read_series(synth_folder, keep_pixels_bytes=budget_bytes)
    # Reading decoded every frame to find its info bar: those within the budget are kept already.
    assert sorted(series._kept) == list(range(min(budget_frames, len(series))))
    for _ in range(2):  # the second pass reads what the first one kept
        for i in range(len(series)):
            image = series.image(i)
            assert image.dtype == np.float32
            np.testing.assert_array_equal(image, fresh.image(i))
            image[:] = 0  # a caller's changes must not reach the kept pixels
    assert sum(pixels[0].nbytes for pixels in series._kept.values()) <= budget_bytes
    assert pickle.loads(pickle.dumps(series))._kept == {}  # workers get the description only
    assert series.keep_pixels(0) == budget_bytes
    assert series._kept == {} and series == fresh


def test_preview_is_the_clipped_8bit_frame_with_0_where_not_imaged():
    from semtrack.pipeline import _preview

    image = np.array([[np.nan, -np.inf, np.inf, -0.5, -0.0], [0.0, 0.5, 0.999, 1.0, 2.0]], np.float32)
    expected = np.array([[0, 0, 255, 0, 0], [0, 127, 254, 255, 255]], np.uint8)
    np.testing.assert_array_equal(_preview(image), expected)


@pytest.mark.parametrize("top_id", [0, 200, 70_000])
def test_cached_analyses_give_back_int32_island_labels(tmp_path, top_id):
    from semtrack.pipeline import FrameAnalysis, _Analyses, _Cache

    islands = np.zeros((30, 40), np.int32)
    islands[3:9, 5:12] = top_id
    islands[20:25, 30:33] = 1
    phases = np.full((30, 40), 2, np.uint8)
    analysis = FrameAnalysis(phases, islands, {"frac_glass": 0.5}, pd.DataFrame({"a": [1]}), {"n": 1.0}, phases)
    analyses = _Analyses(_Cache(tmp_path), ["key"])
    analyses.store(0, analysis)
    back = analyses.load(0)
    assert back.islands.dtype == np.int32
    np.testing.assert_array_equal(back.islands, islands)
    np.testing.assert_array_equal(back.phases, phases)
    assert back.fractions == analysis.fractions
