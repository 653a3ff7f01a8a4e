"""Phase segmentation against ground truth: synthetic series, real SEM images, and speed.

1. Synthetic (``semtrack.synth.make_series``), glass fraction 5/20/35 %, several seeds: one phase
   model per series (``fit_phase_model`` on all frames), ``segment_frame`` per frame. Per frame:
   fraction error of each phase (points), IoU of each phase, glass_fraction error (points).
   Targets (issue 4): |fraction error| <= 1.0, mean IoU >= 0.85, |glass_fraction error| <= 1.0.
2. Real Super images (../shared/real_sem/nasa_pmm_ebc_super/Super, skipped when absent) as a
   two-phase material; island = secondary + tertiary gamma-prime (both are the dark precipitate
   phase and darker than the matrix; the issue's Otsu baseline of ~0.74 IoU is on this definition).
   Unsupervised (targets: mean IoU >= 0.85, |area-fraction error| <= 3 points on every image);
   trainable with simulated scribbles on <= 2 % of the pixels (target IoU >= 0.92 on the image),
   and that model applied to the other six (target mean IoU >= 0.85, reported for every training
   image and averaged over them). Classifier settings: the defaults (features at 1-8 px, those from
   4 px up filtered at half size, trained also on the image shrunk 2x, forest run on every 2nd pixel,
   compact dark blobs seeding the darkest phase: ``blob_sigma_px=4``, ``blob_contrast=2.5``) with 50
   trees, ``normalise="iqr"`` and ``smoothing_sigma_px=1`` (``SUPER_CLASSIFIER_KW``), the same for
   all seven images. Plain Otsu shown for scale.
   Both again in the SE relief mode (``se_relief=True``: the island phase told by enclosure by rising
   edges rather than by grey level; ``SUPER_RELIEF_KW``, ``SUPER_RELIEF_CLASSIFIER_KW``; the classifier
   there also with the matched-filter particle search ``particle_sigma_px=2`` and ``refine_boundaries``), with CPU
   seconds per image and, for the classifier, the IoU on the scribbled image also with scribble seeds 1
   and 2 (seed 0 can be lucky).
   Also series with a phase absent from every frame (no Na3PO4; no Na3PO4 and no pores): the
   absent phase must come out at 0 %, the others within the same targets.
3. Model selection over 128 short series (384 x 512, 2 frames at 24 and 96 h; seeds 0-3 x glass
   5/12/20/35 % x with/without Na3PO4 x with/without pores x dose 150/60 e-/px): the largest fraction
   error over frames and phases per series. Target: every series within 1 point.
4. Speed: ``segment_frame`` and ``PixelClassifier.predict`` on a 2048 x 1536 synthetic frame with
   ``cv2.setNumThreads(1)``, wall and CPU (process) time (run with OMP_NUM_THREADS=1 and
   OPENBLAS_NUM_THREADS=1 for one-core figures); both also with ``se_relief=True``, and the classifier
   also with ``particle_sigma_px=2`` and ``refine_boundaries=True`` on top.

Usage::

    python benchmarks/bench_segment.py            # 512 px series, seeds 0-2, real images, 2048x1536 timing
    python benchmarks/bench_segment.py --quick    # one seed, fewer real-image cross runs

Writes ``benchmarks/out/segment.csv`` (one row per case; column ``kind`` says which).
"""

from __future__ import annotations

import argparse
import itertools
import time
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from semtrack.config import OUTSIDE, PHASE_CODES, PHASE_NAMES
from semtrack.segment import PixelClassifier, fit_phase_model, segment_frame, simulate_scribbles
from semtrack.synth import make_series

OUT = Path(__file__).resolve().parent / "out"
SUPER = Path(__file__).resolve().parents[1] / ".." / "shared" / "real_sem" / "nasa_pmm_ebc_super" / "Super"
#: Relief shading moves these images' intensity-class contours up to ~8 px from the edges: no boundary band.
SUPER_KW = dict(
    phase_names=("island", "matrix"),
    brightness_order=("island", "matrix"),
    denoise_sigma_px=3.0,
    seed_fraction=0.35,
    boundary_band_px=0,
)
#: Classifier settings for all seven Super images: noisy SE images, so the forest's probabilities are
#: smoothed (1 px) before the confident ones seed the watershed; population snapshots with a stable
#: phase mix whose phases the unsupervised fit cannot locate on lshr, so median/IQR normalisation.
SUPER_CLASSIFIER_KW = dict(phase_names=("island", "matrix"), n_estimators=50, normalise="iqr", smoothing_sigma_px=1.0)
#: The same in the SE relief mode (the Super images are secondary-electron images of an etched surface).
SUPER_RELIEF_KW = dict(SUPER_KW, se_relief=True)
#: The classifier there also finds the tertiary precipitates (~7 px) by a matched filter and moves the
#: island boundaries to the midway level (relief shading shifts the steepest edge by 1-2 px).
SUPER_RELIEF_CLASSIFIER_KW = dict(SUPER_CLASSIFIER_KW, se_relief=True, particle_sigma_px=2.0, refine_boundaries=True)


