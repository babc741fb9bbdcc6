"""Input validation of ``alml.active_learning``: every bad input is refused before anything runs."""

from __future__ import annotations

import math

from aiida_alml.selection.select import MODES
from aiida_alml.selection.trust import validate_trust_window
from aiida_alml.atoms.suggest import did_you_mean
from aiida_alml.job_options import scheduler_option_problem
from aiida_alml.workflows.job_resources import resources_problem
from aiida_alml.workflows.namespaces import unknown_input_problem

__all__ = ('SELECTION_DEFAULTS', 'PERTURBATION_KEYS', 'VALIDATION_DEFAULTS', 'MAX_STRAIN_BOUND', 'MAX_LABELS',
           'MAX_LABELS_PER_ITERATION', 'MAX_ITERATIONS', 'MAX_PERTURBED_COPIES', 'MAX_PERTURBED_ATOMS',
           'MAX_DESCRIPTOR_BINS', 'MAX_DESCRIPTOR_R_CUT', 'MAX_MD_RUNS', 'MAX_ISOLATED_ATOM_BOX', 'validate_selection',
           'validate_perturbation', 'validate_validation', 'validate_active_learning_inputs', 'initial_label_count',
           'budget_line', 'validate_stage_two_steps')

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
    'contact_fraction': 0.8,
}
#: Upper bound of ``final_stage_two_steps`` (a typo of a few zeros would train for days).
MAX_STAGE_TWO_STEPS = 100_000
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


# Upper bounds of counts and sizes, generous for production; each stops an input that would run for years, fill the
# disk or exhaust memory at launch.
#: max_labels: reference calculations in all. The largest published MLIP training sets hold 10^5-10^6 structures.
MAX_LABELS = 10**6
#: selection.labels_per_iteration: reference calculations one iteration queues; 10^5 is a whole large training set.
MAX_LABELS_PER_ITERATION = 10**5
#: max_iterations (and patience, calibration_window, explore_schedule entries): each iteration trains a committee;
#: campaigns converge in 5-30.
MAX_ITERATIONS = 1000
#: initial_perturbation.count: the copies are built and checked at launch and each is labelled first; 10^4 is beyond
#: any first training set. Their atoms together (copies x atoms per structure) must stay below MAX_PERTURBED_ATOMS.
MAX_PERTURBED_COPIES = 10**4
MAX_PERTURBED_ATOMS = 10**7
#: selection.descriptor_bins: bins finer than the descriptors' Gaussian width (0.15 Å; 33 bins over 5 Å) add nothing.
MAX_DESCRIPTOR_BINS = 256
#: Å, selection.descriptor_r_cut: MACE cutoffs are 4-6 Å; neighbour lists grow as r_cut^3 (some 3000 neighbours per
#: atom of a metal at 20 Å).
MAX_DESCRIPTOR_R_CUT = 20.0
#: MD runs of one exploration (exploration structures x conditions), each a job submitted at once.
MAX_MD_RUNS = 10**4
#: Å, isolated_atom_box: isolated atoms are labelled in boxes of 10-30 Å; a periodic code's cost grows with the volume.
MAX_ISOLATED_ATOM_BOX = 100.0

#: initial_perturbation.max_strain must stay below this. Each strain component is drawn in ±max_strain and the
#: symmetric strain tensor E has eigenvalues within ±3·max_strain (Gershgorin), so the deformed cell (I + E)·cell keeps
#: a positive volume for every draw only while 3·max_strain < 1.
MAX_STRAIN_BOUND = 1 / 3


def _unknown(given, known, name: str) -> str | None:
    unknown = sorted(set(given) - set(known))
    if not unknown:
        return None
    hints = [f'{key}{did_you_mean(key, known)}' for key in unknown]
    return f'{name}: unknown keys {", ".join(hints)}; known: {", ".join(known)}'


