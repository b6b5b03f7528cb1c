"""Where a decode step's time goes, greedy vs batched SCMoE: wall time per module kind per step.

Forward pre/post hooks time the LM head, the attention blocks, the experts modules, the routers and the
whole model forward of every decode step (prefill timed apart); "rest" is the model forward minus those
(norms, embeddings, residuals). Outside the forward: the engine's own work per step (SCMoE score,
sampling, stop checks). Methods interleave per round; medians in ms per step. `Timer` is also used by
bench_continuous.py --profile.

  python scripts/profile_decode.py                # CPU, 1 thread, mid32k B1 -> results/bench/cpu_profile_mid32k.json
  python scripts/profile_decode.py --size tiny --out results/bench/cpu_profile_tiny.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_decode import cpu_subjects, prompts  # noqa: E402
from bench_json import conditions, write_report  # noqa: E402

from scmoe_eval.decoding.engine import Contrast, DecodeEngine  # noqa: E402
from scmoe_eval.decoding.traffic import experts_modules  # noqa: E402
from scmoe_eval.models.routing import RoutingPolicy  # noqa: E402


COMPONENTS = ("attention", "router", "experts", "lm_head")


class Timer:
    """Accumulates wall time per component over the decode forwards, and of whole prefill forwards,
    while installed."""

    def __init__(self, model: torch.nn.Module, controller) -> None:
        self.model, self.totals, self.steps = model, defaultdict(float), 0
        self._start: dict[int, float] = {}
        self._decode = False
        kinds = {"lm_head": [model.get_output_embeddings()], "experts": experts_modules(model),
                 "router": list(controller.routers),
                 "attention": [m for n, m in model.named_modules() if n.endswith("self_attn")]}
        self.handles = [model.register_forward_pre_hook(self._model_pre, with_kwargs=True),
                        model.register_forward_hook(self._model_post)]
        for kind, modules in kinds.items():
            for m in modules:
                self.handles.append(m.register_forward_pre_hook(lambda mod, a: self._pre(mod)))
                self.handles.append(m.register_forward_hook(lambda mod, a, o, k=kind: self._post(mod, k)))

    def _model_pre(self, m, args, kwargs):
        self._decode = kwargs["input_ids"].shape[1] == 1
        self._start[id(m)] = time.perf_counter()

    def _model_post(self, m, args, out):
        elapsed = time.perf_counter() - self._start[id(m)]
        if self._decode:
            self.totals["model_forward"] += elapsed
            self.steps += 1
        else:
            self.totals["prefill"] += elapsed

    def _pre(self, m):
        self._start[id(m)] = time.perf_counter()

    def _post(self, m, kind):
        if self._decode:
            self.totals[kind] += time.perf_counter() - self._start[id(m)]

    def remove(self) -> None:
        for h in self.handles:
            h.remove()

    def breakdown(self, wall: float) -> dict[str, float]:
        """Seconds per component over a run of `wall` seconds: decode-forward parts, prefill, and the
        engine's own work outside the model (scoring, stops, cache joins and row selection)."""
        t = {k: self.totals[k] for k in COMPONENTS}
        t["rest_of_forward"] = self.totals["model_forward"] - sum(t.values())
        t["prefill"] = self.totals["prefill"]
        t["outside_model"] = wall - self.totals["model_forward"] - self.totals["prefill"]
        return dict(t, total=wall, decode_steps=self.steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["tiny", "mid32k"], default="mid32k")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("results/bench/cpu_profile_mid32k.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    load_start = os.getloadavg()
    subject = cpu_subjects([args.size])[0]
    texts = prompts(args.batch, 32, subject.loaded.model.config.vocab_size)
    contrast = Contrast(RoutingPolicy.topk(2), RoutingPolicy.rank(2))
    before = DecodeEngine(subject.loaded, decode_experts="grouped_mm")  # the CPU path before issue 9
    runs = {"greedy": (subject.engine, None), "scmoe": (subject.engine, contrast),
            "greedy_grouped_mm": (before, None), "scmoe_grouped_mm": (before, contrast)}
    per_round: dict[str, list[dict]] = defaultdict(list)
    with torch.inference_mode():
        for _ in range(args.rounds + 1):  # the first round warms up
            for name, (engine, c) in runs.items():
                timer = Timer(subject.loaded.model, subject.loaded.controller)
                start = time.perf_counter()
                engine.generate(texts, max_new_tokens=args.new_tokens, ban_eos=True, contrast=c)
                wall = time.perf_counter() - start
                timer.remove()
                t = {k: 1000 * v / timer.steps for k, v in timer.totals.items() if k != "prefill"}
                t["rest_of_forward"] = t["model_forward"] - sum(t[k] for k in COMPONENTS)
                t["per_token_total"] = 1000 * wall / args.new_tokens
                per_round[name].append(t)
    summary = {name: {k: statistics.median(r[k] for r in rounds[1:]) for k in rounds[0]} for name, rounds in per_round.items()}
    for name, t in summary.items():
        print(name, {k: round(v, 2) for k, v in t.items()})
    write_report(args.out, dict(
        **conditions(load_start),
        settings=dict(model=args.size, batch=args.batch, new_tokens=args.new_tokens, rounds=args.rounds,
                      unit="ms per decode step (median over rounds)"),
        summary=summary,
    ))


if __name__ == "__main__":
    main()
