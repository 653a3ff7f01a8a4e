"""Run every benchmark in turn; tables on screen, CSVs in benchmarks/out/, full log in out/all.log.

Usage::

    python benchmarks/run_all.py            # everything (about 30-60 min on 2 cores)
    python benchmarks/run_all.py --quick    # small cases, a few minutes

Stage benchmarks (accuracy against ground truth, peers side by side):
register (pystackreg, skimage), segment (real labelled SEM images + synthetic),
grains, track (laptrack); then end to end (speed per stage, memory, scaling) and batch.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = [
    "bench_register.py",
    "bench_segment.py",
    "bench_grains.py",
    "bench_track.py",
    "bench_pipeline.py",
    "bench_batch.py",
]
QUICK_ARGS = {"bench_batch.py": ["--series", "4", "--shape", "768x1024"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", nargs="+", choices=SCRIPTS, help="run only these scripts")
    args = parser.parse_args()
    out = HERE / "out"
    out.mkdir(exist_ok=True)
    log_path = out / "all.log"
    failures = []
    with open(log_path, "w") as log:
        header = (
            f"semtrack benchmarks {time.strftime('%Y-%m-%d %H:%M')} on {platform.node()}: "
            f"{platform.processor() or platform.machine()}, Python {platform.python_version()}\n"
        )
        print(header, flush=True)
        log.write(header)
        for script in args.only or SCRIPTS:
            extra = QUICK_ARGS.get(script, ["--quick"]) if args.quick else []
            banner = f"\n=== {script} {' '.join(extra)}\n"
            print(banner, flush=True)
            log.write(banner)
            start = time.perf_counter()
            proc = subprocess.Popen(
                [sys.executable, str(HERE / script), *extra],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for line in proc.stdout:
                print(line, end="", flush=True)
                log.write(line)
            code = proc.wait()
            footer = f"--- {script}: exit {code}, {time.perf_counter() - start:.0f} s\n"
            print(footer, flush=True)
            log.write(footer)
            if code:
                failures.append(script)
    if failures:
        print(f"failed: {', '.join(failures)}")
    print(f"log: {log_path}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
