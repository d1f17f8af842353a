"""Enforcement: render (pure) and every privileged netfilter/ipset call."""
