"""Network bodies and heads (flax.linen). Pure: no I/O, no environment imports.

Inputs carry exactly one leading batch axis: channels-last frame stacks
``[B, H, W, C * hist_len]`` (or ``[B, D * hist_len]`` for vector observations); uint8 inputs are on the [0, 255] scale and are divided by 255
inside the network, so replay and acting can keep bytes until the first layer.

Every Q network returns ``[B, K, A]``: the head axis K is always present (K = 1 for a
plain DQN), so losses and acting never special-case Bootstrapped DQN.

``activation`` is a field of every module so that saliency modes (guided backprop,
deconvnet) can swap ReLU's backward pass in a saved model without retraining.
"""
from __future__ import annotations

import importlib
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

Activation = Callable[[jax.Array], jax.Array]


def to_float(x: jax.Array) -> jax.Array:
    """uint8 [0, 255] -> float32 [0, 1]; floats pass through."""
    if x.dtype == jnp.uint8:
        return x.astype(jnp.float32) * (1.0 / 255.0)
    return x.astype(jnp.float32)


@jax.custom_vjp
def scale_gradient(x: jax.Array, scale: float) -> jax.Array:
    """Identity forward; multiplies the gradient by ``scale`` (the original's GradientRescale)."""
    return x


def _scale_gradient_fwd(x, scale):
    return x, scale


def _scale_gradient_bwd(scale, g):
    return g * scale, None


scale_gradient.defvjp(_scale_gradient_fwd, _scale_gradient_bwd)


@jax.custom_vjp
def dense_matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """``x @ kernel`` ([..., I] @ [I, O] -> [..., O]) whose kernel gradient is computed as
    ``x^T @ dy``, so it comes out in the kernel's own [I, O] layout.

    Autodiff's transpose of a matmul gives ``dy^T @ x`` followed by a transpose, and XLA on
    CPU fuses that transpose into every consumer of the gradient (each elementwise pass of
    the optimiser reads it with a stride). Measured by scripts/profile_update.py: this
    halves the MinAtar update, one seed or eight vmapped (results/benchmarks/profile-*.md).
    Same maths, same gradients; only the order of the operands changes. Parameters closed
    over by a traced function must be jax arrays, not numpy ones (custom_vjp refuses numpy
    constants).
    """
    return x @ kernel


def _dense_matmul_fwd(x, kernel):
    return x @ kernel, (x, kernel)


def _dense_matmul_bwd(residuals, dy):
    x, kernel = residuals
    rows_x = x.reshape(-1, x.shape[-1])            # [N, I]
    rows_dy = dy.reshape(-1, dy.shape[-1])         # [N, O]
    return dy @ kernel.T, rows_x.T @ rows_dy


dense_matmul.defvjp(_dense_matmul_fwd, _dense_matmul_bwd)


class Dense(nn.Module):
    """``nn.Dense`` (same parameter names, shapes and initialisers, so checkpoints are
    interchangeable) computed with ``dense_matmul``."""

    features: int
    bias_init: Callable = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # [..., I] -> [..., features]
        kernel, bias = _dense_params(self, x.shape[-1], self.features, self.bias_init)
        return dense_matmul(x, kernel) + bias


def _dense_params(module: nn.Module, fan_in: int, features: int,
                  bias_init: Callable = nn.initializers.zeros_init()):
    """The kernel [fan_in, features] and bias nn.Dense creates, as parameters of ``module``."""
    return (module.param("kernel", nn.initializers.lecun_normal(), (fan_in, features)),
            module.param("bias", bias_init, (features,)))


CONV_IMPLS = ("patch", "xla")


