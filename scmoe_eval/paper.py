"""Published SCMoE numbers (Shi et al., NeurIPS 2024, arXiv 2405.14507) as data.

Values are percentages exactly as printed; every row carries the table it comes from
(``source``), so a comparison can always cite where the number is. The paper picks each
method's best hyperparameter per task on the test set (Tab.1 / Tab.4 caption); the full
grids (Tab.7, Tab.8, Tab.9, Tab.10) allow fixed-setting comparisons too.

Known inconsistencies inside the paper are kept as printed, not corrected:
DeepSeek dynamic MBPP is 34.80 in Tab.4 but 36.00 (t=0.5) in Tab.10; §4.3 quotes greedy
SCMoE as 67.94 where Tab.1 says 66.94 (``note`` column).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

import pandas as pd


@dataclass(frozen=True)
class PaperModel:
    """A model the paper evaluated, and the names our configs may give it."""

    key: str
    title: str
    default_topk: int  # experts per token of stock routing = the "greedy" row
    num_experts: int
    names: tuple[str, ...]  # model.name or model.path values that mean this checkpoint


MODELS: dict[str, PaperModel] = {
    "mixtral": PaperModel(
        "mixtral", "Mixtral 8x7B", 2, 8,
        ("mixtral-8x7b", "mistralai/Mixtral-8x7B-v0.1", "Mixtral-8x7B-v0.1"),
    ),
    "deepseek": PaperModel(
        "deepseek", "DeepSeekMoE-16B", 6, 64,
        ("deepseek-moe-16b", "deepseek-ai/deepseek-moe-16b-base", "deepseek-moe-16b-base"),
    ),
}
TASKS: tuple[str, ...] = ("gsm8k", "strategy_qa", "mbpp", "human_eval")
TASK_TITLES = {"gsm8k": "GSM8K", "strategy_qa": "StrategyQA", "mbpp": "MBPP", "human_eval": "HumanEval"}
TASK_SIZES = {"gsm8k": 1319, "strategy_qa": 2286, "mbpp": 500, "human_eval": 164}
METHOD_TITLES = {
    "greedy": "Greedy",
    "dynamic": "Dynamic Routing",
    "ensemble": "Ensemble Routing",
    "contrastive_search": "Contrastive Search",
    "dola": "DoLa",
    "cd": "Contrastive Decoding",
    "scmoe": "SCMoE",
}
BETAS = (0.1, 0.3, 0.5, 0.7, 0.9)
RANK_COLUMNS = ("rank1", "rank2", "rank3", "rank4", "rank5", "rank6", "rank7", "rank8", "random1")

# --- Mixtral 8x7B --------------------------------------------------------------------------
# Tab.1: best result per method and task, (value, hyperparameter as printed); tasks in TASKS order.
_MIXTRAL_TAB1 = {
    "greedy": [(61.79, ""), (72.83, ""), (46.20, ""), (33.54, "")],
    "dynamic": [(61.11, "t=0.6"), (74.41, "t=0.5"), (47.80, "t=0.6"), (38.41, "t=0.5")],
    "ensemble": [(63.84, "top-3"), (74.37, "top-4"), (46.20, "top-2/4"), (37.20, "top-4")],
    "contrastive_search": [(60.96, "α=0.5"), (74.85, "α=0.6"), (46.20, "α=0.3/0.4"), (36.59, "α=0.3/0.4")],
    "dola": [(49.96, "[0,16)"), (71.04, "[0,16)"), (33.00, "[0,16)"), (12.80, "[0,16)")],
    "cd": [(62.24, "β=0.3"), (74.45, "β=0.3"), (45.20, "β=0.1/0.3"), (35.98, "β=0.3")],
    "scmoe": [(66.94, "β=0.5"), (76.29, "β=0.5"), (48.80, "β=0.1"), (41.46, "β=0.5")],
}
# Tab.7: full grids, hyperparameter -> values in TASKS order.
_MIXTRAL_TAB7: dict[str, dict[Any, tuple[float, ...]]] = {
    "dynamic": {
        0.2: (44.66, 65.35, 41.20, 26.22), 0.3: (49.20, 68.64, 39.80, 32.93), 0.4: (54.13, 72.27, 44.20, 34.76),
        0.5: (59.82, 74.41, 46.20, 38.41), 0.6: (61.11, 74.19, 47.80, 34.15),
    },
    "ensemble": {
        1: (45.19, 64.87, 38.60, 26.83), 2: (61.79, 72.83, 46.20, 33.54), 3: (63.84, 73.45, 44.20, 34.15),
        4: (62.93, 74.37, 46.20, 37.20), 5: (62.02, 73.53, 44.80, 34.15), 6: (59.14, 73.23, 44.00, 29.88),
        7: (57.32, 72.31, 43.80, 29.27), 8: (57.70, 72.18, 42.40, 31.71),
    },
    "contrastive_search": {
        0.3: (60.42, 74.06, 46.20, 36.59), 0.4: (60.58, 74.02, 46.20, 36.59), 0.5: (60.96, 74.80, 41.00, 34.76),
        0.6: (59.74, 74.85, 39.20, 21.95),
    },
    "dola": {"[0,16)": (49.96, 71.04, 33.00, 12.80), "[16,32)": (36.54, 65.22, 21.60, 6.10)},
    "cd": {
        0.1: (61.03, 74.15, 45.20, 34.76), 0.3: (62.24, 74.45, 45.20, 35.98), 0.5: (61.03, 73.58, 44.40, 34.76),
        0.7: (59.97, 74.06, 43.20, 34.15), 0.9: (60.05, 73.97, 41.40, 31.10),
    },
    "scmoe": {  # strong top-2, weak rank-2
        0.1: (62.62, 73.93, 48.80, 39.02), 0.3: (65.96, 75.28, 47.40, 39.63), 0.5: (66.94, 76.29, 45.00, 41.46),
        0.7: (64.37, 76.16, 42.60, 39.63), 0.9: (64.29, 75.59, 41.60, 38.41),
    },
}
# Tab.8 (= Fig.4): strong top-2, weak = RANK_COLUMNS; task -> beta -> 9 values.
_MIXTRAL_TAB8: dict[str, dict[float, tuple[float, ...]]] = {
    "gsm8k": {
        0.1: (60.88, 62.62, 61.87, 63.08, 63.38, 62.09, 63.76, 63.38, 63.38),
        0.3: (62.24, 65.96, 65.20, 65.20, 64.82, 65.50, 65.50, 64.29, 64.74),
        0.5: (63.31, 66.94, 67.02, 66.79, 64.29, 65.35, 66.03, 62.02, 64.97),
        0.7: (63.91, 64.37, 66.03, 64.14, 64.37, 64.44, 66.26, 63.15, 65.13),
        0.9: (63.53, 64.29, 64.97, 64.82, 64.44, 64.37, 64.75, 61.94, 63.84),
    },
    "strategy_qa": {
        0.1: (73.80, 73.93, 73.36, 73.88, 74.02, 74.19, 72.92, 73.80, 74.58),
        0.3: (74.32, 75.28, 73.01, 75.15, 73.53, 74.19, 73.18, 72.79, 74.62),
        0.5: (74.93, 76.29, 73.40, 74.23, 74.54, 74.10, 74.63, 72.88, 75.55),
        0.7: (75.81, 76.16, 72.35, 73.14, 74.32, 74.98, 73.40, 72.66, 75.24),
        0.9: (75.55, 75.59, 73.23, 74.06, 75.28, 73.14, 72.75, 73.14, 75.11),
    },
    "mbpp": {
        0.1: (44.40, 48.80, 47.60, 46.80, 45.40, 44.00, 43.40, 43.80, 46.40),
        0.3: (45.40, 47.40, 46.40, 46.40, 45.20, 42.40, 43.20, 41.80, 45.00),
        0.5: (44.00, 45.00, 45.40, 43.80, 41.80, 38.60, 38.80, 40.80, 44.20),
        0.7: (43.40, 42.60, 40.60, 43.60, 40.60, 38.00, 36.60, 39.00, 41.80),
        0.9: (43.00, 41.60, 39.60, 39.60, 39.40, 38.80, 35.20, 39.60, 37.00),
    },
    "human_eval": {
        0.1: (37.20, 39.02, 39.63, 38.41, 40.85, 35.98, 36.59, 35.98, 38.41),
        0.3: (37.20, 39.63, 39.02, 37.80, 39.02, 35.98, 33.54, 38.41, 37.80),
        0.5: (37.80, 41.46, 37.80, 35.98, 34.76, 32.93, 34.15, 33.54, 37.20),
        0.7: (34.76, 39.63, 33.54, 31.71, 28.05, 31.10, 32.32, 34.15, 33.54),
        0.9: (32.93, 38.41, 29.27, 32.32, 26.22, 29.27, 31.10, 32.93, 28.66),
    },
}
# Tab.9: "ideal" strong activation top-k per task, weak rank-2; values over BETAS.
_MIXTRAL_TAB9: dict[str, tuple[int, tuple[float, ...]]] = {
    "gsm8k": (3, (63.76, 68.92, 67.70, 66.11, 66.41)),
    "strategy_qa": (4, (74.72, 75.50, 76.42, 76.33, 76.38)),
    "mbpp": (4, (48.00, 50.60, 49.00, 45.40, 43.40)),
    "human_eval": (4, (40.24, 39.02, 39.63, 39.02, 41.46)),
}

# --- DeepSeekMoE-16B -----------------------------------------------------------------------
# Tab.4: best per method (no CD row: no same-vocabulary amateur). Settings are not printed there.
_DEEPSEEK_TAB4 = {
    "greedy": (18.95, 60.41, 35.20, 26.83),
    "dynamic": (19.71, 60.63, 34.80, 25.00),
    "ensemble": (19.71, 60.41, 35.20, 26.83),
    "contrastive_search": (19.94, 61.77, 33.40, 25.00),
    "dola": (18.27, 61.72, 36.00, 22.56),
    "scmoe": (20.77, 62.99, 37.20, 28.05),
}
_DEEPSEEK_TAB10: dict[str, dict[Any, tuple[float, ...]]] = {
    "dynamic": {
        0.2: (11.60, 56.47, 29.40, 19.51), 0.3: (16.83, 59.36, 32.60, 22.56), 0.4: (18.12, 60.24, 33.80, 23.17),
        0.5: (19.26, 60.63, 36.00, 24.39), 0.6: (19.71, 59.97, 34.80, 25.00),
    },
    "ensemble": {
        1: (4.32, 51.57, 20.00, 15.24), 2: (10.92, 55.69, 30.00, 20.12), 3: (15.47, 58.49, 31.40, 23.17),
        4: (16.98, 59.76, 33.00, 22.56), 5: (17.82, 58.88, 35.20, 25.00), 6: (18.95, 60.41, 35.20, 26.83),
        7: (19.71, 59.06, 34.40, 26.21), 8: (19.41, 58.84, 34.00, 26.83),
    },
    "contrastive_search": {
        0.3: (18.95, 60.67, 33.40, 25.00), 0.4: (19.79, 61.77, 33.20, 24.39), 0.5: (19.94, 61.59, 33.20, 23.17),
        0.6: (18.42, 61.42, 33.20, 21.95),
    },
    "dola": {"[0,14)": (18.27, 61.72, 36.00, 22.56), "[14,28)": (10.46, 56.17, 24.60, 15.24)},
    "scmoe": {  # keyed (weak top-k, beta); strong = default top-6
        (1, 0.1): (19.86, 61.90, 35.40, 26.83), (1, 0.3): (19.56, 62.64, 36.60, 26.83),
        (1, 0.5): (20.55, 62.99, 37.20, 23.78), (1, 0.7): (19.48, 62.16, 35.60, 22.56),
        (1, 0.9): (19.11, 61.11, 34.80, 20.73), (2, 0.1): (18.73, 61.29, 33.80, 26.83),
        (2, 0.3): (19.41, 60.54, 34.40, 27.44), (2, 0.5): (19.71, 59.84, 36.40, 25.61),
        (2, 0.7): (20.62, 60.76, 35.20, 25.61), (2, 0.9): (18.88, 60.32, 33.80, 24.39),
        (3, 0.1): (19.56, 60.85, 34.80, 27.44), (3, 0.3): (19.11, 60.63, 34.60, 27.44),
        (3, 0.5): (18.88, 60.98, 35.20, 28.05), (3, 0.7): (20.77, 60.19, 36.00, 27.44),
        (3, 0.9): (20.24, 61.20, 36.20, 26.22),
    },
}

# --- §4.3 self-consistency (Mixtral, GSM8K, majority vote over k samples) -------------------
_SELF_CONSISTENCY = [
    # (method, maj@k, value, setting, note)
    ("sample", 5, 66.87, "τ=0.7", ""),
    ("sample", 20, 75.59, "τ=0.7", ""),
    ("scmoe-sample", 20, 78.31, "β=0.5, weak rank-3", ""),
    ("greedy", 1, 61.79, "", "drawn in Fig.5"),
    ("scmoe", 1, 67.94, "β=0.5, weak rank-3", "as printed in §4.3; Tab.1 has 66.94 (rank-2), Tab.8 67.02 (rank-3)"),
]

# --- Tab.3 latency: 32-token prompt + 512 forced tokens, Mixtral on 4xA100-40G, batch size 1 ---
LATENCY_S: dict[str, float] = {
    "greedy": 50.32, "ensemble": 59.82, "dynamic": 54.85, "contrastive_search": 81.73, "dola": 53.30,
    "cd": 72.04, "scmoe": 65.47,
}
LATENCY_RATIO: dict[str, float] = {
    "greedy": 1.00, "ensemble": 1.19, "dynamic": 1.09, "contrastive_search": 1.62, "dola": 1.06, "cd": 1.43,
    "scmoe": 1.30,
}
LATENCY_SETUP = {"prompt_tokens": 32, "new_tokens": 512, "batch_size": 1, "ensemble_k": 3, "dynamic_p": 0.5}


def _grid_params(method: str, key: Any, model: PaperModel) -> dict[str, Any]:
    """Structured hyperparameters of one grid row, in the names our run table uses."""
    if method == "dynamic":
        return {"p": key, "setting": f"t={key}"}
    if method == "ensemble":
        return {"k": key, "setting": f"top-{key}"}
    if method == "contrastive_search":
        return {"cs_alpha": key, "setting": f"α={key}"}
    if method == "dola":
        return {"layers": key, "setting": key}
    if method == "cd":
        return {"beta": key, "setting": f"β={key}"}
    if model.key == "deepseek":  # scmoe keyed (weak top-k, beta)
        k, beta = key
        return {"beta": beta, "strong_kind": "topk", "strong_k": model.default_topk, "weak_kind": "topk",
                "weak_k": k, "setting": f"β={beta}, weak top-{k}"}
    return {"beta": key, "strong_kind": "topk", "strong_k": 2, "weak_kind": "rank", "weak_k": 2,
            "setting": f"β={key}"}


def _rows() -> list[dict[str, Any]]:
    mixtral, deepseek = MODELS["mixtral"], MODELS["deepseek"]
    rows: list[dict[str, Any]] = []

    def add(source: str, model: str, task: str, method: str, value: float, **extra: Any) -> None:
        rows.append({"source": source, "model": model, "task": task, "method": method, "value": value, **extra})

    for method, cells in _MIXTRAL_TAB1.items():
        for task, (value, setting) in zip(TASKS, cells):
            add("Tab.1", "mixtral", task, method, value, setting=setting, best=True)
    for source, model, grids in (("Tab.7", mixtral, _MIXTRAL_TAB7), ("Tab.10", deepseek, _DEEPSEEK_TAB10)):
        for method, grid in grids.items():
            for key, values in grid.items():
                for task, value in zip(TASKS, values):
                    add(source, model.key, task, method, value, **_grid_params(method, key, model))
    for method, values in _DEEPSEEK_TAB4.items():
        for task, value in zip(TASKS, values):
            add("Tab.4", "deepseek", task, method, value, setting="", best=True)
    for task, grid in _MIXTRAL_TAB8.items():
        for beta, values in grid.items():
            for column, value in zip(RANK_COLUMNS, values):
                kind, k = ("random", 1) if column == "random1" else ("rank", int(column[4:]))
                add("Tab.8", "mixtral", task, "scmoe", value, beta=beta, strong_kind="topk", strong_k=2,
                    weak_kind=kind, weak_k=k, setting=f"β={beta}, weak {kind}-{k}")
    for task, (strong_k, values) in _MIXTRAL_TAB9.items():
        for beta, value in zip(BETAS, values):
            add("Tab.9", "mixtral", task, "scmoe", value, beta=beta, strong_kind="topk", strong_k=strong_k,
                weak_kind="rank", weak_k=2, setting=f"β={beta}, strong top-{strong_k}")
    for method, maj_k, value, setting, note in _SELF_CONSISTENCY:
        add("§4.3", "mixtral", "gsm8k", method, value, maj_k=maj_k, setting=setting, note=note)
    return rows


@cache
def _frame() -> pd.DataFrame:
    return pd.DataFrame(_rows())


def results(**where: Any) -> pd.DataFrame:
    """All published accuracies (percent) as one long frame, optionally filtered by equality.

    Columns: source, model, task, method, value, setting, best, p, k, cs_alpha, layers, beta,
    strong_kind, strong_k, weak_kind, weak_k, maj_k, note (NaN where not applicable).
    Example: ``results(source="Tab.8", task="gsm8k", beta=0.5)``.
    """
    df = _frame()
    mask = pd.Series(True, index=df.index)
    for column, value in where.items():
        mask &= df[column] == value
    return df[mask].reset_index(drop=True)


def paper_model_key(name: str | None, path: str | None = None) -> str | None:
    """'mixtral' / 'deepseek' when a config's model.path (hub id or a local dir named like it) or,
    failing that, its model.name is the paper's checkpoint; None otherwise (e.g. a tiny fixture)."""
    candidates = [path, path.rstrip("/").rsplit("/", 1)[-1]] if path else []
    for value in [*candidates, name]:
        for key, model in MODELS.items():
            if value in model.names:
                return key
    return None


