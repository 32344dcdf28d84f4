# iscsi (and iser when libiscsi offers it) through libiscsi.
pkg_check_modules(ISCSI IMPORTED_TARGET libiscsi)
if(NOT ISCSI_FOUND)
  message(STATUS "netblk: libiscsi not found: iscsi is left out")
  return()
endif()
netblk_add_protocol(${CMAKE_CURRENT_LIST_DIR} LIBRARIES PkgConfig::ISCSI)
# libiscsi has no call that returns its version: `netblk --version` shows the one built against.
set_property(SOURCE ${CMAKE_CURRENT_LIST_DIR}/iscsi.cpp APPEND PROPERTY
             COMPILE_DEFINITIONS NETBLK_LIBISCSI_VERSION="${ISCSI_VERSION}")
