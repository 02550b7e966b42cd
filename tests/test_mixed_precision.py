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


def _kernel_casts(fn, kernel):
    """Cast ops of a traced function whose output has the kernel's shape (its bfloat16 copies and the
    casts of its gradients back)."""
    graph = tf.function(fn).get_concrete_function().graph
    return sum(op.type == "Cast" and op.outputs[0].shape == kernel.shape for op in graph.get_operations())


def test_cast_once_casts_each_weight_once_and_keeps_the_gradient():
    """--precision mixed_bfloat16 shares one bfloat16 copy of each weight per forward block: a kernel
    used three times is cast once (and its summed gradient cast back once) instead of three times
    each way, with the same gradient to bfloat16 precision; float32 runs are untouched."""
    from common import distribute

    x = tf.random.stateless_normal([8, 32], seed=[5, 6])
    with policy("mixed_bfloat16"):
        layer = keras.layers.Dense(32)
        layer.build((None, 32))

    def loss_and_grad():
        with tf.GradientTape() as tape, distribute.cast_once(layer):
            loss = tf.reduce_sum(tf.cast(layer(layer(layer(x))), tf.float32) ** 2)
        return loss, tape.gradient(loss, layer.kernel)

    counts, grads = {}, {}
    try:
        for on in (False, True):
            distribute.share_weight_casts(on)
            counts[on] = _kernel_casts(loss_and_grad, layer.kernel)
            grads[on] = tf.function(loss_and_grad)()[1].numpy()
    finally:
        distribute.share_weight_casts(False)
    assert (counts[False], counts[True]) == (6, 2)
    assert np.abs(grads[True]).max() > 0
    np.testing.assert_allclose(grads[True], grads[False], rtol=0.05, atol=0.05 * np.abs(grads[False]).max())

    with tf.GradientTape() as tape, distribute.cast_once(layer):  # switch off: the plain per-use cast
        loss = tf.reduce_sum(tf.cast(layer(x), tf.float32))
    assert tape.gradient(loss, layer.kernel) is not None


def test_cast_once_refuses_a_block_that_assigns_a_variable():
    from common import distribute

    with policy("mixed_bfloat16"):
        layer = keras.layers.Dense(4)
        layer.build((None, 4))
    distribute.share_weight_casts(True)
    try:
        with pytest.raises(RuntimeError, match="assigned a variable"):
            with distribute.cast_once(layer):
                layer.bias.assign(tf.ones([4]))
    finally:
        distribute.share_weight_casts(False)
    assert float(tf.reduce_max(tf.abs(layer.bias))) == 0.0  # the dropped assignment was reported, not applied


@pytest.mark.parametrize("name", ["acmr", "jfse", "zscrgan"])
def test_shared_weight_casts_train_every_network_like_per_use_casts(data, name):
    """The steps that share casts (JFSE's critics are used five times a step, ZSCRGAN's three) update
    the same variables and log the same losses as the per-use casts, to bfloat16 precision."""
    from common import distribute

    ds, zs = data
    logged, moved = {}, {}
    try:
        for on in (False, True):
            distribute.share_weight_casts(on)
            with policy("mixed_bfloat16"):
                t = trainers(ds, zs)[name]
            before = [v.numpy() for m in networks(t) for v in m.trainable_variables]
            if name == "zscrgan":
                out = {**t.step("critic"), **t.step("generator"), **t.step("csem")}
            else:
                batch = (ds.train.image[:64], ds.train.text[:64], ds.train.labels[:64])
                if name == "jfse":
                    batch = (*batch[:2], ds.class_embedding_rows(batch[2]), batch[2])
                out = t.train_step(*batch)
            logged[on] = {k: float(v) for k, v in out.items() if np.ndim(v) == 0}
            after = [v.numpy() for m in networks(t) for v in m.trainable_variables]
            moved[on] = [np.abs(a - b).max() > 0 for a, b in zip(after, before)]
    finally:
        distribute.share_weight_casts(False)
    # the same variables move (all but the release's untrained heads: ACMR's label classifier, ...)
    assert moved[True] == moved[False] and sum(moved[True]) >= len(moved[True]) - 2, name
    for key, value in logged[False].items():
        assert np.isfinite(logged[True][key]), (name, key)
        assert logged[True][key] == pytest.approx(value, rel=0.05, abs=0.02), (name, key)


def test_the_fused_update_casts_shared_weight_gradients_to_float32_exactly():
    """On one device the shared copy's gradient stays bfloat16 until the fused update, which casts
    it inside its XLA computation: the same update as casting it first (bfloat16 -> float32 is exact)."""
    from common import distribute

    x = tf.random.stateless_normal([8, 16], seed=[7, 8])
    with policy("mixed_bfloat16"):
        layers = [keras.layers.Dense(16, kernel_initializer=keras.initializers.GlorotUniform(seed=3))
                  for _ in range(2)]
        for layer in layers:
            layer.build((None, 16))
    start = [v.numpy() for v in layers[0].trainable_variables]
    np.testing.assert_array_equal(start[0], layers[1].kernel.numpy())
    weights = {}
    distribute.share_weight_casts(True)
    distribute.fuse_updates(True)
    try:
        for cast_first, layer in zip((False, True), layers):
            optimizer = keras.optimizers.Adam(0.01)
            with tf.GradientTape() as tape, distribute.cast_once(layer):
                loss = tf.reduce_sum(tf.cast(layer(layer(x)), tf.float32) ** 2)
            grads = tape.gradient(loss, layer.trainable_variables)
            assert [g.dtype for g in grads] == [tf.bfloat16] * 2
            if cast_first:
                grads = [tf.cast(g, tf.float32) for g in grads]
            distribute.apply_gradients(optimizer, zip(grads, layer.trainable_variables))
            weights[cast_first] = [v.numpy() for v in layer.trainable_variables]
    finally:
        distribute.share_weight_casts(False)
        distribute.fuse_updates(False)
    assert all(v.dtype == np.float32 for v in weights[False])
    assert all(np.abs(a - b).min() > 0 for a, b in zip(weights[False], start))  # every weight moved
    for a, b in zip(weights[False], weights[True]):
        np.testing.assert_array_equal(a, b)
