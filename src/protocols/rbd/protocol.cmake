# rbd (rbd:POOL/IMAGE, driver=rbd) through librbd and librados (no pkg-config file), which
# are loaded when an rbd image is first opened (ceph_api.hpp), not linked.
find_path(RBD_INCLUDE_DIR rbd/librbd.h)
find_library(RBD_LIBRARY rbd)
find_library(RADOS_LIBRARY rados)
if(NOT RBD_INCLUDE_DIR OR NOT RBD_LIBRARY OR NOT RADOS_LIBRARY)
  message(STATUS "netblk: librbd (librbd-dev) not found: rbd is left out")
  return()
endif()
# The names to load are the ones the development links point at (librbd.so -> librbd.so.1).
foreach(lib RBD RADOS)
  file(READ_SYMLINK ${${lib}_LIBRARY} ${lib}_SONAME)
  get_filename_component(${lib}_SONAME "${${lib}_SONAME}" NAME)
endforeach()
netblk_add_protocol(${CMAKE_CURRENT_LIST_DIR} LIBRARIES ${CMAKE_DL_LIBS})
set_property(SOURCE ${CMAKE_CURRENT_LIST_DIR}/ceph_api.cpp APPEND PROPERTY COMPILE_DEFINITIONS
             NETBLK_LIBRBD_SONAME="${RBD_SONAME}" NETBLK_LIBRADOS_SONAME="${RADOS_SONAME}")
