# http, https, ftp, ftps, tftp through libcurl; OpenSSL for the TLS cipher order (tls.cpp).
pkg_check_modules(CURL IMPORTED_TARGET libcurl)
find_package(OpenSSL)
if(NOT CURL_FOUND OR NOT OpenSSL_FOUND)
  message(STATUS "netblk: libcurl or OpenSSL not found: http, https, ftp, ftps and tftp are left out")
  return()
endif()
netblk_add_protocol(${CMAKE_CURRENT_LIST_DIR} LIBRARIES PkgConfig::CURL OpenSSL::SSL)
