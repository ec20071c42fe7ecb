"""Study manifest validation: every hostile manifest gets an InputError naming file and field."""

import pytest

from rsa.errors import InputError
from rsa.io.manifest import load_manifest

GOOD = """
schema = "rsa-study/1"
[study]
id = "T"
cage = "uniplanar"
region = "spine"
[thresholds]
gate_mm = 0.4
[[motions]]
segment = "L4"
relative_to = "L5"
[[subjects]]
id = "S01"
[[subjects.segments]]
name = "L4"
xyz_mm = [[0, 0, 0], [10, 0, 0], [0, 10, 0]]
[[subjects.segments]]
name = "L5"
xyz_mm = [[0, 0, 30], [10, 0, 30], [0, 10, 30]]
[[subjects.exams]]
id = "REF"
date = "2026-01-05"
kind = "reference"
images = [{ file = "a.dcm", views = ["A"] }, { file = "b.dcm", views = ["B"] }]
[[subjects.exams]]
id = "M06"
date = "2026-07-05"
kind = "follow-up"
images = [{ file = "ab.dcm", views = ["A", "B"] }]
[[subjects.exams]]
id = "M06-D"
date = "2026-07-05"
kind = "double"
double_of = "M06"
images = [{ file = "ab.dcm", views = ["A", "B"] }]
"""


def _write(tmp_path, text):
    for name in ("a.dcm", "b.dcm", "ab.dcm"):
        (tmp_path / name).write_bytes(b"")
    path = tmp_path / "study.toml"
    path.write_text(text)
    return path


def test_good_manifest(tmp_path):
    spec = load_manifest(_write(tmp_path, GOOD))
    assert spec.id == "T"
    assert spec.cpt_code == "0348T"
    assert spec.thresholds["gate_mm"] == 0.4
    assert spec.thresholds["me_limit_mm"] == 0.35  # default
    (subject,) = spec.subjects
    assert subject.reference.id == "REF"
    assert [s.name for s in subject.segments] == ["L4", "L5"]
    assert subject.segment("L4").bead_ids == ("L401", "L402", "L403")
    assert subject.exams[1].images[0].views == ("A", "B")
    assert subject.exams[2].double_of == "M06"
    assert spec.motions[0].name == "L4/L5"
    assert len(spec.sha256) == 64


@pytest.mark.parametrize(("old", "new", "match"), [
    ('relative_to = "L5"', 'relative_to = "L3"',
     r"`motions\[0\].relative_to`: unknown segment 'L3'"),
    ('id = "M06-D"', 'id = "M06"', r"`subjects\[0\].exams`: duplicate exam id 'M06'"),
    ('date = "2026-07-05"\nkind = "follow-up"', 'date = "2025-07-05"\nkind = "follow-up"',
     r"follow-up 'M06' \(2025-07-05\) is dated before the reference exam"),
    ('region = "spine"', 'region = "knee"', r"`study.region`: expected one of"),
    ('schema = "rsa-study/1"', 'schema = "rsa-study/9"', r"`schema`: expected 'rsa-study/1'"),
    ('double_of = "M06"', 'double_of = "M12"', r"`subjects\[0\].exams\[2\].double_of`"),
    ('kind = "reference"', 'kind = "baseline"', r"`subjects\[0\].exams\[0\].kind`"),
    ('{ file = "b.dcm", views = ["B"] }', '{ file = "c.dcm", views = ["B"] }',
     r"image file not found: .*c\.dcm"),
    ('{ file = "b.dcm", views = ["B"] }', '{ file = "b.dcm", views = ["A"] }',
     r"expected two distinct views"),
    ("gate_mm = 0.4", "gate_mm = -1", r"`thresholds.gate_mm`: expected a positive number"),
    ("gate_mm = 0.4", "gat_mm = 1", r"`thresholds.gat_mm`: unknown threshold"),
    ('[0, 10, 30]]', '[0, 10, "x"]]', r"`subjects\[0\].segments\[1\].xyz_mm`"),
    ('id = "T"', 'id = 5', r"`study.id`: expected str, got int 5"),
    ('date = "2026-01-05"', 'date = "05.01.2026"', r"expected YYYY-MM-DD"),
    ('id = "S01"', 'id = "S01"\nsurgery_date = "yesterday"',
     r"`subjects\[0\].surgery_date`: expected YYYY-MM-DD"),
    ('region = "spine"', 'region = "spine"\nindication = 3', r"`study.indication`: expected str"),
    ('kind = "reference"', 'kind = "follow-up"', r"expected exactly one reference exam, got 0"),
])
def test_hostile_manifests(tmp_path, old, new, match):
    assert old in GOOD
    path = _write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(InputError, match=match) as err:
        load_manifest(path)
    assert str(path) in str(err.value)


