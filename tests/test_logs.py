"""The `hf_distill` logger in a user's script: warnings and info lines show without any logging set-up, once; a script
that configures logging gets them through its own handler, once; `HF_DISTILL_VERBOSITY` sets the level."""

import logging
import os
import subprocess
import sys

import pytest

from hf_distill.logs import default_level

WARNING = "DDK never updates the domain mixture in this run"
SCRIPT = """
import logging, sys
if sys.argv[1] == "configured":
    logging.basicConfig(format="ROOT %(levelname)s %(message)s", level=logging.INFO)
from hf_distill import DistillationConfig
DistillationConfig(output_dir=sys.argv[2], ddk_update_steps=10, max_steps=5, use_cpu=True, report_to="none")
logging.getLogger("hf_distill.ddk.callback").info("an info line")
"""


def _run(tmp_path, setup, **env):
    environment = {k: v for k, v in os.environ.items() if k not in ("HF_DISTILL_VERBOSITY", "LOCAL_RANK")}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, setup, str(tmp_path)], capture_output=True, text=True, timeout=120,
        env={**environment, "HF_HUB_OFFLINE": "1", **env},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [line for line in proc.stderr.splitlines() if WARNING in line or "an info line" in line]


def test_a_plain_script_shows_warnings_and_info_lines_once(tmp_path):
    lines = _run(tmp_path, "plain")
    assert len(lines) == 2 and lines[0].startswith("DistillationConfig.ddk_update_steps=10 > max_steps=5")
    assert lines[1] == "an info line"


def test_a_script_that_configures_logging_gets_each_line_once_through_its_handler(tmp_path):
    lines = _run(tmp_path, "configured")
    assert len(lines) == 2 and lines[0].startswith("ROOT WARNING DistillationConfig.ddk_update_steps=10")
    assert lines[1] == "ROOT INFO an info line"


@pytest.mark.parametrize(("level", "expected"), [("error", 0), ("warning", 1)])
def test_the_level_follows_hf_distill_verbosity(tmp_path, level, expected):
    lines = _run(tmp_path, "plain", HF_DISTILL_VERBOSITY=level)
    assert len(lines) == expected and all(WARNING in line for line in lines)


@pytest.mark.parametrize(("env", "level"), [
    ({}, logging.INFO), ({"LOCAL_RANK": "0"}, logging.INFO), ({"LOCAL_RANK": "1"}, logging.WARNING),
    ({"LOCAL_RANK": "1", "HF_DISTILL_VERBOSITY": "Debug"}, logging.DEBUG),
    ({"HF_DISTILL_VERBOSITY": "loud"}, logging.INFO),  # not a level: the default
])  # fmt: skip
def test_the_default_level_is_info_on_each_machines_main_process_and_warning_elsewhere(monkeypatch, env, level):
    for name in ("LOCAL_RANK", "HF_DISTILL_VERBOSITY"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert default_level() == level
