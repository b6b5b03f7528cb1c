"""Tables and plots from synthetic run directories with known metrics, checked against paper.md."""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import pytest

from scmoe_eval import paper
from scmoe_eval.config import ExperimentConfig
from scmoe_eval.plots import plot_alpha_sweep, plot_beta_sweep, plot_topk
from scmoe_eval.store import RunStore
from scmoe_eval.tables import (
    DELTA, OURS, OURS_BEST, OURS_FIXED, PAPER, comparison_detail, comparison_table, load_runs, method_label,
    paper_beta_rank_table, paper_ideal_strong_table, paper_self_consistency_table, paper_table1, pick_runs,
    write_table,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_run(root: Path, task: str, accuracy: float, *, model: str = "mixtral-8x7b", path: str | None = None,
             n_items: int | None = None, limit: int | None = None, maj: dict | None = None, seed: int = 0,
             **strategy) -> Path:
    """A scored run directory as the runner leaves it (config.json + metrics.json)."""
    cfg = asdict(ExperimentConfig())
    cfg["run"]["seed"] = seed
    cfg["model"]["name"] = model
    cfg["model"]["path"] = path or cfg["model"]["path"]
    cfg["task"]["name"] = task
    cfg["run"]["limit"] = limit
    for key, value in strategy.items():
        if isinstance(value, dict):
            cfg["strategy"][key].update(value)
        else:
            cfg["strategy"][key] = value
    n = n_items or paper.TASK_SIZES[task]
    primary = "pass@1" if task in ("mbpp", "human_eval") else "accuracy"
    block = {primary: accuracy, "n_correct": round(accuracy * n), "n_unparseable": 3, "ci95": [accuracy - 0.02, accuracy + 0.02]}
    if maj:
        block |= {"maj@k": maj, "maj@k_expected": {k: v - 0.005 for k, v in maj.items()}}
    store = RunStore(root, cfg)
    store.write_metrics({
        "task": task, "n_items": n, "n_samples": 1, "primary": primary,
        "official": block, "strict": {**block, primary: accuracy - 0.01},
    })
    return store.path


def scmoe(beta: float, k: int = 2, kind: str = "rank", alpha: float = 0.1, **extra) -> dict:
    return {"name": "scmoe", "beta": beta, "alpha": alpha, "weak": {"kind": kind, "k": k}, **extra}


def greedy(kind: str = "default", k: int = 2, p: float = 0.6) -> dict:
    return {"name": "greedy", "routing": {"kind": kind, "k": k, "p": p}}


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    make_run(root, "gsm8k", 0.61, **greedy())
    make_run(root, "gsm8k", 0.67, **scmoe(0.5))
    make_run(root, "gsm8k", 0.68, **scmoe(0.3))
    make_run(root, "gsm8k", 0.665, **scmoe(0.5, k=3))  # rank-3: Tab.8 only, not Table 1
    make_run(root, "gsm8k", 0.65, **scmoe(0.5, kind="random", k=1))
    make_run(root, "gsm8k", 0.99, **scmoe(0.5, alpha=0.3))  # α sweep: in no paper table
    make_run(root, "gsm8k", 0.64, **greedy("topk", 3))
    make_run(root, "gsm8k", 0.62, **greedy("topk", 4))
    make_run(root, "mbpp", 0.49, **scmoe(0.1))
    make_run(root, "human_eval", 0.40, **greedy("topp", p=0.6))
    make_run(root, "strategy_qa", 0.80, n_items=100, limit=100, **scmoe(0.5))
    make_run(root, "gsm8k", 0.10, model="tiny-mixtral", path="fixture:mixtral", **greedy())
    make_run(root / "deepseek", "strategy_qa", 0.63, model="deepseek-moe-16b", path="/ckpt/deepseek-moe-16b-base/",
             **scmoe(0.5, kind="topk", k=1, strong={"kind": "topk", "k": 6}))
    sc = {"name": "self-consistency", "num_samples": 20}
    make_run(root, "gsm8k", 0.60, inner="sample", temperature=0.7, **sc,
             maj={"1": 0.60, "5": 0.67, "10": 0.72, "15": 0.74, "20": 0.7601})
    make_run(root, "gsm8k", 0.62, **scmoe(0.5, k=3, inner="scmoe-sample", **sc),
             maj={"1": 0.62, "5": 0.70, "10": 0.75, "15": 0.77, "20": 0.79})
    make_run(root, "gsm8k", 0.69, **scmoe(0.3, strong={"kind": "topk", "k": 3}))  # Tab.9 (ideal strong)
    make_run(root, "gsm8k", 0.66, **scmoe(0.3, strong={"kind": "topk", "k": 4}))  # a k the paper did not print for GSM8K
    make_run(root, "gsm8k", 0.50, **scmoe(0.3, k=3, strong={"kind": "topk", "k": 3}))  # weak rank-3: not Tab.9
    (root / "unscored").mkdir()  # a run dir without metrics.json is not a run yet
    return root


@pytest.fixture(scope="module")
def runs(runs_root) -> pd.DataFrame:
    return load_runs(runs_root)


def test_paper_data_spot_checks():
    def one(**where) -> float:
        found = paper.results(**where)
        assert len(found) == 1, where
        return float(found["value"].iloc[0])

    assert one(source="Tab.1", task="gsm8k", method="scmoe") == 66.94
    assert one(source="Tab.1", task="human_eval", method="dynamic") == 38.41
    assert one(source="Tab.7", task="mbpp", method="ensemble", k=8) == 42.40
    assert one(source="Tab.7", task="strategy_qa", method="cd", beta=0.7) == 74.06
    assert one(source="Tab.8", task="gsm8k", beta=0.5, weak_kind="rank", weak_k=3) == 67.02
    assert one(source="Tab.8", task="human_eval", beta=0.9, weak_kind="random") == 28.66
    assert one(source="Tab.9", task="mbpp", beta=0.3) == 50.60
    assert one(source="Tab.4", task="human_eval", method="scmoe") == 28.05
    assert one(source="Tab.4", task="mbpp", method="dynamic") == 34.80  # Tab.10 says 36.00 at t=0.5
    assert one(source="Tab.10", task="gsm8k", method="scmoe", weak_k=3, beta=0.7) == 20.77
    assert one(source="§4.3", method="scmoe-sample", maj_k=20) == 78.31
    assert paper.LATENCY_S["scmoe"] == 65.47 and paper.LATENCY_RATIO["cd"] == 1.43
    # Internal consistency the paper itself has: Tab.8 rank-2 column == Tab.7 SCMoE rows, and Tab.1 = grid best.
    for task in paper.TASKS:
        tab8 = paper.results(source="Tab.8", task=task, weak_kind="rank", weak_k=2).set_index("beta")["value"]
        tab7 = paper.results(source="Tab.7", task=task, method="scmoe").set_index("beta")["value"]
        assert tab8.equals(tab7)
        for method in ("dynamic", "ensemble", "scmoe"):
            grid = paper.results(source="Tab.7", task=task, method=method)["value"].max()
            assert grid == one(source="Tab.1", task=task, method=method)


def _md_rows(text: str) -> list[list[str]]:
    """Cells of every markdown table row in `text`, separator rows dropped."""
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines() if line.startswith("|")]
    return [r for r in rows if not set("".join(r)) <= set("-: ")]


