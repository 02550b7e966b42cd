"""Bad-input catalogue (issues 8 and 17): every case exits with code 2 and ONE line naming the input
and the problem, never a traceback, and leaves every file the user had byte-identical (no file
created or changed anywhere in the case folder, a user's file in the output folder included)."""

import json
import os
import pickle
import subprocess
import sys

import h5py
import numpy as np
import pytest
import scipy.io

from tests import launch
from tests.common import fixtures
from tests.common.fixtures import snapshot
from tests.conftest import REPO, as_in_a_terminal, noise, user_env


def features(folder, n_train=12, n_test=6, img=5, txt=4, classes=3, **edit):
    """A valid generic feature folder; `edit` replaces arrays by name (e.g. test_img=...)."""
    rng = np.random.default_rng(0)
    os.makedirs(folder, exist_ok=True)
    arrays = {"train_img": rng.random((n_train, img)), "train_txt": rng.random((n_train, txt)),
              "train_lab": np.arange(n_train) % classes, "test_img": rng.random((n_test, img)),
              "test_txt": rng.random((n_test, txt)), "test_lab": np.arange(n_test) % classes}
    arrays.update(edit)
    for name, arr in arrays.items():
        if arr is not None:
            np.save(os.path.join(folder, f"{name}.npy"), np.asarray(arr))
    return folder


def text(path, content, mode="w"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, mode) as f:
        f.write(content)


def zscrgan_folder(folder, **edit):
    fixtures.write_zscrgan(folder)
    for name, content in edit.items():
        text(os.path.join(folder, name), content, "wb")
    return folder


def _pickle(obj):
    return pickle.dumps(obj, protocol=2)


HEAD = {"class": "cmhash_tf.model:HashHead", "kwargs": {"bits": 8, "hidden": None}}


def fake_run(folder):
    """A run folder holding an encoders.json (no checkpoint) and a user's results."""
    text(os.path.join(folder, "encoders.json"), json.dumps({
        "method": "cmhash", "hash_codes": True, "notes": "", "models": {"image_head": HEAD, "text_head": HEAD},
        "image": {"dim": 5, "model": "image_head"}, "text": {"dim": 4, "model": "text_head"}}))
    text(os.path.join(folder, "results.json"), '{"mine": 1}')


def fake_model(folder):
    text(os.path.join(folder, "saved_model.pb"), "not read before the inputs are checked")


def multi_hot(n, c=3):
    lab = np.zeros((n, c), np.uint8)
    lab[:, 0] = 1
    lab[::2, 1] = 1
    return lab


TINY_ZS = ["--gf_dim", "8", "--df_dim", "8", "--embed_dim", "4", "--z_dim", "2", "--e_iters", "1",
           "--m_iters", "1", "--n_critic", "1", "--max_cycles", "1"]
F = ["--dataset", "features", "--data_dir", "{d}/f"]

