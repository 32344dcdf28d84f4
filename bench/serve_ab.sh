#!/bin/bash
# Two builds of netblk serve side by side (before and after a change): fio's nbd engine,
# 4k randread and randwrite at iodepth 32 over TCP and a unix socket, the same 1 GiB file,
# the two binaries alternating (A B, B A, ...); medians and the ratio B/A.
#
#   NETBLK_A=old/netblk NETBLK_B=build/netblk [REPS=5] [SECS=5] bench/serve_ab.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
A=${NETBLK_A:?set NETBLK_A to the netblk binary before the change}
B=${NETBLK_B:-$here/../build/netblk}
declare -A bin=([before]=$A [after]=$B)
REPS=${REPS:-5}; SECS=${SECS:-5}
bench_workdir ab
image=$work/disk.raw
dd if=/dev/urandom of="$image" bs=1M count=1024 status=none
fio_iops() {
  fio --output-format=json --output="$work/fio.json" "$@" >/dev/null
  python3 -c 'import json,sys; j=json.load(open(sys.argv[1]))["jobs"][0]; print(int(j["read"]["iops"]+j["write"]["iops"]))' "$work/fio.json"
}
for transport in tcp unix; do
for workload in randread-4k randwrite-4k; do
  case $workload in
    randread-4k)  fio_args=(--rw=randread --bs=4k --iodepth=32) ;;
    randwrite-4k) fio_args=(--rw=randwrite --bs=4k --iodepth=32) ;;
  esac
  declare -A res=()
  for ((rep = 1; rep <= REPS; rep++)); do
    order=(before after); ((rep % 2 == 0)) && order=(after before)
    for b in "${order[@]}"; do
      if [ $transport = tcp ]; then port=$(bench_free_port); uri="nbd://127.0.0.1:$port/"
        bench_start_server tcp "$port" "${bin[$b]}" serve -t -e 0 -f raw -b 127.0.0.1 -p "$port" "$image"
      else sock=$work/s.sock; rm -f $sock; uri="nbd+unix:///?socket=$sock"
        bench_start_server unix "$sock" "${bin[$b]}" serve -t -e 0 -f raw -k "$sock" "$image"; fi
      iops=$(fio_iops --name=bench --ioengine=nbd --uri="$uri" "${fio_args[@]}" --size=1G --runtime="$SECS" --time_based --ramp_time=1)
      bench_stop_server
      res[$b]+="$iops "
    done
  done
  mb=$(echo "${res[before]}" | tr ' ' '\n' | grep . | bench_median); ma=$(echo "${res[after]}" | tr ' ' '\n' | grep . | bench_median)
  printf '%s %s: before [%s] median %.0f | after [%s] median %.0f | B/A %.3f\n' "$workload" "$transport" "${res[before]}" "$mb" "${res[after]}" "$ma" "$(echo "$ma / $mb" | bc -l)"
done
done
