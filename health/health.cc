// Health checking lands with its own issue; this unit keeps the library target.
