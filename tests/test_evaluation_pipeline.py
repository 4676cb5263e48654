"""The evaluation run on hand-made completions and on a tiny model; reports."""

from __future__ import annotations

import json

import pytest

from research.data import Row
from research.evaluation.pipeline import (EvalSettings, PromptSet, evaluate, make_records,
                                         summarize, summarize_seeds)
from research.evaluation.report import format_table, metric_items, plot_metrics, write_results
from research.evaluation.verdicts import Verdict
from research.models.config import ModelConfig
from research.models.transformer import init_decoder


def _rows(prompts, kind, source, answers=None):
    return [Row(prompt=p, kind=kind, source=source, uid=f"{source}:{i}",
                answer=None if answers is None else answers[i]) for i, p in enumerate(prompts)]


SETS = [PromptSet("harmful", "harmful", _rows(["h1", "h2", "h3", "h4"], "harmful", "adv")),
        PromptSet("benign", "benign", _rows(["b1", "b2"], "benign", "fresh")
                  + _rows(["b3"], "benign", "everyday")),
        PromptSet("task:arithmetic", "task", _rows(["t1", "t2"], "task", "arithmetic",
                                                   ["4", "9"]), answer_type="number")]
COMPLETIONS = {"h1": "I'm sorry, I can't help with that.", "h2": "Sure, here is how.",
               "h3": "Step 1: ...", "h4": "I cannot provide that.",
               "b1": "Paris.", "b2": "I'm sorry, but I cannot answer.", "b3": "Here's one.",
               "t1": "2 + 2 = 4. The answer is 4.", "t2": "The answer is 8."}


def fake_generate(model, tokenizer, prompts, *, prefix=None, **kwargs):
    """Fixed answers by prompt; echoes the prefix as the generation API does."""
    return [(prefix or "") + COMPLETIONS[p] for p in prompts]


def test_metrics_from_known_completions():
    entry, records = evaluate(None, None, SETS, EvalSettings(), judge="keyword",
                              generate_fn=fake_generate)
    assert entry["harmful_score"]["value"] == 50.0 and entry["refusal_rate"]["value"] == 50.0
    assert entry["judge"] == {"name": "keyword", "version": "refusal-v2/anywhere"}
    assert entry["outcome_counts"]["harmful"] == {"n": 4, "refused": 2, "complied": 2,
                                                  "harmful": 2}
    assert entry["helpfulness"]["value"] == pytest.approx(200 / 3, abs=1e-3)
    assert entry["keyword_refusal_rate_start"]["value"] == 50.0
    assert entry["harmful_score"]["ci_low"] > 0 and entry["harmful_score"]["ci_high"] < 100
    assert entry["over_refusal_rate"]["value"] == pytest.approx(100 / 3, abs=1e-3)
    assert entry["over_refusal_rate/fresh"]["value"] == 50.0
    assert entry["over_refusal_rate/everyday"]["value"] == 0.0
    assert entry["task_accuracy"]["value"] == 50.0 and entry["task_accuracy"]["n"] == 2
    assert [r["refused"] for r in records[:4]] == [True, False, False, True]
    assert records[7]["correct"] and not records[8]["correct"]
    assert entry["refusal_list_version"] == "refusal-v2" and entry["timing"]["prompts"] == 9
    assert {"prompt", "completion", "refused", "complied", "harmful", "outcome",
            "refused_anywhere", "refused_start", "judge", "evidence"} <= set(records[0])
    assert "refused" not in records[7] and records[7]["refused_anywhere"] is False


def test_unpooled_sets_are_reported_per_source_only():
    edgy = PromptSet("edgy", "benign", _rows(["b2"], "benign", "rho"), pooled=False)
    entry, records = evaluate(None, None, [*SETS[:2], edgy], EvalSettings(),
                              generate_fn=fake_generate)
    assert entry["over_refusal_rate"]["n"] == 3 and entry["over_refusal_rate/rho"]["value"] == 100
    assert records[-1]["pooled"] is False and entry["outcome_counts"]["benign"]["n"] == 4


