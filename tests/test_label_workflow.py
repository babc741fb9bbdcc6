"""``alml.label``: FHI-aims (MOCK executable), ASE (batched alml.ase) and shell (a real tiny EMT program) paths."""

import sys

import numpy as np
import pytest
from aiida import orm
from aiida.engine import run_get_node
from aims_helpers import DATA, aims_inputs, mock_aims_code, water

from aiida_alml.data.configurations import ConfigurationSet
from aiida_alml.workflows.label import LabelWorkChain, inconsistent_settings, merge_labelled


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

    structures = ConfigurationSet.from_ase([Atoms('O3', positions=[(0, 0, 0), (1.2, 0, 0), (2.4, 0.5, 0)])])
    results, node = run_get_node(
        LabelWorkChain, structures=structures, labeller=orm.Str('aims'),
        aims=_aims_namespace(mock_aims_code(aiida_code_installed)),
    )
    assert node.exit_status == LabelWorkChain.exit_codes.ERROR_TOO_MANY_FAILURES.status
    assert results['failures']['0']['exit_status'] == 402  # AimsBaseWorkChain: unhandled failure of alml.aims


def test_shell_path_with_a_real_program(aiida_localhost, cu_images):
    from aiida_shell import ShellCode
    from ase.calculators.emt import EMT

    # The program is a real executable (python running data/aims/emt_program.py); it also writes to stderr.
    code = ShellCode(label='emt-program', computer=aiida_localhost, filepath_executable=sys.executable,
                     default_calc_job_plugin='core.shell').store()
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


def test_ase_path_one_batched_job(label_code, cu_images):
    structures = ConfigurationSet.from_ase(cu_images[:3])
    results, node = run_get_node(
        LabelWorkChain, structures=structures, labeller=orm.Str('ase'),
        ase={'code': label_code, 'calculator': orm.Dict({'name': 'emt', 'kwargs': {}})},
    )
    assert node.is_finished_ok, node.exit_message
    assert [child.process_label for child in node.called if child.process_label != 'merge_labelled'] == \
        ['AseLabelCalculation']
    metadata = results['labelled'].configurations.metadata
    assert [meta['input_index'] for meta in metadata] == [0, 1, 2]
    assert len({meta['source_calc_uuid'] for meta in metadata}) == 1


def test_bad_label_inputs_refused(aiida_localhost):
    structures = ConfigurationSet.from_ase([water()])
    with pytest.raises(ValueError, match="labeller: 'vasp' is not one of"):
        run_get_node(LabelWorkChain, structures=structures, labeller=orm.Str('vasp'))
    code = orm.InstalledCode(computer=aiida_localhost, filepath_executable='/bin/true').store()
    with pytest.raises(ValueError, match=r'shell.arguments: none contains the placeholder \{geometry\}'):
        run_get_node(LabelWorkChain, structures=structures, labeller=orm.Str('shell'),
                     shell={'code': code, 'arguments': orm.List(['in.xyz']), 'output_filename': orm.Str('o.xyz')})


def _labelled(settings, element_hashes=None):
    from ase.calculators.singlepoint import SinglePointCalculator

    atoms = water()
    atoms.calc = SinglePointCalculator(atoms, energy=-1.0, forces=np.zeros((3, 3)))
    settings = dict(settings, species_hashes=element_hashes or {'08_O_default': 'aa', '01_H_default': 'bb'})
    return ConfigurationSet.from_ase([atoms], metadata=[{'label_settings': settings}]).store()


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
