"""End-to-end mode (spec cmhash.md §8b, §10.10-11): tiny random-init backbones, offline guard,
tokenizer, coupled weight decay through the backbones. Skipped without the [e2e] extra."""

import os

import numpy as np
import pytest
import tensorflow as tf

pytest.importorskip("keras_hub", reason="end-to-end mode needs the optional extra: pip install -e '.[e2e]'")

from cmhash_tf import e2e  # noqa: E402
from cmhash_tf.model import CMHashNetworks  # noqa: E402
from cmhash_tf.config import CMHashConfig  # noqa: E402
from cmhash_tf.task import CMHashTrainer  # noqa: E402
from common import training  # noqa: E402
from common.errors import ConfigError, DataError  # noqa: E402
from tests import launch  # noqa: E402

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "a", "cat", "dog", "on", "mat", "##s", "sits",
         "red", "blue", "sky", "under", "tree", "."]


@pytest.fixture
def vocab(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(VOCAB) + "\n")
    return str(path)


def test_tokenizer_lowercases_adds_special_ids_and_counts_cuts(vocab):
    tok = e2e.load_tokenizer(vocab)
    ids, mask, cut = e2e.encode_texts(tok, ["The CATs sit", "a dog on the mat under a red sky ."], max_len=6)
    v = {w: i for i, w in enumerate(VOCAB)}
    assert ids[0, :5].tolist() == [v["[CLS]"], v["the"], v["cat"], v["##s"], v["[UNK]"]]
    assert ids[0, 5] == v["[SEP]"] and mask[0].tolist() == [1] * 6
    assert ids[1].tolist() == [v["[CLS]"], v["a"], v["dog"], v["on"], v["the"], v["[SEP]"]]  # cut, [SEP] kept
    assert cut == 1
    ids, mask, cut = e2e.encode_texts(tok, ["a cat"], max_len=128)
    assert ids.shape == (1, 4) and mask.sum() == 4 and cut == 0


def test_offline_guard_and_missing_files(tmp_path, vocab):
    with pytest.raises(ConfigError, match=r"presets/bert_base_en_uncased"):
        e2e.build_backbone("text", "bert_base_en_uncased")
    with pytest.raises(ConfigError, match="--image_preset"):
        e2e.build_backbone("image", None)
    with pytest.raises(DataError, match="missing weights file"):
        e2e.build_backbone("image", str(tmp_path / "none.weights.h5"))
    (tmp_path / "notapreset").mkdir()
    with pytest.raises(DataError, match="no config.json"):
        e2e.build_backbone("text", str(tmp_path / "notapreset"))
    with pytest.raises(ConfigError, match="--vocab"):
        e2e.load_tokenizer(None, None)


def test_local_weights_file_round_trip(tmp_path):
    a = e2e.build_backbone("text", None, allow_random_init=True, tiny=True, vocabulary_size=len(VOCAB))
    path = str(tmp_path / "bert.weights.h5")
    a.save_weights(path)
    b = e2e.build_backbone("text", path, tiny=True, vocabulary_size=len(VOCAB))
    text = {"token_ids": tf.constant([[2, 5, 7, 3]]), "padding_mask": tf.ones((1, 4), tf.int32)}
    np.testing.assert_allclose(e2e.cls_state(a, text), e2e.cls_state(b, text), atol=1e-6)


def test_smoke_step_reaches_every_variable_with_coupled_decay(vocab):
    """§10.10: ResNet-18 at 32x32 + 2-layer BERT (width 32), one step on 8 pairs."""
    training.set_seed(0)
    tok = e2e.load_tokenizer(vocab)
    image_bb = e2e.build_backbone("image", None, allow_random_init=True)
    text_bb = e2e.build_backbone("text", None, allow_random_init=True, tiny=True, vocabulary_size=len(VOCAB),
                                 dropout=0.0)  # deterministic forward, so the hand step can be recomputed
    bits = 8
    nets = CMHashNetworks(None, None, image_model=e2e.ImageNet(image_bb, bits), text_model=e2e.TextNet(text_bb, bits))
    rng = np.random.default_rng(0)
    images = e2e.preprocess_images(rng.integers(0, 256, (8, 40, 48, 3)), size=32)
    ids, mask, _ = e2e.encode_texts(tok, ["the cat sits on a mat", "a dog under the tree", "red sky", "blue sky",
                                          "the cats", "a red dog", "a blue mat", "the tree ."], max_len=16)
    text = {"token_ids": tf.constant(ids), "padding_mask": tf.constant(mask)}
    labels = tf.constant(np.eye(4, dtype=np.float32)[[0, 0, 1, 1, 2, 2, 3, 3]])
    nets.image_head(images)
    nets.text_head(text)
    cfg = CMHashConfig(bits=bits, margin=2.0, lr=1e-3, weight_decay=5e-4)
    trainer = CMHashTrainer(cfg, 0, 0, nets=nets)
    variables = nets.variables("image", "text")
    assert len(variables) > 100  # backbones included, not only the heads
    with tf.GradientTape() as tape:
        from cmhash_tf import losses
        terms = losses.triplet_ranking_loss(nets.image_head(images, training=True),
                                            nets.text_head(text, training=True), labels, cfg.margin_value)
    grads = tape.gradient(terms["loss"], variables)
    assert np.isfinite(float(terms["loss"])) and float(terms["triplets"]) > 0
    assert all(g is not None for g in grads), [v.path for v, g in zip(variables, grads) if g is None]
    before = [v.numpy().copy() for v in variables]
    trainer.apply_gradients({"joint": grads})  # the update the compiled step applies
    for v, g, th in zip(variables, grads, before):
        gc = tf.convert_to_tensor(g).numpy() + cfg.weight_decay * th  # PyTorch's coupled decay
        want = th - cfg.lr * gc / (np.abs(gc) + 1e-8)  # PyTorch's Adam: epsilon on the bias-corrected sqrt(v)
        np.testing.assert_allclose(v.numpy(), want, atol=1e-6, rtol=0, err_msg=v.path)
    out = trainer.train_step(images, text, labels)  # the compiled step itself runs and applies
    assert bool(out["applied"]) and np.isfinite(float(out["loss"]))


