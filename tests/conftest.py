"""Shared fixtures: one small synthetic series with ground truth, written once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

REAL_SEM = Path(__file__).resolve().parents[1].parent / "shared" / "real_sem"

#: Small enough for a quick suite, large enough for several grains and islands per frame.
SYNTH_KW = dict(shape=(384, 512), n_frames=3, seed=11)


@pytest.fixture(scope="session")
def real_sem() -> Path:
    if not REAL_SEM.is_dir():
        pytest.skip("../shared/real_sem is not present beside this clone")
    return REAL_SEM


@pytest.fixture(scope="session")
def synth_series():
    from semtrack.synth import make_series

    return make_series(**SYNTH_KW)


@pytest.fixture(scope="session")
def synth_folder(tmp_path_factory, synth_series) -> Path:
    from semtrack.synth import write_series

    folder = tmp_path_factory.mktemp("series") / "sample"
    write_series(synth_series, folder)
    return folder


@pytest.fixture(scope="session")
def pipeline_output(tmp_path_factory, synth_folder):
    """(Result, out_dir) of one full run on the synthetic series, report included."""
    from semtrack.pipeline import run

    out = tmp_path_factory.mktemp("run") / "out"
    return run(synth_folder, out_dir=out), out
