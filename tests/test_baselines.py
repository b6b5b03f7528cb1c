"""CD, DoLa and contrastive search: the batched, cached, left-padded engine runs against independent
per-prompt references that recompute the whole sequence every step (no KV cache, no padding)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from scmoe_eval.config import ModelConfig, StrategyConfig
from scmoe_eval.decoding.baselines import (
    ContrastiveDecoding,
    ContrastiveSearch,
    DoLa,
    attach_amateur,
    degeneration_penalty,
    dola_candidates,
    js_divergence,
    load_amateur,
)
from scmoe_eval.decoding.engine import DecodeEngine
from scmoe_eval.decoding.strategies import build_strategy

PROMPTS = ["Question: There are 15 trees in the grove.", "Hi", "def add(a, b):\n    return"]
STEPS = 12


@pytest.fixture(scope="module")
def engine(tiny_mixtral) -> DecodeEngine:
    torch.manual_seed(0)
    return DecodeEngine(tiny_mixtral)


@pytest.fixture(scope="module")
def amateur_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second tiny Mixtral (other seed) sharing the fixture tokenizer."""
    from scmoe_eval.models.fixtures import build_tiny_checkpoint

    return build_tiny_checkpoint("mixtral", tmp_path_factory.mktemp("amateur"), seed=1)


@pytest.fixture(scope="module")
def amateur(amateur_path: Path) -> torch.nn.Module:
    """The amateur loaded as the pipeline does (no routing hooks)."""
    return load_amateur(str(amateur_path), ModelConfig(path="unused", dtype="float32", device="cpu", device_map=None))


def _prompt_ids(engine: DecodeEngine, prompt: str) -> list[int]:
    return engine.tokenizer(prompt, add_special_tokens=True)["input_ids"]


@torch.inference_mode()
def _full(model: torch.nn.Module, ids: list[int]):
    """One uncached, unpadded forward over the whole sequence."""
    return model(input_ids=torch.tensor([ids]), output_hidden_states=True)


@torch.inference_mode()
def _reference(engine: DecodeEngine, prompt: str, pick, *, allow_eos: bool, steps: int = STEPS) -> list[int]:
    """Greedy loop over `pick(ids, generated) -> token`, ending on EOS (when allowed) or after `steps`."""
    ids, out = _prompt_ids(engine, prompt), []
    for _ in range(steps):
        tok = pick(ids, out)
        out.append(tok)
        ids = ids + [tok]
        if allow_eos and tok in engine.eos_ids:
            break
    return out


def _cut_at_stop(engine: DecodeEngine, tokens: list[int], stop: str) -> list[int]:
    """The tokens the engine keeps: up to the first one whose decoded text contains `stop`."""
    for k in range(1, len(tokens) + 1):
        if stop in engine.tokenizer.decode(tokens[:k], skip_special_tokens=True):
            return tokens[:k]
    return tokens


def _check_batched(engine: DecodeEngine, baseline, refs: list[list[int]], ban_eos: bool) -> None:
    """Batched + left-padded engine == references, also when a stop string drops rows mid-way."""
    gens = engine.generate(PROMPTS, max_new_tokens=STEPS, baseline=baseline, ban_eos=ban_eos)
    assert [g.token_ids for g in gens] == refs
    text = engine.tokenizer.decode(refs[0][:5], skip_special_tokens=True)
    stop = text[-2:]
    assert stop
    gens = engine.generate(PROMPTS, stops=[stop], max_new_tokens=STEPS, baseline=baseline, ban_eos=ban_eos)
    expected = [_cut_at_stop(engine, r, stop) for r in refs]
    assert [g.token_ids for g in gens] == expected
    assert len(expected[0]) <= 5 < max(len(e) for e in expected)  # a row really left the batch early


# --- contrastive decoding --------------------------------------------------------------------


