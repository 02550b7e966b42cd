"""ZSCRGAN networks (spec zscrgan.md §2): conditioning augmentation + generator, matching-aware
critic, and the Common Space Embedding Mapper (CSEM).

Every layer is a dense layer with N(0, 0.02) kernels (plain normal, as TF1's
`random_normal_initializer`) and zero biases; "lrelu" is slope 0.2 (TF's default, not
Keras' 0.3). Three variable groups, each trained by its own optimizer: `GeneratorNet`
(CA + G, the release's `g_net`), `Critic` (`d_net`) and `CSEM` (`CSEM_net`).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from common.layers import PACKAGE, build_symbolic, float32


def lrelu(x):
    return tf.nn.leaky_relu(x, alpha=0.2)


def dense(units: int, activation=None, name: str | None = None) -> keras.layers.Dense:
    return keras.layers.Dense(units, activation=activation, name=name,
                              kernel_initializer=keras.initializers.RandomNormal(0.0, 0.02),
                              bias_initializer="zeros")


@keras.saving.register_keras_serializable(package=f"{PACKAGE}.zscrgan")
class GeneratorNet(keras.Model):
    """Conditioning augmentation (text -> Gaussian sample c) and the feature generator [c; z] -> x."""

    def __init__(self, text_dim: int, image_dim: int, embed_dim: int = 1024, z_dim: int = 256,
                 gf_dim: int = 2048, **kwargs):
        super().__init__(**kwargs)
        self.text_dim, self.embed_dim, self.z_dim, self.image_dim, self.gf_dim = text_dim, embed_dim, z_dim, image_dim, gf_dim
        self.ca = dense(2 * embed_dim, lrelu, "kl_div_fc1")
        self.g1 = dense(gf_dim, lrelu, "g_fc1")
        self.g2 = dense(2 * gf_dim, lrelu, "g_fc3")
        self.g3 = dense(image_dim, "relu", "g_fc2")  # image features are non-negative
        build_symbolic(self, text_dim, embed_dim, z_dim)

    def condition(self, text):
        """(mu, s): s is used as log sigma; it has passed through the lrelu, as in StackGAN."""
        h = float32(self.ca(text))  # the KL term and the sampled c stay in float32
        return h[:, :self.embed_dim], h[:, self.embed_dim:]

    @staticmethod
    def sample(mu, s, eps):
        return mu + tf.exp(s) * tf.cast(eps, mu.dtype)  # Keras autocasts call arguments to the compute dtype

    def generate(self, c, z):
        cz = tf.concat([tf.cast(c, self.compute_dtype), tf.cast(z, self.compute_dtype)], axis=1)
        return float32(self.g3(self.g2(self.g1(cz))))

    def call(self, text, eps, z):
        mu, s = self.condition(text)
        c = self.sample(mu, s, eps)
        return self.generate(c, z), c, mu, s

    def get_config(self):
        return dict(super().get_config(), text_dim=self.text_dim, image_dim=self.image_dim, embed_dim=self.embed_dim,
                    z_dim=self.z_dim, gf_dim=self.gf_dim)


@keras.saving.register_keras_serializable(package=f"{PACKAGE}.zscrgan")
class Critic(keras.Model):
    """Matching-aware WGAN critic on [image feature; raw text embedding] (no sigmoid)."""

    def __init__(self, image_dim: int, text_dim: int, df_dim: int = 1024, **kwargs):
        super().__init__(**kwargs)
        self.image_dim, self.text_dim, self.df_dim = image_dim, text_dim, df_dim
        self.d1 = dense(df_dim, lrelu, "d_fc1")
        self.out = dense(1, None, "d_rf")
        build_symbolic(self, image_dim, text_dim)

    def call(self, image, text):
        return float32(self.out(self.d1(tf.concat([image, text], axis=1))))

    def get_config(self):
        return dict(super().get_config(), image_dim=self.image_dim, text_dim=self.text_dim, df_dim=self.df_dim)


@keras.saving.register_keras_serializable(package=f"{PACKAGE}.zscrgan")
class CSEM(keras.Model):
    """One lrelu dense layer from image-feature space to the common space (width = embed_dim)."""

    def __init__(self, image_dim: int, embed_dim: int = 1024, **kwargs):
        super().__init__(**kwargs)
        self.image_dim, self.embed_dim = image_dim, embed_dim
        self.fc = dense(embed_dim, lrelu, "embed_fc")
        build_symbolic(self, image_dim)

    def call(self, x):
        return float32(self.fc(x))

    def get_config(self):
        return dict(super().get_config(), image_dim=self.image_dim, embed_dim=self.embed_dim)


@keras.saving.register_keras_serializable(package=f"{PACKAGE}.zscrgan")
class MeanTextEncoder(keras.Model):
    """The exported text encoder: CSEM(G(mu, z = 0)), the deterministic form of the release's query
    (`--eval_mode mean`); the release drew a fresh epsilon and z for every query."""

    def __init__(self, generator: GeneratorNet, csem: CSEM, **kwargs):
        super().__init__(**kwargs)
        self.generator, self.csem = generator, csem
        build_symbolic(self, generator.text_dim)

    def call(self, text):
        mu, _ = self.generator.condition(text)
        return self.csem(self.generator.generate(mu, tf.zeros([tf.shape(text)[0], self.generator.z_dim])))

    def get_config(self):
        return dict(super().get_config(), generator=keras.saving.serialize_keras_object(self.generator),
                    csem=keras.saving.serialize_keras_object(self.csem))

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        generator = keras.saving.deserialize_keras_object(config.pop("generator"))
        csem = keras.saving.deserialize_keras_object(config.pop("csem"))
        return cls(generator, csem, **config)
