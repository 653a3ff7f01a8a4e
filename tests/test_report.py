"""Tests of semtrack.report: the HTML report of an output folder.

The output folders are built by hand here (synthetic phase maps, previews and
tables written with pandas), so these tests do not depend on the pipeline.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import tifffile
from matplotlib.image import imread
from scipy import ndimage as ndi
from scipy.spatial import cKDTree
from skimage.measure import label, regionprops_table

import semtrack.report as report_module
from semtrack.config import OUTSIDE
from semtrack.errors import OutputError
from semtrack.report import (
    PHASE_COLOURS,
    _block_mean,
    _event_counts,
    _jmak_curve,
    _jmak_fit,
    _load_outputs,
    _nice_step,
    _overlay_rgb,
    _panel_images,
    _table_html,
    _use_log_time,
    render,
)

TIMES_H = (24.0, 96.0, 845.0, 1055.0)
HEADINGS = (
    "Run summary",
    "Registration quality",
    "Frames with phase overlays",
    "Phase fractions vs time",
    "Glass fraction vs time",
    "Na3PO4 islands vs time",
    "Island events per interval",
    "Event maps",
    "Grain size distribution",
    "Tables",
)
BRIGHTNESS = {0: 0.08, 1: 0.5, 2: 0.82, 3: 0.3}  # pore, glass, NaSICON, Na3PO4 grey levels in BSE


def _phase_maps(shape, times_h, rng, *, bar_rows=12, margin=4):
    """NaSICON Voronoi grains with glass boundaries, pores, and Na3PO4 islands that grow then merge."""
    rows, cols = shape
    yy, xx = np.mgrid[:rows, :cols]
    seeds = rng.uniform((0, 0), (rows, cols), size=(max(8, rows * cols // 900), 2))
    _, grain_of = cKDTree(seeds).query(np.column_stack([yy.ravel(), xx.ravel()]))
    grains = grain_of.reshape(shape)
    boundary = ndi.morphological_gradient(grains, size=3) > 0
    base = np.where(ndi.binary_dilation(boundary, iterations=1), 1, 2).astype(np.uint8)
    for y, x in rng.uniform((0, 0), (rows, cols), size=(6, 2)):
        base[(yy - y) ** 2 + (xx - x) ** 2 < 9] = 0
    centres = rng.uniform((10, 10), (rows - 10, cols - 10), size=(10, 2))
    maps = []
    for i, t in enumerate(times_h):
        phases = base.copy()
        radius = 2.0 + 1.2 * np.log1p(t / 24.0)
        for k, (y, x) in enumerate(centres):
            if i == len(times_h) - 1 and k % 3 == 0:
                continue  # dissolved at the last time
            r = radius * (2.2 if i == len(times_h) - 1 and k % 3 == 1 else 1.0)  # agglomerates
            phases[(yy - y) ** 2 + (xx - x) ** 2 < r**2] = 3
        phases[:margin], phases[:, :margin], phases[:, -margin:] = OUTSIDE, OUTSIDE, OUTSIDE
        phases[rows - bar_rows - margin :] = OUTSIDE
        maps.append(phases)
    return maps, grains


def make_output_folder(
    folder: Path,
    *,
    shape=(192, 256),
    times_h=TIMES_H,
    calibrated=True,
    omit=(),
    preview_downsample=1,
    poor_frames=(),
    seed=0,
):
    """Write a small but complete semtrack output folder; ``omit`` lists contract names to leave out."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    pixel_size_um = 0.1 if calibrated else None
    px_area = pixel_size_um**2 if calibrated else 1.0
    maps, grains = _phase_maps(shape, times_h, rng)
    (folder / "labels").mkdir(exist_ok=True)
    (folder / "previews").mkdir(exist_ok=True)
    frame_rows, island_rows = [], []
    for i, (t, phases) in enumerate(zip(times_h, maps)):
        islands = label(phases == 3).astype(np.int32)
        if "labels" not in omit:
            tifffile.imwrite(folder / "labels" / f"phases_{i:03d}.tif", phases)
            tifffile.imwrite(folder / "labels" / f"islands_{i:03d}.tif", islands)
        grey = np.vectorize(BRIGHTNESS.get)(np.where(phases == OUTSIDE, 1, phases)).astype(float)
        grey = ndi.gaussian_filter(grey, 1.0) + rng.normal(0, 0.05, shape)
        preview = (np.clip(grey, 0, 1) * 255).astype(np.uint8)[::preview_downsample, ::preview_downsample]
        if "previews" not in omit:
            cv2.imwrite(str(folder / "previews" / f"frame_{i:03d}.png"), preview)
        inside = phases != OUTSIDE
        fractions = {
            name: float(np.mean(phases[inside] == code))
            for code, name in enumerate(("pore", "glass", "nasicon", "na3po4"))
        }
        row = {
            "frame": i,
            "file": f"sample_t{t:g}h.tif",
            "time_h": t,
            "dx_px": 3.0 * i,
            "dy_px": -2.0 * i,
            "rotation_deg": 0.1 * i,
            "scale": 1.0 + 0.001 * i,
            "reg_score": 0.3 if i in poor_frames else 0.95 - 0.02 * i,
            "reg_ok": i not in poor_frames,
        }
        for name, value in fractions.items():
            row[f"frac_{name}"] = value
            row[f"frac_{name}_ci_low"] = max(0.0, value - 0.01)
            row[f"frac_{name}_ci_high"] = min(1.0, value + 0.01)
        glass = fractions["glass"] / (fractions["glass"] + fractions["nasicon"])
        areas = np.bincount(islands.ravel())[1:] * px_area
        row |= {
            "glass_fraction": glass,
            "glass_fraction_ci_low": glass - 0.01,
            "glass_fraction_ci_high": glass + 0.01,
            "n_islands": int(islands.max()),
            "na3po4_area_um2": float(areas.sum()),
            "island_area_mean_um2": float(areas.mean()),
            "grain_count": int(grains.max() + 1),
            "grain_ecd_mean_um": 2.1,
            "grain_ecd_median_um": 1.9,
            "astm_g_planimetric": 14.2,
            "astm_g_intercept": 14.0,
            "pixel_size_um": pixel_size_um,
            "an_extra_column": "ignored",
        }
        frame_rows.append(row)
        for k, a in enumerate(areas):
            island_rows.append(
                {
                    "frame": i,
                    "time_h": t,
                    "island_id": k + 1,
                    "area_um2": a,
                    "x_px": 10.0 * k,
                    "y_px": 5.0,
                    "parents": "",
                }
            )
    props = pd.DataFrame(regionprops_table(grains + 1, properties=("label", "area", "bbox")))
    border = (
        (props["bbox-0"] == 0) | (props["bbox-1"] == 0) | (props["bbox-2"] == shape[0]) | (props["bbox-3"] == shape[1])
    )
    grain_table = pd.DataFrame(
        {
            "frame": 0,
            "grain_id": props["label"],
            "area_um2": props["area"] * px_area,
            "ecd_um": np.sqrt(4 * props["area"] * px_area / np.pi),
            "feret_max_um": 1.0,
            "feret_min_um": 1.0,
            "aspect_ratio": 1.0,
            "touches_border": border,
        }
    )
    events = pd.DataFrame(
        [
            {
                "frame_from": i - 1,
                "frame_to": i,
                "time_from_h": times_h[i - 1],
                "time_to_h": times_h[i],
                "event": event,
                "x_px": 20.0,
                "y_px": 30.0,
                "islands_before": "1;2",
                "islands_after": "3",
                "area_um2": 1.5,
            }
            for i in range(1, len(times_h))
            for event, n in (
                ("formation", i),
                ("coalescence", 2 * (i == len(times_h) - 1)),
                ("split", 1),
                ("dissolution", 3 * (i == len(times_h) - 1)),
            )
            for _ in range(n)
        ],
        columns=[
            "frame_from",
            "frame_to",
            "time_from_h",
            "time_to_h",
            "event",
            "x_px",
            "y_px",
            "islands_before",
            "islands_after",
            "area_um2",
        ],
    )
    intervals = _event_counts_by_hand(events, times_h)
    tables = {
        "frames.csv": pd.DataFrame(frame_rows),
        "grains.csv": grain_table,
        "islands.csv": pd.DataFrame(island_rows),
        "events.csv": events,
        "intervals.csv": intervals,
    }
    for name, table in tables.items():
        if name in omit:
            continue
        if not calibrated:
            table = table.rename(
                columns={
                    c: c.replace("_um2", "_px2").replace("_um", "_px").replace("_per_mm2", "_per_px2_x1e6")
                    for c in table.columns
                    if c != "pixel_size_um"
                }
            )
        table.to_csv(folder / name, index=False)
    if "event_maps" not in omit and len(times_h) > 1:
        (folder / "event_maps").mkdir(exist_ok=True)
        for i in range(1, len(times_h)):
            rgb = np.repeat((maps[i] * 60).astype(np.uint8)[..., None], 3, axis=2)
            cv2.circle(rgb, (40, 40), 12, (0, 0, 255), 2)
            cv2.imwrite(str(folder / "event_maps" / f"events_{i - 1:03d}_{i:03d}.png"), rgb)
    documents = {
        "transforms.json": {
            "reference": 0,
            "frames": [{"frame": i, "matrix": np.eye(3).tolist()} for i in range(len(times_h))],
        },
        # The flat layout semtrack.track.fit_kinetics writes.
        "kinetics.json": {
            "model": "f = f_max * (1 - exp(-(k t)^n))",
            "k_per_h": 0.001,
            "n": 1.0,
            "f_max": 0.004,
            "r2": 0.97,
            "jmak_note": "fitted",
            "size_model": "A = a * t^p",
            "size_prefactor_um2": 0.02,
            "size_exponent": 0.7,
            "size_r2": 0.9,
            "size_note": "fitted",
        },
        "run.json": {
            "semtrack_version": "0.1.0",
            "created": "2026-11-25T21:00:00+00:00",
            "inputs": [
                {"file": f"/data/sample/sample_t{t:g}h.tif", "sha256": f"{i:x}" * 64, "time_h": t}
                for i, t in enumerate(times_h)
            ],
            "pixel_size_um": pixel_size_um,
            "pixel_size_source": "zeiss" if calibrated else "uncalibrated",
            "length_unit": "um" if calibrated else "px",
            "config": {
                "registration": {"model": "similarity", "min_score": 0.5, "fail_score": 0.2},
                "quantify": {"confidence": 0.95},
            },
            "registration": {
                "marker": [0, 0, 40, 30],
                "marker_source": "auto",
                "model": "similarity",
                "strategy": "direct",
            },
            "warnings": ["frame 2: marker score 0.30 below 0.5"] if poor_frames else [],
            "preview_downsample": preview_downsample,
        },
    }
    for name, document in documents.items():
        if name not in omit:
            (folder / name).write_text(json.dumps(document), encoding="utf-8")
    return folder


