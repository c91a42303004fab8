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
from warmstart.contracts import HoldsResources, TokenPolicy, check_requirements, missing_members
from warmstart.engine.config import Recipe, dump_config
from rich.markup import escape

from warmstart.engine.logging import MetricsLogger, console, plot_curves, print_summary_table, quiet_hf
from warmstart.engine.tracking import open_trackers
from warmstart.engine.rundir import RunLock, check_run_dir, claim_run_dir, repair_metrics, verify_manifest, write_manifest
from warmstart.errors import DataError, WarmstartError, warn
from warmstart.registry import PHASES, POLICIES, REWARDS, TASKS
from warmstart.rewards import RewardSet
from warmstart.rollout.evaluate import evaluate
from warmstart.rollout.workers import InProcessWorkers, make_workers
from warmstart.tasks.jsonl import JsonlTask

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
    workers: Any = field(default_factory=InProcessWorkers)  # where rollouts and searches run (recipe `scale:`)

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
    rewards = RewardSet(terms, [r.label for r in recipe.rewards], [r.weight for r in recipe.rewards],
                        timeout_s=recipe.guard.callback_timeout_s)
    # what each phase needs of the task and policy, checked once, before anything runs
    for p in recipe.phases:
        entry = PHASES.get(p.kind)
        check_requirements(f"phase '{p.label}' ({p.kind})", entry.requires, {"task": task, "policy": policy})
    for t in (task, eval_task):
        check_lengths(policy, t)
    return RunContext(recipe=recipe, policy=policy, task=task, eval_task=eval_task, rewards=rewards, smoke=smoke)


def check_lengths(policy, task) -> None:
    """Every problem read from a file must fit the policy's context with its completion budget
    (prompt + ``max_new_tokens``; prompt + solution for demonstrations); an error names file:line."""
    if not isinstance(task, JsonlTask) or missing_members(policy, TokenPolicy):
        return
    context = getattr(policy.model.config, "max_position_embeddings", None)
    if not context:
        return
    for prob, where in zip(task.problems, task.sources):
        n = len(policy.encode_prompt(prob.prompt))
        if n + task.max_new_tokens > context:
            raise DataError(
                f"{where}: the prompt is {n} tokens; with max_new_tokens {task.max_new_tokens} it needs "
                f"{n + task.max_new_tokens} positions, more than the policy's context of {context}. Shorten or "
                "drop that problem, lower task.max_new_tokens, or use a policy with a longer context."
            )
        if prob.solution:
            m = len(policy.encode(prob.solution)) + 1
            if n + m > context:
                raise DataError(f"{where}: prompt + solution are {n + m} tokens, more than the policy's context of "
                                f"{context}. Shorten the solution or use a policy with a longer context.")


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
    write_manifest(tmp)  # last: a folder with a valid manifest is complete
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    # keep the newest `keep` step checkpoints; only finite, verified ones are ever written, so the
    # newest -- the one just written -- is always a good one
    for _, d in _step_dirs(ctx.run_dir)[: -ctx.recipe.checkpoint.keep]:
        shutil.rmtree(d, ignore_errors=True)
    return final


def nonfinite_weights(policy) -> list[str]:
    """Names of the policy's parameters holding NaN or inf (empty when all are finite)."""
    module = policy if isinstance(policy, torch.nn.Module) else policy.model
    return [n for n, p in module.named_parameters() if not torch.isfinite(p).all()]


def _check_weights(ctx: RunContext, global_step: int, what: str) -> None:
    bad = nonfinite_weights(ctx.policy)
    if bad:
        ckpts = _step_dirs(ctx.run_dir)
        last = ckpts[-1][1].name if ckpts else "none yet"
        raise WarmstartError(
            f"the policy's weights are not finite at global step {global_step} ({len(bad)} tensors, e.g. "
            f"{bad[0]}), so {what} was not written. The newest checkpoint ({last}) holds finite weights. Usual "
            "causes: a learning rate too high, or rewards/advantages of huge magnitude; start a new --run-dir "
            "with a smaller lr (--set phases.<name>.lr=...)."
        )


