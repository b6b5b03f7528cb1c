"""`heatmap` (paper Fig. 3): per-token KL(p_top-2 || p_rank-k) of one example, for a PNG.

Default example: GSM8K **test** item 372, "Hallie had dance practice ..." (conf/analysis/heatmap.yaml);
the paper names the example but not its split, and it is in test, not train.
"""

from __future__ import annotations

from typing import Any

from scmoe_eval.analysis.base import ANALYSES, Batch, base_record
from scmoe_eval.analysis.kld import KLD, paper_scale


@ANALYSES.register("heatmap")
class Heatmap(KLD):
    name = "heatmap"

    def records(self, batch: Batch) -> list[dict[str, Any]]:
        vocab = int(batch.logits.shape[-1])
        return [
            base_record(
                item, tokens=batch.enc.labels[i], expression=batch.enc.expression[i],
                stopword=batch.enc.stopword[i], vocab_size=vocab,
                kld={label: [float(x) for x in v.cpu()] for label, v in self.per_token(batch, i).items()},
            )
            for i, item in enumerate(batch.items)
        ]

    def summarize(self, records: list[dict[str, Any]], weak: list[str]) -> dict[str, Any]:
        r = records[0]
        mean = {label: sum(v) / len(v) for label, v in r["kld"].items()}
        return {"analysis": "heatmap", "id": r["id"], "n_tokens": len(r["tokens"]), "mean_nats": mean,
                "mean_paper_scale": {k: paper_scale(v, r["vocab_size"]) for k, v in mean.items()}}
