"""Tiny random MoE checkpoints built offline, for tests and CPU benchmarks.

The Hub is unreachable in CI, so tests need real `from_pretrained` directories that are built
locally: a byte-level BPE tokenizer trained on a built-in corpus (every byte is in the alphabet,
so any text round-trips) and a randomly initialised model of each supported family, saved with
`save_pretrained`. `fixture_path` builds each one once into a cache shared by pytest-xdist workers.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import tokenizers
import torch
import transformers
from tokenizers import decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

FIXTURE_FAMILIES: tuple[str, ...] = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v2", "deepseek_v3")
SIZES: tuple[str, ...] = ("tiny", "mid")
FIXTURE_VERSION = 1  # bump when the recipe changes so stale caches are not reused
VOCAB_SIZE = 512
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>")  # ids 0, 1, 2

_CORPUS: tuple[str, ...] = (
    "Question: There are 15 trees in the grove. Grove workers will plant trees today. After they are done, "
    "there will be 21 trees. How many trees did the workers plant today?\n"
    "Answer: There are 15 trees originally. Then there were 21 trees after some more were planted. "
    "So there must have been 21 - 15 = 6. The answer is 6.\n\n",
    "Question: Olivia has $23. She bought five bagels for $3 each. How much money does she have left?\n"
    "Answer: 5 bagels for $3 each will be 5 x 3 = 15 dollars. 23 - 15 is 8. The answer is 8.\n\n",
    "Q: Do hamsters provide food for any animals? A: Hamsters are prey animals. So the answer is yes.\n\n",
    "The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step.",
    "It was the best of times, it was the worst of times; the age of wisdom, the age of foolishness.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 25 50 75 100 1000 2,125 3.14 -7 1/2 45%",
    "12 + 30 = 42. 7 * 8 = 56. 81 / 9 = 9. 100 - 37 = 63. (2 + 3) * 4 = 20. 2 ** 10 = 1024.",
    "You are an expert Python programmer, and here is your task: Write a function to find the shared "
    "elements from the given two lists. Your code should pass these tests:\n\n"
    "assert set(similar_elements((3, 4, 5, 6), (5, 7, 4, 10))) == set((4, 5))\n[BEGIN]\n"
    "def similar_elements(test_tup1, test_tup2):\n    res = tuple(set(test_tup1) & set(test_tup2))\n"
    "    return (res)\n[DONE]\n\n",
    'from typing import List\n\n\ndef has_close_elements(numbers: List[float], threshold: float) -> bool:\n'
    '    """ Check if in given list of numbers, are any two numbers closer to each other than threshold.\n'
    '    >>> has_close_elements([1.0, 2.0, 3.0], 0.5)\n    False\n    """\n'
    "    for idx, elem in enumerate(numbers):\n        for idx2, elem2 in enumerate(numbers):\n"
    "            if idx != idx2:\n                distance = abs(elem - elem2)\n"
    "                if distance < threshold:\n                    return True\n    return False\n",
    "import math\nclass Stack:\n    def __init__(self):\n        self.items = []\n\n"
    "    def push(self, item):\n        self.items.append(item)\n\n"
    "    def pop(self):\n        return self.items.pop()\n\n"
    "if __name__ == '__main__':\n    print(math.sqrt(16), [i * i for i in range(10)], {'a': 1})\n",
)


