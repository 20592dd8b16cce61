"""Host memory of the in-memory datamodules, measured in a fresh process."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

_MEMORY_SCRIPT = textwrap.dedent(
    """
    import gc, json, os, pickle, sys
    from pathlib import Path

    import numpy as np
    from torchvision import datasets
    from torchvision.datasets.utils import calculate_md5

    # Full-size CIFAR-10 batches (random pixels), extracted, with their md5 sums.
    folder = Path(sys.argv[1]) / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        entry = {"data": rng.integers(0, 256, (10000, 3072), dtype=np.uint8),
                 "labels": rng.integers(0, 10, 10000).tolist()}
        (folder / name).write_bytes(pickle.dumps(entry))
        del entry
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": list("abcdefghij")}))
    md5 = {n: calculate_md5(str(folder / n)) for n in [*names, "batches.meta"]}
    datasets.CIFAR10.train_list = [[n, md5[n]] for n in names[:5]]
    datasets.CIFAR10.test_list = [["test_batch", md5["test_batch"]]]
    datasets.CIFAR10.meta = {"filename": "batches.meta", "key": "label_names",
                             "md5": md5["batches.meta"]}

    from ssl_lightning.datamodules import CIFAR10DataModule

    def rss():
        return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    gc.collect()
    before = rss()
    dm = CIFAR10DataModule(sys.argv[1], download=False)
    dm.setup("fit")
    gc.collect()
    sets = [dm.train_set, dm.val_set]
    print(json.dumps({
        "rss_mb": (rss() - before) / 1e6,
        "storage_bytes": [s.source_images.untyped_storage().nbytes() for s in sets],
        "shapes": [list(s.images.shape) for s in sets],
    }))
    """
)


def test_cifar10_train_and_test_fit_in_250_mb_as_one_uint8_copy(tmp_path: Path) -> None:
    """Full-size CIFAR-10 (60,000 images) in a fresh process: 184 MB of pixels, no 2nd copy."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    out = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["shapes"] == [[50000, 3, 32, 32], [10000, 3, 32, 32]]
    assert result["storage_bytes"] == [50000 * 3072, 10000 * 3072]  # exactly the pixels
    assert result["rss_mb"] < 250, result
