"""nnU-Net trainer subclasses that implement :mod:`medmamba.training.recipes`.

Every trainer here is a subclass of nnunetv2's ``nnUNetTrainer`` with the same constructor
signature (nnU-Net records ``__init__``'s arguments by name, so extra parameters would break it).
Construct them directly (docs/design.md, decision 1); never look them up by name. Per-run settings that
nnU-Net hard-codes in ``__init__`` (``num_epochs``, ``num_iterations_per_epoch``,
``num_val_iterations_per_epoch``) are set on the instance after construction and before
``initialize()`` (the LR schedule is built from ``num_epochs`` in ``initialize``).

What the base class is changed for, and why:

- the recipe: optimiser, LR schedule, loss, deep supervision, AMP and gradient clipping;
- networks without deep supervision (their registry record says so: SegMamba, LightM-UNet, MHS-VM):
  ``enable_deep_supervision`` is forced off and ``set_deep_supervision_enabled`` does nothing for
  them (they have no ``decoder.deep_supervision``);
- DDP off CUDA: nnU-Net's ``__init__`` moves every DDP rank to ``cuda:rank`` and wraps the network
  in ``DDP(device_ids=[rank])``; here a CPU (gloo) run stays on the CPU and DDP gets no device ids;
- checkpoints are written to a temporary name and renamed (:mod:`medmamba.files`), every epoch, and hold
  the random generators' state, restored on resume (single process) so that an interrupted seeded
  CPU run continues bit for bit as if it had not been interrupted;
- torch.compile only when ``nnUNet_compile`` is explicitly true (medmamba's scan kernels are not
  verified under compile), never on CPU;
- one progress bar (tqdm) per training with the loss and each finished epoch's pseudo-Dice, and
  epoch-end callbacks.
"""

from __future__ import annotations

import copy
import glob
import math
import os
import random
import sys
import time
from collections.abc import Callable

import numpy as np
import torch
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss, get_tp_fp_fn_tn
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.helpers import dummy_context
from nnunetv2.utilities.label_handling.label_handling import (
    determine_num_input_channels,
)
from nnunetv2.utilities.plans_handling.plans_handler import (
    ConfigurationManager,
    PlansManager,
)
from torch import autocast, nn
from torch import distributed as dist
from torch._dynamo import OptimizedModule
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from medmamba.data.labels import short_region_name
from medmamba.files import atomic_output_file
from medmamba.models import registry

from .recipes import RECIPES, Recipe, get_recipe

__all__ = [
    "TRAINERS",
    "EpochCosineLRScheduler",
    "MedMambaTrainer",
    "labels_from_regions",
    "network_supports_deep_supervision",
    "nnUNetTrainerMedMamba",
    "nnUNetTrainerMedMambaAdamW",
    "nnUNetTrainerMedMambaLightMUNetAdam",
    "nnUNetTrainerMedMambaMHSVMAdamW",
    "nnUNetTrainerMedMambaSegMambaCE",
    "nnUNetTrainerMedMambaUMambaNoAMP",
    "restore_rng_state",
    "rng_state",
    "trainer_class",
]

def network_supports_deep_supervision(plans: dict, network_class_name: str) -> bool:
    """Whether the plans' network (class as a dotted path) has nnU-Net deep supervision, as its
    architecture's registry record says; a network the registry does not build is one of nnU-Net's
    own, which all have it."""
    names = registry.architectures_of_network(network_class_name, plans)
    return all(registry.get(name).deep_supervision for name in names)


def labels_from_regions(dataset_json: dict) -> dict:
    """A label-based copy of a region-based ``dataset.json`` (unchanged if it has no regions).

    The preprocessed segmentations store integer labels; regions only appear in augmentation, so the
    same preprocessed data trains label-based with these labels. Labels are named ``label_<value>``;
    the original regions are kept under ``medmamba_regions`` for evaluation.
    """
    labels = dataset_json["labels"]
    has_regions = "regions_class_order" in dataset_json or any(
        isinstance(v, (list, tuple)) and len(v) > 1 for v in labels.values())
    if not has_regions:
        return dataset_json
    ignore = labels.get("ignore")
    values = sorted({int(x) for k, v in labels.items() if k != "ignore"
                     for x in (v if isinstance(v, (list, tuple)) else [v]) if int(x) != 0})
    out = copy.deepcopy(dataset_json)
    out["labels"] = {"background": 0, **{f"label_{v}": v for v in values}}
    if ignore is not None:
        out["labels"]["ignore"] = ignore
    out.pop("regions_class_order", None)
    out["medmamba_regions"] = {k: v for k, v in labels.items() if k not in ("background", "ignore")}
    return out


