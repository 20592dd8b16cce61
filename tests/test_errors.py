"""Errors a user can act on: configuration mistakes print the library's message and the key to
change (the closest valid key for a misspelled one) instead of a jsonargparse traceback, and
runtime errors the library raises on purpose (a failed download) print their message alone; a
truncated checkpoint or one holding a pickled object is refused naming the file; NaN weights
are never exported or loaded."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torchvision import datasets

from ssl_lightning import LinearEvaluation, SimCLR
from ssl_lightning.backbones import create_backbone
from ssl_lightning.backbones.weights import write_weights
from ssl_lightning.cli import main
from ssl_lightning.cli.errors import user_error
from ssl_lightning.corruptions import normalize
from ssl_lightning.export import export_backbone
from tests.helpers import sample_fit_args
from tests.test_evaluation import simclr_checkpoint  # noqa: F401  (a shared fixture)

TINY = (
    "--model.backbone=convnet",
    "--model.backbone_kwargs={width: 4}",
    "--model.proj_hidden_dim=8",
)


def _fit(tmp_path: Path, *extra: str, model: str = "SimCLR") -> list[str]:
    return [*sample_fit_args(tmp_path, model, *TINY), *extra]


def _clean_error(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Runs the command as the console does; its exit status and what it printed to stderr."""
    with pytest.raises(SystemExit) as exit_info:
        main(args, clean_errors=True)
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Namespace(" not in err and "Given value" not in err
    return int(exit_info.value.code or 0), err


def test_an_unknown_key_suggests_the_closest_valid_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _clean_error(_fit(tmp_path, "--model.tempreature=0.1"), capsys)
    assert code == 2 and "did you mean 'model.temperature'?" in err
    assert len(err.splitlines()) <= 3, err
    _, err = _clean_error(_fit(tmp_path, "--trainer.max_stepz=3"), capsys)
    assert "unknown key 'trainer.max_stepz'; did you mean 'trainer.max_steps'?" in err
    _, err = _clean_error(
        _fit(tmp_path, "--data.corruption=SimCLRViews", "--data.corruption.num_view=3"), capsys
    )
    assert "did you mean 'data.corruption.num_views'?" in err
    config = tmp_path / "config.yaml"
    config.write_text("model:\n  class_path: SimCLR\n  init_args:\n    tempreature: 0.1\n")
    _, err = _clean_error(_fit(tmp_path, f"--config={config}"), capsys)
    assert "did you mean 'model.temperature'?" in err
    _, err = _clean_error(["fit", "--model=SimCLRR", "--data=ImageFolderDataModule"], capsys)
    assert "no class named 'SimCLRR'; did you mean 'SimCLR'?" in err
    _, err = _clean_error(_fit(tmp_path, "--model.backbone_kwargs={widht: 4}"), capsys)
    assert "backbone 'convnet' takes no argument 'widht'; did you mean 'width'?" in err


def test_a_bad_value_prints_the_librarys_message_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _clean_error(_fit(tmp_path, "--model.temperature=-1"), capsys)
    assert code == 2 and "temperature must be > 0, got -1.0 (set model.temperature)" in err
    assert len(err.splitlines()) <= 3, err
    _, err = _clean_error(_fit(tmp_path, "--model.temperature=abc"), capsys)
    assert "model.temperature: got abc; expected float" in err
    _, err = _clean_error(_fit(tmp_path, "--trainer.precision=bf17"), capsys)
    assert "trainer.precision: got bf17; expected int or one of" in err and "'bf16-mixed'" in err


def test_a_mismatched_corruption_prints_the_librarys_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = _fit(
        tmp_path,
        "--data.corruption=PatchMask",
        "--data.corruption.patch_size=16",
        "--data.corruption.mask_ratio=0.9",
        model="MaskedReconstruction",
    )
    args = [a for a in args if not a.startswith("--model.proj_hidden_dim")]
    code, err = _clean_error(args, capsys)
    assert code == 1 and "data.corruption has mask_ratio=0.9" in err and "model.mask_ratio" in err
    assert len(err.splitlines()) <= 3, err


def test_the_console_prints_errors_cleanly_and_python_callers_get_exceptions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = _fit(tmp_path, "--model.temperature=-1")
    with pytest.raises(ValueError, match=r"set model.temperature"):
        main(args)  # in Python: the exception, as before
    script = Path(sys.executable).with_name("ssl-lightning")
    result = subprocess.run([str(script), *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "(set model.temperature)" in result.stderr
    monkeypatch.setenv("SSL_LIGHTNING_TRACEBACK", "1")  # asks for the traceback back
    with pytest.raises(ValueError, match=r"set model.temperature"):
        main(args, clean_errors=True)


def test_a_failed_download_prints_one_line_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(datasets.CIFAR10, "url", "http://127.0.0.1:9/unreachable.tar.gz")
    args = [
        "fit",
        "--model=SimCLR",
        *TINY,
        "--data=CIFAR10DataModule",
        f"--data.data_dir={tmp_path / 'cifar'}",
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.max_steps=1",
    ]
    code, err = _clean_error(args, capsys)
    assert code == 1 and "could not download CIFAR10" in err and "cifar-10-python.tar.gz" in err
    assert len(err.splitlines()) == 2, err  # the message and the SSL_LIGHTNING_TRACEBACK hint


def test_a_bug_keeps_its_traceback() -> None:
    # A RuntimeError from inside torch, raised in a call the library made: not a message of
    # the library's own, so the console shows the traceback.
    with pytest.raises(RuntimeError) as info:
        normalize(torch.zeros(2, 3, 4, 4), (0.5, 0.5), (0.5, 0.5))
    assert user_error(info.value) is None
    with pytest.raises(ValueError) as refused:
        SimCLR(temperature=-1.0)
    assert user_error(refused.value) is refused.value


def _truncated(source: Path, out: Path) -> Path:
    data = source.read_bytes()
    out.write_bytes(data[: len(data) // 2])
    return out


@pytest.mark.parametrize("subcommand", ["fit", "validate"])
def test_a_truncated_checkpoint_names_the_file(
    simclr_checkpoint: tuple[Path, SimCLR],  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    subcommand: str,
) -> None:
    ckpt = _truncated(simclr_checkpoint[0], tmp_path / "cut.ckpt")
    args = [subcommand, *_fit(tmp_path, f"--ckpt_path={ckpt}")[1:]]
    with pytest.raises(ValueError, match=rf"checkpoint '{ckpt}' is truncated or corrupt"):
        main(args)
    code, err = _clean_error(args, capsys)
    assert code == 2 and str(ckpt) in err and "truncated" in err


class Boom:
    """Unpickling it creates ``marker``: stands for any code a pickle can run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("reader", ["fit", "validate", "export", "weights"])
def test_a_pickled_object_in_a_checkpoint_is_refused_and_never_run(
    simclr_checkpoint: tuple[Path, SimCLR],  # noqa: F811
    tmp_path: Path,
    reader: str,
) -> None:
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.ckpt"
    content = torch.load(simclr_checkpoint[0], weights_only=True)
    if reader == "weights":
        content = {"name": "convnet", "kwargs": {"width": 4}, "state_dict": {}}
    content["extra"] = Boom(marker)
    torch.save(content, evil)
    message = rf"refusing to load .*'{evil}': it holds Python objects other than tensors"
    with pytest.raises(ValueError, match=message):
        if reader == "export":
            export_backbone(evil, tmp_path / "out.pt")
        elif reader == "weights":
            create_backbone("convnet", weights=evil)
        else:
            main([reader, *_fit(tmp_path, f"--ckpt_path={evil}")[1:]])
    assert not marker.exists()


def test_export_and_loading_refuse_non_finite_weights(
    simclr_checkpoint: tuple[Path, SimCLR],  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    content = torch.load(simclr_checkpoint[0], weights_only=True)
    weights = [k for k in content["state_dict"] if k.startswith("backbone.") and "weight" in k]
    for key, count, value in ((weights[0], 3, float("nan")), (weights[1], 1, float("inf"))):
        tensor = content["state_dict"][key]
        tensor[torch.unravel_index(torch.arange(count), tensor.shape)] = value
    diverged = tmp_path / "diverged.ckpt"
    torch.save(content, diverged)
    out = tmp_path / "out.pt"
    name0, name1 = (k.removeprefix("backbone.") for k in weights[:2])
    with pytest.raises(ValueError, match=rf"non-finite .* {name0} \(3 of \d+\), {name1} \(1 of"):
        export_backbone(diverged, out)
    with pytest.raises(SystemExit):
        main(["export", str(diverged), str(out)])
    assert "non-finite" in capsys.readouterr().err and not out.exists()
    with pytest.raises(ValueError, match="non-finite"):
        LinearEvaluation(backbone_checkpoint=str(diverged))

    state = {k.removeprefix("backbone."): v for k, v in content["state_dict"].items()}
    state = {k: v for k, v in state.items() if f"backbone.{k}" in content["state_dict"]}
    write_weights(out, "convnet", {"width": 4}, state)
    with pytest.raises(ValueError, match=rf"weights file '{out}' has non-finite .*{name0}"):
        create_backbone("convnet", weights=out)
    with pytest.raises(ValueError, match="non-finite"):
        LinearEvaluation(backbone_weights=str(out))


def test_every_torch_load_in_the_library_is_weights_only() -> None:
    package = Path(__file__).parent.parent / "ssl_lightning"
    calls = []
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) in ("torch.load", "load"):
                keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
                calls.append((path.name, node.lineno, keywords.get("weights_only")))
    assert calls and all(only == "True" for *_, only in calls), calls
