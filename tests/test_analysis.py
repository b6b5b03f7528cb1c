"""The exploratory-study analyses (scmoe_eval/analysis): KL, token classes, the batched multi-routing
forward, the unchosen-share readings, and the published Tab.5/Tab.6 numbers."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from scmoe_eval import paper
from scmoe_eval.analysis.config import AnalysisConfig, AnalyzeConfig, parse_weak, validate_analysis
from scmoe_eval.analysis.data import HALLIE_INDEX, TextItem, format_item, load_texts
from scmoe_eval.analysis.forward import encode, kl_divergence, multi_routing_forward, separate_forwards
from scmoe_eval.analysis.kld import paper_scale, relative_change
from scmoe_eval.analysis.tokens import classify, stopwords
from scmoe_eval.analysis.unchosen import in_set, same_forward_experts
from scmoe_eval.config import ConfigError, TaskConfig
from scmoe_eval.models.routing import RoutingPolicy as P

ITEMS = [
    TextItem(0, "t/0", "Question: Tom has 3 apples and eats 1.\nAnswer:", " He has 3 - 1 = 2 left.\n#### 2"),
    TextItem(1, "t/1", "Question: What is 2 x 4?\nAnswer:", " 2 x 4 = 8\n#### 8"),
]
PAPER_WEAK = [P.topk(2), *(P.rank(k) for k in range(1, 9))]


# --- KL --------------------------------------------------------------------------------------------

def test_kl_matches_hand_computation() -> None:
    p = torch.log(torch.tensor([[0.5, 0.25, 0.25]])) + 3.0  # logits: any shift gives the same softmax
    q = torch.log(torch.tensor([[0.25, 0.25, 0.5]])) - 1.0
    # KL(p||q) = 0.5 ln(0.5/0.25) + 0.25 ln(1) + 0.25 ln(0.25/0.5) = 0.25 ln 2; KL(q||p) is the same here,
    # so check an asymmetric pair too
    assert kl_divergence(p, q).item() == pytest.approx(0.25 * math.log(2), abs=1e-6)
    a, b = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 0.0]])
    pa = torch.softmax(a, -1)[0].tolist()
    hand = pa[0] * math.log(pa[0] / 0.5) + pa[1] * math.log(pa[1] / 0.5)  # KL(p_a || uniform)
    assert kl_divergence(a, b).item() == pytest.approx(hand, abs=1e-6)
    assert kl_divergence(b, a).item() != pytest.approx(hand, abs=1e-3)  # direction matters
    assert kl_divergence(a, a).item() == 0.0


@pytest.mark.filterwarnings("ignore:reduction")
def test_kl_equals_torch_kl_div_and_paper_scale() -> None:
    """Our per-token KL / |V| is what torch's kl_div(reduction="mean") returns per token (the ×1e5 reading)."""
    torch.manual_seed(0)
    p, q = torch.randn(5, 50), torch.randn(5, 50)
    mean_elementwise = torch.nn.functional.kl_div(torch.log_softmax(q, -1), torch.log_softmax(p, -1),
                                                  reduction="mean", log_target=True)
    ours = kl_divergence(p, q).mean()
    assert paper_scale(ours.item(), 50) == pytest.approx(mean_elementwise.item() * 1e5, rel=1e-5)


def test_relative_change_reproduces_tab5_change_rows() -> None:
    """Tab.5's "change vs All" rows follow from its value rows, within the printed rounding, except one cell."""
    off = []
    for cls in ("expression", "stopword"):
        for col, value, all_value, printed in zip(paper.KLD_COLUMNS, paper.KLD_TAB5[cls], paper.KLD_TAB5["all"],
                                                  paper.KLD_TAB5_CHANGE[cls]):
            lo = relative_change(value - 0.005, all_value + 0.005)
            hi = relative_change(value + 0.005, all_value - 0.005)
            if not lo - 0.01 <= printed <= hi + 0.01:
                off.append((cls, col))
    # rank-1 stopword: 0.20 vs 0.17 allows at most +24.2 %, the paper prints +24.94 % (a paper inconsistency)
    assert off == [("stopword", "rank1")]


