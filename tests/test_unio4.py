"""Uni-O4's pieces: Minari datasets, IQL's expectile loss, ensemble BC's diversity term, the dynamics
ensemble, offline policy evaluation and offline PPO with OPE gating."""

import numpy as np
import pytest
import torch

from warmstart.errors import DataError
from warmstart.learn.dynamics import DynamicsConfig, DynamicsEnsemble, fit_dynamics, ope_score
from warmstart.learn.iql import IQLConfig, IQLCritics, expectile_loss, mc_returns
from warmstart.learn.unio4 import OfflinePPO, OfflineTensors, ensemble_bc_loss
from warmstart.policies.ensemble import EnsembleMLP, GaussianEnsemble
from warmstart.tasks.offline import Episode, load_minari, to_episodes, write_minari

torch.set_num_threads(1)


def _episodes(seed=0, obs_dim=11, lengths=(5, 7)):
    rng = np.random.default_rng(seed)
    out = []
    for n in lengths:
        out.append(
            Episode(
                observations=rng.normal(size=(n + 1, obs_dim)).astype(np.float32),
                actions=rng.uniform(-1, 1, (n, 3)).astype(np.float32),
                rewards=rng.normal(size=n).astype(np.float32),
                terminations=np.r_[np.zeros(n - 1), 1.0].astype(np.float32),
                truncations=np.zeros(n, np.float32),
            )
        )
    return out


# ------------------------------------------------------------------------------------ datasets


def test_minari_round_trip(tmp_path):
    import minari

    from warmstart.tasks.offline import minari_root

    eps = _episodes()
    write_minari(tmp_path, "hopper-test/medium-v0", eps, "Hopper-v5", -20.0, 3234.3, "test", "round trip", {"key": "k"})
    with minari_root(tmp_path):  # another library reads it through Minari's own loader
        m = minari.load_dataset("hopper-test/medium-v0")
        assert m.total_episodes == 2 and m.total_steps == 12
        np.testing.assert_allclose(m[1].observations, eps[1].observations, rtol=1e-6)
        np.testing.assert_allclose(m[0].actions, eps[0].actions)
    ds = load_minari(tmp_path, "hopper-test/medium-v0")
    assert len(ds) == 12 and ds.info["warmstart"] == {"key": "k"}
    np.testing.assert_allclose(ds.next_observations[4], eps[0].observations[5], rtol=1e-6)
    np.testing.assert_array_equal(ds.terminals, np.r_[np.zeros(4), 1, np.zeros(6), 1])
    back = to_episodes(ds)
    np.testing.assert_allclose(back[1].observations, eps[1].observations, rtol=1e-6)
    # D4RL's normalised score: 100 * (R - random) / (expert - random)
    assert ds.normalized_score([3234.3, -20.0, 1607.15]) == pytest.approx([100.0, 0.0, 50.0])


def test_corrupt_or_mismatched_dataset_is_a_clear_error(tmp_path):
    write_minari(tmp_path, "hopper-test/medium-v0", _episodes(), "Hopper-v5", -20.0, 3234.3, "test", "x")
    ds = load_minari(tmp_path, "hopper-test/medium-v0")
    with pytest.raises(DataError, match=r"observations of size 11 .* env has observations of size 17"):
        ds.check_spaces(17, 3, "recipe.phases[0]")
    ds.check_spaces(11, 3, "recipe.phases[0]")  # the right shapes pass
    with pytest.raises(DataError, match="no Minari dataset"):
        load_minari(tmp_path, "hopper-test/expert-v0")
    h5 = tmp_path / "hopper-test" / "medium-v0" / "data" / "main_data.hdf5"
    h5.write_bytes(h5.read_bytes()[:200])  # truncated file
    with pytest.raises(DataError, match=r"cannot be read .* Delete .*medium-v0"):
        load_minari(tmp_path, "hopper-test/medium-v0")


# ----------------------------------------------------------------------------------------- IQL


def test_expectile_loss_hand_values():
    # u = target - prediction; weight tau where u >= 0, 1 - tau where u < 0
    u = torch.tensor([2.0, -1.0, 0.0, -3.0])
    np.testing.assert_allclose(expectile_loss(u, 0.7).numpy(), [0.7 * 4, 0.3 * 1, 0.0, 0.3 * 9], rtol=1e-6)
    np.testing.assert_allclose(expectile_loss(u, 0.5).numpy(), 0.5 * u.numpy() ** 2, rtol=1e-6)


