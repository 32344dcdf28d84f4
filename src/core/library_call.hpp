// Awaiting a C library's asynchronous call that finishes elsewhere: on one of the
// library's threads (gfapi's callbacks) or found later by the loop (librbd's completions,
// polled when an eventfd fires).
//
// Contract:
//  - await_library_call<Result>(start) calls start(call) at once, on the caller's thread,
//    with a LibraryCall<Result>* to hand to the library as its callback argument. The
//    coroutine resumes on its own executor with the Result given to call->complete().
//  - complete() must be called exactly once, from any thread, also when start() itself
//    failed to submit (start calls it then). It posts the result to the coroutine's
//    executor and frees the call: the pointer is invalid afterwards.
//  - Until then the call holds outstanding work on that executor, so that its io_context
//    does not run out while only the library has something to do.
#pragma once
#include <asio/async_result.hpp>
#include <asio/execution/outstanding_work.hpp>
#include <asio/post.hpp>
#include <asio/prefer.hpp>
#include <asio/use_awaitable.hpp>
#include <memory>
#include <utility>

#include "netblk/runtime.hpp"

namespace netblk {

template <class Result>
class LibraryCall {
 public:
  virtual ~LibraryCall() = default;
  // The call's result to its coroutine (see the contract above).
  virtual void complete(Result result) = 0;
};

namespace library_call_detail {

template <class Result, class Handler>
class Call final : public LibraryCall<Result> {
 public:
  explicit Call(Handler h)
      : handler_(std::move(h)),
        work_(asio::prefer(asio::get_associated_executor(handler_), asio::execution::outstanding_work.tracked)) {}

  void complete(Result result) override {
    const Executor ex = work_;
    asio::post(ex, [this, result = std::move(result)]() mutable {
      std::unique_ptr<Call> self(this);
      Handler h = std::move(handler_);
      self.reset();  // the work guard goes before the coroutine resumes
      std::move(h)(std::move(result));
    });
  }

 private:
  Handler handler_;
  Executor work_;
};

}  // namespace library_call_detail

template <class Result, class Start>
Task<Result> await_library_call(Start start) {
  auto initiate = [start = std::move(start)](auto handler) mutable {
    using Call = library_call_detail::Call<Result, decltype(handler)>;
    start(static_cast<LibraryCall<Result>*>(new Call(std::move(handler))));
  };
  co_return co_await asio::async_initiate<decltype(asio::use_awaitable), void(Result)>(std::move(initiate),
                                                                                      asio::use_awaitable);
}

}  // namespace netblk
