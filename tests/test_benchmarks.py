"""The benchmark scripts run and print their tables (tiny sizes; figures are not asserted: they are measurements)."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_loss_memory_benchmark_prints_its_table():
    cmd = [sys.executable, str(ROOT / "recipes" / "benchmarks" / "loss_memory.py"), "--vocab", "500",
           "--tokens", "64", "--hidden", "16", "--chunk", "16", "--device", "cpu"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("machine:") and "torch" in lines[0]
    rows = {line.split()[0] for line in lines[3:]}
    assert {"naive", "chunked", "fused", "chunked-compiled", "fused-compiled"} <= rows


def test_ddk_overhead_benchmark_prints_its_table():
    cmd = [sys.executable, str(ROOT / "recipes" / "benchmarks" / "ddk_overhead.py"), "--steps", "4",
           "--update_steps", "2", "--eval_batches", "1", "--batch", "2", "--length", "16"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = proc.stdout.splitlines()[-1].split()
    assert row[:3] == ["2", "1", "1"]  # K 2, one eval batch, one update (none at the last step, 4)
    assert row[-1].endswith("%") and row[-2].endswith("%")
    assert float(row[4]) >= float(row[5]) > 0  # the DDK time holds the teacher's one-time evaluation


# benchmark (b) on a tiny pair
E2E_TINY = [sys.executable, str(ROOT / "recipes" / "benchmarks" / "e2e_step.py"), "--vocab", "300", "--student_hidden",
            "64", "--teacher_hidden", "64", "--teacher_layers", "2", "--batch", "2", "--length", "16", "--steps", "3",
            "--warmup", "1", "--device", "cpu", "--new_tokens", "6"]  # fmt: skip


def test_e2e_step_benchmark_prints_its_table():
    proc = subprocess.run([*E2E_TINY, "--repeats", "1"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("machine:") and "trl" in lines[0] and "6 sampled tokens after 10-token" in lines[1]
    rows = {line.split()[0]: line.split() for line in lines[3:]}
    assert set(rows) == {
        "student-only", "floor", "hf_distill", "hf_distill-compiled", "hf_distill-fused", "hf_distill-fused-compiled",
        "trl-gkd", "hf_distill-on-policy", "trl-gkd-on-policy",
    }  # fmt: skip
    trl = importlib.util.find_spec("trl") is not None  # the bench extra: CI installs it
    for row, fields in rows.items():
        if row.startswith("trl") and not trl:
            assert fields[1] == "skipped:"
            continue
        low, high = map(float, fields[2].split("-"))
        assert low <= float(fields[1]) <= high and float(fields[3]) > 0  # median within the runs' spread
        assert row == "floor" or fields[5].endswith("%")
        if trl and not row.endswith("on-policy"):  # tokens/s relative to TRL's off-policy row
            ratio = float(rows["trl-gkd"][1]) / float(fields[1])  # of the printed (rounded) step times
            assert float(fields[-1]) == pytest.approx(ratio, rel=0.2)


def test_e2e_step_benchmark_profiles_one_step_by_operator():
    proc = subprocess.run([*E2E_TINY, "--profile", "hf_distill-compiled"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "step 2, operators by self cpu time:" in proc.stdout
    assert "aten::mm" in proc.stdout and "_LogitTerms" in proc.stdout  # the models' matmuls and the logit terms


def test_cache_speed_benchmark_prints_its_table():
    cmd = [sys.executable, str(ROOT / "recipes" / "benchmarks" / "cache_speed.py"), "--vocab", "300",
           "--student_hidden", "64", "--teacher_hidden", "128", "--batch", "2", "--length", "16", "--steps", "3",
           "--warmup", "1", "--k", "8", "--repeats", "1", "--device", "cpu"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("machine:") and "x)" in lines[1]
    assert (
        lines[3].startswith("live teacher") and lines[4].startswith("cache k=8") and lines[4].split()[4].endswith("x")
    )


def test_ddk_gap_noise_benchmark_prints_its_table():
    cmd = [sys.executable, str(ROOT / "recipes" / "benchmarks" / "ddk_gap_noise.py"), "--tokens", "256", "2048",
           "--repeats", "20", "--validation_size", "8", "--ddk_validation_size", "16",
           "--block_size", "64"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line.split() for line in proc.stdout.splitlines() if line.split()[:1] in (["arithmetic"], ["code"],
            ["dna"], ["prose"])]  # fmt: skip
    assert [row[0] for row in rows] == ["arithmetic"] * 2 + ["code"] * 2 + ["dna"] * 2 + ["prose"] * 2
    for small, large in zip(rows[::2], rows[1::2], strict=True):
        assert int(small[2]) <= int(large[2])  # more blocks for the larger budget
        assert float(small[3]) == float(large[3])  # the same log ratio over all held-out blocks
        assert float(large[4]) <= float(small[4]) * 1.2  # the standard error does not grow with the sample
