"""Unknown keys in the input namespaces of our work chains (the Python API): refused, with the closest known names.

``expose_inputs`` marks every exposed namespace dynamic, so AiiDA itself would accept ``label={'ase': {...},
'aes': {...}}`` and drop the misspelt block without a word. A namespace is taken as truly free-form only when it
declares no ports of its own (``parent_models.member_0``, ...).
"""

from __future__ import annotations

from collections.abc import Mapping

from aiida_alml.atoms.suggest import did_you_mean

__all__ = ('unknown_input_problem',)


def unknown_input_problem(namespace, inputs: Mapping, where: str = '') -> str | None:
    """The first key of ``inputs`` that no port of ``namespace`` (a plumpy PortNamespace) declares, as a message."""
    from plumpy.ports import PortNamespace

    known = [name for name in namespace if name != 'metadata']
    for key, value in inputs.items():
        name = f'{where}.{key}' if where else key
        if key == 'metadata':
            continue
        if key not in namespace:
            if namespace.dynamic and not known:
                continue
            return f'{name}: unknown input{did_you_mean(key, known)}; known here: {", ".join(sorted(known))}'
        port = namespace[key]
        if isinstance(port, PortNamespace) and isinstance(value, Mapping):
            if (problem := unknown_input_problem(port, value, name)):
                return problem
    return None
