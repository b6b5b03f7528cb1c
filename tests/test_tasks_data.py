"""Loading: clear errors for bad files and an unreachable Hub; source derivations."""

from __future__ import annotations

import json

import pytest

from scmoe_eval.config import TaskConfig
from scmoe_eval.tasks import get_task
from scmoe_eval.tasks.benchmark import demo_dir
from scmoe_eval.tasks.gsm8k import gold_from_solution
from scmoe_eval.tasks.source import TaskDataError
from scmoe_eval.tasks.strategy_qa import derive_paper_rows, exemplar_questions


def copy_lines(src, dst_dir, edit=None):
    """A paper-layout test.jsonl copied to tmp, optionally with lines edited or dropped."""
    lines = src.read_text("utf-8").splitlines(keepends=True)
    if edit:
        lines = edit(lines)
    dst_dir.mkdir(parents=True, exist_ok=True)
    (dst_dir / "test.jsonl").write_text("".join(lines), "utf-8")
    return TaskConfig(data_dir=str(dst_dir))


def test_malformed_line_names_file_and_line(tmp_path):
    def corrupt(lines):
        lines[3] = lines[3][:30] + "\n"
        return lines
    cfg = copy_lines(demo_dir("human_eval") / "test.jsonl", tmp_path, corrupt)
    with pytest.raises(TaskDataError, match=r"test\.jsonl:4: malformed JSON"):
        get_task("human_eval").load(cfg)


def test_missing_field_names_file_and_line(tmp_path):
    def drop_label(lines):
        row = json.loads(lines[6])
        del row["label"]
        lines[6] = json.dumps(row) + "\n"
        return lines
    cfg = copy_lines(demo_dir("gsm8k") / "test.jsonl", tmp_path, drop_label)
    with pytest.raises(TaskDataError, match=r"test\.jsonl:7: missing field\(s\) \['label'\]"):
        get_task("gsm8k").load(cfg)


def test_wrong_count_names_file(tmp_path):
    cfg = copy_lines(demo_dir("mbpp") / "test.jsonl", tmp_path, lambda lines: lines[:-1])
    with pytest.raises(TaskDataError, match=r"test\.jsonl: expected 500 items, found 4"):
        get_task("mbpp").load(cfg)


def test_missing_data_dir_file(tmp_path):
    with pytest.raises(TaskDataError, match="file not found"):
        get_task("strategy_qa").load(TaskConfig(data_dir=str(tmp_path)))


@pytest.mark.parametrize("name, dataset", [
    ("gsm8k", "openai/gsm8k"),
    ("strategy_qa", "havens2/strategyQA_train"),
    ("mbpp", "google-research-datasets/mbpp"),
])
def test_unreachable_hub_names_the_override(monkeypatch, name, dataset):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TaskDataError, match=r"task\.data_dir=/path") as info:
        get_task(name).load(TaskConfig(name=name))
    assert dataset in str(info.value) and "revision=" in str(info.value)


def test_gsm8k_gold_derivation_matches_paper_labels(shared_data):
    rows = [json.loads(line) for line in open(shared_data / "gsm8k" / "test.jsonl")]
    assert all(gold_from_solution(r["answer"]) == r["label"] for r in rows)
    assert gold_from_solution("so 2,000 + 125\n#### 2,125") == "2,125"


def test_strategy_qa_derivation_reproduces_paper_set(shared_data):
    """Rebuild a 2,290-row "train split" from the paper's rows plus the four exemplar
    questions and check that the derivation gives back exactly the paper's 2,286 rows."""
    paper = [json.loads(line) for line in open(shared_data / "strategy_qa" / "test.jsonl")]
    train = [{k: v for k, v in row.items() if k != "label"} for row in paper]
    for slot, question in zip((0, 700, 1500, 2286), exemplar_questions()):
        train.insert(slot, {"qid": f"x{slot}", "question": question, "answer": True})
    assert len(train) == 2290
    assert derive_paper_rows(train) == paper
    with pytest.raises(TaskDataError, match="exemplar questions not found"):
        derive_paper_rows(train[1:])


def test_strategy_qa_exemplars_not_in_paper_set_but_later_ones_are(shared_data):
    questions = {json.loads(line)["question"] for line in open(shared_data / "strategy_qa" / "test.jsonl")}
    assert not questions & set(exemplar_questions())
    assert "Would a pear sink in water?" in questions  # Wei et al.'s 6th exemplar stays in