class PatchConv(nn.Module):
    """A 2-D convolution whose kernel is stored as a Dense kernel [k*k*C_in, C_out].

    ``impl`` picks how it runs; both give the same maths from the same parameters, so a
    checkpoint trained with one loads and acts identically with the other:

    - "patch": strided slices and one matrix multiply. XLA on CPU runs ``lax.conv`` about
      ten times slower inside a ``while`` loop (a ``lax.scan``) than at top level, and
      vmapping it over seeds (one kernel per seed) lowers to a grouped convolution that is
      slower still; slices and a batched matmul have neither problem, so the
      whole-loop-in-XLA path stays fast.
    - "xla": ``lax.conv_general_dilated`` (NHWC, HWIO). Called at top level from the host
      loop with one seed it is about twice as fast as "patch" on CPU for the Nature body
      (scripts/benchmark.py, section learner).
    """

    features: int
    kernel: int
    stride: int
    pad: int
    impl: str = "patch"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # [B, H, W, C] -> [B, H', W', features]
        k, s, p = self.kernel, self.stride, self.pad
        channels = x.shape[-1]
        kernel, bias = _DenseWeights(self.features, name="dense")(k * k * channels)
        if self.impl == "xla":
            # Rows of the Dense kernel run over offsets (i, j), then channels: exactly HWIO.
            out = jax.lax.conv_general_dilated(
                x, kernel.reshape(k, k, channels, self.features), (s, s), ((p, p), (p, p)),
                dimension_numbers=("NHWC", "HWIO", "NHWC"))
            return out + bias
        x = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
        out_h = (x.shape[1] - k) // s + 1
        out_w = (x.shape[2] - k) // s + 1
        patches = jnp.concatenate(
            [x[:, i:i + s * (out_h - 1) + 1:s, j:j + s * (out_w - 1) + 1:s, :]
             for i in range(k) for j in range(k)], axis=-1)    # [B, H', W', k*k*C]
        return dense_matmul(patches, kernel) + bias


class _DenseWeights(nn.Module):
    """The kernel and bias ``nn.Dense`` would create (same names, shapes and initialisers),
    so PatchConv's parameters keep nn.Dense's layout whichever ``impl`` runs them."""

    features: int

    @nn.compact
    def __call__(self, fan_in: int) -> tuple[jax.Array, jax.Array]:
        return _dense_params(self, fan_in, self.features)


class ConvBody(nn.Module):
    """ReLU convolutions (features, kernel, stride, pad), a flatten, then optional ReLU dense layers.

    ``conv`` is PatchConv's ``impl`` ("patch" or "xla"); it changes speed, not maths."""

    layers: Sequence[tuple[int, int, int, int]]
    dense: Sequence[int] = ()
    activation: Activation = nn.relu
    conv: str = "patch"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = to_float(x)
        for features, kernel, stride, pad in self.layers:
            x = self.activation(PatchConv(features, kernel, stride, pad, impl=self.conv)(x))
        x = x.reshape(x.shape[0], -1)
        for features in self.dense:
            x = self.activation(Dense(features)(x))
        return x


class MLPBody(nn.Module):
    """Flatten, then ReLU dense layers (for vector observations such as GridWorld's)."""

    features: Sequence[int] = (64,)
    activation: Activation = nn.relu

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = to_float(x).reshape(x.shape[0], -1)
        for features in self.features:
            x = self.activation(Dense(features)(x))
        return x


# Bodies of the original (Kaixhin/Atari models/*.lua) and of the papers.
# Catch: 32x5x5/2 (pad 1) -> 32x5x5/2 (pad 1).           (models/Catch.lua)
# Atari: the original's Nature body with padding 1 on conv1.  (models/Atari.lua)
# Nature: Mnih et al. 2015, no padding.
# Atari2013: Mnih et al. 2013 / the A3C paper's small body.    (models/Atari2013.lua)
# MinAtar: Young and Tian 2019's one 16x3x3/1 convolution (no padding) on the 10x10 grid.
CONV_BODIES: dict[str, tuple[tuple[int, int, int, int], ...]] = {
    "catch": ((32, 5, 2, 1), (32, 5, 2, 1)),
    "atari": ((32, 8, 4, 1), (64, 4, 2, 0), (64, 3, 1, 0)),
    "nature": ((32, 8, 4, 0), (64, 4, 2, 0), (64, 3, 1, 0)),
    "atari2013": ((16, 8, 4, 1), (32, 4, 2, 0)),
    "minatar": ((16, 3, 1, 0),),
}
# The seed blog's keras-rl model: Nature convolutions, then Dense 512 before the heads'
# Dense 256 (its "dense 512 then 256").
DENSE_AFTER_CONV = {"blog": ("nature", (512,))}
BODY_NAMES = (*CONV_BODIES, *DENSE_AFTER_CONV, "mlp")


