"""TFDS builders for the original release formats (manual download) and synthetic data.

Each builder reads its manual folder through the matching `common.readers` function, so a
file problem gives the same clear `DataError`, and writes one TFDS dataset with a shared
schema: per example `image`, `text` (float32 vectors), `label` (int64, or multi-hot uint8),
`row` (original row order, restored on load) and `id`. Unpaired splits (ZSCRGAN) become
`<split>_image` and `<split>_text` with the other modality empty. Class-level data (names,
embeddings, seen/unseen ids) lives in the dataset's metadata.

    python -c "from common.tfds_builders import load_via_tfds; load_via_tfds('wikipedia', DIR)"
"""

from __future__ import annotations

import hashlib
import os
from typing import Optional

import numpy as np
import tensorflow_datasets as tfds

from common import readers
from common.dataset import SPLIT_NAMES, CrossModalDataset, Split
from common.errors import DataError
from common.synthetic import SIZES, make_synthetic

CACHE_ENV = "CMR_TFDS_DIR"


def _features(multilabel: bool) -> tfds.features.FeaturesDict:
    label = (tfds.features.Tensor(shape=(None,), dtype=np.uint8) if multilabel
             else tfds.features.Tensor(shape=(), dtype=np.int64))
    return tfds.features.FeaturesDict({
        "image": tfds.features.Tensor(shape=(None,), dtype=np.float32),
        "text": tfds.features.Tensor(shape=(None,), dtype=np.float32),
        "label": label,
        "row": tfds.features.Tensor(shape=(), dtype=np.int64),
        "id": tfds.features.Text(),
    })


def _generate(split: Split, modality: Optional[str] = None):
    n = split.num_texts if modality == "text" else len(split)
    labels = split.txt_labels if modality == "text" else split.labels
    ids = split.text_ids if modality == "text" else split.ids
    for i in range(n):
        yield i, {
            "image": split.image[i] if modality != "text" else np.zeros((0,), np.float32),
            "text": split.text[i] if modality != "image" else np.zeros((0,), np.float32),
            "label": labels[i],
            "row": i,
            "id": "" if ids is None else str(ids[i]),
        }


def _metadata(ds: CrossModalDataset) -> dict:
    as_list = lambda a: None if a is None else np.asarray(a).tolist()  # noqa: E731
    dims = {s: [int(v.image.shape[1]), int(v.text.shape[1])] for s, v in ds.splits().items()}
    return {"name": ds.name, "num_classes": ds.num_classes, "class_names": ds.class_names,
            "class_embeddings": as_list(ds.class_embeddings), "seen_classes": as_list(ds.seen_classes),
            "unseen_classes": as_list(ds.unseen_classes), "dims": dims,
            "paired": {s: v.paired for s, v in ds.splits().items()},
            "extras": {k: v for k, v in ds.extras.items() if isinstance(v, (int, str, list))}}


class _CrossModalBuilder(tfds.core.GeneratorBasedBuilder):
    """Shared machinery: subclasses set `_read(manual_dir) -> CrossModalDataset`."""

    VERSION = tfds.core.Version("1.0.0")
    MULTILABEL = False

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(features=_features(self.MULTILABEL),
                                              metadata=tfds.core.MetadataDict())

    def _load(self, dl_manager) -> CrossModalDataset:
        raise NotImplementedError

    def _split_generators(self, dl_manager):
        ds = self._load(dl_manager)
        self.info.metadata.update(_metadata(ds))
        gens = {}
        for name, split in ds.splits().items():
            if split.paired:
                gens[name] = _generate(split)
            else:
                gens[f"{name}_image"] = _generate(split, "image")
                gens[f"{name}_text"] = _generate(split, "text")
        return gens

    def _generate_examples(self):  # generators are returned directly by _split_generators
        raise NotImplementedError


def _manual_builder(builder_name: str, reader, instructions: str, multilabel: bool = False):
    def _load(self, dl_manager):
        return reader(str(dl_manager.manual_dir))

    return type(builder_name, (_CrossModalBuilder,), {
        "MANUAL_DOWNLOAD_INSTRUCTIONS": instructions, "MULTILABEL": multilabel,
        "_load": _load, "__module__": __name__,
        "__doc__": f"TFDS builder over {reader.__name__} (manual folder)."})


