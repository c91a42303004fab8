"""Classical baselines for TimeMaster on the same UCR splits: 1-NN DTW and MiniRocket (aeon).

Each classifier is fit on a dataset's own train split and scored on its full test split (the
TimeMaster recipes evaluate on a fixed subset of the same test split; ``--limit`` scores that subset
too). One thread; prints a table and the command that produced it.

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python benchmarks/timemaster_classical.py [--limit 150]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from warmstart.tasks.timeseries import load_ucr, ucr_items


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", default="GunPoint,ArrowHead,ItalyPowerDemand")
    ap.add_argument("--limit", type=int, default=150, help="also score the recipes' fixed test subset of this size")
    ap.add_argument("--seed", type=int, default=0, help="MiniRocket's random_state (and the subset's seed)")
    args = ap.parse_args()
    from aeon.classification.convolution_based import MiniRocketClassifier
    from aeon.classification.distance_based import KNeighborsTimeSeriesClassifier

    models = {
        "1-NN DTW": lambda: KNeighborsTimeSeriesClassifier(distance="dtw", n_neighbors=1),
        "MiniRocket": lambda: MiniRocketClassifier(random_state=args.seed),
    }
    rows = []
    for name in args.datasets.split(","):
        Xtr, ytr = load_ucr(name, "train")
        Xte, yte = load_ucr(name, "test")
        sub = [it.index for it in ucr_items(name, "test", args.limit, seed=0)]
        for mname, make in models.items():
            t0 = time.time()
            clf = make().fit(Xtr[:, None, :], np.array(ytr))
            pred = clf.predict(Xte[:, None, :])
            acc = float(np.mean(pred == np.array(yte)))
            acc_sub = float(np.mean(pred[sub] == np.array(yte)[sub]))
            rows.append((name, mname, len(Xtr), len(Xte), acc, acc_sub, time.time() - t0))
    print(f"| dataset | classifier | train | test | test acc (full) | test acc (subset of {args.limit}) | fit+predict s |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]:.3f} | {r[5]:.3f} | {r[6]:.1f} |")
    for mname in models:
        accs = [r[4] for r in rows if r[1] == mname]
        subs = [r[5] for r in rows if r[1] == mname]
        print(f"| mean | {mname} | | | {np.mean(accs):.3f} | {np.mean(subs):.3f} | |")
    print("\ncommand: OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python " + " ".join(sys.argv))


if __name__ == "__main__":
    main()
