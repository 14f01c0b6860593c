"""adamx quickstart: the worked examples by hand, then a small fit.

Run:  python examples/quickstart.py [--steps 300]

1. f(θ) = θ² from θ₀ = 2 with α = 0.1: one Adam step gives θ₁ = 1.9.
2. MSE of w·x against y with w = 0.5, x = 3, y = 4: g = -15, m₁ = -1.5,
   v₁ = 0.225 and w₁ = 0.6. The first step is bias-corrected with t = 1, so
   m̂₁ = g₁ exactly; correcting it with t = 2 instead would give w₁ ≈ 0.574.
3. Softmax regression on scikit-learn's bundled digits (no download), trained
   with adamx.adamw inside optax.chain, against optax.adamw for reference.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import optax

import adamx


def seed_examples() -> None:
    theta = jnp.array(2.0)
    opt = adamx.adam(learning_rate=0.1)
    state = opt.init(theta)
    updates, state = opt.update(jax.grad(lambda t: t**2)(theta), state)
    adam_state = state[0]
    print("f(θ) = θ², θ₀ = 2, α = 0.1")
    print(f"  m₁ = {float(adam_state.mu):.4f}  v₁ = {float(adam_state.nu):.4f}")
    print(f"  θ₁ = {float(optax.apply_updates(theta, updates)):.4f}   (expected 1.9)")

    w = jnp.array(0.5)
    grad = jax.grad(lambda w: (w * 3.0 - 4.0) ** 2)(w)
    updates, state = opt.update(grad, opt.init(w))
    adam_state = state[0]
    print("MSE, w = 0.5, x = 3, y = 4, α = 0.1")
    print(
        f"  g = {float(grad):.4f}  m₁ = {float(adam_state.mu):.4f}  "
        f"v₁ = {float(adam_state.nu):.4f}"
    )
    print(f"  w₁ = {float(optax.apply_updates(w, updates)):.4f}   (expected 0.6)")


def digits_fit(steps: int) -> dict[str, tuple[float, float]]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = jnp.asarray(data.data / 16.0, jnp.float32)
    y = jnp.asarray(data.target)
    n_train = 1500
    params = {"w": jnp.zeros((64, 10)), "b": jnp.zeros(10)}

    def loss_fn(p, xs, ys):
        logits = xs @ p["w"] + p["b"][None, :]
        return optax.softmax_cross_entropy_with_integer_labels(logits, ys).mean()

    def accuracy(p, xs, ys):
        return jnp.mean(jnp.argmax(xs @ p["w"] + p["b"][None, :], axis=-1) == ys)

    results = {}
    optimizers = {
        "adamx.adamw": optax.chain(
            optax.clip_by_global_norm(1.0), adamx.adamw(1e-2, weight_decay=1e-4)
        ),
        "optax.adamw": optax.chain(
            optax.clip_by_global_norm(1.0), optax.adamw(1e-2, weight_decay=1e-4)
        ),
    }
    for name, opt in optimizers.items():

        @jax.jit
        def step(p, s, opt=opt):
            loss, grads = jax.value_and_grad(loss_fn)(p, x[:n_train], y[:n_train])
            updates, s = opt.update(grads, s, p)
            return optax.apply_updates(p, updates), s, loss

        p, s = params, opt.init(params)
        for _ in range(steps):
            p, s, loss = step(p, s)
        results[name] = (float(loss), float(accuracy(p, x[n_train:], y[n_train:])))
    print(f"Softmax regression on digits, {steps} full-batch steps")
    for name, (loss, acc) in results.items():
        print(f"  {name:12s} train loss {loss:.4f}  held-out accuracy {acc:.3f}")
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args(argv)
    seed_examples()
    digits_fit(args.steps)


if __name__ == "__main__":
    main()
