"""Cross-modal search with an exported model.

    python -m tools.search --model exported/acmr --queries text_feats.npy --gallery image_feats.npy \\
        --top_k 10 --out hits.json            # text -> image, exact cosine search in TensorFlow
    python -m tools.search ... --index faiss  # faiss-cpu (optional extra), exact inner product
    python -m tools.search ... --index faiss_ivf --nlist 1024 --nprobe 16   # approximate
    python -m tools.search --model exported/cmhash32 ...                    # hash codes, Hamming

Both sides go through the SavedModel (`embed_text` / `embed_image`, or `hash_*` for a hashing
model, which is ranked by Hamming distance as its method is evaluated unless `--nohamming`);
results list, per query, the top-K gallery ids (row numbers, or the ids of `--gallery_ids`) with
their scores (cosine, or Hamming distance). Exact search is chunked over queries and gallery, so
memory stays bounded by `--chunk` rows of each whatever the sizes. A JSON
result also says what produced it (the model and the run it was exported from, both input files
with a digest of their rows, the ranking and the backend), so a hits file shared or found later
still names its model and data.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import hashlib
import json
import os

import numpy as np
from absl import flags

from common import io, run
from common.errors import ConfigError, DataError

FLAGS = flags.FLAGS


def _normalise(x):
    import tensorflow as tf

    return tf.math.l2_normalize(tf.convert_to_tensor(x, tf.float32), axis=1)


def exact_search(queries, gallery, k: int, chunk: int = 65536, hamming: bool = False):
    """Top-k gallery rows per query: cosine (descending) or Hamming distance of +-1 codes (ascending).

    Ties go to the lower gallery index, as in `common.metrics`. Returns (ids int64 (nq, k'),
    scores float32 (nq, k')) with k' = min(k, gallery size).
    """
    import tensorflow as tf

    q_all = np.asarray(queries, np.float32)
    g_all = np.asarray(gallery, np.float32)
    if q_all.ndim != 2 or g_all.ndim != 2 or q_all.shape[1] != g_all.shape[1]:
        raise DataError(f"query and gallery widths differ: {q_all.shape} vs {g_all.shape}")
    k = int(min(k, len(g_all)))
    if k < 1:
        raise DataError("the gallery is empty")
    out_ids, out_scores = [], []
    for qs in range(0, len(q_all), chunk):
        q = tf.constant(q_all[qs:qs + chunk])
        q = q if hamming else _normalise(q)
        best_s = best_i = None
        for gs in range(0, len(g_all), chunk):
            g = tf.constant(g_all[gs:gs + chunk])
            sim = tf.matmul(q, g if hamming else _normalise(g), transpose_b=True)  # for codes: K - 2 * Hamming
            s, i = tf.math.top_k(sim, k=min(k, sim.shape[1]))
            i = tf.cast(i, tf.int64) + gs
            if best_s is not None:  # earlier (lower-index) candidates first: top_k keeps them on ties
                s, i = tf.concat([best_s, s], 1), tf.concat([best_i, i], 1)
                s, pos = tf.math.top_k(s, k=k)
                i = tf.gather(i, pos, batch_dims=1)
            best_s, best_i = s, i
        out_ids.append(best_i.numpy())
        scores = best_s.numpy()
        if hamming:
            scores = (q_all.shape[1] - scores) / 2.0
        out_scores.append(scores.astype(np.float32))
    return np.concatenate(out_ids), np.concatenate(out_scores)


def faiss_search(queries, gallery, k: int, kind: str = "flat", nlist: int = 1024, nprobe: int = 16, seed: int = 0):
    """Cosine search with faiss-cpu: exact (`flat`, inner product of normalised rows) or IVF."""
    try:
        import faiss
    except ImportError:
        raise ConfigError("--index faiss needs the optional extra: pip install -e '.[search]' (faiss-cpu)") from None
    q = np.ascontiguousarray(_normalise(queries).numpy())
    g = np.ascontiguousarray(_normalise(gallery).numpy())
    k = int(min(k, len(g)))
    nlist = int(min(nlist, max(1, len(g) // 39)))  # faiss wants ~39 training points per list
    if kind == "flat" or nlist == 1:  # one list is the exact search (and faiss would warn about too few points)
        index = faiss.IndexFlatIP(g.shape[1])
    else:
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(g.shape[1]), g.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        index.train(g)
        index.nprobe = nprobe
    index.add(g)
    scores, ids = index.search(q, k)
    return ids.astype(np.int64), scores.astype(np.float32)


def _load_features(path: str) -> np.ndarray:
    x = io.as_matrix(io.load_array(path), path)
    if x.shape[0] == 0:
        raise DataError(f"{path}: holds no rows (an empty {x.shape} array); nothing to search")
    io.require_finite(x, f"{path}: its features")
    return x.astype(np.float32)


def _signature(model, name: str, path: str):
    if name not in model.signatures:
        hint = "; --hamming needs a model exported from a cmhash run" if name.startswith("hash_") else ""
        raise ConfigError(f"{path} has no {name!r} signature (it has {sorted(model.signatures)}){hint}")
    return model.signatures[name]


def _width(model, kind: str, side: str):
    name = f"{kind}_{side}"
    return model.signatures[name].structured_input_signature[1][side].shape[1] if name in model.signatures else None


def encode(model, side: str, x: np.ndarray, hamming: bool, batch: int = 4096, model_dir: str = "the model",
           source: str = "", side_flag: str = ""):
    """`side` rows through a loaded SavedModel's embed_/hash_ signature, in batches."""
    import tensorflow as tf

    kind = "hash" if hamming else "embed"
    fn = _signature(model, f"{kind}_{side}", model_dir)
    key = "codes" if hamming else "embedding"
    want = _width(model, kind, side)
    if x.shape[1] != want:
        other = "image" if side == "text" else "text"
        hint = (f"; they have the {other} encoder's width: pass --{side_flag} {other}"
                if side_flag and _width(model, kind, other) == x.shape[1] else "")
        raise DataError(f"{source + ': ' if source else ''}{side} features are {x.shape[1]}-d but the model's {side} "
                        f"encoder takes {want}-d{hint}")
    return np.concatenate([fn(**{side: tf.constant(x[s:s + batch])})[key].numpy() for s in range(0, len(x), batch)])


def default_gallery_side(model, query_side: str) -> str:
    """The other modality; a model of one side (tag hashing) searches within that side."""
    other = "image" if query_side == "text" else "text"
    return other if f"embed_{other}" in model.signatures else query_side


def describe_input(path: str, rows: np.ndarray, side: str, ids_file: str | None) -> dict:
    """One searched file for the result's provenance: where, which modality, and a digest of the
    rows as searched (float32), so a later copy of the file can be checked against it."""
    digest = hashlib.blake2b(np.ascontiguousarray(rows, np.float32).tobytes(), digest_size=16).hexdigest()
    return {"file": os.path.abspath(path), "side": side, "rows": int(rows.shape[0]), "dim": int(rows.shape[1]),
            "digest": digest, "ids": os.path.abspath(ids_file) if ids_file else None}


def describe_model(model_dir: str) -> dict:
    """The SavedModel and, from the export.json tools.export writes beside it, what trained it."""
    meta, path = {}, os.path.join(model_dir, "export.json")
    if os.path.isfile(path):
        with contextlib.suppress(DataError):  # a damaged export.json only leaves these fields out
            meta = io.read_json(path)
    keep = ("method", "run_dir", "checkpoint", "run")
    return {"folder": os.path.abspath(model_dir), **{k: meta.get(k) for k in keep if k in meta}}


def write_results(path: str, ids, scores, query_ids, gallery_ids, about: dict | None = None) -> None:
    """CSV: one row per hit. JSON: `about` (what produced the hits) and `results`, one entry per query."""
    rows = [{"query": str(query_ids[i]), "hits": [{"id": str(gallery_ids[j]), "score": float(s)}
                                                  for j, s in zip(ids[i], scores[i])]} for i in range(len(ids))]
    with io.atomic_open(path, "w", newline="") as f:
        if path.endswith(".csv"):
            w = csv.writer(f)
            w.writerow(["query", "rank", "id", "score"])
            for r in rows:
                for rank, h in enumerate(r["hits"], 1):
                    w.writerow([r["query"], rank, h["id"], f"{h['score']:.6g}"])
        else:
            json.dump({**(about or {}), "results": rows}, f, indent=1)


def main(argv):
    run.no_arguments(argv)
    if not (FLAGS.model and FLAGS.queries and FLAGS.gallery and FLAGS.out):
        raise ConfigError("--model, --queries, --gallery and --out are required")
    run.require_positive("top_k", "chunk", "nlist", "nprobe")
    if FLAGS.hamming is True and FLAGS.index != "exact":
        raise ConfigError(f"--index {FLAGS.index} searches real-valued embeddings; a --hamming search is exact "
                          "(drop --index)")
    for name, index in (("nlist", "faiss_ivf"), ("nprobe", "faiss_ivf"), ("chunk", "exact")):
        if run.changed(name) and FLAGS.index != index:
            raise ConfigError(f"--{name} is an option of --index {index}")
    io.check_output_file(FLAGS.out, FLAGS.overwrite)
    if not FLAGS.out.endswith((".json", ".csv")):
        raise ConfigError(f"--out {FLAGS.out}: the results file must end in .json or .csv")
    if not os.path.isfile(os.path.join(FLAGS.model, "saved_model.pb")):
        raise DataError(f"--model {FLAGS.model}: not a SavedModel folder (no saved_model.pb; write one with "
                        "tools.export)")
    queries, gallery = _load_features(FLAGS.queries), _load_features(FLAGS.gallery)
    qid = io.read_rows(FLAGS.query_ids, "query id") if FLAGS.query_ids else list(range(len(queries)))
    gid = io.read_rows(FLAGS.gallery_ids, "gallery id") if FLAGS.gallery_ids else list(range(len(gallery)))
    for what, idl, n in (("query", qid, len(queries)), ("gallery", gid, len(gallery))):
        if len(idl) != n:
            raise DataError(f"--{what}_ids has {len(idl)} lines for {n} {what} rows")
    run.import_tensorflow()
    import tensorflow as tf

    model = tf.saved_model.load(FLAGS.model)
    gallery_side = FLAGS.gallery_side or default_gallery_side(model, FLAGS.query_side)
    hashing_model = "hash_text" in model.signatures
    hamming = FLAGS.hamming if FLAGS.hamming is not None else hashing_model and FLAGS.index == "exact"
    q = encode(model, FLAGS.query_side, queries, hamming, model_dir=FLAGS.model, source=FLAGS.queries,
               side_flag="query_side")
    g = encode(model, gallery_side, gallery, hamming, model_dir=FLAGS.model, source=FLAGS.gallery,
               side_flag="gallery_side")
    if hashing_model and not hamming:
        print("note: this search ranks the hashing model's real-valued outputs by cosine; its method is evaluated "
              "by the Hamming distance of its codes (the default of an exact search)")
    if FLAGS.index == "exact":
        ids, scores = exact_search(q, g, FLAGS.top_k, FLAGS.chunk, hamming=hamming)
    else:
        ids, scores = faiss_search(q, g, FLAGS.top_k, "flat" if FLAGS.index == "faiss" else "ivf",
                                   FLAGS.nlist, FLAGS.nprobe)
    about = {"model": describe_model(FLAGS.model),
             "queries": describe_input(FLAGS.queries, queries, FLAGS.query_side, FLAGS.query_ids),
             "gallery": describe_input(FLAGS.gallery, gallery, gallery_side, FLAGS.gallery_ids),
             "ranking": "hamming" if hamming else "cosine", "index": FLAGS.index, "top_k": int(ids.shape[1]),
             "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    if FLAGS.index == "faiss_ivf":
        about.update(nlist=FLAGS.nlist, nprobe=FLAGS.nprobe)
    write_results(FLAGS.out, ids, scores, qid, gid, about)
    print(f"{FLAGS.out}: top-{ids.shape[1]} {gallery_side} hits for {len(q)} {FLAGS.query_side} queries "
          f"({'Hamming' if hamming else 'cosine'}, {FLAGS.index})")


def define_flags():
    flags.DEFINE_string("model", None, "SavedModel folder written by tools.export.")
    flags.DEFINE_string("queries", None, "Query features (.npy/.mat/.h5, one row per item).")
    flags.DEFINE_string("gallery", None, "Gallery features.")
    flags.DEFINE_enum("query_side", "text", ["text", "image"], "Modality of the queries.")
    flags.DEFINE_enum("gallery_side", None, ["text", "image"], "Modality of the gallery (default: the other one; "
                      "the query's for a model of one side, e.g. tag hashing).")
    flags.DEFINE_integer("top_k", 10, "Hits per query.")
    flags.DEFINE_enum("index", "exact", ["exact", "faiss", "faiss_ivf"], "Search backend.")
    flags.DEFINE_integer("nlist", 1024, "faiss_ivf: inverted lists.")
    flags.DEFINE_integer("nprobe", 16, "faiss_ivf: lists visited per query.")
    flags.DEFINE_bool("hamming", None, "Rank hash codes (hash_* signatures) by Hamming distance. Default: yes for a "
                      "model exported from a hashing run (as its method is evaluated) with --index exact, no "
                      "otherwise; --nohamming ranks a hashing model's real-valued outputs by cosine.")
    flags.DEFINE_integer("chunk", 65536, "--index exact: rows per block of the search (bounds memory).")
    flags.DEFINE_string("query_ids", None, "Optional text file, one id per query row.")
    flags.DEFINE_string("gallery_ids", None, "Optional text file, one id per gallery row.")
    flags.DEFINE_string("out", None, "Results file: .json or .csv (an existing file only with --overwrite).")
    flags.DEFINE_bool("overwrite", False, "Replace --out if it exists.")


def cli():
    define_flags()
    run.run_main(main)


if __name__ == "__main__":
    cli()
