"""Triplet-ranking cross-modal hashing: the training step, Hamming evaluation and the task for the
run driver (spec cmhash.md §3, §4, §6, §8a).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from cmhash_tf import losses
from cmhash_tf.config import CMHashConfig
from cmhash_tf.model import CMHashNetworks, HashHead, binarize
from common import distribute, driver, metrics, pipelines, run, training
from common.optimizers import TorchAdam
from common.dataset import Split
from common.errors import DataError


class CMHashTrainer:
    def __init__(self, cfg: CMHashConfig, image_dim: int, text_dim: int, nets: CMHashNetworks | None = None,
                 replicas: distribute.Replicas | None = None):
        """Heads on features of the given widths, or prebuilt `nets` (the end-to-end backbones,
        built by the caller inside `replicas.scope()`)."""
        self.cfg = cfg
        self.replicas = replicas or distribute.Replicas()
        with self.replicas.scope():
            self._build(nets, image_dim, text_dim)
        self.train_step = training.graph_function(self._train_step, reduce_retracing=True)
        self._image = None if cfg.text_only else training.graph_function(self.nets.image_head,
                                                                         reduce_retracing=True)
        self._text = training.graph_function(self.nets.text_head, reduce_retracing=True)

    def _build(self, nets, image_dim, text_dim):
        cfg = self.cfg
        self.nets = nets or CMHashNetworks(None if cfg.text_only else image_dim, text_dim, cfg.bits, cfg.hidden,
                                           init=cfg.head_init)
        if cfg.text_only:
            self.var_groups = {"text": ("text",)}
            rates = {"text": cfg.text_lr or cfg.lr}
        elif cfg.image_lr is None and cfg.text_lr is None:
            self.var_groups = {"joint": ("image", "text")}
            rates = {"joint": cfg.lr}
        else:
            self.var_groups = {"image": ("image",), "text": ("text",)}
            rates = {"image": cfg.image_lr or cfg.lr, "text": cfg.text_lr or cfg.lr}
        self.optimizers = {}
        for name, groups in self.var_groups.items():
            adam = TorchAdam if cfg.adam == "torch" else keras.optimizers.Adam
            opt = adam(rates[name], beta_1=0.9, beta_2=0.999, epsilon=1e-8)
            opt.build(self.nets.variables(*groups))
            self.optimizers[name] = opt

    def _train_step(self, image, text, labels):
        return self.replicas.run(self._replica_step, image, text, labels)

    def _replica_step(self, image, text, labels):
        """Heads on this replica's rows; triplets mined over the gathered global batch. Under a
        strategy, end-to-end batch-norm statistics are per replica (no cross-replica sync)."""
        cfg = self.cfg
        # training=True: BERT dropout and batch-norm statistics, as the release's train()
        text_head = lambda x: self.nets.text_head(x, training=True)  # noqa: E731
        with tf.GradientTape() as tape:
            if cfg.text_only:
                terms = losses.single_modality_loss(distribute.per_row(text_head, text), labels,
                                                    cfg.margin_value, cfg.mining)
            else:
                u = distribute.per_row(lambda x: self.nets.image_head(x, training=True), image)
                terms = losses.triplet_ranking_loss(u, distribute.per_row(text_head, text), labels,
                                                    cfg.margin_value, cfg.mining)
        grads = distribute.replica_share(tape.gradient(terms["loss"], self.group_variables()))
        # a batch without any triplet is skipped (the release crashed on it). Under a strategy the
        # update cannot sit in a tf.cond (it synchronises replicas), so such a batch is applied
        # with its zero gradient there: Adam's moments decay and its step count advances.
        if self.replicas.strategy is not None:  # one replica too: the optimiser's merge_call cannot sit in a cond
            self.apply_gradients(grads)
            terms["applied"] = terms["triplets"] > 0
        else:
            terms["applied"] = tf.cond(terms["triplets"] > 0, lambda: self.apply_gradients(grads),
                                       lambda: tf.constant(False))
        return terms

    def group_variables(self) -> dict:
        return {k: self.nets.variables(*g) for k, g in self.var_groups.items()}

    def apply_gradients(self, grads: dict):
        """One update per optimiser with PyTorch's coupled weight decay: wd * theta joins the
        gradient before Adam (dense, also for embedding tables whose gradient is IndexedSlices)."""
        for name, vs in self.group_variables().items():
            # each replica adds its 1/R share of the decay; the optimiser sums replica gradients
            g = [tf.convert_to_tensor(gi) + distribute.replica_share(self.cfg.weight_decay * vi)
                 for gi, vi in zip(grads[name], vs)]
            distribute.apply_gradients(self.optimizers[name], zip(g, vs))
        return tf.constant(True)

    def split_codes(self, split) -> tuple:
        """(image codes or None, text codes) of every item of a split."""
        if hasattr(split, "eval_batches"):  # end to end: images decoded and texts fed batch by batch
            parts, shown, t0 = [], time.time(), time.time()
            for b in split.eval_batches():
                parts.append((binarize(self._image(b["image"])), binarize(self._text(b["text"]))))
                if time.time() - shown >= driver.PROGRESS_SECONDS:  # thousands of images: minutes on a CPU
                    shown = time.time()
                    done = sum(len(p[1]) for p in parts)
                    print(f"  encoding {done:,} of {len(split):,} items ({shown - t0:.0f} s)", flush=True)
            return tuple(np.concatenate([np.asarray(p[i]) for p in parts]) for i in (0, 1))
        code = lambda fn: (lambda x: binarize(fn(x)))  # noqa: E731
        text = training.batched(code(self._text), split.text, 8192)
        if self.cfg.text_only:
            return None, text
        return training.batched(code(self._image), split.image, 8192), text

    def make_runner(self, train: Split, steps_per_execution: int = 0, jit_compile: bool = False):
        """Feature mode's epoch loop in the graph: reshuffled every epoch (release), mean loss
        and whether each batch had triplets."""
        return training.EpochRunner(self._train_step, pipelines.split_tensors(train), ("image", "text", "label"),
                                    ("loss", "applied"), self.cfg.batch_size, shuffle=True, seed=self.cfg.seed,
                                    steps_per_execution=steps_per_execution, jit_compile=jit_compile)

    def evaluate(self, queries, database, codes: bool = False, database_codes: Optional[tuple] = None):
        """Hamming mAP of the queries against the database (and the codes, for PR curves);
        `database_codes`: the database's `split_codes`, when another evaluation computed them."""
        qi, qt = self.split_codes(queries)
        di, dt = database_codes if database_codes is not None else self.split_codes(database)
        if self.cfg.text_only:
            t2t, excl = metrics.hashing_map(qt, dt, queries.labels, database.labels)
            out = {"t2t_map": t2t, "excluded_queries": excl}
        else:
            i2t, excl = metrics.hashing_map(qi, dt, queries.labels, database.labels)
            t2i, _ = metrics.hashing_map(qt, di, queries.labels, database.labels)
            out = {"i2t_map": i2t, "t2i_map": t2i, "excluded_queries": excl}
        return (out, (qi, qt, di, dt)) if codes else out


