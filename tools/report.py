"""Results of runs, in one markdown table, next to the published numbers; plots of a model.

    python -m tools.report runs/jfse runs/acmr runs/cmhash --out docs/report.md
    python -m tools.report --model exported/acmr --features data/uci --plots plots/acmr

Finds every results.json under the given folders, and prints for each: method, dataset,
scenario or bit length, our i2t / t2i numbers (the contract's mAP@all, per-bit Hamming mAP
for hashing, P@50 for ZSCRGAN), the chance level of that number on the run's test set (a random
ranking's expected mAP@all or P@50; random codes for hashing), and the published numbers for
the same method, dataset and scenario from tools/published_results.json, each with its source,
and the run (with the flags that set it apart from other runs of its setting).
A missing published cell means no verified number exists for that setting (e.g. synthetic data).
A setting run with several seeds also gets its mean and sample standard deviation over them.
"""

from __future__ import annotations

import csv
import json
import os

import numpy as np
from absl import flags

from common import driver, io, run
from common.errors import ConfigError, DataError

FLAGS = flags.FLAGS

NOT_CONFIG = {"seed"} | set(run.LOGGING_FLAGS)  # what may differ between the seeds of one setting
PUBLISHED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "published_results.json")  # package data


def find_results(paths) -> tuple:
    """Every results.json under `paths`, and the run folders (they hold run.json) with none under
    them yet, from one walk of each folder."""
    found, runs, trained = [], [], []
    for p in paths:
        if os.path.isfile(p):
            found.append(p)
            continue
        if not os.path.isdir(p):
            raise DataError(f"{p}: no such file or folder")
        for root, dirs, files in sorted(os.walk(p)):
            if "results.json" in files:
                found.append(os.path.join(root, "results.json"))
            if "run.json" in files:
                runs.append(root)
            if "checkpoints" in dirs:
                trained.append(root)
    with_results = {os.path.dirname(f) for f in found}
    pending = [r for r in runs if not any(d == r or d.startswith(r + os.sep) for d in with_results)]
    # a model folder of a run (a JFSE scenario) still training while another one has its results
    # (JFSE's gzs results come from the zs folder's model: `--scenario gzs` leaves no zs/results.json)
    pending += [t for t in trained if t not in with_results and os.path.dirname(t) in runs
                and os.path.dirname(t) not in with_results and os.path.dirname(t) not in pending
                and not (os.path.basename(t) == "zs" and os.path.join(os.path.dirname(t), "gzs") in with_results)]
    pending = [pending_state(r) for r in sorted(pending)]
    if not found:
        raise DataError(f"no results.json under {', '.join(paths)}" + (
            f"; these runs have none yet (training, or stopped before their first result): {', '.join(pending)}"
            if pending else ""))
    return found, pending


def over_seeds(rows: list, fmt) -> list:
    """Mean ± sample standard deviation of every setting run with several seeds and otherwise equal
    flags (the way to compare methods, and the spread a difference must exceed)."""
    groups = {}
    for row in rows:
        key = (row["method"], row["dataset"], row["setting"], row["metric"], row["config"])
        by_seed = groups.setdefault(key, {})
        if row["seed"] not in by_seed or row["ended"] > by_seed[row["seed"]]["ended"]:
            by_seed[row["seed"]] = row  # one run per seed: its latest
    out = []
    for (method, dataset, setting, metric, _), by_seed in groups.items():
        if len(by_seed) < 2:
            continue

        def spread(side):
            values = [r[side] for r in by_seed.values() if r[side] is not None]
            if len(values) < len(by_seed):
                return "—"
            return f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}"

        chances = {round(r["chance"], 4) for r in by_seed.values() if r.get("chance") is not None}
        chance = fmt(next(iter(chances))) if len(chances) == 1 else ("varies" if chances else "—")
        seeds = ", ".join(str(s) for s in sorted(by_seed, key=lambda s: (s is None, s)))
        out.append(f"| {method} | {dataset} | {setting} | {metric} | {len(by_seed)} ({seeds}) | {spread('i2t')} | "
                   f"{spread('t2i')} | {chance} |")
    if not out:
        return []
    return ["", "Over seeds (runs whose flags differ only in --seed; the latest run of each seed): mean ± sample "
                "standard deviation", "",
            "| method | dataset | setting | metric | runs (seeds) | i2t | t2i | chance |",
            "|---|---|---|---|---|---|---|---|"] + out


