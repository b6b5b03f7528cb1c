"""Tab. 5 / Tab. 6 beside the published numbers (ours / paper / Δ) and the analysis PNGs.

Tables go through scmoe_eval.tables.write_table (markdown, CSV, LaTeX); plots use matplotlib's
object API on the Agg canvas, as scmoe_eval/plots.py.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from scmoe_eval import paper
from scmoe_eval.analysis.base import AMATEUR
from scmoe_eval.tables import DELTA, OURS, PAPER, write_table

_TITLES = {"all": "All", "expression": "Expression", "stopword": "Stopword"}


def column_title(label: str) -> str:
    """Our label -> the paper's column key (rank2 -> rank2, random1 -> random1, amateur -> mistral-7b)."""
    return "mistral-7b" if label == AMATEUR else label


def _r(x: float) -> float:
    return round(x, 2) if isinstance(x, float) and math.isfinite(x) else float("nan")


def tab5(summary: dict[str, Any]) -> pd.DataFrame:
    """Tab. 5: rows (token set, ours/paper/Δ) plus the two "change vs All" rows; x1e5 paper scale."""
    labels = list(summary["columns"])
    columns = [column_title(label) for label in labels]
    pub = dict(zip(paper.KLD_COLUMNS, zip(*paper.KLD_TAB5.values())))  # column -> (all, expr, stop)
    pub_change = dict(zip(paper.KLD_COLUMNS, zip(*paper.KLD_TAB5_CHANGE.values())))
    rows: dict[tuple[str, str], dict[str, float]] = {}
    for c_i, cls in enumerate(("all", "expression", "stopword")):
        ours = {col: _r(summary["columns"][lab]["paper_scale"][cls]) for lab, col in zip(labels, columns)}
        theirs = {col: pub[col][c_i] if col in pub else float("nan") for col in columns}
        rows[(_TITLES[cls], OURS)] = ours
        rows[(_TITLES[cls], PAPER)] = theirs
        rows[(_TITLES[cls], DELTA)] = {col: _r(ours[col] - theirs[col]) for col in columns}
        if cls != "all":
            name = f"{_TITLES[cls]}: change vs All (%)"
            ours_c = {col: _r(summary["columns"][lab]["change_vs_all_pct"][cls]) for lab, col in zip(labels, columns)}
            theirs_c = {col: pub_change[col][c_i - 1] if col in pub_change else float("nan") for col in columns}
            rows[(name, OURS)] = ours_c
            rows[(name, PAPER)] = theirs_c
            rows[(name, DELTA)] = {col: _r(ours_c[col] - theirs_c[col]) for col in columns}
    table = pd.DataFrame.from_dict(rows, orient="index")[columns]
    table.index = pd.MultiIndex.from_tuples(table.index, names=["token set", "row"])
    return table


def tab6(summary: dict[str, Any]) -> pd.DataFrame:
    """Tab. 6: % unchosen per weak routing, rows ours (own stream) / ours (same forward) / paper / Δ (own stream)."""
    labels = list(summary["own_stream"])
    pub = dict(zip(paper.RANK_COLUMNS[:8], paper.UNCHOSEN_TAB6))

    def pct(reading: str, label: str) -> float:
        entry = summary[reading][label]
        return float("nan") if entry is None else _r(entry["overall_pct"])

    own = {label: pct("own_stream", label) for label in labels}
    same = {label: pct("same_forward", label) for label in labels}
    theirs = {label: pub.get(label, float("nan")) for label in labels}
    rows = {
        "ours (b): weak row's own stream": own,
        "ours (a): same forward": same,
        PAPER: theirs,
        f"{DELTA} (b) − paper": {label: _r(own[label] - theirs[label]) for label in labels},
    }
    table = pd.DataFrame.from_dict(rows, orient="index")[labels]
    table.index.name = "% unchosen"
    return table


def unchosen_per_layer(summary: dict[str, Any]) -> pd.DataFrame:
    """Per-layer % unchosen (own stream), layers x weak routings; ours only (the paper prints no per-layer numbers)."""
    data = {label: [_r(x) for x in entry["per_layer_pct"]] for label, entry in summary["own_stream"].items()}
    table = pd.DataFrame(data)
    table.index.name = "layer"
    return table


def routing_overlap(summary: dict[str, Any]) -> pd.DataFrame:
    table = pd.DataFrame({label: [_r(x) for x in v] for label, v in summary["jaccard_per_layer"].items()})
    table.index.name = "layer"
    return table


# --- plots -----------------------------------------------------------------------------------

def _save(fig: Figure, out_png: Path) -> Path:
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=130)
    return out_png


def _token_label(text: str) -> str:
    text = text.replace("\n", "\\n").strip() or "␣"
    return text if len(text) <= 12 else text[:11] + "…"


