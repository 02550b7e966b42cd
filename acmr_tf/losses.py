"""ACMR losses (spec acmr.md §3), as coded in the release; pure functions of tensors.

E_v, E_t: (B, d) projector outputs of a paired batch; labels: (B,) ints.
"""

from __future__ import annotations

import tensorflow as tf

from common.losses import modality_loss  # noqa: F401  (§3.6, shared with JFSE)


def label_loss(logits_v, logits_t, onehot):
    """§3.1: mean over the batch of CE(Y, C(e_v)) + CE(Y, C(e_t))."""
    y = tf.cast(onehot, logits_v.dtype)
    return tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(labels=y, logits=logits_v)
                          + tf.nn.softmax_cross_entropy_with_logits(labels=y, logits=logits_t))


def similar_loss(e_v, e_t):
    """§3.2: the batch Frobenius norm ||E_v - E_t||_F (sqrt(2 l2_loss)), not averaged per pair."""
    return tf.sqrt(tf.reduce_sum(tf.square(e_v - e_t)))


def distance_map(e_v, e_t):
    """G_ij = sum_k e_v[i, k] + sum_k e_t[j, k] - <e_v[i], e_t[j]> (the release's "distance map")."""
    return (tf.reduce_sum(e_v, axis=1, keepdims=True) + tf.reduce_sum(e_t, axis=1)[None, :]
            - tf.matmul(e_v, e_t, transpose_b=True))


def dissimilar_loss(e_v, e_t, labels, margin: float = 0.1):
    """§3.3: mean over B x B of max(0, 0.1 - M * G), G_ij = sum_k e_v[i] + sum_k e_t[j] - <e_v[i], e_t[j]>.

    Row sums, not squared norms: not a distance, reproduced as released. Same-label cells
    (M = 0) contribute the constant 0.1.
    """
    g = distance_map(e_v, e_t)
    mask = tf.cast(tf.not_equal(labels[:, None], labels[None, :]), e_v.dtype)
    return tf.reduce_mean(tf.maximum(0.0, margin - mask * g))


def triplet_loss(e_v, e_t, neg_t, neg_v, margin: float = 0.1, alpha: float = 5.0):
    """§3.5: one hinge per direction on batch totals.

    P = 1/2 sum ||e_v - e_t||^2, N_v = 1/2 sum ||e_v - neg_t||^2, N_t = 1/2 sum ||e_t - neg_v||^2;
    max(0, mu + alpha P - N_v) + max(0, mu + alpha P - N_t).
    """
    half_sq = lambda a, b: 0.5 * tf.reduce_sum(tf.square(a - b))  # noqa: E731  (TF l2_loss)
    pos = half_sq(e_v, e_t)
    return (tf.maximum(0.0, margin + alpha * pos - half_sq(e_v, neg_t))
            + tf.maximum(0.0, margin + alpha * pos - half_sq(e_t, neg_v)))


def _cosine(x):
    n = tf.norm(x, axis=1, keepdims=True)
    x = tf.math.divide_no_nan(x, n)  # zero rows -> similarity 0 (sklearn)
    return tf.matmul(x, x, transpose_b=True)


def _first_argmax(s):
    """Row-wise argmax taking the first index on ties (NumPy's rule; tf.argmax promises none)."""
    hit = tf.equal(s, tf.reduce_max(s, axis=1, keepdims=True))
    cols = tf.range(tf.shape(s)[1])
    return tf.reduce_min(tf.where(hit, cols[None, :], tf.shape(s)[1]), axis=1)


def mine_negatives(x_v, x_t, labels, tie_fix: bool = False):
    """§4: hardest different-class negatives from raw-feature cosine similarity.

    n(i) = argmax_j (1 - A) * cos(X_v)[i, j] (the negative text of image anchor i is the text
    paired with the most similar different-class image); m(i) likewise from the texts.
    Release: a row with no positive similarity returns index 0, possibly a same-class item or
    the anchor's own pair. `tie_fix` restricts the argmax to different-class columns.
    """
    diff = tf.not_equal(labels[:, None], labels[None, :])
    out = []
    for x in (x_v, x_t):
        s = tf.where(diff, _cosine(x), tf.zeros([], x.dtype))
        if tie_fix:
            s = tf.where(diff, s, tf.fill(tf.shape(s), tf.constant(-3.0, x.dtype)))
        out.append(_first_argmax(s))
    return out[0], out[1]
