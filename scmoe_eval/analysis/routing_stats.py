"""`routing`: expert load per layer under the strong and each weak routing, and their per-layer overlap.

Load = how many (scored token, active slot) pairs each expert received, per layer and routing row.
Overlap = the Jaccard index |S ∩ W| / |S ∪ W| of the strong and weak expert sets at the same token and
layer, averaged over tokens (1 = the same experts; rank-k against top-2 is at most 1/2).
"""

from __future__ import annotations

from typing import Any

import torch

from scmoe_eval.analysis.base import ANALYSES, Analysis, Batch, base_record
from scmoe_eval.analysis.unchosen import in_set

STRONG = "strong"


@ANALYSES.register("routing")
class RoutingStats(Analysis):
    name = "routing"
    records_routes = True

    def records(self, batch: Batch) -> list[dict[str, Any]]:
        labels = [STRONG, *batch.weak]
        records = []
        for i, item in enumerate(batch.items):
            sel = batch.enc.scored[i]
            load: dict[str, list[list[int]]] = {label: [] for label in labels}
            jaccard: dict[str, list[float]] = {label: [] for label in batch.weak}
            for route in batch.routes:
                experts = route.order.shape[-1]
                for j, label in enumerate(labels):
                    idx, on = route.index[i, j][sel], route.active[i, j][sel]
                    load[label].append(torch.bincount(idx[on], minlength=experts).tolist())
                strong, strong_on = route.index[i, 0][sel], route.active[i, 0][sel]
                n_strong = _distinct(strong, strong_on)
                for j, label in enumerate(batch.weak, start=1):
                    weak, weak_on = route.index[i, j][sel], route.active[i, j][sel]
                    first = _first_occurrence(weak, weak_on)  # count each weak expert once
                    inter = (first & in_set(weak, strong, strong_on)).sum(-1)
                    union = n_strong + first.sum(-1) - inter
                    jaccard[label].append(float((inter / union).double().sum()))
            records.append(base_record(item, load=load, jaccard=jaccard, n_positions=int(sel.sum())))
        return records

    def summarize(self, records: list[dict[str, Any]], weak: list[str]) -> dict[str, Any]:
        labels = [STRONG, *weak]
        n = sum(r["n_positions"] for r in records)
        load = {}
        for label in labels:
            counts = torch.tensor([r["load"][label] for r in records], dtype=torch.float64).sum(0)  # (L, E)
            load[label] = (counts / counts.sum(-1, keepdim=True)).tolist()
        overlap = {label: (torch.tensor([r["jaccard"][label] for r in records], dtype=torch.float64).sum(0) / n).tolist()
                   for label in weak}
        return {"analysis": "routing", "n_items": len(records), "n_positions": n,
                "load_share": load, "jaccard_per_layer": overlap}


def _first_occurrence(index: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """(n, K) bool: active slots whose expert did not already appear in an earlier active slot."""
    same = (index[:, :, None] == index[:, None, :]) & active[:, None, :]  # [t, a, b]: slot b (active) = slot a
    earlier = torch.ones(index.shape[1], index.shape[1], dtype=torch.bool, device=index.device).tril(-1)
    return active & ~(same & earlier).any(-1)


def _distinct(index: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    return _first_occurrence(index, active).sum(-1)