def _num(cell: str) -> float:
    return float(re.search(r"\d+\.\d+", cell).group())


def _section(md: str, start: str, end: str) -> str:
    return md[md.index(start):md.index(end, md.index(start))]


def test_paper_data_matches_paper_md(paper_files):
    """Every grid number in paper.py, re-read from /work/shared/paper.md by a separate parser."""
    md = (paper_files.parent / "paper.md").read_text(encoding="utf-8")
    titles = {"GSM8K": "gsm8k", "StrategyQA": "strategy_qa", "MBPP": "mbpp", "HumanEval": "human_eval"}
    checked = 0

    def check(source: str, task: str, expected: float, **where) -> None:
        nonlocal checked
        found = paper.results(source=source, task=task, **where)
        assert found["value"].tolist() == [expected], (source, task, where)
        checked += 1

    # Tab.1 and Tab.4: method rows x four tasks.
    names = {"Greedy": "greedy", "Dynamic Routing": "dynamic", "Ensemble Routing": "ensemble", "DoLa": "dola",
             "Contrastive Search": "contrastive_search", "Contrastive Decoding": "cd", "SCMoE": "scmoe"}
    for source, start, end in (("Tab.1", "### 2.1", "- Gains"), ("Tab.4", "### 2.4", "Gains over")):
        for row in _md_rows(_section(md, start, end))[1:]:
            method = next(v for k, v in names.items() if row[0].strip("*").startswith(k))
            for task, cell in zip(paper.TASKS, row[1:]):
                check(source, task, _num(cell), method=method)
    # Tab.7: method, hyperparameter, four tasks; the method cell is blank on continuation rows.
    keys = {"Dynamic": ("dynamic", "p"), "Ensemble": ("ensemble", "k"), "Contrastive": ("contrastive_search", "cs_alpha"),
            "DoLa": ("dola", "layers"), "CD": ("cd", "beta"), "SCMoE": ("scmoe", "beta")}
    for row in _md_rows(_section(md, "### 2.2", "### 2.3"))[1:]:
        if row[0]:
            method, key = next(v for k, v in keys.items() if row[0].startswith(k))
        hp = row[1] if method == "dola" else float(row[1])
        for task, cell in zip(paper.TASKS, row[2:]):
            check("Tab.7", task, _num(cell), method=method, **{key: hp})
    # Tab.8: task, beta, rank-1..8, random-1.
    for row in _md_rows(_section(md, "Weak-activation ablation", "In the \"rank-k\""))[1:]:
        task = titles.get(row[0].strip("*"), task if not row[0] else None)
        for column, cell in zip(paper.RANK_COLUMNS, row[2:]):
            kind, k = ("random", 1) if column == "random1" else ("rank", int(column[4:]))
            check("Tab.8", task, _num(cell), beta=float(row[1]), weak_kind=kind, weak_k=k)
    # Tab.9 and Tab.10: "label: v / v / v / v" bullet lines.
    for line in _section(md, "Tab.9 grid", "The paper states").splitlines():
        if m := re.match(r"- (\w+) top-(\d): (.*)", line):
            for beta, value in zip(paper.BETAS, m.group(3).split(" / ")):
                check("Tab.9", titles[m.group(1)], float(value), beta=beta, strong_k=int(m.group(2)))
    section = _section(md, "Tab.10 grids", "## 3.")
    for block in re.split(r"\n- \*\*", section)[1:]:
        method = {"Dynamic": ("dynamic", "p"), "Ensemble": ("ensemble", "k"), "Contrastive": ("contrastive_search", "cs_alpha"),
                  "DoLa": ("dola", "layers"), "SCMoE": ("scmoe", None)}
        method, key = next(v for k, v in method.items() if block.startswith(k))
        for m in re.finditer(r"^  - (\(\d, [\d.]+\)|\[[\d,]+\)|[\d.]+): (.*)$", block, re.M):
            label, values = m.group(1), m.group(2).replace("*", "").split(" / ")
            if key is None:
                k, beta = label.strip("()").split(", ")
                where = {"weak_k": int(k), "beta": float(beta)}
            else:
                where = {key: label if method == "dola" else float(label)}
            for task, value in zip(paper.TASKS, values):
                check("Tab.10", task, float(value), method=method, **where)
    assert checked == 28 + 24 + 116 + 180 + 20 + 136


