"""Built-in judges; importing this package registers them (see verdicts.get_judge)."""

from research.evaluation.judges import keyword, relevance  # noqa: F401
from research.evaluation.judges import hub  # noqa: F401
