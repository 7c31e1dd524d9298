"""Structured (graph) autoregression: ``adjacency=`` on MADE, Autoregressive, MAF, IAF and
NSF-AR. Every dependency a structured model has is allowed by the graph, every edge of the
graph is used, the inverse runs by generations, and each bad input is refused in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import flowforge as ff
from cli_support import cli, one_line_error
from flowforge import io
from flowforge.nets import MADE, check_adjacency, generations
from flowforge.transforms import Affine, Autoregressive, RationalQuadratic, set_inverse


def random_dag(d: int, p: float = 0.45, seed: int = 0) -> torch.Tensor:
    """A random DAG on ``d`` dimensions: lower-triangular edges in a random order."""
    g = torch.Generator().manual_seed(seed)
    tri = torch.tril(torch.rand(d, d, generator=g) < p, diagonal=-1)
    perm = torch.randperm(d, generator=g)
    return tri[perm][:, perm]  # (relabelled: not lower-triangular in the natural order)


def ancestors(adjacency: torch.Tensor) -> torch.Tensor:
    """The transitive closure: ``out[i, j]`` where ``j`` is an ancestor of ``i``."""
    reach = adjacency.clone()
    for _ in range(adjacency.shape[0]):
        reach = reach | ((reach.int() @ reach.int()) > 0)
    return reach


def perturbed(module, scale=0.5, seed=0):
    """Every parameter moved off its initialisation (the zero-initialised output layers
    included), so that every path the masks allow carries a nonzero derivative."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def made_dependencies(made, x, c=None) -> torch.Tensor:
    """``dep[i, j]``: some parameter of output ``i`` has a nonzero derivative in ``x[j]``."""
    jac = torch.autograd.functional.jacobian(lambda v: made(v, c), x)  # (1, D, P, 1, D)
    return jac[0, :, :, 0, :].abs().sum(1) > 0


def transform_jacobian(flow, x, c=None) -> torch.Tensor:
    """``J[i, j] = dz_i / dx_j`` of a flow's whole transform at one point."""
    return torch.autograd.functional.jacobian(lambda v: flow.transform(v, c)[0], x)[0, :, 0, :]


def test_the_random_dags_are_what_the_tests_need():
    for seed in range(4):
        a = random_dag(6, seed=seed)
        assert not a.diagonal().any() and generations(a)  # a DAG
        assert len(generations(a)) >= 3  # at least two levels of parents: closures matter
        assert not torch.equal(a, torch.tril(a))  # not in the natural order


# -- MADE ----------------------------------------------------------------------------------------

VARIANTS = [
    dict(hidden=(9,)),
    dict(hidden=(16, 9, 12)),
    dict(hidden=(10, 10, 10), residual=True),
]


@pytest.mark.parametrize("kw", VARIANTS)
@pytest.mark.parametrize("context", [0, 2])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_made_output_reads_exactly_its_parents(kw, context, seed):
    torch.manual_seed(seed)
    a = random_dag(6, seed=seed)
    made = perturbed(
        MADE(6, 3, context_features=context, adjacency=a, activation="tanh", **kw).double()
    )
    x = torch.randn(1, 6, dtype=torch.float64)
    c = torch.randn(1, context, dtype=torch.float64) if context else None
    dep = made_dependencies(made, x, c)
    assert torch.equal(dep, a), f"reads\n{dep.int()}\nallowed\n{a.int()}"
    if context:  # the context reaches every output, the roots' included
        jc = torch.autograd.functional.jacobian(lambda v: made(x, v), c)[0, :, :, 0, :]
        assert (jc.abs().sum((1, 2)) > 0).all()


def test_a_made_in_one_dimension_and_on_an_edgeless_graph():
    made = perturbed(MADE(1, 2, hidden=(4,), adjacency=[[0]]).double())
    assert made.steps == 1 and made.linears[0].in_features == 0  # no dead input weights
    out = made(torch.randn(5, 1, dtype=torch.float64))
    assert out.shape == (5, 1, 2) and torch.equal(out[0], out[1])  # reads nothing
    made = perturbed(MADE(1, 2, hidden=(4,), context_features=3, adjacency=[[False]]).double())
    c = torch.randn(2, 3, dtype=torch.float64)
    out = made(torch.zeros(2, 1, dtype=torch.float64), c)
    assert not torch.equal(out[0], out[1])  # conditioned on the context
    made = perturbed(MADE(4, 1, hidden=(4,), context_features=2, adjacency=torch.zeros(4, 4)))
    assert made.steps == 1
    c = torch.randn(1, 2, dtype=torch.float64)
    dep = made_dependencies(made.double(), torch.randn(1, 4, dtype=torch.float64), c)
    assert not dep.any()


