"""The one place where every semtrack parameter lives, with its default, unit and meaning.

The same :class:`Config` is used by the Python API, the CLI (``--config file.toml``
plus option overrides), the napari widgets and Dask workers, and it is saved in
``run.json``. Unknown keys are errors, not silently ignored.

Examples
--------
>>> from semtrack.config import Config
>>> cfg = Config()
>>> cfg.registration.model
'similarity'
>>> cfg2 = cfg.updated({"registration": {"model": "rigid"}})
>>> cfg2.registration.model
'rigid'
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ConfigError

__all__ = [
    "PHASE_CODES",
    "PHASE_NAMES",
    "OUTSIDE",
    "Config",
    "IOConfig",
    "RegisterConfig",
    "SegmentConfig",
    "QuantifyConfig",
    "GrainsConfig",
    "TrackConfig",
    "ReportConfig",
    "load_config",
    "describe_config",
]

#: Default phase names in code order (code = index). Brightest last but one: BSE
#: contrast follows mean atomic number (pore < Na3PO4 < glass < NaSICON), the
#: codes follow the output contract instead.
PHASE_NAMES: tuple[str, ...] = ("pore", "glass", "nasicon", "na3po4")
PHASE_CODES: dict[str, int] = {name: code for code, name in enumerate(PHASE_NAMES)}
#: Label value for pixels outside the analysed region.
OUTSIDE: int = 255


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class IOConfig(_Section):
    pixel_size_um: float | None = Field(None, gt=0, description="Pixel size in µm; overrides any metadata when given.")
    crop_bottom_px: int | None = Field(
        None,
        ge=0,
        description="Rows to drop at the bottom (info bar); None detects the bar automatically.",
    )
    times_h: list[float] | None = Field(
        None, description="Exposure time of each frame in hours, in file order; overrides file names."
    )
    times_csv: str | None = Field(
        None, description="CSV with columns `file` and `time_h` giving each frame's exposure time."
    )
    t0: str | None = Field(
        None,
        description="ISO date-time of exposure start; times become acquisition time minus t0.",
    )


class RegisterConfig(_Section):
    model: Literal["translation", "rigid", "similarity", "affine"] = Field(
        "similarity", description="Geometric model from reference to each frame."
    )
    marker: tuple[int, int, int, int] | None = Field(
        None,
        description="Marker rectangle x0,y0,x1,y1 in reference pixels; None chooses one automatically.",
    )
    exclude_marker: bool = Field(
        True,
        description="Leave a user-given marker out of the analysed region (a detached piece or fiducial is "
        "not the surface under study); an automatically chosen marker is ordinary microstructure and stays in.",
    )
    reference: int = Field(0, ge=0, description="Index (time order) of the reference frame.")
    min_score: float = Field(
        0.5, ge=-1, le=1, description="Marker NCC below which a frame's registration is flagged poor."
    )
    fail_score: float = Field(
        0.2, ge=-1, le=1, description="Marker NCC below which a frame cannot be registered (error)."
    )


class SegmentConfig(_Section):
    method: Literal["unsupervised", "classifier"] = Field(
        "unsupervised", description="Unsupervised intensity classes, or a trained pixel classifier."
    )
    classifier_path: str | None = Field(None, description="Trained pixel classifier file (method='classifier').")
    phase_names: tuple[str, ...] = Field(PHASE_NAMES, description="Phase names in code order; the code is the index.")
    brightness_order: tuple[str, ...] = Field(
        ("pore", "na3po4", "glass", "nasicon"),
        description="Phase names from darkest to brightest in BSE.",
    )
    denoise_sigma_px: float = Field(
        1.5, ge=0, description="Spatial sigma (px) of the edge-preserving bilateral denoising; 0 disables."
    )
    gradient_sigma_px: float = Field(
        0.0,
        ge=0,
        description="Extra Gaussian smoothing (px) of the denoised image before the boundary watershed; 0 = none.",
    )
    seed_fraction: float = Field(
        0.8,
        gt=0,
        le=1,
        description="Share of each class's off-edge pixels, farthest from the class boundaries, that seed "
        "the watershed; smaller is safer on low-contrast images.",
    )
    boundary_band_px: int = Field(
        2,
        ge=0,
        description="How far (px) the watershed may move a boundary from where the intensity classes change; "
        "class pixels farther inside seed it directly. Widen for edges shaded over many pixels; 0 = flat "
        "pixels only (slowest).",
    )
    blob_sigma_px: float = Field(
        6.0, ge=0, description="Scale (px) of the background against which small dark blobs are seeded; 0 disables."
    )
    blob_contrast: float = Field(
        3.0, ge=0, description="How much darker than that background (noise SDs) a blob must be."
    )
    film_depth: float = Field(
        0.05,
        ge=0,
        description="Thin dark lines in the brightest phase deeper than this fraction of the "
        "glass-NaSICON contrast (plus 0.1 noise SD) become glass (films between touching grains), "
        "as wide as their blurred area; 0 disables.",
    )
    film_width_px: float = Field(2.0, gt=0, description="Largest half-width (px) of such a film.")
    min_object_area_um2: float = Field(
        0.05, ge=0, description="Phase specks smaller than this are merged into their surroundings."
    )
    se_relief: bool = Field(
        False,
        description="Secondary-electron relief mode (etched surfaces imaged with SE contrast): the darkest "
        "phase is recognised by being enclosed by rising intensity edges, not by its grey level. Off for BSE.",
    )
    top_edge_level: float | None = Field(
        0.45,
        gt=0,
        lt=1,
        description="Where NaSICON (brightest) and glass (next) are split: fraction of the way from the glass "
        "to the NaSICON median, near the mid level where a blurred edge is crossed at its true position. "
        "None = the model's likelihood threshold (gives edge pixels to the commoner phase).",
    )


class QuantifyConfig(_Section):
    confidence: float = Field(0.95, gt=0, lt=1, description="Confidence level of the intervals.")
    tile_um: float | None = Field(
        None,
        gt=0,
        description="Field (tile) side in µm for the field-to-field confidence intervals (ASTM E1245); "
        "None: 5 x the largest mean phase chord, shrunk towards 2.5 x to get 16 fields.",
    )


class GrainsConfig(_Section):
    min_grain_area_um2: float = Field(
        0.2, ge=0, description="Grain pieces smaller than this (µm²) are merged into a neighbour or dropped."
    )
    split_touching: bool = Field(
        True, description="Separate touching grains (distance-map watershed with dynamics-based seed merging)."
    )
    use_image: bool = Field(
        True,
        description="Also use the BSE image to split touching grains (brightness steps and grooves between "
        "grains of different orientation); helps most where little glass separates the grains.",
    )


class TrackConfig(_Section):
    min_island_area_um2: float = Field(0.1, ge=0, description="Na3PO4 regions smaller than this are not islands.")
    link_tolerance_um: float = Field(
        0.3,
        ge=0,
        description="Distance within which an island overlapping nothing is still linked 1:1 "
        "(residual misregistration).",
    )
    min_overlap_fraction: float = Field(
        0.05, ge=0, le=1, description="Overlap (of the smaller island) needed to link two islands."
    )
    smooth_um: float = Field(
        0.0, ge=0, description="Gaussian sigma in µm smoothing island outlines before labelling (0: none)."
    )


class ReportConfig(_Section):
    html: bool = Field(True, description="Write report.html and its PNGs after a run.")
    event_maps: bool = Field(True, description="Write one event-map PNG per interval.")


class Config(_Section):
    """Every parameter of a semtrack run, grouped by pipeline stage."""

    io: IOConfig = Field(default_factory=IOConfig)
    registration: RegisterConfig = Field(default_factory=RegisterConfig)
    segment: SegmentConfig = Field(default_factory=SegmentConfig)
    quantify: QuantifyConfig = Field(default_factory=QuantifyConfig)
    grains: GrainsConfig = Field(default_factory=GrainsConfig)
    track: TrackConfig = Field(default_factory=TrackConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)

    def updated(self, changes: dict[str, Any]) -> Config:
        """Return a copy with nested ``{"section": {"field": value}}`` changes applied and validated."""
        merged = _deep_merge(self.model_dump(), changes)
        try:
            return Config.model_validate(merged)
        except ValidationError as exc:
            raise ConfigError(_format_validation(exc)) from exc

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every parameter (for ``run.json``)."""
        return self.model_dump(mode="json")


