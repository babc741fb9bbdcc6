"""A throw-away SQLite AiiDA profile for benchmarks (a temporary AIIDA_PATH, removed afterwards; yields it)."""

import contextlib
import os
import tempfile


@contextlib.contextmanager
def throwaway_profile(name: str = 'bench'):
    with tempfile.TemporaryDirectory() as folder:
        os.environ['AIIDA_PATH'] = folder
        from aiida import load_profile
        from aiida.manage.configuration import create_profile, get_config

        config = get_config(create=True)
        create_profile(config, name=name, email=f'{name}@localhost', storage_backend='core.sqlite_dos',
                       storage_config={'filepath': os.path.join(folder, 'storage')})
        # Without a broker a workchain learns that its child finished by polling; AiiDA's default of 60 s per wait
        # made each data-efficiency campaign spend most of its half hour asleep.
        config.set_option('runner.poll.interval', 1, scope=name)
        config.store()
        load_profile(name, allow_switch=True)
        yield folder
