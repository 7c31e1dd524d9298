"""The cross-library speed table: flowforge, zuko, nflows, normflows and FrEIA (and flowjax,
through a worker process in its own JAX environment) on matched architectures.

    python benchmarks/cross_library.py                      # everything (~50 min, shared 2 cores)
    python benchmarks/cross_library.py --parts throughput   # one part; merged into the JSON
    python benchmarks/cross_library.py --quick              # smoke run, under 2 minutes

Four parts, each merged into ``results/cross_library.json`` (a part run alone replaces only
its own section) and all rendered to ``results/cross_library.md``:

``throughput``
    Training (Adam steps) at batch 256 and 1,024, ``log_prob`` and sampling at batch 1,024 and
    10,000, examples/s, at 1 and 2 threads, for D = 2 (moons), D = 8 (digits on 8 principal
    components, see :func:`pca8`) and D = 64 (digits); MAF, RealNVP, NSF autoregressive and
    coupling (Glow on digits). The same models as ``run.py`` (``peers.py``: 4 layers, two hidden
    layers of 128, 8 bins). The floor (``floor.py``: flowforge's conditioners and Adam alone) is
    timed as one more "library". The machine is shared, so the timings are interleaved: for
    each operation, ``--rounds`` rounds, each timing every library once (in an order that
    rotates between rounds), and the median over rounds is reported; the load average is
    recorded with every group. One timing repeats the call until 50 ms have passed and records
    both the wall-clock and the process CPU time: the tables give examples per CPU second at 1
    thread (on a shared machine, the wall clock also counts the other jobs' time slices) and per
    wall-clock second at 2 threads (which needs a quiet machine: docs/speed.md). A call slower
    than ``SLOW`` seconds is timed in the first round only, and batch 10,000 is not timed when
    batch 1,024 predicts a call over ``SKIP`` seconds (a peer's autoregressive sampling at
    D = 64, one MADE pass per dimension): such cells say so.
``memory``
    The bytes autograd saves for the backward pass of one training step (``run.saved_bytes``),
    at batch 256 and 1,024; and on digits at batch 1,024 the rise of the process's peak RSS
    over two training steps (the first creates Adam's state), each model in a fresh process,
    the peak reset before the steps (``/proc/self/clear_refs``). flowjax is left out (JAX has
    no saved tensors to count).
``nll``
    Test NLL after 400 Adam steps at batch 256 (``run.run_one``: early stopping on validation
    every 25 steps), one seed (seed 0; ``run.py --seeds 3`` has three for digits and moons).
``curve``
    Test NLL against training time on digits, for each library's best model of about the same
    size (NSF autoregressive; FrEIA has no spline layer: RealNVP). The libraries train in turn,
    ``--chunk`` CPU seconds each, until each has trained ``--budget`` CPU seconds; only the time
    inside training steps counts (evaluations are not timed; wall-clock is recorded too).
    Writes the curve to the JSON and a PNG (``docs/img/nll_vs_time.png``), and the time each
    library takes to reach 110, 105 and 102 nats.

``--compile LIBS`` adds, to the throughput part, each named library once more as
``LIB+compile``: its training loss and its ``log_prob`` through ``torch.compile`` (static
shapes, one compiled program per batch size, the trainer's one-thread kernels
``COMPILE_OPTIONS``; the optimizer step stays eager, as in every library), timed at one thread
only (those kernels do not use a second) in the same rounds as the rest. Sampling is not
compiled. The first call's time (the compilation) is recorded as ``first_call_s``, and the
compiled ``log_prob``'s largest difference from the eager one in the notes; a library whose
model does not compile is left out of that cell, the error in the notes.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from floor import floor_fns  # noqa: E402
from peers import LIBRARIES, Unavailable  # noqa: E402
from run import digits, make_batches, run_one, saved_bytes, test_nll, toy  # noqa: E402

from flowforge._util import COMPILE_OPTIONS  # noqa: E402

RESULTS = Path(__file__).parent / "results"
IMG = Path(__file__).parent.parent / "docs" / "img"
ARCH = dict(layers=4, hidden=128, bins=8)
LR = 1e-3
SLOW = 2.0  # seconds: a call slower than this is timed in the first round only
SKIP = 10.0  # seconds: batch 10,000 is not timed when it would take longer than this
MIN_TIME = 0.05  # one timing repeats the call until this many seconds have passed
THRESHOLDS = (110.0, 105.0, 102.0)  # nats: the curve part reports the time to reach these
CURVE_MODELS = {  # each library's best model of about 0.9M parameters on digits
    "flowjax": "nsf-ar",
    "flowforge": "nsf-ar",
    "zuko": "nsf-ar",
    "nflows": "nsf-ar",
    "normflows": "nsf-ar",
    "FrEIA": "realnvp",
}
FLOWJAX_PYTHON = os.environ.get("FLOWJAX_PYTHON", "/work/venv-jax/bin/python")
ONE_THREAD_XLA = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


class Flowjax:
    """A ``flowjax_worker.py`` process in the JAX environment, at a fixed thread count."""

    def __init__(self, threads: int, tmp: Path):
        if not Path(FLOWJAX_PYTHON).exists():
            raise Unavailable(f"no JAX environment at {FLOWJAX_PYTHON} (set FLOWJAX_PYTHON)")
        env = dict(os.environ, JAX_PLATFORMS="cpu")
        if threads == 1:
            env["XLA_FLAGS"] = ONE_THREAD_XLA
        elif threads != os.cpu_count():
            raise Unavailable(f"flowjax runs at 1 thread or all {os.cpu_count()}")
        worker = Path(__file__).with_name("flowjax_worker.py")
        self.proc = subprocess.Popen(
            [FLOWJAX_PYTHON, str(worker)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True, env=env,
        )  # fmt: skip
        self.tmp = tmp
        self.threads = threads

    def ask(self, **msg) -> dict:
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise Unavailable("the flowjax worker stopped")
        ans = json.loads(line)
        if "error" in ans:
            raise Unavailable(f"flowjax: {ans['error']}")
        return ans

    def build(self, kind: str, data, batches=None) -> dict:
        train, val, test, logjac = data
        f = self.tmp / f"data{self.threads}.npz"
        arrays = {"train": train.numpy(), "val": val.numpy(), "test": test.numpy(),
                  "logjac": logjac.numpy()}  # fmt: skip
        if batches is not None:
            arrays["batches"] = torch.stack(batches).numpy().astype(np.int32)
        np.savez(f, **arrays)
        return self.ask(cmd="build", kind=kind, d=train.shape[1], data=str(f), lr=LR, **ARCH)

    def close(self):
        try:
            self.ask(cmd="quit")
        except Exception:
            pass
        self.proc.wait(timeout=30)


class RemoteOp:
    """One of the worker's operations: calling it warms up (compiles), ``once()`` times it."""

    def __init__(self, worker: Flowjax, op: str, batch: int):
        self.worker, self.op, self.batch = worker, op, batch
        self.compile_s = None

    def __call__(self):
        s = self.worker.ask(cmd="warm", op=self.op, batch=self.batch)["s"]
        self.compile_s = s if self.compile_s is None else self.compile_s

    def once(self) -> tuple[float, float]:
        ans = self.worker.ask(cmd="time", op=self.op, batch=self.batch, min_time=MIN_TIME)
        return ans["s"], ans["cpu_s"]


