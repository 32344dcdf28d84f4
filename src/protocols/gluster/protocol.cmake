# gluster (gluster://, gluster+tcp://, gluster+unix://, gluster+rdma://) through libgfapi.
pkg_check_modules(GFAPI IMPORTED_TARGET glusterfs-api)
if(NOT GFAPI_FOUND)
  message(STATUS "netblk: libgfapi (glusterfs-api) not found: gluster is left out")
  return()
endif()
netblk_add_protocol(${CMAKE_CURRENT_LIST_DIR} LIBRARIES PkgConfig::GFAPI)
