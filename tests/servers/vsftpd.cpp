#include "vsftpd.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>

namespace netblk::test {

namespace {
// Passive port ranges of their own for each instance in this process (ten ports each), away
// from other processes' ranges and low in what free_port() hands out.
int next_pasv_range() {
  static std::atomic<int> instances{0};
  return 30000 + (getpid() % 500) * 40 + (instances++ % 4) * 10;
}
}  // namespace

Vsftpd::Vsftpd(Options options) : tls_(options.implicit_tls), port_(options.port ? options.port : free_port()) {
  const std::string empty = dir_ / "empty";  // secure_chroot_dir: empty, root-owned
  std::filesystem::create_directories(empty);
  chmod(empty.c_str(), 0755);
  const int pasv = next_pasv_range();
  std::string conf = "listen=YES\nlisten_ipv6=NO\nbackground=NO\nlisten_address=127.0.0.1\nlisten_port=" +
                     std::to_string(port_) + "\nanonymous_enable=YES\nno_anon_password=YES\nanon_root=" +
                     options.root +
                     "\nlocal_enable=NO\nwrite_enable=NO\npasv_enable=YES\npasv_address=127.0.0.1\n"
                     "pasv_min_port=" + std::to_string(pasv) + "\npasv_max_port=" + std::to_string(pasv + 9) +
                     "\nsecure_chroot_dir=" + empty + "\nxferlog_enable=NO\nseccomp_sandbox=NO\n"
                     "max_clients=200\nmax_per_ip=100\nvsftpd_log_file=" + dir_ / "vsftpd.log" + "\n";
  if (options.max_rate) conf += "anon_max_rate=" + std::to_string(options.max_rate) + "\n";
  if (tls_) {
    make_self_signed_cert(dir_ / "cert.pem", dir_ / "key.pem");
    conf += "ssl_enable=YES\nimplicit_ssl=YES\nallow_anon_ssl=YES\nforce_anon_logins_ssl=YES\n"
            "force_anon_data_ssl=YES\nrequire_ssl_reuse=NO\nrsa_cert_file=" + dir_ / "cert.pem" +
            "\nrsa_private_key_file=" + dir_ / "key.pem" + "\n";
  }
  write_file(dir_ / "vsftpd.conf", conf);
  process_ = start_server({"/usr/sbin/vsftpd", dir_ / "vsftpd.conf"}, dir_ / "vsftpd.out",
                          [&] { return wait_tcp(port_); }, "vsftpd");
}

std::string Vsftpd::url(const std::string& name) const {
  return std::string(tls_ ? "ftps" : "ftp") + "://127.0.0.1:" + std::to_string(port_) + "/" + name;
}

}  // namespace netblk::test
