"""Router kinds and the MoE families that declare them: plain data, read by `families.py`.

transformers 5.24 ships ~58 MoE causal LMs but only a handful of router designs. A `RouterKind`
describes one design as data (what scores the experts, what top-k ranks, selection bias, expert
groups, how chosen weights are normalised and scaled), so supporting a family is one `Family`
line naming its kind; `families.KindAdapter` turns a kind into routing behaviour. Families whose
router cannot be expressed (or cannot run here) are declared with the reason instead.
The census (`scmoe_eval/models/census.py`, tests/test_census.py) checks this file against the
installed transformers: a new or changed family fails a test rather than routing silently wrong.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

INF = float("inf")


@dataclass(frozen=True)
class RouterKind:
    """One router design. Attribute names (`normalize`, `scale`, `bias`, `clamp`) are read off the router
    module (dotted paths allowed); `bias="arg"` means the router's second forward argument."""

    label: str  # the kind's name in docs/families.md
    score: str = "softmax"  # per-expert gate: softmax (fp32) | sigmoid | fn (router.score_fn) | probs (router output 0)
    select: str = "score"  # what top-k ranks: score | logits
    bias: str | None = None  # selection bias added to the ranked tensor
    groups: str | None = None  # group-limited selection: top2 (sum of a group's best two) | max
    group_fill: float = -INF  # value the router writes over experts of dropped groups before its top-k
    # chosen weights: gather (gate of each chosen expert) | softmax_chosen (softmax over the chosen logits) |
    # score_chosen (the score function applied to the chosen logits: same values, but bit-exact with routers
    # that apply it after the gather, since a vectorised sigmoid can round differently from a gathered one)
    weights: str = "gather"
    normalize: bool | str = False  # renormalise the chosen weights (bool, or the router attribute that says)
    eps: float = 0.0  # added to the sum before dividing
    clamp: str | None = None  # divide by max(sum, router.<clamp>) instead (ERNIE)
    scale: str | None = None  # router attribute: scalar factor on routed weights
    expert_scale: str | None = None  # router attribute: per-expert factor (E,) on routed weights (Gemma 4)
    sorted: bool = True  # the `sorted=` flag of the router's torch.topk
    fp32: bool = True  # softmax in float32 (False: in the logits' dtype)
    contract: str = "triple"  # router output: triple (logits, weights, index) | dense (Llama 4: (scores (T,E), logits))


SOFTMAX_TOPK = RouterKind("softmax top-k", normalize="norm_topk_prob")
SOFTMAX_TOPK_NORM = replace(SOFTMAX_TOPK, normalize=True)
SOFTMAX_TOPK_RAW = replace(SOFTMAX_TOPK, normalize=False)
TOPK_SOFTMAX = RouterKind("top-k then softmax", select="logits", weights="softmax_chosen", normalize=True)
SIGMOID_TOPK = RouterKind("sigmoid top-k", score="sigmoid", normalize="norm_topk_prob")
SIGMOID_BIAS_GROUPS = RouterKind(
    "sigmoid + bias, expert groups",
    score="sigmoid",
    bias="e_score_correction_bias",
    groups="top2",
    normalize="norm_topk_prob",
    eps=1e-20,
    scale="routed_scaling_factor",
    sorted=False,
)
SIGMOID_BIAS = RouterKind("sigmoid + bias", score="sigmoid", bias="e_score_correction_bias", normalize=True, sorted=False)
SOFTMAX_BIAS = RouterKind("softmax + bias", bias="e_score_correction_bias", sorted=False)
SOFTMAX_GROUPS = RouterKind(
    "softmax, expert groups", groups="top2", group_fill=0.0, normalize="norm_topk_prob", eps=1e-20,
    scale="routed_scaling_factor", sorted=False, fp32=False,
)


