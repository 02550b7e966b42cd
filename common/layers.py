"""Layers shared by the ports."""

from __future__ import annotations

import keras
import tensorflow as tf


@tf.custom_gradient
def gradient_reversal(x, scale):
    """Identity forward; backward multiplies the incoming gradient by -scale.

    `scale` is a tensor input (not a Python float) so a compiled step can change it every
    epoch without retracing; it receives no gradient.
    """
    scale = tf.cast(scale, x.dtype)

    def grad(upstream):
        return -scale * upstream, None

    return tf.identity(x), grad


PACKAGE = "cmr_tf"  # registered names: "cmr_tf>ModalityClassifier", "cmr_tf.acmr>Projector", ... (keras.saving)


def float32(x):
    """Network outputs leave in float32 (a no-op under the float32 policy): under `mixed_bfloat16`
    the layers compute in bfloat16, and every loss, penalty, softmax, log and reduction that follows
    runs in float32 (docs/port_notes.md, "Mixed precision")."""
    return tf.nest.map_structure(lambda t: tf.cast(t, tf.float32), x)


def build_symbolic(model: keras.Model, *widths) -> None:
    """Build `model` by a symbolic call on inputs of unknown batch size, so its variables exist
    before any step or restore and `summary()` shows `(None, ...)`.

    When a variable does not fit in memory, Keras retries the call and raises its retry's error
    ("already initialized"); the out-of-memory error is only in its warning, so it is raised here."""
    if not all(w is not None for w in widths):
        return
    import warnings

    from common.errors import tensorflow_oom

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model(*[keras.Input((int(w),)) for w in widths])
        except Exception as e:
            oom = next((tensorflow_oom(w.message) for w in caught if tensorflow_oom(w.message)), "")
            if oom:
                raise RuntimeError(f"building {model.name}: {oom}") from e
            raise
    for w in caught:  # the build went through: pass on what it warned about
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


class NetworkGroups:
    """A method's networks in the release's variable groups (one optimizer each); subclasses
    define `groups` ({group: [networks]})."""

    groups: dict

    def variables(self, *groups: str) -> list:
        """The trainable variables of the named groups, in order."""
        return [v for g in groups for m in self.groups[g] for v in m.trainable_variables]

    def models(self) -> dict:
        """Every network by name (checkpoint objects, weight histograms)."""
        return {m.name: m for group in self.groups.values() for m in group}


@keras.saving.register_keras_serializable(package=PACKAGE)
class GradientReversal(keras.layers.Layer):
    """Keras wrapper of `gradient_reversal`; call as `layer(x, scale)`."""

    def call(self, x, scale):
        return gradient_reversal(x, scale)


@keras.saving.register_keras_serializable(package=PACKAGE)
class ModalityClassifier(keras.Model):
    """GRL -> Dense hidden[0] -> ... -> Dense 2 with no activation anywhere (ACMR, JFSE).

    A product of affine maps, i.e. a linear classifier, as both releases built it. Built on
    `input_dim`-wide embeddings when given.
    """

    def __init__(self, hidden=(150, 75), input_dim=None, **kwargs):
        super().__init__(**kwargs)
        self.hidden, self.input_dim = tuple(int(w) for w in hidden), input_dim
        widths = list(self.hidden) + [2]
        self.layers_ = [keras.layers.Dense(w, name=f"fc_{i}") for i, w in enumerate(widths)]
        if input_dim is not None:
            self(keras.Input((int(input_dim),)), tf.constant(0.0))

    def call(self, embeddings, grl_scale=0.0):
        """`grl_scale` must be a tensor (or a keyword argument) so changing it never retraces."""
        h = gradient_reversal(embeddings, grl_scale)
        for layer in self.layers_:
            h = layer(h)
        return float32(h)

    def get_config(self):
        return dict(super().get_config(), hidden=list(self.hidden), input_dim=self.input_dim)


def grl_schedule(epoch, num_epochs):
    """DANN's lambda = 2 / (1 + exp(-10 p)) - 1 with p = epoch / num_epochs (ACMR, JFSE)."""
    p = tf.cast(epoch, tf.float32) / tf.cast(num_epochs, tf.float32)
    return 2.0 / (1.0 + tf.exp(-10.0 * p)) - 1.0
