"""Vaccine step: rho = 0 is SFT, the perturbation has global norm rho over the batch,
the update is the gradient of the perturbed loss (finite differences in float64),
accumulation keeps one per-batch eps, accelerated tau = 1 is the plain step, accelerated
Vaccine keeps (and resumes) one eps per batch shape and its stage reports how often it
recomputed, and a bfloat16 model still feels an eps finer than bfloat16."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from research.models.transformer import init_decoder
from research.training.checkpointing import Checkpointer
from research.training.losses import sft_loss_sum
from research.training.loop import train
from research.training.state import init_train_state, split_model
from research.training.steps import make_sft_step
from research.training.vaccine import (EPS_SLOTS, VaccineState, batch_perturbation,
                                       make_accelerated_vaccine_step, make_vaccine_step,
                                       perturbation, vaccine_initial_state)
from tests.test_training_fixtures import TINY, ListIterator, make_batch, tiny_model


def _batch(rows: int = 4, length: int = 12, seed: int = 0) -> dict[str, jax.Array]:
    return {k: jnp.asarray(v) for k, v in make_batch(rows=rows, length=length,
                                                     seed=seed).items()}


def _live(params, scale: float = 0.05):
    """Non-zero adapters, so every LoRA matrix has gradient and eps matters."""
    keys = iter(jax.random.split(jax.random.key(1), len(jax.tree.leaves(params))))
    return jax.tree.map(lambda x: x + scale * jax.random.normal(next(keys), x.shape, x.dtype),
                        params)


def _leaves_equal(a, b) -> None:
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("per_layer", [False, True])
def test_rho_zero_gives_the_sft_update(per_layer):
    """Bit-equal on stacked weights. Per-layer (unrolled) programs are fused differently
    by XLA, so there the gradients agree to float32 rounding, checked through an SGD
    update (Adam's first step, g / (|g| + eps), blows rounding up on tiny gradients)."""
    graphdef, params, frozen = split_model(tiny_model(lora=False), "full", per_layer=per_layer)
    batch = _batch()
    opt = optax.sgd(1.0) if per_layer else optax.adamw(1e-2, weight_decay=0.1)
    sft = make_sft_step(graphdef, opt, donate=False)
    vac = make_vaccine_step(graphdef, opt, rho=0.0, donate=False)
    a, m_sft = sft(init_train_state(params, opt, seed=0), frozen, batch)
    b, m_vac = vac(init_train_state(params, opt, seed=0), frozen, batch)
    if per_layer:
        for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose([float(m_vac["loss"]), float(m_vac["clean_loss"])],
                                   float(m_sft["loss"]), rtol=1e-6)
    else:
        _leaves_equal(a.params, b.params)
        assert float(m_sft["loss"]) == float(m_vac["loss"]) == float(m_vac["clean_loss"])
    assert float(m_vac["eps_norm"]) == 0.0 and float(m_vac["site_grad_norm"]) > 0


def test_perturbation_has_global_norm_rho_over_the_batch():
    graphdef, params, frozen = split_model(tiny_model(lora=True), "lora")
    params, batch = _live(params), _batch(rows=4)
    perturb = jax.jit(lambda rho, site: batch_perturbation(params, frozen, graphdef, batch,
                                                           rho=rho, site=site)[0],
                      static_argnums=1)
    for rho in (0.01, 2.0, 10.0):
        eps = perturb(rho, "attn_out")
        assert eps.shape == (4, TINY.num_layers, 12, TINY.hidden_size)
        assert float(jnp.linalg.norm(eps.ravel())) == pytest.approx(rho, rel=1e-5)
        # one norm over the batch: rows' norms differ, and they are not each rho
        rows = jnp.linalg.norm(eps.reshape(4, -1), axis=1)
        assert float(rows.max() - rows.min()) > 1e-3 and float(rows.max()) < rho
    other = perturb(2.0, "resid_post")
    assert float(jnp.linalg.norm(other.ravel())) == pytest.approx(2.0, rel=1e-5)
    assert float(jnp.abs(other - perturb(2.0, "attn_out")).max()) > 1e-3
    # the direction of the site gradient (ascent), with the norm stats reports
    g = jax.random.normal(jax.random.key(0), (2, 3, 5, 7))
    eps = perturbation(g, 2.0)
    cos = jnp.vdot(eps, g) / (jnp.linalg.norm(eps.ravel()) * jnp.linalg.norm(g.ravel()))
    assert float(cos) == pytest.approx(1.0, abs=1e-6)


def test_accumulation_keeps_one_perturbation_per_batch():
    """A=2 microbatches of 2 rows give the eps and the update of one batch of 4."""
    graphdef, params, frozen = split_model(tiny_model(lora=True), "lora")
    params, batch, opt = _live(params), _batch(rows=4), optax.sgd(0.1)
    perturb = jax.jit(lambda accum: batch_perturbation(params, frozen, graphdef, batch,
                                                       rho=2.0, accum_steps=accum),
                      static_argnums=0)
    (eps1, s1), (eps2, s2) = perturb(1), perturb(2)
    np.testing.assert_allclose(np.asarray(eps1), np.asarray(eps2), atol=1e-6)
    assert float(s1["clean_loss_sum"]) == pytest.approx(float(s2["clean_loss_sum"]), rel=1e-5)
    one = make_vaccine_step(graphdef, opt, clip_norm=None, donate=False)
    two = make_vaccine_step(graphdef, opt, clip_norm=None, accum_steps=2, donate=False)
    a, ma = one(init_train_state(params, opt, seed=0), frozen, batch)
    b, mb = two(init_train_state(params, opt, seed=0), frozen, batch)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-6)
    assert float(ma["loss"]) == pytest.approx(float(mb["loss"]), rel=1e-5)