@pytest.mark.slow
def test_iql_value_learns_the_expectile_of_q():
    """One state, two actions ending the episode with reward 0 or 1 (equal shares): Q -> r, and V
    -> the 0.7-expectile of {0, 1}, i.e. 0.7 * (1 - v) = 0.3 * v  =>  v = 0.7."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    crit = IQLCritics(1, 1, IQLConfig(hidden=(16,), lr=2e-2, polyak=0.1))
    obs = torch.zeros(64, 1)
    act = torch.cat([torch.full((32, 1), -1.0), torch.full((32, 1), 1.0)])
    rew = (act[:, 0] > 0).float()
    for _ in range(300):
        i = torch.randint(64, (32,), generator=g)
        crit.update(obs[i], act[i], rew[i], obs[i], torch.ones(32))
    assert float(crit.value(obs[:1])) == pytest.approx(0.7, abs=0.05)
    q = crit.q_min(obs[[0, -1]], act[[0, -1]])
    np.testing.assert_allclose(q.detach().numpy(), [0.0, 1.0], atol=0.05)


def test_mc_returns_restart_at_each_episode():
    r = mc_returns(np.array([1, 1, 1, 2, 2], np.float32), np.array([0, 0, 0, 1, 1]), 0.5)
    np.testing.assert_allclose(r, [1 + 0.5 + 0.25, 1.5, 1.0, 3.0, 2.0])


# --------------------------------------------------------------------------------- ensemble BC


def _grads(ens, loss):
    ens.zero_grad()
    loss.backward()
    return torch.cat([p.grad.reshape(p.shape[0], -1) for p in ens.parameters()], 1)  # (E, P)


def test_ensemble_diversity_term_has_a_gradient_on_the_other_members():
    torch.manual_seed(0)
    ens = GaussianEnsemble(3, 4, 2, [8])
    obs, act = torch.randn(16, 4), torch.randn(16, 2)
    alpha = 0.1
    plain = _grads(ens, -ens.log_prob(obs, act).mean(1).sum())
    detached = _grads(ens, ensemble_bc_loss(ens, obs, act, alpha, detach=True)[0])
    full = _grads(ens, ensemble_bc_loss(ens, obs, act, alpha)[0])
    # the released code's variant is (1 + alpha) x plain BC ...
    torch.testing.assert_close(detached, (1 + alpha) * plain)
    # ... the paper's adds +alpha * grad(logp_j) on member j wherever it is another member's best rival
    with torch.no_grad():
        logp = ens.log_prob(obs, act)  # (E, B)
    rivals = torch.zeros_like(logp)
    for i in range(3):
        others = logp.clone()
        others[i] = -torch.inf
        j = others.argmax(0)  # (B,)
        rivals[j, torch.arange(16)] += 1.0
    expected = _grads(ens, (-(1 + alpha) * ens.log_prob(obs, act) + alpha * rivals * ens.log_prob(obs, act)).mean(1).sum())
    torch.testing.assert_close(full, expected)
    assert (full - detached).abs().max() > 1e-3


# ------------------------------------------------------------------------------ dynamics and OPE


@pytest.mark.slow
def test_dynamics_ensemble_fits_a_linear_system():
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    A = torch.tensor([[0.9, 0.2], [-0.1, 0.8]])
    B = torch.tensor([[0.5], [1.0]])
    c = torch.tensor([1.0, -2.0])
    s = torch.randn(3000, 2, generator=g)
    a = torch.rand(3000, 1, generator=g) * 2 - 1
    s2, r = s @ A.T + a @ B.T, s @ c
    model = DynamicsEnsemble(2, 1, DynamicsConfig(members=3, elites=2, hidden=(32, 32), lr=1e-2))
    fit_dynamics(model, s[:2500], a[:2500], s2[:2500], r[:2500], steps=500, gen=g)
    pred_s, pred_r = model.step(s[2500:], a[2500:], g)
    assert (pred_s - s2[2500:]).abs().mean() < 0.05
    assert (pred_r - r[2500:]).abs().mean() < 0.1


class _IdentityModel(DynamicsEnsemble):
    """s' = s + a[:, :D]: an exact model of a toy MDP (no learning needed)."""

    def __init__(self):
        super().__init__(1, 1, DynamicsConfig(members=1, elites=1, hidden=(4,)))

    def step(self, obs, act, gen=None):
        return obs + 0.5 * act, torch.zeros(len(obs))


def test_ope_ranks_a_better_policy_higher():
    """Toy MDP s' = s + a/2 with reward -s^2 (Q(s, a) = -(s + a/2)^2 for a one-step look-ahead):
    the policy that steers to 0 must score above one that does nothing and one that runs away."""
    start = torch.linspace(-2, 2, 64).unsqueeze(-1)  # (B, 1)

    def act(obs):  # (3, B, 1): steer to 0, stay, run away
        return torch.stack([-obs[0], torch.zeros_like(obs[1]), obs[2]]).clamp(-1, 1)

    def q(obs, a):
        return -(obs + 0.5 * a).squeeze(-1) ** 2

    s = ope_score(act, q, _IdentityModel(), start, policies=3, horizon=5)
    assert s[0] > s[1] > s[2]


