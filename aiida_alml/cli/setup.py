"""``aiida-alml setup``: an embedded, service-free AiiDA profile (or, with ``--production``, one on PostgreSQL and
RabbitMQ) with the computer and codes this package needs."""

from __future__ import annotations

import os
import pathlib
import shutil
import sys

import click

from aiida_alml.cli.options import PROFILE

#: Codes created on localhost: label -> (executable, default CalcJob plugin).
LOCAL_CODES = {
    'alml-label': ('alml-label', 'alml.ase'),
    'alml-md': ('alml-md', 'alml.md'),
    'mace-train': ('alml-train', 'alml.mace.train'),  # mace_run_train, then the model as config + weights
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


# ---------------------------------------------------------------------------------------------- production profile
#: Where the production services come from; named in every "not reachable" message.
SERVICES_SCRIPT = 'scripts/services.sh'
#: AiiDA's advice for RabbitMQ >= 3.8.15: a consumer_timeout longer than any process runs (10,000 hours).
ADVISED_CONSUMER_TIMEOUT_MS = 36_000_000_000


def _not_reachable(service: str, address: str, reason: str) -> click.ClickException:
    prefix = 'db' if service == 'PostgreSQL' else 'broker'
    return click.ClickException(
        f'{service} is not reachable at {address} ({reason}). Start it on this machine by running '
        f'`{SERVICES_SCRIPT}` as root (from the aiida-alml source tree; `sudo {SERVICES_SCRIPT}` from an account '
        f'with sudo), or point the --{prefix}-* options at a running server.'
    )


def _check_port(service: str, host: str, port: int) -> None:
    """A plain TCP connect first: 'nothing listens there' is the commonest failure and deserves its own message."""
    import socket

    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as exception:
        raise _not_reachable(service, f'{host}:{port}', exception.strerror or str(exception)) from None


def _connect_postgres(db: dict, dbname: str):
    import psycopg

    return psycopg.connect(host=db['host'], port=db['port'], user=db['user'], password=db['password'],
                           dbname=dbname, connect_timeout=10, autocommit=True)


def _probe_database(db: dict) -> tuple[bool, int | None]:
    """Log in to the database as the profile will.

    Returns whether the database exists (the role could log in otherwise) and the number of AiiDA nodes it holds
    (None: no AiiDA schema in it).
    """
    import psycopg

    _check_port('PostgreSQL', db['host'], db['port'])
    address = f'{db["host"]}:{db["port"]}'
    try:
        with _connect_postgres(db, db['name']) as connection:
            has_schema = connection.execute("SELECT to_regclass('public.db_dbnode') IS NOT NULL").fetchone()[0]
            nodes = connection.execute('SELECT count(*) FROM db_dbnode').fetchone()[0] if has_schema else None
    except psycopg.OperationalError as exception:
        message = str(exception).strip().splitlines()[-1]
        if f'database "{db["name"]}" does not exist' in message:
            click.echo(f'PostgreSQL at {address}: role {db["user"]!r} logs in; database {db["name"]!r} does not exist.')
            return False, None
        raise click.ClickException(
            f'PostgreSQL at {address} refused user {db["user"]!r} for database {db["name"]!r}: {message}. '
            f'{SERVICES_SCRIPT} creates the role and database from ALML_DB_USER, ALML_DB_PASSWORD and '
            'ALML_DB_NAME (defaults alml/alml/alml); give the same values here (--db-user, --db-password, --db-name).'
        ) from None
    click.echo(f'PostgreSQL at {address}: database {db["name"]!r} reachable as {db["user"]!r}.')
    return True, nodes


def _create_database(db: dict) -> None:
    """Make the profile's database, as services.sh would (the role needs CREATEDB, which services.sh grants)."""
    import psycopg
    from psycopg import sql

    address = f'{db["host"]}:{db["port"]}'
    try:
        with _connect_postgres(db, 'postgres') as connection:
            connection.execute(sql.SQL('CREATE DATABASE {} OWNER {} ENCODING {} TEMPLATE template0').format(
                sql.Identifier(db['name']), sql.Identifier(db['user']), sql.Literal('UTF8')))
    except psycopg.errors.InsufficientPrivilege:
        raise click.ClickException(
            f'database {db["name"]!r} does not exist on {address} and role {db["user"]!r} may not create it: run '
            f'`ALML_DB_NAME={db["name"]} {SERVICES_SCRIPT}` as root, or ask the server\'s administrator for it.'
        ) from None
    except psycopg.Error as exception:
        raise click.ClickException(f'could not create database {db["name"]!r} on {address} as {db["user"]!r} '
                                   f'(connected to its "postgres" database): {exception}') from None
    click.echo(f'PostgreSQL at {address}: created database {db["name"]!r} owned by {db["user"]!r}.')


def _check_rabbitmq(broker: dict) -> dict:
    """Log in to RabbitMQ as the daemon will; return the profile's broker configuration."""
    from aiida_alml.workflows.engine_internals import detect_rabbitmq_config

    _check_port('RabbitMQ', broker['host'], broker['port'])
    try:
        config = detect_rabbitmq_config(protocol='amqp', username=broker['user'], password=broker['password'],
                                        host=broker['host'], port=broker['port'], virtual_host=broker['vhost'])
    except ConnectionError as exception:
        raise click.ClickException(
            f'RabbitMQ at amqp://{broker["host"]}:{broker["port"]} refused user {broker["user"]!r} '
            f'(virtual host {broker["vhost"] or "/"!r}): {str(exception.__cause__ or exception).rstrip(".")}.'
            + (' RabbitMQ lets "guest" log in only from the machine it runs on.' if broker['user'] == 'guest' else '')
        ) from None
    click.echo(f'RabbitMQ at amqp://{broker["host"]}:{broker["port"]}: logged in as {broker["user"]!r}.')
    return config


def _consumer_timeout_ms(broker: dict) -> tuple[float | None, str]:
    """RabbitMQ's effective consumer_timeout (inf when disabled), read with rabbitmqctl; None when it cannot be read."""
    import re
    import subprocess

    if broker['host'] not in ('localhost', '127.0.0.1', '::1'):
        return None, 'the broker is on another machine'
    rabbitmqctl = shutil.which('rabbitmqctl') or shutil.which('rabbitmqctl', path='/usr/sbin:/sbin')
    if rabbitmqctl is None:
        return None, 'rabbitmqctl is not installed here'
    if os.geteuid() != 0:
        return None, 'rabbitmqctl must run as root to read it'
    try:
        result = subprocess.run([rabbitmqctl, '-q', 'eval', 'application:get_env(rabbit, consumer_timeout).'],
                                capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return None, 'rabbitmqctl did not answer within 60 s'
    answer = result.stdout.strip()
    if result.returncode != 0:
        last = (result.stderr.strip() or result.stdout.strip() or '(no output)').splitlines()[-1]
        return None, f'rabbitmqctl failed: {last}'
    if answer == '{ok,undefined}':
        return float('inf'), answer
    if answer == 'undefined':
        return 1_800_000.0, answer  # not set: RabbitMQ's default, 30 minutes
    match = re.fullmatch(r'\{ok,(\d+)\}', answer)
    return (float(match.group(1)), answer) if match else (None, f'unexpected answer {answer!r}')


def _production_profile(config, name: str, email: str, db: dict, broker: dict):
    """Create (or check and reuse) a core.psql_dos + core.rabbitmq profile; return it loaded."""
    from aiida.common import exceptions
    from aiida.manage.configuration import create_profile, load_profile

    wanted = {'database_hostname': db['host'], 'database_port': db['port'], 'database_username': db['user'],
              'database_name': db['name']}
    if name in config.profile_names:
        profile = config.get_profile(name)
        if profile.storage_backend != 'core.psql_dos' or profile.process_control_backend != 'core.rabbitmq':
            raise click.ClickException(
                f'profile {name!r} exists with storage {profile.storage_backend} and broker '
                f'{profile.process_control_backend}, not core.psql_dos + core.rabbitmq: choose another --profile-name'
            )
        differs = {key: (profile.storage_config.get(key), value) for key, value in wanted.items()
                   if profile.storage_config.get(key) != value}
        if differs:
            detail = ', '.join(f'{key} is {old!r}, not {new!r}' for key, (old, new) in differs.items())
            raise click.ClickException(f'profile {name!r} exists but points elsewhere ({detail}): choose another '
                                       '--profile-name or give the options it was made with')
        if not _probe_database(db)[0]:
            raise click.ClickException(f'profile {name!r} exists but its database {db["name"]!r} is gone: delete the '
                                       f'profile (`verdi profile delete {name}`) and set it up again')
        _check_rabbitmq(broker)
        click.echo(f'Profile {name!r} exists: reusing it.')
    else:
        exists, nodes = _probe_database(db)
        if nodes is not None:
            # Its file repository belongs to another profile: a second profile on it would mix two repositories.
            raise click.ClickException(
                f'database {db["name"]!r} on {db["host"]}:{db["port"]} already holds the data of an AiiDA profile '
                f'({nodes} nodes). Give a new database with --db-name (it is created), or use the profile that '
                'made it (`verdi profile list` where it was set up).'
            )
        broker_config = _check_rabbitmq(broker)
        if not exists:
            _create_database(db)  # only now that both services answered: a refusal leaves nothing behind
        repository = pathlib.Path(config.dirpath) / 'repository' / name
        try:
            create_profile(
                config,
                name=name,
                email=email,
                storage_backend='core.psql_dos',
                storage_config={**wanted, 'database_engine': 'postgresql_psycopg', 'database_password': db['password'],
                                'repository_uri': repository.as_uri()},
                broker_backend='core.rabbitmq',
                broker_config=broker_config,
            )
        except (ValueError, TypeError, exceptions.StorageMigrationError) as exception:
            # e.g. the database holds another profile's data with a different repository
            raise click.ClickException(f'could not create profile {name!r} in database {db["name"]!r}: {exception}')
        config.set_option('runner.poll.interval', 1, scope=name)
        click.echo(f'Created profile {name!r}: PostgreSQL database {db["name"]!r} on {db["host"]}:{db["port"]}, '
                   f'file repository in {repository}, RabbitMQ broker at {broker["host"]}:{broker["port"]}.')
    timeout, detail = _consumer_timeout_ms(broker)
    if timeout is not None and timeout >= ADVISED_CONSUMER_TIMEOUT_MS:
        # AiiDA warns about every RabbitMQ >= 3.8.15 because it can only see the version; this one is configured.
        config.set_option('warnings.rabbitmq_version', False, scope=name)
        shown = 'disabled' if timeout == float('inf') else f'{timeout / 3.6e6:,.0f} h'
        click.echo(f'RabbitMQ consumer_timeout: {shown}, as AiiDA advises (its version warning is off for {name!r}).')
    elif timeout is not None:
        click.secho(f'Warning: RabbitMQ consumer_timeout is {timeout / 6e4:,.0f} min: the broker will take tasks away '
                    f'from daemon workers after that. Raise it as {SERVICES_SCRIPT} does (docs/production.md).',
                    fg='yellow', err=True)
    else:
        click.echo(f'Could not read RabbitMQ\'s consumer_timeout ({detail}); make sure it is set as AiiDA advises for '
                   'RabbitMQ >= 3.8.15 (docs/production.md).')
    config.set_default_profile(name, overwrite=True)
    config.store()
    profile = load_profile(name, allow_switch=True)
    from aiida.manage import get_manager

    click.echo(f'Broker: {get_manager().get_broker()}')
    return profile


def _given_on_command_line(names) -> list[str]:
    from click.core import ParameterSource

    context = click.get_current_context()
    return [f'--{name.replace("_", "-")}' for name in names
            if context.get_parameter_source(name) == ParameterSource.COMMANDLINE]


_DB_OPTIONS = [
    ('db_host', 'localhost', str, 'PostgreSQL host.'),
    ('db_port', 5432, int, 'PostgreSQL port.'),
    ('db_user', 'alml', str, 'PostgreSQL role (services.sh creates it).'),
    ('db_password', 'alml', str, 'Password of that role.'),
    ('db_name', 'alml', str, 'Database (created when missing and the role may create databases).'),
    ('broker_host', '127.0.0.1', str, 'RabbitMQ host.'),
    ('broker_port', 5672, int, 'RabbitMQ AMQP port.'),
    ('broker_user', 'guest', str, 'RabbitMQ user.'),
    ('broker_password', 'guest', str, 'RabbitMQ password.'),
    ('broker_vhost', '', str, 'RabbitMQ virtual host (empty: the default one).'),
]


def _production_options(function):
    # Each option also reads ALML_<NAME> from the environment, the variables scripts/services.sh uses.
    for name, default, kind, text in reversed(_DB_OPTIONS):
        function = click.option(f'--{name.replace("_", "-")}', name, default=default, type=kind, show_default=True,
                                envvar=f'ALML_{name.upper()}', show_envvar=True,
                                help=f'With --production: {text}')(function)
    return function


@click.command()
@click.option('--profile-name', default=None,
              help='Name of the profile to create or reuse.  [default: alml; alml-prod with --production]')
@click.option('--email', default='alml@localhost', show_default=True, help='Email of the default user.')
@click.option('--production', is_flag=True,
              help=f'PostgreSQL storage and RabbitMQ broker (services started by {SERVICES_SCRIPT}) instead of the '
                   'embedded SQLite + ZeroMQ profile.')
@_production_options
def setup(profile_name: str | None, email: str, production: bool, **service_options):
    """Create (or reuse) an embedded profile: SQLite + ZeroMQ, localhost computer, our codes.

    Idempotent: running it again changes nothing that is already right. The configuration goes where AiiDA keeps it
    (set AIIDA_PATH to keep it inside a project folder).

    With --production the profile uses PostgreSQL and RabbitMQ instead (docs/production.md); both must be running.
    """
    from aiida.manage.configuration import get_config

    if not production:
        stray = _given_on_command_line(service_options)
        if stray:
            raise click.UsageError(f'{", ".join(stray)}: only with --production (the embedded profile needs no '
                                   'services)')
    profile_name = profile_name or ('alml-prod' if production else 'alml')
    config = get_config(create=True)
    click.echo(f'AiiDA configuration: {config.dirpath}')
    if production:
        db = {key[3:]: value for key, value in service_options.items() if key.startswith('db_')}
        broker = {key[7:]: value for key, value in service_options.items() if key.startswith('broker_')}
        _production_profile(config, profile_name, email, db, broker)
    else:
        _ensure_profile(config, profile_name, email)
    computer = _ensure_localhost(config, profile_name)
    for label, (executable, plugin) in LOCAL_CODES.items():
        _ensure_code(computer, label, executable, plugin)
    click.secho(f'Profile {profile_name!r} is ready. Start the daemon with: verdi -p {profile_name} daemon start', fg='green')


@click.command('allow-labeller')
@PROFILE
@click.argument('code_label')
@click.option('--revoke', is_flag=True, help='Take the declaration back: the shell labeller refuses the code again.')
def allow_labeller(profile_name, code_label: str, revoke: bool):
    """Declare CODE_LABEL (label@computer) a reference program that the shell labeller may run.

    A campaign file is data and may name any code: the shell labeller runs only codes their owner declared here
    (the extra alml_labeller on the code node; docs/security.md). aiida-alml's own programs never qualify.
    """
    from aiida import orm
    from aiida.common.exceptions import MultipleObjectsError, NotExistent

    from aiida_alml.cli.options import load_profile as load_named_profile
    from aiida_alml.workflows.labellers.shell import LABELLER_EXTRA, allow_labeller as declare

    load_named_profile(profile_name)
    try:
        code = orm.load_code(code_label)
    except (NotExistent, MultipleObjectsError) as exception:
        raise click.ClickException(f'{code_label}: {exception}') from exception
    if revoke:
        if LABELLER_EXTRA in code.base.extras.keys():
            code.base.extras.delete(LABELLER_EXTRA)
        click.echo(f'{code.full_label}: no longer a shell labeller')
        return
    try:
        declare(code)
    except ValueError as exception:
        raise click.ClickException(str(exception)) from exception
    click.echo(f'{code.full_label}: the shell labeller may run it (extra {LABELLER_EXTRA} = true)')
