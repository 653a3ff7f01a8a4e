"""What every semtrack dock widget shares: the run/cancel/progress machinery, forms built from
:class:`semtrack.config.Config`, layer pickers, result tables and the phase colours.

A step widget gathers its inputs on the GUI thread (:meth:`StepWidget._prepare`), runs the returned
task in a :func:`napari.qt.threading.thread_worker` and adds layers when the task returns
(:meth:`StepWidget._show`), so napari never freezes and no layer is touched from another thread.
"""

from __future__ import annotations

import contextlib
import typing
from collections.abc import Callable
from typing import Any

import annotated_types
import numpy as np
import pandas as pd
from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, SpinBox, Table
from napari.qt.threading import thread_worker
from napari.utils.colormaps import DirectLabelColormap
from napari.utils.notifications import show_error, show_info
from pydantic import BaseModel
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

from semtrack.config import OUTSIDE, PHASE_NAMES

__all__ = [
    "PHASE_COLORS",
    "Cancelled",
    "StepWidget",
    "config_form",
    "layer_picker",
    "phase_colormap",
    "semtrack_info",
]

#: Display colour of each phase name (BSE-like: pores black, Na3PO4 blue so islands stand out).
PHASE_COLORS: dict[str, str] = {
    "pore": "#1a1a1a",
    "glass": "#e8c547",
    "nasicon": "#9a9a9a",
    "na3po4": "#2f7fff",
}

#: Marker colour of each island event type in the Points layer.
EVENT_COLORS: dict[str, str] = {
    "formation": "#2ecc40",
    "growth": "#ffdc00",
    "coalescence": "#ff4136",
    "split": "#b10dc9",
    "dissolution": "#00d8ff",
}
_OTHER_EVENT_COLOR = "#ffffff"


class Cancelled(Exception):
    """Raised inside a task by its progress callback after the user pressed Cancel."""


def phase_colormap(phase_names: typing.Sequence[str] = PHASE_NAMES) -> DirectLabelColormap:
    """Fixed colours for phase codes; code 255 (outside the analysed region) is transparent.

    Phase code 0 (pore) is a real class here, not background, so the background value is moved
    to ``OUTSIDE``.

    Examples
    --------
    >>> cmap = phase_colormap()
    >>> cmap.background_value, float(cmap.color_dict[255][3]), float(cmap.color_dict[0][3])
    (255, 0.0, 1.0)
    """
    fallback = ["#ff00ff", "#00ff00", "#ff8800", "#00ffff"]
    colors: dict[int | None, str] = {
        code: PHASE_COLORS.get(name, fallback[code % len(fallback)]) for code, name in enumerate(phase_names)
    }
    colors[OUTSIDE] = "transparent"
    colors[None] = "transparent"
    return DirectLabelColormap(color_dict=colors, background_value=OUTSIDE)


def event_color(event: str) -> str:
    return EVENT_COLORS.get(str(event), _OTHER_EVENT_COLOR)


def semtrack_info(layer: Any, key: str, default: Any = None) -> Any:
    """A value a semtrack step stored in ``layer.metadata["semtrack"]``."""
    return layer.metadata.get("semtrack", {}).get(key, default) if layer is not None else default


def layer_picker(
    viewer, layer_type: type, *, label: str, need: str | None = None, nullable: bool = False, tooltip: str = ""
) -> ComboBox:
    """A combo box listing the viewer's layers of ``layer_type`` (only those holding semtrack
    metadata ``need`` when given), newest first."""

    def choices(_widget):
        found = [
            (layer.name, layer)
            for layer in reversed(viewer.layers)
            if isinstance(layer, layer_type) and (need is None or semtrack_info(layer, need) is not None)
        ]
        return found

    return ComboBox(label=label, choices=choices, nullable=nullable, tooltip=tooltip)