def _family(method: str) -> str:
    return "acmr" if method.startswith("acmr") else ("jfse" if method in ("jfse", "cfsa") else method)


def rows_of(path: str) -> list:
    """One row per reported setting of one results.json."""
    r = io.read_json(path)
    if not isinstance(r, dict) or "method" not in r:
        raise DataError(f"{path}: not a results.json of this project (no 'method' entry); name its run folders "
                        "instead of a folder above it, or remove the file from the paths")
    try:
        return _rows(path, r)
    except (AttributeError, TypeError, ValueError, KeyError, IndexError) as e:
        raise DataError(f"{path}: unexpected content ({type(e).__name__}: {e})") from None


def _rows(path: str, r: dict) -> list:
    method, dataset = r.get("method", "?"), str(r.get("dataset", "?"))
    config = {k: v for k, v in (r.get("flags") or {}).items() if k not in NOT_CONFIG}
    base = {"method": method, "dataset": dataset, "path": path, "run": run_of(path, r), "seed": r.get("seed"),
            "config": json.dumps(config, sort_keys=True, default=str),
            "ended": str((r.get("provenance") or {}).get("ended") or ""),
            "warnings": [str(w) for w in (r.get("warnings") or [])]}
    if method == "cmhash":
        keys = [k for k in ("i2t_map", "t2i_map", "t2t_map") if k in r]
        bits = sorted(r[keys[0]], key=int) if keys else []
        metric = "Hamming mAP (tag→tag in the t2i column)" if "t2t_map" in r else "Hamming mAP"
        per_bits = r.get("per_bits") or {}
        return [dict(base, setting=f"{b} bits", bits=int(b), metric=metric, chance=per_bits.get(b, {}).get(
            "random_codes_map"), i2t=r.get("i2t_map", {}).get(b), t2i=r.get("t2i_map", r.get("t2t_map", {})).get(b))
            for b in bits]
    if method == "zscrgan":
        # results.json is rewritten every cycle: a stopped or running run says how far it got
        done, planned = r.get("cycles"), r.get("cycles_planned")
        partial = f", after cycle {done} of {planned}" if done is not None and planned and done < planned else ""
        return [dict(base, setting="zero-shot (unseen)", scenario="zs", metric="P@50, best cycle on test (release)",
                     i2t=None, t2i=r.get("p50_best"), chance=r.get("p50_chance"),
                     extra=f"P@50 last {r.get('p50_last', float('nan')):.4f}, "
                           f"t2i mAP@all {r.get('t2i_map_all', float('nan')):.4f}{partial}")]
    # results written before the baseline recorded its scenario: a zero-shot fit says so in its flags
    scenario = r.get("scenario") or ("zs" if (r.get("flags") or {}).get("zero_shot") else "standard")
    out = [dict(base, setting=scenario, scenario=scenario, metric="mAP@all",
                i2t=r.get("i2t_map_all"), t2i=r.get("t2i_map_all"), chance=r.get("chance_map_all"))]
    if "seen_i2t_map_all" in r:
        out.append(dict(base, setting="zs (seen classes)", scenario="zs_seen", metric="mAP@all",
                        i2t=r["seen_i2t_map_all"], t2i=r["seen_t2i_map_all"], chance=r.get("seen_chance_map_all")))
    if "gzs_i2t_map_all" in r and scenario != "gzs":  # a zero-shot baseline also reports the pooled test set
        out.append(dict(base, setting="gzs (pooled)", scenario="gzs", metric="mAP@all",
                        i2t=r["gzs_i2t_map_all"], t2i=r["gzs_t2i_map_all"], chance=r.get("gzs_chance_map_all")))
    hash_bits = sorted({int(k.split("_")[1]) for k in r if k.startswith("hash_") and k.endswith("_i2t_map")})
    for b in hash_bits:  # the baseline's CCA-then-sign codes (--hash_bits)
        out.append(dict(base, setting=f"{b} bits (sign of CCA)", metric="Hamming mAP",
                        i2t=r[f"hash_{b}_i2t_map"], t2i=r.get(f"hash_{b}_t2i_map")))
    return out


