"""A tiny calculator service used as Genesis's bundled example."""
