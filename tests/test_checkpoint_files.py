"""The files the library writes: whole or not at all (a kill while writing keeps the previous
file), with the umask's permissions, no temporaries left by killed runs, no empty log folder
left by a failed run, and a checkpoint at the end of every fit."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from ssl_lightning.cli import main
from ssl_lightning.datamodules import ImageFolderDataModule
from ssl_lightning.export import export_backbone
from ssl_lightning.files import atomic_write, remove_stale_temporaries, temporary_path
from tests.helpers import SAMPLE, sample_fit_args


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_atomic_write_replaces_whole_files_with_the_umasks_mode(
    tmp_path: Path, umask_022: None
) -> None:
    path = tmp_path / "sub" / "file.bin"
    atomic_write(path, lambda f: f.write(b"first"))
    assert path.read_bytes() == b"first" and _mode(path) == 0o644

    def fail_halfway(f) -> None:
        f.write(b"half of the")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, fail_halfway)
    assert path.read_bytes() == b"first"  # the previous content, whole
    assert sorted(p.name for p in path.parent.iterdir()) == ["file.bin"]  # no temporary left


def test_only_temporaries_of_dead_processes_of_this_host_are_removed(tmp_path: Path) -> None:
    host = socket.gethostname().replace("-", "_")
    dead = tmp_path / f".a.ckpt.tmp-{host}-{_dead_pid()}"
    mine = temporary_path(tmp_path / "b.ckpt")  # this process: alive
    other_host = tmp_path / ".c.ckpt.tmp-elsewhere-1"
    unrelated = tmp_path / "d.tmp-notes.txt"
    for path in (dead, mine, other_host, unrelated):
        path.write_bytes(b"x")
    assert mine.name == f".b.ckpt.tmp-{host}-{os.getpid()}"
    assert remove_stale_temporaries(tmp_path) == [dead]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.name for p in (mine, other_host, unrelated)
    )


SLOW_DECODE = """
import sys, time
from pathlib import Path
import ssl_lightning.datamodules.decode as decode
from ssl_lightning.datamodules import ImageFolderDataModule

real, calls = decode.decode_image, []

def slow(path, size):
    calls.append(path)
    if len(calls) > 5:  # a few images in: signal, then wait to be killed
        Path(sys.argv[3]).touch()
        time.sleep(600)
    return real(path, size)

decode.decode_image = slow
dm = ImageFolderDataModule(sys.argv[1], cache_dir=sys.argv[2], memory_budget_gb=0, decode_workers=1)
dm.setup("fit")
"""


def _wait_for(path: Path, process: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            _, err = process.communicate()
            code = process.returncode
            pytest.fail(f"the child never reached the slow write (exit {code}):\n{err[-3000:]}")
        time.sleep(0.1)


def _temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".tmp" in p.name or p.name.startswith("tmp")]


def test_a_decode_killed_mid_way_leaves_no_temporary_after_the_next_run(tmp_path: Path) -> None:
    cache, marker = tmp_path / "cache", tmp_path / "decoding"
    script = tmp_path / "slow_decode.py"
    script.write_text(SLOW_DECODE)
    command = [sys.executable, str(script), str(SAMPLE), str(cache), str(marker)]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(marker, child)
    (left,) = _temporaries(cache)
    assert left.stat().st_size == 120 * 3 * 32 * 32  # the whole mapped split, on disk
    child.send_signal(signal.SIGKILL)
    child.communicate()

    dm = ImageFolderDataModule(SAMPLE, cache_dir=cache, memory_budget_gb=0)
    dm.setup("fit")
    assert dm.memory_mapped["train"] and _temporaries(cache) == []
    assert len(list(cache.glob("*.u8"))) == 2  # train and test, complete


def test_caches_exported_weights_and_checkpoints_respect_the_umask(
    tmp_path: Path, umask_022: None
) -> None:
    mapped = ImageFolderDataModule(SAMPLE, cache_dir=tmp_path / "mapped", memory_budget_gb=0)
    in_memory = ImageFolderDataModule(SAMPLE, cache_dir=tmp_path / "ram")
    for dm in (mapped, in_memory):
        dm.setup("fit")
    assert mapped.memory_mapped["train"] and not in_memory.memory_mapped["train"]
    files = [*(tmp_path / "mapped").iterdir(), *(tmp_path / "ram").iterdir()]
    assert len(files) == 8 and {p.name: _mode(p) for p in files} == {p.name: 0o644 for p in files}

    main(_fit_args(tmp_path / "run"))
    (ckpt,) = (tmp_path / "run").rglob("epoch=*.ckpt")
    out = export_backbone(ckpt, tmp_path / "backbone.pt")
    assert _mode(ckpt) == 0o644 and _mode(out) == 0o644


def _fit_args(root: Path, *extra: str) -> list[str]:
    tiny = ("--model.backbone=convnet", "--model.backbone_kwargs={width: 4}")
    return [*sample_fit_args(root, "SimCLR", *tiny, "--model.proj_hidden_dim=8"), *extra]


def test_a_failed_run_leaves_no_log_folder_and_an_earlier_run_is_kept(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):  # fails in setup
        main(_fit_args(tmp_path, f"--data.data_dir={tmp_path / 'missing'}"))
    with pytest.raises(ValueError, match="2 views"):  # fails in its first training step
        main(_fit_args(tmp_path, "--data.corruption=CleanView"))
    logs = tmp_path / "lightning_logs"
    assert not logs.exists() or list(logs.iterdir()) == []

    main(_fit_args(tmp_path))
    (done,) = logs.iterdir()
    # A run that fails in the same (fixed) version folder keeps what is there (Lightning's
    # SaveConfigCallback refuses the existing config.yaml: a failure like any other).
    before = sorted(p.relative_to(done) for p in done.rglob("*"))
    with pytest.raises((RuntimeError, ValueError)):
        logger = ("--trainer.logger=CSVLogger", f"--trainer.logger.save_dir={tmp_path}")
        version = f"--trainer.logger.version={done.name}"
        main(_fit_args(tmp_path, "--data.corruption=CleanView", *logger, version))
    assert sorted(p.relative_to(done) for p in done.rglob("*")) == before


def test_the_cpu_config_saves_a_checkpoint_in_a_run_shorter_than_its_validation_interval(
    tmp_path: Path,
) -> None:
    # The config's trainer (validation every 100 steps) on the sample images, stopped at step
    # 3: no validation, no epoch end, so only the end-of-fit save can write a checkpoint.
    config = Path(__file__).parent.parent / "configs" / "simclr_cifar10_cpu.yaml"
    main(
        [
            "fit",
            f"--config={config}",
            "--model.backbone_kwargs={width: 4}",
            "--data=ImageFolderDataModule",
            f"--data.data_dir={SAMPLE}",
            f"--data.cache_dir={tmp_path / 'cache'}",
            "--data.batch_size=16",
            "--trainer.max_steps=3",
            "--trainer.check_val_every_n_epoch=null",
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={tmp_path}",
        ]
    )
    (ckpt,) = tmp_path.rglob("epoch=*.ckpt")
    assert "step=3" in ckpt.name
    assert torch.load(ckpt, weights_only=True)["global_step"] == 3
    # last.ckpt, the name the README's evaluate and export commands use, is the same file.
    last = ckpt.with_name("last.ckpt")
    assert last.resolve() == ckpt.resolve()


def test_last_ckpt_follows_the_newest_save_and_a_run_resumes_from_it(tmp_path: Path) -> None:
    steps = ("--trainer.max_steps=-1", "--trainer.limit_train_batches=2")
    main(_fit_args(tmp_path / "first", *steps, "--trainer.max_epochs=2"))  # saves at 2 and 4
    (saved,) = (tmp_path / "first").rglob("epoch=*.ckpt")  # top-1: the step 2 file is gone
    last = saved.with_name("last.ckpt")
    assert "step=4" in saved.name and last.resolve() == saved.resolve()

    resume = ("--trainer.max_epochs=3", f"--ckpt_path={last}")
    main(_fit_args(tmp_path / "resumed", *steps, *resume))
    (resumed,) = (tmp_path / "resumed").rglob("last.ckpt")
    assert torch.load(resumed, weights_only=True)["global_step"] == 6  # went on from step 4


SLOW_SAVE = """
import builtins, os, sys, time
from pathlib import Path

