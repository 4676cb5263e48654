"""Benign outliers: per-example self-influence scores and the sets selected by them."""

from research.outliers.selection import (DEFAULT_K, DEFAULT_POOL_SIZE, TRIVIAL_ANSWERS, Selection,
                                         is_trivial, save_selection, select_random, select_top)
from research.outliers.self_influence import (Scores, make_scorer, make_single_scorer,
                                              normalized_self_influence, score_examples)

__all__ = ["DEFAULT_K", "DEFAULT_POOL_SIZE", "TRIVIAL_ANSWERS", "Scores", "Selection",
           "is_trivial", "make_scorer", "make_single_scorer", "normalized_self_influence",
           "save_selection", "score_examples", "select_random", "select_top"]