def test_cd_matches_an_uncached_reference_with_its_own_amateur(engine: DecodeEngine, amateur) -> None:
    alpha, beta = 0.1, 0.5

    def pick(ids: list[int], _out: list[int]) -> int:
        z_e = _full(engine.model, ids).logits[0, -1].double()
        z_a = _full(amateur, ids).logits[0, -1].double()
        plausible = z_e >= z_e.max() + math.log(alpha)
        return int(torch.where(plausible, (1 + beta) * z_e - beta * z_a, -math.inf).argmax())

    refs = [_reference(engine, p, pick, allow_eos=True) for p in PROMPTS]
    greedy = [g.token_ids for g in engine.generate(PROMPTS, max_new_tokens=STEPS)]
    assert refs != greedy  # the amateur really changes the choice
    _check_batched(engine, ContrastiveDecoding(alpha, beta, amateur), refs, ban_eos=False)


def test_cd_strategy_needs_its_amateur(engine: DecodeEngine, amateur) -> None:
    strategy = build_strategy(StrategyConfig(name="cd", amateur="somewhere", beta=0.3))
    assert strategy.ban_eos is False  # paper code: early_stop=True
    with pytest.raises(ValueError, match="strategy.amateur"):
        strategy.generate(engine, PROMPTS[:1], stops=[], max_new_tokens=2, seeds=[0])
    attached = attach_amateur(strategy, amateur)
    gens = attached.generate(engine, PROMPTS[:1], stops=[], max_new_tokens=2, seeds=[0])
    assert gens[0][0].num_tokens == 2


# --- DoLa ------------------------------------------------------------------------------------


def test_dola_candidate_layers_follow_the_paper() -> None:
    assert dola_candidates("low", 32) == [0, 2, 4, 6, 8, 10, 12, 14]  # paper code: 0,2,...,14 (+ mature 32)
    assert dola_candidates("high", 32) == [16, 18, 20, 22, 24, 26, 28, 30]
    assert dola_candidates("low", 28) == [0, 2, 4, 6, 8, 10, 12]  # DeepSeekMoE [0,14)
    assert dola_candidates("high", 28) == [14, 16, 18, 20, 22, 24, 26]
    assert dola_candidates([3, 1], 4) == [3, 1]
    with pytest.raises(ValueError, match="strategy.dola_layers"):
        dola_candidates([4], 4)
    with pytest.raises(ValueError, match="no even layer in the 'high' half"):
        dola_candidates("high", 2)


def test_dola_divergence_is_the_paper_codes_reversed_form() -> None:
    g = torch.Generator().manual_seed(0)
    p, q = torch.rand(3, 7, generator=g).softmax(-1).double(), torch.rand(3, 7, generator=g).softmax(-1).double()
    m = (p + q) / 2
    expected = 0.5 * (m * (m / p).log()).mean(-1) + 0.5 * (m * (m / q).log()).mean(-1)  # KL(M||p), KL(M||q)
    torch.testing.assert_close(js_divergence(p.log(), q.log()), expected)
    textbook = 0.5 * (p * (p / m).log()).sum(-1) + 0.5 * (q * (q / m).log()).sum(-1)
    assert not torch.allclose(js_divergence(p.log(), q.log()), textbook)
    zero = torch.tensor([[1.0, 0.0]]).log()  # an exact 0 in p: KL(M || p) is +inf, as F.kl_div gives, never nan
    assert js_divergence(zero, torch.tensor([[0.5, 0.5]]).log()).item() == math.inf


def _dola_pick(engine: DecodeEngine, layers: list[int], relative_top: float, penalty: float):
    model = engine.model

    def pick(ids: list[int], _out: list[int]) -> int:
        out = _full(model, ids)
        mature = out.logits[0, -1].double().softmax(-1)
        best, best_js = None, -1.0
        for layer in layers:  # premature logits: lm_head on the raw hidden state (no final norm)
            q = model.lm_head(out.hidden_states[layer][0, -1]).double().softmax(-1)
            m = (mature + q) / 2
            js = 0.5 * float((m * (m / mature).log()).nanmean() + (m * (m / q).log()).nanmean())  # paper code's form
            if js > best_js:
                best, best_js = q, js
        score = mature.log() - best.log()
        score[mature < relative_top * mature.max()] = -math.inf
        for tok in set(ids):  # prompt and generated tokens alike
            score[tok] = score[tok] / penalty if score[tok] > 0 else score[tok] * penalty
        score[engine.eos_ids] = -math.inf
        return int(score.argmax())

    return pick


