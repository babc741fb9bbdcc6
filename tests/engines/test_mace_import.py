"""Importing MACE through our modules prints nothing: the e3nn and cuequivariance notices are hidden, only those
(issue 23: the demo printed them)."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

from aiida_alml.engines.mace_import import CUEQUIVARIANCE_NOTICE, quiet_mace_import


def _fresh_python(code: str) -> subprocess.CompletedProcess:
    # A plain interpreter, as a user's process: Python's default warning filters, none of pytest's.
    env = {key: value for key, value in os.environ.items() if key != 'PYTHONWARNINGS'}
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300, check=False,
                          env=env)


def test_the_engines_and_the_option_check_import_mace_silently(tmp_path):
    from helpers.mace import model_file

    model = model_file(tmp_path / 'member.alml')
    # The paths that import and build MACE: the committee (MD engine, scoring, committee_calculator), the model
    # loader, and the option check the campaign loader and CLI run.
    result = _fresh_python(
        'import sys\n'
        'from aiida_alml.formats.mace_options import known_options\n'
        'known_options()\n'
        'from aiida_alml.engines.committee import CommitteeCalculator\n'
        f'CommitteeCalculator(model_paths=[{str(model)!r}])\n'
        "assert 'mace' in sys.modules and 'e3nn' in sys.modules\n"
        "print('done')\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == 'done\n'
    assert result.stderr == ''


def test_without_the_guard_the_notices_are_there():
    """The check above is not vacuous: a plain import of MACE prints both."""
    result = _fresh_python('import mace.modules')
    assert CUEQUIVARIANCE_NOTICE in result.stdout
    assert 'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD detected' in result.stderr


def test_other_output_and_warnings_pass_through(capsys):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        with quiet_mace_import():
            print(CUEQUIVARIANCE_NOTICE)
            print('something else')
            warnings.warn('another warning', UserWarning)
            # The e3nn message, but not from e3nn's module: not hidden either.
            warnings.warn('Environment variable TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD detected, since the`weights_only`',
                          UserWarning)
    assert capsys.readouterr().out == 'something else\n'
    assert [str(w.message)[:20] for w in caught] == ['another warning', 'Environment variable']