marker, target = Path(os.environ["MARKER"]), Path(os.environ["TARGET"])
real_open = builtins.open


class HalfWrite:
    '''A binary file that takes half of the first write, then waits to be killed.'''

    def __init__(self, f):
        self.f = f

    def write(self, data):
        self.f.write(bytes(data)[: len(data) // 2])
        self.f.flush()
        marker.touch()
        time.sleep(600)

    def __getattr__(self, name):
        if name == "fileno":  # no sendfile: every byte goes through write()
            raise AttributeError(name)
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def slow_open(file, mode="r", *args, **kwargs):
    # Any binary write meant for the checkpoint file (under its own or a temporary name),
    # once a complete one exists: the second save is killed half-way.
    slow = "b" in mode and ("w" in mode or "x" in mode) and target.name in str(file)
    slow = slow and target.exists()
    f = real_open(file, mode, *args, **kwargs)
    return HalfWrite(f) if slow else f


builtins.open = slow_open
from ssl_lightning.cli import main

main(sys.argv[1:])
"""


def test_killing_a_checkpoint_save_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    ckpt_dir, marker = tmp_path / "ckpt", tmp_path / "saving"
    target = ckpt_dir / "model.ckpt"
    config = tmp_path / "callbacks.yaml"
    config.write_text(
        "trainer:\n  callbacks:\n    - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n"
        f"      init_args: {{dirpath: {ckpt_dir}, filename: model, every_n_train_steps: 1}}\n"
    )
    script = tmp_path / "slow_save.py"
    script.write_text(SLOW_SAVE)
    # Lightning's own writer stages a checkpoint in the system temporary folder and moves it:
    # a copy, not a rename, when that folder is another file system (a tmpfs /tmp).
    tmpdir = Path(tempfile.mkdtemp(dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    env = {**os.environ, "MARKER": str(marker), "TARGET": str(target), "TMPDIR": str(tmpdir)}
    args = _fit_args(tmp_path, f"--config={config}")
    args = [a if a != "--trainer.max_steps=2" else "--trainer.max_steps=4" for a in args]
    child = subprocess.Popen(
        [sys.executable, str(script), *args],
        env=env,
        cwd=Path(__file__).parent.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(marker, child)
        child.send_signal(signal.SIGKILL)
        child.communicate()
        saved = torch.load(target, weights_only=True)  # whole, not cut at half
        assert saved["global_step"] == 1
        staged = [p for p in tmpdir.iterdir() if p.is_file()]
        assert staged == []  # nothing staged outside the checkpoint folder
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)

    # Resuming from it works, and the killed save's temporary goes with the next save.
    assert [p.name for p in ckpt_dir.iterdir() if ".tmp-" in p.name]
    main([*_fit_args(tmp_path, f"--config={config}"), f"--ckpt_path={target}"])
    assert torch.load(target, weights_only=True)["global_step"] == 2
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["model.ckpt"]
