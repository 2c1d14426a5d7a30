"""Triton Python-backend adapters: translate Triton requests to package calls and back. No algorithm here."""
