#!/usr/bin/env bash
# The services of the production profile on this machine: PostgreSQL (the distribution's server, one cluster) and
# RabbitMQ, from Debian packages, started without systemd; a database role and a database for AiiDA.
# Idempotent: run it again after a reboot to start what is down; it changes nothing that is already right.
# Run as root: as root `scripts/services.sh`, from an account with sudo `sudo scripts/services.sh` (it needs no sudo
# itself: it switches to the users postgres and rabbitmq with runuser). Then: aiida-alml setup --production (its
# defaults match the ones below). Without root on this machine: use the embedded profile (`aiida-alml setup`: SQLite +
# ZeroMQ, no services), or `aiida-alml setup --production --db-* --broker-*` pointed at servers an administrator runs.
#
#   ALML_DB_HOST (localhost)  ALML_DB_PORT (the cluster's port, 5432)  ALML_DB_USER (alml)  ALML_DB_PASSWORD (alml)
#   ALML_DB_NAME (alml)       ALML_BROKER_PORT (5672)
#
# The password default is for a database that listens on localhost only (Debian's default); set ALML_DB_PASSWORD
# on any machine that other people log in to.
set -euo pipefail

DB_HOST=${ALML_DB_HOST:-localhost}
DB_USER=${ALML_DB_USER:-alml}
DB_PASSWORD=${ALML_DB_PASSWORD:-alml}
DB_NAME=${ALML_DB_NAME:-alml}
BROKER_PORT=${ALML_BROKER_PORT:-5672}
# AiiDA's advice for RabbitMQ >= 3.8.15: a consumer_timeout longer than any workflow runs, 10,000 hours here,
# otherwise the broker drops a daemon worker's task after 30 minutes and the process is run twice or lost.
CONSUMER_TIMEOUT_MS=36000000000

die() { echo "services.sh: $*" >&2; exit 1; }
step() { echo "==> $*"; }

if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null && how="sudo $0" || how="$0 as root (there is no sudo here: log in as root)"
    die "run me as root: $how. I install packages and start the servers as users postgres and rabbitmq. Without root:
the embedded profile needs no services (aiida-alml setup), or point aiida-alml setup --production --db-* --broker-* at
servers an administrator runs (docs/production.md)"
fi

apt_install() {
    # Another apt run (a parallel setup script) holds the lock: wait for it instead of failing.
    step "installing $* (Debian packages)"
    if [ -z "${_APT_UPDATED:-}" ]; then
        apt-get -o DPkg::Lock::Timeout=600 update -qq
        _APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq "$@" >/dev/null
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local seconds=$1 what=$2
    shift 2
    for _ in $(seq "$seconds"); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 1
    done
    return 1
}

# ------------------------------------------------------------------------------------------------------- PostgreSQL
command -v pg_ctlcluster >/dev/null && compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null \
    || apt_install postgresql

# One cluster is enough: the first one pg_lsclusters lists, or a new "main" cluster of the newest installed version.
first_cluster() { pg_lsclusters --no-header | awk 'NR == 1 {print $1, $2, $3, $4}'; }
read -r PG_VERSION PG_CLUSTER PG_PORT PG_STATUS < <(first_cluster) || true
if [ -z "${PG_VERSION:-}" ]; then
    PG_VERSION=$(ls /usr/lib/postgresql | sort -V | tail -1)
    step "creating PostgreSQL cluster $PG_VERSION/main"
    pg_createcluster --encoding UTF8 --locale C.UTF-8 "$PG_VERSION" main >/dev/null
    read -r PG_VERSION PG_CLUSTER PG_PORT PG_STATUS < <(first_cluster)
fi
DB_PORT=${ALML_DB_PORT:-$PG_PORT}
[ "$DB_PORT" = "$PG_PORT" ] \
    || die "ALML_DB_PORT=$DB_PORT but PostgreSQL cluster $PG_VERSION/$PG_CLUSTER listens on $PG_PORT"

if [ "$PG_STATUS" = online ]; then
    step "PostgreSQL $PG_VERSION/$PG_CLUSTER is running on port $PG_PORT"
else
    step "starting PostgreSQL $PG_VERSION/$PG_CLUSTER on port $PG_PORT"
    # Without systemd as PID 1, pg_ctlcluster runs pg_ctl as the cluster's owner (postgres) itself.
    pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" start
fi
wait_for 60 PostgreSQL pg_isready -q -h "$DB_HOST" -p "$DB_PORT" \
    || die "PostgreSQL does not answer on $DB_HOST:$DB_PORT; see /var/log/postgresql/ (cluster $PG_VERSION-$PG_CLUSTER)"

