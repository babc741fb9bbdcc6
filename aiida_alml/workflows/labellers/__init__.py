"""The labellers of ``alml.label``, one module each: :mod:`.aims` (FHI-aims, ``alml.aims.base`` per configuration),
:mod:`.ase` (batched ``alml.ase`` jobs) and :mod:`.shell` (aiida-shell ``ShellJob`` per configuration, and which
programs and files it may use).

Each module holds its labeller's launch checks (``<name>_label_problem``), how its jobs are submitted
(``submit_<name>``) and the calcfunctions only it uses; :data:`aiida_alml.workflows.label.LABELLERS` ties them to the
work chain. Calcfunctions every labeller shares (``merge_labelled``, ``record_failures``, ``declare_label_settings``)
are in :mod:`aiida_alml.workflows.functions.labels`.
"""
