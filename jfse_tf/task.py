"""JFSE's training step (spec jfse.md §4), the release's evaluation (§6), and its task for the run driver.

One compiled step per batch holds the n_critic critic updates (same batch, same noise, fresh
alpha each) and the joint generator / regressor / modality-classifier update, whose three
gradient sets come from one forward pass on pre-update weights; a final forward pass only
computes the 14 logged losses (with a fresh alpha, as the release).
"""

from __future__ import annotations

from typing import Callable, Dict, Optional

import keras
import numpy as np
import tensorflow as tf

from common import distribute, driver, metrics, pipelines, training
from common.dataset import Split
from common.layers import grl_schedule
from jfse_tf import losses
from jfse_tf.config import JFSEConfig
from jfse_tf.model import JFSENetworks, Regressor

LOSS_NAMES = ("loss_D", "loss_G", "loss_Re", "loss_corr", "loss_adv", "loss_cyc", "loss_ori_cyc_img",
              "loss_ori_cyc_txt", "loss_cyc_img", "loss_cyc_txt", "loss_ori_corr", "loss_sys_corr",
              "loss_ori_adv", "loss_sys_adv")
VARIANTS = ("raw", "softmax", "minmax", "minmax_softmax")


class JFSETrainer:
    """Owns the networks, the four Adam optimisers, the noise generator and the GRL scale."""

    def __init__(self, cfg: JFSEConfig, image_dim: int, text_dim: int, emb_dim: int, num_classes: int,
                 unseen_class_emb: Optional[np.ndarray] = None, unseen_classes: Optional[np.ndarray] = None,
                 replicas: Optional[distribute.Replicas] = None):
        self.cfg, self.num_classes = cfg, num_classes
        self.replicas = replicas or distribute.Replicas()
        self.unseen = None
        if cfg.synthesize_unseen:
            if unseen_class_emb is None or len(unseen_class_emb) == 0:
                raise ValueError("synthesize_unseen needs the unseen classes' embeddings (a zero-shot scenario)")
            self.unseen = (tf.constant(unseen_class_emb, tf.float32), tf.constant(unseen_classes, tf.int64))
        self.optimizers = {}
        with self.replicas.scope():
            self.nets = JFSENetworks(image_dim, text_dim, emb_dim, cfg.noise_dim, cfg.hidden)
            for group in self.nets.groups:
                opt = keras.optimizers.Adam(cfg.lr, beta_1=cfg.beta1, beta_2=cfg.beta2, epsilon=cfg.epsilon)
                opt.build(self.nets.variables(group))
                self.optimizers[group] = opt
            self.grl_scale = tf.Variable(0.0, trainable=False, name="grl_scale")
        # outside the strategy: noise is drawn once for the global batch, before the replicas run
        self.rng = tf.random.Generator.from_seed(cfg.seed)
        self.weights = {k: tf.constant(float(v)) for k, v in cfg.weights.items()}
        self.align = losses.ALIGNMENTS[cfg.align]
        self.train_step = training.graph_function(self._train_step, reduce_retracing=True)
        self._embed_image = training.graph_function(self.nets.image_regressor, reduce_retracing=True)
        self._embed_text = training.graph_function(self.nets.text_regressor, reduce_retracing=True)

    # ------------------------------------------------------------------ step

    def _draw_noise(self, batch) -> dict:
        """Every random number of one step, for the global batch, in the release's draw order
        (z_v, z_t, then alpha_v, alpha_t per critic update, unseen draws, logging alphas)."""
        rng, nd = self.rng, self.cfg.noise_dim
        noise = {"z_v": rng.normal([batch, nd]), "z_t": rng.normal([batch, nd])}
        noise["alpha"] = [(rng.uniform([batch, 1]), rng.uniform([batch, 1])) for _ in range(self.cfg.n_critic)]
        if self.unseen is not None:
            noise["unseen"] = (rng.uniform([batch], 0, tf.shape(self.unseen[0])[0], dtype=tf.int32),
                               rng.normal([batch, nd]), rng.normal([batch, nd]))
        noise["alpha_log"] = (rng.uniform([batch, 1]), rng.uniform([batch, 1]))
        return noise

    def _critic_terms(self, v, t, c, fake_v, fake_t, alpha):
        n = self.nets
        gp_v = losses.gradient_penalty(n.image_critic, v, fake_v, c, alpha[0], self.cfg.gp_lambda)
        gp_t = losses.gradient_penalty(n.text_critic, t, fake_t, c, alpha[1], self.cfg.gp_lambda)
        return (losses.critic_loss(*self._scores(n.image_critic, v, fake_v, c), gp_v)
                + losses.critic_loss(*self._scores(n.text_critic, t, fake_t, c), gp_t))

    @staticmethod
    def _scores(critic, real, fake, c):
        """D(real), D(fake). With shared bfloat16 casts in one call on both halves (rows are
        independent): one kernel gradient instead of two summed in bfloat16; float32 keeps the
        release's two calls and their float32 sum."""
        if distribute.casts_shared():
            return tf.split(distribute.per_row(critic, tf.concat([real, fake], 0), tf.concat([c, c], 0)), 2)
        return distribute.per_row(critic, real, c), distribute.per_row(critic, fake, c)

    def _generate(self, c, z_v, z_t):
        n = self.nets
        return distribute.per_row(n.image_generator, c, z_v), distribute.per_row(n.text_generator, c, z_t)

    def _joint_terms(self, v, t, c, y, z_v, z_t):
        n, scale = self.nets, self.grl_scale
        fake_v, fake_t = self._generate(c, z_v, z_t)
        e_v, e_t = distribute.per_row(n.image_regressor, v), distribute.per_row(n.text_regressor, t)
        s_v, s_t = distribute.per_row(n.image_regressor, fake_v), distribute.per_row(n.text_regressor, fake_t)
        terms = {
            "g_adv_img": losses.generator_adversarial_loss(distribute.per_row(n.image_critic, fake_v, c)),
            "g_adv_txt": losses.generator_adversarial_loss(distribute.per_row(n.text_critic, fake_t, c)),
            "cyc_img": losses.regression_loss(s_v, c), "cyc_txt": losses.regression_loss(s_t, c),
            "reg_img": losses.regression_loss(e_v, c), "reg_txt": losses.regression_loss(e_t, c),
            "adv_syn": losses.modality_loss(n.modality_classifier(s_v, scale), n.modality_classifier(s_t, scale)),
            "adv_real": losses.modality_loss(n.modality_classifier(e_v, scale), n.modality_classifier(e_t, scale)),
            "align_real": self.align(e_v, e_t, y), "align_syn": self.align(s_v, s_t, y),
        }
        return terms, fake_v, fake_t

    def _unseen_synthesis_term(self, draws):
        """--synthesize_unseen (not in the release): the regressors also learn from generated
        features of unseen classes, made from their class embeddings alone.

        Same form and weight as the synthetic seen-class terms (cycle regression + alignment);
        the generators get no gradient from it, so unseen classes never shape the synthesis.
        """
        emb, ids = self.unseen
        pick, z_v, z_t = draws
        c = tf.gather(emb, pick)
        if self.cfg.norm == "batch_minmax":
            c = losses.batch_minmax(c)
        y = tf.one_hot(tf.gather(ids, pick), self.num_classes)
        n = self.nets
        fake_v, fake_t = (tf.stop_gradient(f) for f in self._generate(c, z_v, z_t))
        s_v, s_t = distribute.per_row(n.image_regressor, fake_v), distribute.per_row(n.text_regressor, fake_t)
        return (losses.regression_loss(s_v, c) + losses.regression_loss(s_t, c)
                + self.weights["w_align_syn"] * self.align(s_v, s_t, y))

    def _normalise(self, v, t, c):
        if self.cfg.norm == "batch_minmax":
            return losses.batch_minmax(v), losses.batch_minmax(t), losses.batch_minmax(c)
        return v, t, c

    def _train_step(self, image, text, class_emb, labels, replica_step=None):
        noise = self._draw_noise(tf.shape(image)[0])
        return self.replicas.run(replica_step or self._replica_step, image, text, class_emb, labels, noise)

    def xla_step(self) -> Callable:
        """The step with everything after the noise draw compiled by XLA. The draw stays outside:
        XLA's kernels for `tf.random.Generator` produce other numbers than TF's from the same state."""
        compiled = training.graph_function(self._replica_step, jit_compile=True)
        return lambda *batch: self._train_step(*batch, replica_step=compiled)

    def _replica_step(self, image, text, class_emb, labels, noise):
        """Per-batch min-max and every loss on the global batch; networks on this replica's rows."""
        v, t, c = self._normalise(image, text, class_emb)
        y = tf.one_hot(labels, self.num_classes)
        z_v, z_t = noise["z_v"], noise["z_t"]  # drawn once per batch (release)
        w = self.weights
        critic_vars, critics = self.nets.variables("critics"), self.nets.groups["critics"]
        everything = self.nets.models().values()
        # the generators do not move while the critics train (the release ran them at each of the
        # n_critic updates, from the same noise): one pass, the same values
        with distribute.cast_once(*self.nets.groups["generators"]):
            fake_v, fake_t = self._generate(c, z_v, z_t)
        for alpha in noise["alpha"]:
            with tf.GradientTape() as tape, distribute.cast_once(*critics):
                loss_d = self._critic_terms(v, t, c, fake_v, fake_t, alpha)
            grads = distribute.replica_share(tape.gradient(loss_d, critic_vars))
            distribute.apply_gradients(self.optimizers["critics"], zip(grads, critic_vars))
        with tf.GradientTape(persistent=True) as tape, distribute.cast_once(*everything):
            terms, _, _ = self._joint_terms(v, t, c, y, z_v, z_t)
            loss_g = losses.generator_objective(terms, w)
            loss_r = losses.regressor_objective(terms, w)
            loss_mc = terms["adv_syn"] + terms["adv_real"]
            if self.unseen is not None:
                unseen_term = self._unseen_synthesis_term(noise["unseen"])
                loss_r += w["w_syn_r"] * unseen_term
        updates = [("generators", loss_g), ("regressors", loss_r)]
        if self.cfg.train_modality_classifier:
            updates.append(("modality_classifier", loss_mc))
        grads = [(g, distribute.replica_share(tape.gradient(loss, self.nets.variables(g)))) for g, loss in updates]
        del tape
        for group, g in grads:  # all gradients taken before any update (simultaneous)
            distribute.apply_gradients(self.optimizers[group], zip(g, self.nets.variables(group)))
        # logging pass (release: post-update values, fresh alpha for loss_D)
        with distribute.cast_once(*everything):
            terms, fake_v, fake_t = self._joint_terms(v, t, c, y, z_v, z_t)
            loss_d = self._critic_terms(v, t, c, fake_v, fake_t, noise["alpha_log"])
        extra = {"loss_unseen_syn": unseen_term} if self.unseen is not None else {}
        return {**extra,
            "loss_D": loss_d,
            "loss_G": losses.generator_objective(terms, w), "loss_Re": losses.regressor_objective(terms, w),
            "loss_corr": w["w_align_real"] * terms["align_real"] + w["w_align_syn"] * terms["align_syn"],
            "loss_adv": terms["adv_syn"] + terms["adv_real"],
            "loss_cyc": terms["reg_img"] + terms["reg_txt"] + terms["cyc_img"] + terms["cyc_txt"],
            "loss_ori_cyc_img": terms["reg_img"], "loss_ori_cyc_txt": terms["reg_txt"],
            "loss_cyc_img": terms["cyc_img"], "loss_cyc_txt": terms["cyc_txt"],
            # the release printed the alignment terms with their 1e-4 weights
            "loss_ori_corr": w["w_align_real"] * terms["align_real"],
            "loss_sys_corr": w["w_align_syn"] * terms["align_syn"],
            "loss_ori_adv": terms["adv_real"], "loss_sys_adv": terms["adv_syn"],
        }

    # ------------------------------------------------------------------ evaluation

    def embed(self, image: np.ndarray, text: np.ndarray, batch: int = 4096):
        """Regressor outputs of both modalities (the common space), in batches."""
        return training.batched(self._embed_image, image, batch), training.batched(self._embed_text, text, batch)

    def evaluate(self, split: Split, embeddings: bool = False):
        """The release's four test-time variants, each scored with `metrics.jfse_map` (and the
        min-max variant's embeddings, those the contract's mAP@all ranks)."""
        wanted = VARIANTS if self.cfg.eval_variants == "all" else ("minmax",)
        out = {}
        raw = self.embed(split.image, split.text)
        scaled = self.embed(_minmax_np(split.image), _minmax_np(split.text))
        for name in wanted:
            emb = scaled if name.startswith("minmax") else raw
            if name.endswith("softmax"):
                emb = tuple(_softmax_np(e) for e in emb)
            out[name] = metrics.jfse_map(emb[0], emb[1], split.labels, split.txt_labels)
        out["_contract"] = metrics.cross_modal_map_all(scaled[0], scaled[1], split.labels, split.txt_labels)
        return (out, scaled) if embeddings else out

    # ------------------------------------------------------------------ loop

    def make_runner(self, train: Split, class_emb_rows: np.ndarray, steps_per_execution: int = 0,
                    jit_compile: bool = False) -> training.EpochRunner:
        """The epoch loop in the graph: batches in file order (or reshuffled per epoch), every
        step's 14 logged losses (plus the unseen-synthesis term) per batch."""
        tensors = dict(pipelines.split_tensors(train), class_emb=tf.constant(class_emb_rows, tf.float32))
        outputs = LOSS_NAMES + (("loss_unseen_syn",) if self.unseen is not None else ())
        step = self.xla_step() if jit_compile else self._train_step
        return training.EpochRunner(step, tensors, ("image", "text", "class_emb", "label"), outputs,
                                    self.cfg.batch_size, self.cfg.shuffle, self.cfg.seed,
                                    steps_per_execution=steps_per_execution, tail_step=self._train_step)


