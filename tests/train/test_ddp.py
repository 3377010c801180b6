import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import TINY, data_args

from srf_upsample.train.data import epoch_batches


def test_ranks_get_different_images():
    # Pins that DistributedSampler-style sharding gives each rank its own images: equal weights after DDP then
    # prove the all-reduce, not identical data.
    rank0 = {key for batch in epoch_batches(4, 1, epoch=0, seed=0, rank=0, world_size=2) for key in batch}
    rank1 = {key for batch in epoch_batches(4, 1, epoch=0, seed=0, rank=1, world_size=2) for key in batch}
    assert not {i for i, _ in rank0} & {i for i, _ in rank1}


def test_two_process_ddp_keeps_ranks_in_sync(coco, tmp_path):
    worker = Path(__file__).with_name("_ddp_worker.py")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--standalone",  # a free port, so two runs of the suite at once do not collide
        str(worker),
        str(tmp_path),
        *data_args(coco),
        *TINY,
        "--max-iters",
        "2",
        "--batch-size",
        "4",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    rank0 = json.loads((tmp_path / "rank0.json").read_text())
    rank1 = json.loads((tmp_path / "rank1.json").read_text())
    # G and D (stage 1) and the detector with G patched in plus D (stage 2) are identical on both ranks.
    assert rank0 == rank1
    manifest = json.loads((tmp_path / "s2" / "manifest.json").read_text())
    assert len(manifest["rank_parameter_hashes"]) == 2
    assert len(list((tmp_path / "s2" / "checkpoints").glob("step_*/rng_state_1.pt"))) == 1
