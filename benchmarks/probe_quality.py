"""Does pretraining help? Every method on real CIFAR-10 for a fixed time, then the same frozen
evaluation against the same network untrained.

For each ``--method`` (any method class exported by ``ssl_lightning.methods``, or ``all``):

1. pretrains it for ``--minutes`` of wall-clock time (or ``--steps`` steps) on the 50,000
   training images of the CIFAR-10 JPEG tree, with the method's own default corruption and
   hyper-parameters except the warmup, which is 10% of the run (a method's GPU warmup of 10
   epochs would cover the whole budget);
2. evaluates the backbone it exports (the teacher for DINO) with
   :func:`ssl_lightning.evaluation.frozen_evaluation`: features of the clean train and test
   images computed once, a linear classifier (weight decay chosen on a held-out 10% of the
   train features) and a kNN classifier (k=200, T=0.1), scored on the 10,000 test images.

3. with ``--fine-tune-steps N``, also fine-tunes that backbone with a linear head for ``N``
   steps on a class-balanced ``--label-fraction`` of the training labels
   (:func:`ssl_lightning.evaluation.fine_tune`) and scores it on the test images.

The random-init row evaluates the same architecture untrained, with the same protocol (and
fine-tunes it from scratch with the same recipe, steps and batches). Each finished row is
appended to ``--out`` (JSON lines), so methods can run one at a time; the table printed at
the end covers every row in that file.

    python benchmarks/probe_quality.py --data-dir ../shared/data/cifar10-jpeg --method all
    python benchmarks/probe_quality.py --method SimCLR --method BYOL --minutes 7
    python benchmarks/probe_quality.py --no-random-init --plot curves.png  # the rows so far
    python benchmarks/probe_quality.py --method MAE --backbone vit_tiny \
        --backbone-kwargs '{"dim": 96, "depth": 4, "num_heads": 3}'
    python benchmarks/probe_quality.py --method RotationPrediction --steps 600 \
        --fine-tune-steps 500 --label-fraction 0.1
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # `python benchmarks/probe_quality.py` imports its sibling

from benchmarks.probe_overhead import quiet_trainer  # noqa: E402
from ssl_lightning import create_backbone, methods  # noqa: E402
from ssl_lightning.datamodules import ImageFolderDataModule  # noqa: E402
from ssl_lightning.evaluation import evaluate_stages, fine_tune  # noqa: E402
from ssl_lightning.evaluation.results import json_line, percent  # noqa: E402
from ssl_lightning.export import BackboneCheckpoint  # noqa: E402
from ssl_lightning.methods import SSLMethod  # noqa: E402

METHODS = methods.method_classes()


def _trainer(root: Path, **kwargs: Any) -> L.Trainer:
    return quiet_trainer(
        accelerator="auto", devices=1, default_root_dir=root, limit_val_batches=0, **kwargs
    )


def _build(args: argparse.Namespace, name: str, total_steps: int, epoch_steps: int) -> SSLMethod:
    kwargs = {  # "*.lr" sets every method's lr; "SimCLR.lr" only SimCLR's, and wins
        key.split(".", 1)[1]: value
        for prefix in ("*.", f"{name}.")
        for key, value in args.set.items()
        if key.startswith(prefix)
    }
    kwargs.setdefault("warmup_epochs", 0.1 * total_steps / epoch_steps)
    return METHODS[name](backbone=args.backbone, backbone_kwargs=args.backbone_kwargs, **kwargs)


def _steps_in_budget(args: argparse.Namespace, name: str, data: ImageFolderDataModule) -> int:
    """Steps that fit in ``--minutes``, timed on a short run of the same setup."""
    epoch_steps = len(data.train_set or []) // args.batch_size
    model = _build(args, name, 1000, epoch_steps)
    times: list[float] = []

    class Clock(L.Callback):
        def on_train_batch_end(self, *_: Any) -> None:
            times.append(time.perf_counter())

    _trainer(args.out.parent / "calibration", max_steps=8, callbacks=[Clock()]).fit(model, data)
    per_step = (times[-1] - times[2]) / (len(times) - 3)  # after the first batches' warm-up
    return max(1, int(args.minutes * 60 / per_step))


def fine_tuned(
    args: argparse.Namespace, backbone: torch.nn.Module | None, data: ImageFolderDataModule
) -> dict:
    """``--fine-tune-steps`` of fine-tuning of ``backbone`` (``None``: the architecture from
    scratch) on ``data`` (its ``label_fraction``), as ``finetune_*`` keys; ``{}`` without."""
    if not args.fine_tune_steps:
        return {}
    spec = (args.backbone, dict(args.backbone_kwargs))
    source = None if backbone is None else BackboneCheckpoint(*spec, backbone.state_dict())
    start = time.perf_counter()
    result = fine_tune(source, data, args.fine_tune_steps, backbone=spec, seed=args.seed)
    print(f"  fine-tuned {result.steps} steps in {time.perf_counter() - start:.0f} s: {result}")
    return {
        "finetune_top1": result.top1,
        "finetune_top5": result.top5,
        "finetune_steps": result.steps,
        "label_fraction": data.label_fraction,
    }


def run_method(
    args: argparse.Namespace,
    name: str,
    data: ImageFolderDataModule,
    few_labels: ImageFolderDataModule,
) -> dict:
    assert data.train_set is not None
    epoch_steps = len(data.train_set) // args.batch_size
    total = args.steps or _steps_in_budget(args, name, data)
    L.seed_everything(args.seed)
    model = _build(args, name, total, epoch_steps)
    limit = {} if args.steps else {"max_time": timedelta(minutes=args.minutes)}
    trainer = _trainer(args.out.parent / name, max_steps=total, **limit)
    start = time.perf_counter()
    trainer.fit(model, data)
    seconds = time.perf_counter() - start
    steps = trainer.global_step
    loss = float(trainer.callback_metrics.get("train/loss", float("nan")))
    print(f"{name}: {steps} steps in {seconds:.0f} s, final loss {loss:.4f}")
    backbone = getattr(model, model.export_module)
    return {
        "method": name,
        "steps": steps,
        "seconds": round(seconds, 1),
        "images_per_s": round(steps * args.batch_size / seconds, 1),
        "final_loss": loss,
        **evaluate(backbone, data, args.stages),
        **fine_tuned(args, backbone, few_labels),
    }


def evaluate(
    backbone: torch.nn.Module,
    data: ImageFolderDataModule,
    stages: tuple[str | int, ...] = ("last",),
) -> dict:
    """Frozen evaluation of each stage selection; keys of ``"all"`` are prefixed ``all_``,
    those of stage ``i`` ``stage{i}_``."""
    start = time.perf_counter()
    results = evaluate_stages(backbone, data, stages)  # type: ignore[arg-type]
    print(f"  frozen evaluation of {list(results)} in {time.perf_counter() - start:.0f} s")
    row: dict[str, Any] = {}
    for label, result in results.items():
        print(f"  {label}: {result}")
        prefix = "" if label == "last" else f"{label}_"
        row |= {f"{prefix}{key}": value for key, value in asdict(result).items()}
    return row


def _percent(row: dict, key: str) -> str:
    return percent(row.get(key))


def best_stage(row: dict) -> tuple[str, float] | None:
    """The single stage with the best linear top-1 among the row's ``stage<i>_`` and last-stage
    results, as ``(name, accuracy)``; ``None`` when no single stage was evaluated. The pick is
    made on the test images: it says which stage carries the features, it is not a held-out
    accuracy (the reported one is the stage chosen before the run, ``--stages``)."""
    scores = {
        key.split("_")[0]: value
        for key, value in row.items()
        if key.startswith("stage") and key.endswith("_linear_top1")
    }
    if not scores:
        return None
    if "linear_top1" in row:
        scores["last"] = row["linear_top1"]
    name = max(scores, key=scores.__getitem__)
    return name, scores[name]


def print_table(rows: list[dict]) -> None:
    print(
        "\n| method | steps | images/s | linear top-1 | linear top-5 | kNN top-1 "
        "| all stages: linear top-1 | kNN top-1 | best single stage (picked on test) "
        "| fine-tuned top-1 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        scores = ["linear_top1", "linear_top5", "knn_top1", "all_linear_top1", "all_knn_top1"]
        cells = " | ".join(_percent(r, key) for key in scores)
        best = best_stage(r)
        best_cell = f"{best[0]}: {best[1]:.1%}" if best else "-"
        tuned = _percent(r, "finetune_top1")
        if "finetune_top1" in r:
            tuned += f" ({r['label_fraction']:.0%} labels, {r['finetune_steps']} steps)"
        print(
            f"| {r['method']} | {r.get('steps', '-')} | {r.get('images_per_s', '-')} | {cells} "
            f"| {best_cell} | {tuned} |"
        )


def plot_budget_curves(rows: list[dict], path: Path) -> None:
    """Linear top-1 against pretraining steps, one colour per method (``last`` stage solid,
    ``all`` stages dashed), the untrained network's as horizontal lines; saved to ``path``."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    for key, style in (("linear_top1", "-"), ("all_linear_top1", "--")):
        for i, method in enumerate(dict.fromkeys(r["method"] for r in rows)):
            points = sorted(
                (r["steps"], r[key])
                for r in rows
                if r["method"] == method and key in r and "steps" in r
            )
            if points:
                steps, accuracy = zip(*points, strict=True)
                ax.plot(
                    steps,
                    [100 * a for a in accuracy],
                    style + "o",
                    color=f"C{i}",
                    label=f"{method} ({'last' if key == 'linear_top1' else 'all'})",
                )
        for r in rows:
            if r["method"] == "random init" and key in r:
                ax.axhline(
                    100 * r[key],
                    color="gray",
                    linestyle=style,
                    label=f"random init ({'last' if key == 'linear_top1' else 'all'})",
                )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("pretraining steps (batch 256, log scale)")
    ax.set_ylabel("frozen linear top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside, not over, the data
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _setting(text: str) -> tuple[str, Any]:
    """``NAME=JSON`` from ``--set`` as ``(NAME, value)``."""
    name, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected NAME=JSON, got {text!r}")
    try:
        return name, json.loads(value)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"{text!r}: the value is not JSON ({error})") from None