# ------------------------------------------------------------------------------ offline PPO


class _BanditCritics:
    """Q(s, a) = -(a - 0.5)^2 summed over action dims, V = 0: the best action is 0.5 everywhere."""

    def q_values(self, obs, act):
        return (-(act - 0.5).pow(2).sum(-1)).unsqueeze(0).expand(2, -1)

    def q_min(self, obs, act):
        return -(act - 0.5).pow(2).sum(-1)

    def value(self, obs):
        return torch.zeros(obs.shape[0])


def _bandit_ppo(gated: bool):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(512, 2, generator=g)
    data = OfflineTensors(obs, torch.zeros(512, 1), torch.zeros(512), obs, torch.zeros(512), np.zeros(512, int))
    ens = GaussianEnsemble(2, 2, 1, [16], init_log_std=-1.0)
    ppo = OfflinePPO(ens, _BanditCritics(), _IdentityModel(), data, total_updates=300, lr=3e-3, gated=gated,
                     ope_every=50, ope_states=64, ope_horizon=1)
    before = ens.mean(obs).mean().item()
    for _ in range(300):
        ppo.step(g)
    return ppo, before, ppo.result().mean(obs).mean(dim=(1, 2))  # (E,) mean action of each member


@pytest.mark.slow
def test_offline_ppo_with_ope_gating_improves_beyond_one_step():
    """Both move every member towards the better action; the one-step variant's ratio stays
    clipped against the BC policy, so it stops near exp-clip of it, while the gated variant
    re-anchors on each accepted policy and goes further."""
    gated, before, after_gated = _bandit_ppo(True)
    one, _, after_one = _bandit_ppo(False)
    assert (after_one > before + 0.1).all(), (before, after_one)
    assert (after_gated > after_one + 0.1).all(), (after_gated, after_one)
    assert (gated.accepted > 0).all() and (gated.best > gated.start_scores).all()
    assert int(one.accepted.sum()) == 0


def test_ensemble_member_exports_to_an_mlp_policy():
    from gymnasium import spaces

    from warmstart.policies.mlp import MLPPolicy, MLPPolicyConfig

    torch.manual_seed(0)
    ens = GaussianEnsemble(3, 5, 2, [8, 8])
    pol = MLPPolicy.from_spaces(spaces.Box(-1, 1, (5,)), spaces.Box(-1, 1, (2,)), MLPPolicyConfig(kind="mlp", hidden=[8, 8]))
    ens.export_member(2, pol)
    x = torch.randn(4, 5)
    torch.testing.assert_close(pol.actor(x), ens.mean(x)[2])
    a = torch.randn(4, 2)
    torch.testing.assert_close(pol.evaluate_actions(x, a)[0], ens.log_prob(x, a)[2])
    # a member copied into a plain EnsembleMLP slot round-trips
    other = EnsembleMLP(3, 5, [8, 8], 2)
    other.load_member(0, ens.mean_net.member_state(2))
    torch.testing.assert_close(other(x)[0], ens.mean(x)[2])


# ------------------------------------------------------------------------------ recipes and resume

def _timing(key: str) -> bool:
    return key.endswith(("_per_s", "_s")) or key == "sps"


def _rows(run_dir):
    import json

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not _timing(k)} for r in rows]


