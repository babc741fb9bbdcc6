"""The AiiDA side of the local SLURM cluster that ``scripts/cluster.sh`` starts: two computers and our codes.

    python scripts/cluster_aiida.py [--profile NAME] [--transport core.ssh_async|core.ssh] ...

``slurm-cpu`` and ``slurm-gpu`` are the same machine reached over SSH as the cluster user, with the ``core.slurm``
scheduler; they differ in what a job on them is for. AiiDA 2.9 has no per-computer default queue (and ``#SBATCH``
lines in a computer's prepend text are ignored by sbatch once the script's ``export`` lines precede them), so the
partition is chosen per job with ``queue_name`` in the campaign file. The codes ``alml-label``, ``alml-md`` and
``mace-train`` (the executables of ``aiida-alml setup``) are created on both computers; on ``slurm-gpu`` they carry a
prepend text where a real GPU partition would load its modules.

Idempotent: existing computers are reused (their transport settings updated), codes whose executable or prepend text
changed are hidden and recreated. The tests import :func:`setup_cluster` to do the same in their own profile.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

#: AiiDA computer label -> SLURM partition its jobs are meant for.
PARTITIONS = {'slurm-cpu': 'cpu', 'slurm-gpu': 'gpu'}

#: Written by every job (scheduler stdout): evidence of where SLURM ran it.
COMPUTER_PREPEND = (
    'echo "alml-cluster: job ${SLURM_JOB_ID:-none} partition ${SLURM_JOB_PARTITION:-none} '
    'gpus ${CUDA_VISIBLE_DEVICES:-none} user $(id -un)"'
)

#: On slurm-gpu codes: where a real GPU partition loads its stack (e.g. `module load cuda/12.4`); this cluster has no
#: module system, so the line only marks the environment.
GPU_CODE_PREPEND = '# module load cuda  (no module system on this test cluster)\nexport ALML_GPU_STACK=cuda-standin'

TRANSPORTS = ('core.ssh_async', 'core.ssh')


class ClusterSetupError(RuntimeError):
    """An existing computer or code conflicts with the cluster's; the message says which and what to do."""


def _codes() -> dict:
    # The same executables as `aiida-alml setup` (read, not changed: that module belongs to the CLI).
    from aiida_alml.cli.setup import LOCAL_CODES

    return LOCAL_CODES


def auth_parameters(transport: str, host: str, username: str, port: int, key: str, safe_interval: float) -> dict:
    """``computer.configure`` arguments for ``transport`` reaching the cluster user on 127.0.0.1."""
    if transport == 'core.ssh_async':
        # asyncssh reads the `Host <host>` block that cluster.sh wrote to ~/.ssh/config (user, port, key).
        return {'host': host, 'backend': 'asyncssh', 'safe_interval': safe_interval}
    if transport == 'core.ssh':
        return {'username': username, 'port': port, 'key_filename': key, 'look_for_keys': False,
                'allow_agent': False, 'load_system_host_keys': True, 'key_policy': 'RejectPolicy',
                'timeout': 30, 'safe_interval': safe_interval}
    raise ClusterSetupError(f'transport must be one of {", ".join(TRANSPORTS)}, not {transport!r}')


def ensure_computer(label: str, transport: str, workdir: str, auth: dict, poll_interval: float):
    from aiida import orm
    from aiida.common.exceptions import NotExistent

    try:
        computer = orm.load_computer(label)
    except NotExistent:
        computer = orm.Computer(
            label=label,
            hostname='127.0.0.1',
            description=f'local SLURM cluster (scripts/cluster.sh), jobs for partition {PARTITIONS[label]}',
            transport_type=transport,
            scheduler_type='core.slurm',
            workdir=workdir,
        )
        computer.set_mpirun_command(['srun', '-n', '{tot_num_mpiprocs}'])
        computer.store()
        print(f'Created computer {label} ({transport}, core.slurm, workdir {workdir})')
    else:
        if computer.transport_type != transport or computer.scheduler_type != 'core.slurm':
            raise ClusterSetupError(
                f'computer {label} exists with {computer.transport_type} / {computer.scheduler_type}, not '
                f'{transport} / core.slurm: relabel or delete it (verdi computer relabel/delete) and run again'
            )
        print(f'Computer {label} exists: reusing it')
    computer.set_prepend_text(COMPUTER_PREPEND)
    computer.set_default_mpiprocs_per_machine(1)
    computer.set_minimum_job_poll_interval(poll_interval)
    computer.configure(**auth)
    return computer


