"""The ``ssl-lightning`` command through its real entry point, on tiny runs."""

import subprocess
import sys
from pathlib import Path

import pytest

from ssl_lightning import SimCLR
from ssl_lightning.cli import main
from tests.helpers import sample_fit_args

ROOT = Path(__file__).parent.parent
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


class TinySimCLR(SimCLR):
    """A user's subclass, reached by its import path."""

    def __init__(self, extra_scale: float = 1.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.extra_scale = extra_scale


def _fit_args(tmp_path: Path, model: str, *extra: str) -> list[str]:
    tiny = ("--model.backbone=convnet", "--model.backbone_kwargs={width: 8}")
    return [*sample_fit_args(tmp_path, model, *tiny, "--model.proj_hidden_dim=32"), *extra]


def test_console_script_and_module_help() -> None:
    # The console script sits beside the interpreter of the environment it is installed in.
    script = Path(sys.executable).with_name("ssl-lightning")
    for command in ([str(script), "--help"], [sys.executable, "-m", "ssl_lightning", "--help"]):
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert "fit" in result.stdout


@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_configs_parse(config: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "class_path: ssl_lightning." in printed
    assert "class_path: ssl_lightning.datamodules." in printed


def test_fit_by_short_names_picks_the_methods_corruption(tmp_path: Path) -> None:
    main(_fit_args(tmp_path, "SimCLR"))
    ckpt = next(tmp_path.rglob("*.ckpt"))
    assert "step=2" in ckpt.name
    config = next(tmp_path.rglob("config.yaml")).read_text()
    assert "class_path: ssl_lightning.SimCLR" in config


def test_fit_a_user_subclass_by_class_path(tmp_path: Path) -> None:
    main(_fit_args(tmp_path, "tests.test_cli.TinySimCLR", "--model.extra_scale=2.0"))
    config = next(tmp_path.rglob("config.yaml")).read_text()
    assert "tests.test_cli.TinySimCLR" in config and "extra_scale: 2.0" in config


def test_mismatched_corruption_from_the_command_line(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="data.corruption"):
        main(_fit_args(tmp_path, "SimCLR", "--data.corruption=CleanView"))


@pytest.mark.parametrize(
    "corruption",
    [
        "SimCLRViews",
        "ssl_lightning.corruptions.SimCLRViews",
        "ssl_lightning.datamodules.SimCLRViews",
    ],
)
def test_corruptions_resolve_by_short_name_and_both_import_paths(corruption: str, capsys) -> None:
    # ssl_lightning.datamodules re-exports the corruptions, so older configs keep working.
    with pytest.raises(SystemExit):
        main(
            [
                "fit",
                "--model=SimCLR",
                "--data=CIFAR10DataModule",
                f"--data.corruption={corruption}",
                "--print_config",
            ]
        )
    printed = capsys.readouterr().out
    assert "SimCLRViews\n      init_args:\n        num_views: 2\n" in printed


def test_a_users_method_imports_from_the_working_directory(tmp_path: Path) -> None:
    (tmp_path / "mymethods.py").write_text(
        "from ssl_lightning import SimCLR\n\n\nclass MySimCLR(SimCLR):\n    pass\n"
    )
    script = Path(sys.executable).with_name("ssl-lightning")
    command = [str(script), "fit", "--model=mymethods.MySimCLR", "--print_config"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "class_path: mymethods.MySimCLR" in result.stdout
