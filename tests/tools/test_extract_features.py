"""tools.extract_features: images + texts -> generic feature folder, resumable, local weights only."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from common import readers
from common.errors import ConfigError, DataError
from tests import launch
from tests.conftest import REPO, noise, user_env
from tools.extract_features import build_cnn, image_features, read_manifest, text_features


def _manifest(tmp_path, n=6):
    rng = np.random.default_rng(0)
    lines = []
    words = {"cat": "a small cat on a sofa", "car": "a red car on the road"}
    for i in range(n):
        label = "cat" if i % 2 == 0 else "car"
        split = "train" if i < n - 2 else "test"
        img = (rng.random((40, 30, 3)) * (80 if label == "cat" else 250)).astype(np.uint8)
        tf.io.write_file(str(tmp_path / f"im{i}.jpg"), tf.io.encode_jpeg(img))
        lines.append(f"{split}\tim{i}.jpg\t{label}\t{words[label]} number {i}")
    (tmp_path / "manifest.tsv").write_text("\n".join(lines) + "\n")
    return tmp_path / "manifest.tsv"


def test_manifest_errors_name_the_line(tmp_path):
    m = _manifest(tmp_path)
    assert len(read_manifest(str(m))) == 6
    (tmp_path / "bad.tsv").write_text("train\tim0.jpg\tcat\nx\n")
    with pytest.raises(DataError, match=r"bad\.tsv:1: expected 4"):
        read_manifest(str(tmp_path / "bad.tsv"))
    (tmp_path / "bad.tsv").write_text("train\tnope.jpg\tcat\ttext\n")
    with pytest.raises(DataError, match=r"bad\.tsv:1: image file .*nope\.jpg"):
        read_manifest(str(tmp_path / "bad.tsv"))
    with pytest.raises(ConfigError, match="--weights is required"):
        build_cnn("vgg19", None)
    with pytest.raises(DataError, match="imagenet"):
        build_cnn("vgg19", "imagenet")


def test_text_features_fit_on_train_only():
    feats, vocab = text_features(["a cat", "a cat and a dog"], {"train": ["a cat"], "test": ["zebra zebra cat"]},
                                 mode="count")
    assert "zebra" not in vocab  # the vocabulary comes from the train split
    assert feats["test"][0, vocab.index("cat")] == 1 and feats["test"][0, 0] == 2  # index 0 = out of vocabulary


def test_resnet_features_resume_from_shards(tmp_path):
    m = _manifest(tmp_path)
    paths = [it[1] for it in read_manifest(str(m))]
    tf.keras.utils.set_random_seed(0)
    model, size = build_cnn("resnet50", None, allow_random_init=True, image_size=32)
    full = image_features(paths, "resnet50", model, size, str(tmp_path / "out"), shard=2)
    assert full.shape == (6, 2048) and np.isfinite(full).all()
    shards = sorted(os.listdir(tmp_path / "out" / ".partial" / os.listdir(tmp_path / "out" / ".partial")[0]))
    assert len(shards) == 3
    # an interrupted run: shard 1 was never written; finished shards are reused (marked here with
    # zeros to prove they are not recomputed), the missing one is computed again
    part = tmp_path / "out" / ".partial" / os.listdir(tmp_path / "out" / ".partial")[0]
    os.remove(part / shards[1])
    np.save(part / shards[0], np.zeros((2, 2048), np.float32))
    again = image_features(paths, "resnet50", model, size, str(tmp_path / "out"), shard=2)
    assert not again[:2].any()
    np.testing.assert_allclose(again[2:], full[2:], rtol=1e-5, atol=1e-5)
    # shards made with other weights, another shard size or before an image was edited are not reused
    for kwargs in ({"shard": 2, "weights_id": "other.h5:1:2"}, {"shard": 3}):
        fresh = image_features(paths, "resnet50", model, size, str(tmp_path / "out"), **kwargs)
        np.testing.assert_allclose(fresh, full, rtol=1e-5, atol=1e-5)
    os.utime(paths[0], ns=(1, 1))  # the first image changed on disk
    fresh = image_features(paths, "resnet50", model, size, str(tmp_path / "out"), shard=2)
    assert fresh[:2].any()


def test_cli_writes_a_feature_folder_every_method_reads(tmp_path):
    m = _manifest(tmp_path)
    lines = m.read_text().splitlines()
    m.write_text("\n".join(lines + [lines[-1].replace("test\t", "val\t", 1)]) + "\n")  # one val item
    env = user_env()
    cmd = [sys.executable, "-m", "tools.extract_features", "--manifest", str(m), "--out", str(tmp_path / "feats"),
           "--cnn", "resnet50", "--allow_random_init", "--image_size", "32", "--text", "tfidf"]
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert not noise(res.stderr), res.stderr  # quiet by default
    ds = readers.read_feature_folder(str(tmp_path / "feats"))
    assert (len(ds.train), len(ds.val), len(ds.test), ds.image_dim) == (4, 1, 2, 2048)
    assert ds.train.labels.tolist() == [0, 1, 0, 1] and (tmp_path / "feats" / "class_names.txt").read_text().split() == ["cat", "car"]
    assert not os.path.exists(tmp_path / "feats" / ".partial")
    # --overwrite with another manifest (no val split; classes met in another order): the previous
    # extraction's files go or are replaced, the user's own stay, and a class list they were made
    # from is said to have changed
    feats = tmp_path / "feats"
    np.save(feats / "class_emb.npy", np.ones((2, 3)))
    (feats / "notes.txt").write_text("mine")
    (tmp_path / "m2.tsv").write_text("\n".join([lines[1], lines[0]] + lines[2:]) + "\n")
    res = launch.run(cmd[:4] + [str(tmp_path / "m2.tsv")] + cmd[5:] + ["--overwrite"], cwd=REPO, env=env,
                     capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "warning: class_emb.npy in " in res.stdout and "previous class list" in res.stdout
    assert "removed the previous extraction's val_img.npy, val_lab.npy, val_txt.npy" in res.stdout
    assert not any(n.startswith("val_") for n in os.listdir(feats))  # no stale val split left to be read
    assert (feats / "class_names.txt").read_text().split() == ["car", "cat"]
    assert (feats / "notes.txt").read_text() == "mine" and np.load(feats / "class_emb.npy").shape == (2, 3)


def test_local_sentence_encoder(tmp_path):
    from tools.extract_features import encoder_text_features

    class Encoder(tf.Module):  # a stand-in sentence encoder: string length and word count
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def __call__(self, texts):
            words = tf.strings.split(texts).row_lengths()
            return {"outputs": tf.stack([tf.cast(tf.strings.length(texts), tf.float32),
                                         tf.cast(words, tf.float32)], axis=1)}

    m = Encoder()
    tf.saved_model.save(m, str(tmp_path / "enc"), signatures={"serving_default": m.__call__})
    feats = encoder_text_features(str(tmp_path / "enc"), {"train": ["a b", "abc d e"], "test": ["x"]}, batch=1)
    np.testing.assert_array_equal(feats["train"], [[3, 2], [7, 3]])
    assert feats["test"].shape == (1, 2)
    with pytest.raises(DataError, match="missing sentence-encoder"):
        encoder_text_features(str(tmp_path / "none"), {"train": ["a"]})
