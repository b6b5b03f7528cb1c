"""The lm-eval backend `scmoe` against references computed another way, on the tiny Mixtral, offline.

Tasks are local YAMLs over JSONL files (tests/lmeval_tasks, `dataset_path: json`); only our task
folder is indexed, so nothing of lm-eval's own task catalogue (or the Hub) is touched.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

pytest.importorskip("lm_eval", reason="the lm-eval extra is not installed (pip install -e '.[lmeval]')")

import torch  # noqa: E402
from lm_eval import simple_evaluate  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from scmoe_eval.config import ConfigError, ExperimentConfig, ModelConfig, RunConfig, StrategyConfig, TaskConfig  # noqa: E402
from scmoe_eval.decoding.sampler import GREEDY, SamplingParams  # noqa: E402
from scmoe_eval.lmeval import backend as backend_module  # noqa: E402
from scmoe_eval.lmeval.backend import SCMoELM  # noqa: E402
from scmoe_eval.lmeval.scoring import scmoe_mc_logprobs, scmoe_token_logprobs  # noqa: E402
from scmoe_eval.models.routing import RoutingPolicy  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TASKS = REPO / "tests" / "lmeval_tasks"
MC = [json.loads(line) for line in (TASKS / "mc.jsonl").read_text().splitlines()]
PPL = [json.loads(line)["text"] for line in (TASKS / "ppl.jsonl").read_text().splitlines()]
TINY = {"model": "tiny-mixtral"}
GEN_STOPS = ["\n\n", ".", " there", " re", "loion"]  # as scmoe_test_gen.yaml


@pytest.fixture(scope="module")
def repo_cwd():
    """The task YAMLs name their JSONL relative to the repository root, as lm-eval resolves data_files."""
    before = os.getcwd()
    os.chdir(REPO)
    yield REPO
    os.chdir(before)


@pytest.fixture(scope="module")
def task_manager(repo_cwd):
    return TaskManager(include_path=str(TASKS), include_defaults=False)


def lm(tiny_mixtral, **model_args) -> SCMoELM:
    return SCMoELM(loaded=tiny_mixtral, **{**TINY, **model_args})


def mc_requests() -> list[Instance]:
    """Every (context, continuation) of the MC task as lm-eval builds them, plus an empty context."""
    pairs = [(f"Question: {d['question']}\nAnswer:", f" {c}") for d in MC for c in d["choices"]]
    pairs += [("", "The quick brown fox"), ("Numbers: 1 2 3 ", "4 5 6")]  # BOS-only context; trailing space moved
    return [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]


def rolling_requests() -> list[Instance]:
    return [Instance("loglikelihood_rolling", {}, (text,), i) for i, text in enumerate(PPL)]


def max_abs_diff(a, b) -> float:
    xs = [x[0] if isinstance(x, tuple) else x for x in a]
    ys = [y[0] if isinstance(y, tuple) else y for y in b]
    assert len(xs) == len(ys)
    return max(abs(x - y) for x, y in zip(xs, ys))


# --------------------------------------------------------------------------- loglikelihood


def test_loglikelihood_stock_equals_lm_eval_hf_backend(tiny_mixtral, tiny_mixtral_path, one_thread):
    """Stock routing scores = lm-eval's own `hf` backend on the same checkpoint (a 24-token window makes
    the rolling requests span several windows and truncates the longest MC contexts)."""
    from lm_eval.models.huggingface import HFLM

    hf = HFLM(pretrained=str(tiny_mixtral_path), dtype="float32", device="cpu", batch_size=4, max_length=24)
    ours = lm(tiny_mixtral, strategy="greedy", max_length=24, **{"run.batch_size": 4})
    ll_hf, ll_ours = hf.loglikelihood(mc_requests()), ours.loglikelihood(mc_requests())
    roll_hf, roll_ours = hf.loglikelihood_rolling(rolling_requests()), ours.loglikelihood_rolling(rolling_requests())
    print(f"max |ours - hf|: loglikelihood {max_abs_diff(ll_ours, ll_hf):.3g}, rolling {max_abs_diff(roll_ours, roll_hf):.3g}")
    assert max_abs_diff(ll_ours, ll_hf) < 1e-4
    assert [g for _, g in ll_ours] == [g for _, g in ll_hf]
    assert max_abs_diff(roll_ours, roll_hf) < 1e-3  # sums over ~40 tokens


def test_rank1_equals_topk1_and_differs_from_stock(tiny_mixtral, one_thread):
    rank1 = lm(tiny_mixtral, strategy="rank", **{"strategy.routing.k": 1}).loglikelihood(mc_requests())
    topk1 = lm(tiny_mixtral, strategy="topk", **{"strategy.routing.k": 1}).loglikelihood(mc_requests())
    stock = lm(tiny_mixtral, strategy="greedy").loglikelihood(mc_requests())
    print(f"max |rank1 - topk1| {max_abs_diff(rank1, topk1):.3g}; max |topk1 - stock| {max_abs_diff(topk1, stock):.3g}")
    assert max_abs_diff(rank1, topk1) < 1e-5
    assert max_abs_diff(topk1, stock) > 1e-2  # the routing really changed the scores


@pytest.mark.parametrize("args", [
    {"strategy": "dynamic", "strategy.routing.p": 0.5},
    {"strategy": "scmoe", "loglikelihood": "scmoe"},
], ids=["topp", "scmoe-mc"])
def test_batched_equals_unbatched(tiny_mixtral, one_thread, args):
    one = lm(tiny_mixtral, **args, **{"run.batch_size": 1})
    many = lm(tiny_mixtral, **args, **{"run.batch_size": 5})
    diff = max_abs_diff(one.loglikelihood(mc_requests()), many.loglikelihood(mc_requests()))
    diff_roll = max_abs_diff(one.loglikelihood_rolling(rolling_requests()), many.loglikelihood_rolling(rolling_requests()))
    print(f"max |batch 1 - batch 5|: loglikelihood {diff:.3g}, rolling {diff_roll:.3g}")
    assert diff < 1e-4 and diff_roll < 1e-3


# --------------------------------------------------------------------------- SCMoE multiple choice


def test_scmoe_mc_beta0_equals_stock_and_beta_changes_it(tiny_mixtral, one_thread):
    stock = lm(tiny_mixtral, strategy="greedy").loglikelihood(mc_requests())
    beta0 = lm(tiny_mixtral, strategy="scmoe", loglikelihood="scmoe", **{"strategy.beta": 0.0}).loglikelihood(mc_requests())
    beta5 = lm(tiny_mixtral, strategy="scmoe", loglikelihood="scmoe").loglikelihood(mc_requests())
    print(f"max |scmoe-mc(beta=0) - stock| {max_abs_diff(beta0, stock):.3g}")
    assert max_abs_diff(beta0, stock) < 1e-4
    assert max_abs_diff(beta5, stock) > 1e-2


def test_scmoe_mc_hand_computation_on_fixed_logits():
    z_s = torch.tensor([[2.0, 1.0, -1.0, 0.5, -3.0]])
    z_w = torch.tensor([[1.0, 3.0, 0.0, 2.0, 1.0]])
    alpha, beta = 0.3, 0.5
    # plausible: z_s >= 2 + ln 0.3 = 0.796 -> tokens 0 and 1
    log_norm_s = math.log(sum(math.exp(z) for z in z_s[0].tolist()))
    log_mass = math.log(math.exp(2.0) + math.exp(1.0)) - log_norm_s  # log P_s({0, 1})
    c0, c1 = 1.5 * 2.0 - 0.5 * 1.0, 1.5 * 1.0 - 0.5 * 3.0  # (1+b) z_s - b z_w = 2.5, 0.0
    lse = math.log(math.exp(c0) + math.exp(c1))
    expected = [c0 - lse + log_mass, c1 - lse + log_mass, -1.0 - log_norm_s, 0.5 - log_norm_s, -3.0 - log_norm_s]
    got = scmoe_mc_logprobs(z_s, z_w, alpha, beta)[0].tolist()
    assert got == pytest.approx(expected, abs=1e-6)
    assert math.fsum(math.exp(x) for x in got) == pytest.approx(1.0, abs=1e-6)  # a proper distribution
    logp, greedy = scmoe_token_logprobs(z_s.expand(2, -1), z_w.expand(2, -1), torch.tensor([0, 3]), alpha, beta)
    assert logp.tolist() == pytest.approx([expected[0], expected[3]], abs=1e-6)
    assert greedy.tolist() == [True, False]


def test_scmoe_mc_backend_equals_two_separate_forwards(tiny_mixtral, one_thread):
    """The paired strong/weak rows of one padded forward = two plain unpadded forwards under each routing."""
    ours = lm(tiny_mixtral, strategy="scmoe", loglikelihood="scmoe", **{"strategy.weak.k": 3, "strategy.beta": 0.7})
    requests = mc_requests()[:9]
    got = ours.loglikelihood(requests)
    model, controller, tokenizer = tiny_mixtral.model, tiny_mixtral.controller, tiny_mixtral.tokenizer
    for (context, continuation), (logp, _) in zip((r.args for r in requests), got):
        ctx = tokenizer.encode(context)
        cont = tokenizer.encode(context + continuation)[len(ctx):]
        ids = torch.tensor([ctx + cont[:-1]])
        with torch.no_grad():
            with controller.use([RoutingPolicy.topk(2)]):
                z_s = model(input_ids=ids).logits[0, -len(cont):]
            with controller.use([RoutingPolicy.rank(3)]):
                z_w = model(input_ids=ids).logits[0, -len(cont):]
        ref = scmoe_mc_logprobs(z_s, z_w, 0.1, 0.7).gather(-1, torch.tensor(cont)[:, None]).sum()
        assert logp == pytest.approx(float(ref), abs=1e-4)


# --------------------------------------------------------------------------- generate_until


@pytest.mark.parametrize("strategy", ["greedy", "scmoe", "sample"])
def test_generate_until_token_identical_to_our_runner(tiny_mixtral, task_manager, tmp_path, one_thread, strategy):
    """The same prompts and stops through lm-eval (scmoe_test_gen.yaml) and through `scmoe-eval task=prompts`.
    `sample` turns sampling on through lm-eval's gen_kwargs (do_sample, temperature 0.7): the per-document
    seeds then give the same draws as our runner's per-item seeds."""
    from scmoe_eval.pipeline import run_experiment

    cfg = ExperimentConfig(
        model=ModelConfig(name="tiny-mixtral", path="fixture:mixtral", dtype="float32", device="cpu", device_map=None),
        strategy=StrategyConfig(name=strategy, temperature=0.7),
        task=TaskConfig(name="prompts", path=str(TASKS / "gen.jsonl"), stop=GEN_STOPS),
        run=RunConfig(batch_size=2, max_new_tokens=24, output_dir=str(tmp_path)),
    )
    ours = {json.loads(line)["index"]: json.loads(line) for line in
            (run_experiment(cfg) / "generations.jsonl").read_text().splitlines()}
    backend = lm(tiny_mixtral, strategy=strategy, **{"run.batch_size": 2})
    gen_kwargs = {"do_sample": True, "temperature": 0.7} if strategy == "sample" else None
    results = simple_evaluate(model=backend, tasks=["scmoe_test_gen"], task_manager=task_manager, log_samples=True,
                              gen_kwargs=gen_kwargs)
    texts = {s["doc_id"]: s["resps"][0][0] for s in results["samples"]["scmoe_test_gen"]}
    records = {r["doc_id"]: r for r in backend.generations}
    assert sorted(texts) == sorted(ours) == list(range(5))
    for i, rec in ours.items():
        assert records[i]["token_ids"] == rec["token_ids"], i
        assert texts[i] == rec["completion"] and records[i]["stop_reason"] == rec["stop_reason"]
    assert any(r["stop_reason"] == "stop" for r in ours.values())  # the stops were exercised
    if strategy != "greedy":  # SCMoE / sampling really changed something: greedy differs somewhere
        greedy = lm(tiny_mixtral, strategy="greedy", **{"run.batch_size": 2})
        plain = greedy.generate_until([Instance("generate_until", {}, (r["prompt"], {"until": GEN_STOPS,
                                       "max_gen_toks": 24}), 0) for r in map(json.loads, (TASKS / "gen.jsonl").open())])
        assert plain != [texts[i] for i in range(5)]


