"""Retrieval metrics shared by every port, vectorised in TensorFlow and chunked over queries.

Conventions (all functions):
- `query` (nq, d) and `gallery` (ng, d) are embeddings (or real-valued codes for Hamming).
- `distance`: "cosine" (1 - cos; all-zero rows are at distance 1 from everything),
  "euclidean" (ranked by squared distance computed in float64, the same order), or "hamming" (codes binarised with
  sign, sign(0) -> +1; distance = number of differing bits).
- Ranking is ascending distance with a STABLE tie rule: equal distances keep gallery order
  (lower gallery index first). Releases that used an unstable argsort differ only on ties.
- Relevance: int labels (n,) -> same class; multi-hot (n, C) -> at least one shared label.
- AP over the top `depth` items (depth = k, or the whole gallery when k is None, or the
  gallery size when k exceeds it): AP = sum_{r <= depth, rel_r} P@r / R, where R is the number
  of relevant items WITHIN the top `depth` (so mAP@all divides by all relevant items); AP = 0
  when R = 0. mAP = mean over queries; with `exclude_no_relevant=True`, queries with no
  relevant item in the whole gallery are left out of the mean (the hashing convention).
Memory stays bounded: queries are processed in chunks of about `_CHUNK_ELEMENTS / ng` rows.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

DISTANCES = ("cosine", "euclidean", "hamming")
_CHUNK_ELEMENTS = 1 << 22  # distance-matrix entries per chunk (~4M: ~100 MB of temporaries)


@dataclasses.dataclass
class RankingStats:
    """Per-query statistics of one ranking pass (NumPy arrays, one row per query)."""

    ap: np.ndarray               # AP over the top `depth`
    relevant_in_depth: np.ndarray
    relevant_total: np.ndarray   # relevant items in the whole gallery
    hits_at: np.ndarray          # (nq, len(cutoffs)) relevant items within each cutoff
    cutoffs: np.ndarray          # effective cutoffs (clipped to the gallery size)
    topk_indices: Optional[np.ndarray] = None


def _check(query, gallery, query_labels, gallery_labels, distance):
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
    query = np.asarray(query)
    gallery = np.asarray(gallery)
    ql = np.asarray(query_labels)
    gl = np.asarray(gallery_labels)
    if query.ndim != 2 or gallery.ndim != 2 or query.shape[1] != gallery.shape[1]:
        raise ValueError(f"query {query.shape} and gallery {gallery.shape} must be 2-D with equal dims")
    if ql.shape[0] != query.shape[0] or gl.shape[0] != gallery.shape[0]:
        raise ValueError("one label (row) per query and per gallery item is required")
    if ql.ndim != gl.ndim or ql.ndim not in (1, 2):
        raise ValueError("labels must both be int (n,) or both multi-hot (n, C)")
    if gallery.shape[0] == 0:
        raise ValueError("the gallery is empty")
    return query, gallery, ql, gl


def _embed_for_distance(x: np.ndarray, distance: str) -> tf.Tensor:
    if distance == "euclidean":  # float64: see `_distances`
        return tf.convert_to_tensor(np.asarray(x, np.float64))
    x = tf.convert_to_tensor(x, tf.float32)
    if distance == "cosine":
        return tf.math.l2_normalize(x, axis=1)
    if distance == "hamming":
        return tf.where(x >= 0, 1.0, -1.0)
    return x


@tf.function(reduce_retracing=True)
def _distances(q, g, g_sqnorm, kind):
    """kind (Python int) 0 cosine, 1 squared euclidean, 2 hamming; inputs already transformed.

    Euclidean runs in float64: q^2 + g^2 - 2 q.g in float32 can swap pairs whose distances differ by
    more than the release's own rounding; in float64 the order is the exact distance's except pairs
    equal to about 1e-14 of |q|^2 (the release's float32 norms were equal to about 1e-7 there, and its
    unstable argsort decided)."""
    dots = tf.matmul(q, g, transpose_b=True)
    if kind == 0:
        return 1.0 - dots
    if kind == 1:
        q_sq = tf.reduce_sum(tf.square(q), axis=1, keepdims=True)
        return tf.maximum(q_sq + g_sqnorm[None, :] - 2.0 * dots, 0.0)
    bits = tf.cast(tf.shape(q)[1], tf.float32)
    return 0.5 * (bits - dots)


@tf.function(reduce_retracing=True)
def _rank_stats(dist, rel, depth, cutoffs, use_top_k):
    """AP@depth and hit counts at `cutoffs` from a distance block and its relevance block.

    `use_top_k` (Python bool, depth < gallery size) picks a partial sort; both orders put
    equal distances in gallery order.
    """
    if use_top_k:
        _, order = tf.math.top_k(-dist, k=depth, sorted=True)  # ties: lower index first
    else:
        order = tf.argsort(dist, axis=1, stable=True)
    rel_sorted = tf.cast(tf.gather(rel, order, batch_dims=1), tf.float64)
    cum = tf.cumsum(rel_sorted, axis=1)
    ranks = tf.cast(tf.range(1, tf.shape(order)[1] + 1), tf.float64)
    n_rel = cum[:, -1]
    ap_sum = tf.reduce_sum(rel_sorted * cum / ranks[None, :], axis=1)
    ap = tf.math.divide_no_nan(ap_sum, n_rel)
    hits = tf.gather(cum, cutoffs - 1, axis=1)
    total = tf.reduce_sum(tf.cast(rel, tf.float64), axis=1)
    return ap, n_rel, total, hits, order


def _relevance_block(ql_chunk, gl, multilabel):
    if multilabel:
        return tf.matmul(tf.cast(ql_chunk, tf.float32), tf.cast(gl, tf.float32), transpose_b=True) > 0
    return tf.equal(tf.cast(ql_chunk, tf.int64)[:, None], tf.cast(gl, tf.int64)[None, :])


def ranking_stats(query, gallery, query_labels, gallery_labels, k: Optional[int] = None,
                  distance: str = "cosine", cutoffs: Sequence[int] = (),
                  return_topk: bool | int = False) -> RankingStats:
    """One chunked ranking pass; the public metrics are reductions of its output.

    `return_topk`: True keeps the ranked gallery indices to `depth`, an int keeps that many.
    """
    query, gallery, ql, gl = _check(query, gallery, query_labels, gallery_labels, distance)
    n_gallery = gallery.shape[0]
    depth = n_gallery if k is None else int(min(max(int(k), 1), n_gallery))
    cut = np.clip(np.asarray(list(cutoffs) or [depth], np.int64), 1, depth)
    kind = DISTANCES.index(distance)
    q_all = _embed_for_distance(query, distance)
    g = _embed_for_distance(gallery, distance)
    g_sq = tf.reduce_sum(tf.square(g), axis=1)
    gl_t = tf.convert_to_tensor(gl)
    chunk = max(1, _CHUNK_ELEMENTS // n_gallery)
    out = {"ap": [], "n": [], "total": [], "hits": [], "top": []}
    for start in range(0, query.shape[0], chunk):
        q = q_all[start:start + chunk]
        dist = _distances(q, g, g_sq, kind)
        rel = _relevance_block(ql[start:start + chunk], gl_t, ql.ndim == 2)
        ap, n_rel, total, hits, order = _rank_stats(dist, rel, tf.constant(depth), tf.constant(cut),
                                                    depth < n_gallery)
        out["ap"].append(ap.numpy())
        out["n"].append(n_rel.numpy())
        out["total"].append(total.numpy())
        out["hits"].append(hits.numpy())
        if return_topk:
            keep = depth if return_topk is True else int(return_topk)
            out["top"].append(order.numpy()[:, :keep])
    cat = lambda key: np.concatenate(out[key]) if out[key] else np.zeros((0,))  # noqa: E731
    return RankingStats(ap=cat("ap"), relevant_in_depth=cat("n"), relevant_total=cat("total"),
                        hits_at=np.concatenate(out["hits"]) if out["hits"] else np.zeros((0, len(cut))),
                        cutoffs=cut, topk_indices=cat("top") if return_topk else None)


def mean_average_precision(query, gallery, query_labels, gallery_labels, k: Optional[int] = None,
                           distance: str = "cosine", exclude_no_relevant: bool = False) -> float:
    """mAP@k (k=None: whole ranking). See the module docstring for every convention."""
    stats = ranking_stats(query, gallery, query_labels, gallery_labels, k=k, distance=distance)
    ap = stats.ap[stats.relevant_total > 0] if exclude_no_relevant else stats.ap
    return float(ap.mean()) if ap.size else 0.0


def precision_at_k(query, gallery, query_labels, gallery_labels, k: int,
                   distance: str = "cosine") -> float:
    """Mean over queries of (relevant in the top k) / min(k, gallery size)."""
    stats = ranking_stats(query, gallery, query_labels, gallery_labels, k=k, distance=distance)
    return float((stats.hits_at[:, 0] / stats.cutoffs[0]).mean())


def precision_scope_curve(query, gallery, query_labels, gallery_labels,
                          scopes: Sequence[int] = tuple(range(100, 1001, 100)),
                          distance: str = "cosine") -> dict:
    """Precision at each scope (top-N), averaged over queries; scopes clipped to the gallery."""
    stats = ranking_stats(query, gallery, query_labels, gallery_labels, k=max(scopes),
                          distance=distance, cutoffs=scopes)
    precision = (stats.hits_at / stats.cutoffs[None, :]).mean(axis=0)
    return {"scope": stats.cutoffs.tolist(), "precision": precision.tolist()}


def precision_recall_curve(query, gallery, query_labels, gallery_labels, num_points: int = 50,
                           distance: str = "cosine") -> dict:
    """Precision and recall at `num_points` evenly spaced rank cutoffs, averaged over queries.

    Recall = relevant within the cutoff / all relevant items; queries without any relevant
    item are left out of both averages (their recall is undefined).
    """
    n_gallery = np.asarray(gallery).shape[0]
    cut = np.unique(np.linspace(1, n_gallery, num=min(num_points, n_gallery)).round().astype(np.int64))
    stats = ranking_stats(query, gallery, query_labels, gallery_labels, k=None,
                          distance=distance, cutoffs=cut)
    keep = stats.relevant_total > 0
    hits = stats.hits_at[keep]
    precision = (hits / stats.cutoffs[None, :]).mean(axis=0) if keep.any() else np.zeros(len(cut))
    recall = (hits / stats.relevant_total[keep, None]).mean(axis=0) if keep.any() else np.zeros(len(cut))
    return {"cutoff": stats.cutoffs.tolist(), "precision": precision.tolist(), "recall": recall.tolist()}


def expected_random_map(query_labels, gallery_labels) -> float:
    """Exact expected mAP@all of a uniformly random ranking (the chance level).

    For a query with R relevant items in a gallery of G:
    E[AP] = (H_G + (R - 1)(G - H_G)/(G - 1)) / G, H_G the G-th harmonic number; 0 if R = 0.
    """
    ql, gl = np.asarray(query_labels), np.asarray(gallery_labels)
    if ql.ndim == 1:
        counts = np.bincount(gl, minlength=int(max(ql.max(), gl.max())) + 1)[ql]
    else:
        counts = ((ql.astype(np.float32) @ gl.astype(np.float32).T) > 0).sum(axis=1)
    g = gl.shape[0]
    h = np.sum(1.0 / np.arange(1, g + 1))
    r = counts.astype(np.float64)
    frac = (r - 1) / (g - 1) if g > 1 else np.zeros_like(r)
    ev = np.where(r > 0, (h + frac * (g - h)) / g, 0.0)
    return float(ev.mean())


# --------------------------------------------------------------------------- release conventions

def map_from_distances(distances, query_labels, gallery_labels, k: Optional[int] = None) -> float:
    """mAP from a precomputed (nq, ng) distance matrix (ascending, stable ties)."""
    dist = tf.convert_to_tensor(np.asarray(distances), tf.float32)
    ql, gl = np.asarray(query_labels), np.asarray(gallery_labels)
    depth = dist.shape[1] if k is None else min(int(k), dist.shape[1])
    rel = _relevance_block(ql, tf.convert_to_tensor(gl), ql.ndim == 2)
    ap, *_ = _rank_stats(dist, rel, tf.constant(depth), tf.constant(np.asarray([depth], np.int64)),
                         depth < dist.shape[1])
    return float(ap.numpy().mean())


def both_directions(image_emb, text_emb, image_labels, text_labels, **kwargs) -> dict:
    """i2t (image queries, text gallery) and t2i mAP with one set of conventions."""
    i2t = mean_average_precision(image_emb, text_emb, image_labels, text_labels, **kwargs)
    t2i = mean_average_precision(text_emb, image_emb, text_labels, image_labels, **kwargs)
    return {"i2t": i2t, "t2i": t2i, "avg": 0.5 * (i2t + t2i)}


def cross_modal_map_all(image_emb, text_emb, image_labels, text_labels,
                        distance: str = "cosine") -> dict:
    """The run contract's comparable numbers: `i2t_map_all` / `t2i_map_all` (mAP@all)."""
    r = both_directions(image_emb, text_emb, image_labels, text_labels, k=None, distance=distance)
    return {"i2t_map_all": r["i2t"], "t2i_map_all": r["t2i"]}