def _event_counts_by_hand(events: pd.DataFrame, times_h) -> pd.DataFrame:
    rows = []
    for i in range(1, len(times_h)):
        sub = events[events["frame_to"] == i]
        row = {"frame_from": i - 1, "frame_to": i, "time_from_h": times_h[i - 1], "time_to_h": times_h[i]}
        row |= {f"n_{e}": int((sub["event"] == e).sum()) for e in ("formation", "coalescence", "split", "dissolution")}
        row |= {
            "formation_rate_per_mm2_h": 1.0,
            "dissolved_area_um2": 2.0,
            "newly_covered_area_um2": 3.0,
            "net_area_change_um2": 1.0,
            "reorganisation_index": 0.8,
        }
        rows.append(row)
    return pd.DataFrame(rows)


def _embedded_images(page: str) -> list[np.ndarray]:
    """Every image embedded in the page (PNG figures, JPEG event maps), decoded."""
    return [
        cv2.imdecode(np.frombuffer(base64.b64decode(payload), np.uint8), cv2.IMREAD_UNCHANGED)
        for payload in re.findall(r'src="data:image/(?:png|jpeg);base64,([^"]+)"', page)
    ]


def _section(page: str, key: str) -> str:
    match = re.search(rf'<section id="{key}">(.*?)</section>', page, flags=re.S)
    assert match, f"no section {key}"
    return match.group(1)


