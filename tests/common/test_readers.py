"""Every release-format reader on a tiny fixture, plus the clear-error contract."""

import os
import pickle

import numpy as np
import pytest

from common import readers
from common.datasets import load_dataset
from common.errors import DataError
from tests.common import fixtures


@pytest.mark.parametrize("as_lists", [True, False])
def test_wikipedia_lists_or_arrays_latin1_pickles(tmp_path, as_lists):
    data = fixtures.write_wikipedia(tmp_path, as_lists=as_lists)
    ds = readers.read_acmr_wikipedia(str(tmp_path))
    assert ds.num_classes == 10 and ds.class_names[0] == "art"
    np.testing.assert_array_equal(ds.train.image, data["train"][0])
    np.testing.assert_array_equal(ds.test.text, data["test"][1].astype(np.float32))
    np.testing.assert_array_equal(ds.train.labels, data["train"][2])  # 1-based -> 0-based
    assert ds.train.image.dtype == np.float32 and ds.test.ids[0] == "img0"


def test_wikipedia_python2_str_pickle_decodes(tmp_path):
    fixtures.write_wikipedia(tmp_path)
    # a Python-2 cPickle of a str list: protocol 2 with SHORT_BINSTRING opcodes (bytes in py3)
    py2 = b"\x80\x02]q\x00(U\x04img0q\x01U\x04img\xe9q\x02U\x04img2U\x04img3e."
    (tmp_path / "test_img_files.pkl").write_bytes(py2)
    ds = readers.read_acmr_wikipedia(str(tmp_path))
    assert ds.test.ids.tolist() == ["img0", "img\u00e9", "img2", "img3"]


def test_wikipedia_missing_file_message_names_it(tmp_path):
    fixtures.write_wikipedia(tmp_path)
    os.remove(tmp_path / "test_txt_vecs.pkl")
    with pytest.raises(DataError, match=r"missing test_txt_vecs\.pkl in .*wikipedia_dataset\.zip"):
        readers.read_acmr_wikipedia(str(tmp_path))


def test_wikipedia_corrupt_and_zero_based_labels(tmp_path):
    fixtures.write_wikipedia(tmp_path)
    (tmp_path / "train_img_feats.pkl").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="train_img_feats.pkl: not a readable pickle"):
        readers.read_acmr_wikipedia(str(tmp_path))
    fixtures.write_wikipedia(tmp_path)
    fixtures.dump(tmp_path / "train_labels.pkl", [0, 1, 2, 3, 4, 5])
    with pytest.raises(DataError, match="1-based"):
        readers.read_acmr_wikipedia(str(tmp_path))


@pytest.mark.parametrize("base", [0, 1])
def test_nuswide_dict_keyed_files_and_label_base(tmp_path, base):
    data = fixtures.write_nuswide(tmp_path, base=base)
    ds = readers.read_acmr_nuswide(str(tmp_path))
    assert ds.extras["nuswide_label_base"] == base
    ids, img, single = data["train"]
    assert ds.train.ids.tolist() == ids
    np.testing.assert_array_equal(ds.train.image, img)
    np.testing.assert_array_equal(ds.train.labels, single)
    assert ds.text_dim == 1000


def test_nuswide_wrapped_dict_and_missing_id(tmp_path):
    fixtures.write_nuswide(tmp_path)
    with open(tmp_path / "train_id_bow.pkl", "rb") as f:
        bow = pickle.load(f)
    fixtures.dump(tmp_path / "train_id_bow.pkl", np.array(bow, dtype=object))  # 0-d object array
    assert len(readers.read_acmr_nuswide(str(tmp_path)).train) == 5
    bow.pop("train_0002")
    fixtures.dump(tmp_path / "train_id_bow.pkl", bow)
    with pytest.raises(DataError, match="train_id_bow.pkl: 1 ids of train_ids.pkl are missing"):
        readers.read_acmr_nuswide(str(tmp_path))


