"""Fault injection: SIGKILL the daemon worker mid-campaign and count what the campaign lost, duplicated or left behind.

Run: ``python benchmarks/fault_injection.py [--points P ...] [--group N] [--no-reference] [--out faults.json]``.

Everything happens in a throw-away embedded profile (a temporary AIIDA_PATH, ``aiida-alml setup`` and
``verdi daemon start 1``, removed afterwards). One undisturbed reference campaign of ``alml.active_learning`` runs
first (2 iterations of a tiny EMT/MACE campaign); then, for every kill point (``--points``, default all of
:data:`POINTS`; ``--group N`` puts N points into one campaign), the same campaign is submitted again and this
process watches its called processes (call link labels, process and CalcJob states, polled every 0.2 s). When the
point is reached it sends SIGKILL to the ``verdi daemon worker`` (a child of the circus daemon), waits for circus to
start a new one (``verdi daemon incr 1`` if it has not within 30 s) and lets the campaign go on.

Counted for each campaign, from the provenance graph and from a log that every job writes when it starts (the codes
are small wrappers around the programs of the codes ``aiida-alml setup`` makes, appending their working directory to
it):

* labels lost: a frame the campaign chose to label (initial structures, and every ``chosen`` frame of the
  ``selection_records``) that no finished ``alml.ase`` job labelled, or that is missing from the final ``dataset``;
* labels duplicated: such a frame labelled by more than one finished ``alml.ase`` job, or present more than once in
  the ``dataset`` (frames are matched by their numbers, positions and cell);
* submitted twice: two launched processes (jobs or work chains) under the same call link label of one parent; a
  child that was stored but never launched before the kill is listed apart (``never_launched``);
* jobs run twice: a job directory in which the program started more than once (the start log); also counted, launched
  CalcJobs with equal input hashes (``jobs_same_inputs``; a never-launched copy is not counted there);
* orphans: jobs and work chains of the campaign still not terminated once it has ended (after ``--settle`` s), and
  apart from them the calcfunction nodes that were running inside the killed worker (they stay "running": AiiDA
  runs a calcfunction in the worker, without a checkpoint, and the replayed step runs it again);
* ended: the campaign finished with the reference's exit status (401 here: the iteration cap of 2 is reached by
  design, with every output attached);
* same structure: output link labels, number of iterations, learning-curve keys and dataset size as the reference's;
  identical numbers: also the same dataset content hash and held-out force errors per iteration.

Exit status 0 when every campaign ended as the reference with no label lost or duplicated.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import hashlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time
from typing import Callable

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
BIN = pathlib.Path(sys.executable).parent
PROFILE = 'faults'
TERMINAL = {'finished', 'excepted', 'killed'}
POLL_INTERVAL = 0.2
TINY_MACE = {
    'model': 'MACE', 'num_channels': 8, 'max_L': 0, 'r_max': 4.0, 'num_interactions': 2, 'correlation': 2,
    'batch_size': 4, 'valid_batch_size': 5, 'valid_fraction': 0.2, 'max_num_epochs': 3, 'device': 'cpu',
    'default_dtype': 'float64',
}  # fmt: skip
OPTIONS = {'resources': {'num_machines': 1}, 'withmpi': False, 'environment_variables': {'OMP_NUM_THREADS': '1'}}


# ---------------------------------------------------------------------- what the campaign is doing
@dataclasses.dataclass
class Proc:
    """One process of the campaign as seen by a poll."""

    pk: int
    path: str  # call link labels from the campaign down, e.g. 'train_0/member_1'
    process_label: str
    state: str  # process state: created, waiting, running, finished, excepted, killed
    calc_state: str | None  # CalcJob state: uploading, submitting, withscheduler, retrieving, parsing, ...
    kind: str  # calcjob, calcfunction or workchain (a CalcJob's state attribute is removed once it terminates)
    status: str = ''  # process status

    @property
    def never_launched(self) -> bool:
        """Stored by a step that the worker's death cut short, never run (aiida_alml.workflows.submission)."""
        return self.state == 'killed' and self.status.startswith('never launched')

    @property
    def active(self) -> bool:
        return self.state not in TERMINAL

    def describe(self) -> str:
        return f'{self.path} {self.calc_state or self.state}'


