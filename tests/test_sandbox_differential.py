"""The sandbox runs a program exactly as ``python3 program.py`` would (differential against plain runs),
under host-independent rlimits, and a program cannot reach the harness's terminal."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import termios
import textwrap
from pathlib import Path


from scmoe_eval.scoring import differential
from scmoe_eval.scoring.execution import run_programs

REPO = Path(__file__).resolve().parents[1]


def test_future_annotations_are_not_inherited_from_the_launcher() -> None:
    unimported = "def f(x: List[int]) -> int:\n    return 0\n\nassert f([1]) == 0\n"
    evaluated = "def f(x: int) -> int:\n    return x\n\nassert f.__annotations__['x'] is int\n"
    explicit = "from __future__ import annotations\ndef f(x: List[int]):\n    pass\nassert f.__annotations__['x'] == 'List[int]'\n"
    missing, objects, deferred = run_programs([unimported, evaluated, explicit], timeout=5, num_workers=2)
    assert missing.status == "failed" and "NameError: name 'List' is not defined" in missing.detail, missing
    assert objects.passed, objects
    assert deferred.passed, deferred  # a program's own future import still counts


def test_differential_subset_agrees_with_plain_python() -> None:
    """HumanEval canonical + mutants of 6 problems, every probe, the hostile programs that are safe to
    run unconfined (the others have a plain verdict of "fail" by construction)."""
    cases = differential.human_eval_cases(limit=6) + differential.probe_cases()
    cases += [c for c in differential.hostile_cases() if not c.unsafe]
    kinds = {c.kind for c in cases}
    assert {"canonical", "off_by_one", "wrong_return", "raise", "infinite_loop", "missing_import",
            "annotation_only_name", "main_block_fails", "top_level_prints", "probe", "hostile"} <= kinds
    report = differential.compare(cases, timeout=2.0, workers=2)
    assert report["disagreements"] == [], json.dumps(report["disagreements"], indent=1)
    # the corpus discriminates: both verdicts occur in each family that can go either way
    assert 0 < report["by_kind"]["probe"]["passed_plain"] < report["by_kind"]["probe"]["n"]
    assert report["by_kind"]["canonical"]["passed_plain"] == report["by_kind"]["canonical"]["n"]
    assert report["by_kind"]["missing_import"]["passed_plain"] == 0


def test_differential_mbpp_subset(shared_data: Path) -> None:
    cases = differential.mbpp_cases(shared_data / "mbpp" / "test.jsonl", limit=8)
    cases = [c for c in cases if c.kind != "infinite_loop"]
    report = differential.compare(cases, timeout=5.0, workers=2)
    assert report["disagreements"] == [], json.dumps(report["disagreements"], indent=1)
    assert report["by_kind"]["canonical"]["passed_plain"] == 8


def test_reference_runner_detects_early_exit() -> None:
    """The plain-Python reference itself: exit 0 before the end is not a pass."""
    assert differential.plain_python_passes("assert 1 == 1\n", timeout=10)
    assert not differential.plain_python_passes("import sys\nsys.exit(0)\nassert 1 == 1\n", timeout=10)
    assert not differential.plain_python_passes("assert 1 == 2\n", timeout=10)


# Each program exceeds one limit and asserts that the limit held; "passed" means it was enforced.
LIMIT_PROGRAMS = {
    "nofile": """
        import errno, os, resource
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (1024, 1024)
        fds = []
        try:
            for _ in range(200_000):
                fds.append(os.open("/dev/null", os.O_RDONLY))
        except OSError as exc:
            assert exc.errno == errno.EMFILE, exc
        assert len(fds) < 1024, len(fds)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (65536, 65536))
        except (ValueError, PermissionError):
            pass
        else:
            raise AssertionError("raised its own NOFILE limit")
    """,
    "stack": """
        import resource
        assert resource.getrlimit(resource.RLIMIT_STACK) == (8 * 2**20, 8 * 2**20)
        try:
            resource.setrlimit(resource.RLIMIT_STACK, (resource.RLIM_INFINITY,) * 2)
        except (ValueError, PermissionError):
            pass
        else:
            raise AssertionError("raised its own STACK limit")
    """,
    "memlock": """
        import ctypes, resource
        assert resource.getrlimit(resource.RLIMIT_MEMLOCK) == (0, 0)
        libc = ctypes.CDLL(None, use_errno=True)
        buf = ctypes.create_string_buffer(4096)
        assert libc.mlock(buf, 4096) == -1, "locked memory"
    """,
    "msgqueue": """
        import ctypes, ctypes.util, errno, os, resource
        assert resource.getrlimit(resource.RLIMIT_MSGQUEUE) == (0, 0)
        class Attr(ctypes.Structure):
            _fields_ = [("flags", ctypes.c_long), ("maxmsg", ctypes.c_long), ("msgsize", ctypes.c_long),
                        ("curmsgs", ctypes.c_long), ("pad", ctypes.c_long * 4)]
        lib = ctypes.CDLL(None, use_errno=True)
        if not hasattr(lib, "mq_open"):
            lib = ctypes.CDLL(ctypes.util.find_library("rt"), use_errno=True)
        lib.mq_open.restype = ctypes.c_int
        attr = Attr(0, 4, 1024, 0)
        fd = lib.mq_open(b"/scmoe-limit-test", os.O_CREAT | os.O_RDWR, 0o600, ctypes.byref(attr))
        assert fd == -1 and ctypes.get_errno() == errno.EMFILE, (fd, ctypes.get_errno())
    """,
    "sigpending": """
        import errno, resource, signal, threading
        assert resource.getrlimit(resource.RLIMIT_SIGPENDING) == (64, 64)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGRTMIN})
        sent = 0
        try:  # tgkill queues real-time signals against the limit (kill() may override it)
            for _ in range(10_000):
                signal.pthread_kill(threading.get_ident(), signal.SIGRTMIN)
                sent += 1
        except OSError as exc:
            assert exc.errno == errno.EAGAIN, exc
        assert sent <= 64, sent
    """,
    "nice_rtprio": """
        import os, resource
        assert resource.getrlimit(resource.RLIMIT_NICE) == (0, 0)
        assert resource.getrlimit(resource.RLIMIT_RTPRIO) == (0, 0)
        for attempt in (lambda: os.nice(-5), lambda: os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))):
            try:
                attempt()
            except PermissionError:
                pass
            else:
                raise AssertionError("raised its priority")
    """,
}


def test_every_rlimit_holds_against_a_program_exceeding_it() -> None:
    names = list(LIMIT_PROGRAMS)
    results = run_programs([textwrap.dedent(LIMIT_PROGRAMS[n]) for n in names], timeout=10, num_workers=2)
    for name, result in zip(names, results):
        assert result.passed, (name, result)


def test_deep_c_recursion_ends_at_the_stack_limit() -> None:
    """Past a lifted recursion limit, C recursion (repr of nested lists) hits the 8 MiB stack, on any host."""
    program = "import sys\nsys.setrecursionlimit(10**8)\nx = []\nfor _ in range(10**6):\n    x = [x]\nrepr(x)\n"
    (result,) = run_programs([program], timeout=20, memory_mb=2048)
    assert result.status in {"killed", "failed"} and not result.passed, result
    assert result.status != "timeout"


TTY_HARNESS = """
import json, sys
from scmoe_eval.scoring.execution import run_programs
program = '''
import os, sys, termios
for attempt in (
    lambda: open("/dev/tty", "w").write("HACKED-TTY\\\\n"),
    lambda: os.write(os.open("/dev/tty", os.O_WRONLY), b"HACKED-TTY\\\\n"),
    lambda: termios.tcsetattr(0, termios.TCSANOW, [0, 0, 0, 0, 0, 0, [b"\\\\0"] * 32]),
    lambda: termios.tcsetattr(os.open("/dev/tty", os.O_RDWR), termios.TCSANOW, [0, 0, 0, 0, 0, 0, [b"\\\\0"] * 32]),
):
    try:
        attempt()
    except Exception as exc:
        print(type(exc).__name__)
print(repr(sys.stdin.read()))
'''
results = run_programs([program, "assert 1 + 1 == 2\\n"], timeout=5, num_workers=1)
print(json.dumps([[r.status, r.detail] for r in results]))
"""


def test_program_cannot_touch_the_harness_terminal() -> None:
    """The harness runs with a pty as its controlling terminal and stdin; the program writes to /dev/tty,
    rewrites terminal attributes and reads stdin. The pty stays untouched and the harness carries on."""
    master, slave = pty.openpty()
    before = termios.tcgetattr(slave)

    def take_terminal() -> None:
        os.setsid()
        import fcntl

        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen([sys.executable, "-c", TTY_HARNESS], stdin=slave, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=REPO, preexec_fn=take_terminal,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        out, err = proc.communicate(timeout=120)
        after = termios.tcgetattr(slave)
    finally:
        os.close(slave)
    echoed = b""
    while select.select([master], [], [], 0)[0]:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        echoed += chunk
    os.close(master)
    assert proc.returncode == 0, err.decode()[-2000:]
    (attack_status, attack_detail), (control_status, _) = json.loads(out)
    assert b"HACKED" not in echoed
    assert after == before
    assert control_status == "passed"
    assert "''" in attack_detail and attack_detail.count("OSError") + attack_detail.count("error") >= 3, attack_detail
