"""Readers for the original releases' data folders and the generic feature folder.

Each returns a validated `CrossModalDataset` with 0-based labels. The layouts are those of
the releases (see `../shared/specs/*.md`, section "Data"); the TFDS builders in
`common.tfds_builders` wrap these functions, so both paths read files identically.
"""

from __future__ import annotations

import os
import re
from typing import Optional

import numpy as np

from common import io
from common.dataset import CrossModalDataset, Split
from common.errors import DataError

# --------------------------------------------------------------------------- ACMR

WIKIPEDIA_HOW_TO = (
    "Unzip data/wikipedia_dataset.zip of the ACMR release (sunpeng981712364/ACMR_demo) into this "
    "folder: it holds train_/test_img_feats.pkl (n x 4096), train_/test_txt_vecs.pkl (n x 5000) "
    "and train_/test_labels.pkl (1-based class ids).")
WIKIPEDIA_FILES = ("train_img_feats.pkl", "train_txt_vecs.pkl", "train_labels.pkl",
                   "test_img_feats.pkl", "test_txt_vecs.pkl", "test_labels.pkl")
WIKIPEDIA_CLASSES = ["art", "biology", "geography", "history", "literature", "media", "music",
                     "royalty", "sport", "warfare"]


def read_acmr_wikipedia(folder: str) -> CrossModalDataset:
    """ACMR's `wikipedia_dataset` pickles (2,173 train / 693 test pairs, 10 classes)."""
    io.require_files(folder, WIKIPEDIA_FILES, WIKIPEDIA_HOW_TO)
    splits = {}
    for split in ("train", "test"):
        p = lambda name: os.path.join(folder, name)  # noqa: E731
        image = io.as_matrix(io.load_pickle(p(f"{split}_img_feats.pkl")), p(f"{split}_img_feats.pkl"))
        text = io.as_matrix(io.load_pickle(p(f"{split}_txt_vecs.pkl")), p(f"{split}_txt_vecs.pkl"))
        labels = _one_based(io.as_int_labels(io.load_pickle(p(f"{split}_labels.pkl")),
                                             p(f"{split}_labels.pkl")), p(f"{split}_labels.pkl"))
        ids = None
        if os.path.exists(p(f"{split}_img_files.pkl")):
            ids = np.asarray([str(x) for x in io.load_pickle(p(f"{split}_img_files.pkl"))])
        text_ids = None
        if os.path.exists(p(f"{split}_txt_files.pkl")):
            text_ids = np.asarray([str(x) for x in io.load_pickle(p(f"{split}_txt_files.pkl"))])
        _same_rows(folder, split, image, text, labels)
        splits[split] = Split(image, text, labels, ids=ids, text_ids=text_ids)
    return CrossModalDataset(name="wikipedia", num_classes=10, class_names=list(WIKIPEDIA_CLASSES),
                             source=folder, **splits).validate()


NUSWIDE_HOW_TO = (
    "Unzip data/nuswide.zip of the ACMR release (sunpeng981712364/ACMR_demo) into this folder: "
    "dict-keyed pickles img_{train,test}_id_feats.pkl, {train,test}_id_bow.pkl, "
    "{train,test}_id_label_map.pkl, {train,test}_id_label_single.pkl and the id lists "
    "train_ids.pkl / test_ids.pkl.")
NUSWIDE_FILES = tuple(f.format(s=s) for s in ("train", "test") for f in (
    "img_{s}_id_feats.pkl", "{s}_id_bow.pkl", "{s}_id_label_map.pkl", "{s}_id_label_single.pkl",
    "{s}_ids.pkl"))


