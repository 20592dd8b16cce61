"""Label-free collapse monitors: the effective rank (RankMe) and the per-dimension std of the
embeddings, over the rows of all ranks."""

from __future__ import annotations

from torch import Tensor

from ssl_lightning.backbones.stages import Stages
from ssl_lightning.callbacks.embeddings import EmbeddingMonitor
from ssl_lightning.collapse import embedding_std, rankme

__all__ = ["EmbeddingStd", "RankMe"]


class RankMe(EmbeddingMonitor):
    """RankMe, the effective rank of the embeddings, as a monitor (logs ``<prefix>/val_rankme``).

    Garrido et al., "RankMe: Assessing the downstream performance of pretrained
    self-supervised representations by their rank", ICML 2023
    (https://arxiv.org/abs/2210.02885): ``exp`` of the entropy of the normalized singular
    values of the ``[N, D]`` embedding matrix (:func:`ssl_lightning.collapse.rankme`, in
    float64 over the rows of all ranks). About 1 when every embedding is the same (complete
    collapse), up to ``min(N, D)`` when all directions are used; within a method, a higher
    rank tends to go with better linear-probe accuracy. The paper uses 25,600 rows.

    Args:
        eps: the paper's smoothing term added to each normalized singular value.
        max_samples, head, stages, prefix, every_n_train_steps: see :class:`EmbeddingMonitor`.

    Examples:
        >>> backbone, projector = RankMe(), RankMe(head="projector", prefix="collapse_proj")
        >>> trainer = L.Trainer(callbacks=[backbone, projector])  # doctest: +SKIP
    """

    def __init__(
        self,
        eps: float = 1e-7,
        max_samples: int | None = 25_600,
        head: str | None = None,
        stages: Stages = "last",
        prefix: str = "collapse",
        every_n_train_steps: int | None = None,
    ) -> None:
        super().__init__(max_samples, head, stages, prefix, every_n_train_steps)
        if eps < 0:
            raise ValueError(f"RankMe: eps must be >= 0, got {eps}")
        self.eps = eps

    def statistics(self, rows: Tensor) -> dict[str, Tensor]:
        return {"rankme": rankme(rows, self.eps, gather_distributed=True)}


class EmbeddingStd(EmbeddingMonitor):
    """The std of the L2-normalized embeddings per dimension, as a monitor.

    Chen and He, "Exploring Simple Siamese Representation Learning", CVPR 2021
    (https://arxiv.org/abs/2011.10566), section 4.1 (:func:`ssl_lightning.collapse.embedding_std`,
    over the rows of all ranks). Logs ``<prefix>/val_std``, the mean over dimensions (about
    ``1 / sqrt(D)`` for healthy embeddings, 0 for collapsed ones), and
    ``<prefix>/val_collapsed_dims``, the fraction of dimensions whose std is below
    ``threshold / sqrt(D)`` (dimensional collapse).

    Args:
        threshold: a dimension counts as collapsed below ``threshold / sqrt(D)``.
        max_samples, head, stages, prefix, every_n_train_steps: see :class:`EmbeddingMonitor`.

    Examples:
        >>> trainer = L.Trainer(callbacks=[EmbeddingStd(threshold=0.1)])  # doctest: +SKIP
    """

    def __init__(
        self,
        threshold: float = 0.1,
        max_samples: int | None = 25_600,
        head: str | None = None,
        stages: Stages = "last",
        prefix: str = "collapse",
        every_n_train_steps: int | None = None,
    ) -> None:
        super().__init__(max_samples, head, stages, prefix, every_n_train_steps)
        if threshold < 0:
            raise ValueError(f"EmbeddingStd: threshold must be >= 0, got {threshold}")
        self.threshold = threshold

    def statistics(self, rows: Tensor) -> dict[str, Tensor]:
        std, collapsed = embedding_std(rows, self.threshold, gather_distributed=True)
        return {"std": std, "collapsed_dims": collapsed}
