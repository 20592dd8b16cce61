"""Training-step throughput: each method's Lightning step against a plain PyTorch loop of the
same model and recipe, and channels-last against contiguous memory format.

Per method, three measurements of the same model (same backbone, heads, optimizer recipe, batch):

- plain: a bare PyTorch loop over batches augmented beforehand: ``pretext_step`` (forward and
  loss), ``backward``, the optimizer's ``step`` and the method's ``after_optimizer_step`` (EMA
  teachers). No Lightning, no augmentation inside the timed step: the model's own cost.
- plain+aug: the same loop with the method's batched augmentation of uint8 images inside the
  timed step, alternating step by step with plain.
- ours: ``Trainer.fit`` over uint8 images in memory, timed from one training batch's start to
  the next, so each step holds the loader, the batched augmentation, the logging and
  Lightning's hooks as well as the model's work.

The plain steps run on a copy of the model inside the Lightning run, after every batch, and
their time is taken out of Lightning's interval: the three alternate step by step, so a busy
machine slows them alike.

``ours / plain`` is the share of the model-only rate a training run keeps; the rest of a step
splits into the augmentation's share (``plain+aug`` against ``plain``) and the
rest (loader, logging, Lightning's hooks: ``ours`` against ``plain+aug``). The channels-last
comparison runs the plain SimCLR step of a conv net and a ResNet-18 in both memory formats,
alternating step by step in one process so a busy machine slows both alike.

    python -m benchmarks.throughput
    python -m benchmarks.throughput --method SimCLR --method BYOL --batch-size 128 --steps 20
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # `python benchmarks/throughput.py` imports its sibling

from benchmarks.probe_overhead import RandomImages, StepTimer, fit_on_random_images  # noqa: E402
from ssl_lightning import methods  # noqa: E402
from ssl_lightning.corruptions import Corruption, corrupt_batch  # noqa: E402
from ssl_lightning.datamodules import Batch  # noqa: E402
from ssl_lightning.methods import SimCLR, SSLMethod  # noqa: E402
from ssl_lightning.optim import build_optimizer  # noqa: E402

METHODS = methods.method_classes()
# MAE encodes visible patches: it needs a ViT; every other method runs on the conv net.
BACKBONES: dict[str, tuple[str, dict[str, Any]]] = {
    "conv": ("convnet", {"width": 32, "depth": 4}),
    "vit": ("vit_tiny", {"dim": 96, "depth": 4, "num_heads": 3}),
}
CHANNELS_LAST_BACKBONES: dict[str, tuple[str, dict[str, Any]]] = {
    "convnet (width 32, depth 4)": ("convnet", {"width": 32, "depth": 4}),
    "resnet18 (width 16)": ("resnet18", {"width": 16}),
}


def build(name: str, **kwargs: Any) -> SSLMethod:
    """``name``'s method with the benchmark backbone (a ViT for MAE, else the conv net)."""
    backbone, backbone_kwargs = BACKBONES["vit" if name == "MAE" else "conv"]
    kwargs.setdefault("backbone", backbone)
    kwargs.setdefault("backbone_kwargs", backbone_kwargs)
    return METHODS[name](**kwargs)


def corrupt(corruption: Corruption, images: Tensor, generator: torch.Generator) -> Batch:
    """``corruption`` of uint8 ``images`` [B, 3, H, W], then normalized: the datamodule's work
    (:func:`~ssl_lightning.corruptions.corrupt_batch` with the training run's statistics)."""
    labels = torch.arange(len(images)) % 10
    return corrupt_batch(corruption, images, labels, generator, RandomImages.mean, RandomImages.std)


def random_images(batch_size: int, generator: torch.Generator) -> Tensor:
    """``[batch_size, 3, 32, 32]`` random uint8 images."""
    return torch.randint(0, 256, (batch_size, 3, 32, 32), dtype=torch.uint8, generator=generator)


def augmented_batches(model: SSLMethod, batch_size: int, count: int, seed: int = 0) -> list[Batch]:
    """``count`` batches of ``model``'s default corruption of random 32x32 images."""
    generator = torch.Generator().manual_seed(seed)
    corruption = model.default_corruption()
    return [
        corrupt(corruption, random_images(batch_size, generator), generator) for _ in range(count)
    ]


