"""Segments defined by bead ids (DESIGN §4, definition (1)): `rsa beads` on the reference exam,
ids assigned to segments, then the full analysis — against the phantom's truth. And definition
(3): `rsa beads --group` groups the beads by rigid motion across the series; segments name the
groups.

The reduced-resolution phantom of tests/test_pipeline.py (1500 px at 0.286 mm) keeps it fast.
"""

import csv
import json
import re
import warnings

import numpy as np
import pytest
from migration_targets import assert_migration_targets
from typer.testing import CliRunner

from rsa.cli import app
from rsa.errors import RsaWarning
from rsa.grouping import TOL_MM
from rsa.io.beadfile import read_bead_file, read_bead_groups
from rsa.pipeline import analyse_study
from rsa.rigid import fit_rigid
from rsa.synthetic import write_study

SMALL = {"detector_px": 1500, "pixel_spacing_mm": 0.286}
SEGMENT = re.compile(r"\[\[subjects\.segments\]\].*?(?=\[\[subjects\.exams\]\])", re.S)
MOTIONS = re.compile(r"\[\[motions\]\].*?(?=\[\[subjects\]\])", re.S)


@pytest.fixture(scope="module")
def listed(tmp_path_factory):
    base = tmp_path_factory.mktemp("beads")
    study = write_study(base / "study", setup="uniplanar", variant="implant", seed=3, **SMALL)
    text = (study / "study.toml").read_text()
    # the manifest a user has before the segments are known: exams only
    bare = SEGMENT.sub("", MOTIONS.sub("", text))
    (study / "listing.toml").write_text(bare)
    res = CliRunner().invoke(app, ["beads", str(study / "listing.toml"), "--out",
                                   str(study / "ref_beads.csv"), "--figure",
                                   str(base / "ref_beads.png")])
    assert res.exit_code == 0, res.output
    return study, text, base


def test_listing_has_every_reference_bead(listed):
    study, _, base = listed
    assert (base / "ref_beads.png").stat().st_size > 10_000
    beads = read_bead_file(study / "ref_beads.csv")
    ids, xyz = list(beads), np.array(list(beads.values()))
    truth = json.loads((study / "truth.json").read_text())
    ref = next(e for e in truth["exams"] if e["id"] == "REF")
    for name, seg in ref["segments"].items():
        d = np.linalg.norm(np.asarray(seg["xyz_mm"])[:, None] - xyz[None], axis=-1).min(axis=1)
        # completeness of detection is measured by benchmarks/bench_pipeline.py; here: the
        # listed beads are the measured ones (3D error ≈ 0.01 mm at this resolution, beads
        # ≥ 8 mm apart) and enough of each segment are listed to define it
        found = d < 1.0
        assert np.all(d[found] < 0.1), (name, d)
        assert found.sum() >= 4, (name, d)
    assert ids == sorted(ids)   # ids in listing order P01, P02, ...


def test_analysis_with_segments_by_bead_id(listed):
    study, text, base = listed
    beads = read_bead_file(study / "ref_beads.csv")
    ids, xyz = list(beads), np.array(list(beads.values()))
    truth = json.loads((study / "truth.json").read_text())
    ref = next(e for e in truth["exams"] if e["id"] == "REF")
    # the user's assignment (read off the overlay figure): here the listed point at each bead
    blocks = []
    for name, seg in ref["segments"].items():
        d = np.linalg.norm(np.asarray(seg["xyz_mm"])[:, None] - xyz[None], axis=-1)
        chosen = ", ".join(f'"{ids[k]}"' for k in d.argmin(axis=1)[d.min(axis=1) < 1.0])
        blocks.append(f'[[subjects.segments]]\nname = "{name}"\ndefinition = "beads"\n'
                      f'bead_file = "ref_beads.csv"\nbeads = [{chosen}]\n\n')
    segs = list(SEGMENT.finditer(text))
    new = text[:segs[0].start()] + "".join(blocks) + text[segs[-1].end():]
    (study / "by_id.toml").write_text(new)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RsaWarning)
        result = analyse_study(study / "by_id.toml", base / "out", executor="serial")
    assert_migration_targets(result, study / "truth.json")
    s = result.series[0]
    for name, seg in s.segments.items():
        assert seg.observed_index[0].min() >= 0, name   # every listed bead labelled in REF


# -- definition (3): rigid groups ----------------------------------------------------------------
@pytest.fixture(scope="module")
def grouped(tmp_path_factory):
    """The spine phantom (L4 and L5; flexion/extension frames) through `rsa beads --group`."""
    base = tmp_path_factory.mktemp("groups")
    # seed 4: its coordinate-defined analysis meets the targets at this resolution (seed 3's
    # misses the rotation target: rz RMS 0.056°), so the test isolates the grouping
    study = write_study(base / "study", setup="uniplanar", variant="spine", seed=4, **SMALL)
    text = (study / "study.toml").read_text()
    (study / "listing.toml").write_text(SEGMENT.sub("", MOTIONS.sub("", text)))
    res = CliRunner().invoke(app, ["beads", str(study / "listing.toml"), "--out",
                                   str(study / "ref_beads.csv"), "--group"])
    assert res.exit_code == 0, res.output
    return study, text, base, res.output


def _truth_segments(study):
    """Each listed point's true vertebra ('' for none) and the truth's poses per exam."""
    truth = json.loads((study / "truth.json").read_text())
    beads = read_bead_file(study / "ref_beads.csv")
    xyz = np.array(list(beads.values()))
    ref = next(e for e in truth["exams"] if e["id"] == "REF")
    owner = np.full(len(xyz), "", dtype=object)
    for name, seg in ref["segments"].items():
        d = np.linalg.norm(np.asarray(seg["xyz_mm"])[:, None] - xyz[None], axis=-1)
        near = d.min(axis=1) < 1.0   # listed points are ≈ 0.01 mm from their bead, beads ≥ 8 mm
        owner[d.argmin(axis=1)[near]] = name
    return list(beads), owner, truth


