"""common.metrics against hand-computed values (from the specs) and a brute-force reference."""

import numpy as np
import pytest

from common import metrics


def brute_force_ap(query, gallery, ql, gl, k=None, distance="cosine"):
    """Plain loops in float64: the reference every vectorised metric must match."""
    q, g = np.asarray(query, np.float64), np.asarray(gallery, np.float64)
    aps, totals = [], []
    for i in range(len(q)):
        if distance == "cosine":
            nq = q[i] / (np.linalg.norm(q[i]) or 1.0)
            ng = g / np.where(np.linalg.norm(g, axis=1, keepdims=True) == 0, 1.0,
                              np.linalg.norm(g, axis=1, keepdims=True))
            d = 1.0 - ng @ nq
        elif distance == "euclidean":
            d = np.linalg.norm(g - q[i], axis=1)
        else:
            bq, bg = np.where(q[i] >= 0, 1, -1), np.where(g >= 0, 1, -1)
            d = (bg != bq).sum(axis=1).astype(np.float64)
        order = np.argsort(d, kind="stable")
        depth = len(g) if k is None else min(k, len(g))
        hits, precs = 0, []
        for r, j in enumerate(order[:depth], 1):
            rel = (gl[j] == ql[i]) if np.ndim(ql) == 1 else (np.dot(gl[j], ql[i]) > 0)
            if rel:
                hits += 1
                precs.append(hits / r)
        aps.append(np.mean(precs) if precs else 0.0)
        totals.append(sum(((gl[j] == ql[i]) if np.ndim(ql) == 1 else np.dot(gl[j], ql[i]) > 0)
                          for j in range(len(g))))
    return np.asarray(aps), np.asarray(totals)


# ---------------------------------------------------------------- hand-computed values from the specs

def test_acmr_worked_value_map_at_50_and_2():
    # acmr.md §6.4
    d = [[0.1, 0.5, 0.3, 0.9], [0.4, 0.2, 0.8, 0.6], [0.7, 0.6, 0.5, 0.1]]
    assert metrics.map_from_distances(d, [1, 2, 3], [1, 2, 1, 2], k=50) == pytest.approx(0.611111, abs=1e-6)
    assert metrics.map_from_distances(d, [1, 2, 3], [1, 2, 1, 2], k=2) == pytest.approx(0.666667, abs=1e-6)


def test_jfse_worked_value():
    # jfse.md §6
    d = [[0.1, 0.2, 0.3], [0.3, 0.1, 0.2]]
    assert metrics.map_from_distances(d, [0, 1], [1, 0, 0]) == pytest.approx(0.458333, abs=1e-6)


def test_hashing_hand_example_and_ties():
    # cmhash.md §10 tests 6 and 7
    db = np.array([[1, 1, 1, 1], [1, 1, 1, -1], [1, 1, -1, -1], [1, -1, -1, -1]])
    dl = np.array([[1, 0], [0, 1], [1, 1], [0, 1]])
    q = np.array([[1, 1, 1, 1], [-1, -1, -1, -1]])
    value, excluded = metrics.hashing_map(q, db, np.array([[1, 0], [0, 1]]), dl)
    assert value == pytest.approx(11 / 12, abs=1e-6) and excluded == 0
    db = np.array([[1, 1, 1, -1], [1, 1, -1, 1], [1, 1, 1, 1]])
    dl = np.array([[0, 1], [1, 0], [1, 1]])
    value, excluded = metrics.hashing_map(np.array([[1, 1, 1, 1]]), db, np.array([[1, 0]]), dl)
    assert value == pytest.approx(5 / 6, abs=1e-6) and excluded == 0
    value, excluded = metrics.hashing_map(np.array([[1, 1, 1, 1], [1, -1, 1, -1]]), db,
                                          np.array([[1, 0], [0, 0]]), dl)
    assert value == pytest.approx(5 / 6, abs=1e-6) and excluded == 1


def test_hamming_sign_zero_is_plus_one():
    q = np.array([[0.0, -0.0, 1.0]])
    g = np.array([[1.0, 1.0, 1.0], [-1.0, -1.0, 1.0]])
    stats = metrics.ranking_stats(q, g, [0], [0, 1], distance="hamming", return_topk=True)
    assert stats.topk_indices[0].tolist() == [0, 1]


