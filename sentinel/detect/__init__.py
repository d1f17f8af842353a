"""Detection: the NFLOG monitor and the bypass canaries."""
