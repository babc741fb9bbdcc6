"""Benchmark: provenance queries (aiida_alml.provenance) on an active-learning graph of 10,000 labels.

Run: ``python benchmarks/provenance.py [--rounds 10] [--calcs 20] [--configs 50] [--campaigns 2]``. It builds, in a
throw-away SQLite profile, ``--campaigns`` campaigns shaped like alml.active_learning (the first is queried, the
others are unrelated nodes in the same tables). Each campaign has ``--rounds`` labelling rounds (``label_initial``,
``label_0``, ...), each of ``--calcs`` alml.ase-like CalcJobNodes labelling ``--configs`` configurations (with
``output_parameters`` and ``retrieved`` outputs), the merge calcfunctions of alml.label and of the loop, a committee
of ``--members`` MaceTrainCalculation-like jobs with MlipModel outputs per round, the MD job that explores with the
models and the selection calcfunction that reads the training set and the trajectory. Nodes and links are made
directly with the ORM: nothing runs.

Then it times each provenance function (median of ``--repeats`` runs, each starting from a pk so no node is cached)
and, for scale, the same ancestor query done with QueryBuilder's ``with_descendants`` on the labels of successive
iterations, each in a subprocess stopped after ``--cte-timeout`` seconds (its recursive CTE enumerates paths).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from _profile import throwaway_profile

ATOMS = 8  # atoms per configuration


def _configuration_set(count: int, metadata: list[dict], rng, labelled: bool = True):
    from aiida_alml.atoms.configurations import Configurations
    from aiida_alml.data import ConfigurationSet

    arrays = {
        'numbers': np.full(count * ATOMS, 29),
        'positions': rng.uniform(0, 5, (count * ATOMS, 3)),
        'n_atoms': np.full(count, ATOMS),
        'cells': np.tile(np.eye(3) * 5.0, (count, 1, 1)),
        'pbc': np.ones((count, 3), dtype=bool),
    }
    if labelled:
        arrays.update(energy=rng.normal(size=count), forces=rng.normal(size=(count * ATOMS, 3)))
    return ConfigurationSet(Configurations(metadata=metadata, **arrays))


class GraphBuilder:
    """Stores process nodes with their links, the way the engine would."""

    def __init__(self, seed: int = 0):
        from aiida import orm

        self.orm = orm
        self.rng = np.random.default_rng(seed)
        self.folder = tempfile.mkdtemp(prefix='alml-bench-models-')
        self.count = 0

    def process(self, cls, process_type, inputs, caller=None, call_label=None):
        from aiida.common.links import LinkType

        node = cls(process_type=process_type)
        node.set_process_label(process_type.split(':')[-1].split('.')[-1])
        workflow = issubclass(cls, self.orm.WorkflowNode)
        for label, data in inputs.items():
            if not data.is_stored:
                self._store(data)
            self._link(node, data, LinkType.INPUT_WORK if workflow else LinkType.INPUT_CALC, label)
        if caller is not None:
            self._link(node, caller, LinkType.CALL_WORK if workflow else LinkType.CALL_CALC, call_label)
        node.set_process_state('finished')
        node.set_exit_status(0)
        return self._store(node)

    def create(self, calc, label, data):
        from aiida.common.links import LinkType

        self._link(data, calc, LinkType.CREATE, label)
        return self._store(data)

    def give_back(self, workflow, label, data):
        from aiida.common.links import LinkType

        # Both are stored: the link goes straight to the backend, as the engine's does for a workflow output.
        data.backend_entity.add_incoming(workflow.backend_entity, LinkType.RETURN, label)

    @staticmethod
    def _link(target, source, link_type, label):
        """Queue the link for `target.store()` without `add_incoming`'s validation queries (the engine validated
        these link shapes when it made the real graph; here they would cost more than the whole build)."""
        from aiida.orm.utils.links import LinkTriple

        target.base.links.incoming_cache.append(LinkTriple(source, link_type, label))

    def _store(self, node):
        self.count += 1
        return node.store()

    def model(self, name):
        from aiida_alml.data import MlipModel

        import io

        import torch

        from aiida_alml.engines.model_format import save_model

        if not hasattr(self, '_model_bytes'):  # one small valid model file; each node gets its own copy
            sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'tests'))
            from helpers.mace import random_mace

            buffer = io.BytesIO()
            save_model(random_mace(max_L=0, channels=4, atomic_numbers=(29,), r_max=5.0).to(torch.float64), buffer)
            self._model_bytes = buffer.getvalue()
        path = os.path.join(self.folder, f'{name}.alml')
        with open(path, 'wb') as handle:
            handle.write(self._model_bytes)
        return MlipModel(path, seed=1)

    def campaign(self, rounds: int, calcs: int, configs: int, members: int, code) -> dict:
        orm, rng = self.orm, self.rng
        loop = self.process(orm.WorkChainNode, 'aiida.workflows:alml.active_learning', {})
        out = {'loop': loop, 'calcs': [], 'labels': []}
        dataset, models = None, []
        structures = _configuration_set(calcs * configs, [{'iteration': 0, 'perturbed_from': i}
                                                          for i in range(calcs * configs)], rng, labelled=False)
        for index in range(rounds):
            iteration = index - 1  # round 0 labels the initial structures
            link = 'label_initial' if index == 0 else f'label_{iteration}'
            if index:  # explore with the last committee, then select from the trajectory
                md = self.process(orm.CalcJobNode, 'aiida.calculations:alml.md',
                                  {f'models__{k}': m for k, m in enumerate(models)})
                trajectory = self.create(md, 'trajectory', orm.ArrayData())
                select = self.process(orm.CalcFunctionNode,
                                      'aiida_alml.workflows.functions.selection.select_for_labelling',
                                      {'training_set': dataset, 't0': trajectory, 'settings': orm.Dict({'seed': 1})},
                                      loop, f'select_{iteration}')
                structures = self.create(select, 'selected', _configuration_set(calcs * configs, [
                    {'iteration': iteration, 'selection_index': k, 'trajectory': trajectory.uuid, 'frame': k,
                     'uncertainty': 0.3} for k in range(calcs * configs)], rng, labelled=False))
                self.create(select, 'record', orm.ArrayData())
            label = self.process(orm.WorkChainNode, 'aiida.workflows:alml.label', {'structures': structures}, loop,
                                 link)
            calculator = orm.Dict({'name': 'emt', 'kwargs': {'round': index}})
            properties = orm.List(['energy', 'forces'])
            parts, metadata = [], []
            for k in range(calcs):
                calc = self.process(orm.CalcJobNode, 'aiida.calculations:alml.ase',
                                    {'structures': structures, 'calculator': calculator, 'properties': properties,
                                     'code': code}, label, f'ase_{k}')
                meta = [{'iteration': max(iteration, 0), 'source_index': k * configs + j, 'labelled_by': calc.uuid}
                        for j in range(configs)]
                parts.append(self.create(calc, 'labelled', _configuration_set(configs, meta, rng)))
                self.create(calc, 'output_parameters', orm.Dict({'num_succeeded': configs}))
                self.create(calc, 'retrieved', orm.FolderData())
                metadata += [{**m, 'source_calc_uuid': calc.uuid, 'input_index': m['source_index']} for m in meta]
                out['calcs'].append(calc)
            merge = self.process(orm.CalcFunctionNode, 'aiida_alml.workflows.functions.labels.merge_labelled',
                                 {'structures': structures, **{f'set_{k}': p for k, p in enumerate(parts)}}, label,
                                 'merge')
            labelled = self.create(merge, 'result', _configuration_set(len(metadata), metadata, rng))
            self.give_back(label, 'labelled', labelled)
            out['labels'].append(labelled)
            if dataset is None:
                dataset = labelled
            else:
                merge = self.process(orm.CalcFunctionNode,
                                     'aiida_alml.workflows.functions.datasets.merge_training_sets',
                                     {'a_previous': dataset, 'b_new': labelled}, loop, f'merge_{iteration}')
                total = dataset.configurations.metadata + labelled.configurations.metadata
                dataset = self.create(merge, 'result', _configuration_set(len(total), list(total), rng))
            committee = self.process(orm.WorkChainNode, 'aiida.workflows:alml.committee', {}, loop,
                                     f'train_{iteration + 1}')
            models = []
            for k in range(members):
                train = self.process(orm.CalcJobNode, 'aiida.calculations:alml.mace.train',
                                     {'training_set': dataset, 'parameters': orm.Dict({'max_num_epochs': 100}),
                                      'seed': orm.Int(k + 1)}, committee, f'member_{k}')
                model = self.create(train, 'model', self.model(f'{train.pk}'))
                self.create(train, 'metrics', orm.Dict({'rmse': 0.1}))
                self.give_back(committee, f'models__member_{k}', model)
                models.append(model)
        for k, model in enumerate(models):
            self.give_back(loop, f'models__member_{k}', model)
        self.give_back(loop, 'dataset', dataset)
        out.update(dataset=dataset, models=models)
        return out


def _median_time(function, repeats: int) -> tuple[float, object]:
    times, value = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        value = function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), value


_QB_ANCESTORS = """
import sys, time
from aiida import load_profile, orm
load_profile('bench')
orm.QueryBuilder().append(orm.Node, project='id').first()  # open the storage before the clock starts
start = time.perf_counter()
query = orm.QueryBuilder().append(orm.Node, filters={'id': int(sys.argv[1])}, tag='set')
query.append(orm.CalcJobNode, with_descendants='set', filters={'process_type': 'aiida.calculations:alml.ase'},
             project='id')
