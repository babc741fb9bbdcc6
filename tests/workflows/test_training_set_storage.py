"""Issue 26: a training set grown by merges stores each label once, and a merge's cost does not grow with it.

Counted, not timed: the repository bytes and attribute bytes each merge adds, and the arrays and metadata it reads.
"""

import json

import numpy as np
import pytest
from aiida import orm

from aiida_alml.atoms.configurations import Configurations
from aiida_alml.data import ConfigurationSet
from aiida_alml.label_settings import with_label_settings
from aiida_alml.workflows.functions import merge_training_sets

SETTINGS = {'calculator': {'class': 'ase.calculators.emt:EMT'}}


def _labels(count: int, seed: int, settings=SETTINGS) -> ConfigurationSet:
    """``count`` labelled 8-atom copper cells, as one labelling of the loop would return them (stored)."""
    from ase.build import bulk

    rng = np.random.default_rng(seed)
    cell = bulk('Cu', 'fcc', a=3.61, cubic=True).repeat((2, 1, 1))
    n = len(cell)
    metadata = [with_label_settings({'iteration': seed, 'labelled_by': f'calc-{seed}-{i}'}, settings)
                for i in range(count)]
    return ConfigurationSet(Configurations(
        numbers=np.tile(cell.numbers, count),
        positions=np.tile(cell.positions, (count, 1)) + rng.normal(0, 0.05, (count * n, 3)),
        n_atoms=np.full(count, n), cells=np.tile(cell.cell.array, (count, 1, 1)), pbc=np.ones((count, 3), bool),
        energy=rng.normal(-30, 1, count), forces=rng.normal(0, 0.5, (count * n, 3)), metadata=metadata,
    )).store()


def _repository_bytes(node) -> int:
    return sum(len(node.base.repository.get_object_content(name, mode='rb'))
               for name in node.base.repository.list_object_names())


def _attribute_bytes(node) -> int:
    return len(json.dumps(node.base.attributes.all, sort_keys=True))


@pytest.fixture
def reads(monkeypatch):
    """How often arrays (``Configurations.from_npz``) and metadata (``configuration_metadata``) are read."""
    counts = {'arrays': 0, 'metadata': 0}
    from_npz = Configurations.from_npz.__func__
    metadata = ConfigurationSet.configuration_metadata

    def counted_from_npz(cls, handle):
        counts['arrays'] += 1
        return from_npz(cls, handle)

    def counted_metadata(self):
        counts['metadata'] += 1
        return metadata(self)

    monkeypatch.setattr(Configurations, 'from_npz', classmethod(counted_from_npz))
    monkeypatch.setattr(ConfigurationSet, 'configuration_metadata', counted_metadata)
    return counts


def test_each_merge_stores_its_new_labels_only(reads):
    per_iteration, iterations = 5, 8
    parts = [_labels(per_iteration, seed) for seed in range(iterations + 1)]
    dataset = parts[0]
    added = []  # per merge: (repository bytes, attribute bytes) of the new training set
    for new in parts[1:]:
        reads.update(arrays=0, metadata=0)
        dataset = merge_training_sets(a_previous=orm.load_node(dataset.pk), b_new=orm.load_node(new.pk))
        assert reads == {'arrays': 0, 'metadata': 0}  # decided from attributes: nothing of the dataset is read
        added.append((_repository_bytes(dataset), _attribute_bytes(dataset)))

    assert all(repository == 0 for repository, _ in added)
    # The attributes list the parts (UUID, size, content hash): about 110 bytes more per iteration (a few more when a
    # count gains a digit), never a copy of the labels.
    growth = [later - earlier for (_, earlier), (_, later) in zip(added, added[1:])]
    assert max(growth) - min(growth) <= 8 and max(growth) < 200
    # Before, merge k wrote one npz of all k + 1 label sets: 44 label sets' worth over these 8 merges.
    one_label_set = _repository_bytes(parts[1])
    assert added[-1][1] < one_label_set * (iterations + 1) / 50
    assert sum(attributes for _, attributes in added) < one_label_set * sum(range(2, iterations + 2)) / 40

    # The final training set is the flat concatenation, exactly.
    final = orm.load_node(dataset.pk)
    flat = Configurations.concatenate([part.configurations for part in parts])
    assert final.parts == [part.uuid for part in parts]
    for name in ('numbers', 'positions', 'n_atoms', 'cells', 'pbc', 'energy', 'forces'):
        assert getattr(final.configurations, name).tobytes() == getattr(flat, name).tobytes(), name
    assert final.configurations.stress is None
    assert final.configurations.metadata == flat.metadata
    assert len(final) == len(flat) == per_iteration * (iterations + 1)
    assert final.elements == ['Cu'] and final.labels == ['energy', 'forces'] and final.total_atoms == flat.total_atoms
    assert final.label_fingerprints == sorted({meta['label_fingerprint'] for meta in flat.metadata})
    assert final.flat_content_hash() == flat.content_hash()


