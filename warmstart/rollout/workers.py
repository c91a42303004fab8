"""Rollout and search workers: where a step's sampling runs (in this process, or in Ray actors).

The learner owns the policy; a worker pool runs *shard functions* (one rollout, one search) on
copies of it. Every call splits the step's problems into ``shards`` contiguous pieces, gives each
piece its own generator, runs the function once per piece and concatenates the results in shard
order. So the episodes depend on the seed and ``shards`` only -- never on the backend or on how many
workers there are: ``scale: {backend: ray, workers: 2}`` and ``scale: {shards: 2}`` (in-process)
draw the same episodes, and so do 1 and 2 Ray workers with the same ``shards``.

Seeding. With one shard the shard's generator *is* the phase's generator: an in-process run calls
the function with it directly (the default path: every run without a ``scale:`` block draws exactly
what it drew before this module existed); a Ray worker receives its state and sends back the
advanced state, which is set on the phase's generator, so whatever the phase draws next is the same
as in-process. With ``S > 1`` shards, ``S`` seeds are drawn from the phase's generator (one draw,
the same in both backends) and shard ``k`` samples with a generator seeded by ``seeds[k]``.

Weights. Before dispatching, the pool checks whether the policy's weights changed since they were
last sent (every parameter and buffer has an in-place version counter that optimizer steps and
``load_state_dict`` bump). If so, it puts one ``state_dict`` in Ray's object store under the next
version number and every actor loads it; each shard request names the version it must be sampled
with, and an actor holding another one refuses (a stale policy would silently bias the update).
"""

from __future__ import annotations

import socket
import time
from typing import Any, Callable

import torch

from warmstart.errors import ConfigError, WarmstartError

ShardFn = Callable[..., Any]  # fn(policy, *, generator, **common, **shard) -> result


def split_evenly(n: int, shards: int) -> list[range]:
    """``shards`` contiguous index ranges covering ``range(n)``, sizes differing by at most one
    (the first ``n % shards`` get the extra item); some are empty when ``n < shards``."""
    base, extra = divmod(n, shards)
    out, start = [], 0
    for k in range(shards):
        size = base + (1 if k < extra else 0)
        out.append(range(start, start + size))
        start += size
    return out


def shard_generators(generator: torch.Generator | None, shards: int) -> list[torch.Generator | None]:
    """One generator per shard: the phase's own for a single shard, else ``shards`` fresh ones seeded
    by one draw from it (from torch's global generator when ``generator`` is None)."""
    if shards == 1:
        return [generator]
    seeds = torch.randint(0, 2**62, (shards,), generator=generator).tolist()
    return [torch.Generator().manual_seed(s) for s in seeds]


class InProcessWorkers:
    """The default: shards run one after another in this process, on the learner's own policy.
    ``shards > 1`` reproduces a Ray run with that many shards exactly, without a server."""

    backend = "inprocess"

    def __init__(self, shards: int = 1):
        if shards < 1:
            raise ConfigError(f"scale.shards must be >= 1, got {shards}.")
        self.shards = shards

    @property
    def trivial(self) -> bool:
        """True when a call is exactly a plain call (one shard, this process)."""
        return self.shards == 1

    def map(self, policy, fn: ShardFn, common: dict, shards: list[dict], generators: list) -> list:
        """``[fn(policy, generator=g, **common, **kw) for kw, g in zip(shards, generators)]``."""
        return [fn(policy, generator=g, **common, **kw) for kw, g in zip(shards, generators)]

    def close(self) -> None:
        pass


class PolicyWorker:
    """Hosts one copy of the policy inside a Ray actor; runs shard functions with it."""

    def __init__(self, policy, threads: int):
        torch.set_num_threads(threads)  # one BLAS thread per reserved CPU: workers must not fight
        self.policy, self.version = policy, -1

    def ready(self) -> bool:
        return True

    def load(self, version: int, state: dict) -> int:
        self.policy.model.load_state_dict(state)
        self.version = version
        return version

    def run(self, version: int, fn: ShardFn, common: dict, shard: dict, gen_state):
        if version != self.version:
            raise WarmstartError(f"a rollout worker holds weights version {self.version} but was asked to sample "
                                 f"with version {version}; refusing to sample with a stale policy.")
        gen = None
        if gen_state is not None:
            gen = torch.Generator()
            gen.set_state(gen_state)
        out = fn(self.policy, generator=gen, **common, **shard)
        return out, (gen.get_state() if gen is not None else None)


