"""Fault corpus: bad inputs and faults tried as a hostile-but-fair user would, each run through the
real ``warmstart`` CLI (in-process, so a traceback is caught and counted, not hidden), with its
outcome: a clear error (exit 2) naming the culprit, or a run that finishes (exit 0) -- and, where a
run directory was damaged, whether it resumed to the same numbers as an undamaged run.

Prints a Markdown table and the totals (tracebacks, hangs, runs lost or corrupted, errors that do
not name their culprit). Command:

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/fault_corpus.py
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import torch

torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# the suite's tiny recipe without its first (comment) line, so the name sits on line 1
TINY = (Path(__file__).resolve().parents[1] / "tests" / "fault_tiny.yaml").read_text().split("\n", 1)[1].replace("tiny-faults", "corpus")
PHASES = "phases:\n  - kind: sft\n    steps: 6\n    batch_size: 8\n  - kind: grpo\n    steps: 3\n    prompts_per_step: 2\n    group_size: 2\n"
TASK = "kind: chain_arithmetic\n  n_terms: 2\n  n_demos: 64\n  n_test: 8"
TIMING = {"time_step_s", "tokens_per_s", "sample_tokens_per_s", "train_tokens_per_s", "eval_time_s"}
GOOD = b'{"prompt": "1+1=", "answer": "2", "solution": "1+1=2#2"}\n'

USER_MODULE = """\
import math, time
from warmstart.config import RewardConfig
from warmstart.registry import REWARDS
from warmstart.rewards import batched

def _term(name, fn):
    REWARDS.register(name, RewardConfig)(lambda cfg: fn)

_term("c_nan", lambda e: math.nan)
_term("c_inf", lambda e: math.inf)
_term("c_str", lambda e: "high")
_term("c_raise", lambda e: 1 / 0)
_term("c_sleep", lambda e: time.sleep(60) or 1.0)
_term("c_turns", lambda e: [1.0, 2.0, 3.0])
_term("c_batched", batched(lambda eps: [1.0]))
"""

# chart tools whose read_value misbehaves on bar C, one way per registered tool set (served over HTTP by the run)
TOOLS_MODULE = """\
import os, time
from warmstart.registry import TOOLSETS
from warmstart.tools import tool
from warmstart.tools.chart import ChartTools, ChartToolsConfig

def _faulty(fault):
    class Faulty(ChartTools):
        @tool
        def read_value(self, label: str) -> str:
            \"\"\"Read the exact value of a bar.

            Args:
                label: the bar's label, e.g. "C"
            \"\"\"
            if label == "C":
                if fault == "hang":
                    time.sleep(30)
                elif fault == "raise":
                    raise RuntimeError("the OCR model crashed")
                elif fault == "garbage":
                    return object()
                elif fault == "die":
                    os._exit(3)
            return super().read_value(label)
    return Faulty

for _f in ("hang", "raise", "garbage", "die"):
    TOOLSETS.register("chart_" + _f, ChartToolsConfig)(lambda cfg, f=_f: _faulty(f))
"""

TOOLS_RECIPE = """\
name: corpus-tools
seed: 0
imports: [my_corpus_tools]
task:
  kind: chart_qa
  n_bars: 3
  questions: [value]
  n_demos: 24
  n_train: 20
  n_test: 4
  tools: {toolset: TOOLSET, serve: http, timeout_s: 0.5}
policy: {kind: lm, hidden_size: 16, num_layers: 1, num_heads: 2, max_position: 768}
phases:
  - kind: sft
    steps: 2
    batch_size: 4
