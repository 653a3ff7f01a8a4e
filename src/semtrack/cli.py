"""The ``semtrack`` command line: ``run``, ``batch``, ``report``, ``train``, ``config``.

Exit codes: 0 success, 1 a series (or some series of a batch) failed, 2 usage error.
Data problems print one line naming the file and the problem, never a traceback
(``--verbose`` adds it for bug reports).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import click

from ._version import __version__
from .config import PHASE_NAMES, Config, describe_config, load_config
from .errors import ConfigError, SemtrackError

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class _Progress:
    """One tqdm bar per pipeline stage, written to stderr."""

    def __init__(self, enabled: bool, prefix: str = ""):
        self.enabled = enabled
        self.prefix = prefix
        self._bar = None
        self._stage = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        if stage != self._stage:
            self.close()
            self._stage = stage
            self._bar = tqdm(
                total=total,
                desc=f"{self.prefix}{stage:>8}",
                unit="step",
                leave=True,
                file=sys.stderr,
                dynamic_ncols=True,
            )
        if self._bar is not None:
            self._bar.total = total
            self._bar.n = done
            self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _parse_marker(value: str | None) -> tuple[int, int, int, int] | None:
    if value is None:
        return None
    try:
        parts = tuple(int(round(float(v))) for v in value.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 4 or parts[2] <= parts[0] or parts[3] <= parts[1]:
        raise click.BadParameter(f"expected x0,y0,x1,y1 with x1 > x0 and y1 > y0, got {value!r}", param_hint="--marker")
    return parts  # type: ignore[return-value]


def _parse_times(value: str | None) -> list[float] | None:
    if value is None:
        return None
    try:
        return [float(v) for v in value.split(",")]
    except ValueError:
        raise click.BadParameter(
            f"expected comma-separated hours such as 0,24,96, got {value!r}", param_hint="--times"
        ) from None


def _build_config(
    config_file, marker, pixel_size_um, times, times_csv, t0, crop_bottom_px, model, classifier
) -> Config:
    overrides: dict[str, Any] = {}
    io_over = {
        k: v
        for k, v in {
            "pixel_size_um": pixel_size_um,
            "times_h": _parse_times(times),
            "times_csv": str(times_csv) if times_csv else None,
            "t0": t0,
            "crop_bottom_px": crop_bottom_px,
        }.items()
        if v is not None
    }
    if io_over:
        overrides["io"] = io_over
    reg_over = {k: v for k, v in {"marker": _parse_marker(marker), "model": model}.items() if v is not None}
    if reg_over:
        overrides["registration"] = reg_over
    if classifier:
        overrides["segment"] = {"method": "classifier", "classifier_path": str(classifier)}
    return load_config(config_file, overrides)


def _series_options(func):
    options = [
        click.option(
            "--config",
            "config_file",
            type=click.Path(dir_okay=False, path_type=Path),
            help="TOML file with parameters (see `semtrack config --show`).",
        ),
        click.option("--marker", help="Fixed marker rectangle x0,y0,x1,y1 in reference pixels (default: automatic)."),
        click.option(
            "--model",
            type=click.Choice(["translation", "rigid", "similarity", "affine"]),
            help="Registration model (default: similarity).",
        ),
        click.option(
            "--pixel-size-um",
            type=click.FloatRange(min=0, min_open=True),
            help="Pixel size in µm, overriding the files' metadata.",
        ),
        click.option("--times", help="Exposure times in hours, comma-separated, in file-name order."),
        click.option(
            "--times-csv", type=click.Path(dir_okay=False, path_type=Path), help="CSV with columns file,time_h."
        ),
        click.option("--t0", help="Exposure start (ISO date-time); times = acquisition time - t0."),
        click.option(
            "--crop-bottom-px", type=click.IntRange(min=0), help="Rows of info bar to drop (default: detected)."
        ),
        click.option(
            "--classifier",
            type=click.Path(dir_okay=False, path_type=Path),
            help="Trained pixel classifier (from `semtrack train`) instead of unsupervised segmentation.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _setup_logging(verbose: bool, quiet: bool) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def _fail(exc: BaseException, verbose: bool) -> None:
    if verbose:
        import traceback

        traceback.print_exception(exc, file=sys.stderr)
    click.echo(f"error: {exc}", err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="semtrack")
def main() -> None:
    """Quantify SEM-BSE time series: register, segment phases, measure grains, track Na3PO4 islands."""


@main.command("run")
@click.argument("series", nargs=-1, required=True)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Output folder (created; an interrupted run in it is resumed).",
)
@_series_options
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Processes analysing frames in parallel.",
)
@click.option("--no-report", is_flag=True, help="Do not write report.html.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars or summary.")
@click.option("--verbose", "-v", is_flag=True, help="Debug logging and tracebacks.")
def run_command(
    series,
    out_dir,
    config_file,
    marker,
    model,
    pixel_size_um,
    times,
    times_csv,
    t0,
    crop_bottom_px,
    classifier,
    workers,
    no_report,
    quiet,
    verbose,
):
    """Analyse one time series SERIES (a folder, a glob, or several files) into OUT."""
    from .pipeline import run

    _setup_logging(verbose, quiet)
    source = series[0] if len(series) == 1 else list(series)
    progress = _Progress(enabled=not quiet)
    try:
        config = _build_config(
            config_file, marker, pixel_size_um, times, times_csv, t0, crop_bottom_px, model, classifier
        )
        result = run(
            source,
            config=config,
            out_dir=out_dir,
            progress=progress,
            frame_workers=workers,
            report=False if no_report else None,
        )
    except ConfigError as exc:
        progress.close()
        _fail(exc, verbose)
        sys.exit(EXIT_USAGE)
    except (SemtrackError, OSError, MemoryError) as exc:
        progress.close()
        _fail(exc, verbose)
        sys.exit(EXIT_FAILED)
    progress.close()
    if not quiet:
        _print_summary(result)
    sys.exit(EXIT_OK)


def _print_summary(result) -> None:
    unit = "um" if result.series.calibrated else "px"
    click.echo(result.headline().to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    counts = result.events["event"].value_counts().to_dict() if len(result.events) else {}
    click.echo("events: " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"))
    if not result.series.calibrated:
        click.echo("uncalibrated series: lengths and areas are in px", err=True)
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    if result.out_dir is not None:
        click.echo(f"results: {result.out_dir} (unit: {unit})")


@main.command("batch")
@click.argument("root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Output folder; one sub-folder per series plus batch_summary.csv.",
)
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path), help="TOML parameters.")
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Series analysed in parallel on this machine.",
)
@click.option("--scheduler", help="Address of a running Dask scheduler (tcp://host:8786) to run the series on.")
@click.option("--quiet", "-q", is_flag=True)
@click.option("--verbose", "-v", is_flag=True)
def batch_command(root, out_dir, config_file, workers, scheduler, quiet, verbose):
    """Analyse every time series below ROOT (one folder each) into OUT/<series>."""
    from .batch import run_batch

    _setup_logging(verbose, quiet)
    try:
        config = load_config(config_file)
        summary = run_batch(root, out_dir, config=config, workers=workers, scheduler=scheduler, progress=not quiet)
    except ConfigError as exc:
        _fail(exc, verbose)
        sys.exit(EXIT_USAGE)
    except (SemtrackError, OSError) as exc:
        _fail(exc, verbose)
        sys.exit(EXIT_FAILED)
    if not quiet:
        click.echo(summary[["series", "status", "n_frames", "seconds", "message"]].to_string(index=False))
    for _, row in summary[summary["status"] == "failed"].iterrows():
        click.echo(f"error: {row['series']}: {row['message']}", err=True)
    sys.exit(EXIT_FAILED if (summary["status"] == "failed").any() else EXIT_OK)


@main.command("report")
@click.argument("out_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--title", help="Report title (default: the series folder).")
@click.option(
    "--time-scale",
    type=click.Choice(["auto", "linear", "log"]),
    default="auto",
    show_default=True,
    help="Time axes: log when times span decades (24 h ... 1055 h).",
)
@click.option("--verbose", "-v", is_flag=True)
def report_command(out_dir, title, time_scale, verbose):
    """(Re)write OUT_DIR/report.html from the results in OUT_DIR."""
    from .report import render

    try:
        path = render(out_dir, title=title, time_scale=time_scale)
    except SemtrackError as exc:
        _fail(exc, verbose)
        sys.exit(EXIT_FAILED)
    click.echo(str(path))


@main.command("train")
@click.argument("image", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("scribbles", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--out",
    "model_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to save the trained classifier.",
)
@click.option(
    "--phases",
    "phase_names",
    default=",".join(PHASE_NAMES),
    show_default=True,
    help="Phase names by code (comma-separated): scribble value k is the k-th name.",
)
@click.option(
    "--se-relief",
    is_flag=True,
    help="Secondary-electron relief images: add the enclosure feature (see PixelClassifier).",
)
@click.option(
    "--particle-sigma-px",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Also search small dark particles never scribbled (about a third of their diameter, px; 0 = off).",
)
@click.option(
    "--refine-boundaries", is_flag=True, help="Move dark-phase boundaries to the level midway between the two sides."
)
@click.option("--verbose", "-v", is_flag=True)
def train_command(image, scribbles, model_path, phase_names, se_relief, particle_sigma_px, refine_boundaries, verbose):
    """Train a pixel classifier from SCRIBBLES (label image: 0 unlabelled, k = phase code k-1) on IMAGE."""
    import tifffile

    from .io import read_image
    from .segment import PixelClassifier

    names = tuple(name.strip() for name in phase_names.split(","))
    if len(names) < 2 or len(set(names)) != len(names) or not all(names):
        raise click.BadParameter(f"expected two or more distinct names, got {phase_names!r}", param_hint="--phases")
    try:
        pixels = read_image(image)
        try:
            labels = tifffile.imread(scribbles)
        except Exception as exc:
            raise SemtrackError(f"cannot read the scribble label image ({exc})", path=scribbles) from exc
        if labels.shape != pixels.shape:
            raise SemtrackError(f"scribbles are {labels.shape}, the image is {pixels.shape}", path=scribbles)
        classifier = PixelClassifier(
            phase_names=names,
            se_relief=se_relief,
            particle_sigma_px=particle_sigma_px,
            refine_boundaries=refine_boundaries,
        ).fit(pixels, labels)
        classifier.save(model_path)
    except SemtrackError as exc:
        _fail(exc, verbose)
        sys.exit(EXIT_FAILED)
    click.echo(str(model_path))


@main.command("config")
@click.option("--show", is_flag=True, help="Print every parameter with its default and meaning (as TOML).")
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Show this file's values merged with the defaults.",
)
def config_command(show, config_file):
    """Print the parameters (as a TOML file you can edit and pass with --config)."""
    try:
        config = load_config(config_file)
    except ConfigError as exc:
        _fail(exc, False)
        sys.exit(EXIT_USAGE)
    click.echo(describe_config(config))


if __name__ == "__main__":  # pragma: no cover
    main()
