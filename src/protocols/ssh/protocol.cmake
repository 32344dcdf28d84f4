# ssh: SFTP over libssh (SSH: key exchange, ciphers, host keys, agent); the SFTP requests
# are netblk's own (sftp_codec).
pkg_check_modules(LIBSSH IMPORTED_TARGET libssh)
if(NOT LIBSSH_FOUND)
  message(STATUS "netblk: libssh not found: ssh is left out")
  return()
endif()
netblk_add_protocol(${CMAKE_CURRENT_LIST_DIR} LIBRARIES PkgConfig::LIBSSH)
