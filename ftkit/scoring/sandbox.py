"""Run model-written Python against its tests without letting it hang the run, reach the network, read the user's
files or see their secrets.

Each run is a fresh interpreter (`python -I -S`) in its own session and process group and an empty temporary
directory (removed afterwards), with an environment of PATH and locale only, and with limits the kernel enforces,
set before the code runs and not raisable by it: address space (`memory_mb`), CPU seconds, file size, open files;
the wall clock (`timeout`) kills the whole group. Where
the kernel allows unprivileged namespaces (`unshare -rn`), the process has no network at all; in every case an
audit hook installed before the code runs refuses sockets, new processes, native libraries (ctypes), and opening
or listing anything outside its directory and Python's standard library.

What it is not: a boundary against code written to escape (the tests run in the same interpreter as the code, and
the audit hook is Python-level); run untrusted code at scale in containers or VMs. It keeps an RL run going and
the machine and its secrets out of reach of the mistakes and accidents a model makes.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile

MARKER = "FTKIT-SANDBOX-RESULT"

# Runs inside the sandboxed interpreter: limits and guards first, then the program, then each test; prints the
# tally last. The limits are set here rather than before exec (preexec_fn), which is not safe in a threaded parent.
_HARNESS = r'''
import json, os, resource, sys

_spec = json.loads(sys.stdin.read())
for _name, _value in _spec["limits"].items():
    resource.setrlimit(getattr(resource, _name), (_value, _value))

def _guard():
    root = os.path.realpath(os.getcwd())
    readable = tuple(os.path.realpath(p) for p in {sys.prefix, sys.base_prefix, sys.exec_prefix,
                                                   sys.base_exec_prefix} if p)
    refused = ("socket.", "subprocess.", "os.system", "os.exec", "os.spawn", "os.posix_spawn", "os.fork",
               "os.forkpty", "os.kill", "os.killpg", "ctypes.", "gc.get_objects", "gc.get_referrers",
               "sys.addaudithook", "os.putenv", "os.unsetenv", "shutil.rmtree", "resource.setrlimit",
               "resource.prlimit")

    def inside(path, write):
        if isinstance(path, int):
            return True
        path = os.path.realpath(os.fsdecode(path))
        if path == root or path.startswith(root + os.sep):
            return True
        return not write and any(path == r or path.startswith(r + os.sep) for r in readable)

    def hook(event, args):
        if event.startswith(refused) and event not in ("socket.gethostname",):
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "open":
            path, mode = args[0], args[1] or "r"
            flags = args[2] if len(args) > 2 else 0
            write = any(c in str(mode) for c in "wax+") or bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            if path is not None and not inside(path, write):
                raise PermissionError(f"sandbox: opening {path!r} is not allowed")
        elif event in ("os.listdir", "os.scandir", "os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod",
                       "os.symlink", "os.link", "os.truncate", "os.chdir"):
            path = args[0] if args else "."
            if path is not None and not inside(path, event not in ("os.listdir", "os.scandir")):
                raise PermissionError(f"sandbox: {event} on {path!r} is not allowed")

    sys.addaudithook(hook)

_guard()
_passed, _error = 0, ""
try:
    exec(compile(_spec["code"], "solution.py", "exec"), _namespace := {"__name__": "__main__"})
except BaseException as exc:
    _error = f"{type(exc).__name__}: {exc}"[:300]
    _namespace = None
if _namespace is not None:
    for _test in _spec["tests"]:
        try:
            exec(compile(_test, "test.py", "exec"), _namespace)
            _passed += 1
        except BaseException as exc:
            _error = _error or f"{type(exc).__name__}: {exc}"[:300]
sys.stdout.write("\n" + _spec["marker"] + json.dumps({"passed": _passed, "error": _error}) + "\n")
sys.stdout.flush()
'''


@functools.cache
def network_isolation() -> list[str]:
    """The command prefix that takes the network away (`unshare -rn`), or [] where the kernel does not allow it."""
    tool = shutil.which("unshare")
    if tool is None:
        return []
    try:
        probe = subprocess.run([tool, "-rn", "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [tool, "-rn"] if probe.returncode == 0 else []


def problem() -> str | None:
    """Why model-written code cannot be run safely here, or None (a short probe run is made once)."""
    try:
        import resource  # noqa: F401  (POSIX only)
    except ImportError:
        return "the sandbox needs POSIX resource limits (Linux or macOS); this system has none"
    result = run("def f():\n    return 1\n", ["assert f() == 1"], timeout=20)
    if result["passed"] != 1:
        return f"a probe run in the sandbox failed ({result['error'] or 'no result'})"
    return None


def run(code: str, tests: list[str], timeout: float = 5.0, memory_mb: int = 512, cpu_seconds: int = 5) -> dict:
    """Run `code`, then each of `tests` (statements, usually asserts), in the sandbox.

    Returns {"passed": tests that ran without error, "total", "timed_out", "error": the first error, or why the
    run stopped}. Whatever happens inside, this returns within about `timeout` seconds.
    """
    marker = MARKER + os.urandom(8).hex()
    limits = {"RLIMIT_AS": memory_mb * 2**20, "RLIMIT_CPU": cpu_seconds, "RLIMIT_FSIZE": 2**20, "RLIMIT_NOFILE": 64,
              "RLIMIT_CORE": 0}
    spec = json.dumps({"code": code, "tests": list(tests), "marker": marker, "limits": limits})
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"}
    folder = tempfile.mkdtemp(prefix="ftkit-sandbox-")
    command = [*network_isolation(), sys.executable, "-I", "-S", "-c", _HARNESS]
    out = {"passed": 0, "total": len(tests), "timed_out": False, "error": ""}
    try:
        process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   cwd=folder, env=env, start_new_session=True, text=True)
        try:
            stdout, stderr = process.communicate(spec, timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill(process)
            process.communicate()
            return {**out, "timed_out": True, "error": f"stopped after {timeout:g} s (wall clock)"}
        finally:
            _kill(process)  # anything it left running in its group
        found = [line for line in stdout.splitlines() if line.startswith(marker)]
        if not found:
            reason = (stderr.strip().splitlines() or [f"exit status {process.returncode}"])[-1][:300]
            if process.returncode in (-signal.SIGXCPU, -signal.SIGKILL):
                reason = f"stopped at the CPU limit ({cpu_seconds} s)"
            return {**out, "error": reason}
        result = json.loads(found[-1][len(marker):])
        return {**out, "passed": int(result["passed"]), "error": result["error"]}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _kill(process) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def extract_code(reply: str) -> str:
    """The Python in a model's reply: the first fenced block (```python ... ``` or ``` ... ```), else the reply.

    >>> extract_code("Here:\\n```python\\ndef f():\\n    return 1\\n```\\nDone.")
    'def f():\\n    return 1'
    >>> extract_code("def g(): pass")
    'def g(): pass'
    """
    import re

    fenced = re.search(r"```(?:python|py)?[ \t]*\n(.*?)(?:```|$)", reply, re.DOTALL)
    return (fenced.group(1) if fenced else reply).strip()
