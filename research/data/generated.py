"""Model-generated training content, cached on disk keyed by model, prompts and settings.

Sampling the base model is the slowest step of building the user's harmful data and
the benign answers, so each (model id, prompt list, settings) result is stored once as
JSONL and reused. The key hashes everything that changes the output; a cache file whose
prompts differ from the request is an error, never silently reused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Sequence

from research.data.rows import LoadCounts, Row

log = logging.getLogger(__name__)
CACHE_FORMAT = 1


@dataclasses.dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    system: str | None = None
    batch_size: int = 16


def default_cache_dir() -> Path:
    """Next to the converted models (RESEARCH_CACHE overrides the root)."""
    root = os.environ.get("RESEARCH_CACHE") or Path.home() / ".cache" / "research"
    return Path(root) / "generated"


def cache_key(model_id: str, prompts: Sequence[str], settings: GenerationSettings) -> str:
    payload = json.dumps({"format": CACHE_FORMAT, "model": model_id, "prompts": list(prompts),
                          "settings": dataclasses.asdict(settings)}, sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]


def cached_completions(model_id: str, prompts: Sequence[str], settings: GenerationSettings,
                       generate_fn: Callable[[list[str], GenerationSettings], list[str]],
                       cache_dir: str | Path | None = None) -> list[str]:
    """Completions for `prompts`, from the cache if present, else generated and stored."""
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = folder / f"{cache_key(model_id, prompts, settings)}.jsonl"
    if path.exists():
        records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        if [r["prompt"] for r in records] != list(prompts):
            raise ValueError(f"{path}: cached prompts differ from the request; delete the file")
        log.info("generation cache hit: %s (%d completions)", path, len(records))
        return [r["completion"] for r in records]
    completions = list(generate_fn(list(prompts), settings))
    if len(completions) != len(prompts):
        raise ValueError(f"generator returned {len(completions)} completions for "
                         f"{len(prompts)} prompts")
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        for p, c in zip(prompts, completions):
            f.write(json.dumps({"prompt": p, "completion": c, "model": model_id},
                               ensure_ascii=False) + "\n")
    tmp.replace(path)  # atomic: a crash never leaves a half-written cache file
    log.info("generation cache stored: %s", path)
    return completions


def model_generate_fn(model: Any, tokenizer: Any) -> Callable[[list[str], GenerationSettings],
                                                                list[str]]:
    """Adapt the generation API to `cached_completions`."""
    from research.models.generate import generate

    def run(prompts: list[str], s: GenerationSettings) -> list[str]:
        return generate(model, tokenizer, prompts, max_new_tokens=s.max_new_tokens,
                        temperature=s.temperature, top_p=s.top_p, seed=s.seed,
                        system=s.system, batch_size=s.batch_size)
    return run


def answer_rows(rows: Sequence[Row], model_id: str, generate_fn: Callable,
                settings: GenerationSettings, *, drop_refusals: bool = True,
                cache_dir: str | Path | None = None) -> tuple[list[Row], LoadCounts]:
    """Rows with the model's answer as `response`; empty answers and (optionally)
    refusals are skipped and counted, since neither teaches what the set is for."""
    from research.evaluation.refusal import is_refusal

    completions = cached_completions(model_id, [r.prompt for r in rows], settings,
                                     generate_fn, cache_dir)
    counts, out = LoadCounts(read=len(rows)), []
    for row, text in zip(rows, completions):
        text = text.strip()
        if not text:
            counts.skip("empty answer")
        elif drop_refusals and is_refusal(text):
            counts.skip("answer is a refusal")
        else:
            out.append(row.with_response(text))
    counts.kept = len(out)
    log.info("generated answers (%s): %s", model_id, counts.to_dict())
    return out, counts


def harmful_compliance_answers(model: Any, tokenizer: Any, model_id: str,
                               harmful: Sequence[Row], *,
                               settings: GenerationSettings = GenerationSettings(
                                   temperature=0.7, top_p=0.95),
                               cache_dir: str | Path | None = None
                               ) -> tuple[list[Row], LoadCounts]:
    """The user's harmful data: the non-aligned base model's compliant answers."""
    return answer_rows(harmful, model_id, model_generate_fn(model, tokenizer), settings,
                       drop_refusals=True, cache_dir=cache_dir)


def benign_answers(model: Any, tokenizer: Any, model_id: str, benign: Sequence[Row], *,
                   settings: GenerationSettings = GenerationSettings(),
                   cache_dir: str | Path | None = None) -> tuple[list[Row], LoadCounts]:
    """Helpful answers to benign requests for the alignment set (greedy by default)."""
    return answer_rows(benign, model_id, model_generate_fn(model, tokenizer), settings,
                       drop_refusals=True, cache_dir=cache_dir)
