"""Convert a DeepSeekMoE (v1, remote-code `model_type: deepseek`) checkpoint to native Qwen2-MoE.

DeepSeekMoE-16B, the paper's second model, ships modeling code for transformers 4.x that no longer
imports under 5.x. Its architecture is exactly expressible as transformers' native Qwen2-MoE:
Llama attention (no biases), dense MLP layers where DeepSeekMoE has them (`mlp_only_layers`),
softmax top-k routing without renormalisation (`norm_topk_prob: false`), and shared experts fused
into one MLP of width n_shared * moe_intermediate. Qwen2-MoE multiplies its shared expert by
sigmoid(shared_expert_gate(x)); a zero gate gives exactly 0.5, so the shared down projection is
stored doubled (a power-of-two scale: exact in every float format) and the product is unchanged.

One difference stays: Qwen2-MoE picks the top-k on float32 router probabilities, DeepSeekMoE's
remote code on probabilities rounded to the model dtype. The weights of the chosen experts are the
same values; the choice differs only where two experts tie after bf16 rounding.

    python -m scmoe_eval.models.convert_deepseek_moe /path/deepseek-moe-16b-base /path/deepseek-moe-16b-qwen2moe
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path
from typing import Iterator

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import Qwen2MoeConfig

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "generation_config.json")
SHARED = re.compile(r"^(model\.layers\.\d+\.mlp\.)shared_experts\.(gate_proj|up_proj|down_proj)\.weight$")


def sparse_layers(src: dict) -> list[int]:
    """The DeepSeekMoE layers that hold routed experts (the rest are dense MLPs)."""
    first, freq = int(src.get("first_k_dense_replace", 0)), int(src.get("moe_layer_freq", 1))
    if src.get("n_routed_experts") is None:
        return []
    return [i for i in range(int(src["num_hidden_layers"])) if i >= first and i % freq == 0]


def convert_config(src: dict) -> Qwen2MoeConfig:
    """DeepSeekMoE config.json fields -> the equivalent Qwen2MoeConfig; refuses what has no equivalent."""
    if src.get("model_type") != "deepseek":
        raise ValueError(f"model_type is {src.get('model_type')!r}, expected 'deepseek' (DeepSeekMoE v1)")
    unsupported = {
        "scoring_func": (src.get("scoring_func", "softmax"), "softmax"),
        "hidden_act": (src.get("hidden_act", "silu"), "silu"),
        "attention_bias": (bool(src.get("attention_bias", False)), False),
        "rope_scaling": (src.get("rope_scaling"), None),
        "pretraining_tp": (int(src.get("pretraining_tp", 1)), 1),
    }
    for key, (value, wanted) in unsupported.items():
        if value != wanted:
            raise ValueError(f"config `{key}`={value!r} has no Qwen2-MoE equivalent (only {wanted!r} converts)")
    layers = int(src["num_hidden_layers"])
    sparse = set(sparse_layers(src))
    return Qwen2MoeConfig(
        vocab_size=src["vocab_size"],
        hidden_size=src["hidden_size"],
        intermediate_size=src["intermediate_size"],
        moe_intermediate_size=src["moe_intermediate_size"],
        shared_expert_intermediate_size=src["moe_intermediate_size"] * int(src.get("n_shared_experts") or 0),
        num_hidden_layers=layers,
        num_attention_heads=src["num_attention_heads"],
        num_key_value_heads=src.get("num_key_value_heads", src["num_attention_heads"]),
        num_experts=int(src.get("n_routed_experts") or 0),
        num_experts_per_tok=int(src.get("num_experts_per_tok") or 1),
        norm_topk_prob=bool(src.get("norm_topk_prob", False)),
        decoder_sparse_step=1,
        mlp_only_layers=[i for i in range(layers) if i not in sparse],
        max_position_embeddings=src.get("max_position_embeddings", 4096),
        rms_norm_eps=src.get("rms_norm_eps", 1e-6),
        rope_theta=float(src.get("rope_theta", 10000.0)),
        tie_word_embeddings=bool(src.get("tie_word_embeddings", False)),
        bos_token_id=src.get("bos_token_id"),
        eos_token_id=src.get("eos_token_id"),
        pad_token_id=src.get("pad_token_id"),
        qkv_bias=False,
        use_sliding_window=False,
        attention_dropout=float(src.get("attention_dropout", 0.0)),
        dtype=src.get("torch_dtype", src.get("dtype", "bfloat16")),
    )


def source_tensors(src_dir: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of every weight file, one file at a time (safetensors, else PyTorch .bin)."""
    files = sorted(src_dir.glob("*.safetensors"))
    if files:
        for path in files:
            with safe_open(str(path), framework="pt") as fh:
                for name in fh.keys():
                    yield name, fh.get_tensor(name)
        return
    bins = sorted(src_dir.glob("pytorch_model*.bin"))
    if not bins:
        raise FileNotFoundError(f"{src_dir}: no *.safetensors or pytorch_model*.bin weight files")
    for path in bins:
        yield from torch.load(path, map_location="cpu", weights_only=True, mmap=True).items()


