"""Two gloo processes on CPU: the update equals one process on the concatenated batch; DDK stays in sync."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import RECIPE_ENV, launch_two
from safetensors.torch import load_file
from toy_domains import DOMAINS

from hf_distill import DomainMixture, DomainWeightedSampler

SCRIPT = Path(__file__).parent / "scripts" / "ddp_step.py"
DDK_SCRIPT = Path(__file__).parent / "scripts" / "ddk_ddp.py"
STREAM_SCRIPT = Path(__file__).parent / "scripts" / "stream_ddp.py"


def _run(cmd):
    proc = subprocess.run(cmd, capture_output=True, text=True, env=RECIPE_ENV, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


@pytest.mark.slow
def test_two_processes_equal_one_process_with_double_batch(tmp_path):
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    single.mkdir(), ddp.mkdir()
    _run([sys.executable, str(SCRIPT), str(single), "8"])
    launch_two(SCRIPT, ddp, 4, port=29517)

    reference = load_file(str(single / "rank0.safetensors"))
    rank0, rank1 = load_file(str(ddp / "rank0.safetensors")), load_file(str(ddp / "rank1.safetensors"))
    assert set(reference) == set(rank0) and any(k.startswith("p.") for k in reference)
    for key, value in reference.items():
        torch.testing.assert_close(rank0[key], rank1[key], atol=0, rtol=0, msg=key)
        torch.testing.assert_close(rank0[key], value, atol=2e-5, rtol=1e-4, msg=key)


@pytest.mark.slow
def test_ddk_two_processes_share_weights_and_split_one_stream(tmp_path):
    single = tmp_path / "single"
    single.mkdir()
    _run([sys.executable, str(DDK_SCRIPT), str(single)])
    launch_two(DDK_SCRIPT, tmp_path, port=29518)
    rank0, rank1 = (json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1))
    assert rank0["world_size"] == rank1["world_size"] == 2
    # the teacher's per-block losses gathered from both processes (4 blocks on one, 3 on the other) are those of one
    # process evaluating all 7, in the same order
    one = json.loads((single / "rank0.json").read_text())["teacher_blocks"]
    assert rank0["teacher_blocks"] == rank1["teacher_blocks"]
    for (sums, counts), (ref_sums, ref_counts) in zip(rank0["teacher_blocks"], one, strict=True):
        assert counts == ref_counts == [15] * 7 and sums == pytest.approx(ref_sums, rel=1e-5)
    # identical weights after every update (2 updates in 6 steps: none at the last), on both processes
    assert len(rank0["updates"]) == 2 and rank0["updates"] == rank1["updates"]
    assert rank0["sampler"] == rank1["sampler"] and len(rank0["sampler"]["history"]) == 3
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
    script = Path(__file__).parent / "scripts" / "fsdp_teacher.py"
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29519",
          str(script), str(tmp_path)])  # fmt: skip
    ranks = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1)]
    for result in ranks:
        assert result["max_abs_diff"] < 1e-5  # same logits as the unsharded teacher
        assert result["all_dtensor"] and result["root_sharded"] and result["layers_sharded"] == [True, True]
        assert result["local_numel"] < 0.6 * result["full_numel"]  # a shard, not a copy
        assert not result["training"]
    assert sum(r["local_numel"] for r in ranks) == ranks[0]["full_numel"]


@pytest.mark.slow
def test_ddk_on_a_stream_two_processes_share_the_draws_read_their_own_parts_and_resume_exactly(tmp_path):
    launch_two(STREAM_SCRIPT, tmp_path, port=29520)
    ranks = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1)]
    full = [r["full"] for r in ranks]
    assert full[0]["world_size"] == 2 and len(full[0]["updates"]) == 2
    assert full[0]["updates"] == full[1]["updates"] and full[0]["history"] == full[1]["history"]
    # the global stream: micro-batch k of rank 0, then of rank 1 (4 blocks each), follows the one weighted draw
    mixture = DomainMixture(DOMAINS, seed=0)
    for position, weights in full[0]["history"][1:]:
        mixture.set_weights(weights, position)
    merged = [block for k in range(6) for rank in (0, 1) for block in full[rank]["batches"][k]]
    assert [DOMAINS.index(domain) for domain, _ in merged] == mixture.draw_domains(0, 48)
    # each process reads its own shard of every domain (rows 0-19 on rank 0, 20-39 on rank 1)
    for rank in (0, 1):
        rows = {row for batch in full[rank]["batches"] for _, row in batch}
        assert rows and all(20 * rank <= row < 20 * rank + 20 for row in rows)
    # resumed from checkpoint-3 on both processes: the same weights, blocks and losses as the uninterrupted run
    for rank in (0, 1):
        resumed = ranks[rank]["resumed"]
        assert resumed["history"] == full[rank]["history"]
        assert resumed["batches"] == full[rank]["batches"][3:]
        after = [h for h in resumed["logs"] if h["step"] > 3]
        assert [h["step"] for h in after] == [4, 5, 6]
        for a, b in zip([h for h in full[rank]["logs"] if h["step"] > 3], after, strict=True):
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)


USER_SCRIPT = Path(__file__).parent / "scripts" / "user_script.py"


def test_a_users_own_script_on_two_cpu_processes_trains_as_one_job_without_use_cpu(tmp_path):
    """`accelerate launch --multi_gpu` of a plain script (no `use_cpu`) on a machine without an accelerator: one job
    of world size 2 (each process its own rows, the same synchronised student), said in one log line, and a clean
    exit (`DistillationTrainer.release`)."""
    proc = launch_two(USER_SCRIPT, tmp_path, port=29523)
    ranks = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1)]
    assert [(r["rank"], r["world_size"], r["use_cpu"]) for r in ranks] == [(0, 2, True), (1, 2, True)]
    seen = [set(r["rows"]) for r in ranks]  # 3 steps x 4 rows each (+ the batch the loader fetched ahead)
    assert min(map(len, seen)) >= 12 and not seen[0] & seen[1]
    students = [load_file(tmp_path / f"rank{i}.safetensors") for i in (0, 1)]
    assert students[0].keys() == students[1].keys()
    assert all(torch.equal(students[0][k], students[1][k]) for k in students[0])  # gradients were averaged
    said = [line for line in (proc.stdout + proc.stderr).splitlines() if "processes were launched" in line]
    assert said == ["DistillationConfig: 2 processes were launched and no accelerator is available, so they train as "
                    "one job on CPU (gloo), as with use_cpu=True. Set use_cpu=True to say so yourself."]  # fmt: skip
