"""`gems bench`: prompt sets, methods, scorers and reports for reproducing the paper's experiments."""