@pytest.fixture(scope="module")
def full_report(tmp_path_factory):
    folder = make_output_folder(tmp_path_factory.mktemp("full") / "out", poor_frames=(2,))
    path = render(folder, title="Sample A")
    return folder, path, path.read_text(encoding="utf-8")


def test_render_writes_report_with_every_section(full_report):
    folder, path, page = full_report
    assert path == folder / "report.html"
    assert "<title>Sample A</title>" in page
    for heading in HEADINGS:
        assert f"<h2>{heading}</h2>" in page
    # No section fell back to its one-line excuse on a complete folder.
    assert 'class="note"' not in page


def test_report_is_self_contained(full_report):
    _, _, page = full_report
    sources = re.findall(r'\bsrc="([^"]*)"', page)
    # figures as PNG, event maps as reduced JPEG
    assert sources and all(s.startswith(("data:image/png;base64,", "data:image/jpeg;base64,")) for s in sources)
    assert any(s.startswith("data:image/jpeg;base64,") for s in sources)
    assert re.findall(r'href="([^"]*)"', page) and all(h.startswith("#") for h in re.findall(r'href="([^"]*)"', page))
    for forbidden in ("<script", "<link", "url(", "@import", "http://", "https://"):
        assert forbidden not in page


def test_figures_written_and_not_blank(full_report):
    folder, _, page = full_report
    names = sorted(p.stem for p in (folder / "figures").glob("*.png"))
    assert names == sorted(
        ["registration", "overlays", "phase_fractions", "glass_fraction", "islands", "events", "grain_sizes"]
    )
    for path in (folder / "figures").glob("*.png"):
        image = imread(path)
        assert image.shape[0] > 100 and image.shape[1] > 100, path.name
        assert image[..., :3].std() > 0.02, path.name
    embedded = _embedded_images(page)
    # 7 figures + 3 event maps, each decodes to a non-uniform image.
    assert len(embedded) == 10
    assert all(image[..., :3].std() > 0 for image in embedded)
    # The figures in figures/ are the very ones embedded in the page.
    embedded_bytes = {base64.b64decode(p) for p in re.findall(r'base64,([^"]+)"', page)}
    assert all(p.read_bytes() in embedded_bytes for p in (folder / "figures").glob("*.png"))