def _clean_temp(run_dir: Path) -> None:
    for d in (run_dir / "checkpoints").glob(".tmp-*"):
        shutil.rmtree(d, ignore_errors=True)


# -------------------------------------------------------------------------------------------- run


def default_run_dir(recipe: Recipe) -> Path:
    return Path("runs") / f"{recipe.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def run_recipe(
    recipe: Recipe,
    raw: dict,
    run_dir: Path | None = None,
    resume: bool = False,
    smoke: bool = False,
    quiet: bool = False,
    overwrite: bool = False,
) -> dict:
    """Run a validated recipe end to end; returns the summary dict (also written to summary.json).

    Everything that can be checked (the run directory, the data, the plug-ins, each phase's
    requirements) is checked before anything is written; the directory is locked for the run."""
    quiet_hf()
    run_dir = Path(run_dir) if run_dir else default_run_dir(recipe)
    check_run_dir(run_dir, resume, overwrite)
    ctx = build_context(recipe, smoke=smoke)
    try:
        phases_cfg = recipe.phases
        phases = [PHASES.get(p.kind).factory(p, ctx) for p in phases_cfg]
        ctx.workers = make_workers(ctx.policy, **recipe.scale.model_dump())  # a bad Ray address fails here
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = RunLock(run_dir)
        lock.acquire()
        try:
            claim_run_dir(run_dir, dump_config(raw), resume, overwrite)
            return _run(ctx, phases, run_dir, resume, quiet)
        finally:
            lock.release()
    finally:
        close_context(ctx)


def close_context(ctx: RunContext) -> None:
    """Release what the run holds (its rollout workers, a tool server its tasks started), however the run ended."""
    ctx.workers.close()
    for obj in {id(o): o for o in (ctx.task, ctx.eval_task)}.values():
        if isinstance(obj, HoldsResources):
            obj.close()


def _resume_point(ctx: RunContext, phases: list, run_dir: Path, quiet: bool):
    """Load the newest intact checkpoint; returns (phase, step, global step, evals, log offset)."""
    for gstep, d in reversed(_step_dirs(run_dir)):
        problem = verify_manifest(d)
        if problem is None:
            try:
                state = torch.load(d / STATE_FILE, weights_only=False)
                ctx.policy.load_weights(d)
            except Exception as e:  # a damaged file the manifest could not catch (older checkpoints)
                problem = f"it could not be read ({type(e).__name__}: {e})"
        if problem is not None:
            warn(f"checkpoint {d} is damaged: {problem}. Falling back to an older checkpoint.")
            continue
        start_phase, start_step = state["phase_index"], state["phase_step"]
        if start_phase < len(phases) and state.get("trainer") is not None:
            phases[start_phase].load_state_dict(state["trainer"])
        rng = state.get("rng")
        if rng:
            torch.set_rng_state(rng["torch"])
            np.random.set_state(rng["numpy"])
            random.setstate(rng["python"])
        if not quiet:
            console.print(f"[bold]resuming[/] {escape(str(run_dir))} from {d.name} (phase {start_phase}, step {start_step})")
        return start_phase, start_step, gstep, state.get("evals", {}), state.get("metrics_bytes", 0)
    if _step_dirs(run_dir):
        warn(f"no intact checkpoint in {run_dir / 'checkpoints'}; the run starts again from the beginning.")
    return 0, 0, 0, {}, 0


def _run(ctx: RunContext, phases: list, run_dir: Path, resume: bool, quiet: bool) -> dict:
    recipe, phases_cfg = ctx.recipe, ctx.recipe.phases
    ctx.run_dir = run_dir
    ctx.artifacts.attach(run_dir / "artifacts")
    _clean_temp(run_dir)

    # where to start: the newest intact checkpoint, if resuming
    start_phase, start_step, global_step, evals, metrics_bytes = 0, 0, 0, {}, 0
    if resume:
        start_phase, start_step, global_step, evals, metrics_bytes = _resume_point(ctx, phases, run_dir, quiet)
    fixed = repair_metrics(run_dir / "metrics.jsonl", metrics_bytes, global_step)
    if fixed:
        warn(fixed)
    trackers = open_trackers(recipe.log, run_dir, recipe.name, recipe.model_dump(mode="json"), resume)
    ctx.logger = MetricsLogger(run_dir, tensorboard=recipe.log.tensorboard, truncate_to=None,  # repaired above
                               trackers=trackers)
    ok = False
    try:
        summary = _loop(ctx, phases, run_dir, start_phase, start_step, global_step, evals, quiet)
        trackers.final(summary, [run_dir / "summary.json", run_dir / "curves.png"])
        ok = True
        return summary
    finally:
        ctx.logger.close()
        trackers.end(ok)


