"""``alml.label``: FHI-aims (MOCK executable), ASE (batched alml.ase) and shell (a real tiny EMT program) paths."""

import sys

import numpy as np
import pytest
from aiida import orm
from aiida.engine import run_get_node
from helpers.aims import DATA, aims_inputs, mock_aims_code, water

from aiida_alml.data.configurations import ConfigurationSet
from aiida_alml.label_settings import inconsistent_settings, labels_mismatch, with_label_settings
from aiida_alml.workflows.functions import merge_labelled
from aiida_alml.workflows.label import LabelWorkChain
from aiida_alml.workflows.labellers.shell import allow_labeller


def _aims_namespace(code):
    inputs = aims_inputs(code, None)
    inputs.pop('structure')
    return {'aims': inputs}


def test_aims_path_throttled_with_a_tolerated_failure(aiida_code_installed):
    from ase import Atoms

    # Config 2 (ozone) has no recorded output: the mock fails it. 1 of 3 failed is within max_failed_fraction 0.4.
    images = [water(), water(stretch=0.5), Atoms('O3', positions=[(0, 0, 0), (1.2, 0, 0), (2.4, 0.5, 0)])]
    images[0].info['tag'] = 'first'
    structures = ConfigurationSet.from_ase(images)
    results, node = run_get_node(
        LabelWorkChain, structures=structures, labeller=orm.Str('aims'), max_concurrent=orm.Int(2),
        max_failed_fraction=orm.Float(0.4), aims=_aims_namespace(mock_aims_code(aiida_code_installed)),
    )
    assert node.is_finished_ok, node.exit_message
    labelled = results['labelled']
    metadata = labelled.configurations.metadata
    assert [meta['input_index'] for meta in metadata] == [0, 1]
    assert metadata[0]['tag'] == 'first'  # the input configuration's metadata is kept
    calcs = {calc.uuid: calc for calc in orm.QueryBuilder().append(orm.CalcJobNode).all(flat=True)}
    assert calcs[metadata[1]['source_calc_uuid']].inputs.parameters['charge_mix_param'] == 0.025
    assert set(results['failures'].get_dict()) == {'2'}
    # Throttle: the third work chain was created after the first two finished.
    children = sorted(node.called, key=lambda n: n.ctime)[:3]
    assert children[2].ctime > max(children[0].mtime, children[1].ctime)
    # Provenance: the merged set was made by a calcfunction whose inputs are the per-calculation labelled sets.
    merge = labelled.creator
    assert {link.node.creator.uuid for link in merge.base.links.get_incoming().all() if link.link_label.startswith('set_')} \
        == {meta['source_calc_uuid'] for meta in metadata}


def test_aims_path_fails_above_the_failed_fraction(aiida_code_installed):
    from ase import Atoms

    # 1 of 2 failed > the default 5 %: the work chain fails, but what succeeded is still attached.
    structures = ConfigurationSet.from_ase([water(), Atoms('O3', positions=[(0, 0, 0), (1.2, 0, 0), (2.4, 0.5, 0)])])
    results, node = run_get_node(
        LabelWorkChain, structures=structures, labeller=orm.Str('aims'),
        aims=_aims_namespace(mock_aims_code(aiida_code_installed)),
    )
    assert node.exit_status == LabelWorkChain.exit_codes.ERROR_TOO_MANY_FAILURES.status
    # the job's own failure, not its AimsBaseWorkChain's "unhandled failure" (402): the base work chain gave up on it
    failure = results['failures']['1']
    assert failure['process_label'] == 'AimsCalculation' and failure['exit_status'] == 301, failure
    assert [meta['input_index'] for meta in results['labelled'].configurations.metadata] == [0]


