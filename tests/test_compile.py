"""The compiled training forward (``policy.compile``) equals the eager one, compiles once for batches
of any length (no recompilation per length), and falls back to eager with a notice when the
compiler fails.

Most tests compile with the ``aot_eager`` backend: the same dynamo graphs, guards and autograd
split as inductor, without generating code (a cold inductor compile takes minutes on this CPU); one
slow test runs inductor itself."""

import random

import pytest
import torch
from torch._dynamo.utils import counters

from warmstart.episode import collate
from warmstart.learn.grpo import GRPOConfig, policy_gradient_loss
from warmstart.policies.action_logprobs import DecoderPasses
from warmstart.policies.lm import LMPolicyConfig, make_lm_policy
from test_action_logprobs import ATOL, group_episodes


def tiny(compile=False):
    # one layer: tracing and code generation scale with the layers, and one shows every op
    cfg = LMPolicyConfig(hidden_size=32, num_layers=1, num_heads=4, num_kv_heads=2, max_position=96, compile=compile)
    return make_lm_policy(cfg, seed=0)


def loss_and_grads(policy, batch, cfg):
    policy.model.zero_grad(set_to_none=True)
    adv = torch.linspace(-1, 1, batch.input_ids.shape[0]).unsqueeze(1).expand_as(batch.old_logprobs)
    terms = policy_gradient_loss(policy, batch, adv, cfg)
    terms["loss"].backward()
    return terms, {n: p.grad.clone() for n, p in policy.model.named_parameters()}


def assert_same(policy, eager, batch, cfg):
    got, g_got = loss_and_grads(policy, batch, cfg)
    want, g_want = loss_and_grads(eager, batch, cfg)
    for k in ("loss", "entropy", "ratio", "approx_kl"):
        assert torch.allclose(got[k], want[k], atol=ATOL), (k, got[k], want[k])
    for n in g_want:
        assert torch.allclose(g_got[n], g_want[n], atol=ATOL, rtol=1e-4), n


def graphs() -> int:
    return counters["stats"]["unique_graphs"]


def test_recipe_switch_builds_compiled_passes():
    on, off = tiny(compile=True), tiny()
    assert on.passes.compile and on._sampler.passes.compile
    assert not off.passes.compile and not off._sampler.passes.compile


def test_compiled_decode_step_samples_what_eager_samples_with_one_graph():
    torch._dynamo.reset()
    policy, eager = tiny(), tiny()
    policy._sampler.compile_decode(True, backend="aot_eager")
    start, finished = graphs(), []
    # batches of 8 rows (= head_dim: duck sizing would tie the two and recompile when rows finish),
    # 3, 1 (eager) and 6; GRPO-style repeated prompts and distinct ones; other lengths each time
    for k, (prompts, G) in enumerate([(["1+2", "33*4+1"], 4), (["9"], 3), (["1+1+1+1+1+1"], 1), (["5*5", "6", "7+7+7"], 2)]):
        ids = [policy.encode_prompt(p) for p in prompts for _ in range(G)]
        got = policy.sample(ids, 12 + 3 * k, generator=torch.Generator().manual_seed(k))
        want = eager.sample(ids, 12 + 3 * k, generator=torch.Generator().manual_seed(k))
        assert got.ids == want.ids and got.finished == want.finished
        finished += want.finished
        for a, b in zip(got.logprobs, want.logprobs):
            assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-5)
    assert any(finished) and not all(finished)  # rows stopped mid-batch: batches were compacted
    assert graphs() - start == 1 and policy._sampler.passes.compile


@pytest.mark.slow
def test_compiled_equals_eager_and_compiles_once_for_all_lengths():
    torch._dynamo.reset()
    policy, eager = tiny(), tiny()
    policy.passes = DecoderPasses(compile=True, backend="aot_eager")
    cfg = GRPOConfig(kind="grpo", temperature=0.9)
    rng = random.Random(0)
    prompts = ["1+2*3", "4*5+6+7+8", "9", "8*8+1", "2+2+2+2+2+2+2"]
    start = graphs()
    # GRPO groups with other prompt lengths, completion lengths, group counts and sizes each time
    for k in range(4):
        eps = group_episodes(policy, rng, rng.sample(prompts, 2 + k % 3), 2 + k % 4, multi_turn=k % 2 == 1)
        assert_same(policy, eager, collate(eps, policy.pad_id), cfg)
    assert graphs() - start == 1  # the prefix-shared pass: one graph for every length
    # distinct prompts (SFT, or G = 1) take the plain pass: one more graph, then none
    for k in range(3):
        eps = group_episodes(policy, rng, rng.sample(prompts, 2 + k), 1)
        batch = collate(eps, policy.pad_id)
        assert not batch.attention_mask.all()  # rows of other lengths: padding
        assert_same(policy, eager, batch, cfg)
    assert graphs() - start == 2
    # the plain pass runs on the rows' real extent (collate's pad-to-8 columns cut off); a batch that
    # is then without padding passes no mask: one more graph, for every such batch
    for k in range(3):
        eps = group_episodes(policy, rng, rng.sample(prompts, 2 + k), 1)
        same = [e for e in eps if len(e.prompt_ids) + len(e.ids) == len(eps[0].prompt_ids) + len(eps[0].ids)]
        assert_same(policy, eager, collate(same, policy.pad_id), cfg)
    assert graphs() - start == 3
    # torch.compile specialises sizes 0 and 1: a batch of one group (one prefix) or of one row is
    # run as two (the copy unused), so it reuses the general graphs
    for p, G in (("1+2*3", 3), ("9", 4), ("7", 1), ("1*2*3*4", 1)):
        assert_same(policy, eager, collate(group_episodes(policy, rng, [p], G), policy.pad_id), cfg)
    assert graphs() - start == 3
    assert policy.passes.compile  # nothing fell back


def test_compiler_failure_falls_back_to_eager_with_a_notice(capsys):
    def broken(gm, example_inputs):
        raise RuntimeError("no C++ compiler on this machine")

    torch._dynamo.reset()
    policy, eager = tiny(), tiny()
    policy.passes = DecoderPasses(compile=True, backend=broken)
    batch = collate(group_episodes(policy, random.Random(2), ["1+2", "3*4"], 3), policy.pad_id)
    assert_same(policy, eager, batch, GRPOConfig(kind="grpo"))
    err = capsys.readouterr().err
    assert "torch.compile of the training forward failed" in err and "no C++ compiler" in err
    assert err.count("warning:") == 1 and not policy.passes.compile


def test_an_error_eager_repeats_is_raised_not_swallowed():
    torch._dynamo.reset()
    passes = DecoderPasses(compile=True, backend="aot_eager")

    def bad(x):
        return x @ torch.ones(3, 3)  # (2, 2) @ (3, 3): a shape error in the caller's own code

    with pytest.raises(RuntimeError):
        passes.run(bad, torch.ones(2, 2))


@pytest.mark.slow
def test_inductor_compiled_sft_step_equals_eager():
    # the real compiler (C++ code generation) on the plain pass an SFT batch takes
    torch._dynamo.reset()
    policy, eager = tiny(compile=True), tiny()
    rng = random.Random(3)
    eps = group_episodes(policy, rng, [str(rng.randint(1, 10**n)) for n in range(1, 5)], 1)
    assert_same(policy, eager, collate(eps, policy.pad_id), GRPOConfig(kind="grpo"))
    assert policy.passes.compile
