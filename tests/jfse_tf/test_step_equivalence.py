"""One JFSE step against an independent NumPy computation (issue 19; spec jfse.md §3, §4).

Fixed initial weights, one fixed batch and the step's own noise: n_critic critic updates with
the gradient penalty (a second-order term: the critic's input gradient is written out in NumPy),
then the simultaneous generator / regressor / modality-classifier update with CMPM alignment
through the gradient reversal layer. The port's compiled step must give the same weights and the
same 14 logged losses as float64 NumPy, to float32 precision, over two steps.
"""

import numpy as np
import pytest
import tensorflow as tf

from common import training
from jfse_tf.config import JFSEConfig
from jfse_tf.task import JFSETrainer
from tests.common import npgrad as ng

B, D_IMG, D_TXT, D_EMB, C, HIDDEN, NOISE, N_CRITIC = 6, 5, 4, 3, 3, 8, 3, 2
NETS = ("image_generator", "text_generator", "image_critic", "text_critic", "image_regressor", "text_regressor")
GROUPS = {"critics": ("image_critic", "text_critic"), "generators": ("image_generator", "text_generator"),
          "regressors": ("image_regressor", "text_regressor"), "modality_classifier": ("modality_classifier",)}


def batch():
    rng = np.random.default_rng(11)
    labels = np.array([0, 1, 2, 0, 1, 1], np.int64)
    emb = rng.normal(size=(C, D_EMB)).astype(np.float32)
    return (rng.random((B, D_IMG)).astype(np.float32), rng.normal(size=(B, D_TXT)).astype(np.float32),
            emb[labels], labels)


def dense_layers(t):
    n = t.nets
    out = {}
    for name in NETS:
        net = getattr(n, name)
        first, second = (net.hidden, net.score) if "critic" in name else (net.hidden, net.out)
        out[f"{name}/0"], out[f"{name}/1"] = first, second
    out.update({f"modality_classifier/{i}": d for i, d in enumerate(n.modality_classifier.layers_)})
    return out


def snapshot(t):
    return {f"{k}/{w}": getattr(d, w).numpy().astype(np.float64) for k, d in dense_layers(t).items()
            for w in ("kernel", "bias")}


def minmax(x):
    x = x.astype(np.float64)
    lo, span = x.min(0), x.max(0) - x.min(0)
    return np.where(span > 0, (x - lo) / np.where(span > 0, span, 1.0), 0.0)