def test_summary_lists_inputs_pixel_size_and_warnings(full_report):
    _, _, page = full_report
    summary = _section(page, "summary")
    assert "0.1 µm (source: zeiss)" in summary
    assert "1" * 64 in summary  # full sha256 of input 1
    assert "sample_t845h.tif" in summary
    assert "frame 2: marker score 0.30 below 0.5" in summary
    assert "min_score" in summary and "similarity" in summary


def test_poor_registration_frame_is_highlighted(full_report):
    _, _, page = full_report
    registration = _section(page, "registration")
    poor_rows = re.findall(r'<tr class="poor">(.*?)</tr>', registration)
    assert len(poor_rows) == 1
    assert re.match(r'<td class="num">2</td><td class="num">845</td>', poor_rows[0])
    assert "1 frame(s) flagged poor" in registration


def test_units_on_axes_and_tables_when_calibrated(full_report):
    _, _, page = full_report
    assert "mean ECD (µm)" in _section(page, "grains")
    assert "dissolved area (µm²)" in _section(page, "events")
    assert "uncalibrated" not in page
    islands = _section(page, "islands")
    assert "k (h⁻¹) = 0.001, n = 1, f<sub>max</sub> = 0.004, r² = 0.97 (fitted)" in islands
    assert "a (µm² h<sup>−p</sup>) = 0.02, p = 0.7" in islands


def test_uncalibrated_folder_says_px(tmp_path):
    folder = make_output_folder(tmp_path / "out", calibrated=False)
    page = render(folder).read_text(encoding="utf-8")
    assert "uncalibrated, px units" in _section(page, "summary")
    assert "µm" not in _section(page, "grains") and "mean ECD (px)" in _section(page, "grains")
    assert "dissolved area (px²)" in _section(page, "events")
    assert "areas in px²" in _section(page, "islands")
    assert 'class="note"' not in page


@pytest.mark.parametrize(
    "omit, expected",
    [
        (
            ("events.csv", "intervals.csv", "event_maps", "grains.csv", "kinetics.json"),
            {
                "events": "intervals.csv and events.csv are missing",
                "event-maps": "No event maps",
                "grains": "grains.csv is missing",
                "islands": "No kinetics fit: kinetics.json is missing",
            },
        ),
        # Only frames.csv: every other section says what it lacks.
        (
            (
                "run.json",
                "transforms.json",
                "kinetics.json",
                "labels",
                "previews",
                "grains.csv",
                "islands.csv",
                "events.csv",
                "intervals.csv",
                "event_maps",
            ),
            {"summary": "run.json is missing", "overlays": "No frame can be shown", "grains": "grains.csv is missing"},
        ),
    ],
)
def test_missing_pieces_still_render(tmp_path, omit, expected):
    folder = make_output_folder(tmp_path / "out", times_h=TIMES_H[:2], omit=omit)
    page = render(folder).read_text(encoding="utf-8")
    for heading in HEADINGS:
        assert f"<h2>{heading}</h2>" in page
    for key, message in expected.items():
        assert message in _section(page, key)
    # Sections that only need frames.csv are still drawn.
    for key in ("registration", "fractions", "glass", "islands"):
        assert "<img" in _section(page, key)


