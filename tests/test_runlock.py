"""One generating process per run directory: live holders are waited for, dead ones taken over."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from scmoe_eval.runlock import RunLock

REPO = Path(__file__).resolve().parents[1]


def plant(path: Path, *, host: str, pid: int, process_start: float | None = None, age: float = 0.0) -> dict:
    """A lock file as another process left it, with its heartbeat `age` seconds old."""
    holder = {"host": host, "pid": pid, "process_start": process_start, "started": "earlier", "token": "theirs"}
    path.write_text(json.dumps(holder))
    os.utime(path, (time.time() - age, time.time() - age))
    return holder


def test_live_holder_on_this_host_is_waited_for_then_a_dead_one_is_taken_over(tmp_path: Path, caplog) -> None:
    lock = tmp_path / "run.lock"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        plant(lock, host=socket.gethostname(), pid=sleeper.pid, process_start=psutil.Process(sleeper.pid).create_time(),
              age=10_000)  # an old heartbeat does not matter on this host: the pid is checked
        with caplog.at_level(logging.WARNING), pytest.raises(TimeoutError, match=f"pid {sleeper.pid} on"):
            RunLock(lock, poll=0.05).acquire(timeout=0.5)
        assert "waiting:" in caplog.text
    finally:
        sleeper.kill()
        sleeper.wait()
    with caplog.at_level(logging.WARNING), RunLock(lock, poll=0.05) as mine:  # kill -9 left the lock behind
        assert json.loads(lock.read_text())["token"] == mine.token
    assert f"pid {sleeper.pid} is dead" in caplog.text
    assert not lock.exists(), "release removes the lock"


def test_reused_pid_is_not_a_live_holder(tmp_path: Path) -> None:
    lock = tmp_path / "run.lock"
    plant(lock, host=socket.gethostname(), pid=os.getpid(), process_start=psutil.Process().create_time() - 3600)
    holder = json.loads(lock.read_text())
    assert "now belongs to another process" in RunLock(lock).why_stale(holder)


def test_other_host_is_judged_by_its_heartbeat(tmp_path: Path) -> None:
    """A node we cannot see: alive while it touches the lock, dead after `stale_after` of silence."""
    lock = tmp_path / "run.lock"
    plant(lock, host="node-that-died", pid=1, age=5.0)
    with pytest.raises(TimeoutError, match="node-that-died"):
        RunLock(lock, stale_after=60, poll=0.05).acquire(timeout=0.3)
    plant(lock, host="node-that-died", pid=1, age=120.0)
    with RunLock(lock, stale_after=60, poll=0.05):
        assert json.loads(lock.read_text())["host"] == socket.gethostname()


def test_holder_heartbeat_keeps_the_lock_fresh(tmp_path: Path) -> None:
    lock = tmp_path / "run.lock"
    with RunLock(lock, stale_after=0.5):
        os.utime(lock, (time.time() - 100, time.time() - 100))
        time.sleep(0.4)  # beats every stale_after / 5
        assert time.time() - lock.stat().st_mtime < 0.5


def test_racers_for_one_stale_lock_never_hold_it_together(tmp_path: Path) -> None:
    lock = tmp_path / "run.lock"
    plant(lock, host="node-that-died", pid=1, age=1000)
    holding, overlaps, go = [], [], threading.Barrier(6)

    def worker() -> None:
        go.wait()
        for _ in range(5):
            with RunLock(lock, stale_after=30, poll=0.005):
                holding.append(1)
                if len(holding) > 1:
                    overlaps.append(len(holding))
                time.sleep(0.002)
                holding.pop()

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert overlaps == [] and not lock.exists()
    assert not list(tmp_path.glob("run.lock.stale.*")), "takeovers leave nothing behind"


def command(out: Path, limit: int, tokens: int = 24) -> list[str]:
    return [sys.executable, "-m", "scmoe_eval", "model=tiny-mixtral", "task=gsm8k", "task.demo=true", "strategy=greedy",
            f"run.limit={limit}", f"run.max_new_tokens={tokens}", "run.batch_size=1", f"run.output_dir={out}"]


def generated(run_dir: Path) -> list[dict]:
    path = run_dir / "generations.jsonl"
    return [json.loads(line) for line in path.read_text().split("\n")[:-1]] if path.exists() else []


def wait_for(predicate, proc: subprocess.Popen, seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None and not predicate():
        time.sleep(0.02)
    assert predicate(), "the run ended (or stalled) before the condition held"


@pytest.mark.slow
def test_two_identical_runs_at_once_generate_once(tmp_path: Path) -> None:
    # no stop strings and long completions: the first run still generates when the second has started
    slow = [*command(tmp_path, 10, tokens=300), "task.stop=[]"]
    first = subprocess.Popen(slow, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: any(tmp_path.glob("gsm8k__*/run.lock")), first)
    second = subprocess.run(slow, cwd=REPO, capture_output=True, text=True, timeout=600)
    first.communicate(timeout=600)
    assert first.returncode == 0 and second.returncode == 0, second.stderr[-2000:]
    assert "waiting:" in second.stderr and "generating this run already" in second.stderr
    run_dir = next(tmp_path.glob("gsm8k__*"))
    assert len(generated(run_dir)) == 10, "the second run generated items again"
    assert json.loads((run_dir / "environment.json").read_text())["items_generated"] == 0


@pytest.mark.slow
def test_ctrl_c_prints_one_line_and_the_rerun_resumes(tmp_path: Path) -> None:
    # a pytest-xdist worker ignores SIGINT and a child inherits that: give the run a terminal's default
    proc = subprocess.Popen(command(tmp_path, 10), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    wait_for(lambda: any(len(generated(d)) >= 3 for d in tmp_path.glob("gsm8k__*")), proc)
    proc.send_signal(signal.SIGINT)  # as Ctrl-C sends it
    _, err = proc.communicate(timeout=120)
    run_dir = next(tmp_path.glob("gsm8k__*"))
    saved = len(generated(run_dir))
    assert proc.returncode == 130 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        f"scmoe-eval: interrupted: {saved}/10 items saved in {run_dir}; run the same command again to resume"
    )
    assert not (run_dir / "run.lock").exists()
    resumed = subprocess.run(command(tmp_path, 10), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0 and f"resuming: {saved}/10 items done" in resumed.stderr
    assert sorted(r["index"] for r in generated(run_dir)) == list(range(10))