@pytest.fixture
def x64():
    """float64 for finite differences (float32 round-off swamps an h of 1e-7)."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)


def _mean_loss64(params, frozen, graphdef, batch, deltas):
    """Response-only mean cross-entropy, all in float64 (the reference for FD)."""
    model = nnx.merge(graphdef, params, frozen)
    logits = model(batch["tokens"], attention_mask=batch["attention_mask"],
                   deltas=deltas).logits[:, :-1].astype(jnp.float64)
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, batch["tokens"][:, 1:, None], axis=-1)[..., 0]
    w = (batch["loss_mask"][:, 1:] * batch["attention_mask"][:, 1:]).astype(jnp.float64)
    return jnp.sum(nll * w) / jnp.sum(w)


def test_update_matches_finite_differences_of_the_perturbed_loss(x64):
    """In float64 (h = 1e-7): eps is rho times the site gradient over its global norm,
    that gradient matches FD, and one SGD(lr=1) step moves the parameters by minus the
    FD gradient of the mean loss with eps held fixed at attn_out, along random directions.
    (The project's loss head is float32, so the FD reference is a float64 loss.)"""
    model = init_decoder(TINY, seed=0, compute_dtype=jnp.float64)
    graphdef, params, frozen = split_model(model, "full")
    to64 = lambda t: jax.tree.map(  # noqa: E731
        lambda x: x.astype(jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x, t)
    params, frozen = to64(params), to64(frozen)
    batch, rho, h, site = _batch(rows=3, length=10), 2.0, 1e-7, "attn_out"
    shape = (TINY.num_layers, 3, 10, TINY.hidden_size)
    loss = jax.jit(lambda p, delta: _mean_loss64(p, frozen, graphdef, batch, {site: delta}))

    eps = jnp.moveaxis(jax.jit(lambda p: batch_perturbation(
        p, frozen, graphdef, batch, rho=rho, site=site)[0])(params), 0, 1)
    assert eps.dtype == jnp.float64
    g = jax.grad(loss, argnums=1)(params, jnp.zeros(shape, jnp.float64))
    np.testing.assert_allclose(np.asarray(eps), np.asarray(rho * g / jnp.linalg.norm(g.ravel())),
                               rtol=1e-5, atol=1e-9)
    d = jax.random.normal(jax.random.key(3), shape, jnp.float64)
    fd_site = (float(loss(params, h * d)) - float(loss(params, -h * d))) / (2 * h)
    assert float(jnp.vdot(g, d)) == pytest.approx(fd_site, rel=1e-6)

    opt = optax.sgd(1.0)
    step = make_vaccine_step(graphdef, opt, rho=rho, site=site, clip_norm=None, donate=False)
    new, metrics = step(init_train_state(params, opt, seed=0), frozen, batch)
    moved = jax.tree.map(lambda a, b: a - b, params, new.params)  # = mean perturbed grad
    assert float(metrics["loss"]) == pytest.approx(float(loss(params, eps)), rel=1e-6)
    assert float(metrics["loss"]) > float(metrics["clean_loss"])  # ascent direction
    for seed in (4, 5):
        keys = iter(jax.random.split(jax.random.key(seed), len(jax.tree.leaves(params))))
        direction = jax.tree.map(lambda x: jax.random.normal(next(keys), x.shape, x.dtype),
                                 params)
        shift = lambda s: jax.tree.map(lambda p, v: p + s * h * v, params, direction)  # noqa
        fd = (float(loss(shift(1.0), eps)) - float(loss(shift(-1.0), eps))) / (2 * h)
        analytic = sum(float(jnp.vdot(m, v)) for m, v in
                       zip(jax.tree.leaves(moved), jax.tree.leaves(direction)))
        assert analytic == pytest.approx(fd, rel=1e-5)


def test_bad_options_are_named():
    graphdef, _, _ = split_model(tiny_model(lora=False), "full")
    opt = optax.sgd(0.1)
    with pytest.raises(ValueError, match="site"):
        make_vaccine_step(graphdef, opt, site="mlp_in")
    with pytest.raises(ValueError, match="rho"):
        make_vaccine_step(graphdef, opt, rho=-1.0)
    with pytest.raises(ValueError, match="tau"):
        make_accelerated_vaccine_step(graphdef, opt, tau=0)
    with pytest.raises(ValueError, match="eps_slots"):
        make_accelerated_vaccine_step(graphdef, opt, eps_slots=0)


def test_accelerated_variant_with_tau_one_equals_the_plain_one():
    graphdef, params, frozen = split_model(tiny_model(lora=True), "lora")
    batches = [_batch(seed=s) for s in range(3)]
    opt = optax.adam(1e-2)
    plain = make_vaccine_step(graphdef, opt, rho=2.0, donate=False)
    fast = make_accelerated_vaccine_step(graphdef, opt, rho=2.0, tau=1, donate=False)
    lazy = make_accelerated_vaccine_step(graphdef, opt, rho=2.0, tau=100, donate=False)
    a = b = c = init_train_state(params, opt, seed=0)
    recomputed = {"fast": [], "lazy": []}
    for batch in batches:
        a, _ = plain(a, frozen, batch)
        b, mb = fast(b, frozen, batch)
        c, mc = lazy(c, frozen, batch)
        recomputed["fast"].append(float(mb["eps_recomputed"]))
        recomputed["lazy"].append(float(mc["eps_recomputed"]))
    assert isinstance(b, VaccineState) and int(c.eps_age) == 3
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-6)
    assert recomputed == {"fast": [1.0] * 3, "lazy": [1.0, 0.0, 0.0]}
    gap = max(float(jnp.abs(x - y).max()) for x, y in
              zip(jax.tree.leaves(a.params), jax.tree.leaves(c.params)))
    assert gap > 1e-6  # reusing a stale eps is a different (cheaper) update
    # a batch of another shape starts a fresh eps of its own shape
    c, mc = lazy(c, frozen, _batch(rows=4, length=16))
    assert float(mc["eps_recomputed"]) == 1.0 and c.eps.shape[2] == 16
    assert lazy.jitted._cache_size() == 2  # one program per batch shape, as for SFT


L, D = TINY.num_layers, TINY.hidden_size
SHORT, LONG = (4, 12), (4, 16)  # two length buckets at batch 4


def _shaped(shape: tuple[int, int], seed: int) -> dict[str, jax.Array]:
    return _batch(rows=shape[0], length=shape[1], seed=seed)


@pytest.mark.parametrize("tau, expected, age", [(100, [1, 1, 0, 0, 0, 0], 3),
                                                (2, [1, 1, 0, 0, 1, 1], 1)])
def test_accelerated_vaccine_keeps_one_perturbation_per_batch_shape(tau, expected, age):
    """Alternating two shapes, each keeps its own eps and age: pass 1 runs once per
    shape per tau steps of that shape, not on every change of shape, and each shape's
    eps is the one computed on its own batches."""
    graphdef, params, frozen = split_model(tiny_model(lora=True), "lora")
    opt = optax.adam(1e-2)
    step = make_accelerated_vaccine_step(graphdef, opt, rho=2.0, tau=tau, donate=False)
    state, recomputed, first = init_train_state(params, opt, seed=0), [], {}
    for i, shape in enumerate([SHORT, LONG] * 3):
        state, metrics = step(state, frozen, _shaped(shape, seed=i))
        recomputed.append(float(metrics["eps_recomputed"]))
        first.setdefault(shape, state.eps)
        assert state.eps.shape == (shape[0], L, shape[1], D)  # the batch's slot is first
    assert recomputed == expected
    assert len(state.perturbations) == EPS_SLOTS
    ages = {p.eps.shape: int(p.age) for p in state.perturbations if p.eps.shape[0] > 1}
    assert ages == {(4, L, 12, D): age, (4, L, 16, D): age}  # each counts its own steps
    if tau == 100:  # reused, position by position, on later batches of its shape
        for p in state.perturbations[:2]:
            shape = (p.eps.shape[0], p.eps.shape[2])
            np.testing.assert_array_equal(np.asarray(p.eps), np.asarray(first[shape]))
            assert float(jnp.linalg.norm(p.eps.ravel())) == pytest.approx(2.0, rel=1e-5)
    assert step.jitted._cache_size() == 2  # one program per shape, whatever the slots


def test_more_shapes_than_slots_evict_the_least_recently_used():
    graphdef, params, frozen = split_model(tiny_model(lora=True), "lora")
    opt = optax.sgd(0.1)
    step = make_accelerated_vaccine_step(graphdef, opt, tau=100, eps_slots=2, donate=False)
    third = (4, 8)
    state, recomputed = init_train_state(params, opt, seed=0), []
    for i, shape in enumerate([SHORT, LONG, third, LONG, SHORT, third]):
        state, metrics = step(state, frozen, _shaped(shape, seed=i))
        recomputed.append(float(metrics["eps_recomputed"]))
    # the third shape evicts SHORT; SHORT back evicts the third (LONG was used since)
    assert recomputed == [1.0, 1.0, 1.0, 0.0, 1.0, 1.0]
    assert [p.eps.shape[2] for p in state.perturbations] == [8, 12]


def test_accelerated_vaccine_resumes_with_every_shapes_perturbation(tmp_path):
    """Interrupted after step 5 (checkpoint at 4), the resumed run restores both shapes'
    eps into the initial state's empty template: its steps 5 and 6 reuse them (no pass
    1), and it ends equal to the uninterrupted run, leaf for leaf."""
    graphdef, params, frozen = split_model(tiny_model(), "lora")
    opt = optax.adam(3e-2)
    step = make_accelerated_vaccine_step(graphdef, opt, rho=2.0, tau=100, eps_slots=3)
    batches = [make_batch(rows=4, length=n, seed=s) for s, n in enumerate((12, 16, 16, 12))]

    def fresh():
        return vaccine_initial_state(
            init_train_state(jax.tree.map(jnp.copy, params), opt, seed=0), 100, eps_slots=3)

    straight = train(step, fresh(), frozen, ListIterator(batches), num_steps=6,
                     metrics_path=tmp_path / "a" / "metrics.jsonl", progress=False)
    ckpt = Checkpointer(tmp_path / "b" / "ckpt", save_every=2)
    with pytest.raises(KeyboardInterrupt):
        train(step, fresh(), frozen, ListIterator(batches, fail_after=5), num_steps=6,
              metrics_path=tmp_path / "b" / "metrics.jsonl", checkpointer=ckpt,
              progress=False)
    assert ckpt.latest_step() == 4
    resumed = train(step, fresh(), frozen, ListIterator(batches), num_steps=6,
                    metrics_path=tmp_path / "b" / "metrics.jsonl", checkpointer=ckpt,
                    resume=True, progress=False)
    ckpt.close()
    assert [p.eps.shape for p in resumed.perturbations] == [
        (4, L, 16, D), (4, L, 12, D), (1, L, 1, D)]  # most recent first; one vacant
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(a, b)  # params, moments, every eps and age
    read = lambda f: [json.loads(x)["eps_recomputed"]  # noqa: E731
                      for x in f.read_text().splitlines()]
    assert read(tmp_path / "b" / "metrics.jsonl") == read(tmp_path / "a" / "metrics.jsonl") \
        == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]


