# ssh: SFTP over libssh2 (SSH: key exchange, ciphers, host keys, agent); the SFTP requests
# are netblk's own (sftp_codec). OpenSSL's libcrypto prints host key fingerprints (base64).
pkg_check_modules(LIBSSH2 IMPORTED_TARGET libssh2)
find_package(OpenSSL)
if(NOT LIBSSH2_FOUND OR NOT OpenSSL_FOUND)
  message(STATUS "netblk: libssh2 or OpenSSL not found: ssh is left out")
  return()
endif()
netblk_add_protocol(${CMAKE_CURRENT_LIST_DIR} LIBRARIES PkgConfig::LIBSSH2 OpenSSL::Crypto)
