"""``alml.active_learning``: grow a trustworthy MACE committee with as few reference labels as possible.

Each iteration: train the committee (new seeds) → explore with committee MD (new seeds) → select a diverse, capped
batch of uncertain frames → label them → measure the committee's error on them (out of sample) and refit the
calibration on the labels pooled so far → merge them into the training set. It stops when exploration stays accurate
(no failed or missing frame, calibrated σ) for ``patience`` iterations, or when the label budget or the iteration
limit is reached (each with its own exit code, all outputs attached). A last training on the whole dataset makes sure
the output models have seen every label. The decision rules are written out in docs/campaign.md.
"""

from __future__ import annotations

import time

from aiida import orm
from aiida.engine import ToContext, WorkChain, if_, while_

from aiida_alml.calculations.mace_train import isolated_atom_energies, stage_two_budget
from aiida_alml.data import ConfigurationSet
from aiida_alml.engines.md import validate_parameters as validate_md_parameters
from aiida_alml.selection import MODES, convergence_blockers
from aiida_alml.workflows.active_learning_inputs import (
    SELECTION_DEFAULTS,
    VALIDATION_DEFAULTS,
    validate_active_learning_inputs,
    validate_isolated_atom_box,
    validate_perturbation,
    validate_selection,
    validate_stage_two_steps,
    validate_validation,
)
from aiida_alml.workflows.committee import CommitteeWorkChain
from aiida_alml.workflows.explore import ExploreWorkChain
from aiida_alml.workflows.functions import (
    assemble_learning_curve,
    calibrate_committee,
    evaluate_predictions,
    isolated_atom_e0s,
    isolated_atoms,
    merge_training_sets,
    perturb_structures,
    record_iteration,
    score_predictions,
    select_for_labelling,
    split_structures,
)
from aiida_alml.workflows.functions.datasets import training_labels_mismatch
from aiida_alml.workflows.label import LabelWorkChain
from aiida_alml.workflows.links import (
    E0S, ERRORS_FINAL, ISOLATED_ATOMS, LABEL_INITIAL, LABEL_ISOLATED_ATOMS, LEARNING_CURVE, MERGE_INITIAL,
    PERTURB_INITIAL, SCORE_FINAL, STARTING_POINTS, TRAIN_FINAL, VALIDATE, iteration_label,
)
from aiida_alml.workflows.base import base_inputs
from aiida_alml.workflows.score_base import ScoreBaseWorkChain
from aiida_alml.workflows.seeds import iteration_seeds
from aiida_alml.workflows.stability import StabilityWorkChain
from aiida_alml.workflows.protocols import ProtocolMixin
from aiida_alml.workflows.submission import EndsInterruptedFunctions, submit_once

__all__ = ('ActiveLearningWorkChain',)


def elapsed_seconds(node) -> float:
    """Wall time of a process node from creation to its last change (its end, once terminated)."""
    return (node.mtime - node.ctime).total_seconds()


def reference_cpu_seconds(jobs) -> float | None:
    """CPU seconds the reference spent in the labelling ``jobs``: the sum of what they report (``cpu_time`` of
    ``alml.ase``'s ``output_parameters``), None when none reports it (FHI-aims, shell programs)."""
    reported = [job.outputs.output_parameters.get('cpu_time') for job in jobs if 'output_parameters' in job.outputs]
    reported = [seconds for seconds in reported if isinstance(seconds, (int, float))]
    return float(sum(reported)) if reported else None


