"""The bead model's shortcuts (``rsa.detect_refine``) against the full computation.

``model_and_jacobian`` leaves the rows of held parameters zero without computing them, and
``fit`` evaluates the Jacobian only for accepted trial steps and skips the covariance when asked
to. Ground truth: the held rows against the full Jacobian, and a fit without covariance against
the same fit with it (and against the beads it was given).
"""

import numpy as np

from rsa import detect_refine as dr


def _beads(n: int, seed: int, log_display: bool):
    """Random beads (radius 3.5–5 px, slightly elliptical, blur 0.8–1.4 px) in their windows."""
    rng = np.random.default_rng(seed)
    setup = dr.make_setup(2.9, 5.6, sub=2)
    p = np.zeros((n, dr.NPAR))
    p[:, dr.IU] = 500 + rng.uniform(-0.5, 0.5, n)
    p[:, dr.IV] = 700 + rng.uniform(-0.5, 0.5, n)
    p[:, dr.IR] = rng.uniform(3.5, 5.0, n)
    p[:, dr.IE1], p[:, dr.IE2] = rng.uniform(-0.15, 0.15, (2, n))
    p[:, dr.ILS] = np.log(rng.uniform(0.8, 1.4, n))
    p[:, dr.ILK] = np.log(5.0)
    p[:, dr.ILC] = 5.0 if log_display else 0.0
    p[:, dr.IA] = rng.uniform(0.2, 0.4, n)
    p[:, dr.IB0:] = rng.normal(0.0, 0.01, (n, dr.NPAR - dr.IB0))
    p[:, dr.IB0] = 0.3
    pu = np.rint(p[:, dr.IU])[:, None] + np.arange(-setup.half, setup.half + 1)
    pv = np.rint(p[:, dr.IV])[:, None] + np.arange(-setup.half, setup.half + 1)
    return p, pu, pv, setup


def test_held_rows_are_zero_and_the_others_unchanged():
    p, pu, pv, setup = _beads(5, 2, True)
    cu, cv = pu[:, setup.half], pv[:, setup.half]
    m_full, J_full = dr.model_and_jacobian(p, pu, pv, cu, cv, setup)
    held = (dr.ILK, dr.ILC, dr.IE2)
    m_held, J_held = dr.model_and_jacobian(p, pu, pv, cu, cv, setup, held=held)
    assert np.array_equal(m_full, m_held)
    assert not J_held[:, list(held)].any()
    free = [i for i in range(dr.NPAR) if i not in held]
    assert np.array_equal(J_full[:, free], J_held[:, free])


def test_fit_without_covariance_is_the_same_fit():
    p, pu, pv, setup = _beads(8, 3, True)
    cu, cv = pu[:, setup.half], pv[:, setup.half]
    rng = np.random.default_rng(4)
    data = dr.model_and_jacobian(p, pu, pv, cu, cv, setup, jac=False)[0]
    data = data + rng.normal(0.0, 0.003, data.shape)
    start = p.copy()
    start[:, [dr.IU, dr.IV]] += rng.uniform(-0.4, 0.4, (len(p), 2))
    start[:, dr.IR] *= 0.9
    wts = np.ones_like(data)
    a = dr.fit(start, data, wts, pu, pv, setup, fixed=(dr.ILC, dr.ILK))
    b = dr.fit(start, data, wts, pu, pv, setup, fixed=(dr.ILC, dr.ILK), covariance=False)
    for name in ("params", "model", "resid", "chi2_red", "npix"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert np.isnan(b.cov_uv).all()
    assert np.isfinite(a.cov_uv).all()
    # and the fit found the beads: centres within 5 sigma of the truth
    err = np.abs(a.params[:, [dr.IU, dr.IV]] - p[:, [dr.IU, dr.IV]])
    sig = np.sqrt(np.diagonal(a.cov_uv, axis1=1, axis2=2))
    assert np.all(err <= 5 * sig), (err / sig).max()
