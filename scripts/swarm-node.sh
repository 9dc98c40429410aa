#!/usr/bin/env bash
# A second Docker Swarm node on this machine, for tests and for trying opsbot on two nodes.
#
#   scripts/swarm-node.sh up [NAME]      start it and join the local manager's swarm as a worker
#   scripts/swarm-node.sh down [NAME]    leave the swarm, stop it, remove every piece of it
#   scripts/swarm-node.sh status [NAME]  say whether it runs and what the manager sees
#   scripts/swarm-node.sh stop [NAME]    stop only its engine, as when a machine fails
#   scripts/swarm-node.sh start [NAME]   start that engine again; it rejoins by itself
#   scripts/swarm-node.sh load IMAGE...  copy images from the local engine onto it
#
# NAME defaults to $OPSBOT_NODE_NAME, else opsbot-node2.
#
# The node is a second dockerd (with its own containerd) in its own network namespace and its
# own UTS namespace (hostname NAME), with its own data root, exec root and socket
# (/run/opsbot-node/NAME/docker.sock), reached from the host over a veth pair: the host side is
# 10.231.N.1, the node 10.231.N.2 (N from OPSBOT_NODE_NET, default 0). Containers with host
# networking on it listen on 10.231.N.2, which the gateway reaches like any other machine.
#
# The manager advertises 127.0.0.1 (one machine), and a worker keeps dialling the addresses
# managers advertise; inside the node's namespace a forwarder (socat) turns 127.0.0.1:2377 into
# the host's end of the veth, where the manager listens on every address (--listen-addr
# 0.0.0.0:2377, the default). Its remote address is the node's own, so the manager reports the
# node at 10.231.N.2.
#
# Both subcommands are idempotent: `up` on a running, joined node changes nothing; `up` and
# `down` first remove what an interrupted run left (processes by their pid files, the
# namespace, the veth, the manager's nodes of that name). `up` loads every
# opsbot-serving image of the local engine onto the node (the node has its own image store;
# `up --no-images` loads none); `down --purge` also deletes its data root (images included).
#
# Needs root, iproute2, util-linux (nsenter, unshare), socat, dockerd and containerd; the local
# engine must be a swarm manager. No iptables: like the main engine, the node runs with
# --iptables=false --bridge=none and containers use host networking.
set -euo pipefail

cmd=${1:-}
shift || true
purge=0
images=1
args=()
for a in "$@"; do
  case $a in
    --purge) purge=1 ;;
    --no-images) images=0 ;;
    *) args+=("$a") ;;
  esac
