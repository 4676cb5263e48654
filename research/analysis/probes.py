"""Linear probes on residual states and the difference-of-means refusal direction.

Why: if harmful and benign prompts are linearly separable at a layer, the model
represents "this is harmful" there; comparing checkpoints shows whether fine-tuning
erased that representation or only disconnected it from the refusal behaviour (the
probe still separates, the direction still points the same way, but the model
complies). A prefix that restores refusals should move prompts along the same axis.

All functions are pure: features come from `collect_features` over split model state,
probes for every layer train at once (`vmap` over the layer axis, `optax.adam`, full
batch, `lax.scan` over steps), features are standardized per layer with training-set
statistics that are stored with the probe.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from research.analysis.logits import encode_prompts

POOLINGS = ("last", "mean")


class Probe(NamedTuple):
    """Per-layer logistic regression on standardized features; all arrays lead with L."""

    w: jax.Array      # [L, D]
    b: jax.Array      # [L]
    mu: jax.Array     # [L, D] training mean
    sigma: jax.Array  # [L, D] training std


# --------------------------------------------------------------------------- features
@functools.partial(jax.jit, static_argnames=("graphdef",))
def pooled_features(graphdef: nnx.GraphDef, state: nnx.State, tokens: jax.Array,
                    mask: jax.Array) -> dict[str, jax.Array]:
    """resid_post per layer `[L, B, D]`: at the last position, and mean over real tokens."""
    model = nnx.merge(graphdef, state)
    out = model(tokens, attention_mask=mask, capture=("resid_post",), logits="none")
    resid = out.captured["resid_post"]                      # [L, B, T, D]
    chex.assert_rank(resid, 4)
    weights = mask.astype(resid.dtype)[None, :, :, None]    # [1, B, T, 1]
    mean = (resid * weights).sum(2) / jnp.maximum(weights.sum(2), 1.0)
    return {"last": resid[:, :, -1], "mean": mean}


def collect_features(model: Any, tokenizer: Any, prompts: Sequence[str], *,
                     prefix: str | None = None, prefix_mode: str = "assistant",
                     batch_size: int = 16) -> dict[str, np.ndarray]:
    """Features `[L, N, D]` of chat-templated prompts for both poolings."""
    graphdef, state = nnx.split(model)
    parts: dict[str, list[np.ndarray]] = {p: [] for p in POOLINGS}
    for start in range(0, len(prompts), batch_size):
        tokens, mask = encode_prompts(tokenizer, prompts[start:start + batch_size],
                                      prefix=prefix, prefix_mode=prefix_mode)
        feats = pooled_features(graphdef, state, jnp.asarray(tokens), jnp.asarray(mask))
        for p in POOLINGS:
            parts[p].append(np.asarray(feats[p]))
    return {p: np.concatenate(v, axis=1) for p, v in parts.items()}


# --------------------------------------------------------------------------- probes
def stratified_split(labels: np.ndarray, test_fraction: float, seed: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(train idx, test idx): each class split in the same proportion, seeded."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n_test = max(1, int(round(test_fraction * len(idx))))
        test.extend(idx[:n_test])
        train.extend(idx[n_test:])
    return np.sort(np.asarray(train, int)), np.sort(np.asarray(test, int))


def _fit_one(x: jax.Array, y: jax.Array, key: jax.Array, *, steps: int, lr: float,
             l2: float) -> tuple[jax.Array, jax.Array]:
    """One layer: minimise mean BCE + l2/2 ||w||^2 on `x [N, D]`, `y [N]` (0/1)."""
    params = {"w": 1e-3 * jax.random.normal(key, (x.shape[1],)), "b": jnp.zeros(())}
    opt = optax.adam(lr)

    def loss_fn(p):
        logits = x @ p["w"] + p["b"]
        return optax.sigmoid_binary_cross_entropy(logits, y).mean() + 0.5 * l2 * p["w"] @ p["w"]

    def step(carry, _):
        p, s = carry
        grads = jax.grad(loss_fn)(p)
        updates, s = opt.update(grads, s, p)
        return (optax.apply_updates(p, updates), s), None

    (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), None, length=steps)
    return params["w"], params["b"]


@functools.partial(jax.jit, static_argnames=("steps",))
def _fit_all(x: jax.Array, y: jax.Array, key: jax.Array, lr: float, l2: float, *,
             steps: int) -> tuple[jax.Array, jax.Array]:
    keys = jax.random.split(key, x.shape[0])
    fit = functools.partial(_fit_one, steps=steps, lr=lr, l2=l2)
    return jax.vmap(fit, in_axes=(0, None, 0))(x, y, keys)


def train_probes(features: np.ndarray | jax.Array, labels: np.ndarray | jax.Array, *,
                 steps: int = 300, lr: float = 0.05, l2: float = 1e-3, seed: int = 0) -> Probe:
    """Fit one logistic-regression probe per layer on `features [L, N, D]`, `labels [N]`."""
    x = jnp.asarray(features, jnp.float32)
    y = jnp.asarray(labels, jnp.float32)
    chex.assert_rank(x, 3)
    chex.assert_shape(y, (x.shape[1],))
    mu = x.mean(axis=1)
    sigma = x.std(axis=1) + 1e-6
    z = (x - mu[:, None]) / sigma[:, None]
    w, b = _fit_all(z, y, jax.random.key(seed), jnp.float32(lr), jnp.float32(l2), steps=steps)
    return Probe(w, b, mu, sigma)


def probe_scores(probe: Probe, features: np.ndarray | jax.Array) -> jax.Array:
    """Probe logits `[L, N]` (positive = the class labelled 1, e.g. harmful)."""
    x = jnp.asarray(features, jnp.float32)
    chex.assert_shape(x, (probe.w.shape[0], None, probe.w.shape[1]))
    z = (x - probe.mu[:, None]) / probe.sigma[:, None]
    return jnp.einsum("lnd,ld->ln", z, probe.w) + probe.b[:, None]


def probe_accuracy(probe: Probe, features: np.ndarray | jax.Array,
                   labels: np.ndarray | jax.Array) -> np.ndarray:
    """Accuracy `[L]` of each layer's probe."""
    pred = np.asarray(probe_scores(probe, features)) > 0
    return (pred == np.asarray(labels, bool)[None]).mean(axis=1)


