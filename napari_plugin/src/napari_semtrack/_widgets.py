"""The five dock widgets: Register, Segment, Grains, Track, Export.

Each widget turns layers into the arguments of one semtrack step, runs it in a background thread
(:class:`~napari_semtrack._common.StepWidget`) and turns the result into layers. A step's output
layer carries in ``metadata["semtrack"]`` everything the next step needs (the series, the
registration, the analysed region, phase maps ...) plus ``"config"``: the
:class:`semtrack.config.Config` choices made so far, which the Export widget hands to
:func:`semtrack.pipeline.run` so the files it writes match what was seen on screen.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from magicgui.widgets import ComboBox, FileEdit, Label, PushButton, Table
from napari.layers import Image, Labels, Layer, Shapes

from semtrack import pipeline, quantify, register, segment, track
from semtrack.config import (
    OUTSIDE,
    Config,
    GrainsConfig,
    QuantifyConfig,
    RegisterConfig,
    ReportConfig,
    SegmentConfig,
    TrackConfig,
)

from ._common import (
    StepWidget,
    config_form,
    event_color,
    form_values,
    layer_picker,
    phase_colormap,
    replace_layer,
    semtrack_info,
    show_table,
    stack,
)

__all__ = ["RegisterWidget", "SegmentWidget", "GrainsWidget", "TrackWidget", "ExportWidget", "marker_from_shapes"]

_SCRIBBLES_NAME = "scribbles"
_METHOD_UNSUPERVISED = "unsupervised"
_METHOD_TRAIN = "train on scribbles"
_METHOD_FILE = "classifier file"


def _derived(layer: Layer, **updates: Any) -> dict[str, Any]:
    """The upstream layer's semtrack metadata with ``updates``; ``config`` sections are merged."""
    info = dict(layer.metadata.get("semtrack", {}))
    config = copy.deepcopy(info.get("config", {}))
    for section, values in updates.pop("config", {}).items():
        config.setdefault(section, {}).update(values)
    info.update(updates)
    info["config"] = config
    return info


def _required(widget, what: str):
    if widget.value is None:
        raise ValueError(f"choose {what} in the `{widget.label}` box")
    return widget.value


def _scale(layer: Layer) -> tuple[float, ...]:
    return tuple(float(s) for s in layer.scale)


# --------------------------------------------------------------------------------------------------
# Register


def marker_from_shapes(shapes: Shapes, image: Image) -> tuple[int, int, int, int]:
    """The marker rectangle ``(x0, y0, x1, y1)`` (x1, y1 exclusive) in ``image``'s pixel grid.

    Uses the selected shape, or the last one drawn; the shape's bounding box is mapped through
    world coordinates, so the Shapes layer may have any scale.

    Raises
    ------
    ValueError
        The layer holds no shape, or the shape lies outside the image.

    Examples
    --------
    >>> from napari.layers import Image, Shapes
    >>> image = Image(np.zeros((2, 100, 100), np.float32), scale=(1, 0.05, 0.05))
    >>> shapes = Shapes([np.array([[0.5, 1.0], [0.5, 2.0], [1.5, 2.0], [1.5, 1.0]])])  # in µm
    >>> marker_from_shapes(shapes, image)
    (20, 10, 41, 31)
    """
    if len(shapes.data) == 0:
        raise ValueError(f"the Shapes layer {shapes.name!r} is empty: draw a rectangle around the marker")
    index = max(shapes.selected_data) if shapes.selected_data else len(shapes.data) - 1
    vertices = np.asarray(shapes.data[index], dtype=float)
    world = np.array([shapes.data_to_world(v) for v in vertices])
    # Shapes drawn on a 2-D slice have 2 coordinates; align them with the image's last axes.
    pixels = np.array([image.world_to_data(np.r_[np.zeros(image.ndim - len(w)), w][-image.ndim :]) for w in world])
    rows, cols = pixels[:, -2], pixels[:, -1]
    shape = image.data.shape[-2:]

    # Vertices sit on pixel centres; a rectangle from centre a to centre b covers pixels a..b.
    def span(coords: np.ndarray, size: int) -> tuple[int, int]:
        first, last = np.floor(coords.min() + 0.5), np.floor(coords.max() + 0.5) + 1
        return int(np.clip(first, 0, size)), int(np.clip(last, 0, size))

    (y0, y1), (x0, x1) = span(rows, shape[0]), span(cols, shape[1])
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"the marker rectangle in {shapes.name!r} lies outside the image {image.name!r}")
    return x0, y0, x1, y1


