"""SFT step invariants: response-only loss, exact accumulation, trainable subsets, clipping."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from research.data.batches import with_loss_rows
from research.models.checkpoints import hf_state_from_model
from research.models.config import ModelConfig
from research.models.transformer import init_decoder
from research.training.losses import (hidden_nll_sum, masked_nll_sum, per_example_mean_nll,
                                      sft_loss_sum)
from research.training.optim import make_optimizer, make_schedule
from research.training.state import init_train_state, split_model
from research.training.steps import clip_by_global_norm, make_sft_step
from tests.test_training_fixtures import make_batch, tiny_model


def _optimizer(name: str, lr: float = 1e-2) -> optax.GradientTransformation:
    cfg = ml_collections.ConfigDict(dict(name=name, lr=lr, schedule="constant", warmup_steps=0,
                                         total_steps=10, weight_decay=0.1, momentum=0.9))
    return make_optimizer(cfg)


@jax.jit
def _forward_logits(model, ids, attention):
    return model(ids, attention_mask=attention).logits


def _hand_loss(logits: np.ndarray, batch: dict) -> float:
    """Mean cross-entropy over tokens t with loss_mask[t] = 1, predicted from t-1."""
    total, count = 0.0, 0
    for b in range(logits.shape[0]):
        for t in range(1, logits.shape[1]):
            if batch["loss_mask"][b, t]:
                row = logits[b, t - 1].astype(np.float64)
                log_z = np.log(np.exp(row - row.max()).sum()) + row.max()
                total += log_z - row[batch["tokens"][b, t]]
                count += 1
    return total / count


def test_loss_matches_hand_computation_over_response_tokens():
    model = tiny_model()
    batch = make_batch()
    logits = np.asarray(_forward_logits(model, batch["tokens"], batch["attention_mask"]))
    got = masked_nll_sum(jnp.asarray(logits), batch)
    assert got.tokens == batch["loss_mask"][:, 1:].sum()
    np.testing.assert_allclose(got.loss_sum / got.tokens, _hand_loss(logits, batch), rtol=1e-5)


def assert_gradient_only_where_a_response_token_is_predicted(grad, batch) -> None:
    """`grad [B, T, ...]` is zero at every position whose next token is a prompt (or no)
    token and nonzero at every position that predicts a response token."""
    per_position = np.abs(np.asarray(grad)).sum(-1)  # [B, T]
    predicts_response = np.zeros_like(per_position, bool)
    predicts_response[:, :-1] = np.asarray(batch["loss_mask"][:, 1:]) == 1
    assert (per_position[~predicts_response] == 0).all()
    assert (per_position[predicts_response] > 0).all()


def test_loss_mask_excludes_prompt_positions_from_the_gradient():
    batch = make_batch()
    logits = jax.random.normal(jax.random.key(0), (*batch["tokens"].shape, 128))
    grad = jax.grad(lambda lg: masked_nll_sum(lg, batch).loss_sum)(logits)
    assert_gradient_only_where_a_response_token_is_predicted(grad, batch)


def test_the_train_step_loss_is_the_response_only_loss():
    """`sft_loss_sum` (what `sft_step` differentiates) equals the hand loss over response
    tokens, and its head gives no gradient to positions that predict a prompt token."""
    model = tiny_model(lora=False)
    graphdef, params, frozen = split_model(model, "full")
    batch = {k: jnp.asarray(v) for k, v in make_batch().items()}
    loss_sum, aux = sft_loss_sum(params, frozen, graphdef, batch)
    logits = np.asarray(_forward_logits(model, batch["tokens"], batch["attention_mask"]))
    assert int(aux["tokens"]) == int(batch["loss_mask"][:, 1:].sum())
    np.testing.assert_allclose(loss_sum / aux["tokens"], _hand_loss(logits, batch), rtol=1e-5)

    hidden = model(batch["tokens"], attention_mask=batch["attention_mask"]).hidden
    grad = jax.grad(lambda h: hidden_nll_sum(model, h, batch).loss_sum)(hidden)
    assert_gradient_only_where_a_response_token_is_predicted(grad, batch)


def test_loss_rows_give_the_same_loss_and_gradients_as_every_position():
    """Unembedding only the `loss_rows` positions changes nothing but the work; rows that
    miss a response token make the loss NaN rather than dropping it."""
    graphdef, params, frozen = split_model(tiny_model(lora=False), "full")
    batch = make_batch(rows=8, length=48)
    batch["loss_mask"][:, :24] = 0  # responses of at most 24 tokens, some rows none
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    rows = with_loss_rows(batch)
    assert rows["loss_rows"].shape == (8, 32)  # 32 of the 47 predicting positions
    value_and_grad = jax.jit(jax.value_and_grad(
        lambda p, b: sft_loss_sum(p, frozen, graphdef, b), has_aux=True))
    (loss, aux), grads = value_and_grad(params, batch)
    (loss_r, aux_r), grads_r = value_and_grad(params, rows)
    np.testing.assert_allclose(loss_r, loss, rtol=1e-6)
    assert aux_r["tokens"] == aux["tokens"]
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_r)):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)

    cut = rows["loss_rows"].copy()
    cut[np.argmin(cut[:, 0]), 0] = 47  # a row with a response loses its first position
    assert np.isnan(value_and_grad(params, dict(rows, loss_rows=cut))[0][0])


def test_per_example_mean_matches_single_example_losses():
    batch = make_batch(rows=4)
    logits = jax.random.normal(jax.random.key(1), (*batch["tokens"].shape, 128))
    means, counts = per_example_mean_nll(logits, batch)
    for b in range(4):
        one = {k: v[b:b + 1] for k, v in batch.items()}
        single = masked_nll_sum(logits[b:b + 1], one)
        np.testing.assert_allclose(means[b], single.loss_sum / single.tokens, rtol=1e-6)
        assert counts[b] == single.tokens


def test_accumulation_4x2_equals_batch_8():
    """Uneven response lengths per row: only token-count weighting makes this exact."""
    model = tiny_model(lora=False)
    graphdef, params, frozen = split_model(model, "full")
    opt = _optimizer("adamw")
    batch = {k: jnp.asarray(v) for k, v in make_batch(rows=8).items()}
    results = []
    for accum in (1, 4):  # the accumulated run reads the loss through loss_rows
        step = make_sft_step(graphdef, opt, accum_steps=accum, clip_norm=None, donate=False)
        state = init_train_state(params, opt, seed=0)
        for _ in range(2):
            state, metrics = step(state, frozen, batch if accum == 1 else with_loss_rows(batch))
        results.append((state.params, metrics))
    (p1, m1), (p4, m4) = results
    np.testing.assert_allclose(m1["loss"], m4["loss"], atol=1e-5)
    np.testing.assert_allclose(m1["grad_norm"], m4["grad_norm"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p4)):
        np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("remat", [False, True])
def test_per_layer_step_equals_the_scan_and_holds_no_more_memory(remat):
    """Full FT defaults to per-layer weights. Its step must give the scanned step's
    update, and its checkpointed layers must recompute in the backward pass, not all
    at once during the forward (XLA:CPU drops JAX's barriers; with them as the only
    guard this model's step held 3.7x the scan's temporaries)."""
    cfg = ModelConfig(vocab_size=97, hidden_size=64, intermediate_size=256, num_layers=6,
                      num_heads=4, num_kv_heads=2, head_dim=16)
    batch = {k: jnp.asarray(v) for k, v in make_batch(rows=4, length=64).items()}
    batch["tokens"] = batch["tokens"] % cfg.vocab_size
    opt = optax.sgd(0.5)
    updated, temps = [], []
    for per_layer in (False, True):
        model = init_decoder(cfg, seed=1)
        graphdef, params, frozen = split_model(model, "full", per_layer=per_layer)
        assert model.per_layer == per_layer
        step = make_sft_step(graphdef, opt, clip_norm=None, remat=remat, donate=False)
        state = init_train_state(params, opt, seed=0)
        compiled = step.lower(state, frozen, batch).compile()
        temps.append(compiled.memory_analysis().temp_size_in_bytes)
        state, _ = compiled(state, frozen, batch)
        updated.append(hf_state_from_model(nnx.merge(graphdef, state.params, frozen)))
    stacked, per_layer = updated
    for name in stacked:
        np.testing.assert_allclose(per_layer[name], stacked[name], rtol=1e-5, atol=1e-6,
                                   err_msg=name)
    assert temps[1] <= 1.05 * temps[0], temps


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_only_the_configured_subset_changes(mode):
    model = tiny_model(lora=True)
    graphdef, params, frozen = split_model(model, mode)
    assert model.per_layer == (mode == "full")  # LoRA keeps the scan (split_model)
    names = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)}
    assert all(("lora_" in n) == (mode == "lora") for n in names)
    opt = _optimizer("adamw")
    step = make_sft_step(graphdef, opt, donate=False)
    batch = {k: jnp.asarray(v) for k, v in make_batch().items()}
    state, _ = step(init_train_state(params, opt, 0), frozen, batch)
    moved = [not np.allclose(a, b) for a, b in zip(jax.tree.leaves(params),
                                                    jax.tree.leaves(state.params))]
    assert any(moved)


def test_clipping_scales_to_the_global_norm():
    grads = {"a": jnp.array([3.0, 0.0]), "b": jnp.array([[4.0]])}  # global norm 5
    clipped, norm = clip_by_global_norm(grads, 1.0)
    np.testing.assert_allclose(norm, 5.0)
    np.testing.assert_allclose(clipped["a"], [0.6, 0.0], rtol=1e-6)
    np.testing.assert_allclose(clipped["b"], [[0.8]], rtol=1e-6)
    same, _ = clip_by_global_norm(grads, 10.0)
    np.testing.assert_allclose(same["a"], grads["a"])


def test_schedules_warm_up_then_decay():
    base = dict(name="adamw", lr=1.0, warmup_steps=10, total_steps=110)
    cosine = make_schedule(ml_collections.ConfigDict({**base, "schedule": "cosine"}))
    linear = make_schedule(ml_collections.ConfigDict({**base, "schedule": "linear"}))
    const = make_schedule(ml_collections.ConfigDict({**base, "schedule": "constant"}))
    for sched in (cosine, linear, const):
        np.testing.assert_allclose([sched(0), sched(5), sched(10)], [0.0, 0.5, 1.0], atol=1e-6)
    np.testing.assert_allclose(cosine(60), 0.5, atol=1e-6)
    np.testing.assert_allclose(linear(60), 0.5, atol=1e-6)
    np.testing.assert_allclose([cosine(110), linear(110), const(110)], [0, 0, 1], atol=1e-6)
    ratio = make_schedule(ml_collections.ConfigDict(dict(lr=1.0, warmup_ratio=0.1,
                                                         total_steps=100, schedule="linear")))
    np.testing.assert_allclose(ratio(10), 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="schedule"):
        make_schedule(ml_collections.ConfigDict({**base, "schedule": "step"}))


def test_adamw_skips_weight_decay_on_norms():
    graphdef, params, frozen = split_model(tiny_model(lora=False), "full")
    cfg = ml_collections.ConfigDict(dict(name="adamw", lr=0.1, schedule="constant",
                                         warmup_steps=0, total_steps=1, weight_decay=1.0))
    opt = make_optimizer(cfg)
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, _ = opt.update(zero, opt.init(params), params)
    for i in range(len(params["layers"])):  # per-layer weights (split_model's layout)
        assert np.all(np.asarray(updates["layers"][i]["attn_norm"][...]) == 0)
        np.testing.assert_allclose(updates["layers"][i]["w_q"][...],
                                   -0.1 * params["layers"][i]["w_q"][...], rtol=1e-6)
