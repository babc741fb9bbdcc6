"""Seeds of one campaign: every iteration trains and explores with new, reproducible random streams.

A committee retrained with the same member seeds on nearly the same data, exploring with the same MD seeds, repeats
its previous observation; counting it again towards convergence would count one observation twice. All seeds derive
from the campaign seed and the iteration through numpy's ``SeedSequence`` (independent streams, the same on rerun).
"""

from __future__ import annotations

import numpy as np

__all__ = ('iteration_seeds',)

# MACE and ASE take seeds as (signed 32-bit) integers.
_SEED_RANGE = 2**31 - 1


def iteration_seeds(campaign_seed: int, iteration: int, num_members: int, condition_seeds: list[int]) -> dict:
    """Member seeds (distinct) and one MD seed per exploration condition for ``iteration`` of a campaign.

    ``condition_seeds`` are the seeds written in the conditions (0 where none): they enter the derivation, so two
    conditions that differ only in their seed still explore with different streams.
    """
    if num_members < 1:
        raise ValueError(f'num_members must be positive, got {num_members}')
    root = np.random.SeedSequence([int(campaign_seed), int(iteration)])
    members_stream, md_stream = root.spawn(2)
    members: list[int] = []
    for value in members_stream.generate_state(4 * num_members, dtype=np.uint64):
        seed = int(value % _SEED_RANGE) + 1
        if seed not in members:
            members.append(seed)
        if len(members) == num_members:
            break
    md = [
        int(np.random.SeedSequence([int(md_stream.generate_state(1)[0]), index, int(own)]).generate_state(1)[0]
            % _SEED_RANGE)
        for index, own in enumerate(condition_seeds)
    ]
    return {'members': members, 'md': md}
