"""Fault injection: each fault ends in one clear message naming its culprit (exit code 2, no
traceback), or in a run that finishes anyway -- and the run directory stays intact and resumable to
the same numbers.

Most cases run the CLI in-process on a tiny recipe; two use real subprocesses (a concurrent run,
kill -9 while the log is being written).
"""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.faults

TINY = (Path(__file__).parent / "fault_tiny.yaml").read_text()

TIMING = {"time_step_s", "tokens_per_s", "sample_tokens_per_s", "train_tokens_per_s", "eval_time_s"}


def invoke(*args):
    from typer.testing import CliRunner

    from warmstart.engine.cli import app

    res = CliRunner().invoke(app, [str(a) for a in args])
    # an uncaught exception is a traceback for the user: never acceptable here
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output
    return res


def rows(run_dir):
    out = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in out]


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    p = tmp_path_factory.mktemp("recipe") / "tiny.yaml"
    p.write_text(TINY)
    return p


@pytest.fixture(scope="module")
def reference(recipe, tmp_path_factory):
    """The uninterrupted run every damaged-and-resumed run must reproduce."""
    run_dir = tmp_path_factory.mktemp("ref") / "run"
    res = invoke("run", recipe, "--run-dir", run_dir, "--quiet")
    assert res.exit_code == 0, res.output
    return run_dir


def unfinish(src: Path, dst: Path) -> Path:
    """A copy of a finished run as if it had been stopped after its newest checkpoint."""
    shutil.copytree(src, dst)
    for name in ("final", "summary.json", "curves.png"):
        p = dst / name
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    return dst


def steps(run_dir):
    return sorted(int(d.name.split("-")[1]) for d in (Path(run_dir) / "checkpoints").glob("step-*"))


# ------------------------------------------------------------------------- non-finite numbers


def test_guarded_step_skips_non_finite_and_keeps_weights():
    from warmstart.learn.optim import guarded_step

    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    opt = torch.optim.SGD([w], lr=0.5)
    w.grad = torch.tensor([float("nan"), 1.0])
    gnorm, skipped = guarded_step(opt, [w], 1.0)
    assert skipped and w.tolist() == [1.0, 2.0] and w.grad.tolist() == [0.0, 0.0]
    w.grad = torch.tensor([0.0, 2.0])  # norm 2 -> clipped to 1
    gnorm, skipped = guarded_step(opt, [w], 1.0, loss=0.3)
    assert not skipped and gnorm == 2.0 and w.tolist() == pytest.approx([1.0, 1.5])
    w.grad = torch.tensor([0.0, 2.0])
    assert guarded_step(opt, [w], 1.0, loss=float("inf"))[1] and w.tolist() == pytest.approx([1.0, 1.5])


def test_sft_and_grpo_updates_skip_non_finite_gradients(tiny_policy_factory):
    from warmstart.episode import collate
    from warmstart.learn.grpo import GRPOConfig, grpo_update
    from warmstart.learn.optim import make_adamw
    from warmstart.learn.supervised import demo_episodes, sft_update

    policy = tiny_policy_factory(hidden_size=16, num_layers=1, num_heads=2)
    opt = make_adamw(policy.model.parameters(), 1e-2)
    eps = demo_episodes(policy, [("1+2=", "3#3"), ("2+2=", "4#4")])
    before = [p.detach().clone() for p in policy.model.parameters()]
    first = next(policy.model.parameters())
    h = first.register_hook(lambda g: g * float("nan"))  # a poisoned backward pass
    out = sft_update(policy, opt, eps)
    assert out["skipped_updates"] == 1 and out["updates"] == 0
    assert all(torch.equal(a, b) for a, b in zip(before, policy.model.parameters()))
    for i, e in enumerate(eps):
        e.reward, e.group = float(i), 0
    batch = collate(eps, policy.pad_id)
    cfg = GRPOConfig(kind="grpo", minibatch_size=1, mu=2)
    adv = torch.ones_like(batch.old_logprobs)
    upd = grpo_update(policy, opt, batch, adv, torch.zeros_like(adv), None, cfg)
    assert upd["skipped_updates"] == 4 and upd["updates"] == 0
    assert all(torch.equal(a, b) for a, b in zip(before, policy.model.parameters()))
    h.remove()
    assert sft_update(policy, opt, eps)["skipped_updates"] == 0
    assert not all(torch.equal(a, b) for a, b in zip(before, policy.model.parameters()))


