"""The SMTP/LMTP edge (aiosmtpd)."""
