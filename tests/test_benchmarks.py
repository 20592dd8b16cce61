"""``python -m benchmarks`` runs every benchmark end to end and prints one table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from benchmarks.probe_quality import best_stage
from benchmarks.throughput import augmented_batches, build, plain_step

REPO = Path(__file__).parent.parent


def test_entry_point_runs_every_benchmark_and_prints_the_table() -> None:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--tiny", "--threads", "1"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    table = done.stdout[done.stdout.index("| benchmark | measure |") :].splitlines()
    benchmarks = {line.split(" | ")[0].removeprefix("| ") for line in table[2:]}
    assert {"augmentation", "data loading", "step SimCLR", "step MAE"} <= benchmarks
    assert {"channels_last", "probe overhead", "quality SimCLR"} <= benchmarks


@pytest.mark.parametrize("script", sorted(p.name for p in (REPO / "benchmarks").glob("[!_]*.py")))
def test_every_script_starts_as_the_docs_run_it(script: str) -> None:
    """``python benchmarks/<script>.py``, from the repository root, imports what it needs."""
    done = subprocess.run(
        [sys.executable, f"benchmarks/{script}", "--help"],
        cwd=REPO,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "usage:" in done.stdout


def test_plain_step_is_the_lightning_step_without_lightning() -> None:
    """The baseline does the same work: one plain step moves the weights as one training
    step of the same model on the same batch does."""
    torch.manual_seed(0)
    kwargs = {"backbone_kwargs": {"width": 4, "depth": 2}, "optimizer": "sgd", "weight_decay": 0.1}
    model = build("SimCLR", **kwargs)
    reference = build("SimCLR", **kwargs)
    reference.load_state_dict(model.state_dict())
    batch = augmented_batches(model, 8, 1)[0]
    plain_step(model)(batch)

    optimizer = torch.optim.SGD(
        reference.configure_param_groups(), lr=reference.lr, momentum=reference.momentum
    )
    reference.pretext_step(batch).loss.backward()
    optimizer.step()
    for (name, got), want in zip(
        model.state_dict().items(), reference.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(got, want, msg=name)


def test_best_stage_compares_single_stages_with_the_last() -> None:
    row = {"linear_top1": 0.5, "stage0_linear_top1": 0.4, "stage2_linear_top1": 0.55}
    assert best_stage({**row, "all_linear_top1": 0.6}) == ("stage2", 0.55)  # not the concatenation
    assert best_stage({**row, "linear_top1": 0.7}) == ("last", 0.7)
    assert best_stage({"linear_top1": 0.5}) is None


def test_probe_quality_without_methods_only_reads_and_plots_the_results(tmp_path: Path) -> None:
    from benchmarks import probe_quality

    rows = [
        {"method": "random init", "linear_top1": 0.49, "all_linear_top1": 0.54},
        {"method": "RotationPrediction", "steps": 300, "linear_top1": 0.56},
        {"method": "RotationPrediction", "steps": 600, "linear_top1": 0.60},
    ]
    out = tmp_path / "results.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    plot = tmp_path / "curves.png"
    argv = ["--no-random-init", "--data-dir", str(tmp_path / "absent"), "--out", str(out)]
    assert probe_quality.main([*argv, "--plot", str(plot)]) == rows  # no data was needed
    assert plot.read_bytes().startswith(b"\x89PNG")


def test_probe_quality_rows_are_strict_json_and_a_missing_top5_prints_a_dash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from benchmarks import probe_quality

    row = {"method": "random init", "linear_top1": 0.7, "linear_top5": float("nan")}
    line = probe_quality.json_line(row)  # top-5 of 5 classes or fewer is NaN
    assert json.loads(line, parse_constant=pytest.fail) == {**row, "linear_top5": None}
    probe_quality.print_table([json.loads(line)])
    assert "| random init | - | - | 70.0% | - |" in capsys.readouterr().out


def test_probe_quality_set_applies_star_keys_to_every_method_and_named_keys_win() -> None:
    from argparse import Namespace

    from benchmarks import probe_quality

    args = Namespace(
        backbone="convnet",
        backbone_kwargs={"width": 8, "depth": 2},
        set={"*.optimizer": "adamw", "*.lr": 0.002, "SimCLR.lr": 0.5},
    )
    simclr = probe_quality._build(args, "SimCLR", total_steps=100, epoch_steps=10)
    vicreg = probe_quality._build(args, "VICReg", total_steps=100, epoch_steps=10)
    assert (simclr.optimizer_name, simclr.lr) == ("adamw", 0.5)
    assert (vicreg.optimizer_name, vicreg.lr) == ("adamw", 0.002)
    assert simclr.warmup_epochs == vicreg.warmup_epochs == 1.0  # 10% of 100 steps, 10 per epoch


def test_probe_quality_rows_record_the_set_overrides(tmp_path: Path) -> None:
    from benchmarks import probe_quality
    from benchmarks.__main__ import SAMPLE

    out = tmp_path / "results.jsonl"
    argv = ["--data-dir", str(SAMPLE), "--method", "SimCLR", "--steps", "1", "--batch-size", "32"]
    argv += ["--backbone-kwargs", '{"width": 8, "depth": 2}', "--out", str(out)]
    rows = probe_quality.main([*argv, "--set", "SimCLR.lr=0.5", "--set", "*.temperature=0.5"])
    assert [r["set"] for r in rows] == [{"SimCLR.lr": 0.5, "*.temperature": 0.5}] * 2


@pytest.mark.parametrize("script", ["probe_quality", "time_to_accuracy"])
@pytest.mark.parametrize(
    ("setting", "message"),
    [("lr", "expected NAME=JSON, got 'lr'"), ("optimizer=adamw", "the value is not JSON")],
)
def test_benchmarks_refuse_a_set_that_is_not_name_equals_json(
    script: str, setting: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib

    main = importlib.import_module(f"benchmarks.{script}").main
    with pytest.raises(SystemExit) as exit_info:
        main(["--set", setting])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_probe_quality_fine_tunes_each_backbone_and_the_scratch_baseline(tmp_path: Path) -> None:
    from benchmarks import probe_quality
    from benchmarks.__main__ import SAMPLE

    out = tmp_path / "results.jsonl"
    argv = ["--data-dir", str(SAMPLE), "--method", "SimCLR", "--steps", "1", "--batch-size", "32"]
    argv += ["--backbone-kwargs", '{"width": 8, "depth": 2}', "--out", str(out)]
    rows = probe_quality.main([*argv, "--fine-tune-steps", "2", "--label-fraction", "0.5"])
    assert [(r["method"], r["finetune_steps"], r["label_fraction"]) for r in rows] == [
        ("random init", 2, 0.5),
        ("SimCLR", 2, 0.5),
    ]
    assert all(0.0 <= r["finetune_top1"] <= 1.0 for r in rows)


def test_benchmarks_score_on_a_held_out_share_of_train_with_val_fraction(tmp_path: Path) -> None:
    from benchmarks import probe_quality, time_to_accuracy
    from benchmarks.__main__ import SAMPLE

    only_train = tmp_path / "images"  # no test/: only a hold-out can be scored
    (only_train / "train").parent.mkdir()
    (only_train / "train").symlink_to(SAMPLE / "train")
    tiny = ["--data-dir", str(only_train), "--backbone-kwargs", '{"width": 8, "depth": 2}']
    tiny += ["--batch-size", "16", "--method", "SimCLR"]
    argv = [*tiny, "--steps", "1", "--out", str(tmp_path / "probe.jsonl")]
    with pytest.raises(ValueError, match="no test split"):
        probe_quality.main(argv)
    rows = probe_quality.main([*argv, "--val-fraction", "0.5"])
    assert [(r["method"], r["val_fraction"]) for r in rows] == [
        ("random init", 0.5),
        ("SimCLR", 0.5),
    ]
    argv = [*tiny, "--max-steps", "1", "--eval-every", "1", "--out", str(tmp_path / "t.jsonl")]
    rows = time_to_accuracy.main([*argv, "--val-fraction", "0.5"])
    assert [(r["step"], r["val_fraction"]) for r in rows] == [(0, 0.5), (1, 0.5)]


def _time_to_accuracy(tmp_path: Path, *extra: str) -> list[dict]:
    from benchmarks import time_to_accuracy
    from benchmarks.__main__ import SAMPLE

    argv = ["--data-dir", str(SAMPLE), "--method", "FastSiam", "--batch-size", "16"]
    argv += ["--backbone-kwargs", '{"width": 8, "depth": 2}', "--set", "num_views=3"]
    argv += ["--set", "proj_hidden_dim=16", "--set", "pred_hidden_dim=8"]
    return time_to_accuracy.main([*argv, "--out", str(tmp_path / "rows.jsonl"), *extra])


def test_time_to_accuracy_evaluates_untrained_every_n_steps_and_at_the_end(tmp_path: Path) -> None:
    from benchmarks import time_to_accuracy

    plot = tmp_path / "curve.png"
    rows = _time_to_accuracy(tmp_path, "--max-steps", "5", "--eval-every", "2", "--plot", str(plot))
    by_step = tmp_path / "by_step.png"  # plot only: the rows already in --out, by step
    replot = ["--out", str(tmp_path / "rows.jsonl"), "--plot", str(by_step), "--plot-x", "steps"]
    assert time_to_accuracy.main([*replot, "--plot-gain", "15"]) == rows
    lines = time_to_accuracy.plot(rows, by_step, x="steps", gain=15)
    assert lines.keys() == {"FastSiam", "random init + 15"}
    assert lines["FastSiam"][:, 0].tolist() == [0, 2, 4, 5]  # steps on x
    assert lines["FastSiam"][:, 1].tolist() == [100 * r["linear_top1"] for r in rows]
    assert lines["random init + 15"][0, 1] == 100 * rows[0]["linear_top1"] + 15
    minutes = time_to_accuracy.plot(rows, by_step)["FastSiam"][:, 0]
    assert minutes.tolist() == [r["train_seconds"] / 60 for r in rows]
    assert [r["step"] for r in rows] == [0, 2, 4, 5]
    assert rows[0]["train_seconds"] == 0.0
    assert [r["train_seconds"] for r in rows] == sorted(r["train_seconds"] for r in rows)
    assert all(r["views"] == 3 and r["set"]["num_views"] == 3 for r in rows)
    assert all(0.0 <= r["linear_top1"] <= 1.0 and 0.0 <= r["knn_top1"] <= 1.0 for r in rows)
    assert plot.stat().st_size > 0 and by_step.stat().st_size > 0


def test_time_to_accuracy_stops_at_the_target_or_the_time_limit(tmp_path: Path) -> None:
    at_target = _time_to_accuracy(
        tmp_path, "--max-steps", "9", "--eval-every", "2", "--target", "0"
    )
    assert [r["step"] for r in at_target] == [0, 2]
    assert {r["module"] for r in at_target} == {"backbone"}
    out_of_time = _time_to_accuracy(
        tmp_path / "limit", "--max-steps", "9", "--eval-every", "5", "--max-minutes", "0"
    )
    assert [r["step"] for r in out_of_time] == [0, 1]


def test_many_views_times_the_batched_call_against_a_call_per_view() -> None:
    from benchmarks.many_views import measure

    row = measure(4, 3, torch.device("cpu"), repeats=1)
    assert (row["batch"], row["views"]) == (4, 3)
    assert row["batched_views_per_s"] > 0 and row["per_view_views_per_s"] > 0


def test_resized_crop_times_both_cpu_paths_and_names_the_default() -> None:
    from benchmarks.resized_crop import measure

    small, large = measure(16, 16, 4, repeats=1), measure(80, 64, 2, repeats=1)
    assert small["per_box_ms"] > 0 and small["matmul_ms"] > 0
    assert (small["default_per_box"], large["default_per_box"]) == (False, True)


def test_per_view_times_both_cpu_paths_checks_they_agree_and_names_the_default() -> None:
    from benchmarks.per_view import measure

    small, large = measure(16, 16, 4, repeats=1), measure(200, 192, 2, repeats=1)
    assert small["per_view_ms"] > 0 and small["batched_ms"] > 0
    assert small["max_difference"] == 0.0 and large["max_difference"] < 1e-6
    assert (small["default_per_view"], large["default_per_view"]) == (False, True)


def test_time_to_accuracy_evaluates_a_second_module_beside_the_exported_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from benchmarks import time_to_accuracy
    from benchmarks.__main__ import SAMPLE

    evaluated: list[torch.nn.Module] = []
    evaluate_stages = time_to_accuracy.evaluate_stages

    def spy(backbone: torch.nn.Module, data: Any) -> Any:
        evaluated.append(backbone)
        return evaluate_stages(backbone, data)

    monkeypatch.setattr(time_to_accuracy, "evaluate_stages", spy)

    argv = ["--data-dir", str(SAMPLE), "--method", "DINO", "--batch-size", "16"]
    argv += ["--backbone-kwargs", '{"width": 8, "depth": 2}', "--set", "num_prototypes=8"]
    argv += ["--set", "proj_hidden_dim=16", "--set", "proj_bottleneck_dim=8"]
    argv += ["--max-steps", "2", "--eval-every", "2", "--also-evaluate", "backbone"]
    rows = time_to_accuracy.main([*argv, "--out", str(tmp_path / "rows.jsonl")])
    assert [(r["step"], r["module"]) for r in rows] == [
        (0, "teacher_backbone"),
        (0, "backbone"),
        (2, "teacher_backbone"),
        (2, "backbone"),
    ]
    # the untrained teacher is a copy of the student: the same features, the same scores
    assert rows[0]["linear_top1"] == rows[1]["linear_top1"]
    # two different networks, teacher first, at every point
    teacher, student = evaluated[:2]
    assert teacher is not student and evaluated == [teacher, student, teacher, student]
    with pytest.raises(SystemExit, match="no module 'head_x'"):
        time_to_accuracy.main([*argv, "--also-evaluate", "head_x", "--out", str(tmp_path / "x")])