def _bounds(field) -> tuple[float | None, float | None]:
    low = high = None
    for item in field.metadata:
        if isinstance(item, annotated_types.Ge | annotated_types.Gt):
            low = float(item.ge if isinstance(item, annotated_types.Ge) else item.gt)
        if isinstance(item, annotated_types.Le | annotated_types.Lt):
            high = float(item.le if isinstance(item, annotated_types.Le) else item.lt)
    return low, high


def config_form(section: type[BaseModel], names: typing.Sequence[str]) -> dict[str, Any]:
    """One magicgui widget per :class:`~semtrack.config.Config` field, with the field's default,
    bounds and description (as tooltip), so the GUI can never drift from the API's defaults.

    Examples
    --------
    >>> from semtrack.config import RegisterConfig
    >>> form = config_form(RegisterConfig, ["model", "min_score"])
    >>> form["model"].value, form["min_score"].min, form["min_score"].max
    ('similarity', -1.0, 1.0)
    """
    widgets: dict[str, Any] = {}
    for name in names:
        field = section.model_fields[name]
        annotation, default = field.annotation, field.default
        common = {"name": name, "label": name.replace("_", " "), "tooltip": field.description}
        if typing.get_origin(annotation) is typing.Literal:
            widgets[name] = ComboBox(choices=list(typing.get_args(annotation)), value=default, **common)
        elif annotation is bool:
            widgets[name] = CheckBox(value=default, **common)
        elif annotation in (int, float):
            low, high = _bounds(field)
            if annotation is int:
                widgets[name] = SpinBox(value=default, min=int(low or 0), max=int(high or 10**6), **common)
            else:
                widgets[name] = FloatSpinBox(
                    value=default, min=low or 0.0, max=high if high is not None else 1e6, step=0.01, **common
                )
        else:
            raise TypeError(f"no form widget for {section.__name__}.{name} ({annotation})")
    return widgets


def form_values(widgets: dict[str, Any]) -> dict[str, Any]:
    return {name: widget.value for name, widget in widgets.items()}


def show_table(table: Table, frame: pd.DataFrame, *, digits: int = 4) -> None:
    """Put a DataFrame into a magicgui Table, rounded for reading."""
    shown = frame.copy()
    for col in shown.columns:
        if pd.api.types.is_float_dtype(shown[col]):
            shown[col] = shown[col].round(digits)
    # As objects: a Table casts a frame of mixed columns to one float dtype (frame 0 -> "0.0").
    table.value = shown.reset_index(drop=True).astype(object)
    table.read_only = True
    table.min_height = 160


