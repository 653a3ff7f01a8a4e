"""Grain size and phase fractions against synthetic ground truth, and their speed.

For each glass fraction and seed, a synthetic frame (``semtrack.synth``) is
analysed twice: on its TRUE phase map (errors are then the grain analysis'
own) and on ``segment.segment_frame`` output (the whole chain). Grain truth:
grains of ``grain_labels_ref`` wholly inside the analysed region, not touching
its border, with the marker (a detached piece drawn across grains) excluded;
ECD of the part the frame's Na3PO4 islands leave visible (synth's ``*_visible``).

Also: coverage of the 95 % phase-fraction intervals of 150 random 384 x 384
px sub-windows of the true map, against the whole frame's fraction.

Targets (issue 4): ECD mean and median within 5 %, grain count within 10 %;
segmentation + grain analysis <= 1 s per 2048 x 1536 frame on one core; grain
analysis alone (measure_grains + grain_summary, with the image) <= 0.2 s CPU, its
share of the issue-8 end-to-end budget (0.8 s per frame).
Peak memory of the grain analysis (tracemalloc: numpy and OpenCV arrays) is
reported in bytes per frame pixel (issue 8 memory budget).

Usage (one core: OpenCV is set to one thread here, BLAS/OpenMP by the environment)::

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python benchmarks/bench_grains.py   # 2048 x 1536, 3 seeds
    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python benchmarks/bench_grains.py --quick   # 768 x 1024

With ``--grid-offsets N`` the segmented map (with the image) is also analysed
cropped by 1 .. N-1 px at the top left (map, image and truth alike): the
watershed grid then falls differently on the grains, and the spread of the
errors over the N crops shows how much a case's pass or miss owes to that
alignment (a sub-pixel shift of the rendering moves outlines the same way).

Writes ``benchmarks/out/grains.csv``.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from semtrack.config import OUTSIDE
from semtrack.errors import SemtrackError
from semtrack.grains import grain_summary, measure_grains
from semtrack.quantify import phase_fractions
from semtrack.synth import interior_grain_ecd_um, make_series

OUT = Path(__file__).resolve().parent / "out"


def best_time(func, repeats: int) -> tuple[float, object]:
    best, result = np.inf, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = func()
        best = min(best, time.perf_counter() - t0)
    return best, result


def window_coverage(phases, px, *, window=384, n_windows=150, seed=0):
    """Share of random sub-windows whose 95 % interval covers the whole frame's fraction."""
    whole = phase_fractions(phases, pixel_size_um=px)
    rng = np.random.default_rng(seed)
    keys = ("frac_glass", "frac_nasicon", "glass_fraction")
    hits = dict.fromkeys(keys, 0)
    rows, cols = phases.shape
    for _ in range(n_windows):
        r, c = rng.integers(0, rows - window), rng.integers(0, cols - window)
        sub = phase_fractions(phases[r : r + window, c : c + window], pixel_size_um=px)
        for k in keys:
            hits[k] += sub[f"{k}_ci_low"] <= whole[k] <= sub[f"{k}_ci_high"]
    return {f"coverage_{k}": hits[k] / n_windows for k in keys}


def best_cpu_time(func, repeats: int) -> float:
    best = np.inf
    for _ in range(repeats):
        t0 = time.process_time()
        func()
        best = min(best, time.process_time() - t0)
    return best


def analyse_grains(phases, px, image=None):
    labels, table = measure_grains(phases, pixel_size_um=px, image=image)
    return grain_summary(table, phases, pixel_size_um=px, labels=labels)