def what_differs(rows: list) -> list:
    """Per row, the flags that set it apart from the other rows of its setting (`; epochs=2`), so
    that two runs of one method and data with other settings can be told apart in the table."""
    groups = {}
    for n, row in enumerate(rows):
        groups.setdefault((row["method"], row["dataset"], row["setting"], row["metric"]), []).append(n)
    out = [""] * len(rows)
    for members in groups.values():
        configs = [json.loads(rows[n]["config"]) for n in members]
        keys = sorted({k for c in configs for k in c if len({json.dumps(d.get(k), default=str) for d in configs}) > 1})
        for n, config in zip(members, configs):
            if keys:
                out[n] = "; " + ", ".join(f"{k}={config.get(k, '—')}" for k in keys)
    return out


def run_of(path: str, results: dict) -> str:
    """Which run a row comes from: its folder, the commit and seed, and when it ended."""
    p = results.get("provenance") or {}
    commit = (p.get("git_commit") or "")[:8] + ("+" if p.get("git_dirty") else "")
    parts = [os.path.dirname(path) or ".", f"seed {results.get('seed', '?')}"]
    if commit:
        parts.append(commit)
    if p.get("ended"):
        parts.append(p["ended"][:16].replace("T", " "))
    pid = driver.writer(os.path.dirname(path) or ".")
    if pid:  # e.g. ZSCRGAN rewrites its results every cycle; a cmhash code length of a longer run
        parts.append(f"still training (PID {pid})")
    return ", ".join(parts)


def pending_state(folder: str) -> str:
    """A run folder without results: training now (its PID) or stopped (resume with its command)."""
    pid = driver.writer(folder)
    return f"{folder} (training, PID {pid})" if pid else f"{folder} (stopped)"


def published_for(row: dict, groups: list) -> list:
    out = []
    for g in groups:
        if g["method"] != _family(row["method"]):
            continue
        for e in g["entries"]:
            if e["dataset"] != row["dataset"].split(":")[0]:
                continue
            if "bits" in e and e["bits"] != row.get("bits"):
                continue
            if "scenario" in e and e["scenario"] != row.get("scenario"):
                continue
            out.append((g.get("label", g["method"].upper()), e["i2t"], e["t2i"], g["source"]))
    return out


CSV_COLUMNS = ("method", "dataset", "setting", "metric", "i2t", "t2i", "chance", "seed", "differs", "results",
               "warnings")


def collect(paths) -> tuple:
    """(rows, the flags that set each apart, runs without results yet) of every results.json under `paths`."""
    found, pending = find_results(paths)
    rows, unreadable = [], []
    for path in found:  # every unreadable file named at once, not one per attempt
        try:
            rows += rows_of(path)
        except DataError as e:
            unreadable.append(str(e))
    if len(unreadable) == 1:
        raise DataError(unreadable[0])
    if unreadable:
        raise DataError(f"{len(unreadable)} of {len(found)} results files cannot be reported: " + "; ".join(unreadable))
    return rows, what_differs(rows), pending


def write_csv(path: str, paths, collected: tuple | None = None) -> int:
    """The table's rows as CSV, one per reported number pair (for pandas or a spreadsheet);
    `differs` holds the flags that set a run apart from the others of its setting."""
    rows, differences, _ = collected or collect(paths)
    with io.atomic_open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        for row, diff in zip(rows, differences):
            w.writerow([row["method"], row["dataset"], row["setting"], row["metric"], row["i2t"], row["t2i"],
                        row.get("chance"), row["seed"], diff.removeprefix("; "), row["path"],
                        " | ".join(row["warnings"])])
    return len(rows)