def test_load_runs_rows(runs):
    assert len(runs) == 18
    row = runs[(runs["method"] == "scmoe-b0.3-a0.1-weak-rank2")].iloc[0]
    assert row["task"] == "gsm8k" and row["family"] == "scmoe" and row["paper_model"] == "mixtral"
    assert row["official"] == pytest.approx(68.0) and row["strict"] == pytest.approx(67.0)
    assert row["ci95_lo"] == pytest.approx(66.0) and row["n_items"] == 1319 and row["n_unparseable"] == 3
    assert pd.isna(row["routing_kind"])
    ens = runs[runs["method"] == "greedy-topk3"].iloc[0]
    assert ens["family"] == "ensemble" and ens["routing_k"] == 3 and pd.isna(ens["beta"])
    assert set(runs.loc[runs["model"] == "tiny-mixtral", "paper_model"].isna()) == {True}
    assert method_label(row.to_dict()) == "scmoe-b0.3-a0.1-weak-rank2"
    assert method_label(runs[runs["family"] == "dynamic"].iloc[0].to_dict()) == "greedy-topp0.6"
    assert len(load_runs([runs_dir for runs_dir in runs["run_dir"][:2]])) == 2


def test_comparison_table(runs):
    with pytest.raises(ValueError, match="several runs share"):
        comparison_table(runs)  # greedy on gsm8k exists for two models
    table = comparison_table(runs, index=["model", "method"])
    assert table.loc[("mixtral-8x7b", "greedy"), "gsm8k"] == 61.0
    assert table.loc[("tiny-mixtral", "greedy"), "gsm8k"] == 10.0
    strict = comparison_table(runs, mode="strict", index=["model", "method"])
    assert strict.loc[("mixtral-8x7b", "scmoe-b0.1-a0.1-weak-rank2"), "mbpp"] == 48.0


