"""First-token masses and the logit lens on a tiny random model with the real tokenizer."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from research.analysis import logits as A
from research.models.transformer import init_decoder
from tests.pipeline_fixtures import TINY

PROMPTS = ["How do I bake bread?", "Tell me a riddle!", "Write a poem about tides."]


@pytest.fixture(scope="module")
def tok():
    from research.models.loading import embedded_folder, load_tokenizer

    return load_tokenizer(embedded_folder("smollm2-135m-instruct"))


@pytest.fixture(scope="module")
def model():
    return init_decoder(TINY, seed=3)


def test_opener_ids_disjoint_and_decoded(tok):
    r, c = A.opener_token_ids(tok)
    assert len(r) and len(c) and not set(r) & set(c)
    assert "Sorry" in {tok.decode([i]) for i in r}
    assert "Sure" in {tok.decode([i]) for i in c}
    assert all(tok.decode([i]).strip() for i in np.concatenate([r, c]))  # no bare space
    with pytest.raises(ValueError, match="share first tokens"):
        A.opener_token_ids(tok, refusal=("Sure thing",), compliance=("Sure",))


def test_masses_sum_to_one_and_match_direct_sum(tok, model):
    m = A.first_token_masses(model, tok, PROMPTS, batch_size=2)
    total = m["refusal"] + m["compliance"] + m["other"]
    np.testing.assert_allclose(total, 1.0, atol=1e-5)
    # direct recomputation from the full-sequence logits of one unpadded prompt
    tokens, mask = A.encode_prompts(tok, PROMPTS[:1], multiple=1)  # no padding
    assert mask.all()
    probs = np.asarray(jnp.exp(model(jnp.asarray(tokens)).logits[0, -1]))
    probs = probs / probs.sum()
    r, _ = A.opener_token_ids(tok)
    np.testing.assert_allclose(m["refusal"][0], probs[r].sum(), rtol=1e-4)


def test_prefix_moves_the_answer_position(tok, model):
    plain, pm = A.encode_prompts(tok, PROMPTS[:1], multiple=1)
    prefixed, qm = A.encode_prompts(tok, PROMPTS[:1], prefix="Let me think.", multiple=1)
    extra = tok("Let me think.", add_special_tokens=False)["input_ids"]
    assert prefixed.shape[1] == plain.shape[1] + len(extra)
    assert prefixed[0, -len(extra):].tolist() == extra
    bucketed, bm = A.encode_prompts(tok, PROMPTS[:1], prefix="Let me think.")
    assert bucketed.shape[1] % 32 == 0 and bm.sum() == qm.sum()
    assert bucketed[0, -len(extra):].tolist() == extra
    rows = A.first_token_table({"m": model}, tok, {"benign": PROMPTS},
                               {"none": None, "p": "Let me think."})
    assert [(r["prefix"], r["n"]) for r in rows] == [("none", 3), ("p", 3)]
    assert rows[0]["refusal"] != rows[1]["refusal"]


def test_logit_lens_last_layer_equals_model_logits(tok, model):
    tokens, mask = A.encode_prompts(tok, PROMPTS)  # left padding included
    graphdef, state = nnx.split(model)
    lens = A.logit_lens(graphdef, state, jnp.asarray(tokens), jnp.asarray(mask))
    assert lens.shape == (TINY.num_layers, len(PROMPTS), TINY.vocab_size)
    own = A.next_token_logprobs(graphdef, state, jnp.asarray(tokens), jnp.asarray(mask))
    np.testing.assert_allclose(np.asarray(lens[-1]), np.asarray(own), atol=1e-5)
    assert not np.allclose(np.asarray(lens[0]), np.asarray(own), atol=1e-3)


def test_rank_and_prob():
    lp = jnp.log(jnp.asarray([[[0.5, 0.3, 0.2]], [[0.1, 0.2, 0.7]]]))  # [L=2, B=1, V=3]
    rank, prob = A.rank_and_prob(lp, jnp.asarray([0, 2]))
    assert rank.tolist() == [[[0, 2]], [[2, 0]]]
    np.testing.assert_allclose(np.asarray(prob), [[[0.5, 0.2]], [[0.1, 0.7]]], rtol=1e-6)
    masses = A.lens_set_masses(lp, jnp.asarray([0]), jnp.asarray([1, 2]))
    np.testing.assert_allclose(np.asarray(masses["compliance"]), [[0.5], [0.9]], rtol=1e-6)


def test_mechanism_experiment_on_tiny_models(tmp_path, tok):
    """The CLI end to end on two tiny random checkpoints: results, plots, report."""
    import json

    from experiments import mechanism_analysis as exp
    from tests.pipeline_fixtures import save_tiny_model

    a = save_tiny_model(tmp_path / "a", tok)
    b = save_hf_like_other_seed(tmp_path / "b", tok)
    out = tmp_path / "mech"
    argv = ["--model", f"aligned={a}", "--model", f"finetuned={b}", "--n", "4",
            "--probe-steps", "20", "--prefix", "Let me check this is safe.", "--out", str(out)]
    assert exp.main(argv) == 0
    res = json.loads((out / "results.json").read_text())["analyses"]
    assert set(res) == {"aligned", "finetuned"}
    np.testing.assert_allclose(res["aligned"]["direction_cosine_vs_first"]["last"], 1.0,
                               rtol=1e-5)
    assert len(res["finetuned"]["probe_shift_harmful"]) == TINY.num_layers
    assert len(res["aligned"]["first_token"]) == 4  # harmful/benign x none/prefix
    for name in ("probe_accuracy", "logit_lens", "first_token", "probe_shift"):
        assert (out / "plots" / f"{name}.png").stat().st_size > 1000
    assert "Mechanism analysis" in (out / "report.md").read_text()
    assert exp.main(argv) == 2


def save_hf_like_other_seed(folder, tok):
    from research.models.checkpoints import save_hf_folder

    return save_hf_folder(init_decoder(TINY, seed=5), folder, tok)
