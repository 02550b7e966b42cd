"""`load_dataset(name, data_dir)`: one entry point for every dataset a method may read.

Names: `synthetic` (embedded default; `synthetic:SIZE`, `synthetic-multilabel:SIZE`),
`features` (generic folder), `wikipedia` / `nuswide` (ACMR pickles), `xmn` (JFSE pickles),
`zscrgan` (ZSCRGAN's datasets/<NAME>/), `iapr` (hashing split files), `mirflickr`
(MIRFlickr-25K .mat files, seeded 2000-query protocol).
With `via_tfds=True` the files go through the TFDS builder of `common.tfds_builders`
(prepared once into a cache keyed by the folder's path and file stamps).
"""

from __future__ import annotations

from typing import Optional

from common import readers
from common.dataset import CrossModalDataset
from common.errors import DataError
from common.synthetic import SIZES, make_hashing_synthetic, make_synthetic

FILE_READERS = {
    "features": readers.read_feature_folder,
    "wikipedia": readers.read_acmr_wikipedia,
    "nuswide": readers.read_acmr_nuswide,
    "xmn": readers.read_jfse_xmn,
    "zscrgan": readers.read_zscrgan,
    "iapr": readers.read_iapr,
    "mirflickr": readers.read_mirflickr,
}
NAMES = ("synthetic", "synthetic-multilabel", "synthetic-hashing") + tuple(FILE_READERS)


def load_dataset(name: str, data_dir: Optional[str] = None, seed: int = 0,
                 via_tfds: bool = False, **kwargs) -> CrossModalDataset:
    """Load `name`; raises `DataError` with a clear message on any data problem."""
    base, _, size = name.partition(":")
    if base.startswith("synthetic") and data_dir:
        raise DataError(f"--data_dir {data_dir} is not read by the embedded synthetic data; to train on that "
                        "folder pass --dataset features (or its release format's name), else drop --data_dir")
    if base == "synthetic-hashing":
        return make_hashing_synthetic(seed=seed, **kwargs)
    if base in ("synthetic", "synthetic-multilabel"):
        size = size or "small"
        if size not in SIZES:
            raise DataError(f"unknown synthetic size {size!r}; choose from {sorted(SIZES)}")
        return make_synthetic(size=size, seed=seed, multilabel=base.endswith("multilabel"), **kwargs)
    if base not in FILE_READERS:
        raise DataError(f"unknown dataset {name!r}; choose from {', '.join(NAMES)}")
    if not data_dir:
        raise DataError(f"--dataset {base} reads files: pass --data_dir (the folder holding them)")
    if via_tfds:
        from common import tfds_builders

        return tfds_builders.load_via_tfds(base, data_dir, **kwargs)
    if base == "mirflickr":  # its query/database draw is seeded
        kwargs.setdefault("seed", seed)
    ds = FILE_READERS[base](data_dir, **kwargs)
    if not all(split.paired for split in ds.splits().values()):  # ZSCRGAN's per-class collections
        raise DataError(f"{data_dir}: {base} data has no image-text pairs (its texts are per class, not per image), "
                        "and this method trains and evaluates on pairs; ZSCRGAN reads it (cmr train zscrgan "
                        f"--dataset {base} --data_dir {data_dir})")
    return ds