class Reference:
    """Spec §2-§3 in float64 over the parameters `p` (a dict of V's)."""

    def __init__(self, p, scale, weights):
        self.p, self.scale, self.w = p, scale, weights

    def d(self, name, x, i):
        return ng.dense(x, self.p[f"{name}/{i}/kernel"], self.p[f"{name}/{i}/bias"])

    def generator(self, name, c, z):
        return ng.relu(self.d(name, ng.relu(self.d(name, ng.concat([ng.lift(c), ng.lift(z)]), 0)), 1))

    def critic(self, name, x, c):
        return self.d(name, ng.leaky_relu(self.d(name, ng.concat([ng.lift(x), ng.lift(c)]), 0), 0.2), 1)

    def regressor(self, name, x):
        return ng.relu(self.d(name, ng.relu(self.d(name, ng.lift(x), 0)), 1))

    def modality(self, e):
        h = ng.V(e.value, ((e, lambda g: -self.scale * g),))  # gradient reversal
        for i in range(3):
            h = self.d("modality_classifier", h, i)
        return h

    def penalty(self, name, real, fake, c, alpha):
        """10 mean (||dD/dx_hat|| - 1)^2, the input gradient of D = w2 . leaky(W1 [x; c] + b1) + b2 written out."""
        x_hat = alpha * real + (1 - alpha) * fake
        k1, b1, k2 = (self.p[f"{name}/0/kernel"], self.p[f"{name}/0/bias"], self.p[f"{name}/1/kernel"])
        h = np.concatenate([x_hat, c], 1) @ k1.value + b1.value
        slope = np.where(h > 0, 1.0, 0.2)
        grad_x = (ng.V(slope) * k2.T) @ k1[np.arange(real.shape[1])].T
        norm = ng.sqrt(ng.total(ng.square(grad_x), axis=1) + 1e-12)
        return 10.0 * ng.mean(ng.square(norm - 1.0))

    def critic_loss(self, v, t, c, fake_v, fake_t, alpha):
        out = None
        for name, real, fake, a in (("image_critic", v, fake_v, alpha[0]), ("text_critic", t, fake_t, alpha[1])):
            term = (ng.mean(self.critic(name, fake, c)) - ng.mean(self.critic(name, real, c))
                    + self.penalty(name, real, fake, c, a))
            out = term if out is None else out + term
        return out

    def joint(self, v, t, c, y, z_v, z_t):
        fake_v, fake_t = self.generator("image_generator", c, z_v), self.generator("text_generator", c, z_t)
        e_v, e_t = self.regressor("image_regressor", v), self.regressor("text_regressor", t)
        s_v, s_t = self.regressor("image_regressor", fake_v), self.regressor("text_regressor", fake_t)
        mse = lambda e: ng.mean(ng.square(c - e))  # noqa: E731
        terms = {"g_adv_img": -ng.mean(self.critic("image_critic", fake_v, c)),
                 "g_adv_txt": -ng.mean(self.critic("text_critic", fake_t, c)),
                 "cyc_img": mse(s_v), "cyc_txt": mse(s_t), "reg_img": mse(e_v), "reg_txt": mse(e_t),
                 "adv_syn": modality_loss(self.modality(s_v), self.modality(s_t)),
                 "adv_real": modality_loss(self.modality(e_v), self.modality(e_t)),
                 "align_real": cmpm(e_v, e_t, y), "align_syn": cmpm(s_v, s_t, y)}
        w = self.w
        loss_g = (terms["g_adv_img"] + terms["g_adv_txt"]
                  + w["w_cyc_g"] * (terms["cyc_img"] + terms["cyc_txt"] + w["w_adv_g"] * terms["adv_syn"]))
        loss_r = (terms["reg_img"] + terms["reg_txt"] + w["w_align_real"] * terms["align_real"]
                  + w["w_adv_real"] * terms["adv_real"]
                  + w["w_syn_r"] * (terms["cyc_img"] + terms["cyc_txt"] + w["w_adv_syn_r"] * terms["adv_syn"]
                                    + w["w_align_syn"] * terms["align_syn"]))
        return terms, loss_g, loss_r, fake_v, fake_t


def modality_loss(img_logits, txt_logits):
    ce = lambda logits, target: -ng.total(ng.log_softmax(logits) * np.tile(target, (B, 1)), axis=1)  # noqa: E731
    return ng.mean(ce(img_logits, [0.0, 1.0]) + ce(txt_logits, [1.0, 0.0]))


def cmpm(image_emb, text_emb, y):
    """§3.4 as coded: q from shared labels; softmax of un-normalised query . normalised candidate."""
    match = (((y[:, None, :] - y[None, :, :]) ** 2).sum(2) < 0.5).astype(np.float64)
    q = match / match.sum(1, keepdims=True)

    def kl(logits):
        p = ng.softmax(logits)
        return ng.mean(ng.total(p * ng.log(1e-8 + p / (q + 1e-8)), axis=1))

    return kl(text_emb @ ng.l2_normalize(image_emb).T) + kl(image_emb @ ng.l2_normalize(text_emb).T)


def keys_of(params, group):
    return [k for k in params if k.split("/")[0] in GROUPS[group]]


