"""Our own no-reference quality score, fitted on a graded distortion set (never "BRISQUE").

The published BRISQUE (Mittal et al. 2012) is :func:`jaxmri.metrics.brisque_score`: an SVR from
the 36 BRISQUE features (:func:`jaxmri.metrics.brisque_features`) to human opinion scores of
the LIVE photographs. Paper 001 retrained that SVR on 900 MR images with opinion scores, which
are not available; this module fits an SVR on MR images with OUR labels instead:

* :func:`graded_distortions` builds a graded set from clean images: each image gets one of three
  distortions at a known level ``l`` in ``[0, 1]``: Gaussian blur (``sigma = 2.5 l`` pixels),
  Rician noise (``sigma = 0.08 l`` of the [0, 1] range) or ringing (k-space truncation keeping
  ``1 - 0.7 l`` of each axis, no window). The label is ``100 l``: 0 for a clean image, 100 for
  the strongest distortion (like BRISQUE, lower is better).
* :func:`fit_quality_regressor` fits an RBF-kernel epsilon-SVR (scikit-learn) on the
  standardised 36 features of that set; :meth:`QualityRegressor.score` predicts the score of new
  images.

The score measures how far an image's natural-scene statistics look from the clean images the
set was built from, along the blur/noise/ringing directions only. It is a data-specific proxy.
Images are real ``(N, H, W)`` float in ``[0, data_range]``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxmri._checks import check_ndim, check_positive

__all__ = ["graded_distortions", "QualityRegressor", "fit_quality_regressor"]

DISTORTIONS = ("blur", "noise", "ringing")


def _ring(image: np.ndarray, keep: float) -> np.ndarray:
    height, width = image.shape[-2:]
    k = np.fft.fftshift(np.fft.fft2(image), axes=(-2, -1))
    ky = np.abs(np.arange(height) - height // 2) <= keep * height / 2
    kx = np.abs(np.arange(width) - width // 2) <= keep * width / 2
    k = k * (ky[:, None] & kx[None, :])
    return np.abs(np.fft.ifft2(np.fft.ifftshift(k, axes=(-2, -1))))


def graded_distortions(rng: np.random.Generator, images: np.ndarray, *,
                       levels: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Every image under every distortion type at every level.

    Args:
      rng: numpy Generator (noise).
      images: clean ``(N, H, W)`` float in ``[0, 1]``.
      levels: distortion levels in ``[0, 1]``.

    Returns:
      ``(distorted (N * 3 * L, H, W) float32, labels (N * 3 * L,) float64 = 100 * level)``.
    """
    from scipy.ndimage import gaussian_filter

    check_ndim(images, "images", ndim=3)
    if any(not 0.0 <= lv <= 1.0 for lv in levels):
        raise ValueError(f"levels must lie in [0, 1], got {levels}")
    out, labels = [], []
    for image in np.asarray(images, np.float64):
        for kind in DISTORTIONS:
            for level in levels:
                if level == 0.0:
                    distorted = image
                elif kind == "blur":
                    distorted = gaussian_filter(image, 2.5 * level)
                elif kind == "noise":
                    s = 0.08 * level
                    distorted = np.hypot(image + s * rng.standard_normal(image.shape),
                                         s * rng.standard_normal(image.shape))
                else:
                    distorted = _ring(image, 1.0 - 0.7 * level)
                out.append(distorted)
                labels.append(100.0 * level)
    return np.asarray(out, np.float32), np.asarray(labels)


@dataclasses.dataclass(frozen=True)
class QualityRegressor:
    """A fitted SVR on standardised BRISQUE features (see the module docstring)."""

    model: object
    data_range: float

    def score(self, images: np.ndarray) -> np.ndarray:
        """Score ``(N, H, W)`` images; ``(N,)`` float64, ~0 clean-like, ~100 strongly distorted."""
        from jaxmri.metrics import brisque_features

        check_ndim(images, "images", ndim=3)
        feats = np.asarray(brisque_features(np.asarray(images, np.float32),
                                            data_range=self.data_range))
        return np.asarray(self.model.predict(feats), np.float64)


def fit_quality_regressor(images: np.ndarray, labels: np.ndarray, *, data_range: float = 1.0,
                          c: float = 100.0, epsilon: float = 1.0) -> QualityRegressor:
    """Fit the RBF epsilon-SVR (``C = c``, ``epsilon``) from BRISQUE features to ``labels``."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVR

    from jaxmri.metrics import brisque_features

    check_ndim(images, "images", ndim=3)
    if np.shape(labels) != (len(images),):
        raise ValueError(f"labels must have shape ({len(images)},), got {np.shape(labels)}")
    check_positive(data_range, "data_range")
    check_positive(c, "c")
    feats = np.asarray(brisque_features(np.asarray(images, np.float32), data_range=data_range))
    model = make_pipeline(StandardScaler(), SVR(kernel="rbf", C=c, epsilon=epsilon))
    model.fit(feats, np.asarray(labels, np.float64))
    return QualityRegressor(model=model, data_range=data_range)
