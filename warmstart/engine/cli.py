"""The ``warmstart`` command: run a recipe, evaluate a checkpoint, list recipes."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from warmstart.engine.logging import console
from warmstart.errors import WarmstartError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="warmstart: initialise a policy, then improve it with search and RL against designed rewards.",
)


def _fail(e: Exception) -> None:
    from rich.console import Console
    from rich.text import Text

    # soft_wrap: keep paths and keys whole on one line so the message can be copied and grepped;
    # the message is user text (paths, values, keys): printed literally, never read as markup
    msg = Text("error: ", style="bold red")
    msg.append(str(e))
    Console(stderr=True, soft_wrap=True).print(msg, highlight=False)
    raise typer.Exit(code=2)


def _os_message(e: OSError, doing: str) -> str:
    """One paragraph for a filesystem error: what failed, on which path, what to do."""
    import errno

    where = f" {e.filename}" if e.filename else ""
    what = e.strerror or type(e).__name__
    advice = {
        errno.ENOSPC: "The disk is full: free space (or choose a --run-dir on another disk).",
        errno.EDQUOT: "The disk quota is exhausted: free space (or choose a --run-dir on another disk).",
        errno.EACCES: "No permission: choose a path you can write, or fix its permissions.",
        errno.EPERM: "No permission: choose a path you can write, or fix its permissions.",
        errno.EROFS: "The filesystem is read-only: choose a --run-dir on a writable disk.",
        errno.ENOTDIR: "A part of the path is a file, not a directory: choose another path.",
        errno.EISDIR: "The path is a directory where a file was expected.",
        errno.ENOENT: "Check the path.",
        errno.ENAMETOOLONG: "Choose a shorter path.",
    }.get(e.errno, "Check the path and the disk.")
    return f"{doing} failed: {what}:{where}. {advice}"


def _guarded(fn, doing: str, after: str = ""):
    """Run ``fn`` and turn every error a user can cause into one paragraph (exit code 2)."""
    from pydantic import ValidationError

    try:
        return fn()
    except WarmstartError as e:
        _fail(e)
    except OSError as e:
        _fail(WarmstartError(_os_message(e, doing) + after))
    except UnicodeDecodeError as e:
        _fail(WarmstartError(f"{doing} failed: a file is not UTF-8 text ({e.reason} at byte {e.start}). Save it as "
                             "UTF-8." + after))
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']} (got {err.get('input')!r})"
                             for err in e.errors())
        _fail(WarmstartError(f"{doing}: invalid option: {problems}."))
    except MemoryError:
        _fail(WarmstartError(f"{doing} ran out of memory. Use a smaller model, batch or data file." + after))


def _positive(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise WarmstartError(f"{name} {value}: must be a whole number >= 1.")


def _int_list(name: str, text: str) -> list[int]:
    """A comma-separated list of positive whole numbers, e.g. ``--budgets 64,128``."""
    out = []
    for part in text.split(","):
        try:
            v = int(part.strip())
        except ValueError:
            raise WarmstartError(f"{name} {text!r}: {part.strip()!r} is not a whole number. Give comma-separated "
                                 "token budgets, e.g. 64,128,256.") from None
        if v < 1:
            raise WarmstartError(f"{name} {text!r}: {v} is not a budget; each must be >= 1 token.")
        out.append(v)
    return out


@app.command()
def run(
    recipe: str = typer.Argument(..., help="recipe YAML path, or a name from `warmstart recipes` (e.g. quickstart)"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="override a recipe key, e.g. --set phases.grpo.lr=1e-4 (repeatable)"),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="run directory (default runs/<name>-<time>)"),
    resume: bool = typer.Option(False, "--resume", help="continue the run in --run-dir from its last checkpoint"),
    smoke: bool = typer.Option(False, "--smoke", help="tiny budget from the recipe's smoke: block (seconds), for tests and first tries"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bars or tables"),
    overwrite: bool = typer.Option(False, "--overwrite", help="use --run-dir although it holds another run or other files (the earlier run's outputs are removed)"),
):
    """Run a recipe end to end; writes config.yaml, metrics.jsonl, summary.json, checkpoints/, final/, curves.png."""
    from warmstart.engine.config import load_recipe
    from warmstart.engine.run import run_recipe

    if resume and run_dir is None:
        _fail(WarmstartError("--resume needs --run-dir: the directory of the run to continue."))
    after = (f" The run directory {run_dir} keeps its last checkpoint; continue with --resume once fixed."
             if run_dir is not None else "")

    def go():
        r, raw = load_recipe(recipe, set_ or [], smoke=smoke)
        run_recipe(r, raw, run_dir=run_dir, resume=resume, smoke=smoke, quiet=quiet, overwrite=overwrite)

    _guarded(go, f"run {recipe}", after)


@app.command("eval")
def eval_(
    checkpoint: Path = typer.Argument(..., help="a checkpoint or final/ directory (HF format)"),
    task: str = typer.Option(..., "--task", help="task kind (e.g. chain_arithmetic), a JSONL file, or a recipe YAML whose eval task to use"),
    n: int = typer.Option(500, "--n", help="held-out problems (or episodes)"),
    samples: int = typer.Option(8, "--samples", help="k for pass@k"),
    temperature: float = typer.Option(1.0, "--temperature", help="sampling temperature for pass@k"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="task option, e.g. --set n_terms=9"),
    out: Optional[Path] = typer.Option(None, "--out", help="where to write the metrics JSON (default CHECKPOINT/eval-<task>.json)"),
    turns: Optional[int] = typer.Option(None, "--turns", help="attempts per problem for a multi-turn task (e.g. 2 with self_correct_arithmetic: Acc@t1, Acc@t2, delta ...)"),
):
    """Evaluate a saved policy on a task's held-out split; prints and writes the metrics."""
    from warmstart.engine.config import EvalConfig
    from warmstart.engine.eval import evaluate_checkpoint

    def go():
        _positive("--n", n)
        _positive("--samples", samples)
        _positive("--turns", turns)
        ev = EvalConfig(n=n, samples=samples, temperature=temperature)
        return evaluate_checkpoint(checkpoint, task, ev, [s for s in (set_ or [])], turns=turns)

    metrics, label = _guarded(go, f"eval {checkpoint}")
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text(f"eval of {checkpoint} on {label}"))
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in metrics.items():
        table.add_row(k, f"{v:.4g}" if isinstance(v, float) else str(v))
    console.print(table)
    path = out or (checkpoint / f"eval-{label}.json")
    _guarded(lambda: path.write_text(json.dumps(metrics, indent=2)), f"writing {path}")
    console.print(f"written to {path}", markup=False, highlight=False)


