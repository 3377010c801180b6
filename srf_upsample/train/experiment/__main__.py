"""``python -m srf_upsample.train.experiment``: the same as ``srf-upsample experiment``."""

from .cli import main

raise SystemExit(main())
