#!/usr/bin/env bash
# Start or stop a private ZooKeeper (Debian's `zookeeper` package) for the ClickHouse
# cluster tests: one standalone server with its own data directory and client port.
#   .ci/zookeeper.sh start DIR CLIENT_PORT   -> prints the PID
#   .ci/zookeeper.sh stop DIR
set -euo pipefail
cmd=$1 dir=$2
jars=/usr/share/java
case "$cmd" in
start)
  port=$3
  mkdir -p "$dir/data"
  cat >"$dir/zoo.cfg" <<CFG
tickTime=2000
dataDir=$dir/data
clientPort=$port
clientPortAddress=127.0.0.1
admin.enableServer=false
maxClientCnxns=0
4lw.commands.whitelist=ruok
CFG
  classpath=$(printf "$jars/%s.jar:" zookeeper zookeeper-jute slf4j-api slf4j-nop \
    netty-handler netty-common netty-buffer netty-transport netty-resolver netty-codec \
    netty-transport-native-epoll netty-transport-native-unix-common)
  java -Xmx256m -cp "$classpath" org.apache.zookeeper.server.quorum.QuorumPeerMain \
    "$dir/zoo.cfg" >"$dir/zookeeper.log" 2>&1 &
  echo $! >"$dir/pid"
  for _ in $(seq 1 150); do
    if ! kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
      echo "ZooKeeper exited at start (port $port taken?); its log:" >&2
      tail -n 20 "$dir/zookeeper.log" >&2
      exit 1
    fi
    # A server still starting may accept the connection and never answer: bound the probe.
    if [ "$(timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port; echo ruok >&3; cat <&3" 2>/dev/null)" = imok ]; then
      cat "$dir/pid"
      exit 0
    fi
    sleep 0.2
  done
  echo "ZooKeeper did not answer on :$port; its log:" >&2
  tail -n 50 "$dir/zookeeper.log" >&2
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
