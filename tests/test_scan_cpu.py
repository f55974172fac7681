"""The CPU path of the selective scan against the float64 reference: values and every gradient."""

from __future__ import annotations

import pytest
import torch
from medmamba_kernels import routes, selective_scan, selective_scan_ref
from scan_cases import assert_matches_oracle, make_inputs, oracle, run_with_grads

from medmamba.benchmarks.memory import PeakMemory


@pytest.fixture(autouse=True)
def _cpu_backend(monkeypatch):
    monkeypatch.setenv("MEDMAMBA_SCAN", "cpu")


LENGTHS = [1, 2, 7, 63, 64, 65, 255, 256, 257, 1000, 2048, 2049]


@pytest.mark.parametrize("length", LENGTHS)
def test_lengths_all_options(length):
    inputs = make_inputs(length=length, bc="grouped", groups=2)
    kwargs = dict(delta_softplus=True)
    assert_matches_oracle(*run_with_grads(selective_scan, inputs, **kwargs), oracle(inputs, **kwargs))


@pytest.mark.parametrize("bc", ["constant", "variable", "grouped"])
@pytest.mark.parametrize("has_D,has_z,has_bias,softplus", [
    (True, True, True, True), (False, False, False, False), (True, False, True, False), (False, True, False, True),
])
@pytest.mark.parametrize("length", [65, 257])
def test_layouts_and_options(bc, has_D, has_z, has_bias, softplus, length):
    inputs = make_inputs(length=length, bc=bc, has_D=has_D, has_z=has_z, has_bias=has_bias, seed=length)
    kwargs = dict(delta_softplus=softplus)
    assert_matches_oracle(*run_with_grads(selective_scan, inputs, **kwargs), oracle(inputs, **kwargs),
                          z_present=has_z)


def test_constant_B_variable_C():
    inputs = make_inputs(length=130, bc="grouped", groups=2)
    inputs["B"] = -0.3 * torch.randn(4, 8)
    assert_matches_oracle(*run_with_grads(selective_scan, inputs), oracle(inputs))


def test_many_groups_and_threads_blocks():
    # G = D: every channel its own group; also a batch of one with many channels per group, the
    # case that splits a group over several channel blocks in the backward.
    inputs = make_inputs(batch=1, dim=6, length=100, bc="grouped", groups=6)
    assert_matches_oracle(*run_with_grads(selective_scan, inputs), oracle(inputs))
    inputs = make_inputs(batch=1, dim=16, length=100, bc="variable")
    assert_matches_oracle(*run_with_grads(selective_scan, inputs), oracle(inputs))


def test_large_delta_takes_linear_softplus_branch():
    inputs = make_inputs(length=50)
    inputs["delta"] = inputs["delta"] + 21.0 * (torch.rand(inputs["delta"].shape) > 0.5)
    inputs["A"] = inputs["A"] * 0.01
    kwargs = dict(delta_softplus=True)
    assert_matches_oracle(*run_with_grads(selective_scan, inputs, **kwargs), oracle(inputs, **kwargs))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs(dtype):
    inputs = make_inputs(length=300, dtype=dtype)
    out, last, grads = run_with_grads(selective_scan, inputs, delta_softplus=True)
    assert out.dtype == dtype and last.dtype == torch.float32
    assert grads["u"].dtype == dtype and grads["A"].dtype == torch.float32 and grads["B"].dtype == dtype
    assert_matches_oracle(out, last, grads, oracle(inputs, delta_softplus=True), dtype=dtype)


def test_gradcheck_float64():
    for bc in ("constant", "variable", "grouped"):
        inputs = make_inputs(batch=1, dim=2, dstate=3, length=6, bc=bc, groups=2, dtype=torch.float64, seed=3)
        inputs = {k: None if v is None else v.double().requires_grad_() for k, v in inputs.items()}

        def scan(u, delta, A, B, C, D, z, delta_bias):
            return selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus=True)

        assert torch.autograd.gradcheck(scan, tuple(inputs.values()), eps=1e-6, atol=1e-5)


def test_gradcheck_float64_with_route():
    inputs = make_inputs(batch=1, dim=2, dstate=3, length=8, bc="variable", dtype=torch.float64, seed=4)
    inputs = {k: None if v is None else v.double().requires_grad_() for k, v in inputs.items()}
    route_pair = [routes.snake((2, 4)), routes.raster((2, 4), reverse=True)]

    def scan(u, delta, A, B, C, D, z, delta_bias):
        return selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus=True, routes=route_pair)

    assert torch.autograd.gradcheck(scan, tuple(inputs.values()), eps=1e-6, atol=1e-5)


