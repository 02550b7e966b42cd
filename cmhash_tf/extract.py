"""Feature extraction for the feature-level mode: IAPR images and texts -> `features.npz`.

    python -m cmhash_tf.extract --data_dir data/iapr --image_dir data/iapr/images \\
        --text_dir data/iapr/texts --image_preset presets/resnet_18 --text_preset presets/bert_base_en_uncased

Runs the end-to-end backbones in inference mode with test-time preprocessing (resize to
224 x 224, CIFAR-10 normalisation as the release) and writes, for every path of the three split
files, `img` = ResNet-18 global-pool features (512) and `txt` = BERT's last-layer [CLS] state
(768), next to `path`. `read_iapr` then reads them (`--dataset iapr`; BERT text with
text_source="txt"). The file is written atomically, after every item has been encoded.
"""

from __future__ import annotations

import os
import sys

import numpy as np
from absl import flags
from tqdm import tqdm

from common import io, run
from common.errors import ConfigError

FLAGS = flags.FLAGS


def extract(data_dir, image_dir, text_dir, image_preset, text_preset, vocab=None, max_len=128, image_size=224,
            batch_size=64, allow_random_init=False, tiny_text=False, strip_accents=True, antialias=True) -> dict:
    from cmhash_tf import e2e

    tok = e2e.load_tokenizer(vocab, text_preset, strip_accents)
    splits, cut = e2e.load_iapr_e2e(data_dir, image_dir, text_dir, tok, max_len, image_size, antialias)
    image_bb, text_bb = e2e.build_backbones(image_preset, text_preset, tok, allow_random_init, tiny_text)
    seen, parts = set(), []
    for split in splits.values():  # train is usually drawn from the retrieval set: each path once
        rows = [i for i, p in enumerate(split.paths) if not (p in seen or seen.add(p))]
        if rows:
            parts.append(split.subset(rows))
    total = sum(len(p) for p in parts)
    paths, img, txt = [], [], []
    with tqdm(total=total, unit="item", ascii=True, mininterval=10, file=sys.stderr) as progress:
        for part in parts:
            paths.append(part.paths)
            for b in part.eval_batches(batch_size):
                img.append(np.asarray(e2e.pooled(image_bb, b["image"])))
                txt.append(np.asarray(e2e.cls_state(text_bb, b["text"])))
                progress.update(int(b["image"].shape[0]))
    return {"path": np.concatenate(paths), "img": np.concatenate(img).astype(np.float32),
            "txt": np.concatenate(txt).astype(np.float32), "texts_cut": cut}


def main(argv):
    run.no_arguments(argv)
    if not (FLAGS.data_dir and FLAGS.image_dir and FLAGS.text_dir):
        raise ConfigError("--data_dir (the split files), --image_dir and --text_dir are required")
    out = FLAGS.out or os.path.join(FLAGS.data_dir, "features.npz")
    io.check_output_file(out, FLAGS.overwrite)
    run.require_positive("batch_size", "max_len", "image_size")
    run.import_tensorflow()
    result = extract(FLAGS.data_dir, FLAGS.image_dir, FLAGS.text_dir, FLAGS.image_preset, FLAGS.text_preset,
                     FLAGS.vocab, FLAGS.max_len, FLAGS.image_size, FLAGS.batch_size, FLAGS.allow_random_init,
                     FLAGS.tiny_text, FLAGS.strip_accents, FLAGS.antialias)
    with io.atomic_open(out, "wb") as f:
        np.savez(f, path=result["path"], img=result["img"], txt=result["txt"])
    print(f"{out}: {len(result['path'])} items, img {result['img'].shape[1]}-d, txt {result['txt'].shape[1]}-d; "
          f"{result['texts_cut']} texts cut at --max_len {FLAGS.max_len}")


def define_flags():
    from cmhash_tf.config import define_e2e_flags

    flags.DEFINE_string("data_dir", None, "Folder with iapr_train, iapr_test, iapr_retrieval.")
    flags.DEFINE_string("out", None, "Output .npz (default <data_dir>/features.npz); an existing file only with "
                        "--overwrite.")
    flags.DEFINE_bool("overwrite", False, "Replace --out if it exists.")
    flags.DEFINE_integer("batch_size", 64, "Items per forward pass.")
    define_e2e_flags()


def cli():
    define_flags()
    run.run_main(main)


if __name__ == "__main__":
    cli()
