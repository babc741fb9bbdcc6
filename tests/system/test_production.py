"""The production profile as a user makes it: ``aiida-alml setup --production`` (PostgreSQL + RabbitMQ, started by
scripts/services.sh), its own AIIDA_PATH and daemon, and a small active-learning campaign through them.

The campaign test needs both services and runs only with ``ALML_TEST_PRODUCTION=1`` (scripts/test.sh, as root, starts
the services and sets it). Connection settings come from the ALML_DB_* / ALML_BROKER_* variables, as for
scripts/services.sh and the setup command.
"""

import collections
import json
import os
import pathlib
import socket
import subprocess
import sys
import textwrap
import uuid

import pytest

BIN = pathlib.Path(sys.executable).parent
PRODUCTION = os.environ.get('ALML_TEST_PRODUCTION') == '1'
needs_services = pytest.mark.skipif(
    not PRODUCTION,
    reason='needs PostgreSQL and RabbitMQ: run scripts/services.sh as root, then set ALML_TEST_PRODUCTION=1 '
           '(scripts/test.sh does both when run as root)',
)
DB = {
    'host': os.environ.get('ALML_DB_HOST', 'localhost'),
    'port': int(os.environ.get('ALML_DB_PORT', '5432')),
    'user': os.environ.get('ALML_DB_USER', 'alml'),
    'password': os.environ.get('ALML_DB_PASSWORD', 'alml'),
}


