"""Time and peak memory of `common.metrics.mean_average_precision` (mAP@all, cosine).

    python -m tools.bench_metrics                    # 10k x 10k and 2k x 100k, 128-d
    python -m tools.bench_metrics --sizes 1000x5000  # custom

Each size runs in its own process so the peak resident memory (ru_maxrss) is that size's;
the baseline RSS of a process that only imported TensorFlow is reported beside it.
"""

import json
import resource
import subprocess
import sys
import time

from absl import flags

from common import io, run
from common.errors import ConfigError

flags.DEFINE_list("sizes", ["10000x10000", "2000x100000"], "QUERIESxGALLERY pairs.")
flags.DEFINE_integer("dim", 128, "Embedding dimension.")
flags.DEFINE_integer("classes", 10, "Number of classes of the random labels.")
flags.DEFINE_integer("repeats", 3, "Timed repetitions (median reported) after one warm-up.")
flags.DEFINE_enum("distance", "cosine", ["cosine", "euclidean", "hamming"], "Ranking distance.")
flags.DEFINE_string("json_out", None, "Also write the results here.")
flags.DEFINE_bool("overwrite", False, "Replace an existing --json_out file.")
flags.DEFINE_string("_child", None, "internal: run one size in this process")
FLAGS = flags.FLAGS


def child(size: str) -> dict:
    import numpy as np

    from common import metrics

    nq, ng = (int(v) for v in size.split("x"))
    rng = np.random.default_rng(0)
    q = rng.standard_normal((nq, FLAGS.dim)).astype(np.float32)
    g = rng.standard_normal((ng, FLAGS.dim)).astype(np.float32)
    ql, gl = rng.integers(0, FLAGS.classes, nq), rng.integers(0, FLAGS.classes, ng)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    metrics.mean_average_precision(q[:10], g, ql[:10], gl, distance=FLAGS.distance)  # warm-up / trace
    times = []
    for _ in range(FLAGS.repeats):
        t = time.perf_counter()
        value = metrics.mean_average_precision(q, g, ql, gl, distance=FLAGS.distance)
        times.append(time.perf_counter() - t)
    return {"queries": nq, "gallery": ng, "dim": FLAGS.dim, "distance": FLAGS.distance,
            "seconds_median": sorted(times)[len(times) // 2], "seconds_all": times,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_before_mib": base_rss, "input_mib": (q.nbytes + g.nbytes) / 2**20, "map": value}


def main(argv):
    if FLAGS._child:
        print(json.dumps(child(FLAGS._child)))
        return
    import os
    import re

    run.no_arguments(argv)
    run.require_positive("dim", "classes", "repeats")
    if FLAGS.json_out:
        io.check_output_file(FLAGS.json_out, FLAGS.overwrite, flag="--json_out")
    bad = [size for size in FLAGS.sizes if not re.fullmatch(r"[1-9]\d*x[1-9]\d*", size)]
    if bad or not FLAGS.sizes:
        raise ConfigError(f"--sizes takes QUERIESxGALLERY pairs such as 1000x5000; got {bad or 'none'}")
    rows = []
    for size in FLAGS.sizes:
        cmd = [sys.executable, "-m", "tools.bench_metrics", f"--_child={size}", f"--dim={FLAGS.dim}",
               f"--classes={FLAGS.classes}", f"--repeats={FLAGS.repeats}", f"--distance={FLAGS.distance}"]
        out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
        if out.returncode:
            last = (out.stderr.strip().splitlines() or ["no output"])[-1]
            raise ConfigError(f"size {size} failed (exit {out.returncode}): {last}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"{r['queries']:>6} x {r['gallery']:>7} x {r['dim']}d {r['distance']}: "
              f"{r['seconds_median']:.2f} s (median of {FLAGS.repeats}), peak RSS {r['peak_rss_mib']:.0f} MiB "
              f"(before: {r['rss_before_mib']:.0f} MiB, inputs {r['input_mib']:.0f} MiB)", flush=True)
    if FLAGS.json_out:
        io.write_json(FLAGS.json_out, {"cpus": os.cpu_count(), "rows": rows})


if __name__ == "__main__":
    run.run_main(main)
