"""ZSCRGAN's view of a dataset and the release's class-block batch sampler (spec zscrgan.md §4-§5).

Training sees only seen classes: all their images, and per class one text (the first, as the
release; `--train_text` can cycle or draw). Evaluation is zero-shot: every text of every
unseen class queries every image of the unseen classes.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional, Sequence

import numpy as np

from common.dataset import CrossModalDataset, Split, require_classes
from common.errors import ConfigError, DataError


@dataclasses.dataclass
class RetrievalSet:
    """Text queries and an image gallery (zero-shot: unseen classes only)."""

    queries: np.ndarray
    query_labels: np.ndarray
    gallery: np.ndarray
    gallery_labels: np.ndarray

    @functools.cached_property  # results.json is rewritten every cycle: computed once
    def chance_p_at_k(self) -> float:
        """Expected macro P@k of a random ranking: mean over query classes of the class's gallery share."""
        classes = np.unique(self.query_labels)
        return float(np.mean([np.mean(self.gallery_labels == c) for c in classes]))

    @functools.cached_property
    def chance_map_all(self) -> float:
        """Expected mAP@all of a random ranking (the level `t2i_map_all` is compared with)."""
        from common import metrics

        return metrics.expected_random_map(self.query_labels, self.gallery_labels)


@dataclasses.dataclass
class ZSData:
    name: str
    images: np.ndarray         # seen-class training images, grouped by class
    texts: np.ndarray          # seen-class training texts, grouped by class
    trainids: list             # seen classes in the order the sampler walks them
    image_start: dict          # class -> first row in `images`; rows of a class are contiguous
    image_count: dict
    text_start: dict
    text_count: dict
    test: RetrievalSet
    val: Optional[RetrievalSet] = None
    held_out: str = ""         # which classes are unseen (ZeroShotView.describe), for the data summary

    @property
    def image_dim(self) -> int:
        return int(self.images.shape[1])

    @property
    def text_dim(self) -> int:
        return int(self.texts.shape[1])


def _grouped(x: np.ndarray, labels: np.ndarray, classes: Sequence[int]):
    """Rows of `classes`, grouped by class in stored order, with per-class start and count."""
    rows, start, count, pos = [], {}, {}, 0
    for c in classes:
        r = np.flatnonzero(labels == c)
        start[c], count[c] = pos, len(r)
        rows.append(r)
        pos += len(r)
    idx = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    return x[idx].astype(np.float32), start, count


def _retrieval(split: Split, classes, what: str) -> RetrievalSet:
    s = split.select_classes(classes)
    if s.num_texts == 0 or len(s) == 0:
        raise DataError(f"the {what} classes {list(classes)[:5]} have no texts or no images")
    no_images = sorted(set(np.unique(s.txt_labels).tolist()) - set(np.unique(s.labels).tolist()))
    if no_images:
        raise DataError(f"the {what} classes {no_images[:10]} have query texts but no gallery image: their "
                        "queries could retrieve nothing relevant")
    require_classes(s.labels, f"the {what} retrieval set", "a meaningful P@K (one class makes every image relevant)")
    return RetrievalSet(s.text.astype(np.float32), np.asarray(s.txt_labels, np.int64),
                        s.image.astype(np.float32), np.asarray(s.labels, np.int64))


def from_dataset(ds: CrossModalDataset, val_classes: int = 0, seed: int = 0) -> ZSData:
    """Seen/unseen view of any single-label dataset with unseen classes.

    The seen-class order is the pickled `trainids` of a ZSCRGAN folder (the sampler's first
    pass walks it unshuffled) and ascending ids otherwise. `val_classes` > 0 holds that many
    seen classes out of training (seeded) as a validation retrieval set.
    """
    if ds.multilabel:
        raise DataError(f"{ds.where}: ZSCRGAN needs single-label data")
    view = ds.zero_shot()
    train = view.train
    present = set(np.unique(train.labels).tolist()) & set(np.unique(train.txt_labels).tolist())
    order = [int(c) for c in ds.extras.get("trainids", sorted(present))]
    missing = [c for c in order if c not in present]
    if missing:
        raise DataError(f"{ds.where}: seen classes {missing[:5]} have no training images or texts")
    val = None
    if val_classes:
        if not 2 <= val_classes < len(order):
            raise ConfigError(f"--val_classes must be in 2..{len(order) - 1} (there are {len(order)} seen classes; "
                              "one held-out class would make every validation image relevant)")
        held = sorted(np.random.default_rng(seed).choice(order, size=val_classes, replace=False).tolist())
        val = _retrieval(train, held, "validation")
        order = [c for c in order if c not in held]
    classes = sorted(order)
    images, image_start, image_count = _grouped(train.image, train.labels, classes)
    texts, text_start, text_count = _grouped(train.text, train.txt_labels, classes)
    test = _retrieval(view.test_unseen, view.unseen_classes, "unseen")
    return ZSData(ds.name, images, texts, order, image_start, image_count, text_start, text_count, test, val,
                  held_out=view.describe(ds.class_names))


