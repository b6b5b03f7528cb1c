"""Offline fixtures: tokenizer round trips, checkpoint recipe, cache races, CLI."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor

import pytest
from transformers import AutoConfig, AutoTokenizer

from scmoe_eval.models import fixtures
from scmoe_eval.models.fixtures import (
    FIXTURE_FAMILIES,
    build_tiny_checkpoint,
    build_tokenizer,
    family_config_kwargs,
    fixture_path,
)

TEXTS = [
    "Question: Janet's ducks lay 16 eggs per day. How many?\nAnswer: 16 - 3 - 4 = 9. The answer is 9.\n\n",
    "def f(x: int) -> int:\n\treturn x ** 2  # square\n\n\nif __name__ == '__main__':\n    print(f(3))\n",
    "[BEGIN]\nimport re\n[DONE]\n\n",
    "naïve café, Ünïcödé — 漢字とかな, 한국어, Ελληνικά, עברית, emoji 🦆🚀👩‍💻",
    "  leading and trailing spaces  ",
    "\x00\x07 control bytes \r\n tabs\t\t and   runs   of spaces",
    "",
]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok")
    build_tokenizer(path)
    return path


def test_tokenizer_round_trips_any_text(tok_dir):
    tok = AutoTokenizer.from_pretrained(tok_dir)
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok.padding_side == "left" and len(tok) == fixtures.VOCAB_SIZE
    for text in TEXTS:
        ids = tok(text)["input_ids"]
        assert ids[0] == tok.bos_token_id
        assert tok.decode(ids, skip_special_tokens=True) == text
        assert tok.decode(ids[1:]) == text


def test_tokenizer_ids_stable_after_reload(tok_dir, tmp_path):
    first = AutoTokenizer.from_pretrained(tok_dir)
    rebuilt = build_tokenizer(tmp_path)  # training is deterministic
    for text in TEXTS:
        assert first(text)["input_ids"] == rebuilt(text)["input_ids"]
    batch = first(["a", "a much longer line"], padding=True)
    assert batch["input_ids"][0][0] == first.pad_token_id and batch["attention_mask"][0][0] == 0
    assert len(first("The answer is 42.")["input_ids"]) < len("The answer is 42.")  # merges were learned


def test_checkpoint_recipe(tmp_path):
    path = build_tiny_checkpoint("qwen2_moe", tmp_path / "q", num_hidden_layers=3)
    config = AutoConfig.from_pretrained(path)
    assert config.model_type == "qwen2_moe" and config.num_hidden_layers == 3
    assert config.vocab_size == len(AutoTokenizer.from_pretrained(path))
    assert config.hidden_size == 64 and config.num_experts == 8 and config.num_experts_per_tok == 2
    for family in FIXTURE_FAMILIES:
        assert family_config_kwargs(family, "mid")["hidden_size"] >= 512
    with pytest.raises(ValueError, match="mixtral"):
        family_config_kwargs("llama")
    with pytest.raises(ValueError, match="tiny"):
        fixture_path("mixtral", "huge")


def test_fixture_cache_survives_a_race(tmp_path, monkeypatch):
    """Several workers asking at once all get the same complete directory and leave no temp dirs."""
    monkeypatch.setenv("SCMOE_FIXTURE_DIR", str(tmp_path))
    all_built = threading.Barrier(4, timeout=60)
    build = fixtures.build_tiny_checkpoint

    def build_then_wait(*args, **kwargs):
        out = build(*args, **kwargs)
        all_built.wait()  # every worker finishes building before anyone renames: three must lose
        return out

    monkeypatch.setattr(fixtures, "build_tiny_checkpoint", build_then_wait)
    with ThreadPoolExecutor(4) as pool:
        paths = list(pool.map(lambda _: fixture_path("olmoe"), range(4)))
    assert len(set(paths)) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [paths[0].name]
    assert {"config.json", "tokenizer.json", "model.safetensors"} <= {p.name for p in paths[0].iterdir()}
    assert fixture_path("olmoe") == paths[0]  # cached


def test_cli_builds_a_checkpoint(tmp_path, capsys):
    fixtures.main(["--family", "deepseek_v3", "--out", str(tmp_path / "ds")])
    assert capsys.readouterr().out.strip() == str(tmp_path / "ds")
    config = json.loads((tmp_path / "ds" / "config.json").read_text())
    assert config["model_type"] == "deepseek_v3" and config["n_routed_experts"] == 8


def test_fixture_cache_is_a_user_cache_never_the_install_dir(monkeypatch, tmp_path):
    """After `pip install .` the package dir may be read-only site-packages: fixtures go to a user cache."""
    import platformdirs

    monkeypatch.delenv("SCMOE_FIXTURE_DIR", raising=False)
    monkeypatch.delenv("SCMOE_CACHE", raising=False)
    default = fixtures._cache_dir()
    package = Path(fixtures.__file__).resolve().parents[1]
    assert default == Path(platformdirs.user_cache_dir("scmoe-eval")) / "fixtures"
    assert package not in default.resolve().parents and package.parent not in default.resolve().parents
    monkeypatch.setenv("SCMOE_CACHE", str(tmp_path))
    assert fixtures._cache_dir() == tmp_path / "fixtures"