def test_what_a_merge_adds_does_not_depend_on_the_labels_it_holds():
    """Two campaigns, one with four times the labels per iteration: their merges add the same bytes."""
    added = {}
    for per_iteration in (2, 8):
        dataset = _labels(per_iteration, 0)
        added[per_iteration] = []
        for seed in range(1, 5):
            dataset = merge_training_sets(a_previous=dataset, b_new=_labels(per_iteration, seed))
            added[per_iteration].append(_repository_bytes(dataset) + _attribute_bytes(dataset))
    # equal but for the digits of the counts (num_configurations, total_atoms, part sizes)
    assert all(abs(small - large) <= 16 for small, large in zip(added[2], added[8]))


def test_merges_refuse_mismatched_labels_and_read_metadata_only_then(reads):
    emt = merge_training_sets(a_previous=_labels(2, 0), b_new=_labels(2, 1))
    lj = _labels(2, 2, settings={'calculator': {'class': 'ase.calculators.lj:LennardJones'}})
    reads.update(arrays=0, metadata=0)
    with pytest.raises(ValueError, match=r'refusing to merge a_previous and b_new: .*calculator.class='):
        merge_training_sets(a_previous=emt, b_new=lj)
    assert reads['arrays'] == 0 and reads['metadata'] == 2  # the message names configurations: metadata, no arrays

    # A fingerprint that does not match its settings (metadata made by hand): the attributes cannot decide, the
    # metadata is read and the settings compared.
    forged = [{**meta, 'label_fingerprint': emt.label_fingerprints[0]} for meta in lj.configurations.metadata]
    forged = ConfigurationSet(lj.configurations.replace(metadata=forged)).store()
    assert 'unrecorded_label_settings' not in forged.base.attributes.all
    with pytest.raises(ValueError, match=r'calculator.class='):
        merge_training_sets(a_previous=emt, b_new=forged)

    unknown = ConfigurationSet.from_ase(orm.load_node(lj.pk).to_ase(), metadata=[{}, {}]).store()
    with pytest.raises(ValueError, match='has no recorded label settings'):
        merge_training_sets(a_previous=emt, b_new=unknown)
    both_unknown = merge_training_sets(a=unknown, b=ConfigurationSet.from_ase(unknown.to_ase(), metadata=[{}, {}]))
    assert len(both_unknown) == 4 and both_unknown.base.attributes.get('unrecorded_label_settings') == 4


def test_an_archive_of_the_training_set_carries_its_parts(tmp_path):
    from aiida.tools.archive import create_archive
    from aiida.tools.graph.graph_traversers import get_nodes_export

    parts = [_labels(2, seed) for seed in range(3)]
    dataset = merge_training_sets(a_initial=parts[0], b_labelled=parts[1])
    dataset = merge_training_sets(a_previous=dataset, b_new=parts[2])
    exported = get_nodes_export([dataset.pk])['nodes']
    assert {part.pk for part in parts} <= exported  # the default export rules follow create/input links back

    path = create_archive([dataset], filename=tmp_path / 'training.aiida')
    # Read the archive on its own (as a read-only profile): the training set loads from what it holds.
    from aiida.storage.sqlite_zip.backend import SqliteZipBackend

    archive = SqliteZipBackend(SqliteZipBackend.create_profile(path))
    try:
        query = orm.QueryBuilder(backend=archive).append(ConfigurationSet, filters={'uuid': dataset.uuid})
        in_archive = query.one()[0]
        assert in_archive.backend is archive and in_archive.parts == dataset.parts
        assert in_archive.configurations.content_hash() == dataset.flat_content_hash()
    finally:
        archive.close()


