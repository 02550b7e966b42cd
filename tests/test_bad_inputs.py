"""Bad-input catalogue (issue 8): every case exits with code 2 and ONE line naming the input and
the problem, never a traceback, and leaves an existing output folder's results untouched."""

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import scipy.io

from tests.common import fixtures
from tests.conftest import REPO


def features(folder, n_train=12, n_test=6, img=5, txt=4, classes=3, **edit):
    """A valid generic feature folder; `edit` replaces arrays by name (e.g. test_img=...)."""
    rng = np.random.default_rng(0)
    os.makedirs(folder, exist_ok=True)
    arrays = {"train_img": rng.random((n_train, img)), "train_txt": rng.random((n_train, txt)),
              "train_lab": np.arange(n_train) % classes, "test_img": rng.random((n_test, img)),
              "test_txt": rng.random((n_test, txt)), "test_lab": np.arange(n_test) % classes}
    arrays.update(edit)
    for name, arr in arrays.items():
        np.save(os.path.join(folder, f"{name}.npy"), np.asarray(arr))
    return folder


def zscrgan_folder(folder, **edit):
    fixtures.write_zscrgan(folder)
    for name, content in edit.items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(content)
    return folder


def _pickle(obj):
    return pickle.dumps(obj, protocol=2)


SMALL_ZS = ["--gf_dim", "8", "--df_dim", "8", "--embed_dim", "4", "--z_dim", "2", "--e_iters", "1",
            "--m_iters", "1", "--n_critic", "1", "--max_cycles", "1"]