def report(paths, published: str = PUBLISHED, collected: tuple | None = None) -> str:
    groups = io.read_json(published)["groups"]  # shipped with the package: missing is a broken install
    fmt = lambda v: "—" if v is None else f"{v:.4f}"  # noqa: E731
    lines = ["| method | dataset | setting | metric | ours i2t / t2i | chance | published i2t / t2i | source | run |",
             "|---|---|---|---|---|---|---|---|---|"]
    sources, warned = {}, {}
    all_rows, differences, pending = collected or collect(paths)
    for n, row in enumerate(all_rows):
        pub = published_for(row, groups)
        mark = ""
        if row["warnings"]:  # a result the run itself qualified: marked, its warnings listed below
            warned.setdefault(row["path"], (len(warned) + 1, row["warnings"]))
            mark = f" (warnings [w{warned[row['path']][0]}])"
        ours = f"{fmt(row['i2t'])} / {fmt(row['t2i'])}" + (f" ({row['extra']})" if row.get("extra") else "")
        cells = "; ".join(f"{label} {i:g} / {t:g}" for label, i, t, _ in pub) or "—"  # as published
        refs = []
        for *_, src in pub:
            sources.setdefault(src, len(sources) + 1)
            refs.append(f"[{sources[src]}]")
        lines.append(f"| {row['method']} | {row['dataset']} | {row['setting']} | {row['metric']} | {ours} | "
                     f"{fmt(row.get('chance'))} | {cells} | {' '.join(dict.fromkeys(refs)) or '—'} | {row['run']}"
                     f"{differences[n]}{mark} |")
    lines += over_seeds(all_rows, fmt)
    lines.append("")
    lines += [f"[{n}] {src}" for src, n in sources.items()]
    for path, (n, texts) in warned.items():  # as the runs printed them and kept them in results.json
        lines += [f"[w{n}] {os.path.dirname(path) or '.'}: " + " / ".join(texts)]
    if pending:
        lines += ["", f"Not listed, no results.json yet (training, or stopped before their first result): "
                      f"{', '.join(pending)}"]
    return "\n".join(lines) + "\n"


def pr_curves_and_projector(model_dir: str, features_dir: str, out_dir: str, use_matplotlib: bool = True) -> dict:
    """Test-split embeddings of an exported model: i2t / t2i precision-recall curves (PNG with
    matplotlib, else TensorBoard PR-curve summaries) and a TensorBoard embedding-projector export
    (image and text embeddings with modality and class label)."""
    import numpy as np
    import tensorflow as tf

    from common import metrics, readers, training
    from common.dataset import relevance
    from tools.search import encode

    ds = readers.read_feature_folder(features_dir)
    test = ds.test
    model = tf.saved_model.load(model_dir)
    source = f"{features_dir} (test split)"
    img = encode(model, "image", test.image, hamming=False, model_dir=model_dir, source=source)
    txt = encode(model, "text", test.text, hamming=False, model_dir=model_dir, source=source)
    # a hashing model is evaluated on its codes: its curves rank by Hamming distance, as its mAP
    hashing = "hash_image" in model.signatures and "hash_text" in model.signatures
    distance = "hamming" if hashing else "cosine"
    code = lambda e: np.where(e >= 0, 1.0, -1.0)  # noqa: E731  (the export's hash_* signatures, tools/export.py)
    ranked_img, ranked_txt = (code(img), code(txt)) if hashing else (img, txt)
    os.makedirs(out_dir, exist_ok=True)
    curves = {"i2t": metrics.precision_recall_curve(ranked_img, ranked_txt, test.labels, test.txt_labels,
                                                    distance=distance),
              "t2i": metrics.precision_recall_curve(ranked_txt, ranked_img, test.txt_labels, test.labels,
                                                    distance=distance),
              "distance": distance}
    io.write_json(os.path.join(out_dir, "pr_curves.json"), curves)
    written = {"pr_curves.json": True}
    plt = None
    if use_matplotlib:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            plt = None
    if plt is not None:
        fig, ax = plt.subplots(figsize=(5, 4), layout="constrained")  # keeps the axis labels inside
        for name in ("i2t", "t2i"):
            ax.plot(curves[name]["recall"], curves[name]["precision"], label=name)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_title(f"{os.path.basename(os.path.normpath(model_dir))}: test split ({distance} ranking)")
        ax.legend()
        fig.savefig(os.path.join(out_dir, "pr_curves.png"), dpi=120)
        plt.close(fig)
        written["pr_curves.png"] = True
    else:  # TensorBoard's PR-curve plugin over scores in [0, 1]: cosine, or 1 - Hamming / K for codes
        writer = training.SummaryWriter(os.path.join(out_dir, "tb"))
        rel = relevance(test.labels, test.txt_labels)
        n = lambda x: x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)  # noqa: E731
        score = (1 + n(ranked_img) @ n(ranked_txt).T) / 2  # for +-1 codes this is 1 - Hamming / K
        writer.pr_curve("i2t", rel, score, 0)
        writer.pr_curve("t2i", rel.T, score.T, 0)
        writer.flush()
        written["tb"] = True
    # embedding projector: one tensor with both modalities, metadata rows "modality<TAB>label"
    from tensorboard.plugins import projector

    proj = os.path.join(out_dir, "projector")
    os.makedirs(proj, exist_ok=True)
    labels = [str(int(v)) if np.ndim(v) == 0 else ",".join(map(str, np.flatnonzero(v)))
              for v in list(test.labels) + list(test.txt_labels)]
    names = ds.class_names
    if names and test.labels.ndim == 1:
        labels = [names[int(v)] for v in list(test.labels) + list(test.txt_labels)]
    with io.atomic_open(os.path.join(proj, "metadata.tsv")) as f:
        f.write("modality\tlabel\n" + "".join(f"{m}\t{lab}\n" for m, lab in
                                               zip(["image"] * len(img) + ["text"] * len(txt), labels)))
    emb = tf.Variable(np.concatenate([img, txt]).astype(np.float32), name="embedding")
    tf.train.Checkpoint(embedding=emb).save(os.path.join(proj, "embedding.ckpt"))
    cfg = projector.ProjectorConfig()
    e = cfg.embeddings.add()
    e.tensor_name = "embedding/.ATTRIBUTES/VARIABLE_VALUE"
    e.metadata_path = "metadata.tsv"
    projector.visualize_embeddings(proj, cfg)
    written["projector"] = True
    return written


