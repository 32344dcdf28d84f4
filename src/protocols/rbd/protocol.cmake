# rbd (rbd:POOL/IMAGE, driver=rbd) through librbd and librados (no pkg-config file), which
# are loaded when an rbd image is first opened (ceph_api.hpp), not linked.
find_path(RBD_INCLUDE_DIR rbd/librbd.h)
find_library(RBD_LIBRARY rbd)
find_library(RADOS_LIBRARY rados)
if(NOT RBD_INCLUDE_DIR OR NOT RBD_LIBRARY OR NOT RADOS_LIBRARY)
  message(STATUS "netblk: librbd (librbd-dev) not found: rbd is left out")
  return()
endif()
# The name to load is the one the development link points at (librbd.so -> librbd.so.1);
# librados comes with it.
set(RBD_SONAME ${RBD_LIBRARY})
if(IS_SYMLINK ${RBD_LIBRARY})
  file(READ_SYMLINK ${RBD_LIBRARY} RBD_SONAME)
endif()
get_filename_component(RBD_SONAME "${RBD_SONAME}" NAME)
netblk_add_protocol(${CMAKE_CURRENT_LIST_DIR} LIBRARIES ${CMAKE_DL_LIBS})
set_property(SOURCE ${CMAKE_CURRENT_LIST_DIR}/ceph_api.cpp APPEND PROPERTY COMPILE_DEFINITIONS
             NETBLK_LIBRBD_SONAME="${RBD_SONAME}")
