"""Two gloo processes on CPU: the update equals one process on the concatenated batch."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

SCRIPT = Path(__file__).parent / "scripts" / "ddp_step.py"


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
