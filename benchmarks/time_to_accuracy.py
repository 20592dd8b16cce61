"""Time to accuracy: one method pretrained with the frozen evaluation every N steps, logged
against the training wall time, until a target accuracy or a time limit.

Every ``--eval-every`` optimizer steps the training clock stops, the backbone the method exports
is evaluated frozen (:func:`ssl_lightning.evaluation.evaluate_stages`: features of the clean
train and test images, a linear classifier and a kNN classifier), as is each module named by
``--also-evaluate`` (DINO's student ``backbone`` beside its exported teacher), and a row goes to
``--out`` (JSON lines): method, module, step, training seconds (evaluation excluded), images/s
and views/s, linear and kNN top-1. The learning-rate schedule spans ``--max-steps``; the run
stops there, or earlier when the first module's linear top-1 reaches ``--target`` or the
training time passes ``--max-minutes``. The accuracies are scored on the test images, so
the stop is a first crossing on the test set (as time-to-accuracy benchmarks such as
DAWNBench define it): the time it reports is not a held-out number. ``--plot`` draws every
run in ``--out``: accuracy against training minutes (or optimizer steps: ``--plot-x
steps``), one colour per run, and random init + ``--plot-gain`` points as a dotted line.

On one GPU (ResNet-18 on CIFAR-10, the documented target: 90 % linear within one GPU-hour)::

    python benchmarks/time_to_accuracy.py --method EMPSSL --backbone resnet18 \
        --backbone-kwargs '{}' --batch-size 100 --max-steps 15000 --eval-every 500 \
        --target 0.9 --max-minutes 60 --precision bf16-mixed

On a CPU (the README's 4-block conv net; every row of a run is one evaluation)::

    python benchmarks/time_to_accuracy.py --method SimCLR --max-steps 2000 --eval-every 250 \
        --set optimizer='"adamw"' --set lr=5e-3 --set weight_decay=1e-4 --label simclr-adamw
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # `python benchmarks/time_to_accuracy.py` imports its sibling

from benchmarks.probe_overhead import quiet_trainer  # noqa: E402
from benchmarks.probe_quality import add_run_arguments, parse_run_arguments  # noqa: E402
from ssl_lightning import methods  # noqa: E402
from ssl_lightning.datamodules import ImageFolderDataModule  # noqa: E402
from ssl_lightning.evaluation import evaluate_stages  # noqa: E402
from ssl_lightning.methods import SSLMethod  # noqa: E402


class AccuracyClock(L.Callback):
    """Evaluates the exported backbone every ``every`` steps on ``data``, timing training only;
    stops the trainer at ``target`` linear top-1 or after ``max_seconds`` of training."""

    def __init__(
        self,
        data: ImageFolderDataModule,
        every: int,
        target: float,
        max_seconds: float,
        row: dict[str, Any],
        out: Path,
        modules: list[str],
    ) -> None:
        self.data, self.every, self.target, self.max_seconds = data, every, target, max_seconds
        self.row, self.out, self.modules = row, out, modules
        self.trained, self.started = 0.0, 0.0
        self.rows: list[dict[str, Any]] = []

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        self.evaluate(trainer, pl_module, 0)  # the untrained network: the curve's first point
        self.started = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, *_: Any) -> None:
        step = trainer.global_step
        over_time = self.trained + time.perf_counter() - self.started > self.max_seconds
        if step % self.every and not over_time and step != trainer.max_steps:
            return
        self.trained += time.perf_counter() - self.started
        self.evaluate(trainer, pl_module, step)
        self.started = time.perf_counter()

    def evaluate(self, trainer: L.Trainer, model: SSLMethod, step: int) -> None:
        top1 = [self.evaluate_module(model, step, module) for module in self.modules]
        # The exported module's accuracy decides the stop.
        if step and (top1[0] >= self.target or self.trained > self.max_seconds):
            trainer.should_stop = True

    def evaluate_module(self, model: SSLMethod, step: int, module: str) -> float:
        """Evaluates ``model.<module>``, appends its row to ``--out``; returns its linear top-1."""
        backbone = getattr(model, module)
        was_training = backbone.training
        result = evaluate_stages(backbone, self.data)["last"]
        backbone.train(was_training)
        images = step * self.row["batch_size"]
        row = {
            **self.row,
            "module": module,
            "step": step,
            "train_seconds": round(self.trained, 1),
            "images_per_s": round(images / max(self.trained, 1e-9), 1),
            "views_per_s": round(images * self.row["views"] / max(self.trained, 1e-9), 1),
            "linear_top1": result.linear_top1,
            "knn_top1": result.knn_top1,
        }
        self.rows.append(row)
        with self.out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(
            f"  step {step} ({module}): {self.trained:.0f} s training, "
            f"linear {result.linear_top1:.1%}, kNN {result.knn_top1:.1%}",
            flush=True,
        )
        return result.linear_top1


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Pretrains ``args.method`` with the evaluations; returns its rows."""
    L.seed_everything(args.seed)
    data = ImageFolderDataModule(
        args.data_dir, batch_size=args.batch_size, seed=args.seed, val_fraction=args.val_fraction
    )
    data.setup("fit")
    assert data.train_set is not None
    epoch_steps = len(data.train_set) // args.batch_size
    # A warmup of 10 % of the run, as probe_quality.py's (a GPU recipe's epochs of warmup
    # would cover a short run); --set warmup_epochs=... overrides it.
    kwargs = {"warmup_epochs": 0.1 * args.max_steps / epoch_steps, **args.set}
    model = methods.method_classes()[args.method](
        backbone=args.backbone, backbone_kwargs=args.backbone_kwargs, **kwargs
    )
    views = len(
        model.default_corruption()(
            torch.rand(2, 3, 32, 32), torch.zeros(2, dtype=torch.long), torch.Generator()
        ).views
    )
    label = args.label or args.method
    row = {
        "run": label,
        "method": args.method,
        "set": args.set,
        "backbone": args.backbone,
        "backbone_kwargs": args.backbone_kwargs,
        "batch_size": args.batch_size,
        "views": views,
        **({"val_fraction": args.val_fraction} if args.val_fraction else {}),
    }
    modules = [model.export_module, *(m for m in args.also_evaluate if m != model.export_module)]
    for module in modules:
        if not isinstance(getattr(model, module, None), torch.nn.Module):
            raise SystemExit(f"{args.method} has no module {module!r} (--also-evaluate)")
    clock = AccuracyClock(
        data, args.eval_every, args.target, 60 * args.max_minutes, row, args.out, modules
    )
    trainer = quiet_trainer(
        accelerator="auto",
        devices=1,
        default_root_dir=args.out.parent / label,
        limit_val_batches=0,
        max_steps=args.max_steps,
        callbacks=[clock],
        precision=args.precision,
    )
    trainer.fit(model, data)
    return clock.rows


