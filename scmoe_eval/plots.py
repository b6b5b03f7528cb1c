"""Sweep plots (paper Fig.4 and Fig.1 analogues) from a load_runs frame, optionally over the paper's curves.

Uses matplotlib's object API with the Agg canvas (no pyplot state, no display needed). Every line of
ours keeps one colour in every task panel (9 distinct colours, then the marker changes), the legend
sits outside the panels, and no axis goes below 0 (a random model's 0% stays on the frame).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from scmoe_eval import paper
from scmoe_eval.tables import best_run

log = logging.getLogger(__name__)

# tab10 without its grey (kept for the paper's curves); black is for reference lines (greedy, SCMoE).
PALETTE = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive",
           "tab:cyan")
MARKERS = ("o", "s", "^", "D", "v", "P")
PAPER_ALPHA = 0.1  # the paper's plausibility α: β sweeps at another α are drawn only when they are sweeps


def _style(i: int) -> dict[str, str]:
    return {"color": PALETTE[i % len(PALETTE)], "marker": MARKERS[(i // len(PALETTE)) % len(MARKERS)]}


def _weak_name(kind: str, k: float) -> str:
    return {"rank": "rank", "random": "random", "topk": "top"}.get(kind, kind) + f"-{int(k)}"


def _weak_order(kind: str, k: float) -> tuple[int, float]:
    return ({"rank": 0, "topk": 1, "random": 2}.get(kind, 3), float(k))


def _tasks(rows: pd.DataFrame, task: str | None) -> list[str]:
    present = list(rows["task"].unique()) if task is None else [task]
    return sorted(present, key=lambda t: (paper.TASKS.index(t) if t in paper.TASKS else len(paper.TASKS), t))


def _curve(rows: pd.DataFrame, x: str, mode: str) -> tuple[list[float], list[float]]:
    """One point per x value: the run best_run prefers among repeats (complete runs first)."""
    points = [(float(value), float(best_run(group, mode)[mode])) for value, group in rows.groupby(x)]
    return [p[0] for p in points], [p[1] for p in points]


def _figure(
    rows: pd.DataFrame, out_png: Path, task: str | None, mode: str, xlabel: str,
    draw: Callable[[Axes, str, pd.DataFrame], None], extra_legend: Sequence[Line2D] = (),
) -> Path | None:
    rows = rows[rows[mode].notna()]
    if task is not None:
        rows = rows[rows["task"] == task]
    if rows.empty:
        log.warning("nothing to plot for %s", out_png)
        return None
    tasks = _tasks(rows, task)
    fig = Figure(figsize=(4.6 * len(tasks) + 2.6, 3.8), layout="constrained")
    handles: dict[str, Line2D] = {}
    for ax, t in zip(fig.subplots(1, len(tasks), squeeze=False)[0], tasks):
        sub = rows[rows["task"] == t]
        draw(ax, t, sub)
        ax.set_title(paper.TASK_TITLES.get(t, t))
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{mode} {sub['primary'].iloc[0]} (%)")
        ax.grid(alpha=0.3)
        low, high = ax.get_ylim()
        if low < 0:  # all-zero curves (random weights) would centre the axis on 0
            ax.set_ylim(0, max(high, 1.0))
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    for proxy in extra_legend:
        handles.setdefault(proxy.get_label(), proxy)
    fig.legend(list(handles.values()), list(handles), loc="outside right upper", fontsize="small")
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=120)
    return out_png


def _qualifiers(group: pd.DataFrame, vary: list[str]) -> str:
    first = group.iloc[0]
    return ", ".join(f"{c}={first[c]:g}" if isinstance(first[c], float) else f"{c}={first[c]}" for c in vary)


def _line_keys(rows: pd.DataFrame, fixed: list[str], optional: Sequence[str]) -> tuple[list[str], list[str]]:
    """Group columns of the lines: `fixed` plus each `optional` column that takes several values."""
    vary = [c for c in optional if rows[c].nunique(dropna=False) > 1]
    return [*fixed, *vary], vary


def _scmoe_rows(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["family"] == "scmoe"] if not df.empty else df


def plot_beta_sweep(
    df: pd.DataFrame, out_png: Path, task: str | None = None, *, mode: str = "official",
    paper_model: str | None = None,
) -> Path | None:
    """SCMoE metric vs β, one line per weak activation (and per model/strong/α where those vary).

    Runs at another α than the paper's 0.1 join only when they form a β sweep (two β or more); single
    points of an α sweep are plot_alpha_sweep's. paper_model="mixtral" draws Tab.8 ("deepseek":
    Tab.10) dashed in the colour of each weak activation we ran, whatever model we ran it on, as
    plot_topk does. Dotted black lines mark our greedy runs. Returns None when there is no SCMoE run.
    """
    rows = _scmoe_rows(df)
    if rows.empty:
        log.warning("no runs to plot for %s", out_png)
        return None
    all_keys = ["weak_kind", "weak_k", "model", "strong_kind", "strong_k", "alpha"]
    n_beta = rows.groupby(all_keys, dropna=False)["beta"].transform("nunique")
    rows = rows[(n_beta >= 2) | (rows["alpha"] == PAPER_ALPHA)]
    greedy = df[(df["family"] == "greedy") & df["model"].isin(rows["model"]) & df[mode].notna()]
    source = {"mixtral": "Tab.8", "deepseek": "Tab.10"}.get(paper_model or "")
    keys, vary = _line_keys(rows, ["weak_kind", "weak_k"], ("model", "strong_kind", "strong_k", "alpha"))
    labels = {
        key: _weak_name(key[0], key[1]) + (f" ({_qualifiers(g, vary)})" if vary else "")
        for key, g in sorted(rows.groupby(keys, dropna=False), key=lambda kv: _weak_order(*kv[0][:2]))
    }
    styles = {key: _style(i) for i, key in enumerate(labels)}

    def draw(ax: Axes, t: str, sub: pd.DataFrame) -> None:
        published_done: set[tuple[str, float]] = set()
        groups = dict(list(sub.groupby(keys, dropna=False)))
        for key in [k for k in labels if k in groups]:  # legend order: rank-1.., top-.., random-..
            group = groups[key]
            xs, ys = _curve(group, "beta", mode)
            ax.plot(xs, ys, label=labels[key], clip_on=False, **styles[key])
            first, weak = group.iloc[0], (key[0], key[1])
            default_k = paper.MODELS[paper_model].default_topk if source else None
            paper_setting = first["alpha"] == PAPER_ALPHA and (
                first["strong_kind"] == "default" or first["strong_k"] == default_k
            )
            if source and paper_setting and weak not in published_done:
                pub = paper.results(source=source, model=paper_model, method="scmoe", task=t, weak_kind=weak[0],
                                    weak_k=weak[1])
                if not pub.empty:
                    pub = pub.sort_values("beta")
                    ax.plot(pub["beta"], pub["value"], ls="--", lw=1.2, color=styles[key]["color"], alpha=0.7)
                    published_done.add(weak)
        for model, g in greedy[(greedy["task"] == t) & greedy["model"].isin(sub["model"])].groupby("model"):
            ax.axhline(best_run(g, mode)[mode], color="black", ls=":", lw=1.2, label=f"greedy ({model})")

    # one legend entry for all dashed curves, each coloured like our line of the same weak activation
    proxies = [Line2D([], [], color="grey", ls="--", label=f"paper {source} (dashed, same colour)")] if source else []
    return _figure(rows, out_png, task, mode, "β", draw, extra_legend=proxies)


def plot_alpha_sweep(
    df: pd.DataFrame, out_png: Path, task: str | None = None, *, mode: str = "official",
) -> Path | None:
    """SCMoE metric vs α (log axis), one line per weak activation and β (and model/strong where they
    vary) that has two α values or more. Returns None when no run set sweeps α."""
    rows = _scmoe_rows(df)
    if rows.empty:
        return None
    all_keys = ["weak_kind", "weak_k", "beta", "model", "strong_kind", "strong_k"]
    rows = rows[rows.groupby(all_keys, dropna=False)["alpha"].transform("nunique") >= 2]
    if rows.empty:
        log.info("no α sweep to plot for %s", out_png)
        return None
    keys, vary = _line_keys(rows, ["weak_kind", "weak_k", "beta"], ("model", "strong_kind", "strong_k"))
    labels = {
        key: f"{_weak_name(key[0], key[1])}, β={key[2]:g}" + (f" ({_qualifiers(g, vary)})" if vary else "")
        for key, g in sorted(rows.groupby(keys, dropna=False), key=lambda kv: (*_weak_order(*kv[0][:2]), kv[0][2]))
    }
    styles = {key: _style(i) for i, key in enumerate(labels)}

    def draw(ax: Axes, t: str, sub: pd.DataFrame) -> None:
        groups = dict(list(sub.groupby(keys, dropna=False)))
        for key in [k for k in labels if k in groups]:
            xs, ys = _curve(groups[key], "alpha", mode)
            ax.plot(xs, ys, label=labels[key], clip_on=False, **styles[key])
        ax.set_xscale("log")
        ax.axvline(PAPER_ALPHA, color="grey", ls="--", lw=1, label=f"paper's α={PAPER_ALPHA:g}")

    return _figure(rows, out_png, task, mode, "α (plausibility cutoff, log scale)", draw)


def plot_topk(
    df: pd.DataFrame, out_png: Path, task: str | None = None, *, mode: str = "official",
    paper_model: str | None = None,
) -> Path | None:
    """Greedy metric vs number of routed experts k (ensemble routing; paper Fig.1), one line per model.

    Stock-routing greedy runs count as k = the paper model's default top-k when the model is known.
    paper_model overlays the published ensemble grid (Tab.7 / Tab.10, dashed grey). Our best SCMoE run of
    the task (α=0.1, same models) is drawn as a black dotted reference line, as in Fig.1. Returns None
    when there is no such run.
    """
    if df.empty:
        log.warning("no runs to plot for %s", out_png)
        return None
    ens = df[df["family"] == "ensemble"].assign(k=df["routing_k"])
    default_k = df["paper_model"].map(lambda m: paper.MODELS[m].default_topk if m in paper.MODELS else None)
    greedy = df[(df["family"] == "greedy") & default_k.notna()].assign(k=default_k)
    rows = pd.concat([ens, greedy])
    scmoe = df[(df["family"] == "scmoe") & (df["alpha"] == PAPER_ALPHA) & df["model"].isin(rows["model"])]
    styles = {model: _style(i) for i, model in enumerate(sorted(rows["model"].dropna().unique()))}

    def draw(ax: Axes, t: str, sub: pd.DataFrame) -> None:
        for model, group in sub.groupby("model"):
            xs, ys = _curve(group, "k", mode)
            ax.plot(xs, ys, label=f"{model} top-k", clip_on=False, **styles[model])
        if paper_model:
            source = "Tab.7" if paper_model == "mixtral" else "Tab.10"
            pub = paper.results(source=source, model=paper_model, method="ensemble", task=t).sort_values("k")
            ax.plot(pub["k"], pub["value"], ls="--", color="grey", label=f"paper {source}")
        s = scmoe[(scmoe["task"] == t) & scmoe[mode].notna()]
        if not s.empty:
            best = best_run(s, mode)
            ax.axhline(best[mode], color="black", ls=":", label="SCMoE (ours, best α=0.1 run per task)")

    return _figure(rows, out_png, task, mode, "experts per token (top-k)", draw)
