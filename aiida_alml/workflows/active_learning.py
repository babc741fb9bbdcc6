"""``alml.active_learning``: grow a trustworthy MACE committee with as few reference labels as possible.

Each iteration: train the committee → explore with committee MD → select a diverse, capped batch of uncertain
frames → label them → measure the committee's error on them (out of sample) and refit the calibration → merge
them into the training set. It stops when exploration stays accurate for ``patience`` iterations, or when the
label budget or the iteration limit is reached (each with its own exit code, all outputs attached).
"""

from __future__ import annotations

import time

from aiida import orm
from aiida.engine import ToContext, WorkChain, if_, while_

from aiida_alml.data import ConfigurationSet
from aiida_alml.workflows.active_learning_inputs import (
    SELECTION_DEFAULTS,
    validate_active_learning_inputs,
    validate_perturbation,
    validate_selection,
)
from aiida_alml.workflows.committee import CommitteeWorkChain
from aiida_alml.workflows.explore import ExploreWorkChain
from aiida_alml.workflows.functions import (
    evaluate_predictions,
    merge_training_sets,
    perturb_structures,
    score_committee,
    select_for_labelling,
    split_structures,
)
from aiida_alml.workflows.label import LabelWorkChain

__all__ = ('ActiveLearningWorkChain',)


def elapsed_seconds(node) -> float:
    """Wall time of a process node from creation to its last change (its end, once terminated)."""
    return (node.mtime - node.ctime).total_seconds()