def test_shell_path_with_a_real_program(aiida_localhost, cu_images):
    from aiida_shell import ShellCode
    from ase.calculators.emt import EMT

    # The program is a real executable (python running data/aims/emt_program.py); it also writes to stderr.
    code = ShellCode(label='emt-program', computer=aiida_localhost, filepath_executable=sys.executable,
                     default_calc_job_plugin='core.shell').store()
    allow_labeller(code)
    structures = ConfigurationSet.from_ase(cu_images[:2])
    results, node = run_get_node(
        LabelWorkChain, structures=structures, labeller=orm.Str('shell'),
        shell={'code': code, 'arguments': orm.List([str(DATA / 'emt_program.py'), '{geometry}', 'labels.xyz']),
               'output_filename': orm.Str('labels.xyz')},
    )
    assert node.is_finished_ok, node.exit_message
    labelled = results['labelled']
    for index, atoms in enumerate(cu_images[:2]):
        atoms = atoms.copy()
        atoms.calc = EMT()
        assert labelled.get_atoms(index).calc.results['energy'] == pytest.approx(atoms.get_potential_energy())
        np.testing.assert_allclose(labelled.get_atoms(index).get_forces(), atoms.get_forces(), atol=1e-6)
        source = orm.load_node(labelled.configurations.metadata[index]['source_calc_uuid'])
        assert source.process_label.startswith('ShellJob') and source.is_finished_ok
    settings = labelled.configurations.metadata[0]['label_settings']
    assert settings['code'] == code.full_label and settings['plugin'] == 'core.shell'
    assert settings['arguments'] == [str(DATA / 'emt_program.py'), '{geometry}', 'labels.xyz']
    assert len(labelled.label_fingerprints) == 1


def test_ase_path_one_batched_job(label_code, cu_images):
    structures = ConfigurationSet.from_ase(cu_images[:3])
    results, node = run_get_node(
        LabelWorkChain, structures=structures, labeller=orm.Str('ase'),
        ase={'code': label_code, 'calculator': orm.Dict({'name': 'emt', 'kwargs': {}})},
    )
    assert node.is_finished_ok, node.exit_message
    assert [child.process_label for child in node.called
            if child.process_label not in ('merge_labelled', 'record_failures')] == ['AseBaseWorkChain']
    assert [child.process_label for child in node.called_descendants if isinstance(child, orm.CalcJobNode)] \
        == ['AseLabelCalculation']
    metadata = results['labelled'].configurations.metadata
    assert [meta['input_index'] for meta in metadata] == [0, 1, 2]
    assert len({meta['source_calc_uuid'] for meta in metadata}) == 1


def test_bad_label_inputs_refused(aiida_localhost):
    structures = ConfigurationSet.from_ase([water()])
    with pytest.raises(ValueError, match="labeller: 'vasp' is not one of"):
        run_get_node(LabelWorkChain, structures=structures, labeller=orm.Str('vasp'))
    code = orm.InstalledCode(computer=aiida_localhost, filepath_executable='/bin/true').store()
    allow_labeller(code)
    with pytest.raises(ValueError, match=r'shell.arguments: none contains the placeholder \{geometry\}'):
        run_get_node(LabelWorkChain, structures=structures, labeller=orm.Str('shell'),
                     shell={'code': code, 'arguments': orm.List(['in.xyz']), 'output_filename': orm.Str('o.xyz')})


def _shell(code, **changes):
    """Shell-labeller inputs, with ``changes`` given as plain values (made into nodes here, not at collection)."""
    node_types = {str: orm.Str, list: orm.List, dict: orm.Dict, int: orm.Int}
    inputs = {'code': code, 'arguments': ['{geometry}'], 'output_filename': 'labels.xyz', **changes}
    return {key: value if key == 'code' else node_types[type(value)](value) for key, value in inputs.items()}