def rng_state(world_size: int = 1) -> dict:
    """The state of every random generator a training run draws from: Python's ``random``, NumPy's
    global generator (nnU-Net's patch sampling and batchgeneratorsv2's augmentation), torch's CPU
    generator (weights, dropout/drop-path, augmentation) and, when CUDA is available, every CUDA
    device's generator. ``world_size`` records how many ranks the run had (the state is this
    process's only)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
             "world_size": int(world_size)}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    """Put back what :func:`rng_state` saved. Tensors may come back from ``torch.load`` on another
    device; torch wants CPU byte tensors. CUDA states are restored only for the same device count."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


class EpochCosineLRScheduler(torch.optim.lr_scheduler._LRScheduler):
    """``CosineAnnealingLR`` in closed form, stepped with the epoch like nnU-Net's PolyLR.

    Stateless in the epoch (``step(epoch)``), so a resumed run continues the same curve.
    """

    def __init__(self, optimizer, initial_lr: float, t_max: int, eta_min: float = 0.0):
        self.initial_lr, self.t_max, self.eta_min, self.ctr = initial_lr, max(1, int(t_max)), eta_min, 0
        super().__init__(optimizer, -1)

    def step(self, current_step=None):
        if current_step is None or current_step == -1:
            current_step = self.ctr
            self.ctr += 1
        lr = self.eta_min + (self.initial_lr - self.eta_min) * (1 + math.cos(math.pi * current_step / self.t_max)) / 2
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    def get_last_lr(self):
        return self._last_lr