# -- data ----------------------------------------------------------------------------------------


def pca8(k: int = 8):
    """A real 8-D data set: the digits (dequantized, logit, standardised: ``run.digits``)
    projected on their first ``k`` principal components, fitted on the 1,000 training rows, and
    standardised with the training rows' statistics. Deterministic (each component's sign is
    fixed so that its largest loading is positive). The NLL is in the units of those
    standardised scores."""
    tr, va, te, _ = digits()
    x = tr.double()
    mu = x.mean(0)
    _, _, vt = torch.linalg.svd(x - mu, full_matrices=False)
    w = vt[:k].T  # (64, k)
    w = w * torch.sign(w.gather(0, w.abs().argmax(0, keepdim=True)))
    s_tr = (x - mu) @ w
    m, sd = s_tr.mean(0), s_tr.std(0)

    def f(a):
        return ((a.double() - mu) @ w - m).div(sd).float()

    logjac = torch.full((len(te),), float(-sd.log().sum()))
    return f(tr), f(va), f(te), logjac


def load(name: str):
    if name == "digits":
        return digits()
    if name == "pca8":
        return pca8()
    return toy(name)


# -- timing --------------------------------------------------------------------------------------


def build(lib: str, kind: str, d: int):
    """``lib``'s model of ``kind`` at the benchmark's architecture, seeded; None if the library
    cannot build it."""
    torch.manual_seed(0)
    try:
        return LIBRARIES[lib](kind, d, ARCH["layers"], ARCH["hidden"], ARCH["bins"])
    except Unavailable:
        return None


def _once(fn) -> tuple[float, float]:
    """Wall-clock and process CPU seconds per call of ``fn``: calls repeated until
    ``MIN_TIME`` has passed."""
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    while True:
        fn()
        n += 1
        dt = time.perf_counter() - t0
        if dt >= MIN_TIME:
            return dt / n, (time.process_time() - c0) / n


def _ops(model, data, batch_sizes, eval_sizes, seed=0):
    """``{(op, batch): fn}`` for one library's model: a training step (Adam), ``log_prob`` and
    sampling (eval mode, no grad)."""
    train = data[0]
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.module.parameters(), lr=LR)
    ops = {}
    for b in batch_sizes:
        xb = train[torch.randint(0, len(train), (b,), generator=g)]

        def step(xb=xb):
            model.module.train()
            loss = -model.log_prob(xb).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        ops["train", b] = step
    for b in eval_sizes:
        xe = train[torch.randint(0, len(train), (b,), generator=g)]

        @torch.no_grad()
        def lp(xe=xe):
            model.module.eval()
            model.log_prob(xe)

        @torch.no_grad()
        def smp(b=b):
            model.module.eval()
            model.sample(b)

        ops["log_prob", b] = lp
        ops["sample", b] = smp
    return ops


class CompiledOp:
    """A compiled operation: the first call (the compilation) is timed as ``compile_s``."""

    def __init__(self, fn):
        self.fn, self.compile_s = fn, None

    def __call__(self):
        if self.compile_s is not None:
            return self.fn()
        t0 = time.perf_counter()
        self.fn()
        self.compile_s = time.perf_counter() - t0


def _compiled_ops(model, data, batch_sizes, eval_sizes, seed=0):
    """``_ops`` through ``torch.compile``: the training loss and ``log_prob``, one static-shape
    program per batch size, on the same batches as ``_ops`` (the same seed). Returns the ops
    and a function that gives the largest difference of the compiled ``log_prob`` from the
    eager one (to call after the ops have compiled)."""
    train = data[0]
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.module.parameters(), lr=LR)
    # dynamo keeps its compiled programs on the code object, so functions made by the same
    # lambda share one cache (and past its recompile limit run eagerly, silently): every
    # model and batch size gets a code object of its own

    def compiled(fn):
        own = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__,
                                 fn.__defaults__, fn.__closure__)  # fmt: skip
        return torch.compile(own, dynamic=False, options=COMPILE_OPTIONS)

    ops, scored = {}, []
    for b in batch_sizes:
        xb = train[torch.randint(0, len(train), (b,), generator=g)]
        if not ops:  # data-dependent initialisation (DataStandardize, ActNorm) eagerly,
            with torch.no_grad():  # from the batch the eager model's first call takes it from
                model.module.train()
                model.log_prob(xb)
        loss = compiled(lambda x: -model.log_prob(x).mean())

        def step(xb=xb, loss=loss):
            model.module.train()
            opt.zero_grad(set_to_none=True)
            loss(xb).backward()
            opt.step()

        ops["train", b] = CompiledOp(step)
    for b in eval_sizes:
        xe = train[torch.randint(0, len(train), (b,), generator=g)]
        lp = compiled(lambda x: model.log_prob(x))

        @torch.no_grad()
        def score(xe=xe, lp=lp):
            model.module.eval()
            return lp(xe)

        ops["log_prob", b] = CompiledOp(score)
        scored.append((xe, score))

    @torch.no_grad()
    def max_abs_diff() -> float:
        model.module.eval()
        return max((f() - model.log_prob(x)).abs().max().item() for x, f in scored)

    return ops, max_abs_diff


