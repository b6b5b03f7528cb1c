"""`kld` (paper Tab. 5): teacher-forced KL(p_top-2 || p_weak) per token, by token class.

Choices where the paper is silent (../shared/paper.md §3), each tested in tests/test_analysis.py:
- direction KL(p_strong || p_weak), "KLD against p_top-2"; natural log; float32 softmax;
- the paper's ×1e5 numbers are read as torch's `kl_div(reduction="mean")`, which divides the summed
  KL by the number of *elements* (tokens × vocabulary): per token that is KL / |V|. With |V| = 32,000
  (Mixtral) the paper's rank-1 0.17 is 0.054 nats per token and rank-8 25.36 is 8.1 nats, plausible
  values; read as plain nats ×1e5 they would be 1.7e-6 nats, and Mistral-7B (a different model) would
  differ from Mixtral by 2.5e-6 nats, which is not credible. So `paper` scale = mean_nats / |V| × 1e5;
  summary.json also keeps plain nats per token;
- the mean is pooled over tokens (every scored token of every item counts once); the mean of per-item
  means is reported beside it (`item_mean_nats`);
- "change vs All" = (class mean − All mean) / All mean × 100, per column, as Tab. 5 prints it.
"""

from __future__ import annotations

from typing import Any

import torch

from scmoe_eval.analysis.base import AMATEUR, ANALYSES, Analysis, Batch, base_record
from scmoe_eval.analysis.forward import kl_divergence
from scmoe_eval.analysis.tokens import CLASSES

PAPER_SCALE = 1e5


def class_sums(kl: torch.Tensor, expression: torch.Tensor, stopword: torch.Tensor) -> dict[str, float]:
    """Summed KL (float64) over all scored tokens and over each token class."""
    kl = kl.double()
    return {"all": float(kl.sum()), "expression": float(kl[expression].sum()), "stopword": float(kl[stopword].sum())}


def paper_scale(mean_nats: float, vocab_size: int) -> float:
    """Per-token KL in nats -> the paper's ×1e5 number (element-wise mean over the vocabulary)."""
    return mean_nats / vocab_size * PAPER_SCALE


def relative_change(value: float, all_value: float) -> float:
    """Tab. 5's "change vs All" in percent."""
    return (value - all_value) / all_value * 100.0 if all_value else float("nan")


@ANALYSES.register("kld")
class KLD(Analysis):
    name = "kld"

    def per_token(self, batch: Batch, i: int) -> dict[str, torch.Tensor]:
        """Per scored token KL (nats) of item i for every weak routing (and the amateur)."""
        sel = batch.enc.scored[i].to(batch.logits.device)
        strong = batch.logits[i, 0, sel]  # (n, V)
        out = {label: kl_divergence(strong, batch.logits[i, j, sel]) for j, label in enumerate(batch.weak, start=1)}
        if batch.amateur is not None:
            out[AMATEUR] = kl_divergence(strong, batch.amateur[i, sel.to(batch.amateur.device)].to(strong.device))
        return out

    def records(self, batch: Batch) -> list[dict[str, Any]]:
        records = []
        for i, item in enumerate(batch.items):
            expression = torch.tensor(batch.enc.expression[i], dtype=torch.bool)
            stopword = torch.tensor(batch.enc.stopword[i], dtype=torch.bool)
            kl = {label: class_sums(v.cpu(), expression, stopword) for label, v in self.per_token(batch, i).items()}
            counts = {"all": len(expression), "expression": int(expression.sum()), "stopword": int(stopword.sum())}
            records.append(base_record(item, counts=counts, kld=kl, vocab_size=int(batch.logits.shape[-1])))
        return records

    def summarize(self, records: list[dict[str, Any]], weak: list[str]) -> dict[str, Any]:
        vocab = records[0]["vocab_size"]
        labels = [*weak, *([AMATEUR] if AMATEUR in records[0]["kld"] else [])]
        counts = {c: sum(r["counts"][c] for r in records) for c in CLASSES}
        columns: dict[str, Any] = {}
        for label in labels:
            nats = {c: sum(r["kld"][label][c] for r in records) / counts[c] if counts[c] else float("nan")
                    for c in CLASSES}
            item_means = [r["kld"][label]["all"] / r["counts"]["all"] for r in records if r["counts"]["all"]]
            columns[label] = {
                "mean_nats": nats,
                "paper_scale": {c: paper_scale(v, vocab) for c, v in nats.items()},
                "change_vs_all_pct": {c: relative_change(nats[c], nats["all"]) for c in ("expression", "stopword")},
                "item_mean_nats": sum(item_means) / len(item_means) if item_means else float("nan"),
            }
        return {"analysis": "kld", "n_items": len(records), "n_tokens": counts, "vocab_size": vocab,
                "scale": "paper_scale = mean nats per token / vocab_size x 1e5", "columns": columns}
