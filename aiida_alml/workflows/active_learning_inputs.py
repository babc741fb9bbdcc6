"""Input validation of ``alml.active_learning``: every bad input is refused before anything runs."""

from __future__ import annotations

from aiida_alml.selection.select import MODES
from aiida_alml.suggest import did_you_mean

__all__ = ('SELECTION_DEFAULTS', 'PERTURBATION_KEYS', 'VALIDATION_DEFAULTS', 'validate_selection',
           'validate_perturbation', 'validate_validation', 'validate_active_learning_inputs')

#: Defaults of the ``selection`` input (trust window in eV/Å after calibration).
SELECTION_DEFAULTS = {
    'trust_lo': 0.05,
    'trust_hi': 0.15,
    'labels_per_iteration': 20,
    'min_distance': 0.0,
    'mode': 'fps',
    'rescue_failed': True,
    'seed': 0,
    'descriptor': 'local',
    'descriptor_r_cut': 5.0,
    'descriptor_bins': 32,
}
PERTURBATION_KEYS = ('count', 'rattle_std', 'max_strain', 'seed')
#: Defaults of the ``validation`` input: MD of the final committee at temperature_factor × the hottest exploration,
#: for ``steps`` (None: steps_factor × the longest exploration run), in each ensemble.
VALIDATION_DEFAULTS = {
    'temperature_factor': 1.5,
    'steps': None,
    'steps_factor': 2,
    'ensembles': ['nvt_langevin', 'nve'],
    'max_excursion_fraction': 0.05,
    'max_nve_drift': 0.005,
}


def _unknown(given, known, name: str) -> str | None:
    unknown = sorted(set(given) - set(known))
    if not unknown:
        return None
    hints = [f'{key}{did_you_mean(key, known)}' for key in unknown]
    return f'{name}: unknown keys {", ".join(hints)}; known: {", ".join(known)}'


def validate_selection(value, _=None) -> str | None:
    if value is None:
        return None
    settings = value.get_dict()
    if (message := _unknown(settings, SELECTION_DEFAULTS, 'selection')):
        return message
    settings = {**SELECTION_DEFAULTS, **settings}
    lo, hi = settings['trust_lo'], settings['trust_hi']
    if not isinstance(lo, (int, float)) or not isinstance(hi, (int, float)) or lo <= 0:
        return f'selection: trust_lo must be a positive number (eV/Å), got {lo!r}'
    if lo >= hi:
        return f'selection: trust_lo ({lo}) must be smaller than trust_hi ({hi})'
    count = settings['labels_per_iteration']
    if not isinstance(count, int) or count < 1:
        return f'selection: labels_per_iteration must be a positive integer, got {count!r}'
    if settings['mode'] not in MODES:
        return f"selection: mode must be one of {', '.join(MODES)}, got {settings['mode']!r}"
    if not isinstance(settings['rescue_failed'], bool):
        return f'selection: rescue_failed must be true or false, got {settings["rescue_failed"]!r}'
    for key in ('min_distance', 'descriptor_r_cut'):
        if isinstance(settings[key], bool) or not isinstance(settings[key], (int, float)):
            return f'selection: {key} must be a number, got {settings[key]!r}'
    if isinstance(settings['descriptor_bins'], bool) or not isinstance(settings['descriptor_bins'], int):
        return f'selection: descriptor_bins must be a whole number, got {settings["descriptor_bins"]!r}'
    if settings['min_distance'] < 0:
        return f'selection: min_distance must be non-negative, got {settings["min_distance"]}'
    if settings['descriptor'] not in ('local', 'radial'):
        return f"selection: descriptor must be 'local' or 'radial', got {settings['descriptor']!r}"
    if settings['descriptor_r_cut'] <= 0 or int(settings['descriptor_bins']) < 2:
        return 'selection: descriptor_r_cut must be positive and descriptor_bins at least 2'
    return None


def validate_perturbation(value, _=None) -> str | None:
    if value is None:
        return None
    settings = value.get_dict()
    if (message := _unknown(settings, PERTURBATION_KEYS, 'initial_perturbation')):
        return message
    if not isinstance(settings.get('count'), int) or settings['count'] < 1:
        return f'initial_perturbation: count must be a positive integer, got {settings.get("count")!r}'
    for key in ('rattle_std', 'max_strain'):
        if key in settings and settings[key] < 0:
            return f'initial_perturbation: {key} must be non-negative, got {settings[key]}'
    return None


