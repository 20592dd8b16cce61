"""Real launches of ``ssl-lightning fit`` by torchrun on CPU (gloo): one node with two
processes, two nodes simulated on this machine, and a job whose rank 1 dies in its third step.

Each launch starts fresh Python processes (seconds of imports each), so there are three, with a
tiny model for a few steps on the sample images.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ssl_lightning.datamodules import ImageFolderDataModule
from tests.distributed_utils import free_port
from tests.helpers import SAMPLE

pytestmark = pytest.mark.distributed

REPO = Path(__file__).parents[1]
STEPS = 3
LAUNCH_TIMEOUT = 300  # seconds: a launch that hangs fails the test instead of the suite
DEAD_RANK_BOUND = 60  # seconds from rank 1's error to the job's exit (gloo's own timeout: 30 min)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The decoded sample, made once before any launch so the ranks only read it."""
    cache_dir = tmp_path_factory.mktemp("cache")
    ImageFolderDataModule(SAMPLE, cache_dir=cache_dir).setup("fit")
    return cache_dir


def _torchrun(*launch: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *launch, "-m", "ssl_lightning", "fit"]


def _fit_args(root: Path, cache: Path, devices: int, num_nodes: int = 1) -> list[str]:
    """A tiny SimCLR with the online probe for STEPS steps (validation after the last one),
    CSV metrics, and a report of each process's place in the job under ``root / "ranks"``."""
    return [
        "--model=SimCLR",
        "--model.backbone=convnet",
        '--model.backbone_kwargs={"width": 4}',
        "--model.proj_hidden_dim=16",
        "--data=ImageFolderDataModule",
        f"--data.data_dir={SAMPLE}",
        f"--data.cache_dir={cache}",
        "--data.batch_size=8",
        f"--trainer.max_steps={STEPS}",
        f"--trainer.val_check_interval={STEPS}",
        "--trainer.log_every_n_steps=1",
        "--trainer.accelerator=cpu",
        f"--trainer.devices={devices}",
        f"--trainer.num_nodes={num_nodes}",
        "--trainer.strategy=ddp",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={root}",
        "--trainer.logger=CSVLogger",
        f"--trainer.logger.save_dir={root}",
        "--trainer.callbacks+=OnlineLinearProbe",
        "--trainer.callbacks+=tests.launch_callbacks.ReportRanks",
        f"--trainer.callbacks.out_dir={root / 'ranks'}",
    ]


def _env() -> dict[str, str]:
    # One thread per process (torchrun's own default, set here to skip its warning); the
    # repository root is the working directory, so tests.launch_callbacks imports.
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _ranks(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((root / "ranks").glob("rank*.json"))]


def test_torchrun_two_processes_on_one_node(tmp_path: Path, cache: Path) -> None:
    command = _torchrun("--nproc_per_node=2") + _fit_args(tmp_path, cache, devices=2)
    done = subprocess.run(
        command, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=LAUNCH_TIMEOUT
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    ranks = _ranks(tmp_path)
    assert [(r["global_rank"], r["local_rank"], r["node_rank"]) for r in ranks] == [
        (0, 0, 0),
        (1, 1, 0),
    ]
    assert all(r["world_size"] == 2 and r["global_step"] == STEPS for r in ranks)
    assert len({r["pid"] for r in ranks}) == 2

    # Rank 0 alone logs: one run directory, each step's training loss once, the probe once.
    (metrics,) = tmp_path.glob("lightning_logs/version_*/metrics.csv")
    with metrics.open() as f:
        rows = list(csv.DictReader(f))
    loss_steps = [int(r["step"]) for r in rows if r.get("train/loss")]
    assert loss_steps == list(range(STEPS))
    assert len([r for r in rows if r.get("probe/val_acc_top1")]) == 1
    assert len([r for r in rows if r.get("probe/train_acc")]) == STEPS


def test_torchrun_two_nodes_simulated_on_one_machine(tmp_path: Path, cache: Path) -> None:
    port = str(free_port())
    nodes = [
        subprocess.Popen(
            _torchrun(
                "--nnodes=2",
                f"--node_rank={node}",
                "--nproc_per_node=1",
                "--master_addr=127.0.0.1",
                f"--master_port={port}",
            )
            + _fit_args(tmp_path, cache, devices=1, num_nodes=2),
            cwd=REPO,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for node in range(2)
    ]
    try:
        outputs = [node.communicate(timeout=LAUNCH_TIMEOUT)[0] for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    for node, output in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, output[-5000:]
    ranks = _ranks(tmp_path)
    assert [(r["global_rank"], r["local_rank"], r["node_rank"]) for r in ranks] == [
        (0, 0, 0),
        (1, 0, 1),
    ]
    assert all(r["world_size"] == 2 and r["num_nodes"] == 2 for r in ranks)
    assert all(r["global_step"] == STEPS for r in ranks)


def test_a_dead_rank_ends_the_whole_job(tmp_path: Path, cache: Path) -> None:
    command = _torchrun("--nproc_per_node=2") + _fit_args(tmp_path, cache, devices=2)
    command.append("--trainer.callbacks+=tests.launch_callbacks.RaiseOnRank")  # rank 1, step 2
    command[command.index(f"--trainer.max_steps={STEPS}")] = "--trainer.max_steps=10"
    done = subprocess.run(
        command,
        cwd=REPO,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=LAUNCH_TIMEOUT,
    )
    ended = time.time()
    assert done.returncode != 0
    raised = re.search(r"planted failure on rank 1 in step 2 at ([0-9.]+)", done.stdout)
    assert raised, done.stdout[-5000:]  # rank 1's own error is in the job's output
    assert ended - float(raised.group(1)) < DEAD_RANK_BOUND
    assert not (tmp_path / "ranks").exists()  # no rank finished training