def heldout_probe_accuracy(features: np.ndarray, labels: np.ndarray, *,
                           test_fraction: float = 0.3, seed: int = 0, **fit_kwargs: Any
                           ) -> tuple[Probe, dict[str, np.ndarray]]:
    """Train on a stratified split, report train and held-out accuracy `[L]`."""
    labels = np.asarray(labels)
    train, test = stratified_split(labels, test_fraction, seed)
    probe = train_probes(features[:, train], labels[train], seed=seed, **fit_kwargs)
    return probe, {"train": probe_accuracy(probe, features[:, train], labels[train]),
                   "test": probe_accuracy(probe, features[:, test], labels[test])}


def probe_score_shift(probe: Probe, without: np.ndarray, with_prefix: np.ndarray
                      ) -> np.ndarray:
    """Mean change `[L]` of the probe logit when the same prompts get the prefix."""
    chex.assert_equal_shape((jnp.asarray(without), jnp.asarray(with_prefix)))
    return np.asarray((probe_scores(probe, with_prefix) - probe_scores(probe, without))
                      .mean(axis=1))


# --------------------------------------------------------------------------- direction
def refusal_direction(harmful: np.ndarray, benign: np.ndarray) -> np.ndarray:
    """Difference of class means `[L, D]` (harmful minus benign), unit-normalized."""
    chex.assert_rank((harmful, benign), 3)
    d = np.asarray(harmful).mean(axis=1) - np.asarray(benign).mean(axis=1)
    return d / np.maximum(np.linalg.norm(d, axis=-1, keepdims=True), 1e-12)


def cosine_by_layer(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity `[L]` of two per-layer directions `[L, D]`."""
    chex.assert_equal_shape((a, b))
    num = (a * b).sum(-1)
    return num / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12)


def projection(features: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """Projection `[L, N]` of features `[L, N, D]` on a unit direction `[L, D]`."""
    return np.einsum("lnd,ld->ln", np.asarray(features), np.asarray(direction))
