"""TFDS builders for the original release formats (manual download) and synthetic data.

Each builder reads its manual folder through the matching `common.readers` function, so a file
problem gives the same clear `DataError`, and writes one TFDS dataset with a shared schema: per
example `image`, `text` (float32 vectors of the data's fixed widths), `label` (int64 class id, or
multi-hot uint8) and `id`. Details:

- Widths are fixed (`(d,)`, so batched specs are `(None, d)`): they come from the builder config,
  which `config_for(name, folder)` reads off the folder (`tfds.load` recipe in docs/data.md). The
  config's name also holds a digest of the data, so a folder whose files changed is prepared
  again under a new name instead of TFDS serving the earlier preparation.
- Examples keep file order (`disable_shuffling`): row i of a split is row i of its files.
- `as_supervised=True` yields `((image, text), label)`: the pair is the model's input (retrieval is
  learned from pairs) and the class label is the supervision the label-aware methods use.
- Data with seen / unseen classes also gets the zero-shot splits `train_seen`, `val_seen`,
  `test_seen` and `test_unseen` (single-label paired data).
- Unpaired splits (ZSCRGAN) become `<split>_image` and `<split>_text`, the other modality zeros.
- Class-level data (names, embeddings, seen / unseen ids) lives in the dataset's metadata.

`tfds build` (the TFDS command line) needs apache_beam, which TFDS does not install; prepare
through `load_dataset(name, folder, via_tfds=True)` or `tfds.load` with `config_for`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from typing import Optional

import numpy as np
import tensorflow_datasets as tfds

from common import io, readers
from common.dataset import SPLIT_NAMES, CrossModalDataset, Split
from common.errors import DataError
from common.synthetic import SIZES, make_synthetic

CACHE_ENV = "CMR_TFDS_DIR"


@dataclasses.dataclass(eq=False)
class CmrConfig(tfds.core.BuilderConfig):
    """The fixed widths and label kind of one folder's data (`config_for`)."""

    image_dim: int = 0
    text_dim: int = 0
    num_classes: int = 0
    multilabel: bool = False
    data_digest: str = ""  # of the folder's arrays and class data: changed files make another config


def config_for(name: str, folder: str) -> CmrConfig:
    """The builder config of `folder`: its feature widths and label kind, read once from the files."""
    if name not in BUILDERS:
        raise DataError(f"no TFDS builder for {name!r}; choose from {', '.join(sorted(BUILDERS))}")
    ds = READERS[name](folder)
    return _config_of(ds)


def _config_of(ds: CrossModalDataset, metadata: Optional[dict] = None) -> CmrConfig:
    """`metadata`: `_metadata(ds)` when the caller has it already."""
    img = max(s.image.shape[1] for s in ds.splits().values())
    txt = max(s.text.shape[1] for s in ds.splits().values())
    kind = "ml" if ds.multilabel else "sl"
    digest = hashlib.sha1(json.dumps([ds.fingerprint()["digest"], metadata or _metadata(ds)], sort_keys=True,
                                     default=str).encode()).hexdigest()[:10]
    return CmrConfig(name=f"i{img}_t{txt}_c{ds.num_classes}_{kind}_{digest}", image_dim=int(img),
                     text_dim=int(txt), num_classes=int(ds.num_classes), multilabel=bool(ds.multilabel),
                     data_digest=digest)


def _features(cfg: CmrConfig) -> tfds.features.FeaturesDict:
    label = (tfds.features.Tensor(shape=(cfg.num_classes,), dtype=np.uint8) if cfg.multilabel
             else tfds.features.Tensor(shape=(), dtype=np.int64))
    return tfds.features.FeaturesDict({
        "image": tfds.features.Tensor(shape=(cfg.image_dim,), dtype=np.float32),
        "text": tfds.features.Tensor(shape=(cfg.text_dim,), dtype=np.float32),
        "label": label,
        "id": tfds.features.Text(),
    })


def _generate(split: Split, cfg: CmrConfig, modality: Optional[str] = None):
    n = split.num_texts if modality == "text" else len(split)
    labels = split.txt_labels if modality == "text" else split.labels
    ids = split.text_ids if modality == "text" else split.ids
    zeros = {"image": np.zeros((cfg.image_dim,), np.float32), "text": np.zeros((cfg.text_dim,), np.float32)}
    for i in range(n):
        yield i, {
            "image": split.image[i] if modality != "text" else zeros["image"],
            "text": split.text[i] if modality != "image" else zeros["text"],
            "label": labels[i],
            "id": "" if ids is None else str(ids[i]),
        }