def body_misfit(name: str, obs_shape: Sequence[int]) -> str | None:
    """Why the built-in body ``name`` cannot take observations of ``obs_shape``, or None.

    Checked before anything is traced: a convolution on a vector, or one whose kernel is
    larger than what is left of the image, would otherwise fail deep inside jit."""
    layers = CONV_BODIES.get(name) or CONV_BODIES.get(DENSE_AFTER_CONV.get(name, ("",))[0])
    if layers is None:
        return None   # mlp flattens anything; a custom body is checked when traced
    if len(obs_shape) != 3:
        return (f"--model-body {name} convolves images [H, W, C], but the observations have "
                f"shape {tuple(obs_shape)}: use --model-body mlp")
    height, width = obs_shape[0], obs_shape[1]
    for index, (_, kernel, stride, pad) in enumerate(layers):
        height = (height + 2 * pad - kernel) // stride + 1
        width = (width + 2 * pad - kernel) // stride + 1
        if height < 1 or width < 1:
            return (f"--model-body {name} needs larger images than {obs_shape[0]}x"
                    f"{obs_shape[1]} (its convolution {index + 1} has a {kernel}x{kernel} "
                    "kernel and nothing left to slide over): use a smaller body, --height "
                    "and --width, or --model-body mlp")
    return None


def make_body(name: str, activation: Activation = nn.relu, mlp_features: Sequence[int] = (64,),
              conv: str = "patch") -> nn.Module:
    """A body by name (see BODY_NAMES) or import path "module:Class".

    A custom body is a flax module class; it is built with ``activation=...`` when it has
    that field, so saliency modes reach its ReLUs too. It receives the stacked history
    ``[B, ...]`` and returns features ``[B, F]`` (the original's -modelBody contract).
    ``conv`` picks the built-in conv bodies' convolution (see PatchConv); custom bodies
    ignore it.
    """
    if name in CONV_BODIES:
        return ConvBody(layers=CONV_BODIES[name], activation=activation, conv=conv)
    if name in DENSE_AFTER_CONV:
        conv_name, dense = DENSE_AFTER_CONV[name]
        return ConvBody(layers=CONV_BODIES[conv_name], dense=dense, activation=activation,
                        conv=conv)
    if name == "mlp":
        return MLPBody(features=tuple(mlp_features), activation=activation)
    body_class = load_object(name, what="model body")
    # Checked before it is called: anything else would run as a constructor here or fail
    # deep inside a jit trace.
    if not (isinstance(body_class, type) and issubclass(body_class, nn.Module)):
        raise ValueError(f"model body {name!r} is a {type(body_class).__name__}, not a flax "
                         "Module class (a class of flax.linen.Module taking [B, ...] and "
                         "returning features [B, F])")
    fields = getattr(body_class, "__dataclass_fields__", {})
    return body_class(activation=activation) if "activation" in fields else body_class()


def load_object(path: str, what: str) -> Any:
    """Imports ``package.module:attribute``; raises ValueError with a one-line message."""
    if ":" not in path:
        raise ValueError(f"unknown {what} {path!r}: expected one of the built-in names or an "
                         "import path 'package.module:Name'")
    module_name, _, attribute = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"cannot import {what} module {module_name!r}: {error}") from None
    if not hasattr(module, attribute):
        raise ValueError(f"module {module_name!r} has no {what} named {attribute!r}")
    return getattr(module, attribute)


