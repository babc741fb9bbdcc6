"""``alml.committee``: train a committee of MACE models that differ in seed (and optionally in a bootstrap resample)."""

from __future__ import annotations

import numpy as np
from aiida import orm
from aiida.engine import ToContext, WorkChain, calcfunction

from aiida_alml.calculations.mace_train import MaceTrainCalculation, is_isolated_atom
from aiida_alml.data import ConfigurationSet, MlipModel
from aiida_alml.workflows.base import base_inputs, define_relaunch_input, job_failure
from aiida_alml.workflows.mace_train_base import MaceTrainBaseWorkChain
from aiida_alml.workflows.protocols import ProtocolMixin
from aiida_alml.workflows.submission import EndsInterruptedFunctions, submit_once

__all__ = ('CommitteeWorkChain', 'bootstrap_resample', 'summarize_committee')


@calcfunction
def bootstrap_resample(training_set: ConfigurationSet, seed: orm.Int) -> ConfigurationSet:
    """Draw as many configurations as the set has, with replacement (a calcfunction, so provenance shows it).

    Isolated-atom configurations are always kept once: they give the E0s and must not be dropped by the draw.
    """
    configurations = training_set.configurations
    flags = [is_isolated_atom(meta, int(n)) for meta, n in zip(configurations.metadata, configurations.n_atoms)]
    isolated = [i for i, flag in enumerate(flags) if flag]
    others = np.array([i for i, flag in enumerate(flags) if not flag])
    rng = np.random.default_rng(seed.value)
    drawn = rng.choice(others, size=len(others), replace=True)
    return ConfigurationSet(configurations.select(isolated + sorted(drawn.tolist())))


@calcfunction
def summarize_committee(seeds: orm.List, **metrics: orm.Dict) -> orm.Dict:
    """The ``summary`` of a committee: per member (``member_<i>``) its seed (``seeds[i]``), the pk of the training
    calculation that made ``metrics.member_<i>`` and those final metrics."""
    seeds = seeds.get_list()
    return orm.Dict({
        key: {'seed': seeds[_member_index(key)], 'pk': metrics[key].creator.pk, 'metrics': metrics[key].get_dict()}
        for key in sorted(metrics, key=_member_index)
    })


def _member_index(key: str) -> int:
    return int(key.rsplit('_', 1)[1])


#: The largest committee: published ones have 2-8 members (the spread hardly changes beyond ~10), and each member is
#: a training job; a typo such as 100000 would submit that many at once.
MAX_MEMBERS = 64


def _validate_inputs(inputs, _):
    count = inputs['num_members'].value
    if count < 2:
        return f'num_members: a committee needs at least two members to estimate an uncertainty, got {count}'
    if count > MAX_MEMBERS:
        return f'num_members: at most {MAX_MEMBERS} members (each one is a training job), got {count}'
    parents = inputs.get('parent_models', {})
    if parents and sorted(parents) != [f'member_{i}' for i in range(count)]:
        return f'parent_models: needs exactly member_0 .. member_{count - 1}, got {sorted(parents)}'
    if 'seeds' in inputs:
        seeds = inputs['seeds'].get_list()
        if len(seeds) != count:
            return f'seeds: {len(seeds)} seeds given for num_members={count}'
        if len(set(seeds)) != len(seeds) or not all(isinstance(seed, int) for seed in seeds):
            return f'seeds: must be distinct integers, got {seeds}'
    return None


class CommitteeWorkChain(EndsInterruptedFunctions, ProtocolMixin, WorkChain):
    """Train ``num_members`` MACE models concurrently; member ``i`` gets ``seeds[i]`` (default ``i + 1``).

    The training inputs are those of ``alml.mace.train`` (namespace ``train``) except ``seed``. With ``bootstrap``
    each member trains on its own resample of the training set, drawn by :func:`bootstrap_resample`. Member ``i`` is
    an ``alml.mace.train.base`` called ``member_<i>``, which trains again when the scheduler cancelled or lost the job
    (at most ``max_relaunches`` times).
    """

    _protocol_name = 'committee'

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.expose_inputs(MaceTrainCalculation, namespace='train', exclude=('seed',))
        spec.input('num_members', valid_type=orm.Int, default=lambda: orm.Int(4), help='Committee size (>= 2).')
        spec.input('seeds', valid_type=orm.List, required=False, help='One distinct integer seed per member.')
        spec.input('bootstrap', valid_type=orm.Bool, default=lambda: orm.Bool(False),
                   help='Train each member on a bootstrap resample of the training set.')
        spec.input_namespace('parent_models', valid_type=MlipModel, dynamic=True, required=False,
                             help='Warm start member_i from parent_models.member_i (e.g. the previous committee).')
        define_relaunch_input(spec)
        spec.inputs.validator = _validate_inputs
        spec.outline(
            cls.train_members,
            cls.gather,
        )
        spec.output_namespace('models', valid_type=orm.Data, dynamic=True, help='member_0, member_1, ...')
        spec.output('summary', valid_type=orm.Dict, help='Seed and final metrics of every member.')
        spec.exit_code(410, 'ERROR_MEMBER_FAILED', message='Training of members {members} failed.')

    def _seeds(self) -> list[int]:
        if 'seeds' in self.inputs:
            return list(self.inputs.seeds.get_list())
        return list(range(1, self.inputs.num_members.value + 1))

    def train_members(self):
        futures = {}
        for index, seed in enumerate(self._seeds()):
            inputs = self.exposed_inputs(MaceTrainCalculation, namespace='train')
            inputs['seed'] = orm.Int(seed)
            if self.inputs.bootstrap.value:
                inputs['training_set'] = bootstrap_resample(inputs['training_set'], orm.Int(seed))
            parent = self.inputs.get('parent_models', {}).get(f'member_{index}')
            if parent is not None:
                inputs['parent_model'] = parent
            futures[f'member_{index}'] = submit_once(self, MaceTrainBaseWorkChain, **base_inputs(
                'train', inputs, self.inputs.max_relaunches, f'member_{index}'))
            self.report(f'member_{index}: training launched as <{futures[f"member_{index}"].pk}> with seed {seed}')
        return ToContext(**futures)

    def gather(self):
        failed, metrics = [], {}
        for index in range(len(self._seeds())):
            key = f'member_{index}'
            node = self.ctx[key]
            if not node.is_finished_ok:
                failure = job_failure(node)
                failed.append(f'{key} <{failure.pk}> (exit status {failure.exit_status})')
                continue
            metrics[key] = node.outputs.metrics
        if failed:
            return self.exit_codes.ERROR_MEMBER_FAILED.format(members=', '.join(failed))
        for key in metrics:
            self.out(f'models.{key}', self.ctx[key].outputs.model)
        self.out('summary', summarize_committee(orm.List(self._seeds()), metadata={'call_link_label': 'summary'},
                                                **metrics))
        return None

    # ------------------------------------------------------------------ protocols
    @classmethod
    def get_builder_from_protocol(cls, code, training_set, protocol=None, overrides=None, options=None, test_set=None):
        """A builder for a committee trained with ``code`` (``alml.mace.train``) on ``training_set`` (a labelled
        ConfigurationSet or ASE Atoms with results).

        ``options``: ``metadata.options`` of every training job; ``overrides``: inputs laid over the protocol's
        (plain dicts merged, a node replaces, None removes), e.g. ``{'train': {'parameters': {'r_max': 4.5}}}``.
        See docs/python.md.
        """
        from aiida_alml.workflows.protocols import committee_builder

        return committee_builder(cls, code, training_set, protocol=protocol, overrides=overrides, options=options,
                                 test_set=test_set)
