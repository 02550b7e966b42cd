"""ZSCRGAN's three steps against an independent NumPy computation (issue 19; spec zscrgan.md §2-§4).

Fixed initial weights, fixed sampler rows (with a zero-padded row) and the steps' own noise: a
critic step (matching-aware WGAN loss, TF1 RMSProp with accumulators at one, weight clipping), a
generator step (conditioning augmentation, the release's KL surrogate, the unclamped L1 margin
term, the batch-mean CSEM softplus) and a CSEM step (Adam). Losses and updated weights equal
float64 NumPy to float32 precision.
"""

import numpy as np
import pytest
import tensorflow as tf

from common import training
from common.synthetic import make_synthetic
from tests.common import npgrad as ng
from zscrgan_tf import data as zdata
from zscrgan_tf.config import ZSCRGANConfig
from zscrgan_tf.task import ZSCRGANTrainer

CFG = dict(batch_size=5, gf_dim=6, df_dim=7, embed_dim=3, z_dim=2)


def lrelu(x):
    return ng.leaky_relu(x, 0.2)


class Reference:
    def __init__(self, p, cfg):
        self.p, self.cfg = p, cfg

    def d(self, name, x, act=None):
        h = ng.dense(ng.lift(x), self.p[f"{name}/kernel"], self.p[f"{name}/bias"])
        return act(h) if act else h

    def generator(self, t, eps, z):
        h = self.d("ca", t, lrelu)
        e = self.cfg.embed_dim
        mu, s = h[:, np.arange(e)], h[:, np.arange(e, 2 * e)]
        c = mu + ng.exp(s) * eps
        x = self.d("g3", self.d("g2", self.d("g1", ng.concat([c, ng.lift(z)]), lrelu), lrelu), ng.relu)
        return x, c, mu, s

    def critic(self, image, text):
        return self.d("out", self.d("d1", ng.concat([ng.lift(image), ng.lift(text)]), lrelu))

    def csem(self, x):
        return self.d("fc", x, lrelu)


def kl_sg(a, b):
    return ng.mean(-b + 0.5 * (-1.0 + ng.exp(2.0 * b) + ng.square(a)))


def kl_surrogate(mu, s):
    m = 0.5 * (mu + s)
    return 0.5 * (kl_sg(mu, m) + kl_sg(s, m))


def csem_loss(e_fake, e_wrong, c):
    c_n = ng.l2_normalize(c)
    real = ng.total(ng.l2_normalize(e_fake) * c_n, axis=1)
    wrong = ng.total(ng.l2_normalize(e_wrong) * c_n, axis=1)
    return ng.log(1.0 + ng.exp(ng.mean(wrong) - ng.mean(real)))


def l1_margin(fake, real, wrong, margin=2.0):
    d_real = ng.mean(ng.total(ng.absolute(fake - real), axis=1))
    d_wrong = ng.mean(ng.total(ng.absolute(fake - wrong), axis=1))
    return d_real - d_wrong + margin


LAYERS = {"ca": ("gen", "ca"), "g1": ("gen", "g1"), "g2": ("gen", "g2"), "g3": ("gen", "g3"),
          "d1": ("critic", "d1"), "out": ("critic", "out"), "fc": ("csem", "fc")}
OWNER = {"gen": ("ca", "g1", "g2", "g3"), "critic": ("d1", "out"), "csem": ("fc",)}


def snapshot(t):
    return {f"{k}/{w}": getattr(getattr(t, net), attr).__getattribute__(w).numpy().astype(np.float64)
            for k, (net, attr) in LAYERS.items() for w in ("kernel", "bias")}


def keys_of(params, net):
    return [k for k in params if k.split("/")[0] in OWNER[net]]