def reference_step(params, opts, x_v, x_t, c_raw, labels, noise, scale, weights):
    v, t, c = minmax(x_v), minmax(x_t), minmax(c_raw)
    y = np.eye(C)[labels]
    z_v, z_t = noise["z_v"], noise["z_t"]
    critic_keys = keys_of(params, "critics")
    seen = []  # every gradient applied, for the caller's tolerance mask
    for alpha in noise["alpha"]:
        p = {k: ng.V(x) for k, x in params.items()}
        ref = Reference(p, scale, weights)
        fake_v = ref.generator("image_generator", c, z_v).value
        fake_t = ref.generator("text_generator", c, z_t).value
        loss_d = ref.critic_loss(v, t, c, fake_v, fake_t, alpha)
        seen.append(dict(zip(critic_keys, ng.grad(loss_d, [p[k] for k in critic_keys]))))
        opts["critics"].step(params, seen[-1])
    p = {k: ng.V(x) for k, x in params.items()}
    terms, loss_g, loss_r, _, _ = Reference(p, scale, weights).joint(v, t, c, y, z_v, z_t)
    objectives = {"generators": loss_g, "regressors": loss_r,
                  "modality_classifier": terms["adv_syn"] + terms["adv_real"]}
    grads = {g: dict(zip(keys_of(params, g), ng.grad(obj, [p[k] for k in keys_of(params, g)])))
             for g, obj in objectives.items()}
    for g, gr in grads.items():  # simultaneous: all gradients from the pre-update weights
        opts[g].step(params, gr)
    # the logged values: post-update networks, a fresh alpha for loss_D
    p = {k: ng.V(x) for k, x in params.items()}
    ref = Reference(p, scale, weights)
    terms, loss_g, loss_r, fake_v, fake_t = ref.joint(v, t, c, y, z_v, z_t)
    w = weights
    return {"loss_D": ref.critic_loss(v, t, c, fake_v.value, fake_t.value, noise["alpha_log"]).value,
            "loss_G": loss_g.value, "loss_Re": loss_r.value,
            "loss_corr": (w["w_align_real"] * terms["align_real"] + w["w_align_syn"] * terms["align_syn"]).value,
            "loss_adv": (terms["adv_syn"] + terms["adv_real"]).value,
            "loss_cyc": (terms["reg_img"] + terms["reg_txt"] + terms["cyc_img"] + terms["cyc_txt"]).value,
            "loss_ori_cyc_img": terms["reg_img"].value, "loss_ori_cyc_txt": terms["reg_txt"].value,
            "loss_cyc_img": terms["cyc_img"].value, "loss_cyc_txt": terms["cyc_txt"].value,
            "loss_ori_corr": (w["w_align_real"] * terms["align_real"]).value,  # weighted, as the release printed
            "loss_sys_corr": (w["w_align_syn"] * terms["align_syn"]).value,
            "loss_ori_adv": terms["adv_real"].value, "loss_sys_adv": terms["adv_syn"].value}, seen + list(grads.values())


def test_two_steps_equal_numpy():
    training.set_seed(5)
    cfg = JFSEConfig(hidden=HIDDEN, noise_dim=NOISE, n_critic=N_CRITIC, seed=5)
    t = JFSETrainer(cfg, D_IMG, D_TXT, D_EMB, C)
    scale = 0.3
    t.grl_scale.assign(scale)
    x_v, x_t, c_raw, labels = batch()
    params = snapshot(t)
    opts = {g: ng.Adam(cfg.lr, cfg.beta1, cfg.beta2, cfg.epsilon) for g in GROUPS}
    sharp = {k: np.ones(v.shape, bool) for k, v in params.items()}
    for step in range(2):
        state = t.rng.state.numpy()
        noise = tf.nest.map_structure(lambda x: x.numpy().astype(np.float64), t._draw_noise(tf.constant(B)))
        t.rng.reset(state)  # the step draws the same numbers again, in the same order
        logged = t.train_step(*(tf.constant(a) for a in (x_v, x_t, c_raw, labels)))
        expected, grads = reference_step(params, opts, x_v, x_t, c_raw, labels, noise, scale, cfg.weights)
        for g in grads:
            for k, gk in g.items():
                sharp[k] &= np.abs(gk) > 100 * cfg.epsilon
        for k, value in expected.items():
            assert float(logged[k]) == pytest.approx(float(value), rel=1e-4, abs=1e-6), (step, k)
        after = snapshot(t)
        for k in params:  # see tests/acmr_tf/test_step_equivalence.py for the tolerance
            np.testing.assert_allclose(after[k][sharp[k]], params[k][sharp[k]], rtol=0, atol=0.02 * cfg.lr,
                                       err_msg=f"step {step}: {k}")
            np.testing.assert_allclose(after[k], params[k], rtol=0, atol=(N_CRITIC + 1) * (step + 1) * cfg.lr,
                                       err_msg=k)
    assert int(t.optimizers["critics"].iterations) == 2 * N_CRITIC
    assert sum(m.sum() for m in sharp.values()) > 0.8 * sum(m.size for m in sharp.values())


