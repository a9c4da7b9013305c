"""Two gloo processes on CPU: the update equals one process on the concatenated batch; DDK stays in sync."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_distill import DomainWeightedSampler

SCRIPT = Path(__file__).parent / "scripts" / "ddp_step.py"
DDK_SCRIPT = Path(__file__).parent / "scripts" / "ddk_ddp.py"


def _run(cmd, env):
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


@pytest.mark.slow
def test_two_processes_equal_one_process_with_double_batch(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    single.mkdir(), ddp.mkdir()
    _run([sys.executable, str(SCRIPT), str(single), "8"], env)
    # accelerate 1.15 runs `--cpu --num_processes 2` as ONE process without mpirun; --multi_gpu uses torchrun (gloo)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", "29517"]  # fmt: skip
    _run([*launch, str(SCRIPT), str(ddp), "4"], env)

    reference = load_file(str(single / "rank0.safetensors"))
    rank0, rank1 = load_file(str(ddp / "rank0.safetensors")), load_file(str(ddp / "rank1.safetensors"))
    assert set(reference) == set(rank0) and any(k.startswith("p.") for k in reference)
    for key, value in reference.items():
        torch.testing.assert_close(rank0[key], rank1[key], atol=0, rtol=0, msg=key)
        torch.testing.assert_close(rank0[key], value, atol=2e-5, rtol=1e-4, msg=key)


@pytest.mark.slow
def test_ddk_two_processes_share_weights_and_split_one_stream(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", "29518"]  # fmt: skip
    _run([*launch, str(DDK_SCRIPT), str(tmp_path)], env)
    rank0, rank1 = (json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1))
    assert rank0["world_size"] == rank1["world_size"] == 2
    # identical weights after every update (3 updates in 6 steps), on both processes
    assert len(rank0["updates"]) == 3 and rank0["updates"] == rank1["updates"]
    assert rank0["sampler"] == rank1["sampler"] and len(rank0["sampler"]["history"]) == 4
    assert rank0["teacher_losses"] == rank1["teacher_losses"]
    # each step: disjoint examples, and together exactly the next global batch of the one shared stream
    stream = DomainWeightedSampler(rank0["labels"], seed=0)
    stream.load_state_dict(rank0["sampler"])
    stream = list(stream)
    assert len(rank0["steps"]) == len(rank1["steps"]) == 6
    for step, (a, b) in enumerate(zip(rank0["steps"], rank1["steps"], strict=True)):
        assert not set(a) & set(b), step
        assert a + b == stream[8 * step : 8 * step + 8], step


@pytest.mark.slow
def test_fsdp2_teacher_is_sharded_per_block_in_eval_mode_and_computes_the_same_logits(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    script = Path(__file__).parent / "scripts" / "fsdp_teacher.py"
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29519",
          str(script), str(tmp_path)], env)  # fmt: skip
    ranks = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1)]
    for result in ranks:
        assert result["max_abs_diff"] < 1e-5  # same logits as the unsharded teacher
        assert result["all_dtensor"] and result["root_sharded"] and result["layers_sharded"] == [True, True]
        assert result["local_numel"] < 0.6 * result["full_numel"]  # a shard, not a copy
        assert not result["training"]
    assert sum(r["local_numel"] for r in ranks) == ranks[0]["full_numel"]
