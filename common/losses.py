"""Loss terms shared by more than one port."""

from __future__ import annotations

import tensorflow as tf


def modality_loss(image_logits, text_logits):
    """Modality classifier cross-entropy, mean over the batch of CE(image, [0, 1]) + CE(text, [1, 0]).

    Images carry class index 1 and texts index 0 in both ACMR and JFSE (the releases' label
    tensors are named the other way round; the loss is the same).
    """
    ce_img = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.ones(tf.shape(image_logits)[:1], tf.int32), logits=image_logits)
    ce_txt = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.zeros(tf.shape(text_logits)[:1], tf.int32), logits=text_logits)
    return tf.reduce_mean(ce_img + ce_txt)
