"""Hash heads of the triplet-ranking hashing method (spec cmhash.md §2, feature-level mode §8a).

Each modality: Dense(K) + tanh on a precomputed backbone feature (ResNet-18 512-d, BERT [CLS]
768-d, or the 2912-d bag of words), optionally behind one ReLU hidden layer (a documented
deviation for bag-of-words input). Keras Dense defaults (Glorot-uniform, zero bias) are the
first release commit's initialisation.
"""

from __future__ import annotations

from typing import Optional

import keras
import tensorflow as tf

from common.layers import PACKAGE, NetworkGroups, build_symbolic, float32


@keras.saving.register_keras_serializable(package=f"{PACKAGE}.cmhash")
class TorchDense(keras.layers.Dense):
    """Dense with `torch.nn.Linear`'s initialisation: kernel and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    (kaiming_uniform with a = sqrt(5)); the hashing release's heads were PyTorch Linear layers."""

    def build(self, input_shape):
        bound = 1.0 / float(input_shape[-1]) ** 0.5
        self.kernel_initializer = keras.initializers.RandomUniform(-bound, bound)
        self.bias_initializer = keras.initializers.RandomUniform(-bound, bound)
        super().build(input_shape)


INITS = {"torch": TorchDense, "glorot": keras.layers.Dense}


@keras.saving.register_keras_serializable(package=f"{PACKAGE}.cmhash")
class HashHead(keras.Model):
    """[ReLU hidden] -> Dense(K) -> tanh; built on `input_dim` features when given. `init`: torch (the
    release's nn.Linear) or glorot (Keras' default, the port's first choice)."""

    def __init__(self, bits: int, hidden: Optional[int] = None, input_dim: Optional[int] = None,
                 init: str = "torch", **kwargs):
        super().__init__(**kwargs)
        self.bits, self.hidden_units, self.input_dim, self.init = bits, hidden, input_dim, init
        dense = INITS[init]
        self.hidden = dense(hidden, activation="relu", name="hidden") if hidden else None
        self.out = dense(bits, name="hash")
        build_symbolic(self, input_dim)

    def call(self, x):
        if self.hidden is not None:
            x = self.hidden(x)
        return tf.tanh(float32(self.out(x)))  # relaxed codes in (-1, 1); the tanh in float32

    def get_config(self):
        return dict(super().get_config(), bits=self.bits, hidden=self.hidden_units, input_dim=self.input_dim,
                    init=self.init)


def binarize(relaxed):
    """Test-time codes: sign with sign(0) -> +1 (torch.sign(0) = 0 would match neither bit)."""
    return tf.where(relaxed >= 0, 1.0, -1.0)


class CMHashNetworks(NetworkGroups):
    """Both heads; `image_dim=None` builds the text head only (single-modality hashing)."""

    def __init__(self, image_dim: Optional[int], text_dim: Optional[int], bits: int = 32,
                 hidden: Optional[int] = None, image_model=None, text_model=None, init: str = "torch"):
        """Feature heads of the given widths, or the given (end-to-end) image and text models."""
        self.image_head = image_model or (HashHead(bits, hidden, image_dim, init, name="image_head")
                                          if image_dim else None)
        self.text_head = text_model or HashHead(bits, hidden, text_dim, init, name="text_head")

    @property
    def groups(self) -> dict:
        heads = {"image": [self.image_head], "text": [self.text_head]}
        return {k: v for k, v in heads.items() if v[0] is not None}
