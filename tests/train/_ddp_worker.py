"""Run by test_ddp.py under torchrun: stage 1 then stage 2 on 2 CPU processes (gloo), 2 steps each.

Each rank writes the hash of its own parameters after each stage; the test compares them across ranks.
"""

import json
import os
import sys

import torch.distributed as dist

from srf_upsample.train.cli import parse_config
from srf_upsample.train.distributed import parameter_hash
from srf_upsample.train.loop import fit

if __name__ == "__main__":
    out, *common = sys.argv[1:]
    hashes = {}
    for stage, extra in (("stage1", []), ("stage2", ["--init", os.path.join(out, "s1")])):
        config, _ = parse_config([stage, *common, *extra, "--output-dir", os.path.join(out, "s" + stage[-1])])
        hashes[stage] = parameter_hash(fit(config).modules)
    with open(os.path.join(out, f"rank{os.environ['RANK']}.json"), "w") as f:
        json.dump(hashes, f)
    dist.destroy_process_group()
