"""Every use of aiida-core's (and plumpy's) private or undocumented engine API, in one place.

The rest of the package imports these names and never reaches into a runner, a broker, a controller or
``BaseRestartWorkChain``'s private members itself. Each function says what it relies on in aiida-core 2.9 / plumpy 0.26
and what breaks if that changes; tests/workflows/test_engine_internals.py checks each of them against the installed
aiida-core and fails naming the attribute or file layout to update. The cheap checks (attributes that exist) also run
when this module is imported (:func:`engine_internals_problems`): a newer aiida-core that dropped one of them stops the
import with :class:`EngineInternalsChanged`, naming the versions, instead of failing later in a daemon worker.

What is relied upon:

- ``Runner.submit`` saves the child's checkpoint, then sends the broker a plumpy "continue" task
  (``RemoteProcessThreadController.continue_process(pid, nowait=False, no_reply=True)``): :func:`send_continue_task`
  sends that task again; :func:`submits_through_broker` reads ``Runner.is_daemon_runner`` (the ``_broker_submit``
  flag).
- The embedded ZeroMQ broker (``core.zeromq``, aiida-core 2.9) keeps its task queue as files:
  ``<config.filepaths(profile)['broker_service']['dir']>/storage/tasks/{pending,processing}/<timestamp>_<id>.json``,
  each a JSON object whose ``body`` is plumpy's task message ``{'task': 'continue', 'args': {'pid': ...}}``:
  :func:`zeromq_task_folder`, :func:`queued_pids`, :func:`broker_has_task`. RabbitMQ hides the tasks that workers
  hold, so there the answer is "cannot tell" (``None``) and the remedy is ``verdi process repair`` with the daemon
  stopped (docs/reliability.md).
- ``BaseRestartWorkChain._wrap_bare_dict_inputs`` and ``BaseRestartWorkChain._considered_handlers_extra``, used by
  the copy of ``BaseRestartWorkChain.run_process`` in ``workflows/base.py`` (:func:`wrap_bare_dict_inputs`,
  :func:`open_handler_record`).
- Writing a process node's state from outside its process (``ProcessNode.set_process_state``,
  ``set_process_status``, ``seal``), as only the engine otherwise does: :func:`mark_killed`.
- ``aiida.brokers.rabbitmq.defaults.detect_rabbitmq_config`` (what ``verdi presto`` uses to log in to RabbitMQ):
  :func:`detect_rabbitmq_config`.

``EndsInterruptedFunctions`` (workflows/submission.py) also overrides plumpy's persistence hook
``load_instance_state(saved_state, load_context)``; the tests check its signature.
"""

from __future__ import annotations

import json
import pathlib

from aiida.engine import BaseRestartWorkChain, ProcessState
from aiida.engine.runners import Runner
from aiida.orm import ProcessNode
from plumpy.process_comms import PID_KEY, TASK_ARGS, RemoteProcessThreadController

__all__ = (
    'EngineInternalsChanged', 'broker_has_task', 'detect_rabbitmq_config', 'engine_internals_problems', 'mark_killed',
    'open_handler_record', 'queued_pids', 'send_continue_task', 'submits_through_broker', 'wrap_bare_dict_inputs',
    'zeromq_task_folder',
)

#: The ZeroMQ broker's task queue, below ``ZeromqBrokerService.FilepathLayout(service_dir).storage_path``: the folder
#: ``PersistentQueue`` is given by the broker server (aiida/brokers/zeromq/server.py) and its two state folders.
ZEROMQ_TASKS_FOLDER = 'tasks'
ZEROMQ_TASK_STATES = ('pending', 'processing')


class EngineInternalsChanged(RuntimeError):
    """aiida-core or plumpy no longer has an internal this package relies on (see this module's docstring)."""


def versions() -> str:
    """The installed aiida-core and plumpy versions, for messages."""
    import aiida
    import plumpy

    return f'aiida-core {aiida.__version__}, plumpy {plumpy.__version__}'


