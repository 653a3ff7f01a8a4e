"""Tests of semtrack.track on hand-made label sequences, synthetic truth and real masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from semtrack.config import OUTSIDE, TrackConfig
from semtrack.track import (
    EVENT_COLUMNS,
    ISLAND_COLUMNS,
    IslandTracker,
    area_balance,
    event_map,
    event_map_indexed,
    fit_kinetics,
    frame_statistics,
    interval_statistics,
    label_islands,
    link_islands,
    linking_metrics,
    score_events,
    size_distribution,
    to_napari_tracks,
    write_geff,
)

REAL_SEM = Path(__file__).resolve().parents[1] / ".." / "shared" / "real_sem" / "nasa_pmm_ebc_super" / "Super"


def blank(shape=(40, 40)):
    return np.zeros(shape, np.int32)


def box(img, y0, y1, x0, x1, value):
    img[y0:y1, x0:x1] = value
    return img


def events_of(lineage, kind=None):
    ev = lineage.events
    return ev if kind is None else ev.loc[ev["event"] == kind]


# ---------------------------------------------------------------------------
# label_islands


def test_label_islands_counts_four_connected_components_and_ignores_outside():
    phases = np.full((10, 10), 2, np.uint8)
    phases[1, 1] = phases[2, 2] = 3  # diagonal neighbours: two islands with 4-connectivity
    phases[5:8, 5:8] = 3
    phases[0, 9] = OUTSIDE
    labels = label_islands(phases)
    assert labels.dtype == np.int32
    assert labels.max() == 3
    assert labels[1, 1] != labels[2, 2]
    assert len(np.unique(labels[5:8, 5:8])) == 1


def test_label_islands_numbers_islands_in_raster_order_of_their_first_pixel():
    from scipy import ndimage as ndi

    rng = np.random.default_rng(4)
    phases = np.where(rng.random((120, 160)) < 0.45, 3, 2).astype(np.uint8)
    labels = label_islands(phases, min_island_area_um2=3)
    # scipy numbers 4-connected components in raster order of their first pixel.
    reference, n = ndi.label(phases == 3)
    area = np.bincount(reference.ravel(), minlength=n + 1)
    kept = np.flatnonzero(area >= 3)
    kept = kept[kept > 0]
    lut = np.zeros(n + 1, np.int32)
    lut[kept] = np.arange(1, kept.size + 1)
    assert kept.size > 50
    np.testing.assert_array_equal(labels, lut[reference])


def test_label_islands_outside_and_valid_are_never_islands():
    phases = np.full((8, 8), 3, np.uint8)
    phases[:, 4] = OUTSIDE  # a wall of outside pixels splits the island phase in two
    valid = np.ones((8, 8), bool)
    valid[:, 6:] = False
    labels = label_islands(phases, valid=valid)
    assert labels.max() == 2
    assert np.all(labels[:, 4] == 0) and np.all(labels[:, 6:] == 0)


@pytest.mark.parametrize(
    "pixel_size_um, min_area_um2, expected",
    [(None, 0.1, 3), (None, 4, 2), (None, 9, 1), (0.5, 1.0, 2), (0.5, 2.25, 1), (0.1, 0.09, 1)],
)
def test_label_islands_minimum_area_is_in_square_micrometres(pixel_size_um, min_area_um2, expected):
    phases = np.zeros((20, 20), np.uint8)
    phases[1, 1] = 3  # 1 px
    phases[5:7, 5:7] = 3  # 4 px
    phases[10:13, 10:13] = 3  # 9 px
    labels = label_islands(phases, pixel_size_um=pixel_size_um, min_island_area_um2=min_area_um2)
    assert labels.max() == expected
    assert set(np.unique(labels)) == set(range(expected + 1))


def test_label_islands_smoothing_removes_spurs_but_not_islands_at_the_region_edge():
    phases = np.zeros((40, 40), np.uint8)
    phases[10:30, 10:30] = 3
    phases[19, 30:36] = 3  # one-pixel spur
    phases[0:12, 0:12] = OUTSIDE
    phases[12:20, 12:20] = 3  # part of the big square, touching nothing outside
    phases[:, 36:] = OUTSIDE
    phases[10:20, 33:36] = 3  # island flush against the outside region
    raw = label_islands(phases)
    smooth = label_islands(phases, smooth_um=1.0)
    assert raw.max() == 1  # spur connects everything
    assert smooth[19, 32] == 0  # spur gone
    # The island against the outside keeps its full width: normalised smoothing.
    assert np.count_nonzero(smooth[12:18, 33:36]) == 18


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(phases=np.zeros((2, 2, 2), np.uint8)), ValueError, "2-D"),
        (dict(phases=np.zeros((4, 4), float)), TypeError, "integer"),
        (dict(phases=np.zeros((4, 4), np.uint8), island_code=255), ValueError, "island_code"),
        (dict(phases=np.zeros((4, 4), np.uint8), min_island_area_um2=-1), ValueError, "min_island_area_um2"),
        (dict(phases=np.zeros((4, 4), np.uint8), pixel_size_um=0), ValueError, "pixel_size_um"),
        (dict(phases=np.zeros((4, 4), np.uint8), valid=np.ones((3, 3), bool)), ValueError, "valid"),
        (dict(phases=np.zeros((4, 4), np.uint8), valid=np.ones((4, 4))), TypeError, "valid"),
    ],
)
def test_label_islands_rejects_bad_input(kwargs, exc, match):
    phases = kwargs.pop("phases")
    with pytest.raises(exc, match=match):
        label_islands(phases, **kwargs)


def _super_mask(name):
    tifffile = pytest.importorskip("tifffile")
    path = REAL_SEM / "masks" / f"{name}_mask.tif"
    if not path.exists():
        pytest.skip(f"real SEM masks not available at {path}")
    rgb = tifffile.imread(path, is_shaped=False)[..., :3]
    phases = np.full(rgb.shape[:2], 1, np.uint8)
    phases[np.all(rgb == (0, 0, 255), axis=-1)] = 3  # secondary gamma-prime: the big dark islands
    phases[np.all(rgb == (255, 0, 0), axis=-1)] = 0  # tertiary precipitates
    return phases


@pytest.mark.real_data
@pytest.mark.parametrize(
    "name, n_islands, n_interior, n_tertiary",
    # Counts from SOURCE.md of the data set (4-connectivity, computed from the masks).
    [("spot1_0d_0", 24, 11, 73), ("spot2_0d_0", 33, 19, 112), ("spot3_180d_2", 24, 11, 76)],
)
def test_real_precipitate_masks_give_published_island_counts(name, n_islands, n_interior, n_tertiary):
    phases = _super_mask(name)
    labels = label_islands(phases, min_island_area_um2=0)
    assert labels.max() == n_islands
    lineage, _ = link_islands([labels], [0.0])
    assert (~lineage.islands["touches_border"]).sum() == n_interior
    assert label_islands(phases, island_code=0, min_island_area_um2=0).max() == n_tertiary


# ---------------------------------------------------------------------------
# tracking: one case per event type


def test_one_to_one_continuation_keeps_the_id_and_records_growth():
    a = box(blank(), 5, 10, 5, 10, 4)
    b = box(blank(), 4, 12, 4, 12, 9)
    lineage, maps = link_islands([a, b], [24, 96], pixel_size_um=0.5)
    assert lineage.events.empty
    assert np.array_equal(np.unique(maps[1]), [0, 1])
    isl = lineage.islands
    assert isl["island_id"].tolist() == [1, 1]
    assert isl["area_um2"].tolist() == pytest.approx([25 * 0.25, 64 * 0.25])
    assert isl["origin"].tolist() == ["first_frame", "continued"]
    assert isl["fate"].tolist() == ["continued", "last_frame"]


def test_formation_and_dissolution_positions_are_island_centroids():
    a = box(blank(), 2, 6, 2, 6, 1)
    b = box(blank(), 20, 24, 30, 34, 1)
    lineage, maps = link_islands([a, b], [24, 96])
    form = events_of(lineage, "formation").iloc[0]
    diss = events_of(lineage, "dissolution").iloc[0]
    assert (form.x_px, form.y_px) == pytest.approx((31.5, 21.5))
    assert (diss.x_px, diss.y_px) == pytest.approx((3.5, 3.5))
    assert form.islands_after == "2" and diss.islands_before == "1"
    assert form.area_um2 == 16 and diss.area_um2 == 16
    assert maps[1][21, 31] == 2


@pytest.mark.parametrize("n_parents", [2, 3])
def test_coalescence_gets_a_new_id_with_all_parents(n_parents):
    a = blank((20, 60))
    for k in range(n_parents):
        box(a, 5, 10, 2 + 12 * k, 10 + 12 * k, k + 1)
    b = box(blank((20, 60)), 4, 11, 1, 11 + 12 * (n_parents - 1), 1)
    lineage, maps = link_islands([a, b], [24, 96])
    ev = lineage.events
    assert ev["event"].tolist() == ["coalescence"]
    child = n_parents + 1
    assert ev.iloc[0].islands_before == ";".join(str(i) for i in range(1, n_parents + 1))
    assert ev.iloc[0].islands_after == str(child)
    assert lineage.graph == {child: list(range(1, n_parents + 1))}
    assert (ev.iloc[0].x_px, ev.iloc[0].y_px) == pytest.approx(((1 + 11 + 12 * (n_parents - 1) - 1) / 2, 7.0))
    assert np.unique(maps[1]).tolist() == [0, child]
    assert lineage.islands.query("frame == 0")["fate"].eq("coalesced").all()


def test_split_children_get_new_ids_and_the_event_sits_on_the_parent():
    a = box(blank(), 5, 10, 5, 30, 1)
    b = box(box(blank(), 5, 10, 5, 15, 1), 5, 10, 20, 30, 2)
    lineage, maps = link_islands([a, b], [24, 96])
    ev = lineage.events
    assert ev["event"].tolist() == ["split"]
    assert (ev.iloc[0].x_px, ev.iloc[0].y_px) == pytest.approx((17.0, 7.0))
    assert ev.iloc[0].islands_after == "2;3"
    assert lineage.graph == {2: [1], 3: [1]}
    assert set(np.unique(maps[1])) == {0, 2, 3}


def test_n_to_m_is_reported_as_its_coalescences_and_splits():
    # a1 and the left half of a2 merge into b1; the right half of a2 becomes b2.
    a = box(box(blank(), 5, 10, 2, 8, 1), 5, 10, 10, 30, 2)
    b = box(box(blank(), 5, 10, 2, 19, 1), 5, 10, 22, 30, 2)
    lineage, _ = link_islands([a, b], [24, 96])
    ev = lineage.events.set_index("event")
    assert sorted(ev.index) == ["coalescence", "split"]
    assert ev.loc["coalescence", "islands_before"] == "1;2"
    assert ev.loc["split", "islands_before"] == "2"
    assert set(ev.loc["split", "islands_after"].split(";")) == {"3", "4"}
    assert ev["reorganisation"].all()
    assert lineage.graph == {3: [1, 2], 4: [2]}
    assert area_balance(lineage.islands, lineage.events)["balanced"].all()


def test_island_leaving_the_observed_area_is_not_a_dissolution():
    a = box(box(blank(), 5, 10, 30, 36, 1), 20, 25, 5, 10, 2)
    valid_next = np.ones_like(a, bool)
    valid_next[:, 28:] = False  # the next frame did not image the right side
    lineage, _ = link_islands([a, a], [24, 96], valid_masks=[None, valid_next])
    assert lineage.events["event"].tolist() == ["left_region"]
    assert lineage.islands.query("frame == 0 and island_id == 1")["fate"].item() == "left_region"
    assert interval_statistics(lineage)["n_dissolution"].item() == 0
    # ... and coming back into view is not a formation.
    back, _ = link_islands([a, a], [24, 96], valid_masks=[valid_next, None])
    assert back.events["event"].tolist() == ["entered_region"]


def test_island_on_the_region_border_is_flagged_and_still_dissolves_when_its_place_is_seen():
    region = np.zeros((40, 40), bool)
    region[5:35, 5:35] = True
    a = box(box(blank(), 5, 9, 10, 14, 1), 20, 24, 20, 24, 2)  # first touches the region's top edge
    lineage, _ = link_islands([a, blank()], [24, 96], region=region)
    first = lineage.islands.query("frame == 0").set_index("island_id")
    assert first.loc[1, "touches_border"] and not first.loc[2, "touches_border"]
    ev = lineage.events.set_index("islands_before")
    assert ev.loc["1", "event"] == "dissolution" and ev.loc["1", "touches_border"]
    assert lineage.frames["n_touching_border"].tolist() == [1, 0]


def test_islands_outside_the_region_are_ignored():
    region = np.zeros((40, 40), bool)
    region[:, :20] = True
    a = box(box(blank(), 5, 9, 5, 9, 1), 5, 9, 25, 29, 2)
    lineage, maps = link_islands([a], [0], region=region)
    assert lineage.frames["n_islands"].item() == 1
    assert maps[0][5:9, 25:29].max() == 0


@pytest.mark.parametrize("empty_at", [0, 1, 2])
def test_empty_frames(empty_at):
    full = box(box(blank(), 5, 9, 5, 9, 1), 20, 26, 20, 26, 2)
    frames = [full.copy() for _ in range(3)]
    frames[empty_at] = blank()
    lineage, maps = link_islands(frames, [24, 96, 845])
    counts = lineage.frames["n_islands"].tolist()
    assert counts == [0 if k == empty_at else 2 for k in range(3)]
    ev = lineage.events
    if empty_at > 0:
        assert (ev.query("frame_to == @empty_at")["event"] == "dissolution").sum() == 2
    if empty_at < 2:
        assert (ev.query("frame_from == @empty_at")["event"] == "formation").sum() == 2
    assert maps[empty_at].max() == 0
    assert area_balance(lineage.islands, lineage.events)["balanced"].all()


def test_all_frames_empty():
    lineage, maps = link_islands([blank(), blank()], [0, 1])
    assert lineage.islands.empty and lineage.events.empty and lineage.graph == {}
    assert list(lineage.events.columns) == list(EVENT_COLUMNS)
    assert interval_statistics(lineage)["reorganisation_index"].isna().all()


@pytest.mark.parametrize("tolerance_um, expected", [(0.0, ["formation", "dissolution"]), (0.5, [])])
def test_tolerance_links_a_misregistered_island_that_overlaps_nothing(tolerance_um, expected):
    a = box(blank(), 10, 14, 10, 14, 1)
    b = box(blank(), 10, 14, 17, 21, 1)  # moved 7 px = 0.35 µm: no overlap left
    lineage, maps = link_islands([a, b], [0, 1], pixel_size_um=0.05, link_tolerance_um=tolerance_um)
    assert sorted(lineage.events["event"]) == sorted(expected)
    assert (maps[1].max() == 1) == (not expected)


def test_tolerance_never_merges_close_islands_that_each_continue():
    # Two islands 2 px apart, unchanged: a dilation-everywhere linker would call this a coalescence.
    a = box(box(blank(), 10, 20, 5, 15, 1), 10, 20, 17, 27, 2)
    lineage, maps = link_islands([a, a], [0, 1], link_tolerance_um=5)
    assert lineage.events.empty
    assert np.array_equal(maps[0], maps[1])


@pytest.mark.parametrize("fraction, linked", [(0.05, True), (0.5, False)])
def test_min_overlap_fraction_is_relative_to_the_smaller_island(fraction, linked):
    a = box(blank(), 10, 20, 10, 20, 1)  # 100 px
    b = box(blank(), 19, 29, 10, 20, 1)  # overlaps a by one row: 10 px = 10 %
    lineage, _ = link_islands([a, b], [0, 1], min_overlap_fraction=fraction, link_tolerance_um=0)
    assert lineage.events.empty == linked


def test_ids_persist_parents_carry_on_and_only_the_previous_frame_is_kept():
    a = box(box(blank(), 5, 9, 5, 9, 1), 5, 9, 12, 16, 2)
    b = box(blank(), 5, 9, 5, 16, 1)  # merge -> 3
    c = box(blank(), 4, 10, 4, 17, 1)  # grows
    tracker = IslandTracker()
    maps = [tracker.add(m, t) for m, t in zip([a, b, c], [24, 96, 845])]
    assert tracker._prev.labels.shape == a.shape  # one map retained, not the series
    assert maps[2].max() == 3 and np.unique(maps[2]).tolist() == [0, 3]
    isl = tracker.result().islands
    assert isl.query("island_id == 3")["parents"].tolist() == ["1;2", "1;2"]
    assert isl.query("island_id == 3")["origin"].tolist() == ["coalesced", "continued"]


def test_last_events_are_the_latest_interval_of_the_lineage():
    a = box(box(blank(), 5, 9, 5, 9, 1), 5, 9, 12, 16, 2)
    b = box(blank(), 5, 9, 5, 16, 1)  # 1 and 2 merge
    c = box(box(blank(), 5, 9, 5, 16, 1), 30, 34, 30, 34, 2)  # the merged island stays, one forms
    tracker = IslandTracker()
    tracker.add(a, 0)
    assert tracker.last_events().empty and list(tracker.last_events().columns) == list(EVENT_COLUMNS)
    tracker.add(b, 1)
    assert tracker.last_events()["event"].tolist() == ["coalescence"]
    tracker.add(c, 2)
    latest = tracker.last_events()
    assert latest["event"].tolist() == ["formation"]
    events = tracker.result().events
    pd.testing.assert_frame_equal(latest, events[events["frame_to"] == 2].reset_index(drop=True))


def test_raw_label_values_do_not_matter():
    a = box(box(blank(), 5, 9, 5, 9, 7), 20, 24, 20, 24, 10**6)
    b = box(box(blank(), 5, 9, 5, 9, 2), 20, 24, 20, 24, 1)
    lineage, maps = link_islands([a, b], [0, 1])
    assert lineage.events.empty
    assert np.array_equal(maps[0], maps[1])


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda t: t.add(np.zeros((5, 5)), 0), TypeError, "integer"),
        (lambda t: t.add(-np.ones((5, 5), np.int32), 0), ValueError, "negative"),
        (lambda t: (t.add(blank((5, 5)), 1), t.add(blank((5, 5)), 1)), ValueError, "increase"),
        (lambda t: (t.add(blank((5, 5)), 1), t.add(blank((6, 5)), 2)), ValueError, "reference grid"),
        (lambda t: t.add(blank((5, 5)), 0, valid=np.ones((5, 5), np.uint8)), TypeError, "valid"),
    ],
)
def test_tracker_rejects_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call(IslandTracker())


def test_tracker_rejects_bad_options():
    with pytest.raises(ValueError, match="min_overlap_fraction"):
        IslandTracker(min_overlap_fraction=2)
    with pytest.raises(ValueError, match="link_tolerance_um"):
        IslandTracker(link_tolerance_um=-1)
    with pytest.raises(TypeError, match="region"):
        IslandTracker(region=np.ones((4, 4)))
    with pytest.raises(ValueError, match="one time per frame"):
        link_islands([blank()], [0, 1])


def test_config_section_matches_the_tracker_defaults():
    cfg = TrackConfig()
    tracker = IslandTracker(link_tolerance_um=cfg.link_tolerance_um, min_overlap_fraction=cfg.min_overlap_fraction)
    assert tracker.min_overlap_fraction == 0.05
    phases = np.zeros((6, 6), np.uint8)
    phases[1:3, 1:3] = 3
    assert label_islands(phases, min_island_area_um2=cfg.min_island_area_um2, smooth_um=cfg.smooth_um).max() == 1


def test_tables_have_the_documented_columns():
    a = box(blank(), 5, 9, 5, 9, 1)
    lineage, _ = link_islands([a, blank()], [0, 1])
    assert list(lineage.islands.columns) == list(ISLAND_COLUMNS)
    assert list(lineage.events.columns) == list(EVENT_COLUMNS)


# ---------------------------------------------------------------------------
# statistics and kinetics


def test_interval_statistics_known_values():
    # 100x100 µm frame (1 µm px), 10 h apart: island 1 keeps 50 of its 100 µm², island 2 dissolves,
    # island 3 forms.
    a = box(box(np.zeros((100, 100), np.int32), 10, 20, 10, 20, 1), 50, 55, 50, 55, 2)
    b = box(box(np.zeros((100, 100), np.int32), 15, 20, 10, 20, 1), 80, 84, 80, 90, 2)
    lineage, _ = link_islands([a, b], [0, 10], pixel_size_um=1.0)
    s = interval_statistics(lineage).iloc[0]
    assert s.n_formation == 1 and s.n_dissolution == 1 and s.n_continued == 1
    assert s.formation_rate_per_mm2_h == pytest.approx(1 / (0.01 * 10))
    assert s.dissolved_area_um2 == 25 and s.formed_area_um2 == 40
    assert s.reorganisation_index == pytest.approx(50 / 125)
    assert s.newly_covered_area_um2 == 40 and s.vanished_area_um2 == 75
    assert s.net_area_change_um2 == -35
    assert s.mean_island_area_before_um2 == 62.5 and s.median_island_area_after_um2 == 45
    rate2 = interval_statistics(lineage, region_area_um2=5000)["formation_rate_per_mm2_h"].item()
    assert rate2 == pytest.approx(1 / (0.005 * 10))
    with pytest.raises(ValueError, match="region_area_um2"):
        interval_statistics(lineage, region_area_um2=0)


def test_frame_statistics_and_size_distribution():
    a = box(box(np.zeros((100, 100), np.int32), 0, 10, 0, 10, 1), 50, 52, 50, 52, 2)
    lineage, _ = link_islands([a], [0], pixel_size_um=0.5)
    fs = frame_statistics(lineage).iloc[0]
    assert fs.n_islands == 2
    assert fs.island_area_um2 == pytest.approx(26)
    assert fs.area_fraction == pytest.approx(104 / 10000)
    assert fs.number_density_per_mm2 == pytest.approx(2 / 2500e-6)
    assert fs.median_area_um2 == pytest.approx(13)
    hist = size_distribution(lineage, bins=[0.5, 5, 50])
    assert hist["count"].tolist() == [1, 1]
    assert hist["fraction"].sum() == pytest.approx(1)


@pytest.mark.parametrize("k, n, f_max", [(1 / 200, 1.5, 0.05), (1 / 60, 0.8, 0.12), (1 / 500, 2.5, 0.3)])
def test_fit_kinetics_recovers_jmak_parameters(k, n, f_max):
    t = np.array([0, 24, 96, 300, 600, 845, 1055, 1500.0])
    f = f_max * (1 - np.exp(-((k * t) ** n)))
    fit = fit_kinetics(t, f)
    assert fit["k_per_h"] == pytest.approx(k, rel=1e-3)
    assert fit["n"] == pytest.approx(n, rel=1e-3)
    assert fit["f_max"] == pytest.approx(f_max, rel=1e-3)
    assert fit["r2"] == pytest.approx(1, abs=1e-6)
    assert fit["jmak_fitted"] == "k, n, f_max"


def test_fit_kinetics_with_few_frames_says_what_it_fitted():
    few = fit_kinetics([24, 96, 845], [0.01, 0.02, 0.04])
    assert few["jmak_fitted"] == "k, n (f_max fixed at 1)" and few["f_max"] == 1
    assert 0.9 < few["r2"] <= 1  # 3 frames, 2 parameters: one degree of freedom left
    exact = fit_kinetics([24, 96], [0.01, 0.02])
    assert exact["jmak_fitted"] == "k, n (f_max fixed at 1)" and np.isnan(exact["r2"])
    assert "exact fit" in exact["jmak_note"]
    one = fit_kinetics([24, 96], [0.0, 0.02])
    assert one["jmak_fitted"] == "none" and np.isnan(one["k_per_h"]) and "at least 2" in one["jmak_note"]


def test_fit_kinetics_power_law_of_mean_size():
    t = np.array([24, 96, 845, 1055.0])
    fit = fit_kinetics(t, [0.01, 0.02, 0.03, 0.031], mean_island_area_um2=3.0 * t ** (2 / 3))
    assert fit["size_exponent"] == pytest.approx(2 / 3)
    assert fit["size_prefactor_um2"] == pytest.approx(3.0)
    assert fit["size_r2"] == pytest.approx(1)
    assert "at least 2" in fit_kinetics([0, 24], [0, 0.01], mean_island_area_um2=[0, 1.0])["size_note"]


@pytest.mark.parametrize(
    "t, f, match",
    [([0, 1], [0.1], "same length"), ([-1, 1], [0, 0.1], "times_h"), ([0, 1], [0, 5], "fraction")],
)
def test_fit_kinetics_rejects_bad_input(t, f, match):
    with pytest.raises(ValueError, match=match):
        fit_kinetics(t, f)


# ---------------------------------------------------------------------------
# event map and exports


def test_event_map_marks_each_event_type_in_its_colour():
    # Island 1 (centre x=y=100) and island 2 (x=y=200) dissolve; a new island forms at x=200, y=100.
    a = box(box(blank((300, 300)), 95, 105, 95, 105, 1), 195, 205, 195, 205, 2)
    b = box(blank((300, 300)), 95, 105, 195, 205, 1)
    lineage, maps = link_islands([a, b], [0, 1])
    rgb = event_map(np.full((300, 300), 0.5, np.float32), maps[0], maps[1], lineage.events)
    assert rgb.shape == (300, 300, 3) and rgb.dtype == np.uint8
    red = (rgb[..., 0] > 200) & (rgb[..., 1] < 80) & (rgb[..., 2] < 80)
    green = (rgb[..., 1] > 180) & (rgb[..., 0] < 80) & (rgb[..., 2] < 80)
    for cx, cy in [(100, 100), (200, 200)]:  # a red ring around each dissolved island, none inside
        assert red[cy - 25 : cy + 25, cx - 25 : cx + 25].sum() > 40
        assert not red[cy - 3 : cy + 3, cx - 3 : cx + 3].any()
    assert green[80:120, 180:220].sum() > 20  # square at the formation
    assert not red[80:120, 180:220].any()
    cyan = (rgb[..., 2] > 200) & (rgb[..., 1] > 180) & (rgb[..., 0] < 50)
    assert cyan[95:105, 195:205].any()  # the later frame's island is outlined
    plain = event_map(np.full((300, 300), 0.5), maps[0], maps[0], lineage.events.iloc[:0])
    plain_red = (plain[..., 0] > 200) & (plain[..., 1] < 80)
    assert not plain_red[75:225, 75:225].any()  # no events: no marks (the legend sits in a corner)


def test_event_map_indexed_draws_the_known_events_in_palette_colours():
    from semtrack.track import _outline

    # Island 1 dissolves, 2 and 3 coalesce, 4 splits in two, and one island forms; all far from the legend.
    a = box(blank((400, 400)), 150, 170, 60, 80, 1)
    a = box(box(a, 150, 170, 150, 170, 2), 150, 170, 175, 195, 3)
    a = box(a, 250, 270, 100, 160, 4)
    b = box(box(blank((400, 400)), 150, 170, 150, 195, 5), 250, 270, 100, 125, 6)
    b = box(box(b, 250, 270, 135, 160, 7), 300, 320, 300, 320, 8)
    lineage, maps = link_islands([a, b], [0, 1])
    assert sorted(lineage.events["event"]) == ["coalescence", "dissolution", "formation", "split"]
    image = np.random.default_rng(7).integers(0, 256, (400, 400)).astype(np.uint8)
    indices, palette = event_map_indexed(image, maps[0], maps[1], lineage.events)
    assert indices.shape == (400, 400) and indices.dtype == np.uint8 and palette.shape == (256, 3)
    # The RGB map is the palette's colours, pixel for pixel.
    rgb = event_map(image, maps[0], maps[1], lineage.events)
    np.testing.assert_array_equal(rgb, palette[indices])
    colour = {tuple(int(v) for v in c): i for i, c in enumerate(palette) if len(set(c)) > 1}
    cyan, red = colour[(0, 220, 255)], colour[(255, 40, 40)]
    green, magenta, amber = colour[(40, 220, 40)], colour[(255, 60, 255)], colour[(255, 200, 0)]
    # The frame is grey (within one level of 255) except where outlines, marks and the legend are drawn.
    greys = indices < 244
    far = np.ones((400, 400), bool)
    far[:120] = False  # the legend's corner
    assert np.all(np.abs(palette[indices[greys & far], 0].astype(int) - image[greys & far]) <= 1)
    assert np.all(palette[:244, 0] == palette[:244, 1]) and np.all(np.diff(palette[:244, 0].astype(int)) > 0)
    # Outlines: exactly the islands' 4-connected boundaries, in each kind's colour (marks may cover a few pixels).
    after_edge, before_edge = _outline(maps[1]), _outline(maps[0])
    ids_after = maps[1].ravel()
    outline = {
        cyan: after_edge[ids_after[after_edge] == maps[1][310, 310]],
        magenta: after_edge[ids_after[after_edge] == maps[1][160, 170]],
        amber: after_edge[np.isin(ids_after[after_edge], [maps[1][260, 110], maps[1][260, 150]])],
        red: before_edge[maps[0].ravel()[before_edge] == maps[0][160, 70]],
    }
    flat = indices.ravel()
    marks = {red, green, magenta, amber}
    for index, where in outline.items():
        assert np.mean(flat[where] == index) > 0.6
        assert np.all(np.isin(flat[where], [index, *marks]))
    # No outline colour off the outlines: the cyan ones are the formed island's only.
    np.testing.assert_array_equal(np.flatnonzero(flat == cyan), np.sort(outline[cyan][flat[outline[cyan]] == cyan]))
    # Marks: a red ring around the dissolved island, none inside it; a green square around the new one.
    assert np.count_nonzero(indices[130:190, 40:100] == red) > len(outline[red])
    assert not np.any(indices[155:165, 65:75] == red)
    assert np.count_nonzero(indices[290:330, 290:330] == green) > 40
    assert not np.any(indices[305:315, 305:315] == green)


@pytest.mark.parametrize("shape", [(50, 37), (1, 9), (9, 1), (1, 1), (0, 4)])
def test_outline_is_the_island_pixels_with_a_differing_4_neighbour(shape):
    from semtrack.track import _outline

    labels = np.random.default_rng(8).integers(0, 3, shape).astype(np.int32)
    padded = np.pad(labels, 1, constant_values=-1)  # outside the frame is no neighbour: never differs
    centre = padded[1:-1, 1:-1]
    differs = np.zeros(shape, bool)
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        neighbour = padded[1 + dy : padded.shape[0] - 1 + dy, 1 + dx : padded.shape[1] - 1 + dx]
        differs |= (neighbour != centre) & (neighbour != -1)
    np.testing.assert_array_equal(_outline(labels), np.flatnonzero(differs & (labels > 0)))


def test_event_map_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        event_map(np.zeros((10, 10)), blank((10, 10)), blank((11, 10)), link_islands([blank()], [0])[0].events)


def _merge_and_split_lineage():
    a = box(box(box(blank(), 5, 9, 5, 9, 1), 5, 9, 12, 16, 2), 25, 30, 5, 30, 3)
    b = box(box(box(blank(), 5, 9, 5, 16, 1), 25, 30, 5, 15, 2), 25, 30, 20, 30, 3)
    return link_islands([a, b, b], [24, 96, 845])


def test_napari_tracks_have_one_row_per_island_and_merge_parents():
    lineage, _ = _merge_and_split_lineage()
    data, graph = to_napari_tracks(lineage)
    assert data.shape == (len(lineage.islands), 4)
    assert graph == {4: [1, 2], 5: [3], 6: [3]}
    rows = data[data[:, 0] == 4]
    assert rows[:, 1].tolist() == [1, 2]
    assert rows[0, 2:].tolist() == pytest.approx([6.5, 10.0])  # y, x


def test_geff_round_trip(tmp_path):
    geff = pytest.importorskip("geff")
    lineage, _ = _merge_and_split_lineage()
    out = write_geff(lineage, tmp_path / "islands.geff")
    graph, metadata = geff.read(out)
    assert graph.number_of_nodes() == len(lineage.islands)
    # continuations 1->1 (frame 1->2) for 4, 5, 6, plus lineage edges 1->4, 2->4, 3->5, 3->6
    kinds = sorted(d["kind"] for _, _, d in graph.edges(data=True))
    assert kinds == [0, 0, 0, 1, 1, 2, 2]
    assert metadata.track_node_props == {"tracklet": "island_id"}
    write_geff(lineage, out)  # overwriting works


# ---------------------------------------------------------------------------
# scoring


def _events(rows):
    return pd.DataFrame(rows, columns=["frame_from", "frame_to", "event", "x_px", "y_px"])


def test_score_events_matches_by_type_frame_pair_and_distance():
    true = _events(
        [
            (0, 1, "formation", 10, 10),
            (0, 1, "formation", 12, 10),
            (1, 2, "dissolution", 50, 50),
            (0, 1, "split", 30, 30),
        ]
    )
    pred = _events(
        [
            (0, 1, "formation", 11, 10),
            (0, 1, "formation", 11.5, 10),
            (0, 1, "formation", 11, 11),
            (0, 1, "dissolution", 50, 50),
            (0, 1, "coalescence", 30, 30),
        ]
    )
    s = score_events(pred, true, max_distance_px=2).set_index("event")
    assert s.loc["formation", ["tp", "fp", "fn"]].tolist() == [2, 1, 0]
    assert s.loc["dissolution", ["tp", "fp", "fn"]].tolist() == [0, 1, 1]  # wrong frame pair
    assert s.loc["split", "recall"] == 0 and np.isnan(s.loc["split", "precision"])
    assert s.loc["all", "tp"] == 2 and s.loc["all", "n_true"] == 4
    assert score_events(pred, true, max_distance_px=0.1).set_index("event").loc["formation", "tp"] == 0


def test_area_balance_detects_a_lost_island():
    lineage, _ = _merge_and_split_lineage()
    assert area_balance(lineage.islands, lineage.events)["balanced"].all()
    lost = lineage.islands.drop(lineage.islands.query("frame == 1 and island_id == 5").index)
    bal = area_balance(lost, lineage.events)
    assert not bal["balanced"].all()
    assert bal.loc[0, "residual_after_um2"] == 0 and bal.loc[1, "residual_after_um2"] == 50


def test_linking_metrics_counts_broken_links():
    a = box(box(blank(), 5, 9, 5, 9, 1), 20, 24, 20, 24, 2)
    swapped = np.where(a == 1, 7, a)  # predicted: island 1 got a new id in frame 1
    perfect = linking_metrics([a, a, a], [a, a, a]).set_index("kind")
    assert perfect.loc["continuation", ["tp", "fp", "fn"]].tolist() == [4, 0, 0]
    assert perfect.loc["detection", "score"] == 1
    broken = linking_metrics([a, swapped, swapped], [a, a, a]).set_index("kind")
    assert broken.loc["continuation", ["tp", "fp", "fn"]].tolist() == [3, 0, 1]
    assert broken.loc["continuation", "score"] == pytest.approx(1 - 1.5 / 6)
    assert broken.loc["detection", "tp"] == 6


# ---------------------------------------------------------------------------
# synthetic series with exact truth


@pytest.mark.parametrize("seed", [0, 3])
def test_synthetic_series_events_and_counts_match_truth(seed):
    from semtrack import synth

    s = synth.make_series(shape=(256, 320), n_frames=4, seed=seed, n_islands=12)
    region = s.analysed_region()
    labels = [label_islands(p, pixel_size_um=s.pixel_size_um) for p in s.phases_ref]
    lineage, maps = link_islands(labels, s.times_h, pixel_size_um=s.pixel_size_um, region=region)
    scores = score_events(lineage.events, s.events, max_distance_px=1.0 / s.pixel_size_um).set_index("event")
    present = scores.loc[list(scores.index[:4])].query("n_true > 0")
    assert len(present) >= 2
    assert (present["precision"] >= 0.9).all() and (present["recall"] >= 0.9).all()
    truth_counts = s.truth_frame_table()["n_islands"].to_numpy()
    assert np.all(np.abs(lineage.frames["n_islands"].to_numpy() - truth_counts) <= 0.05 * truth_counts)
    graph = {int(r.island_id): [int(p) for p in r.parents.split(";")] for r in s.islands.itertuples() if r.parents}
    links = linking_metrics(maps, s.islands_ref, predicted_graph=lineage.graph, true_graph=graph).set_index("kind")
    assert links.loc["links", "f1"] >= 0.9
    assert area_balance(lineage.islands, lineage.events)["balanced"].all()
