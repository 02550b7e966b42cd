"""A tiny reverse-mode autodiff over NumPy float64, for the step-equivalence tests.

The tests recompute each method's losses and gradients here, independently of TensorFlow, and
check the port's updated weights against NumPy optimisers. Only what those losses need is here.
"""

from __future__ import annotations

import numpy as np


class V:
    """A float64 value with the closures that send its gradient to its parents."""

    __array_ufunc__ = None  # `ndarray - V` defers to V.__rsub__ instead of making an object array

    def __init__(self, value, parents=()):
        self.value = np.asarray(value, np.float64)
        self.parents = parents  # ((parent V, fn upstream -> gradient for that parent), ...)

    @property
    def shape(self):
        return self.value.shape

    def __add__(self, o):
        o = lift(o)
        return V(self.value + o.value, ((self, lambda g: g), (o, lambda g: g)))

    __radd__ = __add__

    def __sub__(self, o):
        o = lift(o)
        return V(self.value - o.value, ((self, lambda g: g), (o, lambda g: -g)))

    def __rsub__(self, o):
        return lift(o) - self

    def __mul__(self, o):
        o = lift(o)
        a, b = self.value, o.value
        return V(a * b, ((self, lambda g: g * b), (o, lambda g: g * a)))

    def __truediv__(self, o):
        o = lift(o)
        a, b = self.value, o.value
        return V(a / b, ((self, lambda g: g / b), (o, lambda g: -g * a / b ** 2)))

    def __rmul__(self, o):
        return self * o

    def __rtruediv__(self, o):
        return lift(o) / self

    def __neg__(self):
        return V(-self.value, ((self, lambda g: -g),))

    def __matmul__(self, o):
        o = lift(o)
        a, b = self.value, o.value
        return V(a @ b, ((self, lambda g: g @ b.T), (o, lambda g: a.T @ g)))

    @property
    def T(self):
        return V(self.value.T, ((self, lambda g: g.T),))

    def reshape(self, *shape):
        return V(self.value.reshape(shape), ((self, lambda g: g.reshape(self.shape)),))

    def __getitem__(self, idx):
        def back(g):
            out = np.zeros_like(self.value)
            np.add.at(out, idx, g)
            return out

        return V(self.value[idx], ((self, back),))


def lift(x) -> V:
    return x if isinstance(x, V) else V(x)


def _unary(x, value, local):
    return V(value, ((x, lambda g: g * local),))


def tanh(x):
    y = np.tanh(x.value)
    return _unary(x, y, 1.0 - y ** 2)


def relu(x):
    return _unary(x, np.maximum(x.value, 0.0), (x.value > 0).astype(np.float64))


def leaky_relu(x, slope):
    return _unary(x, np.where(x.value > 0, x.value, slope * x.value), np.where(x.value > 0, 1.0, slope))


def exp(x):
    y = np.exp(x.value)
    return _unary(x, y, y)


def log(x):
    return _unary(x, np.log(x.value), 1.0 / x.value)


def sqrt(x):
    y = np.sqrt(x.value)
    return _unary(x, y, 0.5 / y)


def square(x):
    return _unary(x, x.value ** 2, 2.0 * x.value)


def absolute(x):
    return _unary(x, np.abs(x.value), np.sign(x.value))


def softplus(x):
    return _unary(x, np.logaddexp(0.0, x.value), 1.0 / (1.0 + np.exp(-x.value)))


def _reduce(x, value, axis, keepdims, scale):
    def back(g):
        g = np.asarray(g)
        if axis is not None and not keepdims:
            g = np.expand_dims(g, axis)
        return np.broadcast_to(g, x.shape) * scale

    return V(value, ((x, back),))


def total(x, axis=None, keepdims=False):
    return _reduce(x, x.value.sum(axis=axis, keepdims=keepdims), axis, keepdims, 1.0)


def mean(x, axis=None, keepdims=False):
    n = x.value.size if axis is None else x.value.shape[axis]
    return _reduce(x, x.value.mean(axis=axis, keepdims=keepdims), axis, keepdims, 1.0 / n)