class Snapshot:
    """Every process the campaign called (directly or not), read fresh from the database."""

    def __init__(self, root_pk: int):
        from aiida import orm
        from aiida.common.links import LinkType

        query = orm.QueryBuilder()
        query.append(orm.ProcessNode, tag='parent', project=['id'], filters={'id': {'>=': root_pk}})
        query.append(
            orm.ProcessNode, tag='child', with_incoming='parent',
            edge_filters={'type': {'in': [LinkType.CALL_CALC.value, LinkType.CALL_WORK.value]}},
            edge_project=['label'], edge_tag='link',
            project=['id', 'attributes.process_label', 'attributes.process_state', 'attributes.state', 'node_type',
                     'attributes.process_status'],
        )  # fmt: skip
        children = collections.defaultdict(list)
        for row in query.iterdict():
            child = row['child']
            children[row['parent']['id']].append((
                child['id'], row['link']['label'], child['attributes.process_label'],
                child['attributes.process_state'] or 'created', child['attributes.state'],
                _kind(child['node_type']), child['attributes.process_status'] or '',
            ))
        self.procs: list[Proc] = []
        queue = [(root_pk, '')]
        while queue:
            parent, prefix = queue.pop(0)
            for child, label, process_label, state, calc_state, kind, status in sorted(children.get(parent, [])):
                path = f'{prefix}{label}'
                self.procs.append(Proc(child, path, process_label, state, calc_state, kind, status))
                queue.append((child, f'{path}/'))

    def under(self, prefix: str) -> list[Proc]:
        """Processes at ``prefix`` or below it."""
        return [p for p in self.procs if p.path == prefix or p.path.startswith(f'{prefix}/')]

    def exists(self, path: str) -> bool:
        return any(p.path == path for p in self.procs)

    def terminated(self, path: str) -> bool:
        found = [p for p in self.procs if p.path == path]
        return bool(found) and not any(p.active for p in found)

    def jobs(self, prefix: str, states=None) -> list[Proc]:
        """CalcJobs at or below ``prefix`` (those with a CalcJob state), optionally only in ``states``."""
        return [p for p in self.under(prefix) if p.kind == 'calcjob' and p.active
                and (states is None or p.calc_state in states)]

    def active_leaves(self, dead=()) -> list[str]:
        """The deepest active processes (but those in ``dead``): where the campaign was when we looked."""
        active = [p for p in self.procs if p.active and p.pk not in dead]
        return [p.describe() for p in active if not any(q.path.startswith(f'{p.path}/') for q in active)]


def _kind(node_type: str) -> str:
    for kind in ('calcjob', 'calcfunction', 'workchain', 'workfunction'):
        if f'.{kind}.' in node_type:
            return kind
    return node_type


@dataclasses.dataclass(frozen=True)
class Point:
    """A kill point: when ``reached(snapshot)`` holds, wait ``delay`` seconds and SIGKILL the worker."""

    stage: str
    where: str
    reached: Callable[[Snapshot], bool]
    delay: float = 0.0


