"""generate -> score -> metrics on the tiny model: sharding, seeds, re-scoring, run-dir contents."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import scmoe_eval.models.loading as loading
from scmoe_eval.cli import CONFIG_DIR, score_main
from scmoe_eval.config import to_experiment
from scmoe_eval.decoding.strategies import sample_seed
from scmoe_eval.pipeline import item_seed, run_experiment, shard_items
from scmoe_eval.tasks import Item

# Two sampled answers per item: seeds must reach every sample, whatever shard or batch it lands in.
SAMPLED = ["model=tiny-mixtral", "task=gsm8k", "strategy=self-consistency", "strategy.num_samples=2",
           "run.limit=5", "run.max_new_tokens=6"]


def run(out: Path, *overrides: str) -> Path:
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        cfg = compose("config", overrides=["task.demo=true", f"run.output_dir={out}", *overrides])
    return run_experiment(to_experiment(cfg))


def records(run_dir: Path) -> dict[tuple[int, int], dict]:
    out = {}
    for path in [run_dir / "generations.jsonl", *sorted((run_dir / "shards").glob("*.jsonl"))]:
        if path.exists():
            for line in path.read_text().splitlines():
                r = json.loads(line)
                assert (r["index"], r["sample"]) not in out, "duplicate record"
                out[(r["index"], r["sample"])] = r
    return out


@pytest.fixture(scope="module")
def unsharded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run(tmp_path_factory.mktemp("whole"), *SAMPLED, "run.batch_size=3")


def test_item_seed_depends_only_on_run_seed_and_index() -> None:
    seeds = [item_seed(1234, i) for i in range(100)]
    assert seeds == [item_seed(1234, i) for i in range(100)] and len(set(seeds)) == 100
    assert item_seed(1, 0) != item_seed(2, 0) and all(0 <= s < 2**32 for s in seeds)


def test_shards_partition_items() -> None:
    items = [Item(id=f"x/{i}", index=i, prompt="", gold=None) for i in range(10)]
    parts = [shard_items(items, s, 3) for s in range(3)]
    assert sorted(it.index for part in parts for it in part) == list(range(10))
    assert [it.index for it in parts[1]] == [1, 4, 7]


def test_records_follow_the_contract(unsharded: Path) -> None:
    recs = records(unsharded)
    assert sorted(recs) == [(i, j) for i in range(5) for j in range(2)]
    for (index, sample), r in recs.items():
        assert set(r) == {"id", "index", "sample", "seed", "completion", "token_ids", "stop_reason", "stop",
                          "num_tokens"}
        assert r["id"] == f"gsm8k/{index}" and r["seed"] == sample_seed(item_seed(1234, index), sample)
        assert r["stop_reason"] in ("stop", "eos", "length") and r["num_tokens"] == len(r["token_ids"]) <= 6
    assert recs[(0, 0)]["token_ids"] != recs[(0, 1)]["token_ids"], "the two samples of an item are identical"


def test_run_dir_holds_results_log_and_environment(unsharded: Path) -> None:
    metrics = json.loads((unsharded / "metrics.json").read_text())
    assert metrics["n_items"] == 5 and metrics["n_samples"] == 2
    assert len((unsharded / "scored.jsonl").read_text().splitlines()) == 10
    env = json.loads((unsharded / "environment.json").read_text())
    assert env["batch_size"] == 3 and env["items_generated"] == 5 and env["scored"] is True
    log = (unsharded / "run.log").read_text()
    assert "generated 5 items" in log and "| task " in log and "| gsm8k " in log and "5 x 2 samples" in log
    assert "{'task'" not in log  # a table, not the metrics dict
    threads = int(os.environ.get("OMP_NUM_THREADS", "0")) or None  # make test sets 1; else the computed default
    assert env["torch_threads"] >= 1 and (threads is None or env["torch_threads"] == threads)
    assert env["torch_threads_source"] == ("OMP_NUM_THREADS" if threads else env["torch_threads_source"])


def test_shards_merge_to_the_unsharded_run(tmp_path: Path, unsharded: Path) -> None:
    first = run(tmp_path, *SAMPLED, "run.batch_size=1", "run.num_shards=2", "run.shard=1")
    assert not (first / "metrics.json").exists(), "scored before every shard was done"
    second = run(tmp_path, *SAMPLED, "run.batch_size=2", "run.num_shards=2", "run.shard=0")
    assert first == second and second.name == unsharded.name

    ours, whole = records(second), records(unsharded)
    assert ours.keys() == whole.keys()
    for key in whole:
        assert ours[key]["token_ids"] == whole[key]["token_ids"], key
        assert ours[key]["seed"] == whole[key]["seed"]
    assert json.loads((second / "metrics.json").read_text()) == json.loads((unsharded / "metrics.json").read_text())


def test_rescore_without_a_model(tmp_path: Path, unsharded: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = Path(shutil.copytree(unsharded, tmp_path / unsharded.name))
    expected = (run_dir / "metrics.json").read_text()
    (run_dir / "metrics.json").unlink()
    (run_dir / "scored.jsonl").unlink()
    monkeypatch.setattr(loading, "load_model", lambda *_: pytest.fail("re-scoring loaded a model"))
    score_main([str(run_dir)])
    assert (run_dir / "metrics.json").read_text() == expected
    assert len((run_dir / "scored.jsonl").read_text().splitlines()) == 10


def test_finished_run_is_not_generated_again(
    unsharded: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loading, "load_model", lambda *_: pytest.fail("a finished run loaded the model"))
    again = run(unsharded.parent, *SAMPLED, "run.batch_size=3")
    assert again == unsharded and len(records(again)) == 10
    assert json.loads((again / "environment.json").read_text())["items_generated"] == 0


def test_score_cli_rejects_a_non_run_dir(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as info:
        score_main([str(tmp_path)])
    assert info.value.code == 2


# Continuous batching (run.schedule=continuous): the stop string "e" ends the tiny model's rows at different
# steps, so waiting items are admitted while other rows are still decoding.
CONTINUOUS = ["model=tiny-mixtral", "task=gsm8k", "task.stop=[e]", "run.max_new_tokens=12"]


@pytest.mark.parametrize("strategy", ["greedy", "scmoe"])
def test_continuous_schedule_equals_batch_one(tmp_path: Path, strategy: str) -> None:
    static = run(tmp_path / "static", *CONTINUOUS, f"strategy={strategy}", "run.batch_size=1")
    continuous = run(tmp_path / "continuous", *CONTINUOUS, f"strategy={strategy}", "run.batch_size=3",
                     "run.schedule=continuous")
    assert continuous.name == static.name, "run.schedule entered the run-dir hash"
    ours, alone = records(continuous), records(static)
    assert sorted(ours) == [(i, 0) for i in range(10)] and ours.keys() == alone.keys()
    for key in alone:
        assert {k: ours[key][k] for k in ("token_ids", "completion", "seed", "stop_reason")} == \
               {k: alone[key][k] for k in ("token_ids", "completion", "seed", "stop_reason")}, key
    assert len({r["num_tokens"] for r in alone.values()}) > 1, "rows all ended together: no admission mid-flight"
    assert json.loads((continuous / "environment.json").read_text())["schedule"] == "continuous"
    assert json.loads((continuous / "metrics.json").read_text()) == json.loads((static / "metrics.json").read_text())


def test_killed_continuous_run_keeps_finished_rows_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each row is saved as it ends: a run killed at its 4th save keeps 3 records; the rerun adds the rest."""
    from scmoe_eval.store import RunStore

    args = (*CONTINUOUS, "strategy=greedy", "run.batch_size=3", "run.schedule=continuous")
    append, calls = RunStore.append, []

    def dying(self, recs, *rest):
        calls.append(len(recs))
        if len(calls) == 4:
            raise KeyboardInterrupt
        append(self, recs, *rest)

    monkeypatch.setattr(RunStore, "append", dying)
    with pytest.raises(KeyboardInterrupt, match="3/10 items saved"):
        run(tmp_path, *args)
    assert calls == [1, 1, 1, 1]
    monkeypatch.setattr(RunStore, "append", append)
    run_dir = run(tmp_path, *args)
    env = json.loads((run_dir / "environment.json").read_text())
    assert len(records(run_dir)) == 10 and env["items_generated"] == 7 and env["scored"] is True
    alone = records(run(tmp_path / "static", *CONTINUOUS, "strategy=greedy", "run.batch_size=1"))
    assert {k: r["token_ids"] for k, r in records(run_dir).items()} == {k: r["token_ids"] for k, r in alone.items()}
