"""Gradient reversal, checkpoint resume with optimizer state, summaries, atomic writes."""

import json
import errno
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from common import io, pipelines, training
from common.layers import GradientReversal, gradient_reversal, grl_schedule
from tests.common import fixtures


@pytest.mark.parametrize("scale", [0.0, 0.46212, 1.0])
def test_gradient_reversal_identity_forward_negated_backward(scale):
    x = tf.constant([[1.0, -2.0], [3.0, 0.5]])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = gradient_reversal(x, tf.constant(scale))
        loss = tf.reduce_sum(y * tf.constant([[1.0, 2.0], [3.0, 4.0]]))
    np.testing.assert_array_equal(y.numpy(), x.numpy())
    np.testing.assert_allclose(tape.gradient(loss, x).numpy(), -scale * np.array([[1, 2], [3, 4]]), atol=1e-7)


def test_grl_scale_changes_without_retracing():
    layer = GradientReversal()
    scale = tf.Variable(0.0)
    x = tf.ones((2, 3))

    @tf.function
    def grad():
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(layer(x, scale))
        return tape.gradient(loss, x)

    for value in (0.0, 0.5, 1.0):
        scale.assign(value)
        np.testing.assert_allclose(grad().numpy(), -value)
    assert grad.experimental_get_tracing_count() == 1
    assert float(grl_schedule(0, 200)) == 0.0
    np.testing.assert_allclose([float(grl_schedule(e, 200)) for e in (1, 20, 50, 100, 199)],
                               [0.02499, 0.46212, 0.84828, 0.98661, 0.99990], atol=1e-5)


def make_model(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    return model, keras.optimizers.Adam(1e-2, beta_1=0.5, epsilon=1e-8)


def train_steps(model, opt, steps, start=0):
    for s in range(start, start + steps):
        x = tf.constant(np.random.default_rng(s).normal(size=(4, 3)), tf.float32)
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x)))
        opt.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))


def test_checkpoint_resume_restores_optimizer_moments(tmp_path):
    model, opt = make_model()
    ckpt = training.Checkpointer(str(tmp_path), model=model, optimizer=(opt, model.trainable_variables))
    train_steps(model, opt, 3)
    ckpt.step.assign(3)
    ckpt.save()
    train_steps(model, opt, 2, start=3)
    expected = [v.numpy() for v in model.trainable_variables]

    model2, opt2 = make_model(seed=99)  # different init: everything must come from the checkpoint
    ckpt2 = training.Checkpointer(str(tmp_path), model=model2, optimizer=(opt2, model2.trainable_variables))
    assert ckpt2.restore_or_initialize() and int(ckpt2.step.numpy()) == 3
    train_steps(model2, opt2, 2, start=3)
    for a, b in zip(expected, model2.trainable_variables):
        np.testing.assert_allclose(b.numpy(), a, rtol=1e-6)


def test_fresh_directory_initializes(tmp_path):
    model, opt = make_model()
    assert not training.Checkpointer(str(tmp_path / "new"), model=model).restore_or_initialize()


def test_seeded_runs_are_identical():
    outs = []
    for _ in range(2):
        training.set_seed(7)
        outs.append(keras.layers.Dense(3)(tf.ones((1, 4))).numpy())
    np.testing.assert_array_equal(outs[0], outs[1])


def test_atomic_json_never_corrupts_existing_file(tmp_path):
    path = str(tmp_path / "results.json")
    io.write_json(path, {"a": 1})
    with pytest.raises(TypeError):
        io.write_json(path, {"a": object()})
    assert json.load(open(path)) == {"a": 1}
    assert os.listdir(tmp_path) == ["results.json"]  # no temporary left behind


def test_pr_curve_data_and_summary(tmp_path):
    rel = np.array([True, False, True, False])
    scores = np.array([0.9, 0.8, 0.3, 0.1])
    data = training.pr_curve_data(rel, scores, num_thresholds=11)
    # threshold 0.5: TP 1 (0.9), FP 1 (0.8), TN 1, FN 1
    np.testing.assert_array_equal(data[:4, 5], [1, 1, 1, 1])
    assert data[4, 5] == 0.5 and data[5, 0] == 1.0
    writer = training.SummaryWriter(str(tmp_path))
    writer.scalars({"loss": 1.0}, 0)
    writer.pr_curve("i2t_pr", rel, scores, 0)
    writer.flush()
    assert any(f.startswith("events.out") for f in os.listdir(tmp_path))