def map_keys(cfg: CMHashConfig) -> tuple:
    return ("t2t_map",) if cfg.text_only else ("i2t_map", "t2i_map")


def random_codes_map(queries: Split, database: Split, bits: int, seed: int = 0) -> float:
    """Chance level: mAP of independent random +-1 codes (averaged over both directions)."""
    rng = np.random.default_rng(seed)
    q = np.where(rng.random((len(queries), bits)) < 0.5, -1.0, 1.0)
    d = np.where(rng.random((len(database), bits)) < 0.5, -1.0, 1.0)
    return metrics.hashing_map(q, d, queries.labels, database.labels)[0]


class CMHashTask(driver.Task):
    """One bit length for `common.driver.fit`: an epoch (in the graph for features, batch by batch
    end to end), evaluation of validation and test queries against the database every `eval_every`."""

    key_losses = ("loss", "skipped_batches")

    def __init__(self, trainer: CMHashTrainer, val, queries, database, runner, position: Optional[dict] = None,
                 select_on_test: bool = False):
        self.trainer, self.val, self.queries, self.database = trainer, val, queries, database
        self.selection = "test" if select_on_test or val is None else "val"  # the epoch results.json reports
        self.runner, self.position = runner, position or {}
        self.replicas, self.num_units = trainer.replicas, trainer.cfg.epochs
        self.steps_per_unit = runner.steps
        self.part_way = runner.resumes_part_way  # end to end, or with --steps_per_execution
        self.keys = map_keys(trainer.cfg)
        self.headline = tuple(f"test/{k}" for k in self.keys)
        self.applied = 0  # batches with at least one triplet since the last record

    def models(self) -> dict:
        return self.trainer.nets.models()

    def checkpoint_objects(self) -> dict:
        t = self.trainer
        objects = dict(self.models(), **self.position)
        objects.update({f"opt_{k}": (o, t.nets.variables(*t.var_groups[k])) for k, o in t.optimizers.items()})
        return objects

    def encoders(self, image_dim: int, text_dim: int) -> dict:
        cfg = self.trainer.cfg
        head = lambda dim: (HashHead, {"bits": cfg.bits, "hidden": cfg.hidden, "input_dim": dim,  # noqa: E731
                                       "init": cfg.head_init})
        if cfg.text_only:  # tag -> tag hashing: the text head alone
            return dict(method="cmhash", models={"text_head": head(text_dim)}, image=None,
                        text={"dim": text_dim, "model": "text_head"}, hash_codes=True)
        return dict(method="cmhash", models={"image_head": head(image_dim), "text_head": head(text_dim)},
                    image={"dim": image_dim, "model": "image_head"}, text={"dim": text_dim, "model": "text_head"},
                    hash_codes=True)

    def train_unit(self, epoch: int, on_block=None, **resume) -> dict:
        values = self.runner.run_epoch(epoch, on_block=on_block, **resume)
        self.applied += int(np.sum(values["applied"] > 0))
        return values

    def before_record(self, evaluation: driver.Evaluation, history: list) -> None:
        """The run's count of applied batches goes into each record, so that a resumed or complete
        run still knows whether any update ever happened (older records lack it: unknown)."""
        prior = history[-1].get("applied_batches") if history else 0
        evaluation.record["applied_batches"] = None if prior is None else prior + self.applied
        self.applied = 0

    def pending(self) -> dict:
        return {"applied": self.applied}

    def restore_pending(self, pending: dict) -> None:
        self.applied = int(pending.get("applied", 0))

    def unit_losses(self, values: dict) -> dict:
        return {"loss": float(np.mean(values["loss"])), "skipped_batches": int(np.sum(values["applied"] == 0))}

    def evaluate_at(self, epoch: int) -> bool:
        return epoch % self.trainer.cfg.eval_every == 0

    def evaluate(self, epoch: int) -> driver.Evaluation:
        t, q, db = self.trainer, self.queries, self.database
        record = {"epoch": epoch}
        db_codes = t.split_codes(db)  # once for both query sets (end to end: minutes of backbone passes)
        if self.val is not None:
            record["val"] = t.evaluate(self.val, db, database_codes=db_codes)
        record["test"], (qi, qt, di, dt) = t.evaluate(q, db, codes=True, database_codes=db_codes)
        scalars = {f"{s}/{k}": v for s in ("val", "test") if s in record for k, v in record[s].items()}
        curves = {"t2t": (qt, dt, q.labels, db.labels, "hamming")} if t.cfg.text_only else {
            "i2t": (qi, dt, q.labels, db.labels, "hamming"), "t2i": (qt, di, q.labels, db.labels, "hamming")}
        return driver.Evaluation(record, scalars, curves)

    def selection_score(self, record: dict) -> float:
        return sum(record[self.selection][k] for k in self.keys)

    def summary(self, history: list) -> dict:
        best = max(history, key=self.selection_score)  # the first best: the model the driver kept
        return {"selected": dict(best["test"], epoch=best["epoch"], selected_on=self.selection),
                "final": history[-1]["test"]}


