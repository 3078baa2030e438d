#!/usr/bin/env bash
# otactl demo: a guided update and an automatic rollback, against the
# built-in device emulator. Run it with `make demo` (it builds bin/otactl).
set -euo pipefail

bindir=$(cd "$(dirname "$0")/.." && pwd)/bin
export PATH="$bindir:$PATH"
OTACTL=otactl
work=$(mktemp -d)
cd "$work"
emu_pid=
cleanup() {
	if [[ -n "$emu_pid" ]] && kill -0 "$emu_pid" 2>/dev/null; then
		kill "$emu_pid" && wait "$emu_pid" 2>/dev/null || true
	fi
	rm -rf "$work"
}
trap cleanup EXIT

bold=$'\e[1m'; dim=$'\e[2m'; off=$'\e[0m'
if [[ ! -t 1 || -n "${NO_COLOR:-}" ]]; then bold=; dim=; off=; fi
say() { printf '\n%s# %s%s\n' "$bold" "$*" "$off"; }
run() { printf '%s$ %s%s\n' "$dim" "$*" "$off"; "$@"; }

say "1. Start an emulated Mongoose OS device (HTTP + WebSocket on a free port; its flash lives in a temp dir)"
emu_args=(emulator --state-dir flash --listen 127.0.0.1:0 --ready-file ready.json --reboot-delay 1s --quiet)
printf '%s$ %s %s &%s\n' "$dim" "$OTACTL" "${emu_args[*]}" "$off"
"$OTACTL" "${emu_args[@]}" >emulator.out 2>&1 &
emu_pid=$!
for _ in $(seq 1 100); do [[ -s "ready.json" ]] && break; sleep 0.1; done
if [[ ! -s "ready.json" ]]; then
	echo "the emulator did not start:" >&2; cat "emulator.out" >&2; exit 1
fi
cat "emulator.out"
port=$(sed -n 's/.*"addr": "\(http:[^"]*\)".*/\1/p' "ready.json")
export OTACTL_PORT=$port
echo "${dim}(OTACTL_PORT=$port: every command below talks to it)${off}"

say "2. What runs now: the factory firmware, committed"
run "$OTACTL" bootstate

say "3. Build two firmware bundles, as 'mos build' would (manifest + app image with checksums)"
head -c 400000 /dev/urandom >"app-2.0.0.bin"
head -c 420000 /dev/urandom >"app-2.1.0.bin"
run "$OTACTL" bundle create -o "fw-2.0.0.zip" --platform esp32 --version 2.0.0 --name demo-app \
	"app:src=app-2.0.0.bin,addr=0x10000,type=app"
run "$OTACTL" bundle create -o "fw-2.1.0.zip" --platform esp32 --version 2.1.0 --name demo-app \
	"app:src=app-2.1.0.bin,addr=0x10000,type=app"
run "$OTACTL" bundle inspect "fw-2.0.0.zip"

say "4. Update to 2.0.0 and commit: otactl serves the bundle, the device downloads it, reboots, and otactl waits for the new firmware to answer before committing"
run "$OTACTL" update --file "fw-2.0.0.zip" --commit
run "$OTACTL" bootstate

say "5. Update to 2.1.0 with a 5-second commit timeout and do NOT commit: the device falls back by itself"
run "$OTACTL" update --file "fw-2.1.0.zip" --commit-timeout 5
run "$OTACTL" bootstate
printf '%s(waiting for the commit timeout to pass…)%s\n' "$dim" "$off"
for _ in $(seq 1 40); do
	sleep 0.5
	if "$OTACTL" bootstate --json 2>/dev/null | grep -q '"is_committed": true'; then break; fi
done
run "$OTACTL" bootstate

say "6. The same, machine-readable, for scripts"
run "$OTACTL" bootstate --json

say "Done: 2.0.0 was committed, 2.1.0 was never committed and rolled back. Stopping the emulator."
