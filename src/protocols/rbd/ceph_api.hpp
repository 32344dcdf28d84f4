// librbd and librados, loaded on first use. Linked, Ceph's libraries run about 11 ms of
// static initialisation (librados builds its table of ~2000 options) at the start of every
// netblk command, rbd or not, which is most of what separates netblk's start from
// qemu-img's (whose rbd driver is a module loaded on demand too).
//
// ceph() dlopens the libraries the first time it is called and returns their functions;
// it throws Error(ENOTSUP) naming the library when they cannot be loaded. The handles are
// never closed: librados's threads may outlive every node.
#pragma once
#include <rados/librados.h>
#include <rbd/librbd.h>

namespace netblk::rbd {

#define NETBLK_CEPH_FUNCTIONS(X)                                                                       \
  X(rados_conf_read_file) X(rados_conf_set) X(rados_connect) X(rados_create) X(rados_ioctx_create)   \
  X(rados_ioctx_destroy) X(rados_ioctx_set_namespace) X(rados_shutdown) X(rados_version)             \
  X(rbd_aio_create_completion) X(rbd_aio_discard) X(rbd_aio_flush) X(rbd_aio_get_arg)                 \
  X(rbd_aio_get_return_value) X(rbd_aio_read) X(rbd_aio_release) X(rbd_aio_write)                    \
  X(rbd_aio_write_zeroes) X(rbd_close) X(rbd_create) X(rbd_diff_iterate2) X(rbd_get_features)         \
  X(rbd_get_flags) X(rbd_get_size) X(rbd_open) X(rbd_open_read_only) X(rbd_poll_io_events)           \
  X(rbd_resize) X(rbd_set_image_notification) X(rbd_version)

struct CephApi {
#define NETBLK_CEPH_MEMBER(f) decltype(&::f) f = nullptr;
  NETBLK_CEPH_FUNCTIONS(NETBLK_CEPH_MEMBER)
#undef NETBLK_CEPH_MEMBER
};

const CephApi& ceph();

}  // namespace netblk::rbd
