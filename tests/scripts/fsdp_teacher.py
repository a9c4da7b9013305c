"""Shard a tiny teacher with `prepare_teacher` under an FSDP2 plugin on CPU (gloo; accelerate itself allows FSDP
on GPUs only, so the accelerator is a stand-in with the plugin and the device). Writes OUT/rank{i}.json.

Run under `python -m torch.distributed.run --nproc_per_node 2 fsdp_teacher.py OUT`.
"""

import copy
import json
import os
import sys
from types import SimpleNamespace

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from accelerate.utils import FullyShardedDataParallelPlugin  # noqa: E402
from conftest import tiny_llama  # noqa: E402
from torch.distributed.fsdp import FSDPModule  # noqa: E402
from torch.distributed.tensor import DTensor  # noqa: E402

from hf_distill.parallel import prepare_teacher  # noqa: E402


def main(out: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    teacher = tiny_llama(hidden=32, layers=2, seed=0)
    teacher.train()  # prepare_teacher must put it in evaluation mode
    ids = torch.arange(48).reshape(4, 12) % 90
    with torch.no_grad():
        reference = teacher.eval()(input_ids=ids).logits
    teacher.train()
    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, reshard_after_forward=True)
    accelerator = SimpleNamespace(
        state=SimpleNamespace(fsdp_plugin=plugin, deepspeed_plugin=None), device=torch.device("cpu")
    )
    sharded = prepare_teacher(copy.deepcopy(teacher), accelerator)
    with torch.no_grad():
        logits = sharded(input_ids=ids).logits
    params = list(sharded.parameters())
    result = {
        "max_abs_diff": float((logits - reference).abs().max()),
        "all_dtensor": all(isinstance(p, DTensor) for p in params),
        "local_numel": sum(p.to_local().numel() for p in params),
        "full_numel": sum(p.numel() for p in teacher.parameters()),
        "layers_sharded": [isinstance(layer, FSDPModule) for layer in sharded.model.layers],
        "root_sharded": isinstance(sharded, FSDPModule),
        "training": sharded.training or any(m.training for m in sharded.modules()),
    }
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
