"""What a user can choose: the options of each config group, one line each, read from conf/.

Each option's description is the first sentence of its YAML file's leading comment. The schema
entries `base_<group>` (config.py registers them so every option is typed) are not options.
"""

from __future__ import annotations

import re
from pathlib import Path

GROUPS = {"task": "tasks", "strategy": "strategies", "model": "models", "experiment": "presets (multiruns)"}
_SENTENCE_END = re.compile(r"(?<=[.;])\s")


def describe(path: Path, width: int = 110) -> str:
    """First sentence of the comment block at the top of a YAML file ('' if it has none)."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        if text and not text.startswith("@package"):
            lines.append(text)
    sentence = _SENTENCE_END.split(" ".join(lines), maxsplit=1)[0].rstrip(";")
    return sentence if len(sentence) <= width else sentence[: width - 1].rstrip() + "…"


def options(config_dir: Path | str, group: str) -> list[str]:
    """The selectable options of `group` (its YAML files), base_* schemas excluded."""
    return sorted(p.stem for p in Path(config_dir, group).glob("*.yaml") if not p.stem.startswith("base_"))


def listing(config_dir: Path | str) -> str:
    """`scmoe-eval --list`: every task, strategy, model and preset with one line each."""
    out = []
    for group, title in GROUPS.items():
        names = options(config_dir, group)
        width = max(map(len, names), default=0)
        out.append(f"{title} ({group}=NAME):")
        out += [f"  {name.ljust(width)}  {describe(Path(config_dir, group, name + '.yaml'))}" for name in names]
        out.append("")
    out.append("Run one: scmoe-eval task=gsm8k strategy=scmoe model=tiny-mixtral run.limit=3")
    return "\n".join(out)


def groups_help(config_dir: Path | str) -> str:
    """The "group: option, option, ..." lines of `scmoe-eval --help`, without the base_* schemas."""
    groups = sorted(p.name for p in Path(config_dir).iterdir() if p.is_dir() and p.name != "hydra")
    return "\n".join(f"{g}: {', '.join(options(config_dir, g))}" for g in groups)
