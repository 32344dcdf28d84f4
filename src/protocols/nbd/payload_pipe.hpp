// The pipe read_to_file() splices payloads through lives with the shared stream reader.
#pragma once
#include "nbd/payload_pipe.hpp"

namespace netblk::nbd_client {
using nbd::PayloadPipe;
}  // namespace netblk::nbd_client
