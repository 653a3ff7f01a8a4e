"""The bundled sample series: four synthetic SEM-BSE frames of a NaSICON glass-ceramic, with ground truth.

The series lives in ``sample_images/<SAMPLE_NAME>/`` of the source tree: four
Zeiss-like TIFFs ``t0024h_00.tif`` ... ``t1055h_03.tif`` and a ``truth/``
folder. When semtrack is installed without the source tree, the same series
is regenerated (same parameters and seed) into a user cache folder on first use.

Examples
--------
>>> from semtrack.data import sample_series_path, sample_truth
>>> folder = sample_series_path()
>>> sorted(p.name for p in folder.glob("*.tif"))[:2]
['t0024h_00.tif', 't0096h_01.tif']
>>> truth = sample_truth()
>>> truth.times_h.tolist()
[24.0, 96.0, 845.0, 1055.0]
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import ReadError
from .synth import SynthSeries, make_series, write_series

__all__ = ["SAMPLE_NAME", "SAMPLE_PARAMS", "sample_series_path", "sample_truth", "write_sample"]

#: Folder name of the sample series.
SAMPLE_NAME = "nasicon_synthetic"

#: Arguments of :func:`semtrack.synth.make_series` that made the sample series.
SAMPLE_PARAMS: dict = dict(shape=(768, 1024), n_frames=4, pixel_size_um=0.05, seed=20261125)

_TRUTH = "truth"
_ARRAYS = "truth.npz"


def _repo_sample() -> Path:
    # src/semtrack/data.py -> repository root
    return Path(__file__).resolve().parents[2] / "sample_images" / SAMPLE_NAME


def _cache_sample() -> Path:
    base = os.environ.get("SEMTRACK_CACHE") or os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "semtrack" / "sample_images" / SAMPLE_NAME


def _complete(folder: Path) -> bool:
    return len(list(folder.glob("*.tif"))) == SAMPLE_PARAMS["n_frames"] and (folder / _TRUTH / _ARRAYS).is_file()


def sample_series_path() -> Path:
    """Folder of the bundled sample series (regenerated into a cache folder if absent).

    Returns
    -------
    Path
        ``sample_images/nasicon_synthetic`` of the source tree when present;
        otherwise ``$SEMTRACK_CACHE`` (or ``$XDG_CACHE_HOME``, or ``~/.cache``)
        ``/semtrack/sample_images/nasicon_synthetic``, written on first use.

    Examples
    --------
    >>> sample_series_path().name
    'nasicon_synthetic'
    """
    repo = _repo_sample()
    if _complete(repo):
        return repo
    cache = _cache_sample()
    if not _complete(cache):
        write_sample(cache)
    return cache


def write_sample(folder: str | Path) -> list[Path]:
    """Generate the sample series with :data:`SAMPLE_PARAMS` and write frames and truth to ``folder``.

    Parameters
    ----------
    folder : str or Path
        Output folder; frames go into it, ground truth into ``folder/truth``.

    Returns
    -------
    list of Path
        Every file written.
    """
    series = make_series(**SAMPLE_PARAMS)
    folder = Path(folder)
    files = write_series(series, folder, vendor="zeiss", compression="deflate")
    return files + write_truth(series, folder / _TRUTH)


def write_truth(series: SynthSeries, folder: str | Path) -> list[Path]:
    """Save a series' ground truth: arrays in one compressed ``.npz``, tables as CSV, parameters as JSON.

    Files: ``truth.npz`` (``phases_ref``, ``phases``, ``islands_ref``,
    ``grain_labels_ref``, ``matrices``, ``times_h``), ``islands.csv``,
    ``events.csv``, ``frames.csv`` (:meth:`SynthSeries.truth_frame_table`) and
    ``params.json`` (generation parameters, pixel size, info-bar rows, marker).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = folder / _ARRAYS
    np.savez_compressed(
        arrays,
        phases_ref=np.stack(series.phases_ref),
        phases=np.stack(series.phases),
        islands_ref=np.stack(series.islands_ref),
        grain_labels_ref=series.grain_labels_ref,
        matrices=series.matrices,
        times_h=series.times_h,
    )
    paths = [arrays]
    for name, table in (
        ("islands.csv", series.islands),
        ("events.csv", series.events),
        ("frames.csv", series.truth_frame_table()),
    ):
        table.to_csv(folder / name, index=False)
        paths.append(folder / name)
    meta = {
        "pixel_size_um": series.pixel_size_um,
        "info_bar_rows": series.info_bar_rows,
        "marker_rect": list(series.marker_rect),
        "params": series.params,
    }
    (folder / "params.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    return paths + [folder / "params.json"]


def sample_truth(folder: str | Path | None = None) -> SynthSeries:
    """Load the sample series (images as written) with its ground truth.

    Parameters
    ----------
    folder : str or Path, optional
        A folder written by :func:`write_sample` (default: :func:`sample_series_path`).

    Returns
    -------
    SynthSeries
        The images read back from the TIFFs and every truth field; see
        :class:`semtrack.synth.SynthSeries`.

    Raises
    ------
    ReadError
        The folder lacks the frames or the ``truth`` files.

    Examples
    --------
    >>> t = sample_truth()
    >>> t.truth_frame_table()["frame"].tolist()
    [0, 1, 2, 3]
    """
    import tifffile

    folder = Path(folder) if folder is not None else sample_series_path()
    truth = folder / _TRUTH
    try:
        meta = json.loads((truth / "params.json").read_text(encoding="utf-8"))
        with np.load(truth / _ARRAYS) as z:
            arrays = {k: z[k] for k in z.files}
        islands = pd.read_csv(truth / "islands.csv", keep_default_na=False)
        events = pd.read_csv(
            truth / "events.csv", keep_default_na=False, dtype={"islands_before": str, "islands_after": str}
        )
    except (OSError, ValueError, KeyError) as exc:
        raise ReadError(
            f"cannot read the ground truth ({exc}); regenerate it with `python sample_images/make_sample.py`",
            path=truth,
        ) from exc
    islands["parents"] = islands["parents"].astype(str)
    files = sorted(folder.glob("*.tif"))
    if len(files) != len(arrays["times_h"]):
        raise ReadError(f"expected {len(arrays['times_h'])} frames, found {len(files)} .tif files", path=folder)
    return SynthSeries(
        images=[tifffile.imread(f) for f in files],
        times_h=arrays["times_h"],
        pixel_size_um=float(meta["pixel_size_um"]),
        matrices=arrays["matrices"],
        info_bar_rows=int(meta["info_bar_rows"]),
        marker_rect=tuple(int(v) for v in meta["marker_rect"]),
        phases_ref=list(arrays["phases_ref"]),
        phases=list(arrays["phases"]),
        grain_labels_ref=arrays["grain_labels_ref"],
        islands_ref=list(arrays["islands_ref"]),
        islands=islands,
        events=events,
        params=meta["params"],
    )