def test_labelling_calculations_of_a_composed_training_set_are_exact():
    """The provenance queries find the labelling jobs behind each part, and count the configurations of each."""
    from aiida.common.links import LinkType

    from aiida_alml.provenance import labelling_calculations

    def labelled_by_a_job(count, seed):
        calc = orm.CalcJobNode(process_type='aiida.calculations:alml.ase')
        calc.set_process_state('finished')
        calc.set_exit_status(0)
        calc.store()
        labels = _labels(count, seed)  # stored, so relabel through a fresh node that the job creates
        metadata = [{**meta, 'labelled_by': calc.uuid} for meta in labels.configurations.metadata]
        node = ConfigurationSet(labels.configurations.replace(metadata=metadata))
        node.base.links.add_incoming(calc, LinkType.CREATE, 'labelled')
        return calc, node.store()

    jobs = [labelled_by_a_job(count, seed) for seed, count in enumerate((3, 1, 2))]
    dataset = jobs[0][1]
    for _, labels in jobs[1:]:
        dataset = merge_training_sets(a_previous=dataset, b_new=labels)
    found = labelling_calculations(orm.load_node(dataset.pk))
    assert [(entry['uuid'], entry['num_configurations']) for entry in found] == [
        (calc.uuid, len(labels)) for calc, labels in jobs]


def _dry_run_folder(inputs):
    import pathlib

    from aiida.engine import run_get_node

    from aiida_alml.calculations.mace_train import MaceTrainCalculation

    inputs = {**inputs, 'metadata': {**inputs['metadata'], 'dry_run': True, 'store_provenance': False}}
    _, node = run_get_node(MaceTrainCalculation, **inputs)
    return pathlib.Path(node.dry_run_info['folder'])


def _composed_copy(flat: ConfigurationSet, cuts=(7, 15)) -> ConfigurationSet:
    """``flat`` as the loop would hold it: label sets merged one after the other."""
    configurations = flat.configurations
    bounds = [0, *cuts, len(flat)]
    parts = [ConfigurationSet(configurations.select(range(start, stop))).store()
             for start, stop in zip(bounds, bounds[1:])]
    dataset = merge_training_sets(a_initial=parts[0], b_labelled=parts[1])
    for part in parts[2:]:
        dataset = merge_training_sets(a_previous=dataset, b_new=part)
    assert dataset.is_composed and len(dataset.parts) == len(parts)
    return dataset


def test_mace_gets_the_same_training_file_from_a_composed_set(tiny_mace_inputs, cu_training_set, tmp_path,
                                                             monkeypatch):
    """The isolated atom (in the last part) still gives the E0s and is left out of train.xyz: the job is the same."""
    monkeypatch.chdir(tmp_path)  # a dry run writes its folder under the working directory
    composed = _composed_copy(cu_training_set)
    flat_folder = _dry_run_folder(tiny_mace_inputs())
    composed_folder = _dry_run_folder({**tiny_mace_inputs(), 'training_set': composed})
    for name in ('train.xyz', '_aiidasubmit.sh'):
        assert (composed_folder / name).read_bytes() == (flat_folder / name).read_bytes(), name
    assert "'--E0s' '{29:" in (composed_folder / '_aiidasubmit.sh').read_text()