class RegisterWidget(StepWidget):
    """Register every frame to the reference via the fixed marker (:func:`semtrack.register.register_series`).

    Adds ``<series> registered`` (the frames resampled onto the reference grid, NaN where a frame
    did not image) and a ``marker`` Shapes layer with the rectangle used; the table shows each
    frame's transform and marker score.
    """

    run_label = "Register"

    def _build(self):
        self.image = layer_picker(
            self.viewer,
            Image,
            label="series",
            need="series",
            tooltip="The time-stacked SEM series (open a folder of TIFFs).",
        )
        self.marker = layer_picker(
            self.viewer,
            Shapes,
            label="marker",
            nullable=True,
            tooltip="Shapes layer with a rectangle around the fixed marker on the reference "
            "frame; empty: semtrack chooses one.",
        )
        self.options = config_form(RegisterConfig, ["model", "reference", "min_score", "fail_score"])
        return [self.image, self.marker, *self.options.values()]

    def _add_outputs(self, layout):
        self.table = Table()
        layout.addWidget(self.table.native)

    def _prepare(self):
        layer = _required(self.image, "the series image layer")
        series = semtrack_info(layer, "series")
        marker = marker_from_shapes(self.marker.value, layer) if self.marker.value is not None else None
        options = form_values(self.options)
        if options["reference"] >= len(series):
            raise ValueError(f"`reference` is {options['reference']} but the series has {len(series)} frames")
        ref_shape = series.frames[options["reference"]].shape

        def task(progress):
            registration = register.register_series(
                series, marker=marker, progress=lambda d, t: progress("register", d, t), **options
            )
            frames = []
            for i in range(len(series)):
                frames.append(register.resample(series.image(i), registration.frames[i].matrix, ref_shape))
                progress("resample", i + 1, len(series))
            region = register.analysed_region(
                registration, [f.shape for f in series.frames], [f.valid_rows for f in series.frames]
            )
            return {
                "layer": layer,
                "registration": registration,
                "stack": stack(frames, np.nan, np.float32),
                "region": region,
                "options": options,
                "marker": marker,
            }

        return task

    def _show(self, result):
        layer, registration = result["layer"], result["registration"]
        series = semtrack_info(layer, "series")
        config = {key: value for key, value in result["options"].items()}
        config["marker"] = list(result["marker"]) if result["marker"] is not None else None
        info = _derived(layer, registration=registration, region=result["region"], config={"registration": config})
        name = f"{layer.name} registered"
        replace_layer(
            self.viewer,
            name,
            lambda: self.viewer.add_image(
                result["stack"],
                name=name,
                scale=_scale(layer),
                contrast_limits=(0.0, 1.0),
                colormap="gray",
                metadata={"times_h": info["times_h"], "pixel_size_um": info["pixel_size_um"], "semtrack": info},
            ),
        )
        layer.visible = False
        x0, y0, x1, y1 = registration.marker
        # Shapes vertices are pixel centres: the exclusive corner x1, y1 is the centre of pixel x1 - 1 + 1/2 edge.
        box = np.array([[y0 - 0.5, x0 - 0.5], [y0 - 0.5, x1 - 0.5], [y1 - 0.5, x1 - 0.5], [y1 - 0.5, x0 - 0.5]])
        replace_layer(
            self.viewer,
            "marker used",
            lambda: self.viewer.add_shapes(
                [box],
                shape_type="rectangle",
                name="marker used",
                edge_color="#ff4136",
                face_color="transparent",
                edge_width=2,
                scale=_scale(layer)[-2:],
            ),
        )
        rows = []
        for i, (info_f, fr) in enumerate(zip(series.frames, registration.frames, strict=True)):
            rows.append(
                {
                    "frame": i,
                    "file": info_f.path.name,
                    "time_h": info_f.time_h,
                    **register.transform_parameters(fr.matrix),
                    "score": fr.score,
                    "ok": fr.ok,
                    "warning": fr.warning or "",
                }
            )
        self.quality = pd.DataFrame(rows)
        show_table(self.table, self.quality)


# --------------------------------------------------------------------------------------------------
# Segment


