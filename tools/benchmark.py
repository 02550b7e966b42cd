"""Training-loop speed of every method against its compute floor, evaluation time, peak memory.

    python -m tools.benchmark                          # every method, both sizes -> docs/benchmarks.json
    python -m tools.benchmark --methods acmr_simple --sizes wiki --steps 20

Each (method, size) runs in its own process (peak RSS is that process's). Synthetic features
of the real shapes (`common.synthetic`): wiki = 2,170 train / 690 test pairs, 4096-d images,
5000-d (ACMR, cmhash) or 300-d (JFSE, ZSCRGAN) texts; xmn = 32,000 / 4,000 pairs, 4096 / 300.
Per variant, `--steps` steps are timed (median of `--repeats`, after a warm-up that traces)
and scaled to an epoch:
  loop        the entry point's default loop (`training.EpochRunner`): in-graph epoch order,
              gather and step, `--steps` batches per call
  floor       the same step applied `--steps` times to one cached batch inside one tf.function
  batch_loop  one compiled call per batch fed by a `tf.data` iterator (the previous default)
  eager       the step without tf.function, per batch (fewer steps)
  xla         the loop as `--jit_compile` runs it (ACMR, cmhash: the loop over a call's batches
              compiled by XLA; JFSE: its step); floor_xla its floor, compiled the same way
ZSCRGAN's unit is its E-step round (n_critic critic steps + 1 generator step), fed by the
release's class-block sampler; it reports loop and floor only.
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
from absl import flags

from common.errors import ConfigError

FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_list("methods", ["acmr_simple", "acmr_triplet", "jfse", "zscrgan", "cmhash"], "Methods.")
    flags.DEFINE_list("sizes", ["wiki", "xmn"], "wiki (2,170 pairs), xmn (32,000 pairs), tiny (tests).")
    flags.DEFINE_list("variants", list(VARIANTS), "Variants to time.")
    flags.DEFINE_integer("steps", 100, "Timed steps per repeat, at most an epoch's full batches (scaled to an epoch).")
    flags.DEFINE_integer("jfse_steps", 5, "JFSE's timed steps (its release-width step takes seconds on CPU).")
    flags.DEFINE_integer("repeats", 5, "Repeats per variant, taken round-robin (median).")
    flags.DEFINE_list("gallery_sizes", ["100000", "1000000"], "Gallery sizes of the streamed mAP@all case ('' for none).")
    flags.DEFINE_integer("queries", 200, "Queries of the streamed mAP@all case.")
    flags.DEFINE_string("output", "docs/benchmarks.json", "JSON results (the markdown table is printed).")
    flags.DEFINE_bool("merge", False, "Keep the other cases already in --output (re-measure some methods only).")
    flags.DEFINE_bool("overwrite", False, "Replace an existing --output (without --merge).")
    flags.DEFINE_string("case", None, "Internal: run one case in this process and print its JSON.")
    flags.DEFINE_enum("precision", "float32", ["float32", "mixed_bfloat16"],
                      "mixed_bfloat16: also time every case under Keras' mixed_bfloat16 policy (the default loop "
                      "against its own bfloat16 floor) and add the bfloat16 columns.")
    flags.DEFINE_string("case_precision", "float32", "Internal: the policy of a --case run.")


SIZES = {"wiki": dict(num_classes=10, train_per_class=217, test_per_class=69),
         "xmn": dict(num_classes=200, train_per_class=160, test_per_class=20),
         "tiny": dict(num_classes=4, train_per_class=40, test_per_class=10)}  # for the test suite
VARIANTS = ("loop", "floor", "xla", "floor_xla", "batch_loop", "eager")
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
    """What the harness needs of one method: its step, runners and evaluation."""

    def __init__(self, method, size):
        import tensorflow as tf

        from common import metrics, pipelines

        self.tf, self.method = tf, method
        ds = _data(method, size)
        self.train, self.test = ds.train, ds.test
        self.eval_kind = "cosine i2t + t2i mAP@all on the test split"
        if method.startswith("acmr"):
            from acmr_tf.config import ACMRConfig
            from acmr_tf.task import LOG_FIELDS, ACMRTrainer

            t = ACMRTrainer(ACMRConfig(variant=method.split("_")[1]), ds.image_dim, ds.text_dim, ds.num_classes)
            t.grl_scale.assign(0.5)
            self.make_runner = t.make_runner
            self.keys, self.outputs = ("image", "text", "label"), LOG_FIELDS[t.cfg.variant]
            self.tensors = pipelines.split_tensors(self.train)
        elif method == "jfse":
            from jfse_tf.config import JFSEConfig
            from jfse_tf.task import LOSS_NAMES, JFSETrainer

            t = JFSETrainer(JFSEConfig().for_method(), ds.image_dim, ds.text_dim, ds.class_embeddings.shape[1],
                            ds.num_classes)
            rows = ds.class_embedding_rows(self.train.labels)
            self.make_runner = lambda train, spe, jit: t.make_runner(train, rows, spe, jit)
            self.keys, self.outputs = ("image", "text", "class_emb", "label"), LOSS_NAMES
            self.tensors = dict(pipelines.split_tensors(self.train), class_emb=tf.constant(rows, tf.float32))
        elif method == "cmhash":
            from cmhash_tf.config import CMHashConfig
            from cmhash_tf.data import multi_hot
            from cmhash_tf.task import CMHashTrainer

            t = CMHashTrainer(CMHashConfig(), ds.image_dim, ds.text_dim)
            self.train = self.train.__class__(self.train.image, self.train.text, multi_hot(self.train.labels, ds.num_classes))
            self.make_runner = t.make_runner
            self.keys, self.outputs = ("image", "text", "label"), ("loss", "applied")
            self.tensors = pipelines.split_tensors(self.train)
            self.eval_kind = "Hamming i2t + t2i mAP, test queries against the train split"
        else:
            from zscrgan_tf import data as zdata
            from zscrgan_tf.config import ZSCRGANConfig
            from zscrgan_tf.task import ZSCRGANTrainer

            t = ZSCRGANTrainer(ZSCRGANConfig(), zdata.from_dataset(ds))
            self.eval_kind = "P@50 + t2i mAP@all, unseen text queries against unseen images"
        self.trainer, self.metrics = t, metrics
        if method == "zscrgan":
            self.batch_size = t.cfg.batch_size * (t.cfg.n_critic + 1)  # unit: one E-step round
        else:
            self.batch_size = t.cfg.batch_size
            self.shuffle = bool(getattr(t.cfg, "shuffle", method == "cmhash"))
        self.steps_per_epoch = -(-len(self.train) // self.batch_size)
        self.pairs_per_step = self.batch_size
        self.epoch = 0

    # ------------------------------------------------------------------ variants
    def loop(self, steps, jit_compile=False):
        """The entry point's loop: `steps` batches of the in-graph epoch in one call (the real
        epoch makes the same call with all its batches). ZSCRGAN: its sampler-fed E-step rounds."""
        t = self.trainer
        if self.method == "zscrgan":
            def run():
                out = None
                for _ in range(steps):
                    for _ in range(t.cfg.n_critic):
                        out = t.step("critic")["d_loss"]
                    out = t.step("generator")["g_loss"]
                return float(out)
            return run
        runner = self.make_runner(self.train, steps, jit_compile)

        def run():
            self.epoch += 1
            return runner.run_block(self.epoch, 0, min(steps, runner.steps))
        return run

    def batch_loop(self, steps, step_fn=None):
        """One call per batch, batches from a `tf.data` iterator (the previous default; end-to-end
        cmhash still feeds this way)."""
        from common import pipelines, training

        t = self.trainer
        ds = pipelines.epoch_indices(len(self.train), self.batch_size, self.shuffle, 0).map(
            pipelines.gather_rows(self.tensors))
        runner = training.BatchRunner(step_fn or t.train_step, ds, self.keys, self.outputs, steps)
        return lambda: runner.run_epoch(0)

    def floor_fn(self, steps, jit_compile=False):
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
            from common import pipelines

            # a batch of random rows (the first rows in file order may be one class: no mining work)
            rows = pipelines.epoch_order(len(self.train), True, 0, 0)[:self.batch_size]
            b = pipelines.gather_rows(self.tensors)(rows)
            args = [b[k] for k in self.keys]
            step = t._train_step
            # compiled as the entry point compiles it: JFSE's step with its noise draw outside XLA,
            # the others' whole loop (training.EpochRunner)
            whole = jit_compile and not hasattr(t, "xla_step")
            if jit_compile and not whole:
                step = t.xla_step()

            @tf.function(jit_compile=whole)
            def run():
                out = tf.constant(0.0)
                for _ in tf.range(steps):
                    out = tf.cast(step(*args)[self.outputs[0]], tf.float32)
                return out
        return lambda: float(run())

    def evaluate(self):
        t = self.trainer
        if self.method == "zscrgan":
            return t.evaluate(t.data.test)["p50"]
        if self.method == "cmhash":
            from common.dataset import Split
            from cmhash_tf.data import multi_hot

            q = Split(self.test.image, self.test.text, multi_hot(self.test.labels, self.train.labels.shape[1]))
            return t.evaluate(q, self.train)["i2t_map"]
        e_v, e_t = t.embed(self.test.image, self.test.text)
        return self.metrics.cross_modal_map_all(e_v, e_t, self.test.labels, self.test.labels)["i2t_map_all"]


def _time_interleaved(fns: dict, repeats: int):
    """Median seconds per call of each function, the repeats taken round-robin so that a slow
    spell of the (shared, virtual) machine hits every variant alike; a variant that fails to
    run is reported, not fatal."""
    times, errors = {}, {}
    for name, fn in fns.items():
        try:
            fn()  # warm-up: tracing and compilation
            times[name] = []
        except Exception as e:  # noqa: BLE001 - a variant that cannot compile is a result
            errors[name] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}"
    for _ in range(repeats):
        for name in times:
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) for k, v in times.items()}, errors


def run_case(method: str, size: str) -> dict:
    from common import run, training

    run.set_precision(FLAGS.case_precision)  # the entry points' policy and optimizer updates
    training.set_seed(0)
    rss_start = _peak_rss_mib()
    case = Case(method, size)
    steps = FLAGS.jfse_steps if method == "jfse" else FLAGS.steps
    steps = min(steps, max(1, len(case.train) // case.batch_size))  # at most the epoch's full batches
    out = {"method": method, "size": size, "precision": FLAGS.case_precision,
           "train_pairs": len(case.train), "test_pairs": len(case.test),
           "pairs_per_step": case.pairs_per_step, "steps_per_epoch": case.steps_per_epoch, "timed_steps": steps,
           "seconds_per_epoch": {}}
    eager_steps = max(2, steps // 10)
    variants = {"loop": case.loop(steps), "floor": case.floor_fn(steps)}
    if method != "zscrgan":  # ZSCRGAN: sampler-fed compiled steps only
        variants.update(xla=case.loop(steps, jit_compile=True), floor_xla=case.floor_fn(steps, jit_compile=True),
                        batch_loop=case.batch_loop(steps),
                        eager=case.batch_loop(eager_steps, step_fn=case.trainer._train_step))
    seconds, errors = {}, {}
    # the floor comparison first, among itself: slow variants run before it left the process
    # measurably slower for a while (up to 1.6x on cmhash), so they come after, on their own
    for group in (("loop", "floor", "xla", "floor_xla"), ("batch_loop", "eager")):
        wanted = {name: variants[name] for name in FLAGS.variants if name in group and variants.get(name) is not None}
        sec, err = _time_interleaved(wanted, FLAGS.repeats)
        seconds.update(sec)
        errors.update(err)
    if errors:
        out["errors"] = errors
    for name in FLAGS.variants:
        timed = eager_steps if name == "eager" else steps
        out["seconds_per_epoch"][name] = seconds[name] / timed * case.steps_per_epoch if name in seconds else None
    spe = out["seconds_per_epoch"]
    ratio = lambda a, b: spe[a] / spe[b] if spe.get(a) and spe.get(b) else None  # noqa: E731
    out["loop_over_floor"], out["xla_over_floor_xla"] = ratio("loop", "floor"), ratio("xla", "floor_xla")
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


def _child(case: str, precision: str = "float32", variants=None) -> dict:
    argv = [sys.executable, "-m", "tools.benchmark", f"--case={case}", f"--steps={FLAGS.steps}",
            f"--repeats={FLAGS.repeats}", f"--jfse_steps={FLAGS.jfse_steps}",
            f"--variants={','.join(variants or FLAGS.variants)}", f"--queries={FLAGS.queries}",
            f"--case_precision={precision}"]
    return child_record(argv, {"case": case})


def child_record(argv: list, label: dict) -> dict:
    """Run one measurement in a child process (its own peak RSS, its own global policy) and return
    the JSON record it printed last; on failure `label` with the child's last error line."""
    r = subprocess.run(argv, capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    lines = [line for line in r.stdout.splitlines() if line.startswith("{")]
    if r.returncode != 0 or not lines:
        return dict(label, error=r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "no output")
    return json.loads(lines[-1])


def default_seconds(record: dict):
    """(seconds per epoch, floor) of the loop an entry point runs by default on this CPU: float32 with
    XLA (ZSCRGAN: its plain loop); mixed_bfloat16 without XLA (run.jit_compile)."""
    s = record.get("seconds_per_epoch", {})
    if s.get("xla") and record.get("precision", "float32") == "float32":
        return s["xla"], s.get("floor_xla")
    return s.get("loop"), s.get("floor")


def bf16_speedup(record: dict):
    """bfloat16 seconds per epoch over float32's, the default loop of each (< 1: faster)."""
    f32, b16 = default_seconds(record)[0], default_seconds(record.get("bf16") or {})[0]
    return b16 / f32 if f32 and b16 else None


def _case_id(key: str, record: dict) -> str:
    if "case" in record:  # a case that failed
        return record["case"]
    return f"gallery:{record['gallery']}" if key == "gallery" else f"{record['method']}:{record['size']}"


def kept_records(old: dict, redo) -> dict:
    """`--merge`: the cases and gallery records of an earlier run that this run does not redo."""
    redo = set(redo)
    return {key: [r for r in old.get(key, []) if _case_id(key, r) not in redo] for key in ("cases", "gallery")}


MACHINE_KEYS = ("cpus", "isa", "tensorflow", "gpus")  # what makes timings comparable (not the kernel build)


def require_same_machine(old: dict, new: dict, path: str) -> None:
    """`--merge` keeps earlier cases under this run's machine record: only when they were measured
    on the same kind of machine (a mixed file would label one machine's timings with another)."""
    differ = [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in MACHINE_KEYS if old.get(k) != new.get(k)]
    if differ:
        raise ConfigError(f"--merge: {path} was measured on another machine or stack ({'; '.join(differ)}); "
                          "write this machine's numbers to another --output")


def _order(record: dict):
    method, size = _case_id("cases", record).split(":")
    return list(SIZES).index(size) if size in SIZES else 99, list(TEXT_DIM).index(method) if method in TEXT_DIM else 99


def markdown(results: dict) -> str:
    rows = ["| method | size | loop s/epoch | pairs/s | floor | loop / floor | XLA loop | XLA floor | XLA loop / floor "
            "| per-batch loop | eager | eval s | peak RSS MiB | measured |", "|---" * 14 + "|"]
    f = lambda v: "n/a" if v is None else f"{v:.3g}"  # noqa: E731
    for r in sorted(results["cases"], key=_order):
        if "error" in r:
            rows.append(f"| {r['case']} | error: {r['error']} |")
            continue
        s = r["seconds_per_epoch"]
        rows.append(f"| {r['method']} | {r['size']} | {f(s.get('loop'))} | {r['pairs_per_second'].get('loop', 0):,.0f} | "
                    f"{f(s.get('floor'))} | {f(r['loop_over_floor'])} | {f(s.get('xla'))} | {f(s.get('floor_xla'))} | "
                    f"{f(r.get('xla_over_floor_xla'))} | {f(s.get('batch_loop'))} | {f(s.get('eager'))} | "
                    f"{r['eval_seconds']:.2f} | {r['peak_rss_mib']:,.0f} | {r.get('measured', '')} |")
    bf = [r for r in sorted(results["cases"], key=_order) if r.get("bf16") and "error" not in r["bf16"]]
    if bf:
        rows += ["", "| method | size | float32 s/epoch | bf16 s/epoch | float32 pairs/s | bf16 pairs/s | bf16 / float32 "
                 "| bf16 loop / bf16 floor | bf16 floor s/epoch | bf16 XLA loop | bf16 XLA floor | measured |",
                 "|---" * 12 + "|"]
        for r in bf:
            (f32, _), (b16, b16_floor) = default_seconds(r), default_seconds(r["bf16"])
            pairs = lambda s: f"{r['train_pairs'] / s:,.0f}" if s else "n/a"  # noqa: E731
            ratio = b16 / b16_floor if b16 and b16_floor else None
            xla = r["bf16"]["seconds_per_epoch"]
            rows.append(f"| {r['method']} | {r['size']} | {f(f32)} | {f(b16)} | {pairs(f32)} | {pairs(b16)} | "
                        f"{f(r.get('bf16_speedup'))} | {f(ratio)} | {f(b16_floor)} | {f(xla.get('xla'))} | "
                        f"{f(xla.get('floor_xla'))} | {r.get('measured', '')} |")
    if results.get("gallery"):
        rows += ["", "| gallery | queries | mAP@all time | peak RSS MiB | gallery MiB | measured |", "|---" * 6 + "|"]
        for g in results["gallery"]:
            if "error" in g:
                rows.append(f"| error: {g['error']} |")
            else:
                rows.append(f"| {g['gallery']:,} | {g['queries']} | {g['seconds']:.2f} s | {g['peak_rss_mib']:,.0f} | "
                            f"{g['gallery_mib']:.0f} | {g.get('measured', '')} |")
    return "\n".join(rows)


def main(argv):
    from common import io, run

    run.no_arguments(argv)
    run.require_positive("steps", "jfse_steps", "repeats", "queries")
    if FLAGS.case:
        kind, *rest = FLAGS.case.split(":")
        out = run_gallery(int(rest[0])) if kind == "gallery" else run_case(kind, rest[0])
        print(json.dumps(out))
        return
    unknown = sorted(set(FLAGS.methods) - set(TEXT_DIM)) + sorted(set(FLAGS.sizes) - set(SIZES))
    if unknown:
        raise ConfigError(f"unknown methods/sizes {unknown}; methods: {', '.join(TEXT_DIM)}; sizes: "
                          f"{', '.join(SIZES)}")
    if set(FLAGS.variants) - set(VARIANTS):
        raise ConfigError(f"unknown --variants {sorted(set(FLAGS.variants) - set(VARIANTS))}; one or more of "
                          f"{', '.join(VARIANTS)}")
    try:
        [int(g) for g in FLAGS.gallery_sizes if g]
    except ValueError:
        raise ConfigError(f"--gallery_sizes must be integers, got {','.join(FLAGS.gallery_sizes)}") from None
    if not FLAGS.merge:  # --merge updates the file on purpose
        io.check_output_file(FLAGS.output, FLAGS.overwrite, flag="--output")
    results = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                           "isa": run.cpu_isa()},
               "steps": FLAGS.steps, "repeats": FLAGS.repeats, "cases": [], "gallery": []}
    run.import_tensorflow()
    import tensorflow as tf

    results["machine"]["tensorflow"] = tf.__version__
    results["machine"]["gpus"] = len(tf.config.list_physical_devices("GPU"))
    jobs = [("cases", f"{m}:{s}") for s in FLAGS.sizes for m in FLAGS.methods]
    jobs += [("gallery", f"gallery:{g}") for g in FLAGS.gallery_sizes if g]
    if FLAGS.merge and os.path.exists(FLAGS.output):
        old = io.read_json(FLAGS.output)
        require_same_machine(old.get("machine") or {}, results["machine"], FLAGS.output)
        results.update(kept_records(old, [case for _, case in jobs]))
    for done, (key, case) in enumerate(jobs):
        print(f"{case} ({done + 1} of {len(jobs)}) ...", file=sys.stderr, flush=True)
        record = dict(_child(case), measured=time.strftime("%Y-%m-%d"))
        if FLAGS.precision == "mixed_bfloat16" and key == "cases":
            print(f"{case} (mixed_bfloat16) ...", file=sys.stderr, flush=True)
            zscrgan = case.split(":")[0] == "zscrgan"
            record["bf16"] = _child(case, "mixed_bfloat16", ["loop", "floor"] if zscrgan else
                                    ["loop", "floor", "xla", "floor_xla"])
            record["bf16_speedup"] = bf16_speedup(record)
        results[key].append(record)
        # after every case: a run stopped early keeps what it measured and lists what it lacks (--merge adds it)
        io.write_json(FLAGS.output, dict(results, unmeasured=[c for _, c in jobs[done + 1:]]) if done + 1 < len(jobs)
                      else results)
    print(markdown(results))


def cli():
    from common import run

    define_flags()
    run.run_main(main)


if __name__ == "__main__":
    cli()