def read_acmr_nuswide(folder: str) -> CrossModalDataset:
    """ACMR's NUS-WIDE-10k pickles: dicts keyed by sample id, split by the id lists.

    The single-label base (0 or 1) is not recorded by the release; it is inferred by
    comparing the single ids with the stored one-hot label vectors and reported in
    `dataset.extras["nuswide_label_base"]`.
    """
    io.require_files(folder, NUSWIDE_FILES, NUSWIDE_HOW_TO)
    p = lambda name: os.path.join(folder, name)  # noqa: E731
    splits, bases = {}, set()
    for split in ("train", "test"):
        ids = io.unwrap(io.load_pickle(p(f"{split}_ids.pkl")))
        if isinstance(ids, (str, bytes, dict)) or not hasattr(ids, "__len__") or len(ids) == 0:
            raise DataError(f"{p(f'{split}_ids.pkl')}: expected a non-empty list of ids, got {type(ids).__name__}")
        ids = list(ids)
        tables = {}
        for key, name in (("image", f"img_{split}_id_feats.pkl"), ("text", f"{split}_id_bow.pkl"),
                          ("onehot", f"{split}_id_label_map.pkl"),
                          ("single", f"{split}_id_label_single.pkl")):
            table = io.unwrap(io.load_pickle(p(name)))
            if not isinstance(table, dict):
                raise DataError(f"{p(name)}: expected a dict keyed by sample id, got {type(table).__name__}")
            missing = [i for i in ids if i not in table]
            if missing:
                raise DataError(f"{p(name)}: {len(missing)} ids of {split}_ids.pkl are missing "
                                f"(first: {missing[0]!r})")
            tables[key] = [table[i] for i in ids]
        image = io.as_matrix(tables["image"], p(f"img_{split}_id_feats.pkl"))
        text = io.as_matrix(tables["text"], p(f"{split}_id_bow.pkl"))
        onehot = io.as_matrix(tables["onehot"], p(f"{split}_id_label_map.pkl"))
        single = io.as_int_labels(np.asarray(tables["single"]).reshape(len(ids), -1),
                                  p(f"{split}_id_label_single.pkl"))
        arg = onehot.argmax(axis=1)
        if np.array_equal(arg, single):
            bases.add(0)
        elif np.array_equal(arg, single - 1):
            bases.add(1)
        else:
            raise DataError(f"{p(f'{split}_id_label_single.pkl')}: single labels disagree with "
                            f"{split}_id_label_map.pkl for 0-based and 1-based readings")
        splits[split] = Split(image, text, arg.astype(np.int64), ids=np.asarray([str(i) for i in ids]))
    ds = CrossModalDataset(name="nuswide", num_classes=10, source=folder, **splits)
    ds.extras["nuswide_label_base"] = sorted(bases)[0] if len(bases) == 1 else sorted(bases)
    return ds.validate()


# --------------------------------------------------------------------------- JFSE

XMN_HOW_TO = (
    "Put the JFSE release's data/xmn pickles here (CFM-MSG/Code_JFSE, PKU XMediaNet image-text "
    "features): train_img_files.pkl (n x 4096), train_txt_files.pkl (n x 300), train_labels.pkl "
    "(1-based), train_attribute.pkl (n x 300, or class_emb.npy C x 300 instead) and the three "
    "test_* files. .npy files with the same stems are accepted. The original archive is often "
    "unavailable: write these arrays from your own features with numpy.save.")
XMN_STEMS = ("train_img_files", "train_txt_files", "train_labels",
             "test_img_files", "test_txt_files", "test_labels")


def _xmn_load(folder: str, stem: str, required: bool = True):
    for ext in (".pkl", ".npy"):
        path = os.path.join(folder, stem + ext)
        if os.path.exists(path):
            return (io.load_pickle(path) if ext == ".pkl" else io.load_array(path)), path
    if required:
        raise DataError(f"missing {stem}.pkl (or {stem}.npy) in {folder}. {XMN_HOW_TO}")
    return None, None