@app.command()
def recipes(folder: Path = typer.Option(None, help="folder of recipes (default: the shipped recipes/)")):
    """List the recipes with their one-line descriptions."""
    import yaml
    from rich.table import Table
    from rich.text import Text

    base = folder or (Path.cwd() / "recipes" if (Path.cwd() / "recipes").is_dir() else Path(__file__).resolve().parents[2] / "recipes")
    table = Table(title=f"recipes in {base}")
    table.add_column("recipe")
    table.add_column("description")
    for f in sorted(base.glob("*.yaml")):
        try:
            d = yaml.safe_load(f.read_text()) or {}
            desc = d.get("description", "") if isinstance(d, dict) else "(not a recipe: no key: value mapping)"
        except (yaml.YAMLError, OSError, UnicodeDecodeError):
            desc = "(not a readable YAML file)"
        table.add_row(Text(f.stem), Text(str(desc)))
    console.print(table)


@app.command()
def search(
    checkpoint: Path = typer.Argument(..., help="a checkpoint or final/ directory (HF format)"),
    task: str = typer.Option(..., "--task", help="task kind, JSONL file or recipe YAML (held-out split)"),
    strategy: str = typer.Option("mcts", "--strategy", help="best_of_n, vote, weighted_vote, beam, mcts or revise"),
    budget: int = typer.Option(256, "--budget", help="sampled tokens per problem"),
    scorer: Optional[str] = typer.Option(None, "--scorer", help="verifier, orm, prm or none (default per strategy)"),
    n: int = typer.Option(200, "--n", help="held-out problems"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="task option, e.g. --set n_terms=9"),
    orm: Optional[str] = typer.Option(None, "--orm", help="ORM directory (default <run>/reward_models/orm)"),
    prm: Optional[str] = typer.Option(None, "--prm", help="PRM directory (default <run>/reward_models/prm)"),
    temperature: float = typer.Option(0.8, "--temperature", help="sampling temperature"),
    out: Optional[Path] = typer.Option(None, "--out", help="write the result row as JSON"),
):
    """Test-time search with one strategy at one token budget; prints accuracy and throughput."""
    from warmstart.engine.search_cli import search_main

    def go():
        _positive("--n", n)
        _positive("--budget", budget)
        if temperature < 0:
            raise WarmstartError(f"--temperature {temperature}: must be >= 0 (0 is greedy).")
        return search_main(checkpoint, task, strategy, budget, scorer, n, set_ or [], orm, prm, temperature,
                           log=lambda m: console.print(m, highlight=False, markup=False))

    row = _guarded(go, f"search {checkpoint}")
    console.print_json(json.dumps(row))
    if out:
        _guarded(lambda: out.write_text(json.dumps(row, indent=2)), f"writing {out}")


