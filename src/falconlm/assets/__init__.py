"""Package data: the bundled sample WARC and the default URL lists."""