def concat(xs, axis=1):
    sizes = np.cumsum([x.shape[axis] for x in xs])[:-1]

    def part(i):
        return lambda g: np.split(g, sizes, axis=axis)[i]

    return V(np.concatenate([x.value for x in xs], axis=axis), tuple((x, part(i)) for i, x in enumerate(xs)))


def log_softmax(x):
    z = x.value - x.value.max(axis=1, keepdims=True)
    out = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    p = np.exp(out)
    return V(out, ((x, lambda g: g - p * g.sum(axis=1, keepdims=True)),))


def softmax(x):
    return exp(log_softmax(x))


def l2_normalize(x, eps=1e-12):
    """x / sqrt(max(sum x^2, eps)) per row (tf.math.l2_normalize)."""
    sq = total(square(x), axis=1, keepdims=True)
    clipped = V(np.maximum(sq.value, eps), ((sq, lambda g: g * (sq.value > eps)),))
    return x / sqrt(clipped)


def dense(x, kernel, bias):
    return x @ kernel + bias


def grad(out: V, params) -> list:
    """d out / d param for each param (out must be a scalar)."""
    order, seen = [], set()

    def visit(v):
        if id(v) in seen:
            return
        seen.add(id(v))
        for p, _ in v.parents:
            visit(p)
        order.append(v)

    visit(out)
    grads = {id(out): np.ones_like(out.value)}
    for v in reversed(order):
        g = grads.get(id(v))
        if g is None:
            continue
        for p, fn in v.parents:
            gp = _unbroadcast(np.asarray(fn(g), np.float64), p.shape)
            grads[id(p)] = grads[id(p)] + gp if id(p) in grads else gp
    return [grads.get(id(p), np.zeros_like(p.value)) for p in params]


def _unbroadcast(g, shape):
    while g.ndim > len(shape):
        g = g.sum(axis=0)
    for i, n in enumerate(shape):
        if n == 1 and g.shape[i] != 1:
            g = g.sum(axis=i, keepdims=True)
    return g


# --------------------------------------------------------------------------- optimisers

class Adam:
    """TF1 / Keras Adam: epsilon added to the uncorrected sqrt(v), bias correction folded into the rate."""

    def __init__(self, lr, beta1=0.9, beta2=0.999, eps=1e-8, torch_eps=False):
        self.lr, self.b1, self.b2, self.eps, self.torch_eps = lr, beta1, beta2, eps, torch_eps
        self.m, self.v, self.t = {}, {}, 0

    def step(self, params: dict, grads: dict) -> None:
        self.t += 1
        for k, g in grads.items():
            m = self.m[k] = self.b1 * self.m.get(k, 0.0) + (1 - self.b1) * g
            v = self.v[k] = self.b2 * self.v.get(k, 0.0) + (1 - self.b2) * g * g
            if self.torch_eps:  # PyTorch: epsilon added to the bias-corrected sqrt(v)
                m_hat, v_hat = m / (1 - self.b1 ** self.t), v / (1 - self.b2 ** self.t)
                params[k] = params[k] - self.lr * m_hat / (np.sqrt(v_hat) + self.eps)
            else:
                alpha = self.lr * np.sqrt(1 - self.b2 ** self.t) / (1 - self.b1 ** self.t)
                params[k] = params[k] - alpha * m / (np.sqrt(v) + self.eps)


class RMSPropTF1:
    """tf.compat.v1.train.RMSPropOptimizer: ms starts at one, ms = rho ms + (1 - rho) g^2, w -= lr g / sqrt(ms + eps)."""

    def __init__(self, lr, rho=0.9, eps=1e-10, init=1.0):
        self.lr, self.rho, self.eps, self.init, self.ms = lr, rho, eps, init, {}

    def step(self, params: dict, grads: dict) -> None:
        for k, g in grads.items():
            ms = self.ms[k] = self.rho * self.ms.get(k, self.init) + (1 - self.rho) * g * g
            params[k] = params[k] - self.lr * g / np.sqrt(ms + self.eps)