def plot_heatmap(record: dict[str, Any], out_png: Path, labels: list[str] | None = None,
                 per_line: int = 32) -> Path:
    """Fig. 3: one row per routing (rank-1..8 by default), one column per token, paper scale (x1e5 / |V|).

    Long texts wrap into several panels of `per_line` tokens; the last one is padded (blank) so every
    cell has the same width. Expression tokens have blue labels."""
    labels = labels or [k for k in record["kld"] if k.startswith("rank")] or list(record["kld"])
    vocab = record["vocab_size"]
    values = [[v / vocab * 1e5 for v in record["kld"][label]] for label in labels]
    tokens = [_token_label(t) for t in record["tokens"]]
    n_lines = math.ceil(len(tokens) / per_line)
    vmax = max(max(row) for row in values) or 1.0
    fig = Figure(figsize=(0.3 * per_line + 1.4, (0.2 * len(labels) + 0.75) * n_lines + 1.1), layout="constrained")
    axes = fig.subplots(n_lines, 1, squeeze=False)[:, 0]
    image = None
    for line, ax in enumerate(axes):
        lo, hi = line * per_line, min((line + 1) * per_line, len(tokens))
        grid = [row[lo:hi] + [math.nan] * (per_line - (hi - lo)) for row in values]
        image = ax.imshow(grid, aspect="auto", cmap="Reds", vmin=0, vmax=vmax, interpolation="nearest")
        ax.set_yticks(range(len(labels)), [label.replace("rank", "rank-") for label in labels], fontsize=7)
        ax.set_xticks(range(hi - lo), tokens[lo:hi], rotation=90, fontsize=8)
        for tick, is_expr in zip(ax.get_xticklabels(), record["expression"][lo:hi]):
            if is_expr:
                tick.set_color("tab:blue")
        ax.tick_params(length=0)
        for side in ("top", "right", "bottom", "left"):
            ax.spines[side].set_visible(False)
    fig.colorbar(image, ax=list(axes), location="bottom", shrink=0.5, aspect=40, pad=0.01,
                 label="KLD ×1e5 (per-token KL / |V|)")
    fig.suptitle(f"KL(p_top-2 ‖ p_rank-k) per token, {record['id']} (expression tokens in blue)", fontsize=9)
    return _save(fig, out_png)


def _per_layer_lines(lines: dict[str, list[float]], ylabel: str, top: float, title: str, out_png: Path) -> Path:
    """One line per routing over the MoE layers, y from 0 to `top` (a small margin each side)."""
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    for label, values in lines.items():
        ax.plot(range(len(values)), values, marker="o", ms=3, label=label)
    ax.set_xlabel("MoE layer (0 = first)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    ax.set_ylim(-0.02 * top, 1.02 * top)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", ncol=2)
    ax.set_title(title, fontsize=9)
    return _save(fig, out_png)


def plot_unchosen_per_layer(summary: dict[str, Any], out_png: Path) -> Path:
    """% of a weak routing's experts that top-2 did not choose, per layer (own stream), one line per routing."""
    lines = {f"{label} ({e['overall_pct']:.1f}%)": e["per_layer_pct"] for label, e in summary["own_stream"].items()}
    return _per_layer_lines(lines, "% unchosen by top-2", 100,
                            "Weak routing's experts outside the strong top-2 (weak row's own stream)", out_png)


def plot_expert_load(summary: dict[str, Any], out_png: Path) -> Path:
    """Expert-load share per layer (rows) and expert (columns), one panel per routing."""
    load = summary["load_share"]
    labels = list(load)
    cols = min(len(labels), 5)
    rows = math.ceil(len(labels) / cols)
    fig = Figure(figsize=(2.6 * cols + 1, 2.4 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).flatten()
    vmax = max(max(max(layer) for layer in grid) for grid in load.values())
    image = None
    for ax, label in zip(axes, labels):
        grid = load[label]
        image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=vmax, interpolation="nearest")
        ax.set_title(label, fontsize=8)
        ax.set_xlabel("expert", fontsize=7)
        ax.set_ylabel("layer", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes[len(labels):]:
        ax.set_visible(False)
    fig.colorbar(image, ax=list(axes), shrink=0.8, label="share of the layer's routed slots")
    fig.suptitle("Expert load per layer: strong and each weak routing", fontsize=9)
    return _save(fig, out_png)


def plot_overlap(summary: dict[str, Any], out_png: Path) -> Path:
    return _per_layer_lines(summary["jaccard_per_layer"], "Jaccard(strong, weak) experts", 1,
                            "Per-layer overlap of strong and weak expert choices", out_png)


def write_report(name: str, summary: dict[str, Any], records: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """Every table (md/csv/tex) and PNG of one analysis into out_dir; returns the paths."""
    out_dir = Path(out_dir)
    paths: list[Path] = []
    if name == "kld":
        paths += write_table(tab5(summary), out_dir / "tab5_kld")
    elif name == "unchosen":
        paths += write_table(tab6(summary), out_dir / "tab6_unchosen")
        paths += write_table(unchosen_per_layer(summary), out_dir / "tab6_unchosen_per_layer")
        paths.append(plot_unchosen_per_layer(summary, out_dir / "unchosen_per_layer.png"))
    elif name == "heatmap":
        paths.append(plot_heatmap(records[0], out_dir / "fig3_heatmap.png"))
    elif name == "routing":
        paths += write_table(routing_overlap(summary), out_dir / "routing_overlap")
        paths.append(plot_expert_load(summary, out_dir / "expert_load.png"))
        paths.append(plot_overlap(summary, out_dir / "routing_overlap.png"))
    return paths
