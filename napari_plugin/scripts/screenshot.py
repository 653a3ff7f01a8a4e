"""Make docs/napari.png: the plugin after the Track step on the bundled sample series.

Runs the real widgets one after the other (Register with an automatic marker, unsupervised
Segment, Grains, Track) exactly as a user would, then saves a screenshot of the whole window.

Usage (an X server with OpenGL is needed; headless)::

    QT_QPA_PLATFORM=xcb xvfb-run -a -s "-screen 0 1600x1100x24" .venv/bin/python napari_plugin/scripts/screenshot.py
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import napari
from qtpy.QtCore import QEventLoop, QTimer

REPO = Path(__file__).resolve().parents[2]
PLUGIN = "napari-semtrack"


def run_and_wait(widget, timeout_s: float = 600) -> None:
    """Start the widget's step and block (with the Qt loop running) until it completes."""
    loop = QEventLoop()
    widget.completed.connect(lambda _result: loop.quit())
    QTimer.singleShot(int(timeout_s * 1000), loop.quit)
    if widget.run() is None:
        raise SystemExit(f"{type(widget).__name__} did not start: {widget.last_error}")
    loop.exec_()
    if widget.busy or widget.last_error is not None or widget.result is None:
        raise SystemExit(f"{type(widget).__name__} failed: {widget.last_error or 'timeout'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "napari.png")
    parser.add_argument("--size", type=int, nargs=2, default=(1600, 1000), metavar=("W", "H"))
    args = parser.parse_args(argv)

    # Keep napari's PyQt5-deprecation toast out of the picture.
    warnings.filterwarnings("ignore", message="napari support for the PyQt5 backend")
    viewer = napari.Viewer(title="semtrack in napari")
    viewer.window.resize(*args.size)
    [raw] = viewer.open_sample(PLUGIN, "nasicon_demo")
    steps = {}
    for title in ("1 Register", "2 Segment", "3 Grains", "4 Track"):
        _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, title, tabify=True)
        steps[title] = widget

    steps["1 Register"].image.value = raw
    run_and_wait(steps["1 Register"])
    for title in ("2 Segment",):
        steps[title].image.value = viewer.layers[f"{raw.name} registered"]
        run_and_wait(steps[title])
    for title in ("3 Grains", "4 Track"):
        steps[title].phases.value = viewer.layers["phases"]
        run_and_wait(steps[title])

    # What the README wants to show: the last frame's phases, islands, tracks and events.
    viewer.layers["grains"].visible = False
    viewer.layers["islands"].opacity = 0.45
    viewer.layers["phases"].opacity = 0.45
    viewer.layers.selection.active = viewer.layers["island events"]
    steps["4 Track"].parentWidget().raise_()
    viewer.dims.set_point(0, raw.data.shape[0] - 1)
    viewer.reset_view()
    # Close notification toasts (napari's own start-up notices) so they do not cover the canvas.
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
        toast.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(path=str(args.out), canvas_only=False, flash=False)
    print(args.out)
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