# Ordered as the campaign meets them; each is met once per campaign (2 iterations + final training).
POINTS = {
    'initial_label_launched': Point(
        'labelling', 'initial alml.label work chain just submitted (its job not yet running)',
        lambda s: s.exists('label_initial')),
    'initial_label_job': Point(
        'labelling', 'initial alml.ase job with the scheduler',
        lambda s: bool(s.jobs('label_initial', {'withscheduler'}))),
    'training_job': Point(
        'training', 'iteration 0: MACE members training (2 s into the job)',
        lambda s: bool(s.jobs('train_0', {'withscheduler'})), delay=2.0),
    'after_training': Point(
        'between steps', 'iteration 0: committee done, before exploration (held-out scoring, explore submission)',
        lambda s: s.terminated('train_0') and not s.exists('explore_0')),
    'md_job': Point(
        'MD', 'iteration 0: committee MD job with the scheduler (1 s in)',
        lambda s: bool(s.jobs('explore_0', {'withscheduler'})), delay=1.0),
    'selection': Point(
        'selection', 'iteration 0: exploration done, before labelling (select_for_labelling)',
        lambda s: s.terminated('explore_0') and not s.exists('label_0')),
    'label_job': Point(
        'labelling', 'iteration 0: alml.ase job of the selected frames, any state',
        lambda s: bool(s.jobs('label_0'))),
    'evaluation': Point(
        'evaluation', 'iteration 0: labels back, before the next training (evaluate, calibrate, merge)',
        lambda s: s.terminated('label_0') and not s.exists('train_1')),
    'warm_training_retrieval': Point(
        'training', 'iteration 1: a warm-started member retrieving/parsing, or one member done and one training',
        lambda s: bool(s.jobs('train_1', {'retrieving', 'parsing'}))
        or (s.exists('train_1') and not s.terminated('train_1')
            and any(not p.active for p in s.under('train_1') if p.path != 'train_1'))),
    'md_launch': Point(
        'MD', 'iteration 1: exploration work chain just submitted (MD jobs uploading/submitting)',
        lambda s: s.exists('explore_1')),
    'label_gather': Point(
        'labelling', 'iteration 1: alml.ase job done, alml.label gathering (merge_labelled)',
        lambda s: s.exists('label_1') and not s.terminated('label_1')
        and any(p.kind == 'calcjob' and not p.active for p in s.under('label_1'))),
    'final_training_job': Point(
        'training', 'final training on the whole dataset, members with the scheduler (2 s in)',
        lambda s: bool(s.jobs('train_final', {'withscheduler'})), delay=2.0),
    'finalize': Point(
        'between steps', 'final committee done: scoring and attaching the outputs (finalize)',
        lambda s: s.terminated('train_final')),
}


# ---------------------------------------------------------------------- the daemon
class Daemon:
    """The throw-away profile's daemon: start, find and kill its worker, stop."""

    def __init__(self, aiida_path: pathlib.Path):
        self.aiida_path = aiida_path
        self.env = {**os.environ, 'AIIDA_PATH': str(aiida_path), 'PATH': f'{BIN}{os.pathsep}{os.environ["PATH"]}'}

    def verdi(self, *args, check=True) -> subprocess.CompletedProcess:
        result = subprocess.run([str(BIN / 'verdi'), '-p', PROFILE, *args], env=self.env, capture_output=True,
                                text=True, timeout=120)
        if check and result.returncode != 0:
            raise RuntimeError(f'verdi {" ".join(args)} failed:\n{result.stdout}\n{result.stderr}')
        return result

    def circus_pid(self) -> int:
        return int((self.aiida_path / '.aiida' / 'daemon' / f'circus-{PROFILE}.pid').read_text().strip())

    def workers(self) -> list[int]:
        """PIDs of the live ``verdi daemon worker`` processes under the circus daemon."""
        import psutil

        pids = []
        for child in psutil.Process(self.circus_pid()).children():
            try:
                if 'worker' in child.cmdline() and child.status() != psutil.STATUS_ZOMBIE:
                    pids.append(child.pid)
            except psutil.NoSuchProcess:
                continue
        return pids

    def kill_worker(self, timeout: float = 30.0) -> dict:
        """SIGKILL every worker; wait for a new one (circus restarts it; else ``verdi daemon incr 1``)."""
        old = self.workers()
        if not old:
            raise RuntimeError('no daemon worker to kill')
        for pid in old:
            os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        restarted_by = 'circus'
        while True:
            new = [pid for pid in self.workers() if pid not in old]
            if new:
                break
            if time.monotonic() - killed_at > timeout and restarted_by == 'circus':
                restarted_by = 'verdi daemon incr 1'
                self.verdi('daemon', 'incr', '1')
            if time.monotonic() - killed_at > 3 * timeout:
                raise RuntimeError(f'no daemon worker came back within {3 * timeout:.0f} s of killing {old}')
            time.sleep(0.1)
        return {'killed': old, 'new_worker': new, 'worker_back_s': round(time.monotonic() - killed_at, 2),
                'restarted_by': restarted_by}


