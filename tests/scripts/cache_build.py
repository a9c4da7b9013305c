"""Build the demo teacher's cache of a small tokenized dataset on every process of the launch (OUT/cache); with
`fail` as second argument, process 1 raises after its shards, before its record (an interrupted build).

Run under `accelerate launch --multi_gpu --num_processes 2` (gloo on CPU) or as one process.
"""

import os
import sys
from datetime import timedelta

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from accelerate import PartialState  # noqa: E402
from conftest import DEMO  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

import hf_distill.teacher_cache as teacher_cache  # noqa: E402
from hf_distill import build_teacher_cache  # noqa: E402


def cache_rows(tokenizer):
    """23 texts of varied length, tokenized (shared with the test, which builds the single-process cache)."""
    from datasets import Dataset

    texts = [f"def f{i}(x):\n    return x * {i} + {i % 7}" * (1 + i % 3) for i in range(23)]
    return Dataset.from_dict(dict(tokenizer(texts)))


def main(out: str, fail: bool) -> None:
    state = PartialState(cpu=True, timeout=timedelta(seconds=60))  # gloo
    tokenizer = AutoTokenizer.from_pretrained(DEMO / "student")
    teacher = AutoModelForCausalLM.from_pretrained(DEMO / "teacher")
    if fail and state.process_index == 1:

        def crash(*args, **kwargs):
            raise RuntimeError("process 1 stopped before writing its record")

        teacher_cache.write_json_atomic = crash
    build_teacher_cache(teacher, cache_rows(tokenizer), os.path.join(out, "cache"), tokenizer, k=5,
                        batch_size=4, examples_per_shard=5)  # fmt: skip
    state.wait_for_everyone()  # a clean teardown: a gloo group left to interpreter exit can abort the process
    state.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], len(sys.argv) > 2 and sys.argv[2] == "fail")