def test_not_toml_and_missing(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[study\nid=")
    with pytest.raises(InputError, match=r"bad\.toml: not valid TOML"):
        load_manifest(path)
    with pytest.raises(InputError, match="manifest file not found"):
        load_manifest(tmp_path / "nope.toml")


def test_unknown_segment_in_one_subject(tmp_path):
    text = GOOD.replace('name = "L5"', 'name = "S1"')
    with pytest.raises(InputError, match="unknown segment 'L5'"):
        load_manifest(_write(tmp_path, text))


BEADS_L5 = '''name = "L5"
definition = "beads"
bead_file = "ref_beads.csv"
beads = ["P02", "P05", "P07"]'''


def _beads_manifest(tmp_path, segment=BEADS_L5):
    (tmp_path / "ref_beads.csv").write_text(
        "bead_id,x,y,z,quality\nP02,1.5,2,30,bead\nP05,10,0,30.25,bead\nP07,0,10,30,candidate\n"
        "P09,5,5,5,bead\n")
    text = GOOD.replace('name = "L5"\nxyz_mm = [[0, 0, 30], [10, 0, 30], [0, 10, 30]]', segment)
    assert text != GOOD
    return _write(tmp_path, text)


def test_segment_defined_by_bead_ids(tmp_path):
    spec = load_manifest(_beads_manifest(tmp_path))
    seg = spec.subjects[0].segment("L5")
    assert seg.bead_ids == ("P02", "P05", "P07")
    assert seg.xyz_mm.tolist() == [[1.5, 2.0, 30.0], [10.0, 0.0, 30.25], [0.0, 10.0, 30.0]]
    assert seg.tolerance_mm == 0.5   # default of this definition: positions from a measurement


@pytest.mark.parametrize(("segment", "match"), [
    (BEADS_L5.replace('"P07"]', '"P08"]'), r"`subjects\[0\].segments\[1\].beads`: not in "
                                           r"ref_beads\.csv: P08"),
    (BEADS_L5.replace("ref_beads.csv", "nope.csv"), r"segments\[1\].bead_file`: bead file not "
                                                   r"found"),
    (BEADS_L5.replace('beads = ["P02", "P05", "P07"]', 'beads = "P02"'),
     r"segments\[1\].beads`: expected list"),
    (BEADS_L5.replace('"beads"', '"auto"'), r"segments\[1\].definition`: expected 'coordinates' "
                                           r"or 'beads'"),
])
def test_bead_id_segments_hostile(tmp_path, segment, match):
    with pytest.raises(InputError, match=match):
        load_manifest(_beads_manifest(tmp_path, segment))


def test_bead_file_errors(tmp_path):
    path = _beads_manifest(tmp_path)
    (tmp_path / "ref_beads.csv").write_text("bead_id,x,y\nP02,1,2\n")
    with pytest.raises(InputError, match=r"ref_beads\.csv: line 2: expected columns bead_id,x,y,z"):
        load_manifest(path)


GROUP_L5 = BEADS_L5.replace('beads = ["P02", "P05", "P07"]', 'group = "G2"')
GROUPED_CSV = ("bead_id,x,y,z,quality,group,cle_mm\nP02,1.5,2,30,bead,G2,0.01\n"
               "P05,10,0,30.25,bead,G2,0.01\nP07,0,10,30,candidate,,0.2\nP09,5,5,5,bead,G1,0.01\n"
               "P11,0,11,30,bead,G2,0.01\n")


def _group_manifest(tmp_path, segment=GROUP_L5):
    path = _beads_manifest(tmp_path, segment)
    (tmp_path / "ref_beads.csv").write_text(GROUPED_CSV)
    return path


def test_segment_defined_by_group(tmp_path):
    """Definition (3): the beads of one group of `rsa beads --group`, in file order."""
    seg = load_manifest(_group_manifest(tmp_path)).subjects[0].segment("L5")
    assert seg.bead_ids == ("P02", "P05", "P11")
    assert seg.xyz_mm.tolist() == [[1.5, 2.0, 30.0], [10.0, 0.0, 30.25], [0.0, 11.0, 30.0]]
    assert seg.tolerance_mm == 0.5


def test_read_bead_groups(tmp_path):
    from rsa.io.beadfile import read_bead_file, read_bead_groups

    path = tmp_path / "g.csv"
    path.write_text(GROUPED_CSV)
    assert read_bead_groups(path) == {"P02": "G2", "P05": "G2", "P07": "", "P09": "G1",
                                      "P11": "G2"}
    assert list(read_bead_file(path)) == ["P02", "P05", "P07", "P09", "P11"]  # unchanged
    path.write_text("bead_id,x,y,z\nP01,1,2,3\n")
    with pytest.raises(InputError, match=r"g\.csv: no `group` column \(columns: bead_id, x, y, "
                                         r"z\); expected a bead file written by `rsa beads"):
        read_bead_groups(path)
    path.write_text("bead_id,x,y,z,group\nP01,1,2,nan,G1\n")
    with pytest.raises(InputError, match=r"g\.csv: line 2: expected a bead id and finite"):
        read_bead_groups(path)


@pytest.mark.parametrize(("segment", "csv", "match"), [
    (GROUP_L5 + '\nbeads = ["P02", "P05", "P07"]', GROUPED_CSV,
     r"`subjects\[0\].segments\[1\]`: expected exactly one of `beads` \(a list of bead ids\) "
     r"and `group` .*got both"),
    (GROUP_L5.replace('group = "G2"', ""), GROUPED_CSV,
     r"`subjects\[0\].segments\[1\]`: expected exactly one of .*got neither"),
    (GROUP_L5.replace('"G2"', "2"), GROUPED_CSV,
     r"`subjects\[0\].segments\[1\].group`: expected str, got int 2"),
    (GROUP_L5.replace('"G2"', '"G7"'), GROUPED_CSV,
     r"`subjects\[0\].segments\[1\].group`: no bead of group 'G7' in ref_beads\.csv "
     r"\(groups: G1, G2\)"),
    (GROUP_L5, "bead_id,x,y,z,quality\nP02,1.5,2,30,bead\n",
     r"`subjects\[0\].segments\[1\].group`: .*ref_beads\.csv: no `group` column"),
    (GROUP_L5, "bead_id,x,y,z,group\nP02,1.5,2,30,\n",
     r"no bead of group 'G2' in ref_beads\.csv \(groups: none\)"),
    (GROUP_L5.replace('"beads"', '"auto"'), GROUPED_CSV,
     r"`subjects\[0\].segments\[1\].definition`: expected 'coordinates' or 'beads', got "
     r"'auto' \(automatic segments: `rsa beads STUDY.toml --out FILE --group`"),
])
def test_group_segments_hostile(tmp_path, segment, csv, match):
    path = _beads_manifest(tmp_path, segment)
    (tmp_path / "ref_beads.csv").write_text(csv)
    with pytest.raises(InputError, match=match) as err:
        load_manifest(path)
    assert str(path) in str(err.value)


def test_listing_manifest_without_segments(tmp_path):
    head, _, _ = GOOD.partition("[[motions]]")
    exams = GOOD[GOOD.index("[[subjects.exams]]"):]
    text = head + '[[subjects]]\nid = "S01"\n' + exams
    path = _write(tmp_path, text)
    with pytest.raises(InputError, match="segments"):
        load_manifest(path)
    spec = load_manifest(path, segments_required=False)
    assert spec.subjects[0].segments == ()
    assert spec.motions == ()