# (id, module, args (with {d} = the case folder), setup(d), fragment expected in the message[, exit code])
CASES = [
    # ---------------------------------------------------------------- data files
    ("zscrgan-missing-files", "zscrgan_tf.run_exp", ["--dataset", "CUB"], lambda d: None, "txt_embed_dict.pkl"),
    ("zscrgan-empty-pickle", "zscrgan_tf.run_exp", ["--dataset", "CUB"],
     lambda d: zscrgan_folder(f"{d}/datasets/CUB", **{"testids.pkl": b""}), "testids.pkl"),
    ("zscrgan-truncated-pickle", "zscrgan_tf.run_exp", ["--dataset", "CUB"],
     lambda d: zscrgan_folder(f"{d}/datasets/CUB", **{"txt_embed_dict.pkl": _pickle({1: [np.ones(6)]})[:15]}),
     "txt_embed_dict.pkl"),
    ("zscrgan-overlapping-ids", "zscrgan_tf.run_exp", ["--dataset", "CUB"],
     lambda d: zscrgan_folder(f"{d}/datasets/CUB", **{"testids.pkl": _pickle([1, 4])}), "share classes"),
    ("zscrgan-nan-features", "zscrgan_tf.run_exp", ["--dataset", "CUB"],
     lambda d: zscrgan_folder(f"{d}/datasets/CUB", **{"image_embed_dict.pkl": _pickle(
         {c: np.full((2, 5), np.nan) for c in range(5)})}), "NaN"),
    ("zscrgan-widths-differ-by-class", "zscrgan_tf.run_exp", ["--dataset", "CUB"],
     lambda d: zscrgan_folder(f"{d}/datasets/CUB", **{"image_embed_dict.pkl": _pickle(
         {c: np.ones((2, 5 + c)) for c in range(5)})}), "class 2 has 7-d vectors, class 0 5-d"),
    ("zscrgan-ids-not-integers", "zscrgan_tf.run_exp", ["--dataset", "CUB"],
     lambda d: zscrgan_folder(f"{d}/datasets/CUB", **{"trainids.pkl": _pickle(["a", "b"])}),
     "trainids.pkl: expected a non-empty list of integer class ids"),
    ("zscrgan-empty-dataset", "zscrgan_tf.train", ["--dataset="], lambda d: None, "--dataset is empty"),
    ("zscrgan-data-for-a-paired-method", "acmr_tf.train", ["--dataset", "zscrgan", "--data_dir", "{d}/z"],
     lambda d: zscrgan_folder(f"{d}/z"), "has no image-text pairs"),  # was a ValueError traceback
    ("zscrgan-data-for-the-baseline", "tools.baseline", ["--dataset", "zscrgan", "--data_dir", "{d}/z"],
     lambda d: zscrgan_folder(f"{d}/z"), "has no image-text pairs"),
    ("zscrgan-one-unseen-class", "zscrgan_tf.train", ["--dataset", "CUB"],
     lambda d: zscrgan_folder(f"{d}/datasets/CUB", **{"trainids.pkl": _pickle([4, 0, 2, 3]),
                                                     "testids.pkl": _pickle([1])}), "needs at least 2"),
    ("unknown-dataset", "cmhash_tf.train", ["--dataset", "imagenet-22k", "--data_dir", "{d}"], lambda d: None,
     "unknown dataset"),
    ("synthetic-with-data-dir", "zscrgan_tf.train", ["--dataset", "synthetic", "--data_dir", "{d}/f"],
     lambda d: features(f"{d}/f"), "/f is not read by the embedded synthetic data"),
    ("features-missing-dir", "acmr_tf.train", ["--dataset", "features", "--data_dir", "{d}/nope"], lambda d: None,
     "does not exist"),
    ("data-dir-is-a-file", "jfse_tf.train", ["--dataset", "xmn", "--data_dir", "{d}/f/train_img.npy"],
     lambda d: features(f"{d}/f"), "train_img.npy' is a file; give the folder that holds it"),
    ("features-dims-differ", "acmr_tf.train", F, lambda d: features(f"{d}/f", test_img=np.ones((6, 7))),
     "differ from train's"),
    ("features-count-mismatch", "acmr_tf.train", F, lambda d: features(f"{d}/f", train_txt=np.ones((11, 4))), "rows"),
    ("features-inf", "acmr_tf.train", F, lambda d: features(f"{d}/f", train_img=np.full((12, 5), np.inf)), "NaN/inf"),
    ("features-beyond-float32", "cmhash_tf.train", F,
     lambda d: features(f"{d}/f", test_txt=np.full((6, 4), 0.5) + np.eye(6, 4) * 1e300),
     "test_txt.npy: value 1e+300 at row 0, column 0 is beyond float32's range"),
    ("features-label-names", "acmr_tf.train", F,
     lambda d: features(f"{d}/f", train_lab=np.array(["cat", "dog", "car"] * 4)),
     "train_lab.npy: labels are names (cat, dog, car, ...), not class ids"),
    ("features-object-array", "acmr_tf.train", F,
     lambda d: features(f"{d}/f", train_img=np.array([np.ones(5)] * 11 + [np.ones(4)], dtype=object)),
     "train_img.npy: holds Python objects (a pickled object array)"),
    ("features-transposed", "acmr_tf.train", F,
     lambda d: features(f"{d}/f", train_img=np.random.default_rng(1).random((5, 12))),
     "train_img.npy: 5 image rows but train_lab.npy has 12 labels; it looks transposed"),
    ("features-constant-test-text", "cmhash_tf.train", F, lambda d: features(f"{d}/f", test_txt=np.zeros((6, 4))),
     "every test text row is identical"),
    ("features-negative-label", "acmr_tf.train", F, lambda d: features(f"{d}/f", train_lab=np.arange(12) % 3 - 1),
     "train_lab.npy: label -1 is below the label base 0"),
    ("features-fractional-label", "jfse_tf.train", F,
     lambda d: features(f"{d}/f", test_lab=np.array([0, 1, 2, 0.5, 1, 2])),
     "test_lab.npy: expected integer class ids of shape (n,) or (n, 1) (row 3 holds 0.5; 1 row(s)"),
    ("features-empty-split", "cmhash_tf.train", F,
     lambda d: features(f"{d}/f", test_img=np.zeros((0, 5)), test_txt=np.zeros((0, 4)),
                        test_lab=np.zeros(0, np.int64)), "no image rows"),
    ("features-partial-val", "acmr_tf.train", F, lambda d: features(f"{d}/f", val_img=np.ones((3, 5))), "val_txt"),
    ("features-unknown-unseen-class", "jfse_tf.demo", F,
     lambda d: (features(f"{d}/f"), text(f"{d}/f/unseen_classes.txt", "7\n")), "unseen"),
    ("features-class-emb-count", "jfse_tf.demo", F,
     lambda d: (features(f"{d}/f"), np.save(f"{d}/f/class_emb.npy", np.ones((2, 8)))),
     "class_emb.npy has 2 rows, but"),
    ("features-label-beyond-class-emb", "jfse_tf.demo", F,
     lambda d: (features(f"{d}/f", test_lab=np.arange(6) % 3 + 3), np.save(f"{d}/f/class_emb.npy", np.ones((3, 8)))),
     "out of range"),
    ("features-class-emb-nan", "jfse_tf.demo", F,
     lambda d: (features(f"{d}/f"), np.save(f"{d}/f/class_emb.npy", np.full((3, 8), np.nan))), "class_emb.npy"),
    ("features-label-base-ambiguous", "jfse_tf.demo", F,  # labels 1..3 and 4 class embeddings: which is class 0?
     lambda d: (features(f"{d}/f", train_lab=np.arange(12) % 3 + 1, test_lab=np.arange(6) % 3 + 1),
                np.save(f"{d}/f/class_emb.npy", np.eye(4))), "write 1 or 0 into label_base.txt"),
    ("features-label-base-word", "acmr_tf.train", F,
     lambda d: (features(f"{d}/f"), text(f"{d}/f/label_base.txt", "one\n")), "label_base.txt"),
    ("features-label-base-empty", "acmr_tf.train", F,
     lambda d: (features(f"{d}/f"), text(f"{d}/f/label_base.txt", "")), "label_base.txt"),
    ("features-label-below-base", "acmr_tf.train", F,
     lambda d: (features(f"{d}/f"), text(f"{d}/f/label_base.txt", "1\n")), "below the label base"),
    ("features-class-names-not-utf8", "acmr_tf.train", F,
     lambda d: (features(f"{d}/f"), text(f"{d}/f/class_names.txt", b"caf\xe9\nb\nc\n", "wb")), "not a UTF-8"),
    ("features-h5-group", "acmr_tf.train", F,
     lambda d: (features(f"{d}/f", train_img=None),
                h5py.File(f"{d}/f/train_img.h5", "w").create_group("train_img").file.close()), "HDF5 group"),
    ("features-mixed-label-kinds", "cmhash_tf.train", F,
     lambda d: features(f"{d}/f", test_lab=multi_hot(6)), "some splits have multi-hot"),
    ("acmr-multi-hot-labels", "acmr_tf.train", F,
     lambda d: features(f"{d}/f", train_lab=multi_hot(12), test_lab=multi_hot(6)), "single-label"),
    ("jfse-multi-hot-labels", "jfse_tf.train", F,
     lambda d: (features(f"{d}/f", train_lab=multi_hot(12), test_lab=multi_hot(6)),
                np.save(f"{d}/f/class_emb.npy", np.ones((3, 4)))), "single-label"),
    ("zscrgan-multi-hot-labels", "zscrgan_tf.train", F,
     lambda d: features(f"{d}/f", train_lab=multi_hot(12), test_lab=multi_hot(6)), "single-label"),
    ("acmr-one-class", "acmr_tf.train", F,
     lambda d: features(f"{d}/f", train_lab=np.zeros(12, np.int64), test_lab=np.zeros(6, np.int64)),
     "needs at least 2"),
    ("jfse-unseen-class-without-test-rows", "jfse_tf.train", F + ["--scenario", "zs"],
     lambda d: (features(f"{d}/f", classes=4, test_lab=np.arange(6) % 3), np.save(f"{d}/f/class_emb.npy",
                np.ones((4, 5))), text(f"{d}/f/unseen_classes.txt", "2,3\n")), "have no test rows"),
    ("acmr-train-split-below-one-batch", "acmr_tf.train", F, lambda d: features(f"{d}/f"),
     "fewer than one batch of 64; lower --batch_size"),  # found after the run was accepted: rolled back
    ("features-sparse-class-ids", "cmhash_tf.train", F,
     lambda d: features(f"{d}/f", train_lab=np.r_[np.arange(11) % 3, 999_999_999]),
     "class ids reach 999999999 but only 4 classes have rows"),
    ("features-zero-width", "jfse_tf.train", F,
     lambda d: features(f"{d}/f", train_img=np.zeros((12, 0)), test_img=np.zeros((6, 0))), "have no columns"),
    ("features-complex", "zscrgan_tf.train", F,
     lambda d: features(f"{d}/f", test_txt=np.ones((6, 4)) + 1j), "test_txt.npy: holds complex numbers"),
    ("acmr-test-split-below-one-batch", "acmr_tf.train", ["--batch_size", "300", "--nodrop_remainder"],
     lambda d: None, "the test split has 200 pairs, fewer than one batch of 300"),
    ("cmhash-batch-beyond-memory", "cmhash_tf.train", ["--batch_size", "100000"], lambda d: None,
     "the triplet loss builds (B, B, B) tensors"),
    ("cmhash-no-triplet", "cmhash_tf.train", F,
     lambda d: features(f"{d}/f", train_lab=np.zeros(12, np.int64)), "cannot produce a single triplet"),
    ("baseline-every-item-relevant", "tools.baseline", F,  # a label every item carries: mAP 1 by construction
     lambda d: features(f"{d}/f", train_lab=np.eye(3)[np.arange(12) % 3], test_lab=np.tile([1, 1, 0], (6, 1))),
     "any ranking scores mAP 1"),
    ("cmhash-every-database-item-relevant", "cmhash_tf.train", F + ["--val_size", "2"],
     lambda d: features(f"{d}/f", train_lab=np.column_stack([np.ones(12), np.eye(3)[np.arange(12) % 3, 1:]]),
                        test_lab=np.tile([1, 0, 0], (6, 1))), "relevant to every item of the database"),
    ("cmhash-no-relevant-query", "cmhash_tf.train", F + ["--val_size", "2"],
     lambda d: features(f"{d}/f", classes=2, test_lab=np.full(6, 2)), "shares a label with the database"),
    ("mat-without-variable", "tools.convert_uci", ["--mat", "{d}/uci.mat", "--out", "{d}/o"],
     lambda d: scipy.io.savemat(f"{d}/uci.mat", {"I_tr": np.ones((3, 2))}), "lacks the variables"),
    ("xlsa17-without-labels", "tools.convert_xlsa17", ["--res101", "{d}/r.mat", "--splits", "{d}/r.mat",
                                                       "--out", "{d}/o"],
     lambda d: scipy.io.savemat(f"{d}/r.mat", {"features": np.ones((3, 2))}), "labels"),
    ("iapr-wrong-token-count", "cmhash_tf.train", ["--dataset", "iapr", "--data_dir", "{d}/i"],
     lambda d: (fixtures.write_iapr(f"{d}/i"), text(f"{d}/i/iapr_test", "00/x.jpg 1 0 1\n", "a")), "tokens"),
    ("iapr-missing-features", "cmhash_tf.train", ["--dataset", "iapr", "--data_dir", "{d}/i"],
     lambda d: (fixtures.write_iapr(f"{d}/i"), os.unlink(f"{d}/i/features.npz")), "features.npz"),
    ("iapr-features-not-an-archive", "cmhash_tf.train", ["--dataset", "iapr", "--data_dir", "{d}/i"],
     lambda d: (fixtures.write_iapr(f"{d}/i"), text(f"{d}/i/features.npz", "garbage")),
     "features.npz: not an .npz archive"),
    ("iapr-features-without-img", "cmhash_tf.train", ["--dataset", "iapr", "--data_dir", "{d}/i"],
     lambda d: (fixtures.write_iapr(f"{d}/i"), np.savez(f"{d}/i/features.npz", path=np.array(["a"]))),
     "lacks the array(s) ['img']; it holds ['path']"),
    ("features-npy-not-numpy", "acmr_tf.train", F, lambda d: (features(f"{d}/f"), text(f"{d}/f/test_txt.npy", "1,2,3")),
     "test_txt.npy: not a .npy file"),
    ("nuswide-ids-not-a-list", "acmr_tf.train", ["--dataset", "nuswide", "--data_dir", "{d}/n"],
     lambda d: (fixtures.write_nuswide(f"{d}/n"), fixtures.dump(f"{d}/n/train_ids.pkl", 5)),
     "train_ids.pkl: expected a non-empty list of ids"),
    ("wikipedia-zero-based-labels", "acmr_tf.train", ["--dataset", "wikipedia", "--data_dir", "{d}/w"],
     lambda d: (fixtures.write_wikipedia(f"{d}/w"), fixtures.dump(f"{d}/w/test_labels.pkl", [0, 1, 2, 3])),
     "1-based"),
    ("nuswide-missing-ids", "acmr_tf.train", ["--dataset", "nuswide", "--data_dir", "{d}/n"],
     lambda d: (fixtures.write_nuswide(f"{d}/n"), os.unlink(f"{d}/n/test_ids.pkl")), "test_ids.pkl"),
    ("mirflickr-label-rows", "cmhash_tf.train", ["--dataset", "mirflickr", "--data_dir", "{d}/m", "--text_only"],
     lambda d: (os.makedirs(f"{d}/m"), scipy.io.savemat(f"{d}/m/mirflickr25k-yall.mat", {"YAll": np.ones((30, 4))}),
                scipy.io.savemat(f"{d}/m/mirflickr25k-lall.mat", {"LAll": np.ones((20, 3))})), "LAll"),
    ("mirflickr-missing-labels", "cmhash_tf.train", ["--dataset", "mirflickr", "--data_dir", "{d}/m", "--text_only"],
     lambda d: (os.makedirs(f"{d}/m"), scipy.io.savemat(f"{d}/m/mirflickr25k-yall.mat", {"YAll": np.ones((30, 4))})),
     "missing mirflickr25k-lall.mat in "),
    ("baseline-without-image-features", "tools.baseline", ["--dataset", "mirflickr", "--data_dir", "{d}/m",
                                                           "--output_dir", "{d}/out"],
     lambda d: (os.makedirs(f"{d}/m"), scipy.io.savemat(f"{d}/m/mirflickr25k-yall.mat", {"YAll": np.random.default_rng(
         0).integers(0, 2, (2100, 6))}), scipy.io.savemat(f"{d}/m/mirflickr25k-lall.mat", {"LAll": np.random.default_rng(
             1).integers(0, 2, (2100, 3))})), "has no image features (dims 0/6); CCA relates two modalities"),
    ("mirflickr-too-many-queries", "cmhash_tf.train", ["--dataset", "mirflickr", "--data_dir", "{d}/m", "--text_only",
                                                       "--num_queries", "50"],
     lambda d: (os.makedirs(f"{d}/m"), scipy.io.savemat(f"{d}/m/mirflickr25k-yall.mat", {"YAll": np.ones((30, 4))}),
                scipy.io.savemat(f"{d}/m/mirflickr25k-lall.mat", {"LAll": np.ones((30, 3))})), "cannot give"),
    # ---------------------------------------------------------------- flags
    ("zscrgan-zero-batch", "zscrgan_tf.run_exp", ["--dataset", "synthetic", "--batch_size", "0"], lambda d: None,
     "--batch_size"),
    ("zscrgan-zero-cycles", "zscrgan_tf.run_exp", ["--dataset", "synthetic", "--max_cycles", "0"], lambda d: None,
     "--max_cycles"),
    ("zscrgan-nan-coefficient", "zscrgan_tf.train", ["--dataset", "synthetic", "--kl_div_coefficient", "nan"],
     lambda d: None, "finite"),
    ("zscrgan-two-lengths", "zscrgan_tf.train", ["--dataset", "synthetic", "--max_cycles", "3", "--epochs", "2"],
     lambda d: None, "--max_cycles sets the run's length, so --epochs would be ignored"),
    ("zscrgan-zero-clip", "zscrgan_tf.train", ["--dataset", "synthetic", "--clip_val", "0"], lambda d: None,
     "--clip_val"),
    ("zscrgan-one-val-class", "zscrgan_tf.train", ["--dataset", "synthetic", "--val_classes", "1"], lambda d: None,
     "--val_classes must be in 2"),
    ("unknown-flag", "zscrgan_tf.run_exp", ["--dataset", "synthetic", "--no_such_flag", "1"], lambda d: None,
     "no_such_flag"),
    ("positional-argument", "acmr_tf.train", ["synthetic"], lambda d: None, "unexpected arguments"),
    ("negative-seed", "cmhash_tf.train", ["--seed=-1"], lambda d: None, "--seed=-1: -1 is not an integer in the range"),
    ("seed-beyond-32-bits", "jfse_tf.train", ["--seed", str(2**32)], lambda d: None, "--seed=4294967296"),
    ("negative-steps-per-execution", "acmr_tf.train", ["--steps_per_execution=-1"], lambda d: None,
     "--steps_per_execution=-1"),
    ("acmr-zero-batch", "acmr_tf.train", ["--batch_size", "0"], lambda d: None, "batch"),
    ("acmr-negative-lr", "acmr_tf.train", ["--lr=-0.1"], lambda d: None, "--lr must be > 0"),
    ("acmr-nan-lr", "acmr_tf.train", ["--lr", "nan"], lambda d: None, "--lr must be a finite number"),
    ("acmr-lr-zero-in-float32", "acmr_tf.train", ["--lr", "1e-300"], lambda d: None, "--lr 1e-300 is 0 in float32"),
    ("jfse-lr-infinite-in-float32", "jfse_tf.train", ["--lr", "1e39"], lambda d: None, "is infinite in float32"),
    ("acmr-narrow-embedding", "acmr_tf.train", ["--emb_dim", "2"], lambda d: None, "--emb_dim must be at least 4"),
    ("acmr-zero-top-k", "acmr_tf.train", ["--top_k", "0"], lambda d: None, "--top_k"),
    ("jfse-negative-epochs", "jfse_tf.demo", ["--epochs", "-2"], lambda d: None, "--epochs"),
    ("jfse-beta1-one", "jfse_tf.train", ["--beta1", "1"], lambda d: None, "--beta1 must be >= 0 and < 1"),
    ("jfse-negative-weight", "jfse_tf.train", ["--w_cyc_g=-1"], lambda d: None, "--w_cyc_g"),
    ("jfse-zero-critic", "jfse_tf.train", ["--n_critic", "0"], lambda d: None, "--n_critic"),
    ("jfse-synthesize-unseen-in-standard", "jfse_tf.train", ["--scenario", "standard", "--synthesize_unseen"],
     lambda d: None, "--scenario standard has none, so it would be ignored"),
    ("jfse-cfsa-flags-it-would-ignore", "jfse_tf.train", ["--method", "cfsa", "--scenario", "gzs", "--w_adv_real", "0.1"],
     lambda d: None, "--scenario gzs, --w_adv_real 0.1 would be ignored; drop them, or use --method jfse"),
    ("cmhash-negative-epochs", "cmhash_tf.train", ["--epochs", "-1"], lambda d: None, "--epochs"),
    ("cmhash-zero-eval-every", "cmhash_tf.train", ["--eval_every", "0"], lambda d: None, "--eval_every"),
    ("acmr-triplet-flag-for-simple", "acmr_tf.train", ["--margin", "0.5"], lambda d: None,
     "--margin is a triplet-variant option (--variant triplet)"),
    ("acmr-simple-flag-for-triplet", "acmr_tf.train", ["--variant", "triplet", "--w_dis", "0.1"], lambda d: None,
     "the triplet variant has none"),
    ("log-every-without-log-batches", "jfse_tf.train", ["--log_every", "10"], lambda d: None,
     "pass --log_batches too"),
    ("cmhash-protocol-flag-of-another-dataset", "cmhash_tf.train", ["--num_train", "500"], lambda d: None,
     "--num_train applies to --dataset mirflickr only"),
    ("cmhash-val-size-with-select-on-test", "cmhash_tf.train", ["--select_on_test", "--val_size", "100"],
     lambda d: None, "--val_size would be ignored"),
    ("cmhash-e2e-flag-in-feature-mode", "cmhash_tf.train", ["--image_size", "64"], lambda d: None,
     "--image_size is an end-to-end option (--mode e2e)"),
    ("cmhash-bits-not-numbers", "cmhash_tf.train", ["--bits", "16,abc"], lambda d: None, "--bits"),
    ("cmhash-image-lr-text-only", "cmhash_tf.train", ["--text_only", "--image_lr", "0.01"], lambda d: None,
     "a --text_only run has no image head"),
    ("cmhash-bits-twice", "cmhash_tf.train", ["--bits", "16,32,016"], lambda d: None, "--bits lists 16 more than once"),
    ("cmhash-zero-bits", "cmhash_tf.train", ["--bits", "0"], lambda d: None, "--bits"),
    ("cmhash-zero-val-size", "cmhash_tf.train", ["--val_size", "0"], lambda d: None, "--val_size"),
    ("cmhash-e2e-without-files", "cmhash_tf.train", ["--mode", "e2e"], lambda d: None, "--mode e2e reads"),
    ("cmhash-e2e-text-only", "cmhash_tf.train", ["--mode", "e2e", "--text_only"], lambda d: None,
     "feature-mode option"),
    ("multiworker-without-tf-config", "acmr_tf.train", ["--distribute", "multiworker", "--epochs", "1"],
     lambda d: None, "TF_CONFIG"),
    ("report-plots-alone", "tools.report", ["--plots", "{d}/p", "{d}"], lambda d: None,
     "--model, --features and --plots go together"),
    ("bench-metrics-bad-sizes", "tools.bench_metrics", ["--sizes", "1000by5000"], lambda d: None,
     "--sizes takes QUERIESxGALLERY pairs"),
    ("bench-search-empty-gallery", "tools.bench_search", ["--gallery", "0"], lambda d: None, "--gallery"),
    ("bench-pipeline-existing-output", "tools.bench_pipeline", ["--json_out", "{d}/b.json"],
     lambda d: open(f"{d}/b.json", "w").write("{}"), "exists; pass --overwrite"),
    ("flagfile-json", "acmr_tf.train", ["--flagfile", "{d}/flags.json"],
     lambda d: open(f"{d}/flags.json", "w").write('{"lr": 0.1}'), "a run's is flags.txt"),
    ("flagfile-of-another-method", "acmr_tf.train", ["--flagfile", "{d}/flags.txt"],
     lambda d: open(f"{d}/flags.txt", "w").write("# flags of a cmhash_tf.train run: `python -m cmhash_tf.train "
                                                 "--flagfile <this file>` repeats it\n--bits=16\n--mining=pivot\n"),
     "holds the flags of a cmhash_tf.train run, not of acmr_tf.train; repeat it with `python -m cmhash_tf.train"),
    ("flagfile-of-acmr-for-cmhash", "cmhash_tf.train", ["--flagfile", "{d}/flags.txt"],
     lambda d: open(f"{d}/flags.txt", "w").write("# flags of an acmr_tf.train run: `python -m acmr_tf.train "
                                                 "--flagfile <this file>` repeats it\n--variant=triplet\n"),
     "holds the flags of an acmr_tf.train run, not of cmhash_tf.train"),
    ("baseline-zero-bits", "tools.baseline", ["--hash_bits", "0", "--output_dir", "{d}/out"], lambda d: None,
     "--hash_bits"),
    ("baseline-negative-bits", "tools.baseline", ["--hash_bits=-8", "--output_dir", "{d}/out"], lambda d: None,
     "--hash_bits"),
    ("baseline-hash-bits-in-zero-shot", "tools.baseline", ["--zero_shot", "--hash_bits", "16", "--output_dir",
                                                           "{d}/out"], lambda d: None, "run it without --zero_shot"),
    ("baseline-negative-reg", "tools.baseline", ["--cca_reg=-1", "--output_dir", "{d}/out"], lambda d: None,
     "--cca_reg"),
    ("benchmark-unknown-variant", "tools.benchmark", ["--variants", "loop,fastest", "--output", "{d}/b.json"],
     lambda d: None, "unknown --variants ['fastest']"),
    ("benchmark-unknown-method", "tools.benchmark", ["--methods", "foo", "--output", "{d}/b.json"], lambda d: None,
     "unknown methods"),
    # ---------------------------------------------------------------- outputs and paths
    ("unwritable-output-dir", "cmhash_tf.train", ["--epochs", "1", "--output_dir", "{d}/file/sub"],
     lambda d: text(f"{d}/file", "a file, not a folder"), "is a file, not a folder"),
    ("output-dir-is-a-file", "acmr_tf.train", ["--epochs", "1", "--output_dir", "{d}/afile"],
     lambda d: text(f"{d}/afile", "mine"), "is a file, not a folder"),
    ("output-dir-is-the-data-folder", "acmr_tf.train", [*F, "--epochs", "1", "--batch_size", "4", "--output_dir", "{d}/f/"],
     lambda d: features(f"{d}/f"), "is the input folder --data_dir"),
    ("output-dir-of-an-older-version", "acmr_tf.train", ["--epochs", "1", "--output_dir", "{d}/old"],
     lambda d: (text(f"{d}/old/results.json", "{}"), text(f"{d}/old/history.json", "{}")), "no run.json"),
    ("output-dir-of-another-method", "cmhash_tf.train", ["--epochs", "1", "--output_dir", "{d}/acmr"],
     lambda d: text(f"{d}/acmr/run.json", json.dumps({"program": "acmr_tf.train", "settings": {}, "data": {}})),
     "holds a run of acmr_tf.train, not of cmhash_tf.train"),
    ("export-a-baseline-run", "tools.export", ["--run_dir", "{d}/r", "--out", "{d}/e"],
     lambda d: text(f"{d}/r/run.json", json.dumps({"program": "tools.baseline", "settings": {}, "data": {}})),
     "has no trained encoders"),
    ("export-out-is-the-run", "tools.export", ["--run_dir", "{d}/r", "--out", "{d}/r"], lambda d: fake_run(f"{d}/r"),
     "is the run folder itself"),
    ("export-out-holds-user-files", "tools.export", ["--run_dir", "{d}/r", "--out", "{d}/mine"],
     lambda d: (fake_run(f"{d}/r"), text(f"{d}/mine/thesis.tex", "years of work")), "not a previous export"),
    ("export-previous-without-overwrite", "tools.export", ["--run_dir", "{d}/r", "--out", "{d}/e"],
     lambda d: (fake_run(f"{d}/r"), text(f"{d}/e/saved_model.pb", "old")), "--overwrite"),
    ("export-missing-checkpoint", "tools.export", ["--run_dir", "{d}/r", "--out", "{d}/e", "--checkpoint", "{d}/nope"],
     lambda d: fake_run(f"{d}/r"), "no such checkpoint"),
    ("export-no-checkpoint-yet", "tools.export", ["--run_dir", "{d}/r", "--out", "{d}/e"],
     lambda d: fake_run(f"{d}/r"), "no checkpoint to export"),
    ("export-run-with-several-models", "tools.export", ["--run_dir", "{d}/r", "--out", "{d}/e"],
     lambda d: (fake_run(f"{d}/r/bits_16"), fake_run(f"{d}/r/bits_32")),
     "holds 2 models (bits_16, bits_32); pass one of them"),
    ("export-text-only-hashing-run", "tools.export", ["--run_dir", "{d}/r/bits_16", "--out", "{d}/e"],
     lambda d: (os.makedirs(f"{d}/r/bits_16/checkpoints"), text(f"{d}/r/run.json", json.dumps(
         {"settings": {"text_only": True, "bits": "16"}, "data": {}}))),
     "exported nothing for tag-only runs"),
    ("export-end-to-end-hashing-run", "tools.export", ["--run_dir", "{d}/r/bits_16", "--out", "{d}/e"],
     lambda d: (os.makedirs(f"{d}/r/bits_16/checkpoints"), text(f"{d}/r/run.json", json.dumps(
         {"settings": {"mode": "e2e", "bits": ["16"]}, "data": {}}))), "an end-to-end hashing run's networks"),
    ("export-not-a-run", "tools.export", ["--run_dir", "{d}/nothing", "--out", "{d}/e"], lambda d: None,
     "no encoders.json"),
    ("search-empty-queries", "tools.search", ["--model", "{d}/m", "--queries", "{d}/q.npy", "--gallery", "{d}/g.npy",
                                              "--out", "{d}/hits.json"],
     lambda d: (fake_model(f"{d}/m"), np.save(f"{d}/q.npy", np.zeros((0, 4))), np.save(f"{d}/g.npy", np.ones((3, 5)))),
     "holds no rows"),
    ("search-empty-gallery", "tools.search", ["--model", "{d}/m", "--queries", "{d}/q.npy", "--gallery", "{d}/g.npy",
                                              "--out", "{d}/hits.json"],
     lambda d: (fake_model(f"{d}/m"), np.save(f"{d}/q.npy", np.ones((2, 4))), np.save(f"{d}/g.npy", np.zeros((0, 5)))),
     "holds no rows"),
    ("search-nan-gallery-row-named", "tools.search", ["--model", "{d}/m", "--queries", "{d}/q.npy", "--gallery",
                                                      "{d}/g.npy", "--out", "{d}/hits.json"],
     lambda d: (fake_model(f"{d}/m"), np.save(f"{d}/q.npy", np.ones((2, 4))),
                np.save(f"{d}/g.npy", np.where(np.arange(15).reshape(3, 5) == 12, np.nan, 1.0))),
     "g.npy: its features contain NaN/inf (1 of 3 rows; the first at row 2, column 2)"),
    ("search-zero-chunk", "tools.search", ["--model", "{d}/m", "--queries", "q", "--gallery", "g", "--out", "{d}/h.json",
                                           "--chunk", "0"], lambda d: None, "--chunk"),
    ("search-faiss-with-hamming", "tools.search", ["--model", "{d}/m", "--queries", "q", "--gallery", "g", "--out",
                                                   "{d}/h.json", "--hamming", "--index", "faiss"], lambda d: None,
     "a --hamming search is exact"),
    ("search-ivf-option-without-ivf", "tools.search", ["--model", "{d}/m", "--queries", "q", "--gallery", "g",
                                                       "--out", "{d}/h.json", "--nprobe", "4"], lambda d: None,
     "--nprobe is an option of --index faiss_ivf"),
    ("search-out-exists", "tools.search", ["--model", "{d}/m", "--queries", "q", "--gallery", "g", "--out",
                                           "{d}/h.json"], lambda d: text(f"{d}/h.json", "[]"), "exists"),
    ("search-not-a-model", "tools.search", ["--model", "{d}/m", "--queries", "q", "--gallery", "g", "--out",
                                            "{d}/h.json"], lambda d: os.makedirs(f"{d}/m"), "no saved_model.pb"),
    ("search-query-ids-count", "tools.search", ["--model", "{d}/m", "--queries", "{d}/q.npy", "--gallery", "{d}/g.npy",
                                                "--out", "{d}/h.json", "--query_ids", "{d}/ids.txt"],
     lambda d: (fake_model(f"{d}/m"), np.save(f"{d}/q.npy", np.ones((2, 4))), np.save(f"{d}/g.npy", np.ones((3, 5))),
                text(f"{d}/ids.txt", "a\n")), "--query_ids has 1 lines"),
    ("report-out-exists", "tools.report", ["{d}/runs", "--out", "{d}/report.md"],
     lambda d: (text(f"{d}/runs/results.json", '{"method": "acmr_simple"}'), text(f"{d}/report.md", "mine")),
     "exists"),
    ("report-foreign-results", "tools.report", ["{d}/runs"], lambda d: text(f"{d}/runs/x/results.json", "[1, 2]"),
     "x/results.json: not a results.json of this project"),
    ("report-malformed-results", "tools.report", ["{d}/runs"],
     lambda d: text(f"{d}/runs/results.json", '{"method": "cmhash", "i2t_map": 3}'), "unexpected content"),
    ("checkpoint-minutes-under-multiworker", "cmhash_tf.train", ["--epochs", "1", "--checkpoint_minutes", "5",
                                                                 "--distribute", "multiworker"], lambda d: None,
     "--checkpoint_minutes is not used with --distribute multiworker"),
    ("report-several-unreadable-named-at-once", "tools.report", ["{d}/runs"],
     lambda d: (text(f"{d}/runs/a/results.json", "{"), text(f"{d}/runs/b/results.json", "[]")),
     "2 of 2 results files cannot be reported: "),
    ("report-no-results", "tools.report", ["{d}/empty"], lambda d: os.makedirs(f"{d}/empty"), "no results.json"),
    ("extend-without-a-run", "cmhash_tf.train", ["--epochs", "3", "--extend"], lambda d: None,
     "holds no run to continue; leave --extend out to start one"),
    ("extend-with-overwrite", "zscrgan_tf.train", ["--dataset", "synthetic", "--max_cycles", "3", "--extend",
                                                   "--overwrite"], lambda d: None,
     "--extend continues the run in --output_dir and --overwrite starts it over: pass one"),
    ("report-plots-without-model", "tools.report", ["--features", "{d}/f"], lambda d: None, "go together"),
    ("class-names-empty", "tools.class_vectors", ["--names", "{d}/names.txt", "--out", "{d}/e.npy"],
     lambda d: text(f"{d}/names.txt", ""), "names.txt"),
    ("class-names-not-utf8", "tools.class_vectors", ["--names", "{d}/names.txt", "--out", "{d}/e.npy"],
     lambda d: text(f"{d}/names.txt", b"\xff\xfe\n", "wb"), "not a UTF-8"),
    ("class-names-blank-line", "tools.class_vectors", ["--names", "{d}/names.txt", "--out", "{d}/e.npy"],
     lambda d: text(f"{d}/names.txt", "cat\n\ndog\n"), "names.txt: line 2 is empty"),
    ("features-class-names-blank-line", "acmr_tf.train", F,
     lambda d: (features(f"{d}/f"), text(f"{d}/f/class_names.txt", "a\n\nb\nc\n")), "class_names.txt: line 2 is empty"),
    ("search-query-ids-blank-line", "tools.search", ["--model", "{d}/m", "--queries", "{d}/q.npy", "--gallery",
                                                     "{d}/g.npy", "--out", "{d}/h.json", "--query_ids", "{d}/ids.txt"],
     lambda d: (fake_model(f"{d}/m"), np.save(f"{d}/q.npy", np.ones((2, 4))), np.save(f"{d}/g.npy", np.ones((3, 5))),
                text(f"{d}/ids.txt", "a\n\nb\n")), "ids.txt: line 2 is empty"),
    ("class-vectors-out-exists", "tools.class_vectors", ["--names", "{d}/names.txt", "--out", "{d}/e.npy"],
     lambda d: (text(f"{d}/names.txt", "cat\n"), np.save(f"{d}/e.npy", np.ones(2))), "exists"),
    ("convert-uci-unseen-not-numbers", "tools.convert_uci", ["--mat", "{d}/uci.mat", "--out", "{d}/o", "--unseen",
                                                             "five"], lambda d: None, "--unseen: expected class ids"),
    ("convert-uci-out-holds-files", "tools.convert_uci", ["--mat", "{d}/uci.mat", "--out", "{d}/o"],
     lambda d: text(f"{d}/o/notes.txt", "mine"), "not a previous feature folder"),
    ("xlsa17-out-previous", "tools.convert_xlsa17", ["--res101", "r", "--splits", "s", "--out", "{d}/o"],
     lambda d: text(f"{d}/o/trainids.pkl", "old"), "--overwrite"),
    ("extract-features-image-size-of-vgg19", "tools.extract_features", ["--manifest", "m.tsv", "--out", "{d}/f",
                                                                         "--image_size", "64"], lambda d: None,
     "--image_size is a resnet50 option"),
    ("extract-features-missing-manifest", "tools.extract_features", ["--manifest", "{d}/m.tsv", "--out", "{d}/o",
                                                                    "--allow_random_init"], lambda d: None, "m.tsv"),
    ("cmhash-extract-missing-flags", "cmhash_tf.extract", [], lambda d: None, "--data_dir"),
    ("cmhash-extract-out-exists", "cmhash_tf.extract", ["--data_dir", "{d}", "--image_dir", "{d}", "--text_dir", "{d}",
                                                        "--out", "{d}/features.npz"],
     lambda d: text(f"{d}/features.npz", "mine"), "exists"),
]

