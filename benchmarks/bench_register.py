"""Registration accuracy and speed against known transforms, semtrack beside its peers.

Frames come from :func:`semtrack.synth.make_series` at 2048x1536 with the ranges of
issue 3: translation up to 10 % of the field, rotation up to 2 deg, scale change up
to 1 %, gain change up to 30 %, shot and scan-line noise, islands forming,
growing, coalescing and dissolving. Error = RMS distance (px) between where the
estimated and the true matrix send the analysed region's pixels.

Methods, all on the same frames:

* ``semtrack marker``: :func:`semtrack.register.register_frame` on the series'
  marker rectangle (time includes preparing the reference, i.e. one-off cost).
* ``semtrack auto``: :func:`semtrack.register.register_series` without a marker
  (time per frame includes choosing the marker, amortised over the frames).
* ``pystackreg``: TurboReg/StackReg ``SCALED_ROTATION`` (similarity), whole frame
  above the info bar.
* ``skimage pcc``: ``skimage.registration.phase_cross_correlation``
  (translation only, ``upsample_factor=20``), whole frame above the info bar.

The same again with mild ranges (2 % shift, 0.5 deg, 0.2 % scale), where the
peers, which start from the identity, can converge.

Last study: ``direct`` vs ``chained`` registration on long series (12 frames).

Time is CPU time of this process with one thread everywhere (``cpu_s``, the
one-core figure) and wall time (``wall_s``; other jobs share the machine).

Run: ``python benchmarks/bench_register.py [--quick]``; writes
``benchmarks/out/register.csv``.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from semtrack.register import register_frame, register_series  # noqa: E402
from semtrack.synth import make_series  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
ISSUE_RANGES = dict(max_shift_fraction=0.10, max_rotation_deg=2.0, max_scale_change=0.01, brightness_change=0.3)
# Small re-positioning, where the peers (which start from the identity) can converge too.
MILD_RANGES = dict(max_shift_fraction=0.02, max_rotation_deg=0.5, max_scale_change=0.002, brightness_change=0.3)


def rms_px(estimate: np.ndarray, truth: np.ndarray, region: np.ndarray) -> float:
    ys, xs = np.nonzero(region)
    step = max(1, xs.size // 250_000)
    pts = np.stack([xs[::step], ys[::step], np.ones(xs[::step].size)]).astype(float)
    d = (estimate @ pts - truth @ pts)[:2]
    return float(np.sqrt((d**2).sum(axis=0).mean()))


def timed(fn):
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.process_time() - c0, time.perf_counter() - w0


def pystackreg_matrix(ref: np.ndarray, mov: np.ndarray) -> np.ndarray:
    from pystackreg import StackReg

    # Its matrix maps reference (x, y) to moving (x, y), as semtrack's does.
    return StackReg(StackReg.SCALED_ROTATION).register(ref, mov)


def skimage_matrix(ref: np.ndarray, mov: np.ndarray) -> np.ndarray:
    from skimage.registration import phase_cross_correlation

    shift, _, _ = phase_cross_correlation(ref, mov, upsample_factor=20)
    m = np.eye(3)
    # `shift` (rows, cols) moves `mov` onto `ref`: reference (x, y) is at (x, y) - shift in `mov`.
    m[0, 2], m[1, 2] = -shift[1], -shift[0]
    return m


def methods_study(seeds, shape, n_frames, regime: str) -> list[dict]:
    ranges = ISSUE_RANGES if regime == "issue" else MILD_RANGES
    rows = []
    for seed in seeds:
        s = make_series(shape=shape, n_frames=n_frames, seed=seed, **ranges)
        region = s.analysed_region()
        h, w = s.shape
        bar = s.info_bar_rows
        valid = np.ones((h, w), dtype=bool)
        valid[h - bar :] = False
        images = [im.astype(np.float32) / np.iinfo(im.dtype).max for im in s.images]
        top = [im[: h - bar] for im in images]

        def add(method, frame, matrix, cpu, wall, score=np.nan):
            rows.append(
                dict(
                    study=f"methods, {regime} ranges",
                    method=method,
                    seed=seed,
                    frame=frame,
                    rms_px=rms_px(matrix, s.matrices[frame], region),
                    cpu_s=cpu,
                    wall_s=wall,
                    score=score,
                )
            )

        for i in range(1, n_frames):
            reg, cpu, wall = timed(
                lambda: register_frame(
                    images[0], images[i], marker=s.marker_rect, reference_valid=valid, moving_valid=valid
                )
            )
            add("semtrack marker", i, reg.matrix, cpu, wall, reg.score)
        reg, cpu, wall = timed(lambda: register_series(images, marker=None, valid_masks=[valid] * n_frames))
        for i in range(1, n_frames):
            add(
                "semtrack auto",
                i,
                reg.frames[i].matrix,
                cpu / (n_frames - 1),
                wall / (n_frames - 1),
                reg.frames[i].score,
            )
        for i in range(1, n_frames):
            m, cpu, wall = timed(lambda: pystackreg_matrix(top[0], top[i]))
            add("pystackreg", i, m, cpu, wall)
            m, cpu, wall = timed(lambda: skimage_matrix(top[0], top[i]))
            add("skimage pcc", i, m, cpu, wall)
        print(f"{regime} seed {seed}: done", flush=True)
    return rows


def strategy_study(seeds, shape, n_frames) -> list[dict]:
    rows = []
    for seed in seeds:
        s = make_series(
            shape=shape, n_frames=n_frames, seed=100 + seed, times_h=24.0 * np.arange(1, n_frames + 1), **ISSUE_RANGES
        )
        region = s.analysed_region()
        h, w = s.shape
        valid = np.ones((h, w), dtype=bool)
        valid[h - s.info_bar_rows :] = False
        for strategy in ("direct", "chained"):
            reg, cpu, wall = timed(
                lambda: register_series(
                    s.images, marker=s.marker_rect, valid_masks=[valid] * n_frames, strategy=strategy
                )
            )
            for i in range(1, n_frames):
                rows.append(
                    dict(
                        study="strategy",
                        method=f"semtrack {strategy}",
                        seed=seed,
                        frame=i,
                        rms_px=rms_px(reg.frames[i].matrix, s.matrices[i], region),
                        cpu_s=cpu / (n_frames - 1),
                        wall_s=wall / (n_frames - 1),
                        score=reg.frames[i].score,
                    )
                )
        print(f"strategy seed {seed}: done", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one seed, fewer frames (for development)")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    seeds = [0] if args.quick else [0, 1, 2]
    rows = methods_study(seeds, (1536, 2048), 3 if args.quick else 4, "issue")
    rows += methods_study(seeds, (1536, 2048), 3 if args.quick else 4, "mild")
    rows += strategy_study([0] if args.quick else [0, 1], (768, 1024), 6 if args.quick else 12)
    df = pd.DataFrame(rows)
    OUT.mkdir(parents=True, exist_ok=True)
    df.to_csv(OUT / "register.csv", index=False)
    summary = (
        df.groupby(["study", "method"], sort=False)
        .agg(
            rms_px_mean=("rms_px", "mean"),
            rms_px_max=("rms_px", "max"),
            cpu_s_per_frame=("cpu_s", "mean"),
            wall_s_per_frame=("wall_s", "mean"),
            n=("rms_px", "size"),
        )
        .reset_index()
    )
    print()
    print("study                 | method            | rms_px mean | rms_px max | cpu s/frame | wall s/frame |  n")
    print("----------------------|-------------------|-------------|------------|-------------|--------------|----")
    for r in summary.itertuples():
        print(
            f"{r.study:<21} | {r.method:<17} | {r.rms_px_mean:11.3f} | {r.rms_px_max:10.3f} | "
            f"{r.cpu_s_per_frame:11.3f} | {r.wall_s_per_frame:12.3f} | {r.n:3d}"
        )
    far = (
        df[(df.study == "strategy")]
        .groupby("method")
        .apply(lambda g: g[g.frame == g.frame.max()].rms_px.mean(), include_groups=False)
    )
    print("\nlast frame of the long series, rms_px:", far.round(3).to_dict())
    print(f"\nwritten: {OUT / 'register.csv'}")


if __name__ == "__main__":
    main()
