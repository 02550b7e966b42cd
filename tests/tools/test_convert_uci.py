"""tools.convert_uci: the real uci_all.mat into the feature folder; clear errors."""

import os
import sys

import numpy as np
import pytest

from common.errors import ConfigError, DataError
from tests import launch
from tests.conftest import REPO
from tools import convert_uci


def test_cli_writes_a_loadable_folder(shared_data, tmp_path):
    uci = os.path.join(shared_data, "uci_mfeat")
    res = launch.run([sys.executable, "-m", "tools.convert_uci", "--mat", os.path.join(uci, "uci_all.mat"),
                      "--views", os.path.join(uci, "uci_mfeat_6views.npz"), "--out", str(tmp_path / "u")],
                     cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "u" / "unseen_classes.txt").read_text().strip() == "5,6,7,8,9"
    labels = np.load(tmp_path / "u" / "train_lab.npy")
    assert labels.shape == (1500,) and labels.min() == 0 and labels.max() == 9


def test_bad_inputs(tmp_path):
    with pytest.raises(DataError, match="not found"):
        convert_uci.read_uci(str(tmp_path / "none.mat"))
    (tmp_path / "bad.mat").write_bytes(b"garbage")
    with pytest.raises(DataError, match="bad.mat: not a readable MATLAB file"):
        convert_uci.read_uci(str(tmp_path / "bad.mat"))
    with pytest.raises(ConfigError, match="0..9"):
        convert_uci.write_folder({"x.npy": np.zeros(2)}, str(tmp_path / "o"), "3,12")
    assert not (tmp_path / "o").exists()  # nothing written before the check


def test_an_overwrite_removes_what_the_previous_conversion_wrote_and_this_one_does_not(tmp_path):
    arrays = {f"{s}_{m}.npy": np.zeros((2, 3)) for s in ("train", "test") for m in ("img", "txt")}
    arrays.update({"train_lab.npy": np.arange(2), "test_lab.npy": np.arange(2), "class_names.txt": ["a", "b"]})
    out = tmp_path / "u"
    assert convert_uci.write_folder(arrays, str(out), "1") == []
    (out / "mine.txt").write_text("kept")
    # again without unseen classes and without class names: a stale unseen list would still define zero-shot
    del arrays["class_names.txt"]
    assert convert_uci.write_folder(arrays, str(out), "") == ["class_names.txt", "unseen_classes.txt"]
    assert sorted(os.listdir(out)) == sorted(list(arrays) + ["mine.txt"])
