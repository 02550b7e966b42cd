"""Which way of feeding a training step is fastest on this machine (2 cores in CI)?

    python -m tools.bench_pipeline

Compares, on a Wikipedia-like shape (2,173 pairs, 4096-d images, 5000-d texts, batch 64,
an ACMR-sized two-tower MLP step with Adam):
  tfdata          `common.pipelines.paired_batches` (no prefetch) feeding a compiled step,
  tfdata_prefetch the same with `prefetch(AUTOTUNE)` (a background thread),
  in_graph        one compiled function per epoch that shuffles and gathers in the graph,
  floor           the compiled step applied repeatedly to one cached batch (compute floor).
Medians of several epochs; the result decides `paired_batches`' default (`prefetch=0`).
"""

import os
import time

import numpy as np
from absl import flags

from common import io, run

run.quiet()
run.import_tensorflow()  # TensorFlow's load-time banners held back: the benchmark prints its table only
import tensorflow as tf  # noqa: E402

flags.DEFINE_integer("pairs", 2173, "Training pairs.")
flags.DEFINE_integer("image_dim", 4096, "Image feature dim.")
flags.DEFINE_integer("text_dim", 5000, "Text feature dim.")
flags.DEFINE_integer("batch_size", 64, "Batch size.")
flags.DEFINE_integer("epochs", 3, "Timed epochs per variant and round (after one warm-up epoch).")
flags.DEFINE_integer("rounds", 4, "Rounds; the variant order rotates each round to cancel drift.")
flags.DEFINE_string("json_out", None, "Also write the results here.")
flags.DEFINE_bool("overwrite", False, "Replace an existing --json_out file.")
FLAGS = flags.FLAGS


def build():
    import keras

    keras.utils.set_random_seed(0)
    img = keras.Sequential([keras.Input((FLAGS.image_dim,)), keras.layers.Dense(512, "tanh"),
                            keras.layers.Dense(100, "tanh"), keras.layers.Dense(40, "tanh")])
    txt = keras.Sequential([keras.Input((FLAGS.text_dim,)), keras.layers.Dense(40, "tanh"),
                            keras.layers.Dense(100, "tanh"), keras.layers.Dense(40, "tanh")])
    opt = keras.optimizers.Adam(1e-4, beta_1=0.5, epsilon=1e-8)
    variables = img.trainable_variables + txt.trainable_variables
    opt.build(variables)

    def step(image, text):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.square(img(image) - txt(text)))
        opt.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    return step


def main(argv):
    from common import pipelines
    from common.dataset import Split

    run.no_arguments(argv)
    run.require_positive("pairs", "image_dim", "text_dim", "batch_size", "epochs", "rounds")
    if FLAGS.json_out:
        io.check_output_file(FLAGS.json_out, FLAGS.overwrite, flag="--json_out")

    rng = np.random.default_rng(0)
    split = Split(rng.random((FLAGS.pairs, FLAGS.image_dim), np.float32),
                  rng.random((FLAGS.pairs, FLAGS.text_dim), np.float32),
                  rng.integers(0, 10, FLAGS.pairs))
    steps_per_epoch = -(-FLAGS.pairs // FLAGS.batch_size)
    variants = {}

    for name, prefetch in (("tfdata", 0), ("tfdata_prefetch", tf.data.AUTOTUNE)):
        step = tf.function(build())
        ds = pipelines.paired_batches(split, FLAGS.batch_size, shuffle=True, seed=0, prefetch=prefetch)
        it = iter(ds)

        def run_epoch(step=step, it=it):
            for _ in range(steps_per_epoch):
                b = next(it)
                loss = step(b["image"], b["text"])
            loss.numpy()

        variants[name] = run_epoch

    step_fn = build()
    tensors = pipelines.split_tensors(split)
    epoch_var = tf.Variable(0, dtype=tf.int64)

    @tf.function
    def in_graph_epoch():
        idx = tf.random.experimental.stateless_shuffle(tf.range(FLAGS.pairs, dtype=tf.int64),
                                                       seed=tf.stack([tf.constant(0, tf.int64), epoch_var]))
        loss = tf.constant(0.0)
        for s in tf.range(steps_per_epoch):
            rows = idx[s * FLAGS.batch_size:(s + 1) * FLAGS.batch_size]
            loss = step_fn(tf.gather(tensors["image"], rows), tf.gather(tensors["text"], rows))
        epoch_var.assign_add(1)
        return loss

    variants["in_graph"] = lambda: in_graph_epoch().numpy()

    floor_step = tf.function(build())
    batch = next(iter(pipelines.paired_batches(split, FLAGS.batch_size)))

    def floor_epoch():
        for _ in range(steps_per_epoch):
            loss = floor_step(batch["image"], batch["text"])
        loss.numpy()

    variants["floor"] = floor_epoch
    names = list(variants)
    times = {n: [] for n in names}
    for n in names:
        variants[n]()  # warm-up: tracing
    for r in range(FLAGS.rounds):
        for n in names[r % len(names):] + names[:r % len(names)]:
            for _ in range(FLAGS.epochs):
                t = time.perf_counter()
                variants[n]()
                times[n].append(time.perf_counter() - t)
    results = {n: float(np.median(times[n])) for n in names}
    print(f"{os.cpu_count()} CPUs, {FLAGS.pairs} pairs, batch {FLAGS.batch_size}, {steps_per_epoch} steps/epoch")
    for name, sec in results.items():
        print(f"{name:>16}: {sec:.3f} s/epoch  {FLAGS.pairs / sec:8.0f} pairs/s  "
              f"{sec / results['floor']:.3f} x floor")
    if FLAGS.json_out:
        io.write_json(FLAGS.json_out, {"cpus": os.cpu_count(), "seconds_per_epoch": results})


if __name__ == "__main__":
    run.run_main(main)
