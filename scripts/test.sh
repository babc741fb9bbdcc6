#!/usr/bin/env bash
# From nothing to a passed test suite: environment, PostgreSQL binaries, the storage tests on PostgreSQL
# (core.psql_dos through pgtest), then the whole suite on SQLite with the ZeroMQ broker, then (as root) the
# production profile's tests on PostgreSQL + RabbitMQ.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
. .venv/bin/activate
# The tests' own reference calculators, registered in the `alml.calculators` entry-point group like a user's would be.
python -m pip install -q -e tests/helpers/plugins 2>&1 | grep -v '^WARNING: Location' || true

if ! compgen -G '/usr/lib/postgresql/*/bin/pg_ctl' >/dev/null && ! command -v pg_ctl >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
        echo "==> installing PostgreSQL server binaries"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    else
        echo "PostgreSQL server binaries (pg_ctl) are needed for the storage tests: install PostgreSQL" >&2
        exit 1
    fi
fi
# aiida-core creates its test databases with LC_COLLATE='en_US.UTF-8': that locale must exist.
if ! locale -a 2>/dev/null | grep -qi '^en_US\.utf-\?8$'; then
    if [ "$(id -u)" = 0 ]; then
        echo "==> generating the en_US.UTF-8 locale"
        command -v locale-gen >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq locales >/dev/null; }
        sed -i 's/^# *en_US.UTF-8 UTF-8/en_US.UTF-8 UTF-8/' /etc/locale.gen
        grep -q '^en_US.UTF-8 UTF-8' /etc/locale.gen || echo 'en_US.UTF-8 UTF-8' >> /etc/locale.gen
        locale-gen >/dev/null
    else
        echo "the en_US.UTF-8 locale is needed for the PostgreSQL tests: generate it (locale-gen)" >&2
        exit 1
    fi
fi
# pgtest will not start PostgreSQL as root: tests/conftest.py then runs pg_ctl as this unprivileged user.
if [ "$(id -u)" = 0 ]; then
    export ALML_PG_USER=${ALML_PG_USER:-postgres}
    id "$ALML_PG_USER" >/dev/null 2>&1 || useradd --system --no-create-home "$ALML_PG_USER"
fi

echo "==> storage tests on PostgreSQL (core.psql_dos)"
ALML_TEST_STORAGE=core.psql_dos python -m pytest -m storage -q -p no:cacheprovider "$@"
echo "==> whole suite on SQLite (core.sqlite_dos) with the ZeroMQ broker"
python -m pytest -q -p no:cacheprovider "$@"

# A SLURM cluster on this machine, reached over SSH (munge, slurmctld, slurmd, sshd from Debian packages, started by
# scripts/cluster.sh): the tests marked `cluster`, which the suite above skips (they run only with ALML_TEST_CLUSTER=1).
if [ "$(id -u)" = 0 ]; then
    echo "==> SLURM cluster over SSH (scripts/cluster.sh), then the tests marked cluster"
    bash scripts/cluster.sh --services-only
    ALML_TEST_CLUSTER=1 python -m pytest -m cluster -q -p no:cacheprovider tests/system/test_cluster.py "$@"
else
    echo "==> cluster tests skipped: as root, scripts/cluster.sh installs and starts SLURM and sshd"
fi

# The production profile (PostgreSQL + RabbitMQ from Debian packages, started by scripts/services.sh): the tests
# marked `production`, which the suite above skips (they run only with ALML_TEST_PRODUCTION=1).
if [ "$(id -u)" = 0 ]; then
    echo "==> production profile: PostgreSQL + RabbitMQ services, then the tests marked production"
    bash scripts/services.sh
    ALML_TEST_PRODUCTION=1 python -m pytest -m production -q -p no:cacheprovider "$@"
else
    echo "==> production-profile tests skipped: as root, scripts/services.sh installs and starts their services"
fi