@pytest.mark.parametrize("layers", [[0, 1, 2, 3], [2, 3]])
def test_dola_matches_an_uncached_reference(engine: DecodeEngine, layers: list[int]) -> None:
    refs = [_reference(engine, p, _dola_pick(engine, layers, 0.1, 1.2), allow_eos=False) for p in PROMPTS]
    greedy = [g.token_ids for g in engine.generate(PROMPTS, max_new_tokens=STEPS, ban_eos=True)]
    assert refs != greedy
    _check_batched(engine, DoLa(layers=tuple(layers)), refs, ban_eos=True)


@torch.inference_mode()
def test_dola_strategy_defaults_and_final_norm_quirk(engine: DecodeEngine) -> None:
    strategy = build_strategy(StrategyConfig(name="dola"))
    assert strategy.ban_eos is True and strategy.baseline == DoLa("low", 0.1, 1.2)
    # The mature layer's own hidden state is already normed, so lm_head(h_L) is the model's logits,
    # while lm_head(h_l) for l < L is not: the premature path must not apply the norm.
    out = _full(engine.model, _prompt_ids(engine, PROMPTS[0]))
    torch.testing.assert_close(engine.model.lm_head(out.hidden_states[-1][0, -1]), out.logits[0, -1])
    normed = engine.model.lm_head(engine.model.model.norm(out.hidden_states[2][0, -1]))
    raw = engine.model.lm_head(out.hidden_states[2][0, -1])
    assert not torch.allclose(normed, raw)


# --- contrastive search ----------------------------------------------------------------------


def _cs_pick(engine: DecodeEngine, alpha: float, k: int):
    model = engine.model

    def pick(ids: list[int], _out: list[int]) -> int:
        out = _full(model, ids)
        probs = out.logits[0, -1].double().softmax(-1)
        context = out.hidden_states[-1][0].double()  # (T, H): every earlier position, prompt included
        top_p, top_ids = probs.topk(k)
        scores = []
        for p, tok in zip(top_p.tolist(), top_ids.tolist()):
            h = _full(model, ids + [tok]).hidden_states[-1][0, -1].double()
            penalty = F.cosine_similarity(context, h[None], dim=-1).max().item()
            scores.append((1 - alpha) * p - alpha * penalty)
        return top_ids[max(range(k), key=scores.__getitem__)].item()

    return pick


def test_degeneration_penalty_ignores_padding() -> None:
    g = torch.Generator().manual_seed(0)
    context, candidates = torch.randn(2, 5, 8, generator=g), torch.randn(2, 3, 8, generator=g)
    context[0, 0] = 4 * candidates[0, 1]  # a padding position identical in direction to candidate 1
    mask = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
    expected = torch.tensor([
        [max(F.cosine_similarity(context[r, t], candidates[r, c], dim=0).item() for t in range(5) if mask[r, t])
         for c in range(3)]
        for r in range(2)
    ])
    got = degeneration_penalty(context, mask, candidates)
    torch.testing.assert_close(got, expected)
    assert got[0, 1] < 0.99


def test_contrastive_search_with_zero_alpha_is_greedy(engine: DecodeEngine) -> None:
    greedy = [g.token_ids for g in engine.generate(PROMPTS, max_new_tokens=STEPS)]
    cs = engine.generate(PROMPTS, max_new_tokens=STEPS, baseline=ContrastiveSearch(penalty_alpha=0.0, top_k=5))
    assert [g.token_ids for g in cs] == greedy