def _loop(ctx, phases, run_dir, start_phase, start_step, global_step, evals, quiet) -> dict:
    recipe, phases_cfg = ctx.recipe, ctx.recipe.phases
    t0 = time.time()
    skipped_total = bad_steps = 0
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
                    skipped = int(metrics.get("skipped_updates") or 0)
                    skipped_total += skipped
                    bad_steps = bad_steps + 1 if skipped else 0
                    if bad_steps >= recipe.guard.max_nonfinite_steps:
                        ctx.logger.write({"step": global_step, "phase": pcfg.label, "phase_step": k + 1, **metrics})
                        raise WarmstartError(_nonfinite_message(pcfg.label, global_step, bad_steps, skipped_total, run_dir))
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
            _check_weights(ctx, global_step, f"the checkpoint after phase '{pcfg.label}'")
            evals[pcfg.label] = _evaluate(ctx, pcfg.label, global_step, quiet)
            # phase boundary: the next phase starts fresh from this policy
            _checkpoint(ctx, global_step, pi + 1, 0, None, evals)
    except KeyboardInterrupt:
        ckpts = _step_dirs(run_dir)
        last = ckpts[-1][1].name if ckpts else "none yet"
        raise WarmstartError(
            f"interrupted at global step {global_step}. The run directory {run_dir} is intact; the last "
            f"checkpoint is {last}. Continue with: warmstart run <recipe> --run-dir {run_dir} --resume"
        ) from None

    _check_weights(ctx, global_step, "final/")
    final_dir = run_dir / "final"
    tmp = run_dir / ".tmp-final"
    if tmp.exists():
        shutil.rmtree(tmp)
    ctx.policy.save(tmp)
    if final_dir.exists():
        shutil.rmtree(final_dir)
    os.replace(tmp, final_dir)

    summary = _summary(recipe, phases_cfg, evals, global_step, time.time() - t0, run_dir)
    summary["skipped_updates"] = skipped_total
    tmp = run_dir / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2, default=float))
    os.replace(tmp, run_dir / "summary.json")
    ctx.logger.close()
    try:
        plot_curves(run_dir, [k for p in phases for k in p.key_metrics])
    except Exception as e:  # the run is done and saved; a missing picture must not fail it
        warn(f"the run finished, but its plot {run_dir / 'curves.png'} could not be written "
             f"({type(e).__name__}: {e}). metrics.jsonl holds every number.")
    if not quiet:
        print_summary_table(summary)
        console.print(f"run directory: [bold]{escape(str(run_dir))}[/]")
    return summary


def _nonfinite_message(label: str, global_step: int, bad: int, skipped: int, run_dir: Path) -> str:
    ckpts = _step_dirs(run_dir)
    last = ckpts[-1][1].name if ckpts else "none yet"
    return (f"phase '{label}' stopped at global step {global_step}: {bad} steps in a row had a non-finite loss or "
            f"gradient ({skipped} updates skipped in all; a skipped update never touches the weights). The newest checkpoint "
            f"({last}) holds finite weights. Usual causes: a learning rate too high, a reward of huge magnitude, "
            "or a policy whose weights were already non-finite; start a new --run-dir with a smaller lr "
            "(--set phases.<name>.lr=...), or raise guard.max_nonfinite_steps to tolerate more.")


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
    _check_weights(ctx, global_step, f"checkpoint step-{global_step}")  # never save a poisoned policy
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
