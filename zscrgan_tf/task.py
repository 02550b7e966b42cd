"""ZSCRGAN's compiled critic / generator / CSEM steps, the EM cycle and the release's evaluation
(spec zscrgan.md §4, §6), and its task for the run driver.

One cycle = `e_iters` x (`n_critic` critic steps + 1 generator step), then `m_iters` CSEM
steps, then one zero-shot evaluation; every step draws its own batch from the release's
sampler. Noise (truncated-normal epsilon of the conditioning augmentation, z) comes from a
checkpointed `tf.random.Generator`, so a resumed run continues the same random stream.
"""

from __future__ import annotations

import os
from typing import Optional

import keras
import tensorflow as tf

from common import distribute, driver, io, metrics, training
from common.errors import ConfigError
from common.optimizers import TF1RMSprop
from zscrgan_tf import losses
from zscrgan_tf.config import ZSCRGANConfig
from zscrgan_tf.data import ClassBlockSampler, RetrievalSet, ZSData
from zscrgan_tf.model import CSEM, Critic, GeneratorNet, MeanTextEncoder


class ZSCRGANTrainer:
    def __init__(self, cfg: ZSCRGANConfig, data: ZSData, replicas: distribute.Replicas | None = None):
        self.cfg, self.data = cfg, data
        self.replicas = replicas or distribute.Replicas()
        with self.replicas.scope():
            self.gen = GeneratorNet(data.text_dim, data.image_dim, cfg.embed_dim, cfg.z_dim, cfg.gf_dim, name="g_net")
            self.critic = Critic(data.image_dim, data.text_dim, cfg.df_dim, name="d_net")
            self.csem = CSEM(data.image_dim, cfg.embed_dim, name="CSEM_net")
            self.d_opt = TF1RMSprop(cfg.discriminator_lr, accumulator_init=cfg.rmsprop_init, name="d_opt")
            self.g_opt = TF1RMSprop(cfg.generator_lr, accumulator_init=cfg.rmsprop_init, name="g_opt")
            self.c_opt = keras.optimizers.Adam(cfg.CSEM_lr, beta_1=0.5, beta_2=0.999, epsilon=1e-8, name="csem_opt")
            for opt, model in ((self.d_opt, self.critic), (self.g_opt, self.gen), (self.c_opt, self.csem)):
                training.build_optimizer(opt, model.trainable_variables)
        # outside the strategy: noise is drawn for the global batch before the replicas run, and
        # the training features are held once, not per replica
        self.rng = tf.random.Generator.from_seed(cfg.seed)
        # training features live in variables: captured by reference, not copied into each graph
        self.images = tf.Variable(data.images, trainable=False, name="train_images")
        self.texts = tf.Variable(data.texts, trainable=False, name="train_texts")
        self.sampler = ClassBlockSampler(data, cfg.batch_size, cfg.seed, cfg.pad_partial_batches, cfg.train_text)
        sig = [tf.TensorSpec([cfg.batch_size], tf.int64)] * 2 + [tf.TensorSpec([cfg.batch_size], tf.float32)]
        self.critic_step = training.graph_function(self._critic_step, input_signature=sig)
        self.generator_step = training.graph_function(self._generator_step, input_signature=sig)
        self.csem_step = training.graph_function(self._csem_step, input_signature=sig)
        self._embed_queries = training.graph_function(self._queries, reduce_retracing=True)
        self._embed_gallery = training.graph_function(self.csem, reduce_retracing=True)

    # ------------------------------------------------------------------ steps
    def _batch(self, image_rows, text_rows, valid):
        m = valid[:, None]
        x_r = tf.gather(self.images, image_rows) * m
        t = tf.gather(self.texts, text_rows) * m
        return x_r, tf.roll(x_r, 1, axis=0), t, tf.roll(t, 1, axis=0)

    def _noise(self, b):
        cfg = self.cfg
        return (self.rng.truncated_normal([b, cfg.embed_dim]), self.rng.truncated_normal([b, cfg.embed_dim]),
                self.rng.normal([b, cfg.z_dim]), self.rng.normal([b, cfg.z_dim]))

    def _generate(self, t, eps, z):
        """(fake, c, mu, s) of the global batch; the generator runs on this replica's rows."""
        return distribute.per_row(self.gen, t, eps, z)

    def _forward(self, x_r, x_w, t, t_w, noise):
        """Both branches of the generator and every loss term of the release's graph."""
        cfg = self.cfg
        eps, eps_w, z, z_w = noise
        fake, c, mu, s = self._generate(t, eps, z)
        fake_w, _, mu_w, s_w = self._generate(t_w, eps_w, z_w)
        fake_logit = distribute.per_row(self.critic, fake, t)
        csem = losses.csem_loss(distribute.per_row(self.csem, fake), distribute.per_row(self.csem, fake_w), c,
                                cfg.csem_per_sample)
        mm = losses.max_margin(fake, x_r, x_w, cfg.mm_margin, cfg.mm_hinge)
        kl = losses.kl_divergence(mu, s, cfg.kl_form)
        kl_w = losses.kl_divergence(mu_w, s_w, cfg.kl_form)
        g_loss = (-tf.reduce_mean(fake_logit) + csem + cfg.mm_reg_coeff * mm
                  + cfg.kl_div_coefficient * 0.5 * (kl + kl_w))
        return {"fake": fake, "fake_logit": fake_logit, "g_loss": g_loss, "csem_loss": csem, "kl": kl, "mm": mm}

    def _critic_step(self, image_rows, text_rows, valid):
        n = tf.shape(image_rows)[0]
        noise = (self.rng.truncated_normal([n, self.cfg.embed_dim]), self.rng.normal([n, self.cfg.z_dim]))
        out = self.replicas.run(self._critic_replica, image_rows, text_rows, valid, noise)
        for v in self.critic.trainable_variables:  # kernels and biases, after every critic update
            v.assign(tf.clip_by_value(v, -self.cfg.clip_val, self.cfg.clip_val))
        return out

    def _critic_replica(self, image_rows, text_rows, valid, noise):
        """Only what L_D needs: one generator pass, outside the tape (G does not move here)."""
        x_r, x_w, t, _ = self._batch(image_rows, text_rows, valid)
        fake, _, _, _ = self._generate(t, *noise)
        d = lambda x: distribute.per_row(self.critic, x, t)  # noqa: E731
        with tf.GradientTape() as tape, distribute.cast_once(self.critic):
            d_loss = losses.critic_loss(d(x_r), d(fake), d(x_w))
        variables = self.critic.trainable_variables
        grads = distribute.replica_share(tape.gradient(d_loss, variables))
        distribute.apply_gradients(self.d_opt, zip(grads, variables))
        return {"d_loss": d_loss}

    def _generator_step(self, image_rows, text_rows, valid):
        noise = self._noise(tf.shape(image_rows)[0])
        return self.replicas.run(self._generator_replica, image_rows, text_rows, valid, noise)

    def _generator_replica(self, image_rows, text_rows, valid, noise):
        x_r, x_w, t, t_w = self._batch(image_rows, text_rows, valid)
        with tf.GradientTape() as tape, distribute.cast_once(self.gen, self.critic, self.csem):
            out = self._forward(x_r, x_w, t, t_w, noise)
        variables = self.gen.trainable_variables
        grads = distribute.replica_share(tape.gradient(out["g_loss"], variables))
        distribute.apply_gradients(self.g_opt, zip(grads, variables))
        return {"g_loss": out["g_loss"], "g_loss_kl_loss": out["kl"], "mm": out["mm"]}

    def _csem_step(self, image_rows, text_rows, valid):
        noise = self._noise(tf.shape(image_rows)[0])
        return self.replicas.run(self._csem_replica, image_rows, text_rows, valid, noise)

    def _csem_replica(self, image_rows, text_rows, valid, noise):
        """Both generator branches outside the tape; only CSEM is differentiated and moved."""
        _, _, t, t_w = self._batch(image_rows, text_rows, valid)
        eps, eps_w, z, z_w = noise
        with distribute.cast_once(self.gen):
            fake, c, _, _ = self._generate(t, eps, z)
            fake_w, _, _, _ = self._generate(t_w, eps_w, z_w)
        with tf.GradientTape() as tape, distribute.cast_once(self.csem):
            loss = losses.csem_loss(distribute.per_row(self.csem, fake), distribute.per_row(self.csem, fake_w), c,
                                    self.cfg.csem_per_sample)
        variables = self.csem.trainable_variables
        grads = distribute.replica_share(tape.gradient(loss, variables))
        distribute.apply_gradients(self.c_opt, zip(grads, variables))
        return {"csem_loss": loss}

    def step(self, kind: str) -> dict:
        fn = {"critic": self.critic_step, "generator": self.generator_step, "csem": self.csem_step}[kind]
        image_rows, text_rows, valid, _ = self.sampler.next_batch()
        return fn(tf.constant(image_rows), tf.constant(text_rows), tf.constant(valid))

    def cycle(self) -> dict:
        """One EM cycle; returns the mean of each logged loss (tensors stay on device until the end)."""
        cfg = self.cfg
        logs = {"d_loss": [], "g_loss": [], "g_loss_kl_loss": [], "mm": [], "csem_loss": []}
        for _ in range(cfg.e_iters):
            for _ in range(cfg.n_critic):
                logs["d_loss"].append(self.step("critic")["d_loss"])
            out = self.step("generator")
            for k in ("g_loss", "g_loss_kl_loss", "mm"):
                logs[k].append(out[k])
        for _ in range(cfg.m_iters):
            logs["csem_loss"].append(self.step("csem")["csem_loss"])
        return {k: float(tf.reduce_mean(tf.stack(v))) for k, v in logs.items() if v}

    # ------------------------------------------------------------ evaluation
    def _queries(self, text):
        mu, s = self.gen.condition(text)
        n = tf.shape(text)[0]
        if self.cfg.eval_mode == "mean":
            c, z = mu, tf.zeros([n, self.cfg.z_dim])
        else:  # the release: a fresh epsilon and z for every query, at every evaluation
            c = self.gen.sample(mu, s, self.rng.truncated_normal([n, self.cfg.embed_dim]))
            z = self.rng.normal([n, self.cfg.z_dim])
        return self.csem(self.gen.generate(c, z))

    def embed(self, rs: RetrievalSet):
        return training.batched(self._embed_queries, rs.queries), training.batched(self._embed_gallery, rs.gallery)

    def evaluate(self, rs: RetrievalSet) -> dict:
        q, g = self.embed(rs)
        p, top, t2i = metrics.zscrgan_precision_at_k(q, g, rs.query_labels, rs.gallery_labels,
                                                     k=self.cfg.retrieve_k, with_map=True)  # one ranking pass
        retrieved = [{int(c): [int(x) for x in rs.gallery_labels[row]]} for c, row in zip(rs.query_labels, top)]
        return {"p50": p, "t2i_map_all": t2i, "retrieved": retrieved, "embeddings": (q, g)}

    # ------------------------------------------------------------ checkpoint
    def checkpoint_objects(self) -> dict:
        self.sampler_vars = {k: tf.Variable(v, name=f"sampler_{k}") for k, v in self.sampler.state.items()}
        return {"g_net": self.gen, "d_net": self.critic, "CSEM_net": self.csem, "rng": self.rng,
                "d_opt": (self.d_opt, self.critic.trainable_variables),
                "g_opt": (self.g_opt, self.gen.trainable_variables),
                "csem_opt": (self.c_opt, self.csem.trainable_variables)} | {
                    f"sampler_{k}": v for k, v in self.sampler_vars.items()}

    def sync_sampler(self, to_checkpoint: bool) -> None:
        if to_checkpoint:
            for k, v in self.sampler_vars.items():
                v.assign(self.sampler.state[k])
        else:
            self.sampler.set_state({k: v.numpy() for k, v in self.sampler_vars.items()})