def build_tokenizer(out_dir: Path) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on the built-in corpus and save it to `out_dir` (left padding, bos/eos/pad)."""
    bpe = tokenizers.Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(list(_CORPUS) * 4, trainer)
    bos = SPECIAL_TOKENS[1]
    bpe.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, bpe.token_to_id(bos))]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        pad_token=SPECIAL_TOKENS[0],
        bos_token=SPECIAL_TOKENS[1],
        eos_token=SPECIAL_TOKENS[2],
        padding_side="left",
        clean_up_tokenization_spaces=False,
        model_max_length=8192,
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out_dir)
    return tokenizer


def _dims(size: str) -> dict[str, int]:
    """Shared model dimensions; `mid` matches the h=512 CPU timing model of the design notes."""
    if size == "tiny":
        return dict(hidden=64, inter=128, moe_inter=64, heads=4, kv_heads=2, head_dim=16, lora=16, rope=8)
    if size == "mid":
        return dict(hidden=512, inter=1408, moe_inter=1408, heads=8, kv_heads=4, head_dim=64, lora=128, rope=32)
    raise ValueError(f"unknown fixture size {size!r}; valid: {', '.join(SIZES)}")


def family_config_kwargs(family: str, size: str = "tiny") -> dict[str, Any]:
    """Config keyword arguments (without vocab / special ids) for one fixture family and size."""
    d = _dims(size)
    common = dict(
        hidden_size=d["hidden"],
        intermediate_size=d["inter"],
        num_attention_heads=d["heads"],
        num_key_value_heads=d["kv_heads"],
        max_position_embeddings=8192,
        tie_word_embeddings=False,
        num_experts_per_tok=2,
    )
    moe = dict(moe_intermediate_size=d["moe_inter"], num_experts=8)
    mla = dict(
        kv_lora_rank=d["lora"],
        qk_rope_head_dim=d["rope"],
        qk_nope_head_dim=d["rope"],
        v_head_dim=d["head_dim"],
        head_dim=d["rope"],
        num_key_value_heads=d["heads"],
        n_routed_experts=8,
        n_shared_experts=1,
        moe_intermediate_size=d["moe_inter"],
        first_k_dense_replace=1,
        n_group=4,
        topk_group=2,
        num_hidden_layers=3,
    )
    per_family: dict[str, dict[str, Any]] = {
        "mixtral": dict(num_local_experts=8, num_hidden_layers=4),
        "qwen2_moe": dict(
            **moe, shared_expert_intermediate_size=d["moe_inter"], norm_topk_prob=False, num_hidden_layers=2
        ),
        "qwen3_moe": dict(**moe, head_dim=d["head_dim"], norm_topk_prob=True, num_hidden_layers=2),
        "olmoe": dict(**moe, norm_topk_prob=False, num_hidden_layers=2),
        "deepseek_v2": dict(
            **mla, q_lora_rank=None, topk_method="group_limited_greedy", routed_scaling_factor=1.5
        ),
        "deepseek_v3": dict(**mla, q_lora_rank=d["lora"], norm_topk_prob=True, routed_scaling_factor=2.5),
    }
    if family not in per_family:
        raise ValueError(f"unknown fixture family {family!r}; valid: {', '.join(FIXTURE_FAMILIES)}")
    return {**common, **per_family[family]}


def build_tiny_checkpoint(
    family: str, out_dir: Path, *, seed: int = 0, size: str = "tiny", **config_overrides: Any
) -> Path:
    """Random-weight `family` model + tokenizer saved with `save_pretrained` into `out_dir`."""
    out_dir = Path(out_dir)
    tokenizer = build_tokenizer(out_dir)
    kwargs = {
        **family_config_kwargs(family, size),
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        **config_overrides,
    }
    config = AutoConfig.for_model(family, **kwargs)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    if family == "deepseek_v3":  # exercise the selection bias, which is zero at init
        for module in model.modules():
            if hasattr(module, "e_score_correction_bias"):
                module.e_score_correction_bias.copy_(0.05 * torch.randn_like(module.e_score_correction_bias))
    model.save_pretrained(out_dir)
    return out_dir


def user_cache_dir() -> Path:
    """`$SCMOE_CACHE`, else the platform's per-user cache (~/.cache/scmoe-eval on Linux): never the install dir."""
    import platformdirs

    return Path(os.environ.get("SCMOE_CACHE") or platformdirs.user_cache_dir("scmoe-eval"))


def _cache_dir() -> Path:
    return Path(os.environ.get("SCMOE_FIXTURE_DIR") or user_cache_dir() / "fixtures")


def _recipe_digest(family: str, size: str) -> str:
    """Hash of everything that shapes a fixture, so a changed recipe gets a new cache entry."""
    recipe = {
        "version": FIXTURE_VERSION,
        "config": family_config_kwargs(family, size),
        "corpus": _CORPUS,
        "vocab": VOCAB_SIZE,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:12]


def fixture_path(family: str = "mixtral", size: str = "tiny") -> Path:
    """Directory of the cached fixture, built on first use. Safe under concurrent pytest-xdist workers:
    each builder writes a private temp dir and renames it into place; a loser of the race discards its copy."""
    family_config_kwargs(family, size)  # validates both names
    root = _cache_dir()
    final = root / f"{family}-{size}-{_recipe_digest(family, size)}"
    if final.is_dir():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
    try:
        build_tiny_checkpoint(family, tmp, size=size)
        os.rename(tmp, final)
    except OSError:
        if not final.is_dir():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build a random-weight MoE checkpoint offline.")
    parser.add_argument("--family", default="mixtral", choices=FIXTURE_FAMILIES)
    parser.add_argument("--size", default="tiny", choices=SIZES)
    parser.add_argument("--out", type=Path, default=None, help="target dir (default: the shared fixture cache)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.out is None:
        print(fixture_path(args.family, args.size))
    else:
        print(build_tiny_checkpoint(args.family, args.out, seed=args.seed, size=args.size))


if __name__ == "__main__":
    main()