class SegmentWidget(StepWidget):
    """Segment the registered frames into phases.

    ``unsupervised``: :func:`semtrack.segment.fit_phase_model` on all frames, then
    :func:`semtrack.segment.segment_frame` per frame, exactly as the pipeline does.
    ``train on scribbles``: a :class:`semtrack.segment.PixelClassifier` fitted on the painted pixels
    of a Labels layer (label k = phase code k - 1; "Add scribbles layer" makes one with the phase
    colours). ``classifier file``: a saved classifier. Adds a ``phases`` Labels layer (255 outside
    the analysed region) and shows :func:`semtrack.quantify.phase_fractions` per frame.
    """

    run_label = "Segment"

    def _build(self):
        self.image = layer_picker(
            self.viewer,
            Image,
            label="registered",
            need="registration",
            tooltip="The registered stack from the Register step.",
        )
        self.method = ComboBox(
            label="method",
            choices=[_METHOD_UNSUPERVISED, _METHOD_TRAIN, _METHOD_FILE],
            value=_METHOD_UNSUPERVISED,
            tooltip=SegmentConfig.model_fields["method"].description,
        )
        self.scribbles = layer_picker(
            self.viewer,
            Labels,
            label="scribbles",
            nullable=True,
            need="scribbles",
            tooltip="Labels layer painted with 1 pore, 2 glass, 3 NaSICON, 4 Na3PO4.",
        )
        self.add_scribbles = PushButton(text="Add scribbles layer")
        self.add_scribbles.changed.connect(self.add_scribbles_layer)
        self.classifier_file = FileEdit(
            label="classifier file",
            mode="r",
            value="",
            tooltip=SegmentConfig.model_fields["classifier_path"].description,
        )
        self.save_to = FileEdit(
            label="save classifier to",
            mode="w",
            value="",
            tooltip="Optional: where to save the classifier trained on the scribbles.",
        )
        self.segment_options = config_form(SegmentConfig, ["se_relief"])
        self.options = config_form(QuantifyConfig, ["confidence"])
        return [
            self.image,
            self.method,
            self.scribbles,
            self.add_scribbles,
            self.classifier_file,
            self.save_to,
            *self.segment_options.values(),
            *self.options.values(),
        ]

    def _add_outputs(self, layout):
        self.table = Table()
        layout.addWidget(self.table.native)

    def add_scribbles_layer(self, *_):
        """Add an empty Labels layer for scribbles, shaped like the chosen registered stack."""
        layer = _required(self.image, "the registered stack")
        names = semtrack_info(layer, "phase_names", SegmentConfig().phase_names)
        colors = phase_colormap(names).color_dict
        scribble_colors = {code + 1: colors[code] for code in range(len(names))}
        scribble_colors.update({0: "transparent", None: "transparent"})
        from napari.utils.colormaps import DirectLabelColormap

        self.viewer.add_labels(
            np.zeros(layer.data.shape, np.uint8),
            name=_SCRIBBLES_NAME,
            scale=_scale(layer),
            colormap=DirectLabelColormap(color_dict=scribble_colors),
            opacity=0.8,
            metadata={"semtrack": {"scribbles": True}},
        )
        self.scribbles.value = self.viewer.layers[_SCRIBBLES_NAME]
        self.method.value = _METHOD_TRAIN

    def _prepare(self):
        layer = _required(self.image, "the registered stack")
        images = np.asarray(layer.data)
        region = semtrack_info(layer, "region")
        pixel_size_um = semtrack_info(layer, "pixel_size_um")
        series = semtrack_info(layer, "series")
        registration = semtrack_info(layer, "registration")
        seg_cfg = SegmentConfig(**form_values(self.segment_options))
        config = Config(segment=seg_cfg)
        q_cfg = QuantifyConfig(**form_values(self.options))
        method = self.method.value
        scribbles = None
        classifier_path = None
        save_to = None
        if method == _METHOD_TRAIN:
            scribble_layer = _required(self.scribbles, "a scribbles Labels layer (Add scribbles layer, then paint)")
            scribbles = np.asarray(scribble_layer.data)
            if scribbles.shape != images.shape:
                raise ValueError(
                    f"the scribbles layer is {scribbles.shape} but the stack is {images.shape}; "
                    "add a new scribbles layer for this stack"
                )
            if not scribbles.any():
                raise ValueError(
                    "the scribbles layer is empty: paint a few strokes of each phase (1 pore, 2 glass, "
                    "3 NaSICON, 4 Na3PO4)"
                )
            save_to = str(self.save_to.value) if str(self.save_to.value) not in ("", ".") else None
        elif method == _METHOD_FILE:
            classifier_path = str(self.classifier_file.value)
            if classifier_path in ("", "."):
                raise ValueError("choose a saved classifier in the `classifier file` box")

        def task(progress):
            n = len(images)
            valids = [region & np.isfinite(images[i]) for i in range(n)]
            classifier = None
            phase_model = None
            if method == _METHOD_UNSUPERVISED:
                phase_model = pipeline.fit_model(
                    series, registration, region, config, progress=lambda d, t: progress("model", d, t)
                )
            elif method == _METHOD_TRAIN:
                progress("train", 0, 1)
                painted = [i for i in range(n) if scribbles[i].any()]
                classifier = segment.PixelClassifier(se_relief=seg_cfg.se_relief).fit(
                    [images[i] for i in painted], [scribbles[i] for i in painted]
                )
                if save_to is not None:
                    classifier.save(save_to)
                progress("train", 1, 1)
            else:
                classifier = segment.PixelClassifier.load(classifier_path)
            phases = np.full(images.shape, OUTSIDE, np.uint8)
            rows = []
            for i in range(n):
                if classifier is not None:
                    phases[i] = classifier.predict(images[i], valid=valids[i])
                else:
                    phases[i] = segment.segment_frame(
                        images[i],
                        model=phase_model,
                        valid=valids[i],
                        pixel_size_um=pixel_size_um,
                        **pipeline.segment_options(config),
                    )
                rows.append(
                    quantify.phase_fractions(
                        phases[i],
                        phase_names=tuple(seg_cfg.phase_names),
                        pixel_size_um=pixel_size_um,
                        confidence=q_cfg.confidence,
                        tile_um=q_cfg.tile_um,
                    )
                )
                progress("segment", i + 1, n)
            return {
                "layer": layer,
                "phases": phases,
                "fractions": pd.DataFrame(rows),
                "phase_model": phase_model,
                "classifier": classifier,
                "classifier_path": save_to or classifier_path,
            }

        return task

    def _show(self, result):
        layer = result["layer"]
        times = semtrack_info(layer, "times_h")
        fractions = result["fractions"]
        fractions.insert(0, "time_h", times[: len(fractions)])
        fractions.insert(0, "frame", np.arange(len(fractions)))
        seg = {
            "method": "unsupervised" if result["phase_model"] is not None else "classifier",
            "classifier_path": result["classifier_path"],
            **form_values(self.segment_options),
        }
        info = _derived(
            layer,
            phases=True,
            registered_stack=layer.data,
            fractions=fractions,
            phase_model=result["phase_model"],
            classifier=result["classifier"],
            phase_names=SegmentConfig().phase_names,
            config={"segment": seg, "quantify": form_values(self.options)},
        )
        replace_layer(
            self.viewer,
            "phases",
            lambda: self.viewer.add_labels(
                result["phases"],
                name="phases",
                scale=_scale(layer),
                colormap=phase_colormap(info["phase_names"]),
                opacity=0.6,
                metadata={"times_h": times, "semtrack": info},
            ),
        )
        self.fractions = fractions
        columns = ["frame", "time_h"] + [
            c for c in fractions.columns if c.startswith("frac_") or c.startswith("glass_fraction")
        ]
        show_table(self.table, fractions[columns])