# --- token classes ---------------------------------------------------------------------------------

def test_token_classes_on_a_hand_labelled_example() -> None:
    text = "She had 1+2 = 3 hours and the dog's toy. Max's 0.2 x 50 boxes\n#### 72"
    tokens = ["She", " had", " 1", "+", "2", " =", " 3", " hours", " and", " the", " dog", "'s", " toy", ".",
              " Max", "'s", " 0", ".2", " x", " 50", " boxes", "\n", "####", " 72"]
    spans, pos = [], 0
    for tok in tokens:
        assert text[pos : pos + len(tok)] == tok
        spans.append((pos, pos + len(tok)))
        pos += len(tok)
    expr, stop = classify(text, spans)
    by_hand_expr = {" 1", "+", "2", " =", " 3", " 0", ".2", " x", " 50"}
    by_hand_stop = {"She", " had", " and", " the"}
    assert [t for t, e in zip(tokens, expr) if e] == [t for t in tokens if t in by_hand_expr]
    assert [t for t, s in zip(tokens, stop) if s] == [t for t in tokens if t in by_hand_stop]


def test_stopword_list_is_nltks_english_list() -> None:
    words = stopwords()
    assert len(words) == 179
    assert {"i", "me", "the", "she's", "wouldn't", "ourselves", "y"} <= words
    assert "hours" not in words and "dog" not in words


def test_format_item_strips_the_calculator_annotations() -> None:
    row = {"question": "Q?", "answer": "48/2 = <<48/2=24>>24 clips\n#### 24"}
    assert format_item(row, 3, "train", True).text == "Question: Q?\nAnswer: 48/2 = 24 clips\n#### 24"
    assert "<<48/2=24>>" in format_item(row, 3, "train", False).text


def test_encode_scores_every_target_token_and_the_answer_span(tiny_mixtral) -> None:
    enc = encode(tiny_mixtral.tokenizer, ITEMS)
    for i, item in enumerate(ITEMS):
        n = int(enc.mask[i].sum())
        assert int(enc.scored[i].sum()) == n - 1 == len(enc.labels[i])  # every token after BOS is a target
        assert "".join(enc.labels[i]) == item.text
    ans = encode(tiny_mixtral.tokenizer, ITEMS, span="answer")
    for i, item in enumerate(ITEMS):
        assert "".join(ans.labels[i]).strip() == item.answer.strip()


# --- data ------------------------------------------------------------------------------------------

def test_demo_data_holds_the_hallie_example() -> None:
    cfg = AnalysisConfig(name="heatmap", split="test", example_index=HALLIE_INDEX)
    (item,) = load_texts(TaskConfig(data_dir="demo"), cfg, None)
    assert item.index == HALLIE_INDEX and item.text.startswith("Question: Hallie had dance practice")
    train = load_texts(TaskConfig(data_dir="demo"), AnalysisConfig(), 3)
    assert [it.index for it in train] == [0, 1, 2]


def test_shared_train_split_loads_with_its_count(shared_data: Path) -> None:
    items = load_texts(TaskConfig(data_dir=str(shared_data / "gsm8k")), AnalysisConfig(), None)
    assert len(items) == 7473 and items[0].text.startswith("Question: Natalia sold clips")
    cfg = AnalysisConfig(name="heatmap", split="test", example_index=HALLIE_INDEX)
    (hallie,) = load_texts(TaskConfig(data_dir=str(shared_data / "gsm8k")), cfg, None)
    demo = load_texts(TaskConfig(data_dir="demo"), cfg, None)[0]
    assert hallie == demo  # the shipped demo item is the same text


def test_truncated_data_dir_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "train.jsonl").write_text('{"question": "q", "answer": "a"}\n')
    with pytest.raises(ConfigError, match="task.data_dir.*expected 7473"):
        load_texts(TaskConfig(data_dir=str(tmp_path)), AnalysisConfig(), None)


# --- config ----------------------------------------------------------------------------------------