def test_generation_kwargs_mapping(tiny_mixtral):
    greedy, sample = lm(tiny_mixtral, strategy="greedy"), lm(tiny_mixtral, strategy="sample")
    assert greedy._gen_settings({"until": "\n", "max_gen_toks": 7}) == (("\n",), 7, GREEDY)
    assert greedy._gen_settings({"do_sample": True, "temperature": 0.3, "top_p": 0.9})[2] == SamplingParams(0.3, 0, 0.9)
    assert sample._gen_settings({})[2] == SamplingParams(temperature=0.7)  # the strategy's own sampling
    assert sample._gen_settings({"do_sample": False, "temperature": 0.0})[2] == GREEDY  # the task says greedy
    assert greedy._gen_settings({})[1] == 512  # run.max_new_tokens when the task sets no max_gen_toks
    with pytest.raises(ValueError, match="repetition_penalty"):
        greedy._gen_settings({"repetition_penalty": 1.1})


def test_generate_until_keeps_the_strategy_eos_rule(tiny_mixtral, monkeypatch):
    """SCMoE bans EOS as `scmoe-eval` does (the engine's ban is tested in test_engine); greedy allows it,
    and a request's sampling settings never drop the ban."""
    seen = []
    for strategy, banned in (("greedy", False), ("scmoe", True), ("scmoe-sample", True)):
        backend = lm(tiny_mixtral, strategy=strategy)
        real = backend.engine.generate
        monkeypatch.setattr(backend.engine, "generate", lambda *a, **k: seen.append(k) or real(*a, **k))
        gen_kwargs = {"until": ["."], "max_gen_toks": 3, "do_sample": True, "temperature": 0.5}
        backend.generate_until([Instance("generate_until", {}, ("Q: 7 * 8? A:", gen_kwargs), 0)])
        assert seen[-1]["ban_eos"] is banned and seen[-1]["sampling"] == SamplingParams(temperature=0.5)
        assert (seen[-1]["contrast"] is not None) is strategy.startswith("scmoe")