TRAINERS = ("acmr_tf.", "jfse_tf.", "zscrgan_tf.", "cmhash_tf.train")


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input(tmp_path, case):
    _, module, args, setup, fragment, *code = case
    d = str(tmp_path)
    setup(d)
    args = [a.replace("{d}", d) for a in args]
    if "--output_dir" not in args and module.startswith(TRAINERS) and "extract" not in module:
        args += ["--output_dir", str(tmp_path / "out")]
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "notes.txt").write_text("the user's, never touched")
    before = snapshot(d, with_dirs=True)
    temp = tmp_path.parent / f"{tmp_path.name}-tmp"  # the process's temporary files (TensorFlow's autograph)
    temp.mkdir()
    env = user_env(TMPDIR=str(temp))
    res = launch.run([sys.executable, "-m", module, *args], cwd=d, env=env, capture_output=True, text=True,
                     timeout=300)
    assert not os.listdir(temp), os.listdir(temp)  # the error exit skips Python's exit handlers: none left anyway
    err = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert res.returncode == (code[0] if code else 2), (res.returncode, res.stderr[-1500:])
    assert "Traceback" not in res.stderr and len(err) == 1, res.stderr[-1500:]
    assert not noise(res.stderr), res.stderr[-1500:]
    assert fragment in err[0], err[0]
    assert ": :" not in err[0] and ".tmp-" not in err[0], err[0]
    assert snapshot(d, with_dirs=True) == before, sorted(set(snapshot(d, with_dirs=True)) ^ set(before)) or "a file changed"