def test_contrastive_search_matches_an_uncached_reference(engine: DecodeEngine) -> None:
    refs = [_reference(engine, p, _cs_pick(engine, 0.6, 5), allow_eos=True) for p in PROMPTS]
    greedy = [g.token_ids for g in engine.generate(PROMPTS, max_new_tokens=STEPS)]
    assert refs != greedy
    _check_batched(engine, ContrastiveSearch(penalty_alpha=0.6, top_k=5), refs, ban_eos=False)


def test_contrastive_search_strategy_from_the_yaml() -> None:
    from hydra import compose, initialize_config_dir

    from scmoe_eval.cli import CONFIG_DIR
    from scmoe_eval.config import to_experiment

    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        cfg = to_experiment(compose("config", overrides=["strategy=contrastive-search", "strategy.penalty_alpha=0.4"]))
    strategy = build_strategy(cfg.strategy)
    assert strategy.baseline == ContrastiveSearch(penalty_alpha=0.4, top_k=5) and strategy.ban_eos is False


# --- the runner ------------------------------------------------------------------------------


def test_runner_generates_with_dola_and_cd_on_the_prompts_task(tmp_path: Path, amateur_path: Path) -> None:
    """`scmoe-eval strategy=dola|cd model=tiny-mixtral task=prompts ...`, composed as the CLI does."""
    from hydra import compose, initialize_config_dir

    from scmoe_eval.cli import CONFIG_DIR
    from scmoe_eval.config import to_experiment
    from scmoe_eval.pipeline import run_experiment

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": p}) + "\n" for i, p in enumerate(PROMPTS)))
    common = ["model=tiny-mixtral", "task=prompts", f"task.path={prompts}", "run.max_new_tokens=4",
              f"run.output_dir={tmp_path / 'runs'}"]
    for strategy in (["strategy=dola"], ["strategy=cd", f"strategy.amateur={amateur_path}"]):
        with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
            run = run_experiment(to_experiment(compose("config", overrides=[*strategy, *common])))
        records = [json.loads(line) for line in (run / "generations.jsonl").read_text().splitlines()]
        assert sorted(r["id"] for r in records) == ["p0", "p1", "p2"]
        assert all(r["num_tokens"] == 4 and r["stop_reason"] == "length" for r in records)


def _checked(tmp_path: Path, *overrides: str):
    from hydra import compose, initialize_config_dir

    from scmoe_eval.cli import CONFIG_DIR
    from scmoe_eval.config import to_experiment
    from scmoe_eval.preflight import check

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"id": "p0", "prompt": "Hi"}) + "\n")
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        cfg = compose("config", overrides=["model=tiny-mixtral", "task=prompts", f"task.path={prompts}", *overrides])
    return check(to_experiment(cfg))


def test_preflight_checks_the_amateur_before_any_weights(tmp_path: Path, amateur_path: Path, monkeypatch) -> None:
    from scmoe_eval.config import ConfigError

    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("weights were loaded during the checks")

    monkeypatch.setattr("transformers.AutoModelForCausalLM.from_pretrained", refuse)
    checked = _checked(tmp_path, "strategy=cd", f"strategy.amateur={amateur_path}")
    assert checked.cfg.strategy.amateur == str(amateur_path)
    with pytest.raises(ConfigError, match="no config.json") as missing:
        _checked(tmp_path, "strategy=cd", f"strategy.amateur={tmp_path / 'nowhere'}")
    other = tmp_path / "other-vocab"
    other.mkdir()
    config = json.loads((amateur_path / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "vocab_size": config["vocab_size"] + 1}))
    with pytest.raises(ConfigError, match="vocab_size") as mismatch:
        _checked(tmp_path, "strategy=cd", f"strategy.amateur={other}")
    with pytest.raises(ConfigError, match=r"must lie in \[0, 4\)") as too_deep:
        _checked(tmp_path, "strategy=dola", "strategy.dola_layers=[0,4]")
    assert {e.value.key for e in (missing, mismatch)} == {"strategy.amateur"}
    assert too_deep.value.key == "strategy.dola_layers"


