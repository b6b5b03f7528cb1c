"""One generating process per (run directory, shard), also across nodes on a shared filesystem.

Two identical commands, or a SLURM requeue beside a job that still runs, would otherwise both
generate everything (records dedupe on read, the compute doubles silently). The lock is a file
created with O_CREAT|O_EXCL (atomic on local filesystems and NFS) holding host, pid, the process's
start time and a token; the holder touches it every `stale_after / 5` seconds from a daemon thread.

A lock is stale, and taken over, when its holder is provably gone:
- same host: the pid is dead, or reused by a process started after the lock was written;
- another host (we cannot see its processes): the heartbeat is older than `stale_after` seconds
  (default 300; `SCMOE_LOCK_STALE_S`), i.e. the node died or lost the filesystem.
Otherwise the newcomer waits (one line says for whom) and proceeds when the holder is done: it then
finds the items generated and only scores. A takeover renames the stale file away first, so two
newcomers racing for one stale lock cannot both win.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import psutil

log = logging.getLogger(__name__)
DEFAULT_STALE_AFTER = 300.0


def _stale_after() -> float:
    return float(os.environ.get("SCMOE_LOCK_STALE_S", DEFAULT_STALE_AFTER))


def _process_start(pid: int) -> Optional[float]:
    """Start time of a live local process, None if there is none."""
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.AccessDenied:  # alive, owned by someone else
        return 0.0


class RunLock:
    """Context manager: hold `path` while generating; see the module docstring for the rules."""

    def __init__(self, path: Path, *, stale_after: Optional[float] = None, poll: float = 2.0) -> None:
        self.path = Path(path)
        self.stale_after = _stale_after() if stale_after is None else stale_after
        self.poll = poll
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._beat: Optional[threading.Thread] = None

    # -- reading a lock ---------------------------------------------------------------------------
    def _read(self, path: Optional[Path] = None) -> Optional[dict[str, Any]]:
        try:
            text = (path or self.path).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            return json.loads(text)
        except json.JSONDecodeError:  # a holder killed between create and write: judge it by its age
            return {"host": None, "pid": None, "token": None}

    def _heartbeat_age(self) -> float:
        try:
            return time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return 0.0

    def why_stale(self, holder: dict[str, Any]) -> Optional[str]:
        """Why the holder is gone, or None while it may still be running."""
        if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
            started = _process_start(holder["pid"])
            if started is None:
                return f"pid {holder['pid']} is dead"
            if started and holder.get("process_start") and started > holder["process_start"] + 1:
                return f"pid {holder['pid']} now belongs to another process"
            return None
        age = self._heartbeat_age()
        if age > self.stale_after:
            return f"no heartbeat for {age:.0f} s (> {self.stale_after:.0f} s)"
        return None

    @staticmethod
    def describe(holder: dict[str, Any]) -> str:
        return f"pid {holder.get('pid')} on {holder.get('host')} (since {holder.get('started')})"

    # -- taking it ---------------------------------------------------------------------------------
    def _try_create(self) -> bool:
        record = {
            "host": socket.gethostname(), "pid": os.getpid(), "process_start": _process_start(os.getpid()),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "token": self.token,
        }
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(record, fh)
            fh.flush()
            os.fsync(fh.fileno())
        return True

    def _take_over(self, holder: dict[str, Any]) -> None:
        """Move the stale lock aside; if what moved is not the lock we judged (a racer's), put it back."""
        aside = self.path.with_name(f"{self.path.name}.stale.{self.token}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        if (self._read(aside) or {}).get("token") == holder.get("token"):
            aside.unlink(missing_ok=True)
            return
        try:
            os.link(aside, self.path)  # fails if someone created a lock meanwhile: theirs stands
        except FileExistsError:
            pass
        aside.unlink(missing_ok=True)

    def acquire(self, timeout: Optional[float] = None) -> None:
        """Take the lock, waiting while a live holder has it; TimeoutError after `timeout` seconds."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = None if timeout is None else time.monotonic() + timeout
        announced = False
        while not self._try_create():
            holder = self._read()
            if holder is None:
                continue  # released between our attempt and the read
            reason = self.why_stale(holder)
            if reason is not None:
                log.warning("taking over the stale lock %s of %s: %s", self.path, self.describe(holder), reason)
                self._take_over(holder)
                continue
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"{self.path} is held by {self.describe(holder)}")
            if not announced:
                log.warning(
                    "waiting: %s is generating this run already (%s); this run continues when it ends. A holder on "
                    "another host is taken as dead after %.0f s without a heartbeat.",
                    self.describe(holder), self.path, self.stale_after,
                )
                announced = True
            time.sleep(self.poll)
        self._stop.clear()
        self._beat = threading.Thread(target=self._heartbeat, name="scmoe-run-lock", daemon=True)
        self._beat.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(max(self.stale_after / 5, 0.05)):
            try:
                os.utime(self.path)
            except FileNotFoundError:
                return

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        if (self._read() or {}).get("token") == self.token:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