def test_the_catalogue_covers_every_entry_point():
    modules = {c[1] for c in CASES}
    for module in ("acmr_tf.train", "jfse_tf.train", "jfse_tf.demo", "zscrgan_tf.train", "zscrgan_tf.run_exp",
                   "cmhash_tf.train", "cmhash_tf.extract", "tools.baseline", "tools.export", "tools.search",
                   "tools.report", "tools.class_vectors", "tools.convert_uci", "tools.convert_xlsa17",
                   "tools.extract_features", "tools.benchmark"):
        assert module in modules, module
    assert len(CASES) >= 60


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    env = user_env()
    cmd = [sys.executable, "-m", "cmhash_tf.train", "--epochs", "1", "--bits", "8", "--output_dir", str(tmp_path / "o"),
           "--nojit_compile"]
    assert launch.run(cmd, env=env, cwd=REPO, capture_output=True, timeout=300).returncode == 0
    ckpt = tmp_path / "o" / "bits_8" / "checkpoints"
    data = next(p for p in ckpt.iterdir() if p.name.endswith(".index"))
    data.write_bytes(b"garbage" * 10)
    before = snapshot(str(tmp_path / "o"), with_dirs=True)
    res = launch.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    after = snapshot(str(tmp_path / "o"), with_dirs=True)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-1500:]
    for name in set(before) | set(after):
        assert before.get(name) == after.get(name) or name == ".lock", name  # the lock names its last holder
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "cannot resume from this checkpoint" in lines[0], res.stderr[-1500:]


