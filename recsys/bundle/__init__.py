"""The bundle format, read and written here only: files, manifest, checksums, publish, load."""