def add_run_arguments(parser: argparse.ArgumentParser, set_help: str) -> None:
    """The arguments both quality benchmarks share: the data, network, batch, method settings
    (``--set``; :func:`parse_run_arguments` collects them in a dict), seed, and
    ``--val-fraction``, the held-out split to score on instead of the test images."""
    parser.add_argument("--data-dir", default="../shared/data/cifar10-jpeg")
    parser.add_argument("--backbone", default="convnet")
    parser.add_argument("--backbone-kwargs", type=json.loads, default={"width": 32, "depth": 4})
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--set", type=_setting, action="append", default=[], help=set_help)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=0.0,
        help="score on this stratified share of the training images, held out of pretraining "
        "and of the classifier's fit, instead of the test images (for choosing settings)",
    )


def parse_run_arguments(parser: argparse.ArgumentParser, argv: list[str] | None) -> Any:
    """``parser.parse_args(argv)`` with ``args.set`` as a dict (a name's last value wins)."""
    args = parser.parse_args(argv)
    args.set = dict(args.set)
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    """Runs the command line ``argv`` (``sys.argv`` by default); returns the rows of ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", action="append", help="a method class name, or 'all'")
    parser.add_argument("--minutes", type=float, default=7.0, help="pretraining budget")
    parser.add_argument("--steps", type=int, default=0, help="a step budget instead of minutes")
    add_run_arguments(
        parser, "a method argument, e.g. BYOL.lr=0.5, or *.lr=0.5 for every method (JSON values)"
    )
    parser.add_argument(
        "--stages",
        action="append",
        type=lambda s: s if s in ("last", "all") else int(s),
        help="features evaluated, repeatable: 'last' (default), 'all' stages concatenated, or "
        "one stage's index",
    )
    parser.add_argument(
        "--fine-tune-steps",
        type=int,
        default=0,
        help="also fine-tune each backbone (and the random init from scratch) for N steps",
    )
    parser.add_argument(
        "--label-fraction",
        type=float,
        default=0.1,
        help="class-balanced share of the training labels the fine-tuning uses",
    )
    parser.add_argument("--no-random-init", action="store_true", help="skip the baseline row")
    parser.add_argument(
        "--plot", type=Path, help="also draw accuracy against steps for every row of --out"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("benchmark_logs/probe_quality/results.jsonl")
    )
    args = parse_run_arguments(parser, argv)
    args.stages = tuple(args.stages or ["last"])
    names = list(METHODS) if "all" in (args.method or []) else (args.method or [])
    unknown = sorted(set(names) - set(METHODS))
    if unknown:
        parser.error(f"unknown method(s) {unknown}; choose from {sorted(METHODS)} or 'all'")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.set_float32_matmul_precision("high")

    jobs: list[str] = names if args.no_random_init else ["random init", *names]
    split = {"batch_size": args.batch_size, "val_fraction": args.val_fraction}
    data = ImageFolderDataModule(args.data_dir, **split)
    few_labels = ImageFolderDataModule(args.data_dir, **split, label_fraction=args.label_fraction)
    if jobs:
        data.setup("fit")  # decodes (or reads the cache) before any clock starts
    setting = {
        "backbone": args.backbone,
        "backbone_kwargs": args.backbone_kwargs,
        "batch_size": args.batch_size,
        "budget": f"{args.steps} steps" if args.steps else f"{args.minutes:g} min",
        **({"set": args.set} if args.set else {}),  # the overrides, so each row can be rerun
        **({"val_fraction": args.val_fraction} if args.val_fraction else {}),
    }
    for name in jobs:
        if name == "random init":
            L.seed_everything(args.seed)
            backbone = create_backbone(args.backbone, **args.backbone_kwargs)
            row = {
                "method": name,
                **evaluate(backbone, data, args.stages),
                **fine_tuned(args, None, few_labels),
            }
        else:
            row = run_method(args, name, data, few_labels)
        with args.out.open("a") as f:
            f.write(json_line({**row, **setting}))
    lines = args.out.read_text().splitlines() if args.out.exists() else []
    rows = [json.loads(line) for line in lines]
    print_table(rows)
    if args.plot is not None:
        plot_budget_curves(rows, args.plot)
        print(f"wrote {args.plot}")
    return rows


if __name__ == "__main__":
    main()