class ActiveLearningWorkChain(WorkChain):
    """Active learning of a MACE committee; every structure, label, model and selection decision is a node."""

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input('initial_dataset', valid_type=ConfigurationSet, required=False,
                   help='Labelled configurations (energy and forces) to start from.')
        spec.input('initial_structures', valid_type=ConfigurationSet, required=False,
                   help='Structures labelled first (after perturbation, if `initial_perturbation` is given).')
        spec.input('initial_perturbation', valid_type=orm.Dict, required=False, validator=validate_perturbation,
                   help='Make rattled/strained copies of `initial_structures` first: {count, rattle_std (Å), '
                        'max_strain, seed}.')
        spec.input('exploration_structures', valid_type=ConfigurationSet, required=False,
                   help='Starting points of the MD runs (default: `initial_structures`).')
        spec.input('test_set', valid_type=ConfigurationSet, required=False,
                   help='Labelled held-out set on which every iteration\'s committee is scored.')
        spec.expose_inputs(LabelWorkChain, namespace='label', exclude=('structures',),
                           namespace_options={'help': 'How frames are labelled (alml.label inputs).'})
        spec.expose_inputs(CommitteeWorkChain, namespace='train', exclude=('train.training_set',),
                           namespace_options={'help': 'How the committee is trained (alml.committee inputs).'})
        spec.expose_inputs(ExploreWorkChain, namespace='explore', exclude=('structures', 'md.models'),
                           namespace_options={'help': 'How the committee explores (alml.explore inputs).'})
        spec.input('explore_schedule', valid_type=orm.List, required=False,
                   help='Per-iteration MD overrides laid over every condition, e.g. [{"temperature": 300}, '
                        '{"temperature": 600}]; the last entry holds for later iterations.')
        spec.input('selection', valid_type=orm.Dict, default=lambda: orm.Dict(SELECTION_DEFAULTS),
                   validator=validate_selection,
                   help='trust_lo/trust_hi (eV/Å), labels_per_iteration, min_distance (descriptor units), mode '
                        '(fps or random), seed, descriptor_r_cut (Å), descriptor_bins.')
        spec.input('target_accurate_fraction', valid_type=orm.Float, default=lambda: orm.Float(0.99),
                   help='Converged when at least this fraction of explored frames is accurate ...')
        spec.input('patience', valid_type=orm.Int, default=lambda: orm.Int(2),
                   help='... with no failed frame, for this many consecutive iterations.')
        spec.input('max_iterations', valid_type=orm.Int, default=lambda: orm.Int(6), help='Iteration limit.')
        spec.input('max_labels', valid_type=orm.Int, default=lambda: orm.Int(500),
                   help='Budget of new reference labels (initial structures included).')
        spec.input('warm_start', valid_type=orm.Bool, default=lambda: orm.Bool(False),
                   help='From the second iteration on, member i continues from member i of the previous committee.')
        spec.input('warm_start_parameters', valid_type=orm.Dict, required=False,
                   help='mace_run_train options that replace train.train.parameters entries for warm-started '
                        'members, e.g. {"max_num_epochs": 10}.')
        spec.input('calibrate', valid_type=orm.Bool, default=lambda: orm.Bool(True),
                   help='Scale σ by the factor refit each iteration on the newly labelled frames.')
        spec.inputs.validator = validate_active_learning_inputs

        spec.outline(
            cls.setup,
            if_(cls.has_initial_structures)(cls.label_initial, cls.merge_initial),
            while_(cls.should_continue)(
                cls.train_committee,
                cls.explore,
                cls.select,
                if_(cls.has_frames_to_label)(cls.label_selected, cls.evaluate_and_merge),
                cls.close_iteration,
            ),
            cls.finalize,
        )

        spec.output_namespace('models', valid_type=orm.Data, dynamic=True, help='The final committee.')
        spec.output('dataset', valid_type=ConfigurationSet, help='All labelled configurations (the training set).')
        spec.output('learning_curve', valid_type=orm.Dict, help='Per iteration: labels, fractions, errors, timings.')
        spec.output_namespace('selection_records', valid_type=orm.ArrayData, dynamic=True,
                              help='Per iteration, the fate of every explored frame.')

        spec.exit_code(401, 'ERROR_MAX_ITERATIONS', message='Not converged within {iterations} iterations.')
        spec.exit_code(402, 'ERROR_LABEL_BUDGET_SPENT', message='The label budget of {budget} is spent, not converged.')
        spec.exit_code(410, 'ERROR_INITIAL_LABELLING_FAILED', message='Labelling the initial structures failed.')
        spec.exit_code(411, 'ERROR_TRAINING_FAILED', message='Training the committee failed in iteration {iteration}.')
        spec.exit_code(412, 'ERROR_EXPLORATION_FAILED', message='Exploration failed in iteration {iteration}.')
        spec.exit_code(413, 'ERROR_LABELLING_FAILED', message='Labelling failed in iteration {iteration}.')

    # ------------------------------------------------------------------ setup
    def setup(self):
        self.ctx.iteration = 0
        self.ctx.dataset = self.inputs.get('initial_dataset')
        self.ctx.labels_used = 0
        self.ctx.calibration = 1.0
        self.ctx.calibrated = False
        self.ctx.accurate_streak = 0
        self.ctx.curve = []
        self.ctx.stop = None
        self.ctx.models = None
        exploration = self.inputs.get('exploration_structures') or self.inputs.get('initial_structures')
        self.ctx.starting_points = split_structures(exploration, metadata={'call_link_label': 'starting_points'})

    def has_initial_structures(self):
        return 'initial_structures' in self.inputs

    def label_initial(self):
        structures = self.inputs.initial_structures
        if 'initial_perturbation' in self.inputs:
            structures = perturb_structures(structures, self.inputs.initial_perturbation,
                                            metadata={'call_link_label': 'perturb_initial'})
        self.report(f'labelling {len(structures)} initial structures')
        return ToContext(initial_labels=self._submit_labelling(structures, 'label_initial'))

    def merge_initial(self):
        node = self.ctx.initial_labels
        if not node.is_finished_ok or 'labelled' not in node.outputs:
            return self.exit_codes.ERROR_INITIAL_LABELLING_FAILED
        labelled = node.outputs.labelled
        self.ctx.labels_used += len(labelled)
        if self.ctx.dataset is None:
            self.ctx.dataset = labelled
        else:
            self.ctx.dataset = merge_training_sets(
                a_initial=self.ctx.dataset, b_labelled=labelled, metadata={'call_link_label': 'merge_initial'}
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

    def train_committee(self):
        self.ctx.entry = {'iteration': self.ctx.iteration, 'labels_total': len(self.ctx.dataset), 'wall_time_s': {}}
        inputs = self.exposed_inputs(CommitteeWorkChain, namespace='train')
        inputs['train']['training_set'] = self.ctx.dataset
        if self.inputs.warm_start.value and self.ctx.models:
            inputs['parent_models'] = self.ctx.models
            if 'warm_start_parameters' in self.inputs:
                base = inputs['train']['parameters'].get_dict() if 'parameters' in inputs['train'] else {}
                inputs['train']['parameters'] = orm.Dict({**base, **self.inputs.warm_start_parameters.get_dict()})
        inputs['metadata'] = {'call_link_label': f'train_{self.ctx.iteration}'}
        self.report(f'iteration {self.ctx.iteration}: training the committee on {len(self.ctx.dataset)} configurations')
        return ToContext(committee=self.submit(CommitteeWorkChain, **inputs))

    def explore(self):
        committee = self.ctx.committee
        self.ctx.entry['wall_time_s']['train'] = elapsed_seconds(committee)
        if not committee.is_finished_ok:
            return self.exit_codes.ERROR_TRAINING_FAILED.format(iteration=self.ctx.iteration)
        self.ctx.models = dict(committee.outputs.models.items())
        self.ctx.entry['train_metrics'] = committee.outputs.summary.get_dict()
        if 'test_set' in self.inputs:
            scores = score_committee(self.inputs.test_set, **self.ctx.models,
                                     metadata={'call_link_label': f'score_{self.ctx.iteration}'}).get_dict()
            self.ctx.entry.update({'test_force_rmse': scores['force_rmse'],
                                   'test_energy_rmse_per_atom': scores['energy_rmse_per_atom']})

        inputs = self.exposed_inputs(ExploreWorkChain, namespace='explore')
        inputs['structures'] = dict(self.ctx.starting_points)
        inputs['md']['models'] = self.ctx.models
        if 'explore_schedule' in self.inputs:
            schedule = self.inputs.explore_schedule.get_list()
            override = schedule[min(self.ctx.iteration, len(schedule) - 1)]
            inputs['conditions'] = orm.List([{**c, **override} for c in inputs['conditions'].get_list()])
        inputs['metadata'] = {'call_link_label': f'explore_{self.ctx.iteration}'}
        return ToContext(exploration=self.submit(ExploreWorkChain, **inputs))

    def select(self):
        exploration = self.ctx.exploration
        self.ctx.entry['wall_time_s']['explore'] = elapsed_seconds(exploration)
        if not exploration.is_finished_ok:
            return self.exit_codes.ERROR_EXPLORATION_FAILED.format(iteration=self.ctx.iteration)
        settings = {**SELECTION_DEFAULTS, **self.inputs.selection.get_dict()}
        # Never choose more than the label budget has left (should_continue stops the loop once it is spent).
        remaining = self.inputs.max_labels.value - self.ctx.labels_used
        settings['labels_per_iteration'] = max(1, min(settings['labels_per_iteration'], remaining))
        # σ counts as checked against labels once calibrated (or when calibration is switched off).
        sigma_checked = self.ctx.calibrated or not self.inputs.calibrate.value
        start = time.perf_counter()
        outputs = select_for_labelling(
            orm.Dict(settings), orm.Float(self.ctx.calibration), orm.Int(self.ctx.iteration), self.ctx.dataset,
            orm.Bool(sigma_checked),
            metadata={'call_link_label': f'select_{self.ctx.iteration}'},
            **dict(exploration.outputs.trajectories.items()),
        )
        self.ctx.entry['wall_time_s']['select'] = time.perf_counter() - start
        self.out(f'selection_records.iteration_{self.ctx.iteration}', outputs['record'])
        summary = outputs['summary'].get_dict()
        self.ctx.entry.update({
            'frames': summary['frames'],
            'accurate_fraction': summary['accurate_fraction'],
            'candidate_fraction': summary['candidate_fraction'],
            'failed_fraction': summary['failed_fraction'],
            'max_uncertainty': summary['max_uncertainty'],
            'calibration_factor': self.ctx.calibration,
        })
        # An iteration counts towards convergence only once σ has been checked against labels (calibrated).
        converged_now = (summary['accurate_fraction'] >= self.inputs.target_accurate_fraction.value
                         and summary['num_failed'] == 0
                         and sigma_checked)
        self.ctx.accurate_streak = self.ctx.accurate_streak + 1 if converged_now else 0
        self.report(
            f'iteration {self.ctx.iteration}: {summary["frames"]} frames explored, accurate '
            f'{summary["accurate_fraction"]:.2%}, candidate {summary["candidate_fraction"]:.2%}, failed '
            f'{summary["failed_fraction"]:.2%}; {summary["num_chosen"]} chosen'
        )
        self.ctx.selected = outputs.get('selected')
        self.ctx.predictions = outputs.get('predictions')
        if self.ctx.accurate_streak >= self.inputs.patience.value:
            self.ctx.stop = 'converged'
            self.ctx.selected = None  # converged: no more labels needed
        return None

    def has_frames_to_label(self):
        return self.ctx.selected is not None

    def label_selected(self):
        return ToContext(labelling=self._submit_labelling(self.ctx.selected, f'label_{self.ctx.iteration}'))

    def evaluate_and_merge(self):
        node = self.ctx.labelling
        self.ctx.entry['wall_time_s']['label'] = elapsed_seconds(node)
        self.ctx.entry['reference_time_s'] = sum(
            elapsed_seconds(child) for child in node.called_descendants if isinstance(child, orm.CalcJobNode)
        )
        if not node.is_finished_ok or 'labelled' not in node.outputs:
            return self.exit_codes.ERROR_LABELLING_FAILED.format(iteration=self.ctx.iteration)
        labelled = node.outputs.labelled
        evaluation = evaluate_predictions(labelled, self.ctx.selected, self.ctx.predictions,
                                          metadata={'call_link_label': f'evaluate_{self.ctx.iteration}'})
        metrics = evaluation['metrics'].get_dict()
        self.ctx.entry.update({
            'labels_new': len(labelled),
            'oos_force_rmse': metrics['force_rmse'],
            'oos_energy_rmse_per_atom': metrics['energy_rmse_per_atom'],
            'oos_coverage_1sigma': metrics['calibration']['coverage_1sigma'],
            'fitted_calibration_factor': evaluation['calibration_factor'].value,
        })
        if self.inputs.calibrate.value:
            self.ctx.calibration = evaluation['calibration_factor'].value
            self.ctx.calibrated = True
        self.ctx.labels_used += len(labelled)
        self.ctx.dataset = merge_training_sets(
            a_previous=self.ctx.dataset, b_new=labelled, metadata={'call_link_label': f'merge_{self.ctx.iteration}'}
        )
        self.report(
            f'iteration {self.ctx.iteration}: {len(labelled)} labels added (total {len(self.ctx.dataset)}); '
            f'out-of-sample force RMSE {metrics["force_rmse"]:.3f} eV/Å, calibration factor '
            f'{evaluation["calibration_factor"].value:.2f}'
        )
        return None

    def close_iteration(self):
        self.ctx.entry.setdefault('labels_new', 0)
        self.ctx.entry['labels_used'] = self.ctx.labels_used
        self.ctx.curve.append(self.ctx.entry)
        self.ctx.iteration += 1

    # ------------------------------------------------------------------ end
    def finalize(self):
        if self.ctx.models:
            for key, model in self.ctx.models.items():
                self.out(f'models.{key}', model)
        self.out('dataset', self.ctx.dataset)
        self.out('learning_curve', orm.Dict({
            'iterations': self.ctx.curve,
            'stop_reason': self.ctx.stop,
            'labels_used': self.ctx.labels_used,
            'final_calibration_factor': self.ctx.calibration,
        }).store())
        self.report(f'stopped: {self.ctx.stop} after {self.ctx.iteration} iterations, {self.ctx.labels_used} labels')
        if self.ctx.stop == 'max_iterations':
            return self.exit_codes.ERROR_MAX_ITERATIONS.format(iterations=self.ctx.iteration)
        if self.ctx.stop == 'label_budget':
            return self.exit_codes.ERROR_LABEL_BUDGET_SPENT.format(budget=self.inputs.max_labels.value)
        return None

    # ------------------------------------------------------------------ helpers
    def _submit_labelling(self, structures: ConfigurationSet, link_label: str):
        inputs = self.exposed_inputs(LabelWorkChain, namespace='label')
        inputs['structures'] = structures
        inputs['metadata'] = {'call_link_label': link_label}
        return self.submit(LabelWorkChain, **inputs)