# --- §3 exploratory study (Mixtral 8x7B; scmoe_eval/analysis) --------------------------------
# Tab.5: average KLD x1e5 against p_top-2, teacher-forced on GSM8K train questions + gold answers.
# Columns: KLD_COLUMNS (rank-1..8, random-1, the Mistral-7B amateur); rows: token set.
KLD_COLUMNS = (*RANK_COLUMNS, "mistral-7b")
KLD_TAB5: dict[str, tuple[float, ...]] = {
    "all": (0.17, 5.05, 10.21, 12.81, 15.80, 17.78, 19.47, 25.36, 10.36, 0.25),
    "expression": (0.13, 6.62, 12.16, 14.60, 17.52, 19.19, 20.50, 25.70, 12.21, 0.23),
    "stopword": (0.20, 3.40, 6.84, 8.38, 11.06, 13.09, 15.40, 21.03, 7.22, 0.28),
}
# Tab.5's "change vs All" rows as printed (percent); they follow from the rows above up to rounding.
KLD_TAB5_CHANGE: dict[str, tuple[float, ...]] = {
    "expression": (-23.24, 31.13, 19.05, 13.97, 10.89, 7.92, 5.32, 1.32, 17.89, -7.70),
    "stopword": (24.94, -32.67, -33.04, -34.60, -30.00, -26.37, -20.87, -17.09, -30.25, 12.53),
}
# Tab.6: % of (token, layer) pairs whose rank-k expert top-2 did not choose (GSM8K); rank-1..8.
UNCHOSEN_TAB6: tuple[float, ...] = (2.81, 46.21, 72.62, 80.54, 84.61, 87.79, 90.44, 90.96)
