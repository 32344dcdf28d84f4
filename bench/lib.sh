# Benchmark runner, sourced by bench/*.sh.
#
#   bench_run NAME REPS UNIT_BYTES "netblk command" "reference command" ["another reference"...]
#
# Runs every command REPS times, interleaved (A B C, B C A, C A B, ...), so that machine
# noise hits them alike; prints each repetition's times (in the order the commands are
# given), then each command's median seconds and throughput
# (UNIT_BYTES / seconds, when UNIT_BYTES > 0), its slowest run against its median, and the ratio of the first command's speed to
# each other's (> 1 means netblk is faster). Each command first runs once untimed (a warm-up;
# BENCH_WARMUP=0 leaves it out). A command may use $BENCH_REP (the repetition number, 0 in
# the warm-up) and must leave no state the next repetition sees. A command that fails stops the
# benchmark.
#   BENCH_PREPARE="command"   runs, untimed, before every measured command (e.g. drop a
#                             target file, then bench_warm_memory)

BENCH_PREPARE=${BENCH_PREPARE:-}

# Writes MIB MiB of memory in a short-lived process and frees it (untimed, in BENCH_PREPARE),
# so that the measured command's page allocations reuse memory the host backs.
# Why: the development VMs report free memory to the host (virtio-balloon free page
# reporting, with no delay), and the first touch of a reported page costs the guest about
# 6 us. A copy that writes a 1 GiB file into /dev/shm took 1.0-2.5 s instead of 0.5-0.7 s
# whenever its pages came from reported blocks (/proc/vmstat's nr_free_pages_blocks fell by
# 40-100 thousand pages during exactly those copies), whichever tool made it. In two runs
# of bench/nbd_convert.sh, 31 of 108 copies took over 0.9 s; in two runs warmed this way,
# interleaved with those, none of 108 did. BENCH_WARM_MIB=0 turns it off.
bench_warm_memory() {
  local mib=${BENCH_WARM_MIB:-$1}
  ((mib > 0)) || return 0
  python3 -c 'import sys; b = bytearray(b"\x01") * (int(sys.argv[1]) << 20)' "$mib"
}

# Holds freed memory back from that reporting while bench_run times commands, and gives it
# back after: BENCH_HOLD_FREE_MS (default 60000) becomes the page_reporting module's
# min_free_ms (how long a free block waits before it is reported; 0 on these machines), and
# its max_waiting_mib (how much free memory may wait before it is reported anyway; 1024 on
# these machines) is raised out of reach.
# Why: without it, a copy into a file on disk took 2-5x its usual time in about a third of
# runs, for every tool alike: its page cache came from reported pages, and perf shows
# copy_folio_from_iter_atomic (pwrite's copy into those pages) at 0.8-1.0 s of CPU for
# 256 MiB instead of 0.04 s. Pages freed by the previous run (its output file removed, the
# warm-up below) are reported at once, so warming alone did not help on disk. Holding
# min_free_ms alone was not enough: removing a 1 GiB output and warming 1.5 GiB leaves more
# than 1 GiB waiting, and 2 GiB were reported during one bench/nbd_convert.sh run, whose
# copies then took up to 7x their median (netblk and qemu-img alike); with max_waiting_mib
# raised too, 8 MiB were reported and no copy took over 1.1x its median. A machine without
# that module is left alone. BENCH_HOLD_FREE_MS=0 turns it off.
bench_page_reporting=/sys/module/page_reporting/parameters
bench_hold_free_pages() {
  local ms=${BENCH_HOLD_FREE_MS:-60000}
  bench_held_free_ms=
  bench_held_waiting_mib=
  ((ms > 0)) && [ -w "$bench_page_reporting/min_free_ms" ] || return 0
  bench_held_free_ms=$(cat "$bench_page_reporting/min_free_ms")
  echo "$ms" >"$bench_page_reporting/min_free_ms"
  if [ -w "$bench_page_reporting/max_waiting_mib" ]; then
    bench_held_waiting_mib=$(cat "$bench_page_reporting/max_waiting_mib")
    echo $((1 << 20)) >"$bench_page_reporting/max_waiting_mib"
  fi
  bench_warm_memory 1024
}
bench_release_free_pages() {
  [ -n "${bench_held_free_ms:-}" ] && echo "$bench_held_free_ms" >"$bench_page_reporting/min_free_ms"
  [ -n "${bench_held_waiting_mib:-}" ] && echo "$bench_held_waiting_mib" >"$bench_page_reporting/max_waiting_mib"
  bench_held_free_ms=
  bench_held_waiting_mib=
}

bench_now() { date +%s.%N; }

bench_median() { sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

# Before each run of a bench_run command, timed or not: BENCH_PREPARE, and BENCH_REP set to
# the repetition (0: the untimed warm-up).
bench_before_run() {  # REP
  if [ -n "$BENCH_PREPARE" ]; then eval "$BENCH_PREPARE"; fi
  export BENCH_REP=$1
}

bench_run() {
  local name=$1 reps=$2 unit=$3
  shift 3
  local -a cmds=("$@")
  local n=${#cmds[@]}
  local tmp; tmp=$(mktemp -d)
  echo "== $name ($reps repetitions, interleaved)"
  bench_hold_free_pages
  # One untimed run of each command first (BENCH_WARMUP=0: none): the first command of the
  # first repetition otherwise meets caches and memory the others find warm.
  if [ "${BENCH_WARMUP:-1}" != 0 ]; then
    for ((i = 0; i < n; i++)); do
      bench_before_run 0
      eval "${cmds[$i]}" >/dev/null 2>&1 || true
    done
  fi
  local rep i k t0 t1 line
  for ((rep = 1; rep <= reps; rep++)); do
    line="  run $rep:"
    # Each repetition starts one command later (A B C, B C A, C A B, ...): no command always
    # follows the same other one, and so none always starts from what that one left behind.
    for ((k = 0; k < n; k++)); do
      i=$(((k + rep - 1) % n))
      bench_before_run "$rep"
      t0=$(bench_now)
      if ! eval "${cmds[$i]}" >"$tmp/out.$i" 2>&1; then
        echo "FAILED: ${cmds[$i]}"; cat "$tmp/out.$i"; rm -rf "$tmp"; bench_release_free_pages; return 1
      fi
      t1=$(bench_now)
      echo "$t1 - $t0" | bc -l >>"$tmp/times.$i"
    done
    for ((i = 0; i < n; i++)); do line+=$(printf ' %.3f' "$(sed -n "${rep}p" "$tmp/times.$i")"); done
    echo "$line"
  done
  bench_release_free_pages
  local -a med
  local slowest
  for ((i = 0; i < n; i++)); do
    med[$i]=$(bench_median <"$tmp/times.$i")
    slowest=$(sort -g "$tmp/times.$i" | tail -1)
    if ((unit > 0)); then
      printf '  median %8.3f s  %9.1f MB/s  slowest %.2fx median  %s\n' "${med[$i]}" \
        "$(echo "$unit / ${med[$i]} / 1000000" | bc -l)" "$(echo "$slowest / ${med[$i]}" | bc -l)" "${cmds[$i]}"
    else
      printf '  median %8.3f s  slowest %.2fx median  %s\n' "${med[$i]}" "$(echo "$slowest / ${med[$i]}" | bc -l)" "${cmds[$i]}"
    fi
  done
  for ((i = 1; i < n; i++)); do
    printf '  ratio %.2fx  (netblk speed / reference speed: %s)\n' "$(echo "${med[$i]} / ${med[0]}" | bc -l)" "${cmds[$i]%% *}"
  done
  rm -rf "$tmp"
}

# Runs `fio` and prints its IOPS (read+write) as the only output line.
bench_fio_iops() {
  # The nbd engine prints lines such as "connected" before the JSON: parse from the first '{'.
  fio --output-format=json "$@" | python3 -c 'import json,sys; t=sys.stdin.read(); j=json.loads(t[t.index("{"):])["jobs"][0]; print(int(j["read"]["iops"]+j["write"]["iops"]))'
}

# A free TCP port on 127.0.0.1.
bench_free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Waits (10 s at most) until a server listens: bench_wait_listen tcp|udp PORT, or
# bench_wait_listen unix PATH. Asks ss, so no probe connection reaches the server.
bench_wait_listen() {
  for _ in $(seq 200); do
    case $1 in
      tcp) ss -ltnH "sport = :$2" | grep -q . && return 0 ;;
      udp) ss -lunH "sport = :$2" | grep -q . && return 0 ;;
      unix) ss -lxH | grep -qF " $2 " && return 0 ;;
    esac
    sleep 0.05
  done
  echo "nothing listens on $1 $2" >&2
  return 1
}

# Where every benchmark keeps its images and output files: BENCH_DIR, /var/tmp (the
# machine's own disk file system, where users keep images) unless set. BENCH_DIR=/dev/shm
# gives the tmpfs view.
BENCH_DIR=${BENCH_DIR:-/var/tmp}

# A scratch directory $work (under BENCH_DIR) and the one server a script runs at a time
# ($server_pid, set after starting it): both go when the script exits.
#   bench_workdir NAME
bench_workdir() {
  work=$(mktemp -d "$BENCH_DIR/netblk-bench-$1.XXXXXX")
  chmod 755 "$work"
  server_pid=
  trap 'bench_stop_server; rm -rf "$work"' EXIT
}

# Starts a server in the background as $server_pid (stopped by bench_stop_server, or by
# bench_workdir's exit trap) and waits until it listens:
#   bench_start_server tcp|udp|unix PORT|PATH [--log FILE] COMMAND [ARG...]
# The server's output goes to FILE when given, else where the caller's goes.
bench_start_server() {
  local kind=$1 address=$2 log=
  shift 2
  if [ "$1" = --log ]; then log=$2; shift 2; fi
  if [ -n "$log" ]; then "$@" >"$log" 2>&1 & else "$@" & fi
  server_pid=$!
  bench_wait_listen "$kind" "$address"
}

# Stops the server in $server_pid (by PID) and forgets it.
bench_stop_server() {
  [ -n "$server_pid" ] || return 0
  kill "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=
}