@dataclass(frozen=True)
class Family:
    """A transformers MoE family (its `models/<module>` name) and how scmoe-eval routes it.

    `kind=None` means unsupported, with `reason`. `router` is the router class-name suffix to hook.
    `variants` picks the kind per router from one of its attributes (Cohere2-MoE's softmax/sigmoid).
    `topk_exact=False`: recomputed topk(own k) is not the router's (the adapter states why in `note`).
    """

    module: str
    router: tuple[str, ...] = ("TopKRouter", "TopkRouter")
    kind: RouterKind | None = None
    reason: str = ""
    note: str = ""
    experts: str = "num_experts"  # router attribute: experts per layer
    top_k: str = "top_k"  # router attribute: the model's own k
    variants: tuple[str, dict[str, RouterKind]] | None = None
    topk_exact: bool = True
    min_width: int = 1  # fewest expert slots the MoE block accepts (the controller pads narrower selections)
    cache: str = "attention"  # what the decode cache holds besides attention KV: attention | <the state kind>
    cache_class: str = ""  # the family's own Cache class (its modeling module), where the model refuses DynamicCache
    flagship: str = ""  # Hub id of the flagship checkpoint (conf/model/<module>.yaml)
    flagship_params_b: float = 0.0  # total parameters, billions (device_map=auto above ~20B)

    @property
    def supported(self) -> bool:
        return self.kind is not None or bool(self.variants)


# The six families with hand-written adapters in families.py (kept as classes; their kinds for the docs).
NATIVE: dict[str, RouterKind] = {
    "mixtral": SOFTMAX_TOPK_NORM,
    "qwen2_moe": SOFTMAX_TOPK,
    "qwen3_moe": SOFTMAX_TOPK,
    "olmoe": SOFTMAX_TOPK,
    "deepseek_v2": replace(SOFTMAX_GROUPS, label="softmax, expert groups (max)", groups="max", normalize=False),
    "deepseek_v3": SIGMOID_BIAS_GROUPS,
}

