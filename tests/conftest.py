"""Shared fixtures.

The whole suite runs on an SQLite profile with the ZeroMQ broker (so daemon tests can submit). Setting
``ALML_TEST_STORAGE=core.psql_dos`` runs it on a throw-away PostgreSQL cluster made by pgtest instead; the test
script does that for the tests marked ``storage``.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import stat
import tempfile

import numpy as np
import pytest

pytest_plugins = ['aiida.tools.pytest_fixtures']

STORAGE_BACKEND = os.environ.get('ALML_TEST_STORAGE', 'core.sqlite_dos')
# pgtest refuses to start PostgreSQL as root; as root we let it drive pg_ctl through this unprivileged user.
PG_USER = os.environ.get('ALML_PG_USER', 'postgres')


class _PostgresCluster:
    """pgtest-made PostgreSQL cluster that also works when the tests run as root."""

    def __init__(self):
        self.cluster = None
        self._base = None

    def _create(self):
        from pgtest.pgtest import PGTest, which

        if os.geteuid() != 0:
            self.cluster = PGTest()
            return
        import pwd

        try:
            user = pwd.getpwnam(PG_USER)
        except KeyError:
            pytest.exit(f'PostgreSQL tests run as root need an unprivileged user {PG_USER!r} (ALML_PG_USER)', 2)
        self._base = tempfile.mkdtemp(prefix='alml-pgtest-')
        for sub in ('', 'data', 'tmp'):
            os.makedirs(os.path.join(self._base, sub), exist_ok=True)
            os.chown(os.path.join(self._base, sub), user.pw_uid, user.pw_gid)
        wrapper = pathlib.Path(self._base) / 'pg_ctl'
        wrapper.write_text(f'#!/bin/sh\nexec runuser -u {PG_USER} -- "{which("pg_ctl")}" "$@"\n')
        wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
        os.chmod(self._base, 0o755)
        self.cluster = PGTest(pg_ctl=str(wrapper), base_dir=self._base)

    def create_database(self, **kwargs):
        from aiida.tools.pytest_fixtures.storage import PostgresCluster

        if self.cluster is None:
            self._create()
        return PostgresCluster.create_database(self, **kwargs)

    def close(self):
        if self.cluster is not None:
            self.cluster.close()
        if self._base:
            shutil.rmtree(self._base, ignore_errors=True)


@pytest.fixture(scope='session')
def postgres_cluster():
    """The one cluster of this session (also behind ``aiida_profile`` when on PostgreSQL)."""
    return _CLUSTER


@pytest.fixture(scope='session', autouse=True)
def aiida_profile(aiida_config, aiida_profile_factory, tmp_path_factory):
    """Test profile with the ZeroMQ broker, on SQLite or (``ALML_TEST_STORAGE``) PostgreSQL."""
    storage_config = None
    if STORAGE_BACKEND == 'core.psql_dos':
        storage_config = _psql_config(tmp_path_factory)
    elif STORAGE_BACKEND != 'core.sqlite_dos':
        raise pytest.UsageError(f'ALML_TEST_STORAGE must be core.sqlite_dos or core.psql_dos, not {STORAGE_BACKEND}')
    with aiida_profile_factory(
        aiida_config, storage_backend=STORAGE_BACKEND, storage_config=storage_config, broker_backend='core.zeromq'
    ) as profile:
        # A loaded machine (MACE training beside the daemon) can be slow to answer; the default 2 s is too short.
        aiida_config.set_option('daemon.timeout', 30, scope=profile.name)
        yield profile


_CLUSTER = _PostgresCluster()


def _psql_config(tmp_path_factory):
    config = _CLUSTER.create_database()
    config['repository_uri'] = tmp_path_factory.mktemp('repository').as_uri()
    return config


def pytest_sessionfinish(session, exitstatus):
    _CLUSTER.close()


@pytest.fixture(autouse=True)
def _venv_on_path(monkeypatch):
    """Daemon workers and codes find ``verdi`` and our console scripts next to the running interpreter."""
    import sys

    bindir = str(pathlib.Path(sys.executable).parent)
    monkeypatch.setenv('PATH', bindir + os.pathsep + os.environ.get('PATH', ''))


@pytest.fixture
def cu_images():
    """Rattled and strained copper cells of 4 and 8 atoms, unlabelled."""
    from ase.build import bulk

    rng = np.random.default_rng(7)
    images = []
    for index in range(6):
        atoms = bulk('Cu', 'fcc', a=3.6, cubic=True)
        if index % 2:
            atoms = atoms.repeat((2, 1, 1))
        strain = np.eye(3) + rng.uniform(-0.03, 0.03, (3, 3))
        atoms.set_cell(atoms.cell.array @ strain, scale_atoms=True)
        atoms.positions += rng.normal(0.0, 0.05, atoms.positions.shape)
        atoms.info['tag'] = f'cu-{index}'
        images.append(atoms)
    return images


@pytest.fixture
def emt_labelled(cu_images):
    """The same cells labelled in-process with EMT (energy, forces, stress)."""
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    labelled = []
    for atoms in cu_images:
        atoms = atoms.copy()
        atoms.calc = EMT()
        results = {
            'energy': atoms.get_potential_energy(),
            'forces': atoms.get_forces(),
            'stress': atoms.get_stress(),
        }
        atoms.calc = SinglePointCalculator(atoms, **results)
        labelled.append(atoms)
    return labelled


@pytest.fixture
def label_code(aiida_code_installed):
    """``alml-label`` of this environment as an InstalledCode on localhost.

    Its label is its own: ``aiida_code_installed`` returns any existing code of the same label, and other tests
    create stand-in codes called ``alml-label`` (pointing at /bin/true).
    """
    import sys

    return aiida_code_installed(
        label='alml-label-venv',
        default_calc_job_plugin='alml.ase',
        filepath_executable=str(pathlib.Path(sys.executable).parent / 'alml-label'),
    )


# ---------------------------------------------------------------------- MACE training and MD (calculations/,
# engines/, workflows/). Session-scoped so that the tiny models are trained once.
TINY_MACE = {
    'model': 'MACE', 'num_channels': 8, 'max_L': 0, 'r_max': 4.0, 'num_interactions': 2, 'correlation': 2,
    'batch_size': 5, 'valid_batch_size': 5, 'valid_fraction': 0.2, 'max_num_epochs': 3, 'device': 'cpu',
    'default_dtype': 'float64',
}  # fmt: skip


@pytest.fixture(scope='session')
def alml_localhost(aiida_profile, tmp_path_factory):
    """A local computer that lives for the whole session (aiida's ``aiida_localhost`` is per test)."""
    from aiida import orm

    computer = orm.Computer(
        label='alml-localhost',
        hostname='localhost',
        transport_type='core.local',
        scheduler_type='core.direct',
        workdir=str(tmp_path_factory.mktemp('alml-scratch')),
    ).store()
    computer.configure(safe_interval=0.0)
    computer.set_minimum_job_poll_interval(0.0)
    computer.set_default_mpiprocs_per_machine(1)
    return computer


def _venv_code(computer, label, executable, plugin):
    import sys

    from aiida import orm

    return orm.InstalledCode(
        label=label,
        computer=computer,
        filepath_executable=str(pathlib.Path(sys.executable).parent / executable),
        default_calc_job_plugin=plugin,
    ).store()


@pytest.fixture(scope='session')
def mace_train_code(alml_localhost):
    """The venv's ``alml-train`` (``mace_run_train`` + our model format) as an InstalledCode."""
    return _venv_code(alml_localhost, 'alml-train', 'alml-train', 'alml.mace.train')


@pytest.fixture(scope='session')
def md_code(alml_localhost):
    """The venv's ``alml-md`` console script as an InstalledCode."""
    return _venv_code(alml_localhost, 'alml-md', 'alml-md', 'alml.md')


@pytest.fixture(scope='session')
def cu_training_set(aiida_profile):
    """20 EMT-labelled Cu cells (4 and 8 atoms) plus one isolated Cu atom tagged as MACE's IsolatedAtom."""
    from ase import Atoms
    from ase.calculators.emt import EMT
    from helpers.mace import make_cu_dataset

    from aiida_alml.data import ConfigurationSet

    images = make_cu_dataset(20, seed=0)
    atom = Atoms('Cu', positions=[[0.0, 0.0, 0.0]], cell=[12.0, 12.0, 12.0], pbc=False)
    atom.calc = EMT()
    atom.info['REF_energy'] = atom.get_potential_energy()
    atom.arrays['REF_forces'] = atom.get_forces()
    atom.calc = None
    atom.info['config_type'] = 'IsolatedAtom'
    return ConfigurationSet.from_ase(images + [atom]).store()


def mace_train_options():
    """Each mace_run_train single-threaded so that two members train side by side on two cores."""
    return {'resources': {'num_machines': 1}, 'environment_variables': {'OMP_NUM_THREADS': '1'}, 'withmpi': False}


@pytest.fixture(scope='session')
def trained_committee(mace_train_code, cu_training_set):
    """Two tiny members (seeds 1, 2; 3 epochs) trained by ``alml.committee``: (workchain node, [MlipModel, ...])."""
    from aiida import engine, orm

    from aiida_alml.workflows.committee import CommitteeWorkChain

    _, node = engine.run_get_node(
        CommitteeWorkChain,
        num_members=orm.Int(2),
        train={
            'code': mace_train_code,
            'training_set': cu_training_set,
            'parameters': orm.Dict(TINY_MACE),
            'metadata': {'options': mace_train_options()},
        },
    )
    assert node.is_finished_ok, node.exit_message
    models = [node.outputs.models[f'member_{i}'] for i in range(2)]
    return node, models


@pytest.fixture
def tiny_mace_inputs(mace_train_code, cu_training_set):
    """Inputs of ``alml.mace.train`` for a tiny model; ``parameters`` entries given as keywords override TINY_MACE."""
    from aiida import orm

    def factory(**parameters):
        return {
            'code': mace_train_code,
            'training_set': cu_training_set,
            'parameters': orm.Dict({**TINY_MACE, **parameters}),
            'metadata': {'options': mace_train_options()},
        }

    return factory