eval: {n: 4}
checkpoint: {every: 0}
"""


class Hang(Exception):
    pass


def rows(run_dir: Path) -> list[dict]:
    out = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        out.append({k: v for k, v in json.loads(line).items() if k not in TIMING})
    return out


class Corpus:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.n = 0
        self.recipe = self.write("tiny.yaml", TINY)
        self.ref = tmp / "reference"
        res = self.cli("run", self.recipe, "--run-dir", self.ref, "--quiet")
        assert res.exit_code == 0, res.output
        self.ref_rows = rows(self.ref)
        (tmp / "my_corpus_rewards.py").write_text(USER_MODULE)
        (tmp / "my_corpus_tools.py").write_text(TOOLS_MODULE)
        self.results: list[dict] = []

    def fresh(self) -> Path:
        self.n += 1
        d = self.tmp / f"case{self.n}"
        d.mkdir()
        return d

    def write(self, name: str, text, where: Path | None = None) -> Path:
        p = (where or self.tmp) / name
        p.write_bytes(text if isinstance(text, bytes) else text.encode())
        return p

    def cli(self, *args):
        from typer.testing import CliRunner

        from warmstart.engine.cli import app

        return CliRunner().invoke(app, [str(a) for a in args])

    def unfinished(self, keep_from: int | None = None) -> Path:
        """A copy of the reference run as if it was stopped after a checkpoint."""
        d = self.fresh() / "run"
        shutil.copytree(self.ref, d)
        for name in ("final", "summary.json", "curves.png"):
            p = d / name
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        if keep_from is not None:
            for c in (d / "checkpoints").glob("step-*"):
                if int(c.name.split("-")[1]) > keep_from:
                    shutil.rmtree(c)
        return d

    def case(self, what: str, culprit: str, fn, expect_exit: int = 2, intact: Path | None = None, limit: float = 120,
             intact_after: int | None = None):
        """Run one case; ``culprit`` must appear in the output; ``intact``: a run dir that must end
        with the reference run's metrics."""
        def alarm(*_):
            raise Hang()

        old = signal.signal(signal.SIGALRM, alarm)
        signal.setitimer(signal.ITIMER_REAL, limit)
        t0 = time.time()
        try:
            res = fn()
            exc = res.exception if res.exception is not None and not isinstance(res.exception, SystemExit) else None
            out = res.output
            code = res.exit_code
        except Hang:
            exc, out, code = Hang(), "", None
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
        flat = " ".join(out.split())
        if isinstance(exc, Hang):
            outcome = "HANG"
        elif exc is not None or "Traceback" in out:
            outcome = f"TRACEBACK ({type(exc).__name__})"
        elif code == 2:
            outcome = "clear error"
        elif code == 0:
            outcome = "finished" + (" + warning" if "warning:" in out else "")
        else:
            outcome = f"exit {code}"
        named = culprit in flat
        lost = None
        if intact is not None and outcome.startswith(("finished", "clear")):
            try:
                got = rows(intact)
                if intact_after is None:
                    lost = got != self.ref_rows
                else:  # the log was damaged on purpose: what is kept is exact, the rerun rows too
                    tail = [r for r in self.ref_rows if r["step"] > intact_after]
                    lost = got[-len(tail):] != tail or any(r not in self.ref_rows for r in got)
            except Exception:
                lost = True
        ok = (not outcome.startswith(("HANG", "TRACEBACK")) and named and lost is not True
              and (code == expect_exit))
        msg = flat.split("error: ", 1)[-1] if "error: " in flat else flat
        msg = msg.replace(str(self.tmp), "<tmp>")
        self.results.append({"what": what, "outcome": outcome, "named": named, "lost": lost, "ok": ok,
                             "msg": msg[:150], "s": time.time() - t0})