def _weights_fingerprint(model) -> tuple:
    """Changes whenever any parameter or buffer is modified in place or replaced (cheap: no data read)."""
    return (id(model), tuple((id(t), t._version) for t in [*model.parameters(), *model.buffers()]))


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast, with a clear message, when a cluster address cannot be reached (``ray.init`` itself
    may retry for a minute before giving up)."""
    if address == "auto":
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"scale.address {address!r} is not 'auto', 'HOST:PORT' (the head's GCS, default port 6379) "
                          "or 'ray://HOST:PORT' (Ray Client, default port 10001).")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise WarmstartError(
            f"scale.address {address!r}: nothing answers at {host}:{port} ({e.strerror or e}). Start the head with "
            "`ray start --head` (port 6379; add --ray-client-server-port 10001 for ray:// addresses), check the host "
            "and firewall, or drop `address:` to start a local Ray instance. Nothing was written."
        ) from None


class RayWorkers:
    """``workers`` Ray actors, each holding a copy of the policy (``threads`` torch threads, as many
    CPUs reserved). Connects to ``address`` (``auto``, ``HOST:PORT`` or ``ray://HOST:PORT``) or,
    when it is None, starts a local Ray instance with ``workers * threads`` CPUs and stops it on
    :meth:`close`."""

    backend = "ray"
    trivial = False

    def __init__(self, policy, workers: int = 1, shards: int | None = None, address: str | None = None,
                 threads: int = 1, ready_timeout_s: float = 300.0):
        try:
            import ray
        except ImportError:
            raise WarmstartError("scale.backend is 'ray' but Ray is not installed: pip install 'warmstart[ray]' "
                                 "(or drop the scale: block to sample in this process).") from None
        self.ray = ray
        self.workers, self.shards = workers, shards or workers
        if self.shards < 1 or workers < 1:
            raise ConfigError(f"scale.workers and scale.shards must be >= 1 (got {workers}, {self.shards}).")
        self._started = False
        if address is not None:
            _check_reachable(address)
        if not ray.is_initialized():
            try:
                if address is None:
                    ray.init(num_cpus=workers * threads, include_dashboard=False, log_to_driver=True,
                             configure_logging=False)
                    self._started = True
                else:
                    ray.init(address=address, log_to_driver=True, configure_logging=False)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise WarmstartError(f"scale: could not start or join Ray (address={address!r}): {e}. "
                                     "Nothing was written.") from None
        self.actors: list = []
        try:
            self._start_actors(policy, workers, threads, ready_timeout_s)
        except BaseException:  # leave no actors (and no Ray instance we started) behind
            self.close()
            raise
        self.version, self._fingerprint = 0, None
        self.sync_time_s = 0.0

    def _start_actors(self, policy, workers: int, threads: int, ready_timeout_s: float) -> None:
        ray = self.ray
        need, have = workers * threads, ray.cluster_resources().get("CPU", 0)
        if need > have:
            raise ConfigError(f"scale: {workers} workers x {threads} threads need {need} CPUs; the Ray cluster has "
                              f"{have:g}. Lower scale.workers or scale.threads, or add nodes.")
        actor = ray.remote(num_cpus=threads)(PolicyWorker)
        env = {"env_vars": {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}}
        policy_ref = self._put(policy, "the policy")  # one serialisation, shared by every actor
        self.actors = [actor.options(runtime_env=env).remote(policy_ref, threads) for _ in range(workers)]
        # an actor that cannot be placed (CPUs held by other jobs) would otherwise wait forever, silently
        ready, _ = ray.wait([a.ready.remote() for a in self.actors], num_returns=workers, timeout=ready_timeout_s)
        if len(ready) < workers:
            raise WarmstartError(f"scale: only {len(ready)} of {workers} Ray workers started within {ready_timeout_s:g} s "
                                 f"(each needs {threads} free CPU(s); free now: {ray.available_resources().get('CPU', 0):g}). "
                                 "Free CPUs in the cluster or lower scale.workers.")
        self._get(ready)  # a worker that failed to start (e.g. the policy could not be unpickled) says why

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _put(self, obj, what: str):
        try:
            return self.ray.put(obj)
        except Exception as e:  # e.g. a task holding a lock, an open socket or a process handle
            raise WarmstartError(f"scale: {what} cannot be sent to Ray workers ({type(e).__name__}: {e}). Objects that "
                                 "travel to workers must be picklable; sample in-process (drop the scale: block) "
                                 "or make the object picklable.") from None

    def _sync(self, policy) -> None:
        fp = _weights_fingerprint(policy.model)
        if fp == self._fingerprint:
            return
        t0 = time.time()
        self.version += 1
        state = {k: v.detach().cpu() for k, v in policy.model.state_dict().items()}
        ref = self._put(state, "the policy's weights")
        self._get([a.load.remote(self.version, ref) for a in self.actors])
        self._fingerprint = fp
        self.sync_time_s += time.time() - t0

    def _get(self, refs: list):
        ray = self.ray
        try:
            return ray.get(refs)
        except ray.exceptions.RayTaskError as e:
            cause = e.cause if hasattr(e, "cause") else None
            if isinstance(cause, WarmstartError):
                raise cause from None
            raise WarmstartError(f"a Ray rollout worker failed: {type(cause).__name__ if cause else 'error'}: "
                                 f"{cause if cause else e}") from None
        except (ray.exceptions.RayActorError, ray.exceptions.RayError) as e:  # died, OOM-killed, node lost ...
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise WarmstartError(f"a Ray rollout worker was lost ({type(e).__name__}: {first}). The run's checkpoints "
                                 "are intact; resume with `warmstart run <recipe> --run-dir <dir> --resume`.") from None

    def map(self, policy, fn: ShardFn, common: dict, shards: list[dict], generators: list) -> list:
        """Run ``fn`` on every shard, shard ``k`` on actor ``k % workers``; results in shard order.
        A generator's advanced state comes back and is set on it (what the phase draws next matches
        the in-process run)."""
        self._sync(policy)
        ray = self.ray
        common_ref = self._put(common, "the task, scorer and sampling settings")  # serialised once per call
        refs = []
        for k, (kw, g) in enumerate(zip(shards, generators)):
            actor = self.actors[k % self.workers]
            refs.append(actor.run.remote(self.version, fn, common_ref, kw, g.get_state() if g is not None else None))
        out = []
        for (res, state), g in zip(self._get(refs), generators):
            if g is not None and state is not None:
                g.set_state(state)
            out.append(res)
        return out

    def close(self) -> None:
        for a in self.actors:
            try:
                self.ray.kill(a)
            except Exception:  # an actor already gone is what we wanted
                pass
        self.actors = []
        if self._started:
            self.ray.shutdown()
            self._started = False


def make_workers(policy, backend: str = "inprocess", workers: int = 1, shards: int | None = None,
                 address: str | None = None, threads: int = 1):
    """The pool a recipe's ``scale:`` block asks for (in-process by default: no server)."""
    if backend == "ray":
        return RayWorkers(policy, workers, shards, address, threads)
    return InProcessWorkers(shards or 1)