@pytest.mark.parametrize(('changes', 'message'), [
    ({'geometry_filename': ('../../../../tmp/x')}, r"shell.geometry_filename: '\.\./\.\./\.\./\.\./tmp/x' is not a "
                                                           r'plain file name'),
    ({'geometry_filename': ('/etc/passwd')}, r'shell.geometry_filename: .* not a plain file name'),
    ({'output_filename': ('../../../../etc/hostname')}, r'shell.output_filename: .* not a plain file name'),
    ({'output_filename': ('..')}, r'shell.output_filename: .* not a plain file name'),
    ({'arguments': ([1, '{geometry}'])}, r'shell.arguments\[0\]: 1 is not a string'),
    ({'arguments': (['{geometry}', '{model}'])}, r'shell.arguments\[1\]: unknown placeholder \{model\}'),
    ({'arguments': (['{geometry'])}, r'shell.arguments\[0\]: .*expected'),
    ({'arguments': (['{geometry}', 'a\nb'])}, r'shell.arguments\[1\]: .*control character'),
    ({'geometry_format': ('nosuchformat')}, r"shell.geometry_format: 'nosuchformat' is not a format ASE can "
                                                   r'write'),
    ({'output_format': ('nosuchformat')}, r"shell.output_format: 'nosuchformat' is not a format ASE can read"),
    ({'output_filename': ('labels')}, r'shell.output_format: not given, and ASE cannot tell the format'),
    ({'options': ({'queue_name': 'debug\ntouch /tmp/x'})}, r'shell.options.queue_name: .* not a plain '
                                                                   r'scheduler name'),
])
def test_shell_labeller_refuses_files_outside_the_job_and_unknown_placeholders(aiida_localhost, changes, message):
    from aiida_shell import ShellCode

    code = ShellCode(label='ref-program', computer=aiida_localhost, filepath_executable='/bin/true',
                     default_calc_job_plugin='core.shell').store()
    allow_labeller(code)
    before = orm.QueryBuilder().append(orm.ProcessNode).count()
    with pytest.raises(ValueError, match=message):
        run_get_node(LabelWorkChain, structures=ConfigurationSet.from_ase([water()]), labeller=orm.Str('shell'),
                     shell=_shell(code, **changes))
    assert orm.QueryBuilder().append(orm.ProcessNode).count() == before


def test_shell_labeller_runs_only_codes_declared_reference_programs(aiida_localhost, label_code):
    """Not declared: refused; the project's own programs and other plugins' codes: refused even when declared."""
    from aiida_shell import ShellCode

    from aiida_alml.workflows.labellers.shell import LABELLER_EXTRA

    structures = ConfigurationSet.from_ase([water()])
    plain = ShellCode(label='undeclared', computer=aiida_localhost, filepath_executable='/bin/true',
                      default_calc_job_plugin='core.shell').store()
    with pytest.raises(ValueError, match=r'shell.code: undeclared@localhost is not declared a reference program: .*'
                                         r'aiida-alml allow-labeller undeclared@localhost'):
        run_get_node(LabelWorkChain, structures=structures, labeller=orm.Str('shell'), shell=_shell(plain))
    # The attack of issue 22: alml-train as the "reference program", with arguments that load any model file.
    train = ShellCode(label='train-as-shell', computer=aiida_localhost, filepath_executable='/venv/bin/alml-train',
                      default_calc_job_plugin='core.shell').store()
    with pytest.raises(ValueError, match=r'runs alml-train, one of aiida-alml\'s own programs'):
        allow_labeller(train)
    train.base.extras.set(LABELLER_EXTRA, True)  # set by hand (or by an imported archive): still refused
    with pytest.raises(ValueError, match=r'shell.code: train-as-shell@localhost runs alml-train'):
        run_get_node(LabelWorkChain, structures=structures, labeller=orm.Str('shell'), shell=_shell(train))
    label_code.base.extras.set(LABELLER_EXTRA, True)
    with pytest.raises(ValueError, match=r"shell.code: .* is a code for 'alml.ase', not a reference program"):
        run_get_node(LabelWorkChain, structures=structures, labeller=orm.Str('shell'), shell=_shell(label_code))


def test_label_namespace_refuses_unknown_keys_and_unused_blocks(aiida_localhost, label_code):
    structures = ConfigurationSet.from_ase([water()])
    ase = {'code': label_code, 'calculator': orm.Dict({'name': 'emt'})}
    # alml.active_learning exposes these inputs as `label`, a namespace AiiDA marks dynamic: it would take any key.
    from aiida_alml.workflows.active_learning import ActiveLearningWorkChain

    namespace = ActiveLearningWorkChain.spec().inputs['label']
    error = namespace.validate(namespace.pre_process({'labeller': orm.Str('ase'), 'ase': ase, 'asee': {'x': orm.Int(1)}}))
    assert error is not None and 'asee: unknown input (did you mean ase' in error.message
    assert namespace.validate(namespace.pre_process({'labeller': orm.Str('ase'), 'ase': ase})) is None
    with pytest.raises(ValueError, match=r"shell: settings for labeller 'shell', but labeller is 'ase'"):
        run_get_node(LabelWorkChain, structures=structures, labeller=orm.Str('ase'), ase=ase,
                     shell={'output_filename': orm.Str('x.xyz')})
    with pytest.raises(ValueError, match=r"ase.calculator: calculator 'lj' does not take kwargs \['sigmaa'\] "
                                         r'\(did you mean sigma'):
        run_get_node(LabelWorkChain, structures=structures, labeller=orm.Str('ase'),
                     ase={'code': label_code, 'calculator': orm.Dict({'name': 'lj', 'kwargs': {'sigmaa': 2}})})