def validate_validation(value, _=None) -> str | None:
    if value is None:
        return None
    settings = value.get_dict()
    if (message := _unknown(settings, VALIDATION_DEFAULTS, 'validation')):
        return message
    settings = {**VALIDATION_DEFAULTS, **settings}
    for key in ('temperature_factor', 'steps_factor', 'max_excursion_fraction', 'max_nve_drift'):
        value = settings[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            return f'validation: {key} must be a non-negative number, got {value!r}'
    if settings['temperature_factor'] <= 0 or settings['steps_factor'] <= 0:
        return 'validation: temperature_factor and steps_factor must be positive'
    steps = settings['steps']
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        return f'validation: steps must be a positive whole number, got {steps!r}'
    from aiida_alml.engines.md import ENSEMBLES

    ensembles = settings['ensembles']
    if not isinstance(ensembles, list) or not ensembles or not set(ensembles) <= set(ENSEMBLES) \
            or any(e.startswith('npt') for e in ensembles):
        return f'validation: ensembles must be a list of {[e for e in ENSEMBLES if not e.startswith("npt")]}'
    return None


def _labeller_elements(label_inputs) -> set[str] | None:
    """Elements the configured labeller can handle, where we can know it (EMT's parameter table); else None."""
    labeller = label_inputs['labeller'].value if 'labeller' in label_inputs else None
    if labeller == 'ase' and 'calculator' in label_inputs.get('ase', {}):
        if label_inputs['ase']['calculator'].get_dict().get('name', '').lower() == 'emt':
            from ase.calculators.emt import parameters

            return set(parameters)
    return None


def validate_active_learning_inputs(inputs, _=None) -> str | None:
    for name in ('max_iterations', 'max_labels', 'patience', 'calibration_window'):
        if name in inputs and inputs[name].value < 1:
            return f'{name}: must be positive, got {inputs[name].value}'
    if 'target_accurate_fraction' in inputs and not 0 < inputs['target_accurate_fraction'].value <= 1:
        return f'target_accurate_fraction: must be in (0, 1], got {inputs["target_accurate_fraction"].value}'
    if 'initial_dataset' not in inputs and 'initial_structures' not in inputs:
        return 'give initial_dataset (labelled) and/or initial_structures (labelled first)'
    if 'initial_dataset' in inputs:
        labels = set(inputs['initial_dataset'].labels)
        if not {'energy', 'forces'} <= labels:
            return (f'initial_dataset: needs energy and forces labels, has {sorted(labels) or "none"}; give '
                    'unlabelled structures as initial_structures to have them labelled')
        if not any(meta.get('label_settings') for meta in inputs['initial_dataset'].configurations.metadata):
            return ('initial_dataset: its labels record no settings (which code, functional, k-points ... made them), '
                    'so they cannot be checked against the labels this campaign makes; label the structures here '
                    '(give them as initial_structures) or declare how they were made with '
                    'aiida_alml.workflows.label.declare_label_settings')
    if 'test_set' in inputs and not {'energy', 'forces'} <= set(inputs['test_set'].labels):
        return f'test_set: needs energy and forces labels, has {sorted(inputs["test_set"].labels) or "none"}'
    if 'exploration_structures' not in inputs and 'initial_structures' not in inputs:
        return 'exploration_structures: needed when there are no initial_structures to start MD from'

    known = set()
    for name in ('initial_dataset', 'initial_structures'):
        if name in inputs:
            known |= set(inputs[name].elements)
    explored = set(inputs.get('exploration_structures', inputs.get('initial_structures')).elements)
    missing = explored - known
    labellable = _labeller_elements(inputs.get('label', {}))
    if labellable is not None and not (explored | known) <= labellable:
        bad = sorted((explored | known) - labellable)
        return f'label: the labeller (EMT) cannot label elements {bad}; it knows {sorted(labellable)}'
    if missing:
        return (f'exploration_structures: elements {sorted(missing)} are absent from the training data; add '
                'structures with them to initial_structures so that they are labelled first')

    if 'seed' in inputs and inputs['seed'].value < 0:
        return f'seed: must be a non-negative integer, got {inputs["seed"].value}'
    for name in ('warm_start_parameters', 'final_train_parameters'):
        if name in inputs:
            from aiida_alml.engines.mace_options import MaceOptionError, check_parameters

            try:
                check_parameters(inputs[name].get_dict())
            except MaceOptionError as error:
                return f'{name}: {error}'

    label = inputs.get('label', {})
    expected = {'ase': 'alml.ase', 'aims': 'alml.aims'}
    labeller = label['labeller'].value if 'labeller' in label else None
    if labeller == 'ase' and 'code' in label.get('ase', {}):
        plugin = label['ase']['code'].default_calc_job_plugin
        if plugin not in (None, expected['ase']):
            return f'label.ase.code: is a code for {plugin!r}, the ASE labeller needs one for {expected["ase"]!r}'
    aims_code = label.get('aims', {}).get('aims', {}).get('code')
    if labeller == 'aims' and aims_code is not None:
        plugin = aims_code.default_calc_job_plugin
        if plugin not in (None, expected['aims']):
            return f'label.aims.aims.code: is a code for {plugin!r}, the FHI-aims labeller needs one for {expected["aims"]!r}'
    train_code = inputs.get('train', {}).get('train', {}).get('code')
    if train_code is not None and train_code.default_calc_job_plugin not in (None, 'alml.mace.train'):
        return f'train.train.code: is a code for {train_code.default_calc_job_plugin!r}, training needs alml.mace.train'
    md_code = inputs.get('explore', {}).get('md', {}).get('code')
    if md_code is not None and md_code.default_calc_job_plugin not in (None, 'alml.md'):
        return f'explore.md.code: is a code for {md_code.default_calc_job_plugin!r}, exploration needs alml.md'
    return None