def test_xmn_attribute_builds_class_embeddings_and_unseen(tmp_path):
    class_emb, tr, te = fixtures.write_xmn(tmp_path)
    ds = readers.read_jfse_xmn(str(tmp_path))
    assert ds.num_classes == 200 and ds.image_dim == 4096 and ds.text_dim == 300
    np.testing.assert_array_equal(ds.train.labels, tr)
    np.testing.assert_allclose(ds.class_embedding_rows(tr), class_emb[tr])
    assert ds.unseen_classes.tolist() == [4, 5]
    with pytest.raises(DataError, match=r"no class embedding for classes \[4, 5\]"):
        ds.class_embedding_rows(te)
    zs = ds.zero_shot()
    assert set(zs.train.labels) == {0, 1, 2, 3} and len(zs.test_unseen) == 4 and len(zs.test_seen) == 0


def test_xmn_class_emb_without_attribute_and_missing_both(tmp_path):
    class_emb, _, te = fixtures.write_xmn(tmp_path / "a", with_attribute=False, with_class_emb=True)
    ds = readers.read_jfse_xmn(str(tmp_path / "a"))
    np.testing.assert_allclose(ds.class_embedding_rows(te), class_emb[te])
    fixtures.write_xmn(tmp_path / "b", with_attribute=False)
    with pytest.raises(DataError, match="neither train_attribute.pkl nor class_emb.npy"):
        readers.read_jfse_xmn(str(tmp_path / "b"))
    os.remove(tmp_path / "a" / "test_labels.pkl")
    with pytest.raises(DataError, match=r"missing test_labels\.pkl \(or test_labels\.npy\)"):
        readers.read_jfse_xmn(str(tmp_path / "a"))


def test_zscrgan_four_pickles(tmp_path):
    txt, img, train, test = fixtures.write_zscrgan(tmp_path)
    ds = readers.read_zscrgan(str(tmp_path))
    assert not ds.train.paired and ds.extras["trainids"] == train
    assert ds.seen_classes.tolist() == [0, 2, 4] and ds.unseen_classes.tolist() == [1, 3]
    # ascending class id, stored order within a class
    assert ds.train.labels.tolist() == [0] * 2 + [2] * 4 + [4] * 3
    np.testing.assert_allclose(ds.train.image[2], img[2][0])
    assert ds.test.txt_labels.tolist() == [1, 1, 3, 3] and ds.test.text_ids.tolist() == [0, 1, 0, 1]
    assert set(ds.test.labels) == {1, 3}


def test_zscrgan_missing_and_malformed(tmp_path):
    fixtures.write_zscrgan(tmp_path)
    os.remove(tmp_path / "testids.pkl")
    with pytest.raises(DataError, match=r"missing testids\.pkl .*datasets/<NAME>/"):
        readers.read_zscrgan(str(tmp_path))
    fixtures.write_zscrgan(tmp_path)
    fixtures.dump(tmp_path / "txt_embed_dict.pkl", [1, 2, 3])
    with pytest.raises(DataError, match="txt_embed_dict.pkl: expected a non-empty dict"):
        readers.read_zscrgan(str(tmp_path))


def test_iapr_split_files(tmp_path):
    data, img = fixtures.write_iapr(tmp_path)
    ds = readers.read_iapr(str(tmp_path))
    assert ds.multilabel and ds.num_classes == 255 and ds.text_dim == 2912
    paths, bow, labels = data["iapr_retrieval"]
    assert ds.database.ids.tolist() == paths
    np.testing.assert_array_equal(ds.database.text, bow.astype(np.float32))
    np.testing.assert_array_equal(ds.database.labels, labels)
    np.testing.assert_array_equal(ds.test.image[1], img[data["iapr_test"][0][1]])


def test_iapr_token_count_is_validated(tmp_path):
    fixtures.write_iapr(tmp_path)
    line = fixtures.iapr_line("01/123.jpg", np.zeros(2912), np.zeros(254))
    with open(tmp_path / "iapr_test", "a") as f:
        f.write(line + "\n")
    with pytest.raises(DataError, match=r"iapr_test:3: expected 3168 tokens .* got 3167"):
        readers.read_iapr(str(tmp_path))


@pytest.mark.parametrize("fmt", ["npy", "mat", "h5"])
def test_feature_folder_formats_and_label_base(tmp_path, fmt):
    data = fixtures.write_feature_folder(tmp_path, fmt=fmt, with_val=True)
    ds = readers.read_feature_folder(str(tmp_path))
    assert ds.val is not None and ds.num_classes == 4
    np.testing.assert_allclose(ds.train.image, data["train"][0])
    assert ds.train.labels.tolist() == (data["train"][2][:, 0] - 1).tolist()