def _labelled(settings, element_hashes=None):
    from ase.calculators.singlepoint import SinglePointCalculator

    atoms = water()
    atoms.calc = SinglePointCalculator(atoms, energy=-1.0, forces=np.zeros((3, 3)))
    settings = dict(settings, species_hashes=element_hashes or {'08_O_default': 'aa', '01_H_default': 'bb'})
    return ConfigurationSet.from_ase([atoms], metadata=[with_label_settings({}, settings)]).store()


BASE = {'xc': 'pbe', 'relativistic': 'atomic_zora scalar', 'occupation_type': 'gaussian 0.01', 'spin': 'none'}


@pytest.mark.parametrize(
    'other, hashes, message',
    [
        (dict(BASE, xc='pw-lda'), None, "xc='pw-lda'"),
        (dict(BASE, relativistic='none'), None, "relativistic='none'"),
        (dict(BASE, occupation_type='gaussian 0.1'), None, 'occupation_type'),
        (BASE, {'08_O_default': 'cc'}, 'different species file 08_O_default'),
    ],
)
def test_inconsistent_settings_are_not_merged(other, hashes, message):
    first, second = _labelled(BASE), _labelled(other, hashes)
    metadata = [first.configurations.metadata[0], second.configurations.metadata[0]]
    assert message in inconsistent_settings(metadata)
    structures = ConfigurationSet.from_ase([water(), water()])
    with pytest.raises(ValueError, match='inconsistent settings'):
        merge_labelled(structures, orm.List([[0], [1]]), set_0=first, set_1=second)


def test_consistent_settings_merge_and_other_elements_are_fine():
    first = _labelled(BASE)
    second = _labelled(BASE, {'08_O_default': 'aa', '29_Cu_default': 'dd'})
    assert inconsistent_settings([first.configurations.metadata[0], second.configurations.metadata[0]]) is None


# ---------------------------------------------------------------------- labels stay comparable
def _ase_labels(label_code, images, name='emt', kwargs=None):
    results, node = run_get_node(
        LabelWorkChain, structures=ConfigurationSet.from_ase(images), labeller=orm.Str('ase'),
        ase={'code': label_code, 'calculator': orm.Dict({'name': name, 'kwargs': kwargs or {}})},
    )
    assert node.is_finished_ok, node.exit_message
    return results['labelled']


def test_ase_labels_record_their_settings_and_a_mismatch_names_the_calculator(label_code, cu_images):
    emt = _ase_labels(label_code, cu_images[:2])
    settings = emt.configurations.metadata[0]['label_settings']
    assert settings['calculator'] == {'class': 'ase.calculators.emt:EMT', 'kwargs': {}}
    assert settings['code'] == label_code.full_label and settings['properties'] == ['energy', 'forces']
    assert len(emt.label_fingerprints) == 1
    # The same calculator under another spelling of its name: the same settings, the same fingerprint, mergeable.
    same = _ase_labels(label_code, cu_images[2:3], name='EMT')
    assert same.label_fingerprints == emt.label_fingerprints
    assert labels_mismatch(emt.configurations.metadata, same.configurations.metadata) is None
    # Lennard-Jones labels are not EMT labels.
    lj = _ase_labels(label_code, cu_images[2:3], name='lj', kwargs={'sigma': 2.3, 'epsilon': 0.4})
    problem = labels_mismatch(emt.configurations.metadata, lj.configurations.metadata)
    assert problem == (
        "configuration 0 of the second set was labelled with calculator.class='ase.calculators.lj:LennardJones' but "
        "configuration 0 of the first set with calculator.class='ase.calculators.emt:EMT'"
    )
    # Fingerprints are queryable attributes.
    hits = orm.QueryBuilder().append(
        ConfigurationSet, filters={'attributes.label_fingerprints': {'contains': emt.label_fingerprints}},
        project='id').all(flat=True)
    assert emt.pk in hits and same.pk in hits and lj.pk not in hits


