"""rsa — radiostereometric analysis toolkit.

Detect tantalum beads in stereo radiographs, calibrate the views from a cage, triangulate,
fit rigid bodies and compute implant/segment migration with honest uncertainty.
"""

__version__ = "0.1.0"

from rsa.errors import (
    CalibrationError,
    EstimationError,
    InputError,
    RsaError,
    RsaWarning,
    ShapeError,
)

__all__ = [
    "CalibrationError",
    "EstimationError",
    "InputError",
    "RsaError",
    "RsaWarning",
    "ShapeError",
    "__version__",
]