# --------------------------------------------------------------------------- errors before the model loads


@pytest.mark.parametrize("model_args, key", [
    ("model=tiny-mixtral,strategy=scmoe,strategy.weak.k=9", "strategy.weak.k"),
    ("model=tiny-mixtral,strategy.bogus=1", "strategy.bogus"),
    ("model=tiny-mixtral,strategy.beta=-1", "strategy.beta"),
    ("model=tiny-mixtral,strategy.alpha=lots", "strategy.alpha"),
    ("model=tiny-mixtral,loglikelihood=scmoe", "loglikelihood"),
    ("pretrained=/ckpt", "pretrained"),
    ("model=tiny-mixtral,model.path=/nowhere", "model.path"),
])
def test_bad_model_args_fail_before_the_model_loads(monkeypatch, task_manager, model_args, key):
    def no_load(*_a, **_k):
        raise AssertionError("the model was loaded before the config was checked")

    monkeypatch.setattr(backend_module, "load_model", no_load)
    with pytest.raises(ConfigError) as err:
        simple_evaluate(model="scmoe", model_args=model_args, tasks=["scmoe_test_mc"], task_manager=task_manager)
    assert err.value.key == key and str(err.value).startswith(f"{key}: ")


def test_cli_bad_key_exits_2_naming_it(capsys, monkeypatch):
    from scmoe_eval.lmeval import cli

    monkeypatch.setattr(backend_module, "load_model", lambda *_a, **_k: pytest.fail("model loaded"))
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--tasks", "scmoe_test_mc", "--no_default_tasks", "--include_path", str(TASKS),
                  "--model_args", "model=tiny-mixtral,strategy=rank,strategy.routing.k=0"])
    assert exit_.value.code == 2
    assert "scmoe-eval-lmeval: error: strategy.routing.k: must be >= 1" in capsys.readouterr().err