CmrWikipedia = _manual_builder("CmrWikipedia", readers.read_acmr_wikipedia, readers.WIKIPEDIA_HOW_TO)
CmrNuswide = _manual_builder("CmrNuswide", readers.read_acmr_nuswide, readers.NUSWIDE_HOW_TO)
CmrXmn = _manual_builder("CmrXmn", readers.read_jfse_xmn, readers.XMN_HOW_TO)
CmrZscrgan = _manual_builder("CmrZscrgan", readers.read_zscrgan, readers.ZSCRGAN_HOW_TO)
CmrIapr = _manual_builder("CmrIapr", readers.read_iapr, readers.IAPR_HOW_TO, multilabel=True)
CmrFeatures = _manual_builder("CmrFeatures", readers.read_feature_folder, readers.FEATURES_HOW_TO)
CmrFeaturesMultilabel = _manual_builder("CmrFeaturesMultilabel", readers.read_feature_folder,
                                        readers.FEATURES_HOW_TO, multilabel=True)


class CmrSynthetic(_CrossModalBuilder):
    """The synthetic default (single-label), one config per size; no files needed."""

    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=size) for size in SIZES]

    def _load(self, dl_manager):
        return make_synthetic(size=self.builder_config.name, seed=0)


BUILDERS = {"wikipedia": CmrWikipedia, "nuswide": CmrNuswide, "xmn": CmrXmn, "zscrgan": CmrZscrgan,
            "iapr": CmrIapr, "features": CmrFeatures}


def _cache_dir(folder: str) -> str:
    """A TFDS data_dir unique to this folder's path and file stamps (re-prepared on change)."""
    h = hashlib.sha1(os.path.abspath(folder).encode())
    for name in sorted(os.listdir(folder)):
        st = os.stat(os.path.join(folder, name))
        h.update(f"{name}:{st.st_size}:{st.st_mtime_ns}".encode())
    root = os.environ.get(CACHE_ENV, os.path.join(os.path.expanduser("~"), ".cache", "cmr_tf", "tfds"))
    return os.path.join(root, h.hexdigest()[:16])


def prepare(builder_cls, folder: Optional[str], data_dir: Optional[str] = None, config=None):
    """Build (once) and return the prepared builder."""
    if folder is not None and not os.path.isdir(folder):
        raise DataError(f"data folder {folder!r} does not exist. {builder_cls.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    data_dir = data_dir or (_cache_dir(folder) if folder else os.path.join(
        os.environ.get(CACHE_ENV, os.path.join(os.path.expanduser("~"), ".cache", "cmr_tf", "tfds")), "synthetic"))
    builder = builder_cls(data_dir=data_dir, config=config) if config else builder_cls(data_dir=data_dir)
    tfds.disable_progress_bar()
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=folder))
    return builder


def to_dataset(builder) -> CrossModalDataset:
    """Reassemble the in-memory dataset (original row order) from a prepared builder."""
    meta = dict(builder.info.metadata)

    def read(split_name):
        rows = list(tfds.as_numpy(builder.as_dataset(split=split_name, shuffle_files=False)))
        rows.sort(key=lambda r: int(r["row"]))
        stack = lambda key: np.stack([r[key] for r in rows])  # noqa: E731
        ids = np.asarray([r["id"].decode() for r in rows])
        return stack("image"), stack("text"), stack("label"), (ids if any(ids) else None)

    splits = {}
    for name in SPLIT_NAMES:
        if name in builder.info.splits:
            image, text, labels, ids = read(name)
            splits[name] = Split(image, text, labels, ids=ids)
        elif f"{name}_image" in builder.info.splits:
            image, _, labels, ids = read(f"{name}_image")
            _, text, text_labels, text_ids = read(f"{name}_text")
            splits[name] = Split(image, text, labels, text_labels=text_labels, ids=ids, text_ids=text_ids)
    arr = lambda key: None if meta.get(key) is None else np.asarray(meta[key])  # noqa: E731
    emb = arr("class_embeddings")
    ds = CrossModalDataset(name=meta["name"], num_classes=int(meta["num_classes"]),
                           class_names=meta.get("class_names"),
                           class_embeddings=None if emb is None else emb.astype(np.float32),
                           seen_classes=arr("seen_classes"), unseen_classes=arr("unseen_classes"),
                           source=f"tfds:{builder.name} ({builder.data_dir})", **splits)
    ds.extras.update(meta.get("extras") or {})
    return ds.validate()


def load_via_tfds(name: str, folder: str, **kwargs) -> CrossModalDataset:
    if kwargs:
        raise DataError(f"options {sorted(kwargs)} are not supported through TFDS; load without via_tfds")
    builder_cls = BUILDERS[name]
    if name == "features":
        probe = readers.read_feature_folder(folder)  # label type decides the schema
        builder_cls = CmrFeaturesMultilabel if probe.multilabel else CmrFeatures
    return to_dataset(prepare(builder_cls, folder))