def _histogram_events(logdir):
    out = {}
    for path in tf.io.gfile.glob(os.path.join(str(logdir), "*tfevents*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for v in event.summary.value:
                out[v.tag] = (v.metadata.plugin_data.plugin_name, tf.make_ndarray(v.tensor))
    return out


def test_weight_histograms_match_tensorboards_own_in_linear_memory(tmp_path):
    """The histograms are bucketed without tf.summary.histogram's n x 30 one-hot (2 GB for a
    2048 x 4096 kernel), into exactly the buckets it writes."""
    got = training.histogram_buckets(np.array([0.0, 1.0, 1.0, 3.0, np.nan]), count=3)
    np.testing.assert_array_equal(got, [[0, 1, 1], [1, 2, 2], [2, 3, 1]])  # edges 0,1,2,3; 1.0 opens bucket 2
    np.testing.assert_array_equal(training.histogram_buckets(np.full(4, 2.5), count=3),
                                  [[2.5, 2.5, 0]] * 2 + [[2.5, 2.5, 4]])  # one value: all in the last bucket
    rng = np.random.default_rng(0)
    values = {"w": rng.normal(size=(70, 30)).astype(np.float32), "flat": np.full(5, 0.5, np.float32),
              "steps": rng.integers(0, 4, 500).astype(np.float32)}
    ours, theirs = training.SummaryWriter(str(tmp_path / "ours")), tf.summary.create_file_writer(str(tmp_path / "tf"))
    ours.histograms({k: tf.Variable(v) for k, v in values.items()}, 3)
    ours.flush()
    with theirs.as_default(step=3):
        for k, v in values.items():
            tf.summary.histogram(k, v)
    theirs.flush()
    a, b = _histogram_events(tmp_path / "ours"), _histogram_events(tmp_path / "tf")
    assert sorted(a) == sorted(values) and all(a[k][0] == b[k][0] == "histograms" for k in values)
    for k in values:
        np.testing.assert_array_equal(a[k][1], b[k][1])
    assert a["w"][1][:, 2].sum() == 70 * 30


def test_checkpointer_saves_data_position_with_the_model(tmp_path):
    from common import pipelines
    from common.dataset import Split

    split = Split(np.arange(20, dtype=np.float32)[:, None], np.zeros((20, 1), np.float32), np.arange(20) % 2)
    model, opt = make_model()
    it = iter(pipelines.paired_batches(split, 6, shuffle=True, seed=3))
    ckpt = training.Checkpointer(str(tmp_path), model=model, iterator=it)
    for _ in range(5):
        next(it)
    ckpt.step.assign(5)
    ckpt.save()
    expected = next(it)["index"].numpy()
    it2 = iter(pipelines.paired_batches(split, 6, shuffle=True, seed=3))
    ckpt2 = training.Checkpointer(str(tmp_path), model=make_model(1)[0], iterator=it2)
    assert ckpt2.restore_or_initialize() and int(ckpt2.step.numpy()) == 5
    np.testing.assert_array_equal(next(it2)["index"].numpy(), expected)


@pytest.mark.parametrize("shuffle,drop_remainder,per_call,jit", [(True, False, 2, False), (False, True, 0, False),
                                                                  (True, True, 1, False), (True, False, 0, True)])
def test_epoch_runner_feeds_the_pipeline_batches(shuffle, drop_remainder, per_call, jit):
    """The in-graph epoch gives the batches `pipelines.epoch_indices` gives (order, tail, size)."""
    x = tf.constant(np.arange(10, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32))

    def step(a):
        return {"first": a[0, 0], "size": tf.shape(a)[0], "sum": tf.reduce_sum(a[:, 0])}

    runner = training.EpochRunner(step, {"x": x}, ["x"], ["first", "size", "sum"], 4, shuffle, 3,
                                  drop_remainder, steps_per_execution=per_call, jit_compile=jit)
    blocks = []
    for epoch in (0, 1, 5):
        out = runner.run_epoch(epoch, on_block=lambda first, v: blocks.append((first, len(v["sum"]))))
        ref = [b.numpy() for b in pipelines.epoch_indices(10, 4, shuffle, 3, drop_remainder)
               .skip(runner.steps * epoch).take(runner.steps)]
        np.testing.assert_array_equal(out["first"], [b[0] for b in ref])
        np.testing.assert_array_equal(out["sum"], [b.sum() for b in ref])
        np.testing.assert_array_equal(out["size"], [len(b) for b in ref])
    assert runner.steps == (2 if drop_remainder else 3)
    calls = -(-runner.full_steps // (per_call or runner.full_steps)) + (runner.steps - runner.full_steps)
    assert len(blocks) == 3 * calls and sum(n for _, n in blocks) == 3 * runner.steps
    assert runner._block.experimental_get_tracing_count() == 1  # one trace for every epoch and block
    assert runner._tail.experimental_get_tracing_count() == (0 if drop_remainder else 1)


def test_epoch_runner_xla_full_batches_plain_tail():
    """With XLA the loop over full batches is compiled (once per block length) and the partial
    batch runs the plain step; an explicit `tail_step` takes the tail."""
    x = tf.constant(np.arange(10, dtype=np.float32)[:, None])

    def step(a):
        return {"sum": tf.reduce_sum(a)}

    runner = training.EpochRunner(step, {"x": x}, ["x"], ["sum"], 4, shuffle=True, seed=1, jit_compile=True)
    plain = training.EpochRunner(step, {"x": x}, ["x"], ["sum"], 4, shuffle=True, seed=1)
    for epoch in (0, 3):
        np.testing.assert_allclose(runner.run_epoch(epoch)["sum"], plain.run_epoch(epoch)["sum"])

    def no_xla_kernel(a):  # string ops have no XLA kernel: fails only where XLA compiles
        return {"sum": tf.cast(tf.strings.length(tf.strings.as_string(tf.reduce_sum(a))), tf.float32)}

    compiled = training.EpochRunner(no_xla_kernel, {"x": x}, ["x"], ["sum"], 4, jit_compile=True)
    with pytest.raises(tf.errors.InvalidArgumentError):
        compiled.run_block(0, 0, 2)
    assert compiled._tail(compiled.order(0))["sum"].numpy().tolist() == [len("17.000000")]

    marked = training.EpochRunner(step, {"x": x}, ["x"], ["sum"], 4, tail_step=lambda a: {"sum": -tf.reduce_sum(a)})
    np.testing.assert_allclose(marked.run_epoch(0)["sum"], [6, 22, -17])


def test_a_resume_drops_the_stopped_sessions_later_summaries(tmp_path):
    """Summaries of the epochs after the last checkpoint are trained and logged again on a resume:
    the first session's copies go, so TensorBoard draws each step once. A partial last record (a
    process killed mid-write) is dropped with them; earlier steps and the HParams session stay."""
    from tensorboard.plugins.hparams import api as hp

    logdir = tmp_path / "tb"
    first = training.SummaryWriter(str(logdir))
    with first.writer.as_default():
        hp.hparams({"lr": 0.1}, trial_id="run")
    for step in range(6):
        first.scalars({"loss/a": step, "test/map": step / 10}, step)
    first.histograms({"w": tf.ones(3)}, 5)
    first.writer.close()
    (path,) = tf.io.gfile.glob(os.path.join(str(logdir), "*tfevents*"))
    with open(path, "ab") as f:
        f.write(b"\x20\x00\x00\x00\x00\x00")  # a record cut off after 6 bytes
    mode = os.stat(path).st_mode
    assert training.drop_events_from(str(logdir), 3) == 3 * 2 + 1
    left = fixtures.summary_steps(logdir)
    assert sorted(s for t, s in left if t == "loss/a") == [0, 1, 2]
    assert not [t for t, s in left if t == "w"] and any(t.startswith("_hparams_") for t, _ in left)
    assert os.stat(path).st_mode == mode
    second = training.SummaryWriter(str(logdir))  # the resumed session logs steps 3.. again
    for step in range(3, 6):
        second.scalars({"loss/a": step}, step)
    second.flush()
    steps = [s for t, s in fixtures.summary_steps(logdir) if t == "loss/a"]
    assert sorted(steps) == list(range(6))  # each step once
    before = open(path, "rb").read()
    assert training.drop_events_from(str(logdir), 6) == 0 and open(path, "rb").read() == before  # nothing to drop


def test_an_output_folder_is_replaced_whole_or_not_at_all(tmp_path):
    out = tmp_path / "plots"
    out.mkdir()
    (out / "pr_curves.png").write_text("the previous model's curve")
    with pytest.raises(RuntimeError):
        with io.replacing_dir(str(out)) as tmp:
            (tmp_path / "seen").write_text(tmp)
            open(os.path.join(tmp, "pr_curves.json"), "w").close()
            raise RuntimeError("the report failed half way")
    # no temporary folder left
    assert os.listdir(out) == ["pr_curves.png"] and sorted(os.listdir(tmp_path)) == ["plots", "seen"]
    with pytest.raises(OSError) as full:  # a failure about a file inside names the output, not the temporary folder
        with io.replacing_dir(str(out)) as tmp:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.path.join(tmp, "variables", "variables"))
    assert (full.value.errno, full.value.filename) == (errno.ENOSPC, str(out))
    assert full.value.strerror == "No space left on device while writing it; nothing was changed"
    assert os.listdir(out) == ["pr_curves.png"] and sorted(os.listdir(tmp_path)) == ["plots", "seen"]
    with io.replacing_dir(str(out)) as tmp:
        open(os.path.join(tmp, "pr_curves.json"), "w").close()
    assert os.listdir(out) == ["pr_curves.json"]  # nothing of the previous folder mixed in
    assert oct(os.stat(out).st_mode & 0o777) == oct(0o777 & ~io.UMASK)
    real_replace, calls = os.replace, []

    def failing_second(src, dst):  # the new folder cannot be moved in after the previous one was moved aside
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(errno.EIO, "I/O error", str(dst))
        real_replace(src, dst)

    with pytest.MonkeyPatch.context() as mp, pytest.raises(OSError):
        mp.setattr(io.os, "replace", failing_second)
        with io.replacing_dir(str(out)) as tmp:
            open(os.path.join(tmp, "new.json"), "w").close()
    assert os.listdir(out) == ["pr_curves.json"] and sorted(os.listdir(tmp_path)) == ["plots", "seen"]
