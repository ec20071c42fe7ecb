"""Sub-pixel refinement of bead centres: batched fit of a blurred projected-sphere model.

Internal module of :mod:`rsa.detect` (no input validation here; the caller validates once).

Model
-----
A tantalum sphere of radius ``r`` seen from a point focus throws a shadow whose chord length is
``L(x) = 2 r sqrt(1 − q(x))`` with ``q`` a quadratic form in the detector offset ``x`` from the
projected centre (a circle at normal incidence, an ellipse of axis ratio ≈ 1/cos θ on a detector
hit obliquely at angle θ) [1]_. The blocked fraction of the beam is ``S = 1 − exp(−k·sqrt(1−q))``
with ``k = μ·2r`` the optical depth through the centre. The detector integrates the transmitted
quanta over each pixel (box) after focal-spot and detector blur (Gaussian, σ):
``B = box ⊗ G_σ ⊗ S``. A linear (quanta) image shows ``a·B``; a log-converted display (DR systems,
:mod:`rsa.synthetic.render`) shows ``−a·ln(1 − B)``. Both are members of

    model = A · h_c(B) + quadratic background,   h_c(B) = −ln(1 − c·B)/c,

with ``c → 0`` the linear and ``c → 1`` the log display (decided per image and held fixed; the
optical depth k is held at a documented value too — both trade off against amplitude and
radius). The rim of the sharp profile is averaged over a fixed fraction of R so that the sampled
profile moves smoothly with R. It is sampled on a sub-pixel grid *centred on the current bead
estimate*, and the box ⊗ Gaussian kernel is applied analytically (differences of normal CDFs)
as two separable matrices, ``B = K_v(v, σ) · S · K_u(u, σ)ᵀ``. Because the sub-grid moves with
the bead, the model is an exactly point-symmetric, smooth function of ``(pixel − centre)``: the
discretisation of the sharp rim changes the profile only symmetrically and cannot bias the
centre or lock it to the pixel grid.

Fitting is a Levenberg–Marquardt iteration [2]_ vectorised over beads (batched normal
equations, per-bead damping and acceptance). Derivatives in the centre and blur are analytic
(kernel derivatives); radius and ellipticity act as linear maps of the profile coordinates and
are differentiated by parts through the kernels (no rim singularity). Weights are supplied by
the caller (:mod:`rsa.detect_stages`); :func:`transmission_variance` estimates the pixel
variance as a function of the modelled transmission from pooled residuals, and
:func:`noise_correlation` the correlation of the pixel noise (detector blur spreads each
quantum over neighbouring pixels) from the image itself. The centre covariance is then the
sandwich ``H⁻¹ (Jᵀ W^{½} C W^{½} J) H⁻¹`` [3]_, scaled by the bead's reduced χ².

References
----------
.. [1] Selvik G. Roentgen stereophotogrammetry. Acta Orthop Scand Suppl 1989;232:1–51.
.. [2] Madsen K, Nielsen HB, Tingleff O. Methods for non-linear least squares problems, 2nd ed.
       DTU 2004, §3.2 (Levenberg–Marquardt with diagonal damping).
.. [3] Kay SM. Fundamentals of Statistical Signal Processing: Estimation Theory. Prentice Hall
       1993, §4.5 and §8.4 (weighted least squares and its covariance under coloured noise).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
from scipy.special import ndtr

# parameter layout
IU, IV, IR, IE1, IE2, ILS, ILK, ILC, IA, IB0, IBU, IBV, IBUU, IBUV, IBVV = range(15)
NPAR = 15
LINEAR = (IA, IB0, IBU, IBV, IBUU, IBUV, IBVV)
# optional edge term of the background (a bead on an implant or bone edge): amplitude
# (linear), normal angle, offset along the normal from the window centre, log width and
# curvature (1/px; held at its start value, 0 = a straight edge, unless a fit frees it)
IEA, IET, IED, IEW, IEK = range(NPAR, NPAR + 5)
NPAR_EDGE = NPAR + 5


def linear_params(npar: int) -> tuple[int, ...]:
    """Indices of the parameters that enter the model linearly, for a layout of ``npar``."""
    return (*LINEAR, IEA) if npar > NPAR else LINEAR
_SQRT2PI = np.sqrt(2.0 * np.pi)
LAG = 2   # noise-correlation lags (px) used in the sandwich covariance


@dataclass(frozen=True)
class FitSetup:
    """Fixed numerical set-up shared by all beads of one fit."""

    half: int            # window half width (px), window = 2*half+1
    sub: int             # sub-samples per pixel of the sharp profile
    r_lo: float
    r_hi: float
    r_min: float = 0.0   # radius bounds of the fit
    r_max: float = np.inf
    blur_lo: float = 0.25
    blur_hi: float = 3.0
    k_lo: float = 0.05
    k_hi: float = 60.0
    t_lim: float = 5.0   # c = tanh(t) limited to |t| ≤ t_lim
    e_max: float = 0.35
    rim: float = 0.1     # rim smoothing width in units of the radius
    edge_w_lo: float = 0.3   # width bounds of the edge term (px)
    edge_w_hi: float = 8.0


def make_setup(r_lo: float, r_hi: float, *, sub: int = 3, blur_guess: float = 1.0) -> FitSetup:
    """Window and sub-grid sizes that hold beads of radius up to ``r_hi`` px."""
    half = int(np.ceil(r_hi * 1.15 + 3.0 * blur_guess + 1.5))
    return FitSetup(half=half, sub=sub, r_lo=r_lo, r_hi=r_hi * 1.3, r_min=0.5 * r_lo,
                    r_max=r_hi * 1.3, rim=1.0 / (sub * 0.7 * r_lo))


def _grid(setup: FitSetup, p: np.ndarray) -> np.ndarray:
    """Bead-centred sub-grid (G,) in px, just wide enough for the largest current ellipse."""
    e = np.hypot(p[:, IE1], p[:, IE2])
    extent = float(np.max(p[:, IR] / np.sqrt(1.0 - e))) if len(p) else 1.0
    n = int(np.ceil((extent + 0.5) * setup.sub))
    return np.arange(-n, n + 1) / setup.sub


def sharp_profile(p: np.ndarray, g: np.ndarray, d: float, derivs: bool = False
                  ) -> tuple[np.ndarray, ...]:
    """Blocked fraction S (N, G, G) on the bead-centred sub-grid ``g`` (row = v, column = u).

    With ``derivs`` also returns dS/dlog k (smooth; the geometric parameters are differentiated
    through the kernels, see :func:`model_and_jacobian`).
    """
    R2 = (p[:, IR] ** 2)[:, None, None]
    e1 = p[:, IE1, None, None]
    e2 = p[:, IE2, None, None]
    k = np.exp(p[:, ILK])[:, None, None]
    x = g[None, None, :]
    y = g[None, :, None]
    qn = (x * x + y * y) + e1 * (x * x - y * y) + (2.0 * e2) * (x * y)
    rho = np.sqrt(qn / R2)
    # chord factor √(1−ρ²) = √(1+ρ)·√(1−ρ), with √(1−ρ) averaged over a fixed width d of the
    # normalised radius (≥ one sub-cell for the smallest bead) so that the sampled rim moves
    # smoothly with R; d is constant, so S(x; R) = F(x/R) stays exactly homogeneous in R
    y0 = 1.0 - rho
    hi = np.maximum(y0 + 0.5 * d, 0.0)
    lo = np.maximum(y0 - 0.5 * d, 0.0)
    s = np.sqrt(1.0 + np.minimum(rho, 1.0)) * (2.0 / 3.0) * (hi * np.sqrt(hi)
                                                            - lo * np.sqrt(lo)) / d
    ex = np.exp(-k * s)
    S = 1.0 - ex
    if not derivs:
        return (S,)
    return S, k * s * ex


def _kernels(centre: np.ndarray, sigma: np.ndarray, pix: np.ndarray, g: np.ndarray,
             sub: int, derivs: bool) -> tuple[np.ndarray, ...]:
    """Pixel-box ⊗ Gaussian kernel from the sub-grid to the window pixels, (N, W, G).

    ``pix`` (N, W) consecutive integer pixel centres, ``centre`` (N,) bead coordinate along the
    axis, ``g`` the sub-grid of :func:`_grid` (``arange(−n, n + 1) / sub``). Returns K and, if
    ``derivs``, dK/dcentre and dK/dlog σ.

    Entry (j, m) is Φ at pixel j's upper boundary minus Φ at its lower one, both at
    ``(boundary − centre − g_m)/σ``. Boundaries are a pixel apart and the sub-grid is a
    1/sub px lattice, so every argument is one of the (W·sub + 2n + 1) points
    ``pix₀ − ½ − centre + (L + n)/sub`` with ``L = j·sub − m``: the normal CDF (and density) is
    evaluated once on that lattice, about 8× fewer points than the (W + 1)·G table for the
    detector's windows, and the kernel gathered from it.
    """
    n = (len(g) - 1) // 2
    W = pix.shape[1]
    lat = (np.arange(-2 * n, W * sub + 1) + n) / sub                 # (L + n)/sub, L = j·sub − m
    s = sigma[:, None]
    a = (pix[:, :1] - 0.5 - centre[:, None] + lat[None, :]) / s      # (N, W·sub + 2n + 1)
    lower = np.arange(W)[:, None] * sub - np.arange(2 * n + 1)[None, :] + 2 * n   # (W, G)
    w = 1.0 / sub
    Phi = ndtr(a)
    K = (Phi[:, sub:] - Phi[:, :-sub])[:, lower] * w
    if not derivs:
        return (K,)
    phi = np.exp(-0.5 * a * a) * (w / _SQRT2PI)
    dK_dc = -(phi[:, sub:] - phi[:, :-sub])[:, lower] / s[:, :, None]   # d/dcentre = −d/dx
    pa = phi * a
    dK_dls = -(pa[:, sub:] - pa[:, :-sub])[:, lower]                  # σ d/dσ
    return K, dK_dc, dK_dls


def _display(B: np.ndarray, t: np.ndarray, derivs: bool = True, dt: bool = True
             ) -> tuple[np.ndarray, ...]:
    """h_c(B) = −ln(1 − cB)/c and, with ``derivs``, dh/dB and dh/dt (None without ``dt``) for
    c = tanh(t), broadcast over (N, W, W). The display is one per image, so usually every bead
    has the same branch (series near c = 0, logarithm otherwise) and only that branch is
    evaluated."""
    c = np.tanh(t)[:, None, None]
    small = np.abs(c) < 1e-3
    linear, log = bool(small.all()), not small.any()
    cs = np.where(small, 1e-3, c)
    one_m = np.maximum(1.0 - c * B, 1e-12)
    lg = None if linear else np.log(one_m)

    def branch(series, logarithm):
        """The series where c ≈ 0, the logarithm's form elsewhere (only those in use)."""
        if linear or log:
            return series() if linear else logarithm()
        return np.where(small, series(), logarithm())

    h = branch(lambda: B + 0.5 * c * B * B, lambda: -lg / cs)
    if not derivs:
        return (h,)
    dh_dB = 1.0 / one_m
    if not dt:
        return h, dh_dB, None
    dh_dc = branch(lambda: 0.5 * B * B + (2.0 / 3.0) * c * B ** 3,
                   lambda: B / (cs * one_m) + lg / (cs * cs))
    return h, dh_dB, dh_dc * (1.0 - c * c)


