"""Decode-speed benchmark: HF generate greedy vs our greedy vs SCMoE (batched and two-pass).

Not a test: it writes JSON (median per-token latency, tokens/s, peak GPU memory) for the docs.
Every run forces exactly `--new-tokens` tokens (EOS banned, no stop strings) after a `--prompt-len`
token prompt; methods are interleaved within each round and the median over rounds is reported.
Each round also times every method with one new token (prefill + first token), so the JSON has both
the end-to-end `ms_per_token` (prefill amortised over the run) and `decode_ms_per_step` = (full run -
first-token run) / (new tokens - 1): the decode step alone, which is what the traffic floor describes
(`decode_step_*` ratios). SCMoE prefills two rows per prompt, so the end-to-end ratio falls toward the
per-step one as more tokens are generated (issue 9 timed 64).

  python scripts/bench_decode.py                      # CPU: random Mixtral, hidden 64 / 512 / 1024
  python scripts/bench_decode.py --device cuda --out results/bench/h200.json
                                                      # Mixtral-8x7B shape, random bf16, built on the GPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (AutoModelForCausalLM, AutoTokenizer, DynamicCache, MixtralConfig, MixtralForCausalLM,
                          PreTrainedTokenizerFast)
from transformers.models.mixtral.modeling_mixtral import MixtralRotaryEmbedding

from scmoe_eval.decoding import streams
from scmoe_eval.decoding.engine import Contrast, DecodeEngine
from scmoe_eval.decoding.traffic import TrafficCounter, floor_ratio
from scmoe_eval.models.loading import LoadedModel
from scmoe_eval.models.routing import RoutingController, RoutingPolicy

METHODS = ("hf_generate", "greedy", "scmoe_batched", "scmoe_two_pass", "greedy_grouped_mm", "scmoe_grouped_mm",
           "greedy_compiled", "scmoe_compiled", "greedy_stock_cache", "scmoe_stock_cache")
DEFAULT_METHODS = METHODS[:4]  # *_grouped_mm: the engine's CPU decode path before routed_rows (for before/after)
# *_compiled: DecodeEngine(compile=True), static cache + torch.compile (CUDA graphs on a GPU); the warm-up run compiles
# *_stock_cache: the eager path over transformers' DynamicCache (torch.cat per step), the Stream cache before RoomyLayer
# The paper's code on the mid32k shape (issue 9, CPU fp32, 1 thread, batch 1): greedy 62.8, SCMoE 112.0 ms/token,
# against HF generate 60.2 and our greedy 60.3 in the same run.
PAPER_CODE_MID = dict(greedy=62.8, scmoe=112.0, hf_generate=60.2, our_greedy=60.3)
MIXTRAL_8X7B = dict(
    vocab_size=32000,
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    num_local_experts=8,
    num_experts_per_tok=2,
    max_position_embeddings=32768,
    rope_theta=1e6,
    rms_norm_eps=1e-5,
    bos_token_id=1,
    eos_token_id=2,
    tie_word_embeddings=False,
)


@dataclass
class Subject:
    name: str
    loaded: LoadedModel
    engine: DecodeEngine


def _wrap(name: str, model: torch.nn.Module, tokenizer, device: str) -> Subject:
    controller = RoutingController(model)
    loaded = LoadedModel(model=model, tokenizer=tokenizer, adapter=controller.adapter, controller=controller, device=device)
    return Subject(name, loaded, DecodeEngine(loaded))


# CPU-only size between the fixtures and a real model: where the CPU batched/two-pass order flips.
LARGE_CPU = dict(
    hidden_size=1024,
    intermediate_size=2816,
    num_hidden_layers=4,
    num_attention_heads=16,
    num_key_value_heads=8,
    num_local_experts=8,
    num_experts_per_tok=2,
    max_position_embeddings=8192,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
    tie_word_embeddings=False,
)


# The issue-9 "mid" shape (the paper's code was timed on it): hidden 512, 8 layers, vocab 32000.
MID32K = dict(LARGE_CPU, vocab_size=32000, hidden_size=512, intermediate_size=1792, num_hidden_layers=8,
              num_attention_heads=8, num_key_value_heads=2)


def cpu_subjects(sizes: list[str]) -> list[Subject]:
    """Random float32 Mixtrals: the cached tiny / mid (hidden 512) fixtures, `large` (hidden 1024) and
    `mid32k` (the issue-9 shape, word tokenizer over 32000 ids) in memory."""
    from scmoe_eval.models.fixtures import fixture_path

    out = []
    for size in sizes:
        if size == "mid32k":
            config = MixtralConfig(**MID32K)
            out.append(_wrap(size, random_mixtral(config, "cpu", torch.float32), word_tokenizer(config.vocab_size), "cpu"))
            continue
        path = fixture_path("mixtral", size="tiny" if size == "large" else size)
        tokenizer = AutoTokenizer.from_pretrained(path)
        if size == "large":
            model = random_mixtral(MixtralConfig(vocab_size=len(tokenizer), **LARGE_CPU), "cpu", torch.float32)
        else:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        out.append(_wrap(size, model, tokenizer, "cpu"))
    return out


def word_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """A whitespace word-level tokenizer over ids 0..V-1 ("<pad>", "<s>", "</s>", "w3", ...): no files needed."""
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, vocab_size)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def random_mixtral(config: MixtralConfig, device: str, dtype: torch.dtype) -> MixtralForCausalLM:
    """Allocate straight on `device` (meta -> to_empty, no CPU copy, no init pass) and fill with N(0, 0.02)."""
    with torch.device("meta"):
        model = MixtralForCausalLM(config)
    model = model.to(dtype).to_empty(device=device).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            else:
                param.normal_(0.0, 0.02)
    model.model.rotary_emb = MixtralRotaryEmbedding(config).to(device)  # fp32 buffers to_empty left garbage in
    return model


def cuda_subject() -> Subject:
    """Mixtral-8x7B-shaped model with random bf16 weights built directly on the GPU."""
    config = MixtralConfig(**MIXTRAL_8X7B)
    model = random_mixtral(config, "cuda", torch.bfloat16)
    return _wrap("mixtral-8x7b-shape", model, word_tokenizer(config.vocab_size), "cuda")


def prompts(batch: int, length: int, vocab: int) -> list[str]:
    """`length`-token prompts (BOS + length-1 words) of random word ids, fixed seed."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (batch, length - 1), generator=gen)
    return [" ".join(f"w{int(i)}" for i in row) for row in ids]


