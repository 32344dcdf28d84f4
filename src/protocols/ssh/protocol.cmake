# ssh: SFTP over libssh (SSH: key exchange, ciphers, host keys, agent); the SFTP requests
# are netblk's own (sftp_codec). OpenSSL, libssh's crypto, is initialised by netblk first.
pkg_check_modules(LIBSSH IMPORTED_TARGET libssh)
find_package(OpenSSL)
if(NOT LIBSSH_FOUND OR NOT OpenSSL_FOUND)
  message(STATUS "netblk: libssh or OpenSSL not found: ssh is left out")
  return()
endif()
netblk_add_protocol(${CMAKE_CURRENT_LIST_DIR} LIBRARIES PkgConfig::LIBSSH OpenSSL::Crypto)