def _relative_motion(truth):
    """Smallest over the beads of either vertebra of the largest (over exams) distance from
    where the other vertebra's true pose puts the bead."""
    ref = next(e for e in truth["exams"] if e["id"] == "REF")["segments"]
    names = list(ref)
    worst = np.inf
    for a, b in (names, names[::-1]):
        x_a, x_b = np.asarray(ref[a]["xyz_mm"]), np.asarray(ref[b]["xyz_mm"])
        moved = np.array([[e["segments"][n]["xyz_mm"] for n in (a, b)]
                          for e in truth["exams"] if e["id"] != "REF"])   # (E, 2, n, 3)
        pose_b = fit_rigid(x_b, moved[:, 1])
        d = np.linalg.norm(pose_b.apply(x_a[None]) - moved[:, 0], axis=-1)
        worst = min(worst, d.max(axis=0).min())
    return worst


def test_groups_are_the_vertebrae(grouped):
    study, _, _, output = grouped
    truth = json.loads((study / "truth.json").read_text())
    # Every bead of L4 moves relative to L5's pose (and vice versa) in some exam by more than
    # the tolerance plus 5 × the phantom's 3D bead error (≈ 0.01 mm): the vertebrae are
    # separable (else they would come out as one group, the documented limitation).
    assert _relative_motion(truth) > TOL_MM + 0.05
    ids, owner, _ = _truth_segments(study)
    groups = read_bead_groups(study / "ref_beads.csv")
    with open(study / "ref_beads.csv", newline="") as fh:
        quality = {r["bead_id"]: r["quality"] for r in csv.DictReader(fh)}
    listed = {name: [b for b, o in zip(ids, owner, strict=True)
                     if o == name and quality[b] == "bead"] for name in truth["segments"]}
    found = {name: {groups[b] for b in beads} for name, beads in listed.items()}
    assert all(len(b) >= 3 for b in listed.values()), listed
    assert all(len(g) == 1 and "" not in g for g in found.values()), found   # one group each
    assert len(set.union(*found.values())) == len(found), found             # different groups
    assert set(groups.values()) - {""} == set.union(*found.values()), groups  # and no other
    # candidates and points of no vertebra are in no group
    assert all(groups[b] == "" for b, o in zip(ids, owner, strict=True)
               if quality[b] == "candidate" or not o)
    assert "group" in output
    assert "G1" in output


def test_analysis_with_segments_by_group(grouped):
    study, text, base, _ = grouped
    ids, owner, truth = _truth_segments(study)
    groups = read_bead_groups(study / "ref_beads.csv")
    blocks = []
    for name in ("L4", "L5"):
        (g,) = {groups[b] for b, o in zip(ids, owner, strict=True) if o == name and groups[b]}
        blocks.append(f'[[subjects.segments]]\nname = "{name}"\nrole = "vertebra"\n'
                      f'definition = "beads"\nbead_file = "ref_beads.csv"\ngroup = "{g}"\n\n')
    segs = list(SEGMENT.finditer(text))
    text = text[:segs[0].start()] + "".join(blocks) + text[segs[-1].end():]
    # Candidate points join no group, so a segment may lack a bead of the truth's definition;
    # report the motion of the truth's point (centroid) and MTPM points, given as coordinates
    # (as from an insertion plan), so that measured and true motion refer to the same points.
    ref = next(e for e in truth["exams"] if e["id"] == "REF")
    l4 = np.asarray(ref["segments"]["L4"]["xyz_mm"])
    assert 'point = "centroid"' in text
    text = text.replace('point = "centroid"', f"point = {l4.mean(axis=0).tolist()}\n"
                        f"points_mm = {l4.tolist()}")
    (study / "by_group.toml").write_text(text)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RsaWarning)
        result = analyse_study(study / "by_group.toml", base / "out", executor="serial")
    assert_migration_targets(result, study / "truth.json")
    for name, seg in result.series[0].segments.items():
        assert seg.observed_index[0].min() >= 0, name   # every grouped bead labelled in REF


def test_grouping_needs_a_series(tmp_path):
    from rsa.beads import BeadListing, group_listing
    from rsa.errors import InputError
    from rsa.io.manifest import load_manifest

    path = tmp_path / "one.toml"
    path.write_text('schema = "rsa-study/1"\n[study]\nid = "T"\ncage = "uniplanar"\n'
                    'region = "spine"\n[[subjects]]\nid = "S01"\n[[subjects.exams]]\n'
                    'id = "REF"\ndate = "2026-01-05"\nkind = "reference"\n'
                    'images = [{ file = "ab.dcm", views = ["A", "B"] }]\n')
    study = load_manifest(path, check_files=False, segments_required=False)
    listing = BeadListing("S01", study.subjects[0].reference, (), None, np.zeros(0, int))
    with pytest.raises(InputError, match=r"one\.toml: subject S01 has no exam besides REF; "
                                         r"grouping beads by their motion needs a series"):
        group_listing(study, listing)


def test_tol_without_group_is_refused(tmp_path):
    res = CliRunner().invoke(app, ["beads", str(tmp_path / "none.toml"), "--out",
                                   str(tmp_path / "b.csv"), "--tol", "0.2"])
    assert res.exit_code == 2
    assert "--tol applies to --group only" in res.output