def test_paper_table1_best(runs):
    t = paper_table1(runs)
    assert t.loc[("Greedy", OURS_BEST), "GSM8K"] == 61.0
    assert t.loc[("Greedy", PAPER), "GSM8K"] == 61.79
    assert t.loc[("Greedy", DELTA), "GSM8K"] == pytest.approx(-0.79)
    # Best β on the test set, like the paper; rank-3, random-1 and α=0.3 runs do not count.
    assert t.loc[("SCMoE", OURS_BEST), "GSM8K"] == 68.0
    assert t.loc[("SCMoE", OURS_BEST), "GSM8K setting"] == "β=0.3"
    assert t.loc[("SCMoE", PAPER), "GSM8K"] == 66.94 and t.loc[("SCMoE", PAPER), "GSM8K setting"] == "β=0.5"
    assert t.loc[("SCMoE", DELTA), "GSM8K"] == pytest.approx(1.06)
    assert t.loc[("SCMoE", OURS_BEST), "GSM8K 95% CI"] == "66.0–70.0"  # the chosen run's bootstrap CI
    assert t.loc[("SCMoE", PAPER), "GSM8K 95% CI"] == "" and t.loc[("Greedy", OURS_BEST), "GSM8K 95% CI"] == "59.0–63.0"
    assert t.loc[("SCMoE", OURS_BEST), "MBPP"] == 49.0 and t.loc[("SCMoE", DELTA), "MBPP"] == pytest.approx(0.2)
    assert t.loc[("SCMoE", OURS_BEST), "StrategyQA setting"] == "β=0.5, n=100"  # a partial run says so
    assert t.loc[("SCMoE", PAPER), "StrategyQA"] == 76.29
    # Ensemble: best k among top-3, top-4 and the greedy run (= top-2).
    assert t.loc[("Ensemble Routing", OURS_BEST), "GSM8K"] == 64.0
    assert t.loc[("Ensemble Routing", OURS_BEST), "GSM8K setting"] == "top-3"
    assert t.loc[("Ensemble Routing", DELTA), "GSM8K"] == pytest.approx(0.16)
    assert t.loc[("Dynamic Routing", OURS_BEST), "HumanEval"] == 40.0
    assert t.loc[("Dynamic Routing", PAPER), "HumanEval"] == 38.41
    assert t.loc[("Dynamic Routing", DELTA), "HumanEval"] == pytest.approx(1.59)
    # Missing ours stays empty, the published number is still there.
    assert pd.isna(t.loc[("DoLa", OURS_BEST), "GSM8K"]) and t.loc[("DoLa", PAPER), "GSM8K"] == 49.96
    assert pd.isna(t.loc[("Greedy", OURS_BEST), "MBPP"]) and pd.isna(t.loc[("Greedy", DELTA), "MBPP"])
    assert t.loc[("Contrastive Decoding", PAPER), "MBPP"] == 45.20