_QS = 0.01   # scale of the quadratic background terms (keeps JᵀJ balanced)


def edge_profile(p: np.ndarray, du: np.ndarray, dv: np.ndarray, derivs: bool = True
                 ) -> tuple:
    """Unit blurred step Φ(z) of the edge term, z = s/w, s the signed distance from the edge.

    The edge is a circle of curvature κ (a screw head, a cup rim; κ = 0: a straight line)
    through the point d·n, n = (cos θ, sin θ), with normal n there. With a = n·x − d and
    t = n⊥·x (x from the window centre), D = √((1 + κa)² + (κt)²),
    s = (2a + κ(a² + t²)) / (1 + D), regular at κ = 0 (s = a). ``du``, ``dv`` broadcast to
    (N, W, W); returns Φ and, with ``derivs``, φ(z)/w (= dΦ/ds), z and the derivatives of s
    with respect to θ, d, κ, u and v.
    """
    th = p[:, IET, None, None]
    c, s = np.cos(th), np.sin(th)
    w = np.exp(p[:, IEW])[:, None, None]
    d, k = p[:, IED, None, None], p[:, IEK, None, None]
    t = c * dv - s * du
    a = c * du + s * dv - d
    r2 = a * a + t * t
    num = 2.0 * a + k * r2
    D = np.sqrt(np.maximum((1.0 + k * a) ** 2 + (k * t) ** 2, 1e-12))
    dist = num / (1.0 + D)
    z = dist / w
    if not derivs:
        return (ndtr(z),)
    ga, gt = (1.0 + k * a) / D, k * t / D          # ∂s/∂a, ∂s/∂t: the unit normal at x
    s_k = (r2 * (1.0 + D) - num * (a + k * r2) / D) / (1.0 + D) ** 2
    # ∂a/∂θ = t, ∂t/∂θ = −(a + d); ∂a/∂d = −1
    ds = (t * (1.0 - k * d) / D, -ga, s_k, ga * c - gt * s, ga * s + gt * c)
    return ndtr(z), np.exp(-0.5 * z * z) / (_SQRT2PI * w), z, ds


