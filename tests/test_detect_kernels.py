"""The pixel-box ⊗ Gaussian kernels of the bead model (:func:`rsa.detect_refine._kernels`).

Ground truth: each entry is the fraction of a Gaussian (σ, centred on a sub-grid point) that
falls in a pixel, divided by the sub-samples per pixel — written here with ``math.erf`` per
entry, independently of the lattice the function evaluates the normal CDF on; the derivatives
against central differences of that formula.
"""

import math

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from rsa.detect_refine import _kernels, noise_blur


def _entry(lo: float, hi: float, mu: float, sigma: float, sub: int) -> float:
    z = sigma * math.sqrt(2.0)
    return 0.5 * (math.erf((hi - mu) / z) - math.erf((lo - mu) / z)) / sub


@pytest.mark.parametrize("sub", [1, 2, 3, 8])
def test_kernels_match_pixel_integrals(sub):
    rng = np.random.default_rng(sub)
    n_beads, width = 4, 15
    n = int(np.ceil(4.7 * sub))
    g = np.arange(-n, n + 1) / sub
    pix = (rng.integers(-5, 3000, n_beads)[:, None] + np.arange(width)).astype(float)
    centre = pix[:, width // 2] + rng.uniform(-0.5, 0.5, n_beads)
    sigma = rng.uniform(0.3, 1.6, n_beads)
    K, dK_dc, dK_dls = _kernels(centre, sigma, pix, g, sub, True)
    assert K.shape == dK_dc.shape == dK_dls.shape == (n_beads, width, len(g))
    h = 1e-5
    for i in range(n_beads):
        for j in rng.integers(0, width, 6):
            for m in rng.integers(0, len(g), 6):
                lo, hi = pix[i, j] - 0.5, pix[i, j] + 0.5

                def k(c, s, lo=lo, hi=hi, m=m):
                    return _entry(lo, hi, c + g[m], s, sub)

                assert K[i, j, m] == pytest.approx(k(centre[i], sigma[i]), abs=1e-13)
                d_c = (k(centre[i] + h, sigma[i]) - k(centre[i] - h, sigma[i])) / (2 * h)
                d_ls = (k(centre[i], sigma[i] * math.exp(h))
                        - k(centre[i], sigma[i] * math.exp(-h))) / (2 * h)
                assert dK_dc[i, j, m] == pytest.approx(d_c, rel=1e-6, abs=1e-9)
                assert dK_dls[i, j, m] == pytest.approx(d_ls, rel=1e-6, abs=1e-9)
    # summed over the window, each sub-grid point's kernel is the Gaussian's mass inside the
    # window's outer boundaries (every inner boundary cancels)
    for i in range(n_beads):
        lo, hi = pix[i, 0] - 0.5, pix[i, -1] + 0.5
        mass = [_entry(lo, hi, centre[i] + gm, sigma[i], sub) for gm in g]
        assert np.allclose(K[i].sum(axis=0), mass, rtol=0, atol=1e-13)
    only = _kernels(centre, sigma, pix, g, sub, False)
    assert len(only) == 1
    assert np.array_equal(only[0], K)


@pytest.mark.parametrize("blur", [0.4, 0.8, 1.2])
def test_noise_blur_recovers_the_blur_of_white_noise(blur):
    """White noise blurred by a Gaussian of known σ (on a level background): the noise
    correlation's σ_n is that σ. Over 5 draws of such a 1000 × 1000 image its SD was
    0.0006–0.0019 px; 0.01 px is 5× the largest."""
    rng = np.random.default_rng(int(10 * blur))
    image = gaussian_filter(rng.normal(size=(1000, 1000)), blur) + 50.0
    assert abs(noise_blur(image) - blur) <= 0.01