def test_feature_folder_zero_based_multilabel_and_extras(tmp_path):
    fixtures.write_feature_folder(tmp_path / "z", one_based=False)
    (tmp_path / "z" / "unseen_classes.txt").write_text("1\n3\n")
    (tmp_path / "z" / "class_names.txt").write_text("a\nb\nc\nd\n")
    np.save(tmp_path / "z" / "class_emb.npy", np.eye(4, dtype=np.float32))
    ds = readers.read_feature_folder(str(tmp_path / "z"))
    assert ds.train.labels.min() == 0 and ds.unseen_classes.tolist() == [1, 3]
    assert ds.class_names == ["a", "b", "c", "d"] and ds.class_embeddings.shape == (4, 4)
    zs = ds.zero_shot()
    assert not np.isin(zs.train.labels, [1, 3]).any() and set(zs.test_unseen.labels) <= {1, 3}
    assert not [w for w in ds.warnings(standard=False) if "unseen_classes.txt" in w]  # 0-based labels: no doubt
    # unseen classes named as in class_names.txt (case aside), in any order
    (tmp_path / "z" / "unseen_classes.txt").write_text("D\nb\n")
    assert readers.read_feature_folder(str(tmp_path / "z")).unseen_classes.tolist() == [3, 1]
    (tmp_path / "z" / "unseen_classes.txt").write_text("b\nzebra\n")
    with pytest.raises(DataError, match=r"unseen_classes.txt: 'zebra' is not in class_names.txt \(a, b, c, d\)"):
        readers.read_feature_folder(str(tmp_path / "z"))
    os.remove(tmp_path / "z" / "class_names.txt")
    with pytest.raises(DataError, match="expected 0-based integer class ids, or class names with class_names.txt"):
        readers.read_feature_folder(str(tmp_path / "z"))
    data = fixtures.write_feature_folder(tmp_path / "m", multilabel=True)
    ds = readers.read_feature_folder(str(tmp_path / "m"))
    assert ds.multilabel and ds.num_classes == 5
    np.testing.assert_array_equal(ds.test.labels, data["test"][2])


def test_numeric_unseen_ids_beside_one_based_labels_say_which_file_labels_they_select(tmp_path):
    fixtures.write_feature_folder(tmp_path, one_based=True)  # labels 1..4 in the files
    (tmp_path / "unseen_classes.txt").write_text("1 3\n")
    ds = readers.read_feature_folder(str(tmp_path))
    assert ds.unseen_classes.tolist() == [1, 3]  # 0-based, as documented
    (note,) = [w for w in ds.warnings(standard=False) if "unseen_classes.txt" in w]
    assert "labels are 1-based, so its unseen classes are the file labels 2, 4" in note


def test_labels_without_class_0_and_a_class_list_that_fits_both_bases_need_label_base(tmp_path):
    """Labels 1..4 with 5 class embeddings: 1-based (class 4 without pairs) or 0-based (class 0 without
    pairs) pair classes with different embeddings; guessing would be silently wrong, so the user says."""
    fixtures.write_feature_folder(tmp_path)  # labels 1..4
    np.save(tmp_path / "class_emb.npy", np.arange(25, dtype=np.float32).reshape(5, 5))
    with pytest.raises(DataError, match=r"largest label is 4, so with the 5 rows of class_emb.npy .* label_base.txt"):
        readers.read_feature_folder(str(tmp_path))
    for base, first in (("0", 1), ("1", 0)):
        (tmp_path / "label_base.txt").write_text(base + "\n")
        ds = readers.read_feature_folder(str(tmp_path))
        assert ds.train.labels.min() == first and ds.class_embeddings.shape == (5, 5)
    (tmp_path / "label_base.txt").unlink()
    np.save(tmp_path / "class_emb.npy", np.ones((4, 5), np.float32))  # labels 1..4 and 4 rows: only 1-based fits
    assert readers.read_feature_folder(str(tmp_path)).train.labels.tolist()[:4] == [0, 1, 2, 3]
    (tmp_path / "class_names.txt").write_text("a\nb\nc\nd\ne\n")  # but 5 names: ambiguous again
    with pytest.raises(DataError, match="class_names.txt"):
        readers.read_feature_folder(str(tmp_path))


