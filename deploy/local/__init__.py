"""The local stack: every real part of georep on loopback, started without Docker."""