def test_ppo_update_skips_non_finite_minibatches():
    from warmstart.episode import Transitions
    from warmstart.learn.ppo import PPOConfig, update
    from warmstart.policies.mlp import MLPPolicy, MLPPolicyConfig

    import gymnasium as gym

    pol = MLPPolicy.from_spaces(gym.spaces.Box(-1, 1, (3,)), gym.spaces.Discrete(2), MLPPolicyConfig(kind="mlp", hidden=[8]))
    T, N = 4, 2
    obs = torch.randn(T, N, 3)
    with torch.no_grad():
        act, logp = pol.sample(obs.reshape(T * N, 3))
        val = pol.value(obs.reshape(T * N, 3))
    roll = Transitions(obs=obs, actions=act.reshape(T, N, *act.shape[1:]), logprobs=logp.reshape(T, N),
                       rewards=torch.zeros(T, N), terminated=torch.zeros(T, N), truncated=torch.zeros(T, N),
                       values=val.reshape(T, N))
    cfg = PPOConfig(kind="ppo", num_minibatches=2, update_epochs=1)
    opt = torch.optim.Adam(pol.parameters(), lr=1e-2)
    before = [p.detach().clone() for p in pol.parameters()]
    adv = torch.full((T, N), float("nan"))
    out = update(pol, opt, roll, adv, torch.zeros(T, N), cfg)
    assert out["skipped_updates"] == 2 and out["updates"] == 0
    assert all(torch.equal(a, b) for a, b in zip(before, pol.parameters()))


def test_diverging_run_stops_clearly_and_keeps_only_finite_checkpoints(recipe, tmp_path):
    run_dir = tmp_path / "div"
    res = invoke("run", recipe, "--run-dir", run_dir, "--quiet", "--set", "phases.sft.lr=1e30")
    assert res.exit_code == 2
    assert "non-finite" in res.output or "not finite" in res.output
    for d in (run_dir / "checkpoints").glob("step-*"):
        sd = __import__("safetensors.torch", fromlist=["load_file"]).load_file(d / "model.safetensors")
        assert all(torch.isfinite(t).all() for t in sd.values()), d
    assert not (run_dir / "final").exists()
    assert all(json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines())


def test_rotation_keeps_the_newest_good_checkpoint(reference):
    assert steps(reference)[-1] == 9  # the phase-end checkpoint of the last phase is always kept
    from warmstart.engine.rundir import verify_manifest

    assert all(verify_manifest(d) is None for d in (reference / "checkpoints").glob("step-*"))


# ------------------------------------------------------------------------ locks and run dirs


def test_second_run_in_a_locked_directory_is_refused_naming_the_pid(reference, recipe, tmp_path):
    from warmstart.engine.rundir import RunLock

    run_dir = unfinish(reference, tmp_path / "locked")
    before = (run_dir / "metrics.jsonl").read_bytes()
    lock = RunLock(run_dir)
    lock.acquire()
    try:
        res = invoke("run", recipe, "--run-dir", run_dir, "--resume", "--quiet")
    finally:
        lock.release()
    assert res.exit_code == 2 and f"PID {os.getpid()}" in res.output and "in use" in res.output
    assert (run_dir / "metrics.jsonl").read_bytes() == before
    # the lock file left behind (as after kill -9) does not block --resume
    res = invoke("run", recipe, "--run-dir", run_dir, "--resume", "--quiet")
    assert res.exit_code == 0, res.output
    assert rows(run_dir) == rows(reference)


@pytest.mark.parametrize("case", ["file", "foreign", "resume_missing", "resume_not_a_run"])
def test_run_directories_that_cannot_hold_this_run_are_refused(recipe, tmp_path, case):
    d = tmp_path / "d"
    extra = []
    if case == "file":
        d.write_text("x")
    elif case == "foreign":
        d.mkdir()
        (d / "thesis.tex").write_text("mine")
    elif case == "resume_not_a_run":
        d.mkdir()
        extra = ["--resume"]
    else:
        extra = ["--resume"]
    res = invoke("run", recipe, "--run-dir", d, "--quiet", *extra)
    assert res.exit_code == 2 and str(d) in res.output.replace("\n", ""), res.output
    if case == "foreign":
        assert sorted(p.name for p in d.iterdir()) == ["thesis.tex"]  # nothing written, not even a lock
    if case == "resume_missing":
        assert not d.exists()


