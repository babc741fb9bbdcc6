"""Pure-numpy selection of frames to label: uncertainty, trust window, diversity, calibration.

Nothing here touches AiiDA; the workflows wrap these functions in calcfunctions so that every decision is recorded.
"""

from .calibration import (
    calibration_summary, expected_factor, f_cdf, fit_calibration, fit_calibration_factor, frame_coverage,
    promised_frame_coverage,
)
from .convergence import convergence_blockers
from .outliers import ENERGY_JUMP_FLOOR, ENERGY_JUMP_SPREADS, energy_jumps
from .descriptors import local_descriptors, radial_descriptor, selection_descriptors
from .feature_uncertainty import FeatureSpaceUncertainty
from .sampling import distance_to_set, farthest_point_sampling
from .stability import STABILITY_DEFAULTS, assess_run, nve_drift_per_ps
from .select import CONTACT_FILTERED_MODES, MODES, RANDOM_BASELINES, REASONS, SelectionResult, select_frames
from .trust import ACCURATE, CANDIDATE, CLASS_NAMES, FAILED, classify, validate_trust_window
from .uncertainty import force_sigma, frame_uncertainty

__all__ = (
    'ENERGY_JUMP_FLOOR', 'ENERGY_JUMP_SPREADS', 'STABILITY_DEFAULTS', 'assess_run', 'energy_jumps', 'nve_drift_per_ps',
    'ACCURATE', 'CANDIDATE', 'CLASS_NAMES', 'CONTACT_FILTERED_MODES', 'FAILED', 'MODES', 'RANDOM_BASELINES', 'REASONS',
    'FeatureSpaceUncertainty', 'SelectionResult', 'calibration_summary',
    'classify', 'convergence_blockers', 'distance_to_set', 'expected_factor', 'f_cdf', 'farthest_point_sampling', 'fit_calibration',
    'fit_calibration_factor', 'force_sigma', 'frame_coverage', 'frame_uncertainty', 'promised_frame_coverage',
    'local_descriptors', 'radial_descriptor', 'select_frames', 'selection_descriptors', 'validate_trust_window',
)