def _floor_ops(kind, d, batch_sizes, eval_sizes):
    """The floor's operations (``floor.py``), on a flowforge model built for the purpose.
    Sampling: for coupling models the inverse runs each conditioner once, as ``log_prob``
    does; an autoregressive inverse runs it D times, which is not timed here."""
    torch.manual_seed(0)
    model = LIBRARIES["flowforge"](kind, d, ARCH["layers"], ARCH["hidden"], ARCH["bins"])
    ops = {}
    for b, e in zip(batch_sizes, eval_sizes):
        fns = floor_fns(model.module, b, e, LR)
        if fns is None:
            return {}
        ops["train", b] = fns[0]
    for e in eval_sizes:
        _, density = floor_fns(model.module, batch_sizes[0], e, LR)
        ops["log_prob", e] = density
        if kind in ("nsf-c", "realnvp", "glow"):
            ops["sample", e] = density
    return ops


def interleaved(
    fns: dict, ops: list, rounds: int, skip_big: dict | None = None, errors: dict | None = None
) -> dict:
    """Median seconds per call of every ``fns[lib][op]``, timed round-robin over the libraries
    (the order rotated each round) within each op. Returns ``{lib: {op: record}}``: wall-clock
    (``s``, ``ex_s``) and process CPU time (``cpu_s``, ``cpu_ex_s``), medians over rounds.
    With ``errors``, a compiled library (``CompiledOp``) whose warm-up call (the compilation)
    raises is left out of that op and the error stored as ``errors[lib]``; otherwise errors
    propagate."""
    libs = list(fns)
    out = {lib: {} for lib in libs}
    for op in ops:
        todo = [lib for lib in libs if op in fns[lib]]
        times = {lib: [] for lib in todo}
        cpu = {lib: [] for lib in todo}
        for lib in list(todo):
            reason = (skip_big or {}).get((lib, op))
            if reason is None and op[1] >= 10_000:
                small = out[lib].get((op[0], 1024), {}).get("s")
                if small is not None and small * op[1] / 1024 > SKIP:
                    reason = f"not timed: batch 1,024 took {small:.2f} s a call"
            if reason:
                out[lib][op] = {"skipped": reason}
                todo.remove(lib)
        for lib in list(todo):  # warm-up: allocations, lazy initialisation, Adam's state
            try:
                fns[lib][op]()
            except Exception as e:  # noqa: BLE001 - a compiler's failure is a result here
                if errors is None or not isinstance(fns[lib][op], CompiledOp):
                    raise
                errors[lib] = f"did not compile: {type(e).__name__}: {str(e).splitlines()[0]}"
                out[lib][op] = {"skipped": errors[lib]}
                todo.remove(lib)
        for r in range(rounds):
            k = r % max(len(todo), 1)
            for lib in todo[k:] + todo[:k]:
                if r and times[lib] and times[lib][0] > SLOW:
                    continue
                f = fns[lib][op]
                wall, c = f.once() if isinstance(f, RemoteOp) else _once(f)
                times[lib].append(wall)
                cpu[lib].append(c)
        for lib in todo:
            s, c = statistics.median(times[lib]), statistics.median(cpu[lib])
            out[lib][op] = {"s": s, "ex_s": op[1] / s, "cpu_s": c, "cpu_ex_s": op[1] / c,
                            "rounds": len(times[lib]), "times_s": times[lib],
                            "cpu_times_s": cpu[lib]}  # fmt: skip
            if isinstance(fns[lib][op], (RemoteOp, CompiledOp)):
                out[lib][op]["first_call_s"] = fns[lib][op].compile_s
    return out


