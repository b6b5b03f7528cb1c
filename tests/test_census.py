"""The family census can fail: the installed transformers' MoE families must match the catalog, the
generated docs must be current, and flagship configs exist. The equivalence core on every supported
family's tiny model lives in tests/test_census_core_{a,b}.py (two files, so `--dist loadfile` spreads them)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import transformers

from scmoe_eval.models.catalog import FAMILIES as CATALOG
from scmoe_eval.models.census import census, installed_families, render, router_classes
from scmoe_eval.models.families import FAMILIES, detect_family

REPO = Path(__file__).resolve().parents[1]
SUPPORTED = [f.module for f in CATALOG if f.supported]

pytestmark = pytest.mark.usefixtures("one_thread")


def test_installed_families_match_the_catalog():
    """A transformers upgrade that adds or drops an MoE family fails here until catalog.py declares it."""
    installed, declared = set(installed_families()), {f.module for f in CATALOG}
    assert not installed - declared, f"new MoE families, declare their router kind in catalog.py: {installed - declared}"
    assert not declared - installed, f"catalog families gone from transformers {transformers.__version__}: " \
                                     f"{declared - installed}"
    assert len(CATALOG) == len(declared), "a family is declared twice"


@pytest.mark.parametrize("family", CATALOG, ids=lambda f: f.module)
def test_declared_router_class_exists(family):
    """The router class a family hooks is still in its modeling file (a renamed router fails here)."""
    names = router_classes(family.module)
    assert any(n.endswith(family.router) for n in names), (family.module, family.router, names)


def test_every_supported_family_is_registered_and_detected():
    for module in SUPPORTED:
        adapter_cls = FAMILIES.get(module)
        for model_type in adapter_cls.model_types:
            config = transformers.AutoConfig.for_model(model_type)
            assert type(detect_family(config)) is adapter_cls, (module, model_type)


def test_docs_are_generated_from_the_census_and_readme_quotes_the_count():
    doc = (REPO / "docs" / "families.md").read_text()
    rows = census()
    assert doc == render(rows), "docs/families.md is stale: run python scripts/census_families.py"
    assert {r.status for r in rows} <= {"supported", "unsupported"}
    supported = sum(r.status == "supported" for r in rows)
    assert supported >= 40
    for r in rows:
        if r.status == "unsupported":
            assert len(r.reason) > 40, r.module  # every left-out family says why
    readme = (REPO / "README.md").read_text()
    assert re.search(rf"\*\*{supported} of {len(rows)}\*\* MoE families", readme), "README census line is stale"
    assert "docs/families.md" in readme


def test_flagship_checkpoints_have_model_configs():
    """conf/model/ holds a config for the flagship checkpoint of every supported family that names one."""
    import yaml

    paths = {}
    for conf in (REPO / "conf" / "model").glob("*.yaml"):
        data = yaml.safe_load(conf.read_text())
        paths[data.get("path")] = data
    flagships = [f for f in CATALOG if f.supported and f.flagship]
    assert len(flagships) >= 20
    for family in flagships:
        conf = paths.get(family.flagship)
        assert conf is not None, f"no conf/model/*.yaml with path: {family.flagship}"
        assert conf["dtype"] == "bfloat16"
        if family.flagship_params_b >= 20:
            assert conf["device_map"] == "auto", family.flagship
