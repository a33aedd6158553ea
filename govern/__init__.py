"""govern: a kernel-assisted connection governor for SMTP MX hosts."""

__version__ = "0.1.0"
