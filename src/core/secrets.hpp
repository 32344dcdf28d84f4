// QEMU's `--object secret,id=ID,data=...|file=PATH[,format=raw|base64]`: secrets are kept
// here by id so that drivers take `password-secret=ID` and no secret sits in a spec.
#pragma once
#include <functional>
#include <string>

#include "netblk/node.hpp"

namespace netblk::secrets {

// Defines a secret from the object's options (id, data or file, format). Throws Error.
void define(const Json& object_options);
// The secret's bytes; throws Error "No secret with id 'ID'" when undefined.
std::string lookup(const std::string& id);
void clear();

// Other --object types (tls-creds-x509, tls-creds-psk, ...) register a handler that
// define() calls with the whole option tree when qom-type names them.
void register_object_type(const std::string& qom_type, std::function<void(const Json&)> handler);

}  // namespace netblk::secrets