def test_paper_table1_fixed_and_other_models(runs):
    t = paper_table1(runs, selection="fixed")
    assert t.loc[("SCMoE", OURS_FIXED), "GSM8K"] == 67.0  # β=0.5 although β=0.3 scored higher
    assert t.loc[("SCMoE", PAPER), "GSM8K"] == 66.94 and t.loc[("SCMoE", DELTA), "GSM8K"] == pytest.approx(0.06)
    assert pd.isna(t.loc[("SCMoE", OURS_FIXED), "MBPP"])  # only β=0.1 exists there
    assert t.loc[("SCMoE", PAPER), "MBPP"] == 45.00  # Tab.7 at β=0.5, not the Tab.1 best 48.80
    assert t.loc[("Ensemble Routing", PAPER), "GSM8K"] == 63.84 and t.loc[("Ensemble Routing", OURS_FIXED), "GSM8K"] == 64.0
    custom = paper_table1(runs, selection="fixed", fixed={"scmoe": {"beta": 0.3, "weak_k": 2}})
    assert custom.loc[("SCMoE", PAPER), "GSM8K"] == 65.96 and custom.loc[("SCMoE", OURS_FIXED), "GSM8K"] == 68.0
    deep = paper_table1(runs, model="deepseek")
    assert deep.loc[("SCMoE", OURS_BEST), "StrategyQA"] == 63.0
    assert deep.loc[("SCMoE", PAPER), "StrategyQA"] == 62.99
    assert deep.loc[("SCMoE", DELTA), "StrategyQA"] == pytest.approx(0.01)
    assert deep.loc[("SCMoE", OURS_BEST), "StrategyQA setting"] == "β=0.5, weak top-1"
    assert ("Contrastive Decoding", PAPER) not in deep.index  # no CD row in Tab.4
    tiny = paper_table1(runs, ours_model="tiny-mixtral")
    assert tiny.loc[("Greedy", OURS_BEST), "GSM8K"] == 10.0


def test_paper_beta_rank_table(runs):
    t = paper_beta_rank_table(runs, "gsm8k")
    assert list(t.columns[:9]) == list(paper.RANK_COLUMNS)
    assert t.loc[("GSM8K", 0.5, OURS), "rank3"] == 66.5
    assert t.loc[("GSM8K", 0.5, PAPER), "rank3"] == 67.02
    assert t.loc[("GSM8K", 0.5, DELTA), "rank3"] == pytest.approx(-0.52)
    assert t.loc[("GSM8K", 0.5, OURS), "random1"] == 65.0 and t.loc[("GSM8K", 0.5, PAPER), "random1"] == 64.97
    assert t.loc[("GSM8K", 0.3, OURS), "rank2"] == 68.0 and t.loc[("GSM8K", 0.3, PAPER), "rank2"] == 65.96
    assert t.loc[("GSM8K", 0.5, OURS), "rank2"] == 67.0  # not the α=0.3 run (99)
    assert t.loc[("GSM8K", 0.5, OURS), "ours n"] == "1319"
    assert pd.isna(t.loc[("GSM8K", 0.9, OURS), "rank8"]) and t.loc[("GSM8K", 0.9, PAPER), "rank8"] == 61.94
    every = paper_beta_rank_table(runs)
    assert len(every) == 4 * 5 * 3 and every.loc[("HumanEval", 0.1, PAPER), "rank5"] == 40.85


def test_paper_ideal_strong_table(runs):
    t = paper_ideal_strong_table(runs)
    assert list(t.columns) == ["β=0.1", "β=0.3", "β=0.5", "β=0.7", "β=0.9", "ours n"]
    assert t.loc[("GSM8K", 3, OURS), "β=0.3"] == 69.0 and t.loc[("GSM8K", 3, PAPER), "β=0.3"] == 68.92
    assert t.loc[("GSM8K", 3, DELTA), "β=0.3"] == pytest.approx(0.08) and t.loc[("GSM8K", 3, OURS), "ours n"] == "1319"
    assert t.loc[("GSM8K", 4, OURS), "β=0.3"] == 66.0 and pd.isna(t.loc[("GSM8K", 4, PAPER), "β=0.3"])
    assert pd.isna(t.loc[("GSM8K", 3, OURS), "β=0.5"])
    assert t.loc[("HumanEval", 4, PAPER), "β=0.9"] == 41.46 and ("HumanEval", 3, PAPER) not in t.index
    assert len(paper_ideal_strong_table(runs, ours_model="nobody")) == 4 * 3  # the paper rows stay


def test_table_cli_writes_every_paper_table(runs_root, tmp_path, capsys):
    from scmoe_eval.cli import table_main

    table_main([str(runs_root), "--paper", "--out", str(tmp_path / "mixtral")])
    out = capsys.readouterr().out
    for name in ("comparison", "paper_table1", "paper_beta_rank", "paper_ideal_strong", "paper_self_consistency"):
        assert f"## {name}" in out and (tmp_path / "mixtral" / f"{name}.md").is_file(), name
    for png in ("beta_sweep.png", "topk.png"):
        assert (tmp_path / "mixtral" / png).read_bytes().startswith(PNG_MAGIC)
    table_main([str(runs_root / "deepseek"), "--paper", "--paper-model", "deepseek", "--out", str(tmp_path / "ds")])
    out = capsys.readouterr().out
    assert "## paper_table4" in out and "## paper_table1" not in out and "62.99" in out


