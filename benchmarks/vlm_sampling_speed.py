"""VLM sampling throughput: the image-prefill KV sampler vs Hugging Face ``generate``, same model, same batch.

A tiny Llava (the TimeMaster recipe's size, random weights) samples a GRPO-shaped batch --
``--prompts`` plot images x ``--group`` samples each, ``--new`` tokens per row (no early stop, so
every method produces the same tokens' worth of work). Three ways, measured side by side in one
process on one thread, interleaved over ``--repeats`` rounds:

* ``kv``: ``VLMPolicy.sample`` -- each distinct image through the vision tower once, one prefill per
  distinct prompt, then the Llama KV-cache decode loop (what SFT/GRPO/eval use);
* ``hf generate``: ``model.generate(input_ids, pixel_values, ...)`` on the full batch (HF encodes the
  image of every row and prefills every row);
* ``hf generate + scoring``: the fallback path for non-Llava VLMs (generate, then one teacher-forced
  pass for the behaviour log-probs a learner needs).

    OMP_NUM_THREADS=1 python benchmarks/vlm_sampling_speed.py [--prompts 8 --group 8 --new 64 --repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)

    from warmstart.policies.vlm import VLMPolicyConfig, make_vlm_policy
    from warmstart.tasks.timeseries import UCR_SETS, PlotRenderer, build_prompt, ucr_items

    pol = make_vlm_policy(VLMPolicyConfig(), seed=0)  # the recipe's default size
    # never stop early, so every method produces exactly the same number of tokens per row
    pol.eos_id = None
    r = PlotRenderer()
    items = ucr_items("GunPoint", "train")[: args.prompts]
    imgs = [r.render(it.series) for it in items]
    prompt = build_prompt(UCR_SETS["GunPoint"], 150, None, False)
    pids = [pol.encode_prompt(prompt, [im]) for im in imgs]
    flat = [p for p in pids for _ in range(args.group)]
    fims = [[im] for im in imgs for _ in range(args.group)]
    B = len(flat)

    def kv():
        out = pol.sample(flat, args.new, temperature=1.0, generator=torch.Generator().manual_seed(0), images=fims)
        return sum(len(x) for x in out.ids)

    sampler = pol._sampler

    def hf_score():
        pol._sampler = None
        try:
            out = pol.sample(flat, args.new, temperature=1.0, generator=torch.Generator().manual_seed(0), images=fims)
        finally:
            pol._sampler = sampler
        return sum(len(x) for x in out.ids)

    ids = torch.tensor(flat)  # equal lengths: no padding needed
    px = torch.cat([pol.pixel_inputs(im[0])[1]["pixel_values"] for im in fims])

    def hf_generate():
        with torch.no_grad():
            out = pol.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=px, do_sample=True,
                                     max_new_tokens=args.new, min_new_tokens=args.new, top_k=0, temperature=1.0,
                                     pad_token_id=pol.pad_id, suppress_tokens=[pol.image_token_id])
        return (out.shape[1] - ids.shape[1]) * B

    pol.model.eval()
    methods = {"kv sampler (image prefill)": kv, "hf generate": hf_generate, "hf generate + scoring": hf_score}
    for fn in methods.values():  # warm-up (first-call kernel selection)
        fn()
    res = {k: [] for k in methods}
    for _ in range(args.repeats):
        for name, fn in methods.items():  # interleaved, so load changes hit every method alike
            t0 = time.perf_counter()
            n = fn()
            res[name].append(n / (time.perf_counter() - t0))
    base = sorted(res["hf generate"])[len(res["hf generate"]) // 2]
    print(f"tiny Llava {pol.num_parameters() / 1e6:.2f}M params, {pol.model.config.image_seq_length} image tokens, "
          f"prompt {len(flat[0])} tokens, batch {B} = {args.prompts} images x {args.group}, {args.new} new tokens")
    print("| method | sampled tokens/s (median of {}) | vs hf generate |".format(args.repeats))
    print("| --- | ---: | ---: |")
    for name, v in res.items():
        med = sorted(v)[len(v) // 2]
        print(f"| {name} | {med:,.0f} | {med / base:.2f}x |")
    print("\ncommand: OMP_NUM_THREADS=1 python benchmarks/vlm_sampling_speed.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
