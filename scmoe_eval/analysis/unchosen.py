"""`unchosen` (paper Tab. 6): how often the weak routing's expert is one top-2 did not choose.

Per (scored token, MoE layer) and weak expert slot, two readings (../shared/paper.md §3):
- `same_forward` (a): the rank-k expert of the *strong row's own router scores*; rank-1/2 are then
  always among top-2 (0 %) and rank-k≥3 never (100 %): the definition, measured. Defined for rank-k
  and top-k labels only;
- `own_stream` (b): the expert the *weak row* chose from its own hidden states (weak routing in every
  earlier layer, attention over its own earlier positions, i.e. exactly what the weak stream's KV cache
  holds in SCMoE decoding), compared with the strong row's top-2 at the same token and layer. This is
  the reading that can give the paper's 2.81 % / 46.21 % for rank-1/2.
The text is teacher-forced (GSM8K question + gold answer, as `kld`), not generated: along a fixed text,
the weak stream's routing in SCMoE decoding is a function of the tokens only, so replaying them gives
the decode-time routing without generating (tests/test_analysis.py checks it against a real SCMoE decode).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from scmoe_eval.analysis.base import ANALYSES, Analysis, Batch, base_record
from scmoe_eval.analysis.config import parse_weak


def in_set(experts: Tensor, chosen: Tensor, active: Tensor) -> Tensor:
    """experts (..., k) each in the active slots of chosen (..., K)? -> (..., k) bool."""
    return ((experts[..., :, None] == chosen[..., None, :]) & active[..., None, :]).any(-1)


def same_forward_experts(order: Tensor, label: str) -> Tensor | None:
    """The experts a rank-k / top-k label picks from the strong row's ranking (..., k); None otherwise."""
    policy = parse_weak(label)
    if policy.kind == "rank":
        return order[..., policy.k - 1 : policy.k]
    if policy.kind == "topk":
        return order[..., : policy.k]
    return None


@ANALYSES.register("unchosen")
class Unchosen(Analysis):
    name = "unchosen"
    records_routes = True

    def records(self, batch: Batch) -> list[dict[str, Any]]:
        records = []
        for i, item in enumerate(batch.items):
            sel = batch.enc.scored[i]
            own: dict[str, list[int]] = {label: [] for label in batch.weak}
            slots: dict[str, list[int]] = {label: [] for label in batch.weak}
            same: dict[str, list[int] | None] = {label: [] for label in batch.weak}
            same_slots: dict[str, list[int] | None] = {label: [] for label in batch.weak}
            for route in batch.routes:
                strong, strong_on = route.index[i, 0][sel], route.active[i, 0][sel]  # (n, K)
                for j, label in enumerate(batch.weak, start=1):
                    weak, weak_on = route.index[i, j][sel], route.active[i, j][sel]
                    own[label].append(int((weak_on & ~in_set(weak, strong, strong_on)).sum()))
                    slots[label].append(int(weak_on.sum()))
                    picked = same_forward_experts(route.order[i][sel], label)
                    if picked is None:
                        same[label] = same_slots[label] = None
                    elif same[label] is not None:
                        same[label].append(int((~in_set(picked, strong, strong_on)).sum()))
                        same_slots[label].append(picked.numel())
            records.append(base_record(item, own_stream=own, slots=slots, same_forward=same, same_slots=same_slots))
        return records

    def summarize(self, records: list[dict[str, Any]], weak: list[str]) -> dict[str, Any]:
        def share(key: str, slots_key: str, label: str) -> dict[str, Any] | None:
            if records[0][key][label] is None:
                return None
            hits = torch.tensor([r[key][label] for r in records], dtype=torch.float64).sum(0)
            total = torch.tensor([r[slots_key][label] for r in records], dtype=torch.float64).sum(0)
            return {"overall_pct": float(hits.sum() / total.sum() * 100),
                    "per_layer_pct": [float(x) for x in hits / total * 100]}

        return {"analysis": "unchosen", "n_items": len(records), "text": "teacher-forced GSM8K question + gold answer",
                "own_stream": {label: share("own_stream", "slots", label) for label in weak},
                "same_forward": {label: share("same_forward", "same_slots", label) for label in weak}}
