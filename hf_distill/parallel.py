"""Placing the frozen teacher under each accelerate backend: replicated for DDP / single device / ZeRO-1/2, sharded
like the student under DeepSpeed ZeRO-3 (an inference engine) and FSDP (1 and 2), always in evaluation mode."""

from __future__ import annotations

import copy
import os
from typing import Any

import torch
from torch import nn


def cpu_processes_launched() -> int:
    """The number of processes launched (`WORLD_SIZE`) when there are several and this machine has no accelerator,
    else 0: such a launch (e.g. `accelerate launch --multi_gpu` or torchrun on a CPU machine) must train on CPU over
    gloo, which transformers only does with `use_cpu`; without it each process trains alone."""
    world_size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    accelerator = getattr(torch, "accelerator", None)
    available = accelerator.is_available() if accelerator is not None else torch.cuda.is_available()
    return world_size if world_size > 1 and not available else 0


def uses_zero3(accelerator: Any) -> bool:
    """Whether the accelerator runs DeepSpeed ZeRO stage 3 (parameters partitioned across processes)."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return plugin is not None and plugin.deepspeed_config.get("zero_optimization", {}).get("stage") == 3


def shards_parameters(accelerator: Any) -> bool:
    """Whether the backend shards model parameters across processes (DeepSpeed ZeRO-3 or FSDP)."""
    return uses_zero3(accelerator) or getattr(accelerator.state, "fsdp_plugin", None) is not None


def check_engine_saves(accelerator: Any) -> None:
    """
    Refuse a DeepSpeed ZeRO-3 run that could not save a loadable student: without
    `stage3_gather_16bit_weights_on_model_save` the Trainer's `save_model` writes no weights of a partitioned model.

    Raises:
        `ValueError`: naming the setting and how to turn it on.
    """
    if not uses_zero3(accelerator):
        return
    zero = accelerator.state.deepspeed_plugin.deepspeed_config.get("zero_optimization", {})
    gather = zero.get("stage3_gather_16bit_weights_on_model_save", False)
    if gather is not True:
        raise ValueError(
            f"DeepSpeed ZeRO-3 with stage3_gather_16bit_weights_on_model_save={gather!r}: the student's parameters "
            "stay partitioned and save_model would write no loadable student. Set it to true: "
            "`zero3_save_16bit_model: true` in the accelerate config (as recipes/accelerate_configs/zero3.yaml), or "
            "in a DeepSpeed JSON under zero_optimization."
        )


def _layer_classes(model: nn.Module) -> set[type]:
    names = set(getattr(model, "_no_split_modules", None) or [])
    return {type(m) for m in model.modules() if type(m).__name__ in names}


def _zero3_teacher(teacher: nn.Module, accelerator: Any) -> nn.Module:
    import deepspeed

    config = copy.deepcopy(accelerator.state.deepspeed_plugin.deepspeed_config)
    # inference only: no optimizer, scheduler or optimizer offload (as transformers' inference deepspeed_init)
    for key in ("optimizer", "scheduler"):
        config.pop(key, None)
    config["zero_optimization"].pop("offload_optimizer", None)
    hidden = getattr(getattr(teacher, "config", None), "hidden_size", None)
    if isinstance(hidden, int):
        config["zero_optimization"].update(
            {
                "reduce_bucket_size": hidden * hidden,
                "stage3_param_persistence_threshold": 10 * hidden,
                "stage3_prefetch_bucket_size": int(0.9 * hidden * hidden),
            }
        )
    engine, *_ = deepspeed.initialize(model=teacher, config=config)
    engine.eval()
    return engine


def _fsdp_teacher(teacher: nn.Module, accelerator: Any) -> nn.Module:
    plugin = accelerator.state.fsdp_plugin
    if plugin.fsdp_version == 2:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        kwargs = {
            "reshard_after_forward": plugin.reshard_after_forward,
            "mp_policy": plugin.mixed_precision_policy or MixedPrecisionPolicy(),
        }
        if plugin.cpu_offload:
            kwargs["offload_policy"] = plugin.cpu_offload
        teacher.to(accelerator.device)
        classes = tuple(_layer_classes(teacher))
        for module in teacher.modules():  # one shard group per transformer block, then the rest
            if classes and isinstance(module, classes):
                fully_shard(module, **kwargs)
        fully_shard(teacher, **kwargs)
    else:
        from torch.distributed.fsdp import FullyShardedDataParallel

        plugin.set_auto_wrap_policy(teacher)
        teacher = FullyShardedDataParallel(
            teacher,
            sharding_strategy=plugin.sharding_strategy,
            cpu_offload=plugin.cpu_offload,
            auto_wrap_policy=plugin.auto_wrap_policy,
            mixed_precision=plugin.mixed_precision_policy,
            sync_module_states=plugin.sync_module_states,
            use_orig_params=plugin.use_orig_params,
            device_id=accelerator.device,
        )
    teacher.eval()
    return teacher


def prepare_teacher(teacher: nn.Module, accelerator: Any) -> nn.Module:
    """
    Put the frozen teacher on the accelerator's devices.

    - DeepSpeed ZeRO-3: a DeepSpeed inference engine with the training config's stage-3 settings (parameters
      partitioned like the student's; no optimizer).
    - FSDP 2: `fully_shard` on every transformer block (`_no_split_modules`) and on the root; FSDP 1: wrapped with the
      plugin's auto-wrap policy. Each process holds a shard, not a copy.
    - Anything else (single device, DDP, ZeRO-1/2): `accelerator.prepare_model(evaluation_mode=True)`, one copy per
      process, no DDP wrapper.

    Returns:
        `nn.Module`: the teacher to call in `compute_loss`.
    """
    if uses_zero3(accelerator):
        return _zero3_teacher(teacher, accelerator)
    if getattr(accelerator.state, "fsdp_plugin", None) is not None:
        return _fsdp_teacher(teacher, accelerator)
    if getattr(accelerator.state, "deepspeed_plugin", None) is not None:  # ZeRO-1/2 keep full parameters
        return teacher.to(accelerator.device).eval()
    return accelerator.prepare_model(teacher, evaluation_mode=True)