# --------------------------------------------------------------------------------------------------
# Grains


def _phase_maps(layer: Labels) -> np.ndarray:
    data = np.asarray(layer.data)
    return data[None] if data.ndim == 2 else data


class GrainsWidget(StepWidget):
    """Separate and measure the NaSICON grains of every frame (:func:`semtrack.grains.measure_grains`,
    :func:`semtrack.grains.grain_summary`).

    Adds a ``grains`` Labels layer; the tables show each frame's grain count, mean size and ASTM
    E112 G-numbers, and every grain's measurements.
    """

    run_label = "Measure grains"

    def _build(self):
        self.phases = layer_picker(
            self.viewer, Labels, label="phases", need="phases", tooltip="The phases layer from the Segment step."
        )
        self.options = config_form(GrainsConfig, ["min_grain_area_um2", "split_touching", "use_image"])
        return [self.phases, *self.options.values()]

    def _add_outputs(self, layout):
        self.g_label = Label(value="")
        self.summary_table = Table()
        self.grain_table = Table()
        layout.addWidget(self.g_label.native)
        layout.addWidget(self.summary_table.native)
        layout.addWidget(self.grain_table.native)

    def _prepare(self):
        layer = _required(self.phases, "the phases layer")
        phases = _phase_maps(layer)
        region = semtrack_info(layer, "region")
        pixel_size_um = semtrack_info(layer, "pixel_size_um")
        images = semtrack_info(layer, "registered_stack", None)
        options = form_values(self.options)
        config = Config().updated({"grains": options})

        def task(progress):
            labels = np.zeros(phases.shape, np.int32)
            tables, summaries = [], []
            for i in range(len(phases)):
                labels[i], table, summary = pipeline.measure_frame_grains(
                    phases[i],
                    region=region,
                    pixel_size_um=pixel_size_um,
                    config=config,
                    image=None if images is None else images[i],
                )
                summaries.append(summary)
                tables.append(table.assign(frame=i))
                progress("grains", i + 1, len(phases))
            table = pd.concat(tables, ignore_index=True)
            table = table[["frame"] + [c for c in table.columns if c != "frame"]]
            return {
                "layer": layer,
                "labels": labels,
                "table": table,
                "summary": pd.DataFrame(summaries),
                "options": options,
            }

        return task

    def _show(self, result):
        layer = result["layer"]
        times = semtrack_info(layer, "times_h")
        summary = result["summary"]
        summary.insert(0, "time_h", times[: len(summary)])
        summary.insert(0, "frame", np.arange(len(summary)))
        info = _derived(layer, grains=result["table"], grain_summary=summary, config={"grains": result["options"]})
        for key in ("phases", "fractions"):
            info.pop(key, None)
        replace_layer(
            self.viewer,
            "grains",
            lambda: self.viewer.add_labels(
                result["labels"],
                name="grains",
                scale=_scale(layer),
                opacity=0.5,
                metadata={"times_h": times, "semtrack": info},
            ),
        )
        self.summary, self.grains = summary, result["table"]
        unit = semtrack_info(layer, "length_unit", "µm")
        g_cols = [c for c in summary.columns if c.startswith("astm_g")]
        last = summary.iloc[-1]
        self.g_label.value = (
            f"frame {int(last['frame'])}: {int(last.get('grain_count', 0))} grains; "
            + ", ".join(f"{c} = {last[c]:.2f}" for c in g_cols)
            + ("" if unit == "µm" else " (uncalibrated: G needs µm, lengths in px)")
        )
        show_table(self.summary_table, summary)
        show_table(self.grain_table, result["table"])


