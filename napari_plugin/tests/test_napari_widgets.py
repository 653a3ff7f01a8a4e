"""The dock widgets on a small synthetic series: each step adds the layers the API's results say it
should, the whole GUI workflow reproduces :func:`semtrack.pipeline.run`, and Export writes the
output contract whose events match the Tracks graph."""

from __future__ import annotations

from pathlib import Path

import napari_semtrack._common as common
import numpy as np
import pandas as pd
import pytest
from napari.layers import Labels, Points, Tracks
from napari_semtrack import ExportWidget, GrainsWidget, RegisterWidget, SegmentWidget, TrackWidget
from napari_semtrack._common import EVENT_COLORS, PHASE_COLORS, config_form
from napari_semtrack._widgets import marker_from_shapes

from semtrack import pipeline, register, segment
from semtrack.config import OUTSIDE, Config, GrainsConfig, RegisterConfig, SegmentConfig, TrackConfig
from semtrack.write import phase_map_path, read_label_map

TIMEOUT_MS = 180_000
#: Where tests leave files worth looking at (screenshots); gitignored.
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def run_step(qtbot, widget):
    """Run a widget's step and wait for it; fail with the widget's error message."""
    with qtbot.waitSignal(widget.completed, timeout=TIMEOUT_MS) as blocker:
        if widget.run() is None:
            pytest.fail(f"{type(widget).__name__} refused to start: {widget.last_error}")
    assert widget.last_error is None, f"{type(widget).__name__} failed: {widget.last_error}"
    assert blocker.args[0] is not None
    return blocker.args[0]


def dock(viewer, widget_type):
    widget = widget_type(viewer)
    viewer.window.add_dock_widget(widget, name=widget_type.__name__)
    return widget


@pytest.fixture
def opened(viewer, series_folder):
    [layer] = viewer.open(str(series_folder), plugin="napari-semtrack")
    return viewer, layer


@pytest.fixture
def errors(monkeypatch):
    """Messages the widgets sent to napari's error notifications."""
    shown: list[str] = []
    monkeypatch.setattr(common, "show_error", shown.append)
    return shown


def rgba(color: str) -> np.ndarray:
    from napari.utils.colormaps.standardize_color import transform_color

    return transform_color(color)[0]


def graph_from_events(events: pd.DataFrame) -> dict[int, list[int]]:
    """Child -> parents for every coalescence and split, as events.csv records them."""
    graph: dict[int, set[int]] = {}
    for _, row in events[events["event"].isin(["coalescence", "split"])].iterrows():
        before = [int(v) for v in str(row["islands_before"]).split(";") if v]
        after = [int(v) for v in str(row["islands_after"]).split(";") if v]
        for child in after:
            graph.setdefault(child, set()).update(before)
    return {child: sorted(parents) for child, parents in graph.items()}


def test_forms_follow_the_config_defaults_and_descriptions():
    form = config_form(RegisterConfig, ["model", "reference", "min_score"])
    assert form["model"].value == Config().registration.model
    assert list(form["model"].choices) == ["translation", "rigid", "similarity", "affine"]
    assert form["min_score"].value == pytest.approx(RegisterConfig().min_score)
    assert (form["min_score"].min, form["min_score"].max) == (-1, 1)
    assert form["min_score"].tooltip == RegisterConfig.model_fields["min_score"].description
    track_form = config_form(TrackConfig, ["min_island_area_um2"])
    assert track_form["min_island_area_um2"].value == pytest.approx(TrackConfig().min_island_area_um2)
    assert config_form(GrainsConfig, ["split_touching"])["split_touching"].value is True
    assert config_form(SegmentConfig, ["se_relief"])["se_relief"].value is SegmentConfig().se_relief


@pytest.mark.parametrize(
    ("scale", "rectangle", "expected"),
    [
        (1.0, [[10, 20], [10, 60], [40, 60], [40, 20]], (20, 10, 61, 41)),
        # Shapes drawn in world units (µm) on a calibrated image map back to pixels.
        (0.05, [[1.0, 2.0], [1.0, 3.0], [2.0, 3.0], [2.0, 2.0]], (40, 20, 61, 41)),
    ],
)
def test_marker_from_shapes_in_image_pixels(scale, rectangle, expected):
    from napari.layers import Image, Shapes

    image = Image(np.zeros((3, 100, 120), np.float32), scale=(1, scale, scale))
    shapes = Shapes([np.array(rectangle, float)], shape_type="rectangle")
    assert marker_from_shapes(shapes, image) == expected