def _deep_merge(base: dict, changes: dict) -> dict:
    out = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _format_validation(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        parts.append(f"{where}: {err['msg']}")
    return "invalid configuration: " + "; ".join(parts)


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Load a TOML configuration file and apply overrides.

    Parameters
    ----------
    path : str or Path, optional
        TOML file with ``[registration]``, ``[segment]`` ... tables. None: defaults.
    overrides : dict, optional
        Nested changes applied after the file (e.g. from CLI options).

    Returns
    -------
    Config

    Raises
    ------
    ConfigError
        The file is missing, is not TOML, or has unknown keys or invalid values.
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError("configuration file not found", path=path) from exc
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"not a valid TOML file ({exc})", path=path) from exc
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation(exc), path=path) from exc
    return cfg.updated(overrides) if overrides else cfg


def describe_config(config: Config | None = None) -> str:
    """Every parameter as TOML, with its meaning as a comment above it.

    The output is itself a valid configuration file (``semtrack config --show``).
    """
    config = config or Config()
    lines: list[str] = []
    for section_name in Config.model_fields:
        section = getattr(config, section_name)
        lines.append(f"[{section_name}]")
        for name, field in type(section).model_fields.items():
            lines.append(f"# {field.description}")
            value = getattr(section, name)
            if value is None:
                lines.append(f"# {name} =  (unset)")
            else:
                lines.append(f"{name} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)