class ActiveLearningWorkChain(EndsInterruptedFunctions, ProtocolMixin, WorkChain):
    """Active learning of a MACE committee; every structure, label, model and selection decision is a node."""

    _protocol_name = 'active_learning'

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input('initial_dataset', valid_type=ConfigurationSet, required=False,
                   help='Labelled configurations (energy and forces) to start from.')
        spec.input('initial_structures', valid_type=ConfigurationSet, required=False,
                   help='Structures labelled first (after perturbation, if `initial_perturbation` is given).')
        spec.input('initial_perturbation', valid_type=orm.Dict, required=False, validator=validate_perturbation,
                   help='Make rattled/strained copies of `initial_structures` first: {count (at most 10^4, built '
                        'at launch), rattle_std (Å), max_strain (below 1/3), seed}.')
        spec.input('exploration_structures', valid_type=ConfigurationSet, required=False,
                   help='Starting points of the MD runs (default: `initial_structures`).')
        spec.input('test_set', valid_type=ConfigurationSet, required=False,
                   help='Labelled held-out set on which every iteration\'s committee is scored.')
        spec.expose_inputs(LabelWorkChain, namespace='label', exclude=('structures',),
                           namespace_options={'help': 'How frames are labelled (alml.label inputs).'})
        spec.expose_inputs(CommitteeWorkChain, namespace='train', exclude=('train.training_set', 'seeds'),
                           namespace_options={'help': 'How the committee is trained (alml.committee inputs; the '
                                                      'member seeds derive from `seed`).'})
        spec.expose_inputs(ExploreWorkChain, namespace='explore', exclude=('structures', 'md.models'),
                           namespace_options={'help': 'How the committee explores (alml.explore inputs).'})
        spec.input('explore_schedule', valid_type=orm.List, required=False,
                   help='Per-iteration MD overrides laid over every condition, e.g. [{"temperature": 300}, '
                        '{"temperature": 600}]; the last entry holds for later iterations (at most 1000 entries; '
                        'MD bounds as for explore.conditions).')
        spec.input('seed', valid_type=orm.Int, default=lambda: orm.Int(0),
                   help='Campaign seed: the member and MD seeds of iteration i derive from (seed, i), so every '
                        'iteration is a new observation and a rerun repeats the campaign.')
        spec.input('selection', valid_type=orm.Dict, default=lambda: orm.Dict(SELECTION_DEFAULTS),
                   validator=validate_selection,
                   help='trust_lo/trust_hi (eV/Å), labels_per_iteration (at most 10^5), min_distance (descriptor '
                        f'units), mode ({", ".join(MODES)}), rescue_failed, seed, descriptor_r_cut (Å, at most 20), '
                        'descriptor_bins (2 to 256).')
        spec.input('target_accurate_fraction', valid_type=orm.Float, default=lambda: orm.Float(0.99),
                   help='Converged when at least this fraction of explored frames is accurate ...')
        spec.input('patience', valid_type=orm.Int, default=lambda: orm.Int(2),
                   help='... with no failed or missing frame and σ calibrated, for this many consecutive iterations.')
        spec.input('max_iterations', valid_type=orm.Int, default=lambda: orm.Int(6),
                   help='Iteration limit (at most 1000; so are patience and calibration_window).')
        spec.input('max_labels', valid_type=orm.Int, default=lambda: orm.Int(500),
                   help='Budget of reference calculations in all: the initial labelling (one per initial structure, '
                        'or per perturbed copy) and failed calculations count too, so the loop buys at most '
                        'max_labels minus the initial ones; that must be at least selection.labels_per_iteration. '
                        'At most 10^6.')
        spec.input('warm_start', valid_type=orm.Bool, default=lambda: orm.Bool(False),
                   help='From the second iteration on, member i continues from member i of the previous committee.')
        spec.input('warm_start_parameters', valid_type=orm.Dict, required=False,
                   help='mace_run_train options that replace train.train.parameters entries for warm-started '
                        'members, e.g. {"max_num_epochs": 10}.')
        spec.input('calibrate', valid_type=orm.Bool, default=lambda: orm.Bool(True),
                   help='Scale σ by the factor fitted on the out-of-sample labels of the last `calibration_window` '
                        'iterations.')
        spec.input('calibration_window', valid_type=orm.Int, default=lambda: orm.Int(3),
                   help='How many of the most recent labelled iterations the calibration pools.')
        spec.input('final_training', valid_type=orm.Bool, default=lambda: orm.Bool(True),
                   help='Train once more on the whole dataset at the end (warm-started like the loop\'s trainings): '
                        'when the last committee has not seen every label, or to give stage two '
                        '`final_stage_two_steps` steps.')
        spec.input('final_stage_two_steps', valid_type=orm.Int, default=lambda: orm.Int(400),
                   validator=validate_stage_two_steps,
                   help='Gradient steps of the final training\'s stage two at least (epochs follow from the dataset '
                        'size and batch_size): energies are learned there. 0: the training parameters as they are, '
                        'and no final training when the last committee saw every label.')
        spec.input('final_train_parameters', valid_type=orm.Dict, required=False,
                   help='mace_run_train options for that final training, laid over the others (they win over the '
                        'epochs `final_stage_two_steps` sets).')
        spec.input('isolated_atom_box', valid_type=orm.Float, default=lambda: orm.Float(20.0),
                   validator=validate_isolated_atom_box,
                   help='Edge (Å) of the empty, non-periodic box in which one atom of each element is labelled with '
                        'the campaign\'s reference to give the E0s of every training. Not done when `train.train.e0s` '
                        'is given ("average" or {element: eV}) or the initial dataset has IsolatedAtom '
                        'configurations for every element. At most 100 Å.')
        spec.input('validation', valid_type=orm.Dict, required=False, validator=validate_validation,
                   help='Run the final committee\'s MD longer and hotter than exploration (alml.stability): '
                        '{temperature_factor, steps, ensembles, max_excursion_fraction, max_nve_drift}; its '
                        'temperature and steps obey the MD bounds of explore.conditions.')
        spec.inputs.validator = validate_active_learning_inputs

        spec.outline(
            cls.setup,
            if_(cls.needs_isolated_atoms)(cls.run_isolated_atoms, cls.inspect_isolated_atoms),
            if_(cls.has_initial_structures)(cls.run_initial_labelling, cls.inspect_initial_labelling),
            while_(cls.should_continue)(
                cls.run_training,
                cls.inspect_training,
                cls.run_exploration,
                cls.inspect_exploration,
                cls.inspect_scoring,
                cls.run_selection,
                cls.decide_convergence,
                if_(cls.has_frames_to_label)(
                    cls.run_labelling, cls.inspect_labelling, cls.evaluate_picks, cls.calibrate, cls.merge_labels,
                ),
                cls.close_iteration,
            ),
            if_(cls.needs_final_training)(
                cls.run_final_training, cls.inspect_final_training, cls.run_final_scoring, cls.inspect_scoring,
            ),
            if_(cls.should_validate)(cls.run_validation, cls.inspect_validation),
            cls.finalize,
        )

        spec.output_namespace('models', valid_type=orm.Data, dynamic=True,
                              help='The final committee, trained on `dataset`.')
        spec.output('dataset', valid_type=ConfigurationSet, help='All labelled configurations (the training set).')
        spec.output('e0s', valid_type=orm.Dict, required=False,
                    help='The E0s of every training, {element: eV}: energies of isolated atoms labelled with the '
                         'campaign\'s reference (absent when they were given).')
        spec.output('learning_curve', valid_type=orm.Dict,
                    help='Per iteration: labels, fractions, errors, timings (the `iterations` rows in order), and '
                         'how the run ended.')
        spec.output_namespace('iterations', valid_type=orm.Dict, dynamic=True,
                              help='iteration_<i>: the row of loop iteration i, attached as the iteration closes.')
        spec.output_namespace('selection_records', valid_type=orm.ArrayData, dynamic=True,
                              help='Per iteration, the fate of every explored frame.')

        spec.exit_code(403, 'ERROR_VALIDATION_FAILED',
                       message='Exploration converged but the final committee\'s MD is not stable: {problems}')
        spec.exit_code(401, 'ERROR_MAX_ITERATIONS', message='Not converged within {iterations} iterations.')
        spec.exit_code(402, 'ERROR_LABEL_BUDGET_SPENT', message='The label budget of {budget} is spent, not converged.')
        spec.exit_code(410, 'ERROR_INITIAL_LABELLING_FAILED', message='Labelling the initial structures failed.')
        spec.exit_code(416, 'ERROR_ISOLATED_ATOMS_FAILED',
                       message='Labelling the isolated atoms that give the E0s failed: {detail}. Give '
                               '`train.train.e0s` ({{element: eV}} or "average") to go without them.')
        spec.exit_code(411, 'ERROR_TRAINING_FAILED', message='Training the committee failed in iteration {iteration}.')
        spec.exit_code(412, 'ERROR_EXPLORATION_FAILED', message='Exploration failed in iteration {iteration}.')
        spec.exit_code(413, 'ERROR_LABELLING_FAILED',
                       message='Labelling failed in iteration {iteration}: not one frame was labelled.')
        spec.exit_code(415, 'ERROR_INCONSISTENT_LABELS',
                       message='New labels cannot join the training set: {detail}')
        spec.exit_code(414, 'ERROR_FINAL_TRAINING_FAILED',
                       message='The final training on the whole dataset failed; the last committee is attached.')

    # ------------------------------------------------------------------ setup
    def setup(self):
        self.ctx.iteration = 0
        self.ctx.dataset = self.inputs.get('initial_dataset')
        self.ctx.labels_used = 0
        self.ctx.labels_failed = 0
        self.ctx.sigma_scale = 1.0  # the calibration factor σ is multiplied by (1 until calibrated)
        self.ctx.calibration_record = None  # the last fit of calibrate_committee (factor, interval, coverage, ...)
        self.ctx.sigma_calibrated = False  # whether sigma_scale comes from a fit (inputs.calibrate on)
        self.ctx.oos_pairs = []
        self.ctx.observations = []
        self.ctx.accurate_streak = 0
        self.ctx.rows = {}
        self.ctx.stop = None
        self.ctx.models = None
        self.ctx.models_trained_on = None
        self.ctx.final = None
        self.ctx.validation_report = None
        self.ctx.e0s = None
        exploration = self.inputs.get('exploration_structures') or self.inputs.get('initial_structures')
        self.ctx.starting_points = split_structures(exploration, metadata={'call_link_label': STARTING_POINTS})

    def _elements(self) -> list[str]:
        names = ('initial_dataset', 'initial_structures', 'exploration_structures')
        return sorted({element for name in names if name in self.inputs for element in self.inputs[name].elements})

    def needs_isolated_atoms(self):
        """E0s are needed from the reference unless given, or the initial dataset has isolated atoms for them all."""
        if 'e0s' in self.inputs.train.get('train', {}):
            return False
        given = isolated_atom_energies(self.ctx.dataset.configurations) if self.ctx.dataset is not None else {}
        return not set(self._elements()) <= set(given)

    def run_isolated_atoms(self):
        """Label one atom of each element alone in a box with the campaign's reference: the E0s of every training
        (MACE's recommended E0s; the average over the data shifts with every batch the loop adds)."""
        elements = self._elements()
        structures = isolated_atoms(orm.List(elements), self.inputs.isolated_atom_box,
                                    metadata={'call_link_label': ISOLATED_ATOMS})
        self.report(f'labelling isolated atoms of {", ".join(elements)} for the E0s')
        # A lone atom in a box that is not periodic has no stress.
        properties = {'ase': {'properties': orm.List(['energy', 'forces'])}}
        return ToContext(isolated_labels=self._submit_labelling(structures, LABEL_ISOLATED_ATOMS, properties))

    def inspect_isolated_atoms(self):
        node = self.ctx.isolated_labels
        if 'labelled' not in node.outputs:
            return self.exit_codes.ERROR_ISOLATED_ATOMS_FAILED.format(detail=node.exit_message or 'no labels')
        try:
            self.ctx.e0s = isolated_atom_e0s(node.outputs.labelled, orm.List(self._elements()),
                                             metadata={'call_link_label': E0S})
        except ValueError as error:
            return self.exit_codes.ERROR_ISOLATED_ATOMS_FAILED.format(detail=str(error))
        self.out('e0s', self.ctx.e0s)
        e0s = ', '.join(f'{element} {energy:.4f} eV' for element, energy in self.ctx.e0s.get_dict().items())
        self.report(f'E0s from isolated atoms: {e0s}')
        return None

    def has_initial_structures(self):
        return 'initial_structures' in self.inputs

    def run_initial_labelling(self):
        structures = self.inputs.initial_structures
        if 'initial_perturbation' in self.inputs:
            structures = perturb_structures(structures, self.inputs.initial_perturbation,
                                            metadata={'call_link_label': PERTURB_INITIAL})
        self.ctx.initial_count = len(structures)
        self.report(f'labelling {len(structures)} initial structures')
        return ToContext(initial_labels=self._submit_labelling(structures, LABEL_INITIAL))

    def inspect_initial_labelling(self):
        node = self.ctx.initial_labels
        self.ctx.labels_used += self.ctx.initial_count
        if 'labelled' not in node.outputs:
            return self.exit_codes.ERROR_INITIAL_LABELLING_FAILED
        labelled = node.outputs.labelled
        self.ctx.labels_failed += self.ctx.initial_count - len(labelled)
        if not node.is_finished_ok:
            self.report(f'initial labelling: {node.exit_message}; keeping the {len(labelled)} labels that succeeded')
        if self.ctx.dataset is None:
            self.ctx.dataset = labelled
        else:
            if (problem := self._mismatch(labelled)):
                return self.exit_codes.ERROR_INCONSISTENT_LABELS.format(detail=problem)
            self.ctx.dataset = merge_training_sets(
                a_initial=self.ctx.dataset, b_labelled=labelled, metadata={'call_link_label': MERGE_INITIAL}
            )
        self.report(f'initial training set: {len(self.ctx.dataset)} configurations')
        return None

    # ------------------------------------------------------------------ the loop
    def should_continue(self):
        if self.ctx.stop:
            return False
        if self.ctx.iteration >= self.inputs.max_iterations.value:
            self.ctx.stop = 'max_iterations'
            return False
        if self.ctx.labels_used >= self.inputs.max_labels.value and self.ctx.iteration > 0:
            self.ctx.stop = 'label_budget'
            return False
        return True

    def run_training(self):
        conditions = self._conditions(self.ctx.iteration)
        seeds = iteration_seeds(self.inputs.seed.value, self.ctx.iteration, self.inputs.train.num_members.value,
                                [condition.get('seed', 0) for condition in conditions])
        self.ctx.conditions = [{**condition, 'seed': seed} for condition, seed in zip(conditions, seeds['md'])]
        self.ctx.entry = {
            'iteration': self.ctx.iteration, 'labels_total': len(self.ctx.dataset), 'wall_time_s': {},
            'member_seeds': seeds['members'], 'md_seeds': seeds['md'],
        }
        self.report(f'iteration {self.ctx.iteration}: training the committee on {len(self.ctx.dataset)} configurations')
        link = iteration_label('train', self.ctx.iteration)
        return ToContext(committee=self._submit_training(seeds['members'], link))

    def inspect_training(self):
        committee = self.ctx.committee
        self.ctx.entry['wall_time_s']['train'] = elapsed_seconds(committee)
        if not committee.is_finished_ok:
            return self.exit_codes.ERROR_TRAINING_FAILED.format(iteration=self.ctx.iteration)
        self.ctx.models = dict(committee.outputs.models.items())
        self.ctx.models_trained_on = self.ctx.dataset.uuid
        self.ctx.entry['train_metrics'] = committee.outputs.summary.get_dict()
        return None

    def run_exploration(self):
        """Explore with the new committee and, beside it, score it on the held-out test set (when there is one)."""
        inputs = self.exposed_inputs(ExploreWorkChain, namespace='explore')
        inputs['structures'] = dict(self.ctx.starting_points)
        inputs['md']['models'] = self.ctx.models
        inputs['conditions'] = orm.List(self.ctx.conditions)
        inputs['metadata'] = {'call_link_label': iteration_label('explore', self.ctx.iteration)}
        futures = {'exploration': submit_once(self, ExploreWorkChain, **inputs)}
        futures.update(self._submit_scoring(iteration_label('score', self.ctx.iteration),
                                            iteration_label('errors', self.ctx.iteration), self.ctx.entry))
        return ToContext(**futures)

    def inspect_exploration(self):
        exploration = self.ctx.exploration
        self.ctx.entry['wall_time_s']['explore'] = elapsed_seconds(exploration)
        if not exploration.is_finished_ok:
            return self.exit_codes.ERROR_EXPLORATION_FAILED.format(iteration=self.ctx.iteration)
        return None

    def run_selection(self):
        """Choose the frames to label from this iteration's exploration (``select_for_labelling``)."""
        settings = {**SELECTION_DEFAULTS, **self.inputs.selection.get_dict()}
        # Never choose more than the label budget has left (should_continue stops the loop once it is spent).
        remaining = self.inputs.max_labels.value - self.ctx.labels_used
        settings['labels_per_iteration'] = max(1, min(settings['labels_per_iteration'], remaining))
        # σ counts as checked against labels once calibrated (or when calibration is switched off).
        self.ctx.sigma_checked = self.ctx.sigma_calibrated or not self.inputs.calibrate.value
        start = time.perf_counter()
        # Training environments described by earlier selections: each configuration is described once per campaign
        # (issue 26). `.get`: a campaign checkpointed before the cache existed has none.
        environments = self.ctx.get('environments') or {}
        outputs = select_for_labelling(
            orm.Dict(settings), orm.Float(self.ctx.sigma_scale), orm.Int(self.ctx.iteration), self.ctx.dataset,
            orm.Bool(self.ctx.sigma_checked), self.ctx.exploration.outputs.overview,
            metadata={'call_link_label': iteration_label('select', self.ctx.iteration)},
            **({'environments': dict(environments)} if environments else {}),
            **dict(self.ctx.exploration.outputs.trajectories.items()),
        )
        if 'training_environments' in outputs:
            self.ctx.environments = {**environments, f'iteration_{self.ctx.iteration}':
                                     outputs['training_environments']}
        self.ctx.entry['wall_time_s']['select'] = time.perf_counter() - start
        self.out(f'selection_records.iteration_{self.ctx.iteration}', outputs['record'])
        self.ctx.selection_summary = outputs['summary'].get_dict()
        self.ctx.selected = outputs.get('selected')
        self.ctx.predictions = outputs.get('predictions')

    def decide_convergence(self):
        """Whether this iteration counts towards convergence; converged after ``patience`` such iterations."""
        summary, sigma_checked = self.ctx.selection_summary, self.ctx.sigma_checked
        observation = [self.ctx.entry['member_seeds'], self.ctx.entry['md_seeds']]
        explored_anew = observation not in self.ctx.observations
        self.ctx.observations.append(observation)
        blockers = convergence_blockers(summary, self.inputs.target_accurate_fraction.value, sigma_checked,
                                        explored_anew)
        converged_now = not blockers
        self.ctx.accurate_streak = self.ctx.accurate_streak + 1 if converged_now else 0
        self.ctx.entry.update({
            key: summary[key] for key in (
                'frames', 'frames_counted', 'num_starts', 'num_known', 'accurate_fraction', 'candidate_fraction',
                'failed_fraction', 'frames_missing', 'runs', 'runs_stopped_early', 'runs_crashed', 'early_stops',
                'num_rescued', 'max_uncertainty')
        })
        self.ctx.entry.update({'calibration_factor': self.ctx.sigma_scale, 'sigma_checked': sigma_checked,
                               'explored_anew': explored_anew, 'converged_now': converged_now,
                               'not_converged_because': blockers,
                               'streak': self.ctx.accurate_streak})
        stops = f', {summary["runs_stopped_early"]} runs stopped early' if summary['runs_stopped_early'] else ''
        crashes = f', {summary["runs_crashed"]} crashed' if summary['runs_crashed'] else ''
        rescued = f' ({summary["num_rescued"]} of them failed frames rescued)' if summary['num_rescued'] else ''
        self.report(
            f'iteration {self.ctx.iteration}: {summary["frames_counted"]} frames counted of {summary["frames"]}'
            f'{stops}{crashes}; accurate {summary["accurate_fraction"]:.2%}, candidate '
            f'{summary["candidate_fraction"]:.2%}, failed {summary["failed_fraction"]:.2%}; '
            f'{summary["num_chosen"]} chosen{rescued}'
            + (f'; does not count towards convergence: {"; ".join(blockers)}' if blockers else '; counts towards '
               f'convergence ({self.ctx.accurate_streak} of {self.inputs.patience.value})')
        )
        if self.ctx.accurate_streak >= self.inputs.patience.value:
            self.ctx.stop = 'converged'
            self.ctx.selected = None  # converged: no more labels needed

    def has_frames_to_label(self):
        return self.ctx.selected is not None

    def run_labelling(self):
        link = iteration_label('label', self.ctx.iteration)
        return ToContext(labelling=self._submit_labelling(self.ctx.selected, link))

    def inspect_labelling(self):
        """Keep what was labelled (failures are charged to the budget and recorded)."""
        node = self.ctx.labelling
        attempted = len(self.ctx.selected)
        self.ctx.labels_used += attempted
        self.ctx.entry['wall_time_s']['label'] = elapsed_seconds(node)
        jobs = [child for child in node.called_descendants if isinstance(child, orm.CalcJobNode)]
        self.ctx.entry['reference_time_s'] = sum(elapsed_seconds(job) for job in jobs)
        if (cpu := reference_cpu_seconds(jobs)) is not None:
            self.ctx.entry['reference_cpu_s'] = cpu
        failures = node.outputs.failures.get_dict() if 'failures' in node.outputs else {}
        labelled = node.outputs.labelled if 'labelled' in node.outputs else None
        failed = attempted - (len(labelled) if labelled is not None else 0)
        self.ctx.labels_failed += failed
        self.ctx.entry.update({'labels_attempted': attempted, 'labels_failed': failed,
                               'label_failures': {key: value.get('message', '') for key, value in failures.items()}})
        if labelled is None:
            return self.exit_codes.ERROR_LABELLING_FAILED.format(iteration=self.ctx.iteration)
        if failed:
            self.report(f'iteration {self.ctx.iteration}: {failed} of {attempted} labelling calculations failed; '
                        f'keeping the {len(labelled)} that succeeded')
        if (problem := self._mismatch(labelled)):
            return self.exit_codes.ERROR_INCONSISTENT_LABELS.format(detail=problem)
        self.ctx.labelled = labelled
        return None

    def evaluate_picks(self):
        """The committee's out-of-sample errors on the frames it picked, now that they are labelled."""
        iteration = self.ctx.iteration
        evaluation = evaluate_predictions(self.ctx.labelled, self.ctx.selected, self.ctx.predictions,
                                          metadata={'call_link_label': iteration_label('evaluate', iteration)})
        metrics = evaluation['metrics'].get_dict()
        self.ctx.oos_pairs.append((iteration, evaluation['error_sigma_pairs']))
        self.ctx.entry.update({
            'labels_new': len(self.ctx.labelled),
            'oos_force_rmse': metrics['force_rmse'],
            'oos_energy_rmse_per_atom': metrics['energy_rmse_per_atom'],
            'energy_jumps': metrics['energy_jumps'],
        })
        if metrics['energy_jumps']:
            self.report(f'iteration {iteration}: the labels of selected frames {metrics["energy_jumps"]} jump in energy '
                        'from the rest of the batch (another electronic state?); kept, listed as energy_jumps')

    def calibrate(self):
        """Fit σ's calibration factor on the out-of-sample pairs of the last ``calibration_window`` iterations."""
        iteration = self.ctx.iteration
        window = self.ctx.oos_pairs[-self.inputs.calibration_window.value:]
        calibration = calibrate_committee(
            orm.Int(len(self.ctx.models)), metadata={'call_link_label': iteration_label('calibrate', iteration)},
            **{f'iteration_{number}': pairs for number, pairs in window},
        ).get_dict()
        self.ctx.calibration_record = calibration
        self.ctx.entry.update({
            'fitted_calibration_factor': calibration['factor'],
            'calibration_interval': calibration['interval'],
            'calibration_coverage': calibration['coverage'],
        })
        if self.inputs.calibrate.value:
            self.ctx.sigma_scale = calibration['factor']
            self.ctx.sigma_calibrated = True

    def merge_labels(self):
        """Add the new labels to the training set."""
        iteration, labelled, calibration = self.ctx.iteration, self.ctx.labelled, self.ctx.calibration_record
        self.ctx.dataset = merge_training_sets(
            a_previous=self.ctx.dataset, b_new=labelled,
            metadata={'call_link_label': iteration_label('merge', iteration)},
        )
        low, high = calibration['interval']
        self.report(
            f'iteration {iteration}: {len(labelled)} labels added (total {len(self.ctx.dataset)}); out-of-sample '
            f'force RMSE {self.ctx.entry["oos_force_rmse"]:.3f} eV/Å; calibration factor '
            f'{calibration["factor"]:.2f} [{low:.2f}, {high:.2f}] from {calibration["num_frames"]} frames'
        )

    def close_iteration(self):
        """Record the iteration's row (a calcfunction: the row is data with a creator) and attach it."""
        iteration = self.ctx.iteration
        self.ctx.entry['labels_used'] = self.ctx.labels_used
        row = record_iteration(orm.Dict(self.ctx.entry),
                               metadata={'call_link_label': iteration_label('record', iteration)})
        self.out(f'iterations.iteration_{iteration}', row)
        self.ctx.rows[f'iteration_{iteration}'] = row
        self.ctx.iteration += 1

    # ------------------------------------------------------------------ end
    def needs_final_training(self):
        """The last committee has not seen every label (the loop stopped on its budget or iteration limit), or the
        final training's long stage two is asked for."""
        return (self.inputs.final_training.value and self.ctx.models is not None
                and (self.ctx.models_trained_on != self.ctx.dataset.uuid or self.inputs.final_stage_two_steps.value > 0))

    def run_final_training(self):
        # The index after the last iteration: seeds no loop iteration used.
        seeds = iteration_seeds(self.inputs.seed.value, self.ctx.iteration, self.inputs.train.num_members.value, [])
        extra = {}
        steps = self.inputs.final_stage_two_steps.value
        if steps > 0:
            parameters = self._training_parameters()
            # MACE trains on the configurations that are not isolated atoms (attribute of the set; 0 if not recorded)
            trained = len(self.ctx.dataset) - self.ctx.dataset.base.attributes.get('isolated_atoms', 0)
            extra = stage_two_budget(parameters, trained, steps)
        if 'final_train_parameters' in self.inputs:
            extra.update(self.inputs.final_train_parameters.get_dict())
        self.report(f'final training on the whole dataset ({len(self.ctx.dataset)} configurations'
                    + (f', {extra["max_num_epochs"]} epochs, stage two from epoch {extra["start_swa"]})' if
                       'start_swa' in extra and 'max_num_epochs' in extra else ')'))
        self.ctx.final = {'labels_total': len(self.ctx.dataset), 'member_seeds': seeds['members'],
                          'stage_two_steps': steps}
        return ToContext(final_committee=self._submit_training(seeds['members'], TRAIN_FINAL, extra))

    def inspect_final_training(self):
        committee = self.ctx.final_committee
        self.ctx.final['wall_time_s'] = elapsed_seconds(committee)
        if not committee.is_finished_ok:
            self.ctx.final['failed'] = True
            return None  # finalize attaches the last committee and returns ERROR_FINAL_TRAINING_FAILED
        self.ctx.models = dict(committee.outputs.models.items())
        self.ctx.models_trained_on = self.ctx.dataset.uuid
        self.ctx.final['train_metrics'] = committee.outputs.summary.get_dict()
        return None

    def run_final_scoring(self):
        """The final committee on the held-out test set (when there is one and the final training succeeded)."""
        self.ctx.scoring = None
        if self.ctx.final.get('failed'):
            return None
        return ToContext(**self._submit_scoring(SCORE_FINAL, ERRORS_FINAL, self.ctx.final))

    def should_validate(self):
        return 'validation' in self.inputs and self.ctx.models is not None and not (self.ctx.final or {}).get('failed')

    def run_validation(self):
        settings = {**VALIDATION_DEFAULTS, **self.inputs.validation.get_dict()}
        # Complete MD parameters (explore.parameters and the defaults under each condition): a campaign may give
        # `steps` or `temperature` in explore.parameters only.
        shared = self.inputs.explore.parameters.get_dict() if 'parameters' in self.inputs.explore else {}
        explored = [[validate_md_parameters({**shared, **condition}) for condition in self._conditions(i)]
                    for i in range(max(self.ctx.iteration, 1))]
        hottest = max(max(c.get('temperature') or max(c['temperature_start'], c['temperature_end']) for c in conditions)
                      for conditions in explored)
        longest = max(c['steps'] for conditions in explored for c in conditions)
        base = explored[-1][0]
        parameters = {key: base[key] for key in ('timestep', 'sample_interval', 'min_distance') if key in base}
        parameters.update(temperature=settings['temperature_factor'] * hottest,
                          steps=settings['steps'] or int(round(settings['steps_factor'] * longest)),
                          seed=self.inputs.seed.value)
        selection = {**SELECTION_DEFAULTS, **self.inputs.selection.get_dict()}
        criteria = {'trust_hi': selection['trust_hi'], 'calibration': self.ctx.sigma_scale,
                    **{key: settings[key] for key in ('max_excursion_fraction', 'max_nve_drift')}}
        explore = self.exposed_inputs(ExploreWorkChain, namespace='explore')['md']
        inputs = {
            'md': {**explore, 'models': self.ctx.models},
            'structures': dict(self.ctx.starting_points),
            'parameters': orm.Dict(parameters),
            'ensembles': orm.List(settings['ensembles']),
            'criteria': orm.Dict(criteria),
            'max_relaunches': self.inputs.explore.max_relaunches,
            'metadata': {'call_link_label': VALIDATE},
        }
        self.report(f'validating the final committee: {settings["ensembles"]} at {parameters["temperature"]:.0f} K '
                    f'for {parameters["steps"]} steps')
        return ToContext(validation=submit_once(self, StabilityWorkChain, **inputs))

    def inspect_validation(self):
        node = self.ctx.validation
        if 'report' not in node.outputs:
            self.ctx.validation_report = {'stable': False, 'problems': [f'validation failed: {node.exit_message}']}
        else:
            self.ctx.validation_report = node.outputs.report.get_dict()
        self.ctx.validation_report['wall_time_s'] = elapsed_seconds(node)

    def finalize(self):
        if self.ctx.models:
            for key, model in self.ctx.models.items():
                self.out(f'models.{key}', model)
        self.out('dataset', self.ctx.dataset)
        summary = orm.Dict({
            'stop_reason': self.ctx.stop,
            'labels_used': self.ctx.labels_used,
            'labels_failed': self.ctx.labels_failed,
            'final_calibration_factor': self.ctx.sigma_scale,
            'calibration': self.ctx.calibration_record,
            'final_training': self.ctx.final,
            'models_trained_on_dataset': self.ctx.models_trained_on == self.ctx.dataset.uuid,
            'validation': self.ctx.validation_report,
        })
        self.out('learning_curve', assemble_learning_curve(summary, metadata={'call_link_label': LEARNING_CURVE},
                                                           **self.ctx.rows))
        self.report(f'stopped: {self.ctx.stop} after {self.ctx.iteration} iterations, {self.ctx.labels_used} labels')
        if self.ctx.final and self.ctx.final.get('failed'):
            return self.exit_codes.ERROR_FINAL_TRAINING_FAILED
        report = self.ctx.validation_report
        if self.ctx.stop == 'converged' and report is not None and not report['stable']:
            return self.exit_codes.ERROR_VALIDATION_FAILED.format(problems='; '.join(report['problems']))
        if self.ctx.stop == 'max_iterations':
            return self.exit_codes.ERROR_MAX_ITERATIONS.format(iterations=self.ctx.iteration)
        if self.ctx.stop == 'label_budget':
            return self.exit_codes.ERROR_LABEL_BUDGET_SPENT.format(budget=self.inputs.max_labels.value)
        return None

    # ------------------------------------------------------------------ helpers
    def _conditions(self, iteration: int) -> list[dict]:
        """The exploration conditions of ``iteration``: the schedule's entry laid over every condition."""
        conditions = self.inputs.explore.conditions.get_list()
        if 'explore_schedule' in self.inputs:
            schedule = self.inputs.explore_schedule.get_list()
            override = schedule[min(iteration, len(schedule) - 1)]
            conditions = [{**condition, **override} for condition in conditions]
        return conditions

    def _submit_training(self, seeds: list[int], link_label: str, extra_parameters: dict | None = None):
        inputs = self.exposed_inputs(CommitteeWorkChain, namespace='train')
        inputs['train']['training_set'] = self.ctx.dataset
        if self.ctx.e0s is not None:
            inputs['train']['e0s'] = self.ctx.e0s
        inputs['seeds'] = orm.List(seeds)
        parameters = self._training_parameters()
        if self.inputs.warm_start.value and self.ctx.models:
            inputs['parent_models'] = self.ctx.models
        if extra_parameters:
            parameters.update(extra_parameters)
        if parameters:
            inputs['train']['parameters'] = orm.Dict(parameters)
        inputs['metadata'] = {'call_link_label': link_label}
        return submit_once(self, CommitteeWorkChain, **inputs)

    def _training_parameters(self) -> dict:
        """The mace_run_train options of the next training: ``train.train.parameters``, with
        ``warm_start_parameters`` over them when it continues from the current committee."""
        train = self.inputs.train.train
        parameters = train.parameters.get_dict() if 'parameters' in train else {}
        if self.inputs.warm_start.value and self.ctx.models and 'warm_start_parameters' in self.inputs:
            parameters.update(self.inputs.warm_start_parameters.get_dict())
        return parameters

    def _submit_scoring(self, job_label: str, errors_label: str, row: dict) -> dict:
        """Launch the job that runs the current committee on the held-out test set ({} without a test set): an
        ``alml.score`` job with the MD code, on its computer and with its options, so that no model is loaded where
        the daemon runs. :meth:`inspect_scoring` writes the errors into ``row``."""
        self.ctx.scoring = None
        if 'test_set' not in self.inputs:
            return {}
        explore = self.exposed_inputs(ExploreWorkChain, namespace='explore')
        parameters = explore['parameters'].get_dict() if 'parameters' in explore else {}
        device = {**parameters, **(self.ctx.conditions[0] if self.ctx.conditions else {})}.get('device', 'cpu')
        # The MD jobs' scheduler options (resources, queue, environment), not their parser: this job has its own.
        options = {key: value for key, value in explore['md'].get('metadata', {}).get('options', {}).items()
                   if key != 'parser_name'}
        job = {'code': explore['md']['code'], 'frames': self.inputs.test_set, 'models': self.ctx.models,
               'device': orm.Str(device), 'metadata': {'options': options}}
        max_relaunches = self.inputs.explore.max_relaunches
        self.ctx.scoring_target = {'row': 'final' if job_label == SCORE_FINAL else 'entry', 'errors': errors_label}
        return {'scoring': submit_once(self, ScoreBaseWorkChain,
                                       **base_inputs('score', job, max_relaunches, job_label))}

    def inspect_scoring(self):
        """The held-out errors of the committee the scoring job ran (nothing to do without a test set). A failed
        scoring job does not stop the campaign: the row says so and the errors stay empty."""
        scoring = self.ctx.get('scoring')
        if scoring is None:
            return None
        row = self.ctx.final if self.ctx.scoring_target['row'] == 'final' else self.ctx.entry
        if not scoring.is_finished_ok:
            row['test_scoring_failed'] = f'<{scoring.pk}> exit status {scoring.exit_status}: {scoring.exit_message}'
            self.report(f'scoring on the test set failed ({row["test_scoring_failed"]}): no held-out errors for '
                        'this committee')
            return None
        scores = score_predictions(self.inputs.test_set, scoring.outputs.predictions,
                                   metadata={'call_link_label': self.ctx.scoring_target['errors']}).get_dict()
        row.update({'test_force_rmse': scores['force_rmse'],
                    'test_energy_rmse_per_atom': scores['energy_rmse_per_atom'],
                    'test_energy_mean_error_per_atom': scores['energy_mean_error_per_atom']})
        return None

    def _mismatch(self, labelled: ConfigurationSet) -> str | None:
        """Why ``labelled`` may not join the training set (settings differ from its labels), or None."""
        # From the sets' attributes where they decide it: no pass over the whole training set in the daemon
        return training_labels_mismatch(self.ctx.dataset, labelled)

    def _submit_labelling(self, structures: ConfigurationSet, link_label: str, overrides: dict | None = None):
        inputs = self.exposed_inputs(LabelWorkChain, namespace='label')
        inputs['structures'] = structures
        for namespace, values in (overrides or {}).items():
            if namespace in inputs:
                inputs[namespace] = {**inputs[namespace], **values}
        aims = inputs.get('aims', {})
        if 'kpoints_distance' in aims and 'kpoints_reference' not in aims:
            # One k-mesh per cell shape for the whole campaign: every labelling derives it from the same cells.
            reference = self.inputs.get('exploration_structures') or self.inputs.get('initial_structures')
            inputs['aims'] = {**aims, 'kpoints_reference': reference}
        inputs['metadata'] = {'call_link_label': link_label}
        return submit_once(self, LabelWorkChain, **inputs)

    # ------------------------------------------------------------------ protocols
    @classmethod
    def get_builder_from_protocol(cls, train_code, md_code, label_code, structures=None, *, initial_dataset=None,
                                  exploration_structures=None, test_set=None, calculator=None, protocol=None,
                                  overrides=None, options=None, labeller=None, species_root=None):
        """A builder for a campaign: ``train_code`` (``alml.mace.train``), ``md_code`` (``alml.md``) and
        ``label_code`` (the reference: ``alml.ase`` with ``calculator``, ``alml.aims`` with ``species_root``, or a
        shell code), ``structures`` to label first (``initial_structures``) and/or a labelled ``initial_dataset``,
        optionally ``exploration_structures`` and a labelled ``test_set`` (ConfigurationSets or ASE Atoms).

        ``options``: ``metadata.options`` of every job (training, MD, labelling); ``overrides``: inputs laid over the
        protocol's (plain dicts merged, a node replaces, None removes), e.g. ``{'selection': {'trust_lo': 0.1}}`` or
        ``{'explore_schedule': [{'temperature': 500}]}``. A campaign file with ``protocol:`` gives the same inputs.
        See docs/python.md.
        """
        from aiida_alml.workflows.protocols import active_learning_builder

        return active_learning_builder(cls, train_code, md_code, label_code, structures, initial_dataset=initial_dataset,
            exploration_structures=exploration_structures, test_set=test_set, calculator=calculator, protocol=protocol,
            overrides=overrides, options=options, labeller=labeller, species_root=species_root)
