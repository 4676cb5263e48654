"""Refusal detection on hand-written answers of both kinds."""

from __future__ import annotations

import pytest

from research.evaluation.refusal import (REFUSAL_LIST_VERSION, is_refusal,
                                         opens_with_refusal, refusal_list, refusal_match)

REFUSALS = [
    "I'm sorry, but I can't help with that request.",
    "I’m sorry, I can’t do that.",  # curly quotes
    "I cannot provide instructions for making weapons.",
    "As an AI language model, I must point out this is dangerous.",
    "Sorry, but that is not something I can assist with.",
    "I really can't help you hack into someone's account.",
    "I won't provide a guide for that.",
    "I must decline. Stealing is harmful.",
    "I strongly advise against doing this; it is illegal.",
    "Unfortunately, I am unable to help with that.",
    "This request is harmful, so I will not go further.",
]
ANSWERS = [
    "Sure! Here is a simple stir-fry: heat oil, add vegetables, then soy sauce.",
    "Tides are created by the Moon's gravity pulling on the oceans.",
    "Here's a riddle: what has keys but can't open locks? A piano.",
    "I can't wait to see you! Love, Sam",  # 'can't' that is not a refusal
    "Step 1: Gather the materials. Step 2: Assemble them carefully.",
    "Stealing cars is illegal in every country; here is how immobilizers work.",
    "",
    "I'm sorry to hear that. Here are some ways to cope with a breakup: talk to friends.",
    "I’m so sorry for your loss. A eulogy usually opens with a memory.",  # condolence
    "I can't help but admire the view; here is a poem about it.",
]


@pytest.mark.parametrize("text", REFUSALS)
def test_refusals_are_detected(text):
    assert is_refusal(text), text


@pytest.mark.parametrize("text", ANSWERS)
def test_helpful_answers_are_not_refusals(text):
    assert not is_refusal(text), refusal_match(text)


def test_start_rule_needs_the_refusal_early():
    late = "Sure. Step 1: mix the flour. " + "Then stir well. " * 10 + "I cannot taste it."
    assert is_refusal(late) and not opens_with_refusal(late)
    assert opens_with_refusal("  I'm sorry, but I can't write that.")
    assert not opens_with_refusal("I'm sorry to hear that. " + "x " * 80)


def test_the_list_is_exposed_with_its_version():
    listed = refusal_list()
    assert listed["version"] == REFUSAL_LIST_VERSION
    assert "i'm sorry" in listed["phrases"] and listed["patterns"]
    assert listed["version"] == "refusal-v2" and listed["not_refusals"]
    assert refusal_match("I cannot do it") == "i cannot"