def fit(cfg: CMHashConfig, train, val, queries, database, out_dir: str, select_on_test: bool = False,
        trainer: Optional[CMHashTrainer] = None, runner=None, position: Optional[dict] = None,
        options: Optional[driver.FitOptions] = None, replicas=None, steps_per_execution: int = 0,
        jit_compile: bool = False, seed: int = 0) -> dict:
    """Train (or resume) one bit length in `out_dir`: feature heads and the in-graph epoch by
    default; end to end, a prebuilt `trainer` and `runner` (images read batch by batch).
    Returns the selected and final test numbers, seconds per epoch and chance level."""
    from common import export

    if trainer is None:
        trainer = CMHashTrainer(cfg, train.image.shape[1], train.text.shape[1], replicas=replicas)
        runner = trainer.make_runner(train, steps_per_execution, jit_compile)
    task = CMHashTask(trainer, val, queries, database, runner, position, select_on_test)
    if position is None and trainer.replicas.is_chief:  # feature heads export
        export.write_spec(out_dir, **task.encoders(train.image.shape[1], train.text.shape[1]))
    result = driver.fit(task, out_dir, options or driver.FitOptions(label=f"[{cfg.bits} bits]"))
    if result.history[-1].get("applied_batches") == 0:  # also when a complete run is re-run
        epochs = run.counted(sum(r.get("train_units", 0) for r in result.history), "epoch")
        raise DataError(f"no training batch of {cfg.batch_size} produced a triplet in {epochs} (every update was "
                        "skipped), so there is no result; a larger --batch_size or data with more label overlap is "
                        "needed (with --overwrite or another --output_dir)")
    out = task.summary(result.history)
    out.update(seconds_per_epoch=result.seconds_per_unit, trained=result.trained > 0,
               random_codes_map=random_codes_map(queries, database, cfg.bits, seed),
               config=dict(dataclasses.asdict(cfg), margin=cfg.margin_value))  # as trained (end to end: its lr)
    return out
