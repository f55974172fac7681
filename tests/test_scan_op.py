"""The op's registration and dispatch: torch.compile, meta tensors, backend choice, input errors."""

from __future__ import annotations

import medmamba_kernels
import pytest
import torch
from medmamba_kernels import scan_backend, selective_scan, selective_scan_ref
from scan_cases import make_inputs


def test_default_backend_is_cpu_for_cpu_tensors(monkeypatch):
    monkeypatch.delenv("MEDMAMBA_SCAN", raising=False)
    assert scan_backend(torch.zeros(1)) == "cpu"


@pytest.mark.parametrize("name", ["reference", "cpu", "triton"])
def test_env_forces_backend(monkeypatch, name):
    monkeypatch.setenv("MEDMAMBA_SCAN", name)
    assert scan_backend(torch.zeros(1)) == name


def test_env_rejects_unknown_backend(monkeypatch):
    monkeypatch.setenv("MEDMAMBA_SCAN", "cuda")
    with pytest.raises(ValueError, match="reference, cpu, triton"):
        scan_backend(torch.zeros(1))


def test_reference_backend_calls_the_reference(monkeypatch):
    calls = []
    monkeypatch.setattr(medmamba_kernels.op, "selective_scan_ref",
                        lambda *a, **k: calls.append(1) or selective_scan_ref(*a, **k))
    monkeypatch.setenv("MEDMAMBA_SCAN", "reference")
    inputs = make_inputs(length=20)
    out = selective_scan(**inputs)
    assert calls == [1]
    torch.testing.assert_close(out, selective_scan_ref(**inputs))


def test_signature_matches_mamba_ssm():
    import inspect

    params = list(inspect.signature(selective_scan).parameters)
    assert params[:10] == ["u", "delta", "A", "B", "C", "D", "z", "delta_bias", "delta_softplus",
                           "return_last_state"]


def test_runs_on_meta_tensors_forward_and_backward():
    inputs = make_inputs(batch=2, dim=4, dstate=8, length=1000)
    meta = {k: None if v is None else v.to("meta").requires_grad_() for k, v in inputs.items()}
    out, last = selective_scan(**meta, delta_softplus=True, return_last_state=True)
    assert out.device.type == "meta" and out.shape == (2, 4, 1000) and last.shape == (2, 4, 8)
    grads = torch.autograd.grad(out.sum(), [meta["u"], meta["B"], meta["A"]])
    assert [g.shape for g in grads] == [meta["u"].shape, meta["B"].shape, meta["A"].shape]


@pytest.mark.slow
def test_traces_under_torch_compile(monkeypatch):
    monkeypatch.setenv("MEDMAMBA_SCAN", "cpu")
    inputs = make_inputs(length=300)

    def loss(u, delta, A, B, C, D, z, delta_bias):
        return (selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus=True) ** 2).sum()

    torch._dynamo.reset()
    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    eager_leaves = [v.clone().requires_grad_() for v in inputs.values()]
    compiled_leaves = [v.clone().requires_grad_() for v in inputs.values()]
    expected = loss(*eager_leaves)
    got = compiled(*compiled_leaves)
    torch.testing.assert_close(got, expected)
    for a, b in zip(torch.autograd.grad(got, compiled_leaves), torch.autograd.grad(expected, eager_leaves)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("change,message", [
    (dict(u=torch.zeros(2, 4)), r"u must be \(batch, D, L\)"),
    (dict(delta=torch.zeros(2, 4, 9)), "delta has shape"),
    (dict(A=torch.zeros(3, 8)), r"A must be \(D=4, N\)"),
    (dict(B=torch.zeros(2, 3, 8, 10)), "G=3 groups, which does not divide D=4"),
    (dict(C=torch.zeros(2, 8, 11)), "C must be"),
    (dict(D=torch.zeros(5)), r"D must be \(D=4,\)"),
    (dict(z=torch.zeros(2, 4, 11)), "z has shape"),
])
def test_bad_shapes_get_clear_errors(change, message):
    inputs = make_inputs(length=10)
    inputs.update(change)
    with pytest.raises(ValueError, match=message):
        selective_scan(**inputs)
