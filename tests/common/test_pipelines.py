"""tf.data pipelines: order, determinism, sampling rules and resumable position."""

import numpy as np
import tensorflow as tf

from common import pipelines
from common.dataset import Split


def toy_split(n=10, classes=3):
    labels = np.arange(n) % classes
    image = np.arange(n, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)
    text = -image[:, :1]
    return Split(image, text, labels.astype(np.int64))


def test_file_order_without_shuffle_and_tail_batch():
    batches = list(pipelines.paired_batches(toy_split(), 4, epochs=2))
    assert [b["index"].numpy().tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]] * 2
    np.testing.assert_array_equal(batches[1]["text"].numpy()[:, 0], [-4, -5, -6, -7])
    dropped = list(pipelines.paired_batches(toy_split(), 4, drop_remainder=True, epochs=1))
    assert len(dropped) == 2
    exact = list(pipelines.paired_batches(toy_split(8), 4, epochs=1))
    assert [len(b["index"]) for b in exact] == [4, 4]  # no empty final batch


def test_shuffle_deterministic_per_seed_and_epoch():
    def order(seed):
        return [b["index"].numpy().tolist() for b in pipelines.paired_batches(toy_split(), 10, True, seed, epochs=2)]

    a, b, c = order(1), order(1), order(2)
    assert a == b and a != c and a[0] != a[1]
    assert sorted(a[0]) == list(range(10))


def test_iterator_checkpoint_resumes_data_position(tmp_path):
    ds = pipelines.paired_batches(toy_split(), 3, shuffle=True, seed=5)
    it = iter(ds)
    for _ in range(4):
        next(it)
    ckpt = tf.train.Checkpoint(iterator=it)
    path = ckpt.save(str(tmp_path / "ckpt"))
    expected = [next(it)["index"].numpy().tolist() for _ in range(3)]
    it2 = iter(pipelines.paired_batches(toy_split(), 3, shuffle=True, seed=5))
    tf.train.Checkpoint(iterator=it2).restore(path)
    assert [next(it2)["index"].numpy().tolist() for _ in range(3)] == expected


def test_class_balanced_batches():
    split = toy_split(30, 5)
    ds = pipelines.class_balanced_batches(split, classes_per_batch=3, samples_per_class=4, seed=0,
                                          classes=[0, 1, 2, 4])
    batches = list(ds.take(20))
    for b in batches:
        labels = b["label"].numpy()
        assert len(labels) == 12 and len(set(labels)) == 3 and 3 not in labels
        assert all((labels == c).sum() == 4 for c in set(labels))
        np.testing.assert_array_equal(split.labels[b["index"].numpy()], labels)
    again = list(pipelines.class_balanced_batches(split, 3, 4, seed=0, classes=[0, 1, 2, 4], start_step=5).take(2))
    np.testing.assert_array_equal(again[0]["index"], batches[5]["index"])


def test_triplet_batches_rules():
    split = toy_split(30, 5)
    for b in pipelines.triplet_batches(split, 8, seed=1, epochs=2):
        anchor = b["label"].numpy()
        assert (split.labels[b["positive_index"].numpy()] == anchor).all()
        assert (split.labels[b["negative_index"].numpy()] != anchor).all()
        np.testing.assert_array_equal(b["negative_text"].numpy(), split.text[b["negative_index"].numpy()])


def test_keep_classes_filters_unbatched_rows():
    split = toy_split(12, 4)
    ds = tf.data.Dataset.from_tensor_slices({"label": split.labels})
    kept = [int(x["label"]) for x in pipelines.keep_classes(ds, [1, 3])]
    assert kept == [1, 3, 1, 3, 1, 3]
