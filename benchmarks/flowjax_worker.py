"""flowjax's side of ``cross_library.py``: a worker process in a separate JAX environment.

Runs under the JAX environment's Python (``/work/venv-jax``: ``jax[cpu]==0.4.38``,
``flowjax==19.0.0``; JAX is never installed next to torch). It reads one JSON command a line
on stdin and answers one JSON line on stdout, so that ``cross_library.py`` can interleave its
timings with the torch libraries' round by round. The thread count is fixed when the process
starts (``XLA_FLAGS``): ``cross_library.py`` starts one worker per thread count.

Models, matched to ``peers.py`` where flowjax's public builders allow: 4 layers, conditioners
of two hidden layers of ``hidden`` units (``nn_depth=2``), 8 spline bins (``knots=7`` inner
knots) on [-5, 5] with identity tails; ``invert=True`` (flowjax's setting for density
estimation: ``log_prob`` runs the fast direction). Differences (reported by the ``build``
answer): flowjax puts a fixed random permutation between layers (a flip at D = 2) where the
others reverse or swap, and its affine layers use a softplus scale (with a 0.01 floor).

Commands (``{"cmd": ...}``): ``build`` (kind, d, data: an .npz with train/val/test/logjac and
the batch indices), ``warm`` (op, batch: compiles; answers the seconds), ``time`` (op, batch:
wall-clock and process CPU seconds per call, the call repeated until ``min_time`` has
passed), ``train_for`` (cpu_seconds: Adam steps on the next batches of ``batches`` until that
much process CPU time has been spent inside the steps), ``nll`` (split: val or test, in nats
per example, test with the preprocessing's log-Jacobian), ``fit`` (steps, eval_every:
``run.py``'s protocol, early stopping on validation), ``quit``.
"""

from __future__ import annotations

import json
import sys
import time


