"""Zero-shot benchmark files ("xlsa17": `res101.mat` + `att_splits.mat` / `sent_splits.mat`) ->
ZSCRGAN's four pickles.

    python -m tools.convert_xlsa17 --res101 xlsa17/data/CUB/res101.mat \\
        --splits xlsa17/data/CUB/sent_splits.mat --out datasets/CUB

ZSCRGAN's own archives are behind dead links; most users hold these files instead. Seen
classes are those of `trainval_loc`, unseen those of `test_unseen_loc` (the proposed split);
seen classes keep their `trainval_loc` images (the `test_seen_loc` images are left out, as
no ZSCRGAN evaluation uses them), unseen classes their `test_unseen_loc` images. The text side
of a class is its column of `att` (attributes, or the 1024-d sentence embeddings of CUB/FLO),
one vector per class. Class ids are 0-based (`labels - 1`). Files are written atomically, and
only after every input has been read and checked.
"""

from __future__ import annotations

import os

import numpy as np
from absl import flags

from common import io, run
from common.errors import ConfigError, DataError

FLAGS = flags.FLAGS

SPLIT_VARS = ("att", "trainval_loc", "test_unseen_loc")


def convert(res101: str, splits: str) -> dict:
    """The four pickles' contents (and class_names.txt when the split file has names)."""
    feats = io.load_mat(res101, ("features", "labels"))
    sp = io.load_mat(splits, SPLIT_VARS, optional=("allclasses_names", "test_seen_loc"))
    x = np.asarray(feats["features"], np.float32)
    labels = io.as_int_labels(feats["labels"], res101)
    if x.ndim != 2 or len(labels) not in x.shape:
        raise DataError(f"{res101}: features {x.shape} do not match {len(labels)} labels")
    if x.shape[0] != len(labels):  # the release layout is (dim, n)
        x = x.T
    io.require_finite(x, f"{res101}: features")
    att = np.asarray(sp["att"], np.float32)
    n_cls = att.shape[1]
    if labels.min() < 1 or labels.max() > n_cls:
        raise DataError(f"{res101}: labels must be 1..{n_cls} (the columns of att in {splits}), "
                        f"found {labels.min()}..{labels.max()}")
    locs = {}
    for name in ("trainval_loc", "test_unseen_loc"):
        loc = io.as_int_labels(sp[name], splits)
        if loc.min() < 1 or loc.max() > len(labels):
            raise DataError(f"{splits}: {name} indexes 1..{loc.max()} but {res101} has {len(labels)} images")
        locs[name] = loc - 1
    seen = np.unique(labels[locs["trainval_loc"]]) - 1
    unseen = np.unique(labels[locs["test_unseen_loc"]]) - 1
    if np.intersect1d(seen, unseen).size:
        raise DataError(f"{splits}: trainval and test_unseen images share classes "
                        f"{np.intersect1d(seen, unseen)[:5].tolist()}; is this the proposed split?")
    images, texts = {}, {}
    for loc, classes in ((locs["trainval_loc"], seen), (locs["test_unseen_loc"], unseen)):
        lab = labels[loc] - 1
        for c in classes:
            images[int(c)] = x[loc[lab == c]]
            texts[int(c)] = [att[:, c].copy()]
    out = {"txt_embed_dict.pkl": texts, "image_embed_dict.pkl": images,
           "trainids.pkl": [int(c) for c in seen], "testids.pkl": [int(c) for c in unseen]}
    if "allclasses_names" in sp:
        out["class_names.txt"] = [str(np.asarray(n).ravel()[0]) for n in np.asarray(sp["allclasses_names"]).ravel()]
    return out


WRITES = ("txt_embed_dict.pkl", "image_embed_dict.pkl", "trainids.pkl", "testids.pkl", "class_names.txt")


def write(out_dir: str, contents: dict) -> list:
    """Write the folder; returns the previous conversion's files removed (its class_names.txt when
    these splits name no classes)."""
    os.makedirs(out_dir, exist_ok=True)
    for name, obj in contents.items():
        path = os.path.join(out_dir, name)
        if name.endswith(".pkl"):
            io.write_pickle(path, obj, protocol=2)
        else:
            with io.atomic_open(path) as f:
                f.write("\n".join(obj) + "\n")
    return io.remove_stale(out_dir, WRITES, contents)


def main(argv):
    if len(argv) > 1:
        raise ConfigError(f"unexpected arguments {argv[1:]}")
    if not (FLAGS.res101 and FLAGS.splits and FLAGS.out):
        raise ConfigError("--res101, --splits and --out are required")
    io.check_output_dir(FLAGS.out, FLAGS.overwrite, owned="trainids.pkl", what="ZSCRGAN dataset folder")
    contents = convert(FLAGS.res101, FLAGS.splits)
    removed = write(FLAGS.out, contents)
    n = sum(len(v) for v in contents["image_embed_dict.pkl"].values())
    print(f"{FLAGS.out}: {len(contents['trainids.pkl'])} seen / {len(contents['testids.pkl'])} unseen classes, "
          f"{n} images, text dim {len(next(iter(contents['txt_embed_dict.pkl'].values()))[0])}"
          + (f" (removed the previous conversion's {', '.join(removed)})" if removed else ""))


def define_flags():
    flags.DEFINE_string("res101", None, "res101.mat (features (2048, n), labels (n, 1), 1-based).")
    flags.DEFINE_string("splits", None, "att_splits.mat or sent_splits.mat of the same dataset.")
    flags.DEFINE_string("out", None, "Output folder (ZSCRGAN reads datasets/<NAME>/); new or empty.")
    flags.DEFINE_bool("overwrite", False, "Replace --out when it holds a previous conversion.")


def cli():
    define_flags()
    run.run_main(main)


if __name__ == "__main__":
    cli()
