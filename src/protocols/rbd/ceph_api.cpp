#include "protocols/rbd/ceph_api.hpp"

#include <dlfcn.h>

#include <cerrno>
#include <string>

#include "netblk/error.hpp"

namespace netblk::rbd {
namespace {

void* load(const char* soname) {
  void* handle = dlopen(soname, RTLD_NOW | RTLD_LOCAL);
  if (!handle) {
    const char* why = dlerror();
    throw Error(ENOTSUP, std::string("rbd: cannot load ") + soname + ": " + (why ? why : "unknown error"));
  }
  return handle;
}

CephApi load_api() {
  void* rados = load(NETBLK_LIBRADOS_SONAME);
  void* rbd = load(NETBLK_LIBRBD_SONAME);
  CephApi api;
  auto find = [&](auto& member, const char* name) {
    void* sym = dlsym(name[1] == 'a' ? rados : rbd, name);  // "rados_..." or "rbd_..."
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
