"""``ssl-lightning export`` and ``create_backbone(name, weights=...)``: round trip and bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel

from ssl_lightning import SimCLR, create_backbone
from ssl_lightning.cli import main
from ssl_lightning.export import export_backbone
from tests.helpers import tiny_trainer
from tests.test_evaluation import simclr_checkpoint  # noqa: F401  (a shared fixture)


def test_export_round_trip_gives_identical_outputs(
    simclr_checkpoint: tuple[Path, SimCLR],  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ckpt, simclr = simclr_checkpoint
    out = tmp_path / "nested" / "backbone.pt"
    main(["export", str(ckpt), str(out)])
    assert "wrote" in capsys.readouterr().out
    exported = torch.load(out, weights_only=True)  # plain types only
    assert set(exported) == {"name", "kwargs", "state_dict"}
    assert exported["name"] == "convnet" and exported["kwargs"] == {"width": 4}

    backbone = create_backbone("convnet", weights=out).eval()
    same_kwargs = create_backbone("convnet", weights=out, width=4).eval()
    # Trained channels-last (the conv default); the loaded copies are contiguous.
    reference = simclr.backbone.eval().to(memory_format=torch.contiguous_format)
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), reference(x), rtol=0, atol=0)
        torch.testing.assert_close(same_kwargs(x), reference(x), rtol=0, atol=0)
    assert [p.name for p in out.parent.iterdir()] == ["backbone.pt"]  # no temp file left


def test_existing_output_is_refused_unless_overwrite(
    simclr_checkpoint: tuple[Path, SimCLR],  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ckpt, _ = simclr_checkpoint
    out = tmp_path / "backbone.pt"
    out.write_text("precious")
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(ckpt), str(out)])
    assert exit_info.value.code == 2
    assert "already exists" in capsys.readouterr().err and out.read_text() == "precious"
    with pytest.raises(FileExistsError, match="--overwrite"):
        export_backbone(ckpt, out)
    main(["export", str(ckpt), str(out), "--overwrite"])
    assert torch.load(out, weights_only=True)["name"] == "convnet"


def test_checkpoints_that_are_not_ssl_methods_are_refused(tmp_path: Path) -> None:
    foreign = tmp_path / "boring.ckpt"
    trainer = tiny_trainer(tmp_path, max_steps=1)
    trainer.fit(BoringModel())
    trainer.save_checkpoint(foreign)
    with pytest.raises(ValueError, match="not a checkpoint of an SSL method"):
        export_backbone(foreign, tmp_path / "out.pt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export_backbone(tmp_path / "missing.ckpt", tmp_path / "out.pt")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read"):
        export_backbone(tmp_path / "junk.ckpt", tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()


def test_weights_that_disagree_with_the_request_name_the_fix(
    simclr_checkpoint: tuple[Path, SimCLR],  # noqa: F811
    tmp_path: Path,
) -> None:
    out = export_backbone(simclr_checkpoint[0], tmp_path / "backbone.pt")
    with pytest.raises(ValueError, match=r"holds a 'convnet' backbone.*create_backbone\('convnet'"):
        create_backbone("resnet18", weights=out)
    with pytest.raises(ValueError, match=r"asks for \{'width': 8\}"):
        create_backbone("convnet", weights=out, width=8)
    with pytest.raises(FileNotFoundError, match="ssl-lightning export"):
        create_backbone("convnet", weights=tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="is a Lightning checkpoint|not a backbone weights file"):
        create_backbone("convnet", weights=simclr_checkpoint[0])


def test_help_mentions_export(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "ssl-lightning export CHECKPOINT OUT.pt" in " ".join(capsys.readouterr().out.split())
