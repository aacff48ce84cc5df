"""Facts shared by every component (worker roles, the stack outputs file). Stdlib only."""