def test_check_adjacency_reads_lists_bools_and_tensors():
    want = torch.tensor([[False, False], [True, False]])
    for a in ([[0, 0], [1, 0]], [[False, False], [True, False]], [[0.0, 0.0], [1.0, 0.0]],
              want.int(), want, np.array([[0, 0], [1, 0]])):  # fmt: skip
        assert torch.equal(check_adjacency(a, 2), want)
    assert generations(torch.tensor([[0, 0], [1, 0]])) == [[0], [1]]  # roots first


@pytest.mark.parametrize(
    "adjacency, needle",
    [
        ([[0, 1, 0], [0, 0, 0]], r"square \(D, D\) matrix .* got shape \(2, 3\)"),
        ([[0, 0], [1]], "list of equally long rows"),
        ([[0, 0], [1, 0]], "adjacency is 2 x 2 but features=3"),
        ([[0, 0, 0], [0.5, 0, 0], [0, 0, 0]], r"0/1 or booleans, got 0.5 at \[1, 0\]"),
        ([[0, 0, 0], [2, 0, 0], [0, 0, 0]], r"0/1 or booleans, got 2 at \[1, 0\]"),
        ([[0, 0, 0], [0, 1, 0], [0, 0, 0]], r"adjacency\[1, 1\] is set: dimension 1 cannot depend"),
        ([[0, 1, 0], [0, 0, 1], [1, 0, 0]], r"cycle, 0 <- 1 <- 2 <- 0 \(i <- j: i depends on j\)"),
        ([[0, 0, 0], [0, 0, 1], [0, 1, 0]], r"cycle, 1 <- 2 <- 1"),
    ],
)  # fmt: skip
def test_bad_adjacencies_are_refused_in_one_line(adjacency, needle):
    for build in (
        lambda: MADE(3, 2, hidden=(8,), adjacency=adjacency),
        lambda: ff.models.MAF(features=3, adjacency=adjacency),
    ):
        with pytest.raises(ValueError, match=needle) as e:
            build()
        assert "\n" not in str(e.value)


def test_a_flat_list_is_not_an_adjacency():
    with pytest.raises(ValueError, match=r"square \(D, D\) matrix .* got shape \(3,\)"):
        MADE(3, 2, adjacency=[0, 1, 0])
    with pytest.raises(ValueError, match="adjacency=.0, 1, 0. has the wrong type"):
        ff.models.MAF(features=3, adjacency=[0, 1, 0])


def test_a_made_takes_an_order_or_an_adjacency_and_wide_enough_layers():
    chain = [[0, 0, 0], [1, 0, 0], [0, 1, 0]]
    with pytest.raises(ValueError, match="an order or an adjacency, not both"):
        MADE(3, 1, order="natural", adjacency=chain)
    with pytest.raises(ValueError, match="a net= of your own has its own structure"):
        Autoregressive(3, Affine(), adjacency=chain, net=MADE(3, 2))
    # 3 distinct parent sets ({0}, {1}, {0, 1}), 4 with the context's empty one
    fork = [[0, 0, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0], [1, 1, 0, 0]]
    MADE(4, 1, hidden=(3, 3), adjacency=fork)
    with pytest.raises(ValueError, match="hidden layer 1 of the MADE has 2 units, fewer than 3"):
        MADE(4, 1, hidden=(3, 2), adjacency=fork)
    with pytest.raises(ValueError, match="fewer than 4, .* context-only one included"):
        MADE(4, 1, hidden=(3, 3), context_features=1, adjacency=fork)


# -- whole flows ---------------------------------------------------------------------------------


