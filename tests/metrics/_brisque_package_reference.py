"""Compute the reference numbers of test_brisque_published.py with the `brisque` package itself.

Run once by hand (needs ``pip install brisque opencv-python-headless``, which brings libsvm);
the test suite only reads the printed numbers:

    python tests/metrics/_brisque_package_reference.py

Prints, per test image, the package's 36 features (18 at full scale, then 18 of its half-scale
image) and its score, as a Python literal for ``PACKAGE_REFERENCE`` in the test.
"""

from __future__ import annotations

import numpy as np

from brisque import BRISQUE  # noqa: I001 - the package under comparison

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _brisque_images import reference_images  # noqa: E402


def package_features_and_score(model: BRISQUE, rgb: np.ndarray) -> tuple[list[float], float]:
    """The package's own pipeline (``BRISQUE.score``), keeping its features on the way."""
    import cv2
    import skimage.color

    gray = skimage.color.rgb2gray(rgb)
    full = model.calculate_brisque_features(gray, kernel_size=7, sigma=7 / 6)
    half_image = cv2.resize(gray, None, fx=1 / 2, fy=1 / 2, interpolation=cv2.INTER_CUBIC)
    half = model.calculate_brisque_features(half_image, kernel_size=7, sigma=7 / 6)
    # Some of the package's features are (1,)-arrays in an object array, which its own
    # ``score`` (``float(f)`` of each) cannot convert under numpy >= 2.4 (brisque 0.2.0 fails
    # there); they are turned into floats first, exactly what older numpy did inside ``score``.
    feats = np.array([np.ravel(f)[0] for f in np.concatenate([full, half])], np.float64)
    score = float(model.calculate_image_quality_score(feats))
    return [float(f) for f in feats], score


def main() -> None:
    model = BRISQUE(url=False)
    print("PACKAGE_REFERENCE = {")
    for name, rgb in reference_images().items():
        feats, score = package_features_and_score(model, rgb)
        shown = ", ".join(f"{f:.6g}" for f in feats)
        print(f"    {name!r}: ({score:.4f}, [{shown}]),")
    print("}")


if __name__ == "__main__":
    main()
