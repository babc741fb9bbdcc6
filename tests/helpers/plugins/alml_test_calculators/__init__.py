"""Small ASE calculators used by the tests as reference programs (registered in ``alml.calculators``)."""

import numpy as np
from ase.calculators.calculator import Calculator, FileIOCalculator, all_changes
from ase.calculators.emt import EMT


class NanForHeavyCells(Calculator):
    """EMT, except that cells of more than ``max_atoms`` atoms give a NaN energy (a diverging SCF, say)."""

    implemented_properties = ['energy', 'forces', 'stress']

    def __init__(self, max_atoms=4, **kwargs):
        super().__init__(**kwargs)
        self.max_atoms = max_atoms
        self.emt = EMT()

    def calculate(self, atoms=None, properties=('energy',), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.emt.calculate(self.atoms, properties, system_changes)
        self.results = dict(self.emt.results)
        if len(self.atoms) > self.max_atoms:
            self.results['energy'] = np.nan


class EnergyOnly(Calculator):
    """A calculator that cannot give stress."""

    implemented_properties = ['energy', 'forces']

    def calculate(self, atoms=None, properties=('energy',), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.results = {'energy': 0.0, 'forces': np.zeros((len(self.atoms), 3))}


class RunsAProgram(FileIOCalculator):
    """A registered calculator that would run an external command: refused all the same (it must be a code)."""

    implemented_properties = ['energy']
