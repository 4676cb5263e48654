"""Decoder invariants on tiny random models: cache, padding, LoRA, sites, round trips."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.models import (KVCache, LoRAConfig, LoRAParam, ModelConfig, init_decoder,
                             unstack_layers)
from research.models.checkpoints import (CheckpointError, hf_state_from_model,
                                         load_hf_folder, save_hf_folder)
from research.models.config import ConfigError
from research.models.generate import generate_ids
from research.models.lora import merge_lora

jax.config.update("jax_enable_x64", False)
TINY = ModelConfig(vocab_size=97, hidden_size=32, intermediate_size=48, num_layers=3,
                   num_heads=4, num_kv_heads=2, head_dim=8, eos_token_id=2)
TOKENS = jnp.asarray(np.random.default_rng(0).integers(3, 97, size=(2, 9)))


def randomize_lora(model, seed=1):
    """Non-zero B matrices, so LoRA really changes the function."""
    keys = iter(jax.random.split(jax.random.key(seed), 64))
    for name in model.lora_config.targets:
        b = getattr(model.layers, f"lora_{name}_b")
        b.set_value(0.1 * jax.random.normal(next(keys), b.get_value().shape))


def test_cache_prefill_then_decode_equals_full_forward():
    model = init_decoder(TINY)
    full = model(TOKENS).logits
    cache = KVCache.init(TINY, 2, 12)
    first = model(TOKENS[:, :5], cache=cache)
    rest = model(TOKENS[:, 5:], cache=first.cache)
    assert np.abs(np.asarray(rest.logits - full[:, 5:])).max() < 1e-5
    assert int(rest.cache.index) == 9


def test_unrolled_layers_equal_the_scan_with_and_without_a_cache():
    model = init_decoder(TINY, seed=2)
    layers = model.layer_list()
    scanned = model(TOKENS, capture=("resid_post",))
    unrolled = model(TOKENS, capture=("resid_post",), layers=layers)
    assert np.abs(np.asarray(unrolled.logits - scanned.logits)).max() < 1e-5
    assert np.abs(np.asarray(unrolled.captured["resid_post"]
                             - scanned.captured["resid_post"])).max() < 1e-5
    stacked = KVCache.init(TINY, 2, 12)
    cache = KVCache.init(TINY, 2, 12, per_layer=True)
    assert len(cache.k) == TINY.num_layers and cache.k[0].shape == stacked.k.shape[1:]
    first = model(TOKENS[:, :5], cache=cache, layers=layers)
    assert np.abs(np.asarray(first.logits - scanned.logits[:, :5])).max() < 1e-5
    rest = model(TOKENS[:, 5:], cache=first.cache, layers=layers)
    assert np.abs(np.asarray(rest.logits - scanned.logits[:, 5:])).max() < 1e-5
    assert isinstance(rest.cache.k, tuple) and int(rest.cache.index) == 9


def test_per_layer_model_computes_the_stacked_model_and_exports_alike():
    lora = LoRAConfig(rank=4, alpha=8.0, targets=("q", "down"))
    stacked = init_decoder(TINY, seed=7, lora=lora)
    randomize_lora(stacked)
    model = init_decoder(TINY, seed=7, lora=lora)
    randomize_lora(model)
    assert unstack_layers(model) is model and model.per_layer and not stacked.per_layer
    assert len(model.layers) == TINY.num_layers
    layer = model.layers[1]
    assert isinstance(layer.lora_q_a, LoRAParam) and not isinstance(layer.w_q, LoRAParam)
    assert layer.w_q.get_value().shape == (TINY.hidden_size, TINY.num_heads * TINY.head_dim)

    a = stacked(TOKENS, capture=("mlp_out",))
    b = model(TOKENS, capture=("mlp_out",))
    assert np.abs(np.asarray(a.logits - b.logits)).max() < 1e-5
    assert np.abs(np.asarray(a.captured["mlp_out"] - b.captured["mlp_out"])).max() < 1e-5
    # the gradient with respect to a site's delta (Vaccine, drift) is the same too
    delta = jnp.zeros((TINY.num_layers, *TOKENS.shape, TINY.hidden_size))
    site_grad = lambda m: jax.grad(lambda d: jnp.sum(m(TOKENS, deltas={"attn_out": d})
                                                     .logits ** 2))(delta)
    assert np.abs(np.asarray(site_grad(stacked) - site_grad(model))).max() < 1e-4

    exported, reference = hf_state_from_model(model), hf_state_from_model(stacked)
    assert exported.keys() == reference.keys()
    for name in reference:
        np.testing.assert_allclose(exported[name], reference[name], rtol=1e-6, atol=1e-7)
    prompt = [[int(t) for t in TOKENS[0, :6]]]
    assert (generate_ids(model, prompt, max_new_tokens=6, eos_ids=[])
            == generate_ids(stacked, prompt, max_new_tokens=6, eos_ids=[]))
    before = model(TOKENS).logits
    merge_lora(model)
    assert np.abs(np.asarray(model(TOKENS, lora_enabled=False).logits - before)).max() < 1e-5
    with pytest.raises(ValueError, match="before unstack_layers"):
        from research.models.lora import attach_lora
        attach_lora(unstack_layers(init_decoder(TINY)), LoRAConfig(rank=2))


def test_kv_cache_decoding_equals_no_cache_argmax_decoding():
    model = init_decoder(TINY, seed=3)
    prompt = [int(t) for t in TOKENS[0, :6]]
    cached = generate_ids(model, [prompt], max_new_tokens=10, eos_ids=[])[0]
    seq = list(prompt)
    for _ in range(10):  # reference: full recomputation, no cache
        seq.append(int(jnp.argmax(model(jnp.asarray([seq])).logits[0, -1])))
    assert cached == seq[len(prompt):]


def test_left_padding_does_not_change_a_sequence():
    model = init_decoder(TINY, seed=4)
    short, long_ = [5, 6, 7], [8, 9, 10, 11, 12, 13, 14]
    alone = generate_ids(model, [short], max_new_tokens=8, eos_ids=[])[0]
    batched = generate_ids(model, [long_, short], max_new_tokens=8, eos_ids=[])
    assert batched[1] == alone
    padded = jnp.asarray([[0, 0, 0, 0] + short])
    mask = jnp.asarray([[0, 0, 0, 0, 1, 1, 1]], bool)
    a = model(padded, attention_mask=mask).logits[0, 4:]
    b = model(jnp.asarray([short])).logits[0]
    assert np.abs(np.asarray(a - b)).max() < 1e-5


def test_lora_with_zero_b_equals_base_model():
    base = init_decoder(TINY, seed=5)
    adapted = init_decoder(TINY, seed=5, lora=LoRAConfig(rank=4))
    assert np.abs(np.asarray(base(TOKENS).logits - adapted(TOKENS).logits)).max() == 0.0


def test_lora_changes_output_and_switches_off():
    base = init_decoder(TINY, seed=5)
    model = init_decoder(TINY, seed=5, lora=LoRAConfig(rank=4, targets=("q", "v", "down")))
    randomize_lora(model)
    on, off = model(TOKENS).logits, model(TOKENS, lora_enabled=False).logits
    assert np.abs(np.asarray(on - off)).max() > 1e-3
    assert np.abs(np.asarray(off - base(TOKENS).logits)).max() == 0.0


def test_merged_equals_unmerged():
    model = init_decoder(TINY, seed=6, lora=LoRAConfig(rank=4, alpha=8.0))
    randomize_lora(model)
    before = model(TOKENS).logits
    merge_lora(model)
    assert np.abs(np.asarray(model(TOKENS).logits - before)).max() < 1e-5
    assert np.abs(np.asarray(model(TOKENS, lora_enabled=False).logits - before)).max() < 1e-5


def test_lora_params_are_the_trainable_subset():
    from flax import nnx

    model = init_decoder(TINY, lora=LoRAConfig(rank=2, targets=("q", "k")))
    lora_state = nnx.state(model, LoRAParam)
    names = {str(path[-1]) for path, _ in nnx.to_flat_state(lora_state)}
    assert names == {"lora_q_a", "lora_q_b", "lora_k_a", "lora_k_b"}


@pytest.mark.parametrize("site", ["attn_out", "mlp_out", "resid_post"])
def test_grad_wrt_site_delta_matches_finite_difference(site):
    jax.config.update("jax_enable_x64", True)
    try:
        model = init_decoder(TINY, seed=7)
        from flax import nnx

        graphdef, state = nnx.split(model)
        state = jax.tree.map(lambda x: x.astype(jnp.float64), state)
        model64 = nnx.merge(graphdef, state)
        model64.compute_dtype = jnp.float64
        shape = (TINY.num_layers, 2, 9, TINY.hidden_size)

        def loss(delta):
            out = model64(TOKENS, deltas={site: delta})
            return jnp.sum(jax.nn.log_softmax(out.logits.astype(jnp.float64))[..., 0])

        zero = jnp.zeros(shape, jnp.float64)
        grad = jax.grad(loss)(zero)
        direction = jax.random.normal(jax.random.key(0), shape, jnp.float64)
        h = 1e-7  # float64: truncation error O(h^2) stays far below the tolerance
        fd = (loss(h * direction) - loss(-h * direction)) / (2 * h)
        assert abs(float(jnp.vdot(grad, direction)) - float(fd)) < 1e-6 * max(1.0, abs(float(fd)))
    finally:
        jax.config.update("jax_enable_x64", False)


def test_capture_returns_stacked_sites_and_delta_is_added():
    model = init_decoder(TINY)
    out = model(TOKENS, capture=("attn_out", "resid_post"))
    assert out.captured["attn_out"].shape == (3, 2, 9, 32)
    delta = jnp.zeros((3, 2, 9, 32)).at[1].set(1.0)
    moved = model(TOKENS, deltas={"attn_out": delta}, capture=("attn_out",))
    diff = moved.captured["attn_out"] - out.captured["attn_out"]
    assert np.allclose(np.asarray(diff[1]), 1.0, atol=1e-5)
    assert np.abs(np.asarray(diff[0])).max() == 0.0
    with pytest.raises(ValueError, match="unknown activation site"):
        model(TOKENS, capture=("mlp_in",))


def test_last_resid_post_through_final_norm_is_the_logits():
    model = init_decoder(TINY)
    out = model(TOKENS, capture=("resid_post",))
    lens = model.unembed(model.normalize(out.captured["resid_post"][-1]))
    assert np.abs(np.asarray(lens - out.logits)).max() < 1e-5


def test_bfloat16_compute_stays_close_to_float32():
    model = init_decoder(TINY, seed=8)
    f32 = model(TOKENS).logits
    model.compute_dtype = jnp.bfloat16
    bf16 = model(TOKENS).logits
    assert bf16.dtype == jnp.float32
    assert np.abs(np.asarray(bf16 - f32)).max() < 0.05


def test_export_round_trip_keeps_logits_identical(tmp_path):
    model = init_decoder(TINY.replace(attention_bias=True, model_type="qwen2"), seed=9,
                         lora=LoRAConfig(rank=2))
    randomize_lora(model)
    save_hf_folder(model, tmp_path)
    loaded = load_hf_folder(tmp_path)
    assert np.abs(np.asarray(loaded(TOKENS).logits - model(TOKENS).logits)).max() < 1e-5


def test_missing_and_misshapen_tensors_are_named(tmp_path):
    from safetensors.numpy import load_file, save_file

    save_hf_folder(init_decoder(TINY), tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    del state["model.layers.1.mlp.up_proj.weight"]
    state["model.layers.0.self_attn.k_proj.weight"] = np.zeros((3, 3), np.float32)
    state["model.extra.weight"] = np.zeros(1, np.float32)
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError) as err:
        load_hf_folder(tmp_path)
    message = str(err.value)
    assert "missing tensors: model.layers.1.mlp.up_proj.weight" in message
    assert "model.layers.0.self_attn.k_proj.weight: expected (16, 32), found (3, 3)" in message
    assert "unexpected tensors: model.extra.weight" in message


def test_unsupported_architecture_and_bad_fields_are_named(tmp_path):
    import json

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ConfigError, match="model_type.*gpt2"):
        load_hf_folder(tmp_path)
    hf = TINY.to_hf_dict()
    del hf["intermediate_size"]
    (tmp_path / "config.json").write_text(json.dumps(hf))
    with pytest.raises(ConfigError, match="'intermediate_size' is missing"):
        load_hf_folder(tmp_path)
    hf = TINY.to_hf_dict() | {"rope_scaling": {"rope_type": "yarn", "factor": 2.0}}
    (tmp_path / "config.json").write_text(json.dumps(hf))
    with pytest.raises(ConfigError, match="yarn"):
        load_hf_folder(tmp_path)


def test_sharded_safetensors_folder_loads(tmp_path):
    import json

    from safetensors.numpy import load_file, save_file

    model = init_decoder(TINY, seed=10)
    save_hf_folder(model, tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    (tmp_path / "model.safetensors").unlink()
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[::2],
              "model-00002-of-00002.safetensors": keys[1::2]}
    for file, names in shards.items():
        save_file({k: state[k] for k in names}, str(tmp_path / file))
    weight_map = {k: f for f, names in shards.items() for k in names}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    loaded = load_hf_folder(tmp_path)
    assert np.abs(np.asarray(loaded(TOKENS).logits - model(TOKENS).logits)).max() == 0.0


def test_sampling_is_reproducible_and_seed_dependent():
    model = init_decoder(TINY, seed=11)
    prompts = [[5, 6, 7], [9, 10]]
    key = jax.random.key(3)
    a = generate_ids(model, prompts, max_new_tokens=12, temperature=1.0, top_p=0.9, key=key,
                     eos_ids=[])
    b = generate_ids(model, prompts, max_new_tokens=12, temperature=1.0, top_p=0.9, key=key,
                     eos_ids=[])
    c = generate_ids(model, prompts, max_new_tokens=12, temperature=1.0, top_p=0.9,
                     key=jax.random.key(4), eos_ids=[])
    assert a == b and a != c


def test_stops_per_sequence_at_eos():
    model = init_decoder(TINY, seed=12)
    prompts = [[5, 6, 7], [9, 10, 11, 12]]
    free = generate_ids(model, prompts, max_new_tokens=6, eos_ids=[])
    stop = free[0][2]  # pretend the third token of sequence 0 is EOS
    stopped = generate_ids(model, prompts, max_new_tokens=6, eos_ids=[stop])
    assert stopped[0] == free[0][:free[0].index(stop)]
    other = free[1][:free[1].index(stop)] if stop in free[1] else free[1]
    assert stopped[1] == other


def test_top_p_keeps_only_the_nucleus():
    from research.models.generate import sample_token

    logits = jnp.log(jnp.asarray([[0.6, 0.3, 0.05, 0.05]]))
    draws = jax.vmap(lambda k: sample_token(logits, k, jnp.float32(1.0), jnp.float32(0.8),
                                            False))(jax.random.split(jax.random.key(0), 300))
    assert set(np.asarray(draws).ravel().tolist()) == {0, 1}


def test_new_prompt_lengths_in_one_bucket_reuse_the_compiled_program():
    from research.models.generate import _generate_jit

    model = init_decoder(TINY, seed=13)
    generate_ids(model, [[5, 6, 7], [8]], max_new_tokens=4, eos_ids=[], batch_size=2)
    compiled = _generate_jit._cache_size()
    generate_ids(model, [[5, 6, 7, 8, 9], [4] * 11], max_new_tokens=4, eos_ids=[], batch_size=2)
    assert _generate_jit._cache_size() == compiled
    generate_ids(model, [[5] * 40, [6] * 33, [7]], max_new_tokens=4, eos_ids=[], batch_size=2)
    assert _generate_jit._cache_size() == compiled + 1  # only the 48-token bucket is new