def test_a_stage_reports_the_fraction_of_steps_that_recomputed(tokenizer, tmp_path):
    """Two length buckets over 6 steps at tau = 100: pass 1 runs once per shape."""
    from research.data.chat import format_examples
    from research.data.rows import Row
    from research.pipeline.stages import train_stage
    from tests.pipeline_fixtures import save_tiny_model, tiny_study_config

    rows = [Row(prompt=f"Question {i}: how do I do thing {i}?" + " Please." * (8 * (i % 2)),
                response=f"Answer {i}: do it.", kind="benign", source="toy", uid=f"toy:{i}")
            for i in range(8)]
    cfg = tiny_study_config(save_tiny_model(tmp_path / "model", tokenizer), tmp_path)
    examples, _ = format_examples(tokenizer, rows, max_length=128)
    short, long = (max(len(e) for e in examples[parity::2]) for parity in (0, 1))
    assert short < min(len(e) for e in examples[1::2])  # the odd rows fill a second bucket
    block = cfg.align
    block.update(method="vaccine", steps=6, save_every=0, max_length=128,
                 buckets=(short, long))
    block.method_config = ml_collections.ConfigDict(dict(rho=2.0, site="attn_out", tau=100,
                                                         remat=False))
    _, entry, summary = train_stage(
        label="align_vaccine", source=cfg.model.source, source_key="tiny", rows=rows,
        stage_cfg=block, model_cfg=cfg.model, cache_root=tmp_path / "cache", progress=False)
    lines = [json.loads(x) for x in (entry / "metrics.jsonl").read_text().splitlines()]
    assert sum(m["eps_recomputed"] for m in lines) == 2.0  # once per shape
    assert summary["eps_recomputed_fraction"] == pytest.approx(2 / 6, abs=1e-6)
    stored = json.loads((entry / "stage.json").read_text())["summary"]
    assert stored["eps_recomputed_fraction"] == summary["eps_recomputed_fraction"]


