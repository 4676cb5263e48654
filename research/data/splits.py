"""Deterministic train/validation/test splits by content hash, near-duplicates kept together.

A row's split is the SHA-256 (with a salt) of its group's key, never of file order, a
global seed or the machine. Groups are formed over the texts of one call (the rows
passed in plus any `group_with` rows):

- texts with the same normalized form (case and whitespace folded) are one text;
- two prompts are near-duplicates when their word sets have Jaccard similarity of at
  least NEAR_DUPLICATE_JACCARD, either on the words as written or with proper names
  and numbers masked ("What is Jane's home address?" ~ "What is Mohammed's home
  address?"); near-duplicates are joined transitively (a ~ b and b ~ c put a, b and c
  in one group), so no near-duplicate pair ever straddles two splits;
- a group's key is its lexicographically smallest normalized text, so the split depends
  only on the set of texts; a text with no near-duplicate keeps the split of its own
  text (`split_of`).

What is and is not grouped:
- near-duplicate joining applies to texts of rows whose kind is in NEAR_DUPLICATE_KINDS
  (harmful and benign requests); task and refusal rows are joined only when their
  normalized texts are equal, because generated tasks and refusals are templates that
  differ by numbers or a few words by design, and joining them would put whole templates
  into one split;
- only the texts of one call are compared: a caller that splits each source on its own
  (pipeline/data.py) groups near-duplicates within each source; pass the other sources'
  rows as `group_with` to group across sources (e.g. all harmful sources together);
- the split is a function of the set of texts, so filtering rows before splitting (a
  length cap, a limit) can move a prompt whose near-duplicate was filtered out: split
  the same set wherever train and held-out rows must stay disjoint.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import defaultdict
from typing import Iterable, Sequence

from research.data.rows import Row

SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)
NEAR_DUPLICATE_JACCARD = 0.65
NEAR_DUPLICATE_KINDS = ("harmful", "benign")

_WORD = re.compile(r"\w+")


def normalize(text: str) -> str:
    """Case- and whitespace-insensitive key, so trivial variants share a split."""
    return re.sub(r"\s+", " ", text).strip().casefold()


def unit_hash(text: str, salt: str = "") -> float:
    """A uniform number in [0, 1) from the text's SHA-256."""
    digest = hashlib.sha256(f"{salt}\x00{normalize(text)}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_of(text: str, fractions: Sequence[float] = DEFAULT_FRACTIONS, salt: str = "") -> str:
    """The split of one text on its own (of a group, when called on the group's key)."""
    _check(fractions)
    u, edge = unit_hash(text, salt), 0.0
    for name, frac in zip(SPLITS, fractions):
        edge += frac
        if u < edge:
            return name
    return SPLITS[-1]  # float rounding at the top edge


def _check(fractions: Sequence[float]) -> None:
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-9:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1 "
                         f"(train, val, test), got {tuple(fractions)}")


# --------------------------------------------------------------------- near-duplicates
def words(text: str) -> frozenset[str]:
    """The text's word set: case-folded runs of letters, digits and underscores."""
    return frozenset(_WORD.findall(text.casefold()))


def masked_words(text: str) -> frozenset[str]:
    """The word set with numbers as "<num>" and proper names as "<name>": a word holding
    a digit is a number; a capitalized, not all-capitals word (so neither "I" nor an
    acronym) that does not open a sentence or line is a name."""
    out = set()
    for match in _WORD.finditer(text):
        word = match.group()
        if any(c.isdigit() for c in word):
            out.add("<num>")
        elif (word[0].isupper() and not word.isupper()
              and not _opens_sentence(text, match.start())):
            out.add("<name>")
        else:
            out.add(word.casefold())
    return frozenset(out)


def _opens_sentence(text: str, start: int) -> bool:
    """Whether the word at `start` opens the text, a line or a sentence."""
    i = start - 1
    while i >= 0 and text[i] in " \t\r\"'([":
        i -= 1
    return i < 0 or text[i] in ".!?:;\n"


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    """|a & b| / |a | b| (0 for two empty sets)."""
    union = len(a | b)
    return len(a & b) / union if union else 0.0


