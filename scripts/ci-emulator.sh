#!/usr/bin/env bash
# ci-emulator.sh: start an emulated Mongoose OS device in the background for
# the steps of a CI job, and tell them where it is. The composite action
# (action.yml at the repository root) runs it; it works in any CI, or in a
# shell: eval "$(scripts/ci-emulator.sh)".
#
# Environment:
#   OTACTL_EMULATOR_DIR   where the emulator keeps its flash (DIR/flash), its
#                         ready file and its log (DIR/emulator.log: the device
#                         log); default: a new temporary directory
#   OTACTL_EMULATOR_ARGS  more `otactl emulator` flags, split on spaces
#                         (--reboot-delay 200ms --mqtt-broker embedded:127.0.0.1:0)
#   GITHUB_ENV            when set (GitHub Actions), OTACTL_PORT,
#                         OTACTL_EMULATOR_DIR and OTACTL_EMULATOR_PID are
#                         appended to it for the next steps; GITHUB_OUTPUT
#                         gets port, dir and pid
#
# Prints `export OTACTL_PORT=…` lines (and the others) on stdout. The
# emulator listens on a free loopback port (HTTP and WebSocket), read from its
# ready file; OTACTL_PORT is its HTTP address. It keeps running after this
# script: stop it with `kill $OTACTL_EMULATOR_PID` (the runner kills it at the
# end of the job anyway). Exit 1, with the emulator's log, if it does not
# start within 30 s.
set -euo pipefail

dir=${OTACTL_EMULATOR_DIR:-}
if [[ -z "$dir" ]]; then
	dir=$(mktemp -d "${RUNNER_TEMP:-${TMPDIR:-/tmp}}/otactl-emulator.XXXXXX")
fi
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
ready=$dir/ready.json
log=$dir/emulator.log
rm -f "$ready" # a ready file from an earlier run is stale

read -ra extra <<<"${OTACTL_EMULATOR_ARGS:-}"
command -v otactl >/dev/null || { echo "ci-emulator.sh: otactl is not on PATH" >&2; exit 1; }

# setsid/nohup: the emulator outlives this step's shell.
launch=(nohup)
command -v setsid >/dev/null && launch=(setsid nohup)
"${launch[@]}" otactl emulator --state-dir "$dir/flash" --listen 127.0.0.1:0 \
	--ready-file "$ready" ${extra[@]+"${extra[@]}"} >>"$log" 2>&1 </dev/null &
pid=$!

for _ in $(seq 300); do
	[[ -s "$ready" ]] && break
	if ! kill -0 "$pid" 2>/dev/null; then
		wait "$pid" && rc=0 || rc=$?
		echo "ci-emulator.sh: otactl emulator exited (status $rc) before it was ready; its log ($log):" >&2
		cat "$log" >&2
		exit 1
	fi
	sleep 0.1
done
if [[ ! -s "$ready" ]]; then
	echo "ci-emulator.sh: otactl emulator not ready after 30 s; its log ($log):" >&2
	cat "$log" >&2
	kill "$pid" 2>/dev/null || true
	exit 1
fi

# The first listener is HTTP (or HTTPS with --tls-cert): --listen comes first.
port=$(sed -n 's/.*"addr": *"\([^"]*\)".*/\1/p' "$ready" | head -n 1)
if [[ -z "$port" ]]; then
	echo "ci-emulator.sh: no address in $ready:" >&2
	cat "$ready" >&2
	exit 1
fi

if [[ -n "${GITHUB_ENV:-}" ]]; then
	{
		echo "OTACTL_PORT=$port"
		echo "OTACTL_EMULATOR_DIR=$dir"
		echo "OTACTL_EMULATOR_PID=$pid"
	} >>"$GITHUB_ENV"
fi
if [[ -n "${GITHUB_OUTPUT:-}" ]]; then
	{
		echo "port=$port"
		echo "dir=$dir"
		echo "pid=$pid"
	} >>"$GITHUB_OUTPUT"
fi
printf 'export OTACTL_PORT=%q OTACTL_EMULATOR_DIR=%q OTACTL_EMULATOR_PID=%q\n' "$port" "$dir" "$pid"
echo "ci-emulator.sh: emulator (pid $pid) at $port; flash, ready file and log in $dir" >&2