def part_throughput(args, datasets, models, libs) -> dict:
    batch_sizes, eval_sizes = args.train_batches, args.eval_batches
    ops = [("train", b) for b in batch_sizes]
    ops += [(o, b) for b in eval_sizes for o in ("log_prob", "sample")]
    records, params, jax, notes_all = [], {}, {}, {}
    tmp = Path(tempfile.mkdtemp(prefix="cross_library_"))  # the flowjax workers' data files
    if "flowjax" in libs:
        try:
            jax = {t: Flowjax(t, tmp) for t in args.threads}
        except Unavailable as e:
            print(f"flowjax: {e}")
    for ds in datasets:
        data = load(ds)
        d = data[0].shape[1]
        for kind in models:
            if kind == "glow" and ds != "digits":
                continue
            fns, notes, checks = {}, {}, {}
            notes_all[f"{ds}/{kind}"] = notes
            jax_ops = {}
            for t, worker in jax.items():
                try:
                    ans = worker.build(kind, data)
                except Unavailable:
                    continue
                params[f"{ds}/{kind}/flowjax"] = ans["params"]
                notes["flowjax"] = ans["note"]
                jax_ops[t] = {op: RemoteOp(worker, *op) for op in ops}
            for lib in libs:
                if lib == "flowjax":
                    if jax_ops:
                        print(f"{ds:7s} D={d:<3d} {kind:8s} flowjax    params "
                              f"{params[f'{ds}/{kind}/flowjax']:>9,d}", flush=True)  # fmt: skip
                    continue
                m = build(lib, kind, d)
                if m is None:
                    continue
                params[f"{ds}/{kind}/{lib}"] = m.params()
                notes[lib] = m.note
                fns[lib] = _ops(m, data, batch_sizes, eval_sizes)
                print(f"{ds:7s} D={d:<3d} {kind:8s} {lib:10s} params {m.params():>9,d}", flush=True)
                if lib in args.compile and 1 in args.threads:
                    mc = build(lib, kind, d)  # a model of its own: the same start, own steps
                    fns[lib + "+compile"], checks[lib + "+compile"] = _compiled_ops(
                        mc, data, batch_sizes, eval_sizes
                    )
                    params[f"{ds}/{kind}/{lib}+compile"] = mc.params()
            fl = _floor_ops(kind, d, batch_sizes, eval_sizes)
            if fl:
                fns["floor"] = fl
            for threads in args.threads:
                torch.set_num_threads(threads)
                fns.pop("flowjax", None)
                if threads in jax_ops:
                    fns["flowjax"] = jax_ops[threads]
                timed = {lib: f for lib, f in fns.items() if threads == 1 or lib not in checks}
                load0 = os.getloadavg()
                t0 = time.perf_counter()
                res = interleaved(timed, ops, args.rounds, errors=notes)
                load1 = os.getloadavg()
                for lib, check in checks.items():
                    if threads == 1 and lib not in notes:
                        diff = check()  # on the model after its timed training steps
                        notes[lib] = (
                            f"compiled log_prob - eager: max |diff| {diff:.2e}"
                            if diff == diff
                            else "log_prob not finite after the timed training steps"
                        )
                for lib, cells in res.items():
                    for (op, b), cell in cells.items():
                        records.append(
                            {
                                "dataset": ds,
                                "D": d,
                                "model": kind,
                                "library": lib,
                                "threads": threads,
                                "op": op,
                                "batch": b,
                                **cell,
                                "loadavg_1min": [load0[0], load1[0]],
                            }  # fmt: skip
                        )
                line = "  ".join(
                    f"{lib} {res[lib].get(('train', batch_sizes[0]), {}).get('ex_s', 0):,.0f}"
                    for lib in res
                )
                print(
                    f"  {threads} thread(s), {time.perf_counter() - t0:.0f} s, load "
                    f"{load0[0]:.1f}->{load1[0]:.1f}; train@{batch_sizes[0]}: {line}",
                    flush=True,
                )
    torch.set_num_threads(1)
    for worker in jax.values():
        worker.close()
    shutil.rmtree(tmp, ignore_errors=True)
    return {"records": records, "params": params, "rounds": args.rounds, "notes": notes_all,
            "train_batches": batch_sizes, "eval_batches": eval_sizes, "threads": args.threads,
            "min_time_s": MIN_TIME, "slow_s": SLOW, "skip_s": SKIP}  # fmt: skip


# -- memory --------------------------------------------------------------------------------------


def _vm_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def rss_growth(lib: str, kind: str, ds: str, batch: int) -> dict:
    """In this (fresh) process: the rise of the peak RSS over two training steps of one model.

    The peak is reset just before the steps (``/proc/self/clear_refs``, Linux): a child's
    ``ru_maxrss`` starts at its parent's RSS, so it cannot be used here."""
    torch.set_num_threads(1)
    data = load(ds)
    torch.manual_seed(0)
    m = LIBRARIES[lib](kind, data[0].shape[1], ARCH["layers"], ARCH["hidden"], ARCH["bins"])
    g = torch.Generator().manual_seed(0)
    x = data[0][torch.randint(0, len(data[0]), (batch,), generator=g)]
    opt = torch.optim.Adam(m.module.parameters(), lr=LR)
    with torch.no_grad():
        m.log_prob(x[:2])  # lazy initialisation outside the measured window
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    base = _vm_kb("VmRSS")
    for _ in range(2):
        loss = -m.log_prob(x).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    peak = _vm_kb("VmHWM")
    return {"rss_growth_MB": (peak - base) / 1024, "rss_before_MB": base / 1024}


def part_memory(args, datasets, models, libs) -> dict:
    torch.set_num_threads(1)
    records = []
    for ds in datasets:
        data = load(ds)
        d = data[0].shape[1]
        g = torch.Generator().manual_seed(0)
        for kind in models:
            if kind == "glow" and ds != "digits":
                continue
            for lib in libs:
                if lib not in LIBRARIES:  # flowjax: JAX has no autograd saved tensors to count
                    continue
                m = build(lib, kind, d)
                if m is None:
                    continue
                rec = {"dataset": ds, "model": kind, "library": lib, "params": m.params()}
                m.module.train()
                for b in args.train_batches:
                    x = data[0][torch.randint(0, len(data[0]), (b,), generator=g)]
                    rec[f"saved_MB_{b}"] = saved_bytes(m, x) / 2**20
                if ds == args.rss_dataset:
                    b = args.train_batches[-1]
                    cmd = [sys.executable, __file__, "--rss", lib, kind, ds, str(b)]
                    r = subprocess.run(cmd, capture_output=True, text=True, check=True)
                    rec.update(json.loads(r.stdout.strip().splitlines()[-1]))
                    rec["rss_batch"] = b
                records.append(rec)
                print(
                    f"{ds:7s} {kind:8s} {lib:10s} "
                    + "  ".join(f"{k} {v:.2f}" for k, v in rec.items() if "MB" in k),
                    flush=True,
                )
    return {"records": records}


# -- NLL after a fixed budget --------------------------------------------------------------------

# (library, model, data set) pairs left out of the NLL part, and why
NLL_SKIP = {
    ("normflows", "maf", "digits"): "not run: its D-pass log_prob makes 400 steps take ~7 min "
    "(run.py's full table has it)",
}


def _flowjax_fit(kind, data, cfg, batches) -> dict:
    """``run_one``'s training protocol (same batches, early stopping) in the flowjax worker."""
    with tempfile.TemporaryDirectory() as tmp:
        worker = Flowjax(1, Path(tmp))
        try:
            ans = worker.build(kind, data, batches)
            fit = worker.ask(cmd="fit", steps=cfg["steps"], eval_every=cfg["eval_every"])
        finally:
            worker.close()
    return {"params": ans["params"], **fit}


