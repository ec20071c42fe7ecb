"""Interpretation-ready reports of an analysed RSA study (HTML and PDF; DESIGN §1, issue 8).

``build_report(results_dir, out_dir)`` reads the results store written by ``rsa analyze`` and
writes one report per subject and one per study: header (study, subject pseudonym, region and
CPT code, exams, cage and calibration, software version and input hashes), motion tables with
double-exam precision limits and significance marks, quality tables with limits and pass/fail,
plots (migration curves, intervertebral motion per level for the spine, radiograph overlays,
3D bead configuration), plain-language interpretation aids, device-integrity notes and a
documentation checklist. Patient identifiers appear only with ``include_phi=True``.
"""

from rsa.report.build import FORMATS, build_report, study_document, subject_document
from rsa.report.cpt import CPT_CODES, cpt_for_region
from rsa.report.data import Results, load_results

__all__ = ["CPT_CODES", "FORMATS", "Results", "build_report", "cpt_for_region",
           "load_results", "study_document", "subject_document"]
