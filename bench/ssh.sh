#!/usr/bin/env bash
# SSH (SFTP), both directions: netblk convert vs qemu-img convert -m 1 (under a timeout) vs
# OpenSSH's sftp client (get/put), copying one 256 MiB file between a local directory and
# the same directory served by OpenSSH's sshd on 127.0.0.1 (its own config and host key;
# root logs in with a key held by an ssh-agent). The files live on disk (BENCH_DIR,
# /var/tmp by default, not /dev/shm); the source is in the page cache, and the target is
# removed (and memory warmed: see bench_warm_memory) before every run.
#   NETBLK=path/to/netblk REPS=5 [BENCH_DIR=/var/tmp] bench/ssh.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
NETBLK=${NETBLK:-$here/../build/netblk}
REPS=${REPS:-5}
SIZE=$((256 << 20))

bench_workdir ssh
dir=$work
sshd_pid= agent_pid=
# sshd and the agent, by PID, then the files.
trap 'kill $sshd_pid $agent_pid 2>/dev/null || true; wait $sshd_pid $agent_pid 2>/dev/null || true; rm -rf "$dir"' EXIT

port=$(bench_free_port)
ssh-keygen -q -t ed25519 -N '' -f "$dir/host_key"
ssh-keygen -q -t ed25519 -N '' -f "$dir/client_key"
cp "$dir/client_key.pub" "$dir/authorized_keys"
cat > "$dir/sshd_config" <<CONF
Port $port
ListenAddress 127.0.0.1
HostKey $dir/host_key
PidFile $dir/sshd.pid
AuthorizedKeysFile $dir/authorized_keys
UsePAM no
StrictModes no
PrintMotd no
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
Subsystem sftp internal-sftp
CONF
mkdir -p /run/sshd
/usr/sbin/sshd -D -e -f "$dir/sshd_config" 2>"$dir/sshd.log" & sshd_pid=$!
ssh-agent -D -a "$dir/agent.sock" >/dev/null & agent_pid=$!
export SSH_AUTH_SOCK=$dir/agent.sock
bench_wait_listen tcp "$port"
bench_wait_listen unix "$SSH_AUTH_SOCK"
ssh-add -q "$dir/client_key"
echo "[127.0.0.1]:$port $(cut -d' ' -f1,2 "$dir/host_key.pub")" > "$dir/known_hosts"
hash=$(cut -d' ' -f2 "$dir/host_key.pub" | base64 -d | sha256sum | cut -d' ' -f1)

head -c $SIZE /dev/urandom > "$dir/src.img"
cat "$dir/src.img" > /dev/null
remote() { echo "ssh://root@127.0.0.1:$port$dir/$1?host_key_check=sha256:$hash"; }
sftp_batch() {
  echo "$1" | sftp -q -b - -P "$port" -o BatchMode=yes -o UserKnownHostsFile="$dir/known_hosts" \
    -o StrictHostKeyChecking=yes root@127.0.0.1 >/dev/null
}

echo "netblk: $NETBLK; $(qemu-img --version | head -1); $(ssh -V 2>&1); files in $dir"

BENCH_PREPARE="rm -f '$dir/out.raw'; bench_warm_memory 512"
bench_run "ssh read: 256 MiB from sshd into a local file" "$REPS" $SIZE \
  "'$NETBLK' convert -O raw '$(remote src.img)' '$dir/out.raw'" \
  "timeout 300 qemu-img convert -m 1 -O raw '$(remote src.img)' '$dir/out.raw'" \
  "sftp_batch 'get $dir/src.img $dir/out.raw'"
cmp "$dir/src.img" "$dir/out.raw"

BENCH_PREPARE="rm -f '$dir/up.raw'; bench_warm_memory 512"
bench_run "ssh write: 256 MiB from a local file to sshd" "$REPS" $SIZE \
  "'$NETBLK' convert -O raw '$dir/src.img' '$(remote up.raw)'" \
  "timeout 300 qemu-img convert -m 1 -O raw '$dir/src.img' '$(remote up.raw)'" \
  "sftp_batch 'put $dir/src.img $dir/up.raw'"
cmp "$dir/src.img" "$dir/up.raw"
