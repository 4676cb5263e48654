"""Evaluate a model on prompt sets: one batched generation call, verdicts, metrics, records.

All prompts of all sets go through the generation API together, so batches stay full
and the compiled programs are reused. Every harmful and benign completion gets a
structured verdict from one judge (refused / complied / harmful, see verdicts.py); the
metrics are shares of those verdicts. Verdicts are taken on the model's own text: an
injected assistant prefix (PING) is cut off first, so a guard prefix that itself sounds
cautious does not count as a refusal by construction. Both keyword rules are recorded on
every row as well, so the keyword numbers stay comparable across judges.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Mapping, Sequence

from research.data.rows import Row
from research.evaluation import metrics as M
from research.evaluation.intervals import seeded_metric
from research.evaluation.judges.keyword import refusal_evidence
from research.evaluation.refusal import REFUSAL_LIST_VERSION
from research.evaluation.scoring import ANSWER_TYPES, is_correct
from research.evaluation.verdicts import Judge, JudgeItem, get_judge, judge_all

DEFAULT_JUDGE = "relevance"
ROLES = ("harmful", "benign", "task")


@dataclasses.dataclass(frozen=True)
class PromptSet:
    """Prompts with one role; task sets carry how answers are checked. A set with
    `pooled=False` (e.g. edge-case probes) is reported on its own, per source, and left
    out of the role's pooled headline metrics."""

    name: str
    role: str
    rows: Sequence[Row]
    answer_type: str | None = None   # task sets: one of scoring.ANSWER_TYPES
    labels: tuple[str, ...] = ()
    pooled: bool = True

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"PromptSet.role must be one of {ROLES}, got {self.role!r}")
        if self.role == "task":
            if self.answer_type not in ANSWER_TYPES:
                raise ValueError(f"task set {self.name!r} needs an answer_type in "
                                 f"{ANSWER_TYPES}, got {self.answer_type!r}")
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
                 settings: EvalSettings, judge: Judge | str = DEFAULT_JUDGE) -> list[dict]:
    """One record per prompt in set order (completions in the same flattened order):
    the judge's verdict fields on harmful and benign rows, correctness on task rows, and
    the keyword evidence (`refused_anywhere`, `refused_start`) on every row."""
    total = sum(len(s.rows) for s in sets)
    if total != len(completions):
        raise ValueError(f"{len(completions)} completions for {total} prompts")
    judge = get_judge(judge) if isinstance(judge, str) else judge
    records, items, judged, k = [], [], [], 0
    for s in sets:
        for row in s.rows:
            completion = completions[k]
            k += 1
            text = answer_text(completion, settings)
            rec = {"set": s.name, "role": s.role, "pooled": s.pooled, "source": row.source,
                   "uid": row.uid, "prompt": row.prompt, "completion": completion,
                   **refusal_evidence(text)}
            if s.role == "task":
                rec["answer"] = row.answer
                rec["correct"] = is_correct(text, row.answer, s.answer_type, s.labels)
            else:
                items.append(JudgeItem(row.prompt, text, s.role))
                judged.append(rec)
            records.append(rec)
    for rec, verdict in zip(judged, judge_all(judge, items) if items else []):
        rec.update(verdict.to_record())
        rec["judge_version"] = judge.version
    return records


def _share(recs: list[dict], field: str) -> dict | None:
    """Proportion (Wilson CI) of records whose `field` is true; None when the judge
    left the field unset on any of them."""
    values = [r.get(field) for r in recs]
    if not recs or any(v is None for v in values):
        return None
    return M.proportion_metric([bool(v) for v in values])


METRICS = (  # name, role, record field
    ("harmful_score", "harmful", "harmful"),
    ("refusal_rate", "harmful", "refused"),
    ("compliance_rate", "harmful", "complied"),
    ("over_refusal_rate", "benign", "refused"),
    ("helpfulness", "benign", "complied"),
    ("keyword_refusal_rate", "harmful", "refused_anywhere"),
    ("keyword_refusal_rate_start", "harmful", "refused_start"),
    ("keyword_over_refusal_rate", "benign", "refused_anywhere"),
    ("task_accuracy", "task", "correct"),
)
BY_SOURCE = ("harmful_score", "refusal_rate", "over_refusal_rate", "helpfulness",
             "task_accuracy")