def results_file_name(p: float) -> str:
    """Python 2's str(float) (12 significant digits), as the release names its result pickles."""
    return f"acc{p:.12g}.pkl"



def summarize(history: list, data: ZSData, untrained_path: Optional[str] = None) -> dict:
    """The release's best-on-test P@50, the last cycle's, the validation-selected one, timing."""
    if not history:
        raise ConfigError("no cycle has been evaluated (--max_cycles 0, or a finished run with no history)")
    best = max(history, key=lambda r: r["test"]["p50"])  # first cycle reaching the maximum
    last = history[-1]
    out = {"p50_best": best["test"]["p50"], "p50_best_cycle": best["cycle"],
           "p50_last": last["test"]["p50"], "t2i_map_all": last["test"]["t2i_map_all"],
           "t2i_map_all_at_best": best["test"]["t2i_map_all"], "cycles": last["cycle"],
           "p50_chance": data.test.chance_p_at_k, "chance_map_all": data.test.chance_map_all}
    if "val" in last:
        sel = max(history, key=lambda r: r["val"]["p50"])
        out.update(p50_val_selected=sel["test"]["p50"], p50_val_selected_cycle=sel["cycle"],
                   val_p50_at_selected=sel["val"]["p50"])
    seconds = sum(r.get("train_seconds", 0.0) for r in history)
    if seconds > 0:
        out["cycles_per_minute"] = 60.0 * sum(r.get("train_units", 0) for r in history) / seconds
    if untrained_path and os.path.exists(untrained_path):
        out["p50_untrained"] = io.read_json(untrained_path)["p50"]
    return out