def _run(args, aiida_path, timeout=240, check=True):
    env = {**os.environ, 'AIIDA_PATH': str(aiida_path), 'PATH': f'{BIN}{os.pathsep}{os.environ["PATH"]}'}
    result = subprocess.run([str(arg) for arg in args], env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, f'{args} failed:\n{result.stdout}\n{result.stderr}'
    return result


def _free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        return probe.getsockname()[1]


def test_setup_names_the_service_that_is_not_running(tmp_path):
    # Runs everywhere: no server is needed to show that a missing one is named with its address and the script.
    port = _free_port()
    refused = _run([BIN / 'aiida-alml', 'setup', '--production', '--db-host', '127.0.0.1', '--db-port', port],
                   tmp_path, check=False)
    assert refused.returncode != 0
    assert f'PostgreSQL is not reachable at 127.0.0.1:{port}' in refused.stderr
    assert 'scripts/services.sh' in refused.stderr and 'Traceback' not in refused.stderr
    assert 'alml-prod' not in _run([BIN / 'verdi', 'profile', 'list'], tmp_path, check=False).stdout
    # The embedded default needs no services, and says so when given their options.
    stray = _run([BIN / 'aiida-alml', 'setup', '--db-port', '5432'], tmp_path, check=False)
    assert stray.returncode == 2 and '--db-port: only with --production' in stray.stderr


@needs_services
@pytest.mark.production
def test_setup_names_an_unreachable_broker(tmp_path):
    port, database = _free_port(), f'alml_test_{uuid.uuid4().hex[:10]}'
    refused = _run([BIN / 'aiida-alml', 'setup', '--production', '--broker-port', port, '--db-name', database],
                   tmp_path, check=False)
    assert refused.returncode != 0, refused.stdout
    assert f"database '{database}' does not exist" in refused.stdout  # PostgreSQL is checked first, and it is up
    assert f'RabbitMQ is not reachable at 127.0.0.1:{port}' in refused.stderr
    assert 'scripts/services.sh' in refused.stderr
    assert _drop_database(database) == 'absent'  # refused before anything was made
    wrong = _run([BIN / 'aiida-alml', 'setup', '--production', '--db-password', 'not-the-password'], tmp_path,
                 check=False)
    assert wrong.returncode != 0 and 'password authentication failed' in wrong.stderr, wrong.stderr


def _write_campaign(folder: pathlib.Path) -> pathlib.Path:
    """A campaign small enough for two shared cores, yet every stage of the loop: EMT labels, tiny MACE committee
    (2 members, 3 epochs), committee MD, selection, labelling, calibration, merge, retraining, convergence."""
    from ase.build import bulk
    from ase.io import write

    cubic = bulk('Cu', 'fcc', a=3.61, cubic=True)
    vacancy = cubic.repeat((2, 1, 1))
    del vacancy[3]
    write(folder / 'initial.xyz', [cubic, cubic.repeat((2, 1, 1)), vacancy], format='extxyz')
    write(folder / 'explore.xyz', [vacancy], format='extxyz')
    options = "{resources: {num_machines: 1}, withmpi: false, environment_variables: {OMP_NUM_THREADS: '1'}}"
    # trust_lo far above the tiny committee's errors: once σ is calibrated (after iteration 0's labels) every frame
    # is accurate, so the campaign converges in iteration 1 (patience 1) and finishes with exit status 0.
    text = f"""
        initial_structures: initial.xyz
        initial_perturbation: {{count: 9, rattle_std: 0.05, max_strain: 0.02, seed: 1}}
        exploration_structures: explore.xyz
        label:
          labeller: ase
          ase: {{code: alml-label@localhost, calculator: {{name: emt}}, properties: [energy, forces]}}
        train:
          num_members: 2
          train:
            code: mace-train@localhost
            e0s: average
            parameters: {{model: MACE, num_channels: 8, max_L: 0, r_max: 4.0, num_interactions: 2, correlation: 2,
                          batch_size: 4, valid_batch_size: 4, valid_fraction: 0.2, max_num_epochs: 3, device: cpu,
                          default_dtype: float64}}
            metadata: {{options: {options}}}
        explore:
          md: {{code: alml-md@localhost, metadata: {{options: {options}}}}}
          conditions:
            - {{ensemble: nvt_langevin, temperature: 300, steps: 40, timestep: 2.0, sample_interval: 5, seed: 1}}
        selection: {{trust_lo: 5.0, trust_hi: 15.0, labels_per_iteration: 3}}
        target_accurate_fraction: 0.9
        patience: 1
        max_iterations: 3
        max_labels: 40
        final_stage_two_steps: 0
        """
    path = folder / 'campaign.yaml'
    path.write_text(textwrap.dedent(text))
    return path


INSPECT = """
import json, sys
from aiida import load_profile, orm
profile = load_profile(sys.argv[1])
node = orm.load_node(int(sys.argv[2]))
curve = node.outputs.learning_curve.get_dict()
calcs = [(n.process_label, n.exit_status) for n in node.called_descendants if isinstance(n, orm.CalcJobNode)]
print(json.dumps({
    'storage': profile.storage_backend, 'broker': profile.process_control_backend,
    'exit_status': node.exit_status, 'stop_reason': curve['stop_reason'], 'labels_used': curve['labels_used'],
    'iterations': [{key: row.get(key) for key in ('labels_new', 'converged_now', 'sigma_checked')}
                   for row in curve['iterations']],
    'dataset': len(node.outputs.dataset), 'models': sorted(node.outputs.models.keys()),
    'models_trained_on_dataset': curve['models_trained_on_dataset'],
    'calcjobs': [[label, status] for label, status in calcs],
    'labelled_energies': bool(node.outputs.dataset.configurations.energy is not None),
}))
"""


def _drop_database(name: str) -> str:
    """Drop the test's database as its owner (``verdi profile delete --delete-data`` wants a PostgreSQL superuser).

    Returns 'dropped', or 'absent' when there was none.
    """
    import psycopg
    from psycopg import sql

    with psycopg.connect(dbname='postgres', autocommit=True, connect_timeout=10, **DB) as connection:
        def exists():
            return connection.execute('SELECT count(*) FROM pg_database WHERE datname = %s', (name,)).fetchone()[0]

        if not exists():
            return 'absent'
        connection.execute(sql.SQL('DROP DATABASE {}').format(sql.Identifier(name)))
        assert not exists(), f'database {name} is still there'
        return 'dropped'


@needs_services
@pytest.mark.production
@pytest.mark.daemon
@pytest.mark.slow
def test_campaign_runs_on_postgresql_and_rabbitmq(tmp_path):
    database = f'alml_test_{uuid.uuid4().hex[:10]}'  # unique: runs never see each other's data
    profile = 'prodtest'
    setup = [BIN / 'aiida-alml', 'setup', '--production', '--profile-name', profile, '--db-name', database]
    try:
        first = _run(setup, tmp_path)
        assert f"created database '{database}'" in first.stdout and f"Created profile '{profile}'" in first.stdout
        assert 'Created code mace-train@localhost' in first.stdout
        second = _run(setup, tmp_path)
        assert f"Profile '{profile}' exists: reusing it." in second.stdout and 'Created' not in second.stdout
        shown = _run([BIN / 'verdi', '-p', profile, 'profile', 'show'], tmp_path).stdout
        assert 'core.psql_dos' in shown and 'core.rabbitmq' in shown and f'database_name: {database}' in shown
        # A loaded machine (MACE training beside the daemon) can be slow to answer; the default 2 s is too short.
        _run([BIN / 'verdi', '-p', profile, 'config', 'set', 'daemon.timeout', '30'], tmp_path)
        _run([BIN / 'verdi', '-p', profile, 'daemon', 'start', '1'], tmp_path)

        campaign = _write_campaign(tmp_path)
        launched = _run([BIN / 'aiida-alml', 'launch', '-p', profile, campaign, '--wait'], tmp_path, timeout=1800)
        assert 'Submitted ActiveLearningWorkChain<' in launched.stdout and 'stopped: converged' in launched.stdout
        pk = launched.stdout.split('ActiveLearningWorkChain<', 1)[1].split('>', 1)[0]

        facts = json.loads(_run([sys.executable, '-c', INSPECT, profile, pk], tmp_path).stdout)
        assert (facts['storage'], facts['broker']) == ('core.psql_dos', 'core.rabbitmq')
        assert facts['exit_status'] == 0 and facts['stop_reason'] == 'converged', facts
        # iteration 0: σ not yet calibrated, 3 frames labelled to calibrate it; iteration 1: converged
        assert [row['labels_new'] for row in facts['iterations']] == [3, 0]
        assert [row['converged_now'] for row in facts['iterations']] == [False, True]
        assert facts['labels_used'] == 9 + 3 and facts['dataset'] == 12 and facts['labelled_energies']
        assert facts['models'] == ['member_0', 'member_1'] and facts['models_trained_on_dataset']
        # initial + iteration 0 labelling; 2 members x 2 trainings; one MD run per iteration; all finished with 0
        counts = collections.Counter(label for label, _ in facts['calcjobs'])
        assert counts == {'AseLabelCalculation': 2, 'MaceTrainCalculation': 4, 'MdCalculation': 2}, counts
        assert all(status == 0 for _, status in facts['calcjobs']), facts['calcjobs']

        # A second profile on the same database would mix two file repositories: refused, naming the database.
        other = _run([*setup[:-3], 'other', '--db-name', database], tmp_path, check=False)
        assert other.returncode != 0 and f"database '{database}' on" in other.stderr
        assert 'already holds the data of an AiiDA profile' in other.stderr
    finally:
        _run([BIN / 'verdi', '-p', profile, 'daemon', 'stop'], tmp_path, check=False)
        _run([BIN / 'verdi', 'profile', 'delete', '--force', '--keep-data', profile], tmp_path, check=False)
        dropped = _drop_database(database)
    assert dropped == 'dropped'
