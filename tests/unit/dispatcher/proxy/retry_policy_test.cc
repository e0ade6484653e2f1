// The retry decision, row by row of docs/retries.md.
#include "dispatcher/proxy/retry_policy.h"

#include <doctest/doctest.h>

namespace tandem::dispatcher {
namespace {

// A GET that failed once, with another backend left and budget to spare.
RetryInput Get(FailureKind failure) {
  RetryInput input;
  input.failure = failure;
  input.idempotent = true;
  input.reached_failures = Traits(failure).reached_worker ? 1 : 0;
  input.retries = 2;
  input.other_backend = true;
  input.budget_left = true;
  return input;
}

RetryInput Post(FailureKind failure) {
  RetryInput input = Get(failure);
  input.idempotent = false;
  input.has_body = true;
  return input;
}

constexpr FailureKind kNeverReached[] = {
    FailureKind::kConnect, FailureKind::kRefused, FailureKind::kPoolRace};
constexpr FailureKind kReached[] = {FailureKind::kReset, FailureKind::kTimeout,
                                    FailureKind::kStatus, FailureKind::kInvalid,
                                    FailureKind::kHung};

TEST_CASE("a failure before the request reached a worker is always retried") {
  for (FailureKind failure : kNeverReached) {
    CAPTURE(static_cast<int>(failure));
    RetryInput input = Post(failure);
    input.retries = 0;          // `retries` counts tries that reached a worker
    input.budget_left = false;  // and these cost no worker anything
    CHECK(DecideRetry(input).action == RetryAction::kRetry);
  }
}

TEST_CASE("a connect failure with no other backend left is answered") {
  RetryInput input = Get(FailureKind::kRefused);
  input.other_backend = false;
  RetryDecision decision = DecideRetry(input);
  CHECK(decision.action == RetryAction::kGiveUp);
  CHECK(decision.reason == "no other backend");
}

TEST_CASE(
    "a pooled connection found closed may be retried on the same backend") {
  RetryInput input = Post(FailureKind::kPoolRace);
  input.other_backend = false;
  CHECK(DecideRetry(input).action == RetryAction::kRetry);
}

TEST_CASE("after reaching a worker only idempotent requests are retried") {
  for (FailureKind failure : kReached) {
    CAPTURE(static_cast<int>(failure));
    CHECK(DecideRetry(Get(failure)).action == RetryAction::kRetry);
    RetryDecision post = DecideRetry(Post(failure));
    CHECK(post.action == RetryAction::kGiveUp);
    CHECK(post.reason == "not idempotent");
  }
}

TEST_CASE("retries bounds the failed tries that reached a worker") {
  RetryInput input = Get(FailureKind::kTimeout);
  input.retries = 2;
  input.reached_failures = 2;
  CHECK(DecideRetry(input).action == RetryAction::kRetry);
  input.reached_failures = 3;
  RetryDecision decision = DecideRetry(input);
  CHECK(decision.action == RetryAction::kGiveUp);
  CHECK(decision.reason == "retries exhausted");
}

TEST_CASE("a body longer than the retry buffer is not replayed") {
  RetryInput input = Get(FailureKind::kReset);
  input.has_body = true;
  input.body_replayable = false;
  RetryDecision decision = DecideRetry(input);
  CHECK(decision.action == RetryAction::kGiveUp);
  CHECK(decision.reason == "body too large to replay");
  // Before reaching a worker the body has not been consumed by anyone, but
  // it is gone all the same: nothing to replay.
  input.failure = FailureKind::kConnect;
  CHECK(DecideRetry(input).action == RetryAction::kGiveUp);
}

TEST_CASE(
    "nothing is retried once the response started or the deadline passed") {
  RetryInput started = Get(FailureKind::kConnect);
  started.response_started = true;
  CHECK(DecideRetry(started).reason == "response already started");
  RetryInput late = Get(FailureKind::kRefused);
  late.deadline_passed = true;
  CHECK(DecideRetry(late).reason == "request_timeout spent");
}

TEST_CASE("a retry over the budget waits instead of failing") {
  RetryInput input = Get(FailureKind::kTimeout);
  input.budget_left = false;
  CHECK(DecideRetry(input).action == RetryAction::kWaitForBudget);
  // A refusal that would fail anyway does not wait.
  input.idempotent = false;
  CHECK(DecideRetry(input).action == RetryAction::kGiveUp);
}

TEST_CASE("standby capacity counts as another backend") {
  // The caller folds a backup in reserve or a cold backup into other_backend;
  // the rule itself only asks whether anything is left.
  RetryInput input = Get(FailureKind::kReset);
  input.other_backend = false;
  CHECK(DecideRetry(input).reason == "no other backend");
  input.other_backend = true;
  CHECK(DecideRetry(input).action == RetryAction::kRetry);
}

TEST_CASE("every failure kind has one row of traits") {
  CHECK(Traits(FailureKind::kConnect).trail_code == "UF");
  CHECK(Traits(FailureKind::kPoolRace).trail_code == "PR");
  CHECK(Traits(FailureKind::kReset).trail_code == "UC");
  CHECK(Traits(FailureKind::kTimeout).trail_code == "UT");
  CHECK(Traits(FailureKind::kStatus).trail_code == "R5");
  CHECK(Traits(FailureKind::kInvalid).trail_code == "UP");
  CHECK(Traits(FailureKind::kHung).trail_code == "HG");
  CHECK(Traits(FailureKind::kHung).health == health::TrafficFailure::kTimeout);
  CHECK(Traits(FailureKind::kRefused).retry_reason == "connect_refused");
  CHECK(Traits(FailureKind::kTimeout).health ==
        health::TrafficFailure::kTimeout);
  CHECK(Traits(FailureKind::kStatus).flag == 0u);
  CHECK(Traits(FailureKind::kInvalid).flag == kFlagInvalidResponse);
  CHECK(kExchangeFlagNames[4] == "DC");
  CHECK((1u << 4) == kFlagClientReset);
}

}  // namespace
}  // namespace tandem::dispatcher
