"""End-to-end mode (spec cmhash.md §2, §4, §8b): ResNet-18 and BERT backbones from keras-hub,
weights from LOCAL files only.

The backbones are the release's architectures: torchvision's ResNet-18 (basic blocks
[2, 2, 2, 2], widths 64-512, global average pool -> 512) and bert-base-uncased (feature = the
last layer's [CLS] state, not the pooler). Weights come from a local keras-hub preset folder
(written once, where a network exists, with `save_to_preset`) or a `.weights.h5` of the same
architecture. A preset *name* is refused with a message saying where to put the files, since
resolving it would try to download. `allow_random_init` builds untrained backbones (tests).

Needs the optional extra: `pip install -e '.[e2e]'` (keras-hub, which brings tensorflow-text).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from cmhash_tf.model import HashHead
from common import pipelines, readers
from common.layers import PACKAGE
from common.errors import ConfigError, DataError

RESNET18 = dict(input_conv_filters=[64], input_conv_kernel_sizes=[7], stackwise_num_filters=[64, 128, 256, 512],
                stackwise_num_blocks=[2, 2, 2, 2], stackwise_num_strides=[1, 2, 2, 2], block_type="basic_block",
                use_pre_activation=False)
BERT_BASE = dict(vocabulary_size=30522, num_layers=12, num_heads=12, hidden_dim=768, intermediate_dim=3072,
                 max_sequence_length=512)
TINY_BERT = dict(num_layers=2, num_heads=2, hidden_dim=32, intermediate_dim=64, max_sequence_length=128)
# the release normalised with CIFAR-10 statistics (spec §9.4), kept for fidelity
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
IMAGE_SIZE = 224


def keras_hub():
    try:
        import keras_hub as kh
    except ImportError:
        raise ConfigError("end-to-end mode needs the optional extra: pip install -e '.[e2e]' (keras-hub)") from None
    return kh


def _refuse_name(kind: str, name: str) -> ConfigError:
    return ConfigError(
        f"--{kind}_preset {name!r} is not a local folder or .weights.h5 file, and nothing is downloaded here. "
        f"Where a network exists, run keras_hub.models.Backbone.from_preset({name!r}).save_to_preset('presets/{name}') "
        f"(and the tokenizer's save_to_preset into the same folder for BERT), copy presets/{name}/ (config.json, "
        f"model.weights.h5, assets/) to this machine and pass --{kind}_preset presets/{name}")


def build_backbone(kind: str, preset: Optional[str], allow_random_init: bool = False, tiny: bool = False,
                   vocabulary_size: Optional[int] = None, dropout: Optional[float] = None):
    """The image (ResNet-18) or text (BERT) backbone from a local preset folder or weights file.

    `tiny` (tests) shrinks BERT to 2 layers of width 32; `dropout` overrides BERT's 0.1.
    """
    kh = keras_hub()

    def fresh():
        if kind == "image":
            return kh.models.ResNetBackbone(**RESNET18, image_shape=(None, None, 3))
        cfg = dict(BERT_BASE, **(TINY_BERT if tiny else {}))
        if vocabulary_size:
            cfg["vocabulary_size"] = vocabulary_size
        if dropout is not None:
            cfg["dropout"] = dropout
        return kh.models.BertBackbone(**cfg)

    if preset is None:
        if not allow_random_init:
            raise ConfigError(f"end-to-end mode needs --{kind}_preset (a local keras-hub preset folder or a "
                              ".weights.h5 file); --allow_random_init builds untrained backbones for smoke tests only")
        return fresh()
    if os.path.isdir(preset):
        if not os.path.exists(os.path.join(preset, "config.json")):
            raise DataError(f"{preset}: not a keras-hub preset folder (no config.json); write one with save_to_preset")
        return kh.models.Backbone.from_preset(preset)
    if preset.endswith(".weights.h5"):
        if not os.path.isfile(preset):
            raise DataError(f"missing weights file {preset}")
        model = fresh()
        try:
            model.load_weights(preset)
        except Exception as e:  # shape or layer-name mismatch
            raise DataError(f"{preset}: cannot load into the {kind} backbone ({type(e).__name__}: {e})") from None
        return model
    raise _refuse_name(kind, preset)


def build_backbones(image_preset: Optional[str], text_preset: Optional[str], tokenizer,
                    allow_random_init: bool = False, tiny_text: bool = False):
    """(ResNet-18, BERT) sized to the tokenizer's vocabulary."""
    return (build_backbone("image", image_preset, allow_random_init),
            build_backbone("text", text_preset, allow_random_init, tiny=tiny_text,
                           vocabulary_size=tokenizer.vocabulary_size()))


