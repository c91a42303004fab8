"""Running untrusted code for a tool: a subprocess with CPU-time, memory and wall-time limits and no
network, and the tool sets built on it (``python``) or used to test faults (``faults``).

What each limit rests on (no root needed):

* **CPU time**: ``RLIMIT_CPU`` -- the kernel sends SIGXCPU/SIGKILL past it.
* **memory**: ``RLIMIT_AS`` -- allocations past it fail (Python raises ``MemoryError``).
* **wall time**: the parent waits at most ``wall_s`` and then kills the child's whole process group
  (a sleeping or blocked child uses no CPU, so ``RLIMIT_CPU`` alone would not stop it).
* **no network**: the child runs under ``unshare --user --net`` -- a new, empty network namespace
  (only a loopback that is down), created through an unprivileged user namespace; the kernel
  enforces it for the child and everything it starts. Where the kernel forbids unprivileged user
  namespaces (some hardened distributions, many containers) ``unshare`` fails and there is **no
  network isolation**: :func:`network_isolation` says which case holds, ``require_no_network`` (on
  by default) refuses to run code then, and the tool's output says nothing was run.
* files: the child starts in a fresh temporary directory, with ``python -I`` (isolated mode: no
  user site-packages, no ``PYTHON*`` variables) and ``RLIMIT_FSIZE`` capping what it may write. It
  can still read what the user running warmstart can read: this is a resource sandbox, not a
  security boundary against a hostile author.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from pydantic import Field

from warmstart.config import PluginConfig
from warmstart.registry import TOOLSETS
from warmstart.tools import ToolFault, ToolSet, tool


@functools.lru_cache(maxsize=1)
def network_isolation() -> str | None:
    """The command prefix that gives a child no network (``unshare --user --net``), or None when
    this system does not allow it without root."""
    exe = shutil.which("unshare")
    if exe is None:
        return None
    try:
        r = subprocess.run([exe, "--user", "--net", "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return exe if r.returncode == 0 else None


@dataclass
class SandboxResult:
    """What a sandboxed run produced: output, exit code, and which limit (if any) stopped it."""

    stdout: str
    stderr: str
    returncode: int
    killed_by: str | None = None  # "cpu", "memory", "wall" or None
    seconds: float = 0.0


def _limits(cpu_s: int, mem_mb: int, fsize_mb: int):
    def apply():
        import resource

        os.setsid()  # its own process group: the wall-time kill takes every child it started
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
        resource.setrlimit(resource.RLIMIT_AS, (mem_mb << 20, mem_mb << 20))
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_mb << 20, fsize_mb << 20))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def run_python(code: str, cpu_s: int = 2, mem_mb: int = 256, wall_s: float = 5.0, fsize_mb: int = 1,
               require_no_network: bool = True, max_output_chars: int = 10_000) -> SandboxResult:
    """Run ``code`` with ``python -I`` in a limited subprocess (see the module docstring)."""
    prefix = network_isolation()
    if prefix is None and require_no_network:
        raise ToolFault("sandbox", "this system cannot isolate the network without root (unshare --user --net fails); "
                                   "the code was not run")
    cmd = ([prefix, "--user", "--net"] if prefix else []) + [sys.executable, "-I", "-c", code]
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="warmstart-sandbox-") as cwd:
        p = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=_limits(cpu_s, mem_mb, fsize_mb), env={"PATH": os.environ.get("PATH", "")})
        killed = None
        try:
            out, err = p.communicate(timeout=wall_s)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            out, err = p.communicate()
            killed = "wall"
    rc = p.returncode
    if killed is None and rc in (-signal.SIGXCPU, -signal.SIGKILL) and time.time() - t0 >= cpu_s * 0.9:
        killed = "cpu"
    if killed is None and "MemoryError" in (err or ""):
        killed = "memory"
    return SandboxResult(out[:max_output_chars], err[-max_output_chars:], rc, killed, time.time() - t0)


class PythonToolsConfig(PluginConfig):
    kind: str = "python"
    cpu_s: int = Field(2, ge=1, description="CPU-seconds one run may use")
    mem_mb: int = Field(256, ge=32, description="address-space limit of one run, MiB")
    wall_s: float = Field(4.0, gt=0, description="wall-clock limit of one run, s (keep below the call's timeout_s)")
    require_no_network: bool = Field(True, description="refuse to run code where the network cannot be isolated")


class PythonTools(ToolSet):
    """A code interpreter: runs a Python snippet in the sandbox and returns what it printed."""

    name = "python"

    @tool
    def run_python(self, code: str) -> str:
        """Run a Python program and return what it prints.

        Args:
            code: the program; print the result you need
        """
        o = self.options
        res = run_python(code, o["cpu_s"], o["mem_mb"], o["wall_s"], require_no_network=o["require_no_network"])
        if res.killed_by:
            raise ToolFault("sandbox", f"the program was killed by its {res.killed_by} limit after {res.seconds:.1f} s")
        if res.returncode != 0:
            last = (res.stderr.strip().splitlines() or ["(no message)"])[-1]
            return f"exit code {res.returncode}: {last}"
        return res.stdout


@TOOLSETS.register("python", PythonToolsConfig)
def make_python_tools(cfg: PythonToolsConfig) -> type[ToolSet]:
    """A Python interpreter in a sandbox (CPU, memory, wall-time limits; no network)."""
    return PythonTools


class FaultToolsConfig(PluginConfig):
    kind: str = "faults"


class FaultTools(ToolSet):
    """Tools that misbehave on purpose: every fault a real tool can have, for tests and the fault corpus."""

    name = "faults"

    @tool
    def echo(self, text: str) -> str:
        """Return the text unchanged.

        Args:
            text: anything
        """
        return text

    @tool
    def hang(self, seconds: float) -> str:
        """Sleep, then answer (past the call's time limit: a hanging tool).

        Args:
            seconds: how long to sleep
        """
        time.sleep(seconds)
        return "woke up"

    @tool
    def boom(self) -> str:
        """Raise an exception (a buggy tool)."""
        raise RuntimeError("the tool broke")

    @tool
    def garbage(self, size: int) -> str:
        """Return ``size`` characters of junk (an oversized output), or a non-text object when size < 0.

        Args:
            size: characters to return
        """
        return object() if size < 0 else "x" * size  # type: ignore[return-value]

    @tool
    def die(self) -> str:
        """Kill the process serving the call (a tool server that dies)."""
        os._exit(3)


@TOOLSETS.register("faults", FaultToolsConfig)
def make_fault_tools(cfg: FaultToolsConfig) -> type[ToolSet]:
    """Misbehaving tools (hang, raise, junk, die) for fault-injection tests."""
    return FaultTools
