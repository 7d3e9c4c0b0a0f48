"""Empirical NTK/NNGP: three independent methods agree; closed forms for simple nets; errors."""


import pytest
import torch
from torch import nn

from ntklab import ArchSpec, build_mlp, empirical_nngp, empirical_ntk
from tests.helpers import random_inputs

CASES = [  # (depth, activation, parametrization, out_dim)
    (1, "relu", "ntk", 1),
    (3, "erf", "ntk", 1),
    (2, "tanh", "standard", 1),
    (2, "relu", "standard", 3),
    (2, "gelu", "ntk", 4),
    (0, "relu", "standard", 2),
]


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("depth, activation, parametrization, out_dim", CASES)
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_structured_jacobian_and_ntvp_agree(depth, activation, parametrization, out_dim, dtype, tol, rng):
    # Three routes to Σ_p ∂f/∂θ_p ∂f/∂θ_p: per-layer Grams, full Jacobians, NTK-vector products.
    # They differ only by summation order (sums over 12 to 1369 parameters here), so they agree to
    # a few ulp of the dtype: measured relative Frobenius differences ≤ 4e-16 in float64 (ε = 2.2e-16)
    # and ≤ 1.6e-7 in float32 (ε = 1.2e-7). The entrywise trace/mean checks below are the tighter
    # ones: an entry of the trace is a sum over outputs that can nearly cancel, and the gelu
    # 4-output case has one (1.5e-2) whose float32 relative error is 5.7e-6 (float64: 6e-16).
    # 1e-5 (float32) covers that with a factor 1.75 (the seed is fixed, so it cannot flake);
    # 1e-10 (float64) is loose against the measured 6e-16. Both sit far below a real disagreement
    # (a layer's term missing or a wrong c_l), which moves Θ̂ by that layer's whole share.
    spec = ArchSpec(depth=depth, width=24, activation=activation, sigma_w=1.4, sigma_b=0.2,
                    parametrization=parametrization, out_dim=out_dim)
    net = build_mlp(spec, in_dim=5, seed=2, dtype=dtype)
    x1, x2 = random_inputs(7, 5, rng, dtype), random_inputs(4, 5, rng, dtype)
    for outputs in ("full", "mean", "trace"):
        structured = empirical_ntk(net, x1, x2, method="structured", outputs=outputs)
        jacobian = empirical_ntk(net, x1, x2, method="jacobian", outputs=outputs)
        ntvp = empirical_ntk(net, x1, x2, method="ntvp", outputs=outputs)
        assert structured.dtype == dtype
        assert _rel(structured, jacobian) < tol and _rel(ntvp, jacobian) < tol
    full = empirical_ntk(net, x1, x2, outputs="full")
    assert full.shape == (7, 4, out_dim, out_dim)
    trace = torch.diagonal(full, dim1=-2, dim2=-1).sum(-1)
    assert torch.allclose(empirical_ntk(net, x1, x2, outputs="trace"), trace, rtol=tol, atol=0)
    assert torch.allclose(empirical_ntk(net, x1, x2), trace / out_dim, rtol=tol, atol=0)


def test_linear_model_has_the_closed_form_kernel(rng):
    # depth 0, ntk: f = σ_w/√n0 W x + σ_b b, so Θ̂ = σ_w² x·x'/n0 + σ_b² exactly, whatever W.
    x1, x2 = random_inputs(5, 3, rng), random_inputs(6, 3, rng)
    net = build_mlp(ArchSpec(depth=0, sigma_w=1.7, sigma_b=0.4), 3, seed=0, dtype=torch.float64)
    expected = 1.7 ** 2 * (x1 @ x2.T) / 3 + 0.4 ** 2
    for method in ("structured", "jacobian", "ntvp"):
        assert torch.allclose(empirical_ntk(net, x1, x2, method=method), expected, rtol=1e-13, atol=0)


def test_readout_kernel_of_one_hidden_layer_by_hand(rng):
    # Depth 1, standard, no bias: f = v·relu(W x); Θ̂ = |relu(Wx)·relu(Wx')| + Σ_i v_i² 1[..]1[..] x·x'.
    x = random_inputs(4, 3, rng)
    net = build_mlp(ArchSpec(depth=1, width=10, bias=False, parametrization="standard"), 3, seed=4,
                    dtype=torch.float64)
    W, v = net.layers[0].weight, net.layers[1].weight[0]
    pre = x @ W.T
    h, gate = torch.relu(pre), (pre > 0).double()
    expected = h @ h.T + ((gate * v ** 2) @ gate.T) * (x @ x.T)
    assert torch.allclose(empirical_ntk(net, x), expected, rtol=1e-13, atol=0)


