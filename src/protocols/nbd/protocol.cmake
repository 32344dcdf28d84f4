# nbd: the NBD client, on netblk's own codec and GnuTLS (src/nbd, shared with the server).
netblk_add_protocol(${CMAKE_CURRENT_LIST_DIR})
