"""The chart task's tool-call loop on the one multi-turn rollout: scripted demos executed against the
tools, error observations that never stop an episode, observation tokens without gradient, the
server started and stopped with a run, and token-in/token-out with a real chat template (SmolLM2's
tokenizer, a template that renders tool schemas)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from warmstart.engine.config import load_recipe
from warmstart.engine.run import run_recipe
from warmstart.episode import Episode, collate
from warmstart.learn.grpo import GRPOConfig, policy_gradient_loss
from warmstart.policies.lm import LMPolicy, LMPolicyConfig, make_lm_policy
from warmstart.rollout import Sampling, rollout
from warmstart.tasks.base import Problem
from warmstart.tasks.chart import ChartTask, ChartTaskConfig
from warmstart.tools.actions import format_action
from warmstart.tools.server import _SHARED

from test_tools import _children_serving

ROOT_RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def _task(**kw) -> ChartTask:
    cfg = ChartTaskConfig(n_train=50, n_demos=30, n_test=20, tools={"serve": "in_process"}, **kw)
    return ChartTask(cfg, "train")


def _policy():
    return make_lm_policy(LMPolicyConfig(hidden_size=32, num_layers=1, num_heads=2, max_position=768))


def test_problems_need_exact_values():
    t = _task()
    for p in t.problems[:30]:
        chart, q = p.info["chart"], p.info["question"]
        shown = [int(x.split("~")[1]) for x in p.prompt.split("\n")[0].split()]
        assert all(abs(s - v) <= 2.5 and s % 5 == 0 for s, v in zip(shown, chart["values"]))  # rounded to 5
        if q == "value":
            assert p.answer == str(chart["values"][chart["labels"].index(p.info["about"][0])])
        elif q == "max":
            assert p.answer == str(max(chart["values"]))
    test = ChartTask(t.cfg, "test")
    assert {p.prompt for p in test.problems}.isdisjoint(p.prompt for p in t.problems)
    t.close(), test.close()


def test_respond_runs_tools_and_terminate_scores():
    t = _task()
    p = next(p for p in t.problems if p.info["question"] == "value")
    lab = p.info["about"][0]
    e = Episode(prompt=p.prompt, prompt_ids=[1], info={"answer": p.answer, **p.info})
    e.add_turn([5], [0.0], format_action("read_value", {"label": lab}))
    r = t.respond(e, 0)
    assert not r.done and r.role == "tool" and r.message == f"\nOBSERVATION: {p.answer}\n"
    e.add_turn([5], [0.0], "this is not json")
    r = t.respond(e, 1)
    assert not r.done and r.message.startswith("\nOBSERVATION: ERROR (bad_action)")
    e.add_turn([5], [0.0], format_action("zoom", {"first": "A"}))  # a required argument missing
    assert "ERROR (malformed_args)" in t.respond(e, 2).message
    e.add_turn([5], [0.0], format_action("terminate", {"answer": p.answer}))
    r = t.respond(e, 3)
    assert r.done and r.rewards == {"correct": 1.0}
    m = t.turn_metrics([e])
    assert m["accuracy"] == 1.0 and m["tool_calls_per_episode"] == 3 and m["tool_success_rate"] == pytest.approx(1 / 3)
    assert m["tool_errors"] == 2 and m["tool_errors/bad_action"] == 1 and m["tool_errors/malformed_args"] == 1
    # out of turns without terminate: reward 0, the episode ends
    t.max_turns = 1
    e2 = Episode(prompt=p.prompt, prompt_ids=[1], info={"answer": p.answer, **p.info})
    e2.add_turn([5], [0.0], format_action("read_value", {"label": lab}))
    assert t.respond(e2, 0).done and t.respond(e2, 0).rewards["correct"] == 0.0
    t.close()


def test_demos_are_executed_trajectories_with_masked_observations():
    t, pol = _task(direct_fraction=0.0), _policy()
    demos = t.demo_episodes(pol)
    assert len(demos) == 30  # every scripted trajectory reaches the right answer
    for e in demos:
        e.check()
        assert t.is_correct("".join(e.turn_texts), e.info["answer"])
        # policy turns are exactly the encoded actions (+EOS); everything between them is masked
        for (s0, s1), text in zip(e.turns, e.turn_texts):
            assert e.ids[s0:s1] == pol.encode(text) + [pol.eos_id] and all(e.action_mask[s0:s1])
        env = [i for i, m in enumerate(e.action_mask) if not m]
        assert pol.decode([e.ids[i] for i in env]).count("OBSERVATION:") == len(e.turns) - 1
    assert t.tools.stats.calls >= 30 and t.tools.stats.ok == t.tools.stats.calls
    t.close()


def test_observation_tokens_get_no_gradient():
    t, pol = _task(direct_fraction=0.0), _policy()
    demos = t.demo_episodes(pol)[:4]
    t.close()
    for e in demos:
        e.reward = 1.0
    batch = collate(demos, pol.pad_id)
    env = (~batch.action_mask) & (batch.attention_mask[:, 1:] > 0)
    assert env.sum() > 20  # observations and the prompt are in the sequence...
    adv = torch.ones_like(batch.old_logprobs)
    cfg = GRPOConfig()
    base = policy_gradient_loss(pol, batch, adv, cfg)["loss"]
    # ...but nothing at their positions changes the loss, so they get no gradient
    adv2 = torch.where(env, torch.full_like(adv, 100.0), adv)
    old2 = torch.where(env, torch.full_like(adv, -7.0), batch.old_logprobs)
    batch.old_logprobs = old2
    assert torch.equal(policy_gradient_loss(pol, batch, adv2, cfg)["loss"], base)


@pytest.mark.slow  # a whole smoke run with a tool server process
def test_tool_server_starts_and_stops_with_the_run(tmp_path):
    recipe, raw = load_recipe(ROOT_RECIPES / "vtoolrl.yaml", smoke=True)
    assert recipe.task.tools.serve == "http"
    seen = []
    import warmstart.tasks.chart as chart_mod

    orig = chart_mod.ChartTask.respond

    def spy(self, episode, turn):
        seen.extend(_children_serving())
        return orig(self, episode, turn)

    chart_mod.ChartTask.respond = spy
    try:
        run_recipe(recipe, raw, run_dir=tmp_path / "run", smoke=True, quiet=True)
    finally:
        chart_mod.ChartTask.respond = orig
    assert seen, "no tool server was running during the run"
    assert not _children_serving() and not _SHARED  # stopped with the run: no orphan


def test_trained_tokens_are_sampled_plus_env_tokens_with_a_chat_template():
    """SmolLM2's tokenizer with a chat template that renders tools: the prompt is the template's
    rendering with the tool schemas, each tool message is the template's tool turn, and the tokens a
    learner trains on are exactly the sampled ones plus those environment tokens."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from warmstart.policies.pretrained import smollm2_path

    tok = AutoTokenizer.from_pretrained(str(smollm2_path()), local_files_only=True)
    tok.chat_template = (  # ChatML, as SmolLM2's own, plus the tools (SmolLM2's template ignores tools=)
        "{% if tools %}<|im_start|>system\nTools: {% for t in tools %}{{ t | tojson }} {% endfor %}<|im_end|>\n{% endif %}"
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, max_position_embeddings=2048,
                                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    pol = LMPolicy(model, tok)
    task = _task(max_context=2048, max_turns=3)
    schemas = task.tools.schemas()
    prob = task.problems[0]
    prob = Problem(prob.prompt, prob.answer, info=prob.info, tools=schemas)
    sampled = []
    orig_sample = pol.sample

    def spy(prompts, *a, **kw):
        out = orig_sample(prompts, *a, **kw)
        sampled.append([list(x) for x in out.ids])
        return out

    pol.sample = spy
    eps, _ = rollout(pol, [prob], task=task, samples=2, sampling=Sampling(max_new_tokens=12, temperature=1.0),
                     generator=torch.Generator().manual_seed(0))
    task.close()
    want_prompt = tok.apply_chat_template([{"role": "user", "content": prob.prompt}], tools=schemas,
                                          add_generation_prompt=True, tokenize=True)
    want_prompt = list(want_prompt["input_ids"] if hasattr(want_prompt, "keys") else want_prompt)
    assert '"read_value"' in tok.decode(want_prompt)  # the schemas are in the prompt
    batch = collate(eps, pol.pad_id)
    for b, e in enumerate(eps):
        assert e.prompt_ids == want_prompt and len(e.turns) == 3  # random model: bad actions, the episode goes on
        # rebuild the sequence from what was sampled and what the environment appended, turn by turn
        expect = list(want_prompt)
        for k, (s0, s1) in enumerate(e.turns):
            turn_ids = sampled[k][b]  # both episodes stay active for all 3 turns
            assert e.ids[s0:s1] == turn_ids
            expect += turn_ids
            if k + 1 < len(e.turns):
                env_ids = e.ids[s1 : e.turns[k + 1][0]]
                env_text = tok.decode(env_ids)
                closed = turn_ids[-1] == tok.eos_token_id  # else the env tokens close the assistant turn first
                head = "\n<|im_start|>tool\nOBSERVATION: ERROR" if closed else "<|im_end|>\n<|im_start|>tool\nOBSERVATION: ERROR"
                assert env_text.startswith(head), env_text
                assert env_text.endswith("<|im_end|>\n<|im_start|>assistant\n")
                expect += env_ids
        n = len(expect)
        assert batch.input_ids[b, :n].tolist() == expect and int(batch.attention_mask[b].sum()) == n
        # loss only on sampled tokens
        p = len(e.prompt_ids)
        assert batch.action_mask[b, p - 1 : p - 1 + len(e.ids)].tolist() == e.action_mask



# ------------------------------------------------------------------------------- rendered charts


def test_rendered_chart_draws_the_data_and_is_cached():
    from warmstart.tools.chart import MARGIN_BOTTOM, mark_x, render_chart, value_y

    labels, values = tuple("ABCDEF"), (10, 0, 99, 50, 73, 5)
    for kind in ("bar", "line"):
        im = render_chart(kind, labels, values, 99, 96, 64)
        assert im.size == (96, 64)
        px = im.load()
        for i, v in enumerate(values):
            x, y = mark_x(i, 6, 96), value_y(v, 99, 64)
            if v:  # the mark's top is drawn at its value's height, and nothing above it in its column
                assert px[x, y] != (255, 255, 255), (kind, i)
                assert all(px[x, yy] == (255, 255, 255) for yy in range(0, y - 2)), (kind, i)
        assert value_y(50, 99, 64) < value_y(10, 99, 64) < 64 - MARGIN_BOTTOM
    a = render_chart("bar", labels, values, 99, 96, 64)
    a.putpixel((0, 0), (1, 2, 3))  # callers draw on copies: the cache is untouched
    assert render_chart("bar", labels, values, 99, 96, 64).getpixel((0, 0)) == (255, 255, 255)


def test_image_tools_return_pictures():
    from warmstart.tools import LocalTools

    st = {"labels": list("ABCDEFGH"), "values": [12, 47, 3, 99, 50, 0, 77, 30], "kind": "bar", "ymax": 99, "image": [96, 64]}
    t = LocalTools("chart")
    z = t.call("zoom", {"first": "D", "last": "B"}, st)
    assert z.ok and z.text == "zoom on B..D" and len(z.images) == 1 and z.images[0].size == (96, 64)
    full = t.call("zoom", {"first": "A", "last": "D"}, st)  # a close-up differs from the whole chart
    assert not np.array_equal(np.asarray(full.images[0]), np.asarray(z.images[0]))
    d = t.call("draw_line", {"y": 45}, st)
    assert d.text == "above: B D E G" and (np.asarray(d.images[0]) == (230, 30, 30)).all(-1).any()
    assert t.call("read_value", {"label": "E"}, st).text == "50" and "x=" in t.call("point", {"label": "C"}, st).text
    text_only = {k: st[k] for k in ("labels", "values")}
    assert t.call("zoom", {"first": "B", "last": "D"}, text_only).text == "B:47 C:3 D:99"


def test_image_view_problems_tools_and_executed_demos():
    from warmstart.policies.vlm import VLMPolicy, build_tiny_vlm

    t = _task(view="image", charts=["bar", "line"], questions=["value", "argmax", "sum"], direct_fraction=0.0,
              image_width=64, image_height=48)
    ps = t.sample_problems(12, torch.Generator().manual_seed(0))
    assert {p.info["chart"]["kind"] for p in ps} == {"bar", "line"} and all(len(p.images) == 1 for p in ps)
    assert all(p.prompt.startswith("img_1: ") and "~" not in p.prompt for p in ps)
    for p in t.problems:
        c, q = p.info["chart"], p.info["question"]
        if q == "argmax":
            assert c["values"].count(max(c["values"])) == 1 and p.answer == c["labels"][c["values"].index(max(c["values"]))]
        elif q == "sum":
            assert p.answer == str(sum(c["values"][c["labels"].index(lab)] for lab in p.info["about"]))
    # a zoom's picture joins the episode as img_2, named in the observation
    p = ps[0]
    e = Episode(prompt=p.prompt, prompt_ids=[1], info={"answer": p.answer, **p.info}, images=list(p.images))
    e.add_turn([5], [0.0], format_action("zoom", {"first": "A", "last": "C"}))
    r = t.respond(e, 0)
    assert r.message == "\nOBSERVATION: img_2: zoom on A..C\n" and r.role == "tool" and len(r.images) == 1
    torch.manual_seed(0)
    pol = VLMPolicy(*build_tiny_vlm(hidden_size=32, num_layers=1, num_heads=2, image_size=16, patch_size=8,
                                    vision_hidden=16, vision_layers=1, vision_heads=2, max_position=768))
    demos = t.demo_episodes(pol)
    assert len(demos) == 30
    n_img = pol.model.config.image_seq_length
    for e in demos:
        assert t.is_correct("".join(e.turn_texts), e.info["answer"])
        # the prompt's picture + one per draw_line (argmax); their tokens: n_img each, never trained on
        assert (e.prompt_ids + e.ids).count(pol.image_token_id) == n_img * len(e.images)
        assert pol.image_token_id not in [i for i, m in zip(e.ids, e.action_mask) if m]
        if e.info["question"] == "argmax":
            assert len(e.images) == 2
    batch = collate(demos[:6], pol.pad_id)
    lp = pol.forward_logprobs(batch.input_ids, batch.attention_mask, images=batch.images)
    assert torch.isfinite(lp[batch.action_mask]).all()
    t.close()


def test_tool_pictures_survive_the_http_encoding():
    from warmstart.tools import LocalTools
    from warmstart.tools.server import result_from_json, result_to_json

    st = {"labels": list("ABCD"), "values": [12, 47, 3, 99], "kind": "line", "ymax": 99, "image": [64, 48]}
    res = LocalTools("chart").call("zoom", {"first": "B", "last": "C"}, st)
    back = result_from_json(json.loads(json.dumps(result_to_json(res))))
    assert back.text == res.text and np.array_equal(np.asarray(back.images[0].convert("RGB")), np.asarray(res.images[0]))
