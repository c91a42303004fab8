"""LID on BabyAI: the observation encoder on a hand-made grid, both encodings, hindsight relabels
that replay as successes, BC beating random actions on a tiny level, save/load of both policy
variants, and the SmolLM2 GGUF conversion round-tripping to the same logits."""

import json

import numpy as np
import pytest
import torch

from warmstart.tasks import babyai as B

TINY_LLAMA = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64)


def _tiny_policy(seed=0, history=4):
    from warmstart.policies.lid import LIDPolicy, LIDSpec

    torch.manual_seed(seed)
    return LIDPolicy(LIDSpec(llama=dict(TINY_LLAMA), init="random", encoding="natural", history=history))


# ------------------------------------------------------------------------------------- encoder


def test_tables_match_minigrid():
    from minigrid.core.constants import COLOR_TO_IDX, OBJECT_TO_IDX, STATE_TO_IDX

    assert B.IDX_TO_OBJECT == {v: k for k, v in OBJECT_TO_IDX.items()}
    assert B.IDX_TO_COLOR == {v: k for k, v in COLOR_TO_IDX.items()}
    assert B.IDX_TO_STATE == {v: k for k, v in STATE_TO_IDX.items()}


def _hand_made_view():
    """A 7x7 egocentric view (agent at column 3 of row 6, facing row 0): a red ball two columns
    left and two rows ahead, a closed yellow door straight ahead six rows up, a grey key one column
    right on the agent's own row, and walls (scenery, never listed)."""
    img = np.zeros((7, 7, 3), np.int64)
    img[:, :, 0] = 1  # empty
    img[0, :, 0] = 2  # a wall along the left edge
    img[1, 4] = (6, 0, 0)  # red ball: i=1 -> 2 left; j=4 -> 2 ahead
    img[3, 0] = (4, 4, 1)  # yellow door, closed: straight, 6 ahead
    img[4, 6] = (5, 5, 0)  # grey key: 1 right, same row
    return img


def test_encoder_on_hand_made_grid():
    obs = {"image": _hand_made_view(), "mission": "go to the red ball"}
    w = B.describe(obs, actions=[2, 0, 1, 2, 2], history=3)
    assert w.mission == ("go", "to", "the", "red", "ball")
    assert w.history == ("right", "forward", "forward")  # the last three of left/right/forward ids 0/1/2
    # nearest first: key (1 step), ball (2 + 2), door (6)
    assert w.objects == (
        (("grey",), ("key",), (), ("one", "right"), ("here",)),
        (("red",), ("ball",), (), ("two", "left"), ("two", "ahead")),
        (("yellow",), ("door",), ("closed",), ("straight",), ("six", "ahead")),
    )
    assert B.as_sentence(w) == ("go to the red ball | right forward forward | grey key one right here ; "
                                "red ball two left two ahead ; yellow door closed straight six ahead")
    assert B.describe(obs, actions=[], history=3).history == ()
    with pytest.raises(B.WarmstartError, match="outside the encoder's vocabulary"):
        B.describe({"image": _hand_made_view(), "mission": "fetch the red ball"}, [], 3)


def test_policy_batch_packs_elements_left():
    pol = _tiny_policy()
    a = B.describe({"image": _hand_made_view(), "mission": "go to the red ball"}, [2], 4)
    b = B.ObsWords(("go", "to", "a", "box"), (), ())  # no objects in view
    enc = pol.encode([a, b])
    assert enc["text"].shape == (2, 6) and enc["objects"].shape == (2, 3, len(B.OBJECT_FIELDS), B.FIELD_WORDS)
    idx = {w: i for i, w in enumerate(B.VOCAB)}
    assert enc["text"][1].tolist() == [idx["go"], idx["to"], idx["a"], idx["box"], 0, 0]
    assert enc["objects"][0, 1, 3].tolist() == [idx["two"], idx["left"]]
    assert enc["objects"][1].abs().sum() == 0
    logits, value = pol(enc)
    assert logits.shape == (2, 7) and value.shape == (2,)
    # padding does not change a row's output: row b alone == row b in the batch
    alone, _ = pol(pol.encode([b]))
    torch.testing.assert_close(alone[0], logits[1], atol=1e-5, rtol=1e-4)


class _FakeTokenizer:
    def __init__(self):
        self.vocab = {}

    def encode(self, text, add_special_tokens=False):
        return [self.vocab.setdefault(text, 2000 + len(self.vocab))]

    def __len__(self):
        return 5000