class StepWidget(QWidget):
    """A dock widget that runs one semtrack step in a background thread.

    Subclasses build ``self.form`` (a magicgui Container of inputs) in ``_build``, return the work
    as a function of a progress callback from ``_prepare`` (GUI thread; read layers there), and
    add layers in ``_show`` (GUI thread). Errors are shown as napari notifications carrying the
    API's message, the same text the CLI prints after ``error:``.

    Attributes
    ----------
    worker : napari.qt.threading.FunctionWorker or None
        The running (or last) worker.
    result : object
        What the last successful run returned.
    """

    #: ``(stage, done, total)`` from the worker thread; delivered on the GUI thread.
    progressed = Signal(str, int, int)
    #: Emitted on the GUI thread when a run ends, with its result (None: failed or cancelled).
    completed = Signal(object)

    run_label = "Run"

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.worker = None
        self.result = None
        self.last_error: Exception | None = None
        # Set from run() to the end of _on_finished: a started worker is not `is_running` at once.
        self._busy = False
        self.form = Container(widgets=self._build())
        self.run_button = QPushButton(self.run_label)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.addWidget(self.form.native)
        layout.addLayout(buttons)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.status)
        self._add_outputs(layout)
        layout.addStretch(1)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        self.progressed.connect(self._on_progress)
        self.viewer.layers.events.inserted.connect(self._reset_choices)
        self.viewer.layers.events.removed.connect(self._reset_choices)
        self.viewer.layers.events.changed.connect(self._reset_choices)
        self._reset_choices()

    # -- to override -----------------------------------------------------------------------
    def _build(self) -> list:
        raise NotImplementedError

    def _add_outputs(self, layout) -> None:
        """Add result widgets (tables) below the progress bar."""

    def _prepare(self) -> Callable[[Callable[[str, int, int], None]], Any]:
        raise NotImplementedError

    def _show(self, result: Any) -> None:
        raise NotImplementedError

    # -- machinery -----------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self._busy

    def _reset_choices(self, event=None) -> None:
        self.form.reset_choices()

    def run(self):
        """Start the step in a background thread; returns the worker (None if inputs are invalid)."""
        if self.busy:
            return self.worker
        self.last_error = None
        self.result = None
        try:
            task = self._prepare()
        except (ValueError, TypeError, LookupError) as exc:
            # Input problems found on the GUI thread (no layer chosen, wrong shapes).
            self._fail(exc)
            return None

        def work():
            try:
                return task(self._report)
            except Cancelled:
                return None

        # Connecting `errored` here also stops superqt from re-raising the error on the GUI thread.
        worker = thread_worker(work, start_thread=False, connect={"errored": self._fail})()
        # Some napari versions relay worker errors with a traceback; show the API's one-line message instead.
        relay = getattr(worker, "_relay_error", None)
        if relay is not None:
            with contextlib.suppress(TypeError, RuntimeError):  # not connected in this napari version
                worker.errored.disconnect(relay)
        worker.returned.connect(self._on_returned)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self._busy = True
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress_bar.setRange(0, 0)
        self.status.setText("running…")
        worker.start()
        return worker

    def cancel(self) -> None:
        """Ask the running step to stop at its next progress report."""
        if self.busy:
            self.worker.quit()
            self.status.setText("cancelling…")

    def _report(self, stage: str, done: int, total: int) -> None:
        # Runs on the worker thread: only emit (queued to the GUI thread) and check for Cancel.
        if self.worker is not None and self.worker.abort_requested:
            raise Cancelled
        self.progressed.emit(str(stage), int(done), int(total))

    def _on_progress(self, stage: str, done: int, total: int) -> None:
        self.progress_bar.setRange(0, max(total, 1))
        self.progress_bar.setValue(min(done, max(total, 1)))
        self.status.setText(f"{stage} {done}/{total}")

    def _on_returned(self, result: Any) -> None:
        if result is None:
            return
        self.status.setText("done")
        try:
            self._show(result)
        except Exception as exc:  # a bug in displaying must not leave the widget stuck "running"
            self._fail(exc)
            return
        self.result = result

    def _fail(self, exc: Exception) -> None:
        self.last_error = exc
        self.status.setText(f"error: {exc}")
        show_error(str(exc))

    def _on_finished(self) -> None:
        self._busy = False
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.progress_bar.setRange(0, 1)
        if self.worker is not None and self.worker.abort_requested:
            self.status.setText("cancelled")
            self.progress_bar.setValue(0)
            show_info(f"{self.run_label}: cancelled")
        else:
            self.progress_bar.setValue(1 if self.last_error is None else 0)
        self.completed.emit(self.result if self.last_error is None else None)


def replace_layer(viewer, name: str, factory: Callable[[], Any]):
    """Remove a previous output layer of the same name, then add the new one (re-runs do not pile up)."""
    if name in viewer.layers:
        viewer.layers.remove(name)
    return factory()


def stack(frames: typing.Sequence[np.ndarray], fill: float | int, dtype) -> np.ndarray:
    """Stack frames of possibly different shapes into ``(T, Y, X)``, padding with ``fill``."""
    rows = max(f.shape[0] for f in frames)
    cols = max(f.shape[1] for f in frames)
    out = np.full((len(frames), rows, cols), fill, dtype=dtype)
    for i, frame in enumerate(frames):
        out[i, : frame.shape[0], : frame.shape[1]] = frame
    return out
