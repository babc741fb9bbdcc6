"""The ``aiida-alml`` command line as a user runs it: its own AIIDA_PATH, its own daemon."""

import os
import pathlib
import subprocess
import sys

import pytest

BIN = pathlib.Path(sys.executable).parent

pytestmark = pytest.mark.daemon


def _run(args, aiida_path, timeout=240, check=True):
    env = {**os.environ, 'AIIDA_PATH': str(aiida_path), 'PATH': f'{BIN}{os.pathsep}{os.environ["PATH"]}'}
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, f'{args} failed:\n{result.stdout}\n{result.stderr}'
    return result


def test_setup_is_idempotent_and_demo_runs_through_the_daemon(tmp_path):
    first = _run([BIN / 'aiida-alml', 'setup', '--profile-name', 'clitest'], tmp_path)
    assert "Created profile 'clitest'" in first.stdout and 'Created code alml-label@localhost' in first.stdout
    second = _run([BIN / 'aiida-alml', 'setup', '--profile-name', 'clitest'], tmp_path)
    assert 'Created' not in second.stdout and "Profile 'clitest' exists: reusing it." in second.stdout
    storage = _run([BIN / 'verdi', '-p', 'clitest', 'profile', 'show'], tmp_path).stdout
    assert 'core.sqlite_dos' in storage and 'core.zeromq' in storage

    refused = _run([BIN / 'aiida-alml', 'demo', '-p', 'clitest', '--label-only', '--count', '3'], tmp_path, check=False)
    assert refused.returncode != 0 and 'the daemon is not running' in refused.stderr

    _run([BIN / 'verdi', '-p', 'clitest', 'daemon', 'start', '1'], tmp_path)
    try:
        demo = _run([BIN / 'aiida-alml', 'demo', '-p', 'clitest', '--label-only', '--count', '6'], tmp_path)
    finally:
        _run([BIN / 'verdi', '-p', 'clitest', 'daemon', 'stop'], tmp_path, check=False)
    assert '6 of 6 labelled, 0 failed' in demo.stdout
    assert 'max |dE| = 0.0e+00 eV, max |dF| = 0.0e+00 eV/Å' in demo.stdout
    assert 'AseLabelCalculation' in demo.stdout and 'finished' in demo.stdout


def test_demo_without_profile_says_what_to_do(tmp_path):
    result = _run([BIN / 'aiida-alml', 'demo', '-p', 'nothere'], tmp_path, check=False)
    assert result.returncode != 0 and 'aiida-alml setup' in result.stderr
