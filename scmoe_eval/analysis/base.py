"""The analysis registry and what every analysis gets: one batched multi-routing forward per batch.

An analysis turns a `Batch` into one JSON record per item (appended to the run store, so a killed
run resumes at the item level) and the records of all items into a summary (summary.json).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor

from scmoe_eval.analysis.data import TextItem
from scmoe_eval.analysis.forward import Encoded, LayerRoute
from scmoe_eval.registry import Registry

AMATEUR = "amateur"  # the record key of the amateur model's column (Tab.5's Mistral-7B)


@dataclass
class Batch:
    items: list[TextItem]
    enc: Encoded
    weak: list[str]  # routing labels of rows 1..R-1 (row 0 is the strong routing)
    logits: Tensor  # (N, R, W, V) float32
    routes: list[LayerRoute]  # per MoE layer; empty unless the analysis records routes
    amateur: Tensor | None = None  # (N, W, V) the amateur model's logits


class Analysis:
    name: ClassVar[str]
    records_routes: ClassVar[bool] = False  # needs the router recorder

    def records(self, batch: Batch) -> list[dict[str, Any]]:
        raise NotImplementedError

    def summarize(self, records: list[dict[str, Any]], weak: list[str]) -> dict[str, Any]:
        raise NotImplementedError


ANALYSES: Registry[type[Analysis]] = Registry("analysis")


def base_record(item: TextItem, **fields: Any) -> dict[str, Any]:
    """The run store keys records by (index, sample); analyses have one record per item."""
    return {"id": item.id, "index": item.index, "sample": 0, **fields}
