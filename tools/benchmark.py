"""Training-loop speed of every method against its compute floor, evaluation time, peak memory.

    python -m tools.benchmark                          # every method, both sizes -> docs/benchmarks.json
    python -m tools.benchmark --methods acmr_simple --sizes wiki --steps 20

Each (method, size) runs in its own process (peak RSS is that process's). Synthetic features
of the real shapes (`common.synthetic`): wiki = 2,170 train / 690 test pairs, 4096-d images,
5000-d (ACMR, cmhash) or 300-d (JFSE, ZSCRGAN) texts; xmn = 32,000 / 4,000 pairs, 4096 / 300.
Per variant, `--steps` steps are timed (median of `--repeats`, after a warm-up that traces)
and scaled to an epoch:
  loop      the entry point's loop: its input pipeline, one compiled step per batch
  floor     the same step applied `--steps` times to one cached batch inside one tf.function
  epoch_fn  in-graph shuffle + gather and the step, a whole block of steps in one tf.function
  eager     the step without tf.function (fewer steps)
  xla       the loop with the step compiled by XLA (`jit_compile=True`)
ZSCRGAN's unit is its E-step round (n_critic critic steps + 1 generator step); its batches come
from the release's class-block sampler (Python), so it has no in-graph epoch variant.
`--gallery_sizes` adds mAP@all over a large gallery (streamed in query chunks).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np
from absl import app, flags

flags.DEFINE_list("methods", ["acmr_simple", "acmr_triplet", "jfse", "zscrgan", "cmhash"], "Methods.")
flags.DEFINE_list("sizes", ["wiki", "xmn"], "wiki (2,170 pairs), xmn (32,000 pairs), tiny (tests).")
flags.DEFINE_list("variants", ["loop", "floor", "epoch_fn", "eager", "xla"], "Variants to time.")
flags.DEFINE_integer("steps", 30, "Timed steps per repeat (scaled to an epoch).")
flags.DEFINE_integer("repeats", 3, "Repeats per variant (median).")
flags.DEFINE_list("gallery_sizes", ["100000", "1000000"], "Gallery sizes of the streamed mAP@all case ('' for none).")
flags.DEFINE_integer("queries", 200, "Queries of the streamed mAP@all case.")
flags.DEFINE_string("output", "docs/benchmarks.json", "JSON results (the markdown table is printed).")
flags.DEFINE_string("case", None, "Internal: run one case in this process and print its JSON.")
FLAGS = flags.FLAGS

SIZES = {"wiki": dict(num_classes=10, train_per_class=217, test_per_class=69),
         "xmn": dict(num_classes=200, train_per_class=160, test_per_class=20),
         "tiny": dict(num_classes=4, train_per_class=40, test_per_class=10)}  # for the test suite
TEXT_DIM = {"acmr_simple": 5000, "acmr_triplet": 5000, "cmhash": 5000, "jfse": 300, "zscrgan": 300}


def _data(method, size):
    from common.synthetic import make_synthetic

    dims = dict(image_dim=4096, text_dim=TEXT_DIM[method] if size == "wiki" else 300, emb_dim=300)
    if size == "tiny":
        dims = dict(image_dim=32, text_dim=16, emb_dim=8)
    return make_synthetic("small", seed=0, val_per_class=1, num_unseen=SIZES[size]["num_classes"] // 2,
                          **dims, **SIZES[size])


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class Case:
    """What the harness needs of one method: its step, batches and evaluation."""

    def __init__(self, method, size):
        import tensorflow as tf

        from common import metrics, pipelines

        self.tf, self.method = tf, method
        ds = _data(method, size)
        self.train, self.test = ds.train, ds.test
        self.eval_kind = "cosine i2t + t2i mAP@all on the test split"
        if method.startswith("acmr"):
            from acmr_tf.config import ACMRConfig
            from acmr_tf.train import ACMRTrainer

            t = ACMRTrainer(ACMRConfig(variant=method.split("_")[1]), ds.image_dim, ds.text_dim, ds.num_classes)
            t.grl_scale.assign(0.5)
            self.batch_size, self.keys = t.cfg.batch_size, ("image", "text", "label")
            self.iterator = t.make_iterator(self.train)
            self.tensors = pipelines.split_tensors(self.train)
        elif method == "jfse":
            from jfse_tf.config import JFSEConfig
            from jfse_tf.train import JFSETrainer

            t = JFSETrainer(JFSEConfig().for_method(), ds.image_dim, ds.text_dim, ds.class_embeddings.shape[1],
                            ds.num_classes)
            self.batch_size, self.keys = t.cfg.batch_size, ("image", "text", "class_emb", "label")
            rows = ds.class_embedding_rows(self.train.labels)
            self.iterator = t.make_iterator(self.train, rows)
            self.tensors = dict(pipelines.split_tensors(self.train), class_emb=tf.constant(rows, tf.float32))
        elif method == "cmhash":
            from cmhash_tf.train import CMHashConfig, CMHashTrainer, feature_batches, multi_hot

            t = CMHashTrainer(CMHashConfig(), ds.image_dim, ds.text_dim)
            self.train = self.train.__class__(self.train.image, self.train.text, multi_hot(self.train.labels, ds.num_classes))
            self.batch_size, self.keys = t.cfg.batch_size, ("image", "text", "label")
            self.iterator = iter(feature_batches(self.train, t.cfg))
            self.tensors = pipelines.split_tensors(self.train)
            self.eval_kind = "Hamming i2t + t2i mAP, test queries against the train split"
        else:
            from zscrgan_tf import data as zdata
            from zscrgan_tf.train import ZSCRGANConfig, ZSCRGANTrainer

            t = ZSCRGANTrainer(ZSCRGANConfig(), zdata.from_dataset(ds))
            self.batch_size, self.keys = t.cfg.batch_size * (t.cfg.n_critic + 1), None
            self.eval_kind = "P@50 + t2i mAP@all, unseen text queries against unseen images"
        self.trainer, self.metrics = t, metrics
        self.steps_per_epoch = -(-len(self.train) // self.batch_size)
        self.pairs_per_step = self.batch_size

    # ------------------------------------------------------------------ steps
    def _args(self, b):
        return [b[k] for k in self.keys]

    def run_loop(self, steps, step_fn=None):
        """The entry point's loop: next batch from its pipeline, one compiled call."""
        t = self.trainer
        if self.method == "zscrgan":
            out = None
            for _ in range(steps):
                for _ in range(t.cfg.n_critic):
                    out = t.step("critic")["d_loss"]
                out = t.step("generator")["g_loss"]
            return float(out)
        fn = step_fn or t.train_step
        for _ in range(steps):
            out = fn(*self._args(next(self.iterator)))
        return float(next(iter(out.values())))

    def floor_fn(self, steps):
        """The step applied `steps` times to one cached batch inside one tf.function."""
        tf, t = self.tf, self.trainer
        if self.method == "zscrgan":
            rows = [tf.constant(x) for x in t.sampler.next_batch()[:3]]

            @tf.function
            def run():
                out = tf.constant(0.0)
                for _ in tf.range(steps):
                    for _ in range(t.cfg.n_critic):
                        t._critic_step(*rows)
                    out = t._generator_step(*rows)["g_loss"]
                return out
        else:
            args = self._args(next(self.iterator))

            @tf.function
            def run():
                out = tf.constant(0.0)
                for _ in tf.range(steps):
                    out = next(iter(t._train_step(*args).values()))
                return out
        return lambda: float(run())

    def epoch_fn(self, steps):
        """In-graph shuffle and gather of `steps` batches and the step, one tf.function."""
        tf, t, n, b = self.tf, self.trainer, len(self.train), self.batch_size
        seed = tf.Variable(0, dtype=tf.int64)

        @tf.function
        def run():
            idx = tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int64),
                                                           seed=tf.stack([tf.constant(0, tf.int64), seed]))
            out = tf.constant(0.0)
            for s in tf.range(steps):
                start = (s * b) % (n - b)
                rows = idx[start:start + b]
                out = next(iter(t._train_step(*[tf.gather(self.tensors[k], rows) for k in self.keys]).values()))
            seed.assign_add(1)
            return out
        return lambda: float(run())

    def evaluate(self):
        t = self.trainer
        if self.method == "zscrgan":
            return t.evaluate(t.data.test)["p50"]
        if self.method == "cmhash":
            from common.dataset import Split
            from cmhash_tf.train import multi_hot

            q = Split(self.test.image, self.test.text, multi_hot(self.test.labels, self.train.labels.shape[1]))
            return t.evaluate(q, self.train)["i2t_map"]
        e_v, e_t = t.embed(self.test.image, self.test.text)
        return self.metrics.cross_modal_map_all(e_v, e_t, self.test.labels, self.test.labels)["i2t_map_all"]


