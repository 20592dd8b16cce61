"""``test`` and ``predict`` for every SSL method: the probe and kNN of a pretext run scored on
the test split (``test/...``), and the backbone's features of a split written to a file that
``torch.load(weights_only=True)`` and numpy read; from Python and from the command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ssl_lightning.callbacks import FeatureWriter, KNNMonitor, OnlineLinearProbe
from ssl_lightning.cli import main
from ssl_lightning.corruptions import normalize
from ssl_lightning.datamodules import ImageFolderDataModule
from ssl_lightning.methods import SSLMethod
from tests.helpers import SAMPLE, sample_fit_args, tiny_trainer
from tests.test_linear_probe import SyntheticDataModule
from tests.test_method_contract import METHODS, _tiny


def _data(tmp_path: Path, **kwargs) -> ImageFolderDataModule:
    return ImageFolderDataModule(
        SAMPLE, batch_size=8, cache_dir=tmp_path / "cache", seed=0, **kwargs
    )


def _clean_features(model: SSLMethod, data: ImageFolderDataModule, images: torch.Tensor):
    """The reference: the backbone on the normalized clean images, in eval mode."""
    model.eval()
    with torch.no_grad():
        return model.backbone(normalize(images.float() / 255, data.mean, data.std))


@pytest.mark.parametrize("method", METHODS, ids=[m.__name__ for m in METHODS])
def test_test_scores_the_probe_and_knn_and_predict_writes_the_features(
    method: type[SSLMethod], tmp_path: Path
) -> None:
    model, _, _ = _tiny(method)
    data = _data(tmp_path)
    writer = FeatureWriter(tmp_path / "features.pt")
    callbacks = [OnlineLinearProbe(), KNNMonitor(k=5), writer]
    trainer = tiny_trainer(tmp_path, max_steps=2, limit_val_batches=0, callbacks=callbacks)
    trainer.fit(model, data)
    (scores,) = trainer.test(model, data, verbose=False)
    assert {"test/probe_acc_top1", "test/probe_acc_top5", "test/knn_acc"} <= set(scores)
    assert scores["test/probe_acc_top1"] <= scores["test/probe_acc_top5"]

    trainer.predict(model, data, return_predictions=False)
    saved = torch.load(tmp_path / "features.pt", weights_only=True)
    test_set = data.val_set  # no hold-out: validation is the test split
    assert test_set is not None
    assert saved["labels"].tolist() == test_set.labels.tolist()
    expected = _clean_features(model, data, test_set.images)
    assert saved["features"].shape == (30, model.num_features)
    torch.testing.assert_close(saved["features"], expected, rtol=1e-4, atol=1e-5)


def test_predict_any_split_to_npz(tmp_path: Path) -> None:
    model, _, _ = _tiny(METHODS[0])
    data = _data(tmp_path, predict_split="train")
    writer = FeatureWriter(tmp_path / "out" / "train.npz")
    trainer = tiny_trainer(tmp_path, callbacks=[writer])
    trainer.predict(model, data, return_predictions=False)
    arrays = np.load(tmp_path / "out" / "train.npz")
    assert arrays["features"].shape == (120, model.num_features)
    assert arrays["features"].dtype == np.float32 and arrays["labels"].dtype == np.int64
    assert data.train_set is not None
    np.testing.assert_array_equal(arrays["labels"], data.train_set.labels.numpy())
    expected = _clean_features(model, data, data.train_set.images)
    np.testing.assert_allclose(arrays["features"], expected.numpy(), rtol=1e-4, atol=1e-5)


def test_a_missing_split_names_the_setting(tmp_path: Path) -> None:
    model, _, _ = _tiny(METHODS[0])
    data = SyntheticDataModule([0, 1] * 8)  # a training split only
    with pytest.raises(ValueError, match="data.predict_split=train"):
        tiny_trainer(tmp_path).predict(model, data)
    with pytest.raises(ValueError, match="no test split"):
        tiny_trainer(tmp_path).test(model, data)


def test_test_and_predict_from_a_checkpoint_on_the_command_line(tmp_path: Path, capsys) -> None:
    tiny = ("--model.backbone=convnet", "--model.backbone_kwargs={width: 4}")
    callbacks = ("--trainer.callbacks+=OnlineLinearProbe", "--trainer.callbacks+=KNNMonitor")
    data = [f"--data={'ImageFolderDataModule'}", f"--data.data_dir={SAMPLE}"]
    data += [f"--data.cache_dir={tmp_path / 'cache'}", "--data.batch_size=16"]
    fit = sample_fit_args(tmp_path, "SimCLR", *tiny, "--model.proj_hidden_dim=16")
    main([*fit, *callbacks, "--trainer.callbacks.k=5"])
    ckpt = next(tmp_path.rglob("*.ckpt"))
    script = str(Path(sys.executable).with_name("ssl-lightning"))
    common = ["--model=SimCLR", *tiny, "--model.proj_hidden_dim=16", *data]
    common += ["--trainer.accelerator=cpu", f"--trainer.default_root_dir={tmp_path / 'eval'}"]
    common += ["--trainer.enable_progress_bar=false", f"--ckpt_path={ckpt}"]
    main(["test", *common, *callbacks, "--trainer.callbacks.k=5"])  # in-process: faster
    printed = capsys.readouterr().out
    assert "test/probe_acc_top1" in printed and "test/knn_acc" in printed

    # The console script, as a user runs it: exit status 0 and a file torch reads safely.
    out = tmp_path / "features.pt"
    writer = ["--trainer.callbacks+=FeatureWriter", f"--trainer.callbacks.output={out}"]
    predict = [script, "predict", *common, *writer]
    result = subprocess.run(predict, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = torch.load(out, weights_only=True)
    assert saved["features"].shape[0] == saved["labels"].shape[0] == 30


@pytest.mark.parametrize("cached", [False, True])
def test_test_scores_the_test_split_when_validation_is_held_out(
    tmp_path: Path, cached: bool
) -> None:
    # Lightning builds the test loader under inference mode; the split decoded (or read back
    # from the cache) there must still be written by the decoding threads.
    if cached:
        _data(tmp_path, val_fraction=0.2).setup("fit")
    model, _, _ = _tiny(METHODS[0])
    data = _data(tmp_path, val_fraction=0.2)
    trainer = tiny_trainer(tmp_path, callbacks=[KNNMonitor(k=5)], max_steps=1)
    trainer.fit(model, data)
    results = trainer.test(model, data, verbose=False)
    assert 0.0 <= results[0]["test/knn_acc"] <= 1.0
