"""Triton selective scan (kernels/triton_scan.py) against the PyTorch oracle.

Without a GPU the kernels run in Triton's CPU interpreter (TRITON_INTERPRET=1, set below before
triton or the kernel module is imported; triton.jit picks interpreter or compiler when the module
is imported), on small shapes. On a machine with CUDA the variable is left alone (so other test
modules in the session still compile for the GPU) and the same tests run the compiled kernels on
CUDA tensors; TRITON_INTERPRET=1 forces the interpreter there too.

Tolerances are those of the upstream mamba tests (docs/selective_scan.md §8): output fp32 (6e-4, 2e-3),
fp16 (3e-3, 5e-3), bf16 (3e-2, 5e-2); du 2×; dΔ 5× rtol / 10× atol; dA (rtolw, 5·atolw); variable
dB/dC as the output; dD, dz, d_bias (rtolw, atolw) with (rtolw, atolw) = (1e-3, 1e-3) raised to
the output tolerance when z is present; constant dB/dC (weights summed over batch and time, like dA)
as dA.
"""

from __future__ import annotations

import os

import torch  # does not import triton

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

pytest.importorskip("triton")

from medmamba_kernels.reference import selective_scan_ref  # noqa: E402
from medmamba_kernels.routes import (  # noqa: E402
    axis_order,
    diagonal_zigzag,
    inter_slice,
    raster,
    route_tables,
    snake,
)

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
if INTERPRET:
    DEVICE = "cpu"
elif torch.cuda.is_available():
    DEVICE = "cuda"
else:
    pytest.skip("TRITON_INTERPRET=0 and there is no CUDA device", allow_module_level=True)

from medmamba_kernels import triton_scan  # noqa: E402

GRAD_NAMES = ("du", "ddelta", "dA", "dB", "dC", "dD", "dz", "ddelta_bias")
OUTPUT_TOL = {
    torch.float32: (6e-4, 2e-3),
    torch.float64: (6e-4, 2e-3),
    torch.float16: (3e-3, 5e-3),
    torch.bfloat16: (3e-2, 5e-2),
}


