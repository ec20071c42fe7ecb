"""End-to-end: phantom radiographs → detection → calibration → labelling → migration vs truth.

A reduced-resolution phantom (1500 px at 0.286 mm instead of 3000 px at 0.143 mm) keeps the
test fast; the full-size bundled studies are measured by benchmarks/bench_pipeline.py.
"""

import json
import shutil
import warnings
from concurrent.futures import Executor, Future, ProcessPoolExecutor

import numpy as np
import pydicom
import pytest
from migration_targets import assert_migration_targets

from rsa.errors import CalibrationError, InputError, RsaWarning
from rsa.io.manifest import load_manifest
from rsa.io.store import ResultStore
from rsa.pipeline import (
    ExamMeasurement,
    _bead_sigma,
    _read_and_split,
    analyse_study,
    bead_status,
    measure_exam,
)
from rsa.series import analyse_subject
from rsa.synthetic import write_study

SMALL = {"detector_px": 1500, "pixel_spacing_mm": 0.286}


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    base = tmp_path_factory.mktemp("e2e")
    study = write_study(base / "study", setup="uniplanar", variant="implant", seed=5, **SMALL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RsaWarning)
        result = analyse_study(study / "study.toml", base / "out", executor="process")
    return study, base / "out", result


def test_migration_matches_truth(analysed):
    study, _, result = analysed
    assert_migration_targets(result, study / "truth.json")


def test_beads_labelled_correctly(analysed):
    study, _, result = analysed
    with open(study / "truth.json", encoding="utf-8") as fh:
        truth = {e["id"]: e for e in json.load(fh)["exams"]}
    s = result.series[0]
    for e_i, exam in enumerate(s.exams):
        m = result.measurements[f"S01/{exam.id}"]
        for name, seg in s.segments.items():
            true_xyz = np.asarray(truth[exam.id]["segments"][name]["xyz_mm"])
            idx = seg.observed_index[e_i]
            ok = idx >= 0
            # every labelled bead is the right bead (3D error far below the 4 mm spacing)
            err = np.linalg.norm(m.points_mm[idx[ok]] - true_xyz[ok], axis=1)
            assert np.all(err < 0.3), (exam.id, name, err)
            assert ok.sum() >= 4, (exam.id, name)


def test_bead_status():
    pts = np.zeros((4, 3))
    m = ExamMeasurement("S", "E", pts, np.zeros(4), np.zeros((4, 2)), np.zeros((4, 2)),
                        np.zeros(4, bool), (), (), "k", likely=np.array([1, 0, 1, 1], bool),
                        misfit=np.array([0, 0, 1, 0], bool))
    np.testing.assert_array_equal(m.weak, [False, True, True, False])
    # a claimed point is a bead whatever its quality; an unclaimed weak one is rejected
    np.testing.assert_array_equal(bead_status(m, np.array([0, 1])),
                                  ["labelled", "labelled", "rejected", "unassigned"])
    plain = ExamMeasurement("S", "E", pts, np.zeros(4), np.zeros((4, 2)), np.zeros((4, 2)),
                            np.zeros(4, bool), (), (), "k")
    assert not plain.weak.any()


def test_store_bead_status(analysed):
    _, out, result = analysed
    with ResultStore(out / "results.sqlite") as store:
        beads = store.rows("beads")
    s = result.series[0]
    for e_i, exam in enumerate(s.exams):
        rows = [b for b in beads if b["exam_key"] == f"S01/{exam.id}"]
        m = result.measurements[f"S01/{exam.id}"]
        assert len(rows) == len(m.cle_mm)
        claimed = np.concatenate([seg.observed_index[e_i] for seg in s.segments.values()])
        n_lab = int(np.sum(claimed >= 0))
        assert sum(b["status"] == "labelled" for b in rows) == n_lab
        assert all((b["status"] == "labelled") == bool(b["segment"]) for b in rows)
        assert all(b["status"] != "rejected" or b["likely"] == 0 or b["misfit"] == 1
                   for b in rows)


def test_store_exports_and_precision(analysed):
    _, out, result = analysed
    assert (out / "results.json").is_file()
    with ResultStore(out / "results.sqlite") as store:
        motions = store.rows("motions")
        assert len(motions) == len(result.series[0].exams)
        runs = store.rows("runs")
        assert runs[0]["cpt_code"] == "0350T"
        prec = [r for r in store.rows("precision") if r["component"] == "ty"]
    assert prec[0]["n"] == 3  # three double exams in the phantom
    p = result.precision["implant/tibia"]
    np.testing.assert_allclose(prec[0]["sd"], p.signed.sd[1])