class QHead(nn.Module):
    """Dense(hidden) -> ReLU -> Q-values; dueling splits into value and advantage streams.

    Dueling (Wang et al. 2016): Q = V + (A - mean_a A), with the gradient entering the
    shared body rescaled by 1/sqrt(2) as the original's DuelAggregator setup does.
    """

    num_actions: int
    hidden_size: int
    dueling: bool = False
    activation: Activation = nn.relu
    hidden: bool = True   # False: linear streams on features that already passed a core (DRQN)

    @nn.compact
    def __call__(self, features: jax.Array) -> jax.Array:  # [B, F] -> [B, A]
        if not self.hidden:
            return self._linear(features)
        if not self.dueling:
            h = self.activation(Dense(self.hidden_size)(features))
            return Dense(self.num_actions)(h)
        features = scale_gradient(features, 1.0 / math.sqrt(2.0))
        value = Dense(1)(self.activation(Dense(self.hidden_size)(features)))
        advantage = Dense(self.num_actions)(
            self.activation(Dense(self.hidden_size)(features)))
        return dueling_q(value, advantage)

    def _linear(self, features: jax.Array) -> jax.Array:
        """The streams without their hidden layer: the recurrent core took its place."""
        if not self.dueling:
            return Dense(self.num_actions, name="q")(features)
        features = scale_gradient(features, 1.0 / math.sqrt(2.0))
        value = Dense(1, name="value")(features)
        advantage = Dense(self.num_actions, name="advantage")(features)
        return dueling_q(value, advantage)


def dueling_q(value: jax.Array, advantage: jax.Array) -> jax.Array:
    """Q = V + (A - mean_a A) (Wang et al. 2016): [B, 1], [B, A] -> [B, A]."""
    return value + advantage - advantage.mean(axis=-1, keepdims=True)


def ensemble_heads(features: jax.Array, num_heads: int, num_actions: int, hidden_size: int,
                   dueling: bool, activation: Activation, hidden: bool = True) -> jax.Array:
    """K independent ``QHead``s on shared features, called inside a network's compact method
    (the heads' parameters live under its "heads"): [B, F] -> [B, K, A].

    Bootstrapped DQN (Osband et al. 2016): with K > 1 the gradient entering the shared part
    is rescaled by 1/K, so it learns at the same rate whatever the number of heads.
    """
    if num_heads > 1:
        features = scale_gradient(features, 1.0 / num_heads)
    heads = nn.vmap(QHead, variable_axes={"params": 0}, split_rngs={"params": True},
                    in_axes=None, out_axes=1, axis_size=num_heads)
    return heads(num_actions, hidden_size, dueling, activation, hidden=hidden,
                 name="heads")(features)


class _QNetworkParts(nn.Module):
    """What the feedforward and recurrent Q-networks are built from: a body and K heads of
    ``num_actions`` values (dueling or not); ``hidden_size`` is the fully connected layer's
    width, or the LSTM's that replaces it."""

    body: nn.Module
    num_actions: int
    hidden_size: int = 512
    num_heads: int = 1
    dueling: bool = False
    activation: Activation = nn.relu


class QNetwork(_QNetworkParts):
    """Shared body, K independent heads (``ensemble_heads``): ``[B, ...] -> [B, K, A]``."""

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        features = self.body(obs)                                  # [B, F]
        return ensemble_heads(features, self.num_heads, self.num_actions, self.hidden_size,
                              self.dueling, self.activation)       # [B, K, A]


LSTMCarry = tuple[jax.Array, jax.Array]   # (cell, hidden), each [B, H]


def zero_lstm_carry(batch: int, hidden_size: int) -> LSTMCarry:
    return jnp.zeros((batch, hidden_size)), jnp.zeros((batch, hidden_size))


