"""Reference baseline: regularised linear CCA, following the run contract.

    python -m tools.baseline --method cca --dataset synthetic --output_dir runs/cca
    python -m tools.baseline --method cca --dataset features --data_dir DIR

Every port's closing note compares against this on the same split. CCA is fitted on the
train split (on seen classes only with `--zero_shot`), both modalities are projected to
`--cca_dim` canonical directions and ranked by cosine similarity (mAP@all).
"""

from __future__ import annotations

import os
import time

import numpy as np
from absl import flags

from common import run
from common.datasets import load_dataset
from common.errors import ConfigError

FLAGS = flags.FLAGS


def _whitener(xc: np.ndarray, reg: float) -> np.ndarray:
    """(C + ridge I)^(-1/2) of the centred rows' covariance C, ridge relative to C's mean variance.
    With fewer rows than columns (4096-d CNN features) C has rank < n, and the thin SVD of the
    rows gives the same matrix far faster than an eigendecomposition of C."""
    n, d = xc.shape[0] - 1, xc.shape[1]
    if xc.shape[0] >= d:
        c = xc.T @ xc / n
        c += reg * max(np.trace(c) / d, 1e-12) * np.eye(d)
        w, v = np.linalg.eigh(c)
        return (v / np.sqrt(np.maximum(w, 1e-12))) @ v.T
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    w = s ** 2 / n
    ridge = reg * max(w.sum() / d, 1e-12)
    outside = 1 / np.sqrt(max(ridge, 1e-12))
    inside = 1 / np.sqrt(np.maximum(w + ridge, 1e-12)) - outside
    return (vt.T * inside) @ vt + outside * np.eye(d)


class CCA:
    """Regularised CCA: whiten each view, SVD of the whitened cross-covariance."""

    def __init__(self, dim: int = 0, reg: float = 1e-3, power: float = 1.0):
        self.dim, self.reg, self.power = dim, reg, power

    def fit(self, x: np.ndarray, y: np.ndarray) -> "CCA":
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        if x.shape[0] != y.shape[0] or x.shape[0] < 2:
            raise ConfigError("CCA needs at least two paired training rows")
        self.mx, self.my = x.mean(0), y.mean(0)
        xc, yc = x - self.mx, y - self.my
        n = x.shape[0] - 1
        cxy = xc.T @ yc / n
        wx, wy = _whitener(xc, self.reg), _whitener(yc, self.reg)
        u, s, vt = np.linalg.svd(wx @ cxy @ wy, full_matrices=False)
        k = self.dim or min(x.shape[1], y.shape[1], 128)
        k = min(k, len(s))
        scale = s[:k] ** self.power
        self.correlations = s[:k]
        self.a = (wx @ u[:, :k]) * scale
        self.b = (wy @ vt.T[:, :k]) * scale
        return self

    def transform(self, x=None, y=None):
        out = []
        if x is not None:
            out.append((np.asarray(x, np.float64) - self.mx) @ self.a)
        if y is not None:
            out.append((np.asarray(y, np.float64) - self.my) @ self.b)
        return out[0] if len(out) == 1 else tuple(out)


def evaluate(model: CCA, split) -> dict:
    """Cosine mAP@all (the contract) and, for paired splits, ACMR's Euclidean mAP@50 on every pair."""
    from common import metrics

    img, txt = model.transform(split.image, split.text)
    out = metrics.cross_modal_map_all(img, txt, split.labels, split.txt_labels)
    if split.paired:
        at50 = metrics.acmr_map(img, txt, split.labels, k=50)
        out.update(i2t_map_at_50=at50["i2t"], t2i_map_at_50=at50["t2i"])
    return out


def cca_sign_maps(ds, bits, reg: float) -> dict:
    """Hashing baseline: centred top-K canonical projections, sign (0 -> +1), Hamming mAP."""
    from common import metrics

    database = ds.database if ds.database is not None else ds.train
    out = {}
    for k in bits:
        model = CCA(k, reg, 1.0).fit(ds.train.image, ds.train.text)
        if model.a.shape[1] < k:
            raise ConfigError(f"--hash_bits {k}: CCA gives at most {model.a.shape[1]} directions on this data")
        code = lambda x: np.where(x >= 0, 1.0, -1.0)  # noqa: E731
        qi, qt = (code(z) for z in model.transform(ds.test.image, ds.test.text))
        di, dt = (code(z) for z in model.transform(database.image, database.text))
        out[f"hash_{k}_i2t_map"] = metrics.hashing_map(qi, dt, ds.test.labels, database.labels)[0]
        out[f"hash_{k}_t2i_map"] = metrics.hashing_map(qt, di, ds.test.labels, database.labels)[0]
    return out