@pytest.mark.parametrize("sig,code,said", [("SIGINT", 130, "interrupted"), ("SIGTERM", 143, "terminated (SIGTERM)")])
def test_ctrl_c_or_sigterm_says_how_to_resume(tmp_path, sig, code, said):
    """Ctrl-C, and SIGTERM as a scheduler sends it, stop a run with one line and no temporary files."""
    import signal
    import time

    temp = tmp_path / "tmp"
    temp.mkdir()
    env = user_env(TMPDIR=str(temp))
    proc = launch.Popen([sys.executable, "-m", "acmr_tf.train", "--epochs", "500", "--nojit_compile",
                         "--output_dir", str(tmp_path / "o")], env=env, cwd=REPO, stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE, text=True, preexec_fn=as_in_a_terminal)
    deadline = time.time() + 120
    while not (tmp_path / "o" / "checkpoints" / "checkpoint").exists():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(getattr(signal, sig))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err[-1500:]
    assert err.strip().splitlines()[-1] == f"error: {said}; re-run the same command to resume from the last checkpoint"
    leftovers = [p for p in (tmp_path / "o").rglob("*") if "_temp" in p.name or p.name.startswith(".tmp-")]
    assert not leftovers and not os.listdir(temp), (leftovers, os.listdir(temp))


def test_a_network_too_large_for_memory_is_one_line(tmp_path):
    """A width that cannot be allocated (here under an 8 GB address-space limit) is the one
    out-of-memory line, also when Keras hides the failure behind its build retry (ZSCRGAN's
    generator; each failed allocation costs TensorFlow's 10 s allocator retry, so one case); the new
    run's folder is rolled back."""
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))

    args = ["--dataset", "synthetic", "--gf_dim", "3000000", "--max_cycles", "1", "--output_dir", str(tmp_path / "o")]
    res = subprocess.run([sys.executable, "-m", "zscrgan_tf.train", *args], env=user_env(), cwd=tmp_path,
                         capture_output=True, text=True, timeout=300, preexec_fn=limit)
    assert res.returncode == 2, res.stderr[-2000:]
    assert res.stderr.strip().splitlines() == [res.stderr.strip()], res.stderr[-2000:]  # one line, nothing else
    assert res.stderr.startswith("error: out of memory; lower --batch_size or the network widths (OOM when allocating")
    assert not (tmp_path / "o").exists()
