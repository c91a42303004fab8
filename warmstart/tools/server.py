"""Tool sets as services: an HTTP server per tool set, a client that turns every fault into a result,
and the process manager a run uses to start, health-check, restart and stop its server.

Why the standard library's :class:`~http.server.ThreadingHTTPServer` and :mod:`http.client` rather
than FastAPI + uvicorn: a tool call is one small JSON request whose cost is the tool itself and the
model's turn around it, not the server; the stdlib server is a real HTTP/1.1 server (keep-alive, a
thread per connection) that needs no extra dependency, starts in ~0.1 s, and anything that speaks
HTTP -- curl, another run, a cluster's workers -- can use it. The protocol::

    GET  /health  -> {"ok": true, "toolset": KIND, "tools": [schemas], "pid": PID}
    POST /call    {"name": ..., "arguments": {...}, "state": {...}}
                  -> {"name", "text", "images": [base64 PNG], "error", "error_kind"}

The server applies the same checks and limits as :class:`~warmstart.tools.LocalTools` (unknown tool,
malformed arguments, time limit, output size) and answers 200 with the failure; the client adds what
only it can see (no connection, no answer in time, a reply that is not JSON).

Processes: :class:`ToolServer` starts ``python -m warmstart.tools.server KIND ...`` and reads one
``READY <url>`` line from its stdout. The child dies with its parent (``PR_SET_PDEATHSIG`` on Linux,
and a watchdog thread that exits when the parent process is gone), so a run killed with ``kill -9``
leaves no server behind; ``warmstart tools serve KIND`` starts one that outlives nobody.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import http.client
import importlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field

from warmstart.errors import WarmstartError
from warmstart.tools import ToolLimits, ToolResult, ToolStats, call_local, failure, toolset_class

READY = "READY "


# ------------------------------------------------------------------------------------------ encoding


def _png_b64(image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _from_png_b64(data: str):
    from PIL import Image

    im = Image.open(io.BytesIO(base64.b64decode(data)))
    im.load()
    return im


def result_to_json(res: ToolResult) -> dict:
    return {"name": res.name, "text": res.text, "images": [_png_b64(im) for im in res.images],
            "error": res.error, "error_kind": res.error_kind}


def result_from_json(d: dict) -> ToolResult:
    return ToolResult(name=d["name"], text=d.get("text", ""), images=[_from_png_b64(x) for x in d.get("images", [])],
                      error=d.get("error"), error_kind=d.get("error_kind"))


# -------------------------------------------------------------------------------------------- server


def make_server(kind: str, options: dict | None = None, limits: ToolLimits | None = None, host: str = "127.0.0.1",
                port: int = 0) -> ThreadingHTTPServer:
    """A (not yet serving) HTTP server for tool set ``kind``; ``port=0`` lets the OS pick a free port."""
    cls, opts = toolset_class(kind, options)
    limits = limits or ToolLimits()
    schemas = cls.schemas()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: a client reuses one connection for all its calls
        # headers and body go out in two writes; with Nagle's algorithm the second waits for the
        # client's delayed ACK (~40 ms a call). A tool call is latency-bound: send at once.
        disable_nagle_algorithm = True

        def log_message(self, fmt, *args):  # one line per request on stderr would swamp a run's log
            pass

        def _send(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/health":
                self._send(200, {"ok": True, "toolset": kind, "tools": schemas, "pid": os.getpid()})
            else:
                self._send(404, {"error": f"no such path {self.path}; use GET /health or POST /call"})

        def do_POST(self):
            if self.path != "/call":
                self._send(404, {"error": f"no such path {self.path}; use POST /call"})
                return
            try:
                n = int(self.headers.get("Content-Length") or 0)
                req = json.loads(self.rfile.read(n) or b"{}")
                name, args, state = req["name"], req.get("arguments", {}), req.get("state") or {}
            except (ValueError, KeyError, TypeError) as e:
                self._send(400, {"error": f"bad request ({type(e).__name__}: {e}); send JSON with name, arguments, state"})
                return
            res = call_local(cls, opts, str(name), args, state, limits)
            self._send(200, result_to_json(res))

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True  # a hung tool's handler thread never keeps the process alive
    return server


def _die_with_parent(parent_pid: int) -> None:
    """Exit when the parent process is gone: at once via ``PR_SET_PDEATHSIG`` where Linux offers it,
    and by polling as a fallback (other systems, or a parent that re-parented us)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except OSError:
        pass

    def watch():
        while True:
            if os.getppid() != parent_pid:
                os._exit(0)
            time.sleep(0.5)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def _interrupt(*_):
    raise KeyboardInterrupt  # SIGTERM ends serve_forever like Ctrl-C: the socket is closed cleanly