def read_jfse_xmn(folder: str, num_classes: int = 200, label_base: int = 1) -> CrossModalDataset:
    """JFSE's `data/xmn` pickles. The test set is the zero-shot (unseen) test set.

    Class embeddings: `class_emb.npy` (C x E) when present, else the rows of
    `train_attribute` gathered per training class (other classes get NaN rows and are
    reported by `CrossModalDataset.class_embedding_rows`). Unseen classes:
    `unseen_classes.txt` (0-based) when present, else the test classes absent from training.
    """
    io.require_folder(folder, XMN_HOW_TO)
    arrays = {stem: _xmn_load(folder, stem) for stem in XMN_STEMS}
    splits = {}
    for split in ("train", "test"):
        image = io.as_matrix(*arrays[f"{split}_img_files"])
        text = io.as_matrix(*arrays[f"{split}_txt_files"])
        labels_obj, labels_path = arrays[f"{split}_labels"]
        labels = io.as_int_labels(labels_obj, labels_path) - label_base
        if labels.size and labels.min() < 0:
            raise DataError(f"{labels_path}: labels are {label_base}-based in this release, found "
                            f"{labels.min() + label_base}")
        _same_rows(folder, split, image, text, labels)
        splits[split] = Split(image, text, labels)
    class_emb = _optional_class_embeddings(folder, num_classes)
    attribute, attr_path = _xmn_load(folder, "train_attribute", required=False)
    if attribute is not None:
        attribute = io.as_matrix(attribute, attr_path)
        if attribute.shape[0] != len(splits["train"]):
            raise DataError(f"{attr_path}: {attribute.shape[0]} rows, expected one per training "
                            f"pair ({len(splits['train'])})")
        if class_emb is None:
            class_emb = np.full((num_classes, attribute.shape[1]), np.nan, np.float32)
            rows = np.unique(splits["train"].labels, return_index=True)
            class_emb[rows[0]] = attribute[rows[1]]
    elif class_emb is None:
        raise DataError(f"{folder}: neither train_attribute.pkl nor class_emb.npy is present; "
                        "JFSE needs class embeddings. " + XMN_HOW_TO)
    unseen = _optional_class_list(folder, "unseen_classes.txt", num_classes, _optional_names(folder))
    if unseen is None:
        unseen = np.setdiff1d(np.unique(splits["test"].labels), np.unique(splits["train"].labels))
    ds = CrossModalDataset(name="xmn", num_classes=num_classes, class_embeddings=class_emb,
                           unseen_classes=unseen, class_names=_optional_names(folder),
                           source=folder, **splits)
    if attribute is not None:
        ds.extras["train_attribute"] = attribute
    return ds.validate()


# --------------------------------------------------------------------------- ZSCRGAN

ZSCRGAN_FILES = ("txt_embed_dict.pkl", "image_embed_dict.pkl", "trainids.pkl", "testids.pkl")
ZSCRGAN_HOW_TO = (
    "ZSCRGAN reads datasets/<NAME>/ with four Python-2 pickles: txt_embed_dict.pkl and "
    "image_embed_dict.pkl (dict: int class id -> list of 1-D vectors), trainids.pkl (list of seen "
    "class ids) and testids.pkl (unseen class ids). Get the zips named in the ranarag/ZSCRGAN "
    "README, or write your own features in that structure (or use --dataset features).")


def read_zscrgan(folder: str, name: str = "zscrgan") -> CrossModalDataset:
    """ZSCRGAN's per-class dictionaries. Images and texts are unpaired collections.

    Classes are ordered by ascending id (the release's Python-2 dict order), rows within
    a class in stored order; `text_ids` holds each text's index within its class (the
    release trains on index 0 only). `extras["trainids"]` keeps the pickled seen-class order
    that the release's sampler walks.
    """
    io.require_files(folder, ZSCRGAN_FILES, ZSCRGAN_HOW_TO)
    p = lambda n: os.path.join(folder, n)  # noqa: E731
    txt = io.unwrap(io.load_pickle(p("txt_embed_dict.pkl")))
    img = io.unwrap(io.load_pickle(p("image_embed_dict.pkl")))
    for table, n in ((txt, "txt_embed_dict.pkl"), (img, "image_embed_dict.pkl")):
        if not isinstance(table, dict) or not table:
            raise DataError(f"{p(n)}: expected a non-empty dict class id -> list of vectors. "
                            + ZSCRGAN_HOW_TO)
    trainids, testids = (_class_ids(io.unwrap(io.load_pickle(p(n))), p(n)) for n in ("trainids.pkl", "testids.pkl"))
    if set(trainids) & set(testids):
        raise DataError(f"{folder}: trainids and testids share classes "
                        f"{sorted(set(trainids) & set(testids))[:5]}")
    used = trainids + testids
    if min(used) < 0:
        raise DataError(f"{folder}: class ids must be non-negative ints")
    for c in used:
        for table, n in ((txt, "txt_embed_dict.pkl"), (img, "image_embed_dict.pkl")):
            if c not in table or len(table[c]) == 0:
                raise DataError(f"{p(n)}: class {c} (listed in the id files) has no vectors")

    def collect(classes, table, n):
        rows, labels, index = [], [], []
        for c in sorted(classes):
            m = io.as_matrix(table[c], f"{p(n)}[{c}]")
            if rows and m.shape[1] != rows[0].shape[1]:
                raise DataError(f"{p(n)}: class {c} has {m.shape[1]}-d vectors, class {sorted(classes)[0]} "
                                f"{rows[0].shape[1]}-d; every vector of a file must have one width")
            rows.append(m)
            labels.append(np.full(len(m), c, np.int64))
            index.append(np.arange(len(m)))
        return (np.concatenate(rows), np.concatenate(labels), np.concatenate(index))

    splits = {}
    for split, classes in (("train", trainids), ("test", testids)):
        image, image_labels, image_index = collect(classes, img, "image_embed_dict.pkl")
        text, text_labels, text_index = collect(classes, txt, "txt_embed_dict.pkl")
        splits[split] = Split(image, text, image_labels, text_labels=text_labels,
                              ids=image_index, text_ids=text_index)
    ds = CrossModalDataset(name=name, num_classes=max(used) + 1,
                           seen_classes=np.asarray(sorted(trainids)),
                           unseen_classes=np.asarray(sorted(testids)), source=folder, **splits)
    ds.extras["trainids"] = trainids
    return ds.validate()