def _similar_pairs(sets: Sequence[frozenset[str]], threshold: float) -> Iterable[tuple[int, int]]:
    """Index pairs with jaccard >= threshold, by prefix filtering (exact: no pair missed).

    Tokens are ordered rarest first; a pair reaching the threshold must share a token
    within the first |s| - ceil(threshold * |s|) + 1 tokens of each set, and the smaller
    set must hold at least threshold times the larger one's size."""
    freq: dict[str, int] = defaultdict(int)
    for s in sets:
        for token in s:
            freq[token] += 1
    order = sorted((i for i, s in enumerate(sets) if s), key=lambda i: (len(sets[i]), i))
    index: dict[str, list[int]] = defaultdict(list)
    for i in order:
        s = sets[i]
        size = len(s)
        prefix = sorted(s, key=lambda t: (freq[t], t))[:size - math.ceil(threshold * size
                                                                          - 1e-9) + 1]
        candidates = {j for token in prefix for j in index[token]
                      if len(sets[j]) >= threshold * size - 1e-9}
        for j in candidates:
            inter = len(s & sets[j])
            if inter >= threshold * (size + len(sets[j]) - inter) - 1e-9:
                yield (j, i)
        for token in prefix:
            index[token].append(i)


def near_duplicate_groups(texts: Iterable[str], near: Iterable[bool] | None = None,
                          threshold: float = NEAR_DUPLICATE_JACCARD) -> list[list[str]]:
    """The texts' normalized forms partitioned into groups (see the module docstring).

    `near[i]` says whether texts[i] may join a group by similarity (default: all may);
    texts with equal normalized forms are always one. Each group is sorted, its first
    member is its key, and groups are sorted by key, so the result depends only on the
    set of texts."""
    texts = list(texts)
    flags = [True] * len(texts) if near is None else list(near)
    if len(flags) != len(texts):
        raise ValueError(f"near has {len(flags)} flags for {len(texts)} texts")
    originals: dict[str, str] = {}
    eligible: dict[str, bool] = {}
    for text, flag in zip(texts, flags):
        key = normalize(text)
        originals[key] = min(originals.get(key, text), text)
        eligible[key] = eligible.get(key, False) or bool(flag)
    keys = sorted(originals)
    parent = list(range(len(keys)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    candidates = [i for i, k in enumerate(keys) if eligible[k]]
    for word_set in (words, masked_words):
        sets = [word_set(originals[keys[i]]) for i in candidates]
        for a, b in _similar_pairs(sets, threshold):
            ra, rb = find(candidates[a]), find(candidates[b])
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    members: dict[int, list[str]] = defaultdict(list)
    for i, key in enumerate(keys):
        members[find(i)].append(key)
    return sorted((sorted(group) for group in members.values()), key=lambda g: g[0])


# --------------------------------------------------------------------- splitting rows
def split_rows(rows: Sequence[Row], fractions: Sequence[float] = DEFAULT_FRACTIONS,
               salt: str = "", key: str = "prompt", *,
               group_with: Sequence[Row] = ()) -> dict[str, list[Row]]:
    """Rows by split, each keeping the input order. `key` picks the hashed field
    ("response" for refusal rows, whose prompt is empty). Groups are formed over `rows`
    and `group_with` (rows that only join the grouping and are not returned)."""
    _check(fractions)
    pool = [*rows, *group_with]
    texts = [getattr(row, key) or "" for row in pool]
    groups = near_duplicate_groups(texts, [row.kind in NEAR_DUPLICATE_KINDS for row in pool])
    split_by_text = {text: split_of(group[0], fractions, salt)
                     for group in groups for text in group}
    out: dict[str, list[Row]] = {name: [] for name in SPLITS}
    for row, text in zip(rows, texts):
        out[split_by_text[normalize(text)]].append(row)
    return out


def select_split(rows: Sequence[Row], split: str | None, **kwargs) -> list[Row]:
    """One split of `rows` (all rows when split is None); kwargs go to `split_rows`."""
    if split is None:
        return list(rows)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
    return split_rows(rows, **kwargs)[split]