def test_event_counts_fall_back_to_events_csv(tmp_path):
    folder = make_output_folder(tmp_path / "out", omit=("intervals.csv",))
    counts = _event_counts(_load_outputs(folder))
    assert counts[["n_formation", "n_coalescence", "n_split", "n_dissolution"]].to_numpy().tolist() == [
        [1, 0, 1, 0],
        [2, 0, 1, 0],
        [3, 2, 1, 3],
    ]
    render(folder)
    assert (folder / "figures" / "events.png").is_file()


def test_no_grains_measured(tmp_path):
    folder = make_output_folder(tmp_path / "out", times_h=TIMES_H[:2])
    pd.DataFrame(columns=["frame", "grain_id", "area_um2", "ecd_um"]).to_csv(folder / "grains.csv", index=False)
    page = render(folder).read_text(encoding="utf-8")
    assert "No grains were measured" in _section(page, "grains")
    assert not (folder / "figures" / "grain_sizes.png").exists()


def test_one_frame_only(tmp_path):
    folder = make_output_folder(tmp_path / "out", times_h=(24.0,))
    page = render(folder).read_text(encoding="utf-8")
    assert "Only one frame" in _section(page, "events")
    assert "Only one frame" in _section(page, "event-maps")
    assert (folder / "figures" / "overlays.png").is_file()
    assert (folder / "figures" / "phase_fractions.png").is_file()


def test_stale_figures_removed_on_rerender(tmp_path):
    folder = make_output_folder(tmp_path / "out", times_h=TIMES_H[:2])
    render(folder)
    assert (folder / "figures" / "grain_sizes.png").is_file()
    (folder / "grains.csv").unlink()
    render(folder)
    assert not (folder / "figures" / "grain_sizes.png").exists()
    assert not list(folder.rglob("*.tmp*")), "temporary files left behind"


def test_rerender_is_byte_identical(tmp_path):
    folder = make_output_folder(tmp_path / "out", times_h=(0.0, 24.0))
    first = render(folder).read_bytes()
    assert render(folder).read_bytes() == first


def test_downsampled_previews(tmp_path):
    folder = make_output_folder(tmp_path / "out", times_h=TIMES_H[:2], preview_downsample=2)
    page = render(folder).read_text(encoding="utf-8")
    assert 'class="note"' not in _section(page, "overlays")
    assert imread(folder / "figures" / "overlays.png")[..., :3].std() > 0.02


def test_missing_frames_csv_raises_naming_folder(tmp_path):
    folder = make_output_folder(tmp_path / "run_xyz", omit=("frames.csv",))
    with pytest.raises(OutputError, match=r"run_xyz.*no frames\.csv"):
        render(folder)
    assert not (folder / "report.html").exists()


@pytest.mark.parametrize(
    "content, match",
    [("frame,file\n0,a.tif\n", "lacks the column"), ("frame,time_h\n", "no rows")],
)
def test_bad_frames_csv_raises(tmp_path, content, match):
    (tmp_path / "frames.csv").write_text(content)
    with pytest.raises(OutputError, match=match):
        render(tmp_path)


def test_not_a_folder_raises(tmp_path):
    with pytest.raises(OutputError, match="not a folder"):
        render(tmp_path / "nowhere")


def test_bad_time_scale_raises(tmp_path):
    with pytest.raises(ValueError, match="time_scale"):
        render(tmp_path, time_scale="logarithmic")


@pytest.mark.parametrize(
    "times, scale, expected",
    [
        ((24, 96, 845, 1055), "auto", True),
        ((0, 24, 96, 845, 1055), "auto", True),
        ((0, 1, 2, 4), "auto", False),
        ((24,), "auto", False),
        ((24, 96), "log", True),
        ((24, 96, 845, 1055), "linear", False),
    ],
)
def test_time_axis_scale_choice(times, scale, expected):
    assert _use_log_time(np.asarray(times, float), scale) is expected


