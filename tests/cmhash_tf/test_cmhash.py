"""Triplet-ranking hashing, feature mode: spec cmhash.md §10 tests 1-5 and 9, CLI contract."""

import itertools
import json
import os
import sys

import numpy as np
import pytest
import tensorflow as tf

from cmhash_tf import losses
from cmhash_tf.model import CMHashNetworks, binarize
from cmhash_tf.config import CMHashConfig
from cmhash_tf.task import CMHashTrainer, random_codes_map
from common import training
from common.datasets import load_dataset
from tests import launch
from tests.conftest import REPO

Y = tf.constant([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 1]])


def listed_triplets(labels, mining):
    """The release's Python loops, as a reference for the einsum form."""
    y = np.asarray(labels)
    s = (y @ y.T) > 0
    out = []
    if mining == "pivot":
        for r in range(len(y)):
            pos, neg = np.flatnonzero(s[r]), np.flatnonzero(~s[r])
            if len(pos) < 2 or len(neg) < 1:
                continue
            out += [(a, p, n) for a, p in itertools.combinations(pos, 2) for n in neg]
    else:
        out = [(a, p, n) for a in range(len(y)) for p in range(len(y)) for n in range(len(y))
               if a != p and s[a, p] and not s[a, n]]
    return out


def test_mining_hand_example():
    w = losses.triplet_weights(Y).numpy()
    want = {(0, 1, 2): 1, (0, 1, 3): 2, (0, 2, 3): 1, (1, 2, 0): 1, (1, 2, 3): 2}
    assert {tuple(int(i) for i in k): int(w[tuple(k)]) for k in np.argwhere(w)} == want and w.sum() == 7
    wa = losses.triplet_weights(Y, "anchor").numpy()
    assert sorted(tuple(int(i) for i in k) for k in np.argwhere(wa)) == [
        (0, 1, 2), (0, 1, 3), (1, 0, 3), (1, 2, 3), (2, 1, 0), (2, 1, 3)]


def test_loss_hand_values_and_list_equivalence():
    u, v = tf.constant([[1.0], [0], [0], [-1]]), tf.constant([[1.0], [1], [-1], [-1]])
    p = losses.triplet_ranking_loss(u, v, Y, 1.0)
    assert [float(p[k]) for k in ("loss_ii", "loss_tt", "loss_it", "loss_ti", "loss")] == pytest.approx(
        [1 / 7, 8 / 7, 4 / 7, 3 / 7, 16 / 7], abs=1e-6)
    a = losses.triplet_ranking_loss(u, v, Y, 1.0, "anchor")
    assert [float(a[k]) for k in ("loss_ii", "loss_tt", "loss_it", "loss_ti")] == pytest.approx(
        [1 / 3, 7 / 6, 2 / 3, 1 / 2], abs=1e-6)
    rng = np.random.default_rng(0)
    labels = (rng.random((10, 4)) < 0.3).astype(np.uint8)
    u, v = np.tanh(rng.normal(size=(10, 5))), np.tanh(rng.normal(size=(10, 5)))
    for mining in ("pivot", "anchor"):
        got = losses.triplet_ranking_loss(tf.constant(u), tf.constant(v), labels, 3.0, mining)
        trip = listed_triplets(labels, mining)
        d = lambda x, y: ((x - y) ** 2).sum()  # noqa: E731
        ref = np.mean([max(0, 3 + d(u[a], v[p]) - d(u[a], v[n])) for a, p, n in trip])
        assert float(got["loss_it"]) == pytest.approx(ref, abs=1e-6) and float(got["triplets"]) == len(trip)


@pytest.mark.parametrize("labels", [np.ones((4, 2)), np.eye(4)])
def test_degenerate_batches_give_zero_loss_and_gradient(labels):
    u = tf.Variable(np.tanh(np.random.default_rng(1).normal(size=(4, 3))))
    with tf.GradientTape() as tape:
        out = losses.triplet_ranking_loss(u, u * 0.5, labels, 2.0)
    assert float(out["loss"]) == 0 and float(out["triplets"]) == 0
    assert not np.any(tape.gradient(out["loss"], u).numpy())


