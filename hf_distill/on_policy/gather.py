"""A DeepSpeed ZeRO-3 model gathered whole for generation, as TRL's `unwrap_model_for_generation` does."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..parallel import uses_zero3


def _parameter_offload(engine: Any) -> Any:
    """The object that holds a ZeRO-3 engine's forward hooks (`None` before the engine has its optimizer)."""
    optimizer = getattr(engine, "optimizer", None)
    return getattr(optimizer, "parameter_offload", optimizer)


@contextmanager
def gathered_for_generation(engine: Any, accelerator: Any) -> Iterator[bool]:
    """
    Under DeepSpeed ZeRO-3, gather all the parameters of `engine` (a training engine, or the teacher's inference
    engine) on every process for the duration, with ZeRO's forward hooks removed, so that generation's many forward
    passes run locally: no gather per layer and token, and no need for the processes to run in step. The hooks are
    registered again afterwards (the parameter coordinator's trace invalidated first, as TRL does). Yields whether
    it gathered; under any other backend it does nothing and yields `False`.

    Gathering needs the whole model to fit on one device.
    """
    offload = _parameter_offload(engine) if uses_zero3(accelerator) else None
    if offload is None or not hasattr(offload, "forward_hooks"):
        yield False
        return
    import deepspeed
    from deepspeed.runtime.zero.partitioned_param_coordinator import iter_params

    module = offload.module
    with deepspeed.zero.GatheredParameters(list(module.parameters())):
        for param in iter_params(module, recurse=True):  # external parameters included
            param.ds_active_sub_modules.clear()
        for hook in (*offload.forward_hooks, *offload.backward_hooks):
            hook.remove()
        offload.forward_hooks, offload.backward_hooks = [], []
        try:
            yield True
        finally:
            coordinator = offload.get_param_coordinator() if hasattr(offload, "get_param_coordinator") else None
            if coordinator is not None and not coordinator.is_invalid_trace():
                coordinator._invalidate_trace()
            offload._register_deepspeed_module(offload.module)
