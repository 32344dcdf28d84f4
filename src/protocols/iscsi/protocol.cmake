# iscsi (and iser when libiscsi offers it) through libiscsi.
pkg_check_modules(ISCSI IMPORTED_TARGET libiscsi)
if(NOT ISCSI_FOUND)
  message(STATUS "netblk: libiscsi not found: iscsi is left out")
  return()
endif()
netblk_add_protocol(${CMAKE_CURRENT_LIST_DIR} LIBRARIES PkgConfig::ISCSI)
