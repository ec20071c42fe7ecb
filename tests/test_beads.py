"""Segments defined by bead ids (DESIGN §4, definition (1)): `rsa beads` on the reference exam,
ids assigned to segments, then the full analysis — against the phantom's truth.

The reduced-resolution phantom of tests/test_pipeline.py (1500 px at 0.286 mm) keeps it fast.
"""

import json
import re
import warnings

import numpy as np
import pytest
from migration_targets import assert_migration_targets
from typer.testing import CliRunner

from rsa.cli import app
from rsa.errors import RsaWarning
from rsa.io.beadfile import read_bead_file
from rsa.pipeline import analyse_study
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