class TwoBranch(nn.Module):
    """A module that is not an ntklab MLP: the generic methods must handle it."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 8)
        self.b = nn.Linear(4, 8)
        self.out = nn.Linear(8, 2)
        self.register_buffer("shift", torch.tensor(0.5))

    def forward(self, x):
        return self.out(torch.tanh(self.a(x)) * torch.sigmoid(self.b(x)) + self.shift)


def test_generic_module_agrees_with_per_output_autograd(rng):
    torch.manual_seed(0)
    model = TwoBranch().double()
    x1, x2 = random_inputs(6, 4, rng), random_inputs(3, 4, rng)
    jac = empirical_ntk(model, x1, x2, method="jacobian", outputs="full")
    ntvp = empirical_ntk(model, x1, x2, method="ntvp", outputs="full")
    assert _rel(ntvp, jac) < 1e-12
    # The slowest, most direct route: one autograd gradient per (point, output).
    params = list(model.parameters())
    grads = torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(model(x[None])[0, o], params)])
                         for x in x1[:3] for o in range(2)])                     # (3·2, P)
    direct = (grads @ grads.T).reshape(3, 2, 3, 2).permute(0, 2, 1, 3)          # (3, 3, 2, 2)
    auto = empirical_ntk(model, x1[:3], outputs="full")                          # auto → jacobian
    assert _rel(auto, direct) < 1e-12


@pytest.mark.parametrize("keep_columns", [True, False])
@pytest.mark.parametrize("method", ["structured", "jacobian", "ntvp"])
def test_chunking_changes_nothing(method, keep_columns, rng, monkeypatch):
    from ntklab.ntk import empirical as empirical_module

    if not keep_columns:    # no memory to spare: one column chunk kept at a time, x1's rows recomputed for each
        monkeypatch.setattr(empirical_module.resources, "available_bytes", lambda device: 0)
    net = build_mlp(ArchSpec(depth=2, width=16, out_dim=2), 3, seed=0, dtype=torch.float64)
    x1, x2 = random_inputs(11, 3, rng), random_inputs(9, 3, rng)
    whole = empirical_ntk(net, x1, x2, method=method, outputs="full")
    # A 1-byte budget forces one row per chunk.
    chunked = empirical_ntk(net, x1, x2, method=method, outputs="full", memory_budget=1)
    assert _rel(chunked, whole) < 1e-13
    symmetric = empirical_ntk(net, x1, method=method, memory_budget=1)
    assert torch.allclose(symmetric, symmetric.T, rtol=1e-13, atol=0)
    eigenvalues = torch.linalg.eigvalsh(symmetric)
    assert eigenvalues.min() > -1e-12 * eigenvalues.max()


def _feature_computations(monkeypatch) -> list:
    """A list that receives the input count of every structured-feature computation from now on."""
    from ntklab.ntk import empirical as empirical_module

    counts = []
    original = empirical_module._structured_features
    monkeypatch.setattr(empirical_module, "_structured_features",
                        lambda model, x, full, chunk: counts.append(x.shape[0]) or original(model, x, full, chunk))
    return counts


def _feature_bytes(net, full: bool) -> int:
    """Bytes of structured features an input of the float64 net keeps, as empirical_ntk counts them."""
    return 8 * sum(m.layer.ntk_feature_numel(m.node, net.out_dim, full) for m in net.parametrized_modules())


@pytest.mark.parametrize("kept_inputs, cross, same", [
    (None, 11 + 9, 11),                  # all kept: every input's features once
    (0, 9 + 9 * 11, 11 * 12 // 2),       # one column chunk at a time: x1's rows again for each
    (3, 9 + 3 * 11, 3 + 6 + 9 + 11),     # groups of 3 columns (3 of 9; 4 of 11 for x1 × x1)
])
def test_features_computed_once_per_group_of_kept_columns(kept_inputs, cross, same, rng, monkeypatch):
    """One input per chunk (1-byte budget): 11 row and 9 column chunks, the columns held in groups of as
    many as fit in memory. Each column chunk's features are computed once and each row chunk's once per
    group. For x1 × x1 the group starting at column s computes the s rows before it and its own
    columns (rows inside the group take them): Σ (s + size) over the groups, 11·12/2 with groups of one.
    The kernel is the same whatever the grouping."""
    from ntklab.ntk import empirical as empirical_module

    net = build_mlp(ArchSpec(depth=2, width=16, out_dim=2), 3, seed=0, dtype=torch.float64)
    x1, x2 = random_inputs(11, 3, rng), random_inputs(9, 3, rng)
    whole, whole_same = empirical_ntk(net, x1, x2, outputs="full"), empirical_ntk(net, x1, outputs="full")
    if kept_inputs is not None:
        row_bytes = _feature_bytes(net, full=True)
        monkeypatch.setattr(empirical_module.resources, "available_bytes",
                            lambda device: empirical_module.KEPT_FRACTION * kept_inputs * row_bytes)
    calls = _feature_computations(monkeypatch)
    grouped = empirical_ntk(net, x1, x2, method="structured", outputs="full", memory_budget=1)
    assert len(calls) == cross
    assert _rel(grouped, whole) < 1e-13
    calls.clear()
    grouped_same = empirical_ntk(net, x1, method="structured", outputs="full", memory_budget=1)
    assert len(calls) == same
    assert _rel(grouped_same, whole_same) < 1e-13


@pytest.mark.parametrize("outputs", ["full", "mean"])
def test_x1_features_kept_when_only_they_fit(outputs, rng, monkeypatch):
    """One input per chunk (1-byte budget) and memory for 4 inputs' features: 3 inputs in x1 fit, 9 in
    x2 do not, so Θ̂(x2, x1) is computed with x1's kept (9 + 3 feature computations, not 9 + 3·3 with
    x2's kept in three groups of 4, 4 and 1) and
    transposed back, input axes and output axes (which differ at finite width) alike."""
    from ntklab.ntk import empirical as empirical_module

    net = build_mlp(ArchSpec(depth=2, width=16, out_dim=2), 3, seed=0, dtype=torch.float64)
    x1, x2 = random_inputs(3, 3, rng), random_inputs(9, 3, rng)
    whole = empirical_ntk(net, x1, x2, method="structured", outputs=outputs)
    row_bytes = _feature_bytes(net, full=outputs == "full")
    monkeypatch.setattr(empirical_module.resources, "available_bytes",
                        lambda device: empirical_module.KEPT_FRACTION * 4 * row_bytes)
    calls = _feature_computations(monkeypatch)
    swapped = empirical_ntk(net, x1, x2, method="structured", outputs=outputs, memory_budget=1)
    assert len(calls) == 9 + 3
    assert swapped.shape == whole.shape and swapped.is_contiguous()
    assert _rel(swapped, whole) < 1e-13


def test_column_plan_keeps_all_that_fit_and_transposes_where_cheaper(monkeypatch):
    """_column_plan on counts alone (1 byte an input, chunks of 4, a 1-byte budget): 10 columns fit in
    10 bytes kept although 3 whole chunks would take 12; 9 do not fit in 8 (two chunks at a time), and
    against 3 rows that would compute 9 + 3·2 features, so x1 (3, fitting) becomes the columns: 3 + 9."""
    from ntklab.ntk import empirical as empirical_module

    monkeypatch.setattr(empirical_module.resources, "available_bytes",
                        lambda device: empirical_module.KEPT_FRACTION * 10)
    plan = lambda n1, n2: empirical_module._column_plan(n1, n2, 4, 1, 1, torch.device("cpu"))
    assert plan(10, None) == (False, 3)
    assert plan(10, 10) == (False, 3)
    monkeypatch.setattr(empirical_module.resources, "available_bytes",
                        lambda device: empirical_module.KEPT_FRACTION * 8)
    assert plan(9, None) == (False, 2)
    assert plan(3, 9) == (True, 1)
    assert plan(9, 3) == (False, 1)


@pytest.mark.parametrize("method", ["jacobian", "ntvp"])
def test_transposed_kernel_for_every_method(method, rng, monkeypatch):
    """Memory patched to 0 and a 1-byte budget (one input per chunk, one chunk kept): 2 rows against 7
    columns compute 7 + 7·2 features, transposed 2 + 2·7, so the kernel is computed as Θ̂(x2, x1) and
    swapped back; it must equal the direct one, output axes included."""
    from ntklab.ntk import empirical as empirical_module

    net = build_mlp(ArchSpec(depth=2, width=8, out_dim=2), 3, seed=0, dtype=torch.float64)
    x1, x2 = random_inputs(2, 3, rng), random_inputs(7, 3, rng)
    whole = empirical_ntk(net, x1, x2, method=method, outputs="full")
    monkeypatch.setattr(empirical_module.resources, "available_bytes", lambda device: 0)
    assert empirical_module._column_plan(2, 7, 1, 8, 1, torch.device("cpu"))[0]
    assert _rel(empirical_ntk(net, x1, x2, method=method, outputs="full", memory_budget=1), whole) < 1e-13


@pytest.mark.parametrize("gram_rows, expected_chunks", [(2, [1, 3, 4, 4, 4, 4]), (5, [9, 11])])
def test_large_feature_pieces_are_the_row_chunks(gram_rows, expected_chunks, rng, monkeypatch):
    """On the CPU the features are computed in pieces whose largest δ fits CHUNK_BYTES: 4 inputs here
    (2 outputs · 16 units · 8 bytes = 256 bytes an input, CHUNK_BYTES patched to 1024). Pieces of at
    least GRAM_ROWS inputs serve as the row and column chunks themselves; smaller ones are copied into
    the chunks the budget allows (one here). The kernel is the same either way."""
    from ntklab.ntk import empirical as empirical_module

    net = build_mlp(ArchSpec(depth=2, width=16, out_dim=2), 3, seed=0, dtype=torch.float64)
    x1, x2 = random_inputs(11, 3, rng), random_inputs(9, 3, rng)
    whole = empirical_ntk(net, x1, x2, method="structured", outputs="full")
    monkeypatch.setattr(empirical_module.resources, "CHUNK_BYTES", 1024)
    monkeypatch.setattr(empirical_module, "GRAM_ROWS", gram_rows)
    chunks = _feature_computations(monkeypatch)
    pieces = empirical_ntk(net, x1, x2, method="structured", outputs="full")
    assert sorted(chunks) == expected_chunks     # x1: 4 + 4 + 3, x2: 4 + 4 + 1, each once
    assert _rel(pieces, whole) < 1e-13


def test_empirical_nngp_outputs_and_readout(rng):
    x = random_inputs(5, 3, rng)
    spec = ArchSpec(depth=2, width=12, sigma_w=1.3, sigma_b=0.2, out_dim=3)
    net = build_mlp(spec, 3, seed=1, dtype=torch.float64)
    f = net(x)
    assert torch.allclose(empirical_nngp(net, x, outputs="full"), f[:, None, :, None] * f[None, :, None, :])
    assert torch.allclose(empirical_nngp(net, x), f @ f.T / 3, rtol=1e-14, atol=0)
    # readout: E over the last layer's init given the features, σ_w²/n a·a' + σ_b².
    a = net.hidden(x)[0][-1]
    assert torch.allclose(empirical_nngp(net, x, method="readout"), 1.3 ** 2 / 12 * a @ a.T + 0.2 ** 2,
                          rtol=1e-14, atol=0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(x1=torch.zeros(3, 4)), "expects in_dim=3"),
    (dict(x1=torch.zeros(3, 3), x2=torch.zeros(2, 5)), "different feature dims"),
    (dict(x1=torch.full((2, 3), float("nan"))), "NaN"),
    (dict(x1=torch.zeros(0, 3)), "empty batch"),
    (dict(x1=torch.zeros(2, 3), method="exact"), "method must be one of auto, structured, jacobian, ntvp"),
    (dict(x1=torch.zeros(2, 3), outputs="diag"), "outputs must be one of mean, trace, full"),
])
def test_bad_inputs_say_what_was_wrong(kwargs, message):
    net = build_mlp(ArchSpec(depth=1, width=4), 3, seed=0)
    with pytest.raises(ValueError) as err:
        empirical_ntk(net, **kwargs)
    assert message in str(err.value)


def test_structured_needs_an_ntklab_net():
    with pytest.raises(ValueError, match="structured.*ntklab net"):
        empirical_ntk(nn.Linear(3, 1), torch.zeros(2, 3), method="structured")


@pytest.mark.cuda
def test_cuda_matches_cpu(rng):
    spec = ArchSpec(depth=3, width=256, activation="relu", out_dim=2)
    x = random_inputs(32, 8, rng)
    cpu = empirical_ntk(build_mlp(spec, 8, seed=0, dtype=torch.float64), x)
    net = build_mlp(spec, 8, seed=0, dtype=torch.float64, device="cuda")
    for method in ("structured", "jacobian", "ntvp"):
        assert _rel(empirical_ntk(net, x.cuda(), method=method).cpu(), cpu) < 1e-10
