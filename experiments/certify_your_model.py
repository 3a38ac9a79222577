"""Certified (q, eta)-learnability of your own flax model (Wang et al., NDSS
2025, "Certified (q, eta)-Learnability"), in two jaxue calls.

    python -m experiments.certify_your_model [--images 2000] [--steps 300]
        [--draws 200] [--sigma 0.05]
"""

import argparse

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import jaxue


class MyNet(nn.Module):
  """Your model: any linen module (or NNX module, or apply function)."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(8, (3, 3), strides=(2, 2))(x))
    x = nn.relu(nn.Conv(16, (3, 3), strides=(2, 2))(x))
    return nn.Dense(10)(x.reshape(x.shape[0], -1))


def train(key, model, x, y, steps, lr=0.1, batch=64):
  """Plain SGD on float images in [0, 1]: stands in for your training."""
  x, y = jnp.asarray(x, jnp.float32) / 255, jnp.asarray(y)
  params = model.init(key, x[:1])

  def loss(p, xb, yb):
    logp = jax.nn.log_softmax(model.apply(p, xb))
    return -jnp.take_along_axis(logp, yb[:, None], axis=1).mean()

  @jax.jit
  def step(p, i):
    idx = jax.random.choice(jax.random.fold_in(key, i), len(y), (batch,))
    grads = jax.grad(loss)(p, x[idx], y[idx])
    return jax.tree.map(lambda w, g: w - lr * g, p, grads)

  for i in range(steps):
    params = step(params, i)
  return params


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--images", type=int, default=2000)
  p.add_argument("--steps", type=int, default=300)
  p.add_argument("--draws", type=int, default=200)
  p.add_argument("--sigma", type=float, default=0.05)
  args = p.parse_args(argv)
  x, y = jaxue.data.load("fashion_mnist", "test")
  half = args.images // 2  # Train on one half, certify on the other.
  model = MyNet()
  params = train(jax.random.key(0), model, x[:half], y[:half], args.steps)
  # The certification: Monte-Carlo accuracies, then the (q, eta) bound.
  accs = jaxue.sample_accuracies(jax.random.key(1), model, params,
                                 x[half:args.images], y[half:args.images],
                                 sigma=args.sigma, num_draws=args.draws)
  curve = jaxue.learnability_curve(accs, q=0.9, sigma=args.sigma)
  print(f"mean smoothed accuracy {np.mean(accs):.3f} over {args.draws} draws")
  for eta, value in zip(curve.etas, curve.values):
    print(f"eta {eta:<6g} " + ("abstain" if value is None else f"{value:.3f}"))
  return curve


if __name__ == "__main__":
  main()
