"""Many time series at once: locally in worker processes, or on a Dask cluster.

Each series (a folder holding image files) is one task running
:func:`semtrack.pipeline.run` into ``out_dir/<series name>``. A series that fails
is recorded with its message in ``batch_summary.csv`` and the others go on.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import pandas as pd

from .config import Config
from .errors import SemtrackError
from .write import ensure_writable, write_table

__all__ = ["find_series", "run_series", "run_batch"]

_IMAGE_SUFFIXES = {".tif", ".tiff", ".png", ".jpg", ".jpeg"}


def find_series(root: str | Path) -> list[Path]:
    """Folders at or below ``root`` that directly contain image files, sorted.

    Output folders of earlier runs (holding ``run.json``) and hidden folders are skipped.

    Examples
    --------
    >>> find_series("sample_images")  # doctest: +SKIP
    [PosixPath('sample_images/nasicon_demo')]
    """
    root = Path(root)
    found = []
    for folder in [root, *sorted(p for p in root.rglob("*") if p.is_dir())]:
        if any(part.startswith(".") for part in folder.relative_to(root).parts):
            continue
        if (folder / "run.json").exists():
            continue
        if any(p.suffix.lower() in _IMAGE_SUFFIXES and p.is_file() for p in folder.iterdir()):
            found.append(folder)
    return found


def _series_name(root: Path, folder: Path) -> str:
    rel = folder.relative_to(root)
    return "__".join(rel.parts) if rel.parts else folder.resolve().name


def run_series(folder: str | Path, out_dir: str | Path, config_dict: dict[str, Any]) -> dict[str, Any]:
    """Run one series and return its summary row; failures are returned, not raised.

    Runs in a worker process (local pool or Dask worker), so it takes plain data
    and limits native thread pools to one thread: parallelism comes from the workers.
    """
    import cv2

    cv2.setNumThreads(1)
    from .pipeline import run

    start = time.perf_counter()
    row: dict[str, Any] = {"folder": str(folder), "out_dir": str(out_dir), "status": "ok", "message": "", "n_frames": 0}
    try:
        result = run(folder, config=Config.model_validate(config_dict), out_dir=out_dir)
        row["n_frames"] = len(result.series)
        row["message"] = "; ".join(result.warnings)
    except SemtrackError as exc:
        row.update(status="failed", message=str(exc))
    except (OSError, MemoryError, ValueError) as exc:
        row.update(status="failed", message=f"{type(exc).__name__}: {exc}")
    row["seconds"] = round(time.perf_counter() - start, 2)
    return row


def _local_results(tasks, workers: int) -> Iterator[dict[str, Any]]:
    env_before = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    # Inherited by the worker processes: one native thread each, so N workers use N cores.
    os.environ.update({k: "1" for k in env_before})
    try:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(run_series, *task) for task in tasks]
            for future in as_completed(futures):
                yield future.result()
    finally:
        for key, value in env_before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _dask_results(tasks, scheduler: str) -> Iterator[dict[str, Any]]:
    try:
        from distributed import Client
        from distributed import as_completed as dask_completed
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise SemtrackError("--scheduler needs dask.distributed: pip install 'semtrack[dask]'") from exc
    try:
        client = Client(scheduler, timeout="20s")
    except (OSError, TimeoutError) as exc:
        raise SemtrackError(f"cannot connect to the Dask scheduler at {scheduler} ({exc})") from exc
    with client:
        futures = [client.submit(run_series, *task, pure=False) for task in tasks]
        for future in dask_completed(futures):
            yield future.result()


def run_batch(
    root: str | Path,
    out_dir: str | Path,
    *,
    config: Config | None = None,
    workers: int = 1,
    scheduler: str | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Analyse every series below ``root``; write ``out_dir/batch_summary.csv``.

    Parameters
    ----------
    root : str or Path
        Folder whose sub-folders (or itself) hold one time series each.
    out_dir : str or Path
        Results go to ``out_dir/<series>``; rerunning resumes unfinished series.
    config : Config, optional
        Parameters shared by every series.
    workers : int
        Local worker processes (ignored with ``scheduler``).
    scheduler : str, optional
        Address of a running Dask scheduler; the series run on its workers.
    progress : bool
        Show a progress bar over series.

    Returns
    -------
    DataFrame
        One row per series: ``series``, ``status`` (``ok`` / ``failed``), ``message``,
        ``n_frames``, ``seconds``, ``folder``, ``out_dir``.
    """
    root = Path(root)
    out = ensure_writable(out_dir)
    folders = find_series(root)
    if not folders:
        raise SemtrackError("no folder with image files found", path=root)
    config = config or Config()
    names = {str(folder): _series_name(root, folder) for folder in folders}
    tasks = [(str(folder), str(out / names[str(folder)]), config.to_dict()) for folder in folders]
    results = _dask_results(tasks, scheduler) if scheduler else _local_results(tasks, workers)
    if progress:
        from tqdm import tqdm

        results = tqdm(results, total=len(tasks), desc="series", unit="series")
    rows = [row | {"series": names[row["folder"]]} for row in results]
    summary = pd.DataFrame(rows)[["series", "status", "n_frames", "seconds", "message", "folder", "out_dir"]]
    summary = summary.sort_values("series", ignore_index=True)
    write_table(summary, out / "batch_summary.csv")
    return summary
