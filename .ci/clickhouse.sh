#!/usr/bin/env bash
# Start or stop a private ClickHouse server (Debian's clickhouse-server) for the tests.
#   .ci/clickhouse.sh start DIR TCP_PORT HTTP_PORT   -> prints the PID
#   .ci/clickhouse.sh stop DIR
# It does not start by itself (no systemd here), so it runs with a private config.
set -euo pipefail
cmd=$1 dir=$2
case "$cmd" in
start)
  tcp=$3 http=$4
  mkdir -p "$dir"/{data,tmp,user_files,format_schemas,log}
  cat >"$dir/config.xml" <<XML
<yandex>
  <logger><level>warning</level><log>$dir/log/server.log</log><errorlog>$dir/log/error.log</errorlog></logger>
  <path>$dir/data/</path>
  <tmp_path>$dir/tmp/</tmp_path>
  <user_files_path>$dir/user_files/</user_files_path>
  <format_schema_path>$dir/format_schemas/</format_schema_path>
  <listen_host>127.0.0.1</listen_host>
  <tcp_port>$tcp</tcp_port>
  <http_port>$http</http_port>
  <interserver_http_port>$((http + 1))</interserver_http_port>
  <users_config>/etc/clickhouse-server/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <mark_cache_size>268435456</mark_cache_size>
</yandex>
XML
  /usr/sbin/clickhouse-server --config-file="$dir/config.xml" >"$dir/log/stdout.log" 2>&1 &
  echo $! >"$dir/pid"
  for _ in $(seq 1 100); do
    if ! kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
      echo "ClickHouse exited at start (port $tcp or $http taken?); its log:" >&2
      tail -n 20 "$dir/log/error.log" "$dir/log/stdout.log" >&2 || true
      exit 1
    fi
    if curl -sf "http://127.0.0.1:$http/ping" >/dev/null; then
      cat "$dir/pid"
      exit 0
    fi
    sleep 0.2
  done
  echo "ClickHouse did not answer on :$http; its log:" >&2
  tail -n 50 "$dir/log/error.log" "$dir/log/stdout.log" >&2 || true
  exit 1
  ;;
stop)
  if [ -f "$dir/pid" ]; then
    kill -TERM "$(cat "$dir/pid")" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$(cat "$dir/pid")" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$(cat "$dir/pid")" 2>/dev/null || true
  fi
  ;;
esac