def _iou(a, b):
    return float((a & b).sum() / max((a | b).sum(), 1))


#: Island size classes: name, lower and upper area bound (µm²); 0.25 µm² = 100 px at 0.05 µm/px.
ISLAND_CLASSES = (("small", 0.0, 0.25), ("medium", 0.25, 1.0), ("large", 1.0, np.inf))
#: Smallest island the tracker counts (semtrack.track.label_islands default), µm².
MIN_ISLAND_UM2 = 0.1


def island_scores(series, frame, pred):
    """Island recall by size class and false islands of one segmented frame.

    An island (``series.islands``, identities warped into the frame) is found when at least half of
    its pixels are Na3PO4. A false island is a connected Na3PO4 region of at least ``MIN_ISLAND_UM2``
    with under 20 % true Na3PO4; it is "at a pore" when it touches a true pore (the classic false
    positive: a pore's blurred rim passes through the Na3PO4 grey).
    """
    na, pore = PHASE_CODES["na3po4"], PHASE_CODES["pore"]
    h, w = pred.shape
    ids = cv2.warpAffine(
        series.islands_ref[frame].astype(np.float32),
        series.matrices[frame][:2],
        (w, h),
        flags=cv2.INTER_NEAREST,
        borderValue=0,
    ).astype(np.int64)
    table = series.islands[series.islands.frame == frame]
    found = np.bincount(ids[pred == na], minlength=ids.max() + 1)
    total = np.bincount(ids.ravel(), minlength=ids.max() + 1)
    row = {}
    for name, lower, upper in ISLAND_CLASSES:
        sel = [i for i, a in zip(table.island_id, table.area_um2) if lower < a <= upper and i < total.size]
        sel = [i for i in sel if total[i] > 0]  # islands of the margin this frame does not image
        row[f"islands_{name}"] = len(sel)
        row[f"islands_{name}_found"] = int(sum(found[i] >= 0.5 * total[i] for i in sel))
    truth = series.phases[frame]
    n, comp, stats, _ = cv2.connectedComponentsWithStats((pred == na).astype(np.uint8), connectivity=8)
    true_na = np.bincount(comp[truth == na], minlength=n)
    at_pore = cv2.dilate((truth == pore).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    near_pore = np.bincount(comp[at_pore], minlength=n)
    area = stats[:, cv2.CC_STAT_AREA]
    false = (area >= MIN_ISLAND_UM2 / series.pixel_size_um**2) & (true_na < 0.2 * area)
    false[0] = False
    row["false_islands"] = int(false.sum())
    row["false_islands_at_pores"] = int((false & (near_pore > 0)).sum())
    return row


#: Series with a phase absent from every frame (a pellet before exposure, a dense pellet).
ABSENT_CASES = {"no_na3po4": dict(n_islands=0), "no_na3po4_no_pores": dict(n_islands=0, pore_fraction=0.0)}


def synthetic_rows(seeds, glass_fractions, shape):
    cases = [
        (f"seed{seed}_glass{gf:.2f}", dict(seed=seed, glass_fraction=gf)) for seed in seeds for gf in glass_fractions
    ]
    cases += [(f"seed{seed}_{name}", dict(seed=seed, **kw)) for seed in seeds for name, kw in ABSENT_CASES.items()]
    rows = []
    g, s = PHASE_CODES["glass"], PHASE_CODES["nasicon"]
    for case, kwargs in cases:
        series = make_series(shape=shape, n_frames=4, **kwargs)
        images = [im.astype(np.float32) / np.iinfo(im.dtype).max for im in series.images]
        valids = [p != OUTSIDE for p in series.phases]
        t0 = time.perf_counter()
        model = fit_phase_model(images, valid=valids)
        fit_s = time.perf_counter() - t0
        for i, (img, valid, truth) in enumerate(zip(images, valids, series.phases, strict=True)):
            t0 = time.perf_counter()
            pred = segment_frame(img, model=model, valid=valid, pixel_size_um=series.pixel_size_um)
            seg_s = time.perf_counter() - t0
            n = valid.sum()
            row = dict(kind="synthetic", case=case, frame=i, seconds=seg_s, fit_seconds=fit_s)
            for code, name in enumerate(PHASE_NAMES):
                p, t = (pred == code) & valid, (truth == code) & valid
                row[f"{name}_frac_err_pt"] = 100 * (p.sum() - t.sum()) / n
                # a phase absent from truth and prediction has no IoU (not 0): left out of the mean
                row[f"{name}_iou"] = _iou(p, t) if (p | t).any() else np.nan
            row["mean_iou"] = np.nanmean([row[f"{nm}_iou"] for nm in PHASE_NAMES])
            gfp = ((pred == g) & valid).sum() / (((pred == g) | (pred == s)) & valid).sum()
            gft = ((truth == g) & valid).sum() / (((truth == g) | (truth == s)) & valid).sum()
            row["glass_fraction_err_pt"] = 100 * (gfp - gft)
            row.update(island_scores(series, i, pred))
            rows.append(row)
    return rows


def _load_super():
    import tifffile

    out = []
    for path in sorted((SUPER / "images").glob("*.tif")):
        img = tifffile.imread(path)[..., 0].astype(np.float32) / 255
        # the masks' "shaped" description does not match their pages: read the pages as they are
        mask = tifffile.imread(SUPER / "masks" / f"{path.stem}_mask.tif", is_shaped=False)[..., :3]
        out.append((path.stem, img, (mask == (0, 0, 255)).all(-1) | (mask == (255, 0, 0)).all(-1)))
    return out


def real_rows(quick):
    if not (SUPER / "images").is_dir():
        print(f"real images not found at {SUPER}; skipped")
        return []
    from skimage.filters import gaussian, threshold_otsu

    data = _load_super()
    rows = []
    for kind, kw in (("real_unsupervised", SUPER_KW), ("real_unsupervised_relief", SUPER_RELIEF_KW)):
        for name, img, truth in data:
            blurred = gaussian(img, 2)
            otsu = blurred < threshold_otsu(blurred)
            t0, c0 = time.perf_counter(), time.process_time()
            pred = segment_frame(img, **kw) == 0
            rows.append(
                dict(
                    kind=kind,
                    case=name,
                    seconds=time.perf_counter() - t0,
                    cpu_seconds=time.process_time() - c0,
                    iou=_iou(pred, truth),
                    frac_err_pt=100 * (pred.mean() - truth.mean()),
                    otsu_iou=_iou(otsu, truth),
                    otsu_frac_err_pt=100 * (otsu.mean() - truth.mean()),
                )
            )
    train_set = data[1:3] if quick else data
    for kind, kw in (("real_classifier", SUPER_CLASSIFIER_KW), ("real_classifier_relief", SUPER_RELIEF_CLASSIFIER_KW)):
        for name, img, truth in train_set:
            scribbles = simulate_scribbles(np.where(truth, 0, 1), fraction=0.015, seed=0)
            t0 = time.perf_counter()
            clf = PixelClassifier(**kw).fit(img, scribbles)
            train_s = time.perf_counter() - t0
            self_iou = _iou(clf.predict(img) == 0, truth)
            others = [_iou(clf.predict(im) == 0, t) for n, im, t in data if n != name]
            row = dict(
                kind=kind,
                case=name,
                seconds=train_s,
                scribble_fraction=float((scribbles > 0).mean()),
                iou=self_iou,
                cross_mean_iou=float(np.mean(others)),
                cross_min_iou=float(np.min(others)),
            )
            if not quick:
                for seed in (1, 2):
                    other_scribbles = simulate_scribbles(np.where(truth, 0, 1), fraction=0.015, seed=seed)
                    other = PixelClassifier(**kw).fit(img, other_scribbles)
                    row[f"iou_seed{seed}"] = _iou(other.predict(img) == 0, truth)
            rows.append(row)
    return rows


def _timed(call, repeats):
    """Wall and CPU seconds of ``repeats`` calls."""
    times, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        call()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return times, cpu


def _speed_row(case, times, cpu, **extra):
    """One row of the speed table: median and best wall time, median CPU time (seconds)."""
    return dict(
        kind="speed",
        case=case,
        seconds=float(np.median(times)),
        seconds_min=float(np.min(times)),
        cpu_seconds=float(np.median(cpu)),
        **extra,
    )


def speed_rows(repeats):
    cv2.setNumThreads(1)
    series = make_series(shape=(1536 + 64, 2048), n_frames=1, seed=0, info_bar=True)
    img = series.images[0].astype(np.float32) / 255
    valid = series.phases[0] != OUTSIDE
    model = fit_phase_model(img, valid=valid)
    times, cpu = _timed(
        lambda: segment_frame(img, model=model, valid=valid, pixel_size_um=series.pixel_size_um), repeats
    )
    # peak of the allocations made inside segment_frame (numpy arrays and OpenCV outputs)
    tracemalloc.start()
    segment_frame(img, model=model, valid=valid, pixel_size_um=series.pixel_size_um)
    peak_bytes = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    rows = [
        _speed_row(
            f"segment_frame {img.shape[1]}x{img.shape[0]}",
            times,
            cpu,
            peak_mb=peak_bytes / 1e6,
            peak_float32_frames=peak_bytes / (4 * img.size),
        )
    ]
    scribbles = simulate_scribbles(series.phases[0], fraction=0.01, seed=0)
    clf = PixelClassifier(n_estimators=20).fit(img, scribbles, valid=valid)
    times, cpu = _timed(lambda: clf.predict(img, valid=valid), repeats)
    rows.append(_speed_row(f"PixelClassifier.predict {img.shape[1]}x{img.shape[0]} (20 trees)", times, cpu))
    times, cpu = _timed(
        lambda: segment_frame(img, model=model, valid=valid, pixel_size_um=series.pixel_size_um, se_relief=True),
        repeats,
    )
    rows.append(_speed_row(f"segment_frame {img.shape[1]}x{img.shape[0]} se_relief", times, cpu))
    clf = PixelClassifier(n_estimators=20, se_relief=True).fit(img, scribbles, valid=valid)
    times, cpu = _timed(lambda: clf.predict(img, valid=valid), repeats)
    rows.append(_speed_row(f"PixelClassifier.predict {img.shape[1]}x{img.shape[0]} (20 trees) se_relief", times, cpu))
    clf.particle_sigma_px, clf.refine_boundaries = 2.0, True
    times, cpu = _timed(lambda: clf.predict(img, valid=valid), repeats)
    case = f"PixelClassifier.predict {img.shape[1]}x{img.shape[0]} (20 trees) se_relief, particles, refined"
    rows.append(_speed_row(case, times, cpu))
    return rows


def robustness_rows(seeds):
    """Model selection over many short series: every combination of glass 5/12/20/35 %, with and
    without Na3PO4, with and without pores, two electron doses (384 x 512, 2 frames at 24 and 96 h,
    the second one the latest stage). Per series: the largest fraction error over frames and phases,
    and where it is (``worst_phase``, ``worst_frame`` and its sign, ``worst_signed_err_pt``)."""
    rows = []
    for seed, gf, n_islands, pores, dose in itertools.product(
        seeds, (0.05, 0.12, 0.2, 0.35), (None, 0), (0.02, 0.0), (150.0, 60.0)
    ):
        s = make_series(
            shape=(384, 512),
            n_frames=2,
            seed=seed,
            glass_fraction=gf,
            n_islands=n_islands,
            pore_fraction=pores,
            dose_electrons_per_px=dose,
        )
        images = [im.astype(np.float32) / np.iinfo(im.dtype).max for im in s.images]
        valids = [p != OUTSIDE for p in s.phases]
        model = fit_phase_model(images, valid=valids)
        worst = (0.0, 0, PHASE_NAMES[0])
        for frame, (img, valid, truth) in enumerate(zip(images, valids, s.phases, strict=True)):
            pred = segment_frame(img, model=model, valid=valid, pixel_size_um=s.pixel_size_um)
            n = valid.sum()
            for code, name in enumerate(PHASE_NAMES):
                err = 100 * (int(((pred == code) & valid).sum()) - int(((truth == code) & valid).sum())) / n
                if abs(err) > abs(worst[0]):
                    worst = (err, frame, name)
        rows.append(
            dict(
                kind="robustness",
                case=f"seed{seed}_glass{gf:.2f}_{'islands' if n_islands is None else 'no_na3po4'}"
                f"_pores{pores:g}_dose{dose:g}",
                worst_frac_err_pt=abs(worst[0]),
                worst_signed_err_pt=worst[0],
                worst_frame=worst[1],
                worst_phase=worst[2],
            )
        )
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one seed, fewer cross-image runs")
    args = parser.parse_args()
    seeds = [0] if args.quick else [0, 1, 2]
    rows = speed_rows(1 if args.quick else 3)
    rows += synthetic_rows(seeds, [0.05, 0.2, 0.35], (512, 512))
    rows += real_rows(args.quick)
    rows += robustness_rows([0] if args.quick else [0, 1, 2, 3])
    df = pd.DataFrame(rows)
    OUT.mkdir(parents=True, exist_ok=True)
    df.to_csv(OUT / "segment.csv", index=False)

    pd.set_option("display.width", 200, "display.max_columns", 30)
    syn = df[df.kind == "synthetic"]
    if len(syn):
        cols = [f"{n}_frac_err_pt" for n in PHASE_NAMES] + ["mean_iou", "glass_fraction_err_pt", "seconds"]
        print("\nSynthetic (512 px; targets |frac err| <= 1.0 pt, mean IoU >= 0.85, |glass_fraction err| <= 1.0 pt)")
        print(syn[["case", "frame", *cols]].round(3).to_string(index=False))
        worst = syn[[f"{n}_frac_err_pt" for n in PHASE_NAMES]].abs().max()
        print(
            f"max |frac err| per phase: {worst.round(2).to_dict()}; mean IoU {syn.mean_iou.mean():.3f} "
            f"(min {syn.mean_iou.min():.3f}); max |glass_fraction err| {syn.glass_fraction_err_pt.abs().max():.2f}"
        )
        print("mean IoU per phase: " + ", ".join(f"{n} {syn[f'{n}_iou'].mean():.3f}" for n in PHASE_NAMES))
        recall = ", ".join(
            f"{name} (area <= {upper:g} µm²) {syn[f'islands_{name}_found'].sum()}/{syn[f'islands_{name}'].sum()}"
            for name, _, upper in ISLAND_CLASSES
        )
        print(
            f"island recall (>= half the island Na3PO4): {recall}; false islands (>= {MIN_ISLAND_UM2} µm², "
            f"< 20 % true Na3PO4) {syn.false_islands.sum()}, of which at pores {syn.false_islands_at_pores.sum()}"
        )
    for kind, title in [
        ("real_unsupervised", "Real Super, unsupervised (targets mean IoU >= 0.85, |err| <= 3 pt)"),
        ("real_unsupervised_relief", "Real Super, unsupervised, se_relief=True (same targets)"),
        ("real_classifier", "Real Super, classifier (targets IoU >= 0.92, cross mean >= 0.85)"),
        ("real_classifier_relief", "Real Super, classifier, se_relief=True (same targets)"),
    ]:
        part = df[df.kind == kind].dropna(axis=1, how="all")
        if len(part):
            print(f"\n{title}")
            print(part.drop(columns="kind").round(3).to_string(index=False))
            print(f"mean IoU {part.iou.mean():.3f}, min {part.iou.min():.3f}")
            if "cross_mean_iou" in part:
                # the mean over all training choices is the honest transfer figure; one image can be lucky
                first = part[part.case == "spot1_0d_0"].cross_mean_iou
                print(
                    f"cross IoU averaged over {len(part)} training images {part.cross_mean_iou.mean():.3f}"
                    + (f"; trained on spot1_0d_0 {first.iloc[0]:.3f}" if len(first) else "")
                )
    rob = df[df.kind == "robustness"]
    if len(rob):
        bad = rob[rob.worst_frac_err_pt > 1.0]
        print(
            f"\nModel selection over {len(rob)} short series (target: every phase within 1 pt): "
            f"{len(rob) - len(bad)} pass; failing:"
        )
        cols = ["case", "worst_signed_err_pt", "worst_phase", "worst_frame"]
        print(bad[cols].round(2).to_string(index=False))
        # with every series passing, how close the nearest ones come says more than the count
        print("closest to the limit:")
        print(rob.nlargest(5, "worst_frac_err_pt")[cols].round(3).to_string(index=False))
    sp = df[df.kind == "speed"]
    print("\nSpeed, one thread (target: segment_frame <= 0.4 s CPU per 2048x1536 frame)")
    for _, r in sp.iterrows():
        peak = f", peak {r.peak_mb:.0f} MB = {r.peak_float32_frames:.1f} float32 frames" if r.get("peak_mb") > 0 else ""
        print(f"  {r.case}: {r.seconds:.2f} s wall, {r.cpu_seconds:.2f} s CPU (median){peak}")
    print(f"wrote {OUT / 'segment.csv'}")


if __name__ == "__main__":
    main()