def plot(
    rows: list[dict[str, Any]], path: Path, x: str = "minutes", gain: float = 0.0
) -> dict[str, Any]:
    """Linear (solid) and kNN (dashed) top-1 against training minutes or optimizer steps
    (``x``), one colour per run; ``gain`` > 0 draws the first run's untrained linear top-1
    plus ``gain`` points as a dotted line (a goal such as random init + 15). Returns each
    labelled line's ``[N, 2]`` points (x, top-1 %)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4))
    curves = dict.fromkeys((r["run"], r.get("module")) for r in rows)
    for i, (run, module) in enumerate(curves):
        mine = [r for r in rows if (r["run"], r.get("module")) == (run, module)]
        mine.sort(key=lambda r: r["step"])
        label = run if sum(c[0] == run for c in curves) == 1 else f"{run} ({module})"
        at = [r["train_seconds"] / 60 if x == "minutes" else r["step"] for r in mine]
        ax.plot(at, [100 * r["linear_top1"] for r in mine], "-o", color=f"C{i}", label=label)
        ax.plot(at, [100 * r["knn_top1"] for r in mine], "--", color=f"C{i}")
    if gain > 0:
        untrained = 100 * min(rows, key=lambda r: r["step"])["linear_top1"] + gain
        ax.axhline(untrained, color="k", ls=":", lw=1, label=f"random init + {gain:g}")
    ax.set_xlabel(
        "training wall time (minutes, evaluations excluded)"
        if x == "minutes"
        else "optimizer steps"
    )
    ax.set_ylabel("top-1 (%): linear solid, kNN dashed")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # off the curves
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    labelled = ((str(line.get_label()), line) for line in ax.get_lines())
    return {label: line.get_xydata() for label, line in labelled if not label.startswith("_")}


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Runs the command line ``argv`` (``sys.argv`` by default); returns every row of ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", help="a method class name; leave out to only --plot")
    parser.add_argument("--label", help="the run's name in --out and the plot (the method's)")
    add_run_arguments(
        parser, "a method argument as NAME=JSON, e.g. lr=5e-3 or optimizer='\"adamw\"'"
    )
    parser.add_argument("--eval-every", type=int, default=250, help="steps between evaluations")
    parser.add_argument(
        "--also-evaluate",
        action="append",
        default=[],
        help="another backbone to evaluate beside the exported one, e.g. backbone (DINO's student)",
    )
    parser.add_argument("--target", type=float, default=0.9, help="stop at this linear top-1")
    parser.add_argument("--max-minutes", type=float, default=60.0, help="training time limit")
    parser.add_argument(
        "--max-steps", type=int, default=2000, help="the run's length: its cosine schedule's"
    )
    parser.add_argument("--precision", default="32-true", help="e.g. bf16-mixed on a GPU")
    parser.add_argument("--plot", type=Path, help="draw every run of --out to this PNG")
    parser.add_argument(
        "--plot-x", choices=("minutes", "steps"), default="minutes", help="the plot's x axis"
    )
    parser.add_argument(
        "--plot-gain", type=float, default=0.0, help="draw random init + this many points"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("benchmark_logs/time_to_accuracy/results.jsonl")
    )
    args = parse_run_arguments(parser, argv)
    if args.method and args.method not in methods.method_classes():
        parser.error(
            f"unknown method {args.method!r}; choose from {sorted(methods.method_classes())}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.method:
        run(args)
    rows = (
        [json.loads(line) for line in args.out.read_text().splitlines()]
        if args.out.exists()
        else []
    )
    if args.plot and rows:
        plot(rows, args.plot, args.plot_x, args.plot_gain)
        print(f"plot: {args.plot}")
    return rows


if __name__ == "__main__":
    main()
