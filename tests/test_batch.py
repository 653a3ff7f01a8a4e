"""Many series: local workers, a real Dask LocalCluster, and a broken series among good ones."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from semtrack.batch import find_series, run_batch

SEMTRACK = str(Path(sys.executable).with_name("semtrack"))


@pytest.fixture(scope="module")
def batch_root(tmp_path_factory, synth_folder) -> Path:
    root = tmp_path_factory.mktemp("batch")
    shutil.copytree(synth_folder, root / "sample_a")
    shutil.copytree(synth_folder, root / "nested" / "sample_b")
    broken = root / "sample_broken"
    shutil.copytree(synth_folder, broken)
    victim = sorted(broken.glob("*.tif"))[1]
    victim.write_bytes(victim.read_bytes()[:300])  # truncated mid-file
    (root / "notes.txt").write_text("not a series")
    return root


def test_find_series_lists_folders_with_images(batch_root):
    found = [p.relative_to(batch_root).as_posix() for p in find_series(batch_root)]
    assert found == ["nested/sample_b", "sample_a", "sample_broken"]


def test_cli_batch_reports_the_broken_series_and_finishes_the_others(batch_root, tmp_path):
    out = tmp_path / "out"
    done = subprocess.run(
        [SEMTRACK, "batch", str(batch_root), "--out", str(out), "--workers", "2", "-q"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    summary = pd.read_csv(out / "batch_summary.csv", keep_default_na=False)
    status = dict(zip(summary["series"], summary["status"]))
    assert status == {"nested__sample_b": "ok", "sample_a": "ok", "sample_broken": "failed"}
    broken_message = summary.loc[summary["series"] == "sample_broken", "message"].item()
    assert ".tif" in broken_message
    assert "sample_broken" in done.stderr
    for name in ["sample_a", "nested__sample_b"]:
        assert (out / name / "frames.csv").is_file() and (out / name / "run.json").is_file()
    assert not (out / "sample_broken" / "run.json").exists()


def test_batch_on_a_dask_local_cluster(batch_root, tmp_path):
    distributed = pytest.importorskip("distributed")
    root = tmp_path / "root"
    shutil.copytree(batch_root / "sample_a", root / "a")
    shutil.copytree(batch_root / "nested" / "sample_b", root / "b")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        summary = run_batch(root, tmp_path / "out", scheduler=cluster.scheduler_address)
    assert list(summary["status"]) == ["ok", "ok"]
    a = pd.read_csv(tmp_path / "out" / "a" / "frames.csv")
    b = pd.read_csv(tmp_path / "out" / "b" / "frames.csv")
    pd.testing.assert_frame_equal(a.drop(columns="file"), b.drop(columns="file"))