def runner(subject: Subject, method: str, texts: list[str], new_tokens: int) -> Callable[[], list[list[int]]]:
    """A closure that runs one method and returns the generated token ids per prompt."""
    engine, model = subject.engine, subject.loaded.model
    if method.endswith("_grouped_mm"):
        engine, method = DecodeEngine(subject.loaded, decode_experts="grouped_mm"), method.replace("_grouped_mm", "")
        method = "scmoe_batched" if method == "scmoe" else method
    elif method.endswith("_compiled"):
        engine = DecodeEngine(subject.loaded, decode_experts=subject.engine.decode_experts, compile=True)
        method = "scmoe_batched" if method == "scmoe_compiled" else "greedy"
    contrast = Contrast(RoutingPolicy.topk(2), RoutingPolicy.rank(2), alpha=0.1, beta=0.5)
    if method.endswith("_stock_cache"):
        inner = runner(subject, method.replace("_stock_cache", "").replace("scmoe", "scmoe_batched"), texts, new_tokens)
        return lambda: _with_stock_cache(inner)
    if method == "hf_generate":
        ids, mask = engine.encode(texts)
        return lambda: model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=False,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            pad_token_id=0,
        )[:, ids.shape[1] :].tolist()
    kwargs = dict(max_new_tokens=new_tokens, ban_eos=True)
    if method == "greedy":
        return lambda: [g.token_ids for g in engine.generate(texts, **kwargs)]
    two_pass = method == "scmoe_two_pass"
    return lambda: [g.token_ids for g in engine.generate(texts, contrast=contrast, two_pass=two_pass, **kwargs)]


def _with_stock_cache(fn: Callable[[], list[list[int]]]) -> list[list[int]]:
    """Run `fn` with Streams over transformers' stock DynamicCache (a benchmark-only swap of the factory)."""
    saved = streams.roomy_cache
    streams.roomy_cache = lambda config: DynamicCache(config=config)
    try:
        return fn()
    finally:
        streams.roomy_cache = saved


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], list[list[int]]], device: str) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def same_rows(a: list[list[int]], b: list[list[int]]) -> float:
    """Fraction of prompts whose generated ids agree exactly (a sanity check, not a timing)."""
    return sum(x == y for x, y in zip(a, b)) / len(a)


