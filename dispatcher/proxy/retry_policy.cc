// The retry decision; see retry_policy.h and docs/retries.md.
#include "dispatcher/proxy/retry_policy.h"

namespace tandem::dispatcher {

RetryDecision DecideRetry(const RetryInput& input) {
  auto give_up = [](std::string_view reason) {
    return RetryDecision{RetryAction::kGiveUp, reason};
  };
  if (input.response_started) return give_up("response already started");
  if (input.deadline_passed) return give_up("request_timeout spent");
  // A request that never reached a worker may always go elsewhere; one that
  // did only when repeating it is safe.
  const bool reached = Traits(input.failure).reached_worker;
  if (reached) {
    if (!input.idempotent) return give_up("not idempotent");
    // `retries` bounds the tries that reached a worker; refused connects and
    // pooled connections found closed do not use it up.
    if (input.reached_failures > input.retries)
      return give_up("retries exhausted");
  }
  if (input.has_body && !input.body_replayable)
    return give_up("body too large to replay");
  // A pooled connection found closed may be replaced on the same backend.
  if (input.failure != FailureKind::kPoolRace && !input.other_backend)
    return give_up("no other backend");
  // Retries of requests that never reached a worker cost no worker anything:
  // they are outside the budget.
  if (reached && !input.budget_left) return {RetryAction::kWaitForBudget, {}};
  return {RetryAction::kRetry, {}};
}

}  // namespace tandem::dispatcher
