"""Forwarded-field decoding: FORWARD / XRCPTFORWARD blobs and Dovecot session IDs."""