def part_nll(args, datasets, models, libs) -> dict:
    torch.set_num_threads(1)
    cfg = dict(ARCH, batch=256, lr=LR, steps=args.steps, eval_batch=1000, sample_batch=100,
               eval_every=25 if args.steps >= 100 else 5, min_time=0.0)  # fmt: skip
    records = []
    for ds in datasets:
        data = load(ds)
        batches = make_batches(len(data[0]), cfg, 0)
        for kind in models:
            if kind == "glow" and ds != "digits":
                continue
            for lib in libs:
                rec = {"dataset": ds, "model": kind, "library": lib, "seed": 0}
                if (lib, kind, ds) in NLL_SKIP and not args.quick:
                    records.append({**rec, "skipped": NLL_SKIP[lib, kind, ds]})
                    continue
                t0 = time.perf_counter()
                try:
                    if lib == "flowjax":
                        row = _flowjax_fit(kind, data, cfg, batches)
                    else:
                        row = run_one(lib, kind, data, cfg, batches, 0)
                except Unavailable:
                    continue
                rec.update(
                    params=row["params"],
                    test_nll=row.get("test_nll"),
                    best_step=row.get("best_step"),
                    error=row.get("error"),
                    wall_s=time.perf_counter() - t0,
                )
                records.append(rec)
                print(f"{ds:7s} {kind:8s} {lib:10s} NLL {rec['test_nll']}", flush=True)
    return {"records": records, "steps": args.steps, "batch": 256, "seeds": [0]}


# -- NLL against time ----------------------------------------------------------------------------


def part_curve(args, libs) -> dict:
    torch.set_num_threads(1)
    train, val, test, logjac = digits()
    d = train.shape[1]
    runs, worker = {}, None
    tmp = Path(tempfile.mkdtemp(prefix="cross_library_"))
    for lib in libs:
        kind = CURVE_MODELS.get(lib)
        if kind is None:
            continue
        if lib == "flowjax":
            g = torch.Generator().manual_seed(0)  # the torch libraries' first 20,000 batches
            batches = [torch.randint(0, len(train), (256,), generator=g) for _ in range(20_000)]
            try:
                worker = Flowjax(1, tmp)
                ans = worker.build(kind, (train, val, test, logjac), batches)
                worker.ask(cmd="warm", op="train", batch=256)  # compiles, outside the budget
                worker.ask(cmd="nll", split="val")
            except Unavailable as e:
                print(f"flowjax: {e}")
                continue
            runs[lib] = {"remote": worker, "params": ans["params"], "spent": 0.0, "cpu": 0.0,
                         "steps": 0, "points": [], "kind": kind}  # fmt: skip
            continue
        m = build(lib, kind, d)
        if m is None:
            continue
        runs[lib] = {
            "model": m,
            "opt": torch.optim.Adam(m.module.parameters(), lr=LR),
            "gen": torch.Generator().manual_seed(0),  # the same batches for every library
            "spent": 0.0,
            "cpu": 0.0,
            "steps": 0,
            "points": [],
            "kind": kind,
        }

    def evaluate(r):
        if "remote" in r:
            v = r["remote"].ask(cmd="nll", split="val")["nll"]
            t = r["remote"].ask(cmd="nll", split="test")["nll"]
        else:
            r["model"].module.eval()
            v = test_nll(r["model"], val, torch.zeros(len(val)))
            t = test_nll(r["model"], test, logjac)
            r["model"].module.train()
        r["points"].append(
            {"train_s": r["spent"], "cpu_s": r["cpu"], "step": r["steps"], "val": v, "test": t}
        )

    for r in runs.values():
        evaluate(r)
    order, k = list(runs), 0
    while any(r["cpu"] < args.budget for r in runs.values()):
        for lib in order[k:] + order[:k]:
            r = runs[lib]
            left = min(args.chunk, args.budget - r["cpu"])
            if left <= 0:
                continue
            if "remote" in r:
                ans = r["remote"].ask(cmd="train_for", cpu_seconds=left)
                r["spent"] += ans["spent"]
                r["steps"] += ans["steps"]
                r["cpu"] += ans["cpu"]
                evaluate(r)
                continue
            m, opt = r["model"], r["opt"]
            m.module.train()
            chunk = 0.0
            while chunk < left:
                idx = torch.randint(0, len(train), (256,), generator=r["gen"])
                c0, t0 = time.process_time(), time.perf_counter()
                loss = -m.log_prob(train[idx]).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                r["spent"] += time.perf_counter() - t0
                chunk += time.process_time() - c0
                r["steps"] += 1
            r["cpu"] += chunk
            evaluate(r)
        k = (k + 1) % len(order)
        print(
            "  ".join(
                f"{lib} {r['cpu']:.0f}s {r['points'][-1]['test']:.1f}" for lib, r in runs.items()
            ),  # fmt: skip
            flush=True,
        )
    if worker is not None:
        worker.close()
    shutil.rmtree(tmp, ignore_errors=True)
    out = {}
    for lib, r in runs.items():
        pts = r["points"]
        best = min(pts, key=lambda p: p["val"])
        reach, reach_wall = {}, {}
        for thr in THRESHOLDS:
            hit = next((p for p in pts if p["test"] <= thr), None)
            reach[f"{thr:g}"] = None if hit is None else hit["cpu_s"]
            reach_wall[f"{thr:g}"] = None if hit is None else hit["train_s"]
        params = r["params"] if "remote" in r else r["model"].params()
        cpu_per_wall = r["cpu"] / r["spent"] if r["cpu"] and r["spent"] else None
        out[lib] = {"model": r["kind"], "params": params, "points": pts,
                    "steps": r["steps"], "best_test": min(p["test"] for p in pts),
                    "test_at_best_val": best["test"], "time_to": reach,
                    "wall_time_to": reach_wall,
                    "cpu_per_wall": cpu_per_wall}  # fmt: skip
    return {"budget_s": args.budget, "chunk_s": args.chunk, "batch": 256, "lr": LR,
            "threads": 1, "runs": out, "loadavg": list(os.getloadavg())}  # fmt: skip