def make_inputs(batch=1, dim=2, length=7, nstate=4, dtype=torch.float32, b_kind="var",
                c_kind="var", groups=2, has_D=True, has_z=True, has_bias=True, seed=0,
                delta=None):
    """Inputs as the upstream test draws them. ``*_kind``: "const" (dim, N) fp32, "var"
    (batch, 1, N, L) or "grouped" (batch, groups, N, L) in the input dtype."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape, dt=dtype):
        return torch.randn(*shape, generator=gen).to(dt).to(DEVICE)

    def bc(kind):
        if kind == "const":
            return randn(dim, nstate, dt=torch.float32)
        g = 1 if kind == "var" else groups
        return randn(batch, g, nstate, length)

    weight = torch.float64 if dtype == torch.float64 else torch.float32
    u = randn(batch, dim, length)
    if delta is None:
        delta = (0.5 * torch.rand(batch, dim, length, generator=gen)).to(dtype).to(DEVICE)
    A = (-0.5 * torch.rand(dim, nstate, generator=gen)).to(weight).to(DEVICE)
    B, C = bc(b_kind), bc(c_kind)
    D = randn(dim, dt=weight) if has_D else None
    z = randn(batch, dim, length) if has_z else None
    bias = (0.5 * torch.rand(dim, generator=gen)).to(weight).to(DEVICE) if has_bias else None
    return dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=bias)


def reference(inputs, softplus, dout, routes=None, index=None):
    """Output, last state and gradients of the oracle. Inputs are upcast to fp32 leaves, so the
    reference gradients are fp32-accurate whatever the input dtype. ``index`` (K, L): an arbitrary
    permutation table, applied by gathering every per-position input along it (the oracle's own
    ``routes=`` only takes Route objects)."""
    names = list(inputs)
    leaves = {k: None if v is None else v.detach().float().requires_grad_(True) for k, v in inputs.items()}
    if index is None:
        out, last = selective_scan_ref(
            leaves["u"], leaves["delta"], leaves["A"], leaves["B"], leaves["C"], leaves["D"], leaves["z"],
            leaves["delta_bias"], delta_softplus=softplus, return_last_state=True, routes=routes)
    else:
        out, last = _reference_index(leaves, softplus, index)
    wrt = [k for k in names if leaves[k] is not None]
    grads = torch.autograd.grad(out, [leaves[k] for k in wrt], dout.float())
    by_name = dict(zip(wrt, grads))
    grad_list = [by_name.get(k) for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
    return out, last, grad_list


def _reference_index(leaves, softplus, index):
    u = leaves["u"]
    batch, dim, length = u.shape
    chan = index.repeat_interleave(dim // index.shape[0], dim=0)  # (dim, L)

    def gather(x):
        return None if x is None else torch.gather(x, 2, chan.expand(batch, -1, -1))

    def gather_bc(x):
        if x.dim() == 2:
            return x
        per_channel = x.repeat_interleave(dim // x.shape[1], dim=1)  # (batch, dim, N, L)
        idx = chan[None, :, None, :].expand(batch, -1, x.shape[2], -1)
        return torch.gather(per_channel, 3, idx)

    out, last = selective_scan_ref(
        gather(u), gather(leaves["delta"]), leaves["A"], gather_bc(leaves["B"]), gather_bc(leaves["C"]),
        leaves["D"], gather(leaves["z"]), leaves["delta_bias"], delta_softplus=softplus,
        return_last_state=True)
    natural = torch.zeros_like(out).scatter(2, chan.expand(batch, -1, -1), out)
    return natural, last


def run_triton(inputs, softplus, dout, route_index=None, route_desc=None, block_l=None):
    args = [inputs[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
    out, states = triton_scan.scan_fwd(*args, softplus, route_index, route_desc, block_l=block_l)
    grads = triton_scan.scan_bwd(dout, *args, softplus, route_index, route_desc, states, block_l=block_l)
    return out, states, grads


def check(inputs, softplus=True, routes=None, route_index=None, route_desc=None, index=None,
          block_l=None, seed=1):
    """Run the Triton scan and the oracle on the same inputs and dout; assert output, chunk states'
    shape and last state, and every gradient (presence, shape, dtype, values)."""
    u = inputs["u"]
    dtype = u.dtype
    batch, dim, length = u.shape
    nstate = inputs["A"].shape[1]
    gen = torch.Generator().manual_seed(seed)
    dout = torch.randn(u.shape, generator=gen).to(dtype).to(DEVICE)
    if routes is not None and route_index is None and route_desc is None:
        route_index, route_desc = route_tables(routes, length, u.device)

    out, states, grads = run_triton(inputs, softplus, dout, route_index, route_desc, block_l)
    ref_out, ref_last, ref_grads = reference(inputs, softplus, dout, routes=routes, index=index)

    rtol, atol = OUTPUT_TOL[dtype]
    rtolw, atolw = 1e-3, 1e-3
    if inputs["z"] is not None:
        rtolw, atolw = max(rtolw, rtol), max(atolw, atol)
    n_chunks = -(-length // triton_scan.CHUNK_LEN)

    assert out.dtype == dtype and out.shape == u.shape
    torch.testing.assert_close(out.float(), ref_out.float(), rtol=rtol, atol=atol)
    assert states.dtype == torch.float32 and states.shape == (batch, dim, n_chunks, nstate)
    torch.testing.assert_close(states[:, :, -1], ref_last.float(), rtol=rtol, atol=atol)

    tolerances = {
        "du": (2 * rtol, 2 * atol),
        "ddelta": (5 * rtol, 10 * atol),
        "dA": (rtolw, 5 * atolw),
        "dD": (rtolw, atolw),
        "dz": (rtolw, atolw),
        "ddelta_bias": (rtolw, atolw),
    }
    sources = {"du": "u", "ddelta": "delta", "dA": "A", "dB": "B", "dC": "C", "dD": "D", "dz": "z",
               "ddelta_bias": "delta_bias"}
    for name, got, want in zip(GRAD_NAMES, grads, ref_grads):
        source = inputs[sources[name]]
        if source is None:
            assert got is None, f"{name} should be None when its input is absent"
            continue
        assert got is not None, name
        assert got.shape == source.shape, (name, got.shape, source.shape)
        assert got.dtype == source.dtype, (name, got.dtype, source.dtype)
        if name in ("dB", "dC"):
            tol = (rtol, atol) if source.dim() == 4 else (rtolw, 5 * atolw)
        else:
            tol = tolerances[name]
        torch.testing.assert_close(got.float(), want.float(), rtol=tol[0], atol=tol[1], msg=lambda m: f"{name}: {m}")
    return out, states, grads


# ---------------------------------------------------------------------------------------------
# Lengths: masks, chunk boundaries (CHUNK_LEN = 256), several chunks
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [100, 300])
def test_forward_without_chunk_states_keeps_only_the_last(length):
    """Inference: the same output, and a single state slot holding the last state."""
    inputs = make_inputs(batch=2, dim=2, length=length, nstate=4)
    args = [inputs[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
    out, states = triton_scan.scan_fwd(*args, True, None, None)
    out_inf, last = triton_scan.scan_fwd(*args, True, None, None, False)
    assert states.shape[2] == -(-length // triton_scan.CHUNK_LEN) and last.shape == (2, 2, 1, 4)
    torch.testing.assert_close(out_inf, out, rtol=0, atol=0)
    torch.testing.assert_close(last[:, :, 0], states[:, :, -1], rtol=0, atol=0)


@pytest.mark.parametrize("length", [1, 2, 7, 63, 64, 65, 255, 256, 257, 1000, 2048, 2049])
def test_lengths(length):
    inputs = make_inputs(batch=1, dim=2, length=length, nstate=4, b_kind="var", c_kind="var")
    _, states, _ = check(inputs, softplus=True, seed=length)
    # Every saved chunk state is the state after that chunk's last step: check the first and the
    # last full chunk against the oracle run on the prefix.
    n_chunks = states.shape[2]
    for c in sorted({0, n_chunks - 2}) if n_chunks > 1 else []:
        end = (c + 1) * triton_scan.CHUNK_LEN
        per_position = ("u", "delta", "z") + tuple(k for k in ("B", "C") if inputs[k].dim() == 4)
        prefix = {k: v[..., :end] if k in per_position and v is not None else v for k, v in inputs.items()}
        _, last = selective_scan_ref(**prefix, delta_softplus=True, return_last_state=True)
        torch.testing.assert_close(states[:, :, c], last, rtol=6e-4, atol=2e-3)


# ---------------------------------------------------------------------------------------------
# B/C layouts and optional inputs
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "b_kind, c_kind, has_D, has_z, has_bias, softplus, nstate",
    [
        ("const", "const", True, True, True, True, 4),
        ("var", "var", False, False, False, False, 8),
        ("grouped", "grouped", True, False, True, True, 5),
        ("const", "grouped", False, True, False, False, 4),
        ("var", "const", True, True, False, True, 6),
        ("grouped", "var", False, False, True, False, 4),
    ],
)
def test_layouts_and_options(b_kind, c_kind, has_D, has_z, has_bias, softplus, nstate):
    inputs = make_inputs(batch=2, dim=4, length=300, nstate=nstate, b_kind=b_kind, c_kind=c_kind,
                         has_D=has_D, has_z=has_z, has_bias=has_bias, seed=nstate)
    check(inputs, softplus=softplus)


@pytest.mark.parametrize("block_l", [16, 64])
def test_several_tiles_per_chunk(block_l):
    """Tiles shorter than a chunk: the backward rebuilds each tile's start state from the chunk's
    saved state (scratch pass) and carries λ and ā_{t+1} across tile and chunk edges."""
    inputs = make_inputs(batch=1, dim=2, length=530, nstate=4, b_kind="grouped", c_kind="var", seed=3)
    check(inputs, softplus=True, block_l=block_l)


def test_block_l_must_divide_chunk():
    inputs = make_inputs(length=8)
    args = [inputs[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
    with pytest.raises(ValueError, match="BLOCK_L"):
        triton_scan.scan_fwd(*args, True, None, None, block_l=48)


def test_large_state():
    """N = 200: BLOCK_N = 256 with masked states, short tiles (several per chunk in the backward)."""
    inputs = make_inputs(batch=1, dim=2, length=40, nstate=200, b_kind="var", c_kind="const", seed=5)
    check(inputs, softplus=True)


def test_softplus_threshold_and_large_decay():
    """Δ inputs above the softplus threshold (20: identity, dΔ passed through), far below it
    (softplus ≈ exp(x), exercises the accurate log1p), and Δ·|A| large enough that the closed
    form e^{-ΣΔA} would overflow fp32 within one tile."""
    length = 70
    gen = torch.Generator().manual_seed(11)
    delta = torch.rand(1, 2, length, generator=gen) * 0.5
    delta[..., ::5] = 25.0
    delta[..., 1::7] = -30.0
    delta[..., 2::9] = 19.5
    inputs = make_inputs(batch=1, dim=2, length=length, nstate=4, delta=delta.to(DEVICE), has_bias=False, seed=11)
    inputs["A"] = inputs["A"] * 10.0
    out, _, _ = check(inputs, softplus=True)
    assert torch.isfinite(out).all()


# ---------------------------------------------------------------------------------------------
# Routes
# ---------------------------------------------------------------------------------------------


def test_route_index_table_snake_zigzag():
    """Mode 1 (index table): snake and diagonal zigzag over a (5, 8, 7) grid (L = 280: the
    routes cross the chunk edge at 256)."""
    grid = (5, 8, 7)
    routes = [snake(grid), diagonal_zigzag(grid, reverse=True)]
    index, desc = route_tables(routes, 280, DEVICE)
    assert desc is None
    inputs = make_inputs(batch=1, dim=4, length=280, nstate=4, b_kind="var", c_kind="const", seed=7)
    check(inputs, softplus=True, routes=routes)


def test_route_index_table_random_permutation():
    """Mode 1 with arbitrary permutations, grouped B/C whose groups straddle the routes."""
    length = 300
    gen = torch.Generator().manual_seed(8)
    index = torch.stack([torch.randperm(length, generator=gen) for _ in range(2)]).to(DEVICE)
    inputs = make_inputs(batch=2, dim=4, length=length, nstate=4, b_kind="grouped", c_kind="var",
                         groups=4, seed=8)
    check(inputs, softplus=False, route_index=index, index=index)


def test_route_strided_descriptor():
    """Mode 2 (strided descriptor only: no index table is passed, so the kernel must compute the
    positions): reversed raster, a reversed axis order and the inter-slice order of a 3D grid."""
    grid = (4, 6, 11)  # L = 264 > CHUNK_LEN
    routes = [raster(grid, reverse=True), axis_order(grid, (2, 0, 1), reverse=True), inter_slice(grid),
              axis_order(grid, (1, 2, 0))]
    index, desc = route_tables(routes, 264, DEVICE)
    assert desc is not None
    inputs = make_inputs(batch=1, dim=4, length=264, nstate=4, b_kind="grouped", c_kind="grouped",
                         groups=2, seed=9)
    out_desc, states_desc, grads_desc = check(inputs, softplus=True, routes=routes, route_index=None,
                                              route_desc=desc)
    # The index-table path over the same routes gives the same numbers (same arithmetic order).
    gen = torch.Generator().manual_seed(1)
    dout = torch.randn(inputs["u"].shape, generator=gen).to(DEVICE)
    out_idx, states_idx, grads_idx = run_triton(inputs, True, dout, route_index=index, route_desc=None)
    torch.testing.assert_close(out_idx, out_desc, rtol=0, atol=0)
    torch.testing.assert_close(states_idx, states_desc, rtol=0, atol=0)
    for name, a, b in zip(GRAD_NAMES, grads_idx, grads_desc):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6, msg=lambda m: f"{name}: {m}")


def test_route_descriptor_2d_one_route():
    """K = 1 strided route on a 2D grid (column-major), constant B/C."""
    routes = [axis_order((9, 7), (1, 0))]
    inputs = make_inputs(batch=2, dim=2, length=63, nstate=4, b_kind="const", c_kind="const", seed=10)
    check(inputs, softplus=False, routes=routes)


# ---------------------------------------------------------------------------------------------
# Input dtypes
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs(dtype):
    inputs = make_inputs(batch=2, dim=4, length=300, nstate=4, dtype=dtype, b_kind="grouped",
                         c_kind="var", seed=12)
    out, _, grads = check(inputs, softplus=True)
    assert out.dtype == dtype
    assert grads[3].dtype == dtype and grads[4].dtype == dtype  # variable dB/dC cast back


def test_half_inputs_with_routes():
    grid = (3, 4, 5)
    routes = [snake(grid), raster(grid, reverse=True)]
    inputs = make_inputs(batch=1, dim=2, length=60, nstate=4, dtype=torch.bfloat16, seed=13)
    check(inputs, softplus=True, routes=routes)


def test_fp64_inputs():
    inputs = make_inputs(batch=1, dim=2, length=65, nstate=4, dtype=torch.float64, b_kind="var",
                         c_kind="const", seed=14)
    out, _, grads = check(inputs, softplus=True)
    assert out.dtype == torch.float64 and grads[2].dtype == torch.float64


# ---------------------------------------------------------------------------------------------
# Through the public op (autograd, custom-op plumbing)
# ---------------------------------------------------------------------------------------------


def test_public_op_triton_backend(monkeypatch):
    from medmamba_kernels import selective_scan

    monkeypatch.setenv("MEDMAMBA_SCAN", "triton")
    inputs = make_inputs(batch=1, dim=4, length=70, nstate=4, b_kind="var", c_kind="var", seed=15)
    routes = [raster((7, 10)), axis_order((7, 10), (1, 0), reverse=True)]
    leaves = {k: None if v is None else v.detach().clone().requires_grad_(True) for k, v in inputs.items()}
    out, last = selective_scan(leaves["u"], leaves["delta"], leaves["A"], leaves["B"][:, 0],  # (batch, N, L)
                               leaves["C"], leaves["D"], leaves["z"], leaves["delta_bias"],
                               delta_softplus=True, return_last_state=True, routes=routes)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    wrt = [k for k in leaves if leaves[k] is not None]
    grads = torch.autograd.grad(out, [leaves[k] for k in wrt], dout)

    ref_leaves = {k: None if v is None else v.detach().clone().requires_grad_(True) for k, v in inputs.items()}
    ref_out, ref_last = selective_scan_ref(
        ref_leaves["u"], ref_leaves["delta"], ref_leaves["A"], ref_leaves["B"][:, 0], ref_leaves["C"],
        ref_leaves["D"], ref_leaves["z"], ref_leaves["delta_bias"], delta_softplus=True,
        return_last_state=True, routes=routes)
    ref_grads = torch.autograd.grad(ref_out, [ref_leaves[k] for k in wrt], dout)
    torch.testing.assert_close(out, ref_out, rtol=6e-4, atol=2e-3)
    torch.testing.assert_close(last, ref_last, rtol=6e-4, atol=2e-3)
    for name, got, want in zip(wrt, grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=5e-3, atol=2e-2, msg=lambda m: f"{name}: {m}")
