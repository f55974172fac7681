"""The planners' memory model: the peak memory of one training step, traced with fake tensors.

A training step of the network the plans will build is run on fake tensors (no memory is allocated,
nothing is computed) under PyTorch's ``MemTracker``, which follows every tensor the step creates and
frees: forward, a stand-in for nnU-Net's loss (:func:`proxy_loss`), backward. The result is the peak
of live bytes, split into weights, gradients and activations (activations include autograd's saved
tensors and the backward's temporaries, and the input batch). To that the model adds the optimiser
state and, at the device level, a fixed reserve and an allocator overhead (:class:`MemoryBudget`).

Precision. nnU-Net trains with autocast (fp16) and a GradScaler on CUDA, so activations are mostly
half precision. Plain fp32 would be a safe but loose upper bound (1.9-2× the AMP activations of the
convolutional networks; 1.3× for U-Mamba Enc, whose Mamba layers run in fp32 anyway), so
``precision="amp"`` traces the step under autocast with CUDA's casting policy, emulated on CPU fake
tensors: CPU autocast (fp16) casts the same matmul/conv family to half precision
as CUDA's, and :class:`_CudaAutocastPolicy` corrects the two places where the CPU policy differs from
CUDA's — ops that CUDA runs in fp32 (layer/group norm, softmax, exp, softplus, reductions, losses…)
are upcast, and the pooling ops that CPU autocast upcasts but CUDA leaves in half precision are run
in their input dtype. Networks that disable autocast around their scan (U-Mamba) are traced as they
run. Weights, gradients and optimiser state stay fp32, as in nnU-Net. ``precision="fp32"`` traces the
plain step (the LightM-UNet paper recipe trains without AMP).

Checked against real steps on CPU (one thread, glibc set to return freed memory so that the
resident set follows live memory; ``tests/test_planning.py`` runs three of them): the fp32
activation estimate is within 7 % of the measured resident-memory increase of a real forward +
backward for unet, resenc_m, umamba_bot, umamba_enc, segmamba, lightm_unet and mhs_vm, and traced
under CPU autocast (bf16, CPU policy) it is within 7 % of real autocast steps (unet, umamba_bot,
lightm_unet). The CUDA-policy emulation itself could not be measured here (no GPU); against
published figures it gives: SegMamba 128³ batch 2, step peak 17.6 GiB (its README: 17,976 MB
training memory); for nnU-Net's own BraTS-sized plans, U-Net / ResEnc M / ResEnc L / U-Mamba Bot /
U-Mamba Enc 6.7 / 8.3 / 22.1 / 11.3 / 29.3 GB on the device including the reserve (nnU-Net
Revisited reports 7.7 / 9.1 / 22.7 / 12.4 / 24.9 GB from nvidia-smi, one figure per method over
its datasets, not BraTS alone).

Speed. ``MemTracker`` updates a per-module peak for every op, which made a trace take 3-20 s; the
planners need only the global peak, so :func:`trace_training_step` uses a subclass that skips the
per-module bookkeeping (same numbers, 3-5× faster: 0.3-5 s per trace on one CPU thread).
:class:`MemoryModel` caches traces and extrapolates between them (activations scale with batch ×
voxels) so that the shrink loop needs two or three traces instead of one per candidate patch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map

__all__ = ["StepMemory", "MemoryBudget", "NetworkSpec", "MemoryModel", "trace_training_step", "proxy_loss",
           "describe", "PRECISIONS", "GIB"]

GIB = 2**30
PRECISIONS = ("amp", "fp32")


@dataclasses.dataclass(frozen=True)
class StepMemory:
    """Peak memory of one training step at ``batch_size`` × ``patch``, in bytes.

    ``activations`` covers everything the step creates except gradients (saved tensors,
    temporaries, the input batch and loss targets); ``grads`` the gradients alive at the peak;
    ``optimizer`` the optimiser state (present between steps). ``source`` is "trace" for a fake
    tensor trace and "extrapolated" for an estimate scaled from a trace of the same network family.
    """

    params: int
    grads: int
    activations: int
    optimizer: int
    batch_size: int
    patch: tuple[int, ...]
    precision: str
    source: str

    @property
    def total(self) -> int:
        """Peak bytes the step holds (weights, gradients, activations, optimiser state)."""
        return self.params + self.grads + self.activations + self.optimizer

    @property
    def fixed(self) -> int:
        """The part that does not grow with the batch (weights, gradients, optimiser state)."""
        return self.total - self.activations

    def as_dict(self) -> dict:
        return {"params_gib": self.params / GIB, "grads_gib": self.grads / GIB,
                "activations_gib": self.activations / GIB, "optimizer_gib": self.optimizer / GIB,
                "step_gib": self.total / GIB, "batch_size": self.batch_size, "patch": list(self.patch),
                "precision": self.precision, "source": self.source}


@dataclasses.dataclass(frozen=True)
class MemoryBudget:
    """A GPU of ``target_gb`` GiB: ``reserve_gb`` is held outside the training step (CUDA context,
    cuDNN workspace) and the caching allocator needs ``fragmentation`` on top of the step's peak.
    The memory a step needs on the device is ``reserve + step.total · (1 + fragmentation)``."""

    target_gb: float
    reserve_gb: float = 1.0
    fragmentation: float = 0.10

    @property
    def step_bytes(self) -> float:
        """The largest step peak that fits."""
        return (self.target_gb - self.reserve_gb) * GIB / (1 + self.fragmentation)

    def device_bytes(self, step: StepMemory) -> float:
        return self.reserve_gb * GIB + step.total * (1 + self.fragmentation)

    def fits(self, step: StepMemory) -> bool:
        return step.total <= self.step_bytes


@dataclasses.dataclass(frozen=True)
class NetworkSpec:
    """A network as nnU-Net's plans describe it (what ``get_network_from_plans`` rebuilds)."""

    class_name: str
    arch_kwargs: dict
    kw_requires_import: tuple[str, ...]
    input_channels: int
    num_outputs: int
    deep_supervision: bool
    family: str

    @property
    def key(self) -> str:
        return json.dumps([self.class_name, self.arch_kwargs, self.input_channels, self.num_outputs,
                           self.deep_supervision], sort_keys=True, default=str)

    def build(self, device: str | torch.device = "meta") -> nn.Module:
        """Build through nnunetv2's own ``get_network_from_plans`` (the trainer's path), on the meta
        device (parameters without storage) unless told otherwise."""
        from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

        with torch.device("meta"):
            net = get_network_from_plans(self.class_name, self.arch_kwargs, self.kw_requires_import,
                                         self.input_channels, self.num_outputs, allow_init=False,
                                         deep_supervision=self.deep_supervision)
        if torch.device(device).type != "meta":
            # Uninitialised storage: a fake-tensor trace never reads parameter values.
            net = net.to_empty(device=device)
        return net