done
name=${OPSBOT_NODE_NAME:-opsbot-node2}
if [[ $cmd != load ]] && ((${#args[@]})); then
  name=${args[0]}
fi
[[ $name =~ ^[a-z][a-z0-9-]{0,30}$ ]] || {
  echo "swarm-node: NAME must be lower-case letters, digits and '-' (got '$name')" >&2
  exit 2
}
net=${OPSBOT_NODE_NET:-0}
if ! [[ $net =~ ^[0-9]+$ ]] || ((net > 255)); then
  echo "swarm-node: OPSBOT_NODE_NET must be 0-255 (got '$net')" >&2
  exit 2
fi
host_ip=10.231.$net.1
node_ip=10.231.$net.2
# Interface names are at most 15 characters: a short hash of the name keeps them unique.
tag=$(printf '%s' "$name" | sha256sum | cut -c1-8)
veth_host=obn$tag
veth_node=obx$tag
run=/run/opsbot-node/$name
data=/var/lib/opsbot-node/$name
sock=$run/docker.sock
manager=(docker)
node=(docker -H "unix://$sock")

log() { echo "swarm-node[$name]: $*" >&2; }

kill_pidfile() { # stop the process a pid file names (if it is still that program), then wait
  local file=$1 prog=$2 pid
  [[ -f $file ]] || return 0
  pid=$(cat "$file" 2>/dev/null || true)
  if [[ -n $pid ]] && [[ -r /proc/$pid/comm ]] && [[ $(cat "/proc/$pid/comm") == "$prog"* ]]; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
      [[ -d /proc/$pid ]] || break
      sleep 0.2
    done
    if [[ -d /proc/$pid ]]; then
      log "$prog ($pid) did not stop in 20 s; killing it"
      kill -9 "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$file"
}

node_ids() { # the manager's node ids for this name (hostname), with their state
  "${manager[@]}" node ls --format '{{.ID}} {{.Hostname}} {{.Status}}' | awk -v n="$name" '$2 == n'
}

stop_processes() {
  kill_pidfile "$run/socat.pid" socat
  kill_pidfile "$run/docker.pid" dockerd
  kill_pidfile "$run/containerd.pid" containerd
  # Shims of containers still running under the node's containerd (it was killed hard).
  local pid
  for pid in $(pgrep -f "containerd-shim.*-address $run/containerd.sock" 2>/dev/null || true); do
    kill -9 "$pid" 2>/dev/null || true
  done
}

remove_network() {
  ip link del "$veth_host" 2>/dev/null || true
  ip netns del "$name" 2>/dev/null || true
}

unmount_leftovers() { # mounts the node's engine left in the host's table (after a hard kill)
  local m
  while read -r m; do
    umount -l "$m" 2>/dev/null || true
  done < <(awk -v d="$data" -v r="$run" 'index($2, d) == 1 || index($2, r) == 1 {print $2}' \
    /proc/self/mounts | sort -r)
}

forget_nodes() { # every node of this name the manager lists is a leftover of an earlier run
  local id _
  while read -r id _; do
    if [[ -n $id ]]; then
      "${manager[@]}" node rm --force "$id" >/dev/null 2>&1 || true
    fi
  done < <(node_ids)
}

node_answers() { "${node[@]}" info >/dev/null 2>&1; }

cmd_down() {
  if node_answers; then
    "${node[@]}" swarm leave --force >/dev/null 2>&1 || true
  fi
  forget_nodes
  stop_processes
  remove_network
  unmount_leftovers
  rm -rf "$run"
  if ((purge)); then
    rm -rf "$data"
  fi
  log "down"
}

start_network() {
  ip netns add "$name"
  ip link add "$veth_host" type veth peer name "$veth_node"
  ip link set "$veth_node" netns "$name"
  ip addr add "$host_ip/30" dev "$veth_host"
  ip link set "$veth_host" up
  ip -n "$name" addr add "$node_ip/30" dev "$veth_node"
  ip -n "$name" link set "$veth_node" up
  ip -n "$name" link set lo up
}

in_node() { # run a program inside the node's network and UTS namespaces, detached, logging
  local logfile=$1
  shift
  # shellcheck disable=SC2016 # the inner shell expands $0 and $@
  nsenter --net="/run/netns/$name" unshare --uts sh -c 'hostname "$0"; exec "$@"' "$name" "$@" \
    >>"$logfile" 2>&1 </dev/null &
}

wait_for() { # wait_for WHAT SECONDS COMMAND...
  local what=$1 secs=$2
  shift 2
  for _ in $(seq 1 $((secs * 5))); do
    if "$@"; then return 0; fi
    sleep 0.2
  done
  log "timed out after ${secs} s waiting for $what"
  return 1
}

start_engine() {
  mkdir -p "$run" "$data"
  cat >"$run/containerd.toml" <<EOF
version = 2
root = "$data/containerd"
state = "$run/containerd"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$run/containerd.sock"
[ttrpc]
  address = "$run/containerd.sock.ttrpc"
[debug]
  address = ""
EOF
  # nsenter, unshare and sh each exec the next: $! is the program's own pid.
  in_node "$run/containerd.log" containerd --config "$run/containerd.toml"
  echo $! >"$run/containerd.pid"
  wait_for "containerd" 30 test -S "$run/containerd.sock"
  in_node "$run/dockerd.log" dockerd \
    --host "unix://$sock" --data-root "$data/docker" --exec-root "$run/exec" \
    --pidfile "$run/docker.pid" --containerd "$run/containerd.sock" \
    --iptables=false --bridge=none --ip-masq=false --cgroup-parent "opsbot-$name"
  if ! wait_for "the node's engine" 60 node_answers; then
    tail -20 "$run/dockerd.log" >&2
    return 1
  fi
}

start_forwarder() {
  # The forwarder that makes the manager's advertised 127.0.0.1:2377 reach the manager.
  in_node "$run/socat.log" socat "TCP-LISTEN:2377,bind=127.0.0.1,fork,reuseaddr" \
    "TCP:$host_ip:2377"
  echo $! >"$run/socat.pid"
}

joined() { # the node is a ready worker of the manager's swarm
  local state
  state=$("${node[@]}" info --format '{{.Swarm.LocalNodeState}} {{.Swarm.NodeID}}' 2>/dev/null) || return 1
  [[ $state == active\ * ]] || return 1
  "${manager[@]}" node inspect "${state#active }" --format '{{.Status.State}}' 2>/dev/null |
    grep -qx ready
}

join() {
  local token
  if ! nsenter --net="/run/netns/$name" timeout 5 bash -c "exec 3<>/dev/tcp/$host_ip/2377" \
    2>/dev/null; then
    log "the manager does not answer on $host_ip:2377 from the node: it must listen on every" \
      "address (docker swarm init --listen-addr 0.0.0.0:2377, the default)"
    return 1
  fi
  token=$("${manager[@]}" swarm join-token -q worker)
  "${node[@]}" swarm join --token "$token" --advertise-addr "$node_ip" \
    --listen-addr "$node_ip:2377" "$host_ip:2377" >/dev/null
  wait_for "the manager to list the node as ready" 60 joined
}

cmd_load() { # copy images from the local engine onto the node unless it has them
  local image
  for image in "$@"; do
    if ! "${node[@]}" image inspect "$image" >/dev/null 2>&1; then
      log "loading $image"
      "${manager[@]}" save "$image" | "${node[@]}" load -q >/dev/null
    fi
  done
}

serving_images() {
  "${manager[@]}" images --format '{{.Repository}}:{{.Tag}}' opsbot-serving | grep -v ':<none>$' || true
}

cmd_up() {
  [[ $(id -u) == 0 ]] || { log "needs root (network namespaces, a second engine)"; exit 1; }
  for prog in ip nsenter unshare socat dockerd containerd docker; do
    command -v "$prog" >/dev/null || { log "needs $prog on the PATH"; exit 1; }
  done
  local state
  state=$("${manager[@]}" info --format '{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}')
  [[ $state == "active true" ]] || {
    log "the local engine must be a swarm manager (it is: $state); run" \
      "docker swarm init --advertise-addr 127.0.0.1"
    exit 1
  }
  if node_answers && joined && [[ -e /run/netns/$name ]]; then
    log "up already ($node_ip)"
  else
    # Whatever an interrupted run left goes first; the data root (images) is kept.
    if node_answers; then
      "${node[@]}" swarm leave --force >/dev/null 2>&1 || true
    fi
    stop_processes
    remove_network
    unmount_leftovers
    forget_nodes
    rm -rf "$run"
    start_network
    start_engine
    start_forwarder
    # A data root kept from an earlier run may hold that run's swarm state.
    "${node[@]}" swarm leave --force >/dev/null 2>&1 || true
    join
    log "up: worker $name at $node_ip (DOCKER_HOST=unix://$sock)"
  fi
  if ((images)); then
    local found
    mapfile -t found < <(serving_images)
    if ((${#found[@]})); then
      cmd_load "${found[@]}"
    fi
  fi
}

cmd_stop() { # the node fails: its engine stops; the namespace and its swarm membership stay
  [[ -e /run/netns/$name ]] || { log "not up; run: $0 up $name"; exit 1; }
  kill_pidfile "$run/docker.pid" dockerd
  kill_pidfile "$run/containerd.pid" containerd
  log "engine stopped"
}

cmd_start() { # the node comes back: its engine starts with its state and rejoins by itself
  [[ -e /run/netns/$name ]] || { log "not up; run: $0 up $name"; exit 1; }
  if ! node_answers; then
    start_engine
  fi
  wait_for "the manager to list the node as ready again" 60 joined
  log "engine running again"
}

cmd_status() {
  if node_answers; then
    echo "engine: running (unix://$sock), address $node_ip"
  else
    echo "engine: not running"
  fi
  node_ids | sed 's/^/manager lists: /'
}

case $cmd in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  stop) cmd_stop ;;
  start) cmd_start ;;
  load)
    node_answers || { log "not running; run: $0 up $name"; exit 1; }
    cmd_load "${args[@]}"
    ;;
  *)
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