def test_weak_labels_and_validation_errors_name_the_key() -> None:
    assert parse_weak("rank2").kind == "rank" and parse_weak("rank2").k == 2
    assert parse_weak("topp0.5").p == 0.5 and parse_weak("random1").kind == "random"
    with pytest.raises(ConfigError, match="analysis.weak"):
        parse_weak("rank")
    with pytest.raises(ConfigError, match=r"^analysis.weak: 'rank9': rank-9 needs at least 9 experts"):
        validate_analysis(AnalyzeConfig(analysis=AnalysisConfig(weak=["rank9"])), num_experts=8)
    with pytest.raises(ConfigError, match="analysis.name"):
        validate_analysis(AnalyzeConfig(analysis=AnalysisConfig(name="kl")))
    with pytest.raises(ConfigError, match="analysis.amateur"):
        validate_analysis(AnalyzeConfig(analysis=AnalysisConfig(name="unchosen", amateur="/x")))


# --- the batched multi-routing forward -------------------------------------------------------------

@pytest.mark.usefixtures("one_thread")
def test_batched_forward_equals_separate_runs(tiny_mixtral) -> None:
    """Strong + 8 weak routings as rows of one forward give each routing's own forward (2 items, padded)."""
    enc = encode(tiny_mixtral.tokenizer, ITEMS)
    batched, routes = multi_routing_forward(tiny_mixtral, enc, PAPER_WEAK, record=True)
    separate = separate_forwards(tiny_mixtral, enc, PAPER_WEAK)
    real = enc.mask.bool()[:, None, :, None].expand_as(batched)
    assert batched.shape == separate.shape == (2, 9, enc.ids.shape[1], 512)
    torch.testing.assert_close(batched[real], separate[real], rtol=0, atol=2e-6)  # GEMM shapes differ: ~3e-7
    one, _ = multi_routing_forward(tiny_mixtral, enc, PAPER_WEAK, by_width=False)  # all 9 rows in one call
    torch.testing.assert_close(one[real], separate[real], rtol=0, atol=2e-6)
    for j, policy in enumerate(PAPER_WEAK):  # and each row ran under its own routing, layer by layer
        _, alone = multi_routing_forward(tiny_mixtral, enc, [policy], record=True)
        for layer, (mixed, single) in enumerate(zip(routes, alone)):
            real, width = enc.mask.bool(), single.index.shape[-1]  # the mixed batch pads rank rows to K=2
            assert torch.equal(mixed.index[:, j, :, :width][real], single.index[:, 0][real]), (policy, layer)
            assert torch.equal(mixed.active[:, j, :, :width][real], single.active[:, 0][real])
            assert not mixed.active[:, j, :, width:][real].any()


@pytest.mark.usefixtures("one_thread")
def test_same_routing_in_two_rows_gives_kl_exactly_zero(tiny_mixtral) -> None:
    enc = encode(tiny_mixtral.tokenizer, ITEMS[:1])
    logits, _ = multi_routing_forward(tiny_mixtral, enc, [P.topk(2), P.topk(2), P.default()])
    assert torch.equal(kl_divergence(logits[0, 0], logits[0, 1]), torch.zeros(logits.shape[2]))
    assert torch.equal(kl_divergence(logits[0, 0], logits[0, 2]), torch.zeros(logits.shape[2]))


@pytest.fixture(scope="module")
def top1_mixtral(tmp_path_factory):
    """A tiny Mixtral whose stock routing is top-1: there rank-1 IS the strong routing."""
    from scmoe_eval.config import ModelConfig
    from scmoe_eval.models.fixtures import build_tiny_checkpoint
    from scmoe_eval.models.loading import load_model

    path = tmp_path_factory.mktemp("top1") / "ckpt"
    build_tiny_checkpoint("mixtral", path, num_experts_per_tok=1)
    return load_model(ModelConfig(name="top1", path=str(path), dtype="float32", device="cpu"))


