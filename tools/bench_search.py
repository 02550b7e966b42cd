"""Search benchmark: exact TensorFlow top-k vs faiss (flat and IVF), time and peak memory.

    python -m tools.bench_search --queries 2000 --gallery 200000 --dim 256 --top_k 100

Each backend runs in its own child process so that its peak resident memory is its own.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
from absl import flags

from common import io, run

flags.DEFINE_integer("queries", 2000, "Query rows.")
flags.DEFINE_integer("gallery", 200000, "Gallery rows.")
flags.DEFINE_integer("dim", 256, "Feature width.")
flags.DEFINE_integer("top_k", 100, "Hits per query.")
flags.DEFINE_integer("chunk", 65536, "Exact search block size.")
flags.DEFINE_string("backend", None, "Internal: run one backend and print JSON.")
flags.DEFINE_string("ref", None, "Internal: .npy of the exact search's ids (written by exact_tf, read by the others).")
flags.DEFINE_string("out", None, "Optional JSON output.")
flags.DEFINE_bool("overwrite", False, "Replace an existing --out file.")
FLAGS = flags.FLAGS


def _data():
    rng = np.random.default_rng(0)
    return (rng.standard_normal((FLAGS.queries, FLAGS.dim)).astype(np.float32),
            rng.standard_normal((FLAGS.gallery, FLAGS.dim)).astype(np.float32))


def _one(backend: str) -> dict:
    from tools.search import exact_search, faiss_search

    q, g = _data()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if backend == "exact_tf":
        ids, _ = exact_search(q, g, FLAGS.top_k, FLAGS.chunk)
    elif backend == "faiss_flat":
        ids, _ = faiss_search(q, g, FLAGS.top_k)
    else:
        ids, _ = faiss_search(q, g, FLAGS.top_k, kind="ivf", nlist=1024, nprobe=16)
    seconds = time.perf_counter() - start
    if backend == "exact_tf":
        np.save(FLAGS.ref, ids)
    ref = np.load(FLAGS.ref)
    recall = float(np.mean([len(set(a) & set(b)) / len(a) for a, b in zip(ids, ref)]))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"backend": backend, "seconds": seconds, "peak_rss_mib": peak / 1024,
            "rss_growth_mib": (peak - base) / 1024, "recall_vs_exact": recall}


def main(argv):
    if FLAGS.backend:
        print(json.dumps(_one(FLAGS.backend)))
        return
    run.no_arguments(argv)
    run.require_positive("queries", "gallery", "dim", "top_k", "chunk")
    if FLAGS.out:
        io.check_output_file(FLAGS.out, FLAGS.overwrite)
    rows = []
    ref = os.path.join(tempfile.mkdtemp(prefix="bench_search-"), "exact_ids.npy")
    for backend in ("exact_tf", "faiss_flat", "faiss_ivf"):
        cmd = [sys.executable, "-m", "tools.bench_search", f"--backend={backend}", f"--ref={ref}"] + [
            f"--{k}={getattr(FLAGS, k)}" for k in ("queries", "gallery", "dim", "top_k", "chunk")]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            print(f"{backend}: failed ({res.stderr.strip().splitlines()[-1] if res.stderr else res.returncode})")
            continue
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"{backend:11s} {r['seconds']:8.2f} s  peak RSS {r['peak_rss_mib']:7.0f} MiB  "
              f"recall@{FLAGS.top_k} vs exact {r['recall_vs_exact']:.4f}", flush=True)
    if FLAGS.out:
        io.write_json(FLAGS.out, {"config": {k: getattr(FLAGS, k) for k in ("queries", "gallery", "dim", "top_k",
                                                                          "chunk")}, "results": rows})


if __name__ == "__main__":
    run.run_main(main)