def _class_ids(obj, path: str) -> list:
    """A pickled list of integer class ids."""
    try:
        values = np.asarray(list(obj)).ravel()
        ids = values.astype(np.int64)
        if values.size == 0 or not np.array_equal(ids, values.astype(np.float64)):
            raise ValueError("empty" if values.size == 0 else "not whole numbers")
    except (TypeError, ValueError) as e:
        raise DataError(f"{path}: expected a non-empty list of integer class ids ({e})") from None
    return [int(c) for c in ids]


# --------------------------------------------------------------------------- IAPR TC-12 (hashing)

IAPR_FILES = ("iapr_train", "iapr_test", "iapr_retrieval")
IAPR_BOW_DIM, IAPR_NUM_LABELS = 2912, 255
IAPR_HOW_TO = (
    "The hashing release (zhongzhh8/Cross-Modal-Retrieval) reads iapr_train (10,000 lines), "
    "iapr_test (2,000) and iapr_retrieval (18,000): each line is 'DD/NNNNN.jpg', 2912 BoW "
    "entries and 255 label entries. Image features come from features.npz (arrays 'path' and "
    "'img', optionally 'txt' for sentence features) in the same folder, written by the feature "
    "extraction tool.")
_IAPR_PATH = re.compile(r"^[^\s/]+/[^\s/]+\.\w+$")


def read_iapr_list(path: str):
    """(paths, bow uint8 (n, 2912), labels uint8 (n, 255)) of one split file."""
    if not os.path.exists(path):
        raise DataError(f"missing {os.path.basename(path)} in {os.path.dirname(path) or '.'}. "
                        + IAPR_HOW_TO)
    paths, rows = [], []
    width = 1 + IAPR_BOW_DIM + IAPR_NUM_LABELS
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            tokens = line.split()
            if not tokens:
                continue
            if len(tokens) != width:
                raise DataError(f"{path}:{line_no}: expected {width} tokens (path + {IAPR_BOW_DIM} "
                                f"BoW + {IAPR_NUM_LABELS} labels), got {len(tokens)}")
            if not _IAPR_PATH.match(tokens[0]):
                raise DataError(f"{path}:{line_no}: first token {tokens[0]!r} is not 'DD/NNNNN.jpg'")
            paths.append(tokens[0])
            rows.append(tokens[1:])
    if not rows:
        raise DataError(f"{path}: the split file is empty")
    try:
        values = np.asarray(rows, dtype=np.float32)
    except ValueError as e:
        raise DataError(f"{path}: non-numeric BoW/label entries ({e})") from None
    if not np.isin(values, (0, 1)).all():
        bad = np.argwhere(~np.isin(values, (0, 1)))[0]
        raise DataError(f"{path}:{bad[0] + 1}: entries must be 0/1, found {values[tuple(bad)]}")
    values = values.astype(np.uint8)
    return np.asarray(paths), values[:, :IAPR_BOW_DIM], values[:, IAPR_BOW_DIM:]