def main(argv):
    run.no_arguments(argv)
    run.require_nonnegative("cca_dim")
    run.require_float("cca_reg", 0.0, low_open=False, float32=False)  # CCA computes in float64
    run.require_float("cca_power", 0.0, low_open=False, float32=False)
    bits = run.int_list("hash_bits") if FLAGS.hash_bits else []
    if bits and FLAGS.zero_shot:  # its codes are fitted on every train class: not a zero-shot number
        raise ConfigError("--hash_bits fits CCA-then-sign codes on all train classes (the hashing protocol); "
                          "run it without --zero_shot")
    ds = load_dataset(FLAGS.dataset, FLAGS.data_dir, seed=FLAGS.seed)
    print(f"{ds.name}: {len(ds.train)} train / {len(ds.test)} test pairs, dims "
          f"{ds.image_dim}/{ds.text_dim}, {ds.num_classes} classes ({ds.source})")
    if ds.image_dim == 0:  # MIRFlickr's tags alone: CCA would find no direction and report chance as a result
        raise ConfigError(f"{ds.where} has no image features (dims 0/{ds.text_dim}); CCA relates two "
                          "modalities, so there is no baseline to compute (cmhash_tf.train --text_only trains "
                          "tag -> tag hashing on it)")
    warnings = run.data_warnings(ds, standard=not FLAGS.zero_shot)
    zs = ds.zero_shot() if FLAGS.zero_shot else None
    if zs is not None:
        zs.require_evaluable(ds.where)
        print(zs.describe(ds.class_names))
    from common import driver

    with driver.RunFolder(FLAGS.output_dir, run.settings(), ds.fingerprint(), overwrite=FLAGS.overwrite) as folder:
        run.import_tensorflow()  # a refused run has stopped above, before anything is computed
        from common import metrics

        cca = lambda: CCA(FLAGS.cca_dim, FLAGS.cca_reg, FLAGS.cca_power)  # noqa: E731
        if FLAGS.zero_shot:
            model = cca().fit(zs.train.image, zs.train.text)
            sets = {"": zs.test_unseen}
            if len(zs.test_seen):  # a test split of unseen classes only (xmn) has no seen or pooled set
                sets.update(seen_=zs.test_seen, gzs_=zs.test_all)
            result = {}
            for prefix, split in sets.items():
                result.update({prefix + k: v for k, v in evaluate(model, split).items()})
                result[f"{prefix}chance_map_all"] = metrics.expected_random_map(split.labels, split.labels)
        else:
            if not ds.train.paired:
                raise ConfigError("CCA needs paired training data")
            model = cca().fit(ds.train.image, ds.train.text)
            if ds.database is not None:
                qi, qt = model.transform(ds.test.image, ds.test.text)
                di, dt = model.transform(ds.database.image, ds.database.text)
                result = {"i2t_map_all": metrics.mean_average_precision(qi, dt, ds.test.labels, ds.database.labels),
                          "t2i_map_all": metrics.mean_average_precision(qt, di, ds.test.labels, ds.database.labels)}
            else:
                result = evaluate(model, ds.test)
            gallery = ds.test if ds.database is None else ds.database  # what the test queries ranked
            result["chance_map_all"] = metrics.expected_random_map(ds.test.labels, gallery.labels)
        result["cca_directions"] = int(model.a.shape[1])  # what was used: --cca_dim is capped by the data
        if FLAGS.cca_dim and FLAGS.cca_dim > result["cca_directions"]:
            warnings.append(f"--cca_dim {FLAGS.cca_dim}: this data gives {result['cca_directions']} canonical "
                            "directions; all of them were used")
            print(f"warning: {warnings[-1]}")
        if bits:
            result.update(cca_sign_maps(ds, bits, FLAGS.cca_reg))
        result["seconds"] = time.time() - folder.started
        folder.write_results(FLAGS.output_dir, dataset=ds.name, method="cca", seed=FLAGS.seed,
                             flags=run.flag_values(), metrics=result, source=ds.source, warnings=warnings,
                             scenario="zs" if FLAGS.zero_shot else "standard")
    width = max(len(k) for k in result)
    for k, v in result.items():
        print(f"{k:<{width}}  {v}" if isinstance(v, int) else f"{k:<{width}}  {v:.4f}")
    print(f"results in {os.path.join(FLAGS.output_dir, 'results.json')}")


def define_flags():
    run.define_run_flags(default_output_dir="runs/cca", trains=False)
    flags.DEFINE_enum("method", "cca", ["cca"], "Baseline to run.")
    flags.DEFINE_integer("cca_dim", 0, "Canonical directions kept (0: min(feature dims, 128)).")
    flags.DEFINE_float("cca_reg", 1e-3, "Ridge added to each covariance, relative to its mean variance.")
    flags.DEFINE_float("cca_power", 1.0, "Scale direction k by canonical correlation**power (0: no scaling).")
    flags.DEFINE_list("hash_bits", [], "Also report CCA-then-sign hashing: Hamming mAP of sign(top-K CCA "
                      "projections), test queries against the database (or train) split, for each K.")
    flags.DEFINE_bool("zero_shot", False, "Fit on seen classes; report unseen, seen and pooled test mAP.")


def cli():
    define_flags()
    run.run_main(main)


if __name__ == "__main__":
    cli()
