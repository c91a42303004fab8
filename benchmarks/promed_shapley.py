"""Monte-Carlo Shapley values (the paper's 3-50 permutations, stop at 0.01) against the exact ones,
on cases of a ProMed world: error of the values and of the softmax(phi/2) weights, permutations used.

    OMP_NUM_THREADS=1 python benchmarks/promed_shapley.py [--preset larger] [--cases 200]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from warmstart.functional import exact_shapley, monte_carlo_shapley, shapley_weights  # noqa: E402
from warmstart.tasks.promed import DiagnosisWorld  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="larger")
    ap.add_argument("--cases", type=int, default=200)
    ap.add_argument("--max-facts", type=int, default=16, help="skip cases with more facts (exact needs 2**m values)")
    args = ap.parse_args()
    world = DiagnosisWorld(args.preset, seed=0)
    rng = np.random.default_rng(0)
    err_phi, err_w, perms, facts, t_exact, t_mc, top_agree = [], [], [], [], 0.0, 0.0, []
    while len(perms) < args.cases:
        case = world.sample_case(rng)
        if len(case.facts) > args.max_facts:
            continue
        t0 = time.time()
        phi = exact_shapley(world.value_table(case))
        t1 = time.time()
        est, k = monte_carlo_shapley(lambda m: world.value_of_masks(case, m), len(case.facts), rng)
        t_exact += t1 - t0
        t_mc += time.time() - t1
        err_phi.append(np.max(np.abs(est - phi)))
        err_w.append(np.max(np.abs(shapley_weights(est) - shapley_weights(phi))))
        top_agree.append(int(np.argmax(est) == np.argmax(phi)))
        perms.append(k)
        facts.append(len(case.facts))
    print(f"# OMP_NUM_THREADS=1 python benchmarks/promed_shapley.py {' '.join(sys.argv[1:])}")
    print(f"| preset | cases | facts per case | permutations (mean, max) | max abs error phi (mean) | "
          f"max abs error weight (mean) | same top fact | exact s/case | Monte-Carlo s/case |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {args.preset} | {len(perms)} | {np.mean(facts):.1f} | {np.mean(perms):.1f}, {max(perms)} | "
          f"{np.mean(err_phi):.4f} | {np.mean(err_w):.4f} | {np.mean(top_agree):.2f} | "
          f"{t_exact / len(perms):.4f} | {t_mc / len(perms):.4f} |")


if __name__ == "__main__":
    main()