def outcome_counts(records: Sequence[dict]) -> dict[str, dict[str, int]]:
    """Per role: how many records had each outcome, and how many were judged harmful."""
    out: dict[str, dict[str, int]] = {}
    for r in records:
        if r["role"] == "task":
            continue
        c = out.setdefault(r["role"], {"n": 0})
        c["n"] += 1
        c[str(r.get("outcome"))] = c.get(str(r.get("outcome")), 0) + 1
        if r.get("harmful"):
            c["harmful"] = c.get("harmful", 0) + 1
    return out


def metric_records(records: Sequence[dict]) -> dict[str, tuple[list[dict], str]]:
    """Which records each metric is a share of, and the record field it counts: the
    METRICS pooled per role over `pooled` sets, then the BY_SOURCE breakdowns named
    `<metric>/<source>` (every set) where a role has several sources or unpooled sets."""
    out: dict[str, tuple[list[dict], str]] = {}
    for name, role, field in METRICS:
        pooled = [r for r in records if r["role"] == role and r.get("pooled", True)]
        if pooled:
            out[name] = (pooled, field)
    for name, role, field in METRICS:
        if name not in BY_SOURCE or name not in out:
            continue
        groups: dict[str, list[dict]] = {}
        for r in records:
            if r["role"] == role:
                groups.setdefault(r["source"], []).append(r)
        if len(groups) > 1 or role == "task" or any(not r.get("pooled", True)
                                                     for r in records if r["role"] == role):
            for source, recs in sorted(groups.items()):
                out[f"{name}/{source}"] = (recs, field)
    return out


def summarize(records: Sequence[dict], *, seed: int = 0) -> dict[str, Any]:
    """Each metric of `metric_records` as a Wilson proportion (a breakdown only where its
    pooled metric exists), and the outcome counts. (`seed` is kept for callers; Wilson
    intervals need none.)"""
    out: dict[str, Any] = {}
    for name, (recs, field) in metric_records(records).items():
        pooled = name.partition("/")[0]
        if pooled != name and pooled not in out:
            continue
        m = _share(recs, field)
        if m is not None:
            out[name] = m
    if any(r["role"] != "task" for r in records):
        out["outcome_counts"] = outcome_counts(records)
    return out


def summarize_seeds(records_by_seed: Mapping[int, Sequence[dict]], *,
                    seed: int = 0) -> dict[str, Any]:
    """Metrics of one arm trained with several seeds on the same prompts: per metric the
    mean over seeds with a hierarchical (seed, then prompt) bootstrap interval and the
    per-seed values (intervals.seeded_metric); one seed gives `summarize`'s Wilson
    entry. `per_seed` keeps each seed's own summary."""
    if len(records_by_seed) == 1:
        return summarize(next(iter(records_by_seed.values())), seed=seed)
    per_seed = {s: summarize(r, seed=seed) for s, r in records_by_seed.items()}
    selected = {s: metric_records(r) for s, r in records_by_seed.items()}
    out: dict[str, Any] = {}
    names = [n for n in next(iter(per_seed.values())) if n != "outcome_counts"]
    for name in names:
        groups = {}
        for s, chosen in selected.items():
            recs, field = chosen[name]
            values = [r.get(field) for r in recs]
            if any(v is None for v in values):
                break
            groups[s] = [float(bool(v)) for v in values]
        else:
            out[name] = seeded_metric(groups, seed=seed)
    out["per_seed"] = {str(s): e for s, e in per_seed.items()}
    return out


def evaluate(model: Any, tokenizer: Any, sets: Sequence[PromptSet],
             settings: EvalSettings = EvalSettings(), *, judge: Judge | str = DEFAULT_JUDGE,
             generate_fn: Callable | None = None) -> tuple[dict, list[dict]]:
    """(entry for results.json, per-prompt records). The entry holds the metrics, the
    judge and refusal list versions, the settings and the generation timing."""
    if generate_fn is None:
        from research.models.generate import generate as generate_fn
    judge = get_judge(judge) if isinstance(judge, str) else judge
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
    records = make_records(sets, completions, settings, judge)
    entry = summarize(records, seed=settings.seed)
    entry["refusal_list_version"] = REFUSAL_LIST_VERSION
    entry["judge"] = {"name": judge.name, "version": judge.version}
    entry["settings"] = dataclasses.asdict(settings)
    entry["timing"] = {"prompts": len(prompts), "generation_seconds": round(seconds, 3),
                       "prompts_per_second": round(len(prompts) / seconds, 3)}
    return entry, records