def test_zscrgan_precision_macro_over_classes():
    # zscrgan.md §10: gallery [A, B, A, B]; q0 (A) -> [A, A], q1 (A) -> [B, A], q2 (B) -> [A, A]
    gallery = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], np.float32)
    gl = np.array([0, 1, 0, 1])
    queries = np.array([[1, 0, 0.9, 0], [0, 1, 0.5, 0], [1, 0, 0.9, 0]], np.float32)
    value, top = metrics.zscrgan_precision_at_k(queries, gallery, np.array([0, 0, 1]), gl, k=2)
    assert top.tolist() == [[0, 2], [1, 2], [0, 2]]
    assert value == pytest.approx(0.375)
    # a gallery smaller than K divides by the number actually retrieved
    value, top = metrics.zscrgan_precision_at_k(queries, gallery, np.array([0, 0, 1]), gl, k=50)
    assert top.shape == (3, 4) and value == pytest.approx(0.5)
    # the same pass also gives mAP@all, equal to the separate metric
    ql = np.array([0, 0, 1])
    v2, top2, m = metrics.zscrgan_precision_at_k(queries, gallery, ql, gl, k=2, with_map=True)
    assert v2 == pytest.approx(0.375) and top2.tolist() == [[0, 2], [1, 2], [0, 2]]
    assert m == pytest.approx(metrics.mean_average_precision(queries, gallery, ql, gl, k=None))


def test_ties_keep_gallery_order():
    q = np.array([[1.0, 0.0]])
    g = np.array([[2.0, 0.0], [1.0, 0.0], [0.0, 1.0], [3.0, 0.0]])  # 0, 1, 3 tie under cosine
    stats = metrics.ranking_stats(q, g, [0], [1, 0, 0, 0], k=3, return_topk=True)
    assert stats.topk_indices[0].tolist() == [0, 1, 3]
    # relevance [0, 1, 1, 0] in stable order -> AP = (1/2 + 2/3) / 2
    assert stats.ap[0] == pytest.approx((0.5 + 2 / 3) / 2)
    # whole ranking [0, 1, 3, 2] -> relevance [0, 1, 1, 1]
    full = metrics.mean_average_precision(q, g, [0], [1, 0, 0, 0])
    assert full == pytest.approx((1 / 2 + 2 / 3 + 3 / 4) / 3)


def test_k_larger_than_gallery_equals_map_all():
    rng = np.random.default_rng(0)
    q, g = rng.normal(size=(7, 5)), rng.normal(size=(9, 5))
    ql, gl = rng.integers(0, 3, 7), rng.integers(0, 3, 9)
    assert metrics.mean_average_precision(q, g, ql, gl, k=1000) == pytest.approx(
        metrics.mean_average_precision(q, g, ql, gl), abs=1e-12)


def test_query_without_relevant_item():
    q = np.array([[1.0, 0.0], [0.0, 1.0]])
    g = np.array([[1.0, 0.1], [0.2, 1.0]])
    assert metrics.mean_average_precision(q, g, [0, 5], [0, 0]) == pytest.approx(0.5)
    assert metrics.mean_average_precision(q, g, [0, 5], [0, 0], exclude_no_relevant=True) == pytest.approx(1.0)


# ---------------------------------------------------------------- brute-force agreement

@pytest.mark.parametrize("distance", ["cosine", "euclidean", "hamming"])
@pytest.mark.parametrize("k", [None, 5, 40])
def test_agrees_with_brute_force_single_label(distance, k):
    rng = np.random.default_rng(1)
    q, g = rng.normal(size=(30, 8)), rng.normal(size=(60, 8))
    ql, gl = rng.integers(0, 4, 30), rng.integers(0, 4, 60)
    ref, _ = brute_force_ap(q, g, ql, gl, k=k, distance=distance)
    stats = metrics.ranking_stats(q, g, ql, gl, k=k, distance=distance)
    np.testing.assert_allclose(stats.ap, ref, atol=1e-6)


@pytest.mark.parametrize("distance", ["cosine", "hamming"])
def test_agrees_with_brute_force_multilabel(distance):
    rng = np.random.default_rng(2)
    q, g = rng.normal(size=(25, 16)), rng.normal(size=(70, 16))
    ql = (rng.random((25, 6)) < 0.25).astype(np.uint8)
    gl = (rng.random((70, 6)) < 0.25).astype(np.uint8)
    ref, totals = brute_force_ap(q, g, ql, gl, distance=distance)
    assert (totals == 0).any()  # covers queries without relevant items
    assert metrics.mean_average_precision(q, g, ql, gl, distance=distance) == pytest.approx(ref.mean(), abs=1e-6)
    keep = totals > 0
    value = metrics.mean_average_precision(q, g, ql, gl, distance=distance, exclude_no_relevant=True)
    assert value == pytest.approx(ref[keep].mean(), abs=1e-6)


def test_chunking_does_not_change_results(monkeypatch):
    rng = np.random.default_rng(3)
    q, g = rng.normal(size=(50, 6)), rng.normal(size=(40, 6))
    ql, gl = rng.integers(0, 5, 50), rng.integers(0, 5, 40)
    whole = metrics.ranking_stats(q, g, ql, gl)
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 7 * 40)  # 7 queries per chunk, ragged tail
    chunked = metrics.ranking_stats(q, g, ql, gl)
    np.testing.assert_allclose(chunked.ap, whole.ap, atol=1e-12)


