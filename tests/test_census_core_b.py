"""Equivalence core, half b of the supported families (tests/test_census.py explains the split).

Per family, on a tiny random model: default and topk(own k) bit-exact with stock transformers (also
recomputed from the logits, not passed through), rank(2) one expert at weight 1, rank(1) from the router
output equal to the recomputed one, a mixed-policy batch equal to separate runs, and batched SCMoE equal
to two-pass SCMoE over 32 greedy steps on 2 left-padded prompts through the engine (one prompt ending half
way), and a row leaving a greedy batch half way changing no tokens of the other.
"""

from __future__ import annotations

import pytest

from scmoe_eval.models.catalog import FAMILIES as CATALOG
from scmoe_eval.models.census import check_family

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("module", [f.module for f in CATALOG if f.supported][1::2])
def test_equivalence_core(module):
    assert check_family(module) == []