def test_natural_and_arbitrary_encodings_carry_the_same_words():
    tok = _FakeTokenizer()
    nat = B.word_token_ids(tok, "natural")
    arb = B.word_token_ids(tok, "arbitrary", seed=3)
    assert nat[B.VOCAB.index("red")] == [tok.vocab[" red"]]
    assert nat[B.PAD] == [] and arb[B.PAD] == []
    flat = [ids[0] for ids in arb[1:]]
    assert all(len(ids) == 1 for ids in arb[1:]) and len(set(flat)) == len(flat)  # one distinct code per word
    assert all(1000 <= t < 5000 for t in flat)
    assert arb == B.word_token_ids(tok, "arbitrary", seed=3) != B.word_token_ids(tok, "arbitrary", seed=4)
    assert sum(a == n for a, n in zip(arb[1:], nat[1:])) < 3  # codes are not the words' own tokens


# ------------------------------------------------------------------------------------- splits + hindsight


def test_goal_split_and_seeds():
    split = B.TaskSplit.from_names(["red ball", "blue key"])
    assert split.split_of("go to the red ball") == "unseen" and split.split_of("go to a red box") == "seen"
    with pytest.raises(B.WarmstartError, match="COLOUR TYPE"):
        B.TaskSplit.from_names(["red"])
    level = "BabyAI-GoToLocalS6N2-v0"
    env = B.make_env(level)
    for which in ("seen", "unseen"):
        for s in B.mission_seeds(level, split, which, 3, start=100):
            obs, _ = B.quiet_reset(env, s)
            assert split.split_of(obs["mission"]) == which


def test_relabel_picks_first_faced_seen_goal():
    ep = B.BabyAIEpisode(seed=0, mission="go to the blue box", actions=[0, 2, 1, 2],
                         objects=[(), (), (), ()], faced=[None, ("red", "ball"), ("green", "key"), None])
    split = B.TaskSplit.from_names(["red ball"])
    r = B.relabel(ep, split)
    assert r.mission == "go to the green key" and r.actions == [0, 2, 1] and r.success and r.relabelled
    assert B.relabel(ep, None).mission == "go to the red ball" and len(B.relabel(ep, None)) == 2
    ep.success = True
    assert B.relabel(ep, split) is None  # only failures are relabelled


def test_relabelled_missions_replay_as_successes():
    level, ms = "BabyAI-GoToLocalS6N2-v0", 12
    split = B.TaskSplit.from_names(B.DEFAULT_HELD_OUT)
    rng = np.random.default_rng(0)
    eps = B.rollout(level, list(range(40)), lambda w: rng.integers(0, 3, len(w)), 4, ms)
    failed = [e for e in eps if not e.success]
    relabelled = [r for r in (B.relabel(e, split) for e in failed) if r is not None]
    assert len(relabelled) >= 5, "random walks should face some object in a 6x6 room"
    for r in relabelled:
        assert B.goal_of(r.mission) not in split.held_out
        assert B.replay_succeeds(level, r, ms), f"seed {r.seed}: {r.mission!r} not accomplished by {r.actions}"
        # the same actions under the original (failed) mission are no success
        orig = next(e for e in failed if e.seed == r.seed)
        assert not B.replay_succeeds(level, B.BabyAIEpisode(orig.seed, orig.mission, orig.actions), ms)


def test_bot_demos_succeed_and_describe_what_was_seen():
    level = "BabyAI-GoToLocalS6N2-v0"
    demos = B.bot_demos(level, [0, 1, 2])
    assert len(demos) == 3
    for d in demos:
        assert d.success and len(d.objects) == len(d.actions) == len(d.faced)
        assert B.replay_succeeds(level, d)  # the bot's own mission replays too
        assert d.faced[-1] == B.goal_of(d.mission)


# ------------------------------------------------------------------------------------- learning


@pytest.mark.slow
def test_bc_on_bot_demos_beats_random_actions():
    from warmstart.learn.lid import bc_train, policy_actor

    torch.set_num_threads(1)
    level, ms = "BabyAI-GoToLocalS6N2-v0", 10
    demos = B.bot_demos(level, range(40), ms)
    rng = np.random.default_rng(0)
    test_seeds = list(range(1000, 1100))
    random_success = np.mean([e.success for e in B.rollout(level, test_seeds, lambda w: rng.integers(0, 3, len(w)), 4, ms)])
    pol = _tiny_policy()
    before = np.mean([e.success for e in B.rollout(level, test_seeds, policy_actor(pol, True), 4, ms)])
    m = bc_train(pol, torch.optim.AdamW(pol.parameters(), 3e-3), demos, 120, 32, torch.Generator().manual_seed(0))
    after = np.mean([e.success for e in B.rollout(level, test_seeds, policy_actor(pol, True), 4, ms)])
    assert m["loss"] < 1.0
    assert after > random_success + 0.15 and after > before + 0.15, (before, random_success, after)


