"""One view of a bundled phantom study, exactly as the study renders it (test helper)."""

import numpy as np
from scipy.spatial import cKDTree

from rsa.synthetic.scene import build_scene
from rsa.synthetic.study import render_exam_view


def phantom_view(variant: str, seed: int, exam_id: str, view_name: str,
                 setup: str = "uniplanar", noise_draw: int = 0):
    """The scene, the view's geometry, the rendered view (``rsa.synthetic.write_study``'s
    image and truth for that seed and noise draw) and the patient beads' true projections by name
    (``"L5-05"``: segment name and 1-based bead number)."""
    scene = build_scene(variant, setup=setup, seed=seed)
    i, exam = next((i, e) for i, e in enumerate(scene.exams) if e.id == exam_id)
    j, view = next((j, v) for j, v in enumerate(exam.views) if v.name == view_name)
    rv = render_exam_view(scene, i, j, seed=seed, noise_draw=noise_draw)
    names = [f"{s.name}-{k + 1:02d}" for s in scene.segments for k in range(len(s.diameter_mm))]
    n_cage = len(scene.cage.xyz_mm)
    beads = dict(zip(names, rv.uv_px[n_cage:n_cage + len(names)], strict=True))
    return scene, view, rv, beads


def assert_visible(rv, bead) -> None:
    """The sphere of the rendered view ``rv`` whose true projection is nearest ``bead`` (px) is
    neither hidden (behind the implants) nor clipped at the image border."""
    k = int(np.argmin(np.linalg.norm(rv.uv_px - bead, axis=1)))
    assert not rv.hidden[k]
    assert not rv.clipped[k]


def assert_found(found, bead, max_px: float = 0.5, n_sigma: float = 3.0) -> None:
    """The detection nearest the true projection ``bead`` (px) of the detections ``found``
    (:class:`rsa.detect.Beads2D`) lies within ``max_px`` of it and within ``n_sigma`` of its
    own ``sigma_px`` on both axes."""
    d = np.linalg.norm(found.uv_px - bead, axis=1)
    k = int(np.argmin(d))
    assert d[k] < max_px, d[k]
    assert np.all(np.abs(found.uv_px[k] - bead) <= n_sigma * found.sigma_px[k]), (
        found.uv_px[k] - bead, found.sigma_px[k])


def nearest_detections(found, uv_true):
    """For each true centre ``uv_true`` (N, 2) px, the nearest of the detections ``found``
    (:class:`rsa.detect.Beads2D`): distance, index and error (detected − true)."""
    d, j = cKDTree(found.uv_px).query(uv_true)
    return d, j, found.uv_px[j] - uv_true