def main() -> None:
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import jax.random as jr
    import numpy as np
    import optax
    import paramax
    from flowjax.bijections import RationalQuadraticSpline
    from flowjax.distributions import Normal
    from flowjax.flows import coupling_flow, masked_autoregressive_flow

    state: dict = {}

    def build(kind, d, data, layers=4, hidden=128, bins=8, bound=5.0, lr=1e-3, seed=0):
        arrays = np.load(data)
        state.update({k: jnp.asarray(arrays[k]) for k in arrays.files})
        key = jr.key(seed)
        base = Normal(jnp.zeros(d))
        kw = dict(base_dist=base, flow_layers=layers, nn_width=hidden, nn_depth=2, invert=True)
        spline = RationalQuadraticSpline(knots=bins - 1, interval=bound)
        if kind == "maf":
            flow = masked_autoregressive_flow(key, **kw)
        elif kind == "nsf-ar":
            flow = masked_autoregressive_flow(key, transformer=spline, **kw)
        elif kind == "nsf-c":
            flow = coupling_flow(key, transformer=spline, **kw)
        elif kind == "realnvp":
            flow = coupling_flow(key, **kw)
        else:
            return {"error": f"no {kind} in flowjax"}
        params, static = eqx.partition(
            flow, eqx.is_inexact_array, is_leaf=lambda x: isinstance(x, paramax.NonTrainable)
        )
        opt = optax.adam(lr)
        state.update(params=params, static=static, opt=opt, opt_state=opt.init(params), pos=0)

        def loss_fn(p, x):
            f = paramax.unwrap(eqx.combine(p, static))
            return -f.log_prob(x).mean()

        @eqx.filter_jit
        def step(p, s, x):
            loss, g = eqx.filter_value_and_grad(loss_fn)(p, x)
            upd, s = opt.update(g, s, p)
            return eqx.apply_updates(p, upd), s, loss

        @eqx.filter_jit
        def log_prob(p, x):
            return paramax.unwrap(eqx.combine(p, static)).log_prob(x)

        @eqx.filter_jit
        def sample(p, key, n):
            return paramax.unwrap(eqx.combine(p, static)).sample(key, (n,))

        state.update(step=step, log_prob=log_prob, sample=sample)
        n = sum(a.size for a in jax.tree_util.tree_leaves(params))
        note = "random permutations between layers; softplus affine scale" + (
            "" if kind in ("nsf-ar", "nsf-c") else " (0.01 floor)"
        )
        return {"params": int(n), "note": note}

    def batch(b):
        """The next ``b`` rows: fixed indices (as the torch libraries), wrapping around."""
        if b == 256 and "batches" in state:
            idx = state["batches"][state["pos"] % len(state["batches"])]
            state["pos"] += 1
            return state["train"][idx]
        return state["train"][jnp.arange(b) % len(state["train"])]

    fixed: dict = {}

    def op_fn(op, b):
        """A call of the operation that waits for its result."""
        if (op, b) not in fixed:
            fixed[op, b] = batch(b)
        x = fixed[op, b]
        if op == "train":

            def f():
                p, s, loss = state["step"](state["params"], state["opt_state"], x)
                loss.block_until_ready()
                state["params"], state["opt_state"] = p, s

        elif op == "log_prob":

            def f():
                state["log_prob"](state["params"], x).block_until_ready()

        else:
            key = jr.key(1)

            def f():
                state["sample"](state["params"], key, b).block_until_ready()

        return f

    def nll(split, chunk=1000):
        x = state[split]
        lp = jnp.concatenate(
            [state["log_prob"](state["params"], x[i : i + chunk]) for i in range(0, len(x), chunk)]
        )
        lj = np.asarray(state["logjac"], np.float64) if split == "test" else 0.0
        return float(-(np.asarray(lp, np.float64) + lj).mean())

    def train_steps(cpu_seconds=None, steps=None):
        spent, cpu, n = 0.0, 0.0, 0
        while (cpu_seconds is None or cpu < cpu_seconds) and (steps is None or n < steps):
            x = batch(256)
            t0, c0 = time.perf_counter(), time.process_time()
            p, s, loss = state["step"](state["params"], state["opt_state"], x)
            loss.block_until_ready()
            spent += time.perf_counter() - t0
            cpu += time.process_time() - c0
            state["params"], state["opt_state"] = p, s
            n += 1
        return spent, cpu, n, float(loss)

    for line in sys.stdin:
        msg = json.loads(line)
        cmd = msg.pop("cmd")
        try:
            if cmd == "quit":
                break
            if cmd == "build":
                fixed.clear()
                ans = build(**msg)
            elif cmd == "warm":  # compiles; the model and the batch position are kept
                kept = state["params"], state["opt_state"], state["pos"]
                t0 = time.perf_counter()
                op_fn(msg["op"], msg["batch"])()
                ans = {"s": time.perf_counter() - t0}
                state["params"], state["opt_state"], state["pos"] = kept
            elif cmd == "time":
                f = op_fn(msg["op"], msg["batch"])
                n, t0, c0 = 0, time.perf_counter(), time.process_time()
                while True:
                    f()
                    n += 1
                    dt = time.perf_counter() - t0
                    if dt >= msg.get("min_time", 0.05):
                        break
                ans = {"s": dt / n, "cpu_s": (time.process_time() - c0) / n}
            elif cmd == "train_for":
                spent, cpu, n, loss = train_steps(cpu_seconds=msg["cpu_seconds"])
                ans = {"spent": spent, "cpu": cpu, "steps": n, "loss": loss}
            elif cmd == "nll":
                ans = {"nll": nll(msg["split"])}
            elif cmd == "fit":
                state["pos"] = 0
                best, best_step, best_params = float("inf"), None, None
                done = 0
                while done < msg["steps"]:
                    k = min(msg["eval_every"], msg["steps"] - done)
                    _, _, _, loss = train_steps(steps=k)
                    done += k
                    if not np.isfinite(loss):
                        ans = {"error": f"non-finite loss at step {done}"}
                        break
                    v = nll("val")
                    if v < best:
                        best, best_step, best_params = v, done, state["params"]
                else:
                    state["params"] = best_params
                    ans = {"test_nll": nll("test"), "best_step": best_step}
            else:
                ans = {"error": f"unknown command {cmd}"}
        except Exception as e:  # answered, so that the caller can record it and go on
            ans = {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps(ans), flush=True)


if __name__ == "__main__":
    main()