def main(argv):
    if FLAGS.overwrite and not (FLAGS.out or FLAGS.plots):
        raise ConfigError("--overwrite replaces the file of --out or the folder of --plots; give one of them")
    if FLAGS.model or FLAGS.features or FLAGS.plots:  # one without the others would be ignored
        if not (FLAGS.model and FLAGS.features and FLAGS.plots):
            raise ConfigError("--model, --features and --plots go together")
        io.check_output_dir(FLAGS.plots, FLAGS.overwrite, owned="pr_curves.json", flag="--plots", what="report")
        run.import_tensorflow()
        with io.replacing_dir(FLAGS.plots) as tmp:  # a previous report's curves and events never mix with these
            written = pr_curves_and_projector(FLAGS.model, FLAGS.features, tmp)
        print(f"{FLAGS.plots}: {', '.join(written)} (tensorboard --logdir {FLAGS.plots}/projector for the projector)")
        if len(argv) < 2:
            return
    if len(argv) < 2:
        raise ConfigError("give one or more run folders or results.json files, e.g. `cmr report runs/`")
    if FLAGS.out:
        io.check_output_file(FLAGS.out, FLAGS.overwrite)
    collected = collect(argv[1:])  # one walk and read for the table and the CSV
    text = report(argv[1:], collected=collected)
    if FLAGS.out and FLAGS.out.endswith(".csv"):
        write_csv(FLAGS.out, argv[1:], collected)
    elif FLAGS.out:
        with io.atomic_open(FLAGS.out) as f:
            f.write(text)
    print(text, end="")


def define_flags():
    flags.DEFINE_string("out", None, "Also write the table to this file: markdown, or CSV for a name ending in "
                        ".csv (one row per number pair; an existing file only with --overwrite).")
    flags.DEFINE_bool("overwrite", False, "Replace --out or a previous --plots folder.")
    flags.DEFINE_string("model", None, "Exported model (tools.export) for PR curves and the projector.")
    flags.DEFINE_string("features", None, "Feature folder whose test split is embedded.")
    flags.DEFINE_string("plots", None, "Output folder for pr_curves.(png|json), tb/ and projector/.")


def cli():
    define_flags()
    run.run_main(main)


if __name__ == "__main__":
    cli()
