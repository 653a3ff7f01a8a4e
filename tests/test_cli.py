"""The CLI driven as a user would: subprocesses, exit codes, messages, interruption and resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

# The console script installed beside this interpreter, as a user would call it.
SEMTRACK = [str(Path(sys.executable).with_name("semtrack"))]
TABLES = ["frames.csv", "grains.csv", "islands.csv", "events.csv", "intervals.csv"]


def semtrack(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*SEMTRACK, *map(str, args)], capture_output=True, text=True, timeout=600, **kwargs)


def test_version_and_help():
    from semtrack import __version__

    done = semtrack("--version")
    assert done.returncode == 0 and __version__ in done.stdout
    done = semtrack("--help")
    assert done.returncode == 0
    for command in ["run", "batch", "report", "config", "train"]:
        assert command in done.stdout


def test_config_show_is_a_valid_config_file(tmp_path):
    done = semtrack("config", "--show")
    assert done.returncode == 0
    tomllib.loads(done.stdout)
    path = tmp_path / "c.toml"
    path.write_text(done.stdout)
    assert semtrack("config", "--config", path).returncode == 0


def test_run_writes_results_and_a_summary(synth_folder, tmp_path):
    out = tmp_path / "out"
    done = semtrack("run", synth_folder, "--out", out, "--no-report")
    assert done.returncode == 0, done.stderr
    assert all((out / t).is_file() for t in TABLES)
    assert "events:" in done.stdout
    assert not (out / "report.html").exists()


@pytest.mark.parametrize(
    "args, code, match",
    [
        (["--marker", "10,10,5,5"], 2, "--marker"),
        (["--model", "warp"], 2, "warp"),
        (["--pixel-size-um", "-1"], 2, "pixel-size-um"),
    ],
)
def test_usage_errors_exit_2(synth_folder, tmp_path, args, code, match):
    done = semtrack("run", synth_folder, "--out", tmp_path / "o", *args)
    assert done.returncode == code
    assert match in done.stderr


def test_bad_file_gives_one_line_naming_it(tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "t0024h.tif").write_bytes(b"")
    (folder / "t0096h.tif").write_bytes(b"II*\x00garbage")
    done = semtrack("run", folder, "--out", tmp_path / "o")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "t0024h.tif" in done.stderr or "t0096h.tif" in done.stderr
    assert done.stderr.strip().startswith("error:")


def test_bad_config_file_is_a_usage_error(synth_folder, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[registration]\nmodle = 1\n")
    done = semtrack("run", synth_folder, "--out", tmp_path / "o", "--config", bad)
    assert done.returncode == 2
    assert "bad.toml" in done.stderr and "modle" in done.stderr and "Traceback" not in done.stderr


def test_killed_run_resumes_to_identical_tables(synth_folder, tmp_path):
    reference = tmp_path / "reference"
    assert semtrack("run", synth_folder, "--out", reference, "--no-report", "-q").returncode == 0

    out = tmp_path / "interrupted"
    proc = subprocess.Popen(
        [*SEMTRACK, "run", str(synth_folder), "--out", str(out), "--no-report", "-q"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    # Kill once the run has cached at least one frame analysis but before it finished.
    while time.monotonic() < deadline and proc.poll() is None:
        if len(list((out / ".cache").glob("*.pkl"))) >= 3:
            break
        time.sleep(0.05)
    if proc.poll() is not None:
        pytest.fail("the run finished before it could be interrupted; use a longer series")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "run.json").exists()
    # Whatever stands under a final name is complete.
    for path in (out / "labels").glob("*.tif"):
        tifffile.imread(path)
    for table in TABLES:
        if (out / table).exists():
            pd.read_csv(out / table)

    done = semtrack("run", synth_folder, "--out", out, "--no-report", "-q")
    assert done.returncode == 0, done.stderr
    for table in TABLES:
        assert (out / table).read_bytes() == (reference / table).read_bytes(), table


def test_train_saves_a_classifier_that_segments_the_frame(tmp_path):
    from semtrack.segment import PixelClassifier, simulate_scribbles
    from semtrack.synth import make_series

    series = make_series(shape=(256, 256), n_frames=1, seed=3)
    image, truth = series.images[0], series.phases[0]
    image_path, scribble_path, model_path = tmp_path / "f.tif", tmp_path / "s.tif", tmp_path / "m.pkl"
    tifffile.imwrite(image_path, image)
    tifffile.imwrite(scribble_path, simulate_scribbles(truth, fraction=0.02).astype(np.uint8))

    done = semtrack("train", image_path, scribble_path, "--out", model_path)
    assert done.returncode == 0, done.stderr
    classifier = PixelClassifier.load(model_path)
    assert classifier.phase_names == ("pore", "glass", "nasicon", "na3po4")
    inside = truth != 255
    assert (classifier.predict(image)[inside] == truth[inside]).mean() > 0.9


def test_train_keeps_phase_names_and_relief_mode_and_rejects_bad_names(tmp_path):
    from semtrack.segment import PixelClassifier

    image = np.full((64, 64), 200, np.uint8)
    image[16:48, 16:48] = 60
    scribbles = np.zeros((64, 64), np.uint8)
    scribbles[28:36, 28:36] = 1  # island
    scribbles[2:8, 2:60] = 2  # matrix
    image_path, scribble_path, model_path = tmp_path / "f.tif", tmp_path / "s.tif", tmp_path / "m.pkl"
    tifffile.imwrite(image_path, image)
    tifffile.imwrite(scribble_path, scribbles)

    done = semtrack(
        "train", image_path, scribble_path, "--out", model_path, "--phases", "island,matrix", "--se-relief",
        "--particle-sigma-px", "2", "--refine-boundaries",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    classifier = PixelClassifier.load(model_path)
    assert classifier.phase_names == ("island", "matrix") and classifier.se_relief
    assert classifier.particle_sigma_px == 2.0 and classifier.refine_boundaries

    done = semtrack("train", image_path, scribble_path, "--out", tmp_path / "x.pkl", "--phases", "island,island")
    assert done.returncode == 2 and "--phases" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "x.pkl").exists()