def read_iapr(folder: str, text_source: str = "bow") -> CrossModalDataset:
    """IAPR TC-12 split files + `features.npz`: train, test (queries), retrieval (database).

    `text_source="bow"` uses the split files' 2,912-d bag of words as the text feature
    (fully offline, DCMH-style); `"txt"` uses `features.npz['txt']` (e.g. BERT [CLS]).
    """
    io.require_files(folder, IAPR_FILES + ("features.npz",), IAPR_HOW_TO)
    feats_path = os.path.join(folder, "features.npz")
    feats = io.load_npz(feats_path, ("path", "img", "txt") if text_source == "txt" else ("path", "img"))
    index = {str(pth): i for i, pth in enumerate(feats["path"])}
    img = feats["img"]
    txt = feats["txt"] if text_source == "txt" else None
    splits = {}
    for split, fname in (("train", "iapr_train"), ("test", "iapr_test"), ("database", "iapr_retrieval")):
        paths, bow, labels = read_iapr_list(os.path.join(folder, fname))
        missing = [pth for pth in paths if pth not in index]
        if missing:
            raise DataError(f"{feats_path}: no image features for {len(missing)} paths of {fname} "
                            f"(first: {missing[0]})")
        rows = np.asarray([index[pth] for pth in paths])
        text = bow.astype(np.float32) if txt is None else np.asarray(txt[rows], np.float32)
        splits[split] = Split(np.asarray(img[rows], np.float32), text, labels, ids=paths)
    return CrossModalDataset(name="iapr", num_classes=IAPR_NUM_LABELS, source=folder,
                             **splits).validate()


# --------------------------------------------------------------------------- generic feature folder

FEATURES_HOW_TO = (
    "A feature folder holds train_img, train_txt, train_lab, test_img, test_txt, test_lab "
    "(optionally val_*) as .npy, .mat (one variable named like the file) or .h5 (one dataset named "
    "like the file); *_img_lab / *_txt_lab are accepted for labels; optional class_emb.npy, "
    "class_names.txt, unseen_classes.txt. See docs/data.md, 'Bring your own data'.")


def _missing_stems(missing):
    """File stems that would have satisfied a missing part (labels may also be *_img_lab)."""
    stems = set(missing)
    stems |= {m[:-3] + s for m in missing if m.endswith("_lab") for s in ("img_lab", "txt_lab")}
    return stems