def test_critic_and_joint_gradients_equal_numpy():
    """The gradients themselves (Adam's first steps hide their scale): critic loss with the penalty,
    and the three joint objectives, at the initial weights."""
    training.set_seed(6)
    cfg = JFSEConfig(hidden=HIDDEN, noise_dim=NOISE, n_critic=1, seed=6)
    t = JFSETrainer(cfg, D_IMG, D_TXT, D_EMB, C)
    scale = 0.7
    t.grl_scale.assign(scale)
    x_v, x_t, c_raw, labels = batch()
    noise = t._draw_noise(tf.constant(B))
    v, tx, c = t._normalise(*(tf.constant(a) for a in (x_v, x_t, c_raw)))
    y = tf.one_hot(labels, C)
    by_name = {f"{k}/{w}": getattr(d, w) for k, d in dense_layers(t).items() for w in ("kernel", "bias")}
    params = snapshot(t)
    p = {k: ng.V(x) for k, x in params.items()}
    ref = Reference(p, scale, cfg.weights)
    nz = tf.nest.map_structure(lambda x: x.numpy().astype(np.float64), noise)
    vn, tn, cn = minmax(x_v), minmax(x_t), minmax(c_raw)
    fake_v = ref.generator("image_generator", cn, nz["z_v"]).value
    fake_t = ref.generator("text_generator", cn, nz["z_t"]).value

    def check(port_loss, ref_loss, keys):
        with tf.GradientTape() as tape:
            loss = port_loss()
        port = tape.gradient(loss, [by_name[k] for k in keys])
        assert float(loss) == pytest.approx(float(ref_loss.value), rel=1e-4, abs=1e-6)
        for k, g, r in zip(keys, port, ng.grad(ref_loss, [p[k] for k in keys])):
            np.testing.assert_allclose(g.numpy(), r, rtol=2e-4, atol=1e-5 * (np.abs(r).max() + 1e-12), err_msg=k)

    def port_critic():
        fv, ft = t._generate(c, noise["z_v"], noise["z_t"])
        return t._critic_terms(v, tx, c, fv, ft, noise["alpha"][0])

    check(port_critic, ref.critic_loss(vn, tn, cn, fake_v, fake_t, nz["alpha"][0]), keys_of(params, "critics"))
    from jfse_tf import losses

    terms_ref, loss_g, loss_r, _, _ = ref.joint(vn, tn, cn, np.eye(C)[labels], nz["z_v"], nz["z_t"])
    joint = lambda: t._joint_terms(v, tx, c, y, noise["z_v"], noise["z_t"])[0]  # noqa: E731
    check(lambda: losses.generator_objective(joint(), t.weights), loss_g, keys_of(params, "generators"))
    check(lambda: losses.regressor_objective(joint(), t.weights), loss_r, keys_of(params, "regressors"))
    check(lambda: joint()["adv_syn"] + joint()["adv_real"], terms_ref["adv_syn"] + terms_ref["adv_real"],
          keys_of(params, "modality_classifier"))