def test_marker_outside_the_image_is_refused():
    from napari.layers import Image, Shapes

    image = Image(np.zeros((3, 50, 50), np.float32))
    with pytest.raises(ValueError, match="outside the image"):
        marker_from_shapes(Shapes([np.array([[100, 100], [100, 120], [120, 120], [120, 100]], float)]), image)
    with pytest.raises(ValueError, match="draw a rectangle"):
        marker_from_shapes(Shapes(), image)


def test_workflow_reproduces_the_pipeline(opened, qtbot, tmp_path):
    viewer, raw = opened
    series = raw.metadata["semtrack"]["series"]
    expected = pipeline.run(series)
    n = len(series)

    # Register (auto marker, default model): same transforms, stack and region as the API.
    reg = dock(viewer, RegisterWidget)
    reg.image.value = raw
    run_step(qtbot, reg)
    registered = viewer.layers[f"{raw.name} registered"]
    info = registered.metadata["semtrack"]
    np.testing.assert_allclose(info["registration"].matrices, expected.registration.matrices, atol=1e-9)
    np.testing.assert_array_equal(info["region"], expected.region)
    ref_shape = series.frames[0].shape
    for i in range(n):
        frame = register.resample(series.image(i), expected.registration.frames[i].matrix, ref_shape)
        np.testing.assert_allclose(registered.data[i], frame, equal_nan=True, atol=1e-6)
    np.testing.assert_allclose(registered.scale, raw.scale)
    assert len(reg.quality) == n
    np.testing.assert_allclose(reg.quality["score"], expected.registration.scores)
    assert "marker used" in viewer.layers

    # Segment (unsupervised): the pipeline's phase maps and fractions, four fixed colours.
    seg = dock(viewer, SegmentWidget)
    seg.image.value = registered
    run_step(qtbot, seg)
    phases = viewer.layers["phases"]
    assert isinstance(phases, Labels)
    assert phases.data.dtype == np.uint8
    np.testing.assert_array_equal(phases.data, np.stack(expected.phase_maps))
    for col in ("frac_pore", "frac_glass", "frac_nasicon", "frac_na3po4", "glass_fraction"):
        np.testing.assert_allclose(seg.fractions[col], expected.frames[col], atol=1e-12)
    colormap = phases.colormap
    for code, name in enumerate(("pore", "glass", "nasicon", "na3po4")):
        np.testing.assert_allclose(colormap.color_dict[code], rgba(PHASE_COLORS[name]))
    assert colormap.color_dict[OUTSIDE][3] == 0

    # Grains: the pipeline's per-grain table and ASTM numbers.
    grn = dock(viewer, GrainsWidget)
    grn.phases.value = phases
    run_step(qtbot, grn)
    grain_layer = viewer.layers["grains"]
    assert grain_layer.data.shape == phases.data.shape
    pd.testing.assert_frame_equal(grn.grains.reset_index(drop=True), expected.grains.reset_index(drop=True))
    for col in ("grain_count", "astm_g_planimetric", "astm_g_intercept"):
        np.testing.assert_allclose(grn.summary[col], expected.frames[col], equal_nan=True)
    # one label per row of the grain table, in every frame
    for i in range(n):
        ids = set(np.unique(grain_layer.data[i]).tolist()) - {0}
        assert ids == set(expected.grains.loc[expected.grains["frame"] == i, "grain_id"].astype(int))

    # Track: persistent island maps, Tracks with the lineage graph, events as coloured points.
    trk = dock(viewer, TrackWidget)
    trk.phases.value = phases
    run_step(qtbot, trk)
    islands = viewer.layers["islands"]
    np.testing.assert_array_equal(islands.data, np.stack(expected.island_maps))
    assert isinstance(viewer.layers["island events"], Points)
    pd.testing.assert_frame_equal(trk.events, expected.events.reset_index(drop=True))
    points = viewer.layers["island events"]
    assert len(points.data) == len(expected.events)
    for color, event in zip(points.face_color, expected.events["event"], strict=True):
        np.testing.assert_allclose(color, rgba(EVENT_COLORS.get(event, "#ffffff")))
    if len(expected.islands):
        tracks = viewer.layers["island tracks"]
        assert isinstance(tracks, Tracks)
        assert {int(k): sorted(int(p) for p in v) for k, v in tracks.graph.items()} == {
            int(k): sorted(v) for k, v in expected.lineage.graph.items()
        }
        assert set(np.unique(tracks.data[:, 0]).astype(int)) == set(expected.islands["island_id"].astype(int))

    # Screenshot after the Track step: an artifact for humans, and it must show something.
    viewer.window.resize(1600, 1000)
    viewer.dims.set_point(0, n - 1)
    viewer.reset_view()
    ARTIFACTS.mkdir(exist_ok=True)
    shot = viewer.screenshot(path=str(ARTIFACTS / "napari_track.png"), canvas_only=True, flash=False)
    assert (ARTIFACTS / "napari_track.png").stat().st_size > 10_000
    rgb = shot[..., :3].reshape(-1, 3)
    assert rgb.std() > 10
    assert len(np.unique(rgb, axis=0)) > 50

    # Export: the output contract, with events matching the Tracks graph shown.
    out = tmp_path / "out"
    exp = dock(viewer, ExportWidget)
    exp.source.value = islands
    exp.out_dir.value = out
    assert exp.report.value is True  # the default of ReportConfig.html
    result = run_step(qtbot, exp)
    for name in ("frames.csv", "grains.csv", "islands.csv", "events.csv", "intervals.csv", "run.json", "report.html"):
        assert (out / name).is_file(), name
    events = pd.read_csv(out / "events.csv")
    assert len(events) == len(expected.events)
    shown_graph = {int(k): sorted(int(p) for p in v) for k, v in (trk.result["graph"] or {}).items()}
    assert shown_graph, "the synthetic series should hold a coalescence or split"
    assert shown_graph == graph_from_events(events)
    pd.testing.assert_frame_equal(
        result.frames.drop(columns=["file"]), expected.frames.drop(columns=["file"]), check_exact=False
    )