def read_feature_folder(folder: str, label_base: Optional[int] = None) -> CrossModalDataset:
    """The generic layout every method accepts (`--dataset features --data_dir DIR`).

    Labels: ints `(n,)`/`(n, 1)`, 0- or 1-based, or multi-hot `(n, C)`. The base is 0 when
    any split contains class 0, otherwise 1 (override with `label_base` or a
    `label_base.txt` holding 0 or 1).
    """
    io.require_folder(folder, FEATURES_HOW_TO)
    raw, missing = {}, []
    for split in ("train", "val", "test"):
        files = {}
        for part in ("img", "txt"):
            files[part] = io.find_array_file(folder, f"{split}_{part}")
        label_files = [io.find_array_file(folder, f"{split}_{s}") for s in ("lab", "img_lab", "txt_lab")]
        files["lab"] = label_files[0] or label_files[1] or label_files[2]
        files["txt_lab"] = label_files[2] if (label_files[1] and label_files[2]) else None
        present = [k for k in ("img", "txt", "lab") if files[k]]
        if split == "val" and not present:
            continue
        missing += [f"{split}_{k}" for k in ("img", "txt", "lab") if not files[k]]
        raw[split] = files
    if missing:
        names = sorted(os.listdir(folder))
        archives = [n for n in names if n.endswith(".npz")]
        other = [n for n in names if os.path.splitext(n)[0] in _missing_stems(missing)]
        hints = ([f"{', '.join(archives)}: .npz archives are not read; save each array as its own .npy"]
                 if archives else [])
        hints += [f"{', '.join(other)}: not read, save as .npy"] if other else []
        hint = f" ({'; '.join(hints)})" if hints else ""
        raise DataError(f"missing {', '.join(missing)} (.npy/.mat/.h5) in {folder}{hint}. "
                        f"{FEATURES_HOW_TO}")
    loaded = {}
    for split, files in raw.items():
        image = io.as_matrix(io.load_array(files["img"]), files["img"])
        text = io.as_matrix(io.load_array(files["txt"]), files["txt"])
        labels = _labels_any(io.load_array(files["lab"]), files["lab"], image.shape[0])
        if files["txt_lab"]:
            txt_labels = _labels_any(io.load_array(files["txt_lab"]), files["txt_lab"], text.shape[0])
            if not np.array_equal(txt_labels, labels):
                raise DataError(f"{files['txt_lab']}: differs from {os.path.basename(files['lab'])}; "
                                "pairs must share labels")
        for what, arr, path in (("image", image, files["img"]), ("text", text, files["txt"])):
            if arr.shape[0] != labels.shape[0]:
                hint = (f"; it looks transposed ({arr.shape[0]} x {arr.shape[1]}): save it as (items, dims)"
                        if arr.shape[1] == labels.shape[0] else "")
                raise DataError(f"{path}: {arr.shape[0]} {what} rows but "
                                f"{os.path.basename(files['lab'])} has {labels.shape[0]} labels{hint}")
        loaded[split] = [image, text, labels]
    if all(v[2].ndim == 2 for v in loaded.values()) and all((v[2].sum(axis=1) == 1).all() for v in loaded.values()):
        for v in loaded.values():  # one-hot rows are class ids (0-based by position)
            v[2] = v[2].argmax(axis=1).astype(np.int64)
        label_base = 0
    class_emb = _optional_class_embeddings(folder, None)
    names = _optional_names(folder)
    class_lists = {name: len(rows) for name, rows in (("class_emb.npy", class_emb), ("class_names.txt", names))
                   if rows is not None}  # rows per class list: the label base and range checks use them
    multilabel = {v[2].ndim == 2 for v in loaded.values()}
    if len(multilabel) > 1:
        kinds = ", ".join(f"{raw[k]['lab']}: {'multi-hot' if v[2].ndim == 2 else 'class ids'}"
                          for k, v in loaded.items())
        raise DataError(f"{folder}: some splits have multi-hot labels and others class ids ({kinds})")
    if not multilabel.pop():
        base = label_base
        if base is None and os.path.exists(os.path.join(folder, "label_base.txt")):
            base = _label_base(os.path.join(folder, "label_base.txt"))
        if base is None:
            base = 0 if any((v[2] == 0).any() for v in loaded.values()) else 1
            if base == 1:
                _refuse_ambiguous_base(folder, max(int(v[2].max()) for v in loaded.values() if v[2].size),
                                       class_lists)
        for split, v in loaded.items():
            if v[2].size and v[2].min() - base < 0:
                raise DataError(f"{raw[split]['lab']}: label {v[2].min()} is below the label base {base} "
                                "(label_base.txt, or 1 when no split holds class 0)")
            v[2] = v[2] - base
    else:
        base = 0  # multi-hot columns are classes 0..C-1
        for v in loaded.values():
            v[2] = v[2].astype(np.uint8)
    splits = {s: Split(*v) for s, v in loaded.items()}
    num_classes = max((int(s.labels.max()) + 1 if s.labels.size else 0) if s.labels.ndim == 1
                      else s.labels.shape[1] for s in splits.values())
    for what, count in class_lists.items():
        if count < num_classes and splits["train"].labels.ndim == 1:
            where = max(((s, int(v.labels.max())) for s, v in splits.items() if v.labels.size), key=lambda t: t[1])
            raise DataError(f"{folder}: {what} has {count} rows, but {raw[where[0]]['lab']} holds class id "
                            f"{where[1]} (0-based): a label is out of range, or {what} lacks rows")
    num_classes = max([num_classes, *class_lists.values()])
    notes = []
    unseen = _optional_class_list(folder, "unseen_classes.txt", num_classes, names, notes, file_base=base)
    ds = CrossModalDataset(name=os.path.basename(os.path.normpath(folder)) or "features",
                           num_classes=num_classes, class_names=names, class_embeddings=class_emb,
                           unseen_classes=unseen, source=folder, **splits)
    ds.extras["notes"] = notes
    return ds.validate()