def _metadata(ds: CrossModalDataset) -> dict:
    as_list = lambda a: None if a is None else np.asarray(a).tolist()  # noqa: E731
    dims = {s: [int(v.image.shape[1]), int(v.text.shape[1])] for s, v in ds.splits().items()}
    seen, derived = ds.seen_classes, False
    if seen is None and ds.unseen_classes is not None:  # data that names only its unseen classes
        seen, derived = np.setdiff1d(np.arange(ds.num_classes), ds.unseen_classes), True
    return {"name": ds.name, "num_classes": ds.num_classes, "class_names": ds.class_names,
            "class_embeddings": as_list(ds.class_embeddings), "seen_classes": as_list(seen),
            "seen_classes_derived": derived, "unseen_classes": as_list(ds.unseen_classes), "dims": dims,
            "paired": {s: v.paired for s, v in ds.splits().items()},
            "extras": {k: v for k, v in ds.extras.items() if isinstance(v, (int, str, list))}}


def _zero_shot_splits(ds: CrossModalDataset) -> dict:
    """train_seen / val_seen / test_seen / test_unseen of single-label paired data with unseen classes."""
    if ds.unseen_classes is None or not len(ds.unseen_classes) or ds.multilabel or not ds.train.paired:
        return {}
    zs = ds.zero_shot()
    out = {"train_seen": zs.train, "test_seen": zs.test_seen, "test_unseen": zs.test_unseen}
    if zs.val is not None:
        out["val_seen"] = zs.val
    return {k: v for k, v in out.items() if len(v)}


class _CrossModalBuilder(tfds.core.GeneratorBasedBuilder):
    """Shared machinery: subclasses set `_load(manual_dir) -> CrossModalDataset`."""

    VERSION = tfds.core.Version("2.0.0")
    RELEASE_NOTES = {"2.0.0": "Fixed feature widths, file order kept, supervised keys, zero-shot splits.",
                     "1.0.0": "First version."}

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config or CmrConfig(name="unknown")
        return self.dataset_info_from_configs(features=_features(cfg), metadata=tfds.core.MetadataDict(),
                                              supervised_keys=(("image", "text"), "label"),
                                              disable_shuffling=True)

    def _load(self, dl_manager) -> CrossModalDataset:
        raise NotImplementedError

    def _split_generators(self, dl_manager):
        ds = self._load(dl_manager)
        cfg, metadata = self.builder_config, _metadata(ds)
        want = _config_of(ds, metadata)
        if (cfg.image_dim, cfg.text_dim, cfg.num_classes, cfg.multilabel) != (
                want.image_dim, want.text_dim, want.num_classes, want.multilabel):
            raise DataError(f"the builder config {cfg.name} does not describe this data ({want.name}); build it "
                            "with common.tfds_builders.config_for(name, folder)")
        if cfg.data_digest and cfg.data_digest != want.data_digest:
            raise DataError(f"{dl_manager.manual_dir}: its files changed after the builder config {cfg.name} was "
                            f"made (now {want.name}); make it again with common.tfds_builders.config_for(name, "
                            "folder)")
        self.info.metadata.update(metadata)
        gens = {}
        for name, split in {**ds.splits(), **_zero_shot_splits(ds)}.items():
            if split.paired:
                gens[name] = _generate(split, cfg)
            else:
                gens[f"{name}_image"] = _generate(split, cfg, "image")
                gens[f"{name}_text"] = _generate(split, cfg, "text")
        return gens

    def _generate_examples(self):  # generators are returned directly by _split_generators
        raise NotImplementedError


def _manual_builder(builder_name: str, reader, instructions: str):
    def _load(self, dl_manager):
        return reader(str(dl_manager.manual_dir))

    return type(builder_name, (_CrossModalBuilder,), {
        "MANUAL_DOWNLOAD_INSTRUCTIONS": instructions, "_load": _load, "__module__": __name__,
        "__doc__": f"TFDS builder over {reader.__name__} (manual folder; config from `config_for`)."})


CmrWikipedia = _manual_builder("CmrWikipedia", readers.read_acmr_wikipedia, readers.WIKIPEDIA_HOW_TO)
CmrNuswide = _manual_builder("CmrNuswide", readers.read_acmr_nuswide, readers.NUSWIDE_HOW_TO)
CmrXmn = _manual_builder("CmrXmn", readers.read_jfse_xmn, readers.XMN_HOW_TO)
CmrZscrgan = _manual_builder("CmrZscrgan", readers.read_zscrgan, readers.ZSCRGAN_HOW_TO)
CmrIapr = _manual_builder("CmrIapr", readers.read_iapr, readers.IAPR_HOW_TO)
CmrFeatures = _manual_builder("CmrFeatures", readers.read_feature_folder, readers.FEATURES_HOW_TO)
CmrMirflickr = _manual_builder("CmrMirflickr", readers.read_mirflickr, readers.MIRFLICKR_HOW_TO)  # standard protocol