@pytest.mark.usefixtures("one_thread")
def test_rank1_in_the_same_forward_gives_kl_and_unchosen_exactly_zero(top1_mixtral, tiny_mixtral) -> None:
    """Rank-1 against a top-1 strong row: KL exactly 0 at every token and never an unchosen expert.

    (Against top-2 rank-1 is a different network, so its KL is not 0: the paper prints 0.17.)"""
    from scmoe_eval.analysis.base import Batch
    from scmoe_eval.analysis.unchosen import Unchosen

    enc = encode(top1_mixtral.tokenizer, ITEMS)
    logits, routes = multi_routing_forward(top1_mixtral, enc, [P.topk(1), P.rank(1)], record=True)
    real = enc.mask.bool()
    assert torch.equal(kl_divergence(logits[:, 0], logits[:, 1])[real], torch.zeros(int(real.sum())))
    records = Unchosen().records(Batch(ITEMS, enc, ["rank1"], logits, routes))
    assert all(sum(r["own_stream"]["rank1"]) == 0 and sum(r["same_forward"]["rank1"]) == 0 for r in records)
    assert all(sum(r["slots"]["rank1"]) > 0 for r in records)
    # on the top-2 model: reading (a) is 0 % for rank-1/2 and 100 % for rank-3..8 exactly, by definition
    enc = encode(tiny_mixtral.tokenizer, ITEMS)
    labels = [f"rank{k}" for k in range(1, 9)]
    logits, routes = multi_routing_forward(tiny_mixtral, enc, PAPER_WEAK, record=True)
    summary = Unchosen().summarize(Unchosen().records(Batch(ITEMS, enc, labels, logits, routes)), labels)
    same = [summary["same_forward"][label]["overall_pct"] for label in labels]
    assert same == [0.0, 0.0] + [100.0] * 6
    own = [summary["own_stream"][label]["overall_pct"] for label in labels]
    assert own[0] < own[1] < 100.0 and own[2] > own[1]
    first = [summary["own_stream"][label]["per_layer_pct"][0] for label in labels]
    assert first == same  # layer 0 sees the same hidden states in every row: both readings agree there


def test_width_groups_put_the_strong_pass_alone_and_all_single_expert_weak_rows_together() -> None:
    from scmoe_eval.analysis.forward import width_groups

    paper_set = [P.topk(2), *(P.rank(k) for k in range(1, 9)), P.random(1)]
    assert width_groups(paper_set, 2, 8) == [[0], list(range(1, 10))]
    assert width_groups([P.default(), P.rank(2), P.topk(3), P.topk(2), P.topp(0.5)], 2, 8) == [[0, 3], [1], [2], [4]]


def test_in_set_and_same_forward_experts() -> None:
    order = torch.tensor([[5, 2, 7, 0]])
    chosen, active = torch.tensor([[5, 2]]), torch.tensor([[True, True]])
    assert same_forward_experts(order, "rank3").tolist() == [[7]]
    assert same_forward_experts(order, "topk2").tolist() == [[5, 2]]
    assert same_forward_experts(order, "random1") is None
    assert in_set(torch.tensor([[2, 7]]), chosen, active).tolist() == [[True, False]]
    assert in_set(torch.tensor([[2]]), chosen, torch.tensor([[True, False]])).tolist() == [[False]]  # weight-0 slot


def test_routing_overlap_counts_distinct_experts() -> None:
    from scmoe_eval.analysis.routing_stats import _distinct, _first_occurrence

    index = torch.tensor([[3, 3, 1], [4, 4, 4]])
    active = torch.tensor([[True, True, True], [True, False, False]])
    assert _first_occurrence(index, active).tolist() == [[True, False, True], [True, False, False]]
    assert _distinct(index, active).tolist() == [2, 1]


def test_published_tab5_tab6_as_data() -> None:
    assert paper.KLD_TAB5["all"][1] == 5.05 and paper.KLD_TAB5["stopword"][-1] == 0.28
    assert dict(zip(paper.KLD_COLUMNS, paper.KLD_TAB5["expression"]))["random1"] == 12.21
    assert paper.UNCHOSEN_TAB6 == (2.81, 46.21, 72.62, 80.54, 84.61, 87.79, 90.44, 90.96)