@pytest.mark.slow
def test_long_sequence_is_stable():
    """L = 262,144 with delta up to 5 and |A| up to 16: the chunked closed forms overflow here; the
    pair recurrence must stay finite and equal to the float64 reference."""
    length = 262_144
    gen = torch.Generator().manual_seed(7)
    u = torch.randn(1, 2, length, generator=gen)
    delta = 5 * torch.rand(1, 2, length, generator=gen)
    A = -16 * torch.rand(2, 4, generator=gen)
    B = torch.randn(1, 4, length, generator=gen)
    C = torch.randn(1, 4, length, generator=gen)
    out, last = selective_scan(u, delta, A, B, C, return_last_state=True)
    with torch.no_grad():
        expected, expected_last = selective_scan_ref(u.double(), delta.double(), A.double(), B.double(),
                                                     C.double(), return_last_state=True)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), expected, rtol=6e-4, atol=2e-3)
    torch.testing.assert_close(last.double(), expected_last, rtol=6e-4, atol=2e-3)
    # Gradients over the same length stay finite too.
    leaves = [t.clone().requires_grad_() for t in (u, delta, A, B, C)]
    grads = torch.autograd.grad(selective_scan(*leaves).sum(), leaves)
    assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.slow
def test_memory_stays_far_below_one_state_sized_tensor():
    """Forward + backward at a shape where one B·D·L·N fp32 tensor is 2 GiB must stay far below it
    (measured as the process's peak resident memory)."""
    batch, dim, length, dstate = 1, 64, 262_144, 32
    state_sized = batch * dim * length * dstate * 4
    inputs = make_inputs(batch=batch, dim=dim, dstate=dstate, length=length, bc="variable")
    leaves = [v.requires_grad_() for v in inputs.values()]
    selective_scan(*[t[..., :300].contiguous() if t.dim() == 3 else t for t in leaves])  # compile first
    with PeakMemory() as peak:
        out = selective_scan(*leaves, delta_softplus=True)
        grads = torch.autograd.grad(out, leaves, torch.ones_like(out))
    assert all(torch.isfinite(g).all() for g in grads)
    # What the block adds: out, dout, du, ddelta, dz (five (B, D, L) tensors, 320 MiB here), the
    # chunk states (1/256 of B·D·L·N) and per-thread dB/dC partial sums (a few B-sized buffers).
    assert peak.bytes < state_sized / 2, f"peak {peak.bytes / 2**20:.0f} MiB vs B·D·L·N {state_sized / 2**20:.0f} MiB"


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode", "no_leaf_requires_grad"])
def test_inference_forward_saves_only_the_last_state(monkeypatch, mode):
    """Without a backward to come the forward keeps one state slot, not one per chunk, and gives
    the same output and last state."""
    from medmamba_kernels import cpu

    seen = []
    original = cpu.scan_fwd

    def spy(*args):
        out, states = original(*args)
        seen.append((args[-1], states.shape[2]))
        return out, states

    monkeypatch.setattr(cpu, "scan_fwd", spy)
    inputs = make_inputs(length=600)
    leaves = {k: None if v is None else v.clone().requires_grad_() for k, v in inputs.items()}
    out, last = selective_scan(**leaves, delta_softplus=True, return_last_state=True)
    context = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode}.get(mode)
    with context() if context else torch.enable_grad():
        out_inf, last_inf = selective_scan(**(inputs if mode == "no_leaf_requires_grad" else leaves),
                                           delta_softplus=True, return_last_state=True)
    assert seen == [(True, 3), (False, 1)]
    torch.testing.assert_close(out_inf, out.detach(), rtol=0, atol=0)
    torch.testing.assert_close(last_inf, last, rtol=0, atol=0)


def test_fast_exp_is_accurate_under_the_kernels_fastmath_flags():
    """The kernels' exp, compiled inside a function with the kernels' fastmath flags (which allow
    reassociation): reassociated, its range reduction lost precision (relative error 5e-6)."""
    import numba
    import numpy as np
    from medmamba_kernels import cpu

    flags = cpu._forward.targetoptions["fastmath"]

    @numba.njit(fastmath=flags, error_model="numpy")
    def exps(x, out):
        for i in range(x.shape[0]):
            out[i] = cpu._exp(x[i])

    x = np.linspace(-87.0, 0.0, 400_001).astype(np.float32)
    got = np.empty_like(x)
    exps(x, got)
    relative = np.abs(got.astype(np.float64) / np.exp(x.astype(np.float64)) - 1.0)
    assert relative.max() < 4e-7, relative.max()


