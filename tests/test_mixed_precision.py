"""`--precision mixed_bfloat16` (issue 20): the policy reaches every layer (variables float32, compute
bfloat16), outputs and losses stay float32 and close to float32's on a fixed batch, and the export of
a mixed run computes in float32."""

import contextlib

import keras
import numpy as np
import pytest
import tensorflow as tf

from common import training
from common.synthetic import make_synthetic


@contextlib.contextmanager
def policy(name):
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


def trainers(ds, zs):
    """One tiny trainer of each method (built under the current policy)."""
    from acmr_tf.config import ACMRConfig
    from acmr_tf.task import ACMRTrainer
    from cmhash_tf.config import CMHashConfig
    from cmhash_tf.task import CMHashTrainer
    from jfse_tf.config import JFSEConfig
    from jfse_tf.task import JFSETrainer
    from zscrgan_tf import data as zdata
    from zscrgan_tf.config import ZSCRGANConfig
    from zscrgan_tf.task import ZSCRGANTrainer

    training.set_seed(0)
    return {
        "acmr": ACMRTrainer(ACMRConfig(), ds.image_dim, ds.text_dim, ds.num_classes),
        "jfse": JFSETrainer(JFSEConfig(hidden=64, noise_dim=8), ds.image_dim, ds.text_dim,
                            ds.class_embeddings.shape[1], ds.num_classes),
        "zscrgan": ZSCRGANTrainer(ZSCRGANConfig(batch_size=8, gf_dim=16, df_dim=16, embed_dim=8, z_dim=4),
                                  zdata.from_dataset(ds)),
        "cmhash": CMHashTrainer(CMHashConfig(bits=16), ds.image_dim, ds.text_dim),
    }


def networks(t):
    if hasattr(t, "nets") and hasattr(t.nets, "groups"):
        return [m for group in t.nets.groups.values() for m in group]
    return [t.gen, t.critic, t.csem]


@pytest.fixture(scope="module")
def data():
    ds = make_synthetic("small")
    return ds, ds.zero_shot()


def fixed_losses(name, t, ds):
    """Every loss term of one fixed batch (float32 values)."""
    b = slice(0, 16)
    img, txt, lab = ds.train.image[b], ds.train.text[b], ds.train.labels[b]
    if name == "acmr":
        return t.losses(img, txt, lab)
    if name == "jfse":
        c = tf.constant(ds.class_embedding_rows(lab))
        v, tx, c = t._normalise(tf.constant(img), tf.constant(txt), c)
        z = tf.random.stateless_normal([16, 8], seed=[1, 2])
        terms, _, _ = t._joint_terms(v, tx, c, tf.one_hot(lab, ds.num_classes), z, z)
        return terms
    if name == "zscrgan":
        rows = [tf.constant(x) for x in t.sampler.next_batch()[:3]]
        x_r, x_w, tt, t_w = t._batch(*rows)
        noise = [tf.random.stateless_truncated_normal([8, 8], seed=[3, i]) for i in range(2)] + [
            tf.random.stateless_normal([8, 4], seed=[4, i]) for i in range(2)]
        out = t._forward(x_r, x_w, tt, t_w, noise)
        return {k: out[k] for k in ("g_loss", "csem_loss", "kl", "mm")}
    from cmhash_tf import losses

    y = np.eye(ds.num_classes, dtype=np.float32)[lab]
    return losses.triplet_ranking_loss(t.nets.image_head(img), t.nets.text_head(txt), y, 12.0)


def test_policy_reaches_every_layer_and_losses_stay_float32_and_close(data):
    ds, zs = data
    reference = trainers(ds, zs)
    with policy("mixed_bfloat16"):
        mixed = trainers(ds, zs)
    for name, t in mixed.items():
        dense = [layer for m in networks(t) for layer in m._flatten_layers() if isinstance(layer, keras.layers.Dense)]
        assert dense and all(layer.compute_dtype == "bfloat16" for layer in dense), name
        assert all(v.dtype == "float32" for m in networks(t) for v in m.weights), name
        for m, r in zip(networks(t), networks(reference[name])):  # same weights in both precisions
            for a, b in zip(m.weights, r.weights):
                a.assign(b)
        got, want = fixed_losses(name, t, ds), fixed_losses(name, reference[name], ds)
        for key, value in want.items():
            assert got[key].dtype == tf.float32 and np.isfinite(float(got[key])), (name, key)
            assert float(got[key]) == pytest.approx(float(value), rel=0.03, abs=0.02), (name, key)