def test_paper_self_consistency_table(runs):
    t = paper_self_consistency_table(runs)
    sample, sc_scmoe = "Temperature sampling (τ=0.7)", "SC + SCMoE (β=0.5, weak rank-3)"
    assert t.loc[(sample, OURS), "maj@5"] == 67.0 and t.loc[(sample, PAPER), "maj@5"] == 66.87
    assert t.loc[(sample, DELTA), "maj@5"] == pytest.approx(0.13)
    assert t.loc[(sample, OURS), "maj@20"] == 76.01 and t.loc[(sample, PAPER), "maj@20"] == 75.59
    assert pd.isna(t.loc[(sample, PAPER), "maj@10"]) and t.loc[(sample, OURS), "maj@10"] == 72.0
    assert t.loc[(sc_scmoe, OURS), "maj@20"] == 79.0 and t.loc[(sc_scmoe, PAPER), "maj@20"] == 78.31
    assert t.loc[(sc_scmoe, DELTA), "maj@20"] == pytest.approx(0.69)
    assert t.loc[("Greedy", OURS), "maj@1"] == 61.0 and t.loc[("Greedy", PAPER), "maj@1"] == 61.79
    assert t.loc[(sample, OURS), "ours n"] == "1319" and t.loc[(sample, PAPER), "ours n"] == ""
    greedy_scmoe = "SCMoE greedy (β=0.5, weak rank-3)"
    assert t.loc[(greedy_scmoe, OURS), "maj@1"] == 66.5 and t.loc[(greedy_scmoe, PAPER), "maj@1"] == 67.94
    assert pd.isna(t.loc[("Greedy", OURS), "maj@5"])


def test_write_table_formats_round_trip(runs, tmp_path):
    table = paper_table1(runs)
    paths = write_table(table, tmp_path / "out" / "table1.mixtral")
    assert [p.name for p in paths] == ["table1.mixtral.md", "table1.mixtral.csv", "table1.mixtral.tex"]
    back = pd.read_csv(paths[1], index_col=[0, 1], keep_default_na=False, na_values=[""])
    for col in table.columns:
        if col.endswith(("setting", "95% CI")):  # text columns: "" reads back as missing
            assert back[col].fillna("").tolist() == table[col].tolist(), col
        else:
            pd.testing.assert_series_equal(back[col], table[col], check_names=False)
    md = paths[0].read_text().splitlines()
    assert md[0].startswith("| method") and "GSM8K setting" in md[0] and set(md[1]) <= set("|:- ")
    assert len(md) == 2 + len(table) and all(line.count("|") == md[0].count("|") for line in md)
    assert any("66.94" in line and "SCMoE" in line for line in md) and "nan" not in paths[0].read_text()
    tex = paths[2].read_text()
    assert tex.startswith("\\begin{tabular}") and "\\end{tabular}" in tex and "66.94" in tex
    beta = paper_beta_rank_table(runs, "gsm8k")
    (csv,) = write_table(beta, tmp_path / "beta", formats=("csv",))
    back = pd.read_csv(csv, index_col=[0, 1, 2])
    pd.testing.assert_series_equal(back["rank3"], beta["rank3"], check_names=False)
    with pytest.raises(ValueError, match="unknown table format"):
        write_table(beta, tmp_path / "x", formats=("xlsx",))


