"""Tests of the physical radiograph renderer (rsa.synthetic.render, chords, background).

Ground truth comes from geometry: the exact pinhole projection, Gauss–Legendre quadrature of the
sphere volume mapped onto the detector (independent of the renderer's ray casting), analytic
chords of spheres and capsules, and the Poisson statistics of the injected quanta.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from numpy.polynomial.legendre import leggauss

from rsa.errors import ShapeError
from rsa.synthetic.background import anatomy_attenuation
from rsa.synthetic.chords import capsule_chords, sphere_chords
from rsa.synthetic.geometry import look_at_view
from rsa.synthetic.materials import MU_TANTALUM_PER_MM, MU_TITANIUM_PER_MM
from rsa.synthetic.render import (
    Capsule,
    RenderOptions,
    display_scale,
    display_variance,
    render_expected,
    render_view,
)

CLEAN = RenderOptions(background=False, noise=False)


def tube_view(shape=(600, 600), spacing=0.1, angle_deg=20.0, fd=1500.0):
    """Detector in the plane z = 0, tube tilted by `angle_deg` about y (uniplanar RSA)."""
    a = np.deg2rad(angle_deg)
    return look_at_view(focus_mm=[fd * np.sin(a), 0.0, fd * np.cos(a)],
                        detector_centre_mm=[0.0, 0.0, 0.0], up=[0.0, 1.0, 0.0],
                        detector_normal=[0.0, 0.0, 1.0], pixel_spacing_mm=spacing, shape=shape)


def points_over(view, uv, heights):
    """Lab points at `heights` (mm above the detector plane z = 0) that project to `uv`."""
    p = view.detector_point(np.asarray(uv, float))
    h_focus = view.focus_mm[2] - p[:, 2]
    return p + (np.asarray(heights, float) / h_focus)[:, None] * (view.focus_mm - p)


def weighted_centroid(img, uv, half):
    iu, iv = (round(float(x)) for x in uv)
    w = img[iv - half:iv + half + 1, iu - half:iu + half + 1]
    yy, xx = np.mgrid[iv - half:iv + half + 1, iu - half:iu + half + 1]
    return np.array([(w * xx).sum(), (w * yy).sum()]) / w.sum(), w.sum()


def projected_moments(view, centre, radius, n=24):
    """∫ L dA over the detector and the L-weighted centroid (px) of one sphere, by quadrature.

    With X = F + t·(x − F)/|x − F| the volume element is dV = t² cosγ / |x − F|² dt dA, so
    ∫ g(x) L(x) dA = ∫ g(p(X)) |x − F|² / (|X − F|² cosγ) dV: a smooth integrand over the ball,
    integrated with Gauss–Legendre in radius and polar cosine and the trapezoid rule in azimuth.
    """
    x, wx = leggauss(n)
    rho = (x + 1) / 2 * radius
    w_rho = wx * radius / 2 * rho**2
    ct, w_ct = leggauss(n)
    phi = np.linspace(0, 2 * np.pi, 2 * n, endpoint=False)
    R, CT, PH = np.meshgrid(rho, ct, phi, indexing="ij")
    W = w_rho[:, None, None] * w_ct[None, :, None] * (np.pi / n)
    s = np.sqrt(1 - CT**2)
    X = centre + np.stack([R * s * np.cos(PH), R * s * np.sin(PH), R * CT], axis=-1)
    uv = view.project(X)
    dP = view.detector_point(uv) - view.focus_mm
    cos_g = np.abs(dP @ view.normal) / np.linalg.norm(dP, axis=-1)
    w = W * np.sum(dP**2, -1) / (np.sum((X - view.focus_mm) ** 2, -1) * cos_g)
    return w.sum(), (w[..., None] * uv).sum(axis=(0, 1, 2)) / w.sum()


# -- geometry of single beads ---------------------------------------------------------------

def test_bead_centroid_within_002_px_of_projection(rng):
    view = tube_view(shape=(800, 800))
    n = 12  # on a grid (windows must not overlap) with random sub-pixel positions and heights
    grid = np.stack(np.meshgrid(np.linspace(100, 700, 4), np.linspace(150, 650, 3)), -1)
    uv = grid.reshape(-1, 2) + rng.uniform(-0.5, 0.5, (n, 2))
    centres = points_over(view, uv, rng.uniform(10, 300, n))
    radii = rng.choice([0.4, 0.5], n)
    out = render_view(view, centres, radii, options=CLEAN)
    air = render_expected(view, np.zeros((0, 3)), np.zeros(0), options=CLEAN).display[0, 0]
    offsets = []
    for i in range(n):
        c, _ = weighted_centroid(out.image.astype(float) - air, out.uv_px[i], 15)
        offsets.append(projected_moments(view, centres[i], radii[i])[1] - out.uv_px[i])
        # Issue 4: within 0.02 px of the exact central projection at zero noise.
        assert np.all(np.abs(c - out.uv_px[i]) <= 0.02), (i, c - out.uv_px[i])
    # The perspective offset of such small beads is far below the tolerance (it cannot be the
    # reason for a failure): < 0.002 px here.
    assert np.max(np.abs(offsets)) < 0.002


def test_linear_domain_centroid_matches_perspective_model(rng):
    # The display is a log of pixel-integrated intensity; the log of a partly covered pixel is
    # not linear in its coverage, which locks log-domain centroids towards pixel centres by up to
    # ~0.01 px for sharp tantalum edges (physical: real detectors integrate intensity too). In
    # the linear domain (absorbed fraction 1 − I/I0) pixel integration preserves the first
    # moment, so the centroid must agree with the perspective model up to the pixel-sampling
    # remainder (~1e-3 px): assert 0.005 px, a quarter of the 0.02 px.
    view = tube_view(shape=(800, 800))
    grid = np.stack(np.meshgrid(np.linspace(100, 700, 4), np.linspace(150, 650, 3)), -1)
    uv = grid.reshape(-1, 2) + rng.uniform(-0.5, 0.5, (12, 2))
    centres = points_over(view, uv, rng.uniform(10, 300, 12))
    radii = rng.choice([0.4, 0.5], 12)
    opt = RenderOptions(background=False, noise=False)
    e = render_expected(view, centres, radii, options=opt)
    absorbed = 1.0 - e.quanta / opt.photons_per_pixel
    for i in range(12):
        c, _ = weighted_centroid(absorbed, e.uv_px[i], 15)
        expected = projected_moments(view, centres[i], radii[i])[1]
        assert np.all(np.abs(c - expected) < 0.005), (i, c - expected)


def test_perspective_offset_explains_the_remainder():
    # A large sphere near the focus, seen obliquely: its L-weighted centroid is measurably
    # shifted from the projected centre; the quadrature of the exact perspective map predicts it.
    view = look_at_view(focus_mm=[300, 0, 1000], detector_centre_mm=[0, 0, 0], up=[0, 1, 0],
                        detector_normal=[0, 0, 1], pixel_spacing_mm=0.5, shape=(400, 400))
    centre, radius = np.array([204.0, 12.0, 600.0]), 10.0
    mu = 1e-3  # nearly linear regime: −log(mean exp(−μL)) = μ·mean(L) to 1e-2 relative
    opt = RenderOptions(background=False, noise=False, focal_spot_mm=0, detector_blur_px=0,
                        mu_bead_per_mm=mu, supersample=8)
    e = render_expected(view, centre[None], [radius], options=opt)
    att = np.log(opt.photons_per_pixel / e.quanta)
    c, total = weighted_centroid(att, e.uv_px[0], 70)
    volume_integral, expected = projected_moments(view, centre, radius)
    offset = expected - e.uv_px[0]
    assert np.linalg.norm(offset) > 0.2  # a real effect at this geometry (0.24 px)
    # The remainder is the 8×8 supersampling error of a sqrt-edged profile (~1e-4 px); 0.01 px
    # would be 4 % of the offset.
    assert np.all(np.abs(c - expected) < 0.01)
    # ∫ L dA over the detector equals the volume integral with the perspective Jacobian.
    assert total / mu * 0.25 == pytest.approx(volume_integral, rel=1e-4)


def test_chord_integral_equals_sphere_volume_for_parallel_rays():
    # Focus 1e6 mm away: rays are parallel to 1e-5, magnification 1 + 5e-5, so ∫ L dA = 4/3 π r³
    # up to ~1e-4; the 8×8 supersampled pixel sum converges to it (error ~1e-5).
    view = look_at_view(focus_mm=[0, 0, 1e6], detector_centre_mm=[0, 0, 0], up=[0, 1, 0],
                        pixel_spacing_mm=0.1, shape=(120, 120))
    mu, r = 1e-3, 5.0
    opt = RenderOptions(background=False, noise=False, focal_spot_mm=0, detector_blur_px=0,
                        mu_bead_per_mm=mu, supersample=8)
    e = render_expected(view, [[0.0, 0.0, 50.0]], [r], options=opt)
    att = np.log(opt.photons_per_pixel / e.quanta)
    assert att.sum() / mu * 0.01 == pytest.approx(4 / 3 * np.pi * r**3, rel=5e-4)


def test_peak_attenuation_is_mu_times_diameter():
    # Tiny pixels, no blur: the pixel containing the centre ray has chord ≈ 2r, so the
    # attenuation there is μ_Ta · 2r (the pixel averages chords within 0.005 mm of the centre:
    # relative deficit < (0.005/0.5)² / 2 = 5e-5).
    view = tube_view(shape=(201, 201), spacing=0.01, angle_deg=0.0)
    opt = RenderOptions(background=False, noise=False, focal_spot_mm=0, detector_blur_px=0)
    e = render_expected(view, [[0.0, 0.0, 100.0]], [0.5], options=opt)
    peak = np.log(opt.photons_per_pixel / e.quanta).max()
    assert peak == pytest.approx(MU_TANTALUM_PER_MM * 1.0, rel=1e-3)


def test_overlapping_beads_add_line_integrals():
    view = tube_view(shape=(201, 201), spacing=0.01, angle_deg=0.0)
    opt = RenderOptions(background=False, noise=False, focal_spot_mm=0, detector_blur_px=0,
                        mu_bead_per_mm=1.0)
    a = points_over(view, [[100.0, 100.0]], [50.0])[0]
    b = points_over(view, [[100.0, 100.0]], [200.0])[0]
    both = render_expected(view, [a, b], [0.5, 0.4], options=opt)
    att = np.log(opt.photons_per_pixel / both.quanta)
    assert att[100, 100] == pytest.approx(1.0 + 0.8, rel=1e-3)


def _second_moment_u(img, uv, half):
    c, total = weighted_centroid(img, uv, half)
    iu, iv = (round(float(x)) for x in uv)
    w = img[iv - half:iv + half + 1, iu - half:iu + half + 1]
    xx = np.mgrid[iv - half:iv + half + 1, iu - half:iu + half + 1][1]
    return (w * (xx - c[0]) ** 2).sum() / total


@pytest.mark.parametrize("which", ["focal", "detector"])
def test_blur_adds_its_variance_to_the_bead_profile(which):
    # Blur is a normalised convolution of the absorbed fraction 1 − I/I0 (linear in intensity),
    # so the profile's second moment grows by the kernel variance: focal spot σ = f·(M − 1)/2.355
    # at the bead's magnification (Bushberg ch. 7), detector σ as given. The sampled kernels
    # deviate from the continuous Gaussian by < 1 % in variance (sub-sample box: 1/(12 s²)).
    view = tube_view(shape=(200, 200), angle_deg=0.0)
    centre = points_over(view, [[100.3, 99.8]], [450.0])
    base = RenderOptions(background=False, noise=False, focal_spot_mm=0.0, detector_blur_px=0.0)
    blurred = RenderOptions(background=False, noise=False,
                            focal_spot_mm=1.2 if which == "focal" else 0.0,
                            detector_blur_px=1.0 if which == "detector" else 0.0)
    m = float(view.magnification(centre)[0])
    want = (1.2 * (m - 1) / (2 * np.sqrt(2 * np.log(2))) / 0.1) ** 2 if which == "focal" else 1.0
    var = []
    for opt in (base, blurred):
        e = render_expected(view, centre, [0.5], options=opt)
        var.append(_second_moment_u(1 - e.quanta / opt.photons_per_pixel, e.uv_px[0], 20))
    assert var[1] - var[0] == pytest.approx(want, rel=0.01)


def test_cage_marker_projections_match_pinhole():
    # Two marker planes (fiducials near the detector, controls 200 mm above), as in a cage.
    view = tube_view(shape=(700, 700))
    g = np.linspace(80, 620, 5)
    uv = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2) + 0.37
    markers = np.concatenate([points_over(view, uv, np.full(len(uv), 15.0)),
                              points_over(view, uv[:20] + 50, np.full(20, 215.0))])
    out = render_view(view, markers, np.full(len(markers), 0.5), options=CLEAN)
    P = view.projection_matrix()
    h = np.c_[markers, np.ones(len(markers))] @ P.T
    np.testing.assert_allclose(out.uv_px, h[:, :2] / h[:, 2:], atol=1e-9)
    assert not out.hidden.any()
    assert not out.clipped.any()
    air = out.image[0, 0].astype(float)
    for i in range(len(markers)):
        c, _ = weighted_centroid(out.image.astype(float) - air, out.uv_px[i], 12)
        assert np.all(np.abs(c - out.uv_px[i]) <= 0.02)


# -- chords -----------------------------------------------------------------------------

def brute_chord(o, d, inside, step=1e-3, span=80.0):
    d = d / np.linalg.norm(d)
    t = np.arange(-span, span, step)
    return inside(o + t[:, None] * d).sum() * step


def test_capsule_chord_analytic_cases():
    p0, p1, R = np.array([0.0, 0, 0]), np.array([0.0, 0, 40]), 3.0  # axis along z, h = 40
    cases = [  # (origin, direction, expected chord)
        ([-100, 0, 20], [1, 0, 0], 2 * R),  # perpendicular through the axis
        ([0, 0, -100], [0, 0, 1], 40 + 2 * R),  # along the axis, through both caps
        ([-100, 2, 20], [1, 0, 0], 2 * np.sqrt(R**2 - 4)),  # offset 2 mm
        ([-100, 3.5, 20], [1, 0, 0], 0.0),  # misses
        ([-100, 0, 42], [1, 0, 0], 2 * np.sqrt(R**2 - 4)),  # through the end sphere only
        ([0, 0, 20], [1, 0, 1], 2 * R * np.sqrt(2)),  # 45° through the middle: 2R / sin 45°
        ([0, 2, -100], [0, 0, 1], 40 + 2 * np.sqrt(R**2 - 4)),  # parallel to the axis, inside
        ([0, 5, -100], [0, 0, 1], 0.0),  # parallel to the axis, outside
    ]
    for o, d, want in cases:
        got = capsule_chords(np.array(o, float), np.array(d, float), p0, p1, R)
        assert got == pytest.approx(want, abs=1e-9), (o, d)
    # Degenerate axis: a sphere.
    o, d = np.array([[-50.0, 1.0, 0.0]]), np.array([[1.0, 0.0, 0.0]])
    np.testing.assert_allclose(capsule_chords(o, d, p0, p0, R), sphere_chords(o, d, p0, R))


def _seg_dist(x, p0, p1):
    a = p1 - p0
    t = np.clip(((x - p0) @ a) / max(a @ a, 1e-300), 0, 1)
    return np.linalg.norm(x - (p0 + t[:, None] * a), axis=1)


@given(st.lists(st.floats(-10, 10), min_size=12, max_size=12), st.floats(0.5, 5.0))
def test_capsule_chord_matches_brute_force(vals, radius):
    v = np.array(vals)
    p0, p1, o, d = v[0:3], v[3:6], v[6:9] * 3, v[9:12]
    if np.linalg.norm(d) < 1e-3:
        d = np.array([1.0, 0.3, -0.2])
    got = capsule_chords(o, d, p0, p1, radius)
    want = brute_chord(o, d, lambda x: _seg_dist(x, p0, p1) <= radius)
    assert got == pytest.approx(want, abs=3e-3)  # brute force resolves 1e-3 mm per end


@given(st.lists(st.floats(-10, 10), min_size=9, max_size=9), st.floats(0.1, 5.0))
def test_sphere_chord_matches_brute_force(vals, radius):
    v = np.array(vals)
    c, o, d = v[0:3], v[3:6] * 3, v[6:9]
    if np.linalg.norm(d) < 1e-3:
        d = np.array([0.2, 1.0, 0.1])
    got = sphere_chords(o, d, c, radius)
    want = brute_chord(o, d, lambda x: np.linalg.norm(x - c, axis=1) <= radius)
    assert got == pytest.approx(want, abs=3e-3)


def test_chords_batch_shapes():
    o = np.zeros((4, 5, 3))
    d = np.broadcast_to([0.0, 0.0, 1.0], (4, 5, 3))
    assert sphere_chords(o, d, [0.0, 0.0, 10.0], 1.0).shape == (4, 5)
    assert capsule_chords(o, d, [0, 0, 5.0], [0, 0, 9.0], 1.0).shape == (4, 5)
    np.testing.assert_allclose(capsule_chords(o, d, [0, 0, 5.0], [0, 0, 9.0], 1.0), 6.0)


# -- hidden / clipped ----------------------------------------------------------------------

def test_hidden_behind_implant_and_outside_and_clipped():
    view = tube_view(shape=(400, 400))
    uv = np.array([[200.0, 200.0], [260.0, 200.0], [200.0, 200.0], [-30.0, 200.0],
                   [399.0, 100.0], [200.0, -3.0]])
    beads = points_over(view, uv, [150.0, 150.0, 150.0, 150.0, 150.0, 150.0])
    # A CoCr rod (2 mm radius) along y, 40 mm below bead 0 on its centre ray: path 4 mm ≥ 2 mm.
    below = points_over(view, [[200.0, 200.0]], [110.0])[0]
    rod = Capsule(p0_mm=below - [0, 30, 0], p1_mm=below + [0, 30, 0], radius_mm=2.0)
    # Bead 2 is replaced by a bead above a thin titanium wire (path ≤ 1 mm: 0.35 < ln 10).
    wire_at = points_over(view, [[200.0, 200.0]], [60.0])[0]
    wire = Capsule(p0_mm=wire_at - [0, 5, 0], p1_mm=wire_at + [0, 5, 0], radius_mm=0.5,
                   mu_per_mm=MU_TITANIUM_PER_MM)
    out = render_view(view, beads[[0, 1, 3, 4, 5]], np.full(5, 0.5), capsules=[rod],
                      options=CLEAN)
    np.testing.assert_array_equal(out.hidden, [True, False, True, False, True])
    # Bead at u = 399 (radius ≈ 5.6 px) crosses the right border; bead at v = −3 crosses the top
    # (centre outside: hidden and clipped); bead at u = −30 lies entirely outside (not clipped).
    np.testing.assert_array_equal(out.clipped, [False, False, False, True, True])
    thin = render_view(view, beads[[2]], [0.5], capsules=[wire], options=CLEAN)
    assert not thin.hidden[0]


def test_capsule_shadow_matches_chord():
    view = tube_view(shape=(300, 300), angle_deg=0.0)
    rod_at = points_over(view, [[150.0, 150.0]], [100.0])[0]
    mu = 0.1
    rod = Capsule(p0_mm=rod_at - [0, 8, 0], p1_mm=rod_at + [0, 8, 0], radius_mm=3.0,
                  mu_per_mm=mu)
    opt = RenderOptions(background=False, noise=False, focal_spot_mm=0, detector_blur_px=0)
    e = render_expected(view, np.zeros((0, 3)), np.zeros(0), capsules=[rod], options=opt)
    att = np.log(opt.photons_per_pixel / e.quanta)
    o, d = view.rays([[150.0, 150.0], [150.0, 10.0]])
    want = mu * capsule_chords(o, d, rod.p0_mm, rod.p1_mm, 3.0)
    np.testing.assert_allclose([att[150, 150], att[10, 150]], want, rtol=1e-5, atol=1e-6)


# -- noise and dose ----------------------------------------------------------------------

@pytest.mark.parametrize(("photons", "electronic"), [(1e4, 0.0), (2.5e3, 20.0)])
def test_flat_field_noise_matches_dose(photons, electronic):
    # Flat field I0: display D = k ln(2 I0 / I), so Var D ≈ k² (I0 + e²) / I0² (delta method,
    # relative error ~1/I0) + 1/12 (rounding). The sample variance of n independent pixels has
    # relative standard error sqrt(2/n); allow 5 of them.
    view = tube_view(shape=(512, 512))
    opt = RenderOptions(background=False, photons_per_pixel=photons, electronic_noise=electronic,
                        detector_blur_px=0.0, bit_depth=16)
    img = render_view(view, np.zeros((0, 3)), np.zeros(0), options=opt, rng=7).image
    d = img.astype(float).ravel()
    k = display_scale(opt)[1]
    want = k**2 * (photons + electronic**2) / photons**2 + 1 / 12
    assert display_variance(photons, opt) == pytest.approx(want)
    assert d.var(ddof=1) == pytest.approx(want, rel=5 * np.sqrt(2 / d.size))
    mean_want = k * np.log(2.0) + 0.5 * k * (photons + electronic**2) / photons**2
    assert abs(d.mean() - mean_want) < 5 * np.sqrt(want / d.size)


def test_detector_blur_reduces_noise_by_kernel_energy():
    # Quanta are counted, then blurred: the variance of a blurred pixel is g·I0 with
    # g = Σ kernel² of the (separable) Gaussian. Pixels 9 apart are independent (kernel width 7).
    sigma = 0.6
    view = tube_view(shape=(900, 900))
    opt = RenderOptions(background=False, photons_per_pixel=1e4, electronic_noise=0.0,
                        detector_blur_px=sigma, bit_depth=16)
    img = render_view(view, np.zeros((0, 3)), np.zeros(0), options=opt, rng=3).image
    d = img[4::9, 4::9].astype(float).ravel()
    k1 = cv2.getGaussianKernel(2 * int(np.ceil(4 * sigma)) + 1, sigma).ravel()
    g = np.sum(k1**2) ** 2
    k = display_scale(opt)[1]
    want = k**2 * g / 1e4 + 1 / 12
    assert display_variance(1e4, opt) == pytest.approx(want)
    assert d.var(ddof=1) == pytest.approx(want, rel=5 * np.sqrt(2 / d.size))


def test_determinism_and_noise_seeding():
    view = tube_view(shape=(200, 200))
    c = points_over(view, [[100.0, 100.0]], [100.0])
    a = render_view(view, c, [0.5], options=RenderOptions(noise=False)).image
    b = render_view(view, c, [0.5], options=RenderOptions(noise=False), rng=99).image
    np.testing.assert_array_equal(a, b)
    n1 = render_view(view, c, [0.5], rng=5).image
    n2 = render_view(view, c, [0.5], rng=5).image
    n3 = render_view(view, c, [0.5], rng=6).image
    np.testing.assert_array_equal(n1, n2)
    assert np.any(n1 != n3)
    assert n1.dtype == np.uint16
    assert n1.max() < 2**14


def test_bead_bright_on_background_and_expected_matches():
    view = tube_view(shape=(300, 300))
    c = points_over(view, [[150.0, 150.0]], [150.0])
    e = render_expected(view, c, [0.5])
    img = render_view(view, c, [0.5], options=RenderOptions(noise=False)).image
    np.testing.assert_array_equal(img, np.clip(np.rint(e.display), 0, 2**14 - 1))
    assert e.display[150, 150] > e.display[150, 170] + 2 * e.dn_per_attenuation


# -- background ------------------------------------------------------------------------

def test_anatomy_is_deterministic_smooth_and_physical():
    view = tube_view(shape=(400, 300))
    a = anatomy_attenuation(view, seed=1)
    np.testing.assert_array_equal(a, anatomy_attenuation(view, seed=1))
    assert np.any(a != anatomy_attenuation(view, seed=2))
    assert a.shape == (400, 300)
    assert a.dtype == np.float32
    # Water-equivalent limb ≤ 160 mm × 1.15 bumps plus two cortical walls: attenuation 0–6.
    assert a.min() >= 0
    assert 1.0 < a.max() < 6.0
    assert a[200, 150] > 1.0  # limb in the middle
    assert (a == 0).any()  # direct exposure around it


def test_anatomy_chords_at_every_pixel():
    # 240 × 600 px of 0.25 mm: a 150 mm wide field with both bones' edges in it; both sizes
    # are multiples of 3 and 8, so grid nodes of step 3 fall on pixel centres 1, 4, 7, ...
    view = tube_view(shape=(240, 600), spacing=0.25)
    fine = anatomy_attenuation(view, seed=3, chord_step=1)
    three = anatomy_attenuation(view, seed=3, chord_step=3)
    coarse = anatomy_attenuation(view, seed=3)
    # the same map where a step-3 grid has its nodes (the bilinear upsampling is exact there;
    # the two differ in float32 against float64 arithmetic only) ...
    np.testing.assert_allclose(fine[1::3, 1::3], three[1::3, 1::3], rtol=0, atol=1e-4)
    # ... and not in between, where the coarse grids interpolate the square-root rise of the
    # bone edges linearly: kinks of more than 0.05 in Σμ·L
    assert np.abs(fine - three).max() > 0.02
    assert np.abs(fine - coarse).max() > 0.05
    # the default is the coarse grid of every earlier rendering
    np.testing.assert_array_equal(coarse, anatomy_attenuation(view, seed=3, chord_step=8))


def test_anatomy_cache_returns_fresh_arrays():
    view = tube_view(shape=(80, 96))
    a = anatomy_attenuation(view, seed=4, chord_step=1)
    a[:] = -1.0                      # the renderer adds implants into its map in place
    b = anatomy_attenuation(view, seed=4, chord_step=1)
    assert b.flags.writeable
    assert b.min() >= 0
    assert np.any(b != anatomy_attenuation(view, seed=5, chord_step=1))


@pytest.mark.parametrize("step", [0, 1.5, -8, "8", None, float("nan")])
def test_anatomy_chord_step_must_be_a_positive_integer(step):
    with pytest.raises(ShapeError, match="chord_step"):
        anatomy_attenuation(tube_view(shape=(40, 40)), chord_step=step)
    with pytest.raises(ShapeError, match="anatomy_chord_step"):
        RenderOptions(anatomy_chord_step=step)


# -- validation ------------------------------------------------------------------------

@pytest.mark.parametrize(("centres", "radii", "match"), [
    (np.zeros((3, 2)), np.ones(3), r"centres_mm.*\(N, 3\)"),
    (np.zeros(3), np.ones(1), r"centres_mm.*\(N, 3\)"),
    ([[0, 0, 100.0]], [0.5, 0.5], r"radii_mm.*\(1,\)"),
    ([[0, 0, 100.0]], [-0.5], "positive"),
    ([[0, 0, np.nan]], [0.5], "finite"),
    ([[0, 0, -5.0]], [0.5], "between the focus and the detector"),
    ([[0, 0, 3000.0]], [0.5], "between the focus and the detector"),
])
def test_invalid_inputs_raise(centres, radii, match):
    with pytest.raises(ShapeError, match=match):
        render_view(tube_view(shape=(50, 50)), centres, radii, options=CLEAN)


def test_invalid_options_and_capsules_raise():
    with pytest.raises(ShapeError, match="supersample"):
        RenderOptions(supersample=0)
    with pytest.raises(ShapeError, match="bit_depth"):
        RenderOptions(bit_depth=20)
    with pytest.raises(ShapeError, match="photons_per_pixel"):
        RenderOptions(photons_per_pixel=0)
    with pytest.raises(ShapeError, match="radius_mm"):
        Capsule(p0_mm=[0, 0, 10], p1_mm=[0, 0, 20], radius_mm=-1)
    with pytest.raises(ShapeError, match="p0_mm"):
        Capsule(p0_mm=[0, 0], p1_mm=[0, 0, 20], radius_mm=1)
    with pytest.raises(ShapeError, match="DetectorView"):
        render_view("view", [[0, 0, 100.0]], [0.5])
    with pytest.raises(ShapeError, match="capsule"):
        render_view(tube_view(shape=(50, 50)), [[0, 0, 100.0]], [0.5], options=CLEAN,
                    capsules=[Capsule(p0_mm=[0, 0, -10], p1_mm=[0, 0, 20], radius_mm=1)])
    with pytest.raises(ShapeError, match="radius_mm"):
        capsule_chords([0, 0, 0], [0, 0, 1], [0, 0, 1], [0, 0, 2], 0.0)