def test_a_composed_training_set_trains_a_model(tiny_mace_inputs, cu_training_set):
    """Both routes train: the daemon writes train.xyz (E0s from the set's isolated atom), or alml-train writes it
    from the parts (the same E0s given as numbers). Same file, same command line otherwise: the same training."""
    from aiida.engine import run_get_node

    from aiida_alml.calculations.mace_train import STDOUT_FILE, MaceTrainCalculation

    composed = _composed_copy(cu_training_set, cuts=(10,))
    runs = {}
    for route, extra in (('daemon', {}), ('parts', {'e0s': _e0s_of(cu_training_set)})):
        _, node = run_get_node(MaceTrainCalculation, **{**tiny_mace_inputs(), 'training_set': composed, **extra})
        assert node.is_finished_ok, node.exit_message
        assert node.inputs.training_set.uuid == composed.uuid and 'model' in node.outputs
        runs[route] = node
    stdout = runs['parts'].outputs.retrieved.base.repository.get_object_content(STDOUT_FILE, mode='r')
    assert 'alml-train: assembled train.xyz from 2 parts, 20 configurations (1 isolated atoms left out)' in stdout
    assert 'train.xyz' not in runs['parts'].base.repository.list_object_names()  # not stored in the job's node
    assert 'train.xyz' in runs['daemon'].base.repository.list_object_names()
    daemon, parts = (runs[route].outputs.metrics.get_dict() for route in ('daemon', 'parts'))
    assert parts == daemon, (parts, daemon)

def _e0s_of(training_set) -> orm.Dict:
    """The E0s of the set's isolated atoms, given as numbers (what the active-learning loop passes to training)."""
    from aiida_alml.calculations.mace_train import isolated_atom_energies

    return orm.Dict(isolated_atom_energies(training_set.configurations))


def test_with_e0s_given_the_job_gets_the_parts_and_alml_train_writes_the_same_file(
        tiny_mace_inputs, cu_training_set, tmp_path, monkeypatch, reads):
    """A composed set with E0s as numbers: the daemon reads none of its arrays, the job folder holds the parts and
    the plan instead of train.xyz, and alml-train's train.xyz is byte for byte the daemon's."""
    from aiida_alml.engines.train import assemble_train_file

    monkeypatch.chdir(tmp_path)  # a dry run writes its folder under the working directory
    e0s = _e0s_of(cu_training_set)
    composed = _composed_copy(cu_training_set)  # the isolated atom is in the last part
    assert composed.isolated_atoms == 1 and len(composed) == 21
    flat_folder = _dry_run_folder({**tiny_mace_inputs(), 'e0s': e0s})

    reads.update(arrays=0, metadata=0)
    composed_folder = _dry_run_folder({**tiny_mace_inputs(), 'training_set': orm.load_node(composed.pk), 'e0s': e0s})
    assert reads == {'arrays': 0, 'metadata': 0}  # validation and preparation: attributes only

    names = sorted(path.name for path in composed_folder.iterdir())
    assert 'train.xyz' not in names
    assert [name for name in names if name.endswith('.npz')] == [f'train_part_{i:05d}.npz' for i in range(3)]
    plan = json.loads((composed_folder / 'train_parts.json').read_text())
    assert [(part['file'], part['num_configurations']) for part in plan['parts']] == [
        (f'train_part_{i:05d}.npz', size) for i, size in enumerate((7, 8, 6))]
    for index, uuid in enumerate(composed.parts):  # each file is the part's stored npz, as it is
        stored = orm.load_node(uuid).base.repository.get_object_content('configurations.npz', mode='rb')
        assert (composed_folder / f'train_part_{index:05d}.npz').read_bytes() == stored
    # The route is on the command line, and it is the only difference from the flat set's job.
    script = (composed_folder / '_aiidasubmit.sh').read_text()
    assert "'--alml_train_parts' 'train_parts.json' " in script
    flat_script = (flat_folder / '_aiidasubmit.sh').read_text()
    assert script.replace("'--alml_train_parts' 'train_parts.json' ", '') == flat_script

    monkeypatch.chdir(composed_folder)  # alml-train runs in the job folder and reads plain names only
    message = assemble_train_file('train_parts.json', 'train.xyz')
    assert message == 'alml-train: assembled train.xyz from 3 parts, 20 configurations (1 isolated atoms left out)'
    assert (composed_folder / 'train.xyz').read_bytes() == (flat_folder / 'train.xyz').read_bytes()