def test_critic_generator_and_csem_steps_equal_numpy():
    ds = make_synthetic("small", seed=0, num_classes=6, train_per_class=3, test_per_class=2, image_dim=4,
                        text_dim=3, emb_dim=2)
    data = zdata.from_dataset(ds)
    training.set_seed(2)
    cfg = ZSCRGANConfig(**CFG, seed=2)
    t = ZSCRGANTrainer(cfg, data)
    image_rows, text_rows, valid, _ = (np.asarray(a) for a in t.sampler.next_batch())
    valid = valid.copy()
    valid[-1] = 0.0  # a zero-padded row, as the release's short class block
    rows = [tf.constant(a) for a in (image_rows, text_rows, valid)]
    x_r = data.images[image_rows].astype(np.float64) * valid[:, None]
    txt = data.texts[text_rows].astype(np.float64) * valid[:, None]
    x_w, t_w = np.roll(x_r, 1, axis=0), np.roll(txt, 1, axis=0)
    n, e, zd = cfg.batch_size, cfg.embed_dim, cfg.z_dim
    params = snapshot(t)
    rms = {net: ng.RMSPropTF1(lr) for net, lr in (("critic", cfg.discriminator_lr), ("gen", cfg.generator_lr))}
    adam = ng.Adam(cfg.CSEM_lr, 0.5, 0.999, 1e-8)

    def draw(kinds):
        """The step's noise, drawn again from the same generator state (then rewound)."""
        state = t.rng.state.numpy()
        out = [(t.rng.truncated_normal if k == "tn" else t.rng.normal)([n, e if k == "tn" else zd]).numpy()
               for k in kinds]
        t.rng.reset(state)
        return [o.astype(np.float64) for o in out]

    def compare(step_name):
        after = snapshot(t)
        for k in params:
            np.testing.assert_allclose(after[k], params[k], rtol=2e-5, atol=1e-7, err_msg=f"{step_name}: {k}")

    for _ in range(2):
        # critic: L_D = (D(fake) + D(wrong)) / 2 - D(real), RMSProp, then every critic variable clipped
        eps, z = draw(["tn", "n"])
        out = t.critic_step(*rows)
        p = {k: ng.V(v) for k, v in params.items()}
        ref = Reference(p, cfg)
        fake = ref.generator(txt, eps, z)[0].value
        d_loss = 0.5 * (ng.mean(ref.critic(fake, txt)) + ng.mean(ref.critic(x_w, txt))) - ng.mean(ref.critic(x_r, txt))
        assert float(out["d_loss"]) == pytest.approx(float(d_loss.value), rel=1e-5, abs=1e-7)
        keys = keys_of(params, "critic")
        rms["critic"].step(params, dict(zip(keys, ng.grad(d_loss, [p[k] for k in keys]))))
        for k in keys:
            params[k] = np.clip(params[k], -cfg.clip_val, cfg.clip_val)
        compare("critic")
        assert max(np.abs(params[k]).max() for k in keys) == pytest.approx(cfg.clip_val)

        # generator: -D(fake) + CSEM + 2 * L1 margin + (KL + KL_wrong) / 2
        eps, eps_w, z, z_w = draw(["tn", "tn", "n", "n"])
        out = t.generator_step(*rows)
        p = {k: ng.V(v) for k, v in params.items()}
        ref = Reference(p, cfg)
        fake, c, mu, s = ref.generator(txt, eps, z)
        fake_w, _, mu_w, s_w = ref.generator(t_w, eps_w, z_w)
        kl = kl_surrogate(mu, s)
        mm = l1_margin(fake, x_r, x_w)
        g_loss = (-ng.mean(ref.critic(fake, txt)) + csem_loss(ref.csem(fake), ref.csem(fake_w), c)
                  + cfg.mm_reg_coeff * mm + cfg.kl_div_coefficient * 0.5 * (kl + kl_surrogate(mu_w, s_w)))
        for key, value in (("g_loss", g_loss), ("g_loss_kl_loss", kl), ("mm", mm)):
            assert float(out[key]) == pytest.approx(float(value.value), rel=1e-5, abs=1e-6), key
        keys = keys_of(params, "gen")
        rms["gen"].step(params, dict(zip(keys, ng.grad(g_loss, [p[k] for k in keys]))))
        compare("generator")

        # CSEM: softplus of batch-mean cosines, Adam
        eps, eps_w, z, z_w = draw(["tn", "tn", "n", "n"])
        out = t.csem_step(*rows)
        p = {k: ng.V(v) for k, v in params.items()}
        ref = Reference(p, cfg)
        fake, c, _, _ = ref.generator(txt, eps, z)
        fake_w = ref.generator(t_w, eps_w, z_w)[0]
        loss = csem_loss(ref.csem(ng.V(fake.value)), ref.csem(ng.V(fake_w.value)), ng.V(c.value))
        assert float(out["csem_loss"]) == pytest.approx(float(loss.value), rel=1e-5, abs=1e-7)
        keys = keys_of(params, "csem")
        adam.step(params, dict(zip(keys, ng.grad(loss, [p[k] for k in keys]))))
        compare("csem")