def _time(fn, repeats):
    fn()  # warm-up: tracing
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def run_case(method: str, size: str) -> dict:
    import tensorflow as tf

    from common import training

    training.set_seed(0)
    rss_start = _peak_rss_mib()
    case = Case(method, size)
    steps = FLAGS.steps
    out = {"method": method, "size": size, "train_pairs": len(case.train), "test_pairs": len(case.test),
           "pairs_per_step": case.pairs_per_step, "steps_per_epoch": case.steps_per_epoch, "timed_steps": steps,
           "seconds_per_epoch": {}}
    variants = {
        "loop": lambda: case.run_loop(steps),
        "floor": case.floor_fn(steps),
        "epoch_fn": None, "eager": None, "xla": None,  # ZSCRGAN: sampler-fed compiled steps only
    }
    if method != "zscrgan":
        xla = tf.function(case.trainer._train_step, jit_compile=True)
        variants.update(epoch_fn=case.epoch_fn(steps), xla=lambda: case.run_loop(steps, step_fn=xla),
                        eager=lambda: case.run_loop(max(2, steps // 10), step_fn=case.trainer._train_step))
    for name in FLAGS.variants:
        fn = variants.get(name)
        if fn is None:
            out["seconds_per_epoch"][name] = None
            continue
        try:
            sec = _time(fn, FLAGS.repeats)
        except Exception as e:  # noqa: BLE001 - a variant that cannot compile is a result, not a crash
            out["seconds_per_epoch"][name] = None
            out.setdefault("errors", {})[name] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}"
            continue
        timed = max(2, steps // 10) if name == "eager" else steps
        out["seconds_per_epoch"][name] = sec / timed * case.steps_per_epoch
    spe = out["seconds_per_epoch"]
    out["loop_over_floor"] = spe["loop"] / spe["floor"] if spe.get("loop") and spe.get("floor") else None
    out["pairs_per_second"] = {k: len(case.train) / v for k, v in spe.items() if v}
    t0 = time.perf_counter()
    case.evaluate()
    out["eval_seconds"] = time.perf_counter() - t0
    out["eval"] = case.eval_kind
    out["peak_rss_mib"] = _peak_rss_mib()
    out["rss_before_data_mib"] = rss_start
    return out


def run_gallery(n_gallery: int) -> dict:
    from common import metrics

    rng = np.random.default_rng(0)
    labels_g = rng.integers(0, 100, n_gallery)
    centres = rng.standard_normal((100, 40)).astype(np.float32)
    gallery = centres[labels_g] + rng.standard_normal((n_gallery, 40)).astype(np.float32)
    labels_q = rng.integers(0, 100, FLAGS.queries)
    queries = centres[labels_q] + rng.standard_normal((FLAGS.queries, 40)).astype(np.float32)
    before = _peak_rss_mib()
    t0 = time.perf_counter()
    m = metrics.mean_average_precision(queries, gallery, labels_q, labels_g)
    return {"gallery": n_gallery, "queries": FLAGS.queries, "dim": 40, "seconds": time.perf_counter() - t0,
            "map": float(m), "peak_rss_mib": _peak_rss_mib(), "rss_before_mib": before,
            "gallery_mib": gallery.nbytes / 2 ** 20}


def _child(case: str) -> dict:
    argv = [sys.executable, "-m", "tools.benchmark", f"--case={case}", f"--steps={FLAGS.steps}",
            f"--repeats={FLAGS.repeats}", f"--variants={','.join(FLAGS.variants)}", f"--queries={FLAGS.queries}"]
    r = subprocess.run(argv, capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    lines = [line for line in r.stdout.splitlines() if line.startswith("{")]
    if r.returncode != 0 or not lines:
        return {"case": case, "error": r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "no output"}
    return json.loads(lines[-1])


def markdown(results: dict) -> str:
    rows = ["| method | size | loop s/epoch | pairs/s | floor s/epoch | loop / floor | epoch_fn | eager | XLA | "
            "eval s | peak RSS MiB |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    f = lambda v: "n/a" if v is None else f"{v:.3g}"  # noqa: E731
    for r in results["cases"]:
        if "error" in r:
            rows.append(f"| {r['case']} | error: {r['error']} |")
            continue
        s = r["seconds_per_epoch"]
        rows.append(f"| {r['method']} | {r['size']} | {f(s.get('loop'))} | {r['pairs_per_second'].get('loop', 0):,.0f} | "
                    f"{f(s.get('floor'))} | {f(r['loop_over_floor'])} | {f(s.get('epoch_fn'))} | {f(s.get('eager'))} | "
                    f"{f(s.get('xla'))} | {r['eval_seconds']:.2f} | {r['peak_rss_mib']:,.0f} |")
    if results.get("gallery"):
        rows += ["", "| gallery | queries | mAP@all time | peak RSS MiB | gallery MiB |", "|---|---|---|---|---|"]
        for g in results["gallery"]:
            if "error" in g:
                rows.append(f"| error: {g['error']} |")
            else:
                rows.append(f"| {g['gallery']:,} | {g['queries']} | {g['seconds']:.2f} s | {g['peak_rss_mib']:,.0f} | "
                            f"{g['gallery_mib']:.0f} |")
    return "\n".join(rows)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    if FLAGS.case:
        kind, *rest = FLAGS.case.split(":")
        out = run_gallery(int(rest[0])) if kind == "gallery" else run_case(kind, rest[0])
        print(json.dumps(out))
        return
    unknown = sorted(set(FLAGS.methods) - set(TEXT_DIM)) + sorted(set(FLAGS.sizes) - set(SIZES))
    if unknown:
        raise app.UsageError(f"unknown methods/sizes {unknown}")
    results = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
               "steps": FLAGS.steps, "repeats": FLAGS.repeats, "cases": [], "gallery": []}
    import tensorflow as tf

    results["machine"]["tensorflow"] = tf.__version__
    results["machine"]["gpus"] = len(tf.config.list_physical_devices("GPU"))
    from common import io

    jobs = [("cases", f"{m}:{s}") for s in FLAGS.sizes for m in FLAGS.methods]
    jobs += [("gallery", f"gallery:{g}") for g in FLAGS.gallery_sizes if g]
    for key, case in jobs:
        print(f"{case} ...", file=sys.stderr, flush=True)
        results[key].append(_child(case))
        io.write_json(FLAGS.output, results)  # after every case: a long run stopped early keeps what it measured
    print(markdown(results))


if __name__ == "__main__":
    app.run(main)