def test_export_uses_the_choices_made_in_the_widgets(opened, qtbot):
    viewer, raw = opened
    reg = dock(viewer, RegisterWidget)
    reg.image.value = raw
    viewer.add_shapes(
        [np.array([[4, 4], [4, 90], [90, 90], [90, 4]], float) * raw.scale[-1]],
        shape_type="rectangle",
        name="my marker",
    )
    reg.marker.value = viewer.layers["my marker"]
    reg.options["model"].value = "rigid"
    run_step(qtbot, reg)
    registered = viewer.layers[f"{raw.name} registered"]
    assert registered.metadata["semtrack"]["registration"].marker == (4, 4, 91, 91)
    exp = dock(viewer, ExportWidget)
    config = exp.config_for(registered)
    assert config.registration.model == "rigid"
    assert config.registration.marker == (4, 4, 91, 91)
    assert config.segment.method == Config().segment.method
    # Grains and Track both branch from the phases layer: their choices are merged for the run.
    info = registered.metadata["semtrack"]
    viewer.add_labels(
        np.zeros((2, 4, 4), np.int32),
        name="g",
        metadata={"semtrack": {**info, "config": {"grains": {"min_grain_area_um2": 0.7}}}},
    )
    viewer.add_labels(
        np.zeros((2, 4, 4), np.int32),
        name="t",
        metadata={"semtrack": {**info, "config": {"track": {"link_tolerance_um": 0.9}}}},
    )
    viewer.add_labels(
        np.zeros((2, 4, 4), np.int32),
        name="other series",
        metadata={"semtrack": {"series": object(), "config": {"track": {"min_overlap_fraction": 0.5}}}},
    )
    merged = exp.config_for(viewer.layers["t"])
    assert merged.grains.min_grain_area_um2 == 0.7
    assert merged.track.link_tolerance_um == 0.9
    assert merged.track.min_overlap_fraction == Config().track.min_overlap_fraction
    assert merged.registration.marker == (4, 4, 91, 91)