FAMILIES: tuple[Family, ...] = (
    # ---- softmax over all experts, top-k, optional renormalisation
    Family("mixtral", kind=NATIVE["mixtral"], flagship="mistralai/Mixtral-8x7B-v0.1", flagship_params_b=46.7),
    Family("qwen2_moe", kind=NATIVE["qwen2_moe"], note="shared expert (sigmoid-gated) outside the router",
           flagship="Qwen/Qwen1.5-MoE-A2.7B", flagship_params_b=14.3),
    Family("qwen3_moe", kind=NATIVE["qwen3_moe"], flagship="Qwen/Qwen3-30B-A3B", flagship_params_b=30.5),
    Family("olmoe", kind=NATIVE["olmoe"], flagship="allenai/OLMoE-1B-7B-0924", flagship_params_b=6.9),
    Family("flex_olmo", kind=SOFTMAX_TOPK, flagship="allenai/FlexOlmo-7x7B-1T", flagship_params_b=33.3),
    Family("mellum", kind=SOFTMAX_TOPK),
    Family("lara_mini", kind=SOFTMAX_TOPK, cache="linear attention"),
    Family("qwen3_next", kind=SOFTMAX_TOPK, cache="gated DeltaNet (linear attention)",
           note="shared expert outside the router", flagship="Qwen/Qwen3-Next-80B-A3B-Instruct",
           flagship_params_b=80.0),
    Family("qwen4_exp", kind=SOFTMAX_TOPK, cache="linear attention"),
    Family("minimax", kind=SOFTMAX_TOPK_NORM, cache="lightning (linear) attention", cache_class="MiniMaxCache"),
    Family("qwen3_5_moe", kind=SOFTMAX_TOPK_NORM, cache="gated DeltaNet (linear attention)"),
    Family("hunyuan_v1_moe", router=("Gate",), kind=SOFTMAX_TOPK_NORM,
           flagship="tencent/Hunyuan-A13B-Instruct", flagship_params_b=80.0),
    Family("jamba", kind=SOFTMAX_TOPK_RAW, cache="Mamba", flagship="ai21labs/AI21-Jamba-Mini-1.5",
           flagship_params_b=51.6),
    Family("gemma4", router=("TextRouter",), kind=RouterKind(
        "softmax top-k, per-expert scale", score="probs", normalize=True, expert_scale="per_expert_scale"),
        experts="proj.out_features", top_k="config.top_k_experts"),
    # ---- top-k on the logits, softmax over the chosen k
    Family("granitemoe", kind=TOPK_SOFTMAX, flagship="ibm-granite/granite-3.0-3b-a800m-instruct",
           flagship_params_b=3.3),
    Family("granitemoe_swa", kind=TOPK_SOFTMAX),
    Family("granitemoeshared", kind=TOPK_SOFTMAX, note="shared MLP outside the router"),
    Family("granitemoehybrid", kind=TOPK_SOFTMAX, cache="Mamba-2",
           flagship="ibm-granite/granite-4.0-h-small", flagship_params_b=32.0),
    Family("gpt_oss", kind=TOPK_SOFTMAX, note="router linear has a bias; the MegaBlocks hub kernel (use_kernels=True) "
           "would bypass the router hook, so it must stay off", flagship="openai/gpt-oss-20b", flagship_params_b=21.0),
    Family("aria", kind=TOPK_SOFTMAX, experts="num_experts", note="text model (aria_text) only"),
    Family("cohere2_moe", variants=("expert_selection_fn", {
        "softmax": TOPK_SOFTMAX,
        "sigmoid": RouterKind("sigmoid top-k", score="sigmoid", select="logits", normalize="norm_topk_prob"),
    })),
    # ---- sigmoid gates
    Family("flint", kind=SIGMOID_TOPK),
    Family("kolibri1", kind=replace(SIGMOID_TOPK, label="sigmoid + bias", select="logits",
                                    bias="e_score_correction_bias", weights="score_chosen")),
    Family("llama4", router=("Router",), kind=RouterKind("sigmoid top-k, dense scores", score="sigmoid",
           select="logits", contract="dense"), experts="num_experts",
           note="experts see the input scaled by the gate; every expert runs on every token (zero gate = zero)",
           flagship="meta-llama/Llama-4-Scout-17B-16E-Instruct", flagship_params_b=109.0),
    # ---- sigmoid + selection bias (aux-loss-free balancing), no groups
    Family("afmoe", router=("TokenChoiceRouter",), kind=replace(SIGMOID_BIAS, bias="arg", eps=1e-20, scale="route_scale",
                                                                sorted=True)),
    Family("hy_v3", kind=replace(SIGMOID_BIAS, bias="arg", eps=1e-20, scale="router_scaling_factor")),
    Family("minimax_m2", kind=replace(SIGMOID_BIAS, bias="arg"), experts="num_experts",
           flagship="MiniMaxAI/MiniMax-M2", flagship_params_b=229.0),
    Family("minimax_m3_vl", kind=SIGMOID_BIAS, note="text model (minimax_m3_vl_text) only"),
    Family("laguna", kind=replace(SIGMOID_BIAS, sorted=True),
           note="hub kernel SoftmaxTopKRouter (use_kernels=True) would replace the router forward; keep it off"),
    Family("lfm2_moe", kind=replace(SIGMOID_BIAS, bias="arg", normalize="norm_topk_prob", eps=1e-6,
                                    scale="routed_scaling_factor", sorted=True), cache="short convolution",
           flagship="LiquidAI/LFM2-8B-A1B", flagship_params_b=8.3),
    Family("inkling2", kind=replace(SIGMOID_BIAS, score="fn", eps=1e-20, scale="routed_scaling_factor")),
    Family("inkling2_loop", kind=replace(SIGMOID_BIAS, score="fn", eps=1e-20, scale="routed_scaling_factor")),
    Family("deepseek_v4", router=("V4TopKRouter",), kind=replace(SIGMOID_BIAS, label="score fn + bias", score="fn",
                                                                  eps=1e-20, scale="routed_scaling_factor"),
           note="hash-routed layers (DeepseekV4HashRouter: experts from a token-id table) keep their table under "
                "every policy"),
    # ---- sigmoid + bias + expert groups (DeepSeek-V3 router)
    Family("deepseek_v3", kind=NATIVE["deepseek_v3"], flagship="deepseek-ai/DeepSeek-V3", flagship_params_b=671.0),
    Family("deepseek_v32", kind=SIGMOID_BIAS_GROUPS, flagship="deepseek-ai/DeepSeek-V3.2", flagship_params_b=671.0),
    Family("dots1", kind=SIGMOID_BIAS_GROUPS, flagship="rednote-hilab/dots.llm1.inst", flagship_params_b=142.0),
    Family("dots3_note", router=("TextTopkRouter",), kind=SIGMOID_BIAS_GROUPS),
    Family("exaone_moe", kind=SIGMOID_BIAS_GROUPS),
    Family("glm4_moe", kind=SIGMOID_BIAS_GROUPS, flagship="zai-org/GLM-4.5-Air", flagship_params_b=106.0),
    Family("glm4_moe_lite", kind=SIGMOID_BIAS_GROUPS),
    Family("glm_moe_dsa", kind=SIGMOID_BIAS_GROUPS),
    Family("hy_v4", kind=SIGMOID_BIAS_GROUPS),
    Family("kimi_linear", kind=SIGMOID_BIAS_GROUPS, cache="Kimi delta attention (linear)",
           flagship="moonshotai/Kimi-Linear-48B-A3B-Instruct", flagship_params_b=48.0),
    Family("bailing_hybrid", kind=SIGMOID_BIAS_GROUPS, cache="linear attention"),
    Family("mimo_v2_flash", kind=SIGMOID_BIAS_GROUPS),
    Family("nemotron_h", kind=SIGMOID_BIAS_GROUPS, cache="Mamba-2",
           flagship="nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16", flagship_params_b=31.6),
    Family("solar_open", kind=SIGMOID_BIAS_GROUPS),
    Family("axk1", kind=SIGMOID_BIAS_GROUPS),
    Family("axk2", kind=replace(SIGMOID_BIAS_GROUPS, group_fill=0.0)),
    Family("beam", kind=replace(SIGMOID_BIAS_GROUPS, scale=None, sorted=True),
           note="routed_scaling_factor is applied after expert aggregation, outside the router"),
    # ---- softmax + bias, softmax + groups
    Family("longcat_flash", kind=replace(SOFTMAX_BIAS, scale="routed_scaling_factor"), experts="n_routed_experts",
           min_width=2, note="zero-computation experts are routing classes like the others; selections are padded "
           "to 2 slots because its experts loop mis-indexes a width-1 selection"),
    Family("ernie4_5_moe", kind=replace(SOFTMAX_BIAS, bias="moe_statics.e_score_correction_bias", normalize=True,
                                        clamp="norm_min", sorted=True),
           flagship="baidu/ERNIE-4.5-21B-A3B-PT", flagship_params_b=21.8),
    Family("deepseek_v2", kind=NATIVE["deepseek_v2"], flagship="deepseek-ai/DeepSeek-V2-Lite", flagship_params_b=15.7),
    Family("mistral4", kind=SOFTMAX_GROUPS),
    # ---- supported for stock routing and policies, but topk(own k) is not the router's own rule
    Family("phimoe", kind=RouterKind("SparseMixer top-2", normalize=True), topk_exact=False,
           note="the router's SparseMixer picks 2 experts with masked softmaxes (jitter threshold) and ignores top_k; "
                "policies rank by the softmax over all experts, so topk(2) is softmax top-2 renormalised, not SparseMixer",
           flagship="microsoft/Phi-3.5-MoE-instruct", flagship_params_b=41.9),
    # ---- unsupported
    Family("dbrx", router=("Router",), reason="DbrxRouter returns only logits; top-k and the p-norm weight "
           "normalisation run inside DbrxFFN.route_tokens_to_experts, so there is no router output to replace"),
    Family("zaya", router=("Router",), reason="ZayaRouter has E+1 routing classes (a skip-expert class behind a "
           "-1 balancing bias) and carries router states from layer to layer; the tiny config also refuses "
           "num_experts_per_tok != 1"),
    Family("inkling", reason="InklingTopkRouter normalises the chosen routed experts jointly with the shared experts "
           "(log-sigmoid softmax over routed + shared) and returns the shared gammas: a policy changes the shared "
           "experts' weights too, which the (index, weight) replacement cannot express"),
)
