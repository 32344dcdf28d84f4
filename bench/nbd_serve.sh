#!/bin/bash
# netblk serve vs qemu-nbd vs nbdkit's file plugin, same 1 GiB file, fio's nbd engine:
# 4k randread iodepth 32, 4k randwrite iodepth 32, 64k seqread (iodepth 8), over TCP and a
# unix socket. Each server is started for its run; runs are interleaved; medians of REPS
# repetitions and the ratios netblk/other are printed (> 1 means netblk is faster).
#
#   bench/nbd_serve.sh [REPS=3] [SECONDS=5]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"

REPS=${1:-3}
SECS=${2:-5}
NETBLK=${NETBLK:-$here/../build/netblk}
[ -x "$NETBLK" ] || { echo "no netblk binary at $NETBLK (set NETBLK=)"; exit 1; }
for p in fio qemu-nbd nbdkit python3; do command -v $p >/dev/null || { echo "$p is not installed"; exit 1; }; done

bench_workdir serve
image=$work/disk.raw
dd if=/dev/urandom of="$image" bs=1M count=1024 status=none

# fio's nbd engine prints a line on stdout before the JSON: read the JSON from a file.
fio_iops() {
  fio --output-format=json --output="$work/fio.json" "$@" >/dev/null
  python3 -c 'import json,sys; j=json.load(open(sys.argv[1]))["jobs"][0]; print(int(j["read"]["iops"]+j["write"]["iops"]))' "$work/fio.json"
}

# start_server NAME TRANSPORT -> sets server_pid and uri
start_server() {
  local name=$1 transport=$2 port= sock= address cmd
  if [ "$transport" = tcp ]; then port=$(bench_free_port); uri="nbd://127.0.0.1:$port/"; address=$port
  else sock=$work/$name.sock; rm -f "$sock"; uri="nbd+unix:///?socket=$sock"; address=$sock; fi
  case $name-$transport in
    netblk-tcp)  cmd=("$NETBLK" serve -t -e 0 -f raw -b 127.0.0.1 -p "$port" "$image") ;;
    netblk-unix) cmd=("$NETBLK" serve -t -e 0 -f raw -k "$sock" "$image") ;;
    qemu-nbd-tcp)  cmd=(qemu-nbd -t -e 0 -f raw -b 127.0.0.1 -p "$port" "$image") ;;
    qemu-nbd-unix) cmd=(qemu-nbd -t -e 0 -f raw -k "$sock" "$image") ;;
    nbdkit-tcp)  cmd=(nbdkit -f -i 127.0.0.1 -p "$port" file "$image") ;;
    nbdkit-unix) cmd=(nbdkit -f -U "$sock" file "$image") ;;
  esac
  bench_start_server "$transport" "$address" "${cmd[@]}"
}

servers=(netblk qemu-nbd nbdkit)
declare -A results
for transport in tcp unix; do
  for workload in randread-4k randwrite-4k seqread-64k; do
    case $workload in
      randread-4k)  fio_args=(--rw=randread --bs=4k --iodepth=32) ;;
      randwrite-4k) fio_args=(--rw=randwrite --bs=4k --iodepth=32) ;;
      seqread-64k)  fio_args=(--rw=read --bs=64k --iodepth=8) ;;
    esac
    echo "== $workload over $transport ($REPS repetitions of ${SECS}s, interleaved)"
    for ((rep = 1; rep <= REPS; rep++)); do
      for s in "${servers[@]}"; do
        start_server "$s" "$transport"
        iops=$(fio_iops --name=bench --ioengine=nbd --uri="$uri" "${fio_args[@]}" --size=1G \
                 --runtime="$SECS" --time_based --ramp_time=1)
        bench_stop_server
        results[$transport.$workload.$s]+="$iops "
        printf '  run %d  %-9s %8d IOPS\n' "$rep" "$s" "$iops"
      done
    done
    declare -A med
    for s in "${servers[@]}"; do
      med[$s]=$(echo "${results[$transport.$workload.$s]}" | tr ' ' '\n' | grep . | bench_median)
      printf '  median %-9s %8.0f IOPS  %8.1f MB/s\n' "$s" "${med[$s]}" \
        "$(echo "${med[$s]} * $(case $workload in *64k) echo 65536;; *) echo 4096;; esac) / 1000000" | bc -l)"
    done
    for s in qemu-nbd nbdkit; do
      printf '  ratio %.2fx  (netblk / %s)\n' "$(echo "${med[netblk]} / ${med[$s]}" | bc -l)" "$s"
    done
  done
done
