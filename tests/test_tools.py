"""Tools (warmstart.tools): schemas from signatures, every fault an observation, the HTTP server's
life cycle (started and stopped with the run, restarted when it dies, no orphans), the sandbox, the
paper's action format, and token-in/token-out with a real chat template."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from warmstart.episode import collate
from warmstart.errors import WarmstartError
from warmstart.tools import LocalTools, ToolLimits, check_arguments
from warmstart.tools.actions import final_answer, format_action, parse_action
from warmstart.tools.chart import ChartTools
from warmstart.tools.sandbox import network_isolation, run_python
from warmstart.tools.server import HttpTools, ToolServer, health

CHART = {"labels": ["A", "B", "C", "D"], "values": [12, 47, 3, 47]}


def _children_serving() -> list[int]:
    """Pids of this process's children that run a tool server."""
    me, out = os.getpid(), []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == me and "warmstart.tools.server" in cmd:
            out.append(int(d.name))
    return out


def _gone(pid: int, within_s: float = 5.0) -> bool:
    end = time.time() + within_s
    while time.time() < end:
        try:
            os.kill(pid, 0)
            st = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            if st == "Z":  # exited, not yet reaped by its parent
                return True
        except (ProcessLookupError, FileNotFoundError):
            return True
        time.sleep(0.05)
    return False


# ----------------------------------------------------------------------------------- schemas, checks


def test_schema_from_signature_and_docstring():
    schemas = {s["function"]["name"]: s for s in ChartTools.schemas()}
    assert sorted(schemas) == ["draw_line", "point", "read_value", "terminate", "zoom"]
    rv = schemas["read_value"]["function"]
    assert rv["description"] == "Read the exact value of a bar."
    assert rv["parameters"] == {"type": "object", "properties": {"label": {"type": "string", "description": 'the bar\'s label, e.g. "C"'}},
                                "required": ["label"]}
    assert schemas["draw_line"]["function"]["parameters"]["properties"]["y"]["type"] == "integer"
    assert schemas["zoom"]["function"]["parameters"]["required"] == ["first", "last"]


def test_check_arguments():
    s = next(x for x in ChartTools.schemas() if x["function"]["name"] == "draw_line")
    assert check_arguments(s, {"y": 40}) is None
    assert "missing" in check_arguments(s, {})
    assert "unexpected" in check_arguments(s, {"y": 1, "z": 2})
    assert "must be integer" in check_arguments(s, {"y": "40"})
    assert "boolean" in check_arguments(s, {"y": True})
    assert "JSON object" in check_arguments(s, [40])


def test_chart_tools_answers():
    t = LocalTools("chart")
    assert t.call("read_value", {"label": "B"}, CHART).text == "47"
    assert t.call("point", {"label": "C"}, CHART).text == "C is bar 3 of 4"
    assert t.call("zoom", {"first": "C", "last": "A"}, CHART).text == "A:12 B:47 C:3"
    assert t.call("draw_line", {"y": 40}, CHART).text == "above: B D"
    assert t.call("draw_line", {"y": 99}, CHART).text == "above: none"
    bad = t.call("read_value", {"label": "Z"}, CHART)
    assert bad.error_kind == "raised" and "no bar labelled 'Z'" in bad.observation()
    assert t.stats.calls == 6 and t.stats.ok == 5 and t.stats.errors == {"raised": 1}


def test_local_faults_become_observations():
    t = LocalTools("faults", limits=ToolLimits(timeout_s=0.3, max_output_chars=100))
    cases = {
        ("hang", json.dumps({"seconds": 3})): "timeout",
        ("boom", "{}"): "raised",
        ("garbage", json.dumps({"size": 5000})): "oversized",
        ("garbage", json.dumps({"size": -1})): "bad_output",
        ("nope", "{}"): "unknown_tool",
        ("echo", json.dumps({"txt": "hi"})): "malformed_args",
    }
    for (name, args), kind in cases.items():
        t0 = time.time()
        res = t.call(name, json.loads(args), {})
        assert res.error_kind == kind, (name, res)
        assert res.observation().startswith(f"ERROR ({kind}):")
        assert time.time() - t0 < 2.0
    assert t.call("echo", {"text": "hi"}, {}).text == "hi"
    m = t.stats.as_metrics()
    assert m["tool_calls"] == 7 and m["tool_errors"] == 6 and m["tool_success_rate"] == pytest.approx(1 / 7)
    assert m["tool_errors/timeout"] == 1


# ------------------------------------------------------------------------------------------- server


@pytest.mark.slow  # starts tool-server processes (imports torch): seconds each
def test_http_server_calls_faults_restart_and_stop():
    server = ToolServer("faults", limits=ToolLimits(timeout_s=0.5, max_output_chars=100))
    tools = HttpTools(server=server)
    try:
        pid = tools.info["pid"]
        assert health(tools.url)["toolset"] == "faults" and pid in _children_serving()
        assert tools.call("echo", {"text": "hello"}, {}).text == "hello"
        assert tools.call("hang", {"seconds": 5}, {}).error_kind == "timeout"
        assert tools.call("boom", {}, {}).error_kind == "raised"
        assert tools.call("garbage", {"size": 500}, {}).error_kind == "oversized"
        assert tools.call("echo", {"text": 3}, {}).error_kind == "malformed_args"
        # the server dies mid-call: that call is an error, the server is restarted, the next call works
        died = tools.call("die", {}, {})
        assert died.error_kind == "server_down" and "restarted" in died.error
        again = tools.call("echo", {"text": "again"}, {})
        assert again.text == "again", again
        assert tools.stats.restarts == 1 and _gone(pid)
        new_pid = health(tools.url)["pid"]
        assert new_pid != pid
    finally:
        tools.close()
    assert _gone(new_pid) and not _children_serving()


