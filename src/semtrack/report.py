"""HTML report of a semtrack output folder.

:func:`render` reads the files ``semtrack run`` wrote (the output contract:
``frames.csv``, ``run.json``, ``labels/``, ``previews/``, ``grains.csv``,
``islands.csv``, ``events.csv``, ``intervals.csv``, ``kinetics.json``,
``event_maps/``) and writes ``report.html``: one self-contained file (figures
embedded as base64 PNG data URIs, CSS inline, no JavaScript, nothing fetched)
plus the same figures as ``figures/*.png`` for papers and slides.

Only ``frames.csv`` is required. Any other missing or unreadable piece turns its
section into a one-line note saying why, so a partial run still gives a report.
Columns are read by name; extra columns are ignored.

Figures are drawn with matplotlib's Agg canvas on stand-alone ``Figure``
objects, so rendering never touches pyplot's global state and works in worker
processes and threads without a display.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from ._atomic import atomic_path, atomic_write_bytes
from ._version import __version__
from .config import OUTSIDE, PHASE_NAMES
from .errors import OutputError

__all__ = ["render", "PHASE_COLOURS", "EVENT_COLOURS"]

logger = logging.getLogger(__name__)

#: Overlay colour of each phase code (Okabe-Ito palette: distinguishable with
#: the common colour-vision deficiencies and in greyscale print).
PHASE_COLOURS: dict[int, str] = {0: "#0072B2", 1: "#009E73", 2: "#E69F00", 3: "#CC79A7"}
#: Bar colour of each island event type.
EVENT_COLOURS: dict[str, str] = {
    "formation": "#009E73",
    "coalescence": "#0072B2",
    "split": "#E69F00",
    "dissolution": "#D55E00",
}
_EVENT_TYPES = tuple(EVENT_COLOURS)
_PHASE_LABELS = {"pore": "pore", "glass": "glass", "nasicon": "NaSICON", "na3po4": "Na$_3$PO$_4$"}
_PHASE_LABELS_HTML = {"pore": "pore", "glass": "glass", "nasicon": "NaSICON", "na3po4": "Na<sub>3</sub>PO<sub>4</sub>"}
_OUTSIDE_COLOUR = "#6b6b6b"
# Minor phases drawn more opaque: small dark islands and pores must stand out
# against the bright grains, while the grain texture stays visible under glass/NaSICON.
_OVERLAY_ALPHA = {0: 0.7, 1: 0.45, 2: 0.4, 3: 0.8}
_POOR_COLOUR = "#D55E00"
_OK_COLOUR = "#4d8fc4"
_DPI = 110
# Long side of each overlay panel in pixels: enough to see islands of a few
# pixels at the previews' scale, small enough to keep the HTML light.
_PANEL_MAX_PX = 512
_FRAMES_PER_ROW = 4
#: Long series: the report shows this many frames / event maps (evenly spread, first and last
#: included) so its size and memory stay bounded; the rest are linked or in the output folder.
_MAX_SHOWN = 8
# Long side of the event maps embedded in the page (the full-size files are linked).
_THUMBNAIL_MAX_PX = 1280
_THUMBNAIL_JPEG_QUALITY = 88
# Times spanning more than this ratio (max / smallest positive) get a log axis.
_LOG_TIME_RATIO = 20.0

_SECTIONS = (
    ("summary", "Run summary"),
    ("registration", "Registration quality"),
    ("overlays", "Frames with phase overlays"),
    ("fractions", "Phase fractions vs time"),
    ("glass", "Glass fraction vs time"),
    ("islands", "Na3PO4 islands vs time"),
    ("events", "Island events per interval"),
    ("event-maps", "Event maps"),
    ("grains", "Grain size distribution"),
    ("tables", "Tables"),
)
_FIGURE_NAMES = (
    "registration",
    "overlays",
    "phase_fractions",
    "glass_fraction",
    "islands",
    "events",
    "grain_sizes",
)


def render(
    out_dir: str | Path,
    *,
    title: str | None = None,
    time_scale: Literal["auto", "linear", "log"] = "auto",
) -> Path:
    """Write ``report.html`` and ``figures/*.png`` for a semtrack output folder.

    Parameters
    ----------
    out_dir : str or Path
        Folder written by ``semtrack run`` (must contain ``frames.csv``).
    title : str, optional
        Report title; default ``"semtrack report: <folder name>"``.
    time_scale : {"auto", "linear", "log"}, optional
        Time axes. ``"auto"`` uses a log axis (symmetric-log when a frame is at
        0 h) when the exposure times span more than a factor of 20, as in the
        usual 24 h ... 1055 h series, and a linear one otherwise.

    Returns
    -------
    Path
        The written ``out_dir/report.html``.

    Raises
    ------
    OutputError
        ``out_dir`` is not a folder, has no readable ``frames.csv``, or the
        report cannot be written there.
    ValueError
        ``time_scale`` is not one of the accepted values.

    Examples
    --------
    >>> from semtrack.report import render
    >>> render("results/sample_A")  # doctest: +SKIP
    PosixPath('results/sample_A/report.html')
    """
    if title is not None and not isinstance(title, str):
        raise TypeError(f"title must be a str or None, got {type(title).__name__}")
    if time_scale not in ("auto", "linear", "log"):
        raise ValueError(f"time_scale must be 'auto', 'linear' or 'log', got {time_scale!r}")
    out_dir = Path(out_dir)
    outputs = _load_outputs(out_dir)
    use_log = _use_log_time(outputs.frames["time_h"].to_numpy(float), time_scale)
    fig_dir = out_dir / "figures"
    figures = _Figures(fig_dir)
    builders = {
        "summary": _summary_section,
        "registration": _registration_section,
        "overlays": _overlay_section,
        "fractions": _fractions_section,
        "glass": _glass_section,
        "islands": _islands_section,
        "events": _events_section,
        "event-maps": _event_maps_section,
        "grains": _grains_section,
        "tables": _tables_section,
    }
    bodies = {}
    for key, heading in _SECTIONS:
        try:
            bodies[key] = builders[key](outputs, figures, use_log)
        except OutputError:
            raise
        except Exception as exc:  # noqa: BLE001 - one broken section must not lose the whole report
            logger.warning("report section %r could not be drawn: %s", heading, exc, exc_info=True)
            bodies[key] = _note(f"This section could not be drawn: {type(exc).__name__}: {exc}")
    try:
        figures.remove_stale(_FIGURE_NAMES)
        page = _page(title or f"semtrack report: {out_dir.resolve().name}", outputs, bodies)
        target = out_dir / "report.html"
        with atomic_path(target) as tmp:
            tmp.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise OutputError(f"cannot write the report ({exc.strerror or exc})", path=out_dir) from exc
    return target


# --------------------------------------------------------------------------- loading


@dataclass
class _Outputs:
    folder: Path
    frames: pd.DataFrame
    run: dict[str, Any]
    transforms: dict[str, Any] | None
    grains: pd.DataFrame | None
    islands: pd.DataFrame | None
    events: pd.DataFrame | None
    intervals: pd.DataFrame | None
    kinetics: dict[str, Any] | None
    problems: dict[str, str] = field(default_factory=dict)

    @property
    def pixel_size_um(self) -> float | None:
        value = self.run.get("pixel_size_um")
        if value is None and "pixel_size_um" in self.frames:
            finite = self.frames["pixel_size_um"].dropna()
            value = finite.iloc[0] if len(finite) else None
        try:
            value = float(value) if value is not None else None
        except (TypeError, ValueError):
            return None
        return value if value is not None and math.isfinite(value) and value > 0 else None

    @property
    def calibrated(self) -> bool:
        source = str(self.run.get("pixel_size_source", "")).lower()
        unit = str(self.run.get("length_unit", "um")).lower()
        return self.pixel_size_um is not None and source != "uncalibrated" and unit != "px"

    @property
    def length_unit(self) -> str:
        return "µm" if self.calibrated else "px"

    @property
    def area_unit(self) -> str:
        return "µm²" if self.calibrated else "px²"

    @property
    def reference(self) -> int:
        for source in (self.transforms or {}, self.run.get("config", {}).get("registration", {})):
            if isinstance(source, dict) and isinstance(source.get("reference"), int):
                return source["reference"]
        return int(self.frames["frame"].iloc[0])

    def config_value(self, section: str, name: str, default: Any) -> Any:
        value = self.run.get("config", {}).get(section, {}).get(name)
        return default if value is None else value

    def phase_names(self) -> tuple[str, ...]:
        names = self.config_value("segment", "phase_names", PHASE_NAMES)
        return tuple(names) if len(names) == len(PHASE_NAMES) else PHASE_NAMES


def _load_outputs(out_dir: Path) -> _Outputs:
    if not out_dir.is_dir():
        raise OutputError("not a folder; give the output folder written by `semtrack run`", path=out_dir)
    frames_path = out_dir / "frames.csv"
    if not frames_path.is_file():
        raise OutputError(
            "no frames.csv here; is this a semtrack output folder? Run `semtrack run SERIES --out` first",
            path=out_dir,
        )
    try:
        frames = pd.read_csv(frames_path)
    except (OSError, ValueError) as exc:
        raise OutputError(f"frames.csv cannot be read ({exc})", path=out_dir) from exc
    missing = [c for c in ("frame", "time_h") if c not in frames.columns]
    if missing:
        raise OutputError(f"frames.csv lacks the column(s) {', '.join(missing)}", path=out_dir)
    if frames.empty:
        raise OutputError("frames.csv has no rows; the run produced no frames", path=out_dir)
    frames = frames.sort_values("time_h", kind="stable").reset_index(drop=True)

    problems: dict[str, str] = {}

    def read_json(name: str) -> dict[str, Any] | None:
        path = out_dir / name
        if not path.is_file():
            problems[name] = f"{name} is missing"
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            problems[name] = f"{name} cannot be read ({exc})"
            return None
        if not isinstance(data, dict):
            problems[name] = f"{name} does not hold a JSON object"
            return None
        return data

    def read_csv(name: str) -> pd.DataFrame | None:
        path = out_dir / name
        if not path.is_file():
            problems[name] = f"{name} is missing"
            return None
        try:
            # Keep id lists such as "3;7" as text, never parsed as numbers.
            return pd.read_csv(path, dtype={"parents": str, "islands_before": str, "islands_after": str})
        except pd.errors.EmptyDataError:
            return pd.DataFrame()
        except (OSError, ValueError) as exc:
            problems[name] = f"{name} cannot be read ({exc})"
            return None

    run = read_json("run.json") or {}
    return _Outputs(
        folder=out_dir,
        frames=frames,
        run=run,
        transforms=read_json("transforms.json"),
        grains=read_csv("grains.csv"),
        islands=read_csv("islands.csv"),
        events=read_csv("events.csv"),
        intervals=read_csv("intervals.csv"),
        kinetics=read_json("kinetics.json"),
        problems=problems,
    )


def _column(df: pd.DataFrame | None, name: str) -> np.ndarray | None:
    """Float values of a column, or None when it is absent or has no finite value."""
    if df is None or name not in df.columns:
        return None
    values = pd.to_numeric(df[name], errors="coerce").to_numpy(float)
    return values if np.isfinite(values).any() else None


def _px_name(name: str) -> str:
    """The name ``semtrack run`` gives a µm column when the series is uncalibrated."""
    for um, px in (("_um2", "_px2"), ("_um", "_px"), ("_per_mm2", "_per_px2_x1e6")):
        if name.endswith(um) or f"{um}_" in name:
            return name.replace(um, px, 1)
    return name


def _unit_column(df: pd.DataFrame | None, name: str) -> np.ndarray | None:
    """Values of a length or area column under its µm name, or its px name when uncalibrated."""
    values = _column(df, name)
    return values if values is not None else _column(df, _px_name(name))


def _unit_headers(headers: dict[str, str]) -> dict[str, str]:
    """Table headers for both the µm and the px spelling of each column."""
    return headers | {_px_name(k): v for k, v in headers.items()}


def _as_bool(series: pd.Series) -> np.ndarray:
    text = series.astype(str).str.strip().str.lower()
    return text.isin(("true", "1", "1.0", "yes")).to_numpy()


# --------------------------------------------------------------------------- figures


class _Figures:
    """Saves figures to ``figures/NAME.png`` and returns them as data URIs."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.written: set[str] = set()

    def save(self, fig, name: str) -> str:
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        FigureCanvasAgg(fig)
        buffer = io.BytesIO()
        # No "Software" stamp: the same outputs give byte-identical PNGs. Deflate level 1: the
        # frame overlays (most of the page) encode 3x faster than at Pillow's default and are no larger.
        fig.savefig(
            buffer,
            format="png",
            dpi=fig.dpi,
            metadata={"Software": None},
            facecolor="white",
            pil_kwargs={"compress_level": 1},
        )
        data = buffer.getvalue()
        try:
            atomic_write_bytes(self.folder / f"{name}.png", data)
        except OSError as exc:
            raise OutputError(f"cannot write figures/{name}.png ({exc.strerror or exc})", path=self.folder) from exc
        self.written.add(name)
        return _data_uri(data)

    def remove_stale(self, names: Sequence[str]) -> None:
        # A section that cannot be drawn this time must not leave last run's figure behind.
        for name in names:
            if name not in self.written:
                (self.folder / f"{name}.png").unlink(missing_ok=True)


def _data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def _figure(width_in: float, height_in: float, *, dpi: int = _DPI):
    from matplotlib.figure import Figure

    return Figure(figsize=(width_in, height_in), dpi=dpi, layout="constrained")


def _style(ax) -> None:
    ax.grid(True, color="#e3e3e3", linewidth=0.7)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.tick_params(labelsize=9)


def _use_log_time(times_h: np.ndarray, time_scale: str) -> bool:
    if time_scale != "auto":
        return time_scale == "log"
    positive = times_h[np.isfinite(times_h) & (times_h > 0)]
    return bool(positive.size >= 2 and positive.max() / positive.min() > _LOG_TIME_RATIO)


def _time_axis(ax, times_h: np.ndarray, use_log: bool) -> None:
    """Time axis in hours with a tick at every frame's time."""
    from matplotlib.ticker import NullLocator

    times = np.unique(times_h[np.isfinite(times_h)])
    if times.size == 0:
        return
    if use_log:
        positive = times[times > 0]
        if positive.size == 0:
            use_log = False
        elif (times <= 0).any():
            # Symmetric log keeps a 0 h frame on the axis; linear up to the first exposure.
            ax.set_xscale("symlog", linthresh=float(positive.min()), linscale=0.6)
            ax.set_xlim(-0.05 * positive.min(), times.max() * 1.3)
        else:
            ax.set_xscale("log")
            ax.set_xlim(times.min() / 1.4, times.max() * 1.4)
    if not use_log:
        span = times.max() - times.min()
        pad = 0.06 * span if span > 0 else max(1.0, 0.1 * abs(times.max()))
        ax.set_xlim(times.min() - pad, times.max() + pad)
    ax.xaxis.set_minor_locator(NullLocator())
    positions = ax.xaxis.get_transform().transform(times)
    lo, hi = ax.xaxis.get_transform().transform(np.asarray(ax.get_xlim()))
    gaps = np.diff(positions) / max(abs(hi - lo), 1e-12)
    labels = [f"{t:g}" for t in times]
    lowered = False
    for i, gap in enumerate(gaps, start=1):
        # Stagger labels of frames close on the axis (845 h and 1055 h on a log axis).
        lowered = gap < 0.08 and not lowered
        if lowered:
            labels[i] = "\n" + labels[i]
    ax.set_xticks(times)
    ax.set_xticklabels(labels)
    ax.set_xlabel("exposure time (h, log scale)" if use_log else "exposure time (h)", fontsize=9)


def _figure_html(uri: str, alt: str, caption: str = "") -> str:
    caption_html = f"<figcaption>{caption}</figcaption>" if caption else ""
    return f'<figure><img src="{uri}" alt="{html.escape(alt)}">{caption_html}</figure>'


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


# --------------------------------------------------------------------------- sections


def _summary_section(o: _Outputs, figures: _Figures, use_log: bool) -> str:
    run = o.run
    rows: list[tuple[str, str]] = []
    rows.append(("semtrack version", html.escape(str(run.get("semtrack_version", "unknown")))))
    rows.append(("run created", html.escape(str(run.get("created", "unknown")))))
    rows.append(("report rendered by", f"semtrack {html.escape(__version__)}"))
    rows.append(("output folder", f"<code>{html.escape(str(o.folder.resolve()))}</code>"))
    rows.append(("frames", f"{len(o.frames)} (reference: frame {o.reference})"))
    times = o.frames["time_h"].to_numpy(float)
    rows.append(("exposure times", html.escape(", ".join(f"{t:g} h" for t in times))))
    if o.calibrated:
        source = html.escape(str(run.get("pixel_size_source", "unknown")))
        rows.append(("pixel size", f"{o.pixel_size_um:.5g} µm (source: {source})"))
    else:
        rows.append(
            (
                "pixel size",
                '<strong class="warn">uncalibrated, px units</strong>: no pixel size was given or found '
                "in the files, so lengths are in px and areas in px² throughout this report",
            )
        )
    reg = run.get("registration") or {}
    if reg:
        marker = reg.get("marker")
        marker_text = (
            "x0,y0,x1,y1 = " + ", ".join(str(v) for v in marker) if isinstance(marker, (list, tuple)) else str(marker)
        )
        rows.append(
            (
                "registration",
                html.escape(
                    f"model {reg.get('model', '?')}, strategy {reg.get('strategy', '?')}, "
                    f"marker {marker_text} ({reg.get('marker_source', '?')})"
                ),
            )
        )
    out = ['<table class="kv">']
    out += [f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows]
    out.append("</table>")

    warnings = [str(w) for w in run.get("warnings") or []]
    out.append(f"<h3>Warnings ({len(warnings)})</h3>")
    if warnings:
        out.append('<ul class="warnings">' + "".join(f"<li>{html.escape(w)}</li>" for w in warnings) + "</ul>")
    else:
        out.append("<p>None.</p>")
    if o.problems:
        out.append(
            '<p class="note">Missing or unreadable output files: '
            + html.escape("; ".join(o.problems.values()))
            + ".</p>"
        )

    out.append("<h3>Inputs</h3>")
    inputs = run.get("inputs") or []
    if inputs:
        out.append('<table class="data"><tr><th>#</th><th>file</th><th>time (h)</th><th>sha256</th></tr>')
        for i, item in enumerate(inputs):
            item = item if isinstance(item, dict) else {"file": item}
            time_h = item.get("time_h")
            time_text = f"{time_h:g}" if isinstance(time_h, (int, float)) else html.escape(str(time_h or ""))
            out.append(
                f"<tr><td>{i}</td><td><code>{html.escape(str(item.get('file', '')))}</code></td>"
                f'<td class="num">{time_text}</td>'
                f'<td><code class="hash">{html.escape(str(item.get("sha256", "")))}</code></td></tr>'
            )
        out.append("</table>")
    else:
        out.append(_note("run.json lists no inputs."))

    out.append("<h3>Parameters</h3>")
    config = run.get("config")
    if isinstance(config, dict) and config:
        out.append(_config_table(config))
    else:
        out.append(_note("run.json holds no parameters (config)."))
    return "\n".join(out)


def _config_table(config: dict[str, Any]) -> str:
    out = ['<table class="data params"><tr><th>section</th><th>parameter</th><th>value</th></tr>']
    for section, values in config.items():
        items = values.items() if isinstance(values, dict) else [("", values)]
        for name, value in items:
            text = "unset" if value is None else json.dumps(value, ensure_ascii=False)
            out.append(
                f"<tr><td>{html.escape(str(section))}</td><td><code>{html.escape(str(name))}</code></td>"
                f"<td><code>{html.escape(text)}</code></td></tr>"
            )
    out.append("</table>")
    return "".join(out)


def _poor_frames(o: _Outputs) -> np.ndarray:
    frames = o.frames
    if "reg_ok" in frames.columns:
        return ~_as_bool(frames["reg_ok"])
    scores = _column(frames, "reg_score")
    if scores is None:
        return np.zeros(len(frames), bool)
    min_score = float(o.config_value("registration", "min_score", 0.5))
    return np.isfinite(scores) & (scores < min_score)


def _registration_section(o: _Outputs, figures: _Figures, use_log: bool) -> str:
    frames = o.frames
    scores = _column(frames, "reg_score")
    poor = _poor_frames(o)
    out = []
    if scores is None:
        out.append(_note("No registration scores: frames.csv has no reg_score column with values."))
    else:
        min_score = float(o.config_value("registration", "min_score", 0.5))
        fail_score = float(o.config_value("registration", "fail_score", 0.2))
        fig = _figure(max(5.5, min(10.0, 2.5 + 0.7 * len(frames))), 2.9)
        ax = fig.add_subplot()
        x = np.arange(len(frames))
        shown = np.where(np.isfinite(scores), scores, 0.0)
        colours = [_POOR_COLOUR if p else _OK_COLOUR for p in poor]
        ax.bar(x, shown, color=colours, width=0.7)
        ax.axhline(min_score, color="#555", linestyle="--", linewidth=1, label=f"poor below {min_score:g}")
        ax.axhline(fail_score, color="#b00", linestyle=":", linewidth=1, label=f"fails below {fail_score:g}")
        for xi, s, p in zip(x, scores, poor):
            label = "n/a" if not np.isfinite(s) else f"{s:.3f}"
            ax.text(
                xi,
                (s if np.isfinite(s) else 0) + 0.02,
                label + (" poor" if p else ""),
                ha="center",
                va="bottom",
                fontsize=8,
                color=_POOR_COLOUR if p else "#222",
            )
        ax.set_xticks(x)
        ax.set_xticklabels(
            [
                f"{int(f)}{' (ref)' if int(f) == o.reference else ''}\n{t:g} h"
                for f, t in zip(frames["frame"], frames["time_h"])
            ],
            fontsize=8,
        )
        ax.set_xlabel("frame (exposure time)", fontsize=9)
        ax.set_ylabel("marker score (NCC, 1 = perfect)", fontsize=9)
        ax.set_ylim(min(0.0, np.nanmin(scores) - 0.05), 1.12)
        _style(ax)
        ax.grid(False, axis="x")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
        uri = figures.save(fig, "registration")
        n_poor = int(poor.sum())
        caption = (
            f"Normalised cross-correlation in the marker after alignment, per frame. "
            f"{n_poor} frame(s) flagged poor (red)."
            if n_poor
            else "Normalised cross-correlation in the marker after alignment, per frame. No frame flagged poor."
        )
        out.append(_figure_html(uri, "registration score per frame", caption))
    cols = [
        c
        for c in ("frame", "time_h", "dx_px", "dy_px", "rotation_deg", "scale", "reg_score", "reg_ok")
        if c in frames.columns
    ]
    headers = {
        "frame": "frame",
        "time_h": "time (h)",
        "dx_px": "dx (px)",
        "dy_px": "dy (px)",
        "rotation_deg": "rotation (°)",
        "scale": "scale",
        "reg_score": "score",
        "reg_ok": "ok",
    }
    out.append(_table_html(frames[cols], headers=headers, highlight=poor))
    if poor.any():
        out.append(
            '<p class="legend-line"><span class="swatch poor"></span> poor registration: check these '
            "frames before trusting their numbers.</p>"
        )
    return "\n".join(out)


def _read_label(path: Path) -> np.ndarray | None:
    if not path.is_file():
        return None
    import tifffile

    try:
        return np.asarray(tifffile.imread(path))
    except Exception as exc:  # noqa: BLE001 - any decoder failure means the same: skip this panel
        logger.warning("cannot read %s: %s", path, exc)
        return None


def _read_preview(path: Path) -> np.ndarray | None:
    """The preview as 8-bit grey (kept 8-bit until it is shrunk: a float copy of a large frame
    would be the largest thing the report holds)."""
    if not path.is_file():
        return None
    return _read_png(path, colour=False)


def _read_png(path: Path, *, colour: bool) -> np.ndarray | None:
    """A PNG as 8-bit grey, or RGB when ``colour``; None (logged) if unreadable.

    The PNGs semtrack writes are decoded by :func:`semtrack.write.png_pixels` (the same pixels
    five to seven times faster, which on long series of large frames is most of the report's
    per-frame cost); any other PNG by OpenCV.
    """
    import cv2

    from .write import png_pixels

    try:
        pixels = png_pixels(path.read_bytes())
    except OSError:
        pixels = None
    if pixels is not None and (pixels.ndim == 3) == colour:
        return pixels
    image = cv2.imread(str(path), cv2.IMREAD_COLOR if colour else cv2.IMREAD_GRAYSCALE)
    if image is None:
        logger.warning("cannot read %s", path)
        return None
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if colour else image


def _block_mean(image: np.ndarray, factor: int) -> np.ndarray:
    if factor <= 1:
        return image
    rows, cols = (image.shape[0] // factor) * factor, (image.shape[1] // factor) * factor
    trimmed = image[:rows, :cols]
    if image.dtype == np.uint8:
        # Exact integer block sums (rows first, a contiguous pass), then the mean's one division:
        # the same float64 values as .mean(axis=(1, 3)), which is ten times slower here.
        sums = trimmed.reshape(rows // factor, factor, cols).sum(axis=1, dtype=np.uint32)
        return sums.reshape(rows // factor, cols // factor, factor).sum(axis=2) / float(factor * factor)
    return trimmed.reshape(rows // factor, factor, cols // factor, factor).mean(axis=(1, 3))


def _overlay_rgb(grey: np.ndarray | None, phases: np.ndarray | None, alpha: float | None = None) -> np.ndarray:
    """RGB in [0, 1]: the grey image tinted by phase; ``alpha`` None uses :data:`_OVERLAY_ALPHA`."""
    from matplotlib.colors import to_rgb

    shape = grey.shape if grey is not None else phases.shape
    base = np.repeat((grey if grey is not None else np.full(shape, 0.5, np.float32))[..., None], 3, axis=2)
    if phases is None:
        return base
    # Per code: the weight of the grey and the weighted tint, looked up per pixel (one pass, not a
    # masked pass per phase); the same float32 operations as blending each phase's pixels apart.
    keep = np.ones(256, np.float32)  # codes without a colour stay grey: 1 * base + 0
    tint = np.zeros((256, 3), np.float32)
    for code, colour in PHASE_COLOURS.items():
        a = _OVERLAY_ALPHA[code] if alpha is None else alpha
        keep[code] = 1 - a
        tint[code] = a * np.asarray(to_rgb(colour), np.float32)
    keep[OUTSIDE] = 0.35
    tint[OUTSIDE] = 0.65 * np.asarray(to_rgb(_OUTSIDE_COLOUR), np.float32)
    codes = phases
    if codes.dtype != np.uint8:  # codes beyond uint8 have no colour either: 254 stands for them
        codes = np.where((codes >= 0) & (codes <= OUTSIDE), codes, 254).astype(np.uint8)
    return keep[codes][..., None] * base + tint[codes]


def _nice_step(span: float) -> float:
    """The 1-2-5 step closest to giving five grid cells over ``span``."""
    raw = span / 5
    magnitude = 10 ** math.floor(math.log10(raw))
    return min((m * magnitude for m in (1, 2, 5, 10)), key=lambda step: abs(math.log(step / raw)))


def _panel_images(
    phases: np.ndarray | None, grey: np.ndarray | None, preview_downsample: int
) -> tuple[np.ndarray | None, np.ndarray | None, int]:
    """Bring a label map and a preview to one small common grid.

    Returns the phase map and grey image (either may be None) at most
    ``_PANEL_MAX_PX`` on their long side, and the number of reference-grid
    pixels per panel pixel.
    """
    if phases is not None and grey is not None:
        # Labels are at full resolution; previews may be downsampled by an integer factor.
        factor = max(1, preview_downsample, round(phases.shape[1] / max(grey.shape[1], 1)))
        phases = phases[::factor, ::factor]
        rows, cols = min(phases.shape[0], grey.shape[0]), min(phases.shape[1], grey.shape[1])
        phases, grey = phases[:rows, :cols], grey[:rows, :cols]
    else:
        factor = preview_downsample if grey is not None else 1
    shape = (grey if grey is not None else phases).shape
    extra = max(1, math.ceil(max(shape) / _PANEL_MAX_PX))
    if grey is not None:
        grey = _block_mean(grey, extra)
    if phases is not None:
        # Nearest-neighbour for labels: averaging codes would invent phases.
        phases = phases[::extra, ::extra]
        if grey is not None:
            phases = phases[: grey.shape[0], : grey.shape[1]]
    return phases, grey, factor * extra


def _spread(items: list, limit: int = _MAX_SHOWN) -> list:
    """At most ``limit`` items, evenly spread, first and last included."""
    if len(items) <= limit:
        return list(items)
    keep = np.unique(np.round(np.linspace(0, len(items) - 1, limit)).astype(int))
    return [items[i] for i in keep]


def _overlay_section(o: _Outputs, figures: _Figures, use_log: bool) -> str:
    labels_dir, previews_dir = o.folder / "labels", o.folder / "previews"
    downsample = int(o.run.get("preview_downsample") or 1)
    panels = []
    all_frames = list(zip(o.frames["frame"].astype(int), o.frames["time_h"]))
    for frame, time_h in _spread(all_frames):
        phases = _read_label(labels_dir / f"phases_{frame:03d}.tif")
        grey = _read_preview(previews_dir / f"frame_{frame:03d}.png")
        if phases is not None and phases.ndim != 2:
            phases = None
        if phases is None and grey is None:
            continue
        phases, grey, px_per_panel_px = _panel_images(phases, grey, downsample)
        if grey is not None:
            grey = (grey / 255.0).astype(np.float32)
        panels.append((frame, float(time_h), phases, grey, px_per_panel_px))
    if not panels:
        return _note("No frame can be shown: labels/phases_NNN.tif and previews/frame_NNN.png are missing.")

    from matplotlib.patches import Patch

    height, width = (panels[0][3] if panels[0][3] is not None else panels[0][2]).shape
    n_cols = min(len(panels), _FRAMES_PER_ROW)
    n_rows = math.ceil(len(panels) / n_cols)
    panel_w = 10.0 / max(n_cols, 2)
    panel_h = panel_w * height / width
    fig = _figure(panel_w * n_cols, (1.9 * panel_h + 0.3) * n_rows + 0.45, dpi=120)
    grid = fig.add_gridspec(2 * n_rows, n_cols)
    to_length = o.pixel_size_um if o.calibrated else 1.0
    unit = o.length_unit
    step = None
    for i, (frame, time_h, phases, grey, px_per_panel_px) in enumerate(panels):
        r, c = divmod(i, n_cols)
        scale = px_per_panel_px * to_length  # length units per panel pixel
        rows, cols = (grey if grey is not None else phases).shape
        extent = (0, cols * scale, rows * scale, 0)
        step = step or _nice_step(extent[1])
        for row_offset in (0, 1):
            ax = fig.add_subplot(grid[2 * r + row_offset, c])
            if row_offset == 0:
                rgb = _overlay_rgb(grey, None) if grey is not None else None
                ax.set_title(f"frame {frame} · {time_h:g} h", fontsize=9)
            else:
                rgb = _overlay_rgb(grey, phases) if phases is not None else None
            if rgb is None:
                ax.text(0.5, 0.5, "not available", ha="center", va="center", fontsize=8, transform=ax.transAxes)
                ax.set_xticks([])
                ax.set_yticks([])
                continue
            # 8-bit: matplotlib keeps resampling buffers per image, four times smaller than float.
            ax.imshow(np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8), extent=extent, interpolation="antialiased")
            # The reference grid: the same lines on every frame show whether features stay put. Drawn
            # as two line collections, not as ticks with grid lines: ticks cost a third of the figure.
            ax.set_xticks([])
            ax.set_yticks([])
            grid_style = {"colors": "white", "alpha": 0.45, "linewidth": 0.6}
            ax.vlines(np.arange(0, extent[1], step), 0, extent[2], **grid_style)
            ax.hlines(np.arange(0, extent[2], step), 0, extent[1], **grid_style)
            ax.set_xlim(0, extent[1])
            ax.set_ylim(extent[2], 0)
            for spine in ax.spines.values():
                spine.set_linewidth(0.5)
    names = o.phase_names()
    handles = [
        Patch(facecolor=PHASE_COLOURS[code], label=_PHASE_LABELS.get(name, name)) for code, name in enumerate(names)
    ]
    handles.append(Patch(facecolor=_OUTSIDE_COLOUR, label="outside analysed region"))
    n_legend_cols = len(handles) if n_cols >= 3 else 3
    fig.legend(handles=handles, loc="outside upper center", ncol=n_legend_cols, fontsize=9, frameon=False)
    uri = figures.save(fig, "overlays")
    caption = (
        f"Top row of each pair: BSE image registered into the reference frame's grid; bottom: phase map "
        f"over it. Grid lines every {step:g} {unit} in reference coordinates, identical in every frame."
    )
    legend = " ".join(
        f'<span class="swatch" style="background:{PHASE_COLOURS[code]}"></span>'
        f"{_PHASE_LABELS_HTML.get(name, html.escape(name))} (code {code})"
        for code, name in enumerate(names)
    )
    legend += f' <span class="swatch" style="background:{_OUTSIDE_COLOUR}"></span>outside ({OUTSIDE})'
    note = ""
    chosen = len(_spread(all_frames))
    if chosen < len(all_frames):
        note += (
            f"<p>{chosen} of {len(all_frames)} frames are shown, evenly spread over the series; every frame's "
            "phase map is in labels/ and its preview in previews/.</p>"
        )
    if len(panels) < chosen:
        note += _note(f"{chosen - len(panels)} frame(s) have neither a label map nor a preview.")
    return _figure_html(uri, "frames with phase overlays", caption) + f'<p class="legend-line">{legend}</p>' + note


def _ci(frames: pd.DataFrame, column: str) -> tuple[np.ndarray | None, np.ndarray | None]:
    return _column(frames, f"{column}_ci_low"), _column(frames, f"{column}_ci_high")


def _confidence_label(o: _Outputs) -> str:
    level = float(o.config_value("quantify", "confidence", 0.95))
    return f"{100 * level:g} % CI"


def _plot_with_band(ax, t, values, low, high, colour, label, ci_label):
    """Fractions (0-1) drawn in percent, with the confidence band when given."""
    k = 100.0
    order = np.argsort(t)
    t, values = t[order], values[order]
    if low is not None and high is not None and t.size == 1:
        # A band needs two frames; one frame gets an error bar.
        ax.errorbar(
            t,
            k * values,
            yerr=[k * (values - low), k * (high - values)],
            color=colour,
            capsize=4,
            marker="o",
            markersize=4.5,
            label=f"{label} ± {ci_label}",
        )
        return
    if low is not None and high is not None:
        ax.fill_between(t, k * low[order], k * high[order], color=colour, alpha=0.25, linewidth=0, label=ci_label)
    ax.plot(t, k * values, marker="o", markersize=4.5, color=colour, linewidth=1.6, label=label)


def _fractions_section(o: _Outputs, figures: _Figures, use_log: bool) -> str:
    frames = o.frames
    t = frames["time_h"].to_numpy(float)
    names = o.phase_names()
    available = [(code, name) for code, name in enumerate(names) if _column(frames, f"frac_{name}") is not None]
    if not available:
        return _note("No phase fractions: frames.csv has no frac_<phase> columns with values.")
    ci_label = _confidence_label(o)
    fig = _figure(10.0, 4.8)
    axes = fig.subplots(2, 2, sharex=True).ravel()
    for ax, (code, name) in zip(axes, available):
        low, high = _ci(frames, f"frac_{name}")
        _plot_with_band(ax, t, _column(frames, f"frac_{name}"), low, high, PHASE_COLOURS[code], "measured", ci_label)
        ax.set_title(_PHASE_LABELS.get(name, name), fontsize=10, color=PHASE_COLOURS[code], fontweight="bold")
        ax.set_ylabel("area fraction (%)", fontsize=9)
        _style(ax)
        _time_axis(ax, t, use_log)
    for i in range(min(2, len(available) - 2)):
        axes[i].set_xlabel("")  # the panel below carries it
    for ax in axes[len(available) :]:
        ax.set_visible(False)
    axes[0].legend(fontsize=8, loc="best")
    uri = figures.save(fig, "phase_fractions")
    has_ci = any(_ci(frames, f"frac_{n}")[0] is not None for _, n in available)
    caption = (
        f"Area fraction of each phase in the analysed region; shaded: {ci_label}."
        if has_ci
        else "Area fraction of each phase in the analysed region (no confidence intervals in frames.csv)."
    )
    caption += " Each panel has its own y-range."
    return _figure_html(uri, "phase fractions vs time", caption)


def _glass_section(o: _Outputs, figures: _Figures, use_log: bool) -> str:
    frames = o.frames
    values = _column(frames, "glass_fraction")
    if values is None:
        return _note("No glass fraction: frames.csv has no glass_fraction column with values.")
    t = frames["time_h"].to_numpy(float)
    low, high = _ci(frames, "glass_fraction")
    ci_label = _confidence_label(o)
    fig = _figure(6.5, 3.2)
    ax = fig.add_subplot()
    _plot_with_band(ax, t, values, low, high, PHASE_COLOURS[1], "glass / (glass + NaSICON)", ci_label)
    ax.set_ylabel("glass fraction (%)", fontsize=9)
    _style(ax)
    _time_axis(ax, t, use_log)
    ax.legend(fontsize=8, loc="best")
    uri = figures.save(fig, "glass_fraction")
    mean = np.nanmean(values)
    caption = (
        f"Glass fraction of the ceramic (glass / (glass + NaSICON), pores and Na<sub>3</sub>PO<sub>4</sub> "
        f"excluded); mean over frames {100 * mean:.1f} %."
    )
    if low is not None:
        caption += f" Shaded: {ci_label}."
    return _figure_html(uri, "glass fraction vs time", caption)


def _finite_number(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _jmak_fit(kinetics: dict[str, Any]) -> tuple[dict[str, float] | None, str]:
    """JMAK parameters ``k_per_h, n, f_max, r2`` and a note, from kinetics.json.

    Accepts the flat layout of :func:`semtrack.track.fit_kinetics` (``k_per_h``,
    ``n``, ``f_max``, ``r2``, ``jmak_note``) and a nested ``{"jmak": {"k", "n",
    "f_max", "r2"} or null}``.
    """
    nested = "jmak" in kinetics
    source = kinetics.get("jmak") if nested else kinetics
    if not nested and not {"k_per_h", "k"} & set(kinetics):
        return None, "not in kinetics.json"
    if not isinstance(source, dict):
        return None, "the fit did not converge or had too few frames"
    params = {
        "k_per_h": _finite_number(source.get("k_per_h", source.get("k"))),
        "n": _finite_number(source.get("n")),
        "f_max": _finite_number(source.get("f_max", 1.0)),
        "r2": _finite_number(source.get("r2")),
    }
    note = str(source.get("jmak_note", source.get("note", "")))
    if params["k_per_h"] is None or params["n"] is None or params["f_max"] is None:
        return None, note or "not fitted"
    return params, note


def _jmak_curve(params: dict[str, float], t: np.ndarray) -> np.ndarray:
    """``f_max (1 - exp(-(k t)^n))``, the form :func:`semtrack.track.fit_kinetics` fits."""
    kt = params["k_per_h"] * np.clip(t, 0, None)
    return params["f_max"] * (1.0 - np.exp(-(kt ** params["n"])))


def _size_fit(kinetics: dict[str, Any]) -> tuple[dict[str, float] | None, str]:
    """Power law ``A = a t^p`` of the mean island area: parameters ``a, p, r2`` and a note."""
    nested = "size_power_law" in kinetics
    source = kinetics.get("size_power_law") if nested else kinetics
    if not nested and not {"size_prefactor_um2", "size_prefactor_px2", "size_note"} & set(kinetics):
        return None, "not in kinetics.json"
    if not isinstance(source, dict):
        return None, "the fit did not converge or had too few frames"
    a = next((source[k] for k in ("size_prefactor_um2", "size_prefactor_px2", "a") if k in source), None)
    p = next((source[k] for k in ("size_exponent", "p") if k in source), None)
    params = {
        "a": _finite_number(a),
        "p": _finite_number(p),
        "r2": _finite_number(source.get("size_r2", source.get("r2"))),
    }
    note = str(source.get("size_note", source.get("note", "")))
    if params["a"] is None or params["p"] is None:
        return None, note or "not fitted"
    return params, note


def _fmt_params(params: dict[str, float], names: dict[str, str]) -> str:
    return ", ".join(f"{names[k]} = {v:.4g}" for k, v in params.items() if v is not None and k in names)


def _islands_section(o: _Outputs, figures: _Figures, use_log: bool) -> str:
    frames = o.frames
    t = frames["time_h"].to_numpy(float)
    counts = _column(frames, "n_islands")
    area = _unit_column(frames, "na3po4_area_um2")
    if area is None:
        area = _na3po4_pixel_area(o)
    mean_size = _mean_island_size(o)
    panels = [p for p in ("count", "area", "size") if {"count": counts, "area": area, "size": mean_size}[p] is not None]
    if not panels:
        return _note("No island data: frames.csv has no n_islands / na3po4_area_um2 values and islands.csv is missing.")
    kinetics = o.kinetics or {}
    fig = _figure(3.6 * len(panels) + 0.4, 3.3)
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    notes: list[str] = []
    # A fit curve needs a time span to be drawn over.
    t_fine = _fine_times(t) if np.unique(t[np.isfinite(t)]).size >= 2 else np.empty(0)
    for ax, panel in zip(axes, panels):
        if panel == "count":
            ax.plot(t, counts, marker="o", color=PHASE_COLOURS[3], linewidth=1.6)
            ax.set_ylabel("number of islands", fontsize=9)
            ax.set_title("island count", fontsize=10)
            ax.set_ylim(bottom=0)
        elif panel == "area":
            ax.plot(t, area, marker="o", color=PHASE_COLOURS[3], linewidth=1.6, label="measured")
            ax.set_ylabel(f"Na$_3$PO$_4$ area ({o.area_unit})", fontsize=9)
            ax.set_title("Na$_3$PO$_4$ area", fontsize=10)
            jmak, note = _jmak_fit(kinetics)
            curve = _jmak_area_curve(o, jmak, t_fine, area) if jmak else None
            if curve is not None and curve.size:
                ax.plot(t_fine, curve, color="#333", linestyle="--", linewidth=1.2, label="JMAK fit")
                ax.legend(fontsize=8, loc="best")
            if jmak:  # the parameters are listed even when a single frame leaves nothing to draw
                names = {"k_per_h": "k (h⁻¹)", "n": "n", "f_max": "f<sub>max</sub>", "r2": "r²"}
                notes.append(
                    "JMAK (Avrami) fit of the Na<sub>3</sub>PO<sub>4</sub> area fraction, "
                    f"f = f<sub>max</sub>(1 − exp(−(k t)<sup>n</sup>)): {_fmt_params(jmak, names)}"
                    + (f" ({html.escape(note)})" if note else "")
                )
            elif o.kinetics is not None:
                notes.append(f"No JMAK fit: {html.escape(note)}.")
            ax.set_ylim(bottom=0)
        else:
            ax.plot(t, mean_size, marker="o", color="#7a4b94", linewidth=1.6, label="mean island area")
            ax.set_ylabel(f"mean island area ({o.area_unit})", fontsize=9)
            ax.set_title("mean island size", fontsize=10)
            fit, note = _size_fit(kinetics)
            positive = t_fine[t_fine > 0]
            if fit and positive.size:
                ax.plot(
                    positive,
                    fit["a"] * positive ** fit["p"],
                    color="#333",
                    linestyle="--",
                    linewidth=1.2,
                    label="power-law fit",
                )
                ax.legend(fontsize=8, loc="best")
                names = {"a": f"a ({o.area_unit} h<sup>−p</sup>)", "p": "p", "r2": "r²"}
                notes.append(
                    f"Power law of the mean island area, A = a t<sup>p</sup>: {_fmt_params(fit, names)}"
                    + (f" ({html.escape(note)})" if note else "")
                )
            elif o.kinetics is not None:
                notes.append(f"No size power-law fit: {html.escape(note)}.")
            ax.set_ylim(bottom=0)
        _style(ax)
        _time_axis(ax, t, use_log)
    uri = figures.save(fig, "islands")
    caption = "Na<sub>3</sub>PO<sub>4</sub> islands per frame in the analysed region."
    if not o.calibrated:
        caption += " Uncalibrated: areas in px²."
    out = _figure_html(uri, "island count and Na3PO4 area vs time", caption)
    if notes:
        out += "<ul>" + "".join(f"<li>{n}</li>" for n in notes) + "</ul>"
    elif o.kinetics is None:
        out += _note("No kinetics fit: kinetics.json is missing.")
    return out


def _fine_times(t: np.ndarray) -> np.ndarray:
    finite = t[np.isfinite(t)]
    if finite.size == 0:
        return finite
    lo, hi = max(finite.min(), 0.0), finite.max()
    positive = finite[finite > 0]
    if positive.size and hi / positive.min() > _LOG_TIME_RATIO:
        return np.concatenate([np.linspace(lo, positive.min(), 20), np.geomspace(positive.min(), hi, 200)])
    return np.linspace(lo, hi, 200)


def _jmak_area_curve(o: _Outputs, jmak: dict[str, float], t_fine: np.ndarray, area: np.ndarray) -> np.ndarray | None:
    """The fitted area-fraction curve as area, through the analysed region's size."""
    frac = _column(o.frames, "frac_na3po4")
    if frac is None:
        return None
    ok = np.isfinite(frac) & (frac > 0) & np.isfinite(area)
    if not ok.any():
        return None
    return _jmak_curve(jmak, t_fine) * float(np.median(area[ok] / frac[ok]))


def _na3po4_pixel_area(o: _Outputs) -> np.ndarray | None:
    values = []
    for frame in o.frames["frame"].astype(int):
        phases = _read_label(o.folder / "labels" / f"phases_{frame:03d}.tif")
        values.append(np.nan if phases is None else float(np.count_nonzero(phases == 3)))
    values = np.asarray(values)
    if not np.isfinite(values).any():
        return None
    if o.calibrated:
        return values * o.pixel_size_um**2
    return values


def _mean_island_size(o: _Outputs) -> np.ndarray | None:
    from_frames = _unit_column(o.frames, "island_area_mean_um2")
    if from_frames is not None:
        return from_frames
    islands = o.islands
    column = next((c for c in ("area_um2", "area_px2") if islands is not None and c in islands.columns), None)
    if column is None or "frame" not in islands.columns:
        return None
    means = islands.groupby("frame")[column].mean()
    values = means.reindex(o.frames["frame"].to_numpy()).to_numpy(float)
    return values if np.isfinite(values).any() else None


def _event_counts(o: _Outputs) -> pd.DataFrame | None:
    """Event counts per interval, from intervals.csv or else from events.csv."""
    intervals = o.intervals
    columns = [f"n_{e}" for e in _EVENT_TYPES]
    if intervals is not None and not intervals.empty and any(c in intervals.columns for c in columns):
        out = intervals.copy()
        for c in columns:
            out[c] = pd.to_numeric(out[c], errors="coerce").fillna(0) if c in out.columns else 0
        return out
    events = o.events
    if events is None or "event" not in events.columns or "frame_from" not in events.columns:
        return None
    frames = o.frames.reset_index(drop=True)
    rows = []
    for i in range(len(frames) - 1):
        f0, f1 = int(frames["frame"].iloc[i]), int(frames["frame"].iloc[i + 1])
        sub = events[events["frame_from"] == f0]
        row = {
            "frame_from": f0,
            "frame_to": f1,
            "time_from_h": frames["time_h"].iloc[i],
            "time_to_h": frames["time_h"].iloc[i + 1],
        }
        row.update({f"n_{e}": int((sub["event"] == e).sum()) for e in _EVENT_TYPES})
        rows.append(row)
    return pd.DataFrame(rows) if rows else None


def _events_section(o: _Outputs, figures: _Figures, use_log: bool) -> str:
    if len(o.frames) < 2:
        return _note("Only one frame: island events need at least two frames.")
    counts = _event_counts(o)
    if counts is None or counts.empty:
        return _note("No event data: intervals.csv and events.csv are missing or empty.")
    labels = []
    for _, row in counts.iterrows():
        t0, t1 = row.get("time_from_h"), row.get("time_to_h")
        if pd.notna(t0) and pd.notna(t1):
            labels.append(f"{float(t0):g} → {float(t1):g} h")
        else:
            labels.append(f"frame {int(row['frame_from'])} → {int(row['frame_to'])}")
    totals = sum(counts[f"n_{e}"].to_numpy(float) for e in _EVENT_TYPES)
    fig = _figure(max(5.0, min(10.0, 2.0 + 1.3 * len(counts))), 3.4)
    ax = fig.add_subplot()
    x = np.arange(len(counts))
    bottom = np.zeros(len(counts))
    for event in _EVENT_TYPES:
        values = counts[f"n_{event}"].to_numpy(float)
        ax.bar(x, values, bottom=bottom, color=EVENT_COLOURS[event], width=0.6, label=event)
        bottom += values
    for xi, total in zip(x, totals):
        ax.text(xi, total, f"{int(total)}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x)
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_xlabel("interval (exposure time)", fontsize=9)
    ax.set_ylabel("events per interval (count)", fontsize=9)
    ax.set_ylim(0, max(1.0, totals.max()) * 1.15)
    _style(ax)
    ax.grid(False, axis="x")
    ax.legend(fontsize=8, loc="upper left", frameon=False, ncol=4)
    uri = figures.save(fig, "events")
    out = [_figure_html(uri, "island events per interval", "Island events between consecutive frames, by type.")]
    if totals.sum() == 0:
        out.append(_note("No island event was detected in any interval."))
    if o.intervals is not None and not o.intervals.empty:
        headers = _unit_headers(
            {
                "frame_from": "from",
                "frame_to": "to",
                "time_from_h": "from (h)",
                "time_to_h": "to (h)",
                "n_formation": "formations",
                "n_coalescence": "coalescences",
                "n_split": "splits",
                "n_dissolution": "dissolutions",
                "formation_rate_per_mm2_h": "formation rate (mm⁻² h⁻¹)",
                "dissolved_area_um2": f"dissolved area ({o.area_unit})",
                "newly_covered_area_um2": f"newly covered ({o.area_unit})",
                "net_area_change_um2": f"net area change ({o.area_unit})",
                "reorganisation_index": "reorganisation index",
            }
        )
        headers[_px_name("formation_rate_per_mm2_h")] = "formation rate (per 10⁶ px² per h)"
        out.append(_table_html(o.intervals, headers=headers))
    return "\n".join(out)


def _event_maps_section(o: _Outputs, figures: _Figures, use_log: bool) -> str:
    folder = o.folder / "event_maps"
    paths = sorted(folder.glob("events_*.png")) if folder.is_dir() else []
    if not paths:
        if len(o.frames) < 2:
            return _note("Only one frame: there are no intervals to map.")
        return _note("No event maps: event_maps/events_NNN_MMM.png are missing (event maps off in the config?).")
    times = dict(zip(o.frames["frame"].astype(int), o.frames["time_h"].astype(float)))
    out = []
    shown = _spread(paths)
    for path in shown:
        match = re.fullmatch(r"events_(\d+)_(\d+)", path.stem)
        caption = html.escape(path.name)
        if match:
            f0, f1 = int(match.group(1)), int(match.group(2))
            when = f" ({times[f0]:g} h → {times[f1]:g} h)" if f0 in times and f1 in times else ""
            caption = f"frame {f0} → {f1}{when}: later frame with island outlines and event marks"
        data = _thumbnail_jpeg(path)
        if data is None:
            out.append(_note(f"{path.name} cannot be read."))
            continue
        full_size = f" (reduced; full size in event_maps/{html.escape(path.name)})"
        out.append(_figure_html(_data_uri(data, "image/jpeg"), path.stem, caption + full_size))
    others = [p for p in paths if p not in shown]
    if others:
        links = ", ".join(f'<a href="event_maps/{html.escape(p.name)}">{html.escape(p.name)}</a>' for p in others)
        out.append(f"<p>{len(shown)} of {len(paths)} event maps are shown; the others: {links}.</p>")
    return "\n".join(out)


def _thumbnail_jpeg(path: Path, max_side_px: int = _THUMBNAIL_MAX_PX) -> bytes | None:
    """JPEG bytes of an image shrunk to at most ``max_side_px`` on its long side.

    Full-size event maps of large frames are several MB of PNG each (the noisy BSE image under
    the outlines does not compress); embedded as they are they would make the page slow to open.
    """
    import cv2

    image = _read_png(path, colour=True)
    if image is None:
        return None
    factor = max(image.shape[:2]) / max_side_px
    if factor > 1:
        size = (max(1, round(image.shape[1] / factor)), max(1, round(image.shape[0] / factor)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    # Channel order changed after shrinking: the same pixels, a smaller array to reorder.
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, buffer = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, _THUMBNAIL_JPEG_QUALITY])
    return buffer.tobytes() if ok else None


def _grains_section(o: _Outputs, figures: _Figures, use_log: bool) -> str:
    grains = o.grains
    unit = o.length_unit
    if grains is None:
        return _note("No grain data: grains.csv is missing.")
    ecd_column = next((c for c in ("ecd_um", "ecd_px") if c in grains.columns), None)
    if grains.empty or ecd_column is None or "frame" not in grains.columns:
        return _note("No grains were measured (grains.csv is empty or has no ecd_um column).")
    reference = o.reference
    in_frame = grains[grains["frame"] == reference]
    which = f"reference frame {reference}"
    if in_frame.empty:
        first = int(grains["frame"].min())
        in_frame, which = grains[grains["frame"] == first], f"frame {first}"
    excluded = kept_border = 0
    if "touches_border" in in_frame.columns:
        border = _as_bool(in_frame["touches_border"])
        # Border grains are cut by the field edge: their ECD is biased low.
        if (~border).sum() >= 5:
            excluded = int(border.sum())
            in_frame = in_frame[~border]
        else:
            kept_border = int(border.sum())
    ecd = pd.to_numeric(in_frame[ecd_column], errors="coerce").dropna().to_numpy(float)
    ecd = ecd[ecd > 0]
    if ecd.size == 0:
        return _note(f"No grains with a positive ECD in {which}.")
    row = o.frames[o.frames["frame"] == int(in_frame["frame"].iloc[0])]
    fig = _figure(7.0, 3.6)
    ax = fig.add_subplot()
    bins = np.histogram_bin_edges(ecd, bins="fd" if ecd.size > 20 else min(10, max(3, ecd.size)))
    if bins.size > 41:
        bins = np.linspace(ecd.min(), ecd.max(), 41)
    ax.hist(ecd, bins=bins, color=PHASE_COLOURS[2], edgecolor="white", linewidth=0.6)
    mean, median = float(ecd.mean()), float(np.median(ecd))
    ax.axvline(mean, color="#222", linestyle="-", linewidth=1.4, label=f"mean {mean:.3g} {unit}")
    ax.axvline(median, color="#222", linestyle="--", linewidth=1.4, label=f"median {median:.3g} {unit}")
    g_parts = []
    for column, name in (("astm_g_planimetric", "planimetric"), ("astm_g_intercept", "intercept")):
        value = _column(row, column)
        if value is not None and np.isfinite(value[0]):
            g_parts.append(f"ASTM G ({name}) = {value[0]:.2f}")
    title = "\n".join(g_parts) if g_parts else None
    ax.legend(fontsize=8, title=title, title_fontsize=8, loc="upper right", frameon=False)
    ax.set_xlabel(f"equivalent circle diameter, ECD ({unit})", fontsize=9)
    ax.set_ylabel("number of grains", fontsize=9)
    ax.set_title(f"NaSICON grains, {which} (n = {ecd.size})", fontsize=10)
    _style(ax)
    uri = figures.save(fig, "grain_sizes")
    caption = f"ECD histogram of NaSICON grains in the {which}"
    if excluded:
        caption += f", {excluded} grain(s) touching the border excluded."
    elif kept_border:
        caption += f", including {kept_border} grain(s) touching the border (too few interior grains)."
    else:
        caption += "."
    if not o.calibrated:
        caption += " Uncalibrated: ECD in px; ASTM G numbers need a pixel size."
    out = [_figure_html(uri, "grain size distribution", caption)]
    wanted = (
        "frame",
        "time_h",
        "grain_count",
        "grain_ecd_mean_um",
        "grain_ecd_median_um",
        "astm_g_planimetric",
        "astm_g_intercept",
    )
    cols = [c for name in wanted for c in dict.fromkeys((name, _px_name(name))) if c in o.frames.columns]
    if len(cols) > 2:
        headers = _unit_headers(
            {
                "frame": "frame",
                "time_h": "time (h)",
                "grain_count": "grains",
                "grain_ecd_mean_um": f"mean ECD ({unit})",
                "grain_ecd_median_um": f"median ECD ({unit})",
                "astm_g_planimetric": "ASTM G planimetric",
                "astm_g_intercept": "ASTM G intercept",
            }
        )
        out.append(_table_html(o.frames[cols], headers=headers))
    return "\n".join(out)


def _tables_section(o: _Outputs, figures: _Figures, use_log: bool) -> str:
    out = ["<h3>frames.csv</h3>", '<div class="scroll">', _table_html(o.frames, highlight=_poor_frames(o)), "</div>"]
    out.append(
        "<p>All tables are in the output folder as CSV: frames.csv, grains.csv, islands.csv, events.csv, "
        "intervals.csv.</p>"
    )
    return "\n".join(out)


def _format_cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (float, np.floating)):
        return f"{float(value) + 0.0:.4g}"  # + 0.0: show -0.0 as 0
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    text = str(value)
    return "–" if text in ("nan", "<NA>") else html.escape(text)


def _table_html(df: pd.DataFrame, *, headers: dict[str, str] | None = None, highlight: np.ndarray | None = None) -> str:
    headers = headers or {}
    out = ['<table class="data">', "<tr>"]
    out += [f"<th>{html.escape(headers.get(c, str(c)))}</th>" for c in df.columns]
    out.append("</tr>")
    numeric = {c: pd.api.types.is_numeric_dtype(df[c]) for c in df.columns}
    for i, row in enumerate(df.itertuples(index=False)):
        cls = ' class="poor"' if highlight is not None and i < len(highlight) and highlight[i] else ""
        cells = "".join(
            f'<td class="num">{_format_cell(v)}</td>' if numeric[c] else f"<td>{_format_cell(v)}</td>"
            for c, v in zip(df.columns, row)
        )
        out.append(f"<tr{cls}>{cells}</tr>")
    out.append("</table>")
    return "".join(out)


# --------------------------------------------------------------------------- page

_CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:#222;margin:0;background:#f6f6f4}
main{max-width:1120px;margin:0 auto;padding:1.2em 2em 3em;background:#fff}
h1{font-size:1.6em;margin:.4em 0 .2em}
h2{font-size:1.25em;border-bottom:2px solid #e0ddd5;padding-bottom:.2em;margin-top:2em}
h3{font-size:1.02em;margin:1.2em 0 .4em}
nav ol{columns:2;font-size:.92em;padding-left:1.4em}nav a{color:#0b5e96;text-decoration:none}
.subtitle{color:#666;margin:0 0 1em}
figure{margin:1em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.88em;color:#555;margin-top:.3em}
table{border-collapse:collapse;font-size:.84em;margin:.5em 0}
table.data th{background:#efede7;text-align:left;position:sticky;top:0}
table.data th,table.data td{padding:.22em .55em;border-bottom:1px solid #e6e4de;white-space:nowrap}
table.data tr:nth-child(even) td{background:#fafaf8}
table.data tr.poor td{background:#fde2d6;color:#8a2a00;font-weight:600}
table.kv th{text-align:left;padding:.25em 1em .25em 0;color:#555;font-weight:600;vertical-align:top;white-space:nowrap}
table.kv td{padding:.25em 0}
td.num{text-align:right;font-variant-numeric:tabular-nums}
code{font-family:"SFMono-Regular",Consolas,monospace;font-size:.92em}code.hash{font-size:.82em;color:#555}
.scroll{overflow-x:auto}
.note{color:#7a5b00;background:#fff7dc;border-left:4px solid #e6b800;padding:.35em .7em}
.warn{color:#b03a00}ul.warnings li{color:#8a2a00}
.legend-line{font-size:.9em}
.swatch{display:inline-block;width:.95em;height:.95em;border-radius:2px;vertical-align:-.12em;margin:0 .3em 0 .8em}
.swatch.poor{background:#fde2d6;border:1px solid #d55e00}
"""


def _page(title: str, o: _Outputs, bodies: dict[str, str]) -> str:
    created = html.escape(str(o.run.get("created", "")))
    pixel = f"{o.pixel_size_um:.5g} µm/px" if o.calibrated else "uncalibrated, px units"
    subtitle = f"{len(o.frames)} frame(s) · {pixel}" + (f" · run {created}" if created else "")
    nav = "".join(f'<li><a href="#{key}">{html.escape(heading)}</a></li>' for key, heading in _SECTIONS)
    sections = "".join(
        f'<section id="{key}"><h2>{html.escape(heading)}</h2>\n{bodies[key]}\n</section>\n'
        for key, heading in _SECTIONS
    )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<main>\n"
        f'<h1>{html.escape(title)}</h1>\n<p class="subtitle">{subtitle}</p>\n'
        f"<nav><ol>{nav}</ol></nav>\n{sections}</main>\n</body>\n</html>\n"
    )