@pytest.fixture
def in_tmp_cwd(tmp_path, monkeypatch):
    """Recipes cache their data under ./.cache: keep the tests' tiny datasets out of the repo."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.slow
@pytest.mark.parametrize("name", ["unio4-hopper", "unio4-hopper-data"])
def test_unio4_recipe_smoke(name, root, in_tmp_cwd):
    """Beyond tests/test_recipes.py: the data opens with Minari's loader, and summary.json has the
    offline evaluation and the online curve."""
    import json

    import minari

    from warmstart.engine.config import load_recipe
    from warmstart.engine.run import run_recipe
    from warmstart.tasks.offline import minari_root

    recipe, raw = load_recipe(root / "recipes" / f"{name}.yaml", smoke=True)
    assert recipe.description
    run_recipe(recipe, raw, run_dir=in_tmp_cwd / "run", smoke=True, quiet=True)
    summary = json.loads((in_tmp_cwd / "run" / "summary.json").read_text())
    # the data is a Minari dataset another library can open
    (key_dir,) = (in_tmp_cwd / ".cache" / "minari").iterdir()
    with minari_root(key_dir):
        assert minari.load_dataset("warmstart-hopper/medium-s0-v0").total_steps >= 300
    if name == "unio4-hopper-data":
        return
    assert {"normalized_return", "mean_return"} <= set(summary["offline"])
    assert summary["offline"] == summary["phases"]["offline"]
    if name == "unio4-hopper":
        curve = summary["curves"]["online"]
        assert [p["env_steps"] for p in curve] == [256]  # eval_every 1 of a 2-step phase of 256 env steps
        assert "normalized_return" in summary["final"]
        rows = [r for r in _rows(in_tmp_cwd / "run") if r["phase"] == "offline"]
        assert rows[-1]["accepted"] >= 0 and "selected" in rows[-1]


@pytest.mark.slow
def test_offline_to_online_resume_is_exact(root, in_tmp_cwd, monkeypatch):
    """Kill the run inside offline PPO (after a checkpoint there), resume: every metric of the
    offline and online phases equals the uninterrupted run's. Artifacts (critics, dynamics, BC
    ensemble, the dataset's path) come back from the run directory."""
    from warmstart.engine.config import load_recipe
    from warmstart.engine.run import run_recipe
    from warmstart.errors import WarmstartError
    from warmstart.learn.unio4_phases import OfflinePPOPhase

    sets = ["checkpoint.every=2"]
    recipe, raw = load_recipe(root / "recipes" / "unio4-hopper.yaml", sets, smoke=True)
    run_recipe(recipe, raw, run_dir=in_tmp_cwd / "straight", smoke=True, quiet=True)

    real_step = OfflinePPOPhase.step

    def crash(self, step, global_step):
        if global_step == 10:  # the second offline step, after the checkpoint at global step 10
            raise KeyboardInterrupt
        return real_step(self, step, global_step)

    monkeypatch.setattr(OfflinePPOPhase, "step", crash)
    recipe, raw = load_recipe(root / "recipes" / "unio4-hopper.yaml", sets, smoke=True)
    with pytest.raises(WarmstartError, match="interrupted"):
        run_recipe(recipe, raw, run_dir=in_tmp_cwd / "resumed", smoke=True, quiet=True)
    monkeypatch.setattr(OfflinePPOPhase, "step", real_step)
    from warmstart.learn import unio4_phases

    unio4_phases._LOADED.clear()  # as in a fresh process
    recipe, raw = load_recipe(root / "recipes" / "unio4-hopper.yaml", sets, smoke=True)
    run_recipe(recipe, raw, run_dir=in_tmp_cwd / "resumed", resume=True, smoke=True, quiet=True)
    straight, resumed = _rows(in_tmp_cwd / "straight"), _rows(in_tmp_cwd / "resumed")
    assert any(r["phase"] == "online" for r in resumed)
    assert straight == resumed


def test_data_from_another_env_is_refused(root):
    from warmstart.engine.config import load_recipe
    from warmstart.engine.run import build_context
    from warmstart.errors import ConfigError
    from warmstart.registry import PHASES

    recipe, _ = load_recipe(root / "recipes" / "unio4-hopper-data.yaml", ["phases.0.generation.env_id=Walker2d-v5"], smoke=True)
    ctx = build_context(recipe)
    with pytest.raises(ConfigError, match="generation.env_id 'Walker2d-v5' differs from task.env_id 'Hopper-v5'"):
        PHASES.get("offline_data").factory(recipe.phases[0], ctx)


@pytest.mark.slow
def test_dataset_generation_is_deterministic_and_cached(tmp_path):
    from warmstart.learn.offline_data import DataGenConfig, generate

    cfg = DataGenConfig(medium_iters=1, expert_iters=2, num_steps=32, record_steps=200, update_epochs=1,
                        num_minibatches=2, random_episodes=2)
    a = generate(cfg, tmp_path / "a", log=lambda m: None)
    b = generate(cfg, tmp_path / "b", log=lambda m: None)
    for kind in ("medium", "medium-replay", "medium-expert"):
        np.testing.assert_array_equal(a[kind].observations, b[kind].observations)
        np.testing.assert_array_equal(a[kind].actions, b[kind].actions)
    assert len(a["medium"]) == 200 and len(a["medium-expert"]) == 400  # medium + as many expert steps
    seen = []
    again = generate(cfg, tmp_path / "a", log=seen.append)  # same key: loaded, not regenerated
    assert seen and "found" in seen[0]
    np.testing.assert_array_equal(again["medium"].rewards, a["medium"].rewards)
    other = generate(cfg.model_copy(update={"seed": 1}), tmp_path / "a", log=lambda m: None)  # new key, own folder
    assert not np.array_equal(other["medium"].observations[:50], a["medium"].observations[:50])
    assert len(list((tmp_path / "a").iterdir())) == 2
