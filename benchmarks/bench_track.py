"""Island tracking benchmark: event accuracy vs synthetic truth, laptrack side by side, and speed.

Accuracy: ``semtrack.synth.make_series`` series (several seeds) tracked from
(1) the true Na3PO4 masks, (2) the true masks with residual misregistration and
boundary noise, (3) frames segmented by ``semtrack.segment.segment_frame`` after
resampling with the true registration. Each is scored with
``score_events`` (matched by frame pair and position within 1 µm), island
counts per frame, ``linking_metrics`` and ``area_balance``; laptrack's
``OverLapTrack`` (merging and splitting on) is run on the same label images and
scored the same way.

Speed: linking two frames with 10,000 islands each on one core (target <= 0.5 s).

Run:  python benchmarks/bench_track.py [--seeds 0 1 2] [--quick]
Writes benchmarks/out/track.csv (tidy: section, condition, method, seed, metric, value).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import ndimage as ndi  # noqa: E402

from semtrack.track import (  # noqa: E402
    EVENT_TYPES,
    IslandTracker,
    area_balance,
    label_islands,
    link_islands,
    linking_metrics,
    score_events,
)

cv2.setNumThreads(1)
OUT = Path(__file__).resolve().parent / "out"


# ---------------------------------------------------------------------------
# inputs


def _perturb(labels_true_mask: np.ndarray, region: np.ndarray, rng, px_um: float) -> np.ndarray:
    """True island mask with residual misregistration (<= 0.15 µm) and boundary noise."""
    shift = rng.integers(-round(0.15 / px_um), round(0.15 / px_um) + 1, size=2)
    mask = np.roll(labels_true_mask, tuple(shift), axis=(0, 1)).astype(np.float32)
    noise = ndi.gaussian_filter(rng.standard_normal(mask.shape).astype(np.float32), 1.5)
    noise /= noise.std()
    mask = ndi.gaussian_filter(mask, 1.0) + 0.12 * noise > 0.5
    return mask & region


def _segmented_phases(s, region):
    from semtrack.register import resample
    from semtrack.segment import segment_frame

    out = []
    for image, matrix in zip(s.images, s.matrices):
        img = image.astype(np.float32) / np.iinfo(image.dtype).max
        if s.info_bar_rows:
            img[-s.info_bar_rows :] = np.nan
        ref = resample(img, matrix, s.shape)
        valid = np.isfinite(ref) & region
        phases = segment_frame(np.nan_to_num(ref), valid=valid, pixel_size_um=s.pixel_size_um)
        phases = np.where(valid, phases, 255).astype(np.uint8)
        out.append(phases)
    return out


def _true_graph(s) -> dict[int, list[int]]:
    return {
        int(r.island_id): [int(p) for p in str(r.parents).split(";")] for r in s.islands.itertuples() if str(r.parents)
    }


# ---------------------------------------------------------------------------
# laptrack


def _centroids(labels: np.ndarray) -> dict[int, tuple[float, float]]:
    flat = labels.ravel()
    idx = np.flatnonzero(flat)
    lab = flat[idx]
    r, c = np.divmod(idx, labels.shape[1])
    n = int(flat.max()) + 1
    a = np.bincount(lab, minlength=n)
    x = np.bincount(lab, weights=c, minlength=n)
    y = np.bincount(lab, weights=r, minlength=n)
    return {int(i): (x[i] / a[i], y[i] / a[i]) for i in np.flatnonzero(a)}


def laptrack_events(label_maps: list[np.ndarray]) -> pd.DataFrame:
    """Events from laptrack's OverLapTrack (merge/split on), in semtrack's events layout."""
    from laptrack import OverLapTrack

    tracker = OverLapTrack(cutoff=0.95, splitting_cutoff=0.95, merging_cutoff=0.95, gap_closing_cutoff=False)
    track_df, split_df, merge_df = tracker.predict_overlap_dataframe(np.stack(label_maps))
    track_df = track_df.reset_index()
    cents = [_centroids(m) for m in label_maps]
    span = track_df.groupby("track_id").agg(first=("frame", "min"), last=("frame", "max"))
    label_at = {
        (int(f), int(t)): int(lbl) for f, lbl, t in zip(track_df["frame"], track_df["label"], track_df["track_id"])
    }
    n = len(label_maps)
    rows = []

    def add(kind, frame_from, frame, track):
        x, y = cents[frame][label_at[(frame, track)]]
        rows.append((frame_from, frame_from + 1, kind, x, y))

    children = set(split_df.get("child_track_id", [])) | set(merge_df.get("child_track_id", []))
    parents = set(split_df.get("parent_track_id", [])) | set(merge_df.get("parent_track_id", []))
    for child, _ in merge_df.groupby("child_track_id") if len(merge_df) else []:
        first = int(span.loc[child, "first"])
        add("coalescence", first - 1, first, child)
    for parent, _ in split_df.groupby("parent_track_id") if len(split_df) else []:
        last = int(span.loc[parent, "last"])
        add("split", last, last, parent)
    for track, (first, last) in span.iterrows():
        if first > 0 and track not in children:
            add("formation", int(first) - 1, int(first), track)
        if last < n - 1 and track not in parents:
            add("dissolution", int(last), int(last), track)
    return pd.DataFrame(rows, columns=["frame_from", "frame_to", "event", "x_px", "y_px"])


# ---------------------------------------------------------------------------
# accuracy


def accuracy(seeds, shape, quick):
    from semtrack.synth import make_series

    rows = []
    for seed in seeds:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            s = make_series(shape=shape, n_frames=4, seed=seed)
        px = s.pixel_size_um
        region = s.analysed_region()
        rng = np.random.default_rng(seed + 100)
        true_counts = s.truth_frame_table()["n_islands"].to_numpy()
        conditions = {
            "true_masks": [label_islands(p, pixel_size_um=px, valid=region) for p in s.phases_ref],
            "perturbed_masks": [
                label_islands(
                    np.where(_perturb(p == 3, region, rng, px), 3, 2).astype(np.uint8), pixel_size_um=px, valid=region
                )
                for p in s.phases_ref
            ],
        }
        if not quick:
            t0 = time.perf_counter()
            try:
                phases = _segmented_phases(s, region)
            except Exception as exc:  # the segmentation stage is another module; report, don't stop
                print(f"seed {seed}: segmentation unavailable ({type(exc).__name__}: {exc})")
            else:
                print(f"seed {seed}: segmented {len(phases)} frames in {time.perf_counter() - t0:.1f} s")
                conditions["segmented"] = [label_islands(p, pixel_size_um=px, valid=region) for p in phases]
        for condition, labels in conditions.items():
            t0 = time.perf_counter()
            lineage, maps = link_islands(labels, s.times_h, pixel_size_um=px, region=region)
            t_semtrack = time.perf_counter() - t0
            methods = {"semtrack": (lineage.events, t_semtrack)}
            t0 = time.perf_counter()
            lt_events = laptrack_events(labels)
            methods["laptrack"] = (lt_events, time.perf_counter() - t0)
            for method, (events, elapsed) in methods.items():
                sc = score_events(events, s.events, max_distance_px=1.0 / px)
                base = dict(section="accuracy", condition=condition, method=method, seed=seed)
                for r in sc.itertuples():
                    for metric in ("n_true", "n_predicted", "precision", "recall", "f1"):
                        rows.append({**base, "metric": f"{r.event}_{metric}", "value": float(getattr(r, metric))})
                rows.append({**base, "metric": "time_s", "value": elapsed})
            counts = lineage.frames["n_islands"].to_numpy()
            rel = np.abs(counts - true_counts) / np.maximum(true_counts, 1)
            base = dict(section="accuracy", condition=condition, method="semtrack", seed=seed)
            rows.append({**base, "metric": "count_rel_error_max", "value": float(rel.max())})
            rows.append({**base, "metric": "n_islands_true_total", "value": float(true_counts.sum())})
            lm = linking_metrics(
                maps, s.islands_ref, predicted_graph=lineage.graph, true_graph=_true_graph(s)
            ).set_index("kind")
            for kind in lm.index:
                rows.append({**base, "metric": f"{kind}_f1", "value": float(lm.loc[kind, "f1"])})
                rows.append({**base, "metric": f"{kind}_ctc_score", "value": float(lm.loc[kind, "score"])})
            bal = area_balance(lineage.islands, lineage.events)
            rows.append({**base, "metric": "area_balanced", "value": float(bal["balanced"].all())})
            true_diss = s.events.loc[s.events["event"] == "dissolution", "area_um2"].sum()
            pred_diss = lineage.events.loc[lineage.events["event"] == "dissolution", "area_um2"].sum()
            rows.append(
                {
                    **base,
                    "metric": "dissolved_area_rel_error",
                    "value": float(abs(pred_diss - true_diss) / true_diss) if true_diss else float("nan"),
                }
            )
    return rows


# ---------------------------------------------------------------------------
# speed


def _island_pair(n_side: int, spacing: int, r_lo: float, r_hi: float, seed: int):
    """Frame 0: n_side**2 islands on a jittered grid. Frame 1: grown by 1 px and shifted 1 px;
    5 % dissolved, 5 % new ones between grid cells, 2 % bridged to a neighbour (coalescence)."""
    rng = np.random.default_rng(seed)
    size = n_side * spacing
    a = np.zeros((size, size), np.uint8)
    b = np.zeros((size, size), np.uint8)
    small = max(2, int(r_lo) - 1)
    for i in range(n_side):
        for j in range(n_side):
            cx = j * spacing + spacing // 2 + int(rng.integers(-2, 3))
            cy = i * spacing + spacing // 2 + int(rng.integers(-2, 3))
            r = int(round(rng.uniform(r_lo, r_hi)))
            u = rng.random()
            cv2.circle(a, (cx, cy), r, 1, -1)
            if u >= 0.05:
                cv2.circle(b, (cx + 1, cy), r + 1, 1, -1)
            if 0.05 <= u < 0.07 and j + 1 < n_side:
                cv2.rectangle(b, (cx, cy - 2), (cx + spacing, cy + 2), 1, -1)
            if rng.random() < 0.05:  # new island in the corner between cells
                cv2.circle(b, (j * spacing + 1 + small, i * spacing + 1 + small), small, 1, -1)
    structure = ndi.generate_binary_structure(2, 1)
    return ndi.label(a, structure=structure)[0].astype(np.int32), ndi.label(b, structure=structure)[0].astype(np.int32)


def speed(repeats: int, with_laptrack: bool):
    rows = []
    cases = [
        ("1k islands, 640^2", 32, 20, 3, 7),
        ("10k islands, 2000^2", 100, 20, 3, 7),
        ("10k islands, 4000^2", 100, 40, 6, 14),
    ]
    for name, n_side, spacing, r_lo, r_hi in cases:
        la, lb = _island_pair(n_side, spacing, r_lo, r_hi, seed=1)
        times = []
        for _ in range(repeats):
            tracker = IslandTracker(pixel_size_um=0.05)
            tracker.add(la, 0.0)
            t0 = time.perf_counter()
            tracker.add(lb, 1.0)
            times.append(time.perf_counter() - t0)
        lin = tracker.result()
        base = dict(section="speed", condition=name, seed=1)
        rows.append({**base, "method": "semtrack", "metric": "n_islands_frame0", "value": float(la.max())})
        rows.append({**base, "method": "semtrack", "metric": "n_islands_frame1", "value": float(lb.max())})
        rows.append({**base, "method": "semtrack", "metric": "link_time_s_median", "value": float(np.median(times))})
        rows.append({**base, "method": "semtrack", "metric": "link_time_s_min", "value": float(np.min(times))})
        for kind in EVENT_TYPES:
            rows.append(
                {
                    **base,
                    "method": "semtrack",
                    "metric": f"n_{kind}",
                    "value": float((lin.events["event"] == kind).sum()),
                }
            )
        phases = np.where(lb > 0, 3, 2).astype(np.uint8)
        t0 = time.perf_counter()
        label_islands(phases, pixel_size_um=0.05)
        rows.append({**base, "method": "semtrack", "metric": "label_time_s", "value": time.perf_counter() - t0})
        if with_laptrack and la.max() <= 2000:
            t0 = time.perf_counter()
            laptrack_events([la, lb])
            rows.append(
                {**base, "method": "laptrack", "metric": "link_time_s_median", "value": time.perf_counter() - t0}
            )
    return rows


# ---------------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--size", type=int, default=768, help="synthetic frame side in px")
    parser.add_argument("--quick", action="store_true", help="no segmentation, one speed repeat")
    args = parser.parse_args()

    rows = accuracy(args.seeds, (args.size, args.size), args.quick)
    rows += speed(repeats=1 if args.quick else 5, with_laptrack=True)
    df = pd.DataFrame(rows, columns=["section", "condition", "method", "seed", "metric", "value"])
    OUT.mkdir(parents=True, exist_ok=True)
    df.to_csv(OUT / "track.csv", index=False)

    acc = df[df["section"] == "accuracy"]
    pd.set_option("display.width", 200)
    pd.set_option("display.max_columns", 20)
    keep = [f"{e}_{m}" for e in EVENT_TYPES for m in ("precision", "recall")] + ["time_s"]
    table = (
        acc[acc["metric"].isin(keep)]
        .groupby(["condition", "method", "metric"])["value"]
        .agg(["min", "mean"])
        .unstack("metric")
    )
    print("\nEvent precision / recall over seeds (min, mean) and time:")
    print(table["min"].round(3).to_string())
    extra_metrics = [
        "count_rel_error_max",
        "detection_f1",
        "continuation_f1",
        "continuation_ctc_score",
        "lineage_f1",
        "links_ctc_score",
        "area_balanced",
        "dissolved_area_rel_error",
        "all_n_true",
        "n_islands_true_total",
    ]
    sem = acc[(acc["method"] == "semtrack") & acc["metric"].isin(extra_metrics)]
    extra = sem.groupby(["condition", "metric"])["value"].agg(["min", "max"]).unstack("condition")
    print("\nsemtrack counts, links, balance (min / max over seeds):")
    print(extra.round(3).to_string())
    print("\nSpeed (one core):")
    sp = df[df["section"] == "speed"].pivot_table(index=["condition", "method"], columns="metric", values="value")
    print(sp.round(4).to_string())
    print(f"\nwrote {OUT / 'track.csv'}")


if __name__ == "__main__":
    main()
