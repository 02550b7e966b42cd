"""tools.convert_xlsa17: xlsa17 (res101.mat + *_splits.mat) -> ZSCRGAN's four pickles."""

import os
import pickle

import numpy as np
import pytest
import scipy.io

from common import readers
from common.errors import DataError
from tools.convert_xlsa17 import convert, write

UNSEEN_COUNT = {"CUB": 50, "AWA1": 10, "AWA2": 10, "FLO": 20, "SUN": 72, "APY": 12}


def generated_res101(splits_path, out_path, n_unseen, dim=16, seed=0):
    """A stand-in for the absent res101.mat: the split file's image counts, labels consistent
    with its locs, and features generated from each class's `att` column (a fixed random
    ReLU map plus noise), so that zero-shot transfer is possible. Not real image features."""
    sp = scipy.io.loadmat(splits_path)
    att = sp["att"].astype(np.float64)
    n_cls = att.shape[1]
    trainval, unseen_loc = sp["trainval_loc"].ravel() - 1, sp["test_unseen_loc"].ravel() - 1
    seen_rest = sp["test_seen_loc"].ravel() - 1
    n = int(max(trainval.max(), unseen_loc.max(), seen_rest.max())) + 1
    rng = np.random.default_rng(seed)
    unseen = np.sort(rng.choice(n_cls, n_unseen, replace=False))
    seen = np.setdiff1d(np.arange(n_cls), unseen)
    labels = np.zeros(n, np.int64)
    for loc, classes in ((np.concatenate([trainval, seen_rest]), seen), (unseen_loc, unseen)):
        labels[loc] = rng.permutation(np.resize(classes, len(loc)))
    a = (att - att.mean(1, keepdims=True)) / (att.std(1, keepdims=True) + 1e-8)
    proj = rng.standard_normal((a.shape[0], dim)) / np.sqrt(a.shape[0])
    centres = a.T @ proj
    feats = np.maximum(centres[labels] + 0.5 * rng.standard_normal((n, dim)), 0).astype(np.float32)
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    scipy.io.savemat(out_path, {"features": feats.T, "labels": (labels + 1)[:, None].astype(np.float64)})
    return labels, seen, unseen


def _tiny_split(folder):
    """5 classes, classes 1 and 3 unseen, 12 images."""
    labels = np.array([0, 0, 1, 2, 2, 3, 4, 4, 1, 3, 0, 2]) + 1
    trainval = np.flatnonzero(np.isin(labels - 1, [0, 2, 4]))[:-1] + 1
    test_seen = np.flatnonzero(np.isin(labels - 1, [0, 2, 4]))[-1:] + 1
    unseen = np.flatnonzero(np.isin(labels - 1, [1, 3])) + 1
    att = np.arange(15, dtype=np.float64).reshape(3, 5)
    scipy.io.savemat(os.path.join(folder, "att_splits.mat"), {
        "att": att, "trainval_loc": trainval[:, None], "test_seen_loc": test_seen[:, None],
        "test_unseen_loc": unseen[:, None], "allclasses_names": np.array([["a"], ["b"], ["c"], ["d"], ["e"]], object)})
    feats = np.arange(12 * 4, dtype=np.float32).reshape(4, 12)  # (dim, n) as the release stores it
    scipy.io.savemat(os.path.join(folder, "res101.mat"), {"features": feats, "labels": labels[:, None]})
    return labels, feats, att


def test_tiny_layout_round_trip(tmp_path):
    labels, feats, att = _tiny_split(tmp_path)
    out = convert(str(tmp_path / "res101.mat"), str(tmp_path / "att_splits.mat"))
    assert out["trainids.pkl"] == [0, 2, 4] and out["testids.pkl"] == [1, 3]
    # seen classes keep trainval images only: the last seen image (index 11, class 2) is test_seen
    assert len(out["image_embed_dict.pkl"][2]) == 2
    np.testing.assert_array_equal(out["image_embed_dict.pkl"][1], feats.T[[2, 8]])
    np.testing.assert_array_equal(out["txt_embed_dict.pkl"][3][0], att[:, 3])
    write(str(tmp_path / "CUB"), out)
    with open(tmp_path / "CUB" / "trainids.pkl", "rb") as f:
        assert f.read(2) == b"\x80\x02"  # protocol 2, readable by the Python 2 release
    ds = readers.read_zscrgan(str(tmp_path / "CUB"))
    assert ds.image_dim == 4 and ds.text_dim == 3 and len(ds.test) == 4
    assert (tmp_path / "CUB" / "class_names.txt").read_text().split() == list("abcde")
    del out["class_names.txt"]  # --overwrite from splits without class names: the old names must not stay
    assert write(str(tmp_path / "CUB"), out) == ["class_names.txt"]
    assert sorted(os.listdir(tmp_path / "CUB")) == sorted(out)


def test_bad_inputs_name_file_and_problem(tmp_path):
    _tiny_split(tmp_path)
    scipy.io.savemat(tmp_path / "nolabels.mat", {"features": np.zeros((4, 12))})
    with pytest.raises(DataError, match=r"nolabels\.mat.*lacks the variable\(s\) \['labels'\]"):
        convert(str(tmp_path / "nolabels.mat"), str(tmp_path / "att_splits.mat"))
    scipy.io.savemat(tmp_path / "wide.mat", {"features": np.zeros((4, 12)), "labels": np.full((12, 1), 9)})
    with pytest.raises(DataError, match="labels must be 1..5"):
        convert(str(tmp_path / "wide.mat"), str(tmp_path / "att_splits.mat"))
    with pytest.raises(DataError, match="missing file"):
        convert(str(tmp_path / "absent.mat"), str(tmp_path / "att_splits.mat"))
    (tmp_path / "junk.mat").write_bytes(b"not a mat file at all")
    with pytest.raises(DataError, match="junk.mat: not a readable MATLAB file"):
        convert(str(tmp_path / "junk.mat"), str(tmp_path / "att_splits.mat"))


@pytest.mark.parametrize("name", ["CUB", "AWA1"])
def test_zsl_splits_with_generated_features(shared_data, tmp_path, name):
    folder = os.path.join(shared_data, "zsl_splits", name)
    splits = os.path.join(folder, "sent_splits.mat" if name == "CUB" else "att_splits.mat")
    labels, seen, unseen = generated_res101(splits, str(tmp_path / "res101.mat"), UNSEEN_COUNT[name])
    sp = scipy.io.loadmat(splits)
    out = convert(str(tmp_path / "res101.mat"), splits)
    assert out["trainids.pkl"] == seen.tolist() and out["testids.pkl"] == unseen.tolist()
    n_images = sum(len(v) for v in out["image_embed_dict.pkl"].values())
    assert n_images == len(sp["trainval_loc"]) + len(sp["test_unseen_loc"])
    assert sum(len(out["image_embed_dict.pkl"][c]) for c in unseen) == len(sp["test_unseen_loc"])
    assert len(out["txt_embed_dict.pkl"][int(seen[0])][0]) == sp["att"].shape[0]
    write(str(tmp_path / name), out)
    with open(tmp_path / name / "testids.pkl", "rb") as f:
        assert pickle.load(f) == unseen.tolist()
    ds = readers.read_zscrgan(str(tmp_path / name))
    assert len(ds.seen_classes) == sp["att"].shape[1] - UNSEEN_COUNT[name]