def test_gradient_matches_finite_differences():
    rng = np.random.default_rng(2)
    labels = (rng.random((8, 3)) < 0.4).astype(np.uint8)
    u0, v = rng.uniform(-0.9, 0.9, (8, 4)), tf.constant(rng.uniform(-0.9, 0.9, (8, 4)))
    f = lambda u: losses.triplet_ranking_loss(u, v, labels, 2.0)["loss"]  # noqa: E731
    u = tf.Variable(u0)
    with tf.GradientTape() as tape:
        loss = f(u)
    grad = tape.gradient(loss, u).numpy()
    eps, num = 1e-6, np.zeros_like(u0)
    for idx in np.ndindex(*u0.shape):
        up, dn = u0.copy(), u0.copy()
        up[idx] += eps
        dn[idx] -= eps
        num[idx] = (float(f(tf.constant(up))) - float(f(tf.constant(dn)))) / (2 * eps)
    np.testing.assert_allclose(grad, num, atol=1e-5)


@pytest.mark.parametrize("bits", [16, 32, 64])
def test_codes(bits):
    n = CMHashNetworks(7, 5, bits)
    relaxed = n.image_head(tf.constant(np.random.default_rng(0).normal(size=(6, 7)) * 50, tf.float32))
    assert relaxed.shape == (6, bits) and float(tf.reduce_max(tf.abs(relaxed))) <= 1
    codes = binarize(relaxed).numpy()
    assert set(np.unique(codes)) <= {-1.0, 1.0}
    assert binarize(tf.zeros((1, 3))).numpy().tolist() == [[1.0, 1.0, 1.0]]
    b1, b2 = codes[0], codes[1]
    assert ((b1 - b2) ** 2).sum() == 4 * (b1 != b2).sum()


def test_coupled_weight_decay_and_skipped_batches():
    training.set_seed(0)
    t = CMHashTrainer(CMHashConfig(bits=4, lr=0.1, weight_decay=0.5), 3, 2)
    before = [v.numpy().copy() for v in t.nets.variables("image", "text")]
    x, y = tf.ones((3, 3)), tf.ones((3, 2))
    out = t.train_step(x, y, tf.constant(np.ones((3, 2), np.uint8)))  # every pair shares a label
    assert not bool(out["applied"]) and int(t.optimizers["joint"].iterations) == 0
    assert all(np.array_equal(a, v.numpy()) for a, v in zip(before, t.nets.variables("image", "text")))
    labels = tf.constant(np.eye(3, dtype=np.uint8)[[0, 0, 1]])
    x = tf.constant(np.random.default_rng(3).normal(size=(3, 3)), tf.float32)
    variables = t.nets.variables("image", "text")
    theta = [v.numpy().copy() for v in variables]
    with tf.GradientTape() as tape:
        loss = losses.triplet_ranking_loss(t.nets.image_head(x), t.nets.text_head(y), labels, 12 * 4 / 32)["loss"]
    grads = [g.numpy() for g in tape.gradient(loss, variables)]
    assert bool(t.train_step(x, y, labels)["applied"])
    for th, g, v in zip(theta, grads, variables):  # PyTorch Adam's first step on g + wd * theta (coupled decay)
        gc = g + 0.5 * th
        want = th - 0.1 * gc / (np.abs(gc) + 1e-8)  # bias-corrected moments: m_hat = gc, v_hat = gc^2
        np.testing.assert_allclose(v.numpy(), want, rtol=1e-5, atol=1e-6)


def test_learns_on_the_spec_synthetic_set():
    """§10.9: K 16, m 6, Adam 1e-2, batch 32, 5 epochs: both directions above chance + 0.20."""
    ds = load_dataset("synthetic-hashing")
    training.set_seed(0)
    cfg = CMHashConfig(bits=16, margin=6.0, lr=1e-2, weight_decay=0.0, epochs=5)
    t = CMHashTrainer(cfg, ds.image_dim, ds.text_dim)
    rng = np.random.default_rng(0)
    for _ in range(cfg.epochs):
        order = rng.permutation(len(ds.train))
        for s in range(0, len(order), 32):
            rows = order[s:s + 32]
            t.train_step(ds.train.image[rows], ds.train.text[rows], ds.train.labels[rows])
    chance = random_codes_map(ds.test, ds.database, 16)
    r = t.evaluate(ds.test, ds.database)
    assert 0.14 < chance < 0.19
    assert r["i2t_map"] > chance + 0.2 and r["t2i_map"] > chance + 0.2, (r, chance)


