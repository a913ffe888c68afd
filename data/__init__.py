"""CS224N task data (vendored CSV files) and the input pipeline."""