def test_a_perturbation_finer_than_bfloat16_still_acts():
    """In a bfloat16 model, an eps under a fifth of bfloat16's spacing at every
    activation (rounded away by a bfloat16 add, or by a float32 add rounded at the
    site, as the decoder did before) is added in float32, changes the loss, and its
    ascent direction raises it."""
    model = init_decoder(TINY, seed=0, compute_dtype=jnp.bfloat16)
    graphdef, params, frozen = split_model(model, "full")
    batch, site = _batch(rows=4, length=12), "attn_out"

    @jax.jit
    def forward(delta):
        out = nnx.merge(graphdef, params, frozen)(
            batch["tokens"], attention_mask=batch["attention_mask"], deltas={site: delta},
            capture=(site,), logits="none")
        loss_sum, aux = sft_loss_sum(params, frozen, graphdef, batch, deltas={site: delta})
        return out.captured[site], loss_sum / aux["tokens"]

    zeros = jnp.zeros((L, 4, 12, D), jnp.float32)
    clean, clean_loss = forward(zeros)
    act = clean.astype(jnp.bfloat16)
    # bfloat16 keeps 8 significant bits: its spacing at x exceeds |x| / 2^8, so an eps
    # below |x| / 2^9 (half that) rounds back to x, in bfloat16 or rounded after a
    # float32 add (eager ops, each rounding its result)
    grad = jax.grad(lambda d: forward(d)[1])(zeros)
    eps = jnp.sign(grad) * jnp.abs(clean) * 0.4 / 2**9
    assert bool(jnp.all(act + eps.astype(jnp.bfloat16) == act))
    assert bool(jnp.all((act.astype(jnp.float32) + eps).astype(jnp.bfloat16) == act))
    perturbed, loss = forward(eps)
    # the first layer's site is upstream of every eps: there it is clean + eps, in float32
    np.testing.assert_array_equal(np.asarray(perturbed[0]), np.asarray(clean[0] + eps[0]))
    assert float(loss) != float(clean_loss)
    assert float(loss) > float(clean_loss)


