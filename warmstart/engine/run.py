"""The run loop: build the pieces a recipe names, run its phases, evaluate, checkpoint, resume.

Glue only -- no algorithm lives here. A *phase* is any registered learner (SFT, GRPO, PPO ...)
implementing :class:`~warmstart.contracts.Phase`; the engine checks what each phase ``requires``
of the task and policy before anything is written, then calls ``step(step, global_step)``
``cfg.steps`` times (``step`` counts within the phase), logs what it returns, checkpoints the policy
(Hugging Face format) plus the phase's state, and evaluates. What phases hand each other goes
through the run's artifacts store (``ctx.artifacts``, saved in ``<run>/artifacts``).

Determinism: before every step the engine reseeds torch/numpy/random from ``(seed, global step)``
and hands the phase a fresh ``torch.Generator`` seeded the same way, so a resumed run draws the same
numbers as one that never stopped, without having to serialise data-loader positions.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from warmstart.artifacts import Artifacts
from warmstart.contracts import check_requirements
from warmstart.engine.config import Recipe, dump_config
from warmstart.engine.logging import MetricsLogger, console, plot_curves, print_summary_table, quiet_hf
from warmstart.errors import WarmstartError
from warmstart.registry import PHASES, POLICIES, REWARDS, TASKS
from warmstart.rewards import RewardSet
from warmstart.rollout.evaluate import evaluate

STATE_FILE = "trainer_state.pt"
CURVES = "_curves"  # key of the during-phase evaluations inside the checkpointed evals

def step_seed(seed: int, step: int, salt: int = 0) -> int:
    """A distinct, reproducible seed for every (run seed, global step, salt)."""
    return (seed * 1_000_003 + step * 7_919 + salt * 104_729) % (2**63 - 1)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


@dataclass
class RunContext:
    """Everything a phase may touch: the recipe, the policy, the tasks, the reward terms, the
    artifacts store, the run directory and the logger. Built by :func:`build_context` before
    anything is written to disk."""

    recipe: Recipe
    policy: Any
    task: Any
    eval_task: Any
    rewards: RewardSet
    run_dir: Path | None = None
    logger: MetricsLogger | None = None
    smoke: bool = False
    artifacts: Artifacts = field(default_factory=Artifacts)

    @property
    def seed(self) -> int:
        return self.recipe.seed

    def generator(self, step: int, salt: int = 0) -> torch.Generator:
        return torch.Generator().manual_seed(step_seed(self.seed, step, salt))

    def evaluate(self) -> dict[str, Any]:
        return evaluate(self.policy, self.eval_task, self.recipe.eval, self.rewards)


def build_context(recipe: Recipe, smoke: bool = False) -> RunContext:
    """Build task, eval task, policy and reward terms (may raise WarmstartError for missing files)."""
    seed_everything(recipe.seed)
    task = TASKS.get(recipe.task.kind).factory(recipe.task, split="train", seed=recipe.seed)
    eval_cfg = recipe.eval_task or recipe.task
    eval_task = TASKS.get(eval_cfg.kind).factory(eval_cfg, split="test", seed=recipe.seed)
    policy = POLICIES.get(recipe.policy.kind).factory(recipe.policy, task=task, seed=recipe.seed)
    terms = [REWARDS.get(r.kind).factory(r) for r in recipe.rewards]
    rewards = RewardSet(terms, [r.label for r in recipe.rewards], [r.weight for r in recipe.rewards])
    # what each phase needs of the task and policy, checked once, before anything runs
    for p in recipe.phases:
        entry = PHASES.get(p.kind)
        check_requirements(f"phase '{p.label}' ({p.kind})", entry.requires, {"task": task, "policy": policy})
    return RunContext(recipe=recipe, policy=policy, task=task, eval_task=eval_task, rewards=rewards, smoke=smoke)


# ------------------------------------------------------------------------------------ checkpoints


def _step_dirs(run_dir: Path) -> list[tuple[int, Path]]:
    out = []
    for d in (run_dir / "checkpoints").glob("step-*"):
        if d.is_dir() and (d / STATE_FILE).exists():
            try:
                out.append((int(d.name.split("-", 1)[1]), d))
            except ValueError:
                pass
    return sorted(out)


def save_checkpoint(ctx: RunContext, global_step: int, state: dict) -> Path:
    """Write ``checkpoints/step-N`` atomically: a temp dir, then one rename."""
    ck_root = ctx.run_dir / "checkpoints"
    ck_root.mkdir(parents=True, exist_ok=True)
    final = ck_root / f"step-{global_step}"
    tmp = ck_root / f".tmp-step-{global_step}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    ctx.policy.save(tmp)
    state = dict(state)
    state["rng"] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    torch.save(state, tmp / STATE_FILE)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    # keep the newest `keep` step checkpoints
    for _, d in _step_dirs(ctx.run_dir)[: -ctx.recipe.checkpoint.keep]:
        shutil.rmtree(d, ignore_errors=True)
    return final


def _clean_temp(run_dir: Path) -> None:
    for d in (run_dir / "checkpoints").glob(".tmp-*"):
        shutil.rmtree(d, ignore_errors=True)


# -------------------------------------------------------------------------------------------- run


def default_run_dir(recipe: Recipe) -> Path:
    return Path("runs") / f"{recipe.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def prepare_run_dir(run_dir: Path, raw: dict, resume: bool) -> None:
    """Create the run directory, or check it is the same recipe when resuming. Never overwrites an
    existing run without ``--resume``."""
    cfg_path = run_dir / "config.yaml"
    text = dump_config(raw)
    if cfg_path.exists():
        if not resume:
            raise WarmstartError(
                f"run directory {run_dir} already holds a run. Pass --resume to continue it, or choose "
                "another --run-dir (nothing was changed)."
            )
        if cfg_path.read_text() != text:
            raise WarmstartError(
                f"--resume: the recipe differs from the one {run_dir} was started with "
                f"({cfg_path}). Resume with the same recipe and --set overrides, or start a new run dir."
            )
    run_dir.mkdir(parents=True, exist_ok=True)
    if not cfg_path.exists():
        tmp = cfg_path.with_suffix(".yaml.tmp")
        tmp.write_text(text)
        os.replace(tmp, cfg_path)


def run_recipe(
    recipe: Recipe,
    raw: dict,
    run_dir: Path | None = None,
    resume: bool = False,
    smoke: bool = False,
    quiet: bool = False,
) -> dict:
    """Run a validated recipe end to end; returns the summary dict (also written to summary.json)."""
    quiet_hf()
    ctx = build_context(recipe, smoke=smoke)
    run_dir = Path(run_dir) if run_dir else default_run_dir(recipe)
    prepare_run_dir(run_dir, raw, resume)
    ctx.run_dir = run_dir
    ctx.artifacts.attach(run_dir / "artifacts")
    _clean_temp(run_dir)

    phases_cfg = recipe.phases
    phases = [PHASES.get(p.kind).factory(p, ctx) for p in phases_cfg]

    # where to start: the newest complete checkpoint, if resuming
    start_phase, start_step, global_step = 0, 0, 0
    evals: dict[str, Any] = {}
    metrics_bytes = 0
    ckpts = _step_dirs(run_dir) if resume else []
    if ckpts:
        gstep, d = ckpts[-1]
        state = torch.load(d / STATE_FILE, weights_only=False)
        ctx.policy.load_weights(d)
        start_phase, start_step, global_step = state["phase_index"], state["phase_step"], gstep
        evals = state.get("evals", {})
        metrics_bytes = state.get("metrics_bytes", 0)
        if start_phase < len(phases) and state.get("trainer") is not None:
            phases[start_phase].load_state_dict(state["trainer"])
        rng = state.get("rng")
        if rng:
            torch.set_rng_state(rng["torch"])
            np.random.set_state(rng["numpy"])
            random.setstate(rng["python"])
        if not quiet:
            console.print(f"[bold]resuming[/] {run_dir} from {d.name} (phase {start_phase}, step {start_step})")
    ctx.logger = MetricsLogger(run_dir, tensorboard=recipe.log.tensorboard, truncate_to=metrics_bytes if resume else 0)

    t0 = time.time()
    try:
        if recipe.eval.before and "start" not in evals:
            evals["start"] = _evaluate(ctx, "start", global_step, quiet)
        for pi in range(start_phase, len(phases)):
            pcfg, phase = phases_cfg[pi], phases[pi]
            first = start_step if pi == start_phase else 0
            phase.on_start(first)
            with ctx.logger.progress(pcfg.label, pcfg.steps, first, quiet=quiet, keys=phase.key_metrics) as bar:
                for k in range(first, pcfg.steps):
                    seed_everything(step_seed(recipe.seed, global_step))
                    ts = time.time()
                    metrics = phase.step(k, global_step)
                    global_step += 1
                    row = {"step": global_step, "phase": pcfg.label, "phase_step": k + 1, **metrics}
                    row["time_step_s"] = round(time.time() - ts, 4)
                    ctx.logger.write(row)
                    bar.advance(metrics)
                    if pcfg.eval_every and (k + 1) % pcfg.eval_every == 0 and k + 1 < pcfg.steps:
                        ev = _evaluate(ctx, pcfg.label, global_step, quiet=True)
                        ctx.logger.write({"step": global_step, "phase": "eval", "during": pcfg.label, **_flat(ev)})
                        point = {"step": global_step, "phase_step": k + 1, **_curve_x(metrics), **ev}
                        evals.setdefault(CURVES, {}).setdefault(pcfg.label, []).append(point)
                    every = recipe.checkpoint.every
                    if every and global_step % every == 0 and k + 1 < pcfg.steps:
                        _checkpoint(ctx, global_step, pi, k + 1, phase, evals)
            phase.on_end()
            evals[pcfg.label] = _evaluate(ctx, pcfg.label, global_step, quiet)
            # phase boundary: the next phase starts fresh from this policy
            _checkpoint(ctx, global_step, pi + 1, 0, None, evals)
    except KeyboardInterrupt:
        ckpts = _step_dirs(run_dir)
        last = ckpts[-1][1].name if ckpts else "none yet"
        ctx.logger.close()
        raise WarmstartError(
            f"interrupted at global step {global_step}. The run directory {run_dir} is intact; the last "
            f"checkpoint is {last}. Continue with: warmstart run <recipe> --run-dir {run_dir} --resume"
        ) from None

    final_dir = run_dir / "final"
    tmp = run_dir / ".tmp-final"
    if tmp.exists():
        shutil.rmtree(tmp)
    ctx.policy.save(tmp)
    if final_dir.exists():
        shutil.rmtree(final_dir)
    os.replace(tmp, final_dir)

    summary = _summary(recipe, phases_cfg, evals, global_step, time.time() - t0, run_dir)
    tmp = run_dir / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2, default=float))
    os.replace(tmp, run_dir / "summary.json")
    ctx.logger.close()
    plot_curves(run_dir, [k for p in phases for k in p.key_metrics])
    if not quiet:
        print_summary_table(summary)
        console.print(f"run directory: [bold]{run_dir}[/]")
    return summary


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _evaluate(ctx: RunContext, label: str, global_step: int, quiet: bool) -> dict:
    t = time.time()
    ev = ctx.evaluate()
    ev["eval_time_s"] = round(time.time() - t, 2)
    ctx.logger.write({"step": global_step, "phase": "eval", "after": label, **_flat(ev)})
    if not quiet:
        shown = {k: v for k, v in ev.items() if isinstance(v, (int, float)) and not k.endswith("_s")}
        console.print(f"[bold cyan]eval after {label}[/]: " + ", ".join(f"{k}={v:.4g}" for k, v in shown.items()))
    return ev


def _checkpoint(ctx, global_step, phase_index, phase_step, phase, evals):
    ctx.logger.flush()
    state = {
        "phase_index": phase_index,
        "phase_step": phase_step,
        "global_step": global_step,
        "trainer": phase.state_dict() if phase is not None else None,
        "evals": evals,
        "metrics_bytes": ctx.logger.bytes_written(),
    }
    save_checkpoint(ctx, global_step, state)


def _curve_x(metrics: dict) -> dict:
    """What places a during-phase evaluation on a learning curve besides the step (env steps)."""
    return {"env_steps": metrics["env_steps"]} if "env_steps" in metrics else {}


def _summary(recipe, phases_cfg, evals, steps, seconds, run_dir) -> dict:
    init_label = None
    for p in phases_cfg:
        if p.role == "init":
            init_label = p.label
    labels = [p.label for p in phases_cfg]
    init = evals.get(init_label) if init_label else evals.get("start")
    final = evals.get(labels[-1]) if labels else evals.get("start")
    out = {
        "recipe": recipe.name,
        "run_dir": str(run_dir),
        "steps": steps,
        "time_s": round(seconds, 1),
        "init": init,
        "final": final,
        "phases": {k: v for k, v in evals.items() if k != CURVES},
    }
    for p in phases_cfg:
        if p.report_as:
            out[p.report_as] = evals.get(p.label)
    if evals.get(CURVES):
        # the evaluations during phases with eval_every (the end of each phase is in "phases")
        out["curves"] = evals[CURVES]
    return out