class MedMambaTrainer(nnUNetTrainer):
    """nnU-Net trainer driven by :attr:`recipe` (a class attribute; subclasses pick the recipe).

    Attributes set after construction (before ``initialize``/``run_training``): ``num_epochs``,
    ``num_iterations_per_epoch``, ``num_val_iterations_per_epoch``, ``show_progress``,
    ``epoch_end_callbacks`` (callables ``(trainer, epoch)`` run after each epoch's checkpoint),
    ``echo_log``, ``time_budget_seconds`` (see :meth:`fit_epochs_to_budget`).
    """

    recipe: Recipe = RECIPES["nnunet_default"]
    #: Whether nnU-Net's log lines also reach the console (``--verbose``); they always go to the log
    #: file. The console has the progress bar and medmamba's summary instead (medmamba.console).
    echo_log: bool = False

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        requested_device = torch.device(device)
        if self.recipe.loss == "ce":
            dataset_json = labels_from_regions(dataset_json)
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.is_ddp and requested_device.type != "cuda":
            # nnU-Net assumes CUDA under DDP; a gloo run stays where it was asked to run.
            self.device = requested_device
        if self.device.type != "cuda" or not self.recipe.amp:
            self.grad_scaler = None
        self.enable_deep_supervision = bool(self.recipe.deep_supervision) and network_supports_deep_supervision(
            self.plans_manager.plans, self.configuration_manager.network_arch_class_name)
        self.initial_lr = self.recipe.lr
        self.weight_decay = self.recipe.weight_decay
        self.save_every = 1  # checkpoint_latest every epoch, so --continue loses at most one epoch
        self.show_progress = True
        self.epoch_end_callbacks: list[Callable[[MedMambaTrainer, int], None]] = []
        self._rng_state_to_restore: dict | None = None  # set by load_checkpoint, used by on_train_start
        self._scheduled_lrs: list[float] | None = None  # this epoch's rates before warm-up (on_train_epoch_start)
        self._iteration_in_epoch = 0
        self.time_budget_seconds: float | None = None
        self._seconds_before = 0.0  # training-loop time of the runs this one resumes (from the checkpoint)
        self._loop_start: tuple[float, int] | None = None  # (perf_counter, epoch) when this run's loop began
        self.print_to_log_file(f"medmamba recipe: {self.recipe.name}: {self.recipe.summary}; deep supervision "
                               f"{'on' if self.enable_deep_supervision else 'off'}; device {self.device}"
                               f"{'; DDP world size %d' % dist.get_world_size() if self.is_ddp else ''}",
                               also_print_to_console=False)

    def print_to_log_file(self, *args, also_print_to_console: bool = True, add_timestamp: bool = True):
        super().print_to_log_file(*args, also_print_to_console=also_print_to_console and self.echo_log,
                                  add_timestamp=add_timestamp)

    # ---------------------------------------------------------------- network and optimisation
    @staticmethod
    def build_network_architecture(plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        ds = enable_deep_supervision and network_supports_deep_supervision(
            plans_manager.plans, configuration_manager.network_arch_class_name)
        return get_network_from_plans(configuration_manager.network_arch_class_name,
                                      configuration_manager.network_arch_init_kwargs,
                                      configuration_manager.network_arch_init_kwargs_req_import,
                                      num_input_channels, num_output_channels, allow_init=True, deep_supervision=ds)

    def initialize(self):
        # nnU-Net's initialize, except DDP without device_ids off CUDA and SyncBatchNorm only on CUDA
        # (SyncBatchNorm has no CPU kernel).
        if self.was_initialized:
            raise RuntimeError("initialize() called twice")
        self._set_batch_size_and_oversample()
        self.num_input_channels = determine_num_input_channels(self.plans_manager, self.configuration_manager,
                                                               self.dataset_json)
        self.network = self.build_network_architecture(
            self.plans_manager, self.configuration_manager, self.num_input_channels,
            self.label_manager.num_segmentation_heads, self.enable_deep_supervision).to(self.device)
        if self._do_i_compile():
            self.print_to_log_file('Using torch.compile...')
            self.network = torch.compile(self.network)
        self.optimizer, self.lr_scheduler = self.configure_optimizers()
        if self.is_ddp:
            if self.device.type == "cuda":
                self.network = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.network)
                self.network = DDP(self.network, device_ids=[self.device.index])
            else:
                self.network = DDP(self.network)
        self.loss = self._build_loss()
        self.dataset_class = infer_dataset_class(self.preprocessed_dataset_folder)
        self.was_initialized = True
        self.logger.update_config({"hparas": {
            "recipe": self.recipe.name, "initial_lr": self.initial_lr, "weight_decay": self.weight_decay,
            "oversample_foreground_percent": self.oversample_foreground_percent,
            "num_iterations_per_epoch": self.num_iterations_per_epoch,
            "num_val_iterations_per_epoch": self.num_val_iterations_per_epoch, "num_epochs": self.num_epochs,
            "enable_deep_supervision": self.enable_deep_supervision,
            "batch_size": self.configuration_manager.batch_size}})

    def _do_i_compile(self):
        if self.device.type != "cuda" or os.name == "nt":
            return False
        return os.environ.get("nnUNet_compile", "").lower() in ("true", "1", "t")

    def configure_optimizers(self):
        r, params = self.recipe, self.network.parameters()
        if r.optimizer == "sgd":
            optimizer = torch.optim.SGD(params, r.lr, weight_decay=r.weight_decay, momentum=r.momentum,
                                        nesterov=r.nesterov)
        elif r.optimizer == "adam":
            optimizer = torch.optim.Adam(params, r.lr, weight_decay=r.weight_decay, eps=r.eps, amsgrad=r.amsgrad)
        else:
            # fused: one kernel for every parameter (the same update); on the CPU PyTorch otherwise
            # loops over the parameters, which costs a 67M-parameter SegMamba 13% of its step time.
            optimizer = torch.optim.AdamW(params, r.lr, weight_decay=r.weight_decay, eps=r.eps, amsgrad=r.amsgrad,
                                          fused=self.device.type in ("cpu", "cuda"))
        if r.lr_schedule == "poly":
            scheduler = PolyLRScheduler(optimizer, r.lr, self.num_epochs, exponent=r.poly_exponent)
        else:
            scheduler = EpochCosineLRScheduler(optimizer, r.lr, r.cosine_t_max, r.cosine_eta_min)
        return optimizer, scheduler

    def _build_loss(self):
        if self.recipe.loss != "ce":
            return super()._build_loss()
        if self.label_manager.has_regions:
            raise RuntimeError("the 'ce' loss needs label-based training; the dataset.json still has regions")
        # Cross-entropy only: nnU-Net's Dice+CE with the Dice weight 0 (it then skips the Dice term)
        # keeps nnU-Net's target handling and ignore label.
        loss = DC_and_CE_loss({'batch_dice': self.configuration_manager.batch_dice, 'smooth': 1e-5, 'do_bg': False,
                               'ddp': self.is_ddp}, {}, weight_ce=1, weight_dice=0,
                              ignore_label=self.label_manager.ignore_label, dice_class=MemoryEfficientSoftDiceLoss)
        if self.enable_deep_supervision:
            weights = np.array([1 / (2 ** i) for i in range(len(self._get_deep_supervision_scales()))])
            weights[-1] = 1e-6 if self.is_ddp and not self._do_i_compile() else 0
            loss = DeepSupervisionWrapper(loss, weights / weights.sum())
        return loss

    def set_deep_supervision_enabled(self, enabled: bool):
        mod = self.network.module if self.is_ddp else self.network
        if isinstance(mod, OptimizedModule):
            mod = mod._orig_mod
        decoder = getattr(mod, "decoder", None)
        if decoder is None or not hasattr(decoder, "deep_supervision"):
            return  # a single-output network: nothing to switch
        # A network built without deep supervision (recipe) must not start emitting lists.
        decoder.deep_supervision = bool(enabled) and self.enable_deep_supervision

    # ---------------------------------------------------------------- steps
    def _autocast(self):
        if self.device.type == "cuda" and self.recipe.amp:
            return autocast(self.device.type, enabled=True)
        return dummy_context()

    def _clip(self):
        if self.recipe.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.recipe.grad_clip)

    def on_train_epoch_start(self):
        super().on_train_epoch_start()  # the schedule sets this epoch's rates
        self._scheduled_lrs = [group["lr"] for group in self.optimizer.param_groups]
        self._iteration_in_epoch = 0

    def _warm_up(self) -> None:
        """Scale the epoch's scheduled rates for the recipe's linear warm-up (per iteration, counted
        from the epoch so that a resumed run continues the same curve)."""
        if self.recipe.warmup_fraction:
            if self._scheduled_lrs is None:  # a step outside run_training's epochs
                self._scheduled_lrs = [group["lr"] for group in self.optimizer.param_groups]
            total = self.num_epochs * self.num_iterations_per_epoch
            warmup = max(1, round(total * self.recipe.warmup_fraction))
            step = self.current_epoch * self.num_iterations_per_epoch + self._iteration_in_epoch
            scale = min(1.0, (step + 1) / warmup)
            for group, lr in zip(self.optimizer.param_groups, self._scheduled_lrs):
                group["lr"] = lr * scale
        self._iteration_in_epoch += 1

    def train_step(self, batch: dict) -> dict:
        self._warm_up()
        data = batch['data'].to(self.device, non_blocking=True)
        target = batch['target']
        target = [t.to(self.device, non_blocking=True) for t in target] if isinstance(target, list) \
            else target.to(self.device, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            output = self.network(data)
            loss = self.loss(output, target)
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.unscale_(self.optimizer)
            self._clip()
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            loss.backward()
            self._clip()
            self.optimizer.step()
        return {'loss': loss.detach().cpu().numpy()}

    def validation_step(self, batch: dict) -> dict:
        # nnU-Net 2.8.1's validation_step with the recipe's autocast (no autocast for no-AMP recipes).
        data = batch['data'].to(self.device, non_blocking=True)
        target = batch['target']
        target = [t.to(self.device, non_blocking=True) for t in target] if isinstance(target, list) \
            else target.to(self.device, non_blocking=True)
        with self._autocast():
            output = self.network(data)
            del data
            loss = self.loss(output, target)
        if self.enable_deep_supervision:
            output, target = output[0], target[0]
        axes = [0] + list(range(2, output.ndim))
        if self.label_manager.has_regions:
            onehot = (torch.sigmoid(output) > 0.5).long()
        else:
            output_seg = output.argmax(1)[:, None]
            onehot = torch.zeros(output.shape, device=output.device, dtype=torch.float16)
            onehot.scatter_(1, output_seg, 1)
        mask = None
        if self.label_manager.has_ignore_label:
            if not self.label_manager.has_regions:
                mask = (target != self.label_manager.ignore_label).float()
                target[target == self.label_manager.ignore_label] = 0
            else:
                mask = ~target[:, -1:] if target.dtype == torch.bool else 1 - target[:, -1:]
                target = target[:, :-1]
        tp, fp, fn, _ = get_tp_fp_fn_tn(onehot, target, axes=axes, mask=mask)
        tp, fp, fn = (x.detach().cpu().numpy() for x in (tp, fp, fn))
        if not self.label_manager.has_regions:
            tp, fp, fn = tp[1:], fp[1:], fn[1:]
        return {'loss': loss.detach().cpu().numpy(), 'tp_hard': tp, 'fp_hard': fp, 'fn_hard': fn}

    # ---------------------------------------------------------------- checkpoints, logs, loop
    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net 2.8.1's checkpoint plus ``rng_state`` (:func:`rng_state`) and ``training_seconds`` (the
        training loop's time so far, for the time budget), written atomically.

        The dictionary is built here rather than by ``super()`` because nnU-Net builds and saves it
        in one call, leaving no place to add a key. It is written under a temporary name in the same
        folder and renamed, so a kill mid-write never leaves a truncated checkpoint under the real name.
        """
        if self.local_rank != 0:
            return
        if self.disable_checkpointing:
            self.print_to_log_file('No checkpoint written, checkpointing is disabled')
            return
        mod = self.network.module if self.is_ddp else self.network
        if isinstance(mod, OptimizedModule):
            mod = mod._orig_mod
        checkpoint = {
            'network_weights': mod.state_dict(),
            'optimizer_state': self.optimizer.state_dict(),
            'grad_scaler_state': self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
            'logging': self.logger.get_checkpoint(),
            '_best_ema': self._best_ema,
            'current_epoch': self.current_epoch + 1,
            'init_args': self.my_init_kwargs,
            'trainer_name': self.__class__.__name__,
            'inference_allowed_mirroring_axes': self.inference_allowed_mirroring_axes,
            'rng_state': rng_state(world_size=dist.get_world_size() if self.is_ddp else 1),
            'training_seconds': self.training_seconds(),
        }
        with atomic_output_file(filename) as tmp:
            torch.save(checkpoint, tmp)

    def load_checkpoint(self, filename_or_checkpoint: dict | str) -> None:
        """nnU-Net 2.8.1's ``load_checkpoint`` (which fails for a dict argument), plus the RNG state.

        The RNG state is not restored here but kept for :meth:`on_train_start`: nnU-Net's
        ``get_dataloaders`` draws one warm-up batch from each loader, which an uninterrupted run did
        once at its start, so the state must be put back after the loaders exist. Only a
        single-process run restores it: a DDP checkpoint holds rank 0's state alone, and the other
        ranks' generators live in other processes (each rank keeps its ``seed + rank`` seeding).
        """
        if not self.was_initialized:
            self.initialize()
        checkpoint = filename_or_checkpoint
        if isinstance(checkpoint, (str, os.PathLike)):
            checkpoint = torch.load(checkpoint, map_location=self.device, weights_only=False)
        network = self.network.module if self.is_ddp else self.network
        if isinstance(network, OptimizedModule):
            network = network._orig_mod
        own_keys = network.state_dict().keys()
        # checkpoints of DDP-wrapped networks written by other tools prefix keys with 'module.'
        weights = {k[7:] if k not in own_keys and k.startswith('module.') else k: v
                   for k, v in checkpoint['network_weights'].items()}
        self.my_init_kwargs = checkpoint['init_args']
        self.current_epoch = checkpoint['current_epoch']
        self.logger.load_checkpoint(checkpoint['logging'])
        self._best_ema = checkpoint['_best_ema']
        self.inference_allowed_mirroring_axes = checkpoint.get('inference_allowed_mirroring_axes',
                                                               self.inference_allowed_mirroring_axes)
        network.load_state_dict(weights)
        self.optimizer.load_state_dict(checkpoint['optimizer_state'])
        if self.grad_scaler is not None and checkpoint['grad_scaler_state'] is not None:
            self.grad_scaler.load_state_dict(checkpoint['grad_scaler_state'])
        self._seconds_before = float(checkpoint.get('training_seconds', 0.0))
        saved = checkpoint.get('rng_state')
        self._rng_state_to_restore = None
        if saved is None:
            self.print_to_log_file("checkpoint has no RNG state (older medmamba): sampling and augmentation "
                                   "continue from the run's seeding, not from where the checkpoint left off")
        elif self.is_ddp or saved.get("world_size", 1) != 1:
            self.print_to_log_file(f"RNG state not restored: saved by a run with {saved.get('world_size', 1)} "
                                   f"process(es), resumed with {dist.get_world_size() if self.is_ddp else 1}; "
                                   f"each rank keeps its seed + rank seeding")
        else:
            self._rng_state_to_restore = saved

    def on_train_start(self):
        super().on_train_start()  # builds the data loaders, which draw one warm-up batch each
        if self._rng_state_to_restore is not None:
            restore_rng_state(self._rng_state_to_restore)
            self._rng_state_to_restore = None
            self.print_to_log_file("RNG state restored from the checkpoint")

    def adopt_previous_log_file(self) -> str | None:
        """Continue writing the most recent earlier ``training_log_*.txt`` of this output folder.

        nnU-Net starts a new timestamped log per construction; on resume one log showing the whole
        run is easier to read. The new log (banner only) is removed. Returns the adopted path.
        """
        logs = sorted(p for p in glob.glob(os.path.join(self.output_folder, "training_log_*.txt"))
                      if os.path.abspath(p) != os.path.abspath(self.log_file))
        if not logs or self.local_rank != 0:
            return None
        if os.path.isfile(self.log_file):
            os.remove(self.log_file)
        self.log_file = logs[-1]
        return self.log_file

    def _shutdown_dataloaders(self):
        for dl in (self.dataloader_train, self.dataloader_val):
            if dl is not None and hasattr(dl, "_finish"):
                try:
                    dl._finish()
                except Exception:  # noqa: BLE001 - best effort cleanup on the error path
                    pass

    def training_seconds(self) -> float:
        """Wall time of the training loop so far, the runs this one resumes included (every epoch's
        steps, validation batches, plots and checkpoints)."""
        if self._loop_start is None:
            return self._seconds_before
        return self._seconds_before + time.perf_counter() - self._loop_start[0]

    def fit_epochs_to_budget(self) -> None:
        """Hold the training to ``time_budget_seconds``: set ``num_epochs`` to the epochs done plus
        those the time left allows at this run's mean epoch time (a resumed run, before its first
        epoch: the earlier runs'), and stretch or shrink the poly schedule with it. Called after
        every epoch and on resume; a run whose epochs take longer than the plan measured ends
        early rather than overrunning the budget. Does nothing without a budget, before the first
        epoch, and under DDP (whose ranks would have to agree on the count)."""
        if not self.time_budget_seconds or self.current_epoch == 0 or self.is_ddp:
            return
        used = self.training_seconds()
        done_here = self.current_epoch - self._loop_start[1] if self._loop_start else 0
        per_epoch = (used - self._seconds_before) / done_here if done_here else used / self.current_epoch
        left = self.time_budget_seconds - used
        epochs = self.current_epoch + max(0, int(left // max(per_epoch, 1e-6)))
        if epochs != self.num_epochs:
            self.print_to_log_file(f"time budget {self.time_budget_seconds / 60:g} min: {used:.0f} s used in "
                                   f"{self.current_epoch} epochs, {max(left, 0):.0f} s left; epochs "
                                   f"{self.num_epochs} → {epochs}")
            self.num_epochs = epochs
            if isinstance(self.lr_scheduler, PolyLRScheduler):
                self.lr_scheduler.max_steps = max(epochs, 1)

    def run_training(self):
        if self.num_val_iterations_per_epoch < 1:
            raise ValueError("num_val_iterations_per_epoch must be ≥ 1 (pseudo-Dice needs one batch)")
        bar = None
        try:
            self.on_train_start()
            # One bar for the whole training (one console line per architecture); its text is the
            # current loss and the last finished epoch's summary.
            bar = tqdm(total=self.num_epochs * self.num_iterations_per_epoch,
                       initial=self.current_epoch * self.num_iterations_per_epoch,
                       disable=not self.show_progress or self.local_rank != 0, file=sys.stderr,
                       dynamic_ncols=True, leave=True)
            finished = ""
            self._loop_start = (time.perf_counter(), self.current_epoch)
            while self.current_epoch < self.num_epochs:
                epoch = self.current_epoch
                self.on_epoch_start()
                self.on_train_epoch_start()
                bar.set_description(f"epoch {epoch + 1}/{self.num_epochs}")
                train_outputs = []
                for _ in range(self.num_iterations_per_epoch):
                    out = self.train_step(next(self.dataloader_train))
                    train_outputs.append(out)
                    bar.update(1)
                    bar.set_postfix_str(f"loss {float(np.mean(out['loss'])):.4f}{finished}")
                self.on_train_epoch_end(train_outputs)
                with torch.no_grad():
                    self.on_validation_epoch_start()
                    val_outputs = [self.validation_step(next(self.dataloader_val))
                                   for _ in range(self.num_val_iterations_per_epoch)]
                    self.on_validation_epoch_end(val_outputs)
                summary = self._epoch_summary()
                finished = f" · epoch {epoch + 1}: {summary}"
                bar.set_postfix_str(summary)
                self.on_epoch_end()
                for callback in self.epoch_end_callbacks:
                    callback(self, epoch)
                self.fit_epochs_to_budget()
                bar.total = self.num_epochs * self.num_iterations_per_epoch
            bar.close()
            self.on_train_end()
        except BaseException:
            if bar is not None:
                bar.close()
            self._shutdown_dataloaders()
            raise

    def _epoch_summary(self) -> str:
        """The finished epoch for the progress bar: training loss and nnU-Net's pseudo-Dice per region,
        labelled as what it is, a Dice over foreground-oversampled patches (not whole volumes)."""
        names = [short_region_name(n) for n in self.dataset_json["labels"] if n not in ("background", "ignore")]
        dice = self.logger.get_value("dice_per_class_or_region", step=-1)
        per_region = " ".join(f"{n} {float(d):.2f}" for n, d in zip(names, dice))
        return f"loss {float(self.logger.get_value('train_losses', step=-1)):.4f}, patch pseudo-Dice {per_region}"


class nnUNetTrainerMedMamba(MedMambaTrainer):
    """The shared default (``nnunet_default``): nnU-Net's recipe for every architecture."""
    recipe = RECIPES["nnunet_default"]


class nnUNetTrainerMedMambaAdamW(MedMambaTrainer):
    """The shared recipe for short runs (``nnunet_adamw``): nnU-Net's AdamW variant."""
    recipe = RECIPES["nnunet_adamw"]


class nnUNetTrainerMedMambaLightMUNetAdam(MedMambaTrainer):
    """LightM-UNet's recipe (``lightm_unet_adam``)."""
    recipe = RECIPES["lightm_unet_adam"]


class nnUNetTrainerMedMambaSegMambaCE(MedMambaTrainer):
    """SegMamba's recipe (``segmamba_ce``): CE only, label-based."""
    recipe = RECIPES["segmamba_ce"]


class nnUNetTrainerMedMambaUMambaNoAMP(MedMambaTrainer):
    """U-Mamba's NoAMP trainer (``umamba_noamp``)."""
    recipe = RECIPES["umamba_noamp"]


class nnUNetTrainerMedMambaMHSVMAdamW(MedMambaTrainer):
    """MHS-VM's host recipe (``mhs_vm_adamw``)."""
    recipe = RECIPES["mhs_vm_adamw"]


#: recipe name → trainer class (the class name becomes part of nnU-Net's output folder name).
TRAINERS: dict[str, type[MedMambaTrainer]] = {
    cls.recipe.name: cls for cls in (nnUNetTrainerMedMamba, nnUNetTrainerMedMambaAdamW,
                                     nnUNetTrainerMedMambaLightMUNetAdam,
                                     nnUNetTrainerMedMambaSegMambaCE, nnUNetTrainerMedMambaUMambaNoAMP,
                                     nnUNetTrainerMedMambaMHSVMAdamW)}


def trainer_class(recipe: Recipe | str) -> type[MedMambaTrainer]:
    """The trainer class for a recipe (a new subclass for a recipe not in :data:`TRAINERS`)."""
    if isinstance(recipe, str):
        recipe = get_recipe(recipe)
    known = TRAINERS.get(recipe.name)
    if known is not None and known.recipe == recipe:
        return known
    safe = "".join(c if c.isalnum() else "_" for c in recipe.name)
    return type(f"nnUNetTrainerMedMamba_{safe}", (MedMambaTrainer,), {"recipe": recipe, "__module__": __name__})