@pytest.mark.parametrize("tau", [1, 3])
def test_vaccine_is_the_registered_alignment_method(tau):
    from research.pipeline.registry import StepContext, get_method

    graphdef, params, frozen = split_model(tiny_model(lora=True), "lora")
    opt = optax.adamw(1e-3)
    method = ml_collections.ConfigDict({"rho": 2.0, "site": "attn_out", "tau": tau,
                                        "remat": False})
    step = get_method("vaccine")(StepContext(graphdef, opt, optax.constant_schedule(1e-3),
                                             method))
    state = init_train_state(params, opt, seed=0)
    for s in range(2):
        state, metrics = step(state, frozen, _batch(seed=s))
    assert int(state.step) == 2 and bool(metrics["finite"])
    assert float(metrics["eps_norm"]) == pytest.approx(2.0, rel=1e-5)
    assert float(metrics["loss"]) > float(metrics["clean_loss"]) if tau == 1 else True
    assert isinstance(state, VaccineState) == (tau > 1)
    if tau > 1:  # the registered initial state has the configured number of slots
        from research.pipeline.registry import build_method

        method.eps_slots = 3
        ctx = StepContext(graphdef, opt, optax.constant_schedule(1e-3), method)
        _, start = build_method("vaccine", ctx, params, 0)
        assert [p.eps.size for p in start.perturbations] == [0, 0, 0]
