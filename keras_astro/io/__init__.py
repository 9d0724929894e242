"""Real data in and out: catalogue readers/writers and network clients."""
