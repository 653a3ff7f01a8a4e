"""Fixtures for the napari-semtrack tests: a small synthetic series written as SEM TIFFs.

Viewer tests need an X server with OpenGL (``xvfb-run``; `make test` sets it up); without one they are
skipped, the reader tests still run.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from semtrack import synth

SHAPE = (256, 256)
N_FRAMES = 3


@pytest.fixture(scope="session")
def synthetic():
    """A 3-frame 256x256 synthetic series with its ground truth."""
    return synth.make_series(shape=SHAPE, n_frames=N_FRAMES, seed=3)


@pytest.fixture(scope="session")
def series_folder(synthetic, tmp_path_factory):
    folder = tmp_path_factory.mktemp("series")
    synth.write_series(synthetic, folder)
    return folder


@pytest.fixture(scope="session")
def uncalibrated_folder(synthetic, tmp_path_factory):
    folder = tmp_path_factory.mktemp("uncalibrated")
    synth.write_series(synthetic, folder, vendor=None)
    return folder


@pytest.fixture
def viewer(make_napari_viewer):
    """A shown napari viewer (under Xvfb a hidden canvas renders black screenshots).

    Tests using it are skipped without an X display (offscreen Qt has no GL context here).
    """
    return make_napari_viewer(show=True)


#: Qt aborts the whole test process when it cannot open a display: skip instead.
HAVE_DISPLAY = bool(os.environ.get("DISPLAY"))
_NO_DISPLAY = pytest.mark.skip(reason="no X display: run the napari tests under xvfb-run (`make test` does)")


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            # Widgets need a QApplication even without a viewer.
            if not HAVE_DISPLAY and ("viewer" in item.fixturenames or item.module.__name__.endswith("widgets")):
                item.add_marker(_NO_DISPLAY)
            # napari 0.9 with PyQt5 warns at every viewer start that it cannot follow the system theme.
            item.add_marker(
                pytest.mark.filterwarnings("ignore:System theme detection requires a Qt6 backend:UserWarning")
            )
