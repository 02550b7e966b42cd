"""ZSCRGAN losses as the release computes them (spec zscrgan.md §3); each departure from the
paper's wording is kept by default and has a switch (§9.1-9.3)."""

from __future__ import annotations

import tensorflow as tf


def kl_stackgan(a, b):
    """StackGAN's helper: mean of KL(N(a, e^{2b}) || N(0, 1)) over all elements."""
    return tf.reduce_mean(-b + 0.5 * (-1.0 + tf.exp(2.0 * b) + tf.square(a)))


def kl_divergence(mu, s, form: str = "zscrgan"):
    """`zscrgan`: the release's symmetric surrogate 1/2 (KL_sg(mu, m) + KL_sg(s, m)), m = (mu + s) / 2.

    It is zero at mu = s = 0 but is not the KL of the conditioning Gaussian; `standard` is
    that KL (KL_sg(mu, s)).
    """
    if form == "standard":
        return kl_stackgan(mu, s)
    if form != "zscrgan":
        raise ValueError(f"kl form must be 'zscrgan' or 'standard', got {form!r}")
    m = 0.5 * (mu + s)
    return 0.5 * (kl_stackgan(mu, m) + kl_stackgan(s, m))


def critic_loss(real_logit, fake_logit, wrong_logit):
    """Matching-aware WGAN critic: (fake + wrong) / 2 - real, batch means, no gradient penalty."""
    return 0.5 * (tf.reduce_mean(fake_logit) + tf.reduce_mean(wrong_logit)) - tf.reduce_mean(real_logit)


def max_margin(fake, real, wrong, margin: float = 2.0, hinge: bool = False):
    """The release's "max-margin regulariser": mean L1(fake, real) - mean L1(fake, wrong) + margin.

    Without `hinge` (the release) the margin only shifts the value; `hinge` clamps at zero.
    """
    d_real = tf.reduce_mean(tf.reduce_sum(tf.abs(fake - real), axis=1))
    d_wrong = tf.reduce_mean(tf.reduce_sum(tf.abs(fake - wrong), axis=1))
    value = d_real - d_wrong + margin
    return tf.maximum(value, 0.0) if hinge else value


def csem_loss(embed_fake, embed_wrong, c, per_sample: bool = False):
    """Softplus ranking of cosine(CSEM(x_fake), c) over cosine(CSEM(x_wrong), c).

    The release takes the softplus of the difference of BATCH-MEAN cosines; `per_sample`
    averages per-row softpluses instead.
    """
    c_n = tf.math.l2_normalize(c, axis=1)
    real = tf.reduce_sum(tf.math.l2_normalize(embed_fake, axis=1) * c_n, axis=1)
    wrong = tf.reduce_sum(tf.math.l2_normalize(embed_wrong, axis=1) * c_n, axis=1)
    if per_sample:
        return tf.reduce_mean(tf.math.softplus(wrong - real))
    return tf.math.log(1.0 + tf.exp(tf.reduce_mean(wrong) - tf.reduce_mean(real)))