def make_profile(folder: pathlib.Path) -> Daemon:
    """``aiida-alml setup`` in ``folder`` (AIIDA_PATH), start one daemon worker, load the profile here."""
    daemon = Daemon(folder)
    result = subprocess.run([str(BIN / 'aiida-alml'), 'setup', '--profile-name', PROFILE], env=daemon.env,
                            capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise RuntimeError(f'aiida-alml setup failed:\n{result.stdout}\n{result.stderr}')
    os.environ['AIIDA_PATH'] = str(folder)
    os.environ['PATH'] = daemon.env['PATH']
    from aiida import load_profile

    load_profile(PROFILE, allow_switch=True)
    daemon.verdi('daemon', 'start', '1')
    return daemon


def counted_codes(folder: pathlib.Path) -> tuple[dict, pathlib.Path]:
    """Copies of the codes ``aiida-alml setup`` made that log every start (working directory) before running."""
    from aiida import orm

    log = folder / 'job-starts.log'
    log.touch()
    wrappers = folder / 'bin'
    wrappers.mkdir(exist_ok=True)
    codes = {}
    for name, label in (('label', 'alml-label'), ('train', 'mace-train'), ('md', 'alml-md')):
        code = orm.load_code(f'{label}@localhost')
        script = wrappers / f'counted-{label}'
        script.write_text(f'#!/bin/sh\necho "$(pwd) {label}" >> "{log}"\nexec "{code.filepath_executable}" "$@"\n')
        script.chmod(0o755)
        codes[name] = orm.InstalledCode(label=f'counted-{label}', computer=code.computer,
                                        default_calc_job_plugin=code.default_calc_job_plugin,
                                        filepath_executable=str(script)).store()
    return codes, log


# ---------------------------------------------------------------------- the campaign
def campaign_inputs(codes: dict, args) -> dict:
    """A tiny campaign: 10 EMT labels of Cu cells, committee of 2 × 8 channels, 2 iterations of 3 labels."""
    from aiida import orm
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    from aiida_alml.data import ConfigurationSet
    from aiida_alml.atoms.perturb import perturbed_copies

    cubic = bulk('Cu', 'fcc', a=3.61, cubic=True)
    vacancy = cubic.repeat((2, 1, 1))
    del vacancy[3]
    test = []
    for atoms in perturbed_copies([vacancy], 3, rattle_std=0.1, max_strain=0.02, seed=5):
        atoms.calc = EMT()
        atoms.calc = SinglePointCalculator(atoms, energy=atoms.get_potential_energy(), forces=atoms.get_forces())
        test.append(atoms)
    return {
        'initial_structures': ConfigurationSet.from_ase([cubic, cubic.repeat((2, 1, 1)), vacancy]),
        'initial_perturbation': orm.Dict({'count': args.initial_labels, 'rattle_std': 0.06, 'max_strain': 0.03,
                                          'seed': 1}),
        'exploration_structures': ConfigurationSet.from_ase([vacancy]),
        'test_set': ConfigurationSet.from_ase(test),
        'label': {'labeller': orm.Str('ase'),
                  'ase': {'code': codes['label'], 'calculator': orm.Dict({'name': 'emt'}),
                          'properties': orm.List(['energy', 'forces'])}},
        'train': {'num_members': orm.Int(2),
                  'train': {'code': codes['train'], 'e0s': orm.Str('average'),
                            'parameters': orm.Dict({**TINY_MACE, 'max_num_epochs': args.epochs}),
                            'metadata': {'options': OPTIONS}}},
        'explore': {'md': {'code': codes['md'], 'metadata': {'options': OPTIONS}},
                    'conditions': orm.List([{'ensemble': 'nvt_langevin', 'temperature': 600.0, 'steps': args.md_steps,
                                             'sample_interval': 5, 'timestep': 2.0, 'seed': 3}])},
        # Every counted frame is a candidate, so each iteration labels exactly labels_per_iteration frames.
        'selection': orm.Dict({'trust_lo': 1e-6, 'trust_hi': 50.0, 'labels_per_iteration': args.labels_per_iteration}),
        'warm_start': orm.Bool(True),
        'warm_start_parameters': orm.Dict({'max_num_epochs': max(1, args.epochs - 1)}),
        'target_accurate_fraction': orm.Float(1.0),
        'patience': orm.Int(3),
        'max_iterations': orm.Int(args.iterations),
        'max_labels': orm.Int(1000),
        'final_stage_two_steps': orm.Int(0),  # the final training as short as the loop's: faults, not energies
        'seed': orm.Int(0),
    }


def run_campaign(daemon: Daemon, codes: dict, args, points: list[str], name: str) -> tuple[int, list[dict], float]:
    """Submit one campaign, kill the worker at each of ``points`` (in order) and wait for it to end."""
    from aiida import orm
    from aiida.engine import submit

    from aiida_alml.workflows.active_learning import ActiveLearningWorkChain

    inputs = campaign_inputs(codes, args)
    inputs['metadata'] = {'label': f'fault injection: {name}'}
    node = submit(ActiveLearningWorkChain, **inputs)
    began = time.monotonic()
    pending = list(points)
    kills = []
    dead = set()  # process functions that were running inside a killed worker: they never end
    print(f'[{name}] campaign <{node.pk}> submitted; kill points: {", ".join(points) or "none"}', flush=True)
    while True:
        root = orm.QueryBuilder().append(orm.ProcessNode, filters={'id': node.pk},
                                         project=['attributes.process_state']).first()[0]
        if root in TERMINAL:
            break
        if time.monotonic() - began > args.timeout:
            print(f'[{name}] campaign <{node.pk}> did not end within {args.timeout} s: killing it', flush=True)
            daemon.verdi('process', 'kill', str(node.pk), '--timeout', '30', check=False)
            break
        if pending:
            snapshot = Snapshot(node.pk)
            point = POINTS[pending[0]]
            if point.reached(snapshot):
                if point.delay:
                    time.sleep(point.delay)
                    snapshot = Snapshot(node.pk)
                kill = {'point': pending.pop(0), 'stage': point.stage, 'where': point.where,
                        'at_s': round(time.monotonic() - began, 1), 'observed': snapshot.active_leaves(dead)}
                kill.update(daemon.kill_worker())
                dead.update(p.pk for p in snapshot.procs if p.active and p.kind in ('calcfunction', 'workfunction'))
                print(f'[{name}] SIGKILL at {kill["point"]} ({kill["at_s"]} s): active {kill["observed"]}; worker back '
                      f'after {kill["worker_back_s"]} s ({kill["restarted_by"]})', flush=True)
                kills.append(kill)
                continue
        time.sleep(POLL_INTERVAL)
    for point in pending:
        kills.append({'point': point, 'stage': POINTS[point].stage, 'where': POINTS[point].where, 'reached': False})
        print(f'[{name}] kill point {point} was never reached', flush=True)
    return node.pk, kills, time.monotonic() - began


# ---------------------------------------------------------------------- counting
def arrays_sha256(*arrays) -> str:
    """Hex SHA-256 of the bytes of ``arrays``, in order."""
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def frame_key(numbers, positions, cell) -> str:
    """Identity of a frame: its atoms, positions and cell (10 decimals, so a copy through npz/Atoms still matches;
    ``+ 0.0`` turns a rounded -0.0 into 0.0)."""
    positions = np.round(np.asarray(positions, dtype=np.float64), 10) + 0.0
    cell = np.round(np.asarray(cell, dtype=np.float64), 10) + 0.0
    return arrays_sha256(np.asarray(numbers, dtype=np.int64), positions, cell)[:16]


def set_keys(configuration_set) -> list[str]:
    conf = configuration_set.configurations
    return [frame_key(conf.numbers[conf.atom_slice(i)], conf.positions[conf.atom_slice(i)], conf.cells[i])
            for i in range(len(conf))]


def expected_frames(node, snapshot: Snapshot) -> dict[str, str]:
    """Frame key -> where it was chosen: the initial structures, and every chosen frame of the selection records."""
    from aiida import orm

    expected = {}
    for proc in snapshot.procs:
        if proc.path == 'label_initial':
            for key in set_keys(orm.load_node(proc.pk).inputs.structures):
                expected[key] = 'initial'
    if 'selection_records' in node.outputs:
        for name, record in node.outputs.selection_records.items():
            trajectories = record.base.attributes.get('trajectories')
            chosen = record.get_array('chosen')
            for index in np.flatnonzero(chosen):
                trajectory = orm.load_node(trajectories[str(int(record.get_array('trajectory_index')[index]))]['uuid'])
                frame = int(record.get_array('frame')[index])
                key = frame_key(_numbers(trajectory), trajectory.get_positions()[frame], trajectory.get_cells()[frame])
                expected[key] = name
    return expected


def _numbers(trajectory) -> np.ndarray:
    from ase.data import atomic_numbers

    return np.array([atomic_numbers[symbol] for symbol in trajectory.symbols], dtype=np.int64)


def count_campaign(pk: int, log: pathlib.Path, log_offset: int, settle: float) -> dict:
    """Labels lost and duplicated, duplicate submissions, job re-executions and orphans of campaign ``pk``."""
    from aiida import orm

    node = orm.load_node(pk)
    deadline = time.monotonic() + settle
    snapshot = Snapshot(pk)
    while any(p.active for p in snapshot.procs) and time.monotonic() < deadline:
        time.sleep(1.0)  # a duplicate child may still be running: give it the chance to end
        snapshot = Snapshot(pk)
    expected = expected_frames(node, snapshot)
    labelled = collections.Counter()  # frame key -> finished alml.ase jobs that labelled it
    for proc in snapshot.procs:
        if proc.process_label == 'AseLabelCalculation' and proc.state == 'finished':
            job = orm.load_node(proc.pk)
            if job.is_finished_ok and 'labelled' in job.outputs:
                inputs = set_keys(job.inputs.structures)
                labelled.update(inputs[meta['source_index']] for meta in job.outputs.labelled.configurations.metadata)
    in_dataset = collections.Counter(set_keys(node.outputs.dataset)) if 'dataset' in node.outputs else collections.Counter()

    # The same call link label twice under one parent: a step that ran twice and submitted its child twice. (A
    # calcfunction that ran in a killed worker is run again by the replayed step: counted as dead nodes instead.)
    paths = collections.Counter(p.path for p in snapshot.procs if p.kind != 'calcfunction' and not p.never_launched)
    double_paths = {path: count for path, count in paths.items() if count > 1}
    # A job stored but never launched (marked so by submit_once and replaced) never ran: listed apart, not a copy.
    jobs = [p for p in snapshot.procs if p.kind == 'calcjob' and not p.never_launched]
    by_hash = collections.Counter(orm.load_node(p.pk).base.caching.get_hash() for p in jobs)
    workdirs = {}  # remote working directory -> path of its CalcJob
    for proc in jobs:
        workdir = orm.load_node(proc.pk).get_remote_workdir()
        if workdir:
            workdirs[workdir] = proc.path
    starts = collections.Counter()
    with open(log, encoding='utf-8') as handle:
        handle.seek(log_offset)
        for line in handle:
            starts[line.rstrip('\n').rsplit(' ', 1)[0]] += 1
    return {
        'pk': pk,
        'process_state': node.process_state.value if node.process_state else None,
        'exit_status': node.exit_status,
        'exit_message': node.exit_message,
        'frames_chosen': len(expected),
        # lost: never labelled by a finished job / missing from the final dataset
        'lost_unlabelled': sum(labelled[key] == 0 for key in expected),
        'lost_from_dataset': sum(in_dataset[key] == 0 for key in expected),
        # duplicated: labelled by more than one finished job / more than once in the final dataset
        'duplicated_labelled': sum(labelled[key] > 1 for key in expected),
        'duplicated_in_dataset': sum(in_dataset[key] > 1 for key in expected),
        'dataset_frames_not_chosen': sum(key not in expected for key in in_dataset),
        'label_jobs': sum(p.process_label == 'AseLabelCalculation' for p in snapshot.procs),
        'jobs': len(jobs),
        'double_submissions': double_paths,
        'never_launched': [p.path for p in snapshot.procs if p.never_launched],
        'jobs_same_inputs': sum(count - 1 for count in by_hash.values()),
        'jobs_run_twice': {workdirs[w]: count for w, count in starts.items() if w in workdirs and count > 1},
        'jobs_never_started': sorted(path for w, path in workdirs.items() if starts[w] == 0),
        'orphan_jobs': [p.describe() for p in snapshot.procs if p.active and p.kind != 'calcfunction'],
        'orphan_calcfunctions': [p.describe() for p in snapshot.procs if p.active and p.kind == 'calcfunction'],
        'structure': output_structure(node),
    }


def output_structure(node) -> dict | None:
    """What must not depend on faults: output names, iterations, learning-curve keys, dataset size (+ numbers)."""
    from aiida.common.links import LinkType

    if 'learning_curve' not in node.outputs:
        return None
    curve = node.outputs.learning_curve.get_dict()
    returned = node.base.links.get_outgoing(link_type=LinkType.RETURN).all_link_labels()
    return {
        'outputs': sorted(returned),
        'iterations': len(curve['iterations']),
        'curve_keys': sorted(curve),
        'iteration_keys': sorted(set().union(*(entry.keys() for entry in curve['iterations']))),
        'dataset_size': len(node.outputs.dataset) if 'dataset' in node.outputs else None,
        # the numbers themselves (not compared for structure): equal when the fault changed nothing
        'dataset_hash': numbers_hash(node.outputs.dataset.configurations) if 'dataset' in node.outputs else None,
        'test_force_rmse': [entry.get('test_force_rmse') for entry in curve['iterations']]
        + [(curve.get('final_training') or {}).get('test_force_rmse')],
    }


def numbers_hash(configurations) -> str:
    """SHA-256 of what was labelled, in order: species, positions, cells, energies, forces. Not ``content_hash``,
    which also covers the metadata, and that names the labelling job (``labelled_by``), new in every campaign."""
    return arrays_sha256(configurations.numbers, configurations.positions, configurations.cells, configurations.energy,
                         configurations.forces)


def compare(structure: dict | None, reference: dict | None) -> tuple[bool | None, bool | None]:
    """(same structure, identical numbers) against the reference; None without a reference."""
    if reference is None or structure is None:
        return (None, None) if reference is None else (False, False)
    same = all(structure[key] == reference[key] for key in ('outputs', 'iterations', 'curve_keys', 'iteration_keys',
                                                            'dataset_size'))
    identical = same and all(structure[key] == reference[key] for key in ('dataset_hash', 'test_force_rmse'))
    return same, identical


# ---------------------------------------------------------------------- report
def lost(row: dict) -> int:
    return max(row['lost_unlabelled'], row['lost_from_dataset'])


def duplicated(row: dict) -> int:
    return max(row['duplicated_labelled'], row['duplicated_in_dataset'])


def doubled(row: dict) -> int:
    return sum(count - 1 for count in row['double_submissions'].values())


def table(rows: list[dict]) -> str:
    def mark(value):
        return '-' if value is None else ('yes' if value else '**no**')

    def kills(row):
        if not row['kills']:
            return 'none (reference)'
        return '; '.join(
            f'{k["point"]} → {", ".join(k["observed"]) or "(only the campaign itself)"}' if k.get('reached', True)
            else f'{k["point"]} → **not reached**' for k in row['kills'])

    lines = ['| campaign | kill point → what was running | worker back (s) | ended | labels lost | labels duplicated | '
             'submitted twice | jobs run twice | orphaned jobs/work chains | calcfunction nodes left running | same structure | '
             'identical numbers | wall (s) |',
             '|---|---|---|---|---|---|---|---|---|---|---|---|---|']
    for row in rows:
        back = ', '.join(str(k['worker_back_s']) for k in row['kills'] if 'worker_back_s' in k) or '-'
        ended = f'{row["process_state"]} [{row["exit_status"]}]'
        lines.append(
            f'| {row["name"]} | {kills(row)} | {back} | {ended if row["finished"] else f"**{ended}**"} | {lost(row)} | '
            f'{duplicated(row)} | {doubled(row)} | {sum(c - 1 for c in row["jobs_run_twice"].values())} | '
            f'{len(row["orphan_jobs"])} | {len(row["orphan_calcfunctions"])} | {mark(row["same_structure"])} | '
            f'{mark(row["identical_numbers"])} | {row["wall_s"]:.0f} |')
    disturbed = [row for row in rows if row['kills']]
    if disturbed:
        points = {k['point'] for row in disturbed for k in row['kills'] if k.get('reached', True)}
        lines += ['', (
            f'{sum(row["finished"] for row in disturbed)}/{len(disturbed)} disturbed campaigns ended as the reference; '
            f'{sum(len(row["kills"]) for row in disturbed)} kills at {len(points)} distinct points; labels lost '
            f'{sum(map(lost, disturbed))}, duplicated {sum(map(duplicated, disturbed))}; processes submitted twice '
            f'{sum(map(doubled, disturbed))}; jobs run twice '
            f'{sum(sum(c - 1 for c in r["jobs_run_twice"].values()) for r in disturbed)}; orphaned jobs '
            f'{sum(len(r["orphan_jobs"]) for r in disturbed)}; calcfunction nodes left running '
            f'{sum(len(r["orphan_calcfunctions"]) for r in disturbed)}.')]
    return '\n'.join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--points', nargs='*', default=list(POINTS), choices=list(POINTS),
                        help='kill points, in campaign order (default: all)')
    parser.add_argument('--group', type=int, default=1, help='kill points per campaign (default 1)')
    parser.add_argument('--no-reference', action='store_true', help='skip the undisturbed reference campaign')
    parser.add_argument('--iterations', type=int, default=2)
    parser.add_argument('--initial-labels', type=int, default=10)
    parser.add_argument('--labels-per-iteration', type=int, default=3)
    parser.add_argument('--epochs', type=int, default=3)
    parser.add_argument('--md-steps', type=int, default=40)
    parser.add_argument('--timeout', type=float, default=900.0, help='seconds before a campaign is given up')
    parser.add_argument('--settle', type=float, default=20.0,
                        help='seconds to wait after a campaign for its other processes to end')
    parser.add_argument('--keep', type=pathlib.Path, default=None,
                        help='use this folder as AIIDA_PATH and keep it (default: a temporary folder, removed)')
    parser.add_argument('--out', type=pathlib.Path, default=None, help='write every figure as JSON here')
    args = parser.parse_args(argv)
    if args.group < 1:
        parser.error('--group must be at least 1')
    order = list(POINTS)
    points = sorted(dict.fromkeys(args.points), key=order.index)
    campaigns = [('reference', [])] if not args.no_reference else []
    for start in range(0, len(points), args.group):
        chunk = points[start:start + args.group]
        campaigns.append(('+'.join(chunk), chunk))

    with tempfile.TemporaryDirectory(prefix='alml-faults-') as temporary:
        folder = args.keep or pathlib.Path(temporary)
        folder.mkdir(parents=True, exist_ok=True)
        daemon = make_profile(folder)
        try:
            codes, log = counted_codes(folder)
            rows, reference, reference_exit = [], None, None
            for name, chunk in campaigns:
                offset = log.stat().st_size
                pk, kills, wall = run_campaign(daemon, codes, args, chunk, name)
                row = {'name': name, 'kills': kills, 'wall_s': wall, **count_campaign(pk, log, offset, args.settle)}
                if name == 'reference':
                    reference = row['structure']
                    row['finished'] = row['process_state'] == 'finished'
                    reference_exit = row['exit_status']
                else:
                    row['finished'] = row['process_state'] == 'finished' and (
                        reference is None or row['exit_status'] == reference_exit)
                row['same_structure'], row['identical_numbers'] = compare(row['structure'], reference)
                print(f'[{name}] {json.dumps({k: v for k, v in row.items() if k not in ("structure", "kills")})}',
                      flush=True)
                rows.append(row)
            report = table(rows)
            print('\n' + report)
            if args.out:
                args.out.write_text(json.dumps({'settings': {**vars(args), 'out': str(args.out),
                                                             'keep': str(args.keep)},
                                                'campaigns': rows, 'table': report}, indent=1, default=str))
        finally:
            daemon.verdi('daemon', 'stop', check=False)
    return 0 if all(row['finished'] and not lost(row) and not duplicated(row) for row in rows) else 1


if __name__ == '__main__':
    sys.exit(main())
