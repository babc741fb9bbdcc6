"""``aiida-alml setup``: an embedded, service-free AiiDA profile with the computer and codes this package needs."""

from __future__ import annotations

import pathlib
import shutil
import sys

import click

#: Codes created on localhost: label -> (executable, default CalcJob plugin).
LOCAL_CODES = {
    'alml-label': ('alml-label', 'alml.ase'),
    'alml-md': ('alml-md', 'alml.md'),
    'mace-train': ('mace_run_train', 'alml.mace.train'),
}


def _executable(name: str) -> pathlib.Path:
    """Console scripts of this environment, found next to the running interpreter (then on PATH)."""
    beside = pathlib.Path(sys.executable).parent / name
    if beside.exists():
        return beside
    found = shutil.which(name)
    if found is None:
        raise click.ClickException(f'executable {name!r} not found next to {sys.executable} nor on PATH')
    return pathlib.Path(found)


def _ensure_profile(config, name: str, email: str):
    from aiida.manage.configuration import create_profile, load_profile
    from aiida.plugins import BrokerFactory

    if name in config.profile_names:
        click.echo(f'Profile {name!r} exists: reusing it.')
    else:
        storage = pathlib.Path(config.dirpath) / 'storage' / name
        create_profile(
            config,
            name=name,
            email=email,
            storage_backend='core.sqlite_dos',
            storage_config={'filepath': str(storage)},
            broker_backend='core.zeromq',
            broker_config=BrokerFactory('core.zeromq').get_default_config(),
        )
        config.set_option('runner.poll.interval', 1, scope=name)
        click.echo(f'Created profile {name!r}: SQLite storage in {storage}, ZeroMQ broker (no services needed).')
    config.set_default_profile(name, overwrite=True)
    config.store()
    return load_profile(name, allow_switch=True)


def _ensure_localhost(config, profile_name: str):
    from aiida import orm
    from aiida.common.exceptions import NotExistent

    try:
        computer = orm.load_computer('localhost')
        click.echo('Computer localhost exists: reusing it.')
    except NotExistent:
        workdir = pathlib.Path(config.dirpath) / 'scratch' / profile_name
        computer = orm.Computer(
            label='localhost',
            hostname='localhost',
            description='This machine, set up by aiida-alml setup',
            transport_type='core.local',
            scheduler_type='core.direct',
            workdir=str(workdir),
        ).store()
        click.echo(f'Created computer localhost (working directories under {workdir}).')
    if not computer.is_configured:
        computer.configure(safe_interval=0)
    computer.set_minimum_job_poll_interval(1)
    computer.set_default_mpiprocs_per_machine(1)
    return computer


def _ensure_code(computer, label: str, executable: str, plugin: str):
    from aiida import orm
    from aiida.common.exceptions import MultipleObjectsError, NotExistent

    path = _executable(executable)
    try:
        code = orm.load_code(f'{label}@{computer.label}')
    except NotExistent:
        code = None
    except MultipleObjectsError:
        raise click.ClickException(f'several codes are labelled {label}@{computer.label}: remove the extra ones')
    if code is not None and str(code.filepath_executable) == str(path):
        click.echo(f'Code {label}@{computer.label} exists: reusing it (PK {code.pk}).')
        return code
    if code is not None:
        # The environment moved (a new venv): hide the stale code and make a fresh one.
        code.label = f'{label}-stale-{code.pk}'
        code.is_hidden = True
        click.echo(f'Code {label}@{computer.label} pointed to {code.filepath_executable}: hidden, recreating it.')
    code = orm.InstalledCode(
        label=label,
        computer=computer,
        filepath_executable=str(path),
        default_calc_job_plugin=plugin,
        description=f'{executable} of {sys.prefix}',
    ).store()
    click.echo(f'Created code {label}@{computer.label} -> {path} (PK {code.pk}).')
    return code


@click.command()
@click.option('--profile-name', default='alml', show_default=True, help='Name of the profile to create or reuse.')
@click.option('--email', default='alml@localhost', show_default=True, help='Email of the default user.')
def setup(profile_name: str, email: str):
    """Create (or reuse) an embedded profile: SQLite + ZeroMQ, localhost computer, our codes.

    Idempotent: running it again changes nothing that is already right. The configuration goes where AiiDA keeps it
    (set AIIDA_PATH to keep it inside a project folder).
    """
    from aiida.manage.configuration import get_config

    config = get_config(create=True)
    click.echo(f'AiiDA configuration: {config.dirpath}')
    _ensure_profile(config, profile_name, email)
    computer = _ensure_localhost(config, profile_name)
    for label, (executable, plugin) in LOCAL_CODES.items():
        _ensure_code(computer, label, executable, plugin)
    click.secho(f'Profile {profile_name!r} is ready. Start the daemon with: verdi -p {profile_name} daemon start', fg='green')