def engine_internals_problems() -> list[str]:
    """What of the attributes this module uses the installed aiida-core / plumpy lacks (cheap: attribute look-ups)."""
    problems = []
    if not callable(getattr(BaseRestartWorkChain, '_wrap_bare_dict_inputs', None)):
        problems.append('BaseRestartWorkChain._wrap_bare_dict_inputs (method) is gone')
    if not isinstance(getattr(BaseRestartWorkChain, '_considered_handlers_extra', None), str):
        problems.append('BaseRestartWorkChain._considered_handlers_extra (the extra name, a str) is gone')
    if not isinstance(getattr(Runner, 'is_daemon_runner', None), property):
        problems.append('Runner.is_daemon_runner (property) is gone')
    if not callable(getattr(RemoteProcessThreadController, 'continue_process', None)):
        problems.append('plumpy RemoteProcessThreadController.continue_process is gone')
    for name in ('set_process_state', 'set_process_status', 'seal'):
        if not callable(getattr(ProcessNode, name, None)):
            problems.append(f'ProcessNode.{name} is gone')
    return problems


def _check_at_import() -> None:
    problems = engine_internals_problems()
    if problems:
        raise EngineInternalsChanged(
            f'aiida-alml relies on engine internals that {versions()} no longer has: {"; ".join(problems)}. '
            'aiida-alml is tested with aiida-core 2.9: install that, or update '
            'aiida_alml/workflows/engine_internals.py.'
        )


_check_at_import()


# ---------------------------------------------------------------------------------------------- runner and broker
def submits_through_broker(runner) -> bool:
    """Whether ``runner`` submits children by sending the broker a task (a daemon runner), rather than running them
    in its own event loop. Relies on ``Runner.is_daemon_runner`` (which returns ``Runner._broker_submit``) and
    ``Runner.controller``; a runner without them counts as not submitting through the broker."""
    return bool(getattr(runner, 'is_daemon_runner', False)) and getattr(runner, 'controller', None) is not None


def send_continue_task(runner, pid: int) -> None:
    """Send the broker the task that makes a daemon worker load process ``pid`` from its checkpoint and run it: what
    ``Runner.submit`` sends after saving the checkpoint. Relies on plumpy's
    ``RemoteProcessThreadController.continue_process(pid, nowait=False, no_reply=True)``, as ``Runner.submit`` calls
    it in aiida-core 2.9; if that signature changes, a lost child is not sent again and its parent waits for ever."""
    runner.controller.continue_process(pid, nowait=False, no_reply=True)


def zeromq_task_folder() -> pathlib.Path | None:
    """The folder where the profile's embedded ZeroMQ broker keeps its task queue, or None for another broker.

    Relies on ``Config.filepaths(profile)['broker_service']['dir']`` and ``ZeromqBrokerService.FilepathLayout``
    (aiida-core 2.9, as ``aiida.brokers.zeromq.broker`` finds them) and on the broker server keeping its
    ``PersistentQueue`` in ``storage_path / 'tasks'``. If the layout moves, :func:`queued_pids` finds no task, and
    :func:`broker_has_task` would report every child's task lost (a child run twice): the tests check a real
    submit's task file appears here.
    """
    from aiida.manage import get_manager
    from aiida.manage.configuration import get_config

    profile = get_manager().get_profile()
    if profile is None or profile.process_control_backend != 'core.zeromq':
        return None
    try:
        from aiida.brokers.zeromq.service import ZeromqBrokerService

        service_dir = get_config().filepaths(profile)['broker_service']['dir']
        storage_path = ZeromqBrokerService.FilepathLayout(service_dir).storage_path
    except (ImportError, AttributeError, KeyError) as exception:
        raise EngineInternalsChanged(
            f'the ZeroMQ broker of {versions()} no longer keeps its files where aiida-alml looks '
            f"(Config.filepaths(profile)['broker_service']['dir'], ZeromqBrokerService.FilepathLayout.storage_path): "
            f'{exception!r}; update aiida_alml/workflows/engine_internals.py'
        ) from exception
    return storage_path / ZEROMQ_TASKS_FOLDER


