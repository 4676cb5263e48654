"""Linear probes: separable data, shuffled labels, scikit-learn cross-check, directions."""

from __future__ import annotations

import numpy as np
import pytest

from research.analysis import probes as P


def synthetic(n: int = 200, d: int = 16, layers: int = 3, seed: int = 0):
    """Layer 0 carries no signal, layers 1.. separate the classes along one axis."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.normal(size=(layers, n, d)).astype(np.float32)
    for layer in range(1, layers):
        x[layer, :, 0] += 4.0 * (2 * y - 1)
    return x, y


def test_separable_high_accuracy_and_noise_layer_near_chance():
    x, y = synthetic()
    probe, acc = P.heldout_probe_accuracy(x, y, test_fraction=0.3, steps=200)
    assert acc["test"].shape == (3,)
    assert acc["test"][1] > 0.95 and acc["test"][2] > 0.95
    assert acc["test"][0] < 0.75


def test_shuffled_labels_give_chance():
    x, y = synthetic(n=400)
    shuffled = np.random.default_rng(1).permutation(y)
    _, acc = P.heldout_probe_accuracy(x, shuffled, test_fraction=0.5, steps=200, l2=1e-1)
    assert np.all(np.abs(acc["test"] - 0.5) < 0.15)


def test_matches_sklearn_logistic_regression():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(2)
    n, d = 120, 5
    x = rng.normal(size=(1, n, d)).astype(np.float32)
    y = (x[0] @ rng.normal(size=d) + 0.8 * rng.normal(size=n) > 0).astype(int)
    l2 = 0.05
    probe = P.train_probes(x, y, steps=2000, lr=0.02, l2=l2)
    z = (x[0] - x[0].mean(0)) / (x[0].std(0) + 1e-6)
    # sklearn minimises C * sum(loss) + ||w||^2 / 2, i.e. ours with l2 = 1 / (C n)
    ref = LogisticRegression(C=1.0 / (l2 * n), tol=1e-10, max_iter=10000).fit(z, y)
    np.testing.assert_allclose(np.asarray(probe.w[0]), ref.coef_[0], atol=2e-3)
    np.testing.assert_allclose(float(probe.b[0]), ref.intercept_[0], atol=2e-3)


def test_score_shift_direction_and_cosine():
    x, y = synthetic()
    probe = P.train_probes(x, y, steps=100)
    moved = x.copy()
    moved[:, :, 0] += 2.0  # towards class 1 on the separating axis
    shift = P.probe_score_shift(probe, x, moved)
    assert shift[1] > 0.5 and shift[2] > 0.5
    direction = P.refusal_direction(x[:, y == 1], x[:, y == 0])
    np.testing.assert_allclose(np.linalg.norm(direction, axis=-1), 1.0, rtol=1e-5)
    assert abs(direction[1, 0]) > 0.9
    cos = P.cosine_by_layer(direction, -direction)
    np.testing.assert_allclose(cos, -1.0, rtol=1e-5)
    proj = P.projection(x, direction)
    assert proj.shape == (3, 200) and proj[1, y == 1].mean() > proj[1, y == 0].mean()


def test_features_from_tiny_model_mean_pool_ignores_padding():
    from research.models.loading import embedded_folder, load_tokenizer
    from research.models.transformer import init_decoder
    from tests.pipeline_fixtures import TINY

    tok = load_tokenizer(embedded_folder("smollm2-135m-instruct"))
    model = init_decoder(TINY, seed=1)
    prompts = ["Hi", "A much longer question about how tides are created?"]
    both = P.collect_features(model, tok, prompts)
    alone = P.collect_features(model, tok, prompts[:1])
    assert both["mean"].shape == (TINY.num_layers, 2, TINY.hidden_size)
    np.testing.assert_allclose(both["mean"][:, 0], alone["mean"][:, 0], atol=1e-4)
    np.testing.assert_allclose(both["last"][:, 0], alone["last"][:, 0], atol=1e-4)
    with pytest.raises(AssertionError):
        P.probe_scores(P.train_probes(both["last"], np.array([0, 1]), steps=2),
                       both["last"][:1])