def test_plots_are_png(runs, tmp_path):
    for path in (
        plot_beta_sweep(runs, tmp_path / "beta.png", task="gsm8k", paper_model="mixtral"),
        plot_beta_sweep(runs, tmp_path / "beta_all.png"),
        plot_topk(runs, tmp_path / "topk.png", paper_model="mixtral"),
    ):
        data = Path(path).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000
    assert plot_topk(runs[runs["family"] == "scmoe"], tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
    assert plot_beta_sweep(pd.DataFrame(), tmp_path / "empty.png") is None


# --- several runs of one (model, method, task); the table CLI ------------------------------------------


@pytest.fixture
def reruns(tmp_path) -> Path:
    """gsm8k greedy three times (complete, partial n=200, partial n=100), mbpp greedy twice (n=5, seeds 0/1)."""
    root = tmp_path / "runs"
    make_run(root, "gsm8k", 0.61, **greedy())
    make_run(root, "gsm8k", 0.95, n_items=200, limit=200, **greedy())  # a better score does not make it win
    make_run(root, "gsm8k", 0.90, n_items=100, limit=100, **greedy())
    old = make_run(root, "mbpp", 0.20, n_items=5, limit=5, **greedy())
    new = make_run(root, "mbpp", 0.40, n_items=5, limit=5, seed=1, **greedy())
    os.utime(old / "metrics.json", (1_700_000_000, 1_700_000_000))
    os.utime(new / "metrics.json", (1_800_000_000, 1_800_000_000))
    make_run(root, "gsm8k", 0.30, n_items=100, limit=100, **scmoe(0.5))
    return root


def test_pick_runs_prefers_complete_then_most_items_then_newest(reruns):
    runs = load_runs(reruns)
    used, aside = pick_runs(runs)
    assert len(used) == 3 and len(aside) == 3
    chosen = used.set_index(["method", "task"])
    assert chosen.loc[("greedy", "gsm8k"), "official"] == 61.0 and chosen.loc[("greedy", "gsm8k"), "complete"]
    assert chosen.loc[("greedy", "mbpp"), "official"] == 40.0  # same n: the newer one
    reasons = dict(zip(aside["n_items"], aside["reason"]))
    assert reasons[200].startswith("partial (n=200)") and reasons[100].startswith("partial (n=100)")
    assert reasons[5].startswith("older")
    assert set(aside["chosen_run"]) == set(used.loc[used["method"] == "greedy", "run_dir"])
    # without the complete run, the most items win
    used, aside = pick_runs(runs[runs["complete"] == False])  # noqa: E712
    assert used.set_index(["method", "task"]).loc[("greedy", "gsm8k"), "n_items"] == 200
    assert aside.loc[aside["n_items"] == 100, "reason"].iloc[0] == "fewer items (100 < 200)"


def test_comparison_detail_shows_n_ci_and_partial(reruns):
    used, _ = pick_runs(load_runs(reruns))
    table = comparison_detail(used)
    assert list(table.columns) == ["gsm8k", "gsm8k n", "gsm8k 95% CI", "mbpp", "mbpp n", "mbpp 95% CI"]
    assert table.loc[("mixtral-8x7b", "greedy"), "gsm8k"] == 61.0
    assert table.loc[("mixtral-8x7b", "greedy"), "gsm8k n"] == "1319"
    assert table.loc[("mixtral-8x7b", "greedy"), "gsm8k 95% CI"] == "59.0–63.0"
    assert table.loc[("mixtral-8x7b", "greedy"), "mbpp n"] == "5 (partial)"
    scmoe_row = table.loc[("mixtral-8x7b", "scmoe-b0.5-a0.1-weak-rank2")]
    assert scmoe_row["gsm8k n"] == "100 (partial)" and scmoe_row["mbpp n"] == "" and pd.isna(scmoe_row["mbpp"])
    strict = comparison_detail(used, mode="strict")
    assert strict.loc[("mixtral-8x7b", "greedy"), "gsm8k"] == 60.0


def test_table_cli_resolves_reruns_and_writes_a_summary(reruns, tmp_path, capsys):
    from scmoe_eval.cli import table_main

    out = tmp_path / "tables"
    table_main([str(reruns), "--out", str(out)])
    captured = capsys.readouterr()
    assert captured.err.count("set aside") == 3 and "partial (n=200); a complete run exists" in captured.err
    assert "61.00 | 1319 " in captured.out and "5 (partial)" in captured.out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["runs_found"] == 6 and len(summary["runs_used"]) == 3 and len(summary["set_aside"]) == 3
    greedy_gsm8k = next(r for r in summary["runs_used"] if r["task"] == "gsm8k" and r["method"] == "greedy")
    assert greedy_gsm8k["n_items"] == 1319 and greedy_gsm8k["complete"] and greedy_gsm8k["ci95"] == [59.0, 63.0]
    assert {Path(p).suffix for p in summary["tables"]["comparison"]} == {".md", ".csv", ".tex", ".json"}
    records = json.loads((out / "comparison.json").read_text())
    assert records[0]["model"] == "mixtral-8x7b" and isinstance(records[0]["gsm8k"], float)


def test_table_cli_index_filters_and_formats(reruns, capsys):
    from scmoe_eval.cli import table_main

    table_main([str(reruns), "--index"])
    out = capsys.readouterr().out
    assert out.count("set aside") == 3 and out.count("| used") == 3 and str(reruns) in out
    table_main([str(reruns), "--task", "mbpp", "--format", "json"])
    data = json.loads(capsys.readouterr().out)
    (row,) = data["comparison"]
    assert row["mbpp"] == 40.0 and "gsm8k" not in row
    table_main([str(reruns), "--method", "scmoe*", "--format", "csv"])
    csv_text = capsys.readouterr().out
    assert csv_text.startswith("# comparison\n") and "scmoe-b0.5" in csv_text and ",greedy," not in csv_text
    table_main([str(reruns), "--model", "tiny-mixtral,mixtral-8x7b", "--task", "gsm8k", "--format", "latex"])
    assert "\\begin{tabular}" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        table_main([str(reruns), "--task", "human_eval"])
    assert exit_info.value.code == 2 and "match the filters" in capsys.readouterr().err


def test_table_cli_unwritable_out_is_one_line(reruns, tmp_path, capsys):
    from scmoe_eval.cli import table_main

    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(SystemExit) as exit_info:
        table_main([str(reruns), "--out", str(blocker / "tables")])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1
    assert err.startswith("scmoe-eval-table: error: --out") and "cannot write" in err


@pytest.fixture
def figures(monkeypatch) -> list:
    """The matplotlib Figures the plot functions would save (savefig captured, nothing written)."""
    from matplotlib.figure import Figure

    captured: list = []
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: captured.append(self))
    return captured


