"""Inference-time guards: PING prefix search (ping.py) and its proposers (proposers.py)."""

from research.guard.ping import Candidate, SearchResult, model_scorer, perform_refuse, search
from research.guard.proposers import SEED_POOL, ChatModelProposer, RecombineProposer

__all__ = ["SEED_POOL", "Candidate", "ChatModelProposer", "RecombineProposer", "SearchResult",
           "model_scorer", "perform_refuse", "search"]