def _structured_flows(a, context):
    kw = dict(features=a.shape[0], layers=3, hidden=(16, 16), context_features=context)
    return {
        "MAF": lambda: ff.models.MAF(adjacency=a, activation="tanh", **kw),
        "MAF-residual-bn": lambda: ff.models.MAF(
            adjacency=a, activation="tanh", residual=True, batch_norm=True, **kw
        ),
        "IAF": lambda: ff.models.IAF(adjacency=a, activation="tanh", **kw),
        "NSF-AR": lambda: ff.models.NSF(
            adjacency=a, autoregressive=True, activation="tanh", bins=4, **kw
        ),
    }


@pytest.mark.parametrize("name", ["MAF", "MAF-residual-bn", "IAF", "NSF-AR"])
@pytest.mark.parametrize("context", [0, 2])
@pytest.mark.parametrize("d, seed", [(5, 3), (6, 0), (6, 1)])
def test_a_structured_flow_is_zero_off_the_ancestors_and_nonzero_on_the_edges(
    name, context, d, seed
):
    """The Jacobian of a whole multi-layer flow's transform: z_i depends only on x_i and the
    ancestors of i (all layers use the same graph and nothing mixes the dimensions between
    them), exactly zero elsewhere, and nonzero on every edge."""
    a = random_dag(d, seed=seed)
    torch.manual_seed(seed)
    flow = perturbed(_structured_flows(a, context)[name]().double(), scale=0.3)
    flow.train()
    c = torch.randn(64, context, dtype=torch.float64) if context else None
    with torch.no_grad():  # (data-initialised layers and batch statistics: then eval mode)
        flow.transform(torch.randn(64, d, dtype=torch.float64), c)
    flow.eval()
    x = torch.randn(1, d, dtype=torch.float64)
    jac = transform_jacobian(flow, x, c[:1] if context else None)
    allowed = ancestors(a) | torch.eye(d, dtype=torch.bool)
    assert torch.equal(jac[~allowed], torch.zeros_like(jac[~allowed])), (
        f"{name}: z reads x off the ancestors\n{(jac != 0).int()}\nallowed\n{allowed.int()}"
    )
    assert (jac[a] != 0).all(), f"{name}: an edge of the graph is not used"
    assert (jac.diagonal() != 0).all()
    # without the structure (the same builder, an order and its permutations) the Jacobian
    # fills the lower triangle of the order: the check above is not vacuous
    if name == "MAF":
        plain = perturbed(ff.models.MAF(features=d, layers=3, hidden=(16, 16)).double(), 0.3)
        plain.train()
        with torch.no_grad():
            plain.transform(torch.randn(64, d, dtype=torch.float64))
        plain.eval()
        assert (transform_jacobian(plain, x)[~allowed] != 0).any()


@pytest.mark.parametrize("context", [0, 3])
@pytest.mark.parametrize(
    "transformer", [lambda: Affine(), lambda: RationalQuadratic(4, 2.0)], ids=["affine", "rq"]
)
@pytest.mark.parametrize("residual", [False, True])
def test_the_inverse_by_generations_is_exact_in_depth_plus_one_steps(
    context, transformer, residual
):
    a = random_dag(6, seed=1)
    gens = generations(a)
    layer = perturbed(
        Autoregressive(6, transformer(), (16, 16), context, residual=residual, adjacency=a).double()
    )
    assert layer.steps == len(gens) < 6
    passes, steps = [], []
    layer.net.register_forward_pre_hook(lambda m, args: passes.append(1))
    solve_one = layer.transformer.inverse

    def counted(z, params):
        steps.append(params.shape[1])
        return solve_one(z, params)

    layer.transformer.inverse = counted
    z = torch.randn(20, 6, dtype=torch.float64)
    c = torch.randn(20, context, dtype=torch.float64) if context else None
    x, ladj = layer.inverse(z, c)
    # one step per generation, each solving the whole generation; no full network pass (each
    # hidden unit is computed once, when its inputs are known)
    assert steps == [len(g) for g in gens] and not passes
    del layer.transformer.inverse
    z2, ladj2 = layer(x, c)
    assert torch.allclose(z2, z, atol=1e-12, rtol=0)
    assert torch.allclose(ladj, -ladj2, atol=1e-12, rtol=0)
    naive = torch.zeros_like(z)  # D full passes of the fixed point
    for _ in range(6):
        naive, _ = layer.transformer.inverse(z, layer.net(naive, c))
    assert torch.allclose(x, naive, atol=1e-12, rtol=0)
    # the parallel (Jacobi) inverse: exact after the depth + 1 sweeps, one more to see it
    set_inverse(layer, "parallel", tol=1e-12)
    xp, ladjp = layer.inverse(z, c)
    assert 1 <= layer.last_sweeps <= len(gens) + 1
    assert torch.allclose(xp, x, atol=1e-12, rtol=0)
    assert torch.allclose(ladjp, ladj, atol=1e-12, rtol=0)


