"""The study's data, built from the `data` block of a config.

- harmful prompts (train split): the first `n_align_harmful` get refusals for stage 1,
  the next `n_user_harmful` get the base model's compliant answers for stage 2;
- benign requests (train split, an equal share per source): the base model's answers,
  for stage 1 (at least as many as the refusals, DESIGN.md Data);
- the user's task (train split) for stage 2, its `eval.split` for task accuracy;
- evaluation sets from a held-out split only (`eval.split`: test, or val for tuning), an
  equal share per source; `eval.edgy_sources` (benign-but-edgy probes) form a set of
  their own, reported per source and not pooled into over-refusal.
Splits are the data layer's content-hash splits, so no val or test prompt is ever
trained on.
Reserved evaluation data (HarmBench, PyRIT scorer evals) is never a source here.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import ml_collections
import numpy as np
from tqdm.auto import tqdm

from research.data.generated import GenerationSettings, answer_rows, model_generate_fn
from research.data.mixtures import alignment_set, user_finetune_set
from research.data.rows import DataError, Row
from research.data.sources import TASK_ANSWER_TYPES, TASK_LABELS, load_source
from research.data.splits import select_split
from research.evaluation.pipeline import PromptSet

RESERVED = ("harmbench", "scorer_evals")


def _names(spec: str | Sequence[str]) -> list[str]:
    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    names = [n for n in names if n]
    for name in names:
        if any(r in name.lower() for r in RESERVED):
            raise DataError(name, "reserved for independent evaluation; never a study source")
    return names


LENGTH_CAPPED = ("writingbench", "persistbench")  # long human-written requests, capped


def within_cap(name: str, rows: Sequence[Row], max_chars: int | None) -> list[Row]:
    """`rows` of source `name` without prompts over `max_chars` when the source is
    LENGTH_CAPPED (apply after splitting, so a prompt's split never depends on the cap)."""
    if max_chars is None or name not in LENGTH_CAPPED:
        return list(rows)
    return [r for r in rows if len(r.prompt) <= max_chars]


def split_pool(names: Sequence[str], split: str, counts: dict[str, dict],
               max_chars: int | None = None) -> dict[str, list[Row]]:
    """Rows of each named source restricted to one split; counts recorded per source.
    `max_chars` caps the long human-written requests (they dominate generation time);
    the cap is applied after splitting, so a prompt's split never depends on it."""
    pools = {}
    for name in names:
        rows, c = load_source(name)
        kept = select_split(rows, split)
        c.skip(f"not in split {split}", len(rows) - len(kept))
        short = within_cap(name, kept, max_chars)
        if len(short) < len(kept):
            c.skip(f"longer than {max_chars} characters", len(kept) - len(short))
            kept = short
        c.kept = len(kept)
        counts[f"{name}/{split}"] = c.to_dict()
        pools[name] = kept
    return pools


def balanced_sample(pools: dict[str, list[Row]], n: int, seed: int) -> list[Row]:
    """`n` rows with an equal share per source (a short source gives its all and the
    rest is filled from the others); seeded, order shuffled."""
    rng = np.random.default_rng(seed)
    shuffled = {k: [v[i] for i in rng.permutation(len(v))] for k, v in pools.items()}
    total = sum(len(v) for v in shuffled.values())
    if n > total:
        raise DataError("+".join(pools), f"needs {n} rows but only {total} are available")
    taken = {k: 0 for k in shuffled}
    while sum(taken.values()) < n:
        open_ = [k for k in shuffled if taken[k] < len(shuffled[k])]
        for k in open_:
            if sum(taken.values()) == n:
                break
            taken[k] += 1
    out = [row for k, rows in shuffled.items() for row in rows[:taken[k]]]
    return [out[i] for i in rng.permutation(len(out))]


def generation_settings(block: ml_collections.ConfigDict, **overrides: Any) -> GenerationSettings:
    return GenerationSettings(max_new_tokens=int(block.max_new_tokens),
                              temperature=float(overrides.get("temperature",
                                                              block.temperature)),
                              top_p=float(overrides.get("top_p", 1.0)), seed=int(block.seed),
                              batch_size=int(block.batch_size))


def with_progress(generate: Callable) -> Callable:
    """The same generator fed a few batches at a time behind a progress bar."""
    def run(prompts: list[str], settings: GenerationSettings) -> list[str]:
        chunk, out = 2 * settings.batch_size, []
        for start in tqdm(range(0, len(prompts), chunk), desc="generating answers",
                          unit="chunk", dynamic_ncols=True):
            out += generate(prompts[start:start + chunk], settings)
        return out
    return run


def build_study_data(cfg: ml_collections.ConfigDict, model: Any, tokenizer: Any,
                     model_id: str, *, cache_dir: str | None = None,
                     generate_fn: Callable | None = None) -> dict[str, Any]:
    """Alignment rows, the user's harmful and task pools, evaluation sets and counts."""
    d = cfg.data
    counts: dict[str, dict] = {}
    gen = with_progress(generate_fn or model_generate_fn(model, tokenizer))
    harmful = balanced_sample(split_pool(_names(d.harmful_sources), "train", counts),
                              d.n_align_harmful + d.n_user_harmful, d.seed)
    align_harmful, user_harmful = harmful[:d.n_align_harmful], harmful[d.n_align_harmful:]
    benign_pools = split_pool(_names(d.benign_sources), "train", counts,
                              d.benign_max_chars)
    benign_prompts = balanced_sample(benign_pools, d.n_align_benign_prompts, d.seed)
    benign, c = answer_rows(benign_prompts, model_id, gen, generation_settings(d.generation),
                            drop_refusals=True, cache_dir=cache_dir)
    counts["benign_answers"] = c.to_dict()
    refusals, _ = load_source("refusals")
    align_rows = alignment_set(align_harmful, benign, refusals, seed=d.seed,
                               min_benign_ratio=float(d.min_benign_ratio))
    harmful_answered, c = answer_rows(
        user_harmful, model_id, gen,
        generation_settings(d.generation, temperature=d.harmful_temperature, top_p=0.95),
        drop_refusals=True, cache_dir=cache_dir)
    counts["harmful_answers"] = c.to_dict()
    task_train = split_pool([d.task], "train", counts)[d.task]
    return {"align_rows": align_rows, "user_harmful": harmful_answered,
            "task_train": task_train, "eval_sets": eval_sets(cfg, counts), "counts": counts}


EVAL_SPLITS = ("val", "test")


def eval_split(cfg: ml_collections.ConfigDict) -> str:
    """`eval.split`: a held-out split ("test" to report, "val" to tune on); never "train"."""
    split = str(cfg.eval.get("split", "test"))
    if split not in EVAL_SPLITS:
        raise ValueError(f"config field eval.split = {split!r}: evaluation reads a held-out "
                         f"split, one of {EVAL_SPLITS}")
    return split


def eval_sets(cfg: ml_collections.ConfigDict, counts: dict[str, dict]) -> list[PromptSet]:
    """Held-out (`eval.split`) harmful, benign and task prompt sets of the `eval` block."""
    d, e = cfg.data, cfg.eval
    split = eval_split(cfg)
    harmful = balanced_sample(split_pool(_names(d.harmful_sources), split, counts),
                              e.n_harmful, e.seed)
    benign = balanced_sample(split_pool(_names(e.benign_sources), split, counts,
                                        e.get("benign_max_chars", d.benign_max_chars)),
                             e.n_benign, e.seed)
    task = split_pool([d.task], split, counts)[d.task]
    task = [task[i] for i in np.random.default_rng(e.seed).permutation(len(task))[:e.n_task]]
    sets = [PromptSet("harmful", "harmful", harmful), PromptSet("benign", "benign", benign),
            PromptSet(f"task:{d.task}", "task", task, answer_type=TASK_ANSWER_TYPES[d.task],
                      labels=TASK_LABELS.get(d.task, ()))]
    if e.get("edgy_sources") and e.get("n_edgy", 0) > 0:
        pools = split_pool(_names(e.edgy_sources), split, counts)
        edgy = balanced_sample(pools, min(e.n_edgy, sum(map(len, pools.values()))), e.seed)
        sets.append(PromptSet("edgy", "benign", edgy, pooled=False))
    return sets


def user_rows(cfg: ml_collections.ConfigDict, data: dict[str, Any], p: float) -> list[Row]:
    """The user's fine-tuning set of `finetune.n` rows with a harmful fraction `p`."""
    return user_finetune_set(data["user_harmful"], data["task_train"], n=int(cfg.finetune.n),
                             p=float(p), seed=int(cfg.data.seed))


def rows_fingerprint(rows: Sequence[Row]) -> list[list[str | None]]:
    """What of the rows changes training: prompt and response, in order."""
    return [[r.prompt, r.response] for r in rows]

