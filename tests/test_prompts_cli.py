"""The dry-run command writes the exact prompts and stops a run would use, without a model."""

from __future__ import annotations

import json

import pytest

from scmoe_eval.tasks.__main__ import main


def test_dry_run_writes_the_paper_prompts(paper_files, tmp_path) -> None:
    out = tmp_path / "prompts.jsonl"
    main(["strategy_qa", str(out), "--data-dir", str(paper_files / "strategy_qa"), "--limit", "5"])
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    paper = [json.loads(line)["instructions"] for line in (paper_files / "strategy_qa" / "input.jsonl").open()][:5]
    assert [r["prompt"] for r in rows] == paper
    assert all(r["stop"] == ["\n\n"] for r in rows) and [r["index"] for r in rows] == list(range(5))


def test_dry_run_hub_failure_is_one_clear_line(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SystemExit) as exc:
        main(["gsm8k", str(tmp_path / "p.jsonl")])
    assert "--data-dir /path" in str(exc.value) and "task.data_dir" not in str(exc.value)  # this CLI's flag
