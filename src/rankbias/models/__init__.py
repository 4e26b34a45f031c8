"""Model families used by the experiments (small modules, batched over a leading model dimension)."""
