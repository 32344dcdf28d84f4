#include "protocols/rbd/ceph_api.hpp"

#include <dlfcn.h>

#include <cerrno>
#include <string>
#include <type_traits>

#include "netblk/error.hpp"

namespace netblk::rbd {
namespace {

CephApi load_api() {
  // librados comes with librbd (a dependency of it), and dlsym on librbd's handle searches
  // it too.
  void* rbd = dlopen(NETBLK_LIBRBD_SONAME, RTLD_NOW | RTLD_LOCAL);
  if (!rbd) {
    const char* why = dlerror();
    throw Error(ENOTSUP, std::string("rbd: cannot load " NETBLK_LIBRBD_SONAME ": ") + (why ? why : "unknown error"));
  }
  CephApi api;
  auto find = [rbd](auto& member, const char* name) {
    void* sym = dlsym(rbd, name);
    if (!sym) throw Error(ENOTSUP, std::string("rbd: ") + name + " is missing from librbd/librados");
    member = reinterpret_cast<std::remove_reference_t<decltype(member)>>(sym);
  };
#define NETBLK_CEPH_LOAD(f) find(api.f, #f);
  NETBLK_CEPH_FUNCTIONS(NETBLK_CEPH_LOAD)
#undef NETBLK_CEPH_LOAD
  return api;
}

}  // namespace

const CephApi& ceph() {
  static const CephApi api = load_api();  // a failed load throws, and is tried again next time
  return api;
}

}  // namespace netblk::rbd