def test_resume_reuses_stored_exams(analysed):
    study, out, result = analysed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RsaWarning)
        again = analyse_study(study / "study.toml", out, executor="serial")
    assert all("resumed" in m.seconds for m in again.measurements.values())
    for key, m in result.measurements.items():   # point quality survives the store
        np.testing.assert_array_equal(again.measurements[key].likely, m.likely)
        np.testing.assert_array_equal(again.measurements[key].misfit, m.misfit)
        # each view's centre σ (the triangulation's weights): positive, and stored exactly
        assert m.sigma_px.shape == (len(m.cle_mm), 2, 2)
        assert np.all(m.sigma_px > 0)
        np.testing.assert_array_equal(again.measurements[key].sigma_px, m.sigma_px)
        # each point's covariance (the segment fits' weights): symmetric positive definite,
        # stored exactly
        assert m.cov_mm2.shape == (len(m.cle_mm), 3, 3)
        np.testing.assert_array_equal(m.cov_mm2, np.swapaxes(m.cov_mm2, 1, 2))
        assert np.all(np.linalg.eigvalsh(m.cov_mm2) > 0)
        np.testing.assert_array_equal(again.measurements[key].cov_mm2, m.cov_mm2)
    a = result.series[0].motions["implant/tibia"].translation_mm
    b = again.series[0].motions["implant/tibia"].translation_mm
    # stored at full float precision (SQLite REAL) → identical motions
    np.testing.assert_allclose(a, b, atol=1e-12)


def test_segment_fits_weight_each_bead_by_its_points_covariance(analysed):
    """The study's segment fits are those of its points weighted by their own triangulation
    covariance, plus the CLE² of an unlikely pair only (``rsa.pipeline._bead_cov``): an
    isotropic term added to every bead (CLE² + floor², the weights of earlier versions) changes
    the fitted poses."""
    _, _, result = analysed
    spec, subj = result.study, result.study.subjects[0]
    meas = [result.measurements[f"{subj.id}/{e.id}"] for e in subj.exams]
    sig = [_bead_sigma(m) for m in meas]

    def fitted(extra_mm2):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RsaWarning)
            s = analyse_subject(subj, [m.points_mm for m in meas], spec.motions, spec.thresholds,
                                sigma_mm=sig, likely=[m.likely for m in meas],
                                cov_mm2=[m.cov_mm2 + e[:, None, None] * np.eye(3)
                                         for m, e in zip(meas, extra_mm2, strict=True)])
        return s.motions["implant/tibia"].translation_mm

    own = fitted([np.where(m.likely, 0.0, m.cle_mm ** 2) for m in meas])
    np.testing.assert_allclose(result.series[0].motions["implant/tibia"].translation_mm, own,
                               rtol=0, atol=1e-12)
    older = fitted([0.005 ** 2 + m.cle_mm ** 2 for m in meas])
    assert np.nanmax(np.abs(older - own)) > 1e-6


def test_where_the_views_are_detected_does_not_change_the_measurement(analysed):
    """Two worker processes (a view pool), two threads, or one thread: the same measurement as
    the fixture's (each exam measured whole in a process-pool worker)."""
    study, _, result = analysed
    spec = load_manifest(study / "study.toml")
    subj = spec.subjects[0]
    exam = subj.exams[1]
    ref = result.measurements[f"{subj.id}/{exam.id}"]
    with ProcessPoolExecutor(max_workers=2) as pool:
        pooled = measure_exam(exam, subj.id, spec, view_pool=pool)
    for m in (pooled, measure_exam(exam, subj.id, spec, view_threads=2),
              measure_exam(exam, subj.id, spec)):
        np.testing.assert_array_equal(m.points_mm, ref.points_mm)
        np.testing.assert_array_equal(m.sigma_px, ref.sigma_px)


@pytest.fixture
def copy(analysed, tmp_path):
    """A copy of the analysed study's files, to edit."""
    dst = tmp_path / "study"
    shutil.copytree(analysed[0], dst)
    return dst


@pytest.mark.parametrize("executor", ["serial", "views"])
def test_swapped_views_said_whichever_process_calibrates(copy, tmp_path, executor):
    """The reference exam's two files given as each other's view: the views' calibrations in
    the view pool's workers fail as in this process, and the same diagnosis comes back."""
    manifest = copy / "study.toml"
    text = manifest.read_text()
    a, b = 'file = "S01/REF_A.dcm"', 'file = "S01/REF_B.dcm"'
    assert a in text
    assert b in text
    manifest.write_text(text.replace(a, "@@").replace(b, a).replace("@@", b))
    with pytest.raises(CalibrationError, match="views swapped"):
        analyse_study(manifest, tmp_path / "out", executor=executor)
    assert not (tmp_path / "out" / "results.json").exists()


class _EditingPool(Executor):
    """Runs each job at once, here; after the first, rewrites ``path`` (a header field only):
    the file a worker read is no longer the one this process then reads."""

    def __init__(self, path):
        self.path, self.edited = path, False

    def submit(self, fn, /, *args, **kwargs):
        f = Future()
        try:
            f.set_result(fn(*args, **kwargs))
        except Exception as exc:   # as a pool would hand it over
            f.set_exception(exc)
        if not self.edited:
            ds = pydicom.dcmread(self.path)
            ds.StudyDescription = "edited while analysed"
            ds.save_as(self.path)
            self.edited = True
        return f


def test_file_changed_between_reads(copy):
    """A view pool's worker and this process read each file once each (and a worker again for
    its splits): a file that changes in between (e.g. still being copied) is refused, not
    measured from two different images."""
    spec = load_manifest(copy / "study.toml")
    subj = spec.subjects[0]
    exam = subj.exams[0]
    with pytest.raises(InputError, match="the file changed while the exam was being analysed"):
        measure_exam(exam, subj.id, spec, view_pool=_EditingPool(exam.images[0].file))
    with pytest.raises(InputError, match="the file changed"):     # the splits' read
        _read_and_split(exam.images[0], exam.images[0].views[0], "0" * 64, None, (), 0.286)