def _refuse_ambiguous_base(folder: str, top: int, class_lists: dict) -> None:
    """No split holds class 0, yet a class list (class_emb.npy, class_names.txt: `class_lists` gives
    their rows) has a row for every label read as 0-based: 1-based labels with an empty last class, or
    0-based ones with an empty class 0. The two readings pair classes with other embeddings and names;
    the user must say."""
    for name, count in class_lists.items():
        if top < count:
            raise DataError(
                f"{folder}: no split holds class 0 and the largest label is {top}, so with the {count} rows of "
                f"{name} the labels may be 1-based (class {count} without pairs) or 0-based (class 0 without "
                "pairs); write 1 or 0 into label_base.txt in that folder to say which")


def _label_base(path: str) -> int:
    lines = io.read_lines(path)
    if len(lines) != 1 or lines[0] not in ("0", "1"):
        raise DataError(f"{path}: must hold one line, 0 or 1 (the label base), got "
                        f"{lines[0][:20] if lines else 'nothing'!r}")
    return int(lines[0])


def _labels_any(arr: np.ndarray, path: str, rows: int) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim == 2 and arr.shape[0] == 1 and arr.shape[1] > 1 and rows != 1:  # MATLAB's row vector of
        arr = arr.ravel()                                          # class ids (what savemat makes of a 1-D array)
    if arr.ndim == 2 and arr.shape[1] > 1:
        if not np.isin(arr, (0, 1)).all():
            raise DataError(f"{path}: a 2-D label array must be multi-hot 0/1 (n, C)")
        return arr.astype(np.uint8)
    return io.as_int_labels(arr, path)


# --------------------------------------------------------------------------- shared helpers

def _one_based(labels: np.ndarray, path: str) -> np.ndarray:
    if labels.size and labels.min() < 1:
        raise DataError(f"{path}: labels are 1-based in this release, found {labels.min()}")
    return labels - 1


def _same_rows(folder, split, image, text, labels):
    if not image.shape[0] == text.shape[0] == labels.shape[0]:
        raise DataError(f"{folder}: {split} has {image.shape[0]} images, {text.shape[0]} texts and "
                        f"{labels.shape[0]} labels; rows must be aligned pairs")


def _optional_class_embeddings(folder: str, num_classes: Optional[int]) -> Optional[np.ndarray]:
    path = os.path.join(folder, "class_emb.npy")
    if not os.path.exists(path):
        return None
    emb = io.as_matrix(io.load_array(path), path)
    if num_classes is not None and emb.shape[0] != num_classes:
        raise DataError(f"{path}: {emb.shape[0]} rows, expected one per class ({num_classes})")
    if not np.all(np.isfinite(emb)):
        raise DataError(f"{path}: contains NaN/inf")
    return emb


def _optional_class_list(folder: str, name: str, num_classes: int, names: Optional[list] = None,
                         notes: Optional[list] = None, file_base: int = 0) -> Optional[np.ndarray]:
    """0-based class ids, or class names of class_names.txt one per line. `file_base` 1: the labels
    were 1-based in their files, so numeric ids are a likely slip; a note (into `notes`) says which
    file labels they select."""
    path = os.path.join(folder, name)
    if not os.path.exists(path):
        return None
    lines = io.read_lines(path)
    try:
        ids = np.asarray([int(tok) for line in lines for tok in line.replace(",", " ").split()], np.int64)
    except ValueError:
        if not names:
            raise DataError(f"{path}: expected 0-based integer class ids, or class names with class_names.txt "
                            f"beside it (found {lines[0][:40]!r})") from None
        index = {n: i for i, n in enumerate(names)}
        folded = {n.casefold(): i for i, n in reversed(list(enumerate(names)))}
        unknown = [line for line in lines if line not in index and line.casefold() not in folded]
        if unknown:
            raise DataError(f"{path}: {', '.join(repr(u) for u in unknown[:5])} "
                            f"{'is' if len(unknown) == 1 else 'are'} not in class_names.txt "
                            f"({', '.join(names[:8])}{', ...' if len(names) > 8 else ''})")
        return np.asarray([index.get(line, folded.get(line.casefold())) for line in lines], np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= num_classes):
        raise DataError(f"{path}: class ids must be 0-based in 0..{num_classes - 1}")
    if file_base == 1 and ids.size and notes is not None:
        notes.append(f"{path}: holds 0-based class ids (docs/data.md) while this folder's labels are 1-based, so "
                     f"its unseen classes are the file labels {', '.join(str(i + 1) for i in sorted(ids))}; "
                     "write class names (of class_names.txt) instead if that is not what you meant")
    return ids


