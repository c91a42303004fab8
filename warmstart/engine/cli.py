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

    # soft_wrap: keep paths and keys whole on one line so the message can be copied and grepped
    Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {e}", highlight=False, markup=True)
    raise typer.Exit(code=2)


@app.command()
def run(
    recipe: str = typer.Argument(..., help="recipe YAML path, or a name from `warmstart recipes` (e.g. quickstart)"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="override a recipe key, e.g. --set phases.grpo.lr=1e-4 (repeatable)"),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="run directory (default runs/<name>-<time>)"),
    resume: bool = typer.Option(False, "--resume", help="continue the run in --run-dir from its last checkpoint"),
    smoke: bool = typer.Option(False, "--smoke", help="tiny budget from the recipe's smoke: block (seconds), for tests and first tries"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bars or tables"),
):
    """Run a recipe end to end; writes config.yaml, metrics.jsonl, summary.json, checkpoints/, final/, curves.png."""
    from warmstart.engine.config import load_recipe
    from warmstart.engine.run import run_recipe

    if resume and run_dir is None:
        _fail(WarmstartError("--resume needs --run-dir: the directory of the run to continue."))
    try:
        r, raw = load_recipe(recipe, set_ or [], smoke=smoke)
        run_recipe(r, raw, run_dir=run_dir, resume=resume, smoke=smoke, quiet=quiet)
    except WarmstartError as e:
        _fail(e)


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

    try:
        ev = EvalConfig(n=n, samples=samples, temperature=temperature)
        metrics, label = evaluate_checkpoint(checkpoint, task, ev, [s for s in (set_ or [])], turns=turns)
    except WarmstartError as e:
        _fail(e)
        return
    from rich.table import Table

    table = Table(title=f"eval of {checkpoint} on {label}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in metrics.items():
        table.add_row(k, f"{v:.4g}" if isinstance(v, float) else str(v))
    console.print(table)
    path = out or (checkpoint / f"eval-{label}.json")
    try:
        path.write_text(json.dumps(metrics, indent=2))
        console.print(f"written to {path}")
    except OSError as e:
        _fail(WarmstartError(f"could not write {path}: {e}"))


@app.command()
def recipes(folder: Path = typer.Option(None, help="folder of recipes (default: the shipped recipes/)")):
    """List the recipes with their one-line descriptions."""
    import yaml
    from rich.table import Table

    base = folder or (Path.cwd() / "recipes" if (Path.cwd() / "recipes").is_dir() else Path(__file__).resolve().parents[2] / "recipes")
    table = Table(title=f"recipes in {base}")
    table.add_column("recipe")
    table.add_column("description")
    for f in sorted(base.glob("*.yaml")):
        try:
            d = yaml.safe_load(f.read_text()) or {}
            desc = d.get("description", "")
        except yaml.YAMLError:
            desc = "(not valid YAML)"
        table.add_row(f.stem, desc)
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

    try:
        row = search_main(checkpoint, task, strategy, budget, scorer, n, set_ or [], orm, prm, temperature,
                          log=lambda m: console.print(m, highlight=False, markup=False))
    except WarmstartError as e:
        _fail(e)
        return
    console.print_json(json.dumps(row))
    if out:
        out.write_text(json.dumps(row, indent=2))


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

    try:
        scaling_main(checkpoint, task, out, [int(b) for b in budgets.split(",")] if budgets else None,
                     strategies=strategies.split(",") if strategies else None, n=n, sets=set_ or [], orm=orm,
                     prm=prm, temperature=temperature, log=lambda s: console.print(s, highlight=False, markup=False))
    except WarmstartError as e:
        _fail(e)
        return
    console.print(f"written {out} and {out.with_suffix('.png')}")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        console.print("[red]interrupted[/]")
        sys.exit(130)


if __name__ == "__main__":
    main()
