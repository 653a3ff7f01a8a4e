"""`semtrack batch` speed-up with 2 workers over 1, and peak memory per worker.

8 synthetic series of 4 frames at 2048x1536 (issue 6 target: >= 1.7x faster with
``--workers 2`` on a 2-core machine; peak memory < 2 GB per worker). Memory is
sampled every 0.2 s over the worker processes (psutil) while the CLI runs.

Usage::

    python benchmarks/bench_batch.py [--series 8] [--shape 1536x2048]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd

OUT = Path(__file__).resolve().parent / "out"
SEMTRACK = str(Path(sys.executable).with_name("semtrack"))


def _sample_memory(proc: subprocess.Popen, peaks: dict, stop: threading.Event) -> None:
    import psutil

    parent = psutil.Process(proc.pid)
    while not stop.is_set():
        try:
            for child in parent.children(recursive=True):
                rss = child.memory_info().rss
                peaks[child.pid] = max(peaks.get(child.pid, 0), rss)
        except psutil.Error:
            pass
        time.sleep(0.2)


def _timed_batch(root: Path, out: Path, workers: int) -> tuple[float, float]:
    shutil.rmtree(out, ignore_errors=True)
    peaks: dict[int, int] = {}
    stop = threading.Event()
    start = time.perf_counter()
    proc = subprocess.Popen([SEMTRACK, "batch", str(root), "--out", str(out), "--workers", str(workers), "-q"])
    sampler = threading.Thread(target=_sample_memory, args=(proc, peaks, stop), daemon=True)
    sampler.start()
    code = proc.wait()
    elapsed = time.perf_counter() - start
    stop.set()
    sampler.join()
    if code != 0:
        raise RuntimeError(f"semtrack batch exited with {code}")
    return elapsed, max(peaks.values(), default=0) / 2**20


def main(argv=None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=8)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--shape", default="1536x2048", help="rows x cols")
    args = parser.parse_args(argv)
    rows, cols = (int(v) for v in args.shape.split("x"))

    from semtrack.synth import make_series, write_series

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "root"
        for k in range(args.series):
            write_series(make_series(shape=(rows, cols), n_frames=args.frames, seed=100 + k), root / f"s{k:02d}")
        results = []
        for workers in (1, 2):
            seconds, peak_mb = _timed_batch(root, Path(tmp) / f"out{workers}", workers)
            results.append(
                {
                    "workers": workers,
                    "series": args.series,
                    "frames": args.frames,
                    "shape": f"{cols}x{rows}",
                    "seconds": round(seconds, 1),
                    "peak_mb_per_worker": round(peak_mb, 1),
                }
            )
            print(f"  workers={workers}: {seconds:.1f} s, peak {peak_mb:.0f} MB per worker", flush=True)
    table = pd.DataFrame(results)
    table["speedup"] = (table["seconds"].iloc[0] / table["seconds"]).round(2)
    OUT.mkdir(exist_ok=True)
    table.to_csv(OUT / "batch.csv", index=False)
    print(table.to_string(index=False))
    return table


if __name__ == "__main__":
    main()
