#!/usr/bin/env bash
# Runs "$@" with OTACTL_TEST_MOSQUITTO pointing at a private mosquitto broker
# on loopback, when mosquitto is installed and the variable is not set yet.
# Without mosquitto it just runs "$@" (the real-broker tests then skip).
set -euo pipefail

if [[ -n "${OTACTL_TEST_MOSQUITTO:-}" ]]; then
	exec "$@"
fi
MOSQ=$(command -v mosquitto || true)
[[ -z "$MOSQ" && -x /usr/sbin/mosquitto ]] && MOSQ=/usr/sbin/mosquitto
if [[ -z "$MOSQ" ]]; then
	echo "with-mosquitto: mosquitto not installed; real-broker tests will skip (apt-get install mosquitto to run them)" >&2
	exec "$@"
fi

# mosquitto serves as many clients as it may open files (max_connections is
# unlimited by default): lift the soft limit to the hard one, for the
# benchmark's thousand emulated devices.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

dir=$(mktemp -d)
pid=
cleanup() {
	[[ -n "$pid" ]] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
	rm -rf "$dir"
}
trap cleanup EXIT

# Pick a free loopback port, and retry if another process takes it first.
for attempt in 1 2 3 4 5; do
	port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo $((20000 + RANDOM % 20000)))
	cat >"$dir/mosquitto.conf" <<CONF
listener $port 127.0.0.1
allow_anonymous true
persistence false
log_dest stderr
log_type error
CONF
	"$MOSQ" -c "$dir/mosquitto.conf" 2>"$dir/log" &
	pid=$!
	for _ in $(seq 1 50); do
		if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
			break 2
		fi
		if ! kill -0 "$pid" 2>/dev/null; then
			break
		fi
		sleep 0.1
	done
	kill "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
	pid=
done
if [[ -z "$pid" ]]; then
	echo "with-mosquitto: could not start mosquitto:" >&2
	cat "$dir/log" >&2
	exit 1
fi
echo "with-mosquitto: mosquitto $($MOSQ -h 2>/dev/null | head -1 | awk '{print $3}') on 127.0.0.1:$port" >&2
export OTACTL_TEST_MOSQUITTO="127.0.0.1:$port"
"$@"