def _optional_names(folder: str) -> Optional[list]:
    path = os.path.join(folder, "class_names.txt")
    return io.read_rows(path, "class name") if os.path.exists(path) else None


# --------------------------------------------------------------------------- MIRFlickr-25K (hashing)

MIRFLICKR_HOW_TO = (
    "MIRFlickr-25K in the hashing literature's .mat layout: mirflickr25k-yall.mat (YAll, n x 1386 tag "
    "bag of words) and mirflickr25k-lall.mat (LAll, n x 24 multi-hot labels), optionally "
    "mirflickr25k-iall.mat (IAll, n x d image features; without it only the tag side exists).")


def read_mirflickr(folder: str, seed: int = 0, num_queries: int = 2000, num_train: int = 10000) -> CrossModalDataset:
    """The standard hashing protocol: a seeded draw of `num_queries` queries (test), the rest as
    the database, the first `num_train` of the (shuffled) database for training. `ids` hold
    the row numbers in the .mat files, so the split can be reproduced elsewhere.

    Without image features the image side is zero-width and `extras["has_images"]` is False;
    only single-modality (tag -> tag) hashing can run on it.
    """
    io.require_folder(folder, MIRFLICKR_HOW_TO)
    p = lambda n: os.path.join(folder, n)  # noqa: E731
    missing = [n for n in ("mirflickr25k-yall.mat", "mirflickr25k-lall.mat") if not os.path.exists(p(n))]
    if missing:
        raise DataError(f"missing {', '.join(missing)} in {folder}. {MIRFLICKR_HOW_TO}")
    tags = io.load_mat(p("mirflickr25k-yall.mat"), ["YAll"])["YAll"]
    labels = io.load_mat(p("mirflickr25k-lall.mat"), ["LAll"])["LAll"]
    tags = io.as_matrix(tags, p("mirflickr25k-yall.mat")).astype(np.float32)
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.shape[0] != tags.shape[0]:
        raise DataError(f"{p('mirflickr25k-lall.mat')}: LAll has shape {labels.shape}, expected "
                        f"({tags.shape[0]}, C) to match YAll's {tags.shape[0]} rows")
    labels = labels.astype(np.uint8)
    has_images = os.path.exists(p("mirflickr25k-iall.mat"))
    if has_images:
        images = io.as_matrix(io.load_mat(p("mirflickr25k-iall.mat"), ["IAll"])["IAll"],
                              p("mirflickr25k-iall.mat")).astype(np.float32)
        if images.shape[0] != tags.shape[0]:
            raise DataError(f"{p('mirflickr25k-iall.mat')}: {images.shape[0]} rows, YAll has {tags.shape[0]}")
    else:
        images = np.zeros((tags.shape[0], 0), np.float32)
    n = tags.shape[0]
    if not 0 < num_queries < n:
        raise DataError(f"{folder}: {n} items cannot give {num_queries} queries and a database")
    order = np.random.default_rng(seed).permutation(n)
    query, database = order[:num_queries], order[num_queries:]
    train = database[:min(num_train, len(database))]
    split = lambda rows: Split(images[rows], tags[rows], labels[rows], ids=rows)  # noqa: E731
    ds = CrossModalDataset(name="mirflickr25k", train=split(train), test=split(query), database=split(database),
                           num_classes=labels.shape[1], source=folder)
    ds.extras["has_images"] = has_images
    return ds.validate()
