"""A patient bead touching a cage marker, from the phantom, against its truth.

Regression test of the deblending stage of ``rsa.detect_stages.refine_candidates``. In view B of
the reference exam of the uniplanar implant phantom, seed 1 (as ``rsa phantom`` /
``rsa.synthetic.write_study`` render it), the patient bead implant-01 touches a cage marker
(centres 6.6 px apart, radii 4.3 and 3.5 px). The candidate stage finds three candidates there:
one on each bead and one on the saddle between them. The first pass fits the saddle candidate
onto the marker, a duplicate. While both took part in deblending, each subtracted the other's
model of that marker, drove both fits negative and lost the patient bead (the nearest detection
was 74 px away, so the bead was missing in that exam). The weaker of two candidates converged
on one bead now stays out of deblending.

Measured: implant-01 found 0.15 px from the truth (σ 0.06 px, flagged touching), the marker
0.58 px from it (σ 0.09 px). Both were lost before. The deblended centres are biased (the
first pass had put both within 0.04 px), beyond their σ: not asserted, a known limitation of
deblending strongly touching beads of different size.
"""

import numpy as np
import pytest

from rsa.detect import detect_beads
from rsa.synthetic.render import RenderOptions, render_view
from rsa.synthetic.scene import build_scene

SEED = 1


@pytest.fixture(scope="module")
def touching_view():
    scene = build_scene("implant", setup="uniplanar", seed=SEED)
    i, exam = next((i, e) for i, e in enumerate(scene.exams) if e.id == "REF")
    j, view = next((j, v) for j, v in enumerate(exam.views) if v.name == "B")
    beads = scene.exam_beads(exam)
    cage = scene.cage
    centres = np.concatenate([cage.xyz_mm, *beads.values()])
    radii = np.concatenate([cage.diameter_mm, *(s.diameter_mm for s in scene.segments)]) / 2
    # the study's render options and noise stream (rsa.synthetic.study.write_study)
    rv = render_view(view, centres, radii, capsules=scene.exam_capsules(exam),
                     options=RenderOptions(background_seed=SEED),
                     rng=np.random.default_rng([SEED, 2, i, j]))
    n_cage = len(cage.xyz_mm)
    uv = rv.uv_px
    names = [f"{s.name}-{k + 1:02d}" for s in scene.segments for k in range(len(s.diameter_mm))]
    bead = uv[n_cage + names.index("implant-01")]
    marker = uv[:n_cage][np.argmin(np.linalg.norm(uv[:n_cage] - bead, axis=1))]
    return rv, view, bead, marker


def test_scene_is_a_bead_touching_a_marker(touching_view):
    _, _, bead, marker = touching_view
    assert 5.0 < np.linalg.norm(bead - marker) < 8.0   # radii 4.3 and 3.5 px: discs touch


def test_bead_touching_marker_found(touching_view):
    rv, view, bead, marker = touching_view
    beads = detect_beads(rv.image, pixel_spacing_mm=view.pixel_spacing_mm)
    d = np.linalg.norm(beads.uv_px - bead, axis=1)
    j = int(np.argmin(d))
    # found: within 0.5 px (a bead's disc is ≈ 4 px in radius; the measured error is 0.15 px)
    assert d[j] < 0.5, d[j]
    assert beads.touching[j]
    # the marker is found too, not merged with the bead (measured 0.58 px: see module doc)
    assert np.min(np.linalg.norm(beads.uv_px - marker, axis=1)) < 1.0