def test_feature_folder_errors(tmp_path):
    fixtures.write_feature_folder(tmp_path)
    np.save(tmp_path / "train_img.npy", np.zeros((11, 7), np.float32))
    with pytest.raises(DataError, match="train_img.npy: 11 image rows but train_lab.npy has 12 labels"):
        readers.read_feature_folder(str(tmp_path))
    fixtures.write_feature_folder(tmp_path)
    bad = np.ones((6, 3), np.float32)
    bad[2, 1] = bad[4, 0] = bad[4, 2] = np.nan
    np.save(tmp_path / "test_txt.npy", bad)
    with pytest.raises(DataError, match=r"test text features contain NaN/inf \(2 of 6 rows; the first at row 2, "
                                       r"column 1\)"):
        readers.read_feature_folder(str(tmp_path))
    fixtures.write_feature_folder(tmp_path)
    fixtures.write_array(str(tmp_path / "test_txt"), np.ones((6, 3)), "mat")
    with pytest.raises(DataError, match="both test_txt.npy and test_txt.mat exist"):
        readers.read_feature_folder(str(tmp_path))
    with pytest.raises(DataError, match="does not exist"):
        readers.read_feature_folder(str(tmp_path / "nowhere"))
    archive = tmp_path / "archive"
    archive.mkdir()
    np.savez(archive / "feats.npz", train_img=np.ones((4, 3)))
    with pytest.raises(DataError, match=r"missing train_img, train_txt, train_lab, test_img, test_txt, "
                                        r"test_lab \(.npy/.mat/.h5\) in .*archive \(feats.npz: .npz "
                                        r"archives are not read"):
        readers.read_feature_folder(str(archive))
    pooled = tmp_path / "pooled"
    fixtures.write_feature_folder(pooled)
    np.save(pooled / "test_img.npy", np.ones((6, 7, 1, 1), np.float32))
    with pytest.raises(DataError, match=r"test_img.npy: expected a 2-D \(n, dim\) array, got shape \(6, 7, 1, 1\) "
                                        r"\(all its axes .* size 1, .*save arr.reshape\(len\(arr\), -1\)\)"):
        readers.read_feature_folder(str(pooled))
    np.save(pooled / "test_img.npy", np.ones((6, 7, 2), np.float32))
    with pytest.raises(DataError, match=r"got shape \(6, 7, 2\)$"):
        readers.read_feature_folder(str(pooled))
    text_labels = tmp_path / "text_labels"
    fixtures.write_feature_folder(text_labels)
    for split in ("train", "test"):
        np.savetxt(text_labels / f"{split}_lab.txt", np.load(text_labels / f"{split}_lab.npy"), fmt="%d")
        os.unlink(text_labels / f"{split}_lab.npy")
    with pytest.raises(DataError, match=r"missing train_lab, test_lab \(.npy/.mat/.h5\) in .*text_labels "
                                        r"\(test_lab.txt, train_lab.txt: not read, save as .npy\)"):
        readers.read_feature_folder(str(text_labels))


def test_pascal_dscmr_reports_the_missing_file(shared_data):
    with pytest.raises(DataError) as err:
        load_dataset("features", os.path.join(shared_data, "pascal_dscmr"))
    assert "missing train_img (.npy/.mat/.h5)" in str(err.value)
    assert "train_txt" not in str(err.value).split(" in ")[0]


def test_uci_written_into_feature_folder_loads(shared_data, tmp_path):
    from tools import convert_uci

    uci = os.path.join(shared_data, "uci_mfeat")
    convert_uci.write_folder(convert_uci.read_uci(os.path.join(uci, "uci_all.mat"),
                                                  os.path.join(uci, "uci_mfeat_6views.npz")), str(tmp_path), "5,9")
    ds = load_dataset("features", str(tmp_path))
    assert (len(ds.train), len(ds.test), ds.image_dim, ds.text_dim) == (1500, 500, 76, 64)
    assert ds.num_classes == 10 and ds.train.labels.min() == 0 and ds.class_names[3] == "three"
    assert ds.class_embeddings.shape == (10, 50) and list(ds.unseen_classes) == [5, 9]
    assert len(np.bincount(ds.test.labels)) == 10 and np.bincount(ds.test.labels).min() > 30