def test_iapr_e2e_loading_and_eval_batches(tmp_path, vocab):
    from tests.common import fixtures

    fixtures.write_iapr(str(tmp_path), sizes=(("iapr_train", 4), ("iapr_test", 2), ("iapr_retrieval", 3)))
    paths = [line.split()[0] for f in ("iapr_train", "iapr_test", "iapr_retrieval")
             for line in open(tmp_path / f)]
    rng = np.random.default_rng(0)
    for i, p in enumerate(paths):
        img_path = tmp_path / "images" / p
        img_path.parent.mkdir(parents=True, exist_ok=True)
        tf.io.write_file(str(img_path), tf.io.encode_jpeg(rng.integers(0, 256, (20, 30, 3)).astype(np.uint8)))
        txt = tmp_path / "texts" / (os.path.splitext(p)[0] + ".txt")
        txt.parent.mkdir(parents=True, exist_ok=True)
        txt.write_text("ignored first line\n" + ("a cat on the mat " * (i + 1)))
    tok = e2e.load_tokenizer(vocab)
    splits, cut = e2e.load_iapr_e2e(str(tmp_path), str(tmp_path / "images"), str(tmp_path / "texts"), tok,
                                    max_len=12, image_size=32)
    assert [len(splits[k]) for k in ("train", "test", "database")] == [4, 2, 3]
    assert cut == sum(2 + 4 * (i + 1) > 12 for i in range(len(paths)))  # 4 tokens per repeat + [CLS]/[SEP]
    batch = next(iter(splits["train"].train_batches(3, seed=1)))
    assert batch["image"].shape == (3, 32, 32, 3) and batch["text"]["token_ids"].shape[0] == 3
    ev = list(splits["database"].eval_batches(2))
    assert [b["image"].shape[0] for b in ev] == [2, 1]
    os.remove(tmp_path / "images" / paths[0])
    with pytest.raises(DataError, match="missing"):
        e2e.load_iapr_e2e(str(tmp_path), str(tmp_path / "images"), str(tmp_path / "texts"), tok)


def _iapr_e2e_folder(tmp_path, sizes=(("iapr_train", 12), ("iapr_test", 4), ("iapr_retrieval", 12))):
    """Split files with 4 label groups, coloured JPEGs and one-line texts per item."""
    from tests.common.fixtures import iapr_line

    rng = np.random.default_rng(1)
    words = ["cat", "dog", "tree", "sky"]
    for name, n in sizes:
        lines = []
        for i in range(n):
            c = i % 4
            path = f"{c:02d}/{name[5:]}{i}.jpg"
            labels = np.zeros(255, np.uint8)
            labels[c] = 1
            lines.append(iapr_line(path, np.zeros(2912, np.uint8), labels))
            img = np.clip(rng.normal(60 * c, 20, (24, 24, 3)), 0, 255).astype(np.uint8)
            (tmp_path / "images" / f"{c:02d}").mkdir(parents=True, exist_ok=True)
            tf.io.write_file(str(tmp_path / "images" / path), tf.io.encode_jpeg(img))
            (tmp_path / "texts" / f"{c:02d}").mkdir(parents=True, exist_ok=True)
            (tmp_path / "texts" / path.replace(".jpg", ".txt")).write_text(f"the {words[c]} on a mat")
        (tmp_path / name).write_text("\n".join(lines) + "\n")
    return tmp_path


