"""UCI Multiple Features (`uci_all.mat` + `uci_mfeat_6views.npz`) -> the generic feature folder.

    python -m tools.convert_uci --mat ../shared/data/uci_mfeat/uci_all.mat \\
        --views ../shared/data/uci_mfeat/uci_mfeat_6views.npz --out data/uci --unseen 5,6,7,8,9

The fixed 1500/500 split of `uci_all.mat` (fou76 as "image", kar64 as "text", labels 1..10 for
the digits 0..9) becomes train/test `.npy` files with 0-based labels; the optional six-view
archive adds `class_emb.npy` (GloVe-50 of the digit names) and `class_names.txt`, which JFSE
and the zero-shot methods need. Files are written atomically; an existing folder is replaced
file by file only after every input has been read, and the previous conversion's files this one
does not write (its unseen_classes.txt, when --unseen '' now) are removed.
"""

from __future__ import annotations

import os

import numpy as np
from absl import flags

from common import io, run
from common.errors import ConfigError, DataError

FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_string("mat", None, "Path of uci_all.mat.")
    flags.DEFINE_string("views", None, "Optional uci_mfeat_6views.npz (class names and GloVe vectors).")
    flags.DEFINE_string("out", None, "Feature folder to write.")
    flags.DEFINE_string("unseen", "5,6,7,8,9", "Unseen class ids (0-based) for unseen_classes.txt; '' for none.")
    flags.DEFINE_bool("overwrite", False, "Replace --out when it holds a previous feature folder.")


def read_uci(mat_path: str, views_path: str | None = None) -> dict:
    """Arrays of the feature folder, keyed by file name."""
    import scipy.io

    if not os.path.isfile(mat_path):
        raise DataError(f"{mat_path}: not found (uci_all.mat of BMC-SDNU/Cross-Modal-Retrieval, FSH folder)")
    try:
        m = scipy.io.loadmat(mat_path)
    except Exception as e:  # scipy raises several types for a damaged file
        raise DataError(f"{mat_path}: not a readable MATLAB file ({e})") from None
    missing = [k for k in ("I_tr", "I_te", "T_tr", "T_te", "L_tr", "L_te") if k not in m]
    if missing:
        raise DataError(f"{mat_path}: lacks the variables {missing}")
    out = {}
    for split, s in (("train", "tr"), ("test", "te")):
        out[f"{split}_img.npy"] = io.as_matrix(m[f"I_{s}"], mat_path).astype(np.float32)
        out[f"{split}_txt.npy"] = io.as_matrix(m[f"T_{s}"], mat_path).astype(np.float32)
        labels = io.as_int_labels(m[f"L_{s}"], mat_path)
        if labels.min() < 1 or labels.max() > 10:
            raise DataError(f"{mat_path}: L_{s} must hold labels 1..10, found {labels.min()}..{labels.max()}")
        out[f"{split}_lab.npy"] = labels - 1
    if views_path:
        views = io.load_npz(views_path, ("class_glove50", "class_names"))
        out["class_emb.npy"] = io.as_matrix(views["class_glove50"], views_path)
        out["class_names.txt"] = [str(n) for n in views["class_names"]]
        if out["class_emb.npy"].shape[0] != 10:
            raise DataError(f"{views_path}: class_glove50 has {out['class_emb.npy'].shape[0]} rows, expected 10")
    return out


def unseen_ids(unseen: str) -> list:
    """--unseen '5,9' or '5 9': class ids in 0..9."""
    try:
        ids = sorted({int(tok) for tok in unseen.replace(",", " ").split()}) if unseen.strip() else []
    except ValueError:
        raise ConfigError(f"--unseen: expected class ids in 0..9 separated by commas, got {unseen!r}") from None
    if ids and (ids[0] < 0 or ids[-1] > 9):
        raise ConfigError(f"--unseen: class ids must be in 0..9, got {ids}")
    return ids


# what a conversion writes; an --overwrite conversion removes those of the previous one it does not write
WRITES = ("train_img.npy", "train_txt.npy", "train_lab.npy", "test_img.npy", "test_txt.npy", "test_lab.npy",
          "class_emb.npy", "class_names.txt", "unseen_classes.txt")


def write_folder(arrays: dict, out: str, unseen: str = "") -> list:
    """Write the folder; returns the previous conversion's files removed (e.g. unseen_classes.txt
    of a conversion with unseen classes, replaced by one with --unseen '')."""
    ids = unseen_ids(unseen)
    os.makedirs(out, exist_ok=True)
    for name, value in arrays.items():
        path = os.path.join(out, name)
        if name.endswith(".npy"):
            with io.atomic_open(path, "wb") as f:
                np.save(f, value)
        else:
            with io.atomic_open(path, "w") as f:
                f.write("\n".join(value) + "\n")
    if ids:
        with io.atomic_open(os.path.join(out, "unseen_classes.txt"), "w") as f:
            f.write(",".join(map(str, ids)) + "\n")
    return io.remove_stale(out, WRITES, list(arrays) + (["unseen_classes.txt"] if ids else []))


def main(argv):
    if len(argv) > 1:
        raise ConfigError(f"unexpected arguments {argv[1:]}")
    if not FLAGS.mat or not FLAGS.out:
        raise ConfigError("--mat and --out are required")
    io.check_output_dir(FLAGS.out, FLAGS.overwrite, owned="train_img.npy", what="feature folder")
    unseen_ids(FLAGS.unseen)  # before any work
    removed = write_folder(read_uci(FLAGS.mat, FLAGS.views), FLAGS.out, FLAGS.unseen)
    print(f"wrote {FLAGS.out}" + (f" (removed the previous conversion's {', '.join(removed)})" if removed else ""))


def cli():
    define_flags()
    run.run_main(main)


if __name__ == "__main__":
    cli()