class ZSCRGANTask(driver.Task):
    """ZSCRGAN for `common.driver.fit`: one EM cycle per unit, a zero-shot evaluation after each;
    the release's result pickle on every new best P@50 (in `res_dir`)."""

    unit = "cycle"
    key_losses = ("d_loss", "g_loss", "csem_loss")
    headline = ("test/p50", "test/t2i_map_all")

    def __init__(self, trainer: ZSCRGANTrainer, data: ZSData, out_dir: str, res_dir: str, max_cycles: int):
        self.trainer, self.data, self.out_dir, self.res_dir = trainer, data, out_dir, res_dir
        self.replicas, self.num_units = trainer.replicas, max_cycles
        self.chief = trainer.replicas.is_chief
        self.untrained_path = os.path.join(out_dir, "untrained.json")
        self._objects = trainer.checkpoint_objects()
        # the cycle results.json leads with (p50_val_selected, else the release's p50_best): its model is kept
        self.selection = "test" if data.val is None else "val"

    def selection_score(self, record: dict) -> float:
        return record[self.selection]["p50"]

    def record_name(self, record: dict) -> str:
        return f"cycle {record['cycle']}"

    def models(self) -> dict:
        t = self.trainer
        return {"g_net": t.gen, "d_net": t.critic, "CSEM_net": t.csem}

    def selected_models(self) -> dict:
        """The two networks the encoders are made of; the critic only trains."""
        return {"g_net": self.trainer.gen, "CSEM_net": self.trainer.csem}

    def checkpoint_objects(self) -> dict:
        return self._objects

    def encoders(self) -> dict:
        cfg, data = self.trainer.cfg, self.data
        return dict(method="zscrgan",
                    models={"g_net": (GeneratorNet, dict(text_dim=data.text_dim, image_dim=data.image_dim,
                                                         embed_dim=cfg.embed_dim, z_dim=cfg.z_dim, gf_dim=cfg.gf_dim)),
                            "CSEM_net": (CSEM, dict(image_dim=data.image_dim, embed_dim=cfg.embed_dim))},
                    image={"dim": data.image_dim, "model": "CSEM_net"},
                    text={"dim": data.text_dim, "composite": MeanTextEncoder, "args": ["g_net", "CSEM_net"]},
                    notes="embed_text is CSEM(G(mu, z=0)) (deterministic); the release evaluated with fresh noise "
                          "per query, so the P@50 of these embeddings differs from results.json's by that noise.")

    def on_start(self, resumed: bool) -> None:
        t = self.trainer
        if resumed:
            t.sync_sampler(to_checkpoint=False)
            print(f"sampler at batch {int(t.sampler.state['batches'])}", flush=True)
        elif self.num_units > 0:
            # a reference point next to chance; not part of the release's best-so-far. Every worker
            # evaluates (query noise comes from the shared random stream), only the chief writes.
            p50 = t.evaluate(self.data.test)["p50"]
            if self.chief:
                io.write_json(self.untrained_path, {"p50": p50})

    def train_unit(self, cycle: int, on_block=None) -> dict:
        return self.trainer.cycle()

    def evaluate(self, cycle: int) -> driver.Evaluation:
        test = self.trainer.evaluate(self.data.test)
        record = {"epoch": cycle, "cycle": cycle + 1, "test": {k: test[k] for k in ("p50", "t2i_map_all")}}
        scalars = {f"test/{k}": v for k, v in record["test"].items()}
        if self.data.val is not None:
            val = self.trainer.evaluate(self.data.val)
            record["val"] = {k: val[k] for k in ("p50", "t2i_map_all")}
            scalars.update({f"val/{k}": v for k, v in record["val"].items()})
        q, g = test["embeddings"]
        rs = self.data.test
        self._retrieved = test["retrieved"]
        return driver.Evaluation(record, scalars, {"t2i": (q, g, rs.query_labels, rs.gallery_labels, "cosine")})

    def before_record(self, evaluation: driver.Evaluation, history: list) -> None:
        """The release's acc<P@50>.pkl on a new best (written before the checkpoint that records it)."""
        self.trainer.sync_sampler(to_checkpoint=True)
        p50 = evaluation.record["test"]["p50"]
        if p50 > max([r["test"]["p50"] for r in history], default=0.0):
            if self.chief:
                os.makedirs(self.res_dir, exist_ok=True)
                pickle_path = os.path.join(self.res_dir, results_file_name(p50))
                driver.note_extra_file(self.out_dir, pickle_path)  # noted first: a crash leaves no stray file
                io.write_pickle(pickle_path, self._retrieved, protocol=2)
            losses = evaluation.record.get("losses", {})
            print(f"New best Prec@50  = {p50:.12g}", flush=True)  # the release's line, Python 2's str(float)
            cycle = evaluation.record["cycle"]
            print(f"Cycle {cycle} | d_loss: {losses.get('d_loss')}; g_loss: {losses.get('g_loss')}", flush=True)

    def summary(self, history: list) -> dict:
        return summarize(history, self.data, self.untrained_path)


def fit(cfg: ZSCRGANConfig, data: ZSData, out_dir: str, res_dir: str, max_cycles: int,
        replicas: Optional[distribute.Replicas] = None, on_record=None) -> dict:
    """Train (or resume) in `out_dir` without the command-line layer (tests, notebooks); the summary."""
    from common import export

    task = ZSCRGANTask(ZSCRGANTrainer(cfg, data, replicas), data, out_dir, res_dir, max_cycles)
    if task.chief:
        export.write_spec(out_dir, **task.encoders())
    result = driver.fit(task, out_dir, driver.FitOptions(histogram_every=0),
                        on_record=None if on_record is None else (lambda h: on_record(task.summary(h))))
    return task.summary(result.history)
