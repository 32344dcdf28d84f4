// QEMU's option groups outside a drive: `-iscsi user=..,id=IQN` (netblk's global `--iscsi`)
// and the sections of a `-readconfig` file (`[iscsi]`, `[iscsi "IQN"]`). A driver registers
// the group it reads and its keys; the CLI adds groups as it meets them; the driver looks up
// the one that applies when it opens a drive. Driver options always win over a group's.
#pragma once
#include <string>
#include <string_view>
#include <vector>

#include "netblk/node.hpp"

namespace netblk::spec {

// Declares group `name` and the keys it takes (besides "id"). Called by a driver's static
// registration.
void register_config_group(const std::string& name, std::vector<std::string> keys);

// Adds one group (`options` is a flat object of strings; "id" names what it is for). Throws
// Error with QEMU's wording for an undeclared group ("There is no option group 'x'"), an
// unknown key ("Invalid parameter 'k'") or an id given twice ("Duplicate ID 'x' for iscsi").
void add_config_group(const std::string& name, Json options);

// The group of `name` whose id is `id`; else the first one without an id; else null. The
// returned object stays valid until clear_config_groups().
const Json* find_config_group(const std::string& name, const std::string& id);

void clear_config_groups();

// Reads QEMU's -readconfig format and adds every section as a group:
//   # comment
//   [iscsi]              or   [iscsi "iqn.2001-04.com.example:disk"]
//     user = "name"
// Throws Error naming the file and line for a malformed line.
void read_config_text(std::string_view text, const std::string& file_name);
void read_config_file(const std::string& path);

}  // namespace netblk::spec