def test_trainable_segmentation_from_scribbles(opened, qtbot, synthetic, tmp_path):
    if not hasattr(segment, "PixelClassifier"):
        pytest.skip("semtrack.segment.PixelClassifier not available yet")
    viewer, raw = opened
    reg = dock(viewer, RegisterWidget)
    reg.image.value = raw
    run_step(qtbot, reg)
    registered = viewer.layers[f"{raw.name} registered"]
    seg = dock(viewer, SegmentWidget)
    seg.image.value = registered
    seg.add_scribbles_layer()
    scribbles = viewer.layers["scribbles"]
    assert scribbles.data.shape == registered.data.shape
    assert seg.method.value == "train on scribbles"
    seg.segment_options["se_relief"].value = True  # reaches the classifier
    # Paint every 7th truly-known pixel of frame 0 (truth code k -> scribble k + 1).
    truth = synthetic.phases_ref[0]
    paint = np.zeros(truth.shape, np.uint8)
    sparse = np.zeros(truth.shape, bool)
    sparse[::7, ::7] = True
    keep = sparse & (truth != OUTSIDE) & registered.metadata["semtrack"]["region"]
    paint[keep] = truth[keep] + 1
    scribbles.data[0] = paint
    run_step(qtbot, seg)
    phases = viewer.layers["phases"]
    classifier = phases.metadata["semtrack"]["classifier"]
    assert classifier.se_relief
    image = registered.data[1]
    valid = registered.metadata["semtrack"]["region"] & np.isfinite(image)
    np.testing.assert_array_equal(phases.data[1], classifier.predict(image, valid=valid))
    inside = (truth != OUTSIDE) & valid
    assert np.mean(phases.data[0][inside] == truth[inside]) > 0.8
    # Export keeps the classifier trained on screen with the results and segments with it.
    exp = dock(viewer, ExportWidget)
    assert exp.config_for(phases).segment.method == "classifier"
    exp.source.value = phases
    exp.out_dir.value = tmp_path / "out"
    exp.report.value = False
    result = run_step(qtbot, exp)
    assert result.config.segment.classifier_path == str(tmp_path / "out" / "pixel_classifier.pkl")
    assert (tmp_path / "out" / "pixel_classifier.pkl").is_file()
    for i in range(len(phases.data)):
        np.testing.assert_array_equal(read_label_map(phase_map_path(tmp_path / "out", i)), phases.data[i])


def test_errors_are_notified_with_the_api_message(opened, qtbot, errors, tmp_path):
    viewer, raw = opened
    seg = dock(viewer, SegmentWidget)
    # No registered stack yet: refused on the GUI thread with a message saying what to do.
    assert seg.run() is None
    assert errors and "registered" in errors[-1]
    reg = dock(viewer, RegisterWidget)
    reg.image.value = raw
    viewer.add_shapes(
        [np.array([[0, 0], [0, 5], [5, 5], [5, 0]], float) * raw.scale[-1]], shape_type="rectangle", name="tiny"
    )
    reg.marker.value = viewer.layers["tiny"]
    with qtbot.waitSignal(reg.completed, timeout=TIMEOUT_MS) as blocker:
        reg.run()
    assert blocker.args[0] is None
    assert isinstance(reg.last_error, ValueError)
    assert "16x16" in errors[-1] and errors[-1] == str(reg.last_error)
    assert f"{raw.name} registered" not in viewer.layers
    assert reg.run_button.isEnabled()


def test_cancel_stops_the_step_without_adding_layers(opened, qtbot):
    viewer, raw = opened
    reg = dock(viewer, RegisterWidget)
    reg.image.value = raw
    with qtbot.waitSignal(reg.completed, timeout=TIMEOUT_MS) as blocker:
        reg.run()
        reg.cancel()
    assert blocker.args[0] is None
    assert reg.status.text() == "cancelled"
    assert f"{raw.name} registered" not in viewer.layers
    assert reg.run_button.isEnabled() and not reg.cancel_button.isEnabled()


def test_api_errors_reach_the_notification_unchanged(opened, qtbot, errors, tmp_path):
    viewer, raw = opened
    reg = dock(viewer, RegisterWidget)
    reg.image.value = raw
    run_step(qtbot, reg)
    seg = dock(viewer, SegmentWidget)
    seg.image.value = viewer.layers[f"{raw.name} registered"]
    bogus = tmp_path / "not_a_classifier.pkl"
    bogus.write_bytes(b"this is not a classifier")
    seg.method.value = "classifier file"
    seg.classifier_file.value = bogus
    with qtbot.waitSignal(seg.completed, timeout=TIMEOUT_MS) as blocker:
        seg.run()
    assert blocker.args[0] is None
    from semtrack.errors import SemtrackError

    assert isinstance(seg.last_error, SemtrackError)
    assert errors[-1] == str(seg.last_error)
    assert "not_a_classifier.pkl" in errors[-1]
    assert "phases" not in viewer.layers


@pytest.mark.parametrize(
    ("title", "widget_type"),
    [
        ("1 Register", RegisterWidget),
        ("2 Segment", SegmentWidget),
        ("3 Grains", GrainsWidget),
        ("4 Track", TrackWidget),
        ("5 Export", ExportWidget),
    ],
)
def test_manifest_widgets_open_from_the_plugins_menu(viewer, title, widget_type):
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-semtrack", title)
    assert isinstance(widget, widget_type)
    assert widget.run_button.isEnabled() and not widget.cancel_button.isEnabled()