def test_prompts_task(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": "a", "prompt": "Hello"}\n{"id": "b", "prompt": "Bye", "x": 1}\n')
    task = get_task("prompts")
    items = task.load(TaskConfig(name="prompts", path=str(path)))
    assert [(i.id, i.index, i.prompt) for i in items] == [("a", 0, "Hello"), ("b", 1, "Bye")]
    assert items[1].meta == {"x": 1}
    records = [{"id": "a", "index": 0, "sample": 0, "completion": " hi"}]
    assert task.score(items, records, TaskConfig()) == records
    path.write_text('{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "y"}\n')
    with pytest.raises(TaskDataError, match=r"p\.jsonl:2: duplicate id"):
        task.load(TaskConfig(name="prompts", path=str(path)))
    with pytest.raises(TaskDataError, match="task.path"):
        task.load(TaskConfig(name="prompts"))


def _paper_rows(shared_data, name):
    return [json.loads(line) for line in open(shared_data / name / "test.jsonl")]


def test_hub_path_builds_the_same_items(monkeypatch, shared_data):
    """The Hub code path, fed rows in the Hub's layout (no network), gives the same items
    as the paper's files; config fields override the pinned coordinates."""
    from scmoe_eval.tasks import benchmark
    from scmoe_eval.tasks.source import HubSource

    train = [{k: v for k, v in r.items() if k != "label"} for r in _paper_rows(shared_data, "strategy_qa")]
    train[10:10] = [{"qid": f"ex{i}", "question": q, "answer": True}
                    for i, q in enumerate(exemplar_questions())]
    hub_rows = {
        "openai/gsm8k": [{"question": r["question"], "answer": r["answer"]}
                         for r in _paper_rows(shared_data, "gsm8k")],
        "havens2/strategyQA_train": train,
        "google-research-datasets/mbpp": _paper_rows(shared_data, "mbpp"),
        "openai/openai_humaneval": _paper_rows(shared_data, "human_eval"),
    }
    seen = []

    def fake_load(source):
        seen.append(source)
        return hub_rows[source.dataset]

    monkeypatch.setattr(benchmark, "load_hub_rows", fake_load)
    for name in ("gsm8k", "strategy_qa", "mbpp"):
        hub_items = get_task(name).load(TaskConfig(name=name))
        assert hub_items == get_task(name).load(TaskConfig(name=name, data_dir=str(shared_data / name)))
    he = get_task("human_eval").load(TaskConfig(name="human_eval", dataset="openai/openai_humaneval",
                                                revision="abc"))
    assert he == get_task("human_eval").load(TaskConfig(name="human_eval"))
    assert seen == [
        HubSource("openai/gsm8k", "main", "test", "740312add88f781978c0658806c59bc2815b9866"),
        HubSource("havens2/strategyQA_train", None, "train", "8ae79f541d6d1a43ed5f46fbfae156a9d9ba793d"),
        HubSource("google-research-datasets/mbpp", "full", "test", "4bb6404fdc6cacfda99d4ac4205087b89d32030c"),
        HubSource("openai/openai_humaneval", None, "test", "abc"),
    ]


def test_hub_rows_missing_fields_are_named(monkeypatch):
    from scmoe_eval.tasks import benchmark

    monkeypatch.setattr(benchmark, "load_hub_rows", lambda source: [{"question": "q", "answer": "#### 1"},
                                                                     {"answer": "#### 2"}])
    with pytest.raises(TaskDataError, match=r"openai/gsm8k.*row 1 is missing field\(s\) \['question'\]"):
        get_task("gsm8k").load(TaskConfig(name="gsm8k"))


def test_unreachable_hub_without_offline_flag_fails_once_from_the_cache(monkeypatch, caplog):
    """No HF_HUB_OFFLINE, no network: one probe, then the local cache only (no retry storm), one message."""
    import datasets
    import huggingface_hub.constants

    from scmoe_eval.tasks import source

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    probes = []
    monkeypatch.setattr(source, "_unreachable", lambda src: probes.append(src) or ConnectionError("no route to host"))
    with caplog.at_level("WARNING"), pytest.raises(TaskDataError) as info:
        get_task("mbpp").load(TaskConfig(name="mbpp", dataset="scmoe-eval/not-cached"))
    message = str(info.value)
    assert "the Hub is unreachable: ConnectionError: no route to host, and it is not in the local cache" in message
    assert "make data" in message and "task.data_dir=/path" in message and "task.demo=true" in message
    assert len(probes) == 1 and "Retrying" not in caplog.text
