# `cmake --install build --prefix P`: bin/netblk; lib/libnetblk.a with include/netblk/, a
# CMake package (find_package(netblk) → netblk::netblk) and netblk.pc; the man pages; the
# docs; bash completion. Then the .deb: CPack (scripts/package.sh).
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

install(TARGETS netblk RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(TARGETS netblk_lib ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR})
install(DIRECTORY include/netblk DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
foreach(page ${NETBLK_MAN_PAGES})
  string(REGEX MATCH "[0-9]$" section ${page})
  install(FILES ${page} DESTINATION ${CMAKE_INSTALL_MANDIR}/man${section})
endforeach()
install(FILES README.md DESTINATION ${CMAKE_INSTALL_DOCDIR})
install(DIRECTORY docs/ DESTINATION ${CMAKE_INSTALL_DOCDIR} FILES_MATCHING PATTERN "*.md" PATTERN man EXCLUDE)
install(FILES data/netblk.bash-completion DESTINATION ${CMAKE_INSTALL_DATADIR}/bash-completion/completions
        RENAME netblk)

# What a program linking the static archive needs too: the libraries netblk_lib links,
# whatever protocol folders added them (netblk_add_protocol), found again in the consumer's
# build (the CMake package) or named for pkg-config (netblk.pc).
get_target_property(netblk_links netblk_lib LINK_LIBRARIES)
set(NETBLK_CONFIG_DEPENDENCIES "")
set(NETBLK_CONFIG_LINK "")
set(NETBLK_PC_REQUIRES "")
set(NETBLK_PC_LIBS "")
set(netblk_found_packages "")
foreach(lib ${netblk_links})
  if(lib MATCHES "^PkgConfig::(.+)$")
    set(module "${${CMAKE_MATCH_1}_MODULE_NAME}")
    if(NOT module)
      message(FATAL_ERROR "netblk: no pkg-config module name for ${lib}")
    endif()
    string(MAKE_C_IDENTIFIER "netblk_${module}" prefix)
    string(APPEND NETBLK_CONFIG_DEPENDENCIES "pkg_check_modules(${prefix} REQUIRED QUIET IMPORTED_TARGET ${module})\n")
    list(APPEND NETBLK_CONFIG_LINK PkgConfig::${prefix})
    list(APPEND NETBLK_PC_REQUIRES ${module})
  elseif(lib MATCHES "^([A-Za-z0-9_]+)::(.+)$")
    set(package ${CMAKE_MATCH_1})
    if(NOT package IN_LIST netblk_found_packages)
      list(APPEND netblk_found_packages ${package})
      string(APPEND NETBLK_CONFIG_DEPENDENCIES "find_dependency(${package})\n")
    endif()
    list(APPEND NETBLK_CONFIG_LINK ${lib})
    # The pkg-config modules (or flags) of the CMake targets netblk uses.
    set(modules_Threads__Threads "-pthread")
    set(modules_nlohmann_json__nlohmann_json nlohmann_json)
    set(modules_ZLIB__ZLIB zlib)
    set(modules_OpenSSL__SSL libssl)
    set(modules_OpenSSL__Crypto libcrypto)
    string(MAKE_C_IDENTIFIER "modules_${lib}" known)
    if(NOT DEFINED ${known})
      message(FATAL_ERROR "netblk: add the pkg-config module of ${lib} to cmake/install.cmake")
    endif()
    if(${known} MATCHES "^-")
      list(APPEND NETBLK_PC_LIBS ${${known}})
    else()
      list(APPEND NETBLK_PC_REQUIRES ${${known}})
    endif()
  else()
    # A plain library name or a linker flag.
    list(APPEND NETBLK_CONFIG_LINK ${lib})
    if(lib MATCHES "^-")
      list(APPEND NETBLK_PC_LIBS ${lib})
    else()
      list(APPEND NETBLK_PC_LIBS -l${lib})
    endif()
  endif()
endforeach()
list(REMOVE_DUPLICATES NETBLK_PC_REQUIRES)
list(JOIN NETBLK_PC_REQUIRES " " NETBLK_PC_REQUIRES)
list(JOIN NETBLK_PC_LIBS " " NETBLK_PC_LIBS)
list(TRANSFORM NETBLK_ASIO_DEFINITIONS PREPEND "-D" OUTPUT_VARIABLE netblk_pc_defines)
list(JOIN netblk_pc_defines " " NETBLK_PC_CFLAGS)

set(NETBLK_ARCHIVE ${CMAKE_INSTALL_LIBDIR}/${CMAKE_STATIC_LIBRARY_PREFIX}netblk${CMAKE_STATIC_LIBRARY_SUFFIX})
configure_package_config_file(cmake/netblkConfig.cmake.in ${CMAKE_BINARY_DIR}/package/netblkConfig.cmake
                              INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/netblk
                              PATH_VARS NETBLK_ARCHIVE CMAKE_INSTALL_INCLUDEDIR)
write_basic_package_version_file(${CMAKE_BINARY_DIR}/package/netblkConfigVersion.cmake
                                 COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_BINARY_DIR}/package/netblkConfig.cmake ${CMAKE_BINARY_DIR}/package/netblkConfigVersion.cmake
        DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/netblk)

# netblk.pc finds its prefix relative to itself, so any --prefix works.
file(RELATIVE_PATH NETBLK_PC_TO_PREFIX /prefix/${CMAKE_INSTALL_LIBDIR}/pkgconfig /prefix)
configure_file(cmake/netblk.pc.in ${CMAKE_BINARY_DIR}/package/netblk.pc @ONLY)
install(FILES ${CMAKE_BINARY_DIR}/package/netblk.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)

# The .deb: `cpack --config build/CPackConfig.cmake` (scripts/package.sh). One package with
# the command, its man pages and completion, and the library for programs built on it; its
# Depends are computed by dpkg-shlibdeps from what bin/netblk links.
set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME netblk)
set(CPACK_PACKAGE_VENDOR netblk)
set(CPACK_PACKAGE_CONTACT "netblk developers <netblk@localhost>")
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "open VM disk images over the network by QEMU's names")
set(CPACK_PACKAGE_DESCRIPTION
    "netblk opens virtual-machine disk images over NBD, HTTP(S), FTP(S), TFTP, iSCSI and SSH by the
names QEMU documents (URLs, json: names, --image-opts), stacks local qcow2 overlays on them, and
hands the result to a qemu-img-like command line, an NBD export and a C++20 library.")
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_STRIP_FILES ON)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SECTION utils)
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
# librbd is loaded when an rbd image is opened (src/protocols/rbd/ceph_api.hpp), so
# dpkg-shlibdeps does not see it.
set(CPACK_DEBIAN_PACKAGE_RECOMMENDS "man-db, bash-completion, librbd1")
set(CPACK_PACKAGE_DIRECTORY ${CMAKE_BINARY_DIR}/package)
include(CPack)
