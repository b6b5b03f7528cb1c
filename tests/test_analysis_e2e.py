"""scmoe-eval-analyze end to end on the tiny Mixtral and the shipped demo data (no Hub, no ../shared):
every analysis writes its store, summary, tables and PNGs; a run resumes at the item level."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from scmoe_eval import paper
from scmoe_eval.analysis.config import AnalysisConfig, AnalyzeConfig
from scmoe_eval.analysis.runner import run_analysis
from scmoe_eval.config import ConfigError, ModelConfig, RunConfig, TaskConfig

REPO = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"


def config(out: Path, model_path: Path, tables: Path | None = None, limit: int | None = None, **analysis) -> AnalyzeConfig:
    return AnalyzeConfig(
        model=ModelConfig(name="tiny-mixtral", path=str(model_path), dtype="float32", device="cpu", device_map=None),
        task=TaskConfig(data_dir="demo"),
        run=RunConfig(output_dir=str(out), batch_size=2, limit=limit),
        analysis=AnalysisConfig(tables_dir=None if tables is None else str(tables), **analysis),
    )


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "generations.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_cli_kld_end_to_end(tmp_path: Path) -> None:
    """The Hydra app: config groups, run dir, summary, Tab.5 in three formats with ours / paper / Δ."""
    out, tables = tmp_path / "analysis", tmp_path / "tables"
    done = subprocess.run(
        [sys.executable, "-c", "from scmoe_eval.analysis.cli import main; main()", "model=tiny-mixtral",
         "analysis=kld", "task.data_dir=demo", f"run.output_dir={out}", f"analysis.tables_dir={tables}",
         "run.limit=4", "run.batch_size=2", "analysis.amateur=fixture:mixtral"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (run_dir,) = out.glob("analysis-kld__gsm8k-train__tiny-mixtral__*")
    assert done.stdout.strip().endswith(run_dir.name)
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["analysis"]["weak"] == ["rank1", "rank2", "rank3", "rank4", "rank5", "rank6", "rank7", "rank8", "random1"]
    assert "tables_dir" not in cfg["analysis"]  # an output location: not hashed, recorded per attempt instead
    assert json.loads((run_dir / "environment.json").read_text())["tables_dir"] == str(tables)
    assert [r["index"] for r in records(run_dir)] == [0, 1, 2, 3]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["n_items"] == 4 and summary["vocab_size"] == 512
    assert summary["columns"]["amateur"]["mean_nats"]["all"] == 0.0  # the amateur IS the model here
    table = pd.read_csv(tables / "tab5_kld.csv", index_col=[0, 1])
    assert list(table.columns) == [*paper.RANK_COLUMNS, "mistral-7b"]
    assert table.loc[("All", "paper"), "rank2"] == 5.05
    ours = table.loc[("All", "ours"), "rank2"]
    assert ours == pytest.approx(summary["columns"]["rank2"]["paper_scale"]["all"], abs=0.006)
    assert table.loc[("All", "Δ"), "rank2"] == pytest.approx(ours - 5.05, abs=0.011)
    assert (tables / "tab5_kld.md").read_text().count("| All") == 3 and (tables / "tab5_kld.tex").is_file()


def test_kld_resumes_at_the_item_level(tmp_path: Path, tiny_mixtral_path: Path) -> None:
    """limit 3, then a torn record (what kill -9 inside a write leaves), then all 8: only the rest is computed,
    and the result equals one uninterrupted run."""
    weak = ["rank1", "rank2", "rank8"]
    first = run_analysis(config(tmp_path / "a", tiny_mixtral_path, limit=3, weak=weak))
    # run.limit is part of the config (as for runs), so the full run is another directory: seed it with
    # the first run's records, then tear its last line
    full_cfg = config(tmp_path / "a", tiny_mixtral_path, weak=weak)
    from scmoe_eval.analysis.runner import check, open_store

    store = open_store(full_cfg, *check(full_cfg))
    store.append(records(first))
    with open(store.path / "generations.jsonl", "a") as fh:
        fh.write('{"id": "gsm8k-train/3", "index": 3, "sam')
    resumed = run_analysis(full_cfg)
    env = json.loads((resumed / "environment.json").read_text())
    assert env["items_total"] == 8 and env["items_computed"] == 5
    got = records(resumed)
    assert sorted(r["index"] for r in got) == list(range(8))
    assert got[:3] == records(first)
    fresh = run_analysis(config(tmp_path / "b", tiny_mixtral_path, weak=weak))
    a = json.loads((resumed / "summary.json").read_text())["columns"]
    b = json.loads((fresh / "summary.json").read_text())["columns"]
    for label in weak:
        assert a[label]["mean_nats"]["all"] == pytest.approx(b[label]["mean_nats"]["all"], rel=1e-5)
    again = run_analysis(full_cfg)  # nothing left to do
    assert json.loads((again / "environment.json").read_text())["items_computed"] == 0


def test_store_refuses_a_different_config_in_the_same_directory(tmp_path: Path, tiny_mixtral_path: Path) -> None:
    cfg = config(tmp_path, tiny_mixtral_path, limit=1, weak=["rank2"])
    run_dir = run_analysis(cfg)
    saved = json.loads((run_dir / "config.json").read_text())
    saved["analysis"]["span"] = "answer"
    (run_dir / "config.json").write_text(json.dumps(saved))
    with pytest.raises(FileExistsError, match="different config"):
        run_analysis(cfg)


def test_unchosen_end_to_end(tmp_path: Path, tiny_mixtral_path: Path) -> None:
    tables = tmp_path / "tables"
    run_dir = run_analysis(config(tmp_path, tiny_mixtral_path, tables, limit=3, name="unchosen",
                                  weak=[f"rank{k}" for k in range(1, 9)]))
    table = pd.read_csv(tables / "tab6_unchosen.csv", index_col=0)
    assert list(table.loc["paper"]) == list(paper.UNCHOSEN_TAB6)
    assert list(table.loc["ours (a): same forward"]) == [0.0, 0.0] + [100.0] * 6
    per_layer = pd.read_csv(tables / "tab6_unchosen_per_layer.csv", index_col=0)
    assert len(per_layer) == 4  # the tiny Mixtral's MoE layers
    assert (tables / "unchosen_per_layer.png").read_bytes()[:8] == PNG
    assert (run_dir / "unchosen_per_layer.png").is_file()


def test_heatmap_end_to_end_on_the_hallie_example(tmp_path: Path, tiny_mixtral_path: Path) -> None:
    run_dir = run_analysis(config(tmp_path, tiny_mixtral_path, name="heatmap", split="test", example_index=372,
                                  span="answer", weak=[f"rank{k}" for k in range(1, 9)]))
    (record,) = records(run_dir)
    assert record["id"] == "gsm8k-test/372" and "".join(record["tokens"]).startswith(" She had practice")
    assert all(len(v) == len(record["tokens"]) for v in record["kld"].values())
    assert any(record["expression"]) and any(record["stopword"])
    assert (run_dir / "fig3_heatmap.png").read_bytes()[:8] == PNG


def test_routing_stats_end_to_end(tmp_path: Path, tiny_mixtral_path: Path) -> None:
    run_dir = run_analysis(config(tmp_path, tiny_mixtral_path, limit=2, name="routing", weak=["rank1", "rank3", "random1"]))
    summary = json.loads((run_dir / "summary.json").read_text())
    for label in ("strong", "rank1", "rank3", "random1"):
        assert all(sum(layer) == pytest.approx(1.0) and len(layer) == 8 for layer in summary["load_share"][label])
    # layer 0: every row sees the same states, so rank-1 shares exactly 1 of top-2's 2 experts and rank-3 none
    assert summary["jaccard_per_layer"]["rank1"][0] == pytest.approx(0.5)
    assert summary["jaccard_per_layer"]["rank3"][0] == 0.0
    assert (run_dir / "expert_load.png").read_bytes()[:8] == PNG and (run_dir / "routing_overlap.png").is_file()


def test_bad_settings_fail_before_the_model_loads(tmp_path: Path, tiny_mixtral_path: Path) -> None:
    bad = config(tmp_path, Path("/nonexistent/ckpt"), weak=["rank2"])
    with pytest.raises(ConfigError, match="model.path"):
        run_analysis(bad)
    with pytest.raises(ConfigError, match="analysis.example_index"):
        run_analysis(config(tmp_path, tiny_mixtral_path, name="heatmap", split="test", example_index=5))


def test_run_dir_follows_the_content_not_the_paths(tmp_path: Path, tiny_mixtral_path: Path) -> None:
    """The same texts at two paths share one analysis directory; changed texts get another."""
    import shutil

    from scmoe_eval.analysis.runner import check, open_store

    from scmoe_eval.analysis.data import SPLIT_SIZES

    rows = [{"question": f"What is {i} + 1?", "answer": f"{i} + 1 = {i + 1}\n#### {i + 1}"}
            for i in range(SPLIT_SIZES["train"])]  # a full-size train split (the loader checks the count)
    a, b, changed = tmp_path / "a", tmp_path / "mount" / "b", tmp_path / "changed"
    a.mkdir()
    (a / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    shutil.copytree(a, b)
    changed.mkdir()
    rows[0]["answer"] = "Therefore " + rows[0]["answer"]
    (changed / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    def run_dir(data: Path) -> Path:
        cfg = config(tmp_path / "out", tiny_mixtral_path, limit=2, weak=["rank2"])
        cfg = AnalyzeConfig(model=cfg.model, task=TaskConfig(data_dir=str(data)), run=cfg.run, analysis=cfg.analysis)
        return open_store(cfg, *check(cfg)).path

    assert run_dir(a) == run_dir(b) != run_dir(changed)
