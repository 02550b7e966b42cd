"""The embedded default data: deterministic, learnable, zero-shot safe."""

import numpy as np
import pytest

from common import metrics
from common.synthetic import make_synthetic


def test_deterministic_and_seed_dependent():
    a, b, c = make_synthetic("small", seed=3), make_synthetic("small", seed=3), make_synthetic("small", seed=4)
    np.testing.assert_array_equal(a.train.image, b.train.image)
    np.testing.assert_array_equal(a.test.labels, b.test.labels)
    assert not np.allclose(a.train.text, c.train.text)


def test_shapes_and_balance():
    ds = make_synthetic("small")
    assert (len(ds.train), len(ds.val), len(ds.test)) == (400, 100, 200)
    assert (ds.image_dim, ds.text_dim, ds.class_embeddings.shape) == (128, 64, (10, 32))
    assert np.bincount(ds.test.labels).tolist() == [20] * 10
    assert (ds.train.image >= -1.5).all() and len(ds.unseen_classes) == 5


def ridge_probe(x_train, y_train, x_test, n_classes, reg=1.0):
    x = np.hstack([x_train, np.ones((len(x_train), 1))])
    w = np.linalg.solve(x.T @ x + reg * np.eye(x.shape[1]), x.T @ np.eye(n_classes)[y_train])
    return (np.hstack([x_test, np.ones((len(x_test), 1))]) @ w).argmax(1)


def test_linear_probe_far_above_chance_in_both_modalities():
    ds = make_synthetic("small")
    for part in ("image", "text"):
        pred = ridge_probe(getattr(ds.train, part), ds.train.labels, getattr(ds.test, part), 10)
        accuracy = (pred == ds.test.labels).mean()
        assert accuracy > 0.45, (part, accuracy)  # chance 0.1


def test_raw_cross_modal_retrieval_is_near_chance():
    """Modalities live in unrelated spaces: retrieval must be learned."""
    ds = make_synthetic("small", image_dim=64)
    value = metrics.mean_average_precision(ds.test.image, ds.test.text, ds.test.labels, ds.test.labels)
    chance = metrics.expected_random_map(ds.test.labels, ds.test.labels)
    assert abs(value - chance) < 0.08


def test_unseen_classes_reachable_through_embeddings_only():
    ds = make_synthetic("small")
    zs = ds.zero_shot()
    assert not np.isin(zs.train.labels, ds.unseen_classes).any()
    assert not np.isin(zs.val.labels, ds.unseen_classes).any()
    assert set(zs.test_unseen.labels) == set(ds.unseen_classes.tolist())
    # regress image features onto class embeddings on seen classes; classify unseen test images
    # by their nearest unseen class embedding: transfer is far above chance (1/5)
    x, e = zs.train.image, ds.class_embeddings[zs.train.labels]
    xa = np.hstack([x, np.ones((len(x), 1))])
    w = np.linalg.solve(xa.T @ xa + 10 * np.eye(xa.shape[1]), xa.T @ e)
    pred = np.hstack([zs.test_unseen.image, np.ones((len(zs.test_unseen), 1))]) @ w
    unseen_emb = ds.class_embeddings[ds.unseen_classes]
    guess = ds.unseen_classes[(pred @ unseen_emb.T - 0.5 * (unseen_emb ** 2).sum(1)).argmax(1)]
    assert (guess == zs.test_unseen.labels).mean() > 0.4  # chance 0.2


def test_multilabel_variant():
    ds = make_synthetic("small", multilabel=True)
    assert ds.multilabel and ds.unseen_classes is None
    counts = ds.train.labels.sum(1)
    assert counts.min() >= 1 and counts.max() <= 3
    with pytest.raises(Exception, match="single-label datasets only"):
        ds.zero_shot()


def test_a_zero_shot_view_names_its_unseen_classes():
    ds = make_synthetic("small", seed=0)
    zs = ds.zero_shot()
    unseen = [int(c) for c in zs.unseen_classes]
    assert zs.describe() == f"unseen classes ({len(unseen)} of 10): {', '.join(map(str, unseen))}"
    names = [f"n{c}" for c in range(10)]
    assert zs.describe(names, limit=2) == (f"unseen classes ({len(unseen)} of 10): {unseen[0]} n{unseen[0]}, "
                                           f"{unseen[1]} n{unseen[1]}, ... ({len(unseen) - 2} more)")