# --------------------------------------------------------------------------- run store and tables


def test_runs_land_in_the_store_beside_ours(tiny_mixtral, repo_cwd, tmp_path, monkeypatch, one_thread):
    """Greedy vs SCMoE over two lm-eval tasks is one call: one model load, one run dir per config x task,
    metrics.json in our schema, a comparison table with our own tasks; a second call resumes (loads nothing)."""
    from scmoe_eval import tables
    from scmoe_eval.lmeval import runner
    from scmoe_eval.store import RunStore

    loads = []
    monkeypatch.setattr("scmoe_eval.models.loading.load_model", lambda cfg: loads.append(cfg) or tiny_mixtral)
    configs = [{**TINY, "strategy": "greedy"}, {**TINY, "strategy": "scmoe", "loglikelihood": "scmoe"}]
    settings = runner.EvalSettings(limit=3)
    done = runner.run_lmeval(configs, ["scmoe_test_mc", "scmoe_test_gen"], output_dir=tmp_path, settings=settings,
                             include_path=str(TASKS), include_defaults=False)
    assert len(loads) == 1 and len(done) == 4 and len({d for d, _ in done}) == 4
    for run_dir, results in done:
        metrics = json.loads((run_dir / "metrics.json").read_text())
        task = json.loads((run_dir / "config.json").read_text())["lmeval"]["task"]
        block = results["results"][task]
        assert metrics["task"] == f"lmeval:{task}" and metrics["n_items"] == 3
        assert metrics["official"][metrics["primary"]] == block[metrics["lmeval"]["metric_key"]]
        assert len((run_dir / "lmeval_samples.jsonl").read_text().splitlines()) == 3
        assert json.loads((run_dir / "lmeval_results.json").read_text())["results"].keys() == {task}
        assert f"| {task} " in runner.results_table(results)
    gen_dir = next(d for d, _ in done if "scmoe_test_gen" in d.name)
    assert len((gen_dir / "lmeval_generations.jsonl").read_text().splitlines()) == 3
    ours = RunStore(tmp_path, {"task": {"name": "gsm8k"}, "model": {"name": "tiny-mixtral"},
                               "strategy": {"name": "greedy"}, "run": {"limit": 3}})
    ours.write_metrics({"task": "gsm8k", "n_items": 3, "n_samples": 1, "primary": "accuracy",
                        "official": {"accuracy": 1 / 3}, "strict": {"accuracy": 0.0}})
    table = tables.comparison_table(tables.load_runs(tmp_path), index=["model", "method"])
    assert list(table.columns) == ["gsm8k", "lmeval:scmoe_test_gen", "lmeval:scmoe_test_mc"]
    assert len(table) == 2 and table.loc[("tiny-mixtral", "greedy"), "gsm8k"] == pytest.approx(33.33)
    monkeypatch.setattr("scmoe_eval.models.loading.load_model", lambda cfg: pytest.fail("resumed run loaded a model"))
    again = runner.run_lmeval(configs, ["scmoe_test_mc", "scmoe_test_gen"], output_dir=tmp_path, settings=settings,
                              include_path=str(TASKS), include_defaults=False)
    assert [d for d, _ in again] == [d for d, _ in done] and all(r is None for _, r in again)


