"""The installed distribution owns one import name, ``ssl_lightning``, and works from a user's
project that has its own ``callbacks.py`` and ``datamodules/``."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

from tests.helpers import SAMPLE

ROOT = Path(__file__).parent.parent
CACHES = shutil.ignore_patterns("__pycache__", "*.egg-info")
SHADOW = "raise RuntimeError('the user\\'s {name} was imported instead of the library\\'s')\n"


def _run(command: list[str], cwd: Path | None = None) -> str:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def test_wheel_in_a_fresh_venv_runs_beside_users_callbacks_and_datamodules(
    tmp_path: Path,
) -> None:
    # Built from a copy of the sources: a build/ folder left in the checkout could carry
    # modules that no longer exist into the wheel.
    source = tmp_path / "source"
    shutil.copytree(ROOT / "ssl_lightning", source / "ssl_lightning", ignore=CACHES)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    pip = [sys.executable, "-m", "pip"]
    _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(source)])
    wheel = next(tmp_path.glob("ssl_lightning-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names if ".dist-info/" not in n} == {"ssl_lightning"}

    # A fresh venv that sees this environment's dependencies (torch, lightning, ...) through a
    # .pth line, so nothing is downloaded; the library itself comes only from the wheel.
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    site = Path(
        _run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).strip()
    )
    (site / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "-q",
            "--no-deps",
            str(wheel),
        ]
    )

    project = tmp_path / "project"
    (project / "datamodules").mkdir(parents=True)
    (project / "callbacks.py").write_text(SHADOW.format(name="callbacks.py"))
    (project / "datamodules" / "__init__.py").write_text(SHADOW.format(name="datamodules/"))
    imported = _run(
        [
            str(python),
            "-c",
            "import ssl_lightning, ssl_lightning.cli; print(ssl_lightning.__file__)",
        ],
        cwd=project,
    )
    assert Path(imported.strip()).is_relative_to(site)  # the wheel's copy, not the checkout
    fit = [
        "fit",
        "--model=SimCLR",
        "--model.backbone=convnet",
        "--model.backbone_kwargs={width: 4}",
        "--model.proj_hidden_dim=16",
        "--data=ImageFolderDataModule",
        f"--data.data_dir={SAMPLE}",
        f"--data.cache_dir={tmp_path / 'cache'}",
        "--data.batch_size=16",
        "--trainer.max_steps=1",
        "--trainer.accelerator=cpu",
        "--trainer.logger=false",
        "--trainer.enable_checkpointing=false",
        "--trainer.enable_progress_bar=false",
        "--trainer.callbacks+=OnlineLinearProbe",
        f"--trainer.default_root_dir={project}",
    ]
    _run([str(python), "-m", "ssl_lightning", *fit], cwd=project)
    _run([str(venv / "bin" / "ssl-lightning"), "--help"], cwd=project)