def rename(name: str, tensor: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """One DeepSeekMoE weight -> its Qwen2-MoE weight(s); a shared down projection is doubled."""
    match = SHARED.match(name)
    if not match:
        return [(name, tensor)]  # embeddings, attention, norms, dense MLPs, router `mlp.gate`, routed experts
    prefix, proj = match.groups()
    out = [(f"{prefix}shared_expert.{proj}.weight", tensor * 2 if proj == "down_proj" else tensor)]
    if proj == "down_proj":  # one zero gate per sparse layer: sigmoid(0) = 0.5 exactly
        out.append((f"{prefix}shared_expert_gate.weight", tensor.new_zeros(1, tensor.shape[0])))
    return out


def convert(src_dir: str | Path, dst_dir: str | Path, shard_bytes: int = 4 << 30) -> Qwen2MoeConfig:
    """Write the Qwen2-MoE checkpoint (config, sharded safetensors + index, tokenizer files) to dst_dir.
    Shards are written as they fill, so memory stays near one source file plus one shard."""
    src_dir, dst_dir = Path(src_dir), Path(dst_dir)
    source = json.loads((src_dir / "config.json").read_text())
    config = convert_config(source)
    dst_dir.mkdir(parents=True, exist_ok=True)
    written: list[tuple[Path, list[str]]] = []  # (temporary shard file, its tensor names)
    shard: dict[str, torch.Tensor] = {}
    size = 0

    def flush() -> None:
        path = dst_dir / f"shard-{len(written) + 1:05d}.tmp"
        save_file(shard, str(path), metadata={"format": "pt"})
        written.append((path, list(shard)))

    for name, tensor in source_tensors(src_dir):
        for new_name, new_tensor in rename(name, tensor):
            nbytes = new_tensor.numel() * new_tensor.element_size()
            if shard and size + nbytes > shard_bytes:
                flush()
                shard, size = {}, 0
            shard[new_name] = new_tensor.contiguous()
            size += nbytes
    if shard:
        flush()
    weight_map = {}
    for i, (path, names) in enumerate(written, start=1):
        file = f"model-{i:05d}-of-{len(written):05d}.safetensors"
        path.rename(dst_dir / file)
        weight_map.update(dict.fromkeys(names, file))
    index = {"metadata": {"converted_from": "deepseek (DeepSeekMoE v1)"}, "weight_map": weight_map}
    (dst_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    config.save_pretrained(dst_dir)
    for file in TOKENIZER_FILES:
        if (src_dir / file).is_file():
            shutil.copy2(src_dir / file, dst_dir / file)
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help="local DeepSeekMoE checkpoint directory (e.g. deepseek-moe-16b-base)")
    parser.add_argument("dst", help="output directory for the native Qwen2-MoE checkpoint")
    args = parser.parse_args()
    config = convert(args.src, args.dst)
    print(f"wrote {args.dst}: qwen2_moe, {config.num_hidden_layers} layers, {config.num_experts} experts, "
          f"top-{config.num_experts_per_tok}, dense layers {config.mlp_only_layers}")


if __name__ == "__main__":
    main()