def test_beta_sweep_plot_lines_colours_legend_axes(tmp_path, figures):
    root = tmp_path / "sweep"
    weak = [("rank", k) for k in range(1, 9)] + [("random", 1)]
    for i, (kind, k) in enumerate(weak):
        for beta in paper.BETAS:
            make_run(root, "gsm8k", 0.0, model="tiny-mixtral", path="fixture:mixtral", **scmoe(beta, k=k, kind=kind))
    for alpha in (0.01, 0.5, 1.0):  # an α sweep at β=0.5: kept out of the β plot
        make_run(root, "gsm8k", 0.0, model="tiny-mixtral", path="fixture:mixtral", **scmoe(0.5, alpha=alpha))
    runs = load_runs(root)
    assert plot_beta_sweep(runs, tmp_path / "beta.png", paper_model="mixtral") is not None
    (fig,) = figures
    (ax,) = fig.axes
    ours = [line for line in ax.lines if line.get_linestyle() == "-"]
    dashed = [line for line in ax.lines if line.get_linestyle() == "--"]
    assert [line.get_label() for line in ours] == [f"rank-{k}" for k in range(1, 9)] + ["random-1"]
    assert len({line.get_color() for line in ours}) == 9  # one colour each
    assert all(len(line.get_xdata()) == 5 for line in ours)  # the α-sweep points joined no line
    # the paper's Tab.8 curves, although the runs are of the tiny model, each in its line's colour
    assert len(dashed) == 9 and {d.get_color() for d in dashed} == {line.get_color() for line in ours}
    assert ax.get_legend() is None and len(fig.legends) == 1  # legend outside the panel
    assert ax.get_ylim()[0] == 0  # 0% accuracy everywhere: the axis starts at 0, not below
    assert plot_alpha_sweep(runs, tmp_path / "alpha.png") is not None
    (line,) = [line for line in figures[1].axes[0].lines if line.get_linestyle() == "-"]
    assert line.get_label() == "rank-2, β=0.5" and list(line.get_xdata()) == [0.01, 0.1, 0.5, 1.0]
    assert plot_alpha_sweep(runs[runs["alpha"] == 0.1], tmp_path / "none.png") is None


def test_table_cli_without_runs_is_one_line(tmp_path, capsys):
    from scmoe_eval.cli import table_main

    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        table_main([str(tmp_path / "empty")])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and err == f"scmoe-eval-table: error: no scored runs (metrics.json) under {tmp_path / 'empty'}"
