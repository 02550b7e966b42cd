"""Each TFDS builder prepares its fixture from the manual folder and round-trips exactly."""

import os

import numpy as np
import pytest

from common import readers, tfds_builders
from common.datasets import load_dataset
from common.errors import DataError
from tests.common import fixtures


def assert_same(a, b):
    assert set(a.splits()) == set(b.splits())
    for name, s in a.splits().items():
        t = b.splits()[name]
        np.testing.assert_array_equal(s.image, t.image)
        np.testing.assert_array_equal(s.text, t.text)
        np.testing.assert_array_equal(s.labels, t.labels)
        np.testing.assert_array_equal(s.txt_labels, t.txt_labels)
    assert a.num_classes == b.num_classes


@pytest.mark.parametrize("name,writer,reader", [
    ("wikipedia", fixtures.write_wikipedia, readers.read_acmr_wikipedia),
    ("nuswide", fixtures.write_nuswide, readers.read_acmr_nuswide),
    ("xmn", fixtures.write_xmn, readers.read_jfse_xmn),
    ("zscrgan", fixtures.write_zscrgan, readers.read_zscrgan),
    ("iapr", fixtures.write_iapr, readers.read_iapr),
    ("features", fixtures.write_feature_folder, readers.read_feature_folder),
    ("mirflickr", fixtures.write_mirflickr, readers.read_mirflickr),  # the standard protocol's draw
    ("mirflickr", lambda f: fixtures.write_mirflickr(f, with_images=False), readers.read_mirflickr),  # tags only
])
def test_builder_round_trip(tmp_path, name, writer, reader):
    folder = str(tmp_path / name)
    writer(folder)
    direct = reader(folder)
    via = load_dataset(name, folder, via_tfds=True)
    assert_same(direct, via)
    assert via.source.startswith("tfds:cmr_")
    if name == "mirflickr":  # ids name the .mat rows of each drawn split
        for split, rows in direct.splits().items():
            assert [str(i) for i in rows.ids] == [str(i) for i in via.splits()[split].ids], split
        assert via.extras["has_images"] == direct.extras["has_images"]
    if direct.unseen_classes is not None:
        np.testing.assert_array_equal(direct.unseen_classes, via.unseen_classes)
    if direct.class_embeddings is not None:
        np.testing.assert_array_equal(direct.class_embeddings, via.class_embeddings)


def test_builder_has_manual_instructions_and_clear_missing_error(tmp_path):
    for cls in tfds_builders.BUILDERS.values():
        assert any(name in cls.MANUAL_DOWNLOAD_INSTRUCTIONS for name in ("train_", "iapr_train", "trainids",
                                                                          "mirflickr25k-yall.mat"))
    fixtures.write_wikipedia(str(tmp_path))
    os.remove(tmp_path / "train_labels.pkl")
    with pytest.raises(DataError, match=r"missing train_labels\.pkl"):
        load_dataset("wikipedia", str(tmp_path), via_tfds=True)


def test_cache_is_keyed_by_folder_contents(tmp_path):
    folder = str(tmp_path / "f")
    fixtures.write_feature_folder(folder, rng=np.random.default_rng(0))
    first = load_dataset("features", folder, via_tfds=True)
    fixtures.write_feature_folder(folder, rng=np.random.default_rng(1))
    os.utime(os.path.join(folder, "train_img.npy"), ns=(1, 1))  # new stamp even within a tick
    second = load_dataset("features", folder, via_tfds=True)
    assert not np.array_equal(first.train.image, second.train.image)
    np.testing.assert_array_equal(second.train.image, readers.read_feature_folder(folder).train.image)
    # the earlier preparation of this folder is gone; another folder's stays
    other = str(tmp_path / "g")
    fixtures.write_feature_folder(other, rng=np.random.default_rng(2))
    load_dataset("features", other, via_tfds=True)
    cache = tmp_path / "tfds_cache"
    assert sorted(len(os.listdir(cache / d)) for d in os.listdir(cache)) == [1, 1]
    assert str(cache) in second.source and os.path.exists(second.source.split("(")[1].rstrip(")"))


def test_synthetic_builder_matches_generator(tmp_path):
    from common.synthetic import make_synthetic

    ds = tfds_builders.to_dataset(tfds_builders.prepare(tfds_builders.CmrSynthetic, None,
                                                        data_dir=str(tmp_path), config="small"))
    assert_same(ds, make_synthetic("small"))


def test_tfds_load_recipe_fixed_widths_supervised_keys_zero_shot_splits_and_file_order(tmp_path):
    """docs/data.md's recipe, as written there (issue 18)."""
    import tensorflow_datasets as tfds

    folder = str(tmp_path / "uci")
    fixtures.write_feature_folder(folder, one_based=False, with_val=True)
    (tmp_path / "uci" / "unseen_classes.txt").write_text("2,3\n")
    direct = readers.read_feature_folder(folder)
    kwargs = dict(data_dir=str(tmp_path / "tfds"),
                  builder_kwargs={"config": tfds_builders.config_for("features", folder)},
                  download_and_prepare_kwargs={"download_config": tfds.download.DownloadConfig(manual_dir=folder)})
    pairs = tfds.load("cmr_features", split="test_unseen", as_supervised=True, **kwargs)
    (image, text), label = next(iter(pairs.batch(100)))
    assert pairs.element_spec[0][0].shape == (7,) and pairs.element_spec[0][1].shape == (3,)
    zs = direct.zero_shot()
    np.testing.assert_array_equal(image.numpy(), zs.test_unseen.image)  # file order, no side field
    np.testing.assert_array_equal(label.numpy(), zs.test_unseen.labels)
    splits = tfds.builder("cmr_features", data_dir=str(tmp_path / "tfds"),
                          config=tfds_builders.config_for("features", folder)).info.splits
    assert {"train", "val", "test", "train_seen", "val_seen", "test_seen", "test_unseen"} <= set(splits)
    meta = tfds.builder("cmr_features", data_dir=str(tmp_path / "tfds"),
                        config=tfds_builders.config_for("features", folder)).info.metadata
    assert meta["unseen_classes"] == [2, 3] and meta["seen_classes"] == [c for c in range(direct.num_classes)
                                                                         if c not in (2, 3)]
    assert direct.seen_classes is None and load_dataset("features", folder, via_tfds=True).seen_classes is None
    half = tfds.load("cmr_features", split="train[:50%]", **kwargs)
    rows = np.stack([r["image"] for r in tfds.as_numpy(half)])
    np.testing.assert_array_equal(rows, direct.train.image[:len(rows)])
    assert len(rows) == len(direct.train) // 2
    # the same recipe after the files changed (same widths): prepared again, not the old copy served
    stale = kwargs["builder_kwargs"]["config"]
    np.save(os.path.join(folder, "test_img.npy"), direct.test.image[::-1] + 1)
    kwargs["builder_kwargs"] = {"config": tfds_builders.config_for("features", folder)}
    assert kwargs["builder_kwargs"]["config"].name != stale.name
    fresh = np.stack([r["image"] for r in tfds.as_numpy(tfds.load("cmr_features", split="test", **kwargs))])
    np.testing.assert_array_equal(fresh, direct.test.image[::-1] + 1)
    builder = tfds.builder("cmr_features", data_dir=str(tmp_path / "fresh"), config=stale)
    with pytest.raises(DataError, match=r"uci: its files changed after the builder config i7_t3_c4_sl_\w+ was made"):
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=folder))
