"""The ``srf-upsample`` command: dispatches each subcommand to the module that implements it."""

from __future__ import annotations

import sys

__all__ = ["main"]

_USAGE = """usage: srf-upsample <command> [options]

commands:
  train       run a training stage of the paper (srf-upsample train --help)
  experiment  the fair protocol: folds, every arm on one schedule over seeds, a report (srf-upsample experiment --help)
  export      export an upsampler (a name such as carafe, or weights) to ONNX (srf-upsample export --help)
  list        list the shipped pretrained generators
"""


def main(argv: list[str] | None = None) -> int:
    """Run ``srf-upsample <command> ...``; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "train":
        from .train.cli import main as train_main

        return train_main(rest)
    if command == "experiment":
        from .train.experiment import main as experiment_main

        return experiment_main(rest)
    if command == "export":
        from .export import main as export_main

        return export_main(rest)
    if command == "list":
        from .hub import list_shipped

        for name in list_shipped():
            print(name)
        return 0
    print(f"srf-upsample: unknown command {command!r}\n\n{_USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
