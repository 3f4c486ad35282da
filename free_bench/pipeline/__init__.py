"""The `reproduce` pipeline: stages that call library functions in order, with resumable markers."""