def test_rates_in_percent_and_perplexity_as_is(tmp_path):
    """metrics.json marks perplexities (no per-document scalar) so the tables do not print them x100."""
    from scmoe_eval import tables
    from scmoe_eval.lmeval import runner
    from scmoe_eval.store import RunStore

    results = {
        "results": {"ppl": {"word_perplexity,none": 12.5, "word_perplexity_stderr,none": "N/A"},
                    "mc": {"acc,none": 0.5, "acc_stderr,none": 0.25}},
        "samples": {"ppl": [{"filter": "none", "word_perplexity": [-3.2, 4]}],
                    "mc": [{"filter": "none", "acc": 1.0}, {"filter": "none", "acc": 0.0}]},
    }
    for task, percent, shown in (("ppl", False, 12.5), ("mc", True, 50.0)):
        metrics = runner.task_metrics(task, results)
        assert metrics["percent"] is percent
        store = RunStore(tmp_path, {"task": {"name": f"lmeval:{task}"}, "model": {"name": "m"},
                                    "strategy": {"name": "greedy"}, "run": {}})
        store.write_metrics(metrics)
    table = tables.comparison_table(tables.load_runs(tmp_path), index=["model", "method"])
    assert table.loc[("m", "greedy"), "lmeval:ppl"] == pytest.approx(12.5)
    assert table.loc[("m", "greedy"), "lmeval:mc"] == pytest.approx(50.0)