def test_extract_writes_features_for_every_listed_path(tmp_path, vocab):
    from cmhash_tf.extract import extract
    from common import readers

    d = _iapr_e2e_folder(tmp_path, sizes=(("iapr_train", 3), ("iapr_test", 2), ("iapr_retrieval", 3)))
    training.set_seed(0)
    out = extract(str(d), str(d / "images"), str(d / "texts"), None, None, vocab=vocab, image_size=32,
                  batch_size=2, allow_random_init=True, tiny_text=True)
    assert out["img"].shape == (8, 512) and out["txt"].shape == (8, 32) and len(set(out["path"])) == 8
    assert np.isfinite(out["img"]).all() and out["img"].min() >= 0  # pooled ReLU features
    np.savez(d / "features.npz", path=out["path"], img=out["img"], txt=out["txt"])
    ds = readers.read_iapr(str(d), text_source="txt")
    assert ds.image_dim == 512 and ds.text_dim == 32 and len(ds.test) == 2


def test_e2e_cli_tiny_run(tmp_path, vocab):
    import json
    import subprocess
    import sys

    from tests.conftest import REPO, noise, user_env

    d = _iapr_e2e_folder(tmp_path)
    env = user_env()
    base = [sys.executable, "-m", "cmhash_tf.train", "--mode", "e2e", "--dataset", "iapr", "--data_dir", str(d),
            "--image_dir", str(d / "images"), "--text_dir", str(d / "texts"), "--vocab", vocab,
            "--allow_random_init", "--output_dir", str(d / "run")]
    # a fresh interpreter: TensorFlow's load-time lines once leaked here (e2e's modules imported it first);
    # batches of 5: the 10 training items make two whole ones (a partial batch retraced ResNet-18's backward pass)
    res = subprocess.run(base + ["--tiny_text", "--image_size", "32", "--bits", "8", "--epochs", "1",
                                 "--eval_every", "1", "--batch_size", "5", "--val_size", "2"],
                         env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert not noise(res.stderr), res.stderr[-3000:]
    r = json.loads((d / "run" / "results.json").read_text())
    assert r["dataset"] == "iapr-e2e" and set(r["i2t_map"]) == {"8"}
    assert "texts cut at --max_len" in res.stdout
    assert os.path.exists(d / "run" / "bits_8" / "checkpoints" / "checkpoint")
    assert r["per_bits"]["8"]["config"]["lr"] == 1e-5  # the release's end-to-end rate, no --lr given
    # the run's flags.txt holds the flags given: the unset --lr still resolves to 1e-5, and feature-mode
    # flags at their defaults are not "given" to an end-to-end run, so the same run resumes (complete)
    flagfile = (d / "run" / "flags.txt").read_text()
    assert "--lr" not in flagfile and "text_only" not in flagfile and "--image_size=32" in flagfile, flagfile
    again = launch.run([sys.executable, "-m", "cmhash_tf.train", "--flagfile", str(d / "run" / "flags.txt")],
                       env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "already complete" in again.stdout, again.stderr[-2000:]


def test_end_to_end_nets_round_trip_through_keras_files(tmp_path):
    """ImageNet / TextNet serialise with their keras-hub backbones (issue 18)."""
    import keras

    image = e2e.ImageNet(e2e.build_backbone("image", None, allow_random_init=True), 8, name="image_net")
    text = e2e.TextNet(e2e.build_backbone("text", None, allow_random_init=True, tiny=True,
                                          vocabulary_size=len(VOCAB)), 8, name="text_net")
    x = np.random.default_rng(0).random((2, 32, 32, 3)).astype(np.float32)
    t = {"token_ids": tf.constant([[2, 5, 7, 3], [2, 8, 3, 0]]), "padding_mask": tf.constant([[1, 1, 1, 1],
                                                                                          [1, 1, 1, 0]])}
    for net, inputs in ((image, x), (text, t)):
        want = net(inputs)
        net.save(tmp_path / f"{net.name}.keras")
        loaded = keras.models.load_model(tmp_path / f"{net.name}.keras")
        np.testing.assert_allclose(loaded(inputs), want, rtol=1e-6, atol=1e-6)


def test_uncased_tokenizer_strips_accents_as_bert_base_uncased(vocab):
    """Issue 19, item 3: 'Cät' tokenizes as 'cat' with the release's uncased BERT tokenizer."""
    tok = e2e.load_tokenizer(vocab)
    v = {w: i for i, w in enumerate(VOCAB)}
    ids, _, _ = e2e.encode_texts(tok, ["Cät sits"], max_len=8)
    assert ids[0, 1] == v["cat"]
    kept, _, _ = e2e.encode_texts(e2e.load_tokenizer(vocab, strip_accents=False), ["Cät sits"], max_len=8)
    assert kept[0, 1] == v["[UNK]"]