def test_url_client_reports_a_dead_server_and_goes_on():
    server = ToolServer("faults")
    url = server.start()
    tools = HttpTools(url=url)
    assert tools.call("echo", {"text": "x"}, {}).ok
    server.stop()
    res = tools.call("echo", {"text": "x"}, {})
    assert res.error_kind == "server_down" and "unreachable" in res.error
    with pytest.raises(WarmstartError, match="does not answer its health check"):
        HttpTools(url=url)


def test_server_that_cannot_start_says_why():
    with pytest.raises(WarmstartError, match="unknown tool set kind 'chrat'. Did you mean 'chart'"):
        ToolServer("chrat").start()
    with pytest.raises(Exception, match="max_zom"):
        ToolServer("chart", {"max_zom": 3}).start()
    slow = ToolServer("chart", start_timeout_s=0.05)  # it cannot import torch that fast: a timeout, said so
    with pytest.raises(WarmstartError, match="could not start: no READY line within 0.05 s"):
        slow.start()
    assert slow.proc.poll() is not None  # and the half-started process was killed


@pytest.mark.slow  # starts tool-server processes (imports torch): seconds each
def test_server_dies_with_its_parent(tmp_path):
    """A run killed with SIGKILL (no cleanup at all) leaves no tool server behind."""
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent("""
        import sys, time
        from warmstart.tools.server import ToolServer
        s = ToolServer("chart"); s.start()
        print(s.proc.pid, flush=True)
        time.sleep(60)
    """))
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    os.kill(child, 0)  # running
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    assert _gone(child, 5.0), "the tool server outlived its killed parent"


# ------------------------------------------------------------------------------------------ sandbox


needs_netns = pytest.mark.skipif(network_isolation() is None, reason="no unprivileged network namespaces here")


@needs_netns
def test_sandbox_kills_runaway_code():
    t0 = time.time()
    assert run_python("while True: pass", cpu_s=1, wall_s=5).killed_by == "cpu"
    assert run_python("import time; time.sleep(30)", wall_s=0.5).killed_by == "wall"
    assert run_python("x = bytearray(512 << 20)", mem_mb=128).killed_by == "memory"
    ok = run_python("print(sum(range(10)))")
    assert ok.stdout.strip() == "45" and ok.killed_by is None and ok.returncode == 0
    assert time.time() - t0 < 15
    tools = LocalTools("python", {"cpu_s": 1, "wall_s": 3})
    res = tools.call("run_python", {"code": "while True: pass"}, {})
    assert res.error_kind == "sandbox" and "killed by its" in res.error  # cpu, or wall on a loaded machine


@needs_netns
def test_sandbox_has_no_network():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    port = srv.getsockname()[1]
    code = f"import socket; s = socket.create_connection(('127.0.0.1', {port}), timeout=2); print('connected')"
    try:
        plain = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=10)
        assert plain.stdout.strip() == "connected"  # the same code reaches the port from outside the sandbox
        boxed = run_python(code)
        assert "connected" not in boxed.stdout and boxed.returncode != 0
        assert "Network is unreachable" in boxed.stderr or "refused" in boxed.stderr
    finally:
        srv.close()


# --------------------------------------------------------------------------------------- action format


def test_action_format_roundtrip_and_errors():
    text = format_action("read_value", {"label": "C"}, "need C")
    act, why = parse_action(text)
    assert why is None and act.name == "read_value" and act.arguments == {"label": "C"} and act.thought == "need C"
    assert parse_action('{"thought": "x", "actions": []}')[1].startswith('"actions" must be a list')
    assert parse_action("the answer is 4")[1].startswith("no JSON action")
    assert parse_action('{"actions": [{"name": "zoom", "arguments": [1]}]}')[1] == "the action's arguments must be a JSON object"
    act, _ = parse_action('<tool_call>\n{"name": "Terminate", "arguments": {"answer": "7"}}\n</tool_call>')
    assert act.is_terminate and act.arguments == {"answer": "7"}
    assert final_answer([text, format_action("terminate", {"answer": 12})]) == "12"
    assert final_answer([text]) is None


def test_cli_tools_list_and_serve_errors():
    from typer.testing import CliRunner

    from warmstart.engine.cli import app

    out = CliRunner().invoke(app, ["tools", "list"])
    assert out.exit_code == 0 and "chart:" in out.output and "read_value" in out.output
    bad = CliRunner().invoke(app, ["tools", "serve", "chrat"])
    assert bad.exit_code == 2 and "unknown tool set kind 'chrat'" in bad.output
    bad = CliRunner().invoke(app, ["tools", "serve", "chart", "--option", "max_zoom"])
    assert bad.exit_code == 2 and "write key=value" in bad.output
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))  # the port is taken
    try:
        busy = CliRunner().invoke(app, ["tools", "serve", "chart", "--port", str(srv.getsockname()[1])])
        assert busy.exit_code == 2 and "cannot listen on" in busy.output
    finally:
        srv.close()