def test_a_mixed_step_updates_float32_variables_and_keeps_losses_finite(data):
    ds, _ = data
    with policy("mixed_bfloat16"):
        t = trainers(ds, None)["acmr"]
        out = t.train_step(ds.train.image[:64], ds.train.text[:64], ds.train.labels[:64])
    assert all(np.isfinite(float(v)) and v.dtype == tf.float32 for v in out.values())
    assert all(v.dtype == "float32" for v in t.nets.image_projector.weights)
    slots = [v for opt in t.optimizers.values() for v in opt.variables if "int" not in str(v.dtype)]
    assert slots and all(v.dtype == "float32" for v in slots)  # Adam's moments (and the rate) stay float32


def test_bfloat16_updates_run_as_one_xla_computation_equal_to_the_unfused_update(data):
    """--precision mixed_bfloat16 compiles each optimizer update alone with XLA (its step runs without
    XLA on a CPU; the unfused update was 44% of JFSE's step); float32 keeps the unfused update. Same
    weights and batch: both updates agree to float32 rounding."""
    from common import distribute, run

    ds, _ = data
    batch = (ds.train.image[:64], ds.train.text[:64], ds.train.labels[:64])
    updated, before = {}, None
    try:
        for fused in (False, True):
            with policy("mixed_bfloat16"):
                t = trainers(ds, None)["acmr"]
            distribute.fuse_updates(fused)
            if before is None:
                before = [v.numpy() for v in t.nets.image_projector.weights]
            t.train_step(*batch)
            updated[fused] = [v.numpy() for v in t.nets.image_projector.weights]
            compiled = [u for o in t.optimizers.values() for u in distribute._FUSED_FUNCTIONS.get(o, {}).values()]
            assert len(compiled) == (len(t.optimizers) if fused else 0)
        run.set_precision("mixed_bfloat16")
        assert distribute._FUSED_UPDATES
        run.set_precision("float32")
        assert not distribute._FUSED_UPDATES
    finally:
        run.set_precision("float32")
    variables, update = compiled[0]  # an XLA computation: it has an HLO module
    assert "HloModule" in update.experimental_get_compiler_ir([tf.zeros_like(v) for v in variables])(stage="hlo")
    for a, b, w in zip(updated[False], updated[True], before):
        assert np.abs(a - w).max() > 1e-6  # the step did update
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def test_the_export_of_a_mixed_run_computes_in_float32(data, tmp_path):
    from acmr_tf.task import ACMRTask
    from common import export
    from tools.export import export_run

    ds, _ = data
    with policy("mixed_bfloat16"):
        t = trainers(ds, None)["acmr"]
        task = ACMRTask(t, ds.train, ds.test)
        state = training.RunState(str(tmp_path / "run"), **task.checkpoint_objects())
        task.train_unit(0)
        state.record({"epoch": 0})
        export.write_spec(str(tmp_path / "run"), **task.encoders())
        mixed_embedding = t.nets.image_projector(ds.test.image[:5]).numpy()
    export_run(str(tmp_path / "run"), str(tmp_path / "exported"))
    loaded = tf.saved_model.load(str(tmp_path / "exported"))
    out = loaded.signatures["embed_image"](image=tf.constant(ds.test.image[:5]))["embedding"]
    assert out.dtype == tf.float32
    w = [v.numpy() for v in t.nets.image_projector.weights]
    x = ds.test.image[:5]
    for i in range(0, len(w), 2):  # the float32 forward pass of the trained (float32) weights
        x = np.tanh(x @ w[i] + w[i + 1])
    np.testing.assert_allclose(out.numpy(), x, atol=1e-5)
    assert np.abs(out.numpy() - mixed_embedding).max() > 0  # the training-time bfloat16 pass differs
    encoder = keras.models.load_model(str(tmp_path / "exported" / "image_encoder.keras"))
    assert encoder.dtype_policy.name == "float32"


def test_cpus_without_native_bfloat16_are_warned(monkeypatch):
    """Without AVX512_BF16 oneDNN emulates bfloat16, without AVX-512 TensorFlow's generic kernels run it:
    both slower than float32, a warning (kept for results.json); with it, nothing to say."""
    from common import run

    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: [])
    try:
        monkeypatch.setattr(run, "cpu_isa", lambda: {"avx512f": True, "avx512_bf16": False})
        assert "no AVX512_BF16" in run.set_precision("mixed_bfloat16")[0]
        monkeypatch.setattr(run, "cpu_isa", lambda: {"avx512f": False, "avx512_bf16": False})
        assert "no AVX-512" in run.set_precision("mixed_bfloat16")[0]
        monkeypatch.setattr(run, "cpu_isa", lambda: {"avx512f": True, "avx512_bf16": True})
        assert run.set_precision("mixed_bfloat16") == []
    finally:
        run.set_precision("float32")