def load_tokenizer(vocab: Optional[str] = None, text_preset: Optional[str] = None, strip_accents: bool = True):
    """Uncased WordPiece over a local vocab.txt (or the preset's own vocabulary); accents are stripped
    as the release's bert-base-uncased tokenizer did (`strip_accents=False`: kept)."""
    kh = keras_hub()
    if vocab is None and text_preset and os.path.isdir(text_preset):
        candidate = os.path.join(text_preset, "assets", "tokenizer", "vocabulary.txt")
        vocab = candidate if os.path.exists(candidate) else None
    if vocab is None:
        raise ConfigError("end-to-end mode needs a WordPiece vocabulary: --vocab vocab.txt, or a --text_preset "
                          "folder holding assets/tokenizer/vocabulary.txt")
    if not os.path.isfile(vocab):
        raise DataError(f"missing vocabulary file {vocab}")
    # bert-base-uncased lower-cases and strips accents
    return kh.models.BertTokenizer(vocabulary=vocab, lowercase=True, strip_accents=strip_accents)


def encode_texts(tokenizer, texts: Sequence[str], max_len: int = 128):
    """[CLS] tokens [SEP] ids, truncated to `max_len` (keeping [SEP]), zero-padded to the longest.

    Returns (token_ids int32 (n, L), padding_mask int32 (n, L), number of texts that were cut).
    The release glued "[CLS]"/"[SEP]" onto the string and never truncated; here the ids are
    added explicitly and the cut texts are counted so the user sees what was lost.
    """
    if max_len < 3:
        raise ConfigError("--max_len must be at least 3 ([CLS] token [SEP])")
    out = tokenizer(tf.constant(list(texts))) if len(texts) else []
    pieces = out.to_list() if hasattr(out, "to_list") else [[int(i) for i in np.asarray(r)] for r in out]
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    rows, cut = [], 0
    for ids in pieces:
        if len(ids) > max_len - 2:
            cut += 1
            ids = ids[:max_len - 2]
        rows.append([cls_id, *ids, sep_id])
    width = max((len(r) for r in rows), default=2)
    token_ids = np.zeros((len(rows), width), np.int32)
    mask = np.zeros((len(rows), width), np.int32)
    for i, r in enumerate(rows):
        token_ids[i, :len(r)] = r
        mask[i, :len(r)] = 1
    return token_ids, mask, cut


def preprocess_images(images, training: bool = False, size: int = IMAGE_SIZE, seed=None):
    """uint8/float [0, 255] HWC batch -> resized (aspect not kept, as the release), optional flip, CIFAR-10 normalised."""
    x = tf.image.resize(tf.cast(images, tf.float32), (size, size)) / 255.0
    if training:
        flip = tf.random.stateless_uniform([tf.shape(x)[0], 1, 1, 1], seed if seed is not None else [0, 0]) < 0.5
        x = tf.where(flip, tf.reverse(x, axis=[2]), x)
    return (x - tf.constant(CIFAR10_MEAN)) / tf.constant(CIFAR10_STD)


def read_text(path: str) -> str:
    """The release used the LAST line of each annotation file."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
    except FileNotFoundError:
        raise DataError(f"missing text file {path}") from None
    if not lines:
        raise DataError(f"{path}: the text file is empty")
    return lines[-1]


def pooled(backbone, images, training=False):
    """ResNet-18 feature: global average pool of the last stage (512-d)."""
    return tf.reduce_mean(backbone(images, training=training), axis=[1, 2])


def cls_state(backbone, text, training=False):
    """BERT feature: the last layer's [CLS] state (768-d), not the pooler output (spec §2)."""
    token_ids = text["token_ids"]
    out = backbone({"token_ids": token_ids, "segment_ids": tf.zeros_like(token_ids),
                    "padding_mask": text["padding_mask"]}, training=training)
    return out["sequence_output"][:, 0, :]


class _BackboneNet(keras.Model):
    """A backbone and a hash head; serialised with the backbone's own config (keras-hub)."""

    def __init__(self, backbone, bits: int, **kwargs):
        super().__init__(**kwargs)
        self.backbone, self.bits = backbone, bits
        self.head = HashHead(bits, name="hash_head")

    def get_config(self):
        return dict(super().get_config(), backbone=keras.saving.serialize_keras_object(self.backbone), bits=self.bits)

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        keras_hub()  # registers the backbone classes
        return cls(keras.saving.deserialize_keras_object(config.pop("backbone")), **config)


@keras.saving.register_keras_serializable(package=f"{PACKAGE}.cmhash")
class ImageNet(_BackboneNet):
    """ResNet-18 -> global average pool (512) -> Dense(K) + tanh."""

    def call(self, x, training=False):
        return self.head(pooled(self.backbone, x, training))


