"""Raw images + texts -> the generic feature folder every method reads (`--dataset features`).

    python -m tools.extract_features --manifest data/my/manifest.tsv --out data/my/features \\
        --cnn vgg19 --weights weights/vgg19_weights_tf_dim_ordering_tf_kernels.h5 --text tfidf

The manifest has one item per line, tab-separated: `split  image_path  label  text`
(split: train, val or test; image paths relative to the manifest's folder; label: a class name or
id; text: the rest of the line). Images go through a `keras.applications` CNN with weights from a
LOCAL file only: VGG19's fc2 layer ("fc7", 4096-d, the JFSE/ACMR papers' image feature) or
ResNet50's global average pool (2048-d). Texts become a bag of words (`count`) or TF-IDF
(`tfidf`) over a vocabulary fitted on the train split with `keras.layers.TextVectorization`, or
go through a local sentence-encoder SavedModel (`--text encoder --text_encoder DIR`).
Labels are mapped to 0-based ids in order of first appearance (written to class_names.txt).

Large folders: images are encoded in shards kept under `<out>/.partial/`; re-running the same
command after an interruption skips the finished shards (made from the same images, weights and
settings: anything else is encoded again). The folder's files are written at the
end, each atomically. `--overwrite` replaces a previous extraction: its files that this one does not
write (a val split, a vocabulary) are removed, files you added (class_emb.npy, unseen_classes.txt,
anything else) are kept, with a warning when class_names.txt changed under them.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys

import numpy as np
from absl import flags
from tqdm import tqdm

from common import io, run
from common.errors import ConfigError, DataError

FLAGS = flags.FLAGS

CNNS = {
    # name: (constructor, layer whose output is the feature, default input size, feature width)
    "vgg19": ("VGG19", "fc2", 224, 4096),
    "resnet50": ("ResNet50", "avg_pool", 224, 2048),
}
SPLITS = ("train", "val", "test")
# every file this tool writes; an --overwrite run removes those of the previous extraction it does not write again
WRITES = tuple(f"{s}_{m}.npy" for s in SPLITS for m in ("img", "txt", "lab")) + (
    "class_names.txt", "vocabulary.txt", "label_base.txt")
DERIVED = ("class_emb.npy", "unseen_classes.txt")  # files a user makes from class_names.txt: never touched


def read_manifest(path: str):
    """[(split, absolute image path, label string, text)] with every problem named by line."""
    if not os.path.isfile(path):
        raise DataError(f"missing manifest {path} (lines: split<TAB>image_path<TAB>label<TAB>text)")
    base = os.path.dirname(os.path.abspath(path))
    items = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.rstrip("\n").split("\t", 3)
            if len(parts) != 4:
                raise DataError(f"{path}:{n}: expected 4 tab-separated fields (split, image, label, text)")
            split, image, label, text = (p.strip() for p in parts)
            if split not in SPLITS:
                raise DataError(f"{path}:{n}: split must be one of {SPLITS}, got {split!r}")
            image = image if os.path.isabs(image) else os.path.join(base, image)
            if not os.path.isfile(image):
                raise DataError(f"{path}:{n}: image file {image} does not exist")
            items.append((split, image, label, text))
    if not any(s == "train" for s, *_ in items) or not any(s == "test" for s, *_ in items):
        raise DataError(f"{path}: needs train and test items")
    return items


def build_cnn(name: str, weights: str | None, allow_random_init: bool = False, image_size: int | None = None):
    import keras

    if name not in CNNS:
        raise ConfigError(f"--cnn must be one of {sorted(CNNS)}")
    ctor, layer, size, _ = CNNS[name]
    if weights is None and not allow_random_init:
        raise ConfigError(f"--weights is required: a local Keras weights file for {ctor} (with the top layers for "
                          "vgg19), e.g. vgg19_weights_tf_dim_ordering_tf_kernels.h5; nothing is downloaded here")
    if weights is not None and not os.path.isfile(weights):
        raise DataError(f"missing weights file {weights}" + (" ('imagenet' would download; copy the file here and "
                                                             "pass its path)" if weights == "imagenet" else ""))
    model_fn = getattr(keras.applications, ctor)
    try:
        if name == "vgg19":  # fc2 needs the classifier head, so the input is fixed at 224
            full, size = model_fn(weights=weights, include_top=True), 224
        else:  # the "notop" weights file; global average pool as the last layer
            size = image_size or size
            full = model_fn(weights=weights, include_top=False, pooling="avg", input_shape=(size, size, 3))
    except ValueError as e:  # a weights file of another architecture or head
        raise DataError(f"{weights}: does not fit {ctor} ({e})") from None
    return keras.Model(full.input, full.get_layer(layer).output), size


def _load_images(paths, size: int) -> np.ndarray:
    import tensorflow as tf

    out = []
    for p in paths:
        try:
            img = tf.io.decode_image(tf.io.read_file(p), channels=3, expand_animations=False)
        except tf.errors.InvalidArgumentError:
            raise DataError(f"{p}: not a readable image") from None
        out.append(tf.image.resize(img, (size, size)).numpy())
    return np.stack(out)


def _file_state(path: str) -> str:
    """A file's identity for resuming: path, size and modification time (not its bytes: a 550 MB
    weights file would take seconds to hash)."""
    return f"{os.path.abspath(path)}:{io.file_stamp(path)}"


def image_features(paths, cnn_name: str, model, size: int, out_dir: str, shard: int = 256,
                   batch: int = 32, weights_id: str = "") -> np.ndarray:
    """Features of `paths` in order; finished shards under <out_dir>/.partial are reused when they
    were made from the same images (path, size, mtime), CNN, input size, shard size and weights
    (`weights_id`), so a resumed run never mixes features of two models or of edited images."""
    import keras

    preprocess = getattr(keras.applications, cnn_name).preprocess_input
    state = "\n".join([cnn_name, str(size), str(shard), weights_id] + [_file_state(p) for p in paths])
    key = hashlib.sha1(state.encode()).hexdigest()[:12]
    partial = os.path.join(out_dir, ".partial", key)  # one folder per split and state; removed at the end
    os.makedirs(partial, exist_ok=True)
    shards = range(0, len(paths), shard)
    done = sum(os.path.exists(os.path.join(partial, f"{s:09d}.npy")) for s in shards)
    parts = []
    with tqdm(total=len(paths), initial=min(done * shard, len(paths)), unit="image", ascii=True, mininterval=10,
              file=sys.stderr) as progress:
        for s in shards:
            f = os.path.join(partial, f"{s:09d}.npy")
            if not os.path.exists(f):
                x = preprocess(_load_images(paths[s:s + shard], size))
                feats = np.concatenate([np.asarray(model(x[b:b + batch], training=False))
                                        for b in range(0, len(x), batch)])
                with io.atomic_open(f, "wb") as fh:
                    np.save(fh, feats.astype(np.float32))
                progress.update(len(x))
            parts.append(np.load(f))
    return np.concatenate(parts)


def text_features(train_texts, all_texts: dict, mode: str = "tfidf", vocab_size: int = 5000) -> dict:
    import keras
    import tensorflow as tf

    vec = keras.layers.TextVectorization(max_tokens=vocab_size, output_mode="tf_idf" if mode == "tfidf" else "count")
    vec.adapt(tf.data.Dataset.from_tensor_slices(list(train_texts)).batch(256))
    return {k: np.asarray(vec(tf.constant(list(v))), np.float32) for k, v in all_texts.items()}, vec.get_vocabulary()


def encoder_text_features(path: str, all_texts: dict, batch: int = 256) -> dict:
    """Texts through a local sentence encoder: a SavedModel whose default signature (or call)
    maps a batch of strings to one vector each (e.g. a Universal Sentence Encoder copy)."""
    import tensorflow as tf

    if not os.path.isdir(path):
        raise DataError(f"missing sentence-encoder SavedModel folder {path}")
    model = tf.saved_model.load(path)
    fn = model.signatures["serving_default"] if "serving_default" in getattr(model, "signatures", {}) else model

    def run(texts):
        out = fn(tf.constant(texts))
        if isinstance(out, dict):
            out = next(iter(out.values()))
        return np.asarray(out, np.float32)

    feats = {}
    for split, texts in all_texts.items():
        feats[split] = np.concatenate([run(list(texts[b:b + batch])) for b in range(0, len(texts), batch)])
        if feats[split].ndim != 2 or len(feats[split]) != len(texts):
            raise DataError(f"{path}: expected one vector per text, got shape {feats[split].shape}")
    return feats


def _read_names(path: str):
    try:
        return io.read_lines(path)
    except (OSError, DataError):
        return None


def main(argv):
    if len(argv) > 1:
        raise ConfigError(f"unexpected arguments {argv[1:]}")
    if not (FLAGS.manifest and FLAGS.out):
        raise ConfigError("--manifest and --out are required")
    run.require_positive("shard", "vocab_size", "image_size")
    if FLAGS.image_size is not None and FLAGS.cnn == "vgg19":
        raise ConfigError("--image_size is a resnet50 option: vgg19's fc7 needs its classifier head, fixed at 224")
    if FLAGS.text_encoder and FLAGS.text != "encoder":
        raise ConfigError(f"--text_encoder is used with --text encoder (this run makes --text {FLAGS.text} features)")
    if FLAGS.text == "encoder" and run.changed("vocab_size"):
        raise ConfigError("--vocab_size is a --text tfidf / count option; --text encoder has no vocabulary")
    if not (os.path.isdir(FLAGS.out) and os.listdir(FLAGS.out) == [".partial"]):  # a stopped run resumes
        io.check_output_dir(FLAGS.out, FLAGS.overwrite, owned="train_img.npy", what="feature folder")
    items = read_manifest(FLAGS.manifest)
    run.import_tensorflow()
    model, size = build_cnn(FLAGS.cnn, FLAGS.weights, FLAGS.allow_random_init, FLAGS.image_size)
    # an untrained CNN differs in every process: its shards are never reused by another one
    weights_id = _file_state(FLAGS.weights) if FLAGS.weights else f"untrained:{os.getpid()}:{os.urandom(4).hex()}"
    names = list(dict.fromkeys(label for _, _, label, _ in items))
    by_split = {s: [it for it in items if it[0] == s] for s in SPLITS}
    by_split = {s: v for s, v in by_split.items() if v}
    os.makedirs(FLAGS.out, exist_ok=True)
    all_texts = {s: [t for *_, t in v] for s, v in by_split.items()}
    if FLAGS.text == "encoder":
        if not FLAGS.text_encoder:
            raise ConfigError("--text encoder needs --text_encoder (a local SavedModel folder)")
        texts, vocab = encoder_text_features(FLAGS.text_encoder, all_texts), []
    else:
        texts, vocab = text_features(all_texts["train"], all_texts, FLAGS.text, FLAGS.vocab_size)
    arrays = {}
    for s, v in by_split.items():
        arrays[f"{s}_img.npy"] = image_features([p for _, p, _, _ in v], FLAGS.cnn, model, size, FLAGS.out,
                                                FLAGS.shard, weights_id=weights_id)
        arrays[f"{s}_txt.npy"] = texts[s]
        arrays[f"{s}_lab.npy"] = np.asarray([names.index(label) for _, _, label, _ in v], np.int64)
    previous = _read_names(os.path.join(FLAGS.out, "class_names.txt"))
    written = set(arrays)
    for name, arr in arrays.items():
        with io.atomic_open(os.path.join(FLAGS.out, name), "wb") as f:
            np.save(f, arr)
    for name, lines in (("class_names.txt", names), ("vocabulary.txt", vocab), ("label_base.txt", ["0"])):
        if not lines:
            continue
        with io.atomic_open(os.path.join(FLAGS.out, name)) as f:
            f.write("\n".join(lines) + "\n")
        written.add(name)
    removed = io.remove_stale(FLAGS.out, WRITES, written)  # e.g. the val split or vocabulary of the one replaced
    stale = [n for n in DERIVED if os.path.exists(os.path.join(FLAGS.out, n))]
    if stale and previous is not None and previous != names:
        print(f"warning: {', '.join(stale)} in {FLAGS.out} were made for the previous class list; its classes are "
              "now those of class_names.txt (in a new order or set): make them again", flush=True)
    shutil.rmtree(os.path.join(FLAGS.out, ".partial"), ignore_errors=True)
    dims = arrays["train_img.npy"].shape[1], arrays["train_txt.npy"].shape[1]
    print(f"{FLAGS.out}: " + ", ".join(f"{s} {len(v)}" for s, v in by_split.items())
          + f" items; image {dims[0]}-d ({FLAGS.cnn}), text {dims[1]}-d ({FLAGS.text}), {len(names)} classes"
          + (f" (removed the previous extraction's {', '.join(removed)})" if removed else ""))


def define_flags():
    flags.DEFINE_string("manifest", None, "TSV: split, image path, label, text.")
    flags.DEFINE_string("out", None, "Feature folder to write: new or empty (re-running a stopped extraction "
                        "resumes it); a previous feature folder only with --overwrite.")
    flags.DEFINE_bool("overwrite", False, "Replace --out when it holds a previous feature folder.")
    flags.DEFINE_enum("cnn", "vgg19", sorted(CNNS), "Image network.")
    flags.DEFINE_string("weights", None, "Local Keras weights file of the CNN.")
    flags.DEFINE_bool("allow_random_init", False, "Untrained CNN when no weights are given (tests only).")
    flags.DEFINE_integer("image_size", None, "resnet50 only: input size (default 224).")
    flags.DEFINE_enum("text", "tfidf", ["tfidf", "count", "encoder"], "Text features.")
    flags.DEFINE_string("text_encoder", None, "--text encoder: local SavedModel mapping strings to vectors.")
    flags.DEFINE_integer("vocab_size", 5000, "Vocabulary size (train split).")
    flags.DEFINE_integer("shard", 256, "Images per resumable shard.")


def cli():
    define_flags()
    run.run_main(main, resumes="the extraction")


if __name__ == "__main__":
    cli()
