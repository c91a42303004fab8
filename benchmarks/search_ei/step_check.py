"""How many of the solutions expert iteration keeps (final answer right) also have every step right?

    OMP_NUM_THREADS=1 python benchmarks/search_ei/step_check.py <policy dir> <prm dir> [task recipe]

Runs the recipe's MCTS (PRM, 8 simulations, width 4, max_depth 3, T=1) on 128 fresh training problems.
"""
import sys, re, torch
from pathlib import Path
torch.set_num_threads(1)
from warmstart.engine.eval import build_task
from warmstart.policies import load_policy
from warmstart.search.strategies import SearchConfig, run_search
from warmstart.search.scorers import make_scorer
from warmstart.tasks.arithmetic import evaluate_chain
task, _ = build_task(sys.argv[3] if len(sys.argv) > 3 else "recipes/search-expert-iteration.yaml")
pol = load_policy(sys.argv[1])
probs = task.sample_problems(128, torch.Generator().manual_seed(7))
prm = make_scorer("prm", task, prm=sys.argv[2])
def steps_ok(prompt, text):
    expr = prompt.rstrip("=")
    digits = [int(c) for c in expr[0::2]]; ops = list(expr[1::2])
    ans, steps = evaluate_chain(digits, ops, 10)
    return text.strip() == ";".join(steps) + f";#{ans}"
cfg = SearchConfig(strategy="mcts", scorer="prm", simulations=8, width=4, temperature=1.0, max_depth=3)
res = run_search(pol, task, probs, prm, cfg, torch.Generator().manual_seed(1))
nk = ng = 0; first_ok = first_n = 0; ex = []
for ch, cands in zip(res.episodes, res.candidates):
    seen = set(); k = 0
    for e in [ch, *cands]:
        if e.text not in seen and task.is_correct(e.text, e.info["answer"]):
            seen.add(e.text); nk += 1; g = steps_ok(e.prompt, e.text); ng += g
            if k == 0: first_n += 1; first_ok += g
            k += 1
            if not g and len(ex) < 5: ex.append((e.prompt, e.text))
print("kept", nk, "steps right", ng, ng/max(nk,1), "first kept per problem right", first_ok, first_n)
for x in ex: print(x)