def test_ase_relabelling_replaces_the_recorded_settings(label_code, cu_images):
    emt = _ase_labels(label_code, cu_images[:1])
    lj = _ase_labels(label_code, emt.to_ase(), name='lj')
    assert lj.configurations.metadata[0]['label_settings']['calculator']['class'].endswith(':LennardJones')


def _species_with_other_oxygen():
    folder = orm.FolderData()
    for path in sorted((DATA / 'species').iterdir()):
        content = path.read_bytes()
        if path.name == '08_O_default':
            content = content.replace(b'mass                15.9994', b'mass                16.0000')
        folder.base.repository.put_object_from_bytes(content, path.name)
    return folder.store()


def test_aims_species_file_contents_decide(aiida_code_installed):
    code = mock_aims_code(aiida_code_installed)
    structures = ConfigurationSet.from_ase([water()])
    first, node = run_get_node(LabelWorkChain, structures=structures, labeller=orm.Str('aims'),
                               aims=_aims_namespace(code))
    assert node.is_finished_ok, node.exit_message
    namespace = _aims_namespace(code)
    namespace['aims']['species'] = _species_with_other_oxygen()
    second, node = run_get_node(LabelWorkChain, structures=structures, labeller=orm.Str('aims'), aims=namespace)
    assert node.is_finished_ok, node.exit_message
    problem = labels_mismatch(first['labelled'].configurations.metadata, second['labelled'].configurations.metadata)
    assert problem.startswith('configuration 0 of the second set used a different species file 08_O_default than '
                              'configuration 0 of the first set')
    assert first['labelled'].label_fingerprints != second['labelled'].label_fingerprints


def test_scf_restarts_keep_labels_comparable(aiida_code_installed):
    # The stretched water needs a smaller charge_mix_param (a restart); its settings stay those of the other.
    structures = ConfigurationSet.from_ase([water(), water(stretch=0.5)])
    results, node = run_get_node(LabelWorkChain, structures=structures, labeller=orm.Str('aims'),
                                 aims=_aims_namespace(mock_aims_code(aiida_code_installed)))
    assert node.is_finished_ok, node.exit_message
    assert len(results['labelled'].label_fingerprints) == 1


@pytest.mark.parametrize('keyword', ['relax_geometry', 'relax_unit_cell', 'md_run', 'md_schedule', 'MD_run'])
def test_run_changing_keywords_refused_before_anything_runs(aiida_code_installed, keyword):
    namespace = _aims_namespace(mock_aims_code(aiida_code_installed))
    namespace['aims']['parameters'] = orm.Dict({'xc': 'pbe', keyword: 'bfgs 1e-2'})
    before = orm.QueryBuilder().append(orm.ProcessNode).count()
    with pytest.raises(ValueError, match=f'aims.aims.parameters: {keyword} would make FHI-aims move the atoms'):
        run_get_node(LabelWorkChain, structures=ConfigurationSet.from_ase([water()]), labeller=orm.Str('aims'),
                     aims=namespace)
    assert orm.QueryBuilder().append(orm.ProcessNode).count() == before


def _strained_silicon(strains):
    from ase.build import bulk

    images = []
    for strain in strains:
        atoms = bulk('Si', 'diamond', a=5.806)
        atoms.set_cell(atoms.cell * (1.0 + strain), scale_atoms=True)
        images.append(atoms)
    return images