@pytest.mark.parametrize(
    "kinetics",
    [
        {"k_per_h": 0.005, "n": 2.0, "f_max": 0.05, "r2": 0.9, "jmak_note": "fitted"},
        {"jmak": {"k": 0.005, "n": 2.0, "f_max": 0.05, "r2": 0.9}},
    ],
)
def test_jmak_fit_read_and_evaluated(kinetics):
    params, _ = _jmak_fit(kinetics)
    t = np.array([0.0, 100.0, 200.0, 1000.0])
    # (k t)^n = 0, 0.25, 1, 25
    np.testing.assert_allclose(_jmak_curve(params, t), 0.05 * (1 - np.exp(-np.array([0, 0.25, 1, 25]))))


@pytest.mark.parametrize(
    "kinetics, note",
    [
        (
            {"k_per_h": None, "n": None, "f_max": None, "jmak_note": "not fitted: 1 frame(s) with islands"},
            "not fitted: 1 frame(s) with islands",
        ),
        ({"jmak": None}, "did not converge"),
        ({}, "not in kinetics.json"),
    ],
)
def test_jmak_fit_absent(kinetics, note):
    params, message = _jmak_fit(kinetics)
    assert params is None and note in message


def test_unfitted_kinetics_say_why(tmp_path):
    folder = make_output_folder(tmp_path / "out", times_h=TIMES_H[:2])
    (folder / "kinetics.json").write_text(
        json.dumps(
            {
                "k_per_h": None,
                "n": None,
                "f_max": None,
                "r2": None,
                "jmak_note": "not fitted: 1 frame(s) with islands",
                "size_prefactor_um2": None,
                "size_exponent": None,
                "size_note": "not given",
            }
        )
    )
    islands = _section(render(folder).read_text(encoding="utf-8"), "islands")
    assert "No JMAK fit: not fitted: 1 frame(s) with islands." in islands
    assert "No size power-law fit: not given." in islands


def test_overlay_blends_phase_colours():
    grey = np.full((2, 3), 0.4, np.float32)
    phases = np.array([[0, 1, 2], [3, OUTSIDE, 3]], np.uint8)
    rgb = _overlay_rgb(grey, phases, alpha=0.5)
    assert rgb.shape == (2, 3, 3)
    magenta = np.array([int(PHASE_COLOURS[3][i : i + 2], 16) / 255 for i in (1, 3, 5)])
    np.testing.assert_allclose(rgb[1, 0], 0.5 * 0.4 + 0.5 * magenta, atol=1e-6)
    np.testing.assert_allclose(rgb[1, 0], rgb[1, 2])
    assert not np.allclose(rgb[0, 0], rgb[0, 1])
    # Outside the analysed region is dimmed to a neutral grey, not a phase colour.
    assert np.ptp(rgb[1, 1]) < 1e-6


@pytest.mark.parametrize("span, step", [(1024, 200), (102.4, 20), (300, 50), (7.0, 1)])
def test_reference_grid_step(span, step):
    assert _nice_step(span) == pytest.approx(step)


def test_broken_section_becomes_one_line_note(tmp_path, monkeypatch):
    def broken(*args):
        raise RuntimeError("kaput")

    monkeypatch.setattr(report_module, "_glass_section", broken)
    folder = make_output_folder(tmp_path / "out", times_h=(24.0, 96.0))
    page = render(folder).read_text(encoding="utf-8")
    assert "could not be drawn: RuntimeError: kaput" in _section(page, "glass")
    assert "<img" in _section(page, "fractions")


def test_negative_zero_and_missing_values_in_tables():
    df = pd.DataFrame({"a": [-0.0, np.nan], "b": ["x<y", None]})
    html_table = _table_html(df)
    assert ">0<" in html_table and ">-0<" not in html_table
    assert "x&lt;y" in html_table and html_table.count("–") == 2


@pytest.mark.parametrize(
    "label_shape, preview_shape, downsample, shape, factor",
    [
        ((100, 200), (50, 100), 2, (50, 100), 2),  # preview downsampled by run.json's factor
        ((100, 200), (100, 200), 1, (100, 200), 1),
        ((768, 1024), (768, 1024), 1, (384, 512), 2),  # shrunk for the panel
        ((1536, 2048), (768, 1024), 2, (384, 512), 4),
        ((768, 1024), None, 1, (384, 512), 2),  # labels only
        (None, (300, 400), 3, (300, 400), 3),  # preview only
    ],
)
def test_panel_images_share_one_grid(label_shape, preview_shape, downsample, shape, factor):
    phases = None if label_shape is None else (np.indices(label_shape).sum(axis=0) % 4).astype(np.uint8)
    grey = None if preview_shape is None else np.random.default_rng(0).random(preview_shape, dtype=np.float32)
    phases_out, grey_out, pixels = _panel_images(phases, grey, downsample)
    for out in (phases_out, grey_out):
        assert out is None or out.shape == shape
    assert pixels == factor
    if phases is not None:
        # Nearest-neighbour: label codes are kept, never averaged.
        np.testing.assert_array_equal(phases_out, phases[::pixels, ::pixels][: shape[0], : shape[1]])


