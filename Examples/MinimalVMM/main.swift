// Placeholder while the example is written.