def _forget_bias_one(key, shape, dtype=jnp.float32):
    """Gate biases in the order (input, forget, cell, output); forget starts at 1 so the cell
    remembers by default early in training (Gers et al. 2000), as the original's FastLSTM."""
    hidden = shape[0] // 4
    return jnp.zeros(shape, dtype).at[hidden:2 * hidden].set(1.0)


class LSTMCore(nn.Module):
    """An LSTM over time-major input whose state is zeroed where an episode starts.

    ``reset[t, b]`` zeroes the state before step t reads ``x[t, b]``, so a sequence that
    crosses an episode boundary gives exactly what two separate sequences would. The input
    projection of all T steps is one matmul outside the scan; only the recurrent matmul is
    sequential.
    """

    hidden_size: int

    @nn.compact
    def __call__(self, x: jax.Array, reset: jax.Array, carry: LSTMCarry
                 ) -> tuple[jax.Array, LSTMCarry]:  # x [T, B, F], reset [T, B] -> [T, B, H]
        h_size = self.hidden_size
        gates_x = Dense(4 * h_size, bias_init=_forget_bias_one, name="input")(x)
        recurrent = self.param("recurrent", nn.initializers.orthogonal(), (h_size, 4 * h_size))

        def step(carry, inputs):
            gates_x_t, reset_t = inputs
            keep = (~reset_t)[:, None].astype(gates_x_t.dtype)
            cell, hidden = carry[0] * keep, carry[1] * keep
            gates = gates_x_t + dense_matmul(hidden, recurrent)
            i, f, g, o = jnp.split(gates, 4, axis=-1)
            cell = jax.nn.sigmoid(f) * cell + jax.nn.sigmoid(i) * jnp.tanh(g)
            hidden = jax.nn.sigmoid(o) * jnp.tanh(cell)
            return (cell, hidden), hidden

        carry, outputs = jax.lax.scan(step, carry, (gates_x, reset))
        return outputs, carry


class RecurrentQNetwork(_QNetworkParts):
    """DRQN (Hausknecht and Stone 2015): the body, an LSTM of ``hidden_size`` units in place of
    the fully connected layer, then K linear (or dueling) heads:
    ``obs [T, B, ...], reset [T, B], carry -> (q [T, B, K, A], carry)``.

    One LSTM is shared by the streams and heads (as Hausknecht and Stone and R2D2); the
    original gave each dueling stream its own FastLSTM. The body sees the T*B frames as one
    batch, so only the LSTM runs step by step.
    """

    @nn.compact
    def __call__(self, obs: jax.Array, reset: jax.Array, carry: LSTMCarry
                 ) -> tuple[jax.Array, LSTMCarry]:
        steps, batch = obs.shape[:2]
        features = self.body(obs.reshape(steps * batch, *obs.shape[2:]))    # [T*B, F]
        features = features.reshape(steps, batch, -1)
        outputs, carry = LSTMCore(self.hidden_size, name="lstm")(features, reset, carry)
        outputs = outputs.reshape(steps * batch, -1)                          # [T*B, H]
        q = ensemble_heads(outputs, self.num_heads, self.num_actions, self.hidden_size,
                           self.dueling, self.activation, hidden=False)       # [T*B, K, A]
        return q.reshape(steps, batch, *q.shape[1:]), carry


class ActorCriticNetwork(nn.Module):
    """Shared body and hidden layer, policy logits ``[B, A]`` and value ``[B]`` (Mnih et al. 2016)."""

    body: nn.Module
    num_actions: int
    hidden_size: int = 256
    activation: Activation = nn.relu

    @nn.compact
    def __call__(self, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = self.activation(Dense(self.hidden_size)(self.body(obs)))
        logits = Dense(self.num_actions)(h)
        value = Dense(1)(h)[..., 0]
        return logits, value
