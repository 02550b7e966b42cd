"""JFSE losses (spec jfse.md §3), as pure functions of tensors.

Shapes: B = batch, d = embedding width. Labels for the alignment losses are one-hot (B, C).
"""

from __future__ import annotations

import tensorflow as tf

from common import distribute
from jfse_tf.config import RELEASE_WEIGHTS  # noqa: F401  (spec §3.5)

from common.losses import modality_loss  # noqa: F401  (re-exported: spec §3.3)

# 19 kernel widths of the release's `gaussian_kernel_matrix` (s acts as a variance: exp(-d/(2s)))
CMMD_SIGMAS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1, 5, 10, 15, 20, 25, 30, 35, 100, 1e3, 1e4, 1e5, 1e6)


def gradient_penalty(critic, real, fake, class_emb, alpha, weight: float = 10.0):
    """WGAN-GP (§3.1): weight * mean_i (||dD/dx_hat_i||_2 - 1)^2.

    x_hat = alpha_i real_i + (1 - alpha_i) fake_i with alpha (B, 1) ~ U[0, 1] per row; the
    gradient is taken w.r.t. the feature part only (the class embedding is concatenated
    after interpolation). A 1e-12 floor inside the sqrt keeps the gradient finite at 0.
    Each replica differentiates its own rows (the inner gradient is per row); the mean is
    over the global batch.
    """

    def per_sample(real, fake, class_emb, alpha):
        x_hat = alpha * real + (1.0 - alpha) * fake
        with tf.GradientTape() as tape:
            tape.watch(x_hat)
            score = critic(x_hat, class_emb)
        grad = tape.gradient(score, x_hat)
        norm = tf.sqrt(tf.reduce_sum(tf.square(grad), axis=1) + 1e-12)
        return tf.square(norm - 1.0)

    return weight * tf.reduce_mean(distribute.per_row(per_sample, real, fake, class_emb, alpha))


def critic_loss(real_score, fake_score, penalty):
    """L_D = mean D(fake) - mean D(real) + GP."""
    return tf.reduce_mean(fake_score) - tf.reduce_mean(real_score) + penalty


def generator_adversarial_loss(fake_score):
    """L_G = -mean D(fake)."""
    return -tf.reduce_mean(fake_score)


def regression_loss(embedding, class_emb):
    """mean over B x d of (class embedding - embedding)^2 (real: L_reg, synthetic: L_cyc)."""
    return tf.reduce_mean(tf.square(class_emb - embedding))


def cmpm_loss(image_emb, text_emb, labels_onehot):
    """CMPM as coded (§3.4): KL-like projection-matching terms in both directions.

    q_ij = M_ij / sum_k M_ik (M: shared label); P = softmax_row(text_i . image_hat_j) and
    P' = softmax_row(image_i . text_hat_j) (un-normalised query, l2-normalised candidate, no
    temperature); K(P) = mean_i sum_j P_ij log(1e-8 + P_ij / (q_ij + 1e-8)). Symmetric in its
    two embedding arguments.
    """
    y = tf.cast(labels_onehot, tf.float32)
    sq = tf.reduce_sum(tf.square(y[:, None, :] - y[None, :, :]), axis=2)
    match = tf.cast(sq < 0.5, tf.float32)
    q = match / tf.reduce_sum(match, axis=1, keepdims=True)
    img_hat = tf.math.l2_normalize(image_emb, axis=1, epsilon=1e-12)
    txt_hat = tf.math.l2_normalize(text_emb, axis=1, epsilon=1e-12)

    def kl(logits):
        p = tf.nn.softmax(logits, axis=1)
        return tf.reduce_mean(tf.reduce_sum(p * tf.math.log(1e-8 + p / (q + 1e-8)), axis=1))

    return kl(tf.matmul(text_emb, img_hat, transpose_b=True)) + kl(tf.matmul(image_emb, txt_hat, transpose_b=True))


def cmmd_loss(image_emb, text_emb, sigmas=CMMD_SIGMAS):
    """Biased multi-kernel MMD (§3.4 [recon]): clamp at 0, then at least 1e-4."""

    def kernel(x, y):
        d = tf.reduce_sum(tf.square(x[:, None, :] - y[None, :, :]), axis=2)
        return tf.add_n([tf.exp(-d / (2.0 * s)) for s in sigmas])

    x, y = image_emb, text_emb
    mmd = tf.reduce_mean(kernel(x, x)) + tf.reduce_mean(kernel(y, y)) - 2.0 * tf.reduce_mean(kernel(x, y))
    return tf.maximum(1e-4, tf.maximum(mmd, 0.0))


def cmca_loss(image_emb, text_emb):
    """CORAL (§3.4 [recon]): mean over d x d of (Cov_img - Cov_txt)^2, Cov = H^T H / (B - 1)."""

    def cov(h):
        h = h - tf.reduce_mean(h, axis=0, keepdims=True)
        n = tf.cast(tf.shape(h)[0], h.dtype)
        return tf.matmul(h, h, transpose_a=True) / (n - 1.0)

    return tf.reduce_mean(tf.square(cov(image_emb) - cov(text_emb)))


ALIGNMENTS = {"cmpm": cmpm_loss, "cmmd": lambda a, b, y: cmmd_loss(a, b), "cmca": lambda a, b, y: cmca_loss(a, b)}


def _total(*parts):
    """A sum in the written order. As a chain of adds, Grappler's arithmetic optimizer regrouped the
    shared weights (w_adv_real = w_syn_r = 0.01) differently from one run to the next under CPU load,
    so the logged loss_Re differed by one ulp between equal runs; a reduction over a stack is left alone."""
    return tf.reduce_sum(tf.stack(parts))


def generator_objective(terms: dict, w: dict):
    """§3.5: L_G^img + L_G^txt + w_cyc_g (L_cyc^v + L_cyc^t + w_adv_g L_adv^syn); no alignment."""
    return _total(terms["g_adv_img"], terms["g_adv_txt"],
                  w["w_cyc_g"] * _total(terms["cyc_img"], terms["cyc_txt"], w["w_adv_g"] * terms["adv_syn"]))


def regressor_objective(terms: dict, w: dict):
    """§3.5: L_reg^v + L_reg^t + w_align_real A_real + w_adv_real L_adv^real
    + w_syn_r (L_cyc^v + L_cyc^t + w_adv_syn_r L_adv^syn + w_align_syn A_syn)."""
    return _total(terms["reg_img"], terms["reg_txt"], w["w_align_real"] * terms["align_real"],
                  w["w_adv_real"] * terms["adv_real"],
                  w["w_syn_r"] * _total(terms["cyc_img"], terms["cyc_txt"], w["w_adv_syn_r"] * terms["adv_syn"],
                                        w["w_align_syn"] * terms["align_syn"]))




def batch_minmax(x):
    """Column-wise min-max to [0, 1] on this batch alone (sklearn MinMaxScaler); zero range -> 0."""
    lo = tf.reduce_min(x, axis=0, keepdims=True)
    span = tf.reduce_max(x, axis=0, keepdims=True) - lo
    return tf.math.divide_no_nan(x - lo, span)
