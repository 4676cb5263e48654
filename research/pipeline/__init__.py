"""The study pipeline: stages (align, user fine-tune, evaluate), run folders, stage
caching keyed by a hash of each stage's config, and the alignment-method registry."""

from research.pipeline.hashing import config_hash, to_plain
from research.pipeline.registry import (ALIGNMENT_METHODS, StepContext, get_method,
                                        register_method)
from research.pipeline.runs import RunFolder, RunFolderExistsError

__all__ = ["ALIGNMENT_METHODS", "RunFolder", "RunFolderExistsError", "StepContext",
           "config_hash", "get_method", "register_method", "to_plain"]
