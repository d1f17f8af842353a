"""The DNS pinning resolver and the pins it keeps."""
