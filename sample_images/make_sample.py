"""Regenerate the bundled sample series ``sample_images/nasicon_synthetic``.

Run from the repository root::

    python sample_images/make_sample.py

It calls :func:`semtrack.data.write_sample`, i.e. :func:`semtrack.synth.make_series`
with :data:`semtrack.data.SAMPLE_PARAMS`, then writes the four frames as Zeiss-like
TIFFs (deflate-compressed) and the ground truth into ``truth/``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from semtrack.data import SAMPLE_NAME, write_sample

if __name__ == "__main__":
    target = Path(__file__).resolve().parent / SAMPLE_NAME
    if target.exists():
        shutil.rmtree(target)
    files = write_sample(target)
    total = sum(f.stat().st_size for f in files)
    for f in files:
        print(f"{f.relative_to(target.parent)}  {f.stat().st_size / 1e3:8.1f} kB")
    print(f"total {total / 1e6:.2f} MB")
