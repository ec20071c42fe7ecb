"""Body region → CPT Category III code of the RSA examination (code naming only).

The American Medical Association's CPT set has three RSA codes (effective 2015): 0348T spine
(cervical, thoracic and lumbosacral when performed), 0349T upper extremity(ies), 0350T lower
extremity(ies). The descriptions below are paraphrased, not the AMA descriptors. The report names
the code for the study's region and nothing more: no billing, modifier or coverage advice.

References
----------
.. [1] American Medical Association, CPT Category III codes 0348T–0350T (radiostereometric
       analysis), 2015.
"""

from __future__ import annotations

from rsa.errors import InputError

#: region (manifest value) → (CPT code, paraphrased description, plain region name)
CPT_CODES: dict[str, tuple[str, str, str]] = {
    "spine": ("0348T", "radiostereometric analysis (RSA) of the spine (cervical, thoracic and "
              "lumbosacral levels, when performed)", "spine"),
    "upper_extremity": ("0349T", "radiostereometric analysis (RSA) of the upper extremity or "
                        "extremities", "upper extremity"),
    "lower_extremity": ("0350T", "radiostereometric analysis (RSA) of the lower extremity or "
                        "extremities", "lower extremity"),
}


def cpt_for_region(region: str) -> tuple[str, str, str]:
    """CPT code, paraphrased description and readable region name for a manifest region.

    Raises
    ------
    InputError
        Unknown region (expected one of ``spine``, ``upper_extremity``, ``lower_extremity``).
    """
    try:
        return CPT_CODES[region]
    except KeyError:
        raise InputError(f"Expected `region` to be one of {sorted(CPT_CODES)}, got "
                         f"{region!r}.") from None