def test_a_flows_inverse_has_gradients_through_the_generations():
    a = random_dag(5, seed=3)
    flow = perturbed(ff.models.IAF(features=5, layers=2, hidden=(8, 8), adjacency=a))
    x = torch.randn(4, 5)
    flow.log_prob(x).sum().backward()  # IAF: log_prob runs the inverse by generations
    for name, p in flow.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


# -- builders ------------------------------------------------------------------------------------


def test_builders_take_the_adjacency_and_no_mixing():
    a = random_dag(5, seed=3)
    flow = ff.models.MAF(features=5, layers=3, hidden=(8, 8), adjacency=a)
    kinds = [type(m).__name__ for m in flow.transform.layers]
    assert "Reverse" not in kinds and "Permutation" not in kinds and "LULinear" not in kinds
    assert kinds.count("Autoregressive") == 3
    assert flow.config["kwargs"]["adjacency"] == a.tolist()  # a tensor is recorded as a list
    assert flow.config["kwargs"]["permutation"] == "auto"
    plain = ff.models.MAF(features=5, layers=3, hidden=(8, 8))
    assert [type(m).__name__ for m in plain.transform.layers].count("Reverse") == 2
    ff.models.MAF(features=5, adjacency=a, permutation=None)  # none asked: fine
    for kw, needle in [
        (dict(permutation="reverse"), "permutation='reverse' with an adjacency: every layer"),
        (dict(permutation="random"), "permutation='random' with an adjacency"),
        (dict(lu=True), "lu=True with an adjacency"),
        (dict(order="random"), "order='random' with an adjacency"),
    ]:
        for build in (ff.models.MAF, ff.models.IAF):
            with pytest.raises(ValueError, match=needle):
                build(features=5, adjacency=a, **kw)
    with pytest.raises(ValueError, match=r"needs NSF\(autoregressive=True\)"):
        ff.models.NSF(features=5, adjacency=a)
    with pytest.raises(ValueError, match="lu=True with an adjacency"):
        ff.models.NSF(features=5, autoregressive=True, adjacency=a, lu=True)
    with pytest.raises(ValueError, match="wrong type"):
        ff.models.MAF(features=2, adjacency=[[0, "a"], [0, 0]])


