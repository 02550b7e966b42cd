"""Settings of triplet-ranking cross-modal hashing (spec cmhash.md §4, §8a); feature-mode defaults."""

from __future__ import annotations

import dataclasses

from absl import flags


@dataclasses.dataclass
class CMHashConfig:
    bits: int = 32
    margin: float | None = None      # None: 12 * bits / 32 (the release's 12 at 32 bits)
    mining: str = "pivot"            # pivot (release) | anchor
    epochs: int = 50                 # feature mode (release, end to end: 301)
    batch_size: int = 32
    lr: float = 1e-3                 # feature mode: frozen features need more than the release's 1e-5
    image_lr: float | None = None    # two optimisers (the first commit's variant) when either is set
    text_lr: float | None = None
    weight_decay: float = 5e-4       # coupled, as PyTorch's Adam: g + wd * theta
    hidden: int | None = None
    eval_every: int = 10
    seed: int = 0
    text_only: bool = False          # tag -> tag hashing: the T->T term, text head only
    adam: str = "torch"              # torch (release): epsilon on the bias-corrected sqrt(v); keras
    head_init: str = "torch"         # torch (release): nn.Linear's U(+-1/sqrt(fan_in)); glorot: Keras' default

    @property
    def margin_value(self) -> float:
        return 12.0 * self.bits / 32.0 if self.margin is None else self.margin


E2E_FLAGS = ("image_dir", "text_dir", "image_preset", "text_preset", "vocab", "max_len", "image_size",
             "allow_random_init", "tiny_text", "strip_accents", "antialias")  # what define_e2e_flags defines


def define_e2e_flags() -> None:
    """The backbone and raw-data flags shared by `cmhash_tf.train --mode e2e` and `cmhash_tf.extract`."""
    flags.DEFINE_string("image_dir", None, "Folder of the IAPR images (DD/NNNNN.jpg).")
    flags.DEFINE_string("text_dir", None, "Folder of the annotation texts (DD/NNNNN.txt; the last line is used).")
    flags.DEFINE_string("image_preset", None, "Local keras-hub ResNet-18 preset folder or .weights.h5.")
    flags.DEFINE_string("text_preset", None, "Local keras-hub BERT preset folder or .weights.h5.")
    flags.DEFINE_string("vocab", None, "WordPiece vocab.txt (default: the text preset's own).")
    flags.DEFINE_integer("max_len", 128, "Tokens per text incl. [CLS]/[SEP]; longer texts are cut and counted.")
    flags.DEFINE_integer("image_size", 224, "Images are resized to this square (release 224).")
    flags.DEFINE_bool("allow_random_init", False, "Untrained backbones when no preset is given (tests only).")
    flags.DEFINE_bool("tiny_text", False, "A 2-layer, width-32 BERT (tests only).")
    flags.DEFINE_bool("strip_accents", True, "Strip accents in the uncased WordPiece tokenizer (release: bert-base-"
                      "uncased does); --nostrip_accents keeps them.")
    flags.DEFINE_bool("antialias", True, "Antialias when resizing images (release: PIL's filter through torchvision's "
                      "Resize); --noantialias: plain bilinear.")
