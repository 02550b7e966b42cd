"""Triplet ranking loss of the hashing release (spec cmhash.md §3), vectorised.

The release loops over pivots r and emits every (a, p, n) with a < p in P_r = {j : S[r, j]}
and n in N_r = {j : not S[r, j]}. The same list, duplicates included, is the multiplicity
tensor W[a, p, n] = sum_r S[r, a] S[r, p] (1 - S[r, n]) [a < p]; each of the four terms is
sum W * hinge / sum W, i.e. the mean over the release's list. No triplet (sum W = 0): loss 0.
"""

from __future__ import annotations

import tensorflow as tf


def similarity(labels):
    """S[i, j] = 1 when samples i and j share at least one label (multi-hot labels)."""
    y = tf.cast(labels, tf.float32)
    return tf.cast(tf.matmul(y, y, transpose_b=True) > 0, tf.float32)


def triplet_weights(labels, mining: str = "pivot"):
    """W[a, p, n]: how often the release's mining emits triplet (a, p, n)."""
    s = similarity(labels)
    b = tf.shape(s)[0]
    idx = tf.range(b)
    if mining == "pivot":
        upper = tf.cast(idx[:, None] < idx[None, :], tf.float32)  # a < p
        return tf.einsum("ra,rp,rn->apn", s, s, 1.0 - s) * upper[:, :, None]
    if mining == "anchor":  # the clean form: positives and negatives defined by the anchor
        off_diag = 1.0 - tf.eye(b)
        return (s * off_diag)[:, :, None] * (1.0 - s)[:, None, :]
    raise ValueError(f"unknown mining {mining!r} (pivot | anchor)")


def squared_distances(a, b):
    """D[i, j] = sum_k (a_i - b_j)^2 (4 x Hamming for +-1 codes)."""
    return (tf.reduce_sum(tf.square(a), 1)[:, None] + tf.reduce_sum(tf.square(b), 1)[None, :]
            - 2.0 * tf.matmul(a, b, transpose_b=True))


def _term(weights, total, anchor, other, margin):
    d = squared_distances(anchor, other)
    hinge = tf.nn.relu(margin + d[:, :, None] - d[:, None, :])  # [a, p, n]: m + D(a, p) - D(a, n)
    return tf.math.divide_no_nan(tf.reduce_sum(weights * hinge), total)


def triplet_ranking_loss(u, v, labels, margin: float, mining: str = "pivot") -> dict:
    """The four terms (I->I, T->T, I->T, T->I) and their unweighted sum, plus the triplet count."""
    w = tf.cast(triplet_weights(labels, mining), u.dtype)
    total = tf.reduce_sum(w)
    terms = {"loss_ii": _term(w, total, u, u, margin), "loss_tt": _term(w, total, v, v, margin),
             "loss_it": _term(w, total, u, v, margin), "loss_ti": _term(w, total, v, u, margin)}
    terms["loss"] = tf.add_n(list(terms.values()))
    terms["triplets"] = total
    return terms


def single_modality_loss(v, labels, margin: float, mining: str = "pivot") -> dict:
    """The T->T term alone: hashing one modality (e.g. tags when no image features exist)."""
    w = tf.cast(triplet_weights(labels, mining), v.dtype)
    total = tf.reduce_sum(w)
    return {"loss": _term(w, total, v, v, margin), "triplets": total}
