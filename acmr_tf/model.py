"""ACMR networks (spec acmr.md §2): two tanh feature projectors into a 40-d common space, a
linear label classifier shared by both modalities, and the activation-free modality
classifier behind gradient reversal.

Dense layers with Keras defaults (Glorot-uniform kernels, zero biases) are slim's defaults in
the release. Input widths follow the data; hidden widths follow the release's two files.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from common.layers import PACKAGE, ModalityClassifier, NetworkGroups, build_symbolic, float32

# hidden widths before the final emb_dim layer; the Wikipedia text projector's first layer is
# emb_dim wide (a 5000 -> 40 bottleneck), kept as released
ARCHS = {
    "wiki": {"image": (512, 100), "text": ("emb", 100)},
    "nuswide": {"image": (4096, 1000), "text": (1000, 300)},
}


@keras.saving.register_keras_serializable(package=f"{PACKAGE}.acmr")
class Projector(keras.Model):
    """Dense + tanh after every layer, ending in the common space; built on `input_dim` features."""

    def __init__(self, widths, input_dim=None, **kwargs):
        super().__init__(**kwargs)
        self.widths, self.input_dim = [int(w) for w in widths], input_dim
        self.dense = [keras.layers.Dense(w, name=f"fc_{i}") for i, w in enumerate(self.widths)]
        build_symbolic(self, input_dim)

    def call(self, x):
        for layer in self.dense:
            x = tf.tanh(layer(x))
        return float32(x)

    def get_config(self):
        return dict(super().get_config(), widths=self.widths, input_dim=self.input_dim)


class ACMRNetworks(NetworkGroups):
    """The four networks of one ACMR model and the release's variable groups."""

    def __init__(self, image_dim: int, text_dim: int, num_classes: int = 10, emb_dim: int = 40,
                 arch: str = "wiki"):
        if arch not in ARCHS:
            raise ValueError(f"unknown arch {arch!r}; choose from {sorted(ARCHS)}")
        widths = {m: [emb_dim if w == "emb" else w for w in ARCHS[arch][m]] + [emb_dim] for m in ARCHS[arch]}
        self.dims = dict(image=image_dim, text=text_dim, emb=emb_dim)
        self.image_projector = Projector(widths["image"], image_dim, name="image_projector")   # vf_
        self.text_projector = Projector(widths["text"], text_dim, name="text_projector")      # le_
        self.label_classifier = keras.layers.Dense(num_classes, name="label_classifier")  # lc_
        self.label_classifier.build((None, emb_dim))
        self.modality_classifier = ModalityClassifier((emb_dim // 2, emb_dim // 4), emb_dim,
                                                      name="modality_classifier")   # dc_

    @property
    def groups(self) -> dict:
        return {"projectors": [self.image_projector, self.text_projector],
                "label_classifier": [self.label_classifier],
                "modality_classifier": [self.modality_classifier]}
