// Counts heap allocations in this test binary, so a test can prove a call
// makes none.
#pragma once

namespace tandem::algorithms::testing {

// Allocations through the global operator new since the program started.
long AllocationCount();

}  // namespace tandem::algorithms::testing
