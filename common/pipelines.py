"""`tf.data` input pipelines over in-memory splits.

All sampling happens in the graph from (seed, epoch) or (seed, step) with stateless random
ops: batches are reproducible, an iterator can be checkpointed cheaply (its state is a
counter, not a shuffle buffer), and no Python runs per step. Features are gathered from
tensors held once in memory.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

from common.dataset import Split

AUTOTUNE = tf.data.AUTOTUNE


def split_tensors(split: Split) -> dict:
    """The split's arrays as constant tensors (paired splits only)."""
    if not split.paired:
        raise ValueError("paired pipelines need a paired split (image row i <-> text row i)")
    return {"image": tf.constant(split.image), "text": tf.constant(split.text),
            "label": tf.constant(split.labels)}


def epoch_indices(n: int, batch_size: int, shuffle: bool = False, seed: int = 0,
                  drop_remainder: bool = False, epochs: Optional[int] = None) -> tf.data.Dataset:
    """Batches of row indices, epoch after epoch; epoch e uses permutation(seed, e).

    `shuffle=False` gives file order every epoch (the releases' behaviour). Empty batches
    never occur (n % batch_size == 0 gives no tail batch).
    """
    if n <= 0:
        raise ValueError("cannot batch an empty split")

    def one_epoch(epoch):
        idx = epoch_order(n, shuffle, seed, epoch)
        return tf.data.Dataset.from_tensor_slices(idx).batch(batch_size, drop_remainder=drop_remainder)

    count = -1 if epochs is None else epochs
    return tf.data.Dataset.range(count if count >= 0 else np.iinfo(np.int64).max).flat_map(one_epoch)


def epoch_order(n: int, shuffle: bool, seed, epoch) -> tf.Tensor:
    """Row order of epoch `epoch`: file order, or the stateless permutation (seed, epoch).

    The one definition of an epoch's order, shared by `epoch_indices` and the in-graph
    `training.EpochRunner`, so both feed the same batches and resume at the same place.
    """
    rows = tf.range(n, dtype=tf.int64)
    if not shuffle:
        return rows
    return tf.random.experimental.stateless_shuffle(
        rows, seed=tf.stack([tf.cast(seed, tf.int64), tf.cast(epoch, tf.int64)]))


def gather_rows(tensors: dict):
    """A map function turning an index batch into a dict of feature batches."""

    def fn(idx):
        out = {k: tf.gather(v, idx) for k, v in tensors.items()}
        out["index"] = idx
        return out

    return fn


def paired_batches(split: Split, batch_size: int, shuffle: bool = False, seed: int = 0,
                   drop_remainder: bool = False, epochs: Optional[int] = None,
                   prefetch: int = 0) -> tf.data.Dataset:
    """Paired (image, text, label, index) batches.

    `prefetch` is 0 by default: on 2 CPU cores a prefetch thread competes with the step
    (see `python -m tools.bench_pipeline`); pass `AUTOTUNE` on machines with spare cores.
    """
    ds = epoch_indices(len(split), batch_size, shuffle, seed, drop_remainder, epochs)
    ds = ds.map(gather_rows(split_tensors(split)))
    return ds.prefetch(prefetch) if prefetch else ds


