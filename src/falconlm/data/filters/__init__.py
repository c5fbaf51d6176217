"""Per-document filters of the RefinedWeb recipe."""
