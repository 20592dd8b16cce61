#!/usr/bin/env bash
# The JPEG storage benchmark on a CUDA machine: shard batches decoded with nvJPEG on the GPU
# (decode_jpeg on a list, device="cuda") and SimCLR views made there; the uint8 path moves its
# batches to the GPU first; the PIL baseline stays in CPU workers. Run from the repository root.
set -euo pipefail
python benchmarks/jpeg_storage.py --device cuda --images 4000 --source cifar --batch-size 256 "$@"
python benchmarks/jpeg_storage.py --device cuda --images 4000 --source photos --batch-size 256 "$@"