@pytest.mark.parametrize("factor", [2, 3, 4, 16])
def test_block_mean_of_8bit_previews_is_the_exact_block_average(factor):
    grey = np.random.default_rng(factor).integers(0, 256, (5 * factor + 1, 8 * factor - 1)).astype(np.uint8)
    grey[:factor, :factor] = 255  # a full block at the top of the range: no overflow
    shrunk = _block_mean(grey, factor)
    assert shrunk.shape == (5, 7) and shrunk.dtype == np.float64 and shrunk[0, 0] == 255.0
    for r, c in [(0, 0), (4, 6), (2, 3)]:
        block = grey[r * factor : (r + 1) * factor, c * factor : (c + 1) * factor]
        assert shrunk[r, c] == int(block.astype(int).sum()) / factor**2


def test_long_series_show_a_bounded_number_of_frames_and_event_maps(tmp_path):
    from semtrack.report import _MAX_SHOWN, _spread

    picked = _spread(list(range(64)))
    assert len(picked) == _MAX_SHOWN and picked[0] == 0 and picked[-1] == 63
    assert picked == sorted(set(picked))
    times = tuple(24.0 * (k + 1) for k in range(_MAX_SHOWN + 4))
    folder = make_output_folder(tmp_path / "out", times_h=times)
    page = render(folder).read_text(encoding="utf-8")
    maps = _section(page, "event-maps")
    assert maps.count("data:image/jpeg") == _MAX_SHOWN
    assert f"{_MAX_SHOWN} of {len(times) - 1} event maps are shown" in maps
    assert f"{_MAX_SHOWN} of {len(times)} frames are shown" in _section(page, "overlays")


def test_large_event_maps_are_embedded_reduced(tmp_path):
    from semtrack.report import _THUMBNAIL_MAX_PX, _thumbnail_jpeg

    rgb = np.full((2000, 3000, 3), 90, np.uint8)
    cv2.circle(rgb, (1500, 1000), 300, (0, 0, 255), 40)  # a red ring (BGR) in the middle
    path = tmp_path / "events_000_001.png"
    cv2.imwrite(str(path), rgb)
    small = cv2.imdecode(np.frombuffer(_thumbnail_jpeg(path), np.uint8), cv2.IMREAD_COLOR)
    assert max(small.shape[:2]) == _THUMBNAIL_MAX_PX
    assert small.shape[0] / small.shape[1] == pytest.approx(2000 / 3000, abs=0.002)
    # the ring survives: red on its radius, grey in the centre
    centre, factor = np.array(small.shape[:2]) // 2, _THUMBNAIL_MAX_PX / 3000
    on_ring = small[centre[0], centre[1] + round(300 * factor)]
    assert on_ring[2] > 200 and on_ring[0] < 60
    assert np.abs(small[centre[0], centre[1]].astype(int) - 90).max() < 10
    assert _thumbnail_jpeg(tmp_path / "missing.png") is None


def test_palette_event_maps_are_read_as_rgb(tmp_path):
    from semtrack.report import _read_png, _thumbnail_jpeg
    from semtrack.write import write_png

    palette = np.array([[90, 90, 90], [255, 40, 40]], np.uint8)
    indices = np.zeros((2000, 3000), np.uint8)
    cv2.circle(indices, (1500, 1000), 300, 1, 40)  # a red ring in the middle
    path = write_png(indices, tmp_path / "events_000_001.png", palette=palette)
    np.testing.assert_array_equal(_read_png(path, colour=True), palette[indices])
    small = cv2.imdecode(np.frombuffer(_thumbnail_jpeg(path), np.uint8), cv2.IMREAD_COLOR)  # BGR
    centre = np.array(small.shape[:2]) // 2
    on_ring = small[centre[0], centre[1] + round(300 * small.shape[1] / 3000)]
    assert on_ring[2] > 200 and on_ring[0] < 60
    assert np.abs(small[centre[0], centre[1]].astype(int) - 90).max() < 10
