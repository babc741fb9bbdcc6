"""The aiida-core / plumpy internals that ``aiida_alml.workflows.engine_internals`` relies on, checked against the
installed versions.

Each test fails with a message naming the attribute, signature or file layout that changed and what to update. These
internals would otherwise break silently: a lost child not sent again (its parent waits for ever), every child's task
thought lost (children run twice), base work chains that no longer record their handlers. When one fails after an
aiida-core upgrade: read the new aiida-core code named in the message, update engine_internals.py (and the copy of
``run_process`` in workflows/base.py), then the expectation here.
"""

from __future__ import annotations

import ast
import asyncio
import difflib
import inspect
import json
import pathlib
import textwrap
import time
import types

import pytest
from aiida import orm
from aiida.engine import BaseRestartWorkChain, ProcessState
from aiida.manage import get_manager

import aiida_alml
from aiida_alml.workflows import engine_internals
from aiida_alml.workflows.engine_internals import (
    broker_has_task, mark_killed, open_handler_record, queued_pids, submits_through_broker, wrap_bare_dict_inputs,
    zeromq_task_folder,
)


def _versions() -> str:
    return engine_internals.versions()


def _parameters(function) -> list[str]:
    return list(inspect.signature(function).parameters)


def _changed(what: str, update: str) -> str:
    return f'{_versions()}: {what} changed; update {update} (aiida_alml/workflows/engine_internals.py)'


# ---------------------------------------------------------------------------------------------- the adapter itself
def test_the_import_check_finds_every_internal():
    assert engine_internals.engine_internals_problems() == [], _versions()


def test_the_import_check_names_what_is_missing(monkeypatch):
    monkeypatch.delattr(BaseRestartWorkChain, '_considered_handlers_extra')
    with pytest.raises(engine_internals.EngineInternalsChanged, match=r'_considered_handlers_extra.*aiida-core \d'):
        engine_internals._check_at_import()


def test_no_module_but_the_adapter_reaches_into_the_engine():
    """The internals are used in engine_internals.py only (the point of the module)."""
    private = ('_broker_submit', '_wrap_bare_dict_inputs', '_considered_handlers_extra', 'continue_process(',
               'FilepathLayout', "['broker_service']", 'set_process_state(', 'set_process_status(',
               'aiida.brokers.rabbitmq', 'aiida.brokers.zeromq', 'builder._inputs', '_send_task')
    package = pathlib.Path(aiida_alml.__file__).parent
    found = [f'{path.relative_to(package)}: {name}' for path in package.rglob('*.py')
             if path.name != 'engine_internals.py' for name in private if name in path.read_text()]
    assert not found, f'engine internals used outside aiida_alml/workflows/engine_internals.py: {found}'


# ---------------------------------------------------------------------------------------------- runner
def test_a_daemon_runner_submits_through_the_broker():
    """``Runner.is_daemon_runner`` (``Runner._broker_submit``) is what a daemon worker's runner says; the runner of
    this interpreter runs its children itself."""
    from aiida.engine.runners import Runner

    assert isinstance(inspect.getattr_static(Runner, 'is_daemon_runner'), property), _changed(
        'Runner.is_daemon_runner', 'submits_through_broker')
    assert 'broker_submit' in _parameters(Runner.__init__), _changed('Runner(broker_submit=...)',
                                                                     'submits_through_broker')
    assert 'create_runner(broker_submit=True' in inspect.getsource(type(get_manager()).create_daemon_runner), _changed(
        'Manager.create_daemon_runner (a daemon worker\'s runner, made with broker_submit=True)',
        'submits_through_broker')
    assert submits_through_broker(get_manager().get_runner()) is False
    runner = get_manager().create_runner(broker_submit=True, loop=asyncio.new_event_loop())  # as create_daemon_runner
    try:
        assert submits_through_broker(runner), _changed('a runner made with broker_submit=True',
                                                        'submits_through_broker')
    finally:
        runner.close()
    assert submits_through_broker(types.SimpleNamespace()) is False