def background(p: np.ndarray, du: np.ndarray, dv: np.ndarray) -> np.ndarray:
    """Local background (anatomy) in the window, (N, W, W): quadratic, plus a blurred step
    (:func:`edge_profile`) when ``p`` has the edge layout (:data:`NPAR_EDGE` columns)."""
    bg = _quadratic(p, du, dv)
    if p.shape[1] > NPAR:
        bg = bg + p[:, IEA, None, None] * edge_profile(p, du, dv, derivs=False)[0]
    return bg


def _quadratic(p: np.ndarray, du: np.ndarray, dv: np.ndarray) -> np.ndarray:
    """The quadratic background; ``du`` (N, 1, W) and ``dv`` (N, W, 1) as the window's
    columns and rows (the terms in one of them are summed before they are spread out)."""
    P = [p[:, i, None, None] for i in (IB0, IBU, IBV, IBUU, IBUV, IBVV)]
    along_u = P[0] + P[1] * du + (_QS * P[3]) * (du * du)
    along_v = P[2] * dv + (_QS * P[5]) * (dv * dv)
    return along_u + along_v + (_QS * P[4]) * (du * dv)


def model_and_jacobian(p: np.ndarray, pu: np.ndarray, pv: np.ndarray, cu: np.ndarray,
                       cv: np.ndarray, setup: FitSetup, jac: bool = True,
                       g: np.ndarray | None = None, held: tuple[int, ...] = (),
                       S: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Model (N, W, W) and Jacobian (N, P, W, W) for window pixel coordinates pu, pv (N, W).

    ``cu``, ``cv`` (N,) are the reference coordinates of the background plane; ``g`` the
    sub-grid (:func:`_grid` of ``p`` when None; a wider one changes only the rounding).
    The Jacobian's rows of the ``held`` parameters are zero (those of the optical depth and
    the display, usually held, are then not computed). ``S``: the sharp profile
    (:func:`sharp_profile` on ``g``, float32) when already at hand; not with a free optical
    depth's Jacobian, which needs its derivative.
    """
    sigma = np.exp(p[:, ILS])
    g = _grid(setup, p) if g is None else g
    # products in float32 (2× faster; relative rounding 1e-7 ≪ pixel noise); the kernels'
    # centre offsets are computed in float64 first, so positions keep full precision
    derivs = jac and ILK not in held
    if S is not None and not derivs:
        Sd = (S,)
    else:
        Sd = tuple(x.astype(np.float32) for x in sharp_profile(p, g, setup.rim, derivs))
    S = Sd[0]
    Ku = tuple(x.astype(np.float32) for x in _kernels(p[:, IU], sigma, pu, g, setup.sub, jac))
    Kv = tuple(x.astype(np.float32) for x in _kernels(p[:, IV], sigma, pv, g, setup.sub, jac))
    g = g.astype(np.float32)
    KvS = Kv[0] @ S                                    # (N, W, G)
    KuT = np.swapaxes(Ku[0], 1, 2)                     # (N, G, W)
    B = (KvS @ KuT).astype(np.float64)                 # (N, W, W)
    h, *dhs = _display(B, p[:, ILC], derivs=jac, dt=ILC not in held)
    A = p[:, IA, None, None]
    du = (pu - cu[:, None])[:, None, :]
    dv = (pv - cv[:, None])[:, :, None]
    model = A * h + _quadratic(p, du, dv)
    if p.shape[1] > NPAR:
        edge = edge_profile(p, du, dv, derivs=jac)
        model = model + p[:, IEA, None, None] * edge[0]
    if not jac:
        return model, None
    dh, dht = dhs
    Ad = A * dh
    dKvS = Kv[1] @ S
    dKuT = np.swapaxes(Ku[1], 1, 2)
    J = np.empty((model.shape[0], p.shape[1], *model.shape[1:]), np.float32)  # params 2nd
    Ad = Ad.astype(np.float32)
    B = B.astype(np.float32)
    J[:, IU] = Ad * (KvS @ dKuT)
    J[:, IV] = Ad * (dKvS @ KuT)
    J[:, ILS] = Ad * ((Kv[2] @ S) @ KuT + KvS @ np.swapaxes(Ku[2], 1, 2))
    # Radius and ellipticity act as linear maps of the profile coordinates,
    # S(x; θ+δ) = S((I + δB)x; θ) with B = ½ Q⁻¹ ∂Q/∂θ (the rim smoothing is a fixed
    # fraction of R, so S(x; R) = F(x/R) exactly). By parts, with kernel derivatives:
    # ∂B/∂θ = −Kv (S∘(Bx)_u) dKuᵀ − dKv (S∘(Bx)_v) Kuᵀ − tr(B)·B.
    gg = g[None, :, None]
    P1 = KvS @ (gg * dKuT)                                  # Kv (S∘X) dKuᵀ
    P2 = ((Kv[0] * g[None, None, :]) @ S) @ dKuT            # Kv (S∘Y) dKuᵀ
    P3 = dKvS @ (gg * KuT)                                  # dKv (S∘X) Kuᵀ
    P4 = ((Kv[1] * g[None, None, :]) @ S) @ KuT             # dKv (S∘Y) Kuᵀ
    R = p[:, IR]
    e1, e2 = p[:, IE1], p[:, IE2]
    D2 = 2.0 * (1.0 - e1 * e1 - e2 * e2)
    zero = np.zeros_like(R)
    maps = {IR: (-1.0 / R, zero, zero, -1.0 / R),
            IE1: ((1.0 - e1) / D2, e2 / D2, -e2 / D2, -(1.0 + e1) / D2),
            IE2: (-e2 / D2, (1.0 - e1) / D2, (1.0 + e1) / D2, -e2 / D2)}
    for i, m4 in maps.items():
        b00, b01, b10, b11 = (x[:, None, None] for x in m4)
        J[:, i] = -Ad * (b00 * P1 + b01 * P2 + b10 * P3 + b11 * P4 + (b00 + b11) * B)
    if ILK not in held:
        J[:, ILK] = Ad * ((Kv[0] @ Sd[1]) @ KuT)
    if ILC not in held:
        J[:, ILC] = A * dht
    J[:, IA] = h
    background_jacobian(p, du, dv, edge if p.shape[1] > NPAR else None, J)
    J[:, list(held)] = 0.0
    return model, J


def background_jacobian(p: np.ndarray, du: np.ndarray, dv: np.ndarray,
                        edge: tuple | None, J: np.ndarray) -> None:
    """Fill the rows of the background parameters (quadratic, and the edge term's with
    ``edge`` = :func:`edge_profile`'s output) of the Jacobian ``J`` (N, P, W, W) in place."""
    shape = J.shape[:1] + J.shape[2:]
    J[:, IB0] = 1.0
    J[:, IBU] = np.broadcast_to(du, shape)
    J[:, IBV] = np.broadcast_to(dv, shape)
    J[:, IBUU] = np.broadcast_to(du * du, shape) * _QS
    J[:, IBUV] = du * dv * _QS
    J[:, IBVV] = np.broadcast_to(dv * dv, shape) * _QS
    if edge is not None:
        Phi, phi_w, z, (s_t, s_d, s_k, _, _) = edge
        sphi = p[:, IEA, None, None] * phi_w
        J[:, IEA] = Phi
        J[:, IET] = sphi * s_t
        J[:, IED] = sphi * s_d
        J[:, IEW] = -sphi * z * np.exp(p[:, IEW])[:, None, None]     # ∂z/∂log w = −z
        J[:, IEK] = sphi * s_k


def _clip(p: np.ndarray, setup: FitSetup) -> np.ndarray:
    p[:, IR] = np.clip(p[:, IR], setup.r_min, setup.r_max)
    e = np.hypot(p[:, IE1], p[:, IE2])
    f = np.minimum(1.0, setup.e_max / np.maximum(e, 1e-12))
    p[:, IE1] *= f
    p[:, IE2] *= f
    p[:, ILS] = np.clip(p[:, ILS], np.log(setup.blur_lo), np.log(setup.blur_hi))
    p[:, ILK] = np.clip(p[:, ILK], np.log(setup.k_lo), np.log(setup.k_hi))
    p[:, ILC] = np.clip(p[:, ILC], -setup.t_lim, setup.t_lim)
    if p.shape[1] > NPAR:
        p[:, IEW] = np.clip(p[:, IEW], np.log(setup.edge_w_lo), np.log(setup.edge_w_hi))
        p[:, IED] = np.clip(p[:, IED], -setup.half - 1.0, setup.half + 1.0)
        # radius of curvature at least the window's half width
        p[:, IEK] = np.clip(p[:, IEK], -1.0 / setup.half, 1.0 / setup.half)
    return p


@dataclass(frozen=True)
class FitResult:
    """Per-bead fit output (plain arrays, internal)."""

    params: np.ndarray      # (N, P)
    cov_uv: np.ndarray      # (N, 2, 2) centre covariance
    resid: np.ndarray       # (N, W, W) data − model
    model: np.ndarray       # (N, W, W)
    chi2_red: np.ndarray    # (N,) Σ w r² / (n − p)
    npix: np.ndarray        # (N,) pixels used


#: The per-bead arrays of a :class:`FitResult`, in field order.
FIT_FIELDS = ("params", "cov_uv", "resid", "model", "chi2_red", "npix")


def linear_init(p: np.ndarray, data: np.ndarray, wts: np.ndarray, pu: np.ndarray,
                pv: np.ndarray, cu: np.ndarray, cv: np.ndarray, setup: FitSetup) -> np.ndarray:
    """Solve the linear parameters (amplitude, background, edge step) for fixed shape ones."""
    lin = linear_params(p.shape[1])
    q = p.copy()
    q[:, lin] = 0.0
    q[:, IA] = 1.0
    h = model_and_jacobian(q, pu, pv, cu, cv, setup, jac=False)[0]
    du = np.broadcast_to((pu - cu[:, None])[:, None, :], h.shape)
    dv = np.broadcast_to((pv - cv[:, None])[:, :, None], h.shape)
    cols = [h, np.ones_like(h), du, dv, du * du * _QS, du * dv * _QS, dv * dv * _QS]
    if len(lin) > len(LINEAR):
        cols.append(np.broadcast_to(edge_profile(q, du, dv, derivs=False)[0], h.shape))
    Bm = np.stack(cols, axis=1).reshape(len(p), len(lin), -1)
    Bw = Bm * wts.reshape(len(p), 1, -1)
    H = Bw @ np.swapaxes(Bm, 1, 2)
    H += 1e-9 * np.eye(len(lin)) * np.maximum(np.diagonal(H, axis1=1, axis2=2).max(1),
                                              1e-300)[:, None, None]
    rhs = Bw @ data.reshape(len(p), -1, 1)
    q[:, lin] = np.linalg.solve(H, rhs)[..., 0]
    return q


def fit(p0: np.ndarray, data: np.ndarray, wts: np.ndarray, pu: np.ndarray, pv: np.ndarray,
        setup: FitSetup, *, iterations: int = 12, rho: np.ndarray | None = None,
        init_linear: bool = True, fixed: tuple[int, ...] = (),
        box: tuple[np.ndarray, float] | None = None, curved: bool = False,
        covariance: bool = True) -> FitResult:
    """Levenberg–Marquardt fit of all beads at once.

    Parameters
    ----------
    p0 : (N, P) initial parameters, P = :data:`NPAR` or :data:`NPAR_EDGE` (with edge term).
    data : (N, W, W) pixel values of each bead's window.
    wts : (N, W, W) inverse pixel variances (0 for padding / masked pixels; 1 = unweighted).
    pu, pv : (N, W) pixel-centre coordinates of the window columns / rows.
    rho : (2·LAG+1, 2·LAG+1) or None
        Normalised autocorrelation of the whitened noise; the centre covariance is the sandwich
        estimate under it (white noise when None).
    fixed : tuple of parameter indices held at their start values.
    box : ((N, 2) centres, half width) or None
        Keep each bead centre inside this box (a trust region while neighbours overlap).
    curved : bool
        Fit the edge term's curvature too; otherwise it is held at its start value.
    covariance : bool
        Compute the centre covariance (``cov_uv``; NaN without: for fits whose parameters only
        start later ones).
    """
    npar = p0.shape[1]
    free = np.ones(npar, bool)
    free[list(fixed)] = False
    if npar > NPAR and not curved:
        free[IEK] = False
    n = len(p0)
    cu = pu[:, setup.half].astype(float)
    cv = pv[:, setup.half].astype(float)
    p = _clip(linear_init(p0, data, wts, pu, pv, cu, cv, setup) if init_linear
              else p0.copy(), setup)
    lam = np.full(n, 1e-3)
    held = tuple(int(i) for i in np.flatnonzero(~free))
    model, J = model_and_jacobian(p, pu, pv, cu, cv, setup, held=held)
    r = data - model
    cost = np.einsum("nij,nij->n", wts, r * r)
    active = np.ones(n, bool)
    eye = np.eye(npar)
    w32 = wts.reshape(n, 1, -1).astype(np.float32)
    for _ in range(iterations):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        Jf = (J if idx.size == n else J[idx]).reshape(idx.size, npar, -1)
        Jw = Jf * (w32 if idx.size == n else w32[idx])
        H = (Jw @ np.swapaxes(Jf, 1, 2)).astype(np.float64)
        grad = (Jw @ r[idx].reshape(idx.size, -1, 1).astype(np.float32))[..., 0].astype(float)
        d = np.diagonal(H, axis1=1, axis2=2)
        Hd = H + (lam[idx, None] * d + 1e-12 * d.max(1, keepdims=True) + 1e-300
                  + ~free)[:, :, None] * eye
        step = np.linalg.solve(Hd, grad[..., None])[..., 0]
        pt = _clip(p[idx] + step, setup)
        if box is not None:
            pt[:, :2] = np.clip(pt[:, :2], box[0][idx] - box[1], box[0][idx] + box[1])
        # the model first; the Jacobian only where the step is accepted (about half of the
        # trial steps are not, and the Jacobian costs five times the model); both on the
        # sub-grid of all trial steps, so that the result does not depend on which are accepted
        g = _grid(setup, pt)
        S = sharp_profile(pt, g, setup.rim)[0].astype(np.float32)    # for both
        mt = model_and_jacobian(pt, pu[idx], pv[idx], cu[idx], cv[idx], setup, False, g, S=S)[0]
        rt = data[idx] - mt
        ct = np.einsum("nij,nij->n", wts[idx], rt * rt)
        ok = ct <= cost[idx]
        acc = idx[ok]
        small = np.max(np.abs(step[:, :2]), axis=1) < 1e-4
        rel = (cost[idx] - np.where(ok, ct, cost[idx])) / np.maximum(cost[idx], 1e-300)
        if acc.size:
            J[acc] = model_and_jacobian(pt[ok], pu[acc], pv[acc], cu[acc], cv[acc], setup, True,
                                        g, held, S[ok])[1]
        p[acc], model[acc], r[acc], cost[acc] = pt[ok], mt[ok], rt[ok], ct[ok]
        # converged: an accepted, small Gauss–Newton-like step (not one shrunk by damping)
        done = (ok & small & (rel < 1e-6)) | (lam[idx] > 1e8)
        lam[acc] = np.maximum(lam[acc] * 0.3, 1e-7)
        lam[idx[~ok]] *= 10.0
        active[idx[done]] = False
    npix = (wts > 0).reshape(n, -1).sum(1)
    chi2 = cost / np.maximum(npix - npar, 1)
    if not covariance:
        return FitResult(params=p, cov_uv=np.full((n, 2, 2), np.nan), resid=r, model=model,
                         chi2_red=chi2, npix=npix)
    Jf = J.reshape(n, npar, -1).astype(np.float64)
    sw = np.sqrt(wts).reshape(n, 1, -1)
    Jw = Jf * sw
    H = Jw @ np.swapaxes(Jw, 1, 2)
    H += 1e-9 * eye * np.maximum(np.diagonal(H, axis1=1, axis2=2).max(1), 1e-300)[:, None, None]
    Hinv = np.linalg.pinv(H, hermitian=True)
    if rho is None:
        cov = Hinv[:, :2, :2]
    else:
        G = (Hinv[:, :2, :] @ Jw).reshape(n, 2, *data.shape[1:])    # influence images
        cov = np.zeros((n, 2, 2))
        W = data.shape[1]
        for dy in range(-LAG, LAG + 1):
            for dx in range(-LAG, LAG + 1):
                c = rho[dy + LAG, dx + LAG]
                if c == 0.0:
                    continue
                a = G[:, :, max(0, -dy):W - max(0, dy), max(0, -dx):W - max(0, dx)]
                b = G[:, :, max(0, dy):W - max(0, -dy), max(0, dx):W - max(0, -dx)]
                cov += c * np.einsum("niyx,njyx->nij", a, b)
        cov = 0.5 * (cov + np.swapaxes(cov, 1, 2))
    cov = cov * chi2[:, None, None]
    return FitResult(params=p, cov_uv=cov, resid=r, model=model, chi2_red=chi2, npix=npix)


def transmission_variance(t: np.ndarray, resid: np.ndarray, inside: np.ndarray,
                          use: np.ndarray, *, bins: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Pixel variance as a function of the bead's modelled transmission ``t = 1 − B``.

    Quantum and read-out noise make the variance of a pixel behind a bead depend on how much of
    the beam the bead blocks (in any display). Pooled over beads, each bead's squared
    residuals are normalised by its own background variance (pixels with t > 0.98) and
    averaged in quantile bins of ``t``.

    Returns
    -------
    knots, rel_var : (K,) increasing t and the variance relative to the background's.
    """
    m = (inside > 0) & use[:, None, None]
    bgm = m & (t > 0.98)
    nb = bgm.sum(axis=(1, 2))
    s2 = (resid ** 2 * bgm).sum(axis=(1, 2)) / np.maximum(nb, 1)
    ok = use & (nb > 10) & (s2 > 0)
    m &= ok[:, None, None]
    z2 = (resid ** 2 / np.where(ok, s2, 1.0)[:, None, None])[m]
    tt = t[m]
    inner = tt <= 0.98
    if inner.sum() < 4 * bins:
        return np.array([0.0, 1.0]), np.array([1.0, 1.0])
    order = np.argsort(tt[inner])
    ti, zi = tt[inner][order], z2[inner][order]
    edges = np.linspace(0, ti.size, bins + 1).astype(int)
    knots = np.array([ti[a:b].mean() for a, b in pairwise(edges)] + [1.0])
    rel = np.array([zi[a:b].mean() for a, b in pairwise(edges)] + [1.0])
    keep = np.concatenate([np.diff(knots) > 0, [True]])
    return knots[keep], np.maximum(rel[keep], 1e-3)


def _blur_kernel(sigma: float, half: int = 4) -> np.ndarray:
    x = np.arange(-half, half + 1)
    g = np.exp(-0.5 * (x / max(sigma, 1e-3)) ** 2)
    g = np.outer(g, g)
    return g / g.sum()


def _corr(k: np.ndarray, dy: int, dx: int) -> float:
    a = np.pad(k, LAG + 2)
    b = np.roll(np.roll(a, dy, 0), dx, 1)
    return float((a * b).sum() / (a * a).sum())


_LAP = np.array([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


def variance_inflation(rho: np.ndarray) -> float:
    """Factor (≥ 1) by which correlated noise of normalised autocorrelation ``rho`` inflates a
    reduced χ² as the unit of a χ² test: the sum of ``rho`` over its lags."""
    return max(float(rho.sum()), 1.0)


def noise_correlation(image: np.ndarray) -> tuple[np.ndarray, float]:
    """Normalised autocorrelation (2·LAG+1, 2·LAG+1) of the pixel noise of ``image``, and σ_n
    (:func:`noise_blur`, :func:`blur_correlation`)."""
    s_n = noise_blur(image)
    return blur_correlation(s_n), s_n


def noise_blur(image: np.ndarray) -> float:
    """Width σ_n (px) of the Gaussian that, blurring white noise, gives the pixel noise of
    ``image`` its correlation.

    Detector blur after quantum absorption correlates neighbouring pixels' noise. σ_n is found
    by matching the lag-1 correlation of the 4-neighbour Laplacian of the image (which removes
    the smooth anatomy; strong structure is trimmed at 4 robust σ) to its prediction.
    """
    st = max(2, image.shape[0] // 500)           # every st-th row suffices
    c = image[1:-1:st, 1:-1]
    L = (image[:-2:st, 1:-1] + image[2::st, 1:-1] + image[1:-1:st, :-2] + image[1:-1:st, 2:]
         - 4.0 * c)[:, :-1].astype(np.float64)
    R = (image[:-2:st, 2:] + image[2::st, 2:] + image[1:-1:st, 1:-1] + np.pad(
        image[1:-1:st, 3:], ((0, 0), (0, 1)), mode="edge") - 4.0 * image[1:-1:st, 2:])
    R = R[:, : L.shape[1]].astype(np.float64)
    mad = 1.4826 * np.median(np.abs(L[::4, ::4])) + 1e-30
    m = (np.abs(L) < 4 * mad) & (np.abs(R) < 4 * mad)
    den = np.sqrt(np.sum(L[m] ** 2) * np.sum(R[m] ** 2))
    r1 = float(np.sum(L[m] * R[m]) / den) if den > 0 else -1.0   # no noise: white
    sig, pred = _laplacian_lag1()
    return float(np.interp(r1, pred, sig, left=0.0))


@functools.cache
def _laplacian_lag1() -> tuple[np.ndarray, np.ndarray]:
    """Blur widths σ and the lag-1 correlation of the Laplacian of white noise blurred by
    each (increasing), for :func:`noise_blur`."""
    sig = np.linspace(0.2, 1.6, 57)
    pred = []
    for s_ in sig:
        k = _blur_kernel(s_)
        kl = np.zeros((k.shape[0] + 2, k.shape[1] + 2))
        for dy in range(3):          # Laplacian ⊗ blur kernel
            for dx in range(3):
                kl[dy:dy + k.shape[0], dx:dx + k.shape[1]] += _LAP[dy, dx] * k
        pred.append(_corr(kl, 0, 1))
    return sig, np.array(pred)


def blur_correlation(s_n: float) -> np.ndarray:
    """Normalised autocorrelation (2·LAG+1, 2·LAG+1) of white noise blurred by a Gaussian of
    width ``s_n`` px (:func:`noise_blur`)."""
    k = _blur_kernel(s_n)
    return np.array([[_corr(k, dy, dx) for dx in range(-LAG, LAG + 1)]
                     for dy in range(-LAG, LAG + 1)])