def acmr_map(image_emb, text_emb, labels, k: int = 50) -> dict:
    """ACMR release: Euclidean distance, AP@50 normalised by relevant items in the top 50."""
    return both_directions(image_emb, text_emb, labels, labels, k=k, distance="euclidean")


def zscore_columns(x) -> np.ndarray:
    """JFSE's test-time standardisation: column mean/population std of the matrix itself; std 0 -> 1."""
    x = np.asarray(x, np.float64)
    std = x.std(axis=0)
    return ((x - x.mean(axis=0)) / np.where(std == 0, 1.0, std)).astype(np.float32)


def jfse_map(image_emb, text_emb, image_labels, text_labels) -> dict:
    """JFSE release: z-score each modality with its own test statistics, cosine, mAP@all."""
    return both_directions(zscore_columns(image_emb), zscore_columns(text_emb), image_labels,
                           text_labels, k=None, distance="cosine")


def zscrgan_precision_at_k(query, gallery, query_labels, gallery_labels, k: int = 50,
                           with_map: bool = False) -> tuple:
    """ZSCRGAN release: cosine similarity, stable top-k, P@k macro-averaged over query classes.

    Per query class c: sum of hits over its queries / sum of items retrieved (k, or the gallery
    size if smaller). Returns (P@k, top-k gallery indices (nq, k')), plus the mAP over the whole
    ranking from the same pass with `with_map`.
    """
    stats = ranking_stats(query, gallery, query_labels, gallery_labels, k=None if with_map else k,
                          distance="cosine", cutoffs=(k,), return_topk=k)
    ql = np.asarray(query_labels)
    classes, inverse = np.unique(ql, return_inverse=True)
    hits = np.bincount(inverse, weights=stats.hits_at[:, 0], minlength=len(classes))
    retrieved = np.bincount(inverse, minlength=len(classes)) * stats.cutoffs[0]
    p = float(np.mean(hits / retrieved))
    if with_map:
        return p, stats.topk_indices, float(stats.ap.mean())
    return p, stats.topk_indices


def hashing_map(query_codes, db_codes, query_labels, db_labels) -> tuple:
    """Hashing release: Hamming ranking over the whole database, relevance = shared label,
    stable ties, queries without any relevant item excluded. Returns (mAP, n_excluded)."""
    stats = ranking_stats(query_codes, db_codes, query_labels, db_labels, k=None, distance="hamming")
    keep = stats.relevant_total > 0
    value = float(stats.ap[keep].mean()) if keep.any() else 0.0
    return value, int((~keep).sum())