def plot_curve(curve: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for lib, r in curve["runs"].items():
        pts = r["points"]
        label = f"{lib} ({r['model']}, {r['params'] / 1e3:.0f}k params)"
        lw = 1.8 if lib == "flowforge" else 1.1
        ax.plot([p["cpu_s"] for p in pts], [p["test"] for p in pts], label=label, lw=lw)
    for thr in THRESHOLDS:
        ax.axhline(thr, color="grey", lw=0.6, ls=":")
    tests = [p["test"] for r in curve["runs"].values() for p in r["points"]]
    lo = min(tests)
    ax.set_ylim(lo - 2, min(max(tests), lo + 40))
    ax.set_xlabel("training time (CPU seconds of one thread, inside training steps only)")
    ax.set_ylabel("test NLL (nats per digit)")
    ax.set_title(f"digits (D=64): test NLL against training time, batch {curve['batch']}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- report --------------------------------------------------------------------------------------


def _n(v) -> str:
    return "–" if v is None else f"{v:,.0f}"


# peers whose model of that name is another model (``report.DIFFERENT_MODEL``): normflows' MAF
# is an IAF (D-pass log_prob, 1-pass sampling); left out of the "fastest peer" comparisons
NOT_SAME = {("normflows", "maf")}


def _speed(r: dict) -> float:
    """The speed a table shows: per CPU second at 1 thread (a shared machine's other jobs do not
    count), per wall-clock second at more threads (parallel speed-up is the point there)."""
    return r.get("cpu_ex_s", r["ex_s"]) if r["threads"] == 1 else r["ex_s"]


def summary(tp: dict, compiled: bool = False) -> list[dict]:
    """Per (data, threads, model, op, batch): flowforge's speed over the fastest peer's (which
    one) and over the floor's. ``compiled``: flowforge through ``torch.compile`` over the
    fastest peer, eager or compiled (``--compile``)."""
    by = {}
    for r in tp["records"]:
        if "ex_s" in r:
            by.setdefault((r["dataset"], r["threads"], r["model"], r["op"], r["batch"]), {})[
                r["library"]
            ] = _speed(r)
    ours = "flowforge+compile" if compiled else "flowforge"
    rows = []
    for (ds, th, kind, op, b), v in by.items():
        if ours not in v:
            continue
        peers = {k: x for k, x in v.items()
                 if k.split("+")[0] not in ("flowforge", "floor")
                 and (compiled or "+" not in k)
                 and (k.split("+")[0], kind) not in NOT_SAME}  # fmt: skip
        best = max(peers, key=peers.get) if peers else None
        ff = v[ours]
        rows.append({"dataset": ds, "threads": th, "model": kind, "op": op, "batch": b,
                     "flowforge": ff, "fastest_peer": best,
                     "vs_peer": ff / peers[best] if best else None,
                     "vs_floor": ff / v["floor"] if "floor" in v else None})  # fmt: skip
    return rows


def _summary_lines(tp: dict, compiled: bool = False) -> list[str]:
    rows = summary(tp, compiled)
    if not rows:
        return []
    cols = list(dict.fromkeys((r["op"], r["batch"]) for r in rows))
    if compiled:
        lines = ["### flowforge compiled against the fastest peer, eager or compiled", "",
                 "`flowforge+compile`'s examples/s over the fastest peer's at the same model, "
                 "eager or through `torch.compile` (`--compile`), and in brackets over the "
                 "(eager) floor's.", ""]  # fmt: skip
    else:
        lines = [
            "### flowforge against the fastest peer (and the floor)",
            "",
            "flowforge's examples/s over the fastest eager peer's at the same model "
            "(normflows' MAF, an IAF, left out), and in brackets over the floor's.",
            "",
        ]
    lines += ["| data | threads | model | " + " | ".join(f"{o} {b:,}" for o, b in cols) + " |",
              "|---|---:|---|" + "---:|" * len(cols)]  # fmt: skip
    for key in dict.fromkeys((r["dataset"], r["threads"], r["model"]) for r in rows):
        cell = {(r["op"], r["batch"]): r for r in rows if (r["dataset"], r["threads"],
                r["model"]) == key}  # fmt: skip
        vals = []
        for c in cols:
            r = cell.get(c)
            if r is None or r["vs_peer"] is None:
                vals.append("–")
                continue
            fl = "" if r["vs_floor"] is None else f" ({r['vs_floor']:.2f})"
            vals.append(f"{r['vs_peer']:.2f}× {r['fastest_peer']}{fl}")
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | " + " | ".join(vals) + " |")
    return lines + [""]


def _ordered(records: list[dict]) -> list[dict]:
    """Records grouped by data set, then model, then library, each in order of appearance."""
    first: dict = {}
    for r in records:
        for k in ("dataset", "model", "library"):
            first.setdefault((k, r[k]), len(first))
    return sorted(records, key=lambda r: [first[k, r[k]] for k in ("dataset", "model", "library")])


def render(out: dict) -> str:
    lines = ["# Cross-library speed table", ""]
    meta = out.get("meta", {})
    vers = ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items())
    lines += [f"torch {meta.get('torch')}, Python {meta.get('python')}, {meta.get('machine')}, "
              f"{meta.get('cpus')} CPUs. Versions: {vers}.", ""]  # fmt: skip
    tp = out.get("throughput")
    if tp:
        recs = tp["records"]
        cols = [("train", b) for b in tp["train_batches"]]
        cols += [(o, b) for o in ("log_prob", "sample") for b in tp["eval_batches"]]
        lines += [
            f"## Throughput (examples/s; median of {tp['rounds']} interleaved rounds)",
            "",
            "At 1 thread: examples per second of the process's CPU time (the other jobs of a "
            "shared machine do not count; wall-clock medians are in the JSON). At 2 threads: "
            "examples per wall-clock second. *floor*: flowforge's conditioners and Adam alone "
            "(`floor.py`). A cell "
            "marked ¹ was timed in one round (a call took over "
            f"{SLOW:g} s); – : not timed (see the JSON for the reason) or not available.",
            "",
        ]
        for ds in dict.fromkeys(r["dataset"] for r in recs):
            for th in sorted({r["threads"] for r in recs}):
                rs = [r for r in recs if r["dataset"] == ds and r["threads"] == th]
                if not rs:
                    continue
                loads = [x for r in rs for x in r["loadavg_1min"]]
                lines += [f"### {ds} (D={rs[0]['D']}), {th} thread(s); 1-min load average "
                          f"{min(loads):.1f}–{max(loads):.1f}", ""]  # fmt: skip
                head = "| model | library | params | " + " | ".join(f"{o} {b:,}" for o, b in cols)
                lines += [head + " |", "|---|---|---:|" + "---:|" * len(cols)]
                for kind in dict.fromkeys(r["model"] for r in rs):
                    for lib in dict.fromkeys(r["library"] for r in rs if r["model"] == kind):
                        cell = {(r["op"], r["batch"]): r for r in rs
                                if r["model"] == kind and r["library"] == lib}  # fmt: skip
                        vals = []
                        for c in cols:
                            r = cell.get(c)
                            if r is None or "ex_s" not in r:
                                vals.append("–")
                            else:
                                v = _speed(r)
                                vals.append(_n(v) + ("¹" if r["rounds"] == 1 else ""))
                        p = tp["params"].get(f"{ds}/{kind}/{lib}")
                        name = "*floor*" if lib == "floor" else lib
                        lines.append(f"| {kind} | {name} | {_n(p) if p else ''} | "
                                     + " | ".join(vals) + " |")  # fmt: skip
                lines.append("")
        lines += _summary_lines(tp)
        lines += _summary_lines(tp, compiled=True)
        firsts = [r for r in recs if "+compile" in r["library"] and r.get("first_call_s")]
        if firsts:
            lines += ["Compile times (the first call, seconds): " + "; ".join(
                f"{r['dataset']} {r['model']} {r['library']} {r['op']} {r['batch']:,}: "
                f"{r['first_call_s']:.1f}" for r in firsts) + ".", ""]  # fmt: skip
        notes = {f"{k}/{lib}": v for k, n in tp.get("notes", {}).items() for lib, v in n.items()
                 if "+compile" in lib}  # fmt: skip
        if notes:
            lines += ["Compiled models: " + "; ".join(f"{k}: {v}" for k, v in notes.items())
                      + ".", ""]  # fmt: skip
    mem = out.get("memory")
    if mem:
        bs = sorted({int(k.rsplit("_", 1)[1]) for r in mem["records"] for k in r
                     if k.startswith("saved_MB_")})  # fmt: skip
        lines += ["## Memory of one training step (MB)", "",
                  "*saved*: distinct storage autograd keeps for backward (`run.saved_bytes`); "
                  "*RSS growth*: the rise of the process's peak RSS over two training steps, "
                  "fresh process per model (1 thread).", "",
                  "| data | model | library | params | " + " | ".join(f"saved @{b:,}" for b in bs)
                  + " | RSS growth |", "|---|---|---|---:|" + "---:|" * (len(bs) + 1)]  # fmt: skip
        for r in _ordered(mem["records"]):
            rss = r.get("rss_growth_MB")
            lines.append(
                f"| {r['dataset']} | {r['model']} | {r['library']} | {r['params']:,} | "
                + " | ".join(f"{r[f'saved_MB_{b}']:.1f}" for b in bs)
                + " | "
                + ("–" if rss is None else f"{rss:.0f} (@{r['rss_batch']:,})")
                + " |"
            )
        lines.append("")
    nll = out.get("nll")
    if nll:
        lines += [f"## Test NLL after {nll['steps']} steps at batch {nll['batch']} (nats, "
                  "seed 0 only)", "", "| data | model | library | params | test NLL | best step |",
                  "|---|---|---|---:|---:|---:|"]  # fmt: skip
        for r in _ordered(nll["records"]):
            if "skipped" in r:
                lines.append(f"| {r['dataset']} | {r['model']} | {r['library']} | | "
                             f"{r['skipped']} | |")  # fmt: skip
                continue
            v = r.get("test_nll")
            v = r.get("error", "–") if v is None else f"{v:.3f}"
            lines.append(f"| {r['dataset']} | {r['model']} | {r['library']} | {r['params']:,} | "
                         f"{v} | {r.get('best_step')} |")  # fmt: skip
        lines.append("")
    cv = out.get("curve")
    if cv:
        thr = [f"{t:g}" for t in THRESHOLDS]
        lines += [f"## Test NLL against training time (digits, 1 thread, batch {cv['batch']}, "
                  f"{cv['budget_s']:g} CPU seconds each)", "",
                  "Time to first reach a test NLL: CPU seconds inside the training steps "
                  "(wall-clock seconds in brackets).", "",
                  "| library | model | params | steps | best test NLL | test NLL at best val | "
                  + " | ".join(f"s to {t} nats" for t in thr) + " |",
                  "|---|---|---:|---:|---:|---:|" + "---:|" * len(thr)]  # fmt: skip
        for lib, r in cv["runs"].items():
            lines.append(
                f"| {lib} | {r['model']} | {r['params']:,} | {r['steps']:,} | {r['best_test']:.2f}"
                f" | {r['test_at_best_val']:.2f} | "
                + " | ".join(
                    "not reached"
                    if r["time_to"][t] is None
                    else f"{r['time_to'][t]:.1f} ({r['wall_time_to'][t]:.1f})"
                    for t in thr
                )
                + " |"  # fmt: skip
            )
        lines.append("")
    return "\n".join(lines)


# -- main ----------------------------------------------------------------------------------------


def _jax_versions() -> str:
    if not Path(FLOWJAX_PYTHON).exists():
        return "not installed"
    code = (
        "import importlib.metadata as m; print(m.version('flowjax'), '(' + ', '.join("
        "f'{p} ' + m.version(p) for p in ('jax', 'jaxlib', 'equinox', 'optax')) + ')')"
    )
    r = subprocess.run([FLOWJAX_PYTHON, "-c", code], capture_output=True, text=True)
    return r.stdout.strip() or "not importable"


def _ints(s: str) -> list[int]:
    return [int(v) for v in s.split(",")]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run in under 2 minutes")
    ap.add_argument(
        "--parts",
        default="throughput,memory,nll,curve",
        help="any of throughput, memory, nll, curve; report: only rewrite the tables",
    )
    ap.add_argument("--libs", default=",".join([*LIBRARIES, "flowjax"]))
    ap.add_argument(
        "--compile",
        default="",
        help="throughput: these libraries also through torch.compile (LIB+compile; 1 thread)",
    )
    ap.add_argument("--models", default=None, help="default maf,realnvp,nsf-ar,nsf-c,glow")
    ap.add_argument("--datasets", default=None, help="default moons,pca8,digits")
    ap.add_argument("--threads", type=_ints, default=None, help="default 1,2")
    ap.add_argument("--rounds", type=int, default=None, help="timing rounds (default 7)")
    ap.add_argument("--train-batches", type=_ints, default=None, help="default 256,1024")
    ap.add_argument("--eval-batches", type=_ints, default=None, help="default 1024,10000")
    ap.add_argument("--steps", type=int, default=None, help="NLL part: steps (default 400)")
    ap.add_argument("--budget", type=float, default=None, help="curve: CPU seconds per library")
    ap.add_argument("--chunk", type=float, default=None, help="curve: CPU seconds per turn")
    ap.add_argument("--name", default=None, help="results/<name>.json/.md (cross_library)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--plot", type=Path, default=None, help="the curve's PNG")
    ap.add_argument(
        "--rss-dataset",
        default=None,
        help="memory: the data set whose RSS growth is measured, a fresh process per model "
        "(default digits, else the last one; --quick: none; 'none': no RSS)",
    )
    ap.add_argument("--rss", nargs=4, help=argparse.SUPPRESS)  # internal: LIB MODEL DATA BATCH
    args = ap.parse_args(argv)
    if args.rss:
        lib, kind, ds, b = args.rss
        print(json.dumps(rss_growth(lib, kind, ds, int(b))))
        return
    q = args.quick
    args.models = (args.models or ("maf,realnvp" if q else "maf,realnvp,nsf-ar,nsf-c,glow")).split(
        ","
    )
    datasets = (args.datasets or ("moons" if q else "moons,pca8,digits")).split(",")
    args.threads = args.threads or ([1] if q else [1, 2])
    args.rounds = args.rounds or (2 if q else 7)
    args.train_batches = args.train_batches or ([64, 256] if q else [256, 1024])
    args.eval_batches = args.eval_batches or ([256, 1024] if q else [1024, 10_000])
    args.steps = args.steps or (20 if q else 400)
    # 1,000 training digits: every model has overfit after ~10 CPU seconds
    args.budget = args.budget or (2.0 if q else 20.0)
    args.chunk = args.chunk or (1.0 if q else 0.5)
    if args.rss_dataset is None:  # a fresh process per model: too slow for --quick
        args.rss_dataset = "none" if q else ("digits" if "digits" in datasets else datasets[-1])
    for name, v in (("--rounds", args.rounds), ("--steps", args.steps)):
        if v < 1:
            ap.error(f"{name} must be at least 1")
    if args.budget <= 0 or args.chunk <= 0:
        ap.error("--budget and --chunk must be positive")
    libs = args.libs.split(",")
    unknown = [lib for lib in libs if lib not in LIBRARIES and lib != "flowjax"]
    if unknown:
        ap.error(f"unknown libraries {unknown}; known: {list(LIBRARIES)}")
    args.compile = [lib for lib in args.compile.split(",") if lib]
    unknown = [lib for lib in args.compile if lib not in libs or lib == "flowjax"]
    if unknown:
        ap.error(f"--compile {unknown}: not among --libs, or not a torch library")
    if args.compile:
        # a library's functions that dynamo compiles on their own (after a graph break) are
        # shared by all its models and batch sizes, past dynamo's default of 8 programs per
        # function: allow them, and fail rather than silently run eagerly beyond the limit
        torch._dynamo.config.recompile_limit = 256
        torch._dynamo.config.accumulated_recompile_limit = 4096
        torch._dynamo.config.fail_on_recompile_limit_hit = True
    parts = args.parts.split(",")
    bad = [p for p in parts if p not in ("throughput", "memory", "nll", "curve", "report")]
    if bad:
        ap.error(f"unknown parts {bad}")
    name = args.name or ("cross_library_quick" if q else "cross_library")
    path = args.out / f"{name}.json"
    out = json.loads(path.read_text()) if path.exists() else {}
    versions = {}
    for lib in libs:
        try:
            versions[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            versions[lib] = "not installed"
    if "flowjax" in libs:
        versions["flowjax"] = _jax_versions()
    out["meta"] = {"torch": torch.__version__, "python": platform.python_version(),
                   "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                   "versions": versions, "arch": ARCH, "lr": LR}  # fmt: skip
    for part in parts:
        if part == "report":  # only the versions and the tables, from the results so far
            args.out.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(out, indent=1))
            (args.out / f"{name}.md").write_text(render(out))
            continue
        t0, load0 = time.time(), os.getloadavg()
        print(f"\n== {part}", flush=True)
        if part == "throughput":
            res = part_throughput(args, datasets, args.models, libs)
        elif part == "memory":
            res = part_memory(args, datasets, args.models, libs)
        elif part == "nll":
            res = part_nll(args, datasets, args.models, libs)
        else:
            res = part_curve(args, libs)
            plot = args.plot or (IMG / "nll_vs_time.png" if not q else args.out / f"{name}.png")
            plot_curve(res, plot)
            print(f"wrote {plot}")
        res["wall_s"] = time.time() - t0
        res["started"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t0))
        res["loadavg_start_end"] = [list(load0), list(os.getloadavg())]
        old = out.get(part, {})
        if "records" in res and "records" in old:
            # a run over some libraries, data sets or thread counts keeps the others' records
            def replaced(r):
                return (
                    r["library"] in libs + ["floor"] + [f"{lib}+compile" for lib in args.compile]
                    and r["dataset"] in datasets
                    and r.get("threads", 1) in args.threads
                )

            res["records"] = [r for r in old["records"] if not replaced(r)] + res["records"]
            for k in ("params", "notes"):
                if k in old:
                    res[k] = {**old[k], **res[k]}
        out[part] = res
        args.out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=1))  # after each part: a stopped run keeps it
        (args.out / f"{name}.md").write_text(render(out))
        print(f"{part}: {res['wall_s']:.0f} s; wrote {path}", flush=True)
    print(render(out))


if __name__ == "__main__":
    main()