def test_overwrite_replaces_a_run_and_keeps_foreign_files(reference, recipe, tmp_path):
    d = unfinish(reference, tmp_path / "ow")
    (d / "notes.txt").write_text("keep me")
    res = invoke("run", recipe, "--run-dir", d, "--quiet", "--set", "phases.grpo.steps=1", "--overwrite")
    assert res.exit_code == 0, res.output
    assert (d / "notes.txt").read_text() == "keep me" and steps(d)[-1] == 7
    assert rows(d)[-1]["step"] == 7


# ---------------------------------------------------------------------------- damaged files


@pytest.mark.parametrize("damage", ["truncate_weights", "flip_state", "delete_manifest_file"])
def test_resume_falls_back_to_the_newest_intact_checkpoint(reference, recipe, tmp_path, damage, capfd):
    d = unfinish(reference, tmp_path / "run")
    newest = d / "checkpoints" / f"step-{steps(d)[-1]}"
    if damage == "truncate_weights":
        f = newest / "model.safetensors"
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    elif damage == "flip_state":
        f = newest / "trainer_state.pt"
        b = bytearray(f.read_bytes())
        b[len(b) // 2] ^= 0xFF
        f.write_bytes(bytes(b))
    else:
        (newest / "config.json").unlink()
    res = invoke("run", recipe, "--run-dir", d, "--resume", "--quiet")
    assert res.exit_code == 0, res.output
    err = res.output
    assert f"checkpoint {newest} is damaged" in err and "Falling back" in err
    assert rows(d) == rows(reference)


@pytest.mark.parametrize("damage", ["short", "nul_tail", "garbage_middle", "missing"])
def test_resume_repairs_the_log_and_says_so(reference, recipe, tmp_path, damage, capfd):
    d = unfinish(reference, tmp_path / "run")
    for k in steps(d)[1:]:  # resume from the first kept checkpoint (the end of SFT): GRPO reruns
        shutil.rmtree(d / "checkpoints" / f"step-{k}")
    start = steps(d)[0]
    log = d / "metrics.jsonl"
    data = log.read_bytes()
    if damage == "short":
        log.write_bytes(data[: len(data) // 3])
    elif damage == "nul_tail":
        log.write_bytes(data[: len(data) // 3] + b"\0" * 100)
    elif damage == "garbage_middle":
        lines = data.split(b"\n")
        lines[2] = b'{"step": 3, "loss": 0.1'
        log.write_bytes(b"\n".join(lines))
    else:
        log.unlink()
    res = invoke("run", recipe, "--run-dir", d, "--resume", "--quiet")
    assert res.exit_code == 0, res.output
    assert "metrics.jsonl" in res.output
    got = rows(d)  # every line parses, no NUL bytes, the rows after the checkpoint are exact
    assert b"\0" not in log.read_bytes()
    ref = rows(reference)
    tail = [r for r in ref if r["step"] > start]
    assert start == 6 and len(tail) == 4 and got[-len(tail):] == tail
    assert all(r in ref for r in got)


def test_full_disk_during_a_checkpoint_is_one_paragraph_and_resumable(reference, recipe, tmp_path, monkeypatch):
    d = tmp_path / "full"
    real_save = torch.save
    calls = {"n": 0}

    def save(obj, f, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:  # the third checkpoint's trainer state hits a full disk
            raise OSError(errno.ENOSPC, "No space left on device", str(f))
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save)
    res = invoke("run", recipe, "--run-dir", d, "--quiet")
    monkeypatch.setattr(torch, "save", real_save)
    assert res.exit_code == 2 and "disk is full" in res.output and "--resume" in res.output
    res = invoke("run", recipe, "--run-dir", d, "--resume", "--quiet")
    assert res.exit_code == 0, res.output
    assert rows(d) == rows(reference)


def test_a_failed_plot_still_exits_0_with_a_warning(recipe, tmp_path, monkeypatch, capfd):
    import warmstart.engine.run as run_mod

    def boom(*a, **k):
        raise OSError(errno.EACCES, "Permission denied", "curves.png")

    monkeypatch.setattr(run_mod, "plot_curves", boom)
    res = invoke("run", recipe, "--run-dir", tmp_path / "p", "--quiet", "--smoke")
    assert res.exit_code == 0, res.output
    assert "could not be written" in res.output and (tmp_path / "p" / "summary.json").exists()


# ----------------------------------------------------------------------------------- bad inputs


def _jsonl_recipe(tmp_path, data: bytes, **task):
    (tmp_path / "data.jsonl").write_bytes(data)
    extra = "".join(f"\n  {k}: {v}" for k, v in task.items())
    text = TINY.replace("kind: chain_arithmetic\n  n_terms: 2\n  n_demos: 64\n  n_test: 8",
                        f"kind: jsonl\n  path: {tmp_path / 'data.jsonl'}\n  max_new_tokens: 8{extra}")
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


GOOD_LINE = b'{"prompt": "1+1=", "answer": "2", "solution": "1+1=2#2"}\n'


@pytest.mark.parametrize("data,expect,task", [
    (GOOD_LINE * 3 + b'{"prompt": "2+2=", "answer": null}\n', "data.jsonl:4: 'answer' is null", {}),
    (GOOD_LINE * 2 + b'{"prompt": "' + b"1+" * 2000 + b'", "answer": "1"}\n', "data.jsonl:3: the line is longer", {"max_line_bytes": 1024}),
    (GOOD_LINE + b'{"prompt": "caf\xe9", "answer": "1"}\n', "data.jsonl:2: not UTF-8", {}),
    (GOOD_LINE * 2 + b'{"prompt": "' + b"1+" * 30 + b'", "answer": "1"}\n', "data.jsonl:3: the prompt is", {}),
    (GOOD_LINE + b"[" * 100000 + b"\n", "data.jsonl:2", {}),
])
def test_bad_data_names_file_and_line_before_anything_is_written(tmp_path, data, expect, task):
    p = _jsonl_recipe(tmp_path, data, **task)
    res = invoke("run", p, "--run-dir", tmp_path / "run", "--quiet")
    assert res.exit_code == 2 and expect in res.output.replace("\n", ""), res.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("mutate,expect", [
    (lambda t: t.replace("phases:\n  - kind: sft\n    steps: 6\n    batch_size: 8\n  - kind: grpo\n    steps: 3\n"
                         "    prompts_per_step: 2\n    group_size: 2\n", "phases: []\n"), "phases"),
    (lambda t: t.replace("smoke:\n  phases.sft.steps: 1\n", ""), "--smoke needs a `smoke:` block"),
    (lambda t: t.encode("utf-8").replace(b"tiny-faults", b"tiny-\xff") , ":2: the recipe is not UTF-8"),
])
def test_nonsense_recipes_are_refused_before_anything_is_written(tmp_path, mutate, expect):
    text = mutate(TINY)
    p = tmp_path / "r.yaml"
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    res = invoke("run", p, "--run-dir", tmp_path / "run", "--quiet", "--smoke")
    assert res.exit_code == 2 and expect in res.output.replace("\n", ""), res.output
    assert not (tmp_path / "run").exists()


def test_user_text_is_printed_literally(tmp_path):
    res = invoke("run", tmp_path / "[bold]x[/bold] [red]y.yaml", "--quiet")
    assert res.exit_code == 2 and "[bold]x[/bold] [red]y.yaml" in res.output.replace("\n", "")


@pytest.mark.parametrize("args,expect", [
    (["eval", "CK", "--task", "chain_arithmetic", "--n", "0"], "--n 0"),
    (["eval", "CK", "--task", "chain_arithmetic", "--samples", "-1"], "--samples -1"),
    (["eval", "CK", "--task", "chain_arithmetic", "--temperature", "-1"], "temperature"),
    (["search", "CK", "--task", "chain_arithmetic", "--n", "0"], "--n 0"),
    (["search", "CK", "--task", "chain_arithmetic", "--budget", "-8"], "--budget -8"),
    (["scaling", "CK", "--task", "chain_arithmetic", "--out", "o.json", "--budgets", "a,b"], "'a' is not a whole number"),
    (["scaling", "CK", "--task", "chain_arithmetic", "--out", "o.json", "--budgets", "64,-1"], "-1 is not a budget"),
])
def test_command_line_options_are_validated(reference, args, expect):
    args = [str(reference / "final") if a == "CK" else a for a in args]
    res = invoke(*args)
    assert res.exit_code == 2 and expect in res.output.replace("\n", ""), res.output


# ------------------------------------------------------------------------------ callbacks


REWARDS_MODULE = """\
import math, time
from warmstart.config import RewardConfig
from warmstart.registry import REWARDS

@REWARDS.register("sleepy", RewardConfig)
def make_sleepy(cfg):
    def sleepy(e):
        time.sleep(30)
        return 1.0
    return sleepy

@REWARDS.register("nan_reward", RewardConfig)
def make_nan(cfg):
    return lambda e: math.nan
"""


@pytest.mark.parametrize("kind,expect", [("sleepy", "did not return within 0.2 s"), ("nan_reward", "rewards must be finite")])
def test_hanging_or_non_finite_reward_is_reported_and_the_run_finishes(tmp_path, kind, expect, capfd):
    (tmp_path / "my_faulty_rewards.py").write_text(REWARDS_MODULE)
    text = TINY.replace("rewards:\n  - kind: exact_answer\n", f"imports: [my_faulty_rewards]\nrewards:\n  - kind: exact_answer\n  - kind: {kind}\n")
    text += "guard:\n  callback_timeout_s: 0.2\n"
    p = tmp_path / "r.yaml"
    p.write_text(text)
    t0 = time.time()
    res = invoke("run", p, "--run-dir", tmp_path / "run", "--quiet", "--smoke")
    assert res.exit_code == 0, res.output
    assert time.time() - t0 < 25  # 3 GRPO steps + eval: one time-out per batch, not one per episode
    assert f"reward '{kind}' failed" in res.output
    grpo = [r for r in rows(tmp_path / "run") if r["phase"] == "grpo"]
    assert grpo[-1][f"reward_failures/{kind}"] >= 4


# ------------------------------------------------------------------------------ subprocesses


def _cli(args, cwd):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "warmstart.engine.cli", *map(str, args)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_kill_9_during_log_appends_then_a_concurrent_start_is_refused_and_resume_is_exact(reference, recipe, tmp_path, root):
    run_dir = tmp_path / "k"
    a = _cli(["run", recipe, "--run-dir", run_dir, "--quiet"], root)
    log = run_dir / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.exists() and log.stat().st_size > 0):
        time.sleep(0.01)
    os.kill(a.pid, signal.SIGSTOP)  # frozen mid-run (in the first steps' appends), still holding the lock
    b = invoke("run", recipe, "--run-dir", run_dir, "--resume", "--quiet")
    assert b.exit_code == 2 and f"PID {a.pid}" in b.output
    os.kill(a.pid, signal.SIGKILL)
    a.wait()
    assert not (run_dir / "summary.json").exists()  # it really died mid-run
    res = invoke("run", recipe, "--run-dir", run_dir, "--resume", "--quiet")
    assert res.exit_code == 0, res.output
    assert rows(run_dir) == rows(reference)


def test_time_limit_raises_and_gives_an_enclosing_limit_its_remaining_time():
    import signal

    from warmstart.errors import CallbackTimeout, time_limit

    with pytest.raises(CallbackTimeout, match="did not return within 0.05 s"):
        with time_limit(0.05, "reward 'x'"):
            time.sleep(5)
    signal.setitimer(signal.ITIMER_REAL, 30)  # an enclosing limit (a harness, another callback)
    old = signal.signal(signal.SIGALRM, lambda *_: None)
    try:
        for _ in range(5):
            with time_limit(10, "reward 'y'"):
                pass
        assert 29 < signal.getitimer(signal.ITIMER_REAL)[0] <= 30  # not shortened by the inner limits
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def test_more_held_out_problems_than_exist_is_an_error_not_a_hang(reference):
    res = invoke("eval", reference / "final", "--task", "chain_arithmetic", "--set", "n_terms=2")
    assert res.exit_code == 2 and "task.n_test 1000" in res.output and "only 200 distinct" in res.output.replace("\n", " ")
