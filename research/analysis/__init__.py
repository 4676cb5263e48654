"""Mechanism analysis as pure functions over model states (drift, logits, probes)."""