def test_fixed_kpoint_mesh_across_strained_cells(aiida_code_installed):
    from aiida_alml.workflows.aims_base import kpoints_mesh

    images = _strained_silicon([0.0, -0.02, 0.02])
    # A distance just above the unstrained cell's |b|/8: alone, the compressed cell would get 9 points per direction.
    reciprocal = 2 * np.pi * np.linalg.norm(np.linalg.inv(images[0].cell.array).T[0])
    distance = round(float(reciprocal) / 7.95, 4)
    own = [kpoints_mesh(atoms.cell.array, distance) for atoms in images]
    assert own[0] == [8, 8, 8] and own[1] == [9, 9, 9]  # what per-cell meshes would do
    code = mock_aims_code(aiida_code_installed)
    namespace = _aims_namespace(code)
    namespace['kpoints_distance'] = orm.Float(distance)
    results, node = run_get_node(LabelWorkChain, structures=ConfigurationSet.from_ase(images),
                                 labeller=orm.Str('aims'), aims=namespace)
    assert node.is_finished_ok, node.exit_message
    calcs = [calc for calc in node.called_descendants if isinstance(calc, orm.CalcJobNode)]
    assert len(calcs) == 3
    assert {tuple(calc.inputs.kpoints.get_kpoints_mesh()[0]) for calc in calcs} == {(8, 8, 8)}
    metadata = results['labelled'].configurations.metadata
    assert [meta['label_settings']['k_grid'] for meta in metadata] == [[8, 8, 8]] * 3
    assert {meta['label_settings']['kpoints_distance'] for meta in metadata} == {distance}
    assert len(results['labelled'].label_fingerprints) == 1
    # A campaign fixes its meshes once by passing the same reference to every labelling: here the compressed cell.
    namespace['kpoints_reference'] = ConfigurationSet.from_ase(images[1:2])
    again, node = run_get_node(LabelWorkChain, structures=ConfigurationSet.from_ase(images[:1]),
                               labeller=orm.Str('aims'), aims=namespace)
    assert node.is_finished_ok, node.exit_message
    assert again['labelled'].configurations.metadata[0]['label_settings']['k_grid'] == [9, 9, 9]
    # Another k-point density is another set of labels.
    namespace = _aims_namespace(code)
    namespace['kpoints_distance'] = orm.Float(0.3)
    coarse, node = run_get_node(LabelWorkChain, structures=ConfigurationSet.from_ase(images[:1]),
                                labeller=orm.Str('aims'), aims=namespace)
    assert node.is_finished_ok, node.exit_message
    problem = labels_mismatch(metadata, coarse['labelled'].configurations.metadata)
    assert f'kpoints_distance=0.3 but configuration 0 of the first set with kpoints_distance={distance!r}' in problem


def test_fixed_kpoint_meshes_per_cell_shape():
    from aiida_alml.workflows.labellers.aims import fixed_kpoint_meshes

    images = _strained_silicon([0.0, -0.02, 0.0])
    images[2] = images[2].repeat((2, 1, 1))  # another cell shape: its own mesh
    cells = [atoms.cell.array for atoms in images] + [np.eye(3)]
    periodic = [True, True, True, False]
    distance = 2 * np.pi * np.linalg.norm(np.linalg.inv(cells[0]).T[0]) / 7.95
    chosen = fixed_kpoint_meshes(cells, periodic, distance)
    assert chosen[0] == ([8, 8, 8], 0) and chosen[1] == ([8, 8, 8], 0)
    assert chosen[2][1] == 1 and chosen[2][0] != [8, 8, 8] and chosen[3] is None
    # Given references come first, in order.
    assert fixed_kpoint_meshes(cells[:2], periodic[:2], distance, reference_cells=[cells[1]]) == [([9, 9, 9], 0)] * 2


@pytest.mark.parametrize(
    'first, second, message',
    [
        ({'k_grid': [4, 4, 4], 'kpoints_distance': 0.15}, {'k_grid': [2, 4, 4], 'kpoints_distance': 0.15}, None),
        ({'k_grid': [4, 4, 4], 'kpoints_distance': 0.15}, {'k_grid': [4, 4, 4], 'kpoints_distance': 0.25},
         'kpoints_distance=0.25'),
        ({'k_grid': [4, 4, 4]}, {'k_grid': [5, 5, 5]}, 'k_grid=[5, 5, 5]'),
        ({'k_grid': [4, 4, 4], 'kpoints_distance': 0.15}, {'k_grid': [4, 4, 4]}, 'kpoints_distance=None'),
        ({'k_grid': [4, 4, 4], 'kpoints_distance': 0.15}, {}, None),  # a molecule has no k-points
        ({'sc_accuracy_rho': 1e-5}, {'sc_accuracy_rho': 1e-4}, 'sc_accuracy_rho=0.0001'),
    ],
)
def test_kpoint_and_accuracy_settings_compared(first, second, message):
    problem = labels_mismatch([{'label_settings': dict(BASE, **first)}], [{'label_settings': dict(BASE, **second)}])
    assert (problem is None) if message is None else (message in problem)