# --------------------------------------------------------------------------------------------------
# Track


class TrackWidget(StepWidget):
    """Label the Na3PO4 islands of every frame and link them over time
    (:func:`semtrack.track.label_islands`, :func:`semtrack.track.link_islands`).

    Adds ``islands`` (Labels with persistent ids), ``island tracks`` (Tracks, with the ``graph``
    of coalescences and splits from :func:`semtrack.track.to_napari_tracks`) and ``island events``
    (Points coloured by event type), and opens the event table in a dock.
    """

    run_label = "Track islands"

    def _build(self):
        self.phases = layer_picker(
            self.viewer, Labels, label="phases", need="phases", tooltip="The phases layer from the Segment step."
        )
        self.options = config_form(TrackConfig, ["min_island_area_um2", "link_tolerance_um", "min_overlap_fraction"])
        return [self.phases, *self.options.values()]

    def _add_outputs(self, layout):
        self.counts = Label(value="")
        layout.addWidget(self.counts.native)
        self.event_table = Table()
        self.event_dock = None

    def _prepare(self):
        layer = _required(self.phases, "the phases layer")
        phases = _phase_maps(layer)
        region = semtrack_info(layer, "region")
        pixel_size_um = semtrack_info(layer, "pixel_size_um")
        times = semtrack_info(layer, "times_h")
        options = form_values(self.options)
        config = Config().updated({"track": options})

        def task(progress):
            labels = []
            for i in range(len(phases)):
                labels.append(
                    pipeline.label_frame_islands(phases[i], region=region, pixel_size_um=pixel_size_um, config=config)
                )
                progress("islands", i + 1, len(phases))
            progress("link", 0, 1)
            lineage, maps = track.link_islands(
                labels,
                times,
                pixel_size_um=pixel_size_um,
                link_tolerance_um=options["link_tolerance_um"],
                min_overlap_fraction=options["min_overlap_fraction"],
                region=region,
            )
            tracks, graph = track.to_napari_tracks(lineage)
            progress("link", 1, 1)
            return {
                "layer": layer,
                "maps": np.stack(maps).astype(np.int32),
                "lineage": lineage,
                "tracks": tracks,
                "graph": graph,
                "options": options,
            }

        return task

    def _show(self, result):
        layer, lineage = result["layer"], result["lineage"]
        times = semtrack_info(layer, "times_h")
        scale = _scale(layer)
        info = _derived(layer, lineage=lineage, config={"track": result["options"]})
        for key in ("phases", "fractions"):
            info.pop(key, None)
        metadata = {"times_h": times, "semtrack": info}
        replace_layer(
            self.viewer,
            "islands",
            lambda: self.viewer.add_labels(
                result["maps"],
                name="islands",
                scale=scale,
                opacity=0.6,
                metadata=metadata,
            ),
        )
        tracks = np.asarray(result["tracks"], dtype=float)
        if len(tracks):
            replace_layer(
                self.viewer,
                "island tracks",
                lambda: self.viewer.add_tracks(
                    tracks,
                    graph=result["graph"],
                    name="island tracks",
                    scale=scale,
                    tail_length=len(times),
                    metadata=metadata,
                ),
            )
        elif "island tracks" in self.viewer.layers:
            self.viewer.layers.remove("island tracks")
        events = lineage.events.reset_index(drop=True)
        coords = np.column_stack([events["frame_to"], events["y_px"], events["x_px"]]).astype(float)
        colors = [event_color(e) for e in events["event"]]
        replace_layer(
            self.viewer,
            "island events",
            lambda: self.viewer.add_points(
                coords.reshape(-1, 3),
                name="island events",
                scale=scale,
                features=events,
                face_color=colors if colors else "white",
                border_color="black",
                size=24,
                symbol="star",
                out_of_slice_display=False,
                metadata=metadata,
            ),
        )
        self.events = events
        counts = events["event"].value_counts().to_dict() if len(events) else {}
        self.counts.value = "events: " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none")
        show_table(self.event_table, events)
        if self.event_dock is None:
            self.event_dock = self.viewer.window.add_dock_widget(
                self.event_table, name="semtrack events", area="bottom"
            )
        self.event_dock.show()