def test_a_structured_flow_saves_and_loads(tmp_path):
    a = random_dag(6, seed=0)
    torch.manual_seed(0)
    flow = perturbed(ff.models.MAF(features=6, layers=2, hidden=(12,), adjacency=a), 0.3)
    flow.eval()
    path = tmp_path / "m.ff"
    ff.save(flow, path)
    loaded = ff.load(path)
    loaded.eval()
    x = torch.randn(7, 6)
    assert torch.equal(flow.log_prob(x), loaded.log_prob(x))
    assert loaded.config == flow.config
    made = loaded.transform.layers[1].net
    assert torch.equal(made.adjacency, a)
    assert "transform.layers.1.net.adjacency" in flow.state_dict()
    # a state dict carries its own graph: a MADE built on another DAG takes it, masks and all
    one = [[0, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    other = [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0]]
    src = perturbed(MADE(4, 2, hidden=(8,), adjacency=one))
    dst = MADE(4, 2, hidden=(8,), adjacency=other)
    dst.load_state_dict(src.state_dict())
    v = torch.randn(3, 4)
    assert torch.equal(dst(v), src(v)) and dst.adjacency[1, 0]


def _tampered(tmp_path, flow, name, value):
    path = tmp_path / "f.ff"
    ff.save(flow, path)
    meta, tensors = io.read(path)
    assert name in tensors, sorted(tensors)
    tensors[name] = value.to(tensors[name].dtype)
    path.write_bytes(io.pack(tensors, meta))
    return path


@pytest.mark.parametrize(
    "value, needle",
    [
        (torch.tensor([[0, 1, 0], [0, 0, 1], [1, 0, 0]]), "cycle, 0 <- 1 <- 2 <- 0"),
        (torch.tensor([[1, 0, 0], [0, 0, 0], [0, 0, 0]]), r"adjacency\[0, 0\] is set"),
    ],
)
def test_a_crafted_files_adjacency_is_refused_naming_the_tensor(tmp_path, value, needle):
    flow = ff.models.MAF(
        features=3, layers=1, hidden=[6], adjacency=[[0, 0, 0], [1, 0, 0], [0, 0, 0]]
    )
    name = "transform.layers.1.net.adjacency"
    path = _tampered(tmp_path, flow, name, value)
    with pytest.raises(ValueError, match=needle) as e:
        ff.load(path)
    assert f"tensor '{name}' is not a usable adjacency" in str(e.value)
    assert str(path) in str(e.value)


def test_a_state_dicts_adjacency_of_the_wrong_shape_or_too_many_sets_is_refused():
    made = MADE(3, 2, hidden=(1,), adjacency=[[0, 0, 0], [1, 0, 0], [0, 0, 0]])  # one set: {0}
    state = made.state_dict()
    with pytest.raises(
        ValueError, match=r"tensor 'adjacency' .*expected shape \(3, 3\), got \(2, 2\)"
    ):
        made.load_state_dict({**state, "adjacency": torch.zeros(2, 2, dtype=torch.bool)})
    two = torch.tensor([[0, 0, 0], [1, 0, 0], [1, 1, 0]]).bool()  # {0} and {0, 1}
    with pytest.raises(ValueError, match="tensor 'adjacency' .* 1 units, fewer than 2"):
        made.load_state_dict({**state, "adjacency": two})
    assert torch.equal(made.adjacency, torch.tensor([[0, 0, 0], [1, 0, 0], [0, 0, 0]]).bool())
    one = torch.tensor([[0, 0, 0], [0, 0, 0], [0, 1, 0]]).bool()  # {1}: fits
    made.load_state_dict({**state, "adjacency": one})
    assert torch.equal(made.adjacency, one)


# -- the workbench -------------------------------------------------------------------------------


def _chain_table(path, n=200, seed=0):
    """x0 ~ N(0, 1), x1 = x0 + noise, x2 = x1 + noise: a chain 0 -> 1 -> 2."""
    rng = np.random.default_rng(seed)
    x0 = rng.normal(size=n)
    x1 = x0 + 0.5 * rng.normal(size=n)
    x2 = x1 + 0.5 * rng.normal(size=n)
    np.save(path, np.stack([x0, x1, x2], 1))
    return path


def test_a_config_files_adjacency_trains_a_structured_maf(tmp_path, capsys):
    data = _chain_table(tmp_path / "chain.npy")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "model:\n  name: maf\n  layers: 2\n  hidden: [8]\n"
        "  adjacency: [[0, 0, 0], [1, 0, 0], [false, true, false]]\n"
        "train:\n  epochs: 1\n"
    )
    out = tmp_path / "run"
    rc, _, err = cli(capsys, "train", "--config", cfg, "--data", data, "--out", out,
                     "--no-progress", "--quiet")  # fmt: skip
    assert rc == 0, err
    flow = ff.load(out / "model.ff")
    mades = [m for m in flow.modules() if isinstance(m, MADE)]
    assert len(mades) == 2
    want = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 1, 0]]).bool()
    assert all(torch.equal(m.adjacency, want) for m in mades)
    kwargs = json.loads((out / "config.json").read_text())["resolved"]["builder_kwargs"]
    assert kwargs["adjacency"] == [[0, 0, 0], [1, 0, 0], [False, True, False]]