def test_unknown_settings_are_not_mixed_with_recorded_ones():
    from aiida_alml.workflows.functions import declare_label_settings

    recorded = _labelled(BASE)
    unknown = ConfigurationSet.from_ase([recorded.get_atoms(0)], include_info=False).store()
    assert labels_mismatch(unknown.configurations.metadata, unknown.configurations.metadata) is None
    problem = labels_mismatch(recorded.configurations.metadata, unknown.configurations.metadata)
    assert problem.startswith('configuration 0 of the second set has no recorded label settings')
    assert 'declare_label_settings' in problem
    declared = declare_label_settings(unknown, orm.Dict(recorded.configurations.metadata[0]['label_settings']))
    assert labels_mismatch(recorded.configurations.metadata, declared.configurations.metadata) is None
    assert declared.label_fingerprints == recorded.label_fingerprints
    with pytest.raises(ValueError, match="already records other label settings: .*xc='pw-lda'"):
        declare_label_settings(declared, orm.Dict(dict(BASE, xc='pw-lda')))


@pytest.mark.parametrize(
    'extra, parameters, message',
    [
        ({'kpoints_distance': 0.2, 'kpoints': 'mesh'}, {}, 'aims.kpoints, aims.kpoints_distance: give one'),
        ({'kpoints_distance': 0.2}, {'k_grid': [2, 2, 2]}, r'aims.kpoints_distance, aims.aims.parameters\[k_grid\]'),
        ({'kpoints_reference': 'set'}, {}, 'aims.kpoints_reference: needs aims.kpoints_distance'),
    ],
)
def test_kpoint_inputs_refused(aiida_code_installed, extra, parameters, message):
    namespace = _aims_namespace(mock_aims_code(aiida_code_installed))
    namespace['aims']['parameters'] = orm.Dict({'xc': 'pbe', **parameters})
    for name, value in extra.items():
        if value == 'mesh':
            value = orm.KpointsData()
            value.set_kpoints_mesh([2, 2, 2])
        elif value == 'set':
            value = ConfigurationSet.from_ase(_strained_silicon([0.0]))
        else:
            value = orm.Float(value)
        namespace[name] = value
    with pytest.raises(ValueError, match=message):
        run_get_node(LabelWorkChain, structures=ConfigurationSet.from_ase([water()]), labeller=orm.Str('aims'),
                     aims=namespace)


def test_allow_labeller_command_declares_and_revokes(aiida_localhost, aiida_profile):
    from aiida_shell import ShellCode
    from click.testing import CliRunner

    from aiida_alml.cli.setup import allow_labeller as command
    from aiida_alml.workflows.labellers.shell import LABELLER_EXTRA

    code = ShellCode(label='xtb-like', computer=aiida_localhost, filepath_executable='/bin/true',
                     default_calc_job_plugin='core.shell').store()
    result = CliRunner().invoke(command, ['-p', aiida_profile.name, 'xtb-like@localhost'])
    assert result.exit_code == 0, result.output
    assert orm.load_code('xtb-like@localhost').base.extras.get(LABELLER_EXTRA) is True
    result = CliRunner().invoke(command, ['-p', aiida_profile.name, 'xtb-like@localhost', '--revoke'])
    assert result.exit_code == 0 and LABELLER_EXTRA not in orm.load_code(code.pk).base.extras.keys()
    train = orm.InstalledCode(label='train-code', computer=aiida_localhost, filepath_executable='/x/alml-train',
                              default_calc_job_plugin='alml.mace.train').store()
    result = CliRunner().invoke(command, ['-p', aiida_profile.name, train.full_label])
    assert result.exit_code != 0 and "is a code for 'alml.mace.train', not a reference program" in result.output
    assert LABELLER_EXTRA not in train.base.extras.keys()
    result = CliRunner().invoke(command, ['-p', aiida_profile.name, 'nothere@localhost'])
    assert result.exit_code != 0 and 'nothere@localhost' in result.output


