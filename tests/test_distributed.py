"""Distributed bench: 2 CPU ranks (torchrun, gloo) give exactly the single-process results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from relcache.evaluation.distributed import shard

ARGS = [
    "bench",
    "--preset", "DiT-FM", "--preset-overrides", "depth=2,hidden_size=32,num_heads=2",
    "--steps", "8", "--samples", "10", "--batch-size", "3", "--budgets", "5",
    "--methods", "fora,rfc2", "--calibration-samples", "4", "--grid-columns", "10",
    "--no-analysis", "--no-cache", "--no-progress", "--threads", "1",
]  # fmt: skip
COMPARED = ("nfc", "nfc_std", "threshold", "calibration_nfc", "tflops", "psnr", "ssim", "fd2fc",
            "fd", "class_accuracy", "schedule_share")  # fmt: skip


@pytest.mark.parametrize(("n", "batch", "world"), [(10, 3, 2), (7, 4, 3), (64, 64, 4), (5, 1, 2)])
def test_shards_are_whole_batches_covering_every_seed(n: int, batch: int, world: int) -> None:
    parts = [shard(n, batch, r, world) for r in range(world)]
    assert [i for p in parts for i in p] == list(range(n))  # contiguous, in rank order
    for p in parts[:-1]:
        assert len(p) % batch == 0 or p.stop == n  # a shard never splits a batch


def _run(cmd: list[str], cwd: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_two_ranks_equal_one_process(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    _run([sys.executable, "-m", "relcache", *ARGS, "--out", str(one)], tmp_path)
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
    ]
    _run([*torchrun, "-m", "relcache", *ARGS, "--out", str(two)], tmp_path)
    a = json.loads((one / "results.json").read_text())["runs"]
    b = json.loads((two / "results.json").read_text())["runs"]
    assert set(a) == set(b) == {"full", "fora@5", "rfc2@5"}
    for run_id in a:
        for key in COMPARED:
            assert a[run_id].get(key) == b[run_id].get(key), (run_id, key)
        grid = Path("grid_images") / f"{run_id.replace('@', '_nfc')}.pt"
        assert torch.equal(torch.load(one / grid), torch.load(two / grid))  # all 10 images
    assert "2 process(es)" in (two / "report.md").read_text()