def bench_subject(subject: Subject, batches: list[int], args: argparse.Namespace) -> list[dict]:
    device = torch.device(subject.loaded.device).type
    vocab = subject.loaded.model.config.vocab_size
    rows = []
    for batch in batches:
        texts = prompts(batch, args.prompt_len, vocab)
        fns = {m: runner(subject, m, texts, args.new_tokens) for m in args.methods}
        firsts = {m: runner(subject, m, texts, 1) for m in args.methods}  # prefill + first token only
        warm = {m: fn() for m, fn in fns.items()}  # warm-up: allocator, kernels, lazy inits
        pairs = dict(greedy_vs_hf=("greedy", "hf_generate"), batched_vs_two_pass=("scmoe_batched", "scmoe_two_pass"),
                     greedy_compiled_vs_eager=("greedy_compiled", "greedy"), scmoe_compiled_vs_eager=("scmoe_compiled", "scmoe_batched"),
                     greedy_vs_stock_cache=("greedy", "greedy_stock_cache"), scmoe_vs_stock_cache=("scmoe_batched", "scmoe_stock_cache"))
        agree = {name: same_rows(warm[a], warm[b]) for name, (a, b) in pairs.items() if a in warm and b in warm}
        times: dict[str, list[float]] = {m: [] for m in args.methods}
        first: dict[str, list[float]] = {m: [] for m in args.methods}
        for _ in range(args.rounds):  # interleaved, so drift from neighbours hits every method alike
            for m, fn in fns.items():
                times[m].append(timed(fn, device))
                first[m].append(timed(firsts[m], device))
        peaks = measure_peaks(fns, device) if device == "cuda" else {}
        traffic = count_traffic(subject, texts, args.new_tokens) if args.traffic else {}
        for m in args.methods:
            sec, sec1 = statistics.median(times[m]), statistics.median(first[m])
            row = dict(
                model=subject.name,
                batch=batch,
                method=m,
                ms_per_token=1000 * sec / args.new_tokens,
                prefill_ms=1000 * sec1,  # prompt forward + first token
                decode_ms_per_step=1000 * (sec - sec1) / max(args.new_tokens - 1, 1),  # what the traffic floor describes
                tokens_per_s=batch * args.new_tokens / sec,
                seconds_runs=[round(t, 5) for t in times[m]],
                same_tokens=agree,
            )
            if m in peaks:
                row["peak_mem_gib"] = peaks[m]
            counted = {"greedy_compiled": "greedy", "scmoe_compiled": "scmoe_batched"}.get(m, m)  # same routing
            if counted in traffic:
                row["traffic"] = traffic[counted]
            rows.append(row)
            print(
                f"{subject.name:>18} B={batch:<2} {m:<15} {row['ms_per_token']:9.2f} ms/token "
                f"{row['tokens_per_s']:9.1f} tok/s",
                flush=True,
            )
    return rows


def count_traffic(subject: Subject, texts: list[str], new_tokens: int) -> dict[str, dict]:
    """One counted run each of greedy and batched SCMoE: experts touched and bytes read per decode step."""
    out = {}
    for method, roles in (("greedy", ("strong",)), ("scmoe_batched", ("strong", "weak"))):
        with TrafficCounter(subject.loaded.model, roles) as counter:
            runner(subject, method, texts, new_tokens)()
        out[method] = counter.summary()
    return out


def measure_peaks(fns: dict[str, Callable[[], list[list[int]]]], device: str) -> dict[str, float]:
    """Peak allocated GPU memory of one run of each method (GiB, weights included)."""
    peaks = {}
    for m, fn in fns.items():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        timed(fn, device)
        peaks[m] = torch.cuda.max_memory_allocated() / 2**30
    return peaks


