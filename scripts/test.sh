#!/usr/bin/env bash
# From nothing to a passed test suite: environment, PostgreSQL binaries, the storage tests on PostgreSQL
# (core.psql_dos through pgtest), then the whole suite on SQLite with the ZeroMQ broker, then the tests marked
# cluster (a SLURM cluster over SSH) and production (PostgreSQL + RabbitMQ).
#
# It passes only if every one of those ran: the cluster and production tests need root (their scripts install and
# start services), so as any other user it stops at once and says so; a cluster or production run that collects no
# test or skips any fails. ALML_TEST_RAN=FILE: each of those two runs appends "NAME COUNT" to FILE (.ci/run checks it).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    cat >&2 <<'EOF'
scripts/test.sh: the cluster and production tests need root, and this suite passes only with them: run it as root
    ./scripts/test.sh          (as root; from an account with sudo: sudo ./scripts/test.sh)
(scripts/cluster.sh installs and starts munge, SLURM and sshd with a job user; scripts/services.sh installs and
starts PostgreSQL and RabbitMQ; both use apt-get, Debian packages). Without root, `.venv/bin/python -m pytest -q`
runs the rest, skipping those tests: that is not the full suite.
EOF
    exit 1
fi

bash scripts/bootstrap.sh
. .venv/bin/activate
# The tests' own reference calculators, registered in the `alml.calculators` entry-point group like a user's would be.
python -m pip install -q -e tests/helpers/plugins 2>&1 | grep -v '^WARNING: Location' || true

if ! compgen -G '/usr/lib/postgresql/*/bin/pg_ctl' >/dev/null && ! command -v pg_ctl >/dev/null; then
    echo "==> installing PostgreSQL server binaries"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
# aiida-core creates its test databases with LC_COLLATE='en_US.UTF-8': that locale must exist.
if ! locale -a 2>/dev/null | grep -qi '^en_US\.utf-\?8$'; then
    echo "==> generating the en_US.UTF-8 locale"
    command -v locale-gen >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq locales >/dev/null; }
    sed -i 's/^# *en_US.UTF-8 UTF-8/en_US.UTF-8 UTF-8/' /etc/locale.gen
    grep -q '^en_US.UTF-8 UTF-8' /etc/locale.gen || echo 'en_US.UTF-8 UTF-8' >> /etc/locale.gen
    locale-gen >/dev/null
fi
# pgtest will not start PostgreSQL as root: tests/conftest.py then runs pg_ctl as this unprivileged user.
export ALML_PG_USER=${ALML_PG_USER:-postgres}
id "$ALML_PG_USER" >/dev/null 2>&1 || useradd --system --no-create-home "$ALML_PG_USER"

# every_test_runs NAME PYTEST-ARGS...: a pytest run in which every selected test must run. A skip there means a
# service or setting is missing, not a passed test; no test at all (pytest's exit status 5) means a wrong selection.
reports=$(mktemp -d)
trap 'rm -rf "$reports"' EXIT
every_test_runs() {
    local name=$1 status=0 report=$reports/$1.xml
    shift
    python -m pytest -rs --junitxml="$report" "$@" || status=$?
    if [ "$status" = 5 ]; then
        echo "scripts/test.sh: pytest collected no $name test (python -m pytest $*): the suite needs them" >&2
        exit 1
    fi
    [ "$status" = 0 ] || exit "$status"
    python - "$report" "$name" "${ALML_TEST_RAN:-}" <<'EOF'
import sys
import xml.etree.ElementTree as ElementTree

report, name, ran = sys.argv[1:]
cases = list(ElementTree.parse(report).getroot().iter('testcase'))
skipped = [f'{case.get("classname")}::{case.get("name")}: {skip.get("message")}'
           for case in cases for skip in case.findall('skipped')]
if not cases or skipped:
    sys.exit(f'scripts/test.sh: {len(cases)} {name} tests collected, {len(skipped)} skipped; every one must run:\n  '
             + '\n  '.join(skipped))
if ran:
    with open(ran, 'a', encoding='utf-8') as handle:
        handle.write(f'{name} {len(cases)}\n')
EOF
}

echo "==> storage tests on PostgreSQL (core.psql_dos)"
ALML_TEST_STORAGE=core.psql_dos python -m pytest -m storage -q -p no:cacheprovider "$@"
echo "==> whole suite on SQLite (core.sqlite_dos) with the ZeroMQ broker"
python -m pytest -q -p no:cacheprovider "$@"

# A SLURM cluster on this machine, reached over SSH (munge, slurmctld, slurmd, sshd from Debian packages, started by
# scripts/cluster.sh): the tests marked `cluster`, which the suite above skips (they run only with ALML_TEST_CLUSTER=1).
echo "==> SLURM cluster over SSH (scripts/cluster.sh), then the tests marked cluster"
bash scripts/cluster.sh --services-only
ALML_TEST_CLUSTER=1 every_test_runs cluster -m cluster -q -p no:cacheprovider tests/system/test_cluster.py "$@"

# The production profile (PostgreSQL + RabbitMQ from Debian packages, started by scripts/services.sh): the tests
# marked `production`, which the suite above skips (they run only with ALML_TEST_PRODUCTION=1).
echo "==> production profile: PostgreSQL + RabbitMQ services, then the tests marked production"
bash scripts/services.sh
ALML_TEST_PRODUCTION=1 every_test_runs production -m production -q -p no:cacheprovider "$@"
