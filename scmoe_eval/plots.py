"""Sweep plots (paper Fig.4 and Fig.1 analogues) from a load_runs frame, optionally over the paper's curves.

Uses matplotlib's object API with the Agg canvas (no pyplot state, no display needed).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from scmoe_eval import paper
from scmoe_eval.tables import best_run

log = logging.getLogger(__name__)


def _weak_name(kind: str, k: float) -> str:
    return {"rank": "rank", "random": "random", "topk": "top"}.get(kind, kind) + f"-{int(k)}"


def _tasks(rows: pd.DataFrame, task: str | None) -> list[str]:
    present = list(rows["task"].unique()) if task is None else [task]
    return sorted(present, key=lambda t: (paper.TASKS.index(t) if t in paper.TASKS else len(paper.TASKS), t))


def _curve(rows: pd.DataFrame, x: str, mode: str) -> tuple[list[float], list[float]]:
    """One point per x value: the run best_run prefers among repeats (complete runs first)."""
    points = [(float(value), float(best_run(group, mode)[mode])) for value, group in rows.groupby(x)]
    return [p[0] for p in points], [p[1] for p in points]


def _figure(
    rows: pd.DataFrame, out_png: Path, task: str | None, mode: str, xlabel: str,
    draw: Callable[[Axes, str, pd.DataFrame], None],
) -> Path | None:
    rows = rows[rows[mode].notna()]
    if task is not None:
        rows = rows[rows["task"] == task]
    if rows.empty:
        log.warning("nothing to plot for %s", out_png)
        return None
    tasks = _tasks(rows, task)
    fig = Figure(figsize=(4.6 * len(tasks), 3.8), layout="constrained")
    for ax, t in zip(fig.subplots(1, len(tasks), squeeze=False)[0], tasks):
        sub = rows[rows["task"] == t]
        draw(ax, t, sub)
        ax.set_title(paper.TASK_TITLES.get(t, t))
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{mode} {sub['primary'].iloc[0]} (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=120)
    return out_png


def _qualifiers(group: pd.DataFrame, vary: list[str]) -> str:
    first = group.iloc[0]
    return ", ".join(f"{c}={first[c]:g}" if isinstance(first[c], float) else f"{c}={first[c]}" for c in vary)


def plot_beta_sweep(
    df: pd.DataFrame, out_png: Path, task: str | None = None, *, mode: str = "official",
    paper_model: str | None = None,
) -> Path | None:
    """SCMoE metric vs β, one line per weak activation (and per model/strong/α where those vary).

    paper_model="mixtral" overlays Tab.8 (dashed, same colour) on our lines of that checkpoint with
    the paper's strong top-2 and α=0.1; "deepseek" overlays Tab.10. Dotted lines mark our greedy
    runs. Returns None when there is no SCMoE run to plot.
    """
    if df.empty:
        log.warning("no runs to plot for %s", out_png)
        return None
    rows = df[df["family"] == "scmoe"]
    greedy = df[(df["family"] == "greedy") & df["model"].isin(rows["model"]) & df[mode].notna()]
    source = {"mixtral": "Tab.8", "deepseek": "Tab.10"}.get(paper_model or "")

    def draw(ax: Axes, t: str, sub: pd.DataFrame) -> None:
        vary = [c for c in ("model", "strong_kind", "strong_k", "alpha") if sub[c].nunique(dropna=False) > 1]
        for (kind, k, *_), group in sub.groupby(["weak_kind", "weak_k", *vary], dropna=False):
            extra = _qualifiers(group, vary)
            label = _weak_name(kind, k) + (f" ({extra})" if extra else "")
            xs, ys = _curve(group, "beta", mode)
            (line,) = ax.plot(xs, ys, marker="o", label=label)
            first = group.iloc[0]
            default_k = paper.MODELS[paper_model].default_topk if source else None
            comparable = (
                source and first["paper_model"] == paper_model and first["alpha"] == 0.1
                and (first["strong_kind"] == "default" or first["strong_k"] == default_k)
            )
            if comparable:
                pub = paper.results(source=source, model=paper_model, method="scmoe", task=t, weak_kind=kind, weak_k=k)
                if not pub.empty:
                    pub = pub.sort_values("beta")
                    ax.plot(pub["beta"], pub["value"], ls="--", color=line.get_color(), alpha=0.6,
                            label=f"{_weak_name(kind, k)} paper {source}")
        for model, g in greedy[(greedy["task"] == t) & greedy["model"].isin(sub["model"])].groupby("model"):
            ax.axhline(best_run(g, mode)[mode], color="grey", ls=":", label=f"greedy ({model})")

    return _figure(rows, out_png, task, mode, "β", draw)


def plot_topk(
    df: pd.DataFrame, out_png: Path, task: str | None = None, *, mode: str = "official",
    paper_model: str | None = None,
) -> Path | None:
    """Greedy metric vs number of routed experts k (ensemble routing; paper Fig.1), one line per model.

    Stock-routing greedy runs count as k = the paper model's default top-k when the model is known.
    paper_model overlays the published ensemble grid (Tab.7 / Tab.10, dashed). Our best SCMoE run of
    the task (α=0.1, same models) is drawn as a reference line, as in Fig.1. Returns None when there is no such run.
    """
    if df.empty:
        log.warning("no runs to plot for %s", out_png)
        return None
    ens = df[df["family"] == "ensemble"].assign(k=df["routing_k"])
    default_k = df["paper_model"].map(lambda m: paper.MODELS[m].default_topk if m in paper.MODELS else None)
    greedy = df[(df["family"] == "greedy") & default_k.notna()].assign(k=default_k)
    rows = pd.concat([ens, greedy])
    scmoe = df[(df["family"] == "scmoe") & (df["alpha"] == 0.1) & df["model"].isin(rows["model"])]

    def draw(ax: Axes, t: str, sub: pd.DataFrame) -> None:
        for model, group in sub.groupby("model"):
            xs, ys = _curve(group, "k", mode)
            ax.plot(xs, ys, marker="o", label=f"{model} top-k")
        if paper_model:
            source = "Tab.7" if paper_model == "mixtral" else "Tab.10"
            pub = paper.results(source=source, model=paper_model, method="ensemble", task=t).sort_values("k")
            ax.plot(pub["k"], pub["value"], ls="--", color="grey", label=f"paper {source}")
        s = scmoe[(scmoe["task"] == t) & scmoe[mode].notna()]
        if not s.empty:
            best = best_run(s, mode)
            ax.axhline(best[mode], color="tab:red", ls=":", label=f"SCMoE (ours, {best['method']})")

    return _figure(rows, out_png, task, mode, "experts per token (top-k)", draw)
