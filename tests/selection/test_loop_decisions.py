"""Decision helpers of the active-learning loop: campaign seeds and the accounting of exploration failures."""

import pytest

from aiida_alml.selection import convergence_blockers
from aiida_alml.workflows.functions import exploration_accounting
from aiida_alml.workflows.seeds import iteration_seeds


def test_seeds_are_new_every_iteration_and_reproducible():
    first = iteration_seeds(5, 0, 4, [1, 2])
    assert first == iteration_seeds(5, 0, 4, [1, 2])  # a rerun repeats the campaign
    assert len(set(first['members'])) == 4 and len(first['md']) == 2
    later = [iteration_seeds(5, iteration, 4, [1, 2]) for iteration in range(1, 6)]
    assert all(set(row['members']).isdisjoint(first['members']) for row in later)
    assert all(set(row['md']).isdisjoint(first['md']) for row in later)
    assert iteration_seeds(6, 0, 4, [1, 2]) != first  # another campaign seed, other streams
    # conditions that differ only in their own seed still explore with different streams
    same = iteration_seeds(5, 0, 2, [0, 0])['md']
    assert same[0] != same[1]
    assert all(0 <= seed < 2**31 for seed in first['members'] + first['md'])
    with pytest.raises(ValueError, match='num_members must be positive'):
        iteration_seeds(5, 0, 0, [])


def _run(steps_done, stop_reason='completed', stop_kind='completed', steps=100, sample_interval=10, failed=False):
    entry = {'parameters': {'temperature': 300.0, 'steps': steps, 'sample_interval': sample_interval}}
    if failed:
        return {**entry, 'failed': True, 'exit_status': 320}
    return {**entry, 'failed': False, 'steps_done': steps_done, 'stop_reason': stop_reason, 'stop_kind': stop_kind}


def test_exploration_accounting_counts_early_stops_and_crashes_as_missing_frames():
    overview = {
        's0_c0': _run(100),  # 11 frames, all sampled
        's0_c1': _run(30, 'max_force_sigma above 0.3 eV/Å ...', 'force_sigma'),  # 4 of 11 sampled: 7 missing
        's0_c2': _run(50, 'atoms closer than min_distance ...', 'close_contact'),  # 5 kept of 11: 6 missing
        's0_c3': _run(0, failed=True),  # crashed: all 11 missing
        's0_c4': _run(95, steps=95),  # 95 steps sampled every 10: steps 0..90 and 95, 11 frames, none missing
    }
    runs = exploration_accounting(overview)
    assert runs['runs'] == 5 and runs['runs_stopped_early'] == 2 and runs['runs_crashed'] == 1
    assert runs['frames_missing'] == 7 + 6 + 11
    assert set(runs['stops']) == {'s0_c1', 's0_c2', 's0_c3'} and 'crashed' in runs['stops']['s0_c3']


def _summary(accurate=0.995, failed=0.0, stopped=0, crashed=0):
    return {'accurate_fraction': accurate, 'failed_fraction': failed, 'runs_stopped_early': stopped,
            'runs_crashed': crashed}


@pytest.mark.parametrize('summary, checked, anew, expected', [
    (_summary(), True, True, []),
    (_summary(accurate=0.985), True, True, ['accurate fraction 98.5% below the target 99.0%']),
    (_summary(failed=0.005), True, True, ['0.5% of frames failed or missing']),
    (_summary(stopped=1), True, True, ['1 MD runs stopped early']),
    (_summary(crashed=2), True, True, ['2 MD runs crashed']),
    (_summary(), False, True, ['σ not yet calibrated against labels']),
    (_summary(), True, False, ['not a new observation: the same member and MD seeds explored before']),
])
def test_an_iteration_counts_towards_convergence_only_when_nothing_blocks_it(summary, checked, anew, expected):
    assert convergence_blockers(summary, 0.99, checked, anew) == expected


def test_energy_jumps_flag_a_frame_far_from_its_batch_and_nothing_in_a_quiet_one():
    """A label 0.3 eV/atom off among errors of a few meV/atom is flagged; a batch with a broad but even spread, or a
    departure below the physical floor (0.05 eV/atom), is not; fewer than three frames give no verdict."""
    import numpy as np

    from aiida_alml.selection import energy_jumps

    rng = np.random.default_rng(4)
    quiet = rng.normal(0.01, 0.004, 8)
    assert energy_jumps(quiet) == []
    jumped = quiet.copy()
    jumped[5] += 0.3
    assert energy_jumps(jumped) == [5]
    small = quiet.copy()
    small[2] += 0.04  # many spreads away, but below the floor
    assert energy_jumps(small) == []
    broad = rng.normal(0.0, 0.2, 8)  # a model that is poor everywhere: no frame stands out
    assert energy_jumps(broad) == []
    assert energy_jumps([0.0, 1.0]) == []
