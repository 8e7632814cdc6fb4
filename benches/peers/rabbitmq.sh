#!/usr/bin/env bash
# RabbitMQ with Web-STOMP, the peer of the STOMP load benchmark (benches/stomp_load.rs).
#
#   rabbitmq.sh install     apt-get install rabbitmq-server if it is missing (full runs only)
#   rabbitmq.sh start DIR [OWNER_PID]
#                           starts a broker with everything under DIR; prints its pid when
#                           ws://127.0.0.1:15674/ws accepts connections. With OWNER_PID, a
#                           watchdog stops the broker once that process is gone (the bench
#                           killed or interrupted before it could stop it)
#   rabbitmq.sh stop DIR    stops the broker started with DIR (by pid), and epmd if it started it
#
# Runs the package's own script (not the Debian wrapper, which drops to the rabbitmq user with
# 1024 file descriptors) after `ulimit -n 20000`, so 10,000 clients can connect. Login
# guest/guest (allowed from loopback), destinations /topic/...
set -euo pipefail

cmd="${1:-}"
dir="${2:-}"
owner="${3:-}"
WS_PORT=15674

server_script() {
    local s
    for s in /usr/lib/rabbitmq/lib/rabbitmq_server-*/sbin/rabbitmq-server; do
        if [ -x "$s" ]; then echo "$s"; return 0; fi
    done
    return 1
}

descendant_named() { # pid name: the first descendant of pid whose command is name
    local pid="$1" name="$2" child
    for child in $(pgrep -P "$pid" || true); do
        if [ "$(cat "/proc/$child/comm" 2>/dev/null)" = "$name" ]; then echo "$child"; return 0; fi
        if descendant_named "$child" "$name"; then return 0; fi
    done
    return 1
}

case "$cmd" in
install)
    if ! server_script >/dev/null; then
        sudo=""
        if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
        $sudo apt-get update -q
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends rabbitmq-server
    fi
    ;;
start)
    [ -n "$dir" ] || { echo "usage: $0 start DIR" >&2; exit 2; }
    script="$(server_script)" || { echo "rabbitmq-server is not installed: $0 install" >&2; exit 1; }
    if (exec 3<>"/dev/tcp/127.0.0.1/$WS_PORT") 2>/dev/null; then
        echo "port $WS_PORT is already in use: is another broker running?" >&2
        exit 1
    fi
    mkdir -p "$dir/mnesia" "$dir/log" "$dir/home"
    echo '[rabbitmq_web_stomp].' >"$dir/enabled_plugins"
    # Plain TCP listener on loopback only; no management UI.
    cat >"$dir/rabbitmq.conf" <<CONF
listeners.tcp.default = 127.0.0.1:5672
web_stomp.tcp.ip = 127.0.0.1
web_stomp.tcp.port = $WS_PORT
loopback_users.guest = true
CONF
    if id rabbitmq >/dev/null 2>&1; then chown -R rabbitmq "$dir"; fi
    chmod -R a+rwX "$dir"
    if pgrep -x epmd >/dev/null; then : >"$dir/epmd.preexisting"; fi
    (
        ulimit -n 20000
        export HOME="$dir/home"
        export RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins"
        export RABBITMQ_MNESIA_BASE="$dir/mnesia"
        export RABBITMQ_LOG_BASE="$dir/log"
        export RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf"
        export RABBITMQ_NODENAME="neulbi-bench@localhost"
        export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
        setsid "$script" >"$dir/server.out" 2>&1 </dev/null &
        echo $! >"$dir/launcher.pid"
    )
    launcher="$(cat "$dir/launcher.pid")"
    if [ -n "$owner" ]; then
        setsid bash "$0" watch "$dir" "$owner" >/dev/null 2>&1 </dev/null &
    fi
    for _ in $(seq 1 600); do
        if ! kill -0 "$launcher" 2>/dev/null; then
            echo "rabbitmq-server exited during start-up:" >&2
            tail -30 "$dir/server.out" >&2
            exit 1
        fi
        if (exec 3<>"/dev/tcp/127.0.0.1/$WS_PORT") 2>/dev/null; then
            beam="$(descendant_named "$launcher" beam.smp)" || { echo "no beam.smp under $launcher" >&2; exit 1; }
            echo "$beam" >"$dir/beam.pid"
            echo "$beam"
            exit 0
        fi
        sleep 0.2
    done
    echo "RabbitMQ Web-STOMP did not open port $WS_PORT in 120 s" >&2
    tail -30 "$dir/server.out" >&2
    exit 1
    ;;
watch)
    # Until the owner is gone (then stop the broker) or the broker is (then nothing to do).
    while kill -0 "$owner" 2>/dev/null; do
        [ -f "$dir/launcher.pid" ] && kill -0 "$(cat "$dir/launcher.pid")" 2>/dev/null || exit 0
        sleep 1
    done
    [ -d "$dir" ] && exec bash "$0" stop "$dir"
    ;;
stop)
    [ -n "$dir" ] || { echo "usage: $0 stop DIR" >&2; exit 2; }
    for f in launcher.pid beam.pid; do
        if [ -f "$dir/$f" ]; then kill -TERM "$(cat "$dir/$f")" 2>/dev/null || true; fi
    done
    for _ in $(seq 1 100); do
        alive=0
        for f in launcher.pid beam.pid; do
            if [ -f "$dir/$f" ] && kill -0 "$(cat "$dir/$f")" 2>/dev/null; then alive=1; fi
        done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    for f in launcher.pid beam.pid; do
        if [ -f "$dir/$f" ]; then kill -KILL "$(cat "$dir/$f")" 2>/dev/null || true; fi
    done
    # epmd is a daemon the broker starts; stop it only if it was not running before.
    if [ ! -f "$dir/epmd.preexisting" ] && command -v epmd >/dev/null; then
        epmd -kill >/dev/null 2>&1 || true
    fi
    ;;
*)
    echo "usage: $0 install | start DIR [OWNER_PID] | stop DIR" >&2
    exit 2
    ;;
esac