def test_gather_round_modes_spend_the_budget_and_keep_what_they_should():
    from warmstart.learn.lid import gather_round

    level = "BabyAI-GoToLocalS6N2-v0"
    split = B.TaskSplit.from_names(B.DEFAULT_HELD_OUT)
    pol = _tiny_policy()
    seeds = B.mission_seeds(level, split, "seen", 200, start=0)
    out = {}
    for mode in ("hindsight", "self_imitation"):
        res, used = gather_round(pol, level, seeds, 200, mode, split, torch.Generator().manual_seed(0), 10, batch=4)
        assert 200 <= res.metrics["env_steps"] < 200 + 4 * 10 and used == res.metrics["episodes"]
        out[mode] = res
    # same sampling stream -> same episodes; hindsight keeps the successes plus relabels
    si, hs = out["self_imitation"], out["hindsight"]
    assert all(e.success and not e.relabelled for e in si.kept)
    assert len(hs.kept) == len(si.kept) + hs.metrics["relabelled"] and hs.metrics["relabelled"] > 0


# ------------------------------------------------------------------------------------- policies + SmolLM2


def test_tiny_policy_save_load(tmp_path):
    from warmstart.policies import load_policy
    from warmstart.policies.lid import LIDPolicy

    pol = _tiny_policy()
    pol.save(tmp_path / "p")
    assert json.loads((tmp_path / "p" / "policy.json").read_text())["kind"] == "lid"
    back = load_policy(tmp_path / "p")
    assert isinstance(back, LIDPolicy)
    enc = pol.encode([B.describe({"image": _hand_made_view(), "mission": "go to the red ball"}, [0, 2], 4)])
    pol.eval(), back.eval()
    torch.testing.assert_close(pol(enc), back(enc))


@pytest.mark.slow
def test_smollm2_variants_save_load_and_copy_the_lm(tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from warmstart.policies import load_policy
    from warmstart.policies.lid import LIDPolicy
    from warmstart.policies.pretrained import smollm2_path

    path = smollm2_path()
    lm = load_file(str(path / "model.safetensors"))  # the LM's own tensors, for comparison
    red = lm["model.embed_tokens.weight"][AutoTokenizer.from_pretrained(path).encode(" red", add_special_tokens=False)[0]]
    enc_obs = [B.describe({"image": _hand_made_view(), "mission": "go to the red ball"}, [0, 2], 4)]
    for init in ("pretrained", "random"):
        pol = LIDPolicy.from_lm(path, 1, init=init)
        same_emb = torch.equal(pol.words.weight[B.VOCAB.index("red")], red)
        same_layer = torch.equal(pol.backbone.layers[0].mlp.up_proj.weight, lm["model.layers.0.mlp.up_proj.weight"])
        assert same_emb == same_layer == (init == "pretrained")
        pol.save(tmp_path / init)
        back = load_policy(tmp_path / init)
        pol.eval(), back.eval()
        torch.testing.assert_close(pol(pol.encode(enc_obs)), back(back.encode(enc_obs)))


@pytest.mark.slow
def test_smollm2_conversion_round_trips_to_the_gguf_logits():
    """The converted directory reproduces the logits the GGUF-loaded model gave at conversion time,
    and its weights equal tensors de-quantized independently with the ``gguf`` package."""
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from warmstart.policies.pretrained import REFERENCE_FILE, smollm2_gguf_path, smollm2_path

    path = smollm2_path()
    assert "quantization_config" not in json.loads((path / "config.json").read_text())
    ref = load_file(str(path / REFERENCE_FILE))
    hf_model = AutoModelForCausalLM.from_pretrained(path)
    with torch.no_grad():
        logits = hf_model(ref["input_ids"]).logits  # (1, T, 49152)
    assert logits.shape == ref["logits"].shape and logits.shape[-1] == 49152
    torch.testing.assert_close(logits, ref["logits"], atol=1e-4, rtol=1e-4)
    saved = load_file(str(path / "model.safetensors"))
    tensors = {t.name: t for t in GGUFReader(str(smollm2_gguf_path())).tensors}
    for gguf_name, hf_name in (("blk.0.ffn_down.weight", "model.layers.0.mlp.down_proj.weight"),
                               ("blk.29.ffn_up.weight", "model.layers.29.mlp.up_proj.weight"),
                               ("output_norm.weight", "model.norm.weight")):
        t = tensors[gguf_name]
        w = torch.from_numpy(np.array(dequantize(t.data, t.tensor_type))).reshape(saved[hf_name].shape)
        torch.testing.assert_close(saved[hf_name], w.to(saved[hf_name].dtype), atol=0, rtol=0)
    assert smollm2_path() == path  # cached: the second call converts nothing
