"""Helpers for tests that drive the ``flowforge`` command in-process."""

from __future__ import annotations

from flowforge.workbench.cli import main

# the smallest integer flow (IDF) on 128 digits, one epoch: the compression tests' run
TINY_IDF = [
    "train", "--model", "idf", "--layout", "vector", "--no-progress", "--quiet", "--model-kwargs",
    '{"layers": 2, "hidden": [16], "prior_blocks": 2, "prior_hidden": [16]}',
    "--data", "digits", "--epochs", "1", "--limit", "128", "--batch-size", "64",
]  # fmt: skip


def cli(capsys, *args):
    """Run ``flowforge ARGS``; returns ``(exit status, stdout, stderr)``."""
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(rc, err, *needles):
    """The command failed with exactly one line on stderr, no traceback, naming ``needles``."""
    assert rc == 1
    # (warnings said before the error, each its own `flowforge: warning:` line, aside)
    lines = [
        line
        for line in err.splitlines()
        if line.strip() and not line.startswith("flowforge: warning: ")
    ]
    assert len(lines) == 1 and lines[0].startswith("flowforge: error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]


def tiny_moons_run(capsys, out):
    """Train the smallest RealNVP on 64 moons for one epoch into ``out``; returns ``out``."""
    rc, _, err = cli(capsys, "train", "--model", "realnvp", "--data", "moons", "--out", out,
                     "--model-kwargs", '{"layers": 1, "hidden": [4]}', "--limit", 64,
                     "--epochs", 1, "--no-progress", "--quiet")  # fmt: skip
    assert rc == 0, err
    return out


def png_folder(folder, n: int):
    """``folder`` made and filled with ``n`` random 8x8 grey PNGs named ``0.png`` ...
    (an image folder a run can train on)."""
    import numpy as np
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder
