#!/bin/bash
# busy.sh [-t] ROOT CMD [ARGS...]
#
# Runs CMD once with ROOT/nix bind-mounted on /nix (a private mount
# namespace, through inroot.sh) and prints its wall, user and system time
# and how busy the machine's cores were meanwhile (from /proc/stat, so
# other processes count too): cores busy on average, and the shares of
# core time that were idle and iowait. With -t it also prints a line per
# half second: seconds since the start, cores busy, cores in the kernel,
# cores in iowait. Needs root (mount namespaces).
#
# Why: on the 2-core development VM both first-run targets of #4 and #5
# come down to whether the run keeps both cores busy. A run that is CPU
# time / cores long is at its floor for that CPU time; idle or iowait
# shares say how much waiting is left to remove, and the timeline says
# when (start-up, the tail, or evenly through the run).
#
# Example: sudo bench/busy.sh -t /srv/s30k bin/storekeeper optimise -q
set -euo pipefail
timeline=
if [ "${1:-}" = -t ]; then timeline=1; shift; fi
[ $# -ge 2 ] || { echo "usage: busy.sh [-t] ROOT CMD [ARGS...]" >&2; exit 2; }
ROOT=$(readlink -f "$1"); shift
[ -d "$ROOT/nix/store" ] || { echo "busy.sh: $ROOT/nix/store is not a directory" >&2; exit 2; }
HERE=$(dirname "$(readlink -f "$0")")
cores=$(getconf _NPROCESSORS_ONLN)
hz=$(getconf CLK_TCK)
# From the cpu line of /proc/stat (user nice system idle iowait irq
# softirq ...), in clock ticks: user, system, idle, iowait.
stat() { awk '$1=="cpu" {print $2+$3, $4+$7+$8, $5, $6}' /proc/stat; }

s0=$(stat)
t0=$(date +%s.%N)
sampler=
if [ -n "$timeline" ]; then
	(
		prev="$t0 $s0"
		while sleep 0.5; do
			cur="$(date +%s.%N) $(stat)"
			# $1 start; $2-$6 the previous sample, $7-$11 this one (time,
			# user, system, idle, iowait); $12 ticks a second
			echo "$t0 $prev $cur $hz" | awk '{
				ticks = ($7 - $2) * $12
				printf "%6.1f s  busy %.2f  sys %.2f  iowait %.2f\n", $7 - $1,
					($8 - $3 + $9 - $4) / ticks, ($9 - $4) / ticks, ($11 - $6) / ticks }'
			prev=$cur
		done
	) &
	sampler=$!
fi
TIMEFORMAT='%R %U %S'
status=0
tf=$(mktemp)
trap 'rm -f "$tf"' EXIT
{ time "$HERE/inroot.sh" "$ROOT" "$@" > /dev/null 2>&1 || status=$?; } 2> "$tf"
times=$(tail -1 "$tf")
[ -n "$sampler" ] && kill "$sampler" 2>/dev/null && wait "$sampler" 2>/dev/null || true
s1=$(stat)
[ "$status" = 0 ] || echo "busy.sh: '$*' exited with status $status" >&2
# $1-$3 wall, user and system seconds; $4-$7 and $8-$11 the samples
# before and after (user, system, idle, iowait ticks); $12 the cores
echo "$times $s0 $s1 $cores" | awk '{
	wall = $1; cores = $12
	busy = $8 - $4 + $9 - $5; idle = $10 - $6; io = $11 - $7
	total = busy + idle + io
	if (total <= 0) total = 1
	avg = cores * busy / total
	printf "%.2f s wall %.2f user %.2f sys\n", wall, $2, $3
	printf "cores: %.2f of %d busy, %.0f%% idle, %.0f%% iowait\n", avg, cores, 100 * idle / total, 100 * io / total }'
exit "$status"