def serve_forever(kind: str, options: dict | None, limits: ToolLimits, host: str, port: int, parent_pid: int | None,
                  announce=print) -> None:
    """Serve tool set ``kind`` until interrupted; prints ``READY <url>`` once it accepts calls."""
    if parent_pid:
        _die_with_parent(parent_pid)
    server = make_server(kind, options, limits, host, port)
    signal.signal(signal.SIGTERM, _interrupt)
    announce(f"{READY}http://{server.server_address[0]}:{server.server_address[1]}")
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def _main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="serve a warmstart tool set over HTTP (used by ToolServer)")
    p.add_argument("kind")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--options", default="{}", help="tool set options as JSON")
    p.add_argument("--limits", default="{}", help="ToolLimits as JSON")
    p.add_argument("--parent-pid", type=int, default=0)
    p.add_argument("--module", default=None, help="module that registers the tool set (imported first)")
    a = p.parse_args(argv)
    if a.module:
        importlib.import_module(a.module)
    serve_forever(a.kind, json.loads(a.options), ToolLimits(**json.loads(a.limits)), a.host, a.port, a.parent_pid,
                  announce=lambda s: print(s, flush=True))


# ------------------------------------------------------------------------------------ process manager


class ToolServer:
    """A tool server in a child process: started, health-checked, restarted, stopped by its owner."""

    def __init__(self, kind: str, options: dict | None = None, limits: ToolLimits | None = None,
                 start_timeout_s: float = 120.0):
        self.kind, self.options = kind, dict(options or {})
        self.limits = limits or ToolLimits()
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen | None = None
        self.url: str | None = None
        self._lock = threading.Lock()

    def start(self) -> str:
        """Start the server; returns its URL, or raises a :class:`WarmstartError` that says why not."""
        toolset_class(self.kind, self.options)  # an unknown kind or bad option fails here, with its own message
        from warmstart.registry import TOOLSETS

        # the child imports the tool set's own module first, so it need not walk (import) the whole package
        module = TOOLSETS.get(self.kind).factory.__module__
        cmd = [sys.executable, "-m", "warmstart.tools.server", self.kind, "--module", module, "--port", "0",
               "--options", json.dumps(self.options), "--limits", self.limits.model_dump_json(),
               "--parent-pid", str(os.getpid())]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, "OMP_NUM_THREADS": "1"})
        line_box: list[str] = []
        reader = threading.Thread(target=lambda: line_box.append(self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(self.start_timeout_s)
        line = line_box[0].strip() if line_box else ""
        if not line.startswith(READY):
            exited = self.proc.poll() is not None
            err = (self.proc.stderr.read() or "").strip().splitlines()[-5:] if exited else []  # before _kill closes it
            self._kill()
            why = " | ".join(err) or (f"no READY line within {self.start_timeout_s:g} s" if not line else f"it printed {line!r}")
            raise WarmstartError(f"the tool server for tool set {self.kind!r} could not start: {why}. Command: "
                                 f"{' '.join(cmd[:4])} ... Check the tool set's options in the recipe (task.tools), "
                                 "or start it yourself with `warmstart tools serve` and give its url.")
        self.url = line[len(READY):]
        return self.url

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def exited(self, within_s: float = 0.0) -> bool:
        """Whether the server process has ended (waiting up to ``within_s`` for one that is dying)."""
        if self.proc is None:
            return True
        try:
            self.proc.wait(within_s)
            return True
        except subprocess.TimeoutExpired:
            return False

    def restart(self) -> str:
        with self._lock:
            if self.alive():
                return self.url
            self._kill()
            return self.start()

    def _kill(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(3)
        for f in (self.proc.stdout, self.proc.stderr):
            if f:
                f.close()

    def stop(self) -> None:
        """Stop the server (idempotent)."""
        self._kill()
        self.proc = None


# ----------------------------------------------------------------------------------------- client


def health(url: str, timeout_s: float = 5.0) -> dict:
    """``GET /health`` of a tool server; raises a :class:`WarmstartError` naming the URL when it fails."""
    u = urlsplit(url)
    try:
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout_s)
        conn.request("GET", "/health")
        r = conn.getresponse()
        body = json.loads(r.read())
        conn.close()
    except (OSError, ValueError, http.client.HTTPException) as e:
        raise WarmstartError(f"the tool server at {url} does not answer its health check ({type(e).__name__}: {e}). "
                             "Is it running? Start one with `warmstart tools serve TOOLSET`.") from None
    if not body.get("ok"):
        raise WarmstartError(f"the tool server at {url} reports it is not healthy: {body}")
    return body


class HttpTools:
    """Calls a tool server over HTTP. Given a :class:`ToolServer` it owns, a dead server is restarted
    (counted in ``stats.restarts``) and the call retried once; given only a URL, a dead server is an
    error observation (``server_down``) and the run goes on."""

    def __init__(self, url: str | None = None, server: ToolServer | None = None, limits: ToolLimits | None = None):
        if (url is None) == (server is None):
            raise ValueError("HttpTools needs exactly one of url (a running server) or server (one it owns)")
        self.server = server
        self.limits = limits or (server.limits if server else ToolLimits())
        self.url = url or server.url or server.start()
        self.info = health(self.url)
        self.stats = ToolStats()
        self._local = threading.local()  # one keep-alive connection per calling thread

    def schemas(self) -> list[dict]:
        return self.info["tools"]

    def _conn(self) -> http.client.HTTPConnection:
        c = getattr(self._local, "conn", None)
        if c is None or getattr(self._local, "url", None) != self.url:
            u = urlsplit(self.url)
            # a little past the server's own limit, so a slow tool is reported by the server when it can be
            c = http.client.HTTPConnection(u.hostname, u.port, timeout=self.limits.timeout_s + 2.0)
            self._local.conn, self._local.url = c, self.url
        return c

    def _drop_conn(self) -> None:
        c = getattr(self._local, "conn", None)
        if c is not None:
            c.close()
        self._local.conn = None

    def _post(self, body: bytes) -> dict:
        c = self._conn()
        c.request("POST", "/call", body=body, headers={"Content-Type": "application/json"})
        r = c.getresponse()
        data = r.read()
        if r.status != 200:
            raise ValueError(f"HTTP {r.status}: {data[:200]!r}")
        return json.loads(data)

    def call(self, name: str, arguments: Any, state: dict) -> ToolResult:
        res = self._call(name, arguments, state)
        self.stats.record(res)
        return res

    def _call(self, name: str, arguments: Any, state: dict) -> ToolResult:
        try:
            body = json.dumps({"name": name, "arguments": arguments, "state": state}).encode()
        except (TypeError, ValueError) as e:
            return failure(name, "malformed_args", f"arguments are not JSON ({e})")
        for attempt in range(2):
            try:
                return result_from_json(self._post(body))
            except TimeoutError:
                self._drop_conn()  # the connection is mid-request; a fresh one for the next call
                return failure(name, "timeout", f"no answer from the tool server within {self.limits.timeout_s + 2:g} s")
            except (ConnectionError, http.client.HTTPException, OSError) as e:
                self._drop_conn()
                if self.server is None or not self.server.exited(within_s=1.0):
                    if attempt == 0:  # e.g. the server closed an idle keep-alive connection: one fresh try
                        continue
                    return failure(name, "server_down", f"the tool server at {self.url} is unreachable ({type(e).__name__})")
                # our server is dead: restart it. Retry the call only if the server was down before it
                # was sent (connection refused); a call during which it died may be what killed it.
                try:
                    self.url = self.server.restart()
                    self.stats.restarts += 1
                except WarmstartError as restart_error:
                    return failure(name, "server_down", f"the tool server died and could not restart: {restart_error}")
                if attempt == 0 and isinstance(e, ConnectionRefusedError):
                    continue
                return failure(name, "server_down", "the tool server died during this call (it was restarted)")
            except (ValueError, KeyError) as e:
                return failure(name, "bad_output", f"the tool server's reply is not a result ({e})"[:300])
        return failure(name, "server_down", f"the tool server at {self.url} is unreachable")

    def close(self) -> None:
        self._drop_conn()
        if self.server is not None:
            self.server.stop()


if __name__ == "__main__":
    _main()


# ------------------------------------------------------------------------------ from a recipe block


class ToolsConfig(ToolLimits):
    """A task's ``tools:`` block: which tool set, and where its calls run."""

    toolset: str = Field("chart", description="registered tool set (warmstart.registry.TOOLSETS)")
    options: dict[str, Any] = Field(default_factory=dict, description="the tool set's own options")
    serve: Literal["http", "in_process"] = Field(
        "http", description="'http': the run starts a tool server process (stopped with the run); 'in_process': "
                            "calls run in the run's process (tests, debugging)")
    url: str | None = Field(None, description="use this running server (`warmstart tools serve`) instead of starting one")
    start_timeout_s: float = Field(120.0, gt=0, description="how long a starting server may take to answer (it imports "
                                                             "torch: seconds when idle, a minute on a loaded machine)")

    def limits(self) -> ToolLimits:
        return ToolLimits(**{k: getattr(self, k) for k in ToolLimits.model_fields})


_SHARED: dict[str, list] = {}  # config JSON -> [executor, users]: a run's train and eval tasks share one server
_SHARED_LOCK = threading.Lock()


def open_tools(cfg: ToolsConfig):
    """The executor a tools block asks for. Tasks built from the same block share one executor (one
    server); each :func:`open_tools` is paired with a :func:`release_tools`."""
    key = cfg.model_dump_json()
    with _SHARED_LOCK:
        if key in _SHARED:
            _SHARED[key][1] += 1
            return _SHARED[key][0]
        if cfg.url:
            ex = HttpTools(url=cfg.url, limits=cfg.limits())
        elif cfg.serve == "http":
            ex = HttpTools(server=ToolServer(cfg.toolset, cfg.options, cfg.limits(), cfg.start_timeout_s))
        else:
            from warmstart.tools import LocalTools

            ex = LocalTools(cfg.toolset, cfg.options, cfg.limits())
        _SHARED[key] = [ex, 1]
        return ex


def release_tools(executor) -> None:
    """Drop one user of a shared executor; the last one closes it (stops its server)."""
    with _SHARED_LOCK:
        for key, entry in list(_SHARED.items()):
            if entry[0] is executor:
                entry[1] -= 1
                if entry[1] <= 0:
                    del _SHARED[key]
                    executor.close()
                return
    executor.close()


@atexit.register
def _stop_all() -> None:  # a process that exits without closing its tasks still stops its servers
    for ex, _ in list(_SHARED.values()):
        ex.close()
    _SHARED.clear()
