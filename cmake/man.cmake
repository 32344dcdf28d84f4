# Man pages: docs/man/NAME.SECTION.scd → build/man/NAME.SECTION (roff) through scdoc, and
# installed under share/man/manSECTION. A page for a new protocol is one new file there.
option(NETBLK_MAN "Build and install the man pages (needs scdoc)" ON)
set(NETBLK_MAN_PAGES)
if(NETBLK_MAN)
  find_program(NETBLK_SCDOC scdoc)
  if(NOT NETBLK_SCDOC)
    message(STATUS "netblk: scdoc not found: no man pages (scripts/install-deps.sh installs it)")
  else()
    file(GLOB NETBLK_MAN_SOURCES CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/docs/man/*.scd)
    foreach(source ${NETBLK_MAN_SOURCES})
      get_filename_component(page ${source} NAME_WLE)  # netblk-http.1
      set(roff ${CMAKE_BINARY_DIR}/man/${page})
      add_custom_command(OUTPUT ${roff}
                         COMMAND ${CMAKE_COMMAND} -E make_directory ${CMAKE_BINARY_DIR}/man
                         COMMAND sh -c "\"$0\" < \"$1\" > \"$2\"" ${NETBLK_SCDOC} ${source} ${roff}
                         DEPENDS ${source} COMMENT "scdoc ${page}" VERBATIM)
      list(APPEND NETBLK_MAN_PAGES ${roff})
    endforeach()
    add_custom_target(man ALL DEPENDS ${NETBLK_MAN_PAGES})
  endif()
endif()