def queued_pids(folder: pathlib.Path) -> set[int]:
    """Pks of the processes with a task in the ZeroMQ broker's queue ``folder``: waiting, or handed to a worker and
    not yet acknowledged (the broker hands a dead worker's tasks to the next one).

    Read-only (the broker's own ``iterate_tasks`` moves the tasks being processed back to waiting). The broker moves a
    task between ``pending`` and ``processing`` by renaming its file, so the folders are read pending, processing,
    pending: a task that moves either way while they are read is seen in one of them. Relies on ``PersistentQueue``'s
    layout (aiida/brokers/zeromq/queue.py: ``pending/`` and ``processing/``, one ``*.json`` file per task with the
    message under ``body``) and plumpy's task message (``body[TASK_ARGS][PID_KEY]``).
    """
    pending, processing = ZEROMQ_TASK_STATES
    pids = set()
    for state in (pending, processing, pending):
        for path in (folder / state).glob('*.json'):
            try:
                body = json.loads(path.read_text()).get('body')
            except (FileNotFoundError, json.JSONDecodeError):  # moved or acknowledged while being read
                continue
            if isinstance(body, dict) and isinstance(body.get(TASK_ARGS), dict) and PID_KEY in body[TASK_ARGS]:
                pids.add(int(body[TASK_ARGS][PID_KEY]))
    return pids


def broker_has_task(runner, pid: int) -> bool | None:
    """Whether the broker holds a task for process ``pid`` (waiting, or with a worker and not acknowledged); None
    wherever that cannot be known: ``runner`` does not submit through the broker (its children run in its own loop),
    or the broker's queue cannot be read without taking tasks from it (RabbitMQ hides the tasks workers hold)."""
    if not submits_through_broker(runner):
        return None
    folder = zeromq_task_folder()
    if folder is None:
        return None
    return pid in queued_pids(folder)


# ---------------------------------------------------------------------------------------------- process nodes
def mark_killed(node: ProcessNode, status: str) -> None:
    """Mark the process node ``node`` killed with ``status`` and seal it, from outside its process (which will never
    run again). Only the engine otherwise writes a node's process state; relies on ``ProcessNode.set_process_state``,
    ``set_process_status`` and ``seal`` accepting that on a stored, unsealed node."""
    node.set_process_state(ProcessState.KILLED)
    node.set_process_status(status)
    node.seal()


# ---------------------------------------------------------------------------------------------- BaseRestartWorkChain
def wrap_bare_dict_inputs(process: BaseRestartWorkChain, inputs: dict):
    """``inputs`` for ``process.process_class`` with plain dicts wrapped in ``Dict`` where a port wants one, as
    ``BaseRestartWorkChain.run_process`` does (relies on the private ``BaseRestartWorkChain._wrap_bare_dict_inputs(
    port_namespace, inputs)``; if it changes, the copy of ``run_process`` in workflows/base.py must follow)."""
    return process._wrap_bare_dict_inputs(process.process_class.spec().inputs, inputs)  # noqa: SLF001


def open_handler_record(process: BaseRestartWorkChain) -> None:
    """Start the record of the process handlers considered for the iteration just launched: an empty list appended
    to the extra named ``BaseRestartWorkChain._considered_handlers_extra``, which ``process_handler`` fills (aiida's
    ``process_handler`` and ``run_process`` share that private name; ``verdi process report`` and users read it)."""
    name = process._considered_handlers_extra  # noqa: SLF001
    considered_handlers = process.node.base.extras.get(name, [])
    considered_handlers.append([])
    process.node.base.extras.set(name, considered_handlers)


# ---------------------------------------------------------------------------------------------- RabbitMQ
def detect_rabbitmq_config(**connection) -> dict:
    """Log in to RabbitMQ with ``connection`` (protocol, username, password, host, port, virtual_host); the profile's
    broker configuration (keys prefixed ``broker_``). Raises ``ConnectionError`` when the login fails. Relies on the
    undocumented ``aiida.brokers.rabbitmq.defaults.detect_rabbitmq_config`` (what ``verdi presto`` uses)."""
    from aiida.brokers.rabbitmq.defaults import detect_rabbitmq_config as detect

    return detect(**connection)