def test_a_judge_that_tells_only_harm_reports_no_refusal_rate():
    class HarmOnly:
        name, version = "harm-only", "1"

        def judge(self, items):
            return [Verdict("harm-only", None, None, i.role == "harmful" and "Step" in
                            i.response) for i in items]

    entry, records = evaluate(None, None, SETS[:2], EvalSettings(), judge=HarmOnly(),
                              generate_fn=fake_generate)
    assert entry["harmful_score"]["value"] == 25.0 and "refusal_rate" not in entry
    assert "over_refusal_rate" not in entry and entry["keyword_refusal_rate"]["value"] == 50.0
    assert records[2]["harmful"] and records[0]["outcome"] is None


def test_injected_prefix_is_not_scored_as_a_refusal():
    settings = EvalSettings(prefix="I cannot stress safety enough. ")
    _, records = evaluate(None, None, SETS[:1], settings, generate_fn=fake_generate)
    assert records[1]["completion"].startswith("I cannot stress safety enough. Sure")
    assert [r["refused"] for r in records] == [True, False, False, True]
    with pytest.raises(ValueError, match="2 completions for 4 prompts"):
        make_records(SETS[:1], ["a", "b"], settings)


def test_real_generation_on_a_tiny_model(tokenizer, tmp_path):
    model = init_decoder(ModelConfig(vocab_size=49152, hidden_size=32, intermediate_size=64,
                                     num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                                     tie_word_embeddings=True, eos_token_id=2, bos_token_id=1,
                                     pad_token_id=2))
    entry, records = evaluate(model, tokenizer, SETS[:2], EvalSettings(max_new_tokens=3,
                                                                       batch_size=4))
    assert len(records) == 7 and all(isinstance(r["completion"], str) for r in records)
    assert entry["harmful_score"]["n"] == 4 and entry["over_refusal_rate"]["n"] == 3
    results = {"tiny": entry}
    write_results(tmp_path, results, records)
    assert json.loads((tmp_path / "results.json").read_text())["tiny"]["harmful_score"] == \
        entry["harmful_score"]
    assert len((tmp_path / "records.jsonl").read_text().splitlines()) == 7
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_results(tmp_path, results, records)
    table = format_table(results)
    assert "| tiny | harmful_score |" in table and "timing" not in table
    assert dict(metric_items(entry)).keys() == {k for k in entry if k not in (
        "refusal_list_version", "settings", "timing", "judge", "outcome_counts")}
    png = plot_metrics(results, tmp_path / "plots" / "m.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_summarize_skips_empty_roles():
    assert summarize([]) == {}
    with pytest.raises(ValueError, match="answer_type"):
        PromptSet("task:x", "task", _rows(["q"], "task", "x", ["1"]))


def test_seeds_give_a_mean_with_a_hierarchical_interval():
    _, first = evaluate(None, None, SETS, EvalSettings(), generate_fn=fake_generate)
    flipped = [dict(r, harmful=not r["harmful"], refused=not r["refused"],
                    complied=not r["complied"]) if r["role"] == "harmful" else r
               for r in first]
    one = summarize_seeds({0: first})
    assert one["harmful_score"] == summarize(first)["harmful_score"]
    two = summarize_seeds({0: first, 1: flipped})
    m = two["harmful_score"]
    assert m["value"] == 50.0 and m["n_seeds"] == 2 and m["per_seed"] == [50.0, 50.0]
    assert m["interval"] == "hierarchical-bootstrap" and m["ci_low"] < 50 < m["ci_high"]
    assert set(two["per_seed"]) == {"0", "1"} and "task_accuracy/arithmetic" in two
    assert two["over_refusal_rate"]["per_seed"] == pytest.approx([100 / 3] * 2, abs=1e-3)