def build(c: Corpus) -> None:
    R = c.recipe

    def recipe_with(text, name="r.yaml"):
        return c.write(name, text, c.fresh())

    def run(p, *extra, run_dir=None):
        return lambda: c.cli("run", p, "--run-dir", run_dir or (c.fresh() / "run"), "--quiet", *extra)

    # --------------------------------------------------------------------------- recipes
    c.case("recipe path that does not exist", "nope.yaml", lambda: c.cli("run", c.tmp / "nope.yaml"))
    c.case("recipe path with terminal markup `[bold]x[/bold].yaml`", "[bold]x[/bold].yaml",
           lambda: c.cli("run", c.tmp / "[bold]x[/bold].yaml"))
    c.case("recipe path is a directory", "is a directory", lambda: c.cli("run", c.fresh()))
    p = recipe_with(TINY.encode().replace(b"corpus", b"corp\xe9s"))
    c.case("recipe in Latin-1 (not UTF-8)", "r.yaml:1", run(p))
    p = recipe_with(os.urandom(256))
    c.case("recipe of random bytes", "r.yaml", run(p))
    c.case("empty recipe file", "name", run(recipe_with("")))
    c.case("recipe that is a YAML list", "mapping", run(recipe_with("- a\n- b\n")))
    c.case("recipe with a tab indent (invalid YAML)", "line", run(recipe_with(TINY.replace("  n_terms", "\tn_terms"))))
    c.case("unknown top-level key (`seeed`)", "seeed", run(recipe_with(TINY.replace("seed: 5", "seeed: 5"))))
    c.case("misspelled phase key (`lrr`)", "lrr", run(recipe_with(TINY.replace("batch_size: 8", "batch_size: 8\n    lrr: 1e-3"))))
    c.case("`seed: zero`", "seed", run(recipe_with(TINY.replace("seed: 5", "seed: zero"))))
    c.case("empty phase list `phases: []`", "phases", run(recipe_with(TINY.replace(PHASES, "phases: []\n"))))
    c.case("no `phases:` at all", "phases", run(recipe_with(TINY.replace(PHASES, ""))))
    c.case("unknown phase kind `sftt`", "sftt", run(recipe_with(TINY.replace("kind: sft", "kind: sftt"))))
    c.case("unknown task kind", "chain_arithmetc", run(recipe_with(TINY.replace("chain_arithmetic", "chain_arithmetc"))))
    c.case("`--set` without `=`", "phases.sft.lr", run(R, "--set", "phases.sft.lr"))
    c.case("`--set` on a phase that does not exist", "nophase", run(R, "--set", "phases.nophase.lr=1"))
    c.case("`--set phases.sft.steps=-1`", "steps", run(R, "--set", "phases.sft.steps=-1"))
    c.case("`--set phases.sft.steps=[1,2]`", "steps", run(R, "--set", "phases.sft.steps=[1,2]"))
    c.case("`--smoke` on a recipe without `smoke:`", "smoke", run(recipe_with(TINY.replace("smoke:\n  phases.sft.steps: 1\n", "")), "--smoke"))
    c.case("`imports:` a module that does not exist", "no_such_module", run(recipe_with("imports: [no_such_module]\n" + TINY)))
    d = c.fresh()
    c.write("raising_mod.py", "raise RuntimeError('boom at import')\n", d)
    c.case("`imports:` a module that raises", "raising_mod", run(c.write("r.yaml", "imports: [raising_mod]\n" + TINY, d)))
    c.case("two phases with the same name", "unique", run(recipe_with(TINY.replace("kind: grpo", "kind: grpo\n    name: sft"))))
    c.case("`checkpoint.keep: 0`", "keep", run(recipe_with(TINY.replace("keep: 3", "keep: 0"))))
    c.case("`eval.n: 0`", "eval.n", run(recipe_with(TINY.replace("n: 4", "n: 0"))))
    c.case("`guard.callback_timeout_s: -1`", "callback_timeout_s", run(recipe_with(TINY + "guard:\n  callback_timeout_s: -1\n")))
    big = c.fresh() / "big.yaml"
    with open(big, "wb") as f:
        f.write(TINY.encode())
        f.write(b"#" * (17 << 20))
    c.case("a 17 MB recipe file", "bytes", run(big))

    # -------------------------------------------------------------------------- tools
    # each tool set's read_value fails on bar C; the run's scripted demonstrations call it (over HTTP):
    # every failure is an error observation, the demonstrations it spoiled are dropped with a warning
    # that names the fault, and the run finishes
    for toolset, fault, kind in (("chart_hang", "hangs past its time limit", "timeout"), ("chart_raise", "raises", "raised"),
                                 ("chart_garbage", "returns a non-text object", "bad_output"),
                                 ("chart_die", "kills its server process", "server_down")):
        p = recipe_with(TOOLS_RECIPE.replace("TOOLSET", toolset))
        c.case(f"a tool that {fault} (chart_qa, tools over HTTP)", kind, run(p), expect_exit=0)

    # ------------------------------------------------------------------------- run dirs
    f = c.fresh() / "afile"
    f.write_text("x")
    c.case("`--run-dir` is a file", "is a file", run(R, run_dir=f))
    c.case("`--run-dir` below a file (`afile/run`)", "afile", run(R, run_dir=f / "run"))
    d = c.fresh()
    (d / "thesis.tex").write_text("mine")
    c.case("`--run-dir` holds someone's files, no run", "thesis.tex", run(R, run_dir=d))
    c.case("`--run-dir` already holds a run, no `--resume`", "already holds a run", run(R, run_dir=c.ref))
    c.case("`--resume` on a directory that does not exist", "does not exist", run(R, "--resume", run_dir=c.tmp / "missing"))
    c.case("`--resume` on an empty directory", "holds no run", run(R, "--resume", run_dir=c.fresh()))
    c.case("`--resume` with a different recipe (`--set seed=9`)", "recipe differs", run(R, "--resume", "--set", "seed=9", run_dir=c.ref))
    c.case("`--resume` and `--overwrite` together", "--overwrite", run(R, "--resume", "--overwrite", run_dir=c.ref))
    c.case("`--resume` without `--run-dir`", "--run-dir", lambda: c.cli("run", R, "--resume"))
    c.case("`--run-dir` name of 300 characters", "shorter path", run(R, run_dir=c.fresh() / ("x" * 300)))
    d = c.unfinished()
    (d / "notes.txt").write_text("keep")
    c.case("`--overwrite` on an old run (other files kept)", "", run(R, "--overwrite", run_dir=d), expect_exit=0, intact=d)

    from warmstart.engine.rundir import RunLock

    d = c.unfinished(keep_from=6)

    def locked():
        lock = RunLock(d)
        lock.acquire()
        try:
            return c.cli("run", R, "--run-dir", d, "--resume", "--quiet")
        finally:
            lock.release()

    c.case("a second run while the first holds the directory", f"PID {os.getpid()}", locked)
    (d / ".lock").write_text("999999\n")
    c.case("stale lock file of a killed run, then `--resume`", "", run(R, "--resume", run_dir=d), expect_exit=0, intact=d)

    # ------------------------------------------------------------------- damaged runs
    def damaged(what, mutate, culprit, keep_from=None):
        d = c.unfinished(keep_from)
        mutate(d)
        log_damage = keep_from is not None and "metrics" in what
        c.case(what, culprit, run(R, "--resume", run_dir=d), expect_exit=0, intact=d,
               intact_after=keep_from if log_damage else None)

    def newest(d):
        return max((d / "checkpoints").glob("step-*"), key=lambda x: int(x.name.split("-")[1]))

    def truncate(p):
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])

    def flip(p):
        b = bytearray(p.read_bytes())
        b[len(b) // 2] ^= 0xFF
        p.write_bytes(bytes(b))

    damaged("newest checkpoint's weights truncated", lambda d: truncate(newest(d) / "model.safetensors"), "damaged")
    damaged("newest checkpoint's trainer state: one byte flipped", lambda d: flip(newest(d) / "trainer_state.pt"), "damaged")
    damaged("newest checkpoint's config.json deleted", lambda d: (newest(d) / "config.json").unlink(), "damaged")
    damaged("newest checkpoint's manifest.json is garbage", lambda d: (newest(d) / "manifest.json").write_text("{{"), "damaged")
    damaged("every checkpoint's weights truncated", lambda d: [truncate(x / "model.safetensors") for x in (d / "checkpoints").glob("step-*")],
            "from the beginning")
    damaged("metrics.jsonl cut to a third", lambda d: truncate(d / "metrics.jsonl") or truncate(d / "metrics.jsonl"), "metrics.jsonl", 6)
    damaged("metrics.jsonl: NUL bytes after a torn line",
            lambda d: (d / "metrics.jsonl").write_bytes((d / "metrics.jsonl").read_bytes()[:300] + b"\0" * 64), "metrics.jsonl", 6)

    def garble(d):
        lines = (d / "metrics.jsonl").read_bytes().split(b"\n")
        lines[1] = b'{"step": 2, "loss":'
        (d / "metrics.jsonl").write_bytes(b"\n".join(lines))

    damaged("metrics.jsonl: a torn line in the middle", garble, "metrics.jsonl", 6)
    damaged("metrics.jsonl deleted", lambda d: (d / "metrics.jsonl").unlink(), "metrics.jsonl", 6)
    damaged("metrics.jsonl overwritten with binary", lambda d: (d / "metrics.jsonl").write_bytes(os.urandom(2000)), "metrics.jsonl", 6)
    damaged("leftover `.tmp-step-*` folder from a killed save",
            lambda d: (d / "checkpoints" / ".tmp-step-8-123").mkdir(), "", 6)
    d = c.unfinished()
    (d / "config.yaml").unlink()
    c.case("config.yaml deleted, then `--resume`", "holds no run", run(R, "--resume", run_dir=d))
    d = c.unfinished()
    (d / "artifacts").mkdir(exist_ok=True)
    (d / "artifacts" / "index.json").write_text("{not json")
    c.case("artifacts/index.json damaged, then `--resume`", "index.json", run(R, "--resume", run_dir=d))

    # -------------------------------------------------------------------- numerics, callbacks
    c.case("learning rate 1e30 (weights diverge)", "finite", run(R, "--set", "phases.sft.lr=1e30"))
    c.case("learning rate `inf`", "finite", run(R, "--set", "phases.sft.lr=inf"))
    for kind, what, culprit in [("c_nan", "reward returns NaN", "c_nan"), ("c_inf", "reward returns inf", "c_inf"),
                                ("c_str", "reward returns a string", "c_str"), ("c_raise", "reward raises ZeroDivisionError", "c_raise"),
                                ("c_sleep", "reward hangs (sleeps 60 s), limit 0.3 s", "did not return within 0.3 s"),
                                ("c_turns", "per-turn reward of the wrong length", "c_turns"),
                                ("c_batched", "batched reward returns 1 value for 4 episodes", "c_batched")]:
        text = TINY.replace("rewards:\n  - kind: exact_answer\n",
                            f"imports: [my_corpus_rewards]\nrewards:\n  - kind: exact_answer\n  - kind: {kind}\n")
        p = c.write(f"{kind}.yaml", text + "guard:\n  callback_timeout_s: 0.3\n")
        c.case(what, culprit, run(p, "--smoke"), expect_exit=0)

    # ----------------------------------------------------------------------------- data
    def jsonl(what, data: bytes, culprit, **task):
        d = c.fresh()
        (d / "data.jsonl").write_bytes(data)
        extra = "".join(f"\n  {k}: {v}" for k, v in task.items())
        p = c.write("r.yaml", TINY.replace(TASK, f"kind: jsonl\n  path: {d / 'data.jsonl'}\n  max_new_tokens: 8{extra}"), d)
        c.case(what, culprit, run(p, run_dir=d / "run"))

    jsonl("JSONL: null answer", GOOD * 3 + b'{"prompt": "2+2=", "answer": null}\n', "data.jsonl:4")
    jsonl("JSONL: a 2 MB line", GOOD + b'{"prompt": "' + b"1" * (2 << 20) + b'", "answer": "1"}\n', "data.jsonl:2")
    jsonl("JSONL: Latin-1 text", GOOD + '{"prompt": "café", "answer": "1"}\n'.encode("latin-1"), "data.jsonl:2")
    jsonl("JSONL: nested 100000 deep", GOOD + b"[" * 100000 + b"\n", "data.jsonl:2")
    jsonl("JSONL: prompt longer than the policy's context", GOOD * 2 + b'{"prompt": "' + b"1+" * 40 + b'", "answer": "1"}\n', "data.jsonl:3")
    jsonl("JSONL: solution longer than the context", GOOD + b'{"prompt": "1+1=", "answer": "2", "solution": "' + b"2" * 80 + b'"}\n', "data.jsonl:2")
    jsonl("JSONL: empty file", b"", "no problems")
    jsonl("JSONL: a line that is an array", GOOD + b"[1, 2]\n", "data.jsonl:2")
    jsonl("JSONL: empty prompt", GOOD + b'{"prompt": " ", "answer": "1"}\n', "data.jsonl:2")
    jsonl("JSONL: answer is an object", GOOD + b'{"prompt": "1+1=", "answer": {"v": 2}}\n', "data.jsonl:2")
    jsonl("JSONL: missing answer key", GOOD + b'{"prompt": "1+1="}\n', "data.jsonl:2")
    jsonl("JSONL: not JSON at all", GOOD + b"prompt=1+1\n", "data.jsonl:2")
    d = c.fresh()
    p = c.write("r.yaml", TINY.replace(TASK, f"kind: jsonl\n  path: {d}"), d)
    c.case("JSONL path is a directory", "is a directory", run(p))
    p = c.write("r2.yaml", TINY.replace(TASK, f"kind: jsonl\n  path: {d / 'missing.jsonl'}"), d)
    c.case("JSONL path does not exist", "missing.jsonl", run(p))

    # -------------------------------------------------------------------- filesystem faults
    real_save = torch.save
    d = c.fresh() / "run"

    def full_disk():
        n = {"k": 0}

        def save(obj, f, *a, **k):
            n["k"] += 1
            if n["k"] == 3:
                raise OSError(errno.ENOSPC, "No space left on device", str(f))
            return real_save(obj, f, *a, **k)

        torch.save = save
        try:
            return c.cli("run", R, "--run-dir", d, "--quiet")
        finally:
            torch.save = real_save

    c.case("disk full (ENOSPC) while writing a checkpoint", "disk is full", full_disk)
    c.case("... then `--resume` once space is back", "", run(R, "--resume", run_dir=d), expect_exit=0, intact=d)

    import warmstart.engine.run as run_mod

    def failed_plot():
        real = run_mod.plot_curves

        def boom(*a, **k):
            raise OSError(errno.EROFS, "Read-only file system", "curves.png")

        run_mod.plot_curves = boom
        try:
            return c.cli("run", R, "--run-dir", c.fresh() / "run", "--quiet", "--smoke")
        finally:
            run_mod.plot_curves = real

    c.case("the plot cannot be written (read-only)", "curves.png", failed_plot, expect_exit=0)

    def readonly_summary():
        real = Path.write_text

        def wt(self, *a, **k):
            if self.name == "summary.json.tmp":
                raise OSError(errno.EROFS, "Read-only file system", str(self))
            return real(self, *a, **k)

        Path.write_text = wt
        try:
            return c.cli("run", R, "--run-dir", c.fresh() / "run", "--quiet", "--smoke")
        finally:
            Path.write_text = real

    c.case("filesystem turns read-only before summary.json", "read-only", readonly_summary)

    # ---------------------------------------------------------------------------- commands
    ck = c.ref / "final"
    c.case("`eval --n 0`", "--n 0", lambda: c.cli("eval", ck, "--task", "chain_arithmetic", "--n", "0"))
    c.case("`eval --samples -1`", "--samples -1", lambda: c.cli("eval", ck, "--task", "chain_arithmetic", "--samples", "-1"))
    c.case("`eval --temperature -1`", "temperature", lambda: c.cli("eval", ck, "--task", "chain_arithmetic", "--temperature", "-1"))
    c.case("`eval` of a checkpoint that does not exist", "nockpt", lambda: c.cli("eval", c.tmp / "nockpt", "--task", "chain_arithmetic"))
    c.case("`eval` of an empty directory", "not a checkpoint directory", lambda: c.cli("eval", c.fresh(), "--task", "chain_arithmetic"))
    c.case("`eval --task` unknown kind", "chain_arithmatic", lambda: c.cli("eval", ck, "--task", "chain_arithmatic"))
    c.case("`eval --turns 2` on a single-turn task", "single-turn", lambda: c.cli("eval", ck, "--task", "chain_arithmetic", "--turns", "2"))
    c.case("`eval --set n_terms=2` (fewer distinct problems than the default --n)", "n_test",
           lambda: c.cli("eval", ck, "--task", "chain_arithmetic", "--set", "n_terms=2"))
    c.case("`eval --out` into a missing folder", "nofolder", lambda: c.cli("eval", ck, "--task", "chain_arithmetic", "--set", "n_terms=2",
                                                                      "--set", "n_test=8", "--n", "2", "--samples", "1", "--out", c.tmp / "nofolder" / "m.json"))
    c.case("`search --n 0`", "--n 0", lambda: c.cli("search", ck, "--task", "chain_arithmetic", "--n", "0"))
    c.case("`search --budget -8`", "--budget -8", lambda: c.cli("search", ck, "--task", "chain_arithmetic", "--budget", "-8"))
    c.case("`search --strategy` unknown", "astar", lambda: c.cli("search", ck, "--task", "chain_arithmetic", "--strategy", "astar", "--n", "2"))
    c.case("`scaling --budgets a,b`", "'a'", lambda: c.cli("scaling", ck, "--task", "chain_arithmetic", "--out", c.tmp / "s.json", "--budgets", "a,b"))
    c.case("`scaling --budgets 64,-1`", "-1", lambda: c.cli("scaling", ck, "--task", "chain_arithmetic", "--out", c.tmp / "s.json", "--budgets", "64,-1"))
    c.case("`scaling --n 0`", "--n 0", lambda: c.cli("scaling", ck, "--task", "chain_arithmetic", "--out", c.tmp / "s.json", "--n", "0"))


def main() -> None:
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        sys.path.insert(0, tmp)
        c = Corpus(Path(tmp))
        build(c)
    res = c.results
    print("| # | case | outcome | culprit named | run intact | message (start) |")
    print("|---|---|---|---|---|---|")
    for i, r in enumerate(res, 1):
        intact = "-" if r["lost"] is None else ("**no**" if r["lost"] else "yes")
        msg = r["msg"].replace("|", "\\|") or "-"
        print(f"| {i} | {r['what']} | {r['outcome'] if r['ok'] else '**' + r['outcome'] + '**'} | "
              f"{'yes' if r['named'] else '**no**'} | {intact} | {msg} |")
    tb = sum(r["outcome"].startswith("TRACEBACK") for r in res)
    hang = sum(r["outcome"] == "HANG" for r in res)
    lost = sum(bool(r["lost"]) for r in res)
    unnamed = sum(not r["named"] for r in res)
    bad = sum(not r["ok"] for r in res)
    print(f"\n{len(res)} cases: {tb} tracebacks, {hang} hangs, {lost} runs lost or corrupted, {unnamed} messages "
          f"without their culprit, {bad} cases not as expected; {time.time() - t0:.0f} s.")
    print("command: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/fault_corpus.py")


if __name__ == "__main__":
    main()