def peak_memory_bytes(func) -> int:
    """Peak of traced allocations (numpy and OpenCV arrays) while `func` runs, above what was held before."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        func()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def offset_errors(phases, image, visible, region, px, offsets):
    """Count and median-ECD errors (%) of the frame cropped by 0 .. offsets-1 px at the top left."""
    count_err, median_err = [], []
    for k in range(offsets):
        crop = (slice(k, None), slice(k, None))
        ecd_true = interior_grain_ecd_um(visible[crop], region[crop], px)
        summary = analyse_grains(np.where(region[crop], phases[crop], OUTSIDE).astype(np.uint8), px, image[crop])
        count_err.append(100 * (summary["grain_count"] / ecd_true.size - 1))
        median_err.append(100 * (summary["grain_ecd_median_um"] / np.median(ecd_true) - 1))
    return {
        "offsets_count_err_min": min(count_err),
        "offsets_count_err_max": max(count_err),
        "offsets_median_err_min": min(median_err),
        "offsets_median_err_max": max(median_err),
    }


def run_case(shape, glass_fraction, seed, repeats, segment, grid_offsets=0):
    # One frame at 24 h: a few young Na3PO4 islands lie on some grains.
    s = make_series(shape=shape, n_frames=1, glass_fraction=glass_fraction, seed=seed)
    px = s.pixel_size_um
    region = s.analysed_region()
    x0, y0, x1, y1 = s.marker_rect
    guard = int(1.5 / px)
    region[max(y0 - guard, 0) : y1 + guard, max(x0 - guard, 0) : x1 + guard] = False
    # Visible truth: what a perfect map of this frame shows (the part of each grain islands leave uncovered).
    visible = np.where(s.islands_ref[0] == 0, s.grain_labels_ref, 0)
    ecd_true = interior_grain_ecd_um(visible, region, px)
    true_phases = np.where(region, s.phases_ref[0], OUTSIDE).astype(np.uint8)
    true_glass_fraction = np.mean(true_phases[region] == 1) / np.mean(np.isin(true_phases[region], (1, 2)))

    sources = {"true_phases": (true_phases, 0.0)}
    if segment is not None:
        valid = np.zeros(s.shape, bool)
        valid[: s.shape[0] - s.info_bar_rows] = True
        try:
            t_seg, seg = best_time(lambda: segment(s.images[0], valid=valid, pixel_size_um=px), 1)
            sources["segmented"] = (np.where(region, seg, OUTSIDE).astype(np.uint8), t_seg)
        except SemtrackError as exc:
            print(f"glass {glass_fraction} seed {seed}: segmentation failed ({exc})")

    rows = []
    for (source, (phases, t_seg)), image in (
        (item, image) for item in sources.items() for image in (None, s.images[0])
    ):
        t_grains, (labels, table) = best_time(lambda: measure_grains(phases, pixel_size_um=px, image=image), repeats)
        t_summary, summary = best_time(lambda: grain_summary(table, phases, pixel_size_um=px, labels=labels), repeats)
        t_quant, fractions = best_time(lambda: phase_fractions(phases, pixel_size_um=px), repeats)
        # CPU time of this process: less disturbed than wall time on a shared machine.
        cpu_grains = best_cpu_time(lambda: analyse_grains(phases, px, image), repeats)
        peak = peak_memory_bytes(lambda: analyse_grains(phases, px, image))
        first = source == "true_phases" and image is None
        coverage = window_coverage(phases, px, seed=seed) if first else {}
        offsets = {}
        if grid_offsets > 1 and source == "segmented" and image is not None:
            offsets = offset_errors(phases, image, visible, region, px, grid_offsets)
        rows.append(
            {
                "shape": f"{shape[1]}x{shape[0]}",
                "glass_fraction": glass_fraction,
                "seed": seed,
                "source": source,
                "split": "shape" if image is None else "shape+image",
                "count_true": ecd_true.size,
                "count": summary["grain_count"],
                "count_err_pct": 100 * (summary["grain_count"] / ecd_true.size - 1),
                "ecd_mean_true_um": ecd_true.mean(),
                "ecd_mean_err_pct": 100 * (summary["grain_ecd_mean_um"] / ecd_true.mean() - 1),
                "ecd_median_err_pct": 100 * (summary["grain_ecd_median_um"] / np.median(ecd_true) - 1),
                "astm_g_planimetric": summary["astm_g_planimetric"],
                "astm_g_intercept": summary["astm_g_intercept"],
                "glass_fraction_err_pts": 100 * (fractions["glass_fraction"] - true_glass_fraction),
                "glass_fraction_ci_half_pts": 50
                * (fractions["glass_fraction_ci_high"] - fractions["glass_fraction_ci_low"]),
                "n_fields": fractions["n_fields"],
                "s_segment": t_seg,
                "s_grains": t_grains + t_summary,
                "s_quantify": t_quant,
                "cpu_s_grains": cpu_grains,
                "peak_mb_grains": peak / 1e6,
                "peak_bytes_per_px_grains": peak / phases.size,
                **coverage,
                **offsets,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="768 x 1024 frames, fewer cases")
    parser.add_argument("--no-segment", action="store_true", help="only the true phase maps")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2, help="timing repeats (best of)")
    parser.add_argument(
        "--grid-offsets",
        type=int,
        default=0,
        help="also analyse the segmented frames cropped by 1..N-1 px (sensitivity to the watershed grid)",
    )
    args = parser.parse_args()
    cv2.setNumThreads(1)  # the target is per core

    segment = None
    if not args.no_segment:
        try:
            from semtrack.segment import segment_frame as segment
        except ImportError:
            print("semtrack.segment not importable: true phase maps only")
    shape = (768, 1024) if args.quick else (1536, 2048)
    glass = (0.05, 0.2, 0.35) if args.quick else (0.05, 0.1, 0.2, 0.35)
    rows = []
    for g in glass:
        for seed in range(args.seeds):
            rows.extend(run_case(shape, g, seed, args.repeats, segment, args.grid_offsets))
            print(pd.DataFrame(rows[-1:]).round(3).to_string(index=False, header=len(rows) <= 2))
    table = pd.DataFrame(rows)
    OUT.mkdir(parents=True, exist_ok=True)
    table.to_csv(OUT / "grains.csv", index=False)
    cols = [
        "shape",
        "glass_fraction",
        "seed",
        "source",
        "split",
        "count_true",
        "count",
        "count_err_pct",
        "ecd_mean_err_pct",
        "ecd_median_err_pct",
        "glass_fraction_err_pts",
        "glass_fraction_ci_half_pts",
        "s_segment",
        "s_grains",
        "cpu_s_grains",
        "peak_bytes_per_px_grains",
        "s_quantify",
        "coverage_frac_glass",
        "coverage_glass_fraction",
    ]
    print()
    print(table[cols].round(2).to_string(index=False))
    ok = (
        table["count_err_pct"].abs().le(10)
        & table["ecd_mean_err_pct"].abs().le(5)
        & table["ecd_median_err_pct"].abs().le(5)
    )
    print()
    by_case = table.assign(meets_targets=ok).groupby(["source", "split", "glass_fraction"])["meets_targets"]
    print(by_case.mean().to_string())
    # Per frame, over the cases: the median CPU time (the target) and the worst memory peak.
    per_frame = table.groupby(["source", "split"]).agg(
        cpu_s_grains_median=("cpu_s_grains", "median"), peak_bytes_per_px_max=("peak_bytes_per_px_grains", "max")
    )
    print()
    print(per_frame.round(3).to_string())
    if args.grid_offsets > 1:
        spread = [c for c in table.columns if c.startswith("offsets_")]
        print(f"\nErrors (%) over {args.grid_offsets} crop offsets, segmented, shape+image:")
        print(
            table.dropna(subset=spread)[["glass_fraction", "seed", *spread]]
            .round({c: 1 for c in spread})
            .to_string(index=False)
        )
    print(f"\nwrote {OUT / 'grains.csv'}")


if __name__ == "__main__":
    main()
