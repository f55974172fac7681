"""Shared inputs and tolerances for the selective-scan tests (mamba_ssm's test recipe, docs/selective_scan.md §8)."""

from __future__ import annotations

import torch
from medmamba_kernels import selective_scan_ref

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")

# (rtol, atol) of the output by input dtype; gradient tolerances derive from these as upstream does.
OUTPUT_TOL = {torch.float32: (6e-4, 2e-3), torch.float16: (3e-3, 5e-3), torch.bfloat16: (3e-2, 5e-2)}
WEIGHT_TOL = (1e-3, 1e-3)


def make_inputs(batch=2, dim=4, dstate=8, length=64, bc="grouped", groups=2, has_D=True, has_z=True,
                has_bias=True, dtype=torch.float32, seed=0):
    """Inputs as in mamba_ssm's tests: A = -0.5·rand, delta = 0.5·rand, bias = 0.5·rand, the rest
    randn. ``bc`` is "constant" (D, N), "variable" (batch, N, L) or "grouped" (batch, G, N, L)."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape, dt=dtype):
        return torch.randn(*shape, generator=gen).to(dt)

    def rand(*shape, dt=dtype):
        return torch.rand(*shape, generator=gen).to(dt)

    bc_shape = {"constant": (dim, dstate), "variable": (batch, dstate, length),
                "grouped": (batch, groups, dstate, length)}[bc]
    bc_dtype = torch.float32 if bc == "constant" else dtype
    return {
        "u": randn(batch, dim, length),
        "delta": 0.5 * rand(batch, dim, length),
        "A": -0.5 * rand(dim, dstate, dt=torch.float32),
        "B": randn(*bc_shape, dt=bc_dtype),
        "C": randn(*bc_shape, dt=bc_dtype),
        "D": randn(dim, dt=torch.float32) if has_D else None,
        "z": randn(batch, dim, length) if has_z else None,
        "delta_bias": 0.5 * rand(dim, dt=torch.float32) if has_bias else None,
    }


def run_with_grads(fn, inputs, dout_seed=1, cast=None, **kwargs):
    """Run ``fn`` on leaf copies of ``inputs`` (cast to ``cast`` if given) and return the output,
    the last state and the gradients of every present input for a fixed random ``dout``."""
    leaves = {k: (None if v is None else (v.to(cast) if cast else v).detach().clone().requires_grad_())
              for k, v in inputs.items()}
    out, last = fn(**leaves, return_last_state=True, **kwargs)
    gen = torch.Generator().manual_seed(dout_seed)
    dout = torch.randn(out.shape, generator=gen).to(out.dtype)
    present = [k for k in NAMES if leaves[k] is not None]
    grads = torch.autograd.grad(out, [leaves[k] for k in present], dout)
    return out, last, dict(zip(present, grads))


def oracle(inputs, **kwargs):
    """The reference in float64: the standard every fast path is held to."""
    return run_with_grads(selective_scan_ref, inputs, cast=torch.float64, **kwargs)


def assert_matches_oracle(out, last, grads, expected, dtype=torch.float32, z_present=True):
    """Compare a fast path's results with the oracle using upstream's per-gradient tolerances."""
    rtol, atol = OUTPUT_TOL[dtype]
    rtolw, atolw = WEIGHT_TOL
    if z_present:
        rtolw, atolw = max(rtolw, rtol), max(atolw, atol)
    exp_out, exp_last, exp_grads = expected
    torch.testing.assert_close(out.double(), exp_out, rtol=rtol, atol=atol, msg=lambda m: f"out: {m}")
    torch.testing.assert_close(last.double(), exp_last, rtol=rtol, atol=atol, msg=lambda m: f"last_state: {m}")
    tolerances = {
        "u": (2 * rtol, 2 * atol), "delta": (5 * rtol, 10 * atol), "A": (rtolw, 5 * atolw),
        "B": (rtol, atol), "C": (rtol, atol), "D": (rtolw, atolw), "z": (rtolw, atolw),
        "delta_bias": (rtolw, atolw),
    }
    assert grads.keys() == exp_grads.keys()
    for name, grad in grads.items():
        r, a = tolerances[name]
        if exp_grads[name].dim() == 2 and name in "BC":  # constant B/C: weight-like sums
            r, a = rtolw, atolw
        torch.testing.assert_close(grad.double(), exp_grads[name], rtol=r, atol=a,
                                   msg=lambda m, name=name: f"d{name}: {m}")