def proxy_loss(outputs: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """A stand-in for nnU-Net's region loss (BCE with logits + soft Dice per output, deep-supervision
    outputs weighted 1/2^i) with the same kind of temporaries: a float target per output, sigmoid
    probabilities, products and sums. Targets are created here, so they count as step memory."""
    outputs = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
    total = outputs[0].new_zeros((), dtype=torch.float32)
    for i, logits in enumerate(outputs):
        target = torch.zeros(logits.shape, dtype=torch.float32, device=logits.device)
        probs = torch.sigmoid(logits.float())
        axes = tuple(range(2, logits.dim()))
        intersection = (probs * target).sum(axes)
        dice = 1 - (2 * intersection + 1e-5) / (probs.sum(axes) + target.sum(axes) + 1e-5)
        loss = F.binary_cross_entropy_with_logits(logits.float(), target) + dice.mean()
        total = total + loss / 2**i
    return total


# --------------------------------------------------------------------------------------------------
# Tracing
# --------------------------------------------------------------------------------------------------

# CUDA autocast runs these in fp32 (PyTorch AMP docs, "CUDA ops that can autocast to float32");
# CPU autocast leaves most of them in the input dtype. Matched by function name, so the functional
# form, the Tensor method and the torch.* form are all caught.
_CUDA_FP32_OPS = frozenset({
    "layer_norm", "group_norm", "softmax", "log_softmax", "softmin", "exp", "expm1", "log", "log1p", "log2",
    "log10", "pow", "__pow__", "__rpow__", "reciprocal", "rsqrt", "softplus", "sum", "prod", "cumsum",
    "cumprod", "norm", "normalize", "dist", "cdist", "renorm", "erfinv", "acos", "asin", "cosh", "sinh", "tan",
    "binary_cross_entropy_with_logits", "cross_entropy", "nll_loss", "kl_div", "l1_loss", "mse_loss",
    "smooth_l1_loss", "poisson_nll_loss", "cosine_similarity",
})
# CPU autocast upcasts these to fp32; CUDA runs them in the input dtype.
_CPU_ONLY_FP32_OPS = frozenset({
    "max_pool3d", "avg_pool3d", "adaptive_avg_pool3d", "adaptive_max_pool3d", "max_pool3d_with_indices",
    "_max_pool3d", "max_unpool3d", "max_unpool2d",
})


def _upcast(value):
    if isinstance(value, torch.Tensor) and value.dtype in (torch.float16, torch.bfloat16):
        return value.float()
    return value


class _CudaAutocastPolicy(TorchFunctionMode):
    """Under CPU autocast, apply CUDA autocast's choices where the two policies differ."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in _CUDA_FP32_OPS or name in _CPU_ONLY_FP32_OPS:
            with torch.autocast("cpu", enabled=False):
                if name in _CUDA_FP32_OPS:
                    args, kwargs = tree_map(_upcast, args), tree_map(_upcast, kwargs)
                return func(*args, **kwargs)
        return func(*args, **kwargs)


def _tracker_class():
    """``MemTracker`` keeping only the global peak (its per-module peaks cost O(modules) per op).
    Falls back to the plain tracker if this torch version lays it out differently."""
    from torch.distributed._tools import mem_tracker as mt

    total_key = getattr(mt, "_TOTAL_KEY", None)
    if total_key is None or not hasattr(mt.MemTracker, "_update_peak_stats"):
        return mt.MemTracker

    class GlobalPeakTracker(mt.MemTracker):
        def _update_peak_stats(self, peak_state) -> None:  # the base's signature; only the global peak
            for dev, snap in self._curr_mem_snap.items():
                if self._peak_mem.get(dev, 0) < snap[total_key]:
                    self._peak_mem[dev] = snap[total_key]
                    self._peak_mem_snap[dev] = dict(snap)

    return GlobalPeakTracker


def trace_training_step(model: nn.Module, input_shape: Sequence[int], precision: str = "amp",
                        optimizer_states: int = 1, loss: Callable = proxy_loss,
                        grads_exist: bool = False) -> StepMemory:
    """Peak memory of one training step of ``model`` on an input of ``input_shape`` (batch, channels,
    *patch), traced with fake tensors (nothing is allocated for activations; ``model`` must have
    real or empty CPU parameters, e.g. ``NetworkSpec.build("cpu")``).

    ``precision``: "amp" (fp16 autocast with CUDA's casting policy, see the module docstring) or
    "fp32". ``optimizer_states``: fp32 weight-sized buffers the optimiser keeps (SGD with momentum
    1, Adam 2). ``grads_exist``: gradients are allocated before the step and accumulated into
    (``zero_grad(set_to_none=False)``); by default they are created by the backward, as after
    nnU-Net's ``zero_grad(set_to_none=True)``. Raises the network's own ValueError for an input
    size it does not accept.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    from torch._subclasses.fake_tensor import FakeTensorMode

    model.train()
    model.zero_grad(set_to_none=True)
    if grads_exist:
        for p in model.parameters():
            if p.requires_grad:
                p.grad = torch.zeros_like(p)
    tracker = _tracker_class()()
    with FakeTensorMode(allow_non_fake_inputs=True):
        tracker.track_external(model)
        with tracker:
            x = torch.randn(*input_shape)
            if precision == "amp":
                with torch.autocast("cpu", dtype=torch.float16), _CudaAutocastPolicy():
                    out = model(x)
                    value = loss(out)
            else:
                out = model(x)
                value = loss(out)
            value.backward()
            del x, out, value
        peak = tracker.get_tracker_snapshot("peak")
    model.zero_grad(set_to_none=True)
    snap = next(iter(peak.values())) if peak else {}
    by_kind: dict[str, int] = {}
    for k, v in snap.items():
        kind = str(k).rsplit(".", 1)[-1].upper()
        by_kind[kind] = by_kind.get(kind, 0) + int(v)
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    return StepMemory(params=params + by_kind.get("BUFFER", 0), grads=by_kind.get("GRAD", 0),
                      activations=by_kind.get("ACT", 0) + by_kind.get("TEMP", 0) + by_kind.get("OTH", 0),
                      optimizer=optimizer_states * params, batch_size=int(input_shape[0]),
                      patch=tuple(int(s) for s in input_shape[2:]), precision=precision, source="trace")


# --------------------------------------------------------------------------------------------------
# Cache and extrapolation
# --------------------------------------------------------------------------------------------------

class MemoryModel:
    """Training-step memory per (network, patch, batch), traced once and cached.

    :meth:`estimate` may extrapolate from the latest trace of the same family (an architecture in
    one dimensionality): activations per sample and voxel are taken from that trace, weights from
    the candidate network itself (built on the meta device, no storage). The planners use the
    extrapolation inside the shrink loop and confirm the final choice with :meth:`trace`.
    """

    def __init__(self, precision: str = "amp", optimizer_states: int = 1) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.precision = precision
        self.optimizer_states = optimizer_states
        self._traces: dict[tuple, StepMemory] = {}
        self._rates: dict[str, tuple[float, float]] = {}
        self._params: dict[str, int] = {}
        self.n_traces = 0
        self.trace_seconds = 0.0

    def trace(self, net: NetworkSpec, patch: Sequence[int], batch_size: int) -> StepMemory:
        key = (net.key, tuple(int(p) for p in patch), int(batch_size))
        if key not in self._traces:
            start = time.perf_counter()
            model = net.build("cpu")
            step = trace_training_step(model, [batch_size, net.input_channels, *patch], self.precision,
                                       self.optimizer_states)
            self.trace_seconds += time.perf_counter() - start
            self.n_traces += 1
            self._traces[key] = step
            self._params[net.key] = step.params
            voxels = batch_size * math.prod(patch)
            self._rates[net.family] = (step.activations / voxels, step.grads / max(step.params, 1))
        return self._traces[key]

    def estimate(self, net: NetworkSpec, patch: Sequence[int], batch_size: int,
                 extrapolate: bool = True) -> StepMemory:
        key = (net.key, tuple(int(p) for p in patch), int(batch_size))
        if key in self._traces:
            return self._traces[key]
        if not extrapolate or net.family not in self._rates:
            return self.trace(net, patch, batch_size)
        act_rate, grad_fraction = self._rates[net.family]
        params = self._param_bytes(net)
        return StepMemory(params=params, grads=int(grad_fraction * params),
                          activations=int(act_rate * batch_size * math.prod(patch)),
                          optimizer=self.optimizer_states * params, batch_size=int(batch_size),
                          patch=tuple(int(p) for p in patch), precision=self.precision, source="extrapolated")

    def _param_bytes(self, net: NetworkSpec) -> int:
        if net.key not in self._params:
            model = net.build("meta")
            self._params[net.key] = sum(p.numel() * 4 for p in model.parameters()) + sum(
                b.numel() * b.element_size() for b in model.buffers())
        return self._params[net.key]


def describe(step: StepMemory, budget: MemoryBudget) -> dict[str, Any]:
    """The ``memory`` entry a planner writes into a configuration's ``medmamba`` section."""
    return {
        "target_gb": budget.target_gb, "estimated_gb": budget.device_bytes(step) / GIB,
        "reserve_gb": budget.reserve_gb, "fragmentation": budget.fragmentation, **step.as_dict(),
    }