# --------------------------------------------------------------------------------------------------
# Export


class ExportWidget(StepWidget):
    """Write the output contract and report with :func:`semtrack.pipeline.run`, using the choices
    made in the other widgets (marker, model, segmentation method or classifier, grain and island
    options) as carried by the chosen layer."""

    run_label = "Export"

    def _build(self):
        self.source = layer_picker(
            self.viewer,
            Layer,
            label="from layer",
            need="series",
            tooltip="A semtrack layer; its step choices (and those before it) are used.",
        )
        self.out_dir = FileEdit(label="output folder", mode="d", value="")
        self.report = config_form(ReportConfig, ["html"])["html"]
        self.report.label = "HTML report"
        return [self.source, self.out_dir, self.report]

    def _add_outputs(self, layout):
        self.table = Table()
        layout.addWidget(self.table.native)

    def config_for(self, layer: Layer) -> Config:
        """The :class:`~semtrack.config.Config` of the steps run on ``layer``'s series.

        Grains and Track both start from the phases layer, so their choices sit on different
        layers: the choices stored on every layer of the same series are merged (oldest layer
        first), and the chosen layer's own choices win.
        """
        series = semtrack_info(layer, "series")
        others = [other for other in self.viewer.layers if other is not layer]
        changes: dict[str, dict[str, Any]] = {}
        for source in [*others, layer]:
            if semtrack_info(source, "series") is not series:
                continue
            for section, values in semtrack_info(source, "config", {}).items():
                changes.setdefault(section, {}).update(copy.deepcopy(values))
        changes.setdefault("report", {})["html"] = bool(self.report.value)
        return Config().updated(changes)

    def _prepare(self):
        layer = _required(self.source, "a semtrack layer")
        series = semtrack_info(layer, "series")
        out = str(self.out_dir.value)
        if out in ("", "."):
            raise ValueError("choose an output folder in the `output folder` box")
        out_dir = Path(out)
        config = self.config_for(layer)
        classifier = semtrack_info(layer, "classifier")
        if config.segment.method == "classifier" and not config.segment.classifier_path:
            if classifier is None:
                raise ValueError("the segmentation used a classifier that is not available; segment again")
            # The pipeline reads classifiers from files: keep the one trained on screen with the results.
            path = out_dir / "pixel_classifier.pkl"
            config = config.updated({"segment": {"classifier_path": str(path)}})
        else:
            path = None

        def task(progress):
            if path is not None:
                out_dir.mkdir(parents=True, exist_ok=True)
                classifier.save(path)
            return pipeline.run(series, config=config, out_dir=out_dir, progress=progress)

        return task

    def _show(self, result):
        self.status.setText(f"written to {result.out_dir}")
        self.frames = result.frames
        show_table(self.table, result.headline())