step "database role $DB_USER and database $DB_NAME"
# psql variables (:'name' quotes a literal, format %I an identifier): no value is ever pasted into SQL text.
# CREATEDB lets `aiida-alml setup --production --db-name OTHER` make more databases (one per profile).
runuser -u postgres -- psql -X -q -p "$DB_PORT" -d postgres -v ON_ERROR_STOP=1 \
    -v user="$DB_USER" -v password="$DB_PASSWORD" -v dbname="$DB_NAME" <<'SQL'
SELECT format('CREATE ROLE %I LOGIN CREATEDB', :'user')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'user') \gexec
SELECT format('ALTER ROLE %I LOGIN CREATEDB PASSWORD %L', :'user', :'password') \gexec
SELECT format('CREATE DATABASE %I OWNER %I ENCODING %L TEMPLATE template0', :'dbname', :'user', 'UTF8')
WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'dbname') \gexec
SQL
# The check a profile will make: log in over TCP with the password.
PGPASSWORD=$DB_PASSWORD psql -X -q -h "$DB_HOST" -p "$DB_PORT" -U "$DB_USER" -d "$DB_NAME" -tAc 'SELECT 1' >/dev/null \
    || die "cannot log in to $DB_NAME on $DB_HOST:$DB_PORT as $DB_USER with the password (check pg_hba.conf)"

# --------------------------------------------------------------------------------------------------------- RabbitMQ
command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server

# Our settings in a file of their own in conf.d, so that a rabbitmq.conf someone else wrote stays untouched.
# Loopback only: the daemon runs on this machine and the "guest" account may only log in from it anyway.
mkdir -p /etc/rabbitmq/conf.d
CONF=/etc/rabbitmq/conf.d/50-aiida-alml.conf
WANTED=$(printf '%s\n' \
    '# Written by aiida-alml scripts/services.sh' \
    "listeners.tcp.default = 127.0.0.1:$BROKER_PORT" \
    "consumer_timeout = $CONSUMER_TIMEOUT_MS")
CHANGED=
if [ "$(cat "$CONF" 2>/dev/null)" != "$WANTED" ]; then
    echo "$WANTED" > "$CONF"
    CHANGED=1
fi
# The node is called rabbit@<short hostname>: that name must resolve, or the node cannot start.
getent hosts "$(hostname -s)" >/dev/null || die "the host name $(hostname -s) does not resolve: add it to /etc/hosts"

rabbit_running() { rabbitmq-diagnostics -q check_running; }
if rabbit_running >/dev/null 2>&1 && [ -n "$CHANGED" ]; then
    step "restarting RabbitMQ to read $CONF"
    rabbitmqctl -q stop
    wait_for 60 "RabbitMQ stop" bash -c '! rabbitmq-diagnostics -q ping'
fi
if rabbit_running >/dev/null 2>&1; then
    step "RabbitMQ is running"
else
    step "starting RabbitMQ (rabbitmq-server -detached)"
    mkdir -p /var/log/rabbitmq && chown rabbitmq:rabbitmq /var/log/rabbitmq
    rabbitmq-server -detached
    wait_for 120 RabbitMQ rabbitmq-diagnostics -q check_running \
        || die "RabbitMQ did not start within 120 s; see /var/log/rabbitmq/"
fi
wait_for 60 "RabbitMQ listener" rabbitmq-diagnostics -q check_port_listener "$BROKER_PORT" \
    || die "RabbitMQ runs but does not listen on port $BROKER_PORT; see /var/log/rabbitmq/"
RABBIT_VERSION=$(rabbitmqctl -q version)
TIMEOUT_NOW=$(rabbitmqctl -q eval 'application:get_env(rabbit, consumer_timeout).')
[ "$TIMEOUT_NOW" = "{ok,$CONSUMER_TIMEOUT_MS}" ] \
    || die "RabbitMQ's consumer_timeout is $TIMEOUT_NOW, not {ok,$CONSUMER_TIMEOUT_MS}: $CONF was not read"

cat <<EOF
==> services are up
PostgreSQL $PG_VERSION  host $DB_HOST  port $DB_PORT  user $DB_USER  password $DB_PASSWORD  database $DB_NAME
RabbitMQ $RABBIT_VERSION  amqp://guest:guest@127.0.0.1:$BROKER_PORT  consumer_timeout $CONSUMER_TIMEOUT_MS ms
Make the profile:  aiida-alml setup --production --db-host $DB_HOST --db-port $DB_PORT --db-user $DB_USER \\
                   --db-password '$DB_PASSWORD' --db-name $DB_NAME --broker-port $BROKER_PORT
EOF
