"""The README's library example ("The library" in README.md) as a script.

    python experiments/api_example.py

Crafts class-wise error-minimizing noise (Huang et al., ICLR 2021) on 2,000
Fashion-MNIST images, trains a victim on the protected release and
certifies the crafting surrogate's (q, eta)-learnability (Wang et al., NDSS
2025). The body of `main` is the README's code block, verbatim.
"""


def main():
  import jax
  from jaxue import certify, data, models, noise, train

  x, y = data.load("fashion_mnist", "train")                 # uint8 NHWC, int32
  xt, yt = data.load("fashion_mnist", "test")
  idx = data.stratified_subset(jax.random.key(0), y, 2_000)
  x, y, xt, yt = x[idx], y[idx], xt[:1_000], yt[:1_000]

  model = models.make_model("small_cnn", widths=(16, 32, 64))
  state = train.create_train_state(jax.random.key(1), model, x.shape[1:],
                                   train.make_optimizer(0.1))
  em = noise.error_minimizing_noise(jax.random.key(2), state, x, y, num_classes=10,
                                    mode="classwise", epsilon=32 / 255)
  protected = noise.release(x, y, em.noise, mode="classwise")  # what the owner publishes

  _, history = train.train_victim(jax.random.key(3), model, protected, y,
                                  test=(xt, yt), epochs=4)
  print("victim accuracy", history["test_accuracy"][-1])

  accs = certify.sample_accuracies(jax.random.key(4), model.apply,
                                   em.surrogate.variables, xt, yt, sigma=0.05,
                                   num_draws=100)
  curve = certify.learnability_curve(accs, q=0.9, sigma=0.05)
  print("largest certified eta", curve.largest_certified_eta)
  print("draws for eta = 0.5 at sigma = 0.25:",
        certify.min_draws(q=0.9, sigma=0.25, eta=0.5))


if __name__ == "__main__":
  main()