def ensure_code(computer, label: str, executable: pathlib.Path, plugin: str, prepend_text: str):
    from aiida import orm
    from aiida.common.exceptions import MultipleObjectsError, NotExistent

    try:
        code = orm.load_code(f'{label}@{computer.label}')
    except NotExistent:
        code = None
    except MultipleObjectsError as exception:
        message = f'several codes are labelled {label}@{computer.label}: hide the extra ones'
        raise ClusterSetupError(message) from exception
    if code is not None:
        same = (str(code.filepath_executable) == str(executable) and code.prepend_text == prepend_text
                and code.default_calc_job_plugin == plugin)
        if same:
            print(f'Code {label}@{computer.label} exists: reusing it (PK {code.pk})')
            return code
        # Codes are immutable once used: keep the old one (its calculations point to it) under another label.
        code.label = f'{label}-stale-{code.pk}'
        code.is_hidden = True
        print(f'Code {label}@{computer.label} differed: hidden as {code.label}, recreating it')
    code = orm.InstalledCode(
        label=label,
        computer=computer,
        filepath_executable=str(executable),
        default_calc_job_plugin=plugin,
        prepend_text=prepend_text,
        description=f'{executable.name} of {executable.parent.parent}, run by SLURM on {computer.label}',
    ).store()
    print(f'Created code {label}@{computer.label} -> {executable} (PK {code.pk})')
    return code


def check_connection(computer) -> str:
    """Open the transport and ask SLURM for its partitions, as the daemon will (a clear error if it cannot)."""
    import asyncio

    async def sinfo(transport):
        # Its own event loop: the blocking wrappers of an async transport would use the runner's, which needs a
        # broker (and the embedded ZeroMQ broker runs only beside the daemon).
        await transport.open_async()
        try:
            return await transport.exec_command_wait_async('sinfo -h -o %P')
        finally:
            await transport.close_async()

    status, stdout, stderr = asyncio.run(sinfo(computer.get_transport()))
    if status != 0:
        raise ClusterSetupError(f'{computer.label}: `sinfo` over {computer.transport_type} failed ({status}): {stderr}')
    partitions = stdout.split()
    wanted = PARTITIONS[computer.label]
    if not any(name.rstrip('*') == wanted for name in partitions):
        raise ClusterSetupError(f'{computer.label}: SLURM has no partition {wanted!r} (sinfo: {partitions})')
    return ' '.join(partitions)


def setup_cluster(*, transport: str = 'core.ssh_async', host: str = 'alml-cluster', username: str = 'alml',
                  port: int = 2222, key: str | None = None, workdir: str | None = None,
                  bindir: str | pathlib.Path | None = None, safe_interval: float = 0.5,
                  poll_interval: float = 1.0, check: bool = True) -> dict:
    """Computers and codes in the loaded profile; returns ``{computer label: {code label: code}}``."""
    key = key or str(pathlib.Path.home() / '.ssh' / 'alml_cluster_ed25519')
    workdir = workdir or f'/home/{username}/aiida_run'
    bindir = pathlib.Path(bindir) if bindir else pathlib.Path(sys.executable).parent
    auth = auth_parameters(transport, host, username, port, key, safe_interval)
    made = {}
    for label, partition in PARTITIONS.items():
        computer = ensure_computer(label, transport, workdir, auth, poll_interval)
        if check:
            print(f'{label}: SLURM over {transport} answers, partitions: {check_connection(computer)}')
        prepend = GPU_CODE_PREPEND if partition == 'gpu' else ''
        made[label] = {
            code_label: ensure_code(computer, code_label, bindir / executable, plugin, prepend)
            for code_label, (executable, plugin) in _codes().items()
        }
    return made


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--profile', help='AiiDA profile (default: verdi\'s default profile)')
    parser.add_argument('--transport', default='core.ssh_async', choices=TRANSPORTS)
    parser.add_argument('--host', default='alml-cluster', help='SSH alias of the cluster (core.ssh_async)')
    parser.add_argument('--username', default='alml', help='the cluster user the jobs run as')
    parser.add_argument('--port', type=int, default=2222, help='SSH port (core.ssh)')
    parser.add_argument('--key', help='private key (core.ssh; default ~/.ssh/alml_cluster_ed25519)')
    parser.add_argument('--workdir', help='remote working directory (default /home/<username>/aiida_run)')
    parser.add_argument('--bindir', help='where the executables are (default: beside this Python)')
    args = parser.parse_args(argv)

    from aiida import load_profile
    from aiida.common.exceptions import ConfigurationError

    try:
        profile = load_profile(args.profile)
    except ConfigurationError as exception:  # no config file, no such profile, no default
        sys.exit(f'cluster_aiida.py: no profile to set up ({exception}); give --profile or run `aiida-alml setup`')
    print(f'Profile {profile.name}')
    try:
        setup_cluster(transport=args.transport, host=args.host, username=args.username, port=args.port,
                      key=args.key, workdir=args.workdir, bindir=args.bindir)
    except ClusterSetupError as exception:
        sys.exit(f'cluster_aiida.py: {exception}')
    print('Campaign files choose each stage\'s partition (queue_name: cpu or gpu) and GPUs (gpus: N); docs/cluster.md')


if __name__ == '__main__':
    main()
