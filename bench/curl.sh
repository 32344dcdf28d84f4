#!/usr/bin/env bash
# HTTP, HTTPS, FTP, FTPS and TFTP: netblk convert vs qemu-img convert -m 1 vs curl -o,
# each copying one 256 MiB file (served from the page cache by nginx, vsftpd and in.tftpd
# on 127.0.0.1) to a raw file in BENCH_DIR (bench/lib.sh: on disk unless set) that is
# removed before every run (and memory warmed: see bench_warm_memory).
# QEMU has no TFTP, and its ftps:// stalls on every read, so those rows are curl only.
# ONLY picks some rows (a space-separated list of http https ftp tftp ftps).
#   NETBLK=path/to/netblk REPS=5 [ONLY="tftp ftps"] bench/curl.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
NETBLK=${NETBLK:-$here/../build/netblk}
REPS=${REPS:-5}
ONLY=${ONLY:-http https ftp tftp ftps}
want() { [[ " $ONLY " == *" $1 "* ]]; }
SIZE=$((256 << 20))

bench_workdir curl
dir=$work
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$dir"
}
trap cleanup EXIT


mkdir -p "$dir/www" "$dir/empty" "$dir/tmp"
head -c $SIZE /dev/urandom > "$dir/www/disk.img"
chmod 755 "$dir/www" "$dir/empty"; chmod 644 "$dir/www/disk.img"
cat "$dir/www/disk.img" > /dev/null
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
  -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>/dev/null
chmod 644 "$dir/key.pem" "$dir/cert.pem"

http=$(bench_free_port); https=$(bench_free_port); ftp=$(bench_free_port); ftps=$(bench_free_port); tftp=$(bench_free_port)
cat > "$dir/nginx.conf" <<CONF
daemon off;
worker_processes 2;
pid $dir/nginx.pid;
error_log $dir/error.log;
events { worker_connections 512; }
http {
  access_log off;
  client_body_temp_path $dir/tmp/b; proxy_temp_path $dir/tmp/p; fastcgi_temp_path $dir/tmp/f;
  uwsgi_temp_path $dir/tmp/u; scgi_temp_path $dir/tmp/s;
  sendfile on;
  server { listen 127.0.0.1:$http; root $dir/www; }
  server { listen 127.0.0.1:$https ssl; root $dir/www;
           ssl_certificate $dir/cert.pem; ssl_certificate_key $dir/key.pem; }
}
CONF
/usr/sbin/nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" & pids+=($!)

common="listen=YES
listen_ipv6=NO
background=NO
listen_address=127.0.0.1
anonymous_enable=YES
no_anon_password=YES
anon_root=$dir/www
local_enable=NO
write_enable=NO
pasv_enable=YES
pasv_address=127.0.0.1
secure_chroot_dir=$dir/empty
xferlog_enable=NO
seccomp_sandbox=NO
max_clients=200
max_per_ip=100"
pasv=$((31000 + RANDOM % 2000 * 10))
printf '%s\nlisten_port=%s\npasv_min_port=%s\npasv_max_port=%s\n' "$common" $ftp $pasv $((pasv + 4)) > "$dir/ftp.conf"
printf '%s\nlisten_port=%s\npasv_min_port=%s\npasv_max_port=%s\nssl_enable=YES\nimplicit_ssl=YES\nallow_anon_ssl=YES\nforce_anon_logins_ssl=YES\nforce_anon_data_ssl=YES\nrequire_ssl_reuse=NO\nrsa_cert_file=%s\nrsa_private_key_file=%s\n' \
  "$common" $ftps $((pasv + 5)) $((pasv + 9)) "$dir/cert.pem" "$dir/key.pem" > "$dir/ftps.conf"
/usr/sbin/vsftpd "$dir/ftp.conf" & pids+=($!)
/usr/sbin/vsftpd "$dir/ftps.conf" & pids+=($!)
/usr/sbin/in.tftpd -L -a 127.0.0.1:$tftp -s -u nobody -B 65464 "$dir/www" & pids+=($!)
bench_wait_listen tcp $http && bench_wait_listen tcp $https && bench_wait_listen tcp $ftp && bench_wait_listen tcp $ftps &&
  bench_wait_listen udp $tftp || exit 1

out=$dir/out.raw
BENCH_PREPARE="rm -f $out; bench_warm_memory 512"
# Each tool under a timeout, named as itself in the ratio lines.
netblk() { timeout 300 "$NETBLK" "$@"; }
qemu-img() { timeout 300 /usr/bin/qemu-img "$@"; }
curl() { timeout 300 /usr/bin/curl "$@"; }
q="qemu-img convert -m 1 -O raw"
nb="netblk convert -O raw"
c="curl -sS -o $out"

u=http://127.0.0.1:$http/disk.img
want http && bench_run "HTTP 256 MiB" $REPS $SIZE "$nb $u $out" "$q $u $out" "$c $u"

u=https://127.0.0.1:$https/disk.img
j="'json:{\"file.driver\":\"https\",\"file.url\":\"$u\",\"file.sslverify\":\"off\"}'"
want https && bench_run "HTTPS 256 MiB" $REPS $SIZE "$nb $j $out" "$q $j $out" "$c -k $u"

u=ftp://127.0.0.1:$ftp/disk.img
want ftp && bench_run "FTP 256 MiB" $REPS $SIZE "$nb $u $out" "$q $u $out" "$c $u"

u=tftp://127.0.0.1:$tftp/disk.img
want tftp && bench_run "TFTP 256 MiB" $REPS $SIZE "$nb $u $out" "$c --tftp-blksize 65464 $u"

u=ftps://127.0.0.1:$ftps/disk.img
j="'json:{\"file.driver\":\"ftps\",\"file.url\":\"$u\",\"file.sslverify\":\"off\"}'"
want ftps && bench_run "FTPS 256 MiB" $REPS $SIZE "$nb $j $out" "$c -k $u"
exit 0