def test_runner_submit_saves_the_checkpoint_then_sends_a_continue_task():
    """submit_once's repair rests on the order in ``Runner.submit``: checkpoint first, then the broker task (a worker
    killed between the two leaves a child with a checkpoint and no task), and on the task being plumpy's
    ``continue_process(pid, nowait=False, no_reply=True)``, which :func:`send_continue_task` sends again."""
    from aiida.engine.runners import Runner
    from plumpy.process_comms import RemoteProcessThreadController

    source = inspect.getsource(Runner.submit)
    checkpoint = source.find('self.persister.save_checkpoint(process_inited)')
    task = source.find('self.controller.continue_process(process_inited.pid, nowait=False, no_reply=True)')
    assert 0 <= checkpoint < task, _changed(
        'Runner.submit (checkpoint, then continue_process(pid, nowait=False, no_reply=True))',
        'send_continue_task, and the reasoning in workflows/submission.py:submit_once')
    signature = inspect.signature(RemoteProcessThreadController.continue_process)
    assert {'pid', 'nowait', 'no_reply'} <= set(signature.parameters), _changed(
        f'plumpy RemoteProcessThreadController.continue_process{signature}', 'send_continue_task')


# ---------------------------------------------------------------------------------------------- ZeroMQ task queue
def test_the_zeromq_queue_keeps_one_file_per_task_in_pending_then_processing(tmp_path):
    """``PersistentQueue``'s layout, which :func:`queued_pids` reads: ``pending/`` and ``processing/``, a ``*.json``
    file per task with plumpy's message under ``body``; an acknowledged task's file is gone."""
    from aiida.brokers.zeromq.queue import PersistentQueue
    from plumpy.process_comms import CONTINUE_TASK, TASK_KEY, create_continue_body

    queue = PersistentQueue(tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(engine_internals.ZEROMQ_TASK_STATES), _changed(
        f'the ZeroMQ PersistentQueue folders ({sorted(path.name for path in tmp_path.iterdir())})',
        'ZEROMQ_TASK_STATES and queued_pids')
    body = create_continue_body(pid=41, nowait=False)
    assert body[TASK_KEY] == CONTINUE_TASK
    queue.push('task-1', {'body': body})
    (written,) = (tmp_path / 'pending').glob('*.json')
    assert json.loads(written.read_text())['body'] == body, _changed('the ZeroMQ task file (body)', 'queued_pids')
    assert queued_pids(tmp_path) == {41}, _changed('a waiting ZeroMQ task file', 'queued_pids')
    task_id, _ = queue.pop()
    assert list((tmp_path / 'processing').glob('*.json')), _changed('ZeroMQ tasks with a worker', 'queued_pids')
    assert queued_pids(tmp_path) == {41}, _changed('a ZeroMQ task file with a worker', 'queued_pids')
    queue.ack(task_id)
    assert queued_pids(tmp_path) == set()


@pytest.mark.storage
@pytest.mark.daemon
def test_a_real_submit_leaves_its_task_where_the_adapter_looks(stopped_daemon_client):
    """``Runner.submit`` of a daemon runner (what ``submit_once`` calls in a worker; the daemon stopped, so nothing
    takes the task) makes the broker write the task file under :func:`zeromq_task_folder`, which :func:`queued_pids`
    and :func:`broker_has_task` read; a worker then runs the process and the file goes."""
    from alml_test_calculators.replay import ReportsOnce

    folder = zeromq_task_folder()
    runner = get_manager().create_runner(broker_submit=True, loop=asyncio.new_event_loop())  # as a daemon worker's
    try:
        node = runner.submit(ReportsOnce)  # sends with no_reply=True: the file may come a moment later
        deadline = time.monotonic() + 60
        while node.pk not in queued_pids(folder) and time.monotonic() < deadline:
            time.sleep(0.2)
        if node.pk not in queued_pids(folder):
            service_dir = folder.parents[1]
            files = sorted(str(path.relative_to(service_dir)) for path in service_dir.rglob('*') if path.is_file())
            pytest.fail(_changed(f'where the ZeroMQ broker keeps a submitted task (looked in {folder}; the broker '
                                 f'folder holds {files})', 'zeromq_task_folder / queued_pids'))
        assert broker_has_task(runner, node.pk) is True
        assert broker_has_task(runner, node.pk + 10**9) is False
    finally:
        runner.close()
    assert broker_has_task(get_manager().get_runner(), node.pk) is None  # not a daemon runner: cannot tell

    stopped_daemon_client.start_daemon()
    deadline = time.monotonic() + 120
    while not orm.load_node(node.pk).is_terminated and time.monotonic() < deadline:
        time.sleep(0.5)
    assert orm.load_node(node.pk).is_finished_ok, 'the queued task did not make a worker run the process'
    deadline = time.monotonic() + 30
    while node.pk in queued_pids(folder) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert node.pk not in queued_pids(folder), 'the task of a finished process stayed in the queue'


def test_no_task_folder_for_a_profile_without_the_zeromq_broker(monkeypatch):
    profile = get_manager().get_profile()
    monkeypatch.setattr(type(profile), 'process_control_backend', property(lambda self: 'core.rabbitmq'))
    assert zeromq_task_folder() is None


# ---------------------------------------------------------------------------------------------- process nodes
@pytest.mark.storage
def test_a_running_process_node_can_be_marked_killed_from_outside():
    node = orm.CalcFunctionNode()
    node.set_process_state(ProcessState.RUNNING)
    node.store()
    mark_killed(node, 'interrupted')
    node = orm.load_node(node.pk)
    assert node.is_killed and node.is_sealed and node.process_status == 'interrupted', _changed(
        'ProcessNode.set_process_state / set_process_status / seal on a stored node', 'mark_killed')


def test_a_work_chain_is_given_its_checkpoint_through_load_instance_state():
    """``EndsInterruptedFunctions`` overrides plumpy's persistence hook with this signature."""
    from aiida.engine import WorkChain

    assert _parameters(WorkChain.load_instance_state) == ['self', 'saved_state', 'load_context'], _changed(
        f'WorkChain.load_instance_state{inspect.signature(WorkChain.load_instance_state)}',
        'EndsInterruptedFunctions.load_instance_state in workflows/submission.py')


# ---------------------------------------------------------------------------------------------- BaseRestartWorkChain
#: aiida-core 2.9's ``BaseRestartWorkChain.run_process``, of which ``RestartsInterruptedJobs.run_process``
#: (workflows/base.py) is a copy with ``self.submit`` replaced by ``submit_once``.
RUN_PROCESS_29 = '''
def run_process(self) -> ToContext:
    self.ctx.iteration += 1

    try:
        unwrapped_inputs = self.ctx.inputs
    except AttributeError:
        raise AttributeError('no process input dictionary was defined in `self.ctx.inputs`')

    unwrapped_inputs.setdefault('metadata', {})['call_link_label'] = f'iteration_{self.ctx.iteration:02d}'

    inputs = self._wrap_bare_dict_inputs(self.process_class.spec().inputs, unwrapped_inputs)
    node = self.submit(self.process_class, **inputs)

    considered_handlers = self.node.base.extras.get(self._considered_handlers_extra, [])
    considered_handlers.append([])
    self.node.base.extras.set(self._considered_handlers_extra, considered_handlers)

    self.report(f'launching {self.ctx.process_name}<{node.pk}> iteration #{self.ctx.iteration}')

    return ToContext(children=append_(node))
'''


def _without_docstring(source: str) -> str:
    function = ast.parse(textwrap.dedent(source)).body[0]
    body = function.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        function.body = body[1:]
    return ast.unparse(function)


def test_base_restart_run_process_is_the_one_base_py_copies():
    upstream = _without_docstring(inspect.getsource(BaseRestartWorkChain.run_process))
    expected = _without_docstring(RUN_PROCESS_29)
    diff = '\n'.join(difflib.unified_diff(expected.splitlines(), upstream.splitlines(), 'aiida-core 2.9', 'installed',
                                          lineterm=''))
    assert upstream == expected, (
        f'{_versions()}: BaseRestartWorkChain.run_process changed. RestartsInterruptedJobs.run_process '
        f'(aiida_alml/workflows/base.py) copies it with submit_once: bring the copy up to date, then RUN_PROCESS_29 '
        f'here.\n{diff}'
    )


def test_base_restart_context_keys_that_run_process_uses():
    setup = inspect.getsource(BaseRestartWorkChain.setup)
    inspect_process = inspect.getsource(BaseRestartWorkChain.inspect_process)
    for line in ('self.ctx.process_name = self.process_class.__name__', 'self.ctx.iteration = 0'):
        assert line in setup, _changed(f'BaseRestartWorkChain.setup ({line})', 'RestartsInterruptedJobs.run_process')
    assert 'self.ctx.children[self.ctx.iteration - 1]' in inspect_process, _changed(
        'BaseRestartWorkChain.inspect_process (reads ctx.children)', 'RestartsInterruptedJobs.run_process')


def test_wrap_bare_dict_inputs_wraps_a_plain_dict_for_a_dict_port():
    from aiida.plugins import CalculationFactory

    assert _parameters(BaseRestartWorkChain._wrap_bare_dict_inputs) == ['self', 'port_namespace', 'inputs'], _changed(
        f'BaseRestartWorkChain._wrap_bare_dict_inputs{inspect.signature(BaseRestartWorkChain._wrap_bare_dict_inputs)}',
        'wrap_bare_dict_inputs')

    class Process:
        process_class = CalculationFactory('core.templatereplacer')  # its `template` port takes a Dict
        _wrap_bare_dict_inputs = BaseRestartWorkChain._wrap_bare_dict_inputs

    wrapped = wrap_bare_dict_inputs(Process(), {'template': {'input_file_template': 'x'}, 'other': {'a': 1}})
    assert isinstance(wrapped['template'], orm.Dict) and wrapped['template'].get_dict() == {
        'input_file_template': 'x'}, _changed('BaseRestartWorkChain._wrap_bare_dict_inputs', 'wrap_bare_dict_inputs')
    assert wrapped['other'] == {'a': 1}


def test_the_considered_handlers_extra_is_the_one_process_handler_fills():
    from aiida.engine.processes.workchains import utils

    name = BaseRestartWorkChain._considered_handlers_extra
    assert isinstance(name, str), _changed('BaseRestartWorkChain._considered_handlers_extra', 'open_handler_record')
    assert 'instance._considered_handlers_extra' in inspect.getsource(utils.process_handler), _changed(
        'process_handler (no longer records into _considered_handlers_extra)', 'open_handler_record')
    extras = {name: [[('handler', None)]]}
    node = types.SimpleNamespace(base=types.SimpleNamespace(extras=types.SimpleNamespace(
        get=lambda key, default: extras.get(key, default), set=extras.__setitem__)))
    open_handler_record(types.SimpleNamespace(node=node, _considered_handlers_extra=name))
    assert extras[name] == [[('handler', None)], []]


# ---------------------------------------------------------------------------------------------- RabbitMQ
def test_detect_rabbitmq_config_logs_in_or_raises_connection_error():
    from aiida.brokers.rabbitmq.defaults import detect_rabbitmq_config

    expected = ['protocol', 'username', 'password', 'host', 'port', 'virtual_host']
    assert _parameters(detect_rabbitmq_config) == expected, _changed(
        f'aiida.brokers.rabbitmq.defaults.detect_rabbitmq_config{inspect.signature(detect_rabbitmq_config)}',
        'detect_rabbitmq_config (used by aiida-alml setup --production)')
    with pytest.raises(ConnectionError):  # nothing listens on port 1
        engine_internals.detect_rabbitmq_config(protocol='amqp', username='nobody', password='x', host='127.0.0.1',
                                                port=1, virtual_host='')