def test_xtb_labels_record_method_and_tblite_version_and_do_not_mix(label_code):
    """Through alml.label with the real alml-label code: the settings name the method (the one class serves both),
    the given kwargs and tblite's version; GFN1 and GFN2 labels are refused as one training set."""
    from importlib.metadata import version

    from ase.build import molecule

    from aiida_alml.workflows.functions import merge_training_sets

    box = molecule('H2O')
    box.set_cell([5.0, 5.0, 5.0])
    box.pbc = True
    box.center()
    labelled = {}
    for name in ('gfn2-xtb', 'gfn1-xtb'):
        results, node = run_get_node(
            LabelWorkChain, structures=ConfigurationSet.from_ase([box]), labeller=orm.Str('ase'),
            ase={'code': label_code, 'calculator': orm.Dict({'name': name, 'kwargs': {'accuracy': 0.5}})},
        )
        assert node.is_finished_ok, node.exit_message
        labelled[name] = results['labelled']
        settings = labelled[name].configurations.metadata[0]['label_settings']
        assert settings['calculator']['class'] == 'tblite.ase:TBLite'
        assert settings['calculator']['kwargs']['method'] == name.split('-')[0].upper() + '-xTB'
        assert settings['calculator']['kwargs']['accuracy'] == 0.5
        assert settings['calculator_version'] == f'tblite {version("tblite")}'
    problem = labels_mismatch(labelled['gfn2-xtb'].configurations.metadata, labelled['gfn1-xtb'].configurations.metadata)
    assert problem is not None and 'GFN' in problem
    with pytest.raises(ValueError, match='label'):
        merge_training_sets(a=labelled['gfn2-xtb'], b=labelled['gfn1-xtb'])


def test_ase_path_in_parallel_jobs_keeps_input_order_and_failures(label_code, cu_images):
    """ase.jobs = 2: two alml.ase jobs on consecutive pieces (a calcfunction splits the set, so the pieces are in the
    provenance); the labels come back in input order, and a failure is reported at its position in the whole set."""
    from ase.build import bulk
    from ase.calculators.emt import EMT

    images = [cu_images[0], cu_images[1], bulk('Si', 'diamond', a=5.43), cu_images[2], cu_images[3]]
    results, node = run_get_node(
        LabelWorkChain, structures=ConfigurationSet.from_ase(images), labeller=orm.Str('ase'),
        max_failed_fraction=orm.Float(0.5),
        ase={'code': label_code, 'calculator': orm.Dict({'name': 'emt'}), 'jobs': orm.Int(2)},
    )
    assert node.is_finished_ok, node.exit_message
    jobs = sorted((child for child in node.called_descendants if child.process_label == 'AseLabelCalculation'),
                  key=lambda child: child.pk)
    assert [len(job.inputs.structures) for job in jobs] == [3, 2]
    assert {link.link_label for link in node.base.links.get_outgoing().all()} >= {'split', 'ase_0', 'ase_1'}
    assert list(results['failures'].get_dict()) == ['2']  # EMT has no silicon: the third of the whole set
    labelled = results['labelled']
    assert [meta['input_index'] for meta in labelled.configurations.metadata] == [0, 1, 3, 4]
    for position, index in enumerate((0, 1, 3, 4)):
        atoms = images[index].copy()
        atoms.calc = EMT()
        assert labelled.get_atoms(position).get_potential_energy() == atoms.get_potential_energy()
    with pytest.raises(ValueError, match=r'ase.jobs: must be 1 to 256 jobs, got 0'):
        run_get_node(LabelWorkChain, structures=ConfigurationSet.from_ase(images[:1]), labeller=orm.Str('ase'),
                     ase={'code': label_code, 'calculator': orm.Dict({'name': 'emt'}), 'jobs': orm.Int(0)})
