"""End-to-end hashing's training step (ResNet-18 + BERT-base + hash heads) in float32 and mixed_bfloat16.

    python -m tools.bench_e2e                       # both precisions, 3 timed steps each
    python -m tools.bench_e2e --steps 5 --text_len 64 --output e2e.json

`tools.benchmark` times the feature-mode methods on features; end to end the backbones are the cost,
and they are where bfloat16 has the most matmul and convolution work to speed up. Each precision
runs in its own process (the policy is global; peak RSS is that process's) with the entry point's
step (`CMHashTrainer.train_step`, the precision set as `--precision` sets it), untrained backbones at
the release's sizes (nothing is downloaded: weights do not change the time), and one fixed batch:
`--batch_size` images at `--image_size` and texts padded to `--text_len` tokens (a run pads to its
data's longest text, at most `--max_len` 128). The IAPR epoch estimate is 10,000 pairs at that
batch size; image decoding and resizing (tf.data, overlapped by prefetch) are not included.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time

import numpy as np
from absl import flags

FLAGS = flags.FLAGS
IAPR_TRAIN_PAIRS = 10_000  # the release's training pairs


def define_flags():
    flags.DEFINE_integer("steps", 3, "Timed steps per precision (after one warm-up step that traces).", lower_bound=1)
    flags.DEFINE_integer("batch_size", 32, "Pairs per step (release 32).", lower_bound=2)
    flags.DEFINE_integer("image_size", 224, "Image side (release 224).", lower_bound=32)
    flags.DEFINE_integer("text_len", 128, "Tokens per text, [CLS] and [SEP] included (at most --max_len 128).",
                         lower_bound=3)
    flags.DEFINE_integer("bits", 32, "Code length (release 32).", lower_bound=1)
    flags.DEFINE_list("precisions", ["float32", "mixed_bfloat16"], "Precisions to time.")
    flags.DEFINE_string("output", None, "Also write the records as JSON here (a new file, or --overwrite).")
    flags.DEFINE_bool("overwrite", False, "Replace an existing --output.")
    flags.DEFINE_string("case_precision", None, "Internal: time this precision in this process and print its JSON.")


def run_case(precision: str) -> dict:
    """One precision: build the release-sized networks under its policy and time the step."""
    from common import run, training

    run.import_tensorflow()
    run.set_precision(precision)
    training.set_seed(0)
    import tensorflow as tf

    from cmhash_tf import e2e
    from cmhash_tf.config import CMHashConfig
    from cmhash_tf.model import CMHashNetworks
    from cmhash_tf.task import CMHashTrainer

    image_bb = e2e.build_backbone("image", None, allow_random_init=True)
    text_bb = e2e.build_backbone("text", None, allow_random_init=True)
    nets = CMHashNetworks(None, None, image_model=e2e.ImageNet(image_bb, FLAGS.bits, name="image_net"),
                          text_model=e2e.TextNet(text_bb, FLAGS.bits, name="text_net"))
    rng = np.random.default_rng(0)
    n, length = FLAGS.batch_size, FLAGS.text_len
    raw = rng.integers(0, 256, (n, FLAGS.image_size, FLAGS.image_size, 3)).astype(np.float32)
    image = e2e.preprocess_images(tf.constant(raw), training=True, size=FLAGS.image_size, seed=tf.constant([0, 0],
                                                                                                          tf.int64))
    text = {"token_ids": tf.constant(rng.integers(1000, 30000, (n, length)), tf.int32),
            "padding_mask": tf.ones((n, length), tf.int32)}
    labels = (rng.random((n, 20)) < 0.15).astype(np.float32)
    labels[np.arange(n), np.arange(n) % 20] = 1.0  # overlapping labels: the batch yields triplets
    labels = tf.constant(labels)
    nets.image_head(image[:2])
    nets.text_head({k: v[:2] for k, v in text.items()})
    trainer = CMHashTrainer(CMHashConfig(bits=FLAGS.bits, lr=1e-5, epochs=1), 0, 0, nets=nets)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    t0 = time.perf_counter()
    out = trainer.train_step(image, text, labels)
    warm = float(out["loss"])  # the warm-up: tracing and the first step
    first = time.perf_counter() - t0
    times = []
    for _ in range(FLAGS.steps):
        t0 = time.perf_counter()
        out = trainer.train_step(image, text, labels)
        float(out["loss"])
        times.append(time.perf_counter() - t0)
    step = float(np.median(times))
    steps_per_epoch = -(-IAPR_TRAIN_PAIRS // n)
    return {"precision": precision, "batch_size": n, "image_size": FLAGS.image_size, "text_len": length,
            "bits": FLAGS.bits, "timed_steps": FLAGS.steps, "seconds_per_step": step,
            "step_times": [round(t, 4) for t in times], "first_step_seconds": first,
            "pairs_per_second": n / step, "iapr_epoch_minutes": step * steps_per_epoch / 60.0,
            "loss_finite": bool(np.isfinite(warm) and np.isfinite(float(out["loss"]))),
            "applied": float(out["applied"]), "rss_before_step_mib": before,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}


def _child(precision: str) -> dict:
    from tools.benchmark import child_record

    argv = [sys.executable, "-m", "tools.bench_e2e", f"--case_precision={precision}", f"--steps={FLAGS.steps}",
            f"--batch_size={FLAGS.batch_size}", f"--image_size={FLAGS.image_size}", f"--text_len={FLAGS.text_len}",
            f"--bits={FLAGS.bits}"]
    return child_record(argv, {"precision": precision})


def markdown(records: list) -> str:
    rows = ["| precision | s/step | pairs/s | IAPR epoch (min) | first step s | peak RSS MiB | vs float32 |",
            "|---" * 7 + "|"]
    f32 = next((r["seconds_per_step"] for r in records if r.get("precision") == "float32" and "error" not in r), None)
    for r in records:
        if "error" in r:
            rows.append(f"| {r['precision']} | error: {r['error']} |")
            continue
        ratio = f"{r['seconds_per_step'] / f32:.2f}x" if f32 else "n/a"
        rows.append(f"| {r['precision']} | {r['seconds_per_step']:.2f} | {r['pairs_per_second']:.1f} | "
                    f"{r['iapr_epoch_minutes']:.1f} | {r['first_step_seconds']:.1f} | {r['peak_rss_mib']:,.0f} | "
                    f"{ratio} |")
    return "\n".join(rows)


def main(argv):
    from common import io, run
    from common.errors import ConfigError

    run.no_arguments(argv)
    if FLAGS.case_precision:
        print(json.dumps(run_case(FLAGS.case_precision)))
        return
    unknown = sorted(set(FLAGS.precisions) - {"float32", "mixed_bfloat16"})
    if unknown or not FLAGS.precisions:
        raise ConfigError(f"--precisions: one or both of float32, mixed_bfloat16 (got {','.join(FLAGS.precisions)})")
    if FLAGS.text_len > 128:
        raise ConfigError(f"--text_len {FLAGS.text_len}: a run's texts are cut at --max_len (128 by default)")
    if FLAGS.output:
        io.check_output_file(FLAGS.output, FLAGS.overwrite, flag="--output")
    run.import_tensorflow()  # its load-time banners held back
    from cmhash_tf import e2e

    e2e.keras_hub()  # the optional extra, or one line saying how to install it
    print(f"end-to-end step, ResNet-18 {FLAGS.image_size}x{FLAGS.image_size} + BERT-base {FLAGS.text_len} tokens, "
          f"batch {FLAGS.batch_size}, {FLAGS.bits} bits; {FLAGS.steps} timed steps per precision, each in its own "
          "process", flush=True)
    records = []
    for precision in FLAGS.precisions:
        records.append(_child(precision))
        r = records[-1]
        print(f"{precision}: " + (f"error: {r['error']}" if "error" in r else
                                  f"{r['seconds_per_step']:.2f} s/step"), flush=True)
    records = [dict(r, isa=run.cpu_isa(), cpus=os.cpu_count(), measured=time.strftime("%Y-%m-%d")) for r in records]
    print(markdown(records))
    if FLAGS.output:
        io.write_json(FLAGS.output, {"cases": records})
        print(f"written to {FLAGS.output}")
    if any("error" in r for r in records):
        raise ConfigError("a precision failed to run (its error is in the table)")


def cli():
    from common import run

    define_flags()
    run.run_main(main)


if __name__ == "__main__":
    cli()