@app.command()
def scaling(
    checkpoint: Path = typer.Argument(..., help="a checkpoint or final/ directory (HF format)"),
    task: str = typer.Option(..., "--task", help="task kind, JSONL file or recipe YAML (held-out split)"),
    out: Path = typer.Option(..., "--out", help="JSON rows {strategy, budget_tokens, accuracy}; the plot goes beside it (.png)"),
    budgets: Optional[str] = typer.Option(None, "--budgets", help="comma-separated tokens per problem (default 1,2,4,8 x a greedy solution)"),
    strategies: Optional[str] = typer.Option(None, "--strategies", help="comma-separated subset (default all)"),
    n: int = typer.Option(200, "--n", help="held-out problems"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="task option, e.g. --set n_terms=9"),
    orm: Optional[str] = typer.Option(None, "--orm", help="ORM directory"),
    prm: Optional[str] = typer.Option(None, "--prm", help="PRM directory"),
    temperature: float = typer.Option(0.8, "--temperature", help="sampling temperature"),
):
    """Accuracy vs generated tokens for every search strategy at several budgets (JSON + plot)."""
    from warmstart.engine.search_cli import scaling_main

    def go():
        _positive("--n", n)
        if temperature < 0:
            raise WarmstartError(f"--temperature {temperature}: must be >= 0 (0 is greedy).")
        scaling_main(checkpoint, task, out, _int_list("--budgets", budgets) if budgets else None,
                     strategies=strategies.split(",") if strategies else None, n=n, sets=set_ or [], orm=orm,
                     prm=prm, temperature=temperature, log=lambda s: console.print(s, highlight=False, markup=False))

    _guarded(go, f"scaling {checkpoint}")
    console.print(f"written {out} and {out.with_suffix('.png')}", markup=False, highlight=False)


tools_app = typer.Typer(no_args_is_help=True, help="tool sets: list them, or serve one over HTTP for several runs to share.")
app.add_typer(tools_app, name="tools")


@tools_app.command("serve")
def tools_serve(
    toolset: str = typer.Argument(..., help="a registered tool set (see `warmstart tools list`), e.g. chart"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on (0.0.0.0: every interface)"),
    port: int = typer.Option(8765, "--port", help="port (0: any free one)"),
    option: Optional[List[str]] = typer.Option(None, "--option", help="tool set option key=value (repeatable; value read as YAML)"),
    timeout_s: float = typer.Option(5.0, "--timeout-s", help="time limit of one call, s"),
):
    """Serve a tool set over HTTP until Ctrl-C (GET /health, POST /call); recipes use it with task.tools.url."""
    import yaml

    from warmstart.tools import ToolLimits, toolset_class
    from warmstart.tools.server import serve_forever

    def go():
        opts = {}
        for kv in option or []:
            if "=" not in kv:
                raise WarmstartError(f"--option {kv!r}: write key=value, e.g. --option max_zoom=4.")
            k, v = kv.split("=", 1)
            opts[k] = yaml.safe_load(v)
        toolset_class(toolset, opts)  # an unknown tool set or option is an error before any socket opens
        try:
            serve_forever(toolset, opts, ToolLimits(timeout_s=timeout_s), host, port, None,
                          announce=lambda s: console.print(f"serving tool set {toolset} at {s.split(' ', 1)[1]} (Ctrl-C stops)",
                                                           markup=False, highlight=False))
        except OSError as e:
            raise WarmstartError(f"cannot listen on {host}:{port}: {e.strerror or e}. Choose another --port (0: any free one).") from None

    _guarded(go, f"tools serve {toolset}")


@tools_app.command("list")
def tools_list():
    """List the registered tool sets and their tools."""
    from warmstart.registry import TOOLSETS

    for kind, entry in TOOLSETS.entries().items():
        cls = entry.factory(entry.config(kind=kind))
        console.print(f"{kind}: {entry.description}  tools: {', '.join(cls.tool_names())}", markup=False, highlight=False)


convert_app = typer.Typer(no_args_is_help=True, help="Convert model files into plain Hugging Face directories.")
app.add_typer(convert_app, name="convert")


@convert_app.command("gguf")
def convert_gguf_cmd(
    file: Path = typer.Argument(..., help="a GGUF model file (e.g. a llama.cpp quantization)"),
    out_dir: Path = typer.Argument(..., help="the HF directory to write (safetensors + tokenizer + chat template)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace OUT_DIR although it holds other files"),
):
    """De-quantize a GGUF file into an HF directory that `policy.path` (and AutoModelForCausalLM) loads."""
    from warmstart.policies.pretrained import convert_gguf

    out = _guarded(lambda: convert_gguf(file, out_dir, overwrite=overwrite), f"convert gguf {file}")
    console.print(f"written {out}: load it with policy.path: {out}", markup=False, highlight=False)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        console.print("[red]interrupted[/]")
        sys.exit(130)


if __name__ == "__main__":
    main()
