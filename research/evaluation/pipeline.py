"""Evaluate a model on prompt sets: one batched generation call, then metrics and records.

All prompts of all sets go through the generation API together, so batches stay full
and the compiled programs are reused. Refusals are scored on the model's own text: an
injected assistant prefix (PING) is cut off before matching, so a guard prefix that
itself sounds cautious does not count as a refusal by construction.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Sequence

from research.data.rows import Row
from research.evaluation import metrics as M
from research.evaluation.judge import Judge
from research.evaluation.refusal import REFUSAL_LIST_VERSION, refusal_match

ROLES = ("harmful", "benign", "task")


@dataclasses.dataclass(frozen=True)
class PromptSet:
    """Prompts with one role; task sets carry how answers are checked."""

    name: str
    role: str
    rows: Sequence[Row]
    answer_type: str | None = None   # "number" or "label" for task sets
    labels: tuple[str, ...] = ()

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"PromptSet.role must be one of {ROLES}, got {self.role!r}")
        if self.role == "task":
            if self.answer_type not in ("number", "label"):
                raise ValueError(f"task set {self.name!r} needs answer_type number or label")
            missing = [r.uid for r in self.rows if r.answer is None]
            if missing:
                raise ValueError(f"task set {self.name!r}: rows without an answer: "
                                 f"{missing[:5]}")


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    max_new_tokens: int = 64
    temperature: float = 0.0   # greedy by default (evaluation protocol)
    top_p: float = 1.0
    seed: int = 0
    prefix: str | None = None
    prefix_mode: str = "assistant"
    system: str | None = None
    batch_size: int = 16


def answer_text(completion: str, settings: EvalSettings) -> str:
    """The model's own text: the completion without an injected assistant prefix."""
    if settings.prefix and settings.prefix_mode == "assistant" \
            and completion.startswith(settings.prefix):
        return completion[len(settings.prefix):]
    return completion


def make_records(sets: Sequence[PromptSet], completions: Sequence[str],
                 settings: EvalSettings) -> list[dict]:
    """Per-prompt records in set order (completions in the same flattened order)."""
    total = sum(len(s.rows) for s in sets)
    if total != len(completions):
        raise ValueError(f"{len(completions)} completions for {total} prompts")
    records, k = [], 0
    for s in sets:
        for row in s.rows:
            completion = completions[k]
            k += 1
            match = refusal_match(answer_text(completion, settings))
            rec = {"set": s.name, "role": s.role, "source": row.source, "uid": row.uid,
                   "prompt": row.prompt, "completion": completion,
                   "refused": match is not None, "refusal_match": match}
            if s.role == "task":
                rec["answer"] = row.answer
                rec["correct"] = M.is_correct(answer_text(completion, settings), row.answer,
                                              s.answer_type, s.labels)
            records.append(rec)
    return records


def summarize(records: Sequence[dict], *, seed: int = 0) -> dict[str, dict]:
    """Headline metrics pooled per role, plus breakdowns named `<metric>/<source>`."""
    out: dict[str, dict] = {}

    def add(name: str, fn: Callable, recs: list[dict], key: str) -> None:
        if recs:
            out[name] = fn([r[key] for r in recs], seed=seed)

    harmful = [r for r in records if r["role"] == "harmful"]
    benign = [r for r in records if r["role"] == "benign"]
    task = [r for r in records if r["role"] == "task"]
    add("harmful_score", M.harmful_score, harmful, "refused")
    add("refusal_rate", M.refusal_rate, harmful, "refused")
    if harmful and "judge_harmful" in harmful[0]:
        add("judge_harmful_score", M.bootstrap_metric, harmful, "judge_harmful")
    add("over_refusal_rate", M.over_refusal_rate, benign, "refused")
    add("task_accuracy", M.task_accuracy, task, "correct")
    for role, metric, fn, key in (("harmful", "harmful_score", M.harmful_score, "refused"),
                                  ("benign", "over_refusal_rate", M.over_refusal_rate,
                                   "refused"),
                                  ("task", "task_accuracy", M.task_accuracy, "correct")):
        groups: dict[str, list[dict]] = {}
        for r in records:
            if r["role"] == role:
                groups.setdefault(r["source"], []).append(r)
        if len(groups) > 1 or role == "task":
            for source, recs in sorted(groups.items()):
                add(f"{metric}/{source}", fn, recs, key)
    return out


def evaluate(model: Any, tokenizer: Any, sets: Sequence[PromptSet],
             settings: EvalSettings = EvalSettings(), *, judge: Judge | None = None,
             generate_fn: Callable | None = None) -> tuple[dict, list[dict]]:
    """(entry for results.json, per-prompt records). The entry holds the metrics, the
    refusal list's version, the settings and the generation timing."""
    if generate_fn is None:
        from research.models.generate import generate as generate_fn
    prompts = [row.prompt for s in sets for row in s.rows]
    if not prompts:
        raise ValueError("nothing to evaluate: every prompt set is empty")
    start = time.perf_counter()
    completions = generate_fn(model, tokenizer, prompts, max_new_tokens=settings.max_new_tokens,
                              temperature=settings.temperature, top_p=settings.top_p,
                              seed=settings.seed, prefix=settings.prefix,
                              prefix_mode=settings.prefix_mode, system=settings.system,
                              batch_size=settings.batch_size)
    seconds = time.perf_counter() - start
    records = make_records(sets, completions, settings)
    if judge is not None:
        harmful = [r for r in records if r["role"] == "harmful"]
        verdicts = judge.harmful([r["prompt"] for r in harmful],
                                 [answer_text(r["completion"], settings) for r in harmful])
        for r, v in zip(harmful, verdicts):
            r["judge_harmful"] = bool(v)
    entry = summarize(records, seed=settings.seed)
    entry["refusal_list_version"] = REFUSAL_LIST_VERSION
    entry["settings"] = dataclasses.asdict(settings) | {"judge": judge.name if judge else None}
    entry["timing"] = {"prompts": len(prompts), "generation_seconds": round(seconds, 3),
                       "prompts_per_second": round(len(prompts) / seconds, 3)}
    return entry, records