def kv_cache_gib(config, batch: int, tokens: int, dtype_bytes: int) -> float:
    """Size of one KV cache (keys + values, all layers) for `batch` rows of `tokens` positions."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * dtype_bytes
    return batch * tokens * per_token / 2**30


def summarize(rows: list[dict], subjects: list[Subject], args: argparse.Namespace) -> dict:
    """Ratios the targets are stated in, per model and batch."""
    by = {(r["model"], r["batch"], r["method"]): r for r in rows}
    out = {}
    for s in subjects:
        for b in args.batch:
            ms = {m: by[(s.name, b, m)]["ms_per_token"] for m in args.methods}
            step = {m: by[(s.name, b, m)]["decode_ms_per_step"] for m in args.methods}
            ratios = dict(greedy_over_hf=("greedy", "hf_generate"), scmoe_batched_over_greedy=("scmoe_batched", "greedy"),
                          scmoe_two_pass_over_greedy=("scmoe_two_pass", "greedy"),
                          batched_over_two_pass=("scmoe_batched", "scmoe_two_pass"))
            ratios.update(scmoe_over_before=("scmoe_batched", "scmoe_grouped_mm"), greedy_over_before=("greedy", "greedy_grouped_mm"),
                          before_scmoe_over_greedy=("scmoe_grouped_mm", "greedy_grouped_mm"))
            ratios.update(greedy_compiled_over_eager=("greedy_compiled", "greedy"),
                          scmoe_compiled_over_eager=("scmoe_compiled", "scmoe_batched"),
                          scmoe_compiled_over_greedy_compiled=("scmoe_compiled", "greedy_compiled"))
            ratios.update(greedy_over_stock_cache=("greedy", "greedy_stock_cache"), scmoe_over_stock_cache=("scmoe_batched", "scmoe_stock_cache"),
                          stock_cache_scmoe_over_greedy=("scmoe_stock_cache", "greedy_stock_cache"))
            entry = {name: ms[a] / ms[c] for name, (a, c) in ratios.items() if a in ms and c in ms}
            entry |= {f"decode_step_{name}": step[a] / step[c] for name, (a, c) in ratios.items() if a in ms and c in ms}
            counts = [by[(s.name, b, m)].get("traffic") for m in ms]  # eager and compiled rows carry the same counts
            greedy = next((t for m, t in zip(ms, counts) if t and m.startswith("greedy")), None)
            scmoe = next((t for m, t in zip(ms, counts) if t and m.startswith("scmoe")), None)
            if greedy and scmoe:
                entry["floor_ratio"] = floor_ratio(scmoe, greedy)
                entry["weak_extra_experts_per_layer"] = scmoe["weak_extra_per_layer"] / b
                if "scmoe_batched_over_greedy" in entry:
                    entry["measured_over_floor"] = entry["scmoe_batched_over_greedy"] / entry["floor_ratio"]
                    entry["decode_step_measured_over_floor"] = entry["decode_step_scmoe_batched_over_greedy"] / entry["floor_ratio"]
                if "scmoe_compiled_over_greedy_compiled" in entry:
                    entry["compiled_measured_over_floor"] = entry["scmoe_compiled_over_greedy_compiled"] / entry["floor_ratio"]
                    entry["decode_step_compiled_measured_over_floor"] = (
                        entry["decode_step_scmoe_compiled_over_greedy_compiled"] / entry["floor_ratio"])
            if s.name == "mid32k" and "scmoe_batched" in ms:  # the paper's code, translated through our greedy and HF's
                p = PAPER_CODE_MID
                old = ms.get("greedy_grouped_mm", ms.get("greedy"))  # the greedy path the paper's code was timed against
                if old is not None:
                    entry["scmoe_over_paper_code_via_greedy"] = ms["scmoe_batched"] / (old * p["greedy"] / p["our_greedy"] * p["scmoe"] / p["greedy"])
                if "hf_generate" in ms:
                    entry["scmoe_over_paper_code_via_hf"] = ms["scmoe_batched"] / (ms["hf_generate"] * p["scmoe"] / p["hf_generate"])
            peak = {m: by[(s.name, b, m)].get("peak_mem_gib") for m in args.methods}
            if peak.get("greedy") is not None:
                dtype_bytes = next(s.loaded.model.parameters()).element_size()
                for m in ("scmoe_batched", "scmoe_two_pass"):
                    if m in peak:
                        entry[f"{m}_extra_mem_gib"] = peak[m] - peak["greedy"]
                entry["one_kv_cache_gib"] = kv_cache_gib(
                    s.loaded.model.config, b, args.prompt_len + args.new_tokens, dtype_bytes
                )
            out[f"{s.name}/B{b}"] = entry
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default results/bench/<device>.json)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=None, help="default: 32 on cpu, 64 on cuda")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--decode-experts", default=None, help="experts implementation of our decode steps (default: engine's choice)"
    )
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(DEFAULT_METHODS))
    parser.add_argument("--cpu-sizes", nargs="+", choices=["tiny", "mid", "large", "mid32k"], default=["tiny", "mid", "large"])
    parser.add_argument("--traffic", action="store_true", help="count experts touched and bytes read: floor ratio, measured/floor")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (the dev machine is shared)")
    args = parser.parse_args()
    args.new_tokens = args.new_tokens or (32 if args.device == "cpu" else 64)
    out = args.out or Path("results/bench") / f"{args.device}.json"

    torch.manual_seed(0)
    load_start = os.getloadavg()
    started = time.perf_counter()
    if args.device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device visible")
        subjects = [cuda_subject()]
        print(f"built random Mixtral-8x7B shape on {torch.cuda.get_device_name()} in {time.perf_counter() - started:.0f}s")
    else:
        torch.set_num_threads(args.threads)
        subjects = cpu_subjects(args.cpu_sizes)

    for s in subjects:
        s.engine.decode_experts = args.decode_experts
    rows = []
    with torch.inference_mode():
        for s in subjects:
            rows += bench_subject(s, args.batch, args)
    summary = summarize(rows, subjects, args)
    report = dict(
        device=torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or platform.machine(),
        threads=torch.get_num_threads(),
        torch=torch.__version__,
        transformers=transformers.__version__,
        settings=dict(prompt_len=args.prompt_len, new_tokens=args.new_tokens, rounds=args.rounds, batches=args.batch),
        loadavg_start=load_start,
        loadavg_end=os.getloadavg(),
        experts_implementation={s.name: s.loaded.model.config._experts_implementation for s in subjects},
        decode_experts=args.decode_experts or "engine default",
        results=rows,
        summary=summary,
        wall_s=time.perf_counter() - started,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    print(f"wrote {out} ({report['wall_s']:.0f}s)")


if __name__ == "__main__":
    main()