def plain_step(model: SSLMethod) -> Callable[[Batch], None]:
    """One plain PyTorch training step of ``model`` with its optimizer recipe (no schedule)."""
    model.setup("fit")  # channels-last conversion, as Lightning's setup does
    model.train()
    optimizer = build_optimizer(
        model.optimizer_name,
        model.configure_param_groups(),
        model.lr,
        momentum=model.momentum,
        betas=model.betas,
        lars_eta=model.lars_eta,
        lars_clip=model.lars_clip,
    )

    def step(batch: Batch) -> None:
        loss = model.pretext_step(batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        model.after_optimizer_step()

    return step


def timed(step: Callable[[Batch], None], batch: Batch) -> float:
    start = time.perf_counter()
    step(batch)
    return time.perf_counter() - start


class InterleavedPlainSteps(StepTimer):
    """Runs a plain PyTorch step of a copy of the model after every Lightning training batch,
    once on a batch augmented beforehand (the model's own cost) and once augmenting uint8
    images inside the timed step, so all three are measured alternating, under the same load.

    Lightning's own step is the interval between consecutive batch starts (loader,
    augmentation, step, hooks) minus the two plain steps run inside it.
    """

    def __init__(self, model: SSLMethod, batch_size: int) -> None:
        generator = torch.Generator().manual_seed(0)
        corruption = model.default_corruption()
        images = random_images(batch_size, generator)
        batches = augmented_batches(model, batch_size, 2)
        step = plain_step(model)

        def augment_and_step(_: Batch) -> None:
            step(corrupt(corruption, images, generator))

        super().__init__()
        self.steps = (step, augment_and_step)
        self.batches = batches
        self.plain: list[tuple[float, float]] = []  # (model only, with augmentation) per batch

    def on_train_batch_end(self, *args: Any) -> None:
        batch = self.batches[len(self.plain) % 2]
        self.plain.append((timed(self.steps[0], batch), timed(self.steps[1], batch)))

    def times(self, warmup: int) -> tuple[list[float], list[float], list[float]]:
        """Seconds per step after ``warmup``: plain, plain with augmentation, ours."""
        plain = self.plain[warmup:]
        ours = [step - sum(p) for step, p in zip(self.step_times(warmup), plain, strict=True)]
        return [p[0] for p in plain], [p[1] for p in plain], ours


def method_throughput(
    names: list[str], batch_size: int, steps: int, warmup: int = 2
) -> dict[str, dict[str, float]]:
    """Images/s of each method's plain step (without and with augmentation) and Lightning step,
    measured alternating in one run, and the shares of the Lightning step that augmentation and
    the rest take."""
    results = {}
    for name in names:
        torch.manual_seed(0)
        model = build(name, warmup_epochs=0)
        interleaved = InterleavedPlainSteps(copy.deepcopy(model), batch_size)
        fit_on_random_images(model, batch_size, steps + warmup, [interleaved])
        plain, augmented, ours = (statistics.median(t) for t in interleaved.times(warmup))
        results[name] = {
            "plain img/s": batch_size / plain,
            "plain+aug img/s": batch_size / augmented,
            "ours img/s": batch_size / ours,
            "ours/plain": plain / ours,
            "ours/plain+aug": augmented / ours,
            "augmentation share": (augmented - plain) / ours,
        }
        print(
            f"{name:<20} plain {batch_size / plain:>6.0f} img/s   +aug "
            f"{batch_size / augmented:>6.0f}   ours {batch_size / ours:>6.0f}   ours/plain "
            f"{plain / ours:.0%}   ours/(plain+aug) {augmented / ours:.0%}   of a step: "
            f"augmentation {(augmented - plain) / ours:.0%}, the rest {1 - augmented / ours:.0%}"
        )
    return results


def channels_last_comparison(
    batch_size: int, steps: int, warmup: int = 2
) -> dict[str, dict[str, float]]:
    """Plain SimCLR steps per second in both memory formats, alternating step by step."""
    results = {}
    for label, (backbone, kwargs) in CHANNELS_LAST_BACKBONES.items():
        torch.manual_seed(0)
        model = SimCLR(backbone=backbone, backbone_kwargs=kwargs, channels_last=False)
        fast = copy.deepcopy(model)
        fast.channels_last = True
        steps_by_format = {False: plain_step(model), True: plain_step(fast)}
        batches = augmented_batches(model, batch_size, 2)
        times: dict[bool, list[float]] = {False: [], True: []}
        for i in range(steps + warmup):
            for fmt, step in steps_by_format.items():
                seconds = timed(step, batches[i % 2])
                if i >= warmup:
                    times[fmt].append(seconds)
        contiguous, channels_last = (statistics.median(times[f]) for f in (False, True))
        results[label] = {
            "contiguous img/s": batch_size / contiguous,
            "channels_last img/s": batch_size / channels_last,
            "speed-up": contiguous / channels_last,
        }
        print(
            f"{label:<28} contiguous {batch_size / contiguous:>6.0f} img/s   channels_last "
            f"{batch_size / channels_last:>6.0f} img/s   speed-up {contiguous / channels_last:.2f}x"
        )
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", action="append", help="a method class name (default: all)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per measurement")
    parser.add_argument("--no-channels-last", action="store_true", help="skip that comparison")
    args = parser.parse_args(argv)
    names = args.method or list(METHODS)
    unknown = sorted(set(names) - set(METHODS))
    if unknown:
        parser.error(f"unknown method(s) {unknown}; choose from {sorted(METHODS)}")
    print(f"CPU, {torch.get_num_threads()} torch threads, batch {args.batch_size}, 32x32")
    method_throughput(names, args.batch_size, args.steps)
    if not args.no_channels_last:
        channels_last_comparison(args.batch_size, args.steps)


if __name__ == "__main__":
    main()