def test_load_dataset_messages():
    with pytest.raises(DataError, match="unknown dataset 'wiki'"):
        load_dataset("wiki")
    with pytest.raises(DataError, match="pass --data_dir"):
        load_dataset("xmn")
    with pytest.raises(DataError, match="unknown synthetic size"):
        load_dataset("synthetic:huge")


def test_empty_split_is_a_clear_error(tmp_path):
    fixtures.write_feature_folder(tmp_path)
    for part, dim in (("img", 7), ("txt", 3)):
        np.save(tmp_path / f"test_{part}.npy", np.zeros((0, dim), np.float32))
    np.save(tmp_path / "test_lab.npy", np.zeros((0,), np.int64))
    with pytest.raises(DataError, match="the test split has no image rows"):
        readers.read_feature_folder(str(tmp_path))


def test_mirflickr_protocol(tmp_path):
    import scipy.io

    rng = np.random.default_rng(0)
    labels = (rng.random((50, 5)) < 0.5).astype(np.uint8)
    tags = (rng.random((50, 7)) < 0.3).astype(np.uint8)
    scipy.io.savemat(tmp_path / "mirflickr25k-yall.mat", {"YAll": tags})
    with pytest.raises(DataError, match=r"mirflickr25k-lall\.mat"):
        readers.read_mirflickr(str(tmp_path))
    scipy.io.savemat(tmp_path / "mirflickr25k-lall.mat", {"LAll": labels})
    ds = readers.read_mirflickr(str(tmp_path), seed=3, num_queries=10, num_train=20)
    assert (len(ds.test), len(ds.database), len(ds.train)) == (10, 40, 20)
    assert ds.image_dim == 0 and not ds.extras["has_images"]
    assert sorted(np.concatenate([ds.test.ids, ds.database.ids]).tolist()) == list(range(50))
    assert set(ds.train.ids) <= set(ds.database.ids)
    np.testing.assert_array_equal(ds.test.text, tags[ds.test.ids])
    np.testing.assert_array_equal(ds.database.labels, labels[ds.database.ids])
    again = readers.read_mirflickr(str(tmp_path), seed=3, num_queries=10, num_train=20)
    np.testing.assert_array_equal(again.test.ids, ds.test.ids)
    scipy.io.savemat(tmp_path / "mirflickr25k-lall.mat", {"LAll": labels[:40]})
    with pytest.raises(DataError, match="expected \\(50, C\\)"):
        readers.read_mirflickr(str(tmp_path))


def test_mirflickr_shared_data(shared_data):
    ds = readers.read_mirflickr(os.path.join(shared_data, "mirflickr25k"))
    assert (len(ds.test), len(ds.database), len(ds.train)) == (2000, 18015, 10000)
    assert ds.text_dim == 1386 and ds.num_classes == 24
    # distinct items share tag vectors (hundreds of queries repeat a database row): no false alarm
    assert ds.overlap_warnings() == [] and ds.overlap_warnings(min_share=0.0) == []