# (id, module, args (with {d} = the case folder), setup(d), fragment expected in the message)
CASES = [
    ("zscrgan-missing-files", "zscrgan_tf.run_exp", ["--dataset", "CUB"], lambda d: None,
     "txt_embed_dict.pkl"),
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
    ("zscrgan-zero-batch", "zscrgan_tf.run_exp", ["--dataset", "synthetic", "--batch_size", "0"],
     lambda d: None, "--batch_size"),
    ("zscrgan-negative-cycles", "zscrgan_tf.run_exp", ["--dataset", "synthetic", "--max_cycles", "-1"],
     lambda d: None, "--max_cycles"),
    ("unknown-flag", "zscrgan_tf.run_exp", ["--dataset", "synthetic", "--no_such_flag", "1"],
     lambda d: None, "no_such_flag"),
    ("unknown-dataset", "cmhash_tf.train", ["--dataset", "imagenet-22k", "--data_dir", "{d}"], lambda d: None,
     "unknown dataset"),
    ("features-missing-dir", "acmr_tf.train", ["--dataset", "features", "--data_dir", "{d}/nope"], lambda d: None,
     "does not exist"),
    ("features-dims-differ", "acmr_tf.train", ["--dataset", "features", "--data_dir", "{d}/f"],
     lambda d: features(f"{d}/f", test_img=np.ones((6, 7))), "differ from train's"),
    ("features-count-mismatch", "acmr_tf.train", ["--dataset", "features", "--data_dir", "{d}/f"],
     lambda d: features(f"{d}/f", train_txt=np.ones((11, 4))), "rows"),
    ("features-inf", "acmr_tf.train", ["--dataset", "features", "--data_dir", "{d}/f"],
     lambda d: features(f"{d}/f", train_img=np.full((12, 5), np.inf)), "NaN/inf"),
    ("features-negative-label", "acmr_tf.train", ["--dataset", "features", "--data_dir", "{d}/f"],
     lambda d: features(f"{d}/f", train_lab=np.arange(12) % 3 - 1), "labels"),
    ("features-empty-split", "cmhash_tf.train", ["--dataset", "features", "--data_dir", "{d}/f"],
     lambda d: features(f"{d}/f", test_img=np.zeros((0, 5)), test_txt=np.zeros((0, 4)),
                        test_lab=np.zeros(0, np.int64)), "no image rows"),
    ("features-unknown-unseen-class", "jfse_tf.demo", ["--dataset", "features", "--data_dir", "{d}/f"],
     lambda d: (features(f"{d}/f"), open(f"{d}/f/unseen_classes.txt", "w").write("7\n")), "unseen"),
    ("features-class-emb-count", "jfse_tf.demo", ["--dataset", "features", "--data_dir", "{d}/f"],
     lambda d: (features(f"{d}/f"), np.save(f"{d}/f/class_emb.npy", np.ones((2, 8)))), "class embeddings"),
    ("mat-without-variable", "tools.convert_uci", ["--mat", "{d}/uci.mat", "--out", "{d}/o"],
     lambda d: scipy.io.savemat(f"{d}/uci.mat", {"I_tr": np.ones((3, 2))}), "lacks the variables"),
    ("xlsa17-without-labels", "tools.convert_xlsa17", ["--res101", "{d}/r.mat", "--splits", "{d}/r.mat",
                                                       "--out", "{d}/o"],
     lambda d: scipy.io.savemat(f"{d}/r.mat", {"features": np.ones((3, 2))}), "labels"),
    ("iapr-wrong-token-count", "cmhash_tf.train", ["--dataset", "iapr", "--data_dir", "{d}/i"],
     lambda d: (fixtures.write_iapr(f"{d}/i"), open(f"{d}/i/iapr_test", "a").write("00/x.jpg 1 0 1\n")),
     "tokens"),
    ("mirflickr-label-rows", "cmhash_tf.train", ["--dataset", "mirflickr", "--data_dir", "{d}/m", "--text_only"],
     lambda d: (os.makedirs(f"{d}/m"), scipy.io.savemat(f"{d}/m/mirflickr25k-yall.mat", {"YAll": np.ones((30, 4))}),
                scipy.io.savemat(f"{d}/m/mirflickr25k-lall.mat", {"LAll": np.ones((20, 3))})), "LAll"),
    ("cmhash-negative-epochs", "cmhash_tf.train", ["--epochs", "-1"], lambda d: None, "--epochs"),
    ("acmr-zero-batch", "acmr_tf.train", ["--batch_size", "0"], lambda d: None, "batch"),
    ("jfse-negative-epochs", "jfse_tf.demo", ["--epochs", "-2"], lambda d: None, "--epochs"),
    ("unwritable-output-dir", "cmhash_tf.train", ["--epochs", "1", "--output_dir", "{d}/file/sub"],
     lambda d: open(f"{d}/file", "w").write("a file, not a folder"), "file"),
    ("class-names-empty", "tools.class_vectors", ["--names", "{d}/names.txt", "--out", "{d}/e.npy"],
     lambda d: open(f"{d}/names.txt", "w").write(""), "names.txt"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input(tmp_path, case):
    _, module, args, setup, fragment = case
    d = str(tmp_path)
    setup(d)
    out = tmp_path / "out"
    args = [a.replace("{d}", d) for a in args]
    if "--output_dir" not in args and not module.startswith("tools."):
        args += ["--output_dir", str(out)]
        out.mkdir()
        (out / "results.json").write_text('{"earlier": true}')
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    res = subprocess.run([sys.executable, "-m", module, *args], cwd=d, env=dict(env, PYTHONPATH=REPO),
                         capture_output=True, text=True, timeout=300)
    err = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert res.returncode == 2, (res.returncode, res.stderr[-1500:])
    assert "Traceback" not in res.stderr and len(err) == 1, res.stderr[-1500:]
    assert fragment in err[0], err[0]
    if (out / "results.json").exists():
        assert (out / "results.json").read_text() == '{"earlier": true}'


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)
    cmd = [sys.executable, "-m", "cmhash_tf.train", "--epochs", "1", "--bits", "8", "--output_dir", str(tmp_path / "o"),
           "--nojit_compile"]
    assert subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, timeout=300).returncode == 0
    ckpt = tmp_path / "o" / "bits_8" / "checkpoints"
    data = next(p for p in ckpt.iterdir() if p.name.endswith(".index"))
    data.write_bytes(b"garbage" * 10)
    before = (tmp_path / "o" / "results.json").read_text()
    res = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-1500:]
    assert "cannot resume from this checkpoint" in res.stderr and (tmp_path / "o" / "results.json").read_text() == before
