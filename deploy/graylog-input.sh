#!/bin/sh
# Creates Graylog's global GELF UDP input (port 12201) once Graylog's API answers, unless an input with the
# same title exists. The compose `graylog` profile runs it in the `graylog-setup` service; it can also be run by
# hand against any Graylog: GRAYLOG_URL=http://host:9000 GRAYLOG_PASSWORD=... sh deploy/graylog-input.sh
set -eu

url="${GRAYLOG_URL:-http://graylog:9000}"
auth="${GRAYLOG_USER:-admin}:${GRAYLOG_PASSWORD:-admin}"
port="${GELF_PORT:-12201}"
title="${GELF_INPUT_TITLE:-binlog-replica GELF UDP}"
tries="${GRAYLOG_WAIT_TRIES:-120}"
pause="${GRAYLOG_WAIT_PAUSE:-5}"

n=0
until inputs=$(curl -fsS -u "$auth" -H 'Accept: application/json' "$url/api/system/inputs" 2>/dev/null); do
  n=$((n + 1))
  if [ "$n" -ge "$tries" ]; then
    echo "Graylog at $url did not answer after $tries tries; is it running, and are GRAYLOG_USER/GRAYLOG_PASSWORD right?" >&2
    exit 1
  fi
  sleep "$pause"
done

case "$inputs" in
  *"\"title\":\"$title\""*)
    echo "GELF input \"$title\" already exists"
    exit 0
    ;;
esac

curl -fsS -u "$auth" -X POST "$url/api/system/inputs" \
  -H 'Content-Type: application/json' -H 'X-Requested-By: binlog-replica' \
  -d "{\"title\":\"$title\",\"type\":\"org.graylog2.inputs.gelf.udp.GELFUDPInput\",\"global\":true,\"configuration\":{\"bind_address\":\"0.0.0.0\",\"port\":$port,\"recv_buffer_size\":262144,\"decompress_size_limit\":8388608}}"
echo
echo "GELF input \"$title\" created on port $port/udp"