def _class_table(labels: np.ndarray, classes: Optional[Sequence[int]] = None):
    """RaggedTensor of row indices per class, and the class ids it covers."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError("class-based sampling needs single-label int labels")
    classes = np.unique(labels) if classes is None else np.asarray(sorted(set(classes)))
    rows = [np.flatnonzero(labels == c) for c in classes]
    empty = [int(c) for c, r in zip(classes, rows) if len(r) == 0]
    if empty:
        raise ValueError(f"classes {empty} have no rows in this split")
    table = tf.RaggedTensor.from_row_lengths(np.concatenate(rows).astype(np.int64),
                                             [len(r) for r in rows])
    return table, tf.constant(classes, tf.int64)


def _draw_rows(table, class_pos, seed):
    """One uniformly drawn row of each class position in `class_pos` (stateless)."""
    counts = tf.gather(table.row_lengths(), class_pos)
    u = tf.random.stateless_uniform(tf.shape(class_pos), seed=seed, dtype=tf.float32)
    offset = tf.minimum(tf.cast(u * tf.cast(counts, tf.float32), tf.int64), counts - 1)
    return tf.gather(table.values, tf.gather(table.row_starts(), class_pos) + offset)


def class_balanced_batches(split: Split, classes_per_batch: int, samples_per_class: int,
                           seed: int = 0, classes: Optional[Sequence[int]] = None,
                           start_step: int = 0) -> tf.data.Dataset:
    """Endless batches of `classes_per_batch` distinct classes x `samples_per_class` rows.

    Step s uses seeds derived from (seed, s), so `start_step` resumes exactly. `classes`
    restricts sampling (e.g. to seen classes).
    """
    table, class_ids = _class_table(split.labels, classes)
    n_classes = int(class_ids.shape[0])
    if classes_per_batch > n_classes:
        raise ValueError(f"{classes_per_batch} classes per batch but only {n_classes} classes")
    tensors = split_tensors(split)

    def make(step):
        s = tf.stack([tf.cast(seed, tf.int64), step])
        pos = tf.random.experimental.stateless_shuffle(tf.range(n_classes, dtype=tf.int64), seed=s)
        pos = tf.repeat(pos[:classes_per_batch], samples_per_class)
        idx = _draw_rows(table, pos, tf.stack([s[0] + 1, s[1]]))
        return gather_rows(tensors)(idx)

    return tf.data.Dataset.range(start_step, np.iinfo(np.int64).max).map(make)


def triplet_batches(split: Split, batch_size: int, seed: int = 0, shuffle: bool = True,
                    epochs: Optional[int] = None) -> tf.data.Dataset:
    """Anchor pairs with a random same-class positive and a random other-class negative.

    Each element holds the anchor batch (image, text, label, index) plus `positive_index` /
    `negative_index` and their `positive_image/text`, `negative_image/text`. Positives may
    equal the anchor row when its class has a single row.
    """
    table, class_ids = _class_table(split.labels)
    n_classes = int(class_ids.shape[0])
    if n_classes < 2:
        raise ValueError("triplet sampling needs at least two classes")
    class_pos_of_label = tf.scatter_nd(class_ids[:, None], tf.range(n_classes, dtype=tf.int64),
                                       [int(class_ids.numpy().max()) + 1])
    tensors = split_tensors(split)
    batches = epoch_indices(len(split), batch_size, shuffle, seed, False, epochs)

    def make(step, idx):
        s = tf.stack([tf.cast(seed, tf.int64) + 7, step])
        anchor_pos = tf.gather(class_pos_of_label, tf.gather(tensors["label"], idx))
        pos = _draw_rows(table, anchor_pos, s)
        shift = tf.random.stateless_uniform(tf.shape(anchor_pos), seed=s + 1, minval=1,
                                            maxval=n_classes, dtype=tf.int64)
        neg = _draw_rows(table, (anchor_pos + shift) % n_classes, s + 2)
        out = gather_rows(tensors)(idx)
        for name, rows in (("positive", pos), ("negative", neg)):
            out[f"{name}_index"] = rows
            out[f"{name}_image"] = tf.gather(tensors["image"], rows)
            out[f"{name}_text"] = tf.gather(tensors["text"], rows)
        return out

    return batches.enumerate().map(make)


def keep_classes(ds: tf.data.Dataset, classes: Sequence[int], label_key: str = "label") -> tf.data.Dataset:
    """Element-wise filter of an unbatched dataset to rows whose label is in `classes`."""
    allowed = tf.constant(sorted(set(int(c) for c in classes)), tf.int64)
    return ds.filter(lambda x: tf.reduce_any(tf.equal(tf.cast(x[label_key], tf.int64), allowed)))
