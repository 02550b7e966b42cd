"""JFSE networks (spec jfse.md §2): two conditional generators, two critics, two regressors
into the class-embedding space and the linear modality classifier behind gradient reversal
(150 -> 75 -> 2, `common.layers.ModalityClassifier`).

All layers are Dense with Keras defaults (Glorot-uniform kernels, zero biases = slim's
defaults in the release). Concatenation orders follow the release for weight compatibility:
generators take [class embedding; noise], critics take [feature; class embedding].
"""

from __future__ import annotations

import keras
import tensorflow as tf

from common.layers import ModalityClassifier

HIDDEN = 4096  # every hidden layer of G, D and R in the release


class Generator(keras.Model):
    """G(c, z): Dense 4096 -> ReLU -> Dense out -> ReLU (synthetic features are non-negative)."""

    def __init__(self, out_dim: int, hidden: int = HIDDEN, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(hidden, activation="relu", name="fc_0")
        self.out = keras.layers.Dense(out_dim, activation="relu", name="fc_1")

    def call(self, class_emb, noise):
        return self.out(self.hidden(tf.concat([class_emb, noise], axis=1)))


class Critic(keras.Model):
    """D(x, c): Dense 4096 -> LeakyReLU(0.2) -> Dense 1 (linear WGAN score)."""

    def __init__(self, hidden: int = HIDDEN, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(hidden, name="fc_0")
        self.score = keras.layers.Dense(1, name="fc_1")

    def call(self, features, class_emb):
        h = self.hidden(tf.concat([features, class_emb], axis=1))
        return self.score(keras.activations.leaky_relu(h, negative_slope=0.2))


class Regressor(keras.Model):
    """R(x): Dense 4096 -> ReLU -> Dense emb -> ReLU; the common (class-embedding) space."""

    def __init__(self, emb_dim: int, hidden: int = HIDDEN, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(hidden, activation="relu", name="fc_0")
        self.out = keras.layers.Dense(emb_dim, activation="relu", name="fc_1")

    def call(self, features):
        return self.out(self.hidden(features))


class JFSENetworks:
    """The seven networks, built for given feature / class-embedding / noise widths."""

    def __init__(self, image_dim: int = 4096, text_dim: int = 300, emb_dim: int = 300,
                 noise_dim: int = 300, hidden: int = HIDDEN):
        self.dims = dict(image=image_dim, text=text_dim, emb=emb_dim, noise=noise_dim)
        self.image_generator = Generator(image_dim, hidden, name="image_generator")
        self.text_generator = Generator(text_dim, hidden, name="text_generator")
        self.image_critic = Critic(hidden, name="image_critic")
        self.text_critic = Critic(hidden, name="text_critic")
        self.image_regressor = Regressor(emb_dim, hidden, name="image_regressor")
        self.text_regressor = Regressor(emb_dim, hidden, name="text_regressor")
        self.modality_classifier = ModalityClassifier((150, 75), name="modality_classifier")
        self.build()

    def build(self):
        """Create every variable now (optimizers and checkpoints need them before a step)."""
        d = self.dims
        c, z = tf.zeros((1, d["emb"])), tf.zeros((1, d["noise"]))
        v, t = tf.zeros((1, d["image"])), tf.zeros((1, d["text"]))
        self.image_generator(c, z)
        self.text_generator(c, z)
        self.image_critic(v, c)
        self.text_critic(t, c)
        self.image_regressor(v)
        self.text_regressor(t)
        self.modality_classifier(tf.zeros((1, d["emb"])), tf.constant(0.0))

    @property
    def groups(self) -> dict:
        """The release's four optimiser groups (critics, generators, regressors, classifier)."""
        return {
            "critics": [self.image_critic, self.text_critic],
            "generators": [self.image_generator, self.text_generator],
            "regressors": [self.image_regressor, self.text_regressor],
            "modality_classifier": [self.modality_classifier],
        }

    def variables(self, group: str) -> list:
        return [v for m in self.groups[group] for v in m.trainable_variables]
