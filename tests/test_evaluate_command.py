"""``ssl-lightning evaluate``: the fast frozen evaluation from the command line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from ssl_lightning import SimCLR
from ssl_lightning.backbones import create_backbone
from ssl_lightning.backbones.stages import Stages, stage_widths
from ssl_lightning.cli import main
from ssl_lightning.datamodules import ImageFolderDataModule
from ssl_lightning.evaluation import evaluate_stages, frozen_evaluation
from ssl_lightning.export import export_backbone
from tests.helpers import SAMPLE
from tests.test_evaluation import simclr_checkpoint  # noqa: F401  (a shared fixture)


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_LIGHTNING_CACHE", str(tmp_path / "cache"))


def _reference(backbone: torch.nn.Module, stages: Stages = "last") -> dict[str, float]:
    """The same evaluation through the Python API, on the sample's train and test folders."""
    dm = ImageFolderDataModule(SAMPLE)
    dm.setup("fit")
    assert dm.train_set is not None and dm.val_set is not None
    result = frozen_evaluation(
        backbone,
        dm.train_set.images,
        dm.train_set.labels,
        dm.val_set.images,
        dm.val_set.labels,
        dm.mean,
        dm.std,
        stages=stages,
    )
    return {"linear_top1": result.linear_top1, "knn_top1": result.knn_top1}


def test_checkpoint_weights_and_random_init_match_the_python_api(
    tmp_path: Path,
    simclr_checkpoint: tuple[Path, SimCLR],  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    ckpt, model = simclr_checkpoint
    weights = export_backbone(ckpt, tmp_path / "backbone.pt")
    out = tmp_path / "frozen.jsonl"
    data = ["--data-dir", str(SAMPLE), "--out", str(out)]
    main(["evaluate", str(ckpt), str(weights), "--random-init", *data])
    main(["evaluate", str(weights), "--stages", "all", *data])  # appends to the same file

    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["model"], r["stages"]) for r in rows] == [
        (str(ckpt), "last"),
        (str(weights), "last"),
        ("random init (convnet)", "last"),
        (str(weights), "all"),
    ]
    torch.manual_seed(0)
    random_init = create_backbone("convnet", width=4)
    expected = [
        _reference(model.backbone),
        _reference(model.backbone),
        _reference(random_init),
        _reference(model.backbone, "all"),
    ]
    for row, reference in zip(rows, expected, strict=True):
        for key, value in reference.items():
            assert row[key] == pytest.approx(value, abs=1e-6), (row, key)
    table = capsys.readouterr().out
    assert "| model | features | labels | linear top-1 |" in table
    assert "random init (convnet)" in table


def test_bad_input_names_the_file_or_the_option(
    tmp_path: Path,
    simclr_checkpoint: tuple[Path, SimCLR],  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    ckpt, _ = simclr_checkpoint
    missing = tmp_path / "missing.ckpt"
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", str(missing), "--data-dir", str(SAMPLE)])
    assert exit_info.value.code == 2
    assert str(missing) in capsys.readouterr().err

    train_only = tmp_path / "train_only"
    shutil.copytree(SAMPLE / "train", train_only / "train")
    with pytest.raises(SystemExit):
        main(["evaluate", str(ckpt), "--data-dir", str(train_only)])
    assert "--val-fraction" in capsys.readouterr().err
    main(["evaluate", str(ckpt), "--data-dir", str(train_only), "--val-fraction", "0.2"])
    assert f"| {ckpt} | last |" in capsys.readouterr().out

    with pytest.raises(SystemExit):
        main(["evaluate", "--data-dir", str(SAMPLE)])
    assert "at least one checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["evaluate", str(ckpt), "--data-dir", str(SAMPLE), "--stages", "middle"])
    assert "'middle'" in capsys.readouterr().err


def test_stage_selections_sliced_from_one_extraction_match_their_own_evaluation() -> None:
    torch.manual_seed(0)
    backbone = create_backbone("convnet", width=4, depth=3).train()
    assert stage_widths(backbone, torch.zeros(1, 3, 32, 32)) == [4, 8, 16]
    running_mean = backbone.features[1].running_mean.clone()
    selections: tuple[Stages, ...] = ("all", 1, (2, 0), "last")
    results = evaluate_stages(backbone, ImageFolderDataModule(SAMPLE), selections)
    assert list(results) == ["all", "stage1", "stage(2, 0)", "last"]
    assert backbone.training and torch.equal(backbone.features[1].running_mean, running_mean)
    for selection, result in zip(selections, results.values(), strict=True):
        expected = _reference(backbone, selection)
        assert result.linear_top1 == pytest.approx(expected["linear_top1"], abs=1e-6)
        assert result.knn_top1 == pytest.approx(expected["knn_top1"], abs=1e-6)


def test_top5_of_five_classes_is_not_reported(
    tmp_path: Path,
    simclr_checkpoint: tuple[Path, SimCLR],  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    """With 5 classes every label is in the top 5: the row says "-" (null in the file, which
    stays strict JSON), as fine-tuning and LinearEvaluation leave top-5 out; 6 classes count."""
    ckpt, _ = simclr_checkpoint
    out = tmp_path / "rows.jsonl"
    for num_classes in (5, 6):
        data = tmp_path / f"classes{num_classes}"
        for split in ("train", "test"):
            for name in sorted(p.name for p in (SAMPLE / split).iterdir())[:num_classes]:
                shutil.copytree(SAMPLE / split / name, data / split / name)
        main(["evaluate", str(ckpt), "--data-dir", str(data), "--out", str(out)])
    five, six = (
        json.loads(line, parse_constant=pytest.fail) for line in out.read_text().splitlines()
    )
    assert five["linear_top5"] is None
    assert 0.0 <= six["linear_top5"] <= 1.0
    tables = capsys.readouterr().out
    assert f"| {ckpt} | last | 100% | {five['linear_top1']:.1%} | - |" in tables
    assert (
        f"| {ckpt} | last | 100% | {six['linear_top1']:.1%} | {six['linear_top5']:.1%} |" in tables
    )
