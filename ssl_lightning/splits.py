"""Seeded splits of labelled rows: a stratified hold-out, a class-balanced order, and a
class-balanced share of the labels.

Plain torch on the CPU, shared by the datamodules (validation hold-out and order, training
with few labels) and the evaluation (the hold-out that chooses a classifier's weight
decay). :func:`mix_seed` hashes integers into the seeds of these splits, of the epoch
shuffle and of the per-batch corruption generators.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["class_interleaved", "label_subset", "mix_seed", "stratified_holdout"]


def mix_seed(*values: int) -> int:
    """Hashes integers into one 63-bit seed (splitmix64 steps): nearby inputs, unrelated seeds."""
    mask = (1 << 64) - 1
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = ((h ^ (v & mask)) * 0xBF58476D1CE4E5B9) & mask
        h = ((h ^ (h >> 31)) * 0x94D049BB133111EB) & mask
        h ^= h >> 29
    return h >> 1


def stratified_holdout(labels: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Splits rows into ``(keep, held_out)``, holding out ``fraction`` of every class.

    ``round(fraction * N)`` rows are held out in all; each class gives ``fraction`` of its
    rows rounded down, and the rows still missing come from the classes with the largest
    remainders (largest-remainder rounding), so every class is within one row of its exact
    share. Which rows of a class go is a uniformly random choice drawn from ``seed`` alone.

    Args:
        labels: ``[N]`` int labels (``-1`` = unlabeled counts as one class).
        fraction: share to hold out, in ``(0, 1)``.
        seed: seed of the choice; the same seed gives the same split on every run.

    Returns:
        ``([N - K], [K])`` sorted int64 row indices, disjoint, together all ``N`` rows.
    """
    generator = torch.Generator().manual_seed(mix_seed(seed))
    perm = torch.randperm(labels.shape[0], generator=generator)  # [N]
    # Rows grouped by class, in random order within each class.
    grouped = perm[torch.sort(labels[perm], stable=True).indices]  # [N]
    _, counts = torch.unique(labels, sorted=True, return_counts=True)  # [C]
    exact = counts.double() * fraction  # [C]
    take = exact.floor().long()  # [C]
    missing = math.floor(fraction * labels.shape[0] + 0.5) - int(take.sum())
    by_remainder = torch.sort(exact - take, descending=True, stable=True).indices
    take[by_remainder[:missing]] += 1
    starts = torch.cumsum(counts, 0) - counts  # [C]
    spans = zip(starts.tolist(), take.tolist(), strict=True)
    held = torch.cat([grouped[s : s + k] for s, k in spans])
    keep = torch.ones(labels.shape[0], dtype=torch.bool)
    keep[held] = False
    return keep.nonzero()[:, 0], held.sort().values


def class_interleaved(labels: Tensor, seed: int) -> Tensor:
    """A seeded order of the rows in which every prefix is a class-balanced sample.

    Rows are shuffled within each class (from ``seed``), then merged by their position in
    their class: the ``r``-th of ``n_c`` rows of class ``c`` goes at ``(r + 1/2) / n_c`` (the
    Sainte-Lague divisor sequence), classes that tie in a random order. The first ``m`` rows
    then hold every class within about one row of its share ``m * n_c / N``, so
    ``limit_val_batches`` (or any prefix) scores all classes in proportion instead of the
    first ones.

    Args:
        labels: ``[N]`` int labels (``-1`` = unlabeled counts as one class).
        seed: seed of the order; the same seed gives the same order on every run.

    Returns:
        ``[N]`` int64, a permutation of the rows.
    """
    generator = torch.Generator().manual_seed(mix_seed(seed, 1))
    perm = torch.randperm(labels.shape[0], generator=generator)  # [N]
    grouped = perm[torch.sort(labels[perm], stable=True).indices]  # [N], by class
    _, inverse, counts = torch.unique(labels[grouped], return_inverse=True, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts  # [C]
    rank = torch.arange(labels.shape[0]) - starts[inverse]  # [N], position within its class
    key = (rank.double() + 0.5) / counts[inverse].double()  # [N] in (0, 1)
    # Ties (classes of equal size) go in a random class order: sort by it, then stably by key.
    tie_order = torch.randperm(counts.shape[0], generator=generator)[inverse]  # [N]
    by_tie = torch.sort(tie_order, stable=True).indices
    return grouped[by_tie[torch.sort(key[by_tie], stable=True).indices]]


def label_subset(labels: Tensor, fraction: float, seed: int) -> Tensor:
    """Rows of a class-balanced ``fraction`` of the labelled rows: what a user with few labels
    trains a classifier on (1 % or 10 % of ImageNet's labels in the SimCLR and MAE papers).

    Every class keeps ``fraction`` of its rows, within one row (the largest-remainder rounding
    of :func:`stratified_holdout`); unlabelled rows (``-1``) are left out. The choice depends
    on ``seed`` alone and differs from the hold-out :func:`stratified_holdout` draws with the
    same seed.

    Args:
        labels: ``[N]`` int labels, ``-1`` = unlabelled.
        fraction: share of the labelled rows to keep, in ``(0, 1]``.
        seed: seed of the choice.

    Returns:
        ``[K]`` sorted int64 row indices.
    """
    labelled = (labels >= 0).nonzero()[:, 0]  # [L]
    if fraction >= 1.0:
        return labelled
    _, chosen = stratified_holdout(labels[labelled], fraction, mix_seed(seed, 2))
    return labelled[chosen]
