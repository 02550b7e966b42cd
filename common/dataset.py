"""One in-memory description of a cross-modal dataset, shared by every method.

Every reader (release formats, the generic feature folder, synthetic data) returns a
`CrossModalDataset`; every method and metric consumes one. Keeping it in NumPy means the
readers, the TFDS builders and the `tf.data` pipelines all agree on one layout.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Optional, Sequence

import numpy as np

from common import io
from common.errors import DataError

SPLIT_NAMES = ("train", "val", "test", "database")


@dataclasses.dataclass
class Split:
    """Image and text features of one split.

    Paired split (`text_labels is None`): row i of `image` and row i of `text` form a
    pair and share `labels[i]`. Unpaired split (ZSCRGAN's per-class collections): the two
    modalities have their own rows; `labels` belongs to the images, `text_labels` to the
    texts. Labels are int class ids `(n,)` (0-based) or multi-hot `(n, C)` uint8.
    """

    image: np.ndarray
    text: np.ndarray
    labels: np.ndarray
    text_labels: Optional[np.ndarray] = None
    ids: Optional[np.ndarray] = None  # image-side ids (file names, sample ids)
    text_ids: Optional[np.ndarray] = None

    @property
    def paired(self) -> bool:
        return self.text_labels is None

    @property
    def image_labels(self) -> np.ndarray:
        return self.labels

    @property
    def txt_labels(self) -> np.ndarray:
        return self.labels if self.text_labels is None else self.text_labels

    @property
    def multilabel(self) -> bool:
        return self.labels.ndim == 2

    def __len__(self) -> int:
        return int(self.image.shape[0])

    @property
    def num_texts(self) -> int:
        return int(self.text.shape[0])

    def subset(self, image_rows: np.ndarray, text_rows: Optional[np.ndarray] = None) -> "Split":
        """Rows `image_rows` (and, for paired splits, the same text rows)."""
        image_rows = np.asarray(image_rows)
        if self.paired:
            return Split(
                image=self.image[image_rows],
                text=self.text[image_rows],
                labels=self.labels[image_rows],
                ids=None if self.ids is None else self.ids[image_rows],
                text_ids=None if self.text_ids is None else self.text_ids[image_rows],
            )
        text_rows = np.arange(self.num_texts) if text_rows is None else np.asarray(text_rows)
        return Split(
            image=self.image[image_rows],
            text=self.text[text_rows],
            labels=self.labels[image_rows],
            text_labels=self.text_labels[text_rows],
            ids=None if self.ids is None else self.ids[image_rows],
            text_ids=None if self.text_ids is None else self.text_ids[text_rows],
        )

    def select_classes(self, classes: Sequence[int]) -> "Split":
        """Rows whose class is in `classes` (multi-label: rows with any of them)."""
        classes = np.asarray(sorted(set(int(c) for c in classes)), dtype=np.int64)
        img_rows = np.flatnonzero(_has_class(self.labels, classes))
        if self.paired:
            return self.subset(img_rows)
        txt_rows = np.flatnonzero(_has_class(self.text_labels, classes))
        return self.subset(img_rows, txt_rows)


def _has_class(labels: np.ndarray, classes: np.ndarray) -> np.ndarray:
    if labels.ndim == 1:
        return np.isin(labels, classes)
    return labels[:, classes].sum(axis=1) > 0


def _row_keys(split: Split, paired: bool) -> list:
    """One hash per item (image row, plus its text row when paired), without keeping the rows."""
    if paired:
        return [hash((i.tobytes(), t.tobytes())) for i, t in zip(split.image, split.text)]
    return [hash(i.tobytes()) for i in split.image]


def _same_item(a: Split, i: int, b: Split, j: int, paired: bool) -> bool:
    return np.array_equal(a.image[i], b.image[j]) and (not paired or np.array_equal(a.text[i], b.text[j]))


@dataclasses.dataclass
class CrossModalDataset:
    """Splits plus the class-level side information zero-shot methods need.

    `database`, when present, is the retrieval gallery for queries from `test` (the
    hashing protocol); otherwise test queries rank the test set of the other modality.
    `seen_classes` / `unseen_classes` are 0-based class ids; `class_embeddings` is
    `(num_classes, E)` with row k describing class k.
    """

    name: str
    train: Split
    test: Split
    val: Optional[Split] = None
    database: Optional[Split] = None
    num_classes: int = 0
    class_names: Optional[list] = None
    class_embeddings: Optional[np.ndarray] = None
    seen_classes: Optional[np.ndarray] = None
    unseen_classes: Optional[np.ndarray] = None
    source: str = ""  # where it was read from, for messages and results.json
    extras: dict = dataclasses.field(default_factory=dict)  # format-specific metadata

    def __post_init__(self):
        if not self.num_classes:
            self.num_classes = _infer_num_classes(self.splits().values())

    def splits(self) -> dict:
        return {n: getattr(self, n) for n in SPLIT_NAMES if getattr(self, n) is not None}

    def fingerprint(self) -> dict:
        """What identifies this data in a run's fingerprint: name, where it was read from, and a
        digest of every array (features, labels, ids, class embeddings and class lists)."""
        h = hashlib.blake2b(digest_size=16)
        for name, split in self.splits().items():
            for part in ("image", "text", "labels", "text_labels", "ids", "text_ids"):
                _digest(h, f"{name}.{part}", getattr(split, part))
        for part in ("class_embeddings", "seen_classes", "unseen_classes"):
            _digest(h, part, getattr(self, part))
        source = self.source
        if source and os.path.isdir(source):
            source = os.path.abspath(source)
        return {"dataset": self.name, "source": source, "num_classes": int(self.num_classes),
                "sizes": {k: [len(s), s.num_texts] for k, s in self.splits().items()}, "digest": h.hexdigest()}

    @property
    def where(self) -> str:
        """What messages name: the folder or file it was read from, else its name."""
        return self.source or self.name

    @property
    def multilabel(self) -> bool:
        return self.train.multilabel

    @property
    def image_dim(self) -> int:
        return int(self.train.image.shape[1])

    @property
    def text_dim(self) -> int:
        return int(self.train.text.shape[1])

    def class_embedding_rows(self, labels: np.ndarray) -> np.ndarray:
        """Class embedding of each label; fails if the dataset has none for some class."""
        where = self.where
        if self.class_embeddings is None:
            raise DataError(
                f"{where}: this method needs class embeddings (class_emb.npy, C x E, one row per class id) in "
                "the data folder: `cmr class-vectors --names class_names.txt --out <folder>/class_emb.npy` "
                "makes them from class names (GloVe, the [glove] extra); for UCI, `cmr convert-uci --views "
                "uci_mfeat_6views.npz` writes them.")
        rows = self.class_embeddings[np.asarray(labels)]
        if not np.all(np.isfinite(rows)):
            missing = sorted(set(np.asarray(labels)[~np.isfinite(rows).all(axis=1)].tolist()))
            raise DataError(f"{where}: no class embedding for classes {missing[:10]}")
        return rows

    def warnings(self, standard: bool = True) -> list:
        """What is odd but not wrong about this data: the reader's notes, held-out splits that repeat
        other splits' items, and (for a standard, not zero-shot, result) test classes that training
        never sees."""
        return list(self.extras.get("notes", [])) + self.overlap_warnings() + (
            self.coverage_warnings() if standard else [])

    def require_rankable(self, gallery: Optional[Split] = None, gallery_name: str = "gallery") -> None:
        """`require_rankable` for the standard evaluation: the test queries against the database, else
        the test split, unless the method ranks another gallery."""
        if gallery is None:
            gallery = self.database if self.database is not None else self.test
            gallery_name = "database" if self.database is not None else "test split"
        require_rankable(self.test.labels, gallery.labels, f"{self.where}: every test query",
                         gallery_name)

    def coverage_warnings(self) -> list:
        """Test classes without a train item: their queries are zero-shot inside a standard result."""
        train_lab, test_lab = self.train.labels, self.test.labels
        if self.multilabel:
            in_train = np.flatnonzero(np.asarray(train_lab).sum(axis=0) > 0)
            in_test = np.flatnonzero(np.asarray(test_lab).sum(axis=0) > 0)
        else:
            in_train, in_test = np.unique(train_lab), np.unique(test_lab)
        absent = np.setdiff1d(in_test, in_train)
        if not len(absent):
            return []
        affected = int(_has_class(test_lab, absent).sum())
        shown = ", ".join(str(int(c)) for c in absent[:10]) + (", ..." if len(absent) > 10 else "")
        return [f"{self.where}: test classes [{shown}] have no train pairs ({affected} of "
                f"{len(self.test)} test items): their queries are zero-shot inside a standard result"]

    def overlap_warnings(self, min_share: float = 0.05) -> list:
        """Held-out splits that repeat another split's items (identical image and text rows; image
        rows where a split is unpaired): a copied or mis-split file. Exact duplicates also occur in
        real data, so at least `min_share` of the held-out split must repeat, and data without image
        features is not checked (distinct items share tag vectors: 17% of MIRFlickr's queries)."""
        where = self.where
        checks = {("test", "train"): "the test numbers are not held-out numbers",
                  ("val", "train"): "the validation numbers (and what is selected on them) are not held out",
                  ("test", "val"): "what is selected on the validation split is selected on the test split",
                  ("test", "database"): "those queries find themselves in the gallery"}
        out = []
        if self.image_dim == 0:
            return out
        keys = {}  # (split, paired) -> its row hashes: each split is hashed once however many checks use it

        def keys_of(name, paired):
            if (name, paired) not in keys:
                keys[name, paired] = _row_keys(getattr(self, name), paired)
            return keys[name, paired]

        for (held, other), meaning in checks.items():
            a, b = getattr(self, held), getattr(self, other)
            if a is None or b is None:
                continue
            paired = a.paired and b.paired
            first = {}
            for i, key in enumerate(keys_of(other, paired)):
                first.setdefault(key, i)
            held_keys = keys_of(held, paired)
            repeats = sum(1 for i, key in enumerate(held_keys)
                          if key in first and _same_item(a, i, b, first[key], paired))
            if repeats and repeats >= min_share * len(held_keys):
                what = "pairs" if paired else "images"
                out.append(f"{where}: {repeats} of {len(held_keys)} {held} {what} also appear in the {other} split "
                           f"(identical feature rows): {meaning}")
        return out

    def validate(self) -> "CrossModalDataset":
        """Fail with one clear message on anything a method would trip over later."""
        where = self.where
        for split_name, split in self.splits().items():
            for modality, feats in (("image", split.image), ("text", split.text)):
                if feats.ndim != 2:
                    raise DataError(
                        f"{where}: {split_name} {modality} features must be 2-D (n, dim), "
                        f"got shape {feats.shape}")
                if feats.shape[0] == 0:
                    raise DataError(f"{where}: the {split_name} split has no {modality} rows")
                io.require_finite(feats, f"{where}: {split_name} {modality} features")
            if split.image.shape[1] != self.image_dim or split.text.shape[1] != self.text_dim:
                raise DataError(
                    f"{where}: {split_name} feature dims {split.image.shape[1]}/{split.text.shape[1]}"
                    f" differ from train's {self.image_dim}/{self.text_dim}")
            for what, labels, n in (("image", split.labels, len(split)),
                                    ("text", split.txt_labels, split.num_texts)):
                if labels.shape[0] != n:
                    raise DataError(
                        f"{where}: {split_name} has {n} {what} rows but {labels.shape[0]} labels")
                _check_label_range(labels, self.num_classes, f"{where}: {split_name}")
            if split.paired and split.text.shape[0] != split.image.shape[0]:
                raise DataError(
                    f"{where}: {split_name} pairs image row i with text row i, but there are "
                    f"{split.image.shape[0]} images and {split.text.shape[0]} texts")
        if not self.multilabel and self.class_embeddings is None and self.num_classes > SPARSE_IDS_FROM:
            labels = [lab for s in self.splits().values() for lab in (s.labels, s.txt_labels)]
            present = np.unique(np.concatenate(labels))
            if self.num_classes > 10 * len(present):
                raise DataError(
                    f"{where}: class ids reach {self.num_classes - 1} but only {len(present)} classes have rows; "
                    "labels must be class ids 0..C-1 (renumber them, e.g. np.unique(labels, return_inverse=True))")
        if self.text_dim == 0 or (self.image_dim == 0 and self.extras.get("has_images", True)):
            raise DataError(f"{where}: the {'text' if self.text_dim == 0 else 'image'} features have no columns")
        if self.class_embeddings is not None and self.class_embeddings.shape[0] != self.num_classes:
            raise DataError(
                f"{where}: class embeddings have {self.class_embeddings.shape[0]} rows, "
                f"expected one per class ({self.num_classes})")
        if self.unseen_classes is not None:
            bad = [int(c) for c in self.unseen_classes if not 0 <= c < self.num_classes]
            if bad:
                raise DataError(f"{where}: unseen class ids {bad} are outside 0..{self.num_classes - 1}")
        for split_name, split in self.splits().items():
            for modality, feats in (("image", split.image), ("text", split.text)):
                if feats.shape[0] > 1 and feats.shape[1] and not np.ptp(feats, axis=0).any():
                    raise DataError(
                        f"{where}: every {split_name} {modality} row is identical, so these features "
                        "cannot tell items apart and any ranking of them would be arbitrary "
                        "(a failed feature extraction?)")
        return self

    def zero_shot(self, unseen_classes: Optional[Sequence[int]] = None) -> "ZeroShotView":
        """Split classes into seen/unseen: train (and val) keep seen classes only."""
        where = self.where
        if self.multilabel:
            raise DataError(f"{where}: zero-shot splits are defined for single-label datasets only")
        unseen = self.unseen_classes if unseen_classes is None else np.asarray(unseen_classes)
        if unseen is None or len(unseen) == 0:
            raise DataError(
                f"{where}: zero-shot needs unseen classes and this data defines none (a feature folder "
                "names them in unseen_classes.txt: one 0-based class id per line)")
        unseen = np.asarray(sorted(set(int(c) for c in unseen)), dtype=np.int64)
        seen = np.setdiff1d(np.arange(self.num_classes), unseen)
        train_rows = np.flatnonzero(_has_class(self.train.labels, seen))
        train = self.train.subset(train_rows)
        if len(train) == 0:
            raise DataError(f"{self.where}: no training rows left for the seen classes")
        return ZeroShotView(
            train=train,
            val=None if self.val is None else self.val.select_classes(seen),
            test_seen=self.test.select_classes(seen),
            test_unseen=self.test.select_classes(unseen),
            test_all=self.test,
            seen_classes=seen,
            unseen_classes=unseen,
            train_rows=train_rows,
        )


@dataclasses.dataclass
class ZeroShotView:
    """Seen-class training data and the three zero-shot test sets (seen, unseen, pooled)."""

    train: Split
    val: Optional[Split]
    test_seen: Split
    test_unseen: Split
    test_all: Split  # generalized zero-shot: seen + unseen pooled
    seen_classes: np.ndarray
    unseen_classes: np.ndarray
    train_rows: Optional[np.ndarray] = None  # rows of the full train split that `train` holds

    def describe(self, names: Optional[list] = None, limit: int = 12) -> str:
        """`unseen classes (2 of 4): 2 car, 3 tree` — which classes a zero-shot run holds out,
        printed with the data summary so a wrong unseen list shows before training."""
        named = lambda c: bool(names) and c < len(names) and names[c] != f"class_{c}"  # noqa: E731
        shown = [f"{c} {names[c]}" if named(c) else str(c) for c in map(int, self.unseen_classes[:limit])]
        more = f", ... ({len(self.unseen_classes) - limit} more)" if len(self.unseen_classes) > limit else ""
        total = len(self.seen_classes) + len(self.unseen_classes)
        return f"unseen classes ({len(self.unseen_classes)} of {total}): {', '.join(shown)}{more}"

    def require_evaluable(self, where: str) -> None:
        """Refused before training: an unseen class without test rows (its mAP would be undefined),
        or a single unseen class (every item relevant: mAP 1 by construction)."""
        present = set(np.unique(self.test_unseen.labels).tolist())
        empty = [int(c) for c in self.unseen_classes if int(c) not in present]
        if empty:
            raise DataError(f"{where}: unseen classes {empty[:10]} have no test rows; zero-shot retrieval needs "
                            "every unseen class in the test split (fix unseen_classes.txt or the test split)")
        if len(self.test_unseen) == 0:
            raise DataError(f"{where}: the test split holds no row of an unseen class")
        require_classes(self.test_unseen.labels, f"{where}: the unseen test set",
                        "a meaningful zero-shot mAP (one class makes every item relevant)")


SPARSE_IDS_FROM = 1000  # beyond this many class ids, most of them unused means the ids are not 0..C-1


def _digest(h, name: str, array) -> None:
    h.update(name.encode())
    if array is None:
        h.update(b"none")
        return
    a = np.asarray(array)
    if a.dtype == object or a.dtype.kind == "U":
        a = np.asarray([str(x) for x in a.ravel()]).astype("S")
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(np.ascontiguousarray(a).tobytes())


def _infer_num_classes(splits) -> int:
    n = 0
    for s in splits:
        for labels in (s.labels, s.txt_labels):
            if labels.ndim == 2:
                n = max(n, labels.shape[1])
            elif labels.size:
                n = max(n, int(labels.max()) + 1)
    return n


def _check_label_range(labels: np.ndarray, num_classes: int, where: str) -> None:
    if labels.ndim == 1:
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise DataError(
                f"{where}: labels must be class ids in 0..{num_classes - 1}, found "
                f"{labels.min()}..{labels.max()}")
    elif labels.ndim == 2:
        if labels.shape[1] != num_classes:
            raise DataError(f"{where}: multi-hot labels have {labels.shape[1]} columns, "
                            f"expected {num_classes}")
        if not np.isin(labels, (0, 1)).all():
            raise DataError(f"{where}: multi-hot labels must be 0/1")
    else:
        raise DataError(f"{where}: labels must be (n,) class ids or (n, C) multi-hot, "
                        f"got shape {labels.shape}")


def require_classes(labels: np.ndarray, what: str, why: str, minimum: int = 2) -> None:
    """Refuse a split with fewer than `minimum` classes: with one class every item is relevant to
    every query (mAP 1 by construction) and no pair of different classes exists to learn from."""
    labels = np.asarray(labels)
    n = labels.shape[1] if labels.ndim == 2 else len(np.unique(labels))
    present = int((labels.sum(0) > 0).sum()) if labels.ndim == 2 else n
    if present < minimum:
        raise DataError(f"{what} holds {present} class{'es' if present != 1 else ''}; {why} needs at least "
                        f"{minimum}")


def require_rankable(query_labels: np.ndarray, gallery_labels: np.ndarray, what: str, gallery_name: str) -> None:
    """Refuse an evaluation in which every query is relevant to every gallery item (one class, or a
    label every item carries): any ranking, even a random one, scores mAP 1."""
    if not len(query_labels) or not len(gallery_labels):
        return
    for start in range(0, len(query_labels), 256):  # real data leaves at the first block
        if not relevance(query_labels[start:start + 256], gallery_labels).all():
            return
    raise DataError(f"{what} is relevant to every item of the {gallery_name} (they all share a label), so any "
                    "ranking scores mAP 1; the evaluation needs items of other classes")


def relevance(query_labels: np.ndarray, gallery_labels: np.ndarray) -> np.ndarray:
    """Boolean (nq, ng): same class (int labels) or at least one shared label (multi-hot)."""
    if query_labels.ndim == 1:
        return query_labels[:, None] == gallery_labels[None, :]
    return (query_labels.astype(np.float32) @ gallery_labels.astype(np.float32).T) > 0
