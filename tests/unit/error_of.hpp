// The message a call fails with, for tests that compare error wording.
#pragma once
#include <exception>
#include <string>

#include "netblk/error.hpp"

namespace netblk::test {

// The netblk::Error message `f` throws; another exception is named as such, and a call
// that returns gives "(no error)".
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("(not a netblk::Error) ") + e.what();
  }
  return "(no error)";
}

}  // namespace netblk::test