class CmrSynthetic(_CrossModalBuilder):
    """The synthetic default (single-label), one config per size; no files needed."""

    BUILDER_CONFIGS = [CmrConfig(name=size, image_dim=c["image_dim"], text_dim=c["text_dim"],
                                 num_classes=c["num_classes"]) for size, c in SIZES.items()]

    def _load(self, dl_manager):
        return make_synthetic(size=self.builder_config.name, seed=0)


BUILDERS = {"wikipedia": CmrWikipedia, "nuswide": CmrNuswide, "xmn": CmrXmn, "zscrgan": CmrZscrgan,
            "iapr": CmrIapr, "features": CmrFeatures, "mirflickr": CmrMirflickr}
READERS = {"wikipedia": readers.read_acmr_wikipedia, "nuswide": readers.read_acmr_nuswide,
           "xmn": readers.read_jfse_xmn, "zscrgan": readers.read_zscrgan, "iapr": readers.read_iapr,
           "features": readers.read_feature_folder, "mirflickr": readers.read_mirflickr}


def cache_root() -> str:
    return os.environ.get(CACHE_ENV, os.path.join(os.path.expanduser("~"), ".cache", "cmr_tf", "tfds"))


def _cache_dir(folder: str) -> str:
    """A TFDS data_dir unique to this folder's path (the parent) and file stamps (re-prepared on change)."""
    where = hashlib.sha1(os.path.abspath(folder).encode()).hexdigest()[:16]
    h = hashlib.sha1()
    for name in sorted(os.listdir(folder)):
        h.update(f"{name}:{io.file_stamp(os.path.join(folder, name))}".encode())
    return os.path.join(cache_root(), where, h.hexdigest()[:16])


def _drop_older_preparations(data_dir: str) -> None:
    """The cache's earlier preparations of the same folder describe files that have changed since:
    removed once the new one is ready, so that editing a large folder does not fill the disk."""
    parent = os.path.dirname(data_dir)
    for name in os.listdir(parent):
        other = os.path.join(parent, name)
        if other != data_dir and os.path.isdir(other) and not os.path.islink(other):
            shutil.rmtree(other, ignore_errors=True)


def prepare(builder_cls, folder: Optional[str], data_dir: Optional[str] = None, config=None):
    """Build (once) and return the prepared builder (config: `config_for(name, folder)` by default)."""
    if folder is not None:
        io.require_folder(folder, builder_cls.MANUAL_DOWNLOAD_INSTRUCTIONS)
    cached = data_dir is None and folder is not None
    data_dir = data_dir or (_cache_dir(folder) if folder else os.path.join(cache_root(), "synthetic"))
    if config is None and folder is not None:
        name = next(k for k, v in BUILDERS.items() if v is builder_cls)
        config = config_for(name, folder)
    builder = builder_cls(data_dir=data_dir, config=config) if config else builder_cls(data_dir=data_dir)
    tfds.disable_progress_bar()
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=folder))
    if cached:
        _drop_older_preparations(data_dir)
    return builder


def to_dataset(builder) -> CrossModalDataset:
    """Reassemble the in-memory dataset (file order) from a prepared builder."""
    meta = dict(builder.info.metadata)

    def read(split_name):
        rows = list(tfds.as_numpy(builder.as_dataset(split=split_name, shuffle_files=False)))
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
            dims = meta["dims"][name]  # unpaired splits store the other modality as zeros
            splits[name] = Split(image[:, :dims[0]], text[:, :dims[1]], labels, text_labels=text_labels, ids=ids,
                                 text_ids=text_ids)
    arr = lambda key: None if meta.get(key) is None else np.asarray(meta[key])  # noqa: E731
    emb = arr("class_embeddings")
    ds = CrossModalDataset(name=meta["name"], num_classes=int(meta["num_classes"]),
                           class_names=meta.get("class_names"),
                           class_embeddings=None if emb is None else emb.astype(np.float32),
                           seen_classes=None if meta.get("seen_classes_derived") else arr("seen_classes"),
                           unseen_classes=arr("unseen_classes"),
                           source=f"tfds:{builder.name} ({builder.data_dir})", **splits)
    ds.extras.update(meta.get("extras") or {})
    return ds.validate()


def load_via_tfds(name: str, folder: str, **kwargs) -> CrossModalDataset:
    if kwargs:
        raise DataError(f"options {sorted(kwargs)} are not supported through TFDS; load without via_tfds")
    if name not in BUILDERS:
        raise DataError(f"no TFDS builder for {name!r}; choose from {', '.join(sorted(BUILDERS))}")
    return to_dataset(prepare(BUILDERS[name], folder))
