"""Run an active-learning campaign from its YAML file with `verdi run` (blocking, in this interpreter).

    verdi run examples/run_campaign.py [campaign.yaml]

Without an argument it runs the demo campaign (copper with a vacancy, EMT, tiny MACE committee); it needs the codes
made by `aiida-alml setup`. `aiida-alml launch campaign.yaml` submits the same thing to the daemon instead.
"""

import pathlib
import sys

from aiida.engine import run_get_node

import aiida_alml
from aiida_alml.campaign import load_campaign
from aiida_alml.progress import format_table, iteration_table
from aiida_alml.workflows.active_learning import ActiveLearningWorkChain

default = pathlib.Path(aiida_alml.__file__).parent / 'protocols' / 'demo' / 'copper_vacancy.yaml'
config = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else default
results, node = run_get_node(ActiveLearningWorkChain, **load_campaign(config))
print(format_table(iteration_table(node)))
print(f'{node.process_label}<{node.pk}> exit status {node.exit_status}: {node.exit_message or "converged"}')
print(f'final committee: {[model.pk for model in results["models"].values()]}, dataset: {results["dataset"].pk}')