class ClassBlockSampler:
    """The release's `next_batch` (spec §4), with its state in plain integers so it checkpoints.

    B >= N seen classes: every class floor(B/N) times plus B mod N distinct extra classes,
    permuted. B < N: walk the class list in blocks of B, the first pass in the given order;
    the list is reshuffled in place when the walk has passed its end. The last block is short:
    with `pad` (release) the missing rows are zero (valid = 0, label 0); without, the block is
    refilled from the reshuffled list. For each row the class's image cursor advances first
    (so a class serves image 1, 2, ..., 0). Randomness comes from counters and the seed
    (`default_rng([seed, kind, counter])`), so the integers below are the whole state.
    """

    def __init__(self, data: ZSData, batch_size: int, seed: int = 0, pad: bool = True,
                 train_text: str = "first"):
        if batch_size < 2:
            raise ConfigError("--batch_size must be at least 2 (wrong pairs roll the batch)")
        if train_text not in ("first", "cycle", "random"):
            raise ConfigError(f"--train_text must be first, cycle or random, got {train_text!r}")
        self.batch_size, self.seed, self.pad, self.train_text = batch_size, seed, pad, train_text
        self.classes = sorted(data.trainids)
        pos = {c: i for i, c in enumerate(self.classes)}
        self.pos = pos
        self.image_start = np.array([data.image_start[c] for c in self.classes], np.int64)
        self.image_count = np.array([data.image_count[c] for c in self.classes], np.int64)
        self.text_start = np.array([data.text_start[c] for c in self.classes], np.int64)
        self.text_count = np.array([data.text_count[c] for c in self.classes], np.int64)
        self.state = {
            "order": np.array([pos[c] for c in data.trainids], np.int64),  # class positions, walk order
            "cls_index": np.zeros((), np.int64),
            "image_cursor": np.zeros(len(self.classes), np.int64),
            "text_cursor": np.zeros(len(self.classes), np.int64),
            "batches": np.zeros((), np.int64),
            "shuffles": np.zeros((), np.int64),
        }

    def _rng(self, kind: int, counter) -> np.random.Generator:
        return np.random.default_rng([self.seed, kind, int(counter)])

    def _take_block(self, k: int) -> np.ndarray:
        st = self.state
        n = len(st["order"])
        if st["cls_index"] >= n:
            st["cls_index"] = np.int64(0)
            self._rng(1, st["shuffles"]).shuffle(st["order"])
            st["shuffles"] += 1
        block = st["order"][st["cls_index"]:st["cls_index"] + k].copy()
        st["cls_index"] += k
        return block

    def _classes(self) -> np.ndarray:
        st, b = self.state, self.batch_size
        n = len(st["order"])
        if b >= n:
            rng = self._rng(0, st["batches"])
            extra = rng.choice(st["order"], size=b % n, replace=False)
            return rng.permutation(np.concatenate([np.tile(st["order"], b // n), extra]))
        block = self._take_block(b)
        while not self.pad and len(block) < b:
            block = np.concatenate([block, self._take_block(b - len(block))])
        return block

    def next_batch(self):
        """(image_rows, text_rows, valid, labels), each (B,); padded rows: valid 0, label 0."""
        st, b = self.state, self.batch_size
        cls = self._classes()
        image_rows = np.zeros(b, np.int64)
        text_rows = np.zeros(b, np.int64)
        labels = np.zeros(b, np.int64)
        valid = np.zeros(b, np.float32)
        draw = self._rng(2, st["batches"]) if self.train_text == "random" else None
        for i, k in enumerate(cls):
            st["image_cursor"][k] = (st["image_cursor"][k] + 1) % self.image_count[k]
            image_rows[i] = self.image_start[k] + st["image_cursor"][k]
            if self.train_text == "first":
                t = 0
            elif self.train_text == "cycle":
                t = st["text_cursor"][k]
                st["text_cursor"][k] = (t + 1) % self.text_count[k]
            else:
                t = draw.integers(self.text_count[k])
            text_rows[i] = self.text_start[k] + t
            labels[i] = self.classes[k]
            valid[i] = 1.0
        st["batches"] += 1
        return image_rows, text_rows, valid, labels

    def get_state(self) -> dict:
        return {k: np.array(v, copy=True) for k, v in self.state.items()}

    def set_state(self, state: dict) -> None:
        for k, v in state.items():
            if np.shape(v) != np.shape(self.state[k]):
                raise DataError(f"checkpointed sampler state {k!r} has shape {np.shape(v)}, expected "
                                f"{np.shape(self.state[k])}: the checkpoint belongs to other data")
            self.state[k] = np.array(v, np.int64, copy=True)