def test_fast_softplus_and_its_slope_are_accurate():
    """Δ = softplus(delta + bias) and its derivative, computed inside the kernels in fp32, against
    float64 with PyTorch's threshold (x and 1 above 20), over the range delta takes and beyond."""
    import numba
    import numpy as np
    from medmamba_kernels import cpu

    flags = cpu._forward.targetoptions["fastmath"]

    @numba.njit(fastmath=flags, error_model="numpy")
    def evaluate(x, softplus, slope):
        for i in range(x.shape[0]):
            softplus[i] = cpu._softplus(x[i])
            slope[i] = cpu._softplus_slope(x[i])

    x = np.concatenate([np.linspace(-100.0, 40.0, 700_001), [-1e-30, 0.0, 1e-30, 20.0, 20.5]]).astype(np.float32)
    softplus, slope = np.empty_like(x), np.empty_like(x)
    evaluate(x, softplus, slope)
    x64 = torch.from_numpy(x.astype(np.float64))
    expected = torch.nn.functional.softplus(x64).numpy()
    expected_slope = torch.where(x64 > 20, 1.0, torch.sigmoid(x64)).numpy()
    normal = x >= -87  # below, both are under fp32's smallest normal number (the exp saturates there)
    assert np.abs(softplus / expected - 1.0)[normal].max() < 4e-7
    assert np.abs(slope / expected_slope - 1.0)[normal].max() < 4e-7
    assert np.abs(softplus - expected)[~normal].max() < 2e-38 and np.abs(slope - expected_slope)[~normal].max() < 2e-38
    assert np.all(softplus[x > 20] == x[x > 20]) and np.all(slope[x > 20] == 1.0)


@pytest.mark.slow
@pytest.mark.parametrize("kernel", ["_forward", "_backward"])
def test_kernels_vectorise_without_overlap_checks(kernel):
    """The loops over the N states vectorise only while LLVM can prove that the kernels' arrays do
    not overlap (docs/benchmarks.md). A view or a tuple in the parallel loop body makes Numba drop
    ``noalias`` and LLVM fall back to runtime overlap checks or scalar code: compile a fresh copy,
    fp32 with variable B/C and z, and read its LLVM IR."""
    import re

    import numba
    from medmamba_kernels import cpu

    original = getattr(cpu, kernel)
    fresh = numba.njit(**{k: v for k, v in original.targetoptions.items() if k != "nopython"})(original.py_func)
    inputs = make_inputs(batch=1, dim=4, dstate=16, length=300, bc="variable")
    leaves = {k: None if v is None else v.clone().requires_grad_() for k, v in inputs.items()}
    calls = []

    def capture(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cpu, kernel, capture)
        out = selective_scan(**leaves, delta_softplus=True)
        torch.autograd.grad(out, list(v for v in leaves.values() if v is not None), torch.ones_like(out))
    fresh(*calls[0])
    (llvm,) = [ir for sig, ir in fresh.inspect_llvm().items() if "float32" in str(sig)]
    assert "vector.memcheck" not in llvm
    (body,) = [line for line in llvm.splitlines()  # the parallel loop's body, not its __gufunc__ wrapper
               if line.startswith("define") and "parfor_gufunc" in line and "@__gufunc__" not in line]
    assert body.count("noalias") > 10  # every array argument, not only the return pointers
    assert re.search(r"fmul [a-z ]*<(8|16) x float>", llvm)  # 8 or 16 lanes: AVX2 or AVX-512


def test_B_C_may_be_strided_slices():
    """The networks pass B and C as slices of one projection's output; the op no longer copies them
    to contiguous memory first, so the CPU path must read their strides right (values and the
    gradients that flow back into the sliced tensor)."""
    inputs = make_inputs(length=70, bc="variable")
    stacked = torch.cat([inputs["B"], torch.randn(2, 3, 70), inputs["C"]], dim=1).requires_grad_()
    B, C = stacked[:, :8], stacked[:, 11:]
    assert not B.is_contiguous() and not C.is_contiguous()
    others = {k: v for k, v in inputs.items() if k not in "BC"}
    out = selective_scan(B=B, C=C, **others, delta_softplus=True)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    (grad,) = torch.autograd.grad(out, stacked, dout)
    expected, _, expected_grads = oracle(inputs, delta_softplus=True)
    torch.testing.assert_close(out.double(), expected, rtol=6e-4, atol=2e-3)
    torch.testing.assert_close(grad[:, :8].double(), expected_grads["B"], rtol=6e-4, atol=2e-3)
    torch.testing.assert_close(grad[:, 11:].double(), expected_grads["C"], rtol=6e-4, atol=2e-3)
    assert torch.all(grad[:, 8:11] == 0)
