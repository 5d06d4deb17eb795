"""The GEMS roles, one node per file: plan, decompose, generate, verify/critique, compress, refine, finalize."""