def _minmax_np(x: np.ndarray) -> np.ndarray:
    lo, hi = x.min(axis=0), x.max(axis=0)
    span = hi - lo
    return np.where(span > 0, (x - lo) / np.where(span > 0, span, 1.0), 0.0).astype(np.float32)


def _softmax_np(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def format_eval(record: dict, label: str = "") -> str:
    """The release's per-evaluation block: each test-time variant (z-scored, cosine mAP@all), then
    the running MAX / MAX2 lines (spec §6, §10.16), then the contract's number."""
    lines = [f"{label}epoch {record['epoch']} evaluation, the release's four test-time variants (each modality "
             "z-scored with its own test statistics, cosine mAP@all):"]
    for name, variants in record["test"].items():
        for variant, r in variants.items():
            if not variant.startswith("_"):
                lines.append(f"  {name:>8} {variant:<15} i2t {r['i2t']:.4f}  t2i {r['t2i']:.4f}  avg {r['avg']:.4f}")
        c = variants["_contract"]
        lines.append(f"  {name:>8} {'contract':<15} i2t {c['i2t_map_all']:.4f}  t2i {c['t2i_map_all']:.4f}  "
                     "(min-max test inputs, no z-scoring: results.json's i2t_map_all / t2i_map_all)")
    return "\n".join(lines)


def max_lines(history: list, set_name: str, eval_every: int = 1) -> str:
    """The release's running maxima over every evaluated epoch and variant, selected on the TEST set."""
    s = summarise(history, set_name, eval_every)
    best, best2 = s["test_selected_max"], s["test_selected_max2"]
    last = history[-1]["epoch"]
    off = (f"; epoch {last} is off the release's every-{eval_every} schedule, not counted"
           if last % eval_every else "")
    return (f"  MAX:  {best['i2t']:.4f} {best['t2i']:.4f} {best['avg']:.4f} (epoch {best['epoch']}, {best['variant']}; "
            f"best average, selected on test{off})\n"
            f"  MAX2: {best2['i2t']:.4f} {best2['t2i']:.4f} {best2['avg']:.4f} (epoch {best2['epoch']}, "
            f"{best2['variant']}; best i2t, selected on test)")


def summarise(history: list, set_name: str, eval_every: int = 1) -> dict:
    """Release's MAX / MAX2 (test-selected, over the evaluations the release made: epochs 0, eval_every,
    ...; the extra evaluation of a last epoch off that schedule is only `final`), the final epoch,
    and the validation-selected point."""
    points = [(rec["epoch"], v, r) for rec in history if rec["epoch"] % eval_every == 0
              for v, r in rec["test"][set_name].items() if not v.startswith("_")]
    best_avg = max(points, key=lambda p: p[2]["avg"])
    best_i2t = max(points, key=lambda p: p[2]["i2t"])
    last = history[-1]
    out = {"test_selected_max": dict(best_avg[2], epoch=best_avg[0], variant=best_avg[1]),
           "test_selected_max2": dict(best_i2t[2], epoch=best_i2t[0], variant=best_i2t[1]),
           "final": {v: r for v, r in last["test"][set_name].items() if not v.startswith("_")},
           "contract": last["test"][set_name]["_contract"]}
    if "val" in last:
        vals = [(i, v, r) for i, rec in enumerate(history) for v, r in rec["val"].items() if not v.startswith("_")]
        i, variant, _ = max(vals, key=lambda p: p[2]["avg"])
        out["val_selected"] = dict(history[i]["test"][set_name][variant], epoch=history[i]["epoch"], variant=variant)
    return out


class JFSETask(driver.Task):
    """JFSE for `common.driver.fit`: an in-graph epoch; every `eval_every` epochs (and the last) the
    release's four-variant evaluation of each test set (and of the validation split, if any)."""

    def __init__(self, trainer: JFSETrainer, train: Split, class_emb_rows: np.ndarray, eval_sets: Dict[str, Split],
                 val: Optional[Split] = None, steps_per_execution: int = 0, jit_compile: bool = False,
                 label: str = ""):
        self.trainer, self.eval_sets, self.val, self.label = trainer, eval_sets, val, label
        self.replicas = trainer.replicas
        self.runner = trainer.make_runner(train, class_emb_rows, steps_per_execution, jit_compile)
        self.steps_per_unit = self.runner.steps
        self.part_way = self.runner.resumes_part_way  # its noise generator is checkpointed (`rng`)
        self.num_units = trainer.cfg.epochs
        first = next(iter(eval_sets))
        self.headline = (f"test/{first}/i2t_map_all", f"test/{first}/t2i_map_all")
        self.key_losses = ("loss_D", "loss_G", "loss_Re")

    def models(self) -> dict:
        return self.trainer.nets.models()

    def checkpoint_objects(self) -> dict:
        t = self.trainer
        objects = dict(self.models(), rng=t.rng, grl=t.grl_scale)
        objects.update({f"opt_{g}": (o, t.nets.variables(g)) for g, o in t.optimizers.items()})
        return objects

    def encoders(self, emb_dim: int) -> dict:
        dims = self.trainer.nets.dims
        reg = lambda side: (Regressor, {"emb_dim": int(emb_dim), "hidden": self.trainer.cfg.hidden,  # noqa: E731
                                        "input_dim": dims[side]})
        return dict(method=self.trainer.cfg.method,
                    models={"image_regressor": reg("image"), "text_regressor": reg("text")},
                    image={"dim": dims["image"], "model": "image_regressor"},
                    text={"dim": dims["text"], "model": "text_regressor"},
                    notes="The release's headline evaluation min-max scales each test split's features per column "
                          "(that split's own min and max) before embedding; do the same to compare.")

    def train_unit(self, epoch: int, on_block=None, **resume) -> dict:
        self.trainer.grl_scale.assign(float(grl_schedule(epoch, self.num_units)))
        return self.runner.run_epoch(epoch, on_block=on_block, **resume)

    def evaluate_at(self, epoch: int) -> bool:
        return epoch % self.trainer.cfg.eval_every == 0

    def evaluate(self, epoch: int) -> driver.Evaluation:
        record, scalars, curves = {"epoch": epoch, "test": {}}, {}, {}
        for name, split in self.eval_sets.items():
            result, (e_v, e_t) = self.trainer.evaluate(split, embeddings=True)
            record["test"][name] = result
            scalars.update(_eval_scalars(f"test/{name}", result))
            if not curves:  # the first (headline) set
                curves = {"i2t": (e_v, e_t, split.labels, split.txt_labels, "cosine"),
                          "t2i": (e_t, e_v, split.txt_labels, split.labels, "cosine")}
        if self.val is not None:
            record["val"] = self.trainer.evaluate(self.val)
            scalars.update(_eval_scalars("val", record["val"]))
        return driver.Evaluation(record, scalars, curves)

    def after_record(self, evaluation: driver.Evaluation, history: list) -> None:
        print(format_eval(evaluation.record, self.label), flush=True)
        print(max_lines(history, next(iter(self.eval_sets)), self.trainer.cfg.eval_every), flush=True)


def _eval_scalars(prefix: str, result: dict) -> dict:
    out = {}
    for variant, r in result.items():
        if variant == "_contract":
            out.update({f"{prefix}/{k}": v for k, v in r.items()})
        else:
            out.update({f"{prefix}/{variant}/{k}": v for k, v in r.items()})
    return out
