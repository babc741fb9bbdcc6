#!/usr/bin/env python3
"""A tiny stand-alone 'reference program' for the shell-labeller tests: reads a geometry, computes EMT, writes extxyz.

Usage: emt_program.py GEOMETRY OUTPUT. It also prints a warning on stderr, as many real programs do, so the tests
see that the ShellJob's stderr rule (exit 410 on any stderr) is handled.
"""
import sys

from ase.calculators.emt import EMT
from ase.io import read, write

atoms = read(sys.argv[1])
atoms.calc = EMT()
atoms.get_forces()
sys.stderr.write('emt_program: warning: EMT is a toy potential\n')
write(sys.argv[2], atoms, format='extxyz')
