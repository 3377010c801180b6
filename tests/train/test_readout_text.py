"""Known answers for the report's text: a hand-built two-fold report's whole Markdown, and each phrase's branch.

``data/readout_two_folds.md`` is the Markdown of :func:`_report` as read and checked line by line: each number is
the report's value in the table's format (one decimal, signs on differences, two decimals for p and SE), each
sentence the branch its interval asks for (above or below 0, holding 0, none with its reason).
"""

from __future__ import annotations

from pathlib import Path

from srf_upsample.train.experiment.readout_text import difference_phrase, readout_markdown, readout_reading

EXPECTED = Path(__file__).parent / "data" / "readout_two_folds.md"


def _stats(n, mean, sd, interval, method, above, p, mde, images=None, seeds=None, more=None, twice=None):
    return {
        "n": n,
        "mean": mean,
        "sd": sd,
        "interval": interval,
        "method": method,
        "above_zero": above,
        "sign_test_p": p,
        "mde": mde,
        "variance": {"images": images, "seeds": seeds},
        "projection": {"more_seeds": more, "twice_images": twice},
    }


def _report():
    folds = [
        {
            "label": "north",
            "path": "runs/north",
            "seeds": [0, 1, 2],
            "images": 8,
            "detections": ["A1", "B"],
            "not_run": {"DySample": [2], "CARAFE": [1, 2]},
            "diverged": ["seed1/E2E-lite", "seed2/E2E-lite"],
            "lineage_excluded": {"seed2/C": "x", "seed2/A5-lite": "x"},
            "schedule_iters": 400,
            "stage2_iters": 150,
        },
        {
            "label": "south",
            "path": "runs/south",
            "seeds": [0],
            "images": None,
            "detections": [],
            "not_run": {},
            "diverged": [],
            "lineage_excluded": {},
            "schedule_iters": 400,
            "stage2_iters": 150,
        },
    ]
    a2 = {
        "arm": "A2-lite",
        "reference": "B",
        "question": "does G alone help?",
        "contrast": None,
        "pooled": _stats(4, 0.3, 0.26, (-0.45, 1.04), "images+seeds", 3, 0.25, 1.34, 0.04, 0.01, 0.71, 0.82),
        "pairs": {"north": {0: 0.2, 1: 0.4, 2: 0.6}, "south": {0: 0.0}},
        "folds": {
            "north": _stats(3, 0.4, 0.2, (-0.1, 0.9), "seeds only", 3, 0.25, 0.7),
            "south": _stats(1, 0.0, 0.0, None, "none", 0, None, None),
        },
    }
    e2e = {
        "arm": "E2E-lite",
        "reference": "A2-lite",
        "question": "does GAN pre-training matter?",
        "contrast": "end to end against G's GAN pre-training; below 0: it helps",
        "pooled": _stats(4, -1.25, 0.5, (-2.04, -0.46), "between folds", 0, 0.125, 0.96, 0.09, None),
        "pairs": {"north": {0: -1.0}, "south": {0: -1.5}},
        "folds": {},
    }
    plus = {
        "arm": "A1+",
        "reference": "C",
        "question": "what does training A1 once more give?",
        "contrast": None,
        "pooled": _stats(1, 0.3, 0.0, None, "none", 1, 1.0, None),
        "pairs": {"north": {0: 0.3}},
        "folds": {},
    }
    dysample = {
        "arm": "A2-lite",
        "reference": "DySample",
        "question": "does G alone help?",
        "contrast": "SRF's G against the light learned peer; above 0: G beats it",
        "pooled": _stats(4, -1.1, 0.6, (-1.96, -0.34), "images+seeds", 1, 0.625, 0.9, 0.05, 0.02, 0.6, 0.5),
        "pairs": {"north": {0: -1.0, 1: -1.2, 2: -0.9}, "south": {0: -1.3}},
        "folds": {},
    }
    b = {
        "arm": "B",
        "reference": "A1",
        "question": "is SRF just bilinear?",
        "contrast": None,
        "pooled": _stats(2, 0.25, 0.35, None, "none", 2, 0.5, None),
        "pairs": {"north": {0: 0.0, 1: 0.5}},
        "folds": {},
    }
    return {"level": 0.95, "replicates": 1000, "seed": 0, "folds": folds, "differences": [a2, dysample, e2e, b, plus]}


def test_two_fold_report_markdown_is_the_checked_text():
    text, reading = readout_markdown(_report(), forest="forest.png")
    assert text + "\n" == EXPECTED.read_text(encoding="utf-8")
    assert reading == readout_reading(_report()) and len(reading) == 7


def test_one_fold_report_has_no_per_fold_table_notes_or_picture():
    report = _report()
    report["folds"] = report["folds"][1:]
    text, _ = readout_markdown(report)
    assert "Per fold" not in text and "Runs outside the pairs" not in text and "![" not in text
    assert "| arm | against | pairs | mean ± sd | 95 % interval |" in text and "| north |" not in text
    assert "from the finished runs of 1 fold(s) (south: `runs/south`, seeds [0], unknown validation images" in text


def test_difference_phrase_turned_around():
    stats = {"n": 12, "mean": 0.4, "interval": (-0.3, 1.1), "method": "images+seeds", "mde": 1.0}
    assert difference_phrase(stats, sign=-1) == (
        "no difference larger than 1.1 AP either way (-0.4 [-1.1, +0.3]; 12 pairs; found at 80 % power: 1.0 AP)"
    )
    stats = {**stats, "mean": 0.9, "interval": (0.2, 1.6), "method": "between folds"}
    assert difference_phrase(stats, sign=-1, above="up", below="down") == (
        "down by 0.9 AP [-1.6, -0.2] (12 pairs; t over fold means; found at 80 % power: 1.0 AP)"
    )
    assert difference_phrase({**stats, "mean": 0.5, "interval": (0.1, 0.9)}).startswith("above by 0.5 AP [+0.1, +0.9]")
    assert difference_phrase({**stats, "interval": (0.0, 1.6)}).startswith("no difference larger than 1.6 AP")
    assert difference_phrase({**stats, "interval": (-1.6, 0.0), "mean": -0.9}).startswith("no difference larger")