def test_held_out_splits_that_repeat_other_splits_are_warned():
    from common.dataset import CrossModalDataset, Split

    rng = np.random.default_rng(0)
    split = lambda n: Split(rng.normal(size=(n, 6)).astype(np.float32), rng.normal(size=(n, 4)).astype(np.float32),  # noqa: E731
                            np.arange(n) % 3)
    train, test = split(40), split(20)
    assert CrossModalDataset("d", train, test, val=split(10)).overlap_warnings() == []
    # a copied file: the val split is the test split
    w = CrossModalDataset("d", train, test, val=test).overlap_warnings()
    assert w == ["d: 20 of 20 test pairs also appear in the val split (identical feature rows): what is selected on "
                 "the validation split is selected on the test split"]
    # a mis-split folder: 3 of 20 test pairs copied into train (15% >= 5%), one only (5%) still counts
    leaked = Split(np.vstack([train.image, test.image[:3]]), np.vstack([train.text, test.text[:3]]),
                   np.concatenate([train.labels, test.labels[:3]]))
    (msg,) = CrossModalDataset("d", leaked, test).overlap_warnings()
    assert msg.startswith("d: 3 of 20 test pairs also appear in the train split") and "not held-out" in msg
    one = Split(np.vstack([train.image, test.image[:1]]), np.vstack([train.text, test.text[:1]]),
                np.concatenate([train.labels, test.labels[:1]]))
    assert len(CrossModalDataset("d", one, test).overlap_warnings()) == 1
    assert CrossModalDataset("d", one, test).overlap_warnings(min_share=0.1) == []  # below the share: real duplicates
    # a pair counts only when both rows repeat: the same image with another text is another pair
    other_text = Split(test.image, rng.normal(size=(20, 4)).astype(np.float32), test.labels)
    assert CrossModalDataset("d", train, test, val=other_text).overlap_warnings() == []
    # the hashing protocol: queries found in the database
    (msg,) = CrossModalDataset("d", train, test, database=Split(test.image, test.text, test.labels)).overlap_warnings()
    assert "20 of 20 test pairs also appear in the database split" in msg and "find themselves" in msg
    # test classes that training never sees: zero-shot queries inside a standard result
    only_test = Split(test.image, test.text, np.where(np.arange(20) < 5, 7, test.labels))  # class 7: 5 test rows
    ds = CrossModalDataset("d", train, only_test, num_classes=8)
    assert ds.warnings() == ["d: test classes [7] have no train pairs (5 of 20 test items): their queries are "
                             "zero-shot inside a standard result"]
    assert ds.warnings(standard=False) == []  # a zero-shot result: unseen test classes by design
    multi = lambda s, extra: Split(s.image, s.text, np.eye(5, dtype=np.uint8)[s.labels] | extra)  # noqa: E731
    tags = np.zeros((20, 5), np.uint8)
    tags[:2, 4] = 1  # label 4 on two test items only
    assert CrossModalDataset("d", multi(train, 0), multi(test, tags)).coverage_warnings() == [
        "d: test classes [4] have no train pairs (2 of 20 test items): their queries are zero-shot inside a "
        "standard result"]
    # text-only data (no image columns) is not checked: equal tag vectors are distinct items
    empty = lambda s: Split(np.zeros((len(s), 0), np.float32), s.text, s.labels)  # noqa: E731
    assert CrossModalDataset("d", empty(train), empty(test), val=empty(test)).overlap_warnings() == []


def _matlab_v73(path, name, array):
    """A file as MATLAB's `save -v7.3` writes it: HDF5 behind a 512-byte MAT header, column-major."""
    import h5py

    with h5py.File(path, "w", userblock_size=512) as f:
        f.create_dataset(name, data=np.asarray(array).T)
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Nov 30 2026 HDF5 schema 1.00 .".ljust(116)
    with open(path, "r+b") as f:
        f.write(header + b"\x00" * 8 + b"\x00\x02" + b"IM")


def test_features_from_matlab_v73_and_v5_row_vector_labels(tmp_path):
    import scipy.io

    rng = np.random.default_rng(0)
    arrays = {"train_img": rng.random((9, 5)), "train_txt": rng.random((9, 4)), "train_lab": np.arange(9) % 3 + 1,
              "test_img": rng.random((6, 5)), "test_txt": rng.random((6, 4)), "test_lab": np.arange(6) % 3 + 1}
    for name, arr in arrays.items():
        if name.endswith("_lab"):  # savemat stores a 1-D vector as MATLAB's 1 x n row vector
            scipy.io.savemat(tmp_path / f"{name}.mat", {name: arr})
        else:
            _matlab_v73(tmp_path / f"{name}.mat", name, arr)
    ds = load_dataset("features", str(tmp_path))
    np.testing.assert_allclose(ds.train.image, arrays["train_img"], rtol=1e-6)
    np.testing.assert_array_equal(ds.test.labels, arrays["test_lab"] - 1)  # 1-based (no class 0) -> 0-based
    import h5py

    with h5py.File(tmp_path / "train_img.mat", "w") as f:  # HDF5 without MATLAB's header: order unknown
        f.create_dataset("train_img", data=arrays["train_img"])
    with pytest.raises(DataError, match="train_img.mat: an HDF5 file without MATLAB's v7.3 header"):
        load_dataset("features", str(tmp_path))
