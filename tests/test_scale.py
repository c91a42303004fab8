"""Scale-out (issue 16 part 3): sharded rollouts and searches, in-process and on Ray actors.

The contract under test: with the same seed and ``shards``, the episodes are the same whatever the
backend and however many workers -- token for token, log-prob for log-prob. Ray tests share one local
Ray instance (``num_cpus=2``, one thread per worker) and skip, saying why, when Ray is not installed.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from warmstart.errors import WarmstartError
from warmstart.learn.optim import make_adamw
from warmstart.rollout import Sampling, rollout
from warmstart.rollout.workers import InProcessWorkers, shard_generators, split_evenly
from warmstart.search.strategies import BestOfNConfig, run_search
from warmstart.search.scorers import VerifierScorer
from warmstart.tasks.arithmetic import ChainArithmeticConfig, make_chain_arithmetic

TINY = (Path(__file__).parent / "fault_tiny.yaml").read_text()
TIMING = {"time_step_s", "tokens_per_s", "sample_tokens_per_s", "train_tokens_per_s", "eval_time_s"}


def episodes_key(eps):
    """Everything sampled, exactly: ids, behaviour log-probs (bitwise), groups, rewards."""
    return [(e.group, tuple(e.prompt_ids), tuple(e.ids), tuple(e.logprobs), e.reward) for e in eps]


@pytest.fixture(scope="module")
def task():
    return make_chain_arithmetic(ChainArithmeticConfig(kind="chain_arithmetic", n_terms=2, n_demos=16, n_test=8),
                                 split="train", seed=0)


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'warmstart[ray]'): the Ray path is untested here")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    yield ray
    ray.shutdown()


# ----------------------------------------------------------------------------------- the scheme


def test_split_evenly_is_contiguous_and_balanced():
    assert [list(r) for r in split_evenly(7, 3)] == [[0, 1, 2], [3, 4], [5, 6]]
    assert [list(r) for r in split_evenly(2, 3)] == [[0], [1], []]
    assert [list(r) for r in split_evenly(4, 1)] == [[0, 1, 2, 3]]


def test_one_shard_uses_the_phase_generator_itself_and_more_draw_once():
    g = torch.Generator().manual_seed(3)
    assert shard_generators(g, 1)[0] is g
    before = g.get_state()
    gens = shard_generators(g, 3)
    expect = torch.randint(0, 2**62, (3,), generator=torch.Generator().set_state(before)).tolist()
    assert [x.initial_seed() for x in gens] == expect
    assert len({x.initial_seed() for x in gens}) == 3


def test_inprocess_one_shard_is_exactly_the_plain_rollout(tiny_policy_factory, task):
    """The default pool changes nothing: same episodes, same generator state afterwards."""
    pol = tiny_policy_factory(0)
    probs = task.sample_problems(5, torch.Generator().manual_seed(0))
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    a, _ = rollout(pol, probs, samples=2, sampling=Sampling(8), generator=g1)
    b, _ = rollout(pol, probs, samples=2, sampling=Sampling(8), generator=g2, workers=InProcessWorkers(1))
    assert episodes_key(a) == episodes_key(b)
    assert torch.equal(g1.get_state(), g2.get_state())


def test_shards_keep_group_ids_and_order(tiny_policy_factory, task):
    pol = tiny_policy_factory(0)
    probs = task.sample_problems(5, torch.Generator().manual_seed(0))
    eps, st = rollout(pol, probs, samples=3, sampling=Sampling(8), generator=torch.Generator().manual_seed(1),
                      workers=InProcessWorkers(2))
    assert [e.group for e in eps] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]
    assert [e.prompt for e in eps[::3]] == [p.prompt for p in probs]
    assert st["sampled_tokens"] == sum(len(e.ids) for e in eps)


# ------------------------------------------------------------------------------------------ Ray


@pytest.mark.slow
def test_ray_rollout_and_search_workers_give_the_in_process_episodes_and_follow_weight_updates(ray_local, tiny_policy_factory, task):
    from warmstart.rollout.workers import RayWorkers

    pol = tiny_policy_factory(0)
    probs = task.sample_problems(6, torch.Generator().manual_seed(0))
    sampling = Sampling(8, temperature=1.0)

    def collect(workers, seed=11):
        g = torch.Generator().manual_seed(seed)
        eps, _ = rollout(pol, probs, samples=3, sampling=sampling, generator=g, workers=workers)
        return episodes_key(eps), g.get_state()

    plain, plain_state = collect(None)
    two_shards, _ = collect(InProcessWorkers(2))
    assert two_shards != plain  # a different split is a different (equally valid) draw
    # pools one after another: the local instance has 2 CPUs, one per worker
    with RayWorkers(pol, workers=1, shards=2) as one:
        assert collect(one)[0] == two_shards
        one.shards = 1
        # one shard on a worker: the plain run's episodes, and the phase's generator advanced the same
        solo_eps, solo_state = collect(one)
        assert solo_eps == plain and torch.equal(solo_state, plain_state)
    with RayWorkers(pol, workers=2, shards=2) as two:
        assert collect(two)[0] == two_shards
        assert two.version == 1
        collect(two)
        assert two.version == 1  # unchanged weights are not sent again
        # the learner updates: the workers must sample with the new weights (versioned sync)
        opt = make_adamw(pol.model.parameters(), 1e-2)
        sum(p.sum() for p in pol.model.parameters()).backward()
        opt.step()
        updated, _ = collect(InProcessWorkers(2))
        assert updated != two_shards
        assert collect(two)[0] == updated
        assert two.version == 2
        # search workers: the same pool runs a best-of-n search shard by shard
        cfg = BestOfNConfig(strategy="best_of_n", n=3)

        def search(workers):
            res = run_search(pol, task, probs, VerifierScorer(task), cfg, torch.Generator().manual_seed(4), workers=workers)
            return ([(e.group, e.ids, e.logprobs) for e in res.episodes],
                    [[(c.group, c.ids) for c in cs] for cs in res.candidates], res.tokens)

        local = search(InProcessWorkers(2))
        assert [g for g, _, _ in local[0]] == list(range(len(probs)))
        assert search(two) == local
        # what cannot travel to a worker is a clear error, not a serialisation traceback
        with pytest.raises(WarmstartError, match="the task, scorer and sampling settings cannot be sent to Ray workers"):
            rollout(pol, probs, task=SimpleNamespace(lock=threading.Lock(), max_new_tokens=8), workers=two)
    assert ray_local.is_initialized()  # pools that joined a running Ray leave it running


@pytest.mark.slow
def test_a_recipe_on_ray_workers_logs_the_numbers_of_the_in_process_run(ray_local, tmp_path):
    from warmstart.engine.config import load_recipe
    from warmstart.engine.run import run_recipe

    p = tmp_path / "tiny.yaml"
    p.write_text(TINY)

    def run(name, **scale):
        recipe, raw = load_recipe(p, overrides=[f"scale.{k}={v}" for k, v in scale.items()])
        run_recipe(recipe, raw, run_dir=tmp_path / name, quiet=True)
        rows = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]

    local = run("local", shards=2)
    assert run("ray", backend="ray", workers=2) == local


# ------------------------------------------------------------------------------------ errors


def test_an_unreachable_address_is_a_clear_error_before_anything_is_written(tmp_path):
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'warmstart[ray]')")
    from warmstart.engine.config import load_recipe
    from warmstart.engine.run import run_recipe

    p = tmp_path / "tiny.yaml"
    p.write_text(TINY)
    recipe, raw = load_recipe(p, overrides=["scale.backend=ray", "scale.address=127.0.0.1:9"])
    t0 = time.time()
    with pytest.raises(WarmstartError, match=r"127\.0\.0\.1:9.*ray start --head.*Nothing was written"):
        run_recipe(recipe, raw, run_dir=tmp_path / "run", quiet=True)
    assert time.time() - t0 < 30
    assert not (tmp_path / "run").exists()


def test_more_workers_than_the_cluster_has_cpus_is_a_clear_error(ray_local, tiny_policy_factory):
    from warmstart.errors import ConfigError
    from warmstart.rollout.workers import RayWorkers

    with pytest.raises(ConfigError, match="3 workers x 1 threads need 3 CPUs; the Ray cluster has 2"):
        RayWorkers(tiny_policy_factory(0), workers=3)


def test_workers_without_ray_backend_is_refused_naming_the_fix(tmp_path):
    from warmstart.engine.config import load_recipe
    from warmstart.errors import ConfigError

    raw = yaml.safe_load(TINY)
    raw["scale"] = {"workers": 2}
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="backend: ray.*shards: 2"):
        load_recipe(p)
