"""Render chat prompts for generation, with optional text injected into the answer.

PING places a prefix at the start of the assistant's turn (right after the template's
generation prompt): the model then continues from it. For closed chat APIs the
alternative mode appends the prefix to the last user message instead.
"""

from __future__ import annotations

PREFIX_MODES = ("assistant", "user")


def render_prompt(tokenizer, user: str, *, prefix: str | None = None,
                  prefix_mode: str = "assistant", system: str | None = None) -> str:
    """Chat-templated prompt text ending where the model's answer starts.

    In "assistant" mode the prefix follows the generation prompt verbatim, so the model
    continues the prefix; in "user" mode it is appended to the user message.
    """
    if prefix_mode not in PREFIX_MODES:
        raise ValueError(f"prefix_mode must be one of {PREFIX_MODES}, got {prefix_mode!r}")
    if not isinstance(user, str):
        raise TypeError(f"prompt must be a string, got {type(user).__name__}")
    if prefix and prefix_mode == "user":
        user = f"{user}\n\n{prefix}"
    messages = ([{"role": "system", "content": system}] if system is not None else [])
    messages.append({"role": "user", "content": user})
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if prefix and prefix_mode == "assistant":
        text += prefix
    return text


def answer_prefix(prefix: str | None, prefix_mode: str) -> str:
    """The text the reported answer starts with (the injected prefix, if in the answer)."""
    return prefix if (prefix and prefix_mode == "assistant") else ""
