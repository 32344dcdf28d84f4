# file: regular files and block devices, through the C library alone.
netblk_add_protocol(${CMAKE_CURRENT_LIST_DIR})
