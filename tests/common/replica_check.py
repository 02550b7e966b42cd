"""One replica vs two (MirroredStrategy on two logical CPUs), same global batch, same weights.

Run as `python -m tests.common.replica_check [method ...]` in a fresh process: logical devices
must be configured before TensorFlow initialises, which a pytest worker has long done. Prints
one JSON line per method with the largest relative differences of (1) the losses and the
one-step updates with every optimiser replaced by SGD(lr=1), whose update is minus the
gradient, or for JFSE and cmhash the same through the in-graph epoch loop
(`training.EpochRunner`: two batches in one `tf.function`, the replicas' step inside its while
loop, SGD(0.01)), and (2, with --train3) the losses and weights after three steps with the
method's own optimisers.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402

from common import distribute, training  # noqa: E402

# odd global batch: the two replicas get 4 and 5 rows
B = 9
# one strategy per process, as in training: a second MirroredStrategy over the same devices
# reuses collective keys, and the runtime then rejects its collectives as mismatched
STRATEGY = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), 1e-6))


def acmr(replicas, variant):
    from acmr_tf.config import ACMRConfig
    from acmr_tf.task import LOG_FIELDS, ACMRTrainer

    t = ACMRTrainer(ACMRConfig(variant=variant, preset="paper"), 16, 12, 3, replicas=replicas)
    t.grl_scale.assign(0.7)
    rng = np.random.default_rng(1)
    batch = (tf.constant(rng.normal(size=(B, 16)), tf.float32), tf.constant(rng.normal(size=(B, 12)), tf.float32),
             tf.constant(rng.integers(0, 3, B), tf.int64))
    models = [m for g in t.nets.groups.values() for m in g]
    return t, models, t.optimizers, lambda: t.train_step(*batch), _epoch(t, batch, ("image", "text", "label"), LOG_FIELDS[variant])


def _epoch(trainer, batch, keys, outputs):
    """One in-graph epoch of two batches: `batch` and its rows reversed."""
    tensors = {k: tf.concat([x, tf.reverse(x, [0])], 0) for k, x in zip(keys, batch)}
    runner = training.EpochRunner(trainer._train_step, tensors, keys, outputs, B)
    return lambda: {k: tf.constant(v[-1]) for k, v in runner.run_epoch(0).items()}


def jfse(replicas):
    from jfse_tf.config import JFSEConfig
    from jfse_tf.task import LOSS_NAMES, JFSETrainer

    cfg = JFSEConfig(batch_size=B, hidden=8, noise_dim=4, n_critic=2, align="cmpm", synthesize_unseen=True).for_method()
    t = JFSETrainer(cfg, 10, 7, 5, 4, unseen_class_emb=np.eye(5, dtype=np.float32)[:2],
                    unseen_classes=np.array([2, 3]), replicas=replicas)
    t.grl_scale.assign(0.5)
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, B)
    batch = (tf.constant(rng.normal(size=(B, 10)), tf.float32), tf.constant(rng.normal(size=(B, 7)), tf.float32),
             tf.constant(np.eye(5, dtype=np.float32)[labels] + 0.1), tf.constant(labels, tf.int64))
    models = [m for g in t.nets.groups.values() for m in g]
    return t, models, t.optimizers, lambda: t.train_step(*batch), _epoch(t, batch, ("image", "text", "class_emb", "label"),
                                                                     LOSS_NAMES + ("loss_unseen_syn",))


def cmhash(replicas):
    from cmhash_tf.config import CMHashConfig
    from cmhash_tf.task import CMHashTrainer

    t = CMHashTrainer(CMHashConfig(bits=8, hidden=6, weight_decay=0.01), 10, 7, replicas=replicas)
    rng = np.random.default_rng(3)
    batch = (tf.constant(rng.normal(size=(B, 10)), tf.float32), tf.constant(rng.normal(size=(B, 7)), tf.float32),
             tf.constant((rng.random((B, 4)) < 0.4).astype(np.float32)))
    models = [m for g in t.nets.groups.values() for m in g]
    return t, models, t.optimizers, lambda: t.train_step(*batch), _epoch(t, batch, ("image", "text", "label"), ("loss",))


def zscrgan(replicas):
    from common.synthetic import make_synthetic
    from zscrgan_tf import data as zdata
    from zscrgan_tf.config import ZSCRGANConfig
    from zscrgan_tf.task import ZSCRGANTrainer

    cfg = ZSCRGANConfig(batch_size=B, gf_dim=16, df_dim=8, embed_dim=6, z_dim=3, clip_val=100.0)
    data = zdata.from_dataset(make_synthetic("small", seed=0), 0, 0)
    t = ZSCRGANTrainer(cfg, data, replicas)
    rows = (tf.constant(np.arange(B) % len(data.images), tf.int64), tf.constant(np.arange(B) % len(data.texts), tf.int64),
            tf.constant(np.r_[np.ones(B - 1), 0.0], tf.float32))  # one zero-padded row, as the sampler makes

    def step():
        out = dict(t.critic_step(*rows))
        out.update(t.generator_step(*rows))
        out.update(t.csem_step(*rows))
        return out

    return t, [t.gen, t.critic, t.csem], {"d": t.d_opt, "g": t.g_opt, "c": t.c_opt}, step, None  # sampler-fed


def _sgd(trainer, optimizers, replicas, lr):
    """Every optimiser replaced by SGD(lr) over the same variables (lr = 1: the update is -gradient)."""
    with replicas.scope():
        for name, opt in list(optimizers.items()):
            sgd = keras.optimizers.SGD(lr)
            sgd.build(list(opt._trainable_variables))
            optimizers[name] = sgd
            if hasattr(trainer, f"{name}_opt"):  # ZSCRGAN keeps its optimisers as attributes
                setattr(trainer, f"{name}_opt", sgd)


def _weights(models):
    return [np.array(v.numpy()) for m in models for v in m.variables]


def _losses(out):
    return {k: float(v) for k, v in out.items() if tf.as_dtype(v.dtype).is_floating}


def build(name, replicas, sgd, epoch=False):
    keras.utils.set_random_seed(0)
    fn = {"acmr_simple": lambda r: acmr(r, "simple"), "acmr_triplet": lambda r: acmr(r, "triplet"),
          "jfse": jfse, "cmhash": cmhash, "zscrgan": zscrgan}[name]
    trainer, models, optimizers, step, epoch_fn = fn(replicas)
    if sgd:  # two steps of SGD(1) diverge; the epoch's two steps take a small rate
        _sgd(trainer, optimizers, replicas, 0.01 if epoch else 1.0)
    return trainer, models, (epoch_fn if epoch else step)


def compare(name: str) -> dict:
    strategy = STRATEGY
    out = {"method": name, "replicas": strategy.num_replicas_in_sync}
    # JFSE and cmhash: the in-graph epoch (the loop every method's training runs), whose two summed
    # SGD updates check the gradients as well (one step of their own would trace the step twice more)
    runs = (("epoch", True, 1),) if name in ("jfse", "cmhash") else (("gradient", True, 1),)
    for label, sgd, steps in runs + ((("train3", False, 3),) if TRAIN3 else ()):
        one, one_models, one_step = build(name, distribute.Replicas(), sgd, label == "epoch")
        two, two_models, two_step = build(name, distribute.Replicas(strategy), sgd, label == "epoch")
        for a, b in zip([v for m in one_models for v in m.variables], [v for m in two_models for v in m.variables]):
            b.assign(a.numpy())  # identical starting weights
        w0 = _weights(one_models)
        for _ in range(steps):
            l1, l2 = _losses(one_step()), _losses(two_step())
        w1, w2 = _weights(one_models), _weights(two_models)
        # relative to the loss scale (a term of ~1e-6 next to ones of ~1 is compared absolutely)
        scale = max(1.0, max(abs(v) for v in l1.values()))
        worst = max(l1, key=lambda k: abs(l1[k] - l2[k]))
        out[f"{label}_loss_rel"] = abs(l1[worst] - l2[worst]) / scale
        out[f"{label}_loss_worst"] = [worst, l1[worst], l2[worst]]
        if label in ("gradient", "epoch"):  # SGD(1): the update is -gradient; the epoch: two steps' sum
            out[f"{label}_update_rel"] = max(_rel(a1 - a0, a2 - a0) for a0, a1, a2 in zip(w0, w1, w2))
            out["moved"] = sum(bool(np.any(a1 != a0)) for a0, a1 in zip(w0, w1))
            out["variables"] = len(w0)
        else:
            out["train3_weight_rel"] = max(_rel(a, b) for a, b in zip(w1, w2))
    return out


TRAIN3 = "--train3" in sys.argv

if __name__ == "__main__":
    for method in [a for a in sys.argv[1:] if not a.startswith("--")] or ["acmr_simple", "acmr_triplet", "jfse", "cmhash", "zscrgan"]:
        print(json.dumps(compare(method)), flush=True)
