#!/bin/bash
# image/check-fastpath.sh ROOT: the fast path as the stage built it in ROOT (from
# image/build-chroot.sh; any architecture: ARCH=arm64 runs under qemu-user) against this
# checkout's, verdict by verdict, on the demo ward. Compiled for another CPU (the Pi's
# aarch64: unsigned char, other alignment rules, another compiler target), the same
# capture and policy must give the same verdict, reason and rule for every packet and the
# same summary.
#
#   image/check-fastpath.sh ROOT       # exit 0: identical
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
ROOT=${1:?usage: image/check-fastpath.sh ROOT}
WARDTAP=$REPO/.venv/bin/wardtap
work=$(mktemp -d)
inside=$ROOT/tmp/wardtap-check
cleanup() {
	umount -l "$ROOT/dev" 2>/dev/null || true
	rm -rf "$work" "$inside"
}
trap cleanup EXIT

"$WARDTAP" demo --dir "$work/dw" >/dev/null
mkdir -p "$inside"
cp "$work/dw/ward.pcap" "$work/dw/ward-policy.toml" "$inside/"
mount --bind /dev "$ROOT/dev"
# The summary without timings, paths and the idle-sweep counts: the flow table's hash is
# seeded at random per run, so by the capture's end the incremental idle sweep has reached
# different idle flows (flows_active/flows_ended vary by a few even on one machine).
summary_fields='{k: ({c: n for c, n in v.items() if c not in ("flows_active", "flows_ended")} if k == "counters" else v) for k, v in d.items() if k not in ("elapsed_s", "packets_per_second", "memory_bytes", "process_memory_kib", "captures", "policy")}'

"$WARDTAP" replay "$inside/ward.pcap" --policy "$inside/ward-policy.toml" --json \
	--packets-out "$work/here.packets" >"$work/here.json"
start=$(date +%s)
chroot "$ROOT" /opt/wardtap/bin/wardtap replay /tmp/wardtap-check/ward.pcap \
	--policy /tmp/wardtap-check/ward-policy.toml --json \
	--packets-out /tmp/wardtap-check/there.packets >"$work/there.json"
echo "replay in $ROOT ($(chroot "$ROOT" uname -m)): $(($(date +%s) - start)) s"

packets=$(wc -l <"$work/here.packets")
if ! cmp -s "$work/here.packets" "$inside/there.packets"; then
	echo "DIFFERENT verdicts ($packets packets here):"
	diff "$work/here.packets" "$inside/there.packets" | head -20
	exit 1
fi
for side in here there; do
	python3 -c "import json, sys; d = json.load(open(sys.argv[1])); print(json.dumps($summary_fields, sort_keys=True))" \
		"$work/$side.json" >"$work/$side.summary"
done
if ! cmp -s "$work/here.summary" "$work/there.summary"; then
	echo "DIFFERENT summaries:"
	diff "$work/here.summary" "$work/there.summary" | head -20
	exit 1
fi
echo "same verdict, reason and rule for all $packets packets, and the same summary ($(uname -m) here)"
