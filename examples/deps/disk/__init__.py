"""A tiny disk-usage reporter: Genesis's example with a PyPI dependency."""
