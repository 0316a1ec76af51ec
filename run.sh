#!/usr/bin/env bash
# realm_ros entry point for machines without a sourced ROS workspace (and for CI).
#   ./run.sh demo [args]   set up the environment if needed, then run the end-to-end demo
#   ./run.sh test [args]   set up the environment if needed, then run the whole test suite
#   ./run.sh shell         a shell with the environment active
#   ./run.sh <cmd> [args]  any command inside the environment (e.g. ./run.sh realm-events summarize BAG)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
"$ROOT/scripts/setup_env.sh"
# shellcheck disable=SC1091
. "${REALM_VENV:-$ROOT/.venv}/realm_env.sh"
cd "$ROOT"
cmd="${1:-demo}"; shift || true
case "$cmd" in
  demo)  exec realm-demo "$@" ;;
  test)
    # Tests talk over real DDS: keep them on this host and off other users' domains.
    export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
    export ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-$(( (RANDOM % 100) + 100 ))}"
    set +e
    python -m pytest "$@"
    rc=$?
    # pytest exits 5 when it collected no test: that is not a pass.
    [ "$rc" = 5 ] && echo "no tests were collected: failing" >&2
    exit "$rc" ;;
  shell) exec "${SHELL:-bash}" -i ;;
  *)     exec "$cmd" "$@" ;;
esac