@pytest.mark.parametrize(
    "value, needle",
    [
        ("[[0,1],[0,0]]", "adjacency is 2 x 2 but features=3"),
        ("[[0,1,0],[0,0,0]]", "square (D, D) matrix"),
        ("[[0,0,0],[3,0,0],[0,0,0]]", "0/1 or booleans, got 3 at [1, 0]"),
        ("[[0,0,0],[0,1,0],[0,0,0]]", "adjacency[1, 1] is set"),
        ("[[0,1,0],[0,0,1],[1,0,0]]", "cycle, 0 <- 1 <- 2 <- 0"),
        ("[[0,0,0],[1,0,0],[0,1,0]]", "permutation='reverse' with an adjacency"),
        ("yes", "wrong type"),
    ],
)
def test_a_bad_adjacency_on_the_command_line_is_one_line(tmp_path, capsys, value, needle):
    data = _chain_table(tmp_path / "chain.npy")
    out = tmp_path / "run"
    extra = ["--set", "model.permutation=reverse"] if "permutation" in needle else []
    rc, _, err = cli(capsys, "train", "--model", "maf", "--data", data, "--out", out,
                     "--set", f"model.adjacency={value}", *extra, "--epochs", 1,
                     "--no-progress", "--quiet")  # fmt: skip
    one_line_error(rc, err, needle)
    assert not out.exists()


def test_a_structured_run_is_never_whitened(tmp_path, capsys):
    data = _chain_table(tmp_path / "few.npy", n=25)  # 25 rows, 3 columns: auto would whiten
    chain = "model.adjacency=[[0,0,0],[1,0,0],[0,1,0]]"
    out = tmp_path / "run"
    rc, _, err = cli(capsys, "train", "--model", "maf", "--data", data, "--out", out,
                     "--set", chain, "--epochs", 1, "--no-progress", "--quiet")  # fmt: skip
    assert rc == 0, err
    assert "whiten" not in json.loads((out / "config.json").read_text())["resolved"]
    assert ff.load(out / "model.ff").config.get("prefix") != ["whiten"]
    rc, _, err = cli(capsys, "train", "--model", "maf", "--data", data, "--out", tmp_path / "r2",
                     "--set", chain, "--set", "data.whiten=true", "--epochs", 1,
                     "--no-progress", "--quiet")  # fmt: skip
    one_line_error(rc, err, "data.whiten: true mixes the columns", "data.whiten: false")


def test_a_fresh_models_earlier_configuration_is_what_the_builder_recorded_before():
    """Files of the coder hold a model hash over the configuration: a MAF built now records
    adjacency=None and permutation='auto', where the builder before recorded neither and
    'reverse'; the earlier form is recognised (an adjacency model never had one)."""
    from flowforge.models.registry import earlier_configs

    plain = ff.models.MAF(features=3, layers=1, hidden=(4,)).config
    before = {k: v for k, v in plain["kwargs"].items() if k != "adjacency"}
    before["permutation"] = "reverse"
    assert earlier_configs(plain)[0] == {**plain, "kwargs": before}
    chosen = ff.models.MAF(features=3, layers=1, hidden=(4,), permutation="random").config
    assert earlier_configs(chosen)[0]["kwargs"]["permutation"] == "random"
    graph = ff.models.MAF(features=3, layers=1, hidden=(4,), adjacency=torch.zeros(3, 3)).config
    assert earlier_configs(graph) == []


def test_a_base_that_couples_the_dimensions_is_refused_with_an_adjacency():
    # a MADE mixture base (natural order) or a full mixture undid the structure silently
    adj = torch.zeros(3, 3)
    for base in ("made-mog", {"name": "mixture", "components": 2}):
        with pytest.raises(ValueError, match="couples the dimensions"):
            ff.models.MAF(features=3, adjacency=adj, base=base)
    ff.models.MAF(features=3, adjacency=adj, base="diag")  # (one Gaussian per dimension)
    with pytest.raises(ValueError, match="unknown permutation 'bogus'"):  # (not "mixing")
        ff.models.MAF(features=3, adjacency=adj, permutation="bogus")


def test_numpy_lists_and_odd_dtypes_as_adjacency():
    import numpy as np

    from flowforge.nets import check_adjacency, generations

    flow = ff.models.build("maf", features=3, layers=1, adjacency=np.eye(3, k=-1))
    assert flow.config["kwargs"]["adjacency"] == np.eye(3, k=-1).tolist()  # (JSON, as lists)
    assert generations([[0, 0], [1, 0]]) == [[0], [1]]
    with pytest.raises(ValueError, match="0/1 or booleans, got dtype torch.complex64"):
        check_adjacency(torch.zeros(2, 2, dtype=torch.complex64), 2)
    with pytest.raises(ValueError) as e:  # (the value on one line, cut short)
        ff.models.build("maf", features=3, hidden=torch.ones(50, 50))
    assert "\n" not in str(e.value) and "..." in str(e.value)