def test_alml_train_refuses_a_wrong_plan(tiny_mace_inputs, cu_training_set, tmp_path, monkeypatch, capsys):
    """Only plain file names of the job folder, each holding what the plan records; the refusal names the problem."""
    from aiida_alml.engines.train import EXIT_BAD_ARGUMENTS, EXIT_BAD_PARTS, REFUSED, main

    monkeypatch.chdir(tmp_path)
    folder = _dry_run_folder({**tiny_mace_inputs(), 'training_set': _composed_copy(cu_training_set),
                              'e0s': _e0s_of(cu_training_set)})
    monkeypatch.chdir(folder)
    plan = json.loads((folder / 'train_parts.json').read_text())
    argv = ['--alml_train_parts', 'plan.json', '--name', 'mace', '--train_file', 'train.xyz', '--work_dir', '.']

    def refusal(parts=None, arguments=argv, **changes):
        (folder / 'plan.json').write_text(json.dumps({**plan, 'parts': plan['parts'] if parts is None else parts,
                                                      **changes}))
        code = main(list(arguments))
        assert not (folder / 'train.xyz').exists()
        error = capsys.readouterr().err
        assert error.startswith(REFUSED), error
        return code, error

    first = plan['parts'][0]
    (tmp_path / 'outside.npz').write_bytes((folder / first['file']).read_bytes())
    for name in ('../outside.npz', f'{folder}/{first["file"]}', '..', ''):
        code, error = refusal([{**first, 'file': name}])
        assert code == EXIT_BAD_PARTS and 'must be a plain file name in the job folder' in error, error
    (folder / 'link.npz').symlink_to(tmp_path / 'outside.npz')
    assert 'leads outside the job folder' in refusal([{**first, 'file': 'link.npz'}])[1]
    assert "'missing.npz' is not a file in the job folder" in refusal([{**first, 'file': 'missing.npz'}])[1]
    changed = refusal([{**first, 'file': plan['parts'][1]['file']}])[1]  # another part: not the recorded content
    assert 'holds 8 configurations with content' in changed and 'the plan records 7' in changed
    assert 'is not a plan of format' in refusal(format='something else')[1]
    assert 'is not a plan of format' in refusal(parts=[])[1]
    assert 'part 0 must be' in refusal([{**first, 'extra': 1}])[1]
    assert 'must be a plain file name' in refusal(arguments=['--alml_train_parts', '../plan.json', *argv[2:]])[1]
    code, error = refusal(arguments=[*argv, '--alml_train_parts', 'plan.json'])
    assert code == EXIT_BAD_ARGUMENTS and '--alml_train_parts is given 2 times' in error
    (folder / 'train.xyz').write_text('planted')
    code = main(argv)
    assert code == EXIT_BAD_PARTS and "'train.xyz' exists already" in capsys.readouterr().err


def test_the_batch_check_counts_from_attributes_and_loads_sets_that_predate_them(tiny_mace_inputs, cu_training_set,
                                                                                  reads):
    """``isolated_atoms`` (summed over the parts of a composed set) gives the training count without the arrays; a
    set stored without it is loaded, as before, and gets the same answer."""
    from aiida.engine import run_get_node

    from aiida_alml.calculations.mace_train import MaceTrainCalculation

    composed = _composed_copy(cu_training_set)
    assert [orm.load_node(uuid).isolated_atoms for uuid in composed.parts] == [0, 0, 1]
    old = ConfigurationSet(cu_training_set.configurations)
    old.base.attributes.delete('isolated_atoms')  # as stored before the attribute existed
    old.store()
    assert old.isolated_atoms is None
    assert ConfigurationSet.compose([composed, old]).isolated_atoms is None  # not known for all parts: not summed

    e0s = _e0s_of(cu_training_set)
    for training_set, arrays in ((composed, 0), (old, 1)):
        reads.update(arrays=0, metadata=0)
        # 21 configurations, one isolated atom, 20 % of the other 20 split off: 16 are trained on.
        with pytest.raises(ValueError, match=r'training_set: 16 configurations .* batch_size is 17'):
            run_get_node(MaceTrainCalculation, **{**tiny_mace_inputs(batch_size=17), 'training_set':
                                                  orm.load_node(training_set.pk), 'e0s': e0s})
        assert reads['arrays'] == arrays, training_set
