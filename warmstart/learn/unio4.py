"""Uni-O4 (Lei et al., METHODS.md F): offline and online RL with one on-policy (PPO) objective.

Offline, in the order it runs (each a function here; the phases in :mod:`warmstart.learn.unio4_phases`
call them):

1. critics on the data -- IQL's Q/V and a Monte-Carlo V (:mod:`warmstart.learn.iql`);
2. **ensemble BC** (:func:`ensemble_bc_loss`): n Gaussian policies, each minimising its negative
   log-likelihood minus ``alpha * (its log-likelihood - the best other member's)``. The paper's term,
   with its gradient: the best other member is *pushed down* where member i explains the data, which
   is what makes the members differ. The released code detaches the other members' term, which turns
   the loss into ``(1 + alpha)`` x plain BC (METHODS.md); :func:`ensemble_bc_loss` has ``detach`` only
   so a test can show the difference;
3. a dynamics ensemble for offline policy evaluation (:mod:`warmstart.learn.dynamics`);
4. **offline multi-step PPO** (:func:`offline_ppo_loss`, :class:`OfflinePPO`) per member: states from
   the data, actions from the *behaviour* policy pi_beta, advantages ``normalise(min Q(s, a) - V(s))``,
   PPO's clipped surrogate (:func:`warmstart.functional.clipped_surrogate`, the one every learner
   uses) of ``pi / pi_beta``; every ``ope_every`` updates the OPE score of the current policy is
   compared with pi_beta's and pi_beta is replaced only when the score improved. ``gated: false`` is
   the one-step baseline: pi_beta stays the BC policy (one policy-improvement step, no OPE);
5. the best member (top ``top_k`` by OPE, then the best return over a few real episodes) goes online
   with the MC critic: warmstart's PPO, clip 0.05, observation normalisation frozen at the data's
   statistics.

Every network takes observations normalised by the dataset's mean/std -- the same statistics the
online policy is frozen at, so offline and online see the same inputs.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch

from warmstart.functional import approx_kl, clip_fraction, clipped_surrogate, normalize
from warmstart.learn.dynamics import DynamicsEnsemble, ope_score
from warmstart.learn.iql import IQLCritics
from warmstart.learn.optim import guarded_step
from warmstart.policies.ensemble import GaussianEnsemble, clip_grad_norm_per_member
from warmstart.tasks.offline import OfflineDataset


# ------------------------------------------------------------------------------------------ data


@dataclass
class OfflineTensors:
    """The dataset as tensors the learners sample from; observations normalised. (N, ...) each."""

    obs: torch.Tensor
    act: torch.Tensor
    rew: torch.Tensor
    next_obs: torch.Tensor
    done: torch.Tensor  # 1 where the episode *terminated* (no bootstrap); time-limit ends bootstrap
    episode_index: np.ndarray

    def __len__(self) -> int:
        return len(self.rew)

    def batch(self, size: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
        idx = torch.randint(len(self.rew), (size,), generator=gen)
        return self.obs[idx], self.act[idx], self.rew[idx], self.next_obs[idx], self.done[idx]


def set_obs_stats(policy, ds: OfflineDataset) -> None:
    """Freeze ``policy``'s observation statistics at the dataset's (Uni-O4 normalises by them)."""
    obs = torch.as_tensor(ds.observations, dtype=torch.float64)
    with torch.no_grad():
        policy.obs_rms.mean.copy_(obs.mean(0))
        policy.obs_rms.var.copy_(obs.var(0, unbiased=False))
        policy.obs_rms.count.fill_(float(len(obs)))


def to_tensors(ds: OfflineDataset, policy) -> OfflineTensors:
    """Normalise with ``policy.normalize_obs`` (after :func:`set_obs_stats`)."""
    if not policy.cfg.normalize_obs:
        raise ValueError("Uni-O4 needs policy.normalize_obs: true (observations are normalised by the data's statistics)")
    return OfflineTensors(
        obs=policy.normalize_obs(torch.from_numpy(ds.observations)),
        act=torch.from_numpy(ds.actions),
        rew=torch.from_numpy(ds.rewards),
        next_obs=policy.normalize_obs(torch.from_numpy(ds.next_observations)),
        done=torch.from_numpy(ds.terminals),
        episode_index=ds.episode_index,
    )


# ------------------------------------------------------------------------------------ ensemble BC


def ensemble_bc_loss(
    ensemble: GaussianEnsemble, obs: torch.Tensor, act: torch.Tensor, alpha: float, detach: bool = False
) -> tuple[torch.Tensor, dict[str, float]]:
    """Sum over members of ``mean_b[-logp_i - alpha * (logp_i - max_{j != i} logp_j)]``.

    ``obs`` (B, D), ``act`` (B, A). With ``detach=True`` the other members' term carries no gradient
    (the released code's variant: (1 + alpha) x plain BC).
    """
    logp = ensemble.log_prob(obs, act)  # (E, B)
    E, B = logp.shape
    loss = -logp
    div = torch.zeros_like(logp)
    if E > 1 and alpha > 0:
        others = logp.unsqueeze(0).expand(E, E, B)  # [i, j, b] = logp_j(b)
        self_mask = torch.eye(E, dtype=torch.bool).unsqueeze(-1)  # (E, E, 1)
        best_other = others.masked_fill(self_mask, -torch.inf).max(1).values  # (E, B)
        if detach:
            best_other = best_other.detach()
        div = logp - best_other
        loss = loss - alpha * div
    return loss.mean(1).sum(), {"nll": -logp.detach().mean().item(), "diversity": div.detach().mean().item()}


def bc_step(ensemble, optimizer, data: OfflineTensors, batch_size: int, alpha: float, gen: torch.Generator) -> dict[str, float]:
    obs, act, *_ = data.batch(batch_size, gen)
    loss, m = ensemble_bc_loss(ensemble, obs, act, alpha)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    skipped = guarded_step(optimizer, ensemble.parameters(), math.inf, loss.item())[1]
    return {"loss_bc": loss.item(), **m, "skipped_updates": int(skipped)}


# ---------------------------------------------------------------------------- offline multi-step PPO


def offline_ppo_loss(
    actor: GaussianEnsemble,
    behaviour: GaussianEnsemble,
    critics: IQLCritics,
    obs: torch.Tensor,
    clip: float,
    gen: torch.Generator,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO's clipped surrogate on dataset states ``obs`` (B, D) with actions from each member's
    behaviour policy and advantages ``normalise(min_k Q_k(s, a) - V(s))`` per member."""
    with torch.no_grad():
        a, logp_old = behaviour.sample(obs, gen)  # (E, B, A), (E, B)
        q = critics.q_min(obs, a.clamp(-1.0, 1.0))  # the data's actions lie in [-1, 1]; (E, B)
        adv = q - critics.value(obs).unsqueeze(0)  # (E, B)
        adv = torch.stack([normalize(x) for x in adv])  # per member: each is its own PPO
    logp = actor.log_prob(obs, a)  # (E, B)
    loss, ratio, clipped = clipped_surrogate(logp, logp_old, adv, clip)
    with torch.no_grad():
        kl = approx_kl(logp.detach(), logp_old).mean()
        clipfrac = clip_fraction(ratio.detach(), clip).mean()
    return loss.mean(1).sum(), {"loss_policy": loss.detach().mean().item(), "approx_kl": float(kl), "clipfrac": float(clipfrac)}


def deterministic_actions(ensemble: GaussianEnsemble):
    """``act_fn`` for :func:`ope_score`: each member's mean action on its own rows, clipped to the
    action bounds the data was recorded with."""

    def act(obs: torch.Tensor) -> torch.Tensor:
        return ensemble.mean(obs).clamp(-1.0, 1.0)  # (E, B, A)

    return act


def q_of(critics: IQLCritics):
    def q(obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        E, B, D = obs.shape
        return critics.q_values(obs.reshape(E * B, D), act.reshape(E * B, -1)).min(0).values.view(E, B)

    return q


class OfflinePPO:
    """Multi-step offline PPO of every ensemble member at once, with OPE gating per member.

    ``behaviour`` holds, per member, the last policy that OPE accepted (first the BC policy);
    ``best`` its OPE score. Members are independent (own behaviour policy, own gradient clip)."""

    def __init__(
        self,
        actor: GaussianEnsemble,
        critics: IQLCritics,
        dynamics: DynamicsEnsemble,
        data: OfflineTensors,
        *,
        total_updates: int,
        lr: float = 1e-4,
        clip: float = 0.25,
        max_grad_norm: float = 0.5,
        batch_size: int = 256,
        gated: bool = True,
        ope_every: int = 100,
        ope_states: int = 512,
        ope_horizon: int = 10,
        obs_clip: float = 10.0,
        seed: int = 0,
    ):
        self.actor, self.critics, self.dynamics, self.data = actor, critics, dynamics, data
        self.behaviour = copy.deepcopy(actor).requires_grad_(False)
        self.total, self.base_lr, self.clip = total_updates, lr, clip
        self.max_grad_norm, self.batch_size, self.gated = max_grad_norm, batch_size, gated
        self.ope_every, self.ope_horizon, self.obs_clip = ope_every, ope_horizon, obs_clip
        self.optimizer = torch.optim.Adam(actor.parameters(), lr=lr)
        g = torch.Generator().manual_seed(seed)
        self.start_obs = data.obs[torch.randint(len(data), (ope_states,), generator=g)]  # fixed: scores compare
        self.ope_gen_seed = seed + 1
        self.updates = 0
        self.best = self.ope(self.behaviour)  # (E,)
        self.start_scores = self.best.clone()
        self.accepted = torch.zeros(actor.members, dtype=torch.long)

    def ope(self, ensemble: GaussianEnsemble) -> torch.Tensor:
        """(E,) OPE scores; the model's elite choices are re-drawn the same way each time."""
        gen = torch.Generator().manual_seed(self.ope_gen_seed)
        return ope_score(
            deterministic_actions(ensemble), q_of(self.critics), self.dynamics, self.start_obs,
            ensemble.members, self.ope_horizon, gen, self.obs_clip,
        )

    def step(self, gen: torch.Generator) -> dict[str, float]:
        """One update of every member (and an OPE round every ``ope_every`` updates)."""
        frac = 1.0 - self.updates / max(self.total, 1)  # lr decays linearly to 0 (Uni-O4)
        for g in self.optimizer.param_groups:
            g["lr"] = self.base_lr * frac
        obs = self.data.batch(self.batch_size, gen)[0]
        loss, m = offline_ppo_loss(self.actor, self.behaviour, self.critics, obs, self.clip, gen)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip_grad_norm_per_member(list(self.actor.parameters()), self.max_grad_norm)
        # per-member clipping above; guarded_step only refuses a non-finite step (max norm inf)
        skipped = guarded_step(self.optimizer, self.actor.parameters(), math.inf, loss.item())[1]
        self.updates += 1
        if self.gated and self.updates % self.ope_every == 0:
            scores = self.ope(self.actor)
            for e in torch.nonzero(scores > self.best).flatten().tolist():
                self.behaviour.copy_member(e, self.actor, e)
                self.best[e] = scores[e]
                self.accepted[e] += 1
            m["ope_current"] = float(scores.mean())
        m["ope_best"] = float(self.best.mean())
        m["accepted"] = int(self.accepted.sum())
        m["skipped_updates"] = int(skipped)
        return m

    def result(self) -> GaussianEnsemble:
        """The offline policies: per member the last accepted one (gated), or the final one."""
        return self.behaviour if self.gated else self.actor

    def state_dict(self) -> dict:
        return {
            "actor": self.actor.state_dict(),
            "behaviour": self.behaviour.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "updates": self.updates,
            "best": self.best.clone(),
            "start_scores": self.start_scores.clone(),
            "accepted": self.accepted.clone(),
        }

    def load_state_dict(self, s: dict) -> None:
        self.actor.load_state_dict(s["actor"])
        self.behaviour.load_state_dict(s["behaviour"])
        self.optimizer.load_state_dict(s["optimizer"])
        self.updates, self.best = s["updates"], s["best"].clone()
        self.start_scores, self.accepted = s["start_scores"].clone(), s["accepted"].clone()


# ----------------------------------------------------------------------------------- selection


def evaluate_member(ensemble: GaussianEnsemble, e: int, policy, task, episodes: int, seed: int) -> tuple[float, int]:
    """(mean greedy return, env steps spent) of member ``e`` over ``episodes`` real episodes, run
    with a copy of ``policy`` holding the member's actor (``policy`` itself is left as it was)."""
    from warmstart.config import EvalConfig

    trial = copy.deepcopy(policy)
    ensemble.export_member(e, trial)
    ev = task.evaluate(trial, EvalConfig(n=episodes, seed=seed))
    return float(ev["mean_return"]), int(round(ev["mean_length"] * episodes))


def select_member(
    ensemble: GaussianEnsemble, scores: torch.Tensor, policy, task, top_k: int, episodes: int, seed: int
) -> tuple[int, dict[str, float]]:
    """Uni-O4's choice of the policy that goes online: the ``top_k`` members by OPE score, then the
    best mean return over ``episodes`` real episodes each (``episodes: 0`` picks the OPE best)."""
    order = torch.argsort(scores, descending=True)[:top_k].tolist()
    if episodes == 0 or len(order) == 1:
        return order[0], {"selected": order[0], "selection_env_steps": 0}
    runs = {e: evaluate_member(ensemble, e, policy, task, episodes, seed) for e in order}
    best = max(order, key=lambda e: runs[e][0])
    out = {"selected": best, "selection_env_steps": sum(n for _, n in runs.values())}
    out.update({f"select_return_{e}": r for e, (r, _) in runs.items()})
    return best, out