@keras.saving.register_keras_serializable(package=f"{PACKAGE}.cmhash")
class TextNet(_BackboneNet):
    """BERT -> [CLS] state -> Dense(K) + tanh."""

    def __init__(self, backbone, bits: int, **kwargs):
        super().__init__(backbone, bits, **kwargs)
        # the pooler never sees a gradient (the [CLS] state is used); PyTorch's Adam skipped it,
        # so it is frozen here rather than decayed
        for layer in backbone.layers:
            if layer.name == "pooled_dense":
                layer.trainable = False

    def call(self, text, training=False):
        return self.head(cls_state(self.backbone, text, training))


# ----------------------------------------------------------------------------- data

@dataclasses.dataclass
class E2ESplit:
    """Image files + tokenised texts + labels of one split; images are decoded batch by batch."""

    paths: np.ndarray           # image paths relative to image_dir ('DD/NNNNN.jpg')
    token_ids: np.ndarray       # (n, L) int32
    padding_mask: np.ndarray    # (n, L) int32
    labels: np.ndarray          # (n, C) multi-hot
    image_dir: str
    image_size: int = IMAGE_SIZE
    antialias: bool = True  # the release resized with PIL's antialiasing filter (torchvision Resize)

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, rows) -> "E2ESplit":
        rows = np.asarray(rows)
        return dataclasses.replace(self, paths=self.paths[rows], token_ids=self.token_ids[rows],
                                   padding_mask=self.padding_mask[rows], labels=self.labels[rows])

    def _loader(self, training: bool, seed: int):
        files = tf.constant([os.path.join(self.image_dir, p) for p in self.paths])
        tensors = {"token_ids": tf.constant(self.token_ids), "padding_mask": tf.constant(self.padding_mask),
                   "label": tf.constant(self.labels)}
        size, antialias = self.image_size, self.antialias

        def load(step, idx):
            def one(path):
                img = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
                return tf.image.resize(img, (size, size), antialias=antialias)
            images = tf.map_fn(one, tf.gather(files, idx), fn_output_signature=tf.float32)
            x = preprocess_images(images, training, size, seed=tf.stack([tf.cast(seed, tf.int64), step]))
            return {"image": x, "text": {k: tf.gather(tensors[k], idx) for k in ("token_ids", "padding_mask")},
                    "label": tf.gather(tensors["label"], idx)}
        return load

    def train_batches(self, batch_size: int, seed: int = 0) -> tf.data.Dataset:
        """Shuffled epochs (last partial batch kept, as the release), random flips, prefetched."""
        return (pipelines.epoch_indices(len(self), batch_size, shuffle=True, seed=seed).enumerate()
                .map(self._loader(True, seed)).prefetch(tf.data.AUTOTUNE))

    def eval_batches(self, batch_size: int = 64) -> tf.data.Dataset:
        """In order, no augmentation."""
        return (tf.data.Dataset.range(len(self)).batch(batch_size).enumerate()
                .map(self._loader(False, 0)).prefetch(tf.data.AUTOTUNE))


def fingerprint(splits: dict) -> str:
    """Digest of the end-to-end splits (image paths, token ids, labels) for the run's identity."""
    import hashlib

    h = hashlib.blake2b(digest_size=16)
    for name, split in sorted(splits.items()):
        h.update(name.encode())
        for array in (np.asarray(split.paths).astype("S"), split.token_ids, split.padding_mask, split.labels):
            h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


def text_path(text_dir: str, image_path: str) -> str:
    return os.path.join(text_dir, os.path.splitext(image_path)[0] + ".txt")


def load_iapr_e2e(folder: str, image_dir: str, text_dir: str, tokenizer, max_len: int = 128,
                  image_size: int = IMAGE_SIZE, antialias: bool = True):
    """The IAPR split files with raw images and annotation texts: {train, test, database} E2ESplits
    and the number of texts cut at `max_len`. Every file is checked before training starts."""
    raw = {}
    for split, fname in (("train", "iapr_train"), ("test", "iapr_test"), ("database", "iapr_retrieval")):
        paths, _, labels = readers.read_iapr_list(os.path.join(folder, fname))
        raw[split] = (paths, labels)
    all_paths = np.concatenate([p for p, _ in raw.values()])
    missing = [p for p in all_paths if not os.path.isfile(os.path.join(image_dir, p))]
    if missing:
        raise DataError(f"{image_dir}: {len(missing)} image files of the split lists are missing "
                        f"(first: {os.path.join(image_dir, missing[0])})")
    texts = [read_text(text_path(text_dir, p)) for p in all_paths]
    token_ids, mask, cut = encode_texts(tokenizer, texts, max_len)
    out, start = {}, 0
    for split, (paths, labels) in raw.items():
        rows = slice(start, start + len(paths))
        out[split] = E2ESplit(paths, token_ids[rows], mask[rows], labels.astype(np.float32), image_dir, image_size,
                              antialias)
        start += len(paths)
    return out, cut
