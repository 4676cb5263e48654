"""JAX research codebase: how fine-tuning erodes LLM safety alignment, and defenses."""