def _is_number(value) -> bool:
    """A finite int or float; booleans are not numbers here (YAML's ``true`` would otherwise count as 1)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate_selection(value, _=None) -> str | None:
    if value is None:
        return None
    settings = value.get_dict()
    if (message := _unknown(settings, SELECTION_DEFAULTS, 'selection')):
        return message
    settings = {**SELECTION_DEFAULTS, **settings}
    lo, hi = settings['trust_lo'], settings['trust_hi']
    if not _is_number(lo):
        return f'selection: trust_lo must be a positive number (eV/Å), got {lo!r}'
    if not _is_number(hi):
        return f'selection: trust_hi must be a number (eV/Å), got {hi!r}'
    try:
        validate_trust_window(lo, hi)  # the check select_frames makes again (positive, ordered)
    except ValueError as error:
        return f'selection: {error}'
    count = settings['labels_per_iteration']
    if not _is_whole(count) or count < 1:
        return f'selection: labels_per_iteration must be a positive integer, got {count!r}'
    if count > MAX_LABELS_PER_ITERATION:
        return f'selection: labels_per_iteration must be at most {MAX_LABELS_PER_ITERATION}, got {count}'
    if settings['mode'] not in MODES:
        return f"selection: mode must be one of {', '.join(MODES)}, got {settings['mode']!r}"
    if not isinstance(settings['rescue_failed'], bool):
        return f'selection: rescue_failed must be true or false, got {settings["rescue_failed"]!r}'
    if not _is_whole(settings['seed']) or settings['seed'] < 0:
        return f'selection: seed must be a non-negative integer, got {settings["seed"]!r}'
    for key in ('min_distance', 'descriptor_r_cut'):
        if not _is_number(settings[key]):
            return f'selection: {key} must be a number, got {settings[key]!r}'
    if not _is_whole(settings['descriptor_bins']):
        return f'selection: descriptor_bins must be a whole number, got {settings["descriptor_bins"]!r}'
    if settings['min_distance'] < 0:
        return f'selection: min_distance must be non-negative, got {settings["min_distance"]}'
    if settings['descriptor'] not in ('local', 'radial'):
        return f"selection: descriptor must be 'local' or 'radial', got {settings['descriptor']!r}"
    if settings['descriptor_r_cut'] <= 0 or int(settings['descriptor_bins']) < 2:
        return 'selection: descriptor_r_cut must be positive and descriptor_bins at least 2'
    if settings['descriptor_r_cut'] > MAX_DESCRIPTOR_R_CUT:
        return (f'selection: descriptor_r_cut must be at most {MAX_DESCRIPTOR_R_CUT:g} Å, got '
                f'{settings["descriptor_r_cut"]:g}')
    if settings['descriptor_bins'] > MAX_DESCRIPTOR_BINS:
        return f'selection: descriptor_bins must be at most {MAX_DESCRIPTOR_BINS}, got {settings["descriptor_bins"]}'
    fraction = settings['contact_fraction']
    if not _is_number(fraction) or not 0 < fraction <= 1:
        return f'selection: contact_fraction must be a number in (0, 1], got {fraction!r}'
    return None


def validate_stage_two_steps(node, _=None) -> str | None:
    """``final_stage_two_steps``: a non-negative number of gradient steps, at most MAX_STAGE_TWO_STEPS."""
    if not 0 <= node.value <= MAX_STAGE_TWO_STEPS:
        return (f'final_stage_two_steps: must be 0 (no longer stage two) to {MAX_STAGE_TWO_STEPS} gradient steps, '
                f'got {node.value}')
    return None


def validate_perturbation(value, _=None) -> str | None:
    if value is None:
        return None
    settings = value.get_dict()
    if (message := _unknown(settings, PERTURBATION_KEYS, 'initial_perturbation')):
        return message
    if not _is_whole(settings.get('count')) or settings['count'] < 1:
        return f'initial_perturbation: count must be a positive integer, got {settings.get("count")!r}'
    if settings['count'] > MAX_PERTURBED_COPIES:
        return (f'initial_perturbation: count must be at most {MAX_PERTURBED_COPIES} (the copies are built at launch '
                f'and each is labelled first), got {settings["count"]}')
    for key in ('rattle_std', 'max_strain'):
        if key in settings and (not _is_number(settings[key]) or settings[key] < 0):
            return f'initial_perturbation: {key} must be a non-negative number, got {settings[key]!r}'
    if settings.get('max_strain', 0) >= MAX_STRAIN_BOUND:
        return (f'initial_perturbation: max_strain must be below 1/3, got {settings["max_strain"]}: strain components '
                'drawn in ±max_strain can then invert a cell (negative volume); a few percent (0.02-0.05) is usual')
    if 'seed' in settings and (not _is_whole(settings['seed']) or settings['seed'] < 0):
        return f'initial_perturbation: seed must be a non-negative integer, got {settings["seed"]!r}'
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
        if not _is_number(value) or value < 0:
            return f'validation: {key} must be a non-negative number, got {value!r}'
    if settings['temperature_factor'] <= 0 or settings['steps_factor'] <= 0:
        return 'validation: temperature_factor and steps_factor must be positive'
    if settings['max_excursion_fraction'] > 1:
        return ('validation: max_excursion_fraction is a fraction of frames, at most 1, got '
                f'{settings["max_excursion_fraction"]}')
    steps = settings['steps']
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        return f'validation: steps must be a positive whole number, got {steps!r}'
    from aiida_alml.engines.md import MAX_MD_STEPS

    if steps is not None and steps > MAX_MD_STEPS:
        return f'validation: steps must be at most {MAX_MD_STEPS} (weeks of MD in one job), got {steps}'
    from aiida_alml.engines.md import ENSEMBLES

    ensembles = settings['ensembles']
    if not isinstance(ensembles, list) or not ensembles or not all(isinstance(e, str) for e in ensembles) \
            or not set(ensembles) <= set(ENSEMBLES) or any(e.startswith('npt') for e in ensembles):
        return f'validation: ensembles must be a list of {[e for e in ENSEMBLES if not e.startswith("npt")]}'
    return None


def _labeller_elements(label_inputs) -> set[str] | None:
    """Elements the configured labeller can handle, where we can know it (EMT's parameter table); else None."""
    labeller = label_inputs['labeller'].value if 'labeller' in label_inputs else None
    if labeller == 'ase' and 'calculator' in label_inputs.get('ase', {}):
        if str(label_inputs['ase']['calculator'].get_dict().get('name', '')).lower() == 'emt':
            from ase.calculators.emt import parameters

            return set(parameters)
    return None


def initial_label_count(inputs) -> int:
    """How many reference calculations the initial labelling makes (the perturbed copies, else the structures)."""
    if 'initial_structures' not in inputs:
        return 0
    if 'initial_perturbation' in inputs:
        return int(inputs['initial_perturbation'].get_dict().get('count', 0))
    return len(inputs['initial_structures'])


def budget_line(max_labels: int, initial: int) -> str:
    """``max_labels`` spelt out: how much of it the initial labelling takes and how much the loop may buy."""
    return (f'budget: max_labels = {max_labels} reference calculations in all: {initial} for the initial structures, '
            f'up to {max_labels - initial} new labels bought by the loop (failed calculations count too)')


def _budget_problem(inputs) -> str | None:
    budget = inputs['max_labels'].value  # the port has a default: always there
    per_iteration = {**SELECTION_DEFAULTS, **(inputs['selection'].get_dict() if 'selection' in inputs else {})}[
        'labels_per_iteration']
    initial = initial_label_count(inputs)
    if budget <= initial:
        return (f'max_labels: {budget} reference calculations in all, but the initial labelling alone makes {initial} '
                '(max_labels counts every reference calculation, the initial ones included); raise max_labels to at '
                f'least {initial + per_iteration} (those plus one iteration of selection.labels_per_iteration)')
    if budget - initial < per_iteration:
        return (f'max_labels: {budget} counts every reference calculation, the {initial} of the initial labelling '
                f'included, which leaves {budget - initial} for the loop, fewer than selection.labels_per_iteration '
                f'({per_iteration}); raise max_labels to at least {initial + per_iteration} or lower '
                'labels_per_iteration')
    return None


def _explore_settings(inputs) -> tuple[dict, list, dict]:
    """The exploration's shared MD parameters, its conditions and its MD jobs' ``metadata.options``."""
    explore = inputs.get('explore', {})
    base = explore['parameters'].get_dict() if 'parameters' in explore else {}
    conditions = explore['conditions'].get_list() if 'conditions' in explore else [{}]
    options = explore.get('md', {}).get('metadata', {}).get('options', {})
    return base, conditions, options


def _schedule_problem(inputs) -> str | None:
    """Every explore_schedule entry laid over every exploration condition must be valid MD parameters."""
    if 'explore_schedule' not in inputs:
        return None
    from aiida_alml.engines.md import MdParameterError, validate_parameters
    from aiida_alml.workflows.explore import md_device_problem

    schedule = inputs['explore_schedule'].get_list()
    if not schedule:
        return 'explore_schedule: empty; give one entry per iteration (the last holds for later ones) or leave it out'
    if len(schedule) > MAX_ITERATIONS:
        return f'explore_schedule: {len(schedule)} entries, one per iteration, but at most {MAX_ITERATIONS} iterations'
    base, conditions, options = _explore_settings(inputs)
    for index, entry in enumerate(schedule):
        if not isinstance(entry, dict) or not entry:
            return (f'explore_schedule[{index}]: every entry must be a non-empty mapping of MD parameters laid over '
                    f'the conditions (e.g. {{temperature: 600}}), got {entry!r}')
        for number, condition in enumerate(conditions):
            where = f' (laid over explore.conditions[{number}])' if len(conditions) > 1 else ''
            try:
                parameters = validate_parameters({**base, **(condition if isinstance(condition, dict) else {}),
                                                  **entry})
            except MdParameterError as error:
                return f'explore_schedule[{index}]{where}: {error}'
            if (problem := md_device_problem(parameters['device'], options)):
                return f'explore_schedule[{index}]{where}: {problem}'
    return None


def _explored_parameters(inputs) -> list[dict]:
    """The validated MD parameters of every condition in every iteration (each schedule entry laid over each); [] when
    one is invalid (reported by the exploration's or the schedule's own check)."""
    from aiida_alml.engines.md import MdParameterError, validate_parameters

    base, conditions, _ = _explore_settings(inputs)
    schedule = inputs['explore_schedule'].get_list() if 'explore_schedule' in inputs else [{}]
    try:
        return [validate_parameters({**base, **condition, **entry}) for entry in schedule for condition in conditions]
    except (MdParameterError, TypeError):
        return []


def _validation_problem(inputs) -> str | None:
    """The final committee's MD (``validation``) runs at temperature_factor x the hottest exploration for
    steps_factor x the longest run (or ``steps``): that too must stay within the MD bounds."""
    if 'validation' not in inputs or not (explored := _explored_parameters(inputs)):
        return None
    from aiida_alml.engines.md import MAX_MD_FRAMES, MAX_MD_STEPS, MAX_MD_TEMPERATURE

    settings = {**VALIDATION_DEFAULTS, **inputs['validation'].get_dict()}
    hottest = max(max(parameters['temperature_start'], parameters['temperature_end']) for parameters in explored)
    temperature = settings['temperature_factor'] * hottest
    if temperature > MAX_MD_TEMPERATURE:
        return (f'validation: temperature_factor {settings["temperature_factor"]:g} x the hottest exploration '
                f'({hottest:g} K) is {temperature:g} K, above the MD bound of {MAX_MD_TEMPERATURE:.0f} K')
    longest = max(parameters['steps'] for parameters in explored)
    steps = settings['steps'] or int(round(settings['steps_factor'] * longest))
    if steps > MAX_MD_STEPS:
        return (f'validation: steps_factor {settings["steps_factor"]:g} x the longest exploration ({longest} steps) is '
                f'{steps} steps, above the MD bound of {MAX_MD_STEPS}')
    frames = steps // min(parameters['sample_interval'] for parameters in explored)
    if frames > MAX_MD_FRAMES:
        return (f'validation: {steps} steps sampled as the exploration samples make {frames} frames per run, more '
                f'than {MAX_MD_FRAMES}; lower steps or steps_factor, or raise explore sample_interval')
    return None


def _exploration_size_problem(inputs) -> str | None:
    """How many MD runs one exploration submits (starting structures x conditions), bounded by MAX_MD_RUNS."""
    structures = inputs.get('exploration_structures', inputs.get('initial_structures'))
    _, conditions, _ = _explore_settings(inputs)
    runs = len(structures) * len(conditions)
    if runs > MAX_MD_RUNS:
        name = 'exploration_structures' if 'exploration_structures' in inputs else 'initial_structures'
        return (f'explore.conditions: {len(conditions)} conditions x {len(structures)} {name} make {runs} MD runs per '
                f'iteration, each a job submitted at once; at most {MAX_MD_RUNS}')
    return None


def _structure_problem(inputs) -> str | None:
    """Coordinates beyond MAX_COORDINATE, or atoms closer than CLOSE_CONTACT, in any given set, or in the perturbed
    copies the loop will label first."""
    from aiida_alml.atoms.configurations import (
        CLOSE_CONTACT, MAX_COORDINATE, ConfigurationError, Configurations, close_contact, far_coordinate,
    )
    from aiida_alml.atoms.perturb import perturbed_copies

    for name in ('initial_structures', 'exploration_structures', 'initial_dataset', 'test_set'):
        if name in inputs and (found := far_coordinate(inputs[name].configurations)):
            index, array, value = found
            return (f'{name}: structure {index} has a {array} entry of {value:g} Å, beyond ±{MAX_COORDINATE:g} Å '
                    '(1 µm): a unit mistake or not a structure')
        if name in inputs and (found := close_contact(inputs[name].configurations)):
            index, i, j, distance = found
            return (f'{name}: structure {index} has atoms {i} and {j} {distance:.3f} Å apart (closer than '
                    f'{CLOSE_CONTACT} Å): overlapping atoms give meaningless labels')
    if 'initial_structures' in inputs and 'initial_perturbation' in inputs:
        # The same deterministic draw the loop makes (perturb_structures), done here so that a rattle too large for
        # the structures is refused before anything runs.
        settings = inputs['initial_perturbation'].get_dict()
        n_atoms = inputs['initial_structures'].configurations.n_atoms
        atoms = sum(int(n_atoms[index % len(n_atoms)]) for index in range(settings['count']))
        if atoms > MAX_PERTURBED_ATOMS:
            return (f'initial_perturbation: count {settings["count"]} copies of initial_structures hold {atoms} atoms, '
                    f'more than {MAX_PERTURBED_ATOMS} (they are built at launch)')
        images = inputs['initial_structures'].to_ase()
        copies = perturbed_copies(images, **settings)
        try:
            configurations = Configurations.from_ase(copies, include_info=False)
        except ConfigurationError as error:  # a rattle so large that positions overflow
            return f'initial_perturbation: the perturbed copies are not structures ({error}): lower rattle_std'
        if (found := far_coordinate(configurations)):
            return (f'initial_perturbation: perturbed copy {found[0]} has a {found[1]} entry of {found[2]:g} Å, beyond '
                    f'±{MAX_COORDINATE:g} Å: lower rattle_std')
        if (found := close_contact(configurations)):
            index, i, j, distance = found
            return (f'initial_perturbation: perturbed copy {index} (of initial structure {index % len(images)}) has '
                    f'atoms {i} and {j} {distance:.3f} Å apart (closer than {CLOSE_CONTACT} Å): lower rattle_std')
    return None


def _label_property_problem(inputs, structures: set) -> str | None:
    label = inputs.get('label', {})
    if 'labeller' not in label or label['labeller'].value != 'ase' or 'properties' not in label.get('ase', {}):
        return None
    if 'stress' not in label['ase']['properties'].get_list():
        return None
    for name in sorted(structures):
        nonperiodic = [index for index, pbc in enumerate(inputs[name].configurations.pbc) if not pbc.all()]
        if nonperiodic:
            return (f'label.ase.properties: stress is asked for but {name} {nonperiodic[:10]} are not periodic in '
                    'all three directions')
    return None


def validate_active_learning_inputs(inputs, namespace=None) -> str | None:
    if namespace is not None and (problem := unknown_input_problem(namespace, inputs)):
        return problem
    bounds = {'max_iterations': MAX_ITERATIONS, 'max_labels': MAX_LABELS, 'patience': MAX_ITERATIONS,
              'calibration_window': MAX_ITERATIONS}
    for name, bound in bounds.items():
        if name in inputs and inputs[name].value < 1:
            return f'{name}: must be positive, got {inputs[name].value}'
        if name in inputs and inputs[name].value > bound:
            return f'{name}: must be at most {bound}, got {inputs[name].value}'
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
                    'aiida_alml.workflows.functions.declare_label_settings')
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
    e0s = inputs.get('train', {}).get('train', {}).get('e0s')
    if e0s is not None and hasattr(e0s, 'get_dict') and (strangers := sorted(set(e0s.get_dict()) - known)):
        # Most likely a typo or a copy from another campaign: an E0 the training data can never use.
        return (f'train.train.e0s: energies for {strangers}, elements absent from the training data '
                f'(initial_structures, initial_dataset: {sorted(known)})')
    if 'test_set' in inputs and (unseen := set(inputs['test_set'].elements) - known):
        return (f'test_set: elements {sorted(unseen)} are absent from the training data (initial_structures, '
                'initial_dataset): no committee can predict them, so the set cannot be scored')

    if 'seed' in inputs and inputs['seed'].value < 0:
        return f'seed: must be a non-negative integer, got {inputs["seed"].value}'
    for check in (_budget_problem, _exploration_size_problem, _schedule_problem, _validation_problem,
                  _structure_problem):
        if (message := check(inputs)):
            return message
    if (message := _label_property_problem(inputs, {'initial_structures', 'exploration_structures'} & set(inputs))):
        return message
    for name in ('warm_start_parameters', 'final_train_parameters'):
        if name in inputs:
            from aiida_alml.formats.mace_options import MaceOptionError, check_parameters

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
    # AiiDA checks resources against the computer's scheduler only when each job is created, in the daemon.
    for name, code in (('train.train', train_code), ('explore.md', md_code)):
        step, job = name.split('.')
        options = inputs.get(step, {}).get(job, {}).get('metadata', {}).get('options', {})
        # A newline in queue_name is never a partition name, also when a Python script gives it.
        if (problem := scheduler_option_problem(options, f'{name}.metadata.options')):
            return problem
        if (problem := resources_problem(code, options, f'{name}.metadata.options')):
            return problem
    return None


def validate_isolated_atom_box(box, _) -> str | None:
    """The edge of the box in which isolated atoms are labelled must be a positive length."""
    if not math.isfinite(box.value) or box.value <= 0:
        return f'isolated_atom_box: must be a positive length in Å, not {box.value}'
    if box.value > MAX_ISOLATED_ATOM_BOX:
        return f'isolated_atom_box: must be at most {MAX_ISOLATED_ATOM_BOX:g} Å, got {box.value:g}'
    return None
