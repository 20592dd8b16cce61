"""``ssl-lightning prepare DIR OUT --size 256``: an image folder as JPEG shards
(:func:`ssl_lightning.datamodules.shard_writer.prepare_shards`), for ``--data.storage jpeg``."""

from __future__ import annotations

import argparse
from pathlib import Path

from ssl_lightning.cli.errors import exit_on_user_error
from ssl_lightning.datamodules.shard_writer import prepare_shards

__all__ = ["main"]


def main(args: list[str] | None = None) -> None:
    """``ssl-lightning prepare DIR OUT [--size 256] [--quality 90] ...``."""
    parser = argparse.ArgumentParser(
        prog="ssl-lightning prepare",
        description=(
            "Write the images of DIR (train/<class>/<image>, optionally test/ or val/) as "
            "shards of JPEG bytes in OUT, shorter side resized to --size, for "
            "`ssl-lightning fit --data ImageFolderDataModule --data.data_dir OUT`: batches are "
            "decoded as they are needed (on the GPU when training on one), nothing before "
            "the first step. Each shard is written whole and renamed into place, checksummed "
            "per image; the manifest is written last. Run the same command again to resume a "
            "run that was stopped: finished shards are kept."
        ),
    )
    parser.add_argument("source", type=Path, help="image folder (DIR/train/<class>/...)")
    parser.add_argument("out", type=Path, help="shard folder to write")
    parser.add_argument("--size", type=int, default=256, help="shorter side in pixels (256)")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality, 1-95 (90)")
    parser.add_argument(
        "--images-per-shard", type=int, default=1000, help="images per shard file (1000)"
    )
    parser.add_argument("--workers", type=int, default=None, help="encoding threads (all CPUs)")
    parser.add_argument(
        "--skip-bad-files",
        action="store_true",
        help="leave out images that cannot be decoded (listed in the manifest)",
    )
    ns = parser.parse_args(args)
    try:
        manifest = prepare_shards(
            ns.source,
            ns.out,
            size=ns.size,
            quality=ns.quality,
            images_per_shard=ns.images_per_shard,
            workers=ns.workers,
            skip_bad_files=ns.skip_bad_files,
        )
    except Exception as err:
        exit_on_user_error(err, "ssl-lightning prepare", 2)
        raise
    print(f"wrote {manifest}")
