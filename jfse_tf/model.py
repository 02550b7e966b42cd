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

from common.layers import PACKAGE, ModalityClassifier, NetworkGroups, build_symbolic, float32

HIDDEN = 4096  # every hidden layer of G, D and R in the release


@keras.saving.register_keras_serializable(package=f"{PACKAGE}.jfse")
class Generator(keras.Model):
    """G(c, z): Dense 4096 -> ReLU -> Dense out -> ReLU (synthetic features are non-negative)."""

    def __init__(self, out_dim: int, hidden: int = HIDDEN, emb_dim=None, noise_dim=None, **kwargs):
        super().__init__(**kwargs)
        self.out_dim, self.hidden_units, self.emb_dim, self.noise_dim = out_dim, hidden, emb_dim, noise_dim
        self.hidden = keras.layers.Dense(hidden, activation="relu", name="fc_0")
        self.out = keras.layers.Dense(out_dim, activation="relu", name="fc_1")
        build_symbolic(self, emb_dim, noise_dim)

    def call(self, class_emb, noise):
        return float32(self.out(self.hidden(tf.concat([class_emb, noise], axis=1))))

    def get_config(self):
        return dict(super().get_config(), out_dim=self.out_dim, hidden=self.hidden_units, emb_dim=self.emb_dim,
                    noise_dim=self.noise_dim)


@keras.saving.register_keras_serializable(package=f"{PACKAGE}.jfse")
class Critic(keras.Model):
    """D(x, c): Dense 4096 -> LeakyReLU(0.2) -> Dense 1 (linear WGAN score)."""

    def __init__(self, hidden: int = HIDDEN, feature_dim=None, emb_dim=None, **kwargs):
        super().__init__(**kwargs)
        self.hidden_units, self.feature_dim, self.emb_dim = hidden, feature_dim, emb_dim
        self.hidden = keras.layers.Dense(hidden, name="fc_0")
        self.score = keras.layers.Dense(1, name="fc_1")
        build_symbolic(self, feature_dim, emb_dim)

    def call(self, features, class_emb):
        h = self.hidden(tf.concat([features, class_emb], axis=1))
        return float32(self.score(keras.activations.leaky_relu(h, negative_slope=0.2)))

    def get_config(self):
        return dict(super().get_config(), hidden=self.hidden_units, feature_dim=self.feature_dim, emb_dim=self.emb_dim)


@keras.saving.register_keras_serializable(package=f"{PACKAGE}.jfse")
class Regressor(keras.Model):
    """R(x): Dense 4096 -> ReLU -> Dense emb -> ReLU; the common (class-embedding) space."""

    def __init__(self, emb_dim: int, hidden: int = HIDDEN, input_dim=None, **kwargs):
        super().__init__(**kwargs)
        self.emb_dim, self.hidden_units, self.input_dim = emb_dim, hidden, input_dim
        self.hidden = keras.layers.Dense(hidden, activation="relu", name="fc_0")
        self.out = keras.layers.Dense(emb_dim, activation="relu", name="fc_1")
        build_symbolic(self, input_dim)

    def call(self, features):
        return float32(self.out(self.hidden(features)))

    def get_config(self):
        return dict(super().get_config(), emb_dim=self.emb_dim, hidden=self.hidden_units, input_dim=self.input_dim)


class JFSENetworks(NetworkGroups):
    """The seven networks, built for given feature / class-embedding / noise widths."""

    def __init__(self, image_dim: int = 4096, text_dim: int = 300, emb_dim: int = 300,
                 noise_dim: int = 300, hidden: int = HIDDEN):
        self.dims = dict(image=image_dim, text=text_dim, emb=emb_dim, noise=noise_dim)
        self.image_generator = Generator(image_dim, hidden, emb_dim, noise_dim, name="image_generator")
        self.text_generator = Generator(text_dim, hidden, emb_dim, noise_dim, name="text_generator")
        self.image_critic = Critic(hidden, image_dim, emb_dim, name="image_critic")
        self.text_critic = Critic(hidden, text_dim, emb_dim, name="text_critic")
        self.image_regressor = Regressor(emb_dim, hidden, image_dim, name="image_regressor")
        self.text_regressor = Regressor(emb_dim, hidden, text_dim, name="text_regressor")
        self.modality_classifier = ModalityClassifier((150, 75), emb_dim, name="modality_classifier")

    @property
    def groups(self) -> dict:
        """The release's four optimiser groups (critics, generators, regressors, classifier)."""
        return {
            "critics": [self.image_critic, self.text_critic],
            "generators": [self.image_generator, self.text_generator],
            "regressors": [self.image_regressor, self.text_regressor],
            "modality_classifier": [self.modality_classifier],
        }
