"""The deterministic test images on which jaxmri's BRISQUE is compared with the `brisque` package.

The package ships no example images, so these are scikit-image's bundled sample images, an
embedded MNI152 slice and two distorted versions of ``camera``. Each is an RGB array the
package's ``BRISQUE.score`` accepts (it converts with ``skimage.color.rgb2gray``); jaxmri is given
the same gray image (``gray_image``).
"""

from __future__ import annotations

import numpy as np


def _rgb(gray01: np.ndarray) -> np.ndarray:
    return np.repeat(np.asarray(gray01, np.float64)[..., None], 3, axis=-1)


def reference_images() -> dict[str, np.ndarray]:
    """``name -> (H, W, 3)`` image (uint8 or float64 in [0, 1])."""
    import skimage.data
    from scipy.ndimage import gaussian_filter

    from jaxmri.data import load_slices

    camera = skimage.data.camera().astype(np.float64) / 255.0
    noise = np.random.default_rng(0).standard_normal(camera.shape)
    mni = load_slices(None, image_size=128, split="test", orientations=("sagittal",))["image"][0]
    return {
        "astronaut": skimage.data.astronaut(),
        "camera": _rgb(camera),
        "coins": _rgb(skimage.data.coins() / 255.0),  # 303 x 384: odd height at half scale
        "camera_blur": _rgb(gaussian_filter(camera, 2.0)),
        "camera_noise": _rgb(np.clip(camera + 0.05 * noise, 0.0, 1.0)),
        "mni_slice": _rgb(mni),
    }


def gray_image(rgb: np.ndarray) -> np.ndarray:
    """The package's gray conversion (``skimage.color.rgb2gray``): ``(H, W)`` float64 in [0, 1]."""
    import skimage.color

    return skimage.color.rgb2gray(rgb)