def test_precision_at_k_and_curves_against_brute_force():
    rng = np.random.default_rng(4)
    q, g = rng.normal(size=(20, 5)), rng.normal(size=(50, 5))
    ql, gl = rng.integers(0, 3, 20), rng.integers(0, 3, 50)
    dist = 1 - (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (g / np.linalg.norm(g, axis=1, keepdims=True)).T
    rel = ql[:, None] == gl[None, :]
    ranked = np.take_along_axis(rel, np.argsort(dist, axis=1, kind="stable"), axis=1)
    assert metrics.precision_at_k(q, g, ql, gl, k=10) == pytest.approx(ranked[:, :10].mean(), abs=1e-9)
    scope = metrics.precision_scope_curve(q, g, ql, gl, scopes=[5, 10, 80])
    assert scope["scope"] == [5, 10, 50]
    np.testing.assert_allclose(scope["precision"], [ranked[:, :5].mean(), ranked[:, :10].mean(),
                                                    ranked.mean()], atol=1e-9)
    pr = metrics.precision_recall_curve(q, g, ql, gl, num_points=5)
    assert pr["cutoff"][-1] == 50 and pr["recall"][-1] == pytest.approx(1.0)
    c = pr["cutoff"][1]
    np.testing.assert_allclose(pr["recall"][1], (ranked[:, :c].sum(1) / ranked.sum(1)).mean(), atol=1e-9)


def test_expected_random_map_matches_simulation():
    rng = np.random.default_rng(5)
    ql, gl = rng.integers(0, 4, 40), rng.integers(0, 4, 30)
    rel = ql[:, None] == gl[None, :]
    sims = []
    for _ in range(3000):
        ranked = rel[:, rng.permutation(30)]
        cum = ranked.cumsum(1)
        ap = np.where(ranked.sum(1) > 0, (ranked * cum / np.arange(1, 31)).sum(1) / np.maximum(ranked.sum(1), 1), 0)
        sims.append(ap.mean())
    assert metrics.expected_random_map(ql, gl) == pytest.approx(np.mean(sims), abs=3e-3)


def test_jfse_zscore_and_acmr_wrappers():
    x = np.array([[1.0, 5.0], [3.0, 5.0]])
    np.testing.assert_allclose(metrics.zscore_columns(x), [[-1.0, 0.0], [1.0, 0.0]])
    rng = np.random.default_rng(6)
    img, txt, lab = rng.normal(size=(12, 4)), rng.normal(size=(12, 4)), rng.integers(0, 3, 12)
    r = metrics.acmr_map(img, txt, lab, k=5)
    ref, _ = brute_force_ap(img, txt, lab, lab, k=5, distance="euclidean")
    assert r["i2t"] == pytest.approx(ref.mean(), abs=1e-6)
    r = metrics.jfse_map(img, txt, lab, lab)
    ref, _ = brute_force_ap(metrics.zscore_columns(img), metrics.zscore_columns(txt), lab, lab)
    assert r["i2t"] == pytest.approx(ref.mean(), abs=1e-6)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="distance"):
        metrics.mean_average_precision(np.ones((2, 2)), np.ones((2, 2)), [0, 1], [0, 1], distance="l1")
    with pytest.raises(ValueError, match="equal dims"):
        metrics.mean_average_precision(np.ones((2, 2)), np.ones((2, 3)), [0, 1], [0, 1])
    with pytest.raises(ValueError, match="empty"):
        metrics.mean_average_precision(np.ones((2, 2)), np.ones((0, 2)), [0, 1], np.zeros((0,), int))


def test_euclidean_ranking_orders_near_ties_as_the_exact_distance():
    """Issue 19, item 5: q^2 + g^2 - 2 q.g in float32 cannot tell these two gallery items apart (their
    squared distances differ by 2e-7 on a norm of ~1e4); float64 orders them as the exact distance."""
    q = np.array([[100.0, 0.0]])
    g = np.array([[100.0, 0.001], [100.0, 0.0003]])  # the second is nearer (exactly: 9e-8 vs 1e-6)
    stats = metrics.ranking_stats(q, g, np.array([0]), np.array([1, 0]), distance="euclidean", return_topk=True)
    assert stats.topk_indices[0].tolist() == [1, 0]
    f32 = (q ** 2).sum(1)[:, None].astype(np.float32) + (g ** 2).sum(1).astype(np.float32) - 2 * (q @ g.T).astype(
        np.float32)
    assert f32[0, 0] == f32[0, 1]  # the float32 expansion ties them
