# gluster (gluster://, gluster+tcp://, gluster+unix://, gluster+rdma://) through libgfapi.
pkg_check_modules(GFAPI IMPORTED_TARGET glusterfs-api)
if(NOT GFAPI_FOUND)
  message(STATUS "netblk: libgfapi (glusterfs-api) not found: gluster is left out")
  return()
endif()
netblk_add_protocol(${CMAKE_CURRENT_LIST_DIR} LIBRARIES PkgConfig::GFAPI)
# libgfapi has no call that returns its version: `netblk --version` shows the one built against.
set_property(SOURCE ${CMAKE_CURRENT_LIST_DIR}/gluster.cpp APPEND PROPERTY
             COMPILE_DEFINITIONS NETBLK_GFAPI_VERSION="${GFAPI_VERSION}")