def cli(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return launch.run([sys.executable, "-m", "cmhash_tf.train", *args], cwd=REPO, env=env,
                      capture_output=True, text=True, timeout=300)


def test_cli_contract_and_errors(tmp_path):
    """Two bit lengths, one folder each (resume: tests/test_kill_resume.py)."""
    args = ["--bits", "8,16", "--eval_every", "1", "--output_dir", str(tmp_path / "a")]
    res = cli("--epochs", "2", *args)
    assert res.returncode == 0, res.stderr[-2000:]
    r = json.loads((tmp_path / "a" / "results.json").read_text())
    assert set(r["i2t_map"]) == {"8", "16"} and r["i2t_map_all"] == r["i2t_map"]["8"]
    assert r["per_bits"]["16"]["selected"]["selected_on"] == "val" and "validation" in r["note"]
    assert [len(r["per_bits"][b]["final"]) for b in ("8", "16")] == [3, 3]
    for b in ("8", "16"):
        assert tf.train.latest_checkpoint(str(tmp_path / "a" / f"bits_{b}" / "checkpoints")).endswith("-2")
    res = cli("--bits", "x", "--output_dir", str(tmp_path / "c"))
    assert res.returncode == 2 and "--bits must be integers" in res.stderr


def test_a_run_whose_every_batch_was_skipped_has_no_result_even_when_re_run(tmp_path):
    """Batches of 2 never hold a triplet here: no update ever happens, so no mAP may be reported,
    neither by the run nor by re-running the complete run (it once printed the untrained model's)."""
    args = ["--bits", "8", "--epochs", "2", "--batch_size", "2", "--output_dir", str(tmp_path / "a")]
    for _ in range(2):
        res = cli(*args)
        assert res.returncode == 2 and res.stderr.strip().splitlines()[-1].startswith(
            "error: no training batch of 2 produced a triplet in 2 epochs"), res.stderr[-1500:]
        assert not (tmp_path / "a" / "results.json").exists()
    history = json.loads((tmp_path / "a" / "bits_8" / "history.json").read_text())["history"]
    assert [r["applied_batches"] for r in history] == [0, 0]


def test_single_label_features_get_a_saved_validation_split(tmp_path):
    from tests.common import fixtures

    fixtures.write_feature_folder(str(tmp_path / "f"), one_based=False)
    res = cli("--dataset", "features", "--data_dir", str(tmp_path / "f"), "--epochs", "1", "--batch_size", "4",
              "--output_dir", str(tmp_path / "o"))
    assert res.returncode == 0, res.stderr[-2000:]
    split = np.load(tmp_path / "o" / "splits.npz")
    assert len(np.intersect1d(split["train_idx"], split["val_idx"])) == 0 and len(split["val_idx"]) >= 1


def test_text_only_mode_learns_and_has_no_image_head():
    """Tag -> tag hashing (the MIRFlickr .mat files have no image features): T->T term only."""
    ds = load_dataset("synthetic-hashing")
    training.set_seed(0)
    cfg = CMHashConfig(bits=16, margin=6.0, lr=1e-2, weight_decay=0.0, text_only=True)
    t = CMHashTrainer(cfg, 0, ds.text_dim)
    assert t.nets.image_head is None and list(t.optimizers) == ["text"]
    v = t.nets.text_head(tf.constant(ds.train.text[:8]))
    y = tf.constant(ds.train.labels[:8])
    np.testing.assert_allclose(losses.single_modality_loss(v, y, 6.0)["loss"],
                               losses.triplet_ranking_loss(v, v, y, 6.0)["loss_tt"], rtol=1e-6)
    before = t.evaluate(ds.test, ds.database)["t2t_map"]
    rng = np.random.default_rng(0)
    for _ in range(3):
        order = rng.permutation(len(ds.train))
        for s in range(0, len(order), 32):
            rows = order[s:s + 32]
            t.train_step(ds.train.image[rows], ds.train.text[rows], ds.train.labels[rows])
    after = t.evaluate(ds.test, ds.database)["t2t_map"]
    # a random projection of these features is already a decent hash (LSH); training must add to it
    assert after > random_codes_map(ds.test, ds.database, 16) + 0.2 and after > before + 0.05, (before, after)


def test_mirflickr_tag_only_cli(tmp_path):
    """A tiny MIRFlickr-layout folder: the CLI asks for --text_only, then reports t2t_map per bit length."""
    import scipy.io

    rng = np.random.default_rng(0)
    labels = (rng.random((60, 4)) < 0.4).astype(np.uint8)
    labels[labels.sum(1) == 0, 0] = 1
    tags = ((labels @ rng.random((4, 30)) + 0.3 * rng.random((60, 30))) > 0.6).astype(np.uint8)
    folder = tmp_path / "mir"
    folder.mkdir()
    scipy.io.savemat(folder / "mirflickr25k-yall.mat", {"YAll": tags})
    scipy.io.savemat(folder / "mirflickr25k-lall.mat", {"LAll": labels})
    base = ["--dataset", "mirflickr", "--data_dir", str(folder), "--epochs", "2", "--batch_size", "8",
            "--num_queries", "10", "--num_train", "40",
            "--output_dir", str(tmp_path / "o")]
    res = cli(*base)
    assert res.returncode == 2 and "--text_only" in res.stderr
    res = cli(*base, "--text_only", "--bits", "8,16", "--nojit_compile")
    assert res.returncode == 0, res.stderr[-2000:]
    r = json.loads((tmp_path / "o" / "results.json").read_text())
    assert set(r["t2t_map"]) == {"8", "16"} and "i2t_map" not in r
    split = np.load(tmp_path / "o" / "splits.npz")  # the seeded protocol split is saved with the run
    assert len(split["query_ids"]) == 10 and len(split["database_ids"]) == 50
    assert not set(split["query_ids"]) & set(split["database_ids"])
    # the tag encoder exports alone (hash_text / embed_text) and searches tags against tags by default
    from common import export
    from tools.export import export_run
    from tools.search import default_gallery_side, encode

    meta = export_run(str(tmp_path / "o" / "bits_8"), str(tmp_path / "exp"))
    assert meta["signatures"] == ["embed_text", "hash_text"] and meta["keras_files"] == ["text_encoder.keras"]
    # export.json says what trained it: the run.json above the code length's folder
    assert meta["run"]["program"] == "cmhash_tf.train" and meta["run"]["settings"]["text_only"] is True
    assert meta["run"]["data"]["dataset"] == "mirflickr25k" and meta["run"]["settings"]["bits"] == ["8", "16"]
    loaded = tf.saved_model.load(str(tmp_path / "exp"))
    head = CMHashTrainer(CMHashConfig(bits=8, text_only=True), 0, tags.shape[1]).nets.text_head
    export.restore_models(str(tmp_path / "o" / "bits_8"), text_head=head)
    x = tags[:7].astype(np.float32)
    np.testing.assert_array_equal(encode(loaded, "text", x, True), np.where(head(x).numpy() >= 0, 1.0, -1.0))
    assert default_gallery_side(loaded, "text") == "text"


def test_a_batch_whose_triplet_tensors_cannot_fit_is_refused_with_the_largest_that_fits():
    from cmhash_tf.data import check_batch_memory
    from common.errors import ConfigError

    gib = 2**30
    check_batch_memory(32, 10_000, 1 * gib)  # the release's batch: 1.3 MB of triplet tensors
    check_batch_memory(100_000, 200, 1 * gib)  # the batch is the whole (small) split: 200^3
    with pytest.raises(ConfigError, match=r"about 5 GiB at B = 512, and this machine has 4 GiB; use at most about 431"):
        check_batch_memory(512, 10_000, 4 * gib)
