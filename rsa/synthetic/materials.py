"""Linear attenuation coefficients used by the radiograph simulator (per mm, at 60 keV).

All values are μ = (μ/ρ)·ρ with the mass attenuation coefficient μ/ρ read from the NIST tables of
Hubbell & Seltzer [1]_ at a photon energy of **60 keV**, the chosen *effective* (monoenergetic
equivalent) energy of a typical RSA exposure (100–120 kVp, Al-filtered tube, hardened further by
the patient). A polychromatic spectrum is not modelled: every material attenuates as if the beam
were monoenergetic at 60 keV.

================================  =========  ===========  ==========================================
material                          μ/ρ cm²/g  ρ g/cm³      μ /mm
================================  =========  ===========  ==========================================
tantalum (Z = 73)                 3.569      16.654 [1]_  5.944  (1 mm chord transmits 0.26 %)
water (soft-tissue equivalent)    0.2059     1.000        0.02059
cortical bone (ICRU-44)           0.3148     1.920        0.06044
titanium (Z = 22; Ti-6Al-4V ≈ Ti) 0.7661     4.54         0.3478
CoCrMo (ASTM F75, by weight       1.3935     8.30 [2]_    1.157
66 % Co, 28 % Cr, 6 % Mo)
================================  =========  ===========  ==========================================

The CoCrMo value is the mass-fraction-weighted mixture rule (Co 1.314, Cr 0.9639, Mo 4.274 cm²/g at
60 keV, [1]_). Tantalum's K edge is at 67.4 keV (μ/ρ jumps from 2.65 to 11.8 cm²/g), so the
effective tantalum attenuation of a real beam lies between 4.4 and 9.5 /mm for effective energies of
50–67 keV; 60 keV is a representative middle value. Beads of 0.8–1.0 mm therefore transmit 0.3–1 %
at their centre before blur; focal-spot and detector blur reduce the measured contrast further.

References
----------
.. [1] J. H. Hubbell and S. M. Seltzer, "Tables of X-Ray Mass Attenuation Coefficients and Mass
   Energy-Absorption Coefficients from 1 keV to 20 MeV for Elements Z = 1 to 92 and 48 Additional
   Substances of Dosimetric Interest", NIST Standard Reference Database 126, NISTIR 5632 (1996,
   updated 2004), Tables 1, 3 and 4. https://physics.nist.gov/PhysRefData/XrayMassCoef/
.. [2] ASTM F75-18, Standard Specification for Cobalt-28 Chromium-6 Molybdenum Alloy Castings
   for Surgical Implants (nominal density 8.3 g/cm³).
"""

from __future__ import annotations

#: Effective photon energy (keV) at which all coefficients below are evaluated.
EFFECTIVE_ENERGY_KEV = 60.0

#: Tantalum, 3.569 cm²/g × 16.654 g/cm³ (NIST [1]).
MU_TANTALUM_PER_MM = 0.3569 * 16.654

#: Liquid water as soft-tissue equivalent, 0.2059 cm²/g × 1.0 g/cm³.
MU_WATER_PER_MM = 0.02059

#: Cortical bone (ICRU-44), 0.3148 cm²/g × 1.92 g/cm³.
MU_CORTICAL_BONE_PER_MM = 0.03148 * 1.92

#: Titanium (used for Ti-6Al-4V implants), 0.7661 cm²/g × 4.54 g/cm³.
MU_TITANIUM_PER_MM = 0.07661 * 4.54

#: CoCrMo alloy (ASTM F75), mixture rule 0.66·1.314 + 0.28·0.9639 + 0.06·4.274 cm²/g × 8.3 g/cm³.
MU_COCR_PER_MM = 0.1 * (0.66 * 1.314 + 0.28 * 0.9639 + 0.06 * 4.274) * 8.3
