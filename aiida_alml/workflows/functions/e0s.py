"""Calcfunctions that make the E0s: isolated atoms to label, and the E0 per element from their labels."""

from __future__ import annotations

from aiida import orm
from aiida.engine import calcfunction

from aiida_alml.atoms.configurations import Configurations
from aiida_alml.data import ConfigurationSet

__all__ = ('isolated_atoms', 'isolated_atom_e0s')


@calcfunction
def isolated_atoms(elements: orm.List, box: orm.Float) -> ConfigurationSet:
    """One atom of each element alone in a cubic box of edge ``box`` Å, not periodic: the configurations whose
    reference energies are the E0s (MACE's ``config_type: IsolatedAtom``)."""
    from ase import Atoms

    from aiida_alml.calculations.mace_train import ISOLATED_ATOM

    edge = box.value
    images = [Atoms(element, positions=[[edge / 2] * 3], cell=[edge] * 3, pbc=False) for element in elements.get_list()]
    metadata = [{'config_type': ISOLATED_ATOM} for _ in images]
    return ConfigurationSet(Configurations.from_ase(images, metadata=metadata, include_info=False))


@calcfunction
def isolated_atom_e0s(labelled: ConfigurationSet, elements: orm.List) -> orm.Dict:
    """E0 per element ({symbol: eV}) from the reference energies of its isolated atom: the E0s of every training of a
    campaign. Raises when an element has no energy (its calculation failed)."""
    from aiida_alml.calculations.mace_train import isolated_atom_energies

    e0s = isolated_atom_energies(labelled.configurations)  # labelling keeps the IsolatedAtom metadata of its inputs
    missing = sorted(set(elements.get_list()) - set(e0s))
    if missing:
        raise ValueError(f'no isolated-atom energy for {missing}')
    return orm.Dict({element: e0s[element] for element in sorted(e0s)})
