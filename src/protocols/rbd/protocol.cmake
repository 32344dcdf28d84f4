# rbd (rbd:POOL/IMAGE, driver=rbd) through librbd and librados (no pkg-config file).
find_path(RBD_INCLUDE_DIR rbd/librbd.h)
find_library(RBD_LIBRARY rbd)
find_library(RADOS_LIBRARY rados)
if(NOT RBD_INCLUDE_DIR OR NOT RBD_LIBRARY OR NOT RADOS_LIBRARY)
  message(STATUS "netblk: librbd (librbd-dev) not found: rbd is left out")
  return()
endif()
netblk_add_protocol(${CMAKE_CURRENT_LIST_DIR} LIBRARIES rbd rados)