def test_tab5_tab6_match_paper_md(shared_data: Path) -> None:
    """Tab.5 and Tab.6 in paper.py, re-read from the paper notes' markdown tables by a separate parser."""
    md = (shared_data.parent / "paper.md").read_text(encoding="utf-8")
    rows = {}
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] in ("All", "Expression", "Stopword", "% unchosen"):
            rows[cells[0]] = [float(c) for c in cells[1:]]
        elif cells and cells[0] == "change vs All":
            rows.setdefault("changes", []).append([float(c.replace("−", "-").rstrip("%")) for c in cells[1:]])
    assert tuple(rows["All"]) == paper.KLD_TAB5["all"]
    assert tuple(rows["Expression"]) == paper.KLD_TAB5["expression"]
    assert tuple(rows["Stopword"]) == paper.KLD_TAB5["stopword"]
    assert [tuple(r) for r in rows["changes"]] == [paper.KLD_TAB5_CHANGE["expression"], paper.KLD_TAB5_CHANGE["stopword"]]
    assert tuple(rows["% unchosen"]) == paper.UNCHOSEN_TAB6


@pytest.mark.parametrize("option", ["kld", "unchosen", "heatmap", "routing"])
def test_every_analysis_option_composes_and_validates(option: str) -> None:
    from hydra import compose, initialize_config_dir

    from scmoe_eval.analysis.cli import to_analyze
    from scmoe_eval.cli import CONFIG_DIR

    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        cfg = to_analyze(compose("analyze", overrides=[f"analysis={option}", "model=tiny-mixtral"]))
    validate_analysis(cfg, num_experts=8)
    assert cfg.analysis.name == option and cfg.run.output_dir == "results/analysis"
    assert (cfg.analysis.strong.kind, cfg.analysis.strong.k) == ("topk", 2)
    if option == "heatmap":
        assert (cfg.analysis.split, cfg.analysis.example_index, cfg.analysis.span) == ("test", HALLIE_INDEX, "answer")
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        with pytest.raises(ConfigError, match="analysis.typo"):
            to_analyze(compose("analyze", overrides=[f"analysis={option}", "+analysis.typo=1"]))


@pytest.mark.usefixtures("one_thread")
def test_own_stream_replays_the_routing_of_scmoe_decoding(tiny_mixtral) -> None:
    """Reading (b) is teacher-forced: the [strong, weak] rows over prompt + SCMoE's generated tokens route
    every (token, layer) exactly as the strong and weak streams did while SCMoE decoded them (KV caches)."""
    from scmoe_eval.analysis.forward import Encoded, RouterRecorder
    from scmoe_eval.decoding.engine import Contrast, DecodeEngine

    policies = [P.topk(2), P.rank(2)]
    prompt = "Question: Tom has 3 apples and eats 1. How many are left?\nAnswer:"
    recorder = RouterRecorder(tiny_mixtral)
    with recorder.recording() as calls:
        (gen,) = DecodeEngine(tiny_mixtral).generate([prompt], max_new_tokens=16, contrast=Contrast(*policies), ban_eos=True)
    layers = len(recorder.routers)
    decoded = [torch.cat([calls[c][0].view(2, -1, calls[c][0].shape[-1]) for c in range(layer, len(calls), layers)], 1)
               for layer in range(layers)]  # per layer: (2 rows, positions, K) in feeding order
    ids = tiny_mixtral.tokenizer(prompt, add_special_tokens=True)["input_ids"] + gen.token_ids[:-1]  # the last is never fed
    n = len(ids)
    enc = Encoded(torch.tensor([ids]), torch.ones(1, n, dtype=torch.long), torch.ones(1, n, dtype=torch.bool), [[]], [[]], [[]])
    _, routes = multi_routing_forward(tiny_mixtral, enc, policies, record=True)
    assert decoded[0].shape[1] == n
    for layer, route in enumerate(routes):
        strong_replay, weak_replay = route.index[0, 0], route.index[0, 1, :, :1]
        assert torch.equal(decoded[layer][0], strong_replay), layer
        assert torch.equal(decoded[layer][1][:, :1], weak_replay), layer
