"""Share a generator through the Hugging Face Hub, and load it back (offline-friendly).

- ``save_pretrained(folder)`` writes ``config.json`` + ``model.safetensors`` (+ a model card);
- ``push_to_hub(repo_id)`` uploads that folder (needs network and ``huggingface-cli login``; only with ``--push``);
- ``from_pretrained(repo_id, revision=...)`` downloads into the Hub cache once, then works with ``HF_HUB_OFFLINE=1``.

Without ``--push`` this script runs offline: it saves a shipped generator to a folder, fills a Hub cache with it the
way a download would, and loads it by repo id with ``HF_HUB_OFFLINE=1``.

Usage: ``python examples/hub_push_load.py [--push --repo-id you/srf-lite]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

import torch

DEMO_COMMIT = "0" * 40


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="srf-lite-mobilenetv2-fpn", help="shipped name, folder or repo id to share")
    parser.add_argument("--repo-id", default="your-name/srf-lite-mobilenetv2-fpn")
    parser.add_argument("--push", action="store_true", help="really upload (network and a Hub token needed)")
    args = parser.parse_args(argv)

    from srf_upsample import SRFUpsample

    generator = SRFUpsample.from_pretrained(args.name)
    work = Path(tempfile.mkdtemp())
    generator.save_pretrained(work / "folder")
    print("saved:", sorted(p.name for p in (work / "folder").iterdir()))
    if args.push:
        print("pushed:", generator.push_to_hub(args.repo_id))
        loaded = SRFUpsample.from_pretrained(args.repo_id, revision="main")
    else:
        # What a download leaves in the cache: models--owner--name/snapshots/<commit>/ and refs/main.
        repo_dir = work / "hub" / f"models--{args.repo_id.replace('/', '--')}"
        shutil.copytree(work / "folder", repo_dir / "snapshots" / DEMO_COMMIT)
        (repo_dir / "refs").mkdir()
        (repo_dir / "refs" / "main").write_text(DEMO_COMMIT)
        os.environ["HF_HUB_OFFLINE"] = "1"
        import huggingface_hub.constants

        huggingface_hub.constants.HF_HUB_OFFLINE = True
        loaded = SRFUpsample.from_pretrained(args.repo_id, cache_dir=work / "hub", revision="main")
    x = torch.randn(1, 256, 17, 25)
    with torch.no_grad():
        same = torch.equal(loaded(x, size=(33, 49)), generator(x, size=(33, 49)))
    print(f"loaded {args.repo_id!r} back: identical outputs = {same}")
    shutil.rmtree(work)
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