# --- tables ----------------------------------------------------------------------------------


def _scored_run(root: Path, accuracy: float, **strategy) -> None:
    """A scored GSM8K run of the paper's Mixtral as the runner leaves it (config.json + metrics.json)."""
    from dataclasses import asdict

    from scmoe_eval.config import ExperimentConfig
    from scmoe_eval.store import RunStore

    cfg = asdict(ExperimentConfig())
    cfg["task"]["name"] = "gsm8k"
    cfg["strategy"].update(strategy)
    block = {"accuracy": accuracy, "n_correct": round(accuracy * 1319), "n_unparseable": 0, "ci95": [0.0, 1.0]}
    RunStore(root, cfg).write_metrics(
        {"task": "gsm8k", "n_items": 1319, "n_samples": 1, "primary": "accuracy", "official": block, "strict": block}
    )


def test_baseline_runs_fill_their_table1_rows(tmp_path: Path) -> None:
    from scmoe_eval.tables import (
        OURS_BEST, OURS_FIXED, PAPER, comparison_table, load_runs, method_label, paper_table1,
    )

    _scored_run(tmp_path, 0.63, name="cd", amateur="mistralai/Mistral-7B-v0.1", beta=0.3)
    _scored_run(tmp_path, 0.60, name="cd", amateur="mistralai/Mistral-7B-v0.1", beta=0.5)
    _scored_run(tmp_path, 0.50, name="dola", dola_layers="low")
    _scored_run(tmp_path, 0.37, name="dola", dola_layers="high")
    _scored_run(tmp_path, 0.90, name="dola", dola_layers=[0, 2])  # an explicit list matches no paper cell
    _scored_run(tmp_path, 0.61, name="contrastive-search", penalty_alpha=0.5, top_k=5)
    _scored_run(tmp_path, 0.59, name="contrastive-search", penalty_alpha=0.6, top_k=5)
    _scored_run(tmp_path, 0.99, name="contrastive-search", penalty_alpha=0.4, top_k=8)  # not the paper's cs_k
    runs = load_runs(tmp_path)
    assert set(runs["method"]) == {
        "cd-b0.3-a0.1", "cd-b0.5-a0.1", "dola-low", "dola-high", "dola-l0.2", "cs-a0.5-k5", "cs-a0.6-k5", "cs-a0.4-k8"
    }
    assert comparison_table(runs).loc["cd-b0.3-a0.1", "gsm8k"] == 63.0
    assert sorted(map(method_label, (row.to_dict() for _, row in runs.iterrows()))) == sorted(runs["method"])
    best = paper_table1(runs)
    assert best.loc[("Contrastive Decoding", OURS_BEST), "GSM8K"] == 63.0
    assert best.loc[("Contrastive Decoding", OURS_BEST), "GSM8K setting"] == "β=0.3"
    assert best.loc[("DoLa", OURS_BEST), "GSM8K"] == 50.0 and best.loc[("DoLa", OURS_BEST), "GSM8K setting"] == "[0,16)"
    assert best.loc[("Contrastive Search", OURS_BEST), "GSM8K"] == 61.0
    assert best.loc[("Contrastive Search", OURS_BEST), "GSM8K setting"] == "α=0.5"
    fixed = paper_table1(runs, selection="fixed")  # the paper code's defaults: β=0.5, low band, α=0.6
    assert fixed.loc[("Contrastive Decoding", OURS_FIXED), "GSM8K"] == 60.0
    assert fixed.loc[("Contrastive Decoding", PAPER), "GSM8K"] == 61.03
    assert fixed.loc[("DoLa", OURS_FIXED), "GSM8K"] == 50.0 and fixed.loc[("DoLa", PAPER), "GSM8K"] == 49.96
    assert fixed.loc[("Contrastive Search", OURS_FIXED), "GSM8K"] == 59.0
    assert fixed.loc[("Contrastive Search", PAPER), "GSM8K"] == 59.74
