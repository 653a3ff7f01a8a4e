"""Bad inputs met as a user meets them: the `semtrack` CLI on a corpus of broken or odd series.

Every case ends either in exit 0 with a correct result, or in exit 1/2 with one ``error:`` line that
names the offending file and the problem (no traceback). In every case nothing under the output
folder is half-written.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

SEMTRACK = [str(Path(sys.executable).with_name("semtrack"))]
SHAPE = (256, 320)
TABLES = ["frames.csv", "grains.csv", "islands.csv", "events.csv", "intervals.csv"]
FRACTIONS = ["frac_pore", "frac_glass", "frac_nasicon", "frac_na3po4"]


def semtrack(*args, quiet: bool = True) -> subprocess.CompletedProcess:
    extra = ["-q"] if quiet else []
    return subprocess.run(
        [*SEMTRACK, *map(str, args), *extra], check=False, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def series():
    from semtrack.synth import make_series

    return make_series(shape=SHAPE, n_frames=3, seed=3)


@pytest.fixture(scope="module")
def good_folder(tmp_path_factory, series) -> Path:
    from semtrack.synth import write_series

    folder = tmp_path_factory.mktemp("good") / "good"
    write_series(series, folder)
    return folder


@pytest.fixture(scope="module")
def good_run(tmp_path_factory, good_folder) -> pd.DataFrame:
    out = tmp_path_factory.mktemp("good_run") / "out"
    done = semtrack("run", good_folder, "--out", out, "--no-report")
    assert done.returncode == 0, done.stderr
    return pd.read_csv(out / "frames.csv")


def _huge_tiff(path: Path) -> None:
    """A valid-looking classic TIFF header claiming 60000 x 60000 8-bit pixels over a few bytes."""
    side = 60_000
    tags = [  # (tag, type, count, value); type 3 = SHORT, 4 = LONG
        (256, 4, 1, side),
        (257, 4, 1, side),
        (258, 3, 1, 8),
        (259, 3, 1, 1),
        (262, 3, 1, 1),
        (273, 4, 1, 8),
        (277, 3, 1, 1),
        (278, 4, 1, side),
        (279, 4, 1, side * side),
    ]
    ifd = struct.pack("<H", len(tags))
    for tag, typ, count, value in tags:
        packed = struct.pack("<HH", value, 0) if typ == 3 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, typ, count) + packed
    ifd += struct.pack("<I", 0)
    header = b"II*\x00" + struct.pack("<I", 8 + 64)
    path.write_bytes(header + bytes(64) + ifd)


def _all_na3po4(series, path: Path) -> None:
    """Frame 1 with every pixel outside marker and info bar set to the Na3PO4 grey of that frame."""
    image = series.images[1].copy()
    grey = np.median(image[series.phases[1] == 3])
    x0, y0, x1, y1 = series.marker_rect
    keep = np.zeros(image.shape, bool)
    margin = 24  # beyond the frame's own shift, so the whole marker keeps its texture
    keep[max(y0 - margin, 0) : y1 + margin, max(x0 - margin, 0) : x1 + margin] = True
    keep[image.shape[0] - series.info_bar_rows :] = True
    rng = np.random.default_rng(0)
    noisy = np.clip(grey + rng.normal(0, 3, image.shape), 0, 255).astype(image.dtype)
    image[~keep] = noisy[~keep]
    tifffile.imwrite(path, image)


# Each mutation gets (series, folder, frame-1 path) and returns the file the error must name
# (None: the run must succeed).
def _zero(s, d, p):
    p.write_bytes(b"")
    return p.name


def _truncated(s, d, p):
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    return p.name


def _huge(s, d, p):
    _huge_tiff(p)
    return p.name


def _nan(s, d, p):
    image = s.images[1].astype(np.float32)
    image[10:20, 10:20] = np.nan
    image[30, 30] = np.inf
    tifffile.imwrite(p, image)
    return p.name


def _constant(s, d, p):
    tifffile.imwrite(p, np.full(SHAPE, 128, np.uint8))
    return p.name


def _stack(s, d, p):
    tifffile.imwrite(p, np.stack([s.images[1]] * 3), photometric="minisblack")
    return p.name


def _sizes(s, d, p):
    tifffile.imwrite(p, s.images[1][:200, :300])
    return p.name


def _other_area(s, d, p):
    from semtrack.synth import make_series

    other = make_series(shape=SHAPE, n_frames=1, seed=99, marker_corner="bottom-right")
    tifffile.imwrite(p, other.images[0])
    return p.name


def _no_times(s, d, p):
    for i, f in enumerate(sorted(d.glob("*.tif"))):
        f.rename(d / f"area_{i:02d}.tif")
    return "area_00.tif"


def _duplicate_time(s, d, p):
    files = sorted(d.glob("*.tif"))
    files[1].rename(d / files[0].name.replace("_00", "_05"))
    return "t0024h"


def _all_islands(s, d, p):
    _all_na3po4(s, p)
    return p.name


BAD = {
    "zero_byte": (_zero, "empty"),
    "truncated": (_truncated, "truncated"),
    "huge_dimensions": (_huge, r"60000|large|memory|truncated"),
    "nan_inf": (_nan, "NaN"),
    "constant": (_constant, "marker|constant|contrast"),
    "stack_3d": (_stack, "stack|2-D"),
    "different_sizes": (_sizes, "size"),
    "other_area": (_other_area, "marker|overlap|same area"),
    "missing_times": (_no_times, "time"),
    "duplicate_times": (_duplicate_time, "same exposure time"),
}


def _mutated(tmp_path, good_folder, series, mutate):
    folder = tmp_path / "series"
    shutil.copytree(good_folder, folder)
    frame1 = sorted(folder.glob("*.tif"))[1]
    return folder, mutate(series, folder, frame1)


def assert_nothing_half_written(out: Path, *, complete: bool) -> None:
    if not out.exists():
        return
    # semtrack._atomic names its temporaries ".<stem>.<random>.tmp<suffix>".
    leftovers = [p for p in out.rglob("*") if ".tmp" in p.name]
    assert not leftovers, f"temporary files left: {leftovers}"
    for table in out.glob("*.csv"):
        pd.read_csv(table)
    for label in (out / "labels").glob("*.tif") if (out / "labels").is_dir() else []:
        tifffile.imread(label)
    assert (out / "run.json").exists() == complete
    if complete:
        json.loads((out / "run.json").read_text())


def assert_one_clear_error(done, names: str, match: str) -> None:
    assert done.returncode in (1, 2), (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, done.stderr
    assert names in errors[0], errors[0]
    assert re.search(match, errors[0], flags=re.IGNORECASE), errors[0]


@pytest.mark.parametrize("case", list(BAD))
def test_bad_series_gives_one_clear_error(tmp_path, good_folder, series, case):
    mutate, match = BAD[case]
    folder, name = _mutated(tmp_path, good_folder, series, mutate)
    out = tmp_path / "out"
    done = semtrack("run", folder, "--out", out, "--no-report")
    assert_one_clear_error(done, name, match)
    assert_nothing_half_written(out, complete=False)


@pytest.mark.parametrize(
    "case, convert, kwargs",
    [
        ("rgb", lambda im: np.stack([im] * 3, axis=-1), {"photometric": "rgb"}),
        ("uint16", lambda im: im.astype(np.uint16) * 257, {}),
    ],
)
def test_other_encodings_give_the_same_fractions(tmp_path, good_folder, good_run, series, case, convert, kwargs):
    folder, _ = _mutated(
        tmp_path, good_folder, series, lambda s, d, p: tifffile.imwrite(p, convert(s.images[1]), **kwargs)
    )
    out = tmp_path / "out"
    done = semtrack("run", folder, "--out", out, "--no-report")
    assert done.returncode == 0, done.stderr
    frames = pd.read_csv(out / "frames.csv")
    np.testing.assert_allclose(frames[FRACTIONS].to_numpy(), good_run[FRACTIONS].to_numpy(), atol=0.02)
    assert_nothing_half_written(out, complete=True)


def test_non_image_files_are_skipped_with_a_message(tmp_path, good_folder, good_run):
    folder = tmp_path / "series"
    shutil.copytree(good_folder, folder)
    (folder / "notes.txt").write_text("sample 7, polished")
    (folder / "Thumbs.db").write_bytes(bytes(64))
    out = tmp_path / "out"
    done = semtrack("run", folder, "--out", out, "--no-report", quiet=False)
    assert done.returncode == 0, done.stderr
    assert "notes.txt" in done.stderr and "skipped" in done.stderr
    frames = pd.read_csv(out / "frames.csv")
    assert len(frames) == 3
    np.testing.assert_allclose(frames[FRACTIONS].to_numpy(), good_run[FRACTIONS].to_numpy(), atol=1e-9)
    assert_nothing_half_written(out, complete=True)


def test_unwritable_output_folder(tmp_path, good_folder):
    # Running as root, chmod does not stop writes; a path below a regular file cannot be created by anyone.
    blocker = tmp_path / "results"
    blocker.write_text("not a folder")
    done = semtrack("run", good_folder, "--out", blocker / "out", "--no-report")
    assert_one_clear_error(done, "results", "cannot write|directory")
    assert blocker.read_text() == "not a folder"


def test_series_without_na3po4(tmp_path):
    from semtrack.synth import make_series, write_series

    folder = tmp_path / "series"
    write_series(make_series(shape=SHAPE, n_frames=3, seed=3, n_islands=0), folder)
    out = tmp_path / "out"
    done = semtrack("run", folder, "--out", out, "--no-report")
    assert done.returncode == 0, done.stderr
    frames = pd.read_csv(out / "frames.csv")
    assert (frames["frac_na3po4"] < 0.01).all(), frames["frac_na3po4"]
    events = pd.read_csv(out / "events.csv")
    assert len(events) <= 2, events  # at most a stray misclassified speck, no invented history
    assert_nothing_half_written(out, complete=True)


def test_frame_that_is_all_na3po4_is_refused_by_automatic_registration(tmp_path, good_folder, series):
    # Only the marker's neighbourhood keeps its texture, so the automatic marker search finds nothing
    # stable to align on: a clear error naming the frame is the honest outcome.
    folder, name = _mutated(tmp_path, good_folder, series, _all_islands)
    out = tmp_path / "out"
    done = semtrack("run", folder, "--out", out, "--no-report")
    assert_one_clear_error(done, name, "area")
    assert_nothing_half_written(out, complete=False)


def test_frame_that_is_all_na3po4_with_a_given_marker(tmp_path, good_folder, series):
    folder, _ = _mutated(tmp_path, good_folder, series, _all_islands)
    out = tmp_path / "out"
    done = semtrack("run", folder, "--out", out, "--no-report", "--marker", ",".join(map(str, series.marker_rect)))
    assert done.returncode == 0, done.stderr
    assert_nothing_half_written(out, complete=True)
    frames = pd.read_csv(out / "frames.csv")
    assert frames.loc[1, "frac_na3po4"] > 0.8, frames[FRACTIONS]


def test_batch_completes_good_series_and_reports_bad_ones(tmp_path, good_folder, series):
    root = tmp_path / "root"
    shutil.copytree(good_folder, root / "a_good")
    shutil.copytree(good_folder, root / "b_good")
    for case in ["zero_byte", "different_sizes"]:
        mutate, _ = BAD[case]
        folder = root / f"c_{case}"
        shutil.copytree(good_folder, folder)
        mutate(series, folder, sorted(folder.glob("*.tif"))[1])
    out = tmp_path / "out"
    done = semtrack("batch", root, "--out", out)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    summary = pd.read_csv(out / "batch_summary.csv").set_index("series")
    assert summary.loc["a_good", "status"] != "failed" and summary.loc["b_good", "status"] != "failed"
    for good in ["a_good", "b_good"]:
        assert_nothing_half_written(out / good, complete=True)
    assert summary.loc["c_zero_byte", "status"] == "failed"
    assert "empty" in summary.loc["c_zero_byte", "message"]
    assert summary.loc["c_different_sizes", "status"] == "failed"
    assert "size" in summary.loc["c_different_sizes", "message"]
    for bad in ["c_zero_byte", "c_different_sizes"]:
        assert_nothing_half_written(out / bad, complete=False)
        assert f"error: {bad}" in done.stderr
