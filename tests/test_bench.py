"""The benchmark runs end to end, and the process settings it relies on."""

import json
import subprocess
import sys

from lenet_jax import bench, xla_flags
from tests.conftest import REPO


def test_flops_per_example_is_the_counted_multiply_adds_twice():
    # conv1: forward and kernel gradient; the rest: forward and both gradients.
    assert bench.MACS_PER_EXAMPLE == 1_131_960
    assert bench.FLOPS_PER_EXAMPLE == 2_263_920


def test_tuned_env_adds_our_settings_and_keeps_the_users():
    env = xla_flags.tuned_env(
        {"XLA_FLAGS": "--xla_dump_to=/tmp/x", "MALLOC_TOP_PAD_": "1"}, devices=2
    )
    flags = env["XLA_FLAGS"].split()
    assert flags[0] == "--xla_dump_to=/tmp/x"
    assert "--xla_cpu_experimental_ynn_fusion_type=individual_dot" in flags
    assert "--xla_force_host_platform_device_count=2" in flags
    assert env["MALLOC_TOP_PAD_"] == "1"  # the user's value wins
    assert env["MALLOC_MMAP_THRESHOLD_"] == "33554432"
    again = xla_flags.tuned_env(
        {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=dot"}
    )
    assert again["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type=dot"


def test_bench_smoke_json(subprocess_env):
    """Two tiny rounds; --json parses and has both sides."""
    done = subprocess.run(
        [sys.executable, "-m", "lenet_jax.bench", "--batch-sizes", "64"]
        + ["--rounds", "2", "--steps", "2", "--json"],
        cwd=REPO,
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert set(report["batches"]) == {"64"}
    assert "--xla_cpu_experimental_ynn_fusion_type" in report["xla_flags"]
    for result in report["batches"].values():
        assert result["train_ratio"] > 0 and result["eval_ratio"] > 0
        for side in ("ours", "pytorch"):
            assert len(result[side]["train_examples_per_sec"]) == 2
            assert result[side]["peak_rss_mib"] > 0
    assert "pytorch" in bench.format_table(report)