found = len(set(query.all(flat=True)))
print(found, time.perf_counter() - start)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--rounds', type=int, default=10, help='labelling rounds (initial + iterations)')
    parser.add_argument('--calcs', type=int, default=20, help='labelling jobs per round')
    parser.add_argument('--configs', type=int, default=50, help='configurations per labelling job')
    parser.add_argument('--members', type=int, default=4, help='committee members trained per round')
    parser.add_argument('--campaigns', type=int, default=2, help='campaigns built (only the first is queried)')
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--cte-timeout', type=float, default=20.0,
                        help='seconds allowed to each QueryBuilder with_descendants comparison (0: skip)')
    args = parser.parse_args()

    with throwaway_profile() as folder:
        from aiida import orm

        from aiida_alml import provenance

        computer = orm.Computer(label='bench', hostname='localhost', transport_type='core.local',
                                scheduler_type='core.direct', workdir=folder).store()
        code = orm.InstalledCode(label='alml-label', computer=computer, filepath_executable='/bin/true').store()
        # The cache hash of a node plays no part in provenance queries but costs a query per process node.
        from aiida.orm.nodes.caching import NodeCaching

        rehash, NodeCaching.rehash = NodeCaching.rehash, lambda self: None
        builder = GraphBuilder()
        start = time.perf_counter()
        campaigns = [builder.campaign(args.rounds, args.calcs, args.configs, args.members, code)
                     for _ in range(args.campaigns)]
        build = time.perf_counter() - start
        NodeCaching.rehash = rehash
        main_campaign = campaigns[0]
        labels = args.rounds * args.calcs * args.configs
        print(f'{args.campaigns} campaigns of {args.rounds} rounds x {args.calcs} labelling jobs x {args.configs} '
              f'configurations ({labels:,} labels each); {builder.count:,} nodes stored in {build:.1f} s\n')

        loop, dataset = main_campaign['loop'].pk, main_campaign['dataset'].pk
        member_0 = main_campaign['models'][0].pk
        middle = args.rounds // 2 - 1  # the iteration in the middle of the loop
        middle_labels = main_campaign['labels'][middle + 1].pk
        first_calc = main_campaign['calcs'][0].pk
        cases = [
            ('labelling_calculations(final dataset)', lambda: provenance.labelling_calculations(dataset),
             lambda r: f'{len(r)} jobs, {sum(e["num_configurations"] for e in r):,} configurations'),
            (f'labelling_calculations(labels of iteration {middle})',
             lambda: provenance.labelling_calculations(middle_labels),
             lambda r: f'{len(r)} jobs, {sum(e["num_configurations"] for e in r):,} configurations'),
            ('model_lineage(final member_0)', lambda: provenance.model_lineage(member_0),
             lambda r: f'{len(r["labelling_calculations"])} jobs, training set of '
                       f'{r["training_set"]["num_configurations"]:,}'),
            (f'labels_of_iteration(run, {middle})', lambda: provenance.labels_of_iteration(loop, middle),
             lambda r: f'ConfigurationSet of {len(r):,}'),
            ('labels_of_iteration(run, "initial")', lambda: provenance.labels_of_iteration(loop, 'initial'),
             lambda r: f'ConfigurationSet of {len(r):,}'),
            ('models_fed_by(first labelling job)', lambda: provenance.models_fed_by(first_calc),
             lambda r: f'{len(r)} models'),
            (f'models_fed_by(labels of iteration {middle})', lambda: provenance.models_fed_by(middle_labels),
             lambda r: f'{len(r)} models'),
        ]
        print(f'| query | median of {args.repeats} (s) | answer |\n|---|---|---|')
        for name, function, describe in cases:
            seconds, value = _median_time(function, args.repeats)
            print(f'| {name} | {seconds:.3f} | {describe(value)} |')
        # The answers must be right, not only fast.
        expected_models = (args.rounds * args.members)
        assert len(provenance.models_fed_by(first_calc)) == expected_models
        assert sum(e['num_configurations'] for e in provenance.labelling_calculations(dataset)) == labels

        if args.cte_timeout > 0:
            print('\nFor scale: alml.ase ancestors of the labels of a round with QueryBuilder `with_descendants` '
                  '(a recursive CTE over paths), one subprocess each:\n')
            print('| labels of round | seconds | jobs found |\n|---|---|---|')
            for round_index, labelled in enumerate(main_campaign['labels']):
                try:
                    result = subprocess.run([sys.executable, '-c', _QB_ANCESTORS, str(labelled.pk)],
                                            capture_output=True, text=True, timeout=args.cte_timeout, check=True)
                except subprocess.TimeoutExpired:
                    print(f'| {round_index} | > {args.cte_timeout:.0f} (stopped) | |')
                    break
                found, seconds = result.stdout.split()
                print(f'| {round_index} | {float(seconds):.3f} | {found} |')


if __name__ == '__main__':
    main()
