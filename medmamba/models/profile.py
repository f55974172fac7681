"""What a network costs: parameters, forward FLOPs (selective scan included) and the peak memory of
a training step — estimated without allocating anything, or measured on a CUDA device."""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from .layout import InputSizeError

__all__ = ["ModelCost", "ArchitectureCost", "count_parameters", "forward_flops", "training_step_memory", "model_cost",
           "architecture_costs", "format_costs", "builder_for_patch"]


@dataclasses.dataclass
class ModelCost:
    """Cost of one architecture at one input shape (batch, channels, *patch)."""

    name: str
    params: int
    forward_gflops: float
    scan_gflops: float
    train_activation_gib: float
    train_peak_gib: float
    memory_source: str


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _outputs_loss(output) -> torch.Tensor:
    """A loss that touches every output (all deep-supervision heads)."""
    outputs = output if isinstance(output, (list, tuple)) else [output]
    return sum(o.float().mean() for o in outputs)


def forward_flops(build: Callable[[], nn.Module], input_shape: Sequence[int]) -> tuple[int, int]:
    """(total, selective-scan) FLOPs of one forward pass, counted on meta tensors (nothing is
    computed or allocated). Multiply-adds count as 2 FLOPs, as torch's counter does; the scan counts
    9·B·L·D·N (see ``medmamba_kernels.op``)."""
    with torch.device("meta"):
        model = build()
        x = torch.empty(*input_shape)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(x)
    counts = counter.get_flop_counts()["Global"]
    scan = sum(v for k, v in counts.items() if "selective_scan" in str(k))
    return counter.get_total_flops(), scan


def training_step_memory(build: Callable[[], nn.Module], input_shape: Sequence[int]) -> tuple[int, int]:
    """(activations + temporaries, whole step) bytes at the peak of a forward + backward, estimated
    with fake tensors by PyTorch's MemTracker (parameters and gradients are in the whole-step figure;
    no optimiser state)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker

    # The network is built for real (its parameters are small; initialisers such as trunc_normal_
    # need real values); only the step's activations are fake.
    model = build()
    with FakeTensorMode(allow_non_fake_inputs=True):
        x = torch.randn(*input_shape)
        tracker = MemTracker()
        tracker.track_external(model)
        with tracker:
            _outputs_loss(model(x)).backward()
        peak = tracker.get_tracker_snapshot("peak")
    per_device = next(iter(peak.values()))
    activations = sum(v for k, v in per_device.items() if str(k).endswith(("ACT", "TEMP")))
    return activations, per_device["Total"]


def measured_training_step_memory(build: Callable[[], nn.Module], input_shape: Sequence[int],
                                  device: torch.device) -> tuple[int, int]:
    """Like :func:`training_step_memory`, measured on a CUDA device with real tensors."""
    model = build().to(device)
    x = torch.randn(*input_shape, device=device)
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    _outputs_loss(model(x)).backward()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    grads = sum(p.numel() * p.element_size() for p in model.parameters())
    return peak - base - grads, peak


def model_cost(name: str, build: Callable[[], nn.Module], input_shape: Sequence[int], batch_size: int = 2,
               measure_on: torch.device | None = None) -> ModelCost:
    """Parameters and FLOPs at batch 1; training-step memory at ``batch_size`` (nnU-Net's 3D default
    is 2), measured on ``measure_on`` (CUDA) when given, else estimated with fake tensors."""
    with torch.device("meta"):
        params = count_parameters(build())
    flops, scan = forward_flops(build, [1, *input_shape[1:]])
    train_shape = [batch_size, *input_shape[1:]]
    if measure_on is not None and measure_on.type == "cuda":
        act, peak = measured_training_step_memory(build, train_shape, measure_on)
        source = f"measured on {torch.cuda.get_device_name(measure_on)}"
    else:
        act, peak = training_step_memory(build, train_shape)
        source = "estimated (fake tensors)"
    return ModelCost(name, params, flops / 1e9, scan / 1e9, act / 2**30, peak / 2**30, source)


@dataclasses.dataclass
class ArchitectureCost:
    """One row of ``medmamba models``: a cost, or the reason the architecture was skipped."""

    name: str
    cost: ModelCost | None
    skipped: str | None = None

    def as_dict(self) -> dict:
        return {"name": self.name, "skipped": self.skipped,
                **(dataclasses.asdict(self.cost) if self.cost else {})}


def builder_for_patch(name: str, in_channels: int, num_classes: int, patch: Sequence[int]) -> Callable[[], nn.Module]:
    """A no-argument builder of ``name`` for this patch: a network that sizes itself from the
    training patch (U-Mamba Enc's channel-token rule) gets it through its registry record's
    ``patch_keyword``."""
    from .registry import create, get

    keyword = get(name).patch_keyword
    kwargs = {keyword: list(patch)} if keyword else {}
    return lambda: create(name, in_channels, num_classes, spatial_dims=len(patch), **kwargs)


def architecture_costs(in_channels: int, num_classes: int, patch: Sequence[int], batch_size: int = 2,
                       names: Sequence[str] | None = None,
                       measure_on: torch.device | None = None) -> list[ArchitectureCost]:
    """Costs of the named (default: all registered) architectures at one patch; an architecture that
    cannot take this patch (dimensionality, divisibility) is reported as skipped with the reason.

    Raises:
        ValueError: ``measure_on`` is not a CUDA device (memory is measured with CUDA's allocator;
            without it, it is estimated with fake tensors), or an unknown name.
    """
    from .registry import available, get

    if measure_on is not None and torch.device(measure_on).type != "cuda":
        raise ValueError(f"measuring training memory needs a CUDA GPU, not {measure_on}; without --measure it is "
                         f"estimated with fake tensors")

    rows = []
    for name in names or available():
        arch = get(name)
        if len(patch) not in arch.spatial_dims:
            rows.append(ArchitectureCost(name, None, f"{len(patch)}D patches not supported"))
            continue
        build = builder_for_patch(name, in_channels, num_classes, patch)
        try:
            cost = model_cost(name, build, [batch_size, in_channels, *patch], batch_size, measure_on)
        except InputSizeError as err:  # the network's own check of the input size
            rows.append(ArchitectureCost(name, None, str(err)))
            continue
        rows.append(ArchitectureCost(name, cost))
    return rows


def format_costs(rows: Sequence[ArchitectureCost], in_channels: int, num_classes: int, patch: Sequence[int],
                 batch_size: int) -> str:
    patch_text = "×".join(str(p) for p in patch)
    width = max([14] + [len(row.name) + 2 for row in rows])  # the twins' names (…_nossm) are longer
    lines = [f"in_channels {in_channels}, num_classes {num_classes}, patch {patch_text}; FLOPs per forward at "
             f"batch 1 (scan included); fp32 training-step memory at batch {batch_size}",
             f"{'architecture':<{width}}{'params':>14}{'GFLOPs':>10}{'scan GFLOPs':>13}{'act GiB':>9}"
             f"{'peak GiB':>10}  memory"]
    for row in rows:
        if row.cost is None:
            lines.append(f"{row.name:<{width}}  skipped: {row.skipped}")
            continue
        c = row.cost
        lines.append(f"{row.name:<{width}}{c.params:>14,}{c.forward_gflops:>10.1f}{c.scan_gflops:>13.2f}"
                     f"{c.train_activation_gib:>9.2f}{c.train_peak_gib:>10.2f}  {c.memory_source}")
    return "\n".join(lines)
