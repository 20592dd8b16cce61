"""scripts/slurm/pretrain.sbatch: its syntax, its header, the trainer it configures on each
task of a 2-node x 2-task job, and a preempted job requeued and resumed from Lightning's
checkpoint. No SLURM here (``sbatch --test-only`` needs a controller): the script runs with a
stand-in ``srun`` that records its command, and the variables SLURM would set."""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from ssl_lightning.cli import main
from ssl_lightning.methods.schedule import scaled_lr
from tests.helpers import sample_fit_args

REPO = Path(__file__).parents[1]
SCRIPT = REPO / "scripts" / "slurm" / "pretrain.sbatch"
CONFIG = "configs/simclr_cifar10.yaml"
JOB = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "ssl-pretrain"}


def _sbatch_options() -> dict[str, str]:
    options = re.findall(r"^#SBATCH --([\w-]+)(?:=(\S+))?", SCRIPT.read_text(), re.MULTILINE)
    return dict(options)


def test_script_is_valid_bash() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_header_asks_for_one_task_per_gpu_and_the_requeue_signal() -> None:
    options = _sbatch_options()
    assert options["gres"] == f"gpu:{options['ntasks-per-node']}"
    assert "requeue" in options
    signal_name, seconds = options["signal"].split("@")
    # Lightning's SLURM environment listens for this signal.
    assert getattr(signal, signal_name) == SLURMEnvironment().requeue_signal == signal.SIGUSR1
    assert int(seconds) >= 60  # time to write a checkpoint before SLURM stops the job


def _srun_command(tmp_path: Path, nodes: int, tasks_per_node: int, *extra: str) -> list[str]:
    """Runs the script as sbatch would on a ``nodes`` x ``tasks_per_node`` allocation, with an
    ``srun`` that records its arguments; returns them."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "srun.args"
    srun = bin_dir / "srun"
    srun.write_text(f'#!/bin/bash\nprintf "%s\\0" "$@" > "{record}"\n')
    srun.chmod(0o755)
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        **JOB,
        "SLURM_JOB_NUM_NODES": str(nodes),
        "SLURM_NTASKS_PER_NODE": str(tasks_per_node),
    }
    subprocess.run(["bash", str(SCRIPT), CONFIG, *extra], cwd=tmp_path, env=env, check=True)
    return record.read_text().split("\0")[:-1]


def test_two_nodes_of_two_tasks_make_one_job_of_four_ranks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    command = _srun_command(tmp_path, 2, 2, "--trainer.accelerator=cpu")
    assert command[:2] == ["ssl-lightning", "fit"]
    run_dir = tmp_path / "runs" / "ssl-pretrain-4242"
    assert run_dir.is_dir()  # made before srun, the same on every requeue of the job

    monkeypatch.chdir(REPO)
    # Configuring a rank sets these globals, as it should in its own process; restore them.
    monkeypatch.setattr(rank_zero_only, "rank", rank_zero_only.rank)
    for key in ("MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(key, "unset")
        monkeypatch.delenv(key)
    for key, value in JOB.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.setenv("SLURM_NNODES", "2")
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "2")
    monkeypatch.setenv("SLURM_NODELIST", "gpu[07-08]")
    for rank in range(4):
        monkeypatch.setenv("SLURM_PROCID", str(rank))
        monkeypatch.setenv("SLURM_LOCALID", str(rank % 2))
        monkeypatch.setenv("SLURM_NODEID", str(rank // 2))
        os.environ.pop("MASTER_ADDR", None)  # the first node of this job's list, not the last
        cli = LightningCLI(
            L.LightningModule,
            L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=command[2:],
            run=False,
            auto_configure_optimizers=False,
        )
        trainer = cli.trainer
        assert (trainer.world_size, trainer.num_nodes, trainer.num_devices) == (4, 2, 2)
        assert (trainer.global_rank, trainer.local_rank, trainer.node_rank) == (
            rank,
            rank % 2,
            rank // 2,
        )
        environment = trainer.strategy.cluster_environment
        assert isinstance(environment, SLURMEnvironment)
        assert environment.auto_requeue and environment.requeue_signal == signal.SIGUSR1
        assert environment.main_address == "gpu07"  # every rank meets on the first node
        assert Path(trainer.default_root_dir) == Path("runs/ssl-pretrain-4242")
        assert cli.config.trainer.sync_batchnorm

        # The global batch is the per-task batch times the ranks; the learning rate follows it.
        assert cli.datamodule.batch_size == 512
        trainer_view = SimpleNamespace(
            datamodule=cli.datamodule, world_size=trainer.world_size, accumulate_grad_batches=1
        )
        assert scaled_lr(cli.model.lr, trainer_view) == pytest.approx(0.4 * 512 * 4 / 256)


def test_a_preempted_job_is_requeued_and_resumes_where_it_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One task: SIGUSR1 after step 2 makes Lightning save an hpc checkpoint in the run
    directory and call ``scontrol requeue``; the requeued job (same variables, same command)
    resumes from it and ends where an uninterrupted run does."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    requeued = tmp_path / "scontrol.args"
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/bash\necho "$@" >> "{requeued}"\n')
    scontrol.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.chdir(REPO)  # tests.launch_callbacks imports from here
    for key, value in {**JOB, "SLURM_NTASKS": "1", "SLURM_NNODES": "1"}.items():
        monkeypatch.setenv(key, value)
    for key in ("SLURM_NTASKS_PER_NODE", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_NODEID"):
        monkeypatch.setenv(key, "1" if key == "SLURM_NTASKS_PER_NODE" else "0")

    def fit(root: Path, *extra: str) -> None:
        options = [
            "--model.backbone=convnet",
            '--model.backbone_kwargs={"width": 4}',
            "--model.proj_hidden_dim=16",
        ]
        run = ["--seed_everything=0", "--trainer.max_steps=4", "--trainer.limit_val_batches=0"]
        logs = ["--trainer.logger=CSVLogger", f"--trainer.logger.save_dir={root}"]
        logs.append("--trainer.log_every_n_steps=1")
        main([*sample_fit_args(root, "SimCLR", *options), *run, *logs, *extra])

    job = tmp_path / "job"
    fit(job, "--trainer.callbacks+=tests.launch_callbacks.SignalAt")  # preempted after step 2
    assert requeued.read_text().split() == ["requeue", "4242"]
    assert (job / "hpc_ckpt_1.ckpt").is_file()
    assert torch.load(job / "hpc_ckpt_1.ckpt", weights_only=False)["global_step"] == 2
    fit(job)  # the requeued job: the same command
    fit(tmp_path / "straight")

    def final(root: Path) -> dict[str, torch.Tensor]:
        (ckpt,) = root.rglob("*step=4.ckpt")
        return torch.load(ckpt, weights_only=False)["state_dict"]

    resumed, straight = final(job), final(tmp_path / "straight")
    for key, value in straight.items():
        assert torch.equal(resumed[key], value), key

    # One run directory: the requeued part logs the steps after the preemption.
    steps = []
    for version in range(2):
        with (job / "lightning_logs" / f"version_{version}" / "metrics.csv").open() as f:
            steps.append([int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")])
    assert steps == [[0, 1], [2, 3]]
